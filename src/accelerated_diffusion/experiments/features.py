r"""Classifier features and the Fréchet distance (an FID analogue for Fashion-MNIST).

The features are the 128-unit penultimate layer of the project's small Fashion-MNIST classifier
(:mod:`accelerated_diffusion.experiments.classifier`, shipped in ``data/fmnist-classifier/``).  The Fréchet distance between
two Gaussians fitted to feature sets (Heusel et al. 2017, the formula behind FID) is

.. math::
    \mathrm{FD} = \lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{tr} \Sigma_1 + \operatorname{tr} \Sigma_2
                  - 2 \operatorname{tr} \big( \Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2} \big)^{1/2}.

It is computed here from symmetric eigendecompositions only (no ``scipy.linalg.sqrtm`` and its complex
round-off): ``Sigma_1^{1/2}`` from ``eigh(Sigma_1)`` with negative round-off eigenvalues set to 0, then the
eigenvalues of the symmetric PSD matrix ``Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2}``, clipped at 0, whose square
roots sum to the trace term.  So singular covariances (fewer samples than features) are handled exactly.

**Bias.** With ``n`` samples the estimate is biased upwards even for perfect samples (roughly by terms of order
``tr(Sigma) / n``); compare a sampler's FD with :func:`real_data_frechet_distance` at the same ``n``
(``data/fmnist-classifier/MODEL_CARD.md`` tabulates it).

Typical use::

    from accelerated_diffusion.experiments import features
    fd = features.frechet_distance(samples)            # samples: float in [-1, 1], (n, 1, 28, 28) or (n, 1, 32, 32)
    fd_real = features.real_data_frechet_distance(len(samples))  # the floor at this n
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from torch import nn

from ..integrity import sha256_file, verify_sha256sums
from ..metrics import gaussian_w2_squared, gaussian_w2_squared_batch
from .data import load_fashion_mnist
from .paths import data_dir

__all__ = [
    "FEATURE_DIM",
    "FashionCNN",
    "to_model_range",
    "default_classifier_dir",
    "load_classifier",
    "classifier_digest",
    "prepare_images",
    "extract_features",
    "feature_statistics",
    "load_reference_stats",
    "frechet_distance_from_stats",
    "bootstrap_frechet_distances",
    "bootstrap_interval",
    "frechet_with_interval",
    "paired_bootstraps",
    "difference_interval",
    "paired_differences",
    "paired_difference",
    "frechet_distance",
    "subset_indices",
    "real_data_frechet_distance",
]

# Images further than this from [-1, 1] are almost surely on another scale (e.g. [0, 255]); refuse them.
MAX_ABS_VALUE = 5.0
FEATURE_DIM = 128  # width of the feature layer


class FashionCNN(nn.Module):
    """Two 3x3 conv blocks (32, 64 channels, each ReLU + 2x2 max-pool), a 128-unit linear layer (the features),
    ReLU, dropout and a 10-way linear head.  About 420k parameters."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14 -> 7
            nn.Flatten(),
        )
        self.features = nn.Linear(64 * 7 * 7, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (before the ReLU), shape ``(n, feature_dim)``."""
        return self.features(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape ``(n, num_classes)``."""
        return self.head(self.embed(x))


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images in ``[0, 255]`` -> float32 in ``[-1, 1]`` (``x / 127.5 - 1``, the DDPM convention)."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    return images_uint8.float() / 127.5 - 1.0


def default_classifier_dir() -> Path:
    """``data/fmnist-classifier`` of the project (see :func:`accelerated_diffusion.experiments.paths.data_dir`)."""

    return data_dir() / "fmnist-classifier"


def _classifier_dir(path) -> Path:
    d = Path(path) if path is not None else default_classifier_dir()
    if not (d / "model.safetensors").exists():
        raise FileNotFoundError(
            f"no classifier weights at {d / 'model.safetensors'}; pass the folder written by "
            "`accelerated-diffusion train-classifier` (default data/fmnist-classifier)"
        )
    return d


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, device: str) -> FashionCNN:
    from safetensors.torch import load_file

    d = Path(path)
    verify_sha256sums(d, ["model.safetensors", "config.json"])
    cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
    model = FashionCNN(feature_dim=cfg.get("feature_dim", 128), dropout=cfg.get("dropout", 0.3))
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model.to(device).eval()


