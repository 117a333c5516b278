"""The project's own plumbing: one dependency list, the two README commands, CI, and chapter hygiene."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def test_environment_yml_installs_the_pyproject_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert python and python[0].replace("python", "") == PYPROJECT["project"]["requires-python"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert len(pip) == 1, "the pip section must only install the project itself (pyproject.toml is the single list)"
    m = re.fullmatch(r"-e \.\[(.*)\]", pip[0])
    assert m, pip
    assert set(m.group(1).split(",")) == set(PYPROJECT["project"]["optional-dependencies"])


def test_makefile_installs_the_same_extras_and_readme_gives_two_commands():
    makefile = (ROOT / "Makefile").read_text()
    extras = ",".join(sorted(PYPROJECT["project"]["optional-dependencies"]))
    assert f"-e '.[{extras}]'" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_jupyter_book_config_fails_on_errors_and_never_executes():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"  # papermill executes; no stale cache
    assert cfg["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    assert "-W" in (ROOT / "Makefile").read_text().split("jupyter-book build", 1)[1].splitlines()[0]
    pins = [d for d in PYPROJECT["project"]["optional-dependencies"]["book"] if d.startswith("jupyter-book")]
    assert pins == ["jupyter-book>=1.0.4.post1,<2"]


def _toc_files(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("file", "root"):
                yield v
            else:
                yield from _toc_files(v)
    elif isinstance(node, list):
        for v in node:
            yield from _toc_files(v)


def test_every_chapter_is_in_the_toc_and_every_toc_entry_exists():
    toc = set(_toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text())))
    for nb in CHAPTERS:
        assert f"chapters/{nb.stem}" in toc, f"{nb.name} is not in _toc.yml"
    for entry in toc:
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), entry


def test_chapters_have_parameters_outputs_and_checked_cells():
    assert CHAPTERS, "no chapters"
    for nb_path in CHAPTERS:
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
        tags = [set(c.get("metadata", {}).get("tags", [])) for c in code]
        assert "parameters" in tags[0], f"{nb_path.name}: first code cell must be tagged 'parameters'"
        assert any("nbval-check-output" in t for t in tags), f"{nb_path.name}: no cell tagged nbval-check-output"
        assert all(c.get("outputs") for c, t in zip(code, tags) if "nbval-check-output" in t), (
            f"{nb_path.name}: checked cell without output"
        )
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{nb_path.name}: committed with an error output"
        assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_src_and_tests_are_formatted_by_ruff():
    """One formatter over the library and its tests (``ruff format``, 120 columns, ``[tool.ruff]`` in
    pyproject.toml): a change that is not formatted fails here with the files to run ``ruff format`` on."""
    import subprocess
    import sys

    pytest.importorskip("ruff")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "src", "tests"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, f"run `ruff format src tests`:\n{res.stdout[-3000:]}{res.stderr[-2000:]}"
