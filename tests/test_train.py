"""Tests of accelerated_diffusion.experiments.train: a tiny seeded run, exact resumption, export, command line, bad input."""

from __future__ import annotations

import csv

import pytest
import torch

from accelerated_diffusion.experiments import train
from accelerated_diffusion.experiments.data import load_fashion_mnist

TINY = dict(
    block_out_channels=[8, 16],
    layers_per_block=1,
    attention=True,
    batch_size=8,
    lr=2e-3,
    warmup=2,
    ema_decay=0.9,
    checkpoint_every=1000,
    log_every=2,
)


@pytest.fixture(scope="module")
def images():
    return load_fashion_mnist("train")[0][:64]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical kernels, and polite on a shared machine
    yield
    torch.set_num_threads(n)


def _params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_tiny_run_is_finite_seeded_and_learns(tmp_path, images):
    a = train.Trainer({**TINY, "steps": 30}, tmp_path / "a", images)
    losses = a.run(progress=False)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)  # starts near 1 (unit-variance noise), learns quickly
    b = train.Trainer({**TINY, "steps": 30}, tmp_path / "b", images)
    assert b.run(progress=False) == losses  # same seed, same run
    rows = list(csv.DictReader(open(tmp_path / "a" / train.LOSS_LOG)))
    assert [int(r["step"]) for r in rows] == list(range(2, 31, 2))


def test_resume_continues_exactly(tmp_path, images):
    full = train.Trainer({**TINY, "steps": 6}, tmp_path / "full", images)
    full_losses = full.run(progress=False)
    half = train.Trainer({**TINY, "steps": 6}, tmp_path / "half", images)
    first = half.run(steps=3, progress=False)
    assert (tmp_path / "half" / train.CHECKPOINT).exists()
    resumed = train.Trainer({**TINY, "steps": 6}, tmp_path / "half", images)
    resumed.load_checkpoint()
    assert resumed.step == 3
    rest = resumed.run(progress=False)
    assert first + rest == full_losses
    assert torch.equal(_params(resumed.model), _params(full.model))
    assert torch.equal(_params(resumed.ema), _params(full.ema))
    rows = list(csv.DictReader(open(tmp_path / "half" / train.LOSS_LOG)))
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6]  # the end of each run is logged; the log is appended


def test_resume_refuses_other_settings(tmp_path, images):
    tr = train.Trainer({**TINY, "steps": 1}, tmp_path, images)
    tr.run(progress=False)
    other = train.Trainer({**TINY, "steps": 1, "batch_size": 4}, tmp_path, images)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_checkpoint()


