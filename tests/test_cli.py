"""The accelerated-diffusion command (accelerated_diffusion.cli): dispatch to each module's main(argv)."""

import importlib
import shutil
import subprocess
import sys

import pytest

from accelerated_diffusion import cli


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
    module, func, _ = cli.COMMANDS[name]
    assert callable(getattr(importlib.import_module(module), func))
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_dispatch_passes_arguments(monkeypatch):
    seen = {}

    def fake(argv):
        seen["argv"] = argv
        return 3

    import accelerated_diffusion.generate as g

    monkeypatch.setattr(g, "metrics_main", fake)
    assert cli.main(["metrics", "x/manifest.json", "--out", "m.json"]) == 3
    assert seen["argv"] == ["x/manifest.json", "--out", "m.json"]


def test_console_script():
    exe = shutil.which("accelerated-diffusion", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "console script missing: reinstall the package (pip install -e .)"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "train-classifier" in res.stdout
