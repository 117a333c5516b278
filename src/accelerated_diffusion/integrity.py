"""SHA-256 sums recorded beside shipped files, checked before they are loaded.

A folder of weights (``data/fmnist-ddpm``, ``data/fmnist-classifier``, or any folder written by the project's
export commands) holds a ``SHA256SUMS`` file in the format of ``sha256sum`` (``<hex digest>  <file name>`` per
line), so ``sha256sum -c SHA256SUMS`` checks it too.  :func:`verify_sha256sums` raises
:class:`ChecksumError` naming the file when its bytes differ from the recorded sum -- e.g. weights whose tensor
bytes were overwritten while the header stayed intact, which would otherwise load as NaN or garbage weights.

The check fails closed:

* a sums file must be **complete**: every weight or configuration file of the folder (:data:`CHECKED_SUFFIXES`:
  ``.json``, ``.safetensors``, ``.bin``, ...) and every file a loader asks for must be listed -- an emptied sums
  file, or one with a line removed, is refused, not read as "nothing to check";
* a folder written by the project (:func:`is_project_folder`: it holds the export marker
  :data:`EXPORT_MARKER`, a ``training_state.json`` of ``train --export`` or the ``test_stats.safetensors`` of
  ``train-classifier``) is refused when its ``SHA256SUMS`` is missing;
* a folder of someone else's weights with no ``SHA256SUMS`` at all (e.g. a ``save_pretrained`` copy of a hub
  model) records nothing to check and loads as it is.

The sums file itself may have CRLF line endings (a checkout converted by Git for Windows); the files it lists are
compared byte for byte (the repository's ``.gitattributes`` keeps them byte-exact on every OS).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = [
    "SHA256SUMS",
    "EXPORT_MARKER",
    "CHECKED_SUFFIXES",
    "ChecksumError",
    "sha256_file",
    "sha256sums_text",
    "read_sha256sums",
    "is_project_folder",
    "verify_sha256sums",
]

SHA256SUMS = "SHA256SUMS"
EXPORT_MARKER = "accelerated_diffusion_export.json"  # written first into every folder an export command makes
# weights and configurations: what a loader reads, so what a complete SHA256SUMS lists
CHECKED_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")
# files only the project's export commands write (see is_project_folder)
_PROJECT_FILES = (EXPORT_MARKER, "training_state.json", "test_stats.safetensors")
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class ChecksumError(ValueError):
    """A file whose SHA-256 differs from the sum recorded beside it, that is listed but missing, or that a
    complete ``SHA256SUMS`` should list but does not (or a project folder without ``SHA256SUMS``)."""


def sha256_file(path) -> str:
    """Hex SHA-256 of the file ``path`` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256sums_text(folder, names) -> str:
    """The ``SHA256SUMS`` text (``sha256sum`` format) for the files ``names`` of ``folder``, sorted by name."""
    folder = Path(folder)
    return "".join(f"{sha256_file(folder / n)}  {n}\n" for n in sorted(names))


def read_sha256sums(folder) -> dict[str, str] | None:
    """``{file name: hex digest}`` from ``<folder>/SHA256SUMS``, or None when the folder has no such file.  LF and
    CRLF line endings (and a leading byte-order mark) are read alike; ``sha256sum -b``'s ``*`` before the name is
    accepted.  A line in any other form raises :class:`ChecksumError`."""
    f = Path(folder) / SHA256SUMS
    if not f.is_file():
        return None
    try:
        text = f.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise ChecksumError(f"{f} is not a text file of '<sha256>  <file name>' lines") from None
    sums = {}
    for i, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise ChecksumError(f"{f}: line {i} is not '<sha256>  <file name>': {line!r}")
        sums[m.group(2)] = m.group(1).lower()
    return sums


def is_project_folder(folder) -> bool:
    """Whether ``folder`` was written by one of the project's export commands (it holds :data:`EXPORT_MARKER`,
    ``training_state.json`` or ``test_stats.safetensors``), so that it must carry a ``SHA256SUMS``."""
    folder = Path(folder)
    return any((folder / n).is_file() for n in _PROJECT_FILES)


def _crlf_hint(path: Path, digest: str) -> str:
    """A hint when ``path`` matches ``digest`` once its CRLF line endings are made LF (a Windows checkout)."""
    try:
        raw = path.read_bytes() if path.stat().st_size < (64 << 20) else b""
    except OSError:
        return ""
    if b"\r\n" in raw and hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest() == digest:
        return (
            " (its line endings were converted to CRLF, e.g. by Git's core.autocrlf: the repository's "
            ".gitattributes keeps these files byte-exact; check them out again with `git rm --cached -r <folder>` "
            "and `git checkout -- <folder>`)"
        )
    return ""


def verify_sha256sums(folder, names=None) -> list[str]:
    """Check the files of ``folder`` against its ``SHA256SUMS`` (only those in ``names`` when given; all listed files
    otherwise) and return the names checked.

    Raises :class:`ChecksumError` naming the file when a listed file is missing or its bytes differ; when the sums
    file does not list a file of ``names`` that exists, or a weight/config file of the folder
    (:data:`CHECKED_SUFFIXES`), i.e. is incomplete (an empty sums file lists nothing); and when the folder has no
    ``SHA256SUMS`` although the project wrote it (:func:`is_project_folder`).  A folder with no sums that the
    project did not write returns ``[]`` (nothing recorded, nothing checked)."""
    folder = Path(folder)
    sums_path = folder / SHA256SUMS
    sums = read_sha256sums(folder)
    if sums is None:
        if is_project_folder(folder):
            raise ChecksumError(
                f"{folder} was written by accelerated-diffusion but has no {SHA256SUMS}: its files cannot be checked; "
                "restore the folder (e.g. `git checkout -- <folder>`) or export the model again"
            )
        return []
    wanted = list(sums) if names is None else [n for n in names if n in sums or (folder / n).is_file()]
    present = (
        [p.name for p in folder.iterdir() if p.is_file() and p.suffix in CHECKED_SUFFIXES] if folder.is_dir() else []
    )
    unlisted = sorted({n for n in [*wanted, *present] if n not in sums})
    if unlisted:
        raise ChecksumError(
            f"{sums_path} is incomplete: it does not list {', '.join(unlisted)}; a loader checks only what is listed, "
            "so the folder is refused: restore it (e.g. `git checkout -- <folder>`) or export the model again"
        )
    checked = []
    for name in wanted:
        digest = sums[name]
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"{path} is listed in {sums_path} but missing: restore the folder")
        got = sha256_file(path)
        if got != digest:
            raise ChecksumError(
                f"{path} is corrupt: SHA-256 {got} differs from {digest} recorded in {sums_path}"
                f"{_crlf_hint(path, digest)}; restore the file (e.g. `git checkout -- <file>`) or re-export the model"
            )
        checked.append(name)
    return checked
