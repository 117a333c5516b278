"""Fashion-MNIST, offline first.

Where the data comes from, in order:

1. ``$FASHION_MNIST_DIR`` if set, else the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist``; ``apt-get install dataset-fashion-mnist``);
2. the user cache (``~/.cache/accelerated_diffusion/fashion-mnist``), filled by
3. the dataset's official download (only with ``download=True``; ``$FASHION_MNIST_URL`` overrides the address),
   with connect and read timeouts (:data:`TIMEOUT_S`), verified against the MD5 sums that the dataset's README
   publishes for the ``.gz`` files;
4. otherwise a :class:`FileNotFoundError` that says how to get the data.

Every file, whatever its source, is also checked against the SHA-256 of its *decompressed* content (the Debian
package recompresses the files, so only the content is comparable across sources).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["FILES", "DEBIAN_DIR", "load_fashion_mnist", "fashion_mnist_dir", "CLASSES"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accelerated_diffusion" / "fashion-mnist"
OFFICIAL_URL = os.environ.get("FASHION_MNIST_URL", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
TIMEOUT_S = 30.0  # connect timeout, and the longest wait for the next block of a download
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# name -> (MD5 of the official .gz, SHA-256 of the decompressed content)
FILES = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}


def _candidates() -> list[Path]:
    env = os.environ.get("FASHION_MNIST_DIR")
    return ([Path(env)] if env else []) + [DEBIAN_DIR, CACHE_DIR]


def _download(cache: Path, timeout: float | None = None) -> None:
    timeout = TIMEOUT_S if timeout is None else timeout
    cache.mkdir(parents=True, exist_ok=True)
    for name, (md5, _) in FILES.items():
        dest = cache / name
        if dest.exists():
            continue
        tmp = dest.with_suffix(".part")
        url = OFFICIAL_URL.rstrip("/") + "/" + name
        try:  # the timeout bounds the connection and every read: a stalled server cannot hang the download
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as fh:
                shutil.copyfileobj(resp, fh)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise FileNotFoundError(
                f"Fashion-MNIST: downloading {name} from {url} failed ({getattr(e, 'reason', e)}; connect/read "
                f"timeout {timeout:g} s). Install the Debian package (apt-get install dataset-fashion-mnist) or set "
                "FASHION_MNIST_DIR to a folder with the four .gz files."
            ) from None
        got = hashlib.md5(tmp.read_bytes()).hexdigest()
        if got != md5:
            tmp.unlink()
            raise ValueError(f"Fashion-MNIST: {name} has MD5 {got}, expected {md5} (corrupt download)")
        os.replace(tmp, dest)


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
        raise ValueError(f"Fashion-MNIST: {path} is not a valid gzip file ({e}); delete it and fetch it again") from None
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
