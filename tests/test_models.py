"""Model loading (accelerated_diffusion.models): local folders, the offline error for hub ids, and the paper's
checkpoint path tested offline with a random UNet of exactly google/ddpm-church-256's architecture."""

import json
import time

import pytest
import torch

import accelerated_diffusion as ad
from accelerated_diffusion import models
from conftest import reference_config, save_random_model


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_is_hub_id_and_missing_paths(tmp_path):
    assert all(models.is_hub_id(m) for m in models.PAPER_MODELS)
    assert not models.is_hub_id("/abs/path") and not models.is_hub_id("a/b/c") and not models.is_hub_id("x")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        models.load_unet("x")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_unet(tmp_path)


def test_a_local_looking_path_that_does_not_exist_is_named_as_such(tmp_path, monkeypatch):
    """A typo in a model folder is a missing local path (with close matches), not a hub id to download: no hub
    request is made (the hub is configured online against a refusing endpoint that would be reported instead)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: pytest.fail("the hub was asked"))
    (tmp_path / "data" / "fmnist-ddpm").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert models.looks_local("data/fmnist-ddpn") and not models.looks_local("google/ddpm-church-256")
    for name in (
        "data/fmnist-ddpn",
        "./fmnist-ddpm",
        "../nowhere",
        "/no/such/folder",
        "~/no-such-model",
        "a/b/c",
        tmp_path / "does" / "not-exist",
    ):
        for load in (models.load_unet, models.load_scheduler_config):
            with pytest.raises(FileNotFoundError, match=r"local model folder .* does not exist") as err:
                load(name)
            assert "huggingface-cli" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"did you mean 'data/fmnist-ddpm'"):
        models.load_unet("data/fmnist-ddpn")
    with pytest.raises(FileNotFoundError, match=r"parent '/no/such' does not exist"):
        models.load_unet("/no/such/folder")
    with pytest.raises(models.ModelNotAvailableError):  # a hub id is still looked up on the hub
        monkeypatch.undo()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        models.load_unet("someone/not-a-folder-here")


@pytest.mark.parametrize("model_id", models.PAPER_MODELS)
def test_offline_hub_id_fails_at_once_with_instructions(offline, model_id):
    t0 = time.perf_counter()
    with pytest.raises(models.ModelNotAvailableError) as err:
        models.load_unet(model_id)
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert model_id in msg and f"huggingface-cli download {model_id} --local-dir" in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(models.ModelNotAvailableError, match=model_id):
        models.load_scheduler_config(model_id)


def test_unreachable_hub_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    ok, reason = models.hub_reachable(timeout=1.0)
    assert not ok and "127.0.0.1:9" in reason
    with pytest.raises(models.ModelNotAvailableError, match="unreachable"):
        models.load_unet("someone/some-model-that-is-not-cached", timeout=1.0)


def test_schedule_from_config():
    s = models.schedule_from_config(reference_config("google/ddpm-church-256", "scheduler"))
    assert torch.equal(s.betas, ad.DiscreteSchedule.from_diffusers("linear", 1000, 1e-4, 0.02).betas)
    for bad in ({"prediction_type": "v_prediction"}, {"trained_betas": [0.1]}, {"beta_schedule": "sigmoid"}):
        with pytest.raises(ValueError):
            models.schedule_from_config(bad)


def test_pipeline_layout_and_eps_fn_dtype(tmp_path):
    _tiny_unet().save_pretrained(tmp_path / "unet")
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "linear"}))
    loaded = models.load_unet(tmp_path, dtype=torch.float64)
    assert next(loaded.parameters()).dtype == torch.float64
    assert models.load_scheduler_config(tmp_path) == {"beta_schedule": "linear"}
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = models.eps_fn(loaded)(x, 10)
    assert eps.dtype == torch.float32 and eps.shape == x.shape


def test_church_architecture_is_the_papers(tmp_path):
    """google/ddpm-church-256's exact architecture (the shipped reference config) builds a UNet of its 113.7 M
    parameters, and its scheduler config gives the authors' 5-NFE grid. Saving, loading and sampling one 256x256
    image from such a folder is run end to end through the chapter in
    ``tests/test_learned_scores.py::test_church_architecture_random_weights_one_image``."""
    from conftest import random_unet

    ref = reference_config("google/ddpm-church-256", "unet")
    unet = random_unet(ref, seed=0)
    for k in (
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "layers_per_block",
        "sample_size",
        "in_channels",
    ):
        assert list(unet.config[k]) == list(ref[k]) if isinstance(ref[k], list) else unet.config[k] == ref[k]
    n_params = sum(p.numel() for p in unet.parameters())
    assert 113e6 < n_params < 115e6  # google/ddpm-church-256 has 113.7 M parameters
    schedule = models.schedule_from_config(reference_config("google/ddpm-church-256", "scheduler"))
    assert schedule.subsample(5, "leading").tolist() == [800, 600, 400, 200, 0]


def _tiny_unet():
    from conftest import random_unet

    return random_unet(
        dict(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            block_out_channels=(8, 8),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        ),
        seed=0,
    )


def test_eps_fn_takes_integer_timesteps_only():
    """A UNet fed the float level alpha_bar as its timestep returns plausible but wrong noise: refused, with the
    way to pass integer timesteps in the message."""
    fn = models.eps_fn(_tiny_unet())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in (0.5, 500.0, torch.tensor(0.5), torch.tensor([500.0, 400.0]), True, None):
        with pytest.raises(TypeError, match=r"timesteps=.*run_sampler"):
            fn(x, t)
    for t in (-1, 1000, torch.tensor([999, 1000])):
        with pytest.raises(ValueError, match=r"outside \[0, num_train_timesteps=1000\)"):
            fn(x, t)
    with pytest.raises(ValueError, match="num_train_timesteps=10"):
        models.eps_fn(_tiny_unet(), num_train_timesteps=10)(x, 10)
    for t in (0, 999, torch.tensor(5), torch.tensor([5, 6]), torch.tensor([5], dtype=torch.int32)):
        assert fn(x, t).shape == x.shape
    # sample() without timesteps= passes the levels: refused at the first step, before any wrong output
    schedule = ad.DiscreteSchedule.from_diffusers("linear")
    ts = schedule.subsample(3)
    with pytest.raises(TypeError, match="not an integer"):
        ad.sample(fn, x, schedule.path(ts), "ddim")
    out, nfe = ad.sample(fn, x, schedule.path(ts), "ddim", timesteps=ts.tolist(), return_nfe=True)
    assert nfe == 3 and torch.equal(out, ad.run_sampler(fn, x, "ddim", schedule, ts))
