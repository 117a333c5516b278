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

What the writers leave behind: final files and folders get the permissions of the umask (as ``open`` and
``mkdir`` give them), never the private ``0o600``/``0o700`` of :mod:`tempfile`; temporaries are named
``.<name>.<pid>-<random>.tmp`` (folders swapped out: ``.old``) beside their destination, and the next write to the
same destination deletes those of processes that no longer run (a write killed with ``SIGKILL`` leaves no orphan
behind the next run).  A folder is replaced (:func:`replace_folder`) only when it is empty or an earlier export of
the same kind: marked by :data:`~accelerated_diffusion.integrity.EXPORT_MARKER` (or, for folders written before
the marker, recognised by the files their ``SHA256SUMS`` lists) and holding nothing but that kind's files.
:func:`folder_lock` keeps a second writer out of a run folder (``fcntl.flock``; released when the process ends,
so a lock is never stale).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import warnings
from pathlib import Path

from ..integrity import EXPORT_MARKER, SHA256SUMS, read_sha256sums, sha256sums_text

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
    "FolderInUseError",
    "folder_lock",
    "LOCK_FILE",
    "export_kind",
    "check_replaceable",
    "replace_folder",
    "clean_stale_temporaries",
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


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (``True`` where that cannot be told, so nothing is deleted)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def _umask() -> int:
    """The process's umask (from ``/proc`` where it can be read, else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_name(name: str, suffix: str) -> str:
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def clean_stale_temporaries(folder, name: str) -> list[Path]:
    """Delete the temporaries ``.<name>.<pid>-<random>.tmp`` / ``.old`` in ``folder`` left by writes of ``name``
    whose process no longer runs (killed mid-write); returns what was deleted.  Those of running processes (a
    concurrent writer) and files of any other name are left alone, and so is everything where a process cannot be
    looked up by its id (outside POSIX systems)."""
    folder, removed = Path(folder), []
    prefix = f".{name}."
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        n = p.name
        if not n.startswith(prefix) or not n.endswith((".tmp", ".old")):
            continue
        pid, sep, token = n[len(prefix) : -4].partition("-")
        if not (sep and pid.isdigit() and token.isalnum()) or _pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file ``.<name>.<pid>-<random>.tmp`` in the same folder
    (created with the umask's permissions), flushed, then renamed over ``path``; an interruption leaves either the
    old file or the new one, never a partial file, and the temporaries of killed earlier writes to ``path`` are
    deleted (:func:`clean_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path.parent, path.name)
    tmp = path.parent / _temp_name(path.name, ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_sha256sums(folder, names) -> Path:
    """Record the SHA-256 of the files ``names`` of ``folder`` in ``<folder>/SHA256SUMS`` (atomically), the sums
    :func:`accelerated_diffusion.integrity.verify_sha256sums` checks before loading."""
    return atomic_write_text(Path(folder) / SHA256SUMS, sha256sums_text(folder, names))


LOCK_FILE = ".accelerated-diffusion.lock"


class FolderInUseError(OSError):
    """Another process holds the lock of a run folder (:func:`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(folder, command: str = "accelerated-diffusion"):
    """Hold an exclusive lock on ``folder`` (created if missing) for the block: ``fcntl.flock`` on
    ``<folder>/.accelerated-diffusion.lock``, taken without waiting, so a second writer fails at once with
    :class:`FolderInUseError` naming the holder.  The operating system releases the lock when its process ends
    (killed or not), so it is never stale; the lock file itself stays.  Where ``fcntl`` does not exist (Windows) the
    block runs unlocked after a warning."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        warnings.warn(
            f"{command}: no folder locks on this platform; do not run two commands into {folder} at once",
            RuntimeWarning,
            stacklevel=3,
        )
        yield None
        return
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise FolderInUseError(
                f"{folder} is in use by another process ({holder}); wait for it to finish or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command}, pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def export_kind(folder, legacy: dict[str, tuple[str, ...]] | None = None) -> str | None:
    """The kind of export ``folder`` holds: the ``kind`` in its :data:`~accelerated_diffusion.integrity.EXPORT_MARKER`,
    else (a folder written before the marker existed) the first kind of ``legacy`` (``{kind: file names}``) whose
    file names its ``SHA256SUMS`` all lists; None when neither says."""
    folder = Path(folder)
    marker = folder / EXPORT_MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (ValueError, AttributeError, OSError, UnicodeDecodeError):
            return None
        return kind if isinstance(kind, str) else None
    try:
        sums = read_sha256sums(folder)
    except ValueError:
        return None
    for kind, names in (legacy or {}).items():
        if sums and all(n in sums for n in names):
            return kind
    return None


def check_replaceable(dest, kind: str, files=(), legacy=()) -> None:
    """Raise ``FileExistsError`` unless ``dest`` may be replaced by an export of ``kind``: it does not exist, is an
    empty folder, or is an earlier export of the same kind (:func:`export_kind`; ``legacy``: the file names whose
    listing in ``SHA256SUMS`` marks an export written before the marker) holding only files such an export holds
    (``files``, the marker and ``SHA256SUMS``).  Anything else -- a file, a folder of the user's, an export of another
    kind, an export to which other files were added -- is never deleted."""
    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    if not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder; choose another destination")
    entries = list(dest.iterdir())
    if not entries:
        return
    found = export_kind(dest, {kind: tuple(legacy)} if legacy else None)
    if found != kind:
        what = f"an export of another kind ({found})" if found else "not a folder this command wrote"
        raise FileExistsError(f"{dest} is {what}; it is never replaced: choose another (new or empty) folder")
    allowed = {EXPORT_MARKER, SHA256SUMS, *files}
    other = sorted(p.name + ("/" if p.is_dir() else "") for p in entries if p.name not in allowed or not p.is_file())
    if other:
        raise FileExistsError(
            f"{dest} holds files that are not part of an export ({', '.join(other[:5])}); it is "
            "never replaced: move them away or choose another folder"
        )


@contextlib.contextmanager
def replace_folder(dest, kind: str, *, files=(), legacy=()):
    """Write a folder as a whole: yields an empty temporary folder ``.<name>.<pid>-<random>.tmp`` beside ``dest``
    holding only the export marker (:data:`~accelerated_diffusion.integrity.EXPORT_MARKER`, ``{"kind": kind}``);
    when the block finishes, the old ``dest`` (if any) is moved aside, the new folder renamed to ``dest`` and the old
    one deleted.  ``dest`` must be replaceable (:func:`check_replaceable` with ``files`` and ``legacy``), checked
    before the block runs and again before the swap.  If the block raises (or is interrupted), ``dest`` is left as
    it was and the temporary folder removed, so ``dest`` is never a mixture of an old and a new run; the temporaries
    of killed earlier writes are deleted first (:func:`clean_stale_temporaries`)."""
    from .. import __version__

    dest = Path(dest)
    check_replaceable(dest, kind, files, legacy)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(dest.parent, dest.name)
    tmp = dest.parent / _temp_name(dest.name, ".tmp")
    tmp.mkdir()  # the umask's permissions, as the final folder should have
    try:
        (tmp / EXPORT_MARKER).write_text(
            dumps_strict({"kind": kind, "written_by": f"accelerated_diffusion {__version__}"}, indent=1) + "\n"
        )
        yield tmp
        check_replaceable(dest, kind, files, legacy)  # nobody put anything there meanwhile
        mask = _umask()
        for f in tmp.rglob("*"):  # what libraries wrote privately (safetensors: 0o600) gets the umask's permissions
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o666 & ~mask)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.parent / _temp_name(dest.name, ".old")
        os.replace(dest, old)
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
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        ).stdout

    try:
        root = repository_root().resolve()
        top, head = git("rev-parse", "--show-toplevel", "HEAD").splitlines()
        if Path(top).resolve() != root:
            return None, None
        status = git(
            "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":(exclude){p}" for p in GENERATED_PATHS)
        )
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
