"""Where the reproduction's files live, and reading/writing the numbers the book cites.

Locations are explicit, never discovered by walking up the directory tree:

* the **repository** -- ``$ACCELERATED_DIFFUSION_ROOT`` if set, else the checkout this package was imported from
  (the folder above ``src/``); an installed copy outside a checkout must set the variable;
* the **shipped data** (models, reference configs) -- ``<repository>/data`` (:func:`data_dir`);
* the **results** the chapters write -- ``$ACCELERATED_DIFFUSION_RESULTS`` if set (the test suite points it at a
  temporary folder so that a test run leaves the checkout untouched), else ``<repository>/data/results``
  (:func:`results_dir`); every function that writes also takes an explicit ``folder``.

Writes are atomic (:func:`atomic_write_text`: a temporary file in the same folder, then ``os.replace``) and the JSON
is strict: a non-finite float raises instead of being written as ``NaN``/``Infinity``.  Every results file carries
its :func:`provenance`: the package version, the commit of the code, the parameters and the library versions.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..integrity import SHA256SUMS, sha256sums_text

__all__ = [
    "ROOT_ENV",
    "RESULTS_ENV",
    "repository_root",
    "data_dir",
    "results_dir",
    "in_repository",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_sha256sums",
    "replace_folder",
    "dumps_strict",
    "check_params",
    "provenance",
    "save_results",
    "load_results",
]

ROOT_ENV = "ACCELERATED_DIFFUSION_ROOT"
RESULTS_ENV = "ACCELERATED_DIFFUSION_RESULTS"
GIT_TIMEOUT_S = 5.0
# written by the book's own build (results, executed chapters): not a change of the code behind a result
GENERATED_PATHS = ("data/results", "chapters/*.ipynb")
_CHECKOUT = Path(__file__).resolve().parents[3]  # <checkout>/src/accelerated_diffusion/experiments/paths.py


def repository_root() -> Path:
    """``$ACCELERATED_DIFFUSION_ROOT``, else the checkout holding this package's ``src/`` folder."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).resolve()
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "data").is_dir():
        return _CHECKOUT
    raise FileNotFoundError(
        f"this copy of accelerated_diffusion is not inside a repository checkout; set {ROOT_ENV} to the "
        "repository folder (the one holding data/) to use the shipped models and results"
    )


def data_dir() -> Path:
    """The shipped data: ``<repository>/data``."""
    return repository_root() / "data"


def in_repository(path_or_id):
    """``<repository>/<path_or_id>`` when that exists (e.g. ``"data/fmnist-ddpm"`` from a chapter, whose working
    directory is ``chapters/``), else ``path_or_id`` unchanged (an absolute path or a hub id)."""
    p = Path(str(path_or_id))
    if not p.is_absolute():
        candidate = repository_root() / p
        if candidate.exists():
            return candidate
    return path_or_id


def results_dir() -> Path:
    """``$ACCELERATED_DIFFUSION_RESULTS`` if set, else ``<repository>/data/results``."""
    env = os.environ.get(RESULTS_ENV)
    return Path(env).resolve() if env else data_dir() / "results"


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, flushed, then renamed over
    ``path``; an interruption leaves either the old file or the new one, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_sha256sums(folder, names) -> Path:
    """Record the SHA-256 of the files ``names`` of ``folder`` in ``<folder>/SHA256SUMS`` (atomically), the sums
    :func:`accelerated_diffusion.integrity.verify_sha256sums` checks before loading."""
    return atomic_write_text(Path(folder) / SHA256SUMS, sha256sums_text(folder, names))


@contextlib.contextmanager
def replace_folder(dest):
    """Write a folder as a whole: yields an empty temporary folder beside ``dest``; when the block finishes, the
    old ``dest`` (if any) is moved aside, the new folder renamed to ``dest`` and the old one deleted.  If the block
    raises (or is interrupted), ``dest`` is left as it was and the temporary folder removed, so ``dest`` is never
    a mixture of an old and a new run."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"{dest} exists and is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / dest.name)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def dumps_strict(obj, **kwargs) -> str:
    """``json.dumps`` that refuses NaN and infinities (``ValueError``) instead of writing non-standard JSON; store
    a missing number as ``None`` together with the reason."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError as err:
        raise ValueError(f"{err}: store a non-finite number as null with the reason instead") from None


