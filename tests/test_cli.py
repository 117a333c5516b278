"""The accelerated-diffusion command (accelerated_diffusion.experiments.cli): dispatch to each command's main(argv)."""

import shutil
import subprocess
import sys

import pytest

from accelerated_diffusion.experiments import cli


def test_usage_lists_every_command(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "generate", "metrics", "train-classifier"))


def test_unknown_command(capsys):
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_reaches_its_parser(name, capsys):
    func, _ = cli.COMMANDS[name]
    assert callable(func)
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_dispatch_passes_arguments(monkeypatch):
    seen = {}

    def fake(argv):
        seen["argv"] = argv
        return 3

    monkeypatch.setitem(cli.COMMANDS, "metrics", (fake, "stand-in"))
    assert cli.main(["metrics", "x/manifest.json", "--out", "m.json"]) == 3
    assert seen["argv"] == ["x/manifest.json", "--out", "m.json"]


def test_console_script():
    exe = shutil.which("accelerated-diffusion", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "console script missing: reinstall the package (pip install -e .)"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "train-classifier" in res.stdout


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing-folder", "does not exist"),
        ("no-loss-log", "loss.csv not found"),
        ("bad-loss-log", "every row needs numbers"),
        ("--n 0", "--n must be >= 1"),
        ("--nfe 0", "--nfe must be >= 1"),
        ("--seed -1", "--seed must be >= 0"),
        ("--nfe 3000", "num_steps must be in"),
        ("--sampler diffusers_unipc_bh2 --spacing logsnr", "UniPCMultistepScheduler cannot"),
        ("bad-training-state", "not a training state"),
    ],
)
def test_model_card_bad_input_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys, case, match):
    """Every bad input of model-card ends in a one-line error with exit status 2 (no traceback), before the
    model is loaded and before anything is written."""
    from accelerated_diffusion.experiments import model_card, train

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(model_card, "load_unet", no_loading)
    folder = tmp_path / "model"
    train.build_scheduler().save_pretrained(folder)
    (folder / "loss.csv").write_text("step,loss,lr\n10,0.5,1e-4\n20,0.4,1e-4\n")
    args = [str(folder)]
    if case == "missing-folder":
        args = [str(tmp_path / "nowhere")]
    elif case == "no-loss-log":
        (folder / "loss.csv").unlink()
    elif case == "bad-loss-log":
        (folder / "loss.csv").write_text("step,loss,lr\n10,0.5\n")
    elif case == "bad-training-state":
        (folder / "training_state.json").write_text("[1, 2]")
    else:
        args += case.split()
    assert cli.main(["model-card", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("accelerated-diffusion model-card: error:"), err
    assert match in err, err
    assert not list(folder.glob("*.png")) if folder.exists() else True
