r"""How good is a trained model by itself: its Fréchet distance with many sampling steps, against the real-data
floor at the same sample size.

With many steps (100 NFE by default) the sampler's discretisation error is small, so the Fréchet distance (FD,
:mod:`.features`) measures the *model*; a perfect model would still score the floor
:func:`.features.real_data_frechet_distance` ``(n)``, the small-sample bias of ``n`` real images. Both are
reported with 95% intervals from the bootstrap spread over the ``n`` feature vectors
(:func:`.features.frechet_with_interval`).

``python -m accelerated_diffusion.experiments.model_quality --model 4750=data/fmnist-ddpm`` writes
``model_quality_fmnist.json`` (schema in ``data/results/README.md``); pass several ``STEP=DIR`` to compare
checkpoints of one training run on the same noises.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..integrity import sha256_file
from ..models import eps_fn, load_scheduler_config, load_unet, resolve_local, schedule_from_config
from ..samplers import SAMPLERS, STOCHASTIC, run_sampler, spec
from ..schedules import SPACINGS
from . import features
from .data import load_fashion_mnist
from .features import paired_difference  # the one paired interval, shared with the sampler comparison
from .paths import _results_path, atomic_write_bytes, save_results

__all__ = [
    "sample_features",
    "paired_difference",
    "real_data_floor",
    "record",
    "measure",
    "UsageError",
    "check_sampling",
    "check_args",
    "main",
]

FD_SAMPLES = (3, 60_000)  # n: frechet_with_interval needs 3; the real-data floor draws n of the 60,000 images
MIN_REPLICATES = 20  # frechet_with_interval's smallest num_boot


class UsageError(ValueError):
    """A bad command line, found before any data or model is loaded (reported in one line, exit status 2)."""


def sample_features(
    model_dir,
    n: int = 1000,
    *,
    nfe: int = 100,
    sampler: str = "ddim",
    spacing: str = "leading",
    batch_size: int = 250,
    seed: int = 1000,
    progress: bool = True,
) -> np.ndarray:
    """Classifier features ``(n, 128)`` of ``n`` samples of the model in ``model_dir``: ``sampler`` with ``nfe``
    steps on ``schedule.subsample(nfe, spacing)``, from noise drawn batch by batch (batch ``b`` seeded
    ``seed + b``), so every model of a comparison starts from the same noises; samples are clipped to ``[-1, 1]``."""
    spec(sampler)  # unknown names raise before the model is loaded
    if n < 2 or batch_size < 1 or nfe < 1:
        raise ValueError(f"need n >= 2, batch_size >= 1, nfe >= 1; got n={n}, batch_size={batch_size}, nfe={nfe}")
    unet = load_unet(model_dir)
    schedule = schedule_from_config(load_scheduler_config(model_dir))
    timesteps = schedule.subsample(nfe, spacing)
    size = unet.config.sample_size
    shape = (unet.config.in_channels, size, size) if isinstance(size, int) else (unet.config.in_channels, *size)
    fn = eps_fn(unet)
    out = []
    starts = range(0, n, batch_size)
    for b, start in enumerate(tqdm(starts, desc=f"{sampler} {nfe} NFE", disable=not progress)):
        m = min(batch_size, n - start)
        noise = torch.randn((m, *shape), generator=torch.Generator().manual_seed(seed + b))
        with torch.no_grad():
            x = run_sampler(fn, noise, sampler, schedule, timesteps, progress=progress)
        out.append(features.extract_features(x.clamp(-1.0, 1.0)))  # clipped, as a saved image would be
    return np.concatenate(out)


def real_data_floor(n: int, *, seeds=range(20), replicates: int = 200, level: float = 0.95) -> dict:
    """The FD of ``n`` real training images against the test-split statistics: what a perfect model would score
    at this ``n``. ``value`` is :func:`.features.real_data_frechet_distance` ``(n)`` (the first seed's subset);
    ``ci`` the central ``level`` range of the FD over the seeds' subsets (``by_seed``), i.e. its spread over
    fresh sets of ``n`` real images; ``bootstrap`` the first subset's :func:`.features.frechet_with_interval`, the
    interval a model's FD gets, for comparison."""
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError("need at least two seeds for a spread")
    images, _ = load_fashion_mnist("train")
    ref = features.load_reference_stats("test")
    by_seed, boot = [], None
    for s in tqdm(seeds, desc="real-data floor", leave=False):
        f = features.extract_features(features.to_model_range(images[features.subset_indices(len(images), n, s)]))
        by_seed.append(features.frechet_distance_from_stats(*features.feature_statistics(f), *ref))
        if boot is None:
            boot = features.frechet_with_interval(f, ref, num_boot=replicates, level=level)
    lo, hi = np.quantile(by_seed, [(1 - level) / 2, (1 + level) / 2])
    return {
        "n": n,
        "split": "train",
        "reference": "test",
        "value": by_seed[0],
        "ci": [float(lo), float(hi)],
        "seeds": seeds,
        "by_seed": by_seed,
        "bootstrap": boot,
    }


def record(
    feats_by_step: dict,
    *,
    nfe: int = 100,
    sampler: str = "ddim",
    spacing: str = "leading",
    batch_size: int = 250,
    seed: int = 1000,
    replicates: int = 200,
    shipped_step: int | None = None,
) -> dict:
    """The ``model_quality_*.json`` record from ``{step: features}`` (each ``(n, 128)``, same ``n``, made by
    :func:`sample_features` with these settings): every step's FD with its interval, its change from the first
    step's FD with a paired interval (:func:`paired_difference`; ``None`` for the first), and the floor at
    ``n``."""
    if not feats_by_step:
        raise ValueError("no checkpoints to record")
    ns = {step: len(f) for step, f in feats_by_step.items()}
    if len(set(ns.values())) != 1:
        raise ValueError(f"every checkpoint needs the same number of samples, got {ns}")
    n = next(iter(ns.values()))
    steps = sorted(feats_by_step)
    base = steps[0]
    rows = [
        {
            "step": int(step),
            "fd": features.frechet_with_interval(feats_by_step[step], num_boot=replicates),
            "change": None
            if step == base
            else {
                "from_step": int(base),
                **paired_difference(feats_by_step[step], feats_by_step[base], replicates=replicates),
            },
        }
        for step in steps
    ]
    return {
        "nfe": nfe,
        "sampler": sampler,
        "spacing": spacing,
        "n": n,
        "noise_seeds": f"{seed} + batch index",
        "batch_size": batch_size,
        "bootstrap_replicates": replicates,
        "level": 0.95,
        "real_data_floor": real_data_floor(n, replicates=replicates),
        "checkpoints": rows,
        "shipped_step": shipped_step,
    }


def _cached_features(folder, n: int, cache_dir, progress: bool, **settings) -> np.ndarray:
    """:func:`sample_features`, stored in ``cache_dir`` under the SHA-256 of the model's weights, of the feature
    classifier (:func:`.features.classifier_digest`: a retrained classifier gives other features) and the
    settings (so a checkpoint measured once is not sampled again when another is added); no cache if None."""
    if cache_dir is None:
        return sample_features(folder, n, progress=progress, **settings)
    weights = Path(folder) / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no weights {weights}")
    digest = sha256_file(weights)[:16]
    classifier = features.classifier_digest()[:16]
    key = "-".join(f"{k}{settings[k]}" for k in sorted(settings))
    path = Path(cache_dir) / f"features-{digest}-c{classifier}-n{n}-{key}.npy"
    if path.is_file():
        return np.load(path)
    feats = sample_features(folder, n, progress=progress, **settings)
    buf = io.BytesIO()
    np.save(buf, feats)
    atomic_write_bytes(path, buf.getvalue())
    return feats


def measure(
    checkpoints: dict,
    *,
    n: int = 1000,
    nfe: int = 100,
    sampler: str = "ddim",
    spacing: str = "leading",
    batch_size: int = 250,
    seed: int = 1000,
    replicates: int = 200,
    shipped_step: int | None = None,
    progress: bool = True,
    cache_dir=None,
) -> dict:
    """Sample every ``{step: model_dir}`` of ``checkpoints`` from the same noises and :func:`record` it; with
    ``cache_dir``, features already sampled with the same weights and settings are read from there."""
    if not checkpoints:
        raise ValueError("no checkpoints to measure")
    settings = dict(nfe=nfe, sampler=sampler, spacing=spacing, batch_size=batch_size, seed=seed)
    feats = {step: _cached_features(folder, n, cache_dir, progress, **settings) for step, folder in checkpoints.items()}
    return record(feats, replicates=replicates, shipped_step=shipped_step, **settings)


def _checkpoint(arg: str) -> tuple[int, str]:
    step, sep, folder = arg.partition("=")
    if not sep or not step.isdigit() or not folder:
        raise argparse.ArgumentTypeError(f"expected STEP=DIR, got {arg!r}")
    return int(step), folder


def check_sampling(folder, sampler: str, nfe: int, spacing: str, what: str | None = None) -> None:
    """That ``folder`` is a local model folder whose schedule (``scheduler_config.json``, read without the
    weights) has a ``spacing`` grid of ``nfe`` steps that ``sampler`` runs on: the sampler is run on a
    one-pixel zero model, so an incompatible combination fails before the model and the data are loaded.
    Raises :class:`UsageError` (its message starts with ``what``, default the folder)."""
    what = str(folder) if what is None else what
    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    if spacing not in SPACINGS:
        raise UsageError(f"--spacing must be one of {list(SPACINGS)}, got {spacing!r}")
    if nfe < 1:
        raise UsageError(f"--nfe must be >= 1, got {nfe}")
    if resolve_local(folder) is None:
        raise UsageError(f"{what}: no such folder")
    try:
        schedule = schedule_from_config(load_scheduler_config(folder))
        zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
        gen = torch.Generator().manual_seed(0) if sampler in STOCHASTIC else None
        run_sampler(zero, torch.zeros(1, 1, 1, 1), sampler, schedule, schedule.subsample(nfe, spacing), generator=gen)
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(f"{what}: --sampler {sampler} --nfe {nfe} --spacing {spacing}: {e}") from None


def check_args(a: argparse.Namespace) -> None:
    """Every argument of ``model-quality``, before any data or model is loaded; raises :class:`UsageError`."""
    steps = [step for step, _ in a.model]
    if len(set(steps)) != len(steps):
        raise UsageError(f"--model lists a step twice: {steps}")
    if not FD_SAMPLES[0] <= a.n <= FD_SAMPLES[1]:
        raise UsageError(f"--n must lie in [{FD_SAMPLES[0]}, {FD_SAMPLES[1]:,}], got {a.n}")
    if a.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.replicates < MIN_REPLICATES:
        raise UsageError(f"--replicates must be >= {MIN_REPLICATES}, got {a.replicates}")
    if a.threads is not None and a.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {a.threads}")
    if a.shipped_step is not None and a.shipped_step not in steps:
        raise UsageError(f"--shipped-step {a.shipped_step} is none of the --model steps {steps}")
    try:
        _results_path(a.name, ".")
    except ValueError as e:
        raise UsageError(f"--name: {e}") from None
    if a.features_only and a.cache is None:
        raise UsageError("--features-only needs --cache")
    if a.cache is not None and Path(a.cache).exists() and not Path(a.cache).is_dir():
        raise UsageError(f"--cache {a.cache} exists and is not a folder")
    for step, folder in a.model:
        check_sampling(folder, a.sampler, a.nfe, a.spacing, what=f"--model {step}={folder}")
        if a.cache is not None and not (Path(folder) / "diffusion_pytorch_model.safetensors").is_file():
            raise UsageError(f"--model {step}={folder}: no diffusion_pytorch_model.safetensors (needed by --cache)")
    features.classifier_digest()  # the shipped classifier is there (FileNotFoundError with a hint otherwise)


def main(argv: list[str] | None = None) -> int:
    """``python -m accelerated_diffusion.experiments.model_quality --model STEP=DIR [...]``: check every argument
    (one-line error, exit status 2), then measure and save."""
    p = argparse.ArgumentParser(
        prog="accelerated-diffusion model-quality",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", type=_checkpoint, action="append", required=True, help="STEP=DIR (repeatable)")
    p.add_argument("--shipped-step", type=int, default=None, help="the step whose weights are shipped")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--nfe", type=int, default=100)
    p.add_argument("--sampler", default="ddim", choices=list(SAMPLERS))
    p.add_argument("--spacing", default="leading", choices=list(SPACINGS))
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="model_quality_fmnist", help="results file name")
    p.add_argument("--cache", default=None, help="folder for the sampled features (reused by later runs)")
    p.add_argument("--features-only", action="store_true", help="only sample (into --cache); write no results")
    a = p.parse_args(argv)
    try:
        check_args(a)
    except (ValueError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.features_only:
        for folder in dict(a.model).values():
            _cached_features(
                folder,
                a.n,
                a.cache,
                True,
                nfe=a.nfe,
                sampler=a.sampler,
                spacing=a.spacing,
                batch_size=a.batch_size,
                seed=1000,
            )
        return 0
    res = measure(
        dict(a.model),
        n=a.n,
        nfe=a.nfe,
        sampler=a.sampler,
        spacing=a.spacing,
        batch_size=a.batch_size,
        replicates=a.replicates,
        shipped_step=a.shipped_step,
        cache_dir=a.cache,
    )
    # what decides the numbers (not where features were cached or the file's name)
    params = {k: v for k, v in vars(a).items() if k not in ("cache", "features_only", "name")}
    print(save_results(a.name, res, params=params))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