def _results_path(name: str, folder) -> Path:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"results name must be a plain file name, got {name!r}")
    base = Path(folder) if folder is not None else results_dir()
    return base / (name if name.endswith(".json") else name + ".json")


def _git_state() -> tuple[str | None, bool | None]:
    """``(commit, tree_modified)`` of :func:`repository_root` when it is the top level of a git checkout, else
    ``(None, None)`` (no git, no checkout, an installed copy, a folder inside some other repository, a timeout)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=True).stdout

    try:
        root = repository_root().resolve()
        top, head = git("rev-parse", "--show-toplevel", "HEAD").splitlines()
        if Path(top).resolve() != root:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                     *(f":(exclude){p}" for p in GENERATED_PATHS))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None, None
    return head.strip(), bool(status.strip())


def _module_version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def check_params(params: dict | None) -> dict:
    """``params`` (``{}`` for ``None``) after checking that it is a dict that :func:`dumps_strict` can write, so that
    a run can refuse settings it could not record before it starts."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of the run's settings, got {type(params).__name__}")
    try:
        dumps_strict(params)
    except TypeError as err:
        raise TypeError(f"params must be JSON-serialisable: {err}") from None
    return params


def provenance(params: dict | None = None) -> dict:
    """Where a result comes from: ``{"package", "package_version", "commit", "tree_modified", "python",
    "versions": {"torch", "diffusers", "numpy"}, "parameters"}``.

    ``commit`` is ``git rev-parse HEAD`` of :func:`repository_root` and ``tree_modified`` whether a tracked file
    differs from it (``git status --porcelain --untracked-files=no``), leaving out the files the book's build writes
    itself (:data:`GENERATED_PATHS`: the results and the executed chapters); both are ``None`` where that cannot be
    read (no git, not a checkout).  ``parameters`` is ``params`` (:func:`check_params`).  No time stamp and no host
    name: the record depends on the code, the settings and the versions only."""
    from .. import __version__

    params = check_params(params)
    commit, tree_modified = _git_state()
    return {
        "package": "accelerated_diffusion",
        "package_version": __version__,
        "commit": commit,
        "tree_modified": tree_modified,
        "python": platform.python_version(),
        "versions": {name: _module_version(name) for name in ("torch", "diffusers", "numpy")},
        "parameters": params,
    }


def save_results(name: str, obj: dict, *, folder=None, params: dict | None = None) -> Path:
    """Write the dict ``obj`` as strict, pretty JSON to ``<folder>/<name>`` (default :func:`results_dir`; ``.json``
    added if missing), atomically, with the top-level key ``"provenance"`` first (:func:`provenance` of ``params``,
    the settings of the run); ``obj`` itself is not changed.  Returns the path."""
    if not isinstance(obj, dict):
        raise TypeError(f"save_results needs a dict (it adds a top-level 'provenance' key), got {type(obj).__name__}")
    if "provenance" in obj:
        raise ValueError("obj already has a 'provenance' key; save_results writes it (pass the settings as params)")
    path = _results_path(name, folder)
    return atomic_write_text(path, dumps_strict({"provenance": provenance(params), **obj}, indent=2) + "\n")


def load_results(name: str, *, folder=None):
    """Read ``<folder>/<name>`` written by :func:`save_results` (default :func:`results_dir`, then the shipped
    ``data/results`` when the results folder has no such file, so a chapter can show committed numbers)."""
    path = _results_path(name, folder)
    if not path.exists() and folder is None:
        shipped = data_dir() / "results" / path.name
        if shipped.exists():
            path = shipped
    if not path.exists():
        raise FileNotFoundError(f"no results file {path.name}: run the chapter or command that writes it")
    return json.loads(path.read_text())
