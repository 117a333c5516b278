"""Where the project's files live, and reading/writing the numbers the book cites (``data/results``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["project_root", "data_dir", "results_dir", "save_results", "load_results"]


def project_root() -> Path:
    """The repository root: ``$ACCELERATED_DIFFUSION_ROOT`` if set, else the first folder at or above the current
    directory holding ``_toc.yml`` and ``pyproject.toml``, else the folder above ``src/`` of this package."""
    env = os.environ.get("ACCELERATED_DIFFUSION_ROOT")
    if env:
        return Path(env).resolve()
    for p in [Path.cwd(), *Path.cwd().parents]:
        if (p / "_toc.yml").exists() and (p / "pyproject.toml").exists():
            return p
    here = Path(__file__).resolve()
    if here.parents[1].name == "src":
        return here.parents[2]
    raise FileNotFoundError(
        "cannot find the project root (a folder with _toc.yml and pyproject.toml); "
        "run from inside the repository or set ACCELERATED_DIFFUSION_ROOT"
    )


def data_dir() -> Path:
    return project_root() / "data"


def results_dir() -> Path:
    return data_dir() / "results"


def save_results(name: str, obj) -> Path:
    """Write ``obj`` as pretty JSON to ``data/results/<name>`` (``.json`` added if missing); returns the path."""
    path = results_dir() / (name if name.endswith(".json") else name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return path


def load_results(name: str):
    """Read ``data/results/<name>`` written by :func:`save_results`."""
    path = results_dir() / (name if name.endswith(".json") else name + ".json")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the chapter or command that writes it")
    return json.loads(path.read_text())
