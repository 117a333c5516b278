"""Fashion-MNIST, offline first.

Where the data comes from, in order:

1. ``$FASHION_MNIST_DIR`` if set, else the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist``; ``apt-get install dataset-fashion-mnist``);
2. the user cache (``~/.cache/accelerated_diffusion/fashion-mnist``), filled by
3. the dataset's official download (only with ``download=True``; ``$FASHION_MNIST_URL``, read at each call,
   overrides the address), verified against the MD5 sums that the dataset's README publishes for the ``.gz``
   files.  It is bounded as a whole, not per read: each file must start arriving within :data:`TIMEOUT_S`
   seconds and then average at least :data:`MIN_RATE` bytes per second, else it fails (a server that trickles
   one byte a second fails after :data:`TIMEOUT_S` seconds);
4. otherwise a :class:`FileNotFoundError` that says how to get the data.

Every file, whatever its source, is also checked against the SHA-256 of its *decompressed* content (the Debian
package recompresses the files, so only the content is comparable across sources).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from . import paths

__all__ = ["FILES", "DEBIAN_DIR", "load_fashion_mnist", "fashion_mnist_dir", "CLASSES"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accelerated_diffusion" / "fashion-mnist"
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # $FASHION_MNIST_URL overrides
TIMEOUT_S = 15.0  # seconds for a file to start arriving; after that it must average MIN_RATE
MIN_RATE = 32 * 1024  # bytes per second, averaged from the request on (the 4 files are 30 MB: < 16 min)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# name -> (MD5 of the official .gz, SHA-256 of the decompressed content)
FILES = {
    "train-images-idx3-ubyte.gz": (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train-labels-idx1-ubyte.gz": (
        "25c81989df183df01b3e8a0aad5dffbe",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "bef4ecab320f06d8554ea6380940ec79",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "bb300cfdad3c16e7a12a480ee83cd310",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}


def _candidates() -> list[Path]:
    env = os.environ.get("FASHION_MNIST_DIR")
    return ([Path(env)] if env else []) + [DEBIAN_DIR, CACHE_DIR]


def _fetch(url: str, fh, timeout: float, min_rate: float) -> None:
    """Copy ``url`` into the open file ``fh``, failing with ``TimeoutError`` unless the first bytes arrive within
    ``timeout`` seconds and the average rate from the request on stays at least ``min_rate`` bytes/s after that.

    The transfer runs in a daemon thread watched from here (a per-read socket timeout cannot bound a server that
    sends one byte a second); at the deadline this function stops waiting and tells the thread to stop at its next
    block (it ends at the latest when its socket times out, ``timeout`` seconds without a byte)."""
    state = {"bytes": 0, "done": False, "error": None}
    stop = threading.Event()

    def copy():
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                while not stop.is_set():
                    block = resp.read1(1 << 16)
                    if not block:
                        break
                    fh.write(block)
                    state["bytes"] += len(block)
        except BaseException as e:  # noqa: BLE001 - reported by the watcher
            state["error"] = e
        state["done"] = True

    t0 = time.monotonic()
    th = threading.Thread(target=copy, daemon=True, name=f"download {url}")
    th.start()
    while True:
        th.join(0.2)
        if state["done"]:
            break
        elapsed = time.monotonic() - t0
        if elapsed > timeout and state["bytes"] < min_rate * elapsed:
            stop.set()
            raise TimeoutError(
                f"{state['bytes']:,} bytes in {elapsed:.0f} s, below the minimum of "
                f"{min_rate:,.0f} bytes/s after the first {timeout:g} s"
            )
    if state["error"] is not None:
        raise state["error"]


def _download(cache: Path, timeout: float | None = None, url: str | None = None) -> None:
    """Fetch the four files into ``cache`` from ``url`` (default ``$FASHION_MNIST_URL`` or :data:`OFFICIAL_URL`),
    each bounded as a whole (:func:`_fetch`, :data:`TIMEOUT_S`, :data:`MIN_RATE`) and MD5-checked before it is
    renamed into place; a failed file leaves no partial file."""
    timeout = TIMEOUT_S if timeout is None else timeout
    base = url or os.environ.get("FASHION_MNIST_URL") or OFFICIAL_URL
    cache.mkdir(parents=True, exist_ok=True)
    for name, (md5, _) in FILES.items():
        dest = cache / name
        if dest.exists():
            continue
        src = base.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=cache)
        tmp = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                _fetch(src, fh, timeout, MIN_RATE)
            got = hashlib.md5(tmp.read_bytes()).hexdigest()
            if got != md5:
                raise ValueError(f"Fashion-MNIST: {name} has MD5 {got}, expected {md5} (corrupt download)")
            os.chmod(tmp, 0o666 & ~paths._umask())  # mkstemp creates 0o600; the final file follows the umask
            os.replace(tmp, dest)
        except OSError as e:
            raise FileNotFoundError(
                f"Fashion-MNIST: downloading {name} from {src} failed ({getattr(e, 'reason', e)}; timeout "
                f"{timeout:g} s to start, then at least {MIN_RATE:,} bytes/s). Install the Debian package "
                "(apt-get install dataset-fashion-mnist) or set FASHION_MNIST_DIR to a folder with the four .gz files."
            ) from None
        finally:
            tmp.unlink(missing_ok=True)


def fashion_mnist_dir(download: bool = False) -> Path:
    """The first folder holding all four files (see the module docstring), downloading if asked."""
    for d in _candidates():
        if all((d / n).exists() for n in FILES):
            return d
    if download:
        _download(CACHE_DIR)
        return CACHE_DIR
    raise FileNotFoundError(
        "Fashion-MNIST not found in " + ", ".join(str(d) for d in _candidates()) + ". Install the Debian package "
        "(apt-get install dataset-fashion-mnist), set FASHION_MNIST_DIR, or call with download=True to fetch the "
        "official files (MD5-checked)."
    )


def _read(path: Path, offset: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"Fashion-MNIST: {path} is not a valid gzip file ({e}); delete it and fetch it again"
        ) from None
    expected = FILES[path.name][1]
    got = hashlib.sha256(raw).hexdigest()
    if got != expected:
        raise ValueError(f"Fashion-MNIST: {path} decompresses to SHA-256 {got}, expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset)


def load_fashion_mnist(split: str = "train", *, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: uint8 images of shape ``(n, 1, 28, 28)`` and int64 labels, ``split`` in
    ``{"train", "test"}`` (60,000 and 10,000 images)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = fashion_mnist_dir(download)
    prefix = "train" if split == "train" else "t10k"
    images = _read(d / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    labels = _read(d / f"{prefix}-labels-idx1-ubyte.gz", 8)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
