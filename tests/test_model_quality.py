"""Model quality at many steps against the real-data floor (accelerated_diffusion.experiments.model_quality)."""

import numpy as np
import pytest
import torch

from accelerated_diffusion.experiments import features, model_quality, train


def test_bootstrap_interval_covers_a_known_distance():
    """Gaussian features whose mean is shifted by 0.5 in each of 4 coordinates: the FD to N(0, I) is 1."""
    rng = np.random.default_rng(0)
    ref = (np.zeros(4), np.eye(4))
    f = rng.standard_normal((4000, 4)) + 0.5
    r = features.frechet_with_interval(f, ref, num_boot=100, seed=1)
    assert r["value"] == pytest.approx(features.frechet_distance_from_stats(f.mean(0), np.cov(f, rowvar=False), *ref))
    lo, hi = r["ci"]
    assert lo < r["value"] < hi and lo < 1.0 < hi
    assert hi - lo < 0.3
    assert r == features.frechet_with_interval(f, ref, num_boot=100, seed=1)  # seeded
    assert (r["num_samples"], r["num_boot"]) == (4000, 100)
    # resampling repeats rows: the resampled distances sit above the value (the small-sample bias)
    assert r["bootstrap_mean"] > r["value"]


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="feature array"):
        features.frechet_with_interval(np.zeros(5), (np.zeros(1), np.eye(1)))
    with pytest.raises(ValueError, match="num_boot"):
        features.frechet_with_interval(np.zeros((5, 2)), (np.zeros(2), np.eye(2)), num_boot=19)
    with pytest.raises(ValueError, match="level"):
        features.frechet_with_interval(np.zeros((5, 2)), (np.zeros(2), np.eye(2)), level=1.0)


