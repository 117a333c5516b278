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