def load_classifier(path=None, device="cpu") -> FashionCNN:
    """The shipped classifier (eval mode) from ``path`` (default ``data/fmnist-classifier``), cached per
    ``(path, device)``; raises ``FileNotFoundError`` with a hint when the weights are missing."""
    return _load_cached(str(_classifier_dir(path).resolve()), str(torch.device(device)))


def classifier_digest(path=None) -> str:
    """Hex SHA-256 of the classifier's weights (``model.safetensors``) and config in ``path`` (default
    ``data/fmnist-classifier``): what feature caches key on, beside the sampled model's weights."""
    d = _classifier_dir(path)
    parts = [sha256_file(d / "model.safetensors")]
    if (d / "config.json").is_file():
        parts.append(sha256_file(d / "config.json"))
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()


def prepare_images(images, *, clip: bool = True) -> torch.Tensor:
    """Check and convert images for the classifier: float ``(n, 1, 28, 28)`` in ``[-1, 1]``.

    * ``(n, 1, 32, 32)`` inputs (the padded size a UNet likes) are center-cropped to 28x28 (2 pixels a side);
    * ``(n, 28, 28)`` gets its channel axis; numpy arrays are accepted;
    * uint8 input raises (convert with ``x / 127.5 - 1``, :func:`to_model_range`),
      as do NaN/Inf and values beyond +-5 (almost surely another scale, e.g. [0, 255]); floats in [0, 1] cannot
      be told apart from dark images and are *not* detected: the caller owns the scale;
    * with ``clip`` values are clamped to ``[-1, 1]``, as saving an image would do.
    """
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        raise TypeError("images are uint8; convert them to [-1, 1] first (x / 127.5 - 1, features.to_model_range)")
    if not torch.is_floating_point(x):
        raise TypeError(f"images must be a float tensor in [-1, 1], got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) not in ((28, 28), (32, 32)):
        raise ValueError(f"images must have shape (n, 1, 28, 28) or (n, 1, 32, 32), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no images")
    if x.shape[-1] == 32:
        x = x[..., 2:30, 2:30]
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"images contain NaN or Inf ({int((~torch.isfinite(x)).sum())} values)")
    lo, hi = float(x.min()), float(x.max())
    if max(-lo, hi) > MAX_ABS_VALUE:
        raise ValueError(f"image values span [{lo:.3g}, {hi:.3g}]; expected [-1, 1] (x / 127.5 - 1 for uint8 data)")
    x = x.float()
    return x.clamp(-1.0, 1.0) if clip else x


def extract_features(
    images,
    *,
    model: FashionCNN | None = None,
    path=None,
    device="cpu",
    batch_size: int = 500,
    clip: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Penultimate-layer features, float64 array ``(n, 128)``, of float images in ``[-1, 1]``
    (see :func:`prepare_images` for the accepted shapes and checks).  ``model`` defaults to
    :func:`load_classifier` ``(path, device)``."""
    x = prepare_images(images, clip=clip)
    model = model if model is not None else load_classifier(path, device)
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(x), batch_size), desc="features", disable=not progress, leave=False):
            out.append(model.embed(x[i : i + batch_size].to(dev)).double().cpu())
    return torch.cat(out).numpy()


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and covariance ``(d, d)`` (unbiased, ``1/(n-1)``) of a feature array ``(n, d)``, float64."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need a feature array (n >= 2, d), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def load_reference_stats(reference: str = "test", path=None) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` shipped as ``<classifier dir>/<reference>_stats.safetensors`` (``"test"``: all 10,000
    Fashion-MNIST test images)."""
    from safetensors.numpy import load_file

    f = _classifier_dir(path) / f"{reference}_stats.safetensors"
    verify_sha256sums(f.parent, [f.name])
    if not f.exists():
        raise FileNotFoundError(f"no reference statistics {f}; shipped references: 'test'")
    s = load_file(str(f))
    return s["mu"], s["sigma"]


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    r"""Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (module docstring formula): the squared
    2-Wasserstein distance :func:`accelerated_diffusion.metrics.gaussian_w2_squared` (symmetric eigendecompositions
    only; exact for singular covariances; never negative), after checking shapes and finiteness."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or Inf")
    return gaussian_w2_squared(mu1, s1, mu2, s2)


def bootstrap_frechet_distances(feats, reference=None, *, num_boot: int = 200, seed: int = 0):
    """``(value, resampled)``: the Fréchet distance of the features ``feats`` (``(n, d)``) to ``reference``
    (``(mu, sigma)``; default the shipped test-split statistics), and the distances of ``num_boot`` resamples of
    the ``n`` rows with replacement (NumPy generator seeded with ``seed``).  The resamples repeat rows, which
    raises their distance (the small-sample bias), so an interval built from them should be centred on ``value``;
    the callers say how."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need a feature array (n >= 2, d), got shape {f.shape}")
    if num_boot < 2:
        raise ValueError(f"need num_boot >= 2, got {num_boot}")
    mu_r, s_r = load_reference_stats("test") if reference is None else reference
    value = frechet_distance_from_stats(*feature_statistics(f), mu_r, s_r)
    rng = np.random.default_rng(seed)
    n = f.shape[0]
    idx = np.stack([rng.integers(0, n, n) for _ in range(num_boot)])  # resample b: rows idx[b]
    x = torch.from_numpy(f[idx])  # (num_boot, n, d)
    means = x.mean(1)
    centred = x - means[:, None]
    covs = centred.mT @ centred / (n - 1)  # unbiased, as feature_statistics
    resampled = gaussian_w2_squared_batch(means, covs, mu_r, s_r).numpy()
    return float(value), resampled