def test_sample_features_same_noises(tmp_path, one_thread):
    """Batch ``b`` starts from noise seeded ``seed + b``: a smaller n gives the first rows of a larger one."""
    torch.manual_seed(0)
    train.build_unet((8, 16)).save_pretrained(tmp_path)
    train.build_scheduler().save_pretrained(tmp_path)
    a = model_quality.sample_features(tmp_path, 5, nfe=2, batch_size=3, progress=False)
    b = model_quality.sample_features(tmp_path, 3, nfe=2, batch_size=3, progress=False)
    assert a.shape == (5, features.FEATURE_DIM) and np.isfinite(a).all()
    np.testing.assert_allclose(a[:3], b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown sampler"):
        model_quality.sample_features(tmp_path, 5, sampler="no_such_sampler")


def test_command_line_needs_step_and_folder():
    with pytest.raises(SystemExit):
        model_quality.main(["--model", "data/fmnist-ddpm"])


def test_paired_difference_cancels_the_shared_noise():
    """Two feature sets from the same draws, means shifted by 0.5 and 0.4 in 4 coordinates: FDs 1.0 and 0.64 to
    N(0, I). Resampling the same rows of both cancels the draw: the paired interval is much narrower than either
    FD's own, and it calls the change."""
    rng = np.random.default_rng(0)
    ref = (np.zeros(4), np.eye(4))
    z = rng.standard_normal((1000, 4))
    d = model_quality.paired_difference(z + 0.4, z + 0.5, ref, replicates=200, seed=1)
    a = features.frechet_with_interval(z + 0.4, ref, num_boot=200, seed=1)
    b = features.frechet_with_interval(z + 0.5, ref, num_boot=200, seed=1)
    assert d["value"] == pytest.approx(a["value"] - b["value"])
    lo, hi = d["ci"]
    assert lo < d["value"] < hi < 0 and lo < -0.36 < hi
    assert hi - lo < 0.5 * min(a["ci"][1] - a["ci"][0], b["ci"][1] - b["ci"][0])
    assert model_quality.paired_difference(z, z, ref) == {"value": 0.0, "ci": [0.0, 0.0]}
    with pytest.raises(ValueError, match="same shape"):
        model_quality.paired_difference(z, z[:-1], ref)


def test_record_gives_each_later_checkpoint_its_paired_change(monkeypatch):
    monkeypatch.setattr(model_quality, "real_data_floor", lambda n, **kw: {"n": n})
    rng = np.random.default_rng(1)
    z = rng.standard_normal((200, features.FEATURE_DIM))
    mu, _ = features.load_reference_stats("test")
    feats = {9000: mu + 0.5 * z, 4750: mu + 0.5 * z + 0.05}
    r = model_quality.record(feats, replicates=20, shipped_step=9000)
    first, later = r["checkpoints"]
    assert (first["step"], first["change"], later["step"]) == (4750, None, 9000)
    assert later["change"]["from_step"] == 4750
    assert later["change"]["value"] == pytest.approx(later["fd"]["value"] - first["fd"]["value"])


def _scheduler_only(folder):
    """A model folder with only its scheduler config: enough for every argument check, no weights to load."""
    train.build_scheduler().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "bad,match",
    [
        (["--replicates", "5"], "--replicates must be >= 20"),
        (["--name", "../x"], "--name: results name must be a plain file name"),
        (["--n", "2"], r"--n must lie in \[3, 60,000\]"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--nfe", "0"], "--nfe must be >= 1"),
        (["--nfe", "3000"], "num_steps must be in"),
        (["--sampler", "diffusers_unipc_bh2", "--spacing", "logsnr"], "diffusers' UniPCMultistepScheduler cannot"),
        (["--shipped-step", "7"], "--shipped-step 7 is none of the --model steps"),
        (["--features-only"], "--features-only needs --cache"),
        (["--cache", "CACHE"], "no diffusion_pytorch_model.safetensors"),
        (["--model", "5=MODEL"], "--model lists a step twice"),
        (["--model", "6=nowhere"], "--model 6=nowhere: no such folder"),
    ],
)
def test_every_argument_is_checked_before_any_data_or_model_load(tmp_path, monkeypatch, capsys, bad, match):
    def no_loading(*a, **k):
        raise AssertionError("data or a model was loaded before the arguments were checked")

    for name in ("load_unet", "load_fashion_mnist", "sample_features", "measure"):
        monkeypatch.setattr(model_quality, name, no_loading)
    model = _scheduler_only(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    bad = [{"MODEL": str(model), "CACHE": str(tmp_path / "cache")}.get(b, b) for b in bad]
    assert model_quality.main(["--model", f"5={model}", *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("accelerated-diffusion model-quality: error:"), err
    assert __import__("re").search(match, err), err


def test_feature_cache_keys_on_the_classifier_too(tmp_path, monkeypatch):
    """Features cached with one classifier are not returned after the classifier changed (same UNet weights,
    same settings): they are sampled again."""
    import shutil

    from accelerated_diffusion.experiments import paths

    clf = tmp_path / "classifier"
    shutil.copytree(paths.data_dir() / "fmnist-classifier", clf)
    monkeypatch.setattr(features, "default_classifier_dir", lambda: clf)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    calls = []

    def fake_sample(folder, n, progress=True, **settings):
        calls.append(features.classifier_digest())
        return np.full((n, 2), float(len(calls)))

    monkeypatch.setattr(model_quality, "sample_features", fake_sample)
    settings = dict(nfe=2, sampler="ddim", spacing="leading", batch_size=3, seed=1000)
    first = model_quality._cached_features(tmp_path / "model", 4, tmp_path / "cache", False, **settings)
    again = model_quality._cached_features(tmp_path / "model", 4, tmp_path / "cache", False, **settings)
    assert len(calls) == 1 and np.array_equal(first, again)  # a cache hit with the same classifier
    (clf / "model.safetensors").write_bytes((clf / "model.safetensors").read_bytes()[:-1] + b"\0")  # retrained
    after = model_quality._cached_features(tmp_path / "model", 4, tmp_path / "cache", False, **settings)
    assert len(calls) == 2 and calls[0] != calls[1] and after[0, 0] == 2.0
