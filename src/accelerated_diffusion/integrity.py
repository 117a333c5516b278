"""SHA-256 sums recorded beside shipped files, checked before they are loaded.

A folder of weights (``data/fmnist-ddpm``, ``data/fmnist-classifier``, or any folder written by the project's
export commands) holds a ``SHA256SUMS`` file in the format of ``sha256sum`` (``<hex digest>  <file name>`` per
line), so ``sha256sum -c SHA256SUMS`` checks it too.  :func:`verify_sha256sums` raises
:class:`ChecksumError` naming the file when its bytes differ from the recorded sum -- e.g. weights whose tensor
bytes were overwritten while the header stayed intact, which would otherwise load as NaN or garbage weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["SHA256SUMS", "ChecksumError", "sha256_file", "sha256sums_text", "read_sha256sums", "verify_sha256sums"]

SHA256SUMS = "SHA256SUMS"


class ChecksumError(ValueError):
    """A file whose SHA-256 differs from the sum recorded beside it (or that is listed but missing)."""


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
    """``{file name: hex digest}`` from ``<folder>/SHA256SUMS``, or None when the folder has no such file."""
    f = Path(folder) / SHA256SUMS
    if not f.is_file():
        return None
    sums = {}
    for i, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise ChecksumError(f"{f}: line {i} is not '<sha256>  <file name>': {line!r}")
        sums[name.strip()] = digest.lower()
    return sums


def verify_sha256sums(folder, names=None) -> list[str]:
    """Check the files of ``folder`` listed in its ``SHA256SUMS`` (only those in ``names`` when given); returns
    the names checked (empty when the folder records no sums).  Raises :class:`ChecksumError` naming the first
    file that is missing or whose bytes differ."""
    folder = Path(folder)
    sums = read_sha256sums(folder)
    if sums is None:
        return []
    checked = []
    for name, digest in sums.items():
        if names is not None and name not in names:
            continue
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"{path} is listed in {folder / SHA256SUMS} but missing: restore the folder")
        got = sha256_file(path)
        if got != digest:
            raise ChecksumError(
                f"{path} is corrupt: SHA-256 {got} differs from {digest} recorded in {folder / SHA256SUMS}; "
                "restore the file (e.g. `git checkout -- <file>`) or re-export the model"
            )
        checked.append(name)
    return checked