def bootstrap_interval(value: float, resampled, level: float = 0.95, *, lower_bound: float | None = 0.0) -> list:
    """The ``level`` interval of a Fréchet distance from its bootstrap resamples (:func:`bootstrap_frechet_distances`):
    the resamples' central ``level`` quantile range shifted so that their median sits on ``value``,
    ``[v - (q_med - q_lo), v + (q_hi - q_med)]`` (lower end clipped at ``lower_bound``; ``None`` for a difference
    of two distances, which may be negative).  A resample holds about 63 % distinct rows, which raises every
    resample's distance by about the same amount (the small-sample bias), so the spread is kept and that shift
    removed.  The one interval of every Fréchet distance in this package."""
    if not 0 < level < 1:
        raise ValueError(f"need 0 < level < 1, got {level}")
    q_lo, q_med, q_hi = np.quantile(np.asarray(resampled, dtype=np.float64), [(1 - level) / 2, 0.5, (1 + level) / 2])
    lo = value - (q_med - q_lo)
    return [float(lo if lower_bound is None else max(lo, lower_bound)), float(value + (q_hi - q_med))]


def frechet_with_interval(feats, reference=None, *, num_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """The Fréchet distance of the features ``feats`` (``(n, d)``, :func:`extract_features`) to ``reference``
    (``(mu, sigma)``; default the shipped test-split statistics) with its ``level`` interval: ``num_boot``
    seeded resamples of the rows (:func:`bootstrap_frechet_distances`), their quantile range centred on the value
    (:func:`bootstrap_interval`).  The interval is the sampling variability of the distance *at this sample
    size*; the small-sample bias (compare :func:`real_data_frechet_distance` at the same ``n``) is in the value
    and is not the same for every sample set (its trace term grows with the set's own feature spread), so compare
    sample sets drawn from the same noises by :func:`paired_differences`.  Resampled sets repeat rows (about 37 %), so their distances
    sit above the value (``bootstrap_mean``) and their spread (``bootstrap_sd``) overstates the spread over fresh
    samples: the interval is conservative.  The one Fréchet distance with an interval of this package (the
    sampler comparison and the model-quality measurement).
    Returns ``{"value", "ci": [lo, hi], "num_samples", "num_boot", "bootstrap_sd", "bootstrap_mean"}``."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 3:
        raise ValueError(f"need a feature array (n >= 3, d), got shape {f.shape}")
    if num_boot < 20 or not 0 < level < 1:
        raise ValueError(f"need num_boot >= 20 and 0 < level < 1, got num_boot={num_boot}, level={level}")
    value, reps = bootstrap_frechet_distances(f, reference, num_boot=num_boot, seed=seed)
    return {
        "value": value,
        "ci": bootstrap_interval(value, reps, level),
        "num_samples": int(f.shape[0]),
        "num_boot": int(num_boot),
        "bootstrap_sd": float(reps.std(ddof=1)),
        "bootstrap_mean": float(reps.mean()),
    }


def paired_bootstraps(feats_by_key: dict, reference=None, *, replicates: int = 200, seed: int = 0) -> dict:
    """``{key: (value, resampled)}``: :func:`bootstrap_frechet_distances` of every feature set of ``feats_by_key``
    (arrays ``(n, d)`` whose row ``i`` comes from the same starting noise, one shape for all) with one ``seed``,
    so every set is resampled at the *same* rows (the index draw depends only on ``n``)."""
    arrays = {k: np.asarray(f, dtype=np.float64) for k, f in feats_by_key.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) > 1:
        raise ValueError(f"paired feature sets need the same shape, got {sorted(shapes)}")
    return {k: bootstrap_frechet_distances(a, reference, num_boot=replicates, seed=seed) for k, a in arrays.items()}


def difference_interval(boot_a, boot_b, level: float = 0.95) -> dict:
    """``{"value": a - b, "ci": [lo, hi]}`` from two ``(value, resampled)`` pairs resampled at the same rows
    (:func:`paired_bootstraps`): resample ``r`` of the difference is ``a_r - b_r``, so what the two sets share
    cancels; the interval is :func:`bootstrap_interval` of those differences, not clipped at 0.  An interval that
    excludes 0 calls the difference; identical sets give exactly ``0 [0, 0]``."""
    (va, ra), (vb, rb) = boot_a, boot_b
    ra, rb = np.asarray(ra, dtype=np.float64), np.asarray(rb, dtype=np.float64)
    if ra.shape != rb.shape:
        raise ValueError(f"paired resamples need the same number of replicates, got {ra.shape} and {rb.shape}")
    value = float(va) - float(vb)
    return {"value": value, "ci": bootstrap_interval(value, ra - rb, level, lower_bound=None)}


def paired_differences(
    feats_by_key: dict, pairs, reference=None, *, replicates: int = 200, level: float = 0.95, seed: int = 0
) -> dict:
    """Differences of Fréchet distances between feature sets whose row ``i`` comes from the same starting noise,
    each with its paired bootstrap interval: ``{(a, b): {"value": FD(a) - FD(b), "ci": [lo, hi]}}`` for every
    pair ``(a, b)`` of keys of ``feats_by_key``.  Each set is resampled once (:func:`paired_bootstraps`) and every
    difference gets :func:`difference_interval`."""
    pairs = [tuple(p) for p in pairs]
    keys = list(dict.fromkeys(k for p in pairs for k in p))
    missing = [k for k in keys if k not in feats_by_key]
    if missing:
        raise KeyError(f"no features for {missing}")
    boot = paired_bootstraps({k: feats_by_key[k] for k in keys}, reference, replicates=replicates, seed=seed)
    return {(a, b): difference_interval(boot[a], boot[b], level) for a, b in pairs}


def paired_difference(
    feats, base, reference=None, *, replicates: int = 200, level: float = 0.95, seed: int = 0
) -> dict:
    """FD of ``feats`` minus FD of ``base`` (two ``(n, d)`` feature sets whose row ``i`` comes from the same
    starting noise) with its paired bootstrap interval, ``{"value", "ci"}``: :func:`paired_differences` of the one
    pair."""
    return paired_differences({0: feats, 1: base}, [(0, 1)], reference, replicates=replicates, level=level, seed=seed)[
        0, 1
    ]


def frechet_distance(
    images, reference="test", *, path=None, device="cpu", batch_size: int = 500, progress: bool = False
) -> float:
    """Fréchet distance between the classifier features of ``images`` (float in ``[-1, 1]``) and a reference:
    ``"test"`` (shipped statistics of the test split), or a ``(mu, sigma)`` pair, or another image batch."""
    mu1, s1 = feature_statistics(
        extract_features(images, path=path, device=device, batch_size=batch_size, progress=progress)
    )
    if isinstance(reference, str):
        mu2, s2 = load_reference_stats(reference, path)
    elif isinstance(reference, tuple) and len(reference) == 2:
        mu2, s2 = reference
    else:
        mu2, s2 = feature_statistics(extract_features(reference, path=path, device=device, batch_size=batch_size))
    return frechet_distance_from_stats(mu1, s1, mu2, s2)


def subset_indices(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """The first ``n`` entries of a permutation of ``range(n_total)`` drawn by ``torch.randperm`` with ``seed``."""
    if not 2 <= n <= n_total:
        raise ValueError(f"n must lie in [2, {n_total}], got {n}")
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].numpy()


def real_data_frechet_distance(
    n: int, split: str = "train", *, seed: int = 0, reference: str = "test", path=None
) -> float:
    """FD of ``n`` real Fashion-MNIST images of ``split`` (a seeded subset, :func:`subset_indices`) against the
    reference statistics: the value a perfect sampler would get at this ``n`` (the small-sample bias).  Use
    ``split="train"`` (independent of the test-split reference)."""

    images, _ = load_fashion_mnist(split)
    idx = subset_indices(len(images), n, seed)
    return frechet_distance(to_model_range(images[idx]), reference, path=path)