def test_export_loads_with_from_pretrained(tmp_path, images):
    from diffusers import DDPMScheduler, UNet2DModel

    tr = train.Trainer({**TINY, "steps": 2}, tmp_path / "run", images)
    tr.run(progress=False)
    dest = train.export_diffusers(tr, tmp_path / "export")
    assert (dest / "diffusion_pytorch_model.safetensors").exists()
    unet = UNet2DModel.from_pretrained(dest)
    assert torch.equal(_params(unet), _params(tr.ema))
    sched = DDPMScheduler.from_pretrained(dest)
    assert sched.config.beta_schedule == "linear" and sched.config.prediction_type == "epsilon"
    assert (sched.config.beta_start, sched.config.beta_end, sched.config.num_train_timesteps) == (1e-4, 0.02, 1000)
    x = torch.randn(2, 1, 28, 28)
    assert unet(x, torch.tensor([999, 0])).sample.shape == x.shape


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--block-out-channels",
        "8",
        "16",
        "--max-train-images",
        "32",
        "--log-every",
        "1",
        "--no-progress",
        "--export",
        str(tmp_path / "exp"),
    ]
    tr = train.run_command(argv)
    assert tr.step == 2 and (tmp_path / "exp" / "config.json").exists()
    assert train.main(argv) == 2  # an existing checkpoint is never silently overwritten
    assert "--resume" in capsys.readouterr().err
    assert train.main([*argv[:3], "4", *argv[4:], "--resume"]) == 0
    resumed = train.Trainer({**TINY, "batch_size": 4}, out, torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    resumed.load_checkpoint()
    assert resumed.step == 4


def test_bad_input(tmp_path, images):
    with pytest.raises(TypeError, match="uint8"):
        train.images_to_unit_range(images.float())
    with pytest.raises(ValueError, match="28, 28"):
        train.Trainer(TINY, tmp_path, images[:, :, :14])
    with pytest.raises(ValueError, match="28 divisible"):
        train.build_unet((8, 16, 16, 16))
    assert train.main(["--out", str(tmp_path), "--steps", "0"]) == 2
    x = train.images_to_unit_range(torch.tensor([0, 255], dtype=torch.uint8))
    assert x.tolist() == [-1.0, 1.0]


def test_learning_rate_warm_up_and_cosine_decay():
    assert train.learning_rate(0, 1e-3, 4) == pytest.approx(2.5e-4)
    assert train.learning_rate(10, 1e-3, 4) == 1e-3  # constant without lr_final
    # cosine from lr at `start` to lr_final at `steps`, the warm-up counted from `start`
    kw = dict(start=100, steps=200, lr_final=1e-5)
    assert train.learning_rate(100, 1e-3, 1, **kw) == pytest.approx(1e-3)
    assert train.learning_rate(150, 1e-3, 1, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert train.learning_rate(200, 1e-3, 1, **kw) == pytest.approx(1e-5)
    assert train.learning_rate(100, 1e-3, 10, **kw) == pytest.approx(1e-4)  # warm-up again after `start`


def test_init_from_an_export_continues_its_steps_and_log(tmp_path, images):
    first = train.Trainer({**TINY, "steps": 4}, tmp_path / "first", images)
    first.run(progress=False)
    export = train.export_diffusers(first, tmp_path / "export")
    more = train.Trainer({**TINY, "steps": 8, "lr_final": 1e-5}, tmp_path / "more", images)
    more.init_from_export(export)
    assert more.step == 4 and more.cfg.init_step == 4 and more.cfg.init_from == str(export)
    # the exported EMA weights become both the training weights and the EMA
    assert torch.equal(_params(more.model), _params(first.ema)) and torch.equal(_params(more.ema), _params(first.ema))
    losses = more.run(progress=False)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    rows = list(csv.DictReader(open(tmp_path / "more" / train.LOSS_LOG)))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]  # the export's log, then the new steps
    lrs = [float(r["lr"]) for r in rows[2:]]  # the rate of the last step logged: cosine on its way down
    assert TINY["lr"] > lrs[0] > lrs[1] > 1e-5
    # refused: an export at or beyond --steps, other network settings, --init-from with --resume
    with pytest.raises(train.UsageError, match="must exceed"):
        train.Trainer({**TINY, "steps": 4}, tmp_path / "x", images).init_from_export(export)
    with pytest.raises(train.UsageError, match="different settings"):
        train.Trainer({**TINY, "steps": 8, "block_out_channels": [8, 8]}, tmp_path / "y", images).init_from_export(
            export
        )
    with pytest.raises(train.UsageError, match="--init-from"):
        train.run_command(["--out", str(tmp_path / "z"), "--steps", "8", "--init-from", str(export), "--resume"])


def test_model_card_figures_come_from_the_folder(tmp_path, images):
    from accelerated_diffusion.experiments import model_card

    first = train.Trainer({**TINY, "steps": 4}, tmp_path / "first", images)
    first.run(progress=False)
    more = train.Trainer({**TINY, "steps": 8, "lr_final": 1e-5}, tmp_path / "more", images)
    more.init_from_export(train.export_diffusers(first, tmp_path / "export"))
    more.run(progress=False)
    folder = train.export_diffusers(more, tmp_path / "export2")
    log = model_card.read_loss_log(folder)
    assert list(log["step"]) == [2, 4, 6, 8] and log["lr"][-1] < TINY["lr"]
    assert model_card._continued_from(folder) == 4  # marked on the loss figure
    a = model_card.sample_grid(folder, 3, nfe=2, seed=5)
    assert a.shape == (3, 1, 28, 28) and a.abs().max() <= 1
    assert torch.equal(a, model_card.sample_grid(folder, 3, nfe=2, seed=5))
    assert not torch.equal(a, model_card.sample_grid(folder, 3, nfe=2, seed=6))
    paths = model_card.write_figures(folder, n=4, nfe=2)
    assert [p.name for p in paths] == ["loss_curve.png", "samples.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    # bad input fails before any sampling: unknown sampler, empty grid, folder without a loss log
    with pytest.raises(ValueError, match="nope"):
        model_card.write_figures(folder, sampler="nope")
    with pytest.raises(ValueError, match="n >= 1"):
        model_card.write_figures(folder, n=0)
    (folder / "loss.csv").unlink()
    with pytest.raises(FileNotFoundError, match="loss log"):
        model_card.write_figures(folder)
