r"""The learned model's score error, how each sampler weights it, and causal hybrids on the few-step grids.

Pieces of the chapter *When does the acceleration help?* (the learned Fashion-MNIST model of ``data/fmnist-ddpm``):

* :class:`EmpiricalTarget`, :func:`training_set_target` -- the exact noise prediction of the *training set itself*
  (the empirical distribution the model was trained on, noised by the forward process),

  .. math::
      \varepsilon^*(x, t) = \frac{x - \sqrt{\bar\alpha_t}\, \mathbb E[x_0 \mid x_t = x]}{\sqrt{1 - \bar\alpha_t}},
      \qquad
      \mathbb E[x_0 \mid x_t = x] = \sum_i w_i(x)\, x^{(i)},\quad
      w_i \propto \exp\Big(-\frac{\lVert x - \sqrt{\bar\alpha_t}\, x^{(i)}\rVert^2}{2 (1 - \bar\alpha_t)}\Big),

  a softmax-weighted mean over the 60,000 training images (float64, chunked, memory bounded); the fitted
  ten-class Gaussian mixture (:func:`.rates.fit_fashion_mnist_mixture`) is the second reference
  (:func:`reference_targets`, :func:`reference_eps_fn`);
* :func:`score_error_profile` -- per timestep, the RMS per pixel of ``eps_model - eps_ref`` at ``x_t`` drawn from
  the forward process of held-out images, split into the component along ``eps_ref`` and the rest, with
  bootstrap intervals over images;
* :func:`error_weights`, :func:`all_error_weights`, :func:`direct_error` -- for a deterministic sampler on a grid,
  the weight with which the noise prediction of each evaluation enters the final sample directly (every update
  rule is linear in ``x`` and ``eps``: the library's own loop run on a one-element state with unit noise
  predictions);
* :func:`scaled_eps_fn`, :class:`MemoEps`, :func:`causal_hybrids`, :func:`hybrid_metrics` -- the model with the
  reference at one level of a grid, or with its error scaled at the first level, on the same noises, and the
  Fréchet distance on the project's classifier features with paired bootstrap differences (and a cheaper
  per-sample yardstick, :func:`feature_mahalanobis`);
* :func:`run_score_error` -- all of the above at a given size, a JSON-ready dict with provenance
  (:func:`save` writes it atomically);
* tables (:func:`profile_rows`, :func:`weights_rows`, :func:`hybrid_rows`, :func:`gap_rows`: lists of dicts, one
  per row, and the same as fixed-width text: :func:`profile_text`, :func:`weights_text`, :func:`hybrid_text`,
  :func:`gap_text`) and figures (:func:`plot_score_error`, :func:`plot_error_weights`,
  :func:`plot_level_hybrids`, :func:`plot_scaled_hybrids`).
"""

from __future__ import annotations

import math
import platform
import time

import numpy as np
import torch
from tqdm import tqdm

from .. import models, samplers
from ..schedules import check_timesteps
from . import comparison as cmp
from . import features
from .data import load_fashion_mnist
from .paths import load_results, provenance, repository_root, save_results
from .tables import interval

__all__ = [
    "SCHEMA",
    "DEFAULT_MODEL",
    "PAIR",
    "SCALES",
    "REFERENCES",
    "EmpiricalTarget",
    "training_set_target",
    "reference_targets",
    "reference_eps_fn",
    "held_out_images",
    "score_error_profile",
    "error_weights",
    "all_error_weights",
    "direct_error",
    "scaled_eps_fn",
    "MemoEps",
    "variant_label",
    "causal_hybrids",
    "feature_mahalanobis",
    "hybrid_metrics",
    "check_arguments",
    "run_score_error",
    "save",
    "load",
    "profile_rows",
    "profile_text",
    "weights_rows",
    "weights_text",
    "hybrid_rows",
    "hybrid_text",
    "gap_rows",
    "gap_text",
    "plot_score_error",
    "plot_error_weights",
    "plot_level_hybrids",
    "plot_scaled_hybrids",
]

SCHEMA = "score_error/1"
#: The shipped Fashion-MNIST model (relative to the repository).
DEFAULT_MODEL = "data/fmnist-ddpm"
#: The samplers compared by default: exact DDIM and the paper's accelerated deterministic sampler; the gap is the
#: second minus the first.
PAIR = ("ddim", "accelerated_ode")
#: The scales of the model's error at the first level: ``eps_ref + s (eps_model - eps_ref)``.
SCALES = (0.0, 0.5, 1.0, 2.0)
#: The references: ``"train"`` the exact eps of the 60,000 training images, ``"mixture"`` the fitted ten-class
#: Gaussian mixture (what the book's earlier hybrids use).
REFERENCES = ("train", "mixture")


# ----------------------------------------------------------------------------------------------------------------
# The exact eps of the training set
# ----------------------------------------------------------------------------------------------------------------
def _check_alpha_bar(alpha_bar) -> float:
    a = float(alpha_bar)
    if not 0.0 < a < 1.0:
        raise ValueError(f"the level alpha_bar must lie in (0, 1) for an empirical target, got {alpha_bar!r}")
    return a


class EmpiricalTarget:
    r"""The empirical distribution of ``data`` (``(N, *event_shape)``, e.g. the training images in ``[-1, 1]``)
    as a target with exact forward marginals ``q_abar = (1/N) sum_i N(sqrt(abar) x_i, (1 - abar) I)``.

    :meth:`posterior_mean` is ``E[x_0 | x_t = x]`` (the module docstring's softmax-weighted mean) and :meth:`eps`
    the ideal noise prediction ``(x - sqrt(abar) E[x_0 | x_t = x]) / sqrt(1 - abar)``.  The logits
    ``(2 sqrt(abar) <x, x_i> - abar |x_i|^2) / (2 (1 - abar))`` (the squared distance up to the term ``|x|^2``
    that every ``i`` shares) and the weighted mean are computed in ``dtype`` (float64 by default: at
    ``1 - abar = 1e-4`` a float32 inner product would move a logit by about one unit), over chunks of ``chunk``
    data points with a running maximum (an online log-sum-exp), so memory is ``O(n * chunk)`` beyond the data.
    ``eps(x, alpha_bar)`` has the signature of :mod:`accelerated_diffusion.targets` (``comparison.exact_eps_fn``
    works with it); results come back in ``x``'s dtype and device.

    At small noise this is the score of the training set *itself*: near ``abar = 1`` the posterior mean of a point
    that is not a training image is its nearest training image, so a model that generalises (does not memorise)
    differs from it by about ``(x - sqrt(abar) x_nearest) / sqrt(1 - abar)`` there; compare the levels where the
    two references (this and the fitted mixture) agree."""

    def __init__(self, data, *, chunk: int = 8192, dtype: torch.dtype = torch.float64, device="cpu"):
        x = torch.as_tensor(data)
        if not torch.is_floating_point(x):
            raise TypeError(f"data must be a float tensor (e.g. images in [-1, 1]), got dtype {x.dtype}")
        if x.ndim < 2 or x.shape[0] < 1:
            raise ValueError(f"data must have shape (N, *event_shape) with N >= 1, got {tuple(x.shape)}")
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("data contains NaN or Inf")
        self.event_shape = tuple(x.shape[1:])
        self.dtype, self.chunk = dtype, int(chunk)
        self.data = x.reshape(x.shape[0], -1).to(device=device, dtype=dtype)
        self.sq_norms = self.data.square().sum(1)
        self.dim = self.data.shape[1]

    def __len__(self) -> int:
        return self.data.shape[0]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (n, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1).to(device=self.data.device, dtype=self.dtype)

    def posterior_mean(self, x: torch.Tensor, alpha_bar) -> torch.Tensor:
        """``E[x_0 | x_t = x]`` at level ``alpha_bar`` (in ``(0, 1)``), shape and dtype of ``x``."""
        a = _check_alpha_bar(alpha_bar)
        xf = self._flat(x)
        n = xf.shape[0]
        m = torch.full((n, 1), -math.inf, dtype=self.dtype, device=xf.device)
        s = torch.zeros((n, 1), dtype=self.dtype, device=xf.device)
        acc = torch.zeros((n, self.dim), dtype=self.dtype, device=xf.device)
        ra, denom = math.sqrt(a), 2.0 * (1.0 - a)
        for i in range(0, len(self), self.chunk):
            c = self.data[i : i + self.chunk]
            logits = (xf @ c.T * (2.0 * ra) - a * self.sq_norms[i : i + self.chunk]) / denom
            m_new = torch.maximum(m, logits.max(1, keepdim=True).values)
            w = torch.exp(logits - m_new)
            rescale = torch.exp(m - m_new)
            s = s * rescale + w.sum(1, keepdim=True)
            acc = acc * rescale + w @ c
            m = m_new
        return (acc / s).reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def eps(self, x: torch.Tensor, alpha_bar) -> torch.Tensor:
        """The exact noise prediction ``(x - sqrt(abar) E[x_0 | x_t = x]) / sqrt(1 - abar)`` (module docstring)."""
        a = _check_alpha_bar(alpha_bar)
        x64 = x.to(self.dtype)
        mean = self.posterior_mean(x64, a).to(x64.device)
        return ((x64 - math.sqrt(a) * mean) / math.sqrt(1.0 - a)).to(x.dtype)


def training_set_target(split: str = "train", *, chunk: int = 8192, device="cpu") -> EmpiricalTarget:
    """:class:`EmpiricalTarget` of the Fashion-MNIST ``split`` (default the 60,000 training images the model was
    trained on), scaled to ``[-1, 1]`` (``x / 127.5 - 1``), event shape ``(1, 28, 28)``, float64."""
    images, _ = load_fashion_mnist(split)
    return EmpiricalTarget(features.to_model_range(images).double(), chunk=chunk, device=device)


def reference_targets(names=REFERENCES, *, device="cpu") -> dict:
    """``{name: target}`` for the reference names (:data:`REFERENCES`): ``"train"`` the training set
    (:func:`training_set_target`), ``"mixture"`` the fitted Gaussian mixture (:func:`.rates.fit_fashion_mnist_mixture`,
    a few seconds)."""
    _check_references(names)
    out = {}
    for n in names:
        if n == "train":
            out[n] = training_set_target(device=device)
        else:
            from .rates import fit_fashion_mnist_mixture

            out[n] = fit_fashion_mnist_mixture()
    return out


def reference_eps_fn(target, schedule):
    """``eps_fn(x, t)`` with integer training steps ``t`` for an exact target (``target.eps(x, abar_t)``), computed
    in float64 on the CPU for the mixture (the empirical target keeps its own device) and returned in ``x``'s dtype
    and device."""
    abar = schedule.alpha_bars

    def fn(x: torch.Tensor, t) -> torch.Tensor:
        a = float(abar[int(t)])
        if isinstance(target, EmpiricalTarget):
            return target.eps(x.double(), a).to(x.device, x.dtype)
        return target.eps(x.detach().to("cpu", torch.float64), a).to(x.device, x.dtype)

    return fn


def held_out_images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` Fashion-MNIST *test* images (a seeded subset, :func:`.features.subset_indices`) in ``[-1, 1]``,
    float32 ``(n, 1, 28, 28)``: images the model never saw."""
    images, _ = load_fashion_mnist("test")
    return features.to_model_range(images[features.subset_indices(len(images), n, seed)])


# ----------------------------------------------------------------------------------------------------------------
# The score error per timestep
# ----------------------------------------------------------------------------------------------------------------
def _interval(values: np.ndarray, level: float) -> list:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def _profile_stats(per: dict, idx: np.ndarray, level: float) -> dict:
    """The quantities of :func:`score_error_profile` from the per-image terms ``per`` (mean squares ``total``,
    ``parallel``, ``perpendicular``, ``reference`` and coefficients ``k``), each ``{"value", "ci"}`` with the
    percentile interval over the resampled rows ``idx`` (``(num_boot, n)``)."""
    n = len(per["k"])
    quantities = {
        "rms_total": lambda j: np.sqrt(per["total"][j].mean(-1)),
        "rms_parallel": lambda j: np.sqrt(per["parallel"][j].mean(-1)),
        "rms_perpendicular": lambda j: np.sqrt(per["perpendicular"][j].mean(-1)),
        "rms_reference": lambda j: np.sqrt(per["reference"][j].mean(-1)),
        "relative": lambda j: np.sqrt(per["total"][j].mean(-1) / per["reference"][j].mean(-1)),
        "scale": lambda j: per["k"][j].mean(-1),
    }
    everything = np.arange(n)[None]
    return {q: {"value": float(f(everything)[0]), "ci": _interval(f(idx), level)} for q, f in quantities.items()}


def score_error_profile(
    model_eps_fn,
    reference_eps_fn,
    schedule,
    timesteps,
    images: torch.Tensor,
    seed: int = 0,
    *,
    num_boot: int = 200,
    level: float = 0.95,
    batch_size: int = 256,
) -> dict:
    r"""The model's noise-prediction error against a reference, per timestep.

    At each training step ``t``, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z`` for the held-out ``images``
    (``x_0``, ``(n, C, H, W)`` in ``[-1, 1]``) and standard normal ``z`` (draw ``i`` seeded by ``(seed * N + t,
    i)``, :func:`.comparison.initial_noise`; the same ``z`` for every reference, so two references are compared
    at the same points).  The model sees ``x_t`` in float32, the reference the same values in float64.  With ``d =
    eps_model - eps_ref`` and ``r = eps_ref`` per image, ``k = <d, r> / |r|^2``, the error splits into the part
    along the reference, ``k r``, and the rest, ``d - k r``, orthogonal to it, so that per image and on average

    .. math:: \mathrm{RMS}(d)^2 = \mathrm{RMS}(k r)^2 + \mathrm{RMS}(d - k r)^2 .

    Returns ``{"timesteps", "num_images", "num_boot", "level", "by_t": {str(t): {"alpha_bar", "rms_total",
    "rms_parallel", "rms_perpendicular", "rms_reference", "relative", "scale"}}}``, each a ``{"value", "ci"}``: RMS
    per pixel (over images and pixels) of ``d``, ``k r``, ``d - k r`` and ``r``; ``relative`` = ``rms_total /
    rms_reference``; ``scale`` = the mean of ``k`` (``> 0``: the model's eps longer than the reference along it).
    Intervals: ``level`` percentile intervals of ``num_boot`` resamples of the images (one draw, seeded with
    ``seed``, for every quantity and timestep)."""
    ts = check_timesteps(timesteps, schedule.num_train_timesteps).tolist()
    if not ts:
        raise ValueError("no timesteps given")
    x0 = torch.as_tensor(images)
    if not torch.is_floating_point(x0) or x0.ndim != 4 or x0.shape[0] < 2:
        raise ValueError(f"images must be a float tensor (n >= 2, C, H, W), got {tuple(x0.shape)} {x0.dtype}")
    if num_boot < 20 or not 0 < level < 1:
        raise ValueError(f"need num_boot >= 20 and 0 < level < 1, got num_boot={num_boot}, level={level}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, shape = x0.shape[0], tuple(x0.shape[1:])
    idx = np.random.default_rng(seed).integers(0, n, (num_boot, n))
    x0 = x0.double().cpu()
    by_t = {}
    for t in ts:
        a = float(schedule.alpha_bars[t])
        z = cmp.initial_noise(n, shape, int(seed) * schedule.num_train_timesteps + t, dtype=torch.float64)
        xt32 = (math.sqrt(a) * x0 + math.sqrt(1.0 - a) * z).float()
        per = {k: [] for k in ("total", "parallel", "perpendicular", "reference", "k")}
        for i in range(0, n, batch_size):
            xb = xt32[i : i + batch_size]
            em = model_eps_fn(xb, t).detach().double().cpu().flatten(1)
            r = reference_eps_fn(xb.double(), t).detach().double().cpu().flatten(1)
            d = em - r
            k = (d * r).sum(1) / r.square().sum(1)
            par = k[:, None] * r
            per["total"].append(d.square().mean(1))
            per["parallel"].append(par.square().mean(1))
            per["perpendicular"].append((d - par).square().mean(1))
            per["reference"].append(r.square().mean(1))
            per["k"].append(k)
        per = {key: torch.cat(v).numpy() for key, v in per.items()}

        by_t[str(t)] = {"alpha_bar": a, **_profile_stats(per, idx, level)}
    return {"timesteps": ts, "num_images": int(n), "num_boot": int(num_boot), "level": level, "by_t": by_t}


# ----------------------------------------------------------------------------------------------------------------
# How each sampler weights the noise prediction of each evaluation
# ----------------------------------------------------------------------------------------------------------------
def _unit_run(name, schedule, ts, x_start: float, eps_values) -> float:
    """The library's loop for ``name`` on ``ts`` from the one-element float64 state ``x_start`` with the noise
    predictions ``eps_values`` (one per evaluation, in the order of the calls) instead of a model."""
    calls = []

    def fn(x, t):
        j = len(calls)
        calls.append(int(t))
        return torch.full_like(x, float(eps_values[j]))

    out = samplers.run_sampler(fn, torch.tensor([float(x_start)], dtype=torch.float64), name, schedule, ts)
    if len(calls) != len(ts):
        raise RuntimeError(f"{name} made {len(calls)} evaluations on {len(ts)} timesteps")
    return float(out.reshape(-1)[0])


def error_weights(schedule, grid: str, nfe: int, name: str, *, timesteps=None) -> dict:
    r"""How the deterministic sampler ``name`` weights the noise prediction of each evaluation in its final sample
    (``alpha_bar = 1``), on ``grid`` at ``nfe`` (or on ``timesteps``).

    Every deterministic update rule of the library is linear in the state and in the noise predictions, so with
    the predictions ``e_j`` taken as given (not as functions of the state) the final sample is

    .. math:: x_{\mathrm{out}} = A\, x_T + \sum_j w_j\, e_j ,

    and an error ``delta_j`` in the prediction of evaluation ``j`` moves the sample *directly* by ``w_j delta_j``
    (what the later evaluations do with the moved state, the Jacobian term, is not included).  Computed, not
    derived: the library's own loop (:func:`accelerated_diffusion.samplers.run_sampler`) on a one-element float64
    state, once with ``x_T = 1`` and all ``e = 0`` (``A``) and once per ``j`` with ``x_T = 0`` and the unit
    prediction at evaluation ``j`` (``w_j``); then checked on a random state and random predictions against ``A
    x_T + sum_j w_j e_j`` (``ValueError`` when a sampler is not linear in them).  For DDIM, ``w_j`` is the product
    of the ``c_x`` of the later steps with the ``c_eps`` of step ``j`` (:func:`accelerated_diffusion.updates.ddim_coefficients`).

    Returns ``{"name", "grid", "nfe", "timesteps", "alpha_bar", "weights", "x_weight", "method"}``."""
    s = samplers.spec(name)
    if s.stochastic:
        raise ValueError(f"{name!r} is stochastic; error_weights is defined for the deterministic samplers")
    if timesteps is None:
        ts = cmp.grid_timesteps(schedule, nfe, grid).tolist()
    else:
        ts = check_timesteps(timesteps, schedule.num_train_timesteps).tolist()
        if len(ts) != int(nfe):
            raise ValueError(f"{len(ts)} timesteps given for nfe={nfe}")
    k = len(ts)
    zero = [0.0] * k
    x_weight = _unit_run(name, schedule, ts, 1.0, zero)
    weights = [_unit_run(name, schedule, ts, 0.0, [1.0 if i == j else 0.0 for i in range(k)]) for j in range(k)]
    rng = np.random.default_rng(12345)
    x_T, e = float(rng.normal()), rng.normal(size=k)
    got = _unit_run(name, schedule, ts, x_T, e)
    want = x_weight * x_T + float(np.dot(weights, e))
    scale = abs(x_weight * x_T) + float(np.abs(np.asarray(weights) * e).sum())
    if abs(got - want) > 1e-9 * max(scale, 1.0):
        raise ValueError(
            f"{name} is not linear in the state and the noise predictions on this grid ({got} against {want}); "
            "its direct error weights are not defined"
        )
    path = [float(a) for a in schedule.path(torch.tensor(ts), 1.0)]
    return {
        "name": name,
        "grid": grid if timesteps is None else None,
        "nfe": int(k),
        "timesteps": [int(t) for t in ts],
        "alpha_bar": path[:-1],
        "weights": weights,
        "x_weight": x_weight,
        "method": "library loop on a one-element float64 state with unit noise predictions",
    }


def all_error_weights(schedule, grids=cmp.GRIDS, nfes=(5, 10), names=PAIR) -> dict:
    """``{name: {grid: {str(nfe): error_weights(...) or None}}}``; ``None`` where the grid cannot have ``nfe``
    steps (``uniform`` when ``nfe`` does not divide the number of training steps)."""
    for n in names:
        if samplers.spec(n).stochastic:
            raise ValueError(f"{n!r} is stochastic; error_weights is defined for the deterministic samplers")
    out = {}
    for n in names:
        for g in grids:
            for k in nfes:
                try:
                    cmp.grid_timesteps(schedule, k, g)
                except ValueError:
                    w = None
                else:
                    w = error_weights(schedule, g, k, n)
                out.setdefault(n, {}).setdefault(g, {})[str(k)] = w
    return out


def direct_error(weights: dict, profile: dict) -> dict | None:
    """Per evaluation of a weights entry (:func:`error_weights`), ``|w_j|`` times the model's RMS error at its
    timestep (``rms_total`` of :func:`score_error_profile`): the RMS per pixel by which that evaluation's error
    alone moves the final sample directly; ``"sum"`` is their sum, an upper bound of the direct effect of all of
    them together (triangle inequality).  ``None`` when the profile lacks one of the timesteps."""
    by_t = profile["by_t"]
    if weights is None or any(str(t) not in by_t for t in weights["timesteps"]):
        return None
    per = [abs(w) * by_t[str(t)]["rms_total"]["value"] for w, t in zip(weights["weights"], weights["timesteps"])]
    return {"timesteps": list(weights["timesteps"]), "per_step": per, "sum": float(sum(per))}


# ----------------------------------------------------------------------------------------------------------------
# Causal hybrids
# ----------------------------------------------------------------------------------------------------------------
def scaled_eps_fn(model_eps_fn, reference_eps_fn, steps, scale: float):
    r"""``eps_ref + scale (eps_model - eps_ref)`` at the training steps ``steps`` (an integer or a collection),
    the model elsewhere: the model's error against the reference scaled by ``scale`` there.  ``scale = 1``
    returns the model's own output (bit for bit, not ``ref + 1 * (model - ref)``), ``scale = 0`` the reference's
    own output (then it is :func:`.comparison.hybrid_eps_fn`)."""
    s = float(scale)
    if not math.isfinite(s):
        raise ValueError(f"scale must be finite, got {scale!r}")
    steps = {int(steps)} if isinstance(steps, (int, np.integer)) else {int(t) for t in steps}

    def fn(x: torch.Tensor, t) -> torch.Tensor:
        if int(t) not in steps or s == 1.0:
            return model_eps_fn(x, t)
        ref = reference_eps_fn(x, t)
        if s == 0.0:
            return ref
        return ref + s * (model_eps_fn(x, t) - ref)

    return fn


class MemoEps:
    """``eps_fn`` remembered: a call with a timestep and a state already seen (the same shape, dtype and values,
    :func:`torch.equal`) returns a copy of the stored output instead of calling ``fn`` again.  Runs that share
    their first steps (the hybrids replace the model at one level only; the accelerated sampler's first step is
    DDIM's) then cost only their new evaluations, with outputs identical to recomputing them (a deterministic
    ``fn`` on the same batch).  ``calls`` counts the evaluations of ``fn``, ``hits`` the answers from memory."""

    def __init__(self, fn):
        self.fn = fn
        self.memory: dict[int, list] = {}
        self.calls = 0
        self.hits = 0

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        key = int(t)
        for xs, out in self.memory.get(key, ()):
            if xs.shape == x.shape and xs.dtype == x.dtype and xs.device == x.device and torch.equal(xs, x):
                self.hits += 1
                return out.clone()
        out = self.fn(x, t)
        self.calls += 1
        self.memory.setdefault(key, []).append((x.detach().clone(), out.detach().clone()))
        return out


def variant_label(kind: str, value=None) -> str:
    """The key of a hybrid run: ``"model"``, ``"ref@<t>"`` (the reference at training step ``t`` only) or
    ``"s=<scale>"`` (the model's error scaled at the first level)."""
    if kind == "model":
        return "model"
    if kind == "level":
        return f"ref@{int(value)}"
    if kind == "scale":
        return f"s={float(value):g}"
    raise ValueError(f"unknown variant kind {kind!r}")


def _check_names(names) -> None:
    if not names:
        raise ValueError("no sampler names given")
    for n in names:
        if samplers.spec(n).stochastic:
            raise ValueError(f"{n!r} is stochastic; the hybrids compare deterministic samplers on the same noises")


def _check_references(names) -> None:
    bad = [n for n in names if n not in REFERENCES]
    if bad or not names:
        raise ValueError(f"unknown reference(s) {bad}; expected some of {REFERENCES}")


def _check_scales(scales) -> list:
    out = [float(s) for s in scales]
    if not out or not all(math.isfinite(s) for s in out):
        raise ValueError(f"scales must be finite numbers, got {scales!r}")
    return out


def causal_hybrids(
    model_eps_fn,
    reference_eps_fn,
    schedule,
    noise: torch.Tensor,
    *,
    grids=cmp.GRIDS,
    nfe: int = 5,
    names=PAIR,
    scales=SCALES,
    batch_size: int = 256,
    progress: bool = False,
) -> dict:
    """Every sampler of ``names`` on every grid at ``nfe`` from the same ``noise``: the model alone
    (``"model"``), the reference at each single level of the grid (``"ref@<t>"``, :func:`.comparison.hybrid_eps_fn`)
    and the model's error scaled by each of ``scales`` at the first level (``"s=<scale>"``, :func:`scaled_eps_fn`).
    The model and the reference are remembered (:class:`MemoEps`), so shared first steps are computed once
    (``s = 1`` is then the model run and ``s = 0`` the run with the reference at the first level, at no cost).

    Returns ``{"samples": {(grid, name, variant): tensor}, "timesteps": {grid: [...]}, "variants": {grid: [...]},
    "evaluations": {"model", "model_remembered", "reference", "reference_remembered"}}`` (CPU tensors in
    ``noise``'s dtype)."""
    _check_names(names)
    scales = _check_scales(scales)
    ts = {g: [int(t) for t in cmp.grid_timesteps(schedule, nfe, g)] for g in grids}  # raises for a bad grid
    if not isinstance(noise, torch.Tensor) or not torch.is_floating_point(noise) or noise.ndim < 2:
        raise ValueError("noise must be a float tensor (n, *shape)")
    model = MemoEps(model_eps_fn)
    ref = MemoEps(reference_eps_fn)
    jobs = []
    for g in grids:
        first = ts[g][0]
        runs = [("model", model)]
        runs += [(variant_label("level", t), cmp.hybrid_eps_fn(model, ref, t)) for t in ts[g]]
        runs += [(variant_label("scale", s), scaled_eps_fn(model, ref, first, s)) for s in scales]
        jobs += [(g, n, v, fn) for n in names for v, fn in runs]
    samples = {}
    for g, n, v, fn in tqdm(jobs, desc="hybrids", disable=not progress, leave=False):
        samples[g, n, v] = cmp.generate(fn, schedule, n, g, nfe, noise, batch_size=batch_size)
    return {
        "samples": samples,
        "timesteps": ts,
        "variants": {g: list(dict.fromkeys(v for gg, _, v, _ in jobs if gg == g)) for g in grids},
        "evaluations": {
            "model": model.calls,
            "model_remembered": model.hits,
            "reference": ref.calls,
            "reference_remembered": ref.hits,
        },
    }


def feature_mahalanobis(feats, reference=None) -> np.ndarray:
    r"""The per-sample yardstick: ``(f_i - mu)^T Sigma^{-1} (f_i - mu) / d`` for classifier features ``f_i``
    (``(n, d)``) against the reference statistics (default the shipped test split): the squared Mahalanobis
    distance per feature dimension, 1 on average for test images.  One number per sample, so its mean over the
    same noises is compared by a cheap paired bootstrap with narrow intervals; it sees how far each sample's
    features fall from the data, not the spread of the set (which the Fréchet distance also sees).  So it is a
    second yardstick, not a substitute: samples collapsed towards the data mean (blurred) score *well* on it, and
    it can rank two samplers in the opposite order from the Fréchet distance (on the shipped model at 5 NFE on the
    ``uniform`` grid it prefers DDIM's smoother samples)."""
    mu, sigma = features.load_reference_stats("test") if reference is None else reference
    f = np.asarray(feats, dtype=np.float64) - np.asarray(mu, dtype=np.float64)
    sol = np.linalg.solve(np.asarray(sigma, dtype=np.float64), f.T).T
    return (f * sol).sum(1) / f.shape[1]


def _mean_boot(values: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
    return float(values.mean()), values[idx].mean(1)


def _ratio_interval(num, den, level: float) -> dict:
    """``1 - num / den`` from two ``(value, resampled)`` pairs (the same rows), with the centred bootstrap
    interval of :func:`.features.bootstrap_interval` (not clipped)."""
    (vn, rn), (vd, rd) = num, den
    value = 1.0 - vn / vd if vd != 0 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = 1.0 - np.asarray(rn) / np.asarray(rd)
    reps = reps[np.isfinite(reps)]
    if not math.isfinite(value) or len(reps) < 2:
        return {"value": None, "ci": None}
    return {"value": value, "ci": features.bootstrap_interval(value, reps, level, lower_bound=None)}


def hybrid_metrics(
    hybrids: dict,
    *,
    classifier=None,
    reference_stats=None,
    num_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    pair=PAIR,
) -> dict:
    """The Fréchet distance (classifier features, :func:`.comparison.image_features`) and the per-sample yardstick
    (:func:`feature_mahalanobis`) of every run of :func:`causal_hybrids`, with paired bootstrap differences: every
    sample set is resampled at the *same* rows (``num_boot`` draws seeded with ``seed``,
    :func:`.features.paired_bootstraps`; identical sample sets, such as ``s=1`` and ``model``, share one
    computation).  Returns ``{"cells": {grid: {name: {variant: {"fd", "fd_vs_model", "yardstick",
    "yardstick_vs_model"}}}}, "gap": {grid: {variant: {"fd", "yardstick"}}}, "share_removed": {grid: {variant:
    {"fd", "yardstick"}}}, "num_samples", "num_boot", "level", "pair"}``: values ``{"value", "ci"}``; ``gap`` is
    ``pair[1]`` minus ``pair[0]`` on the same variant; ``share_removed`` is ``1 - gap(variant) / gap(model)``, the
    share of the model's gap that the variant removes (above 1: the order of the pair reversed), ``null`` where
    undefined; intervals from the same resamples (:func:`.features.bootstrap_interval`, centred on the value)."""
    if num_boot < 20 or not 0 < level < 1:
        raise ValueError(f"need num_boot >= 20 and 0 < level < 1, got num_boot={num_boot}, level={level}")
    samples = hybrids["samples"]
    if not samples:
        raise ValueError("no hybrid samples")
    ref_stats = features.load_reference_stats("test") if reference_stats is None else reference_stats
    classifier = features.load_classifier() if classifier is None else classifier
    # identical sample sets (s=1 = model, s=0 = ref@first) are computed once
    canon, alias = {}, {}
    for key, x in samples.items():
        g, n, _ = key
        same = next((c for c in canon if c[:2] == (g, n) and torch.equal(canon[c], x)), None)
        alias[key] = same if same is not None else key
        if same is None:
            canon[key] = x
    feats = {k: cmp.image_features(x, classifier) for k, x in canon.items()}
    ns = {len(f) for f in feats.values()}
    if len(ns) != 1 or ns.pop() < 3:
        raise ValueError("every hybrid run needs the same number (>= 3) of samples")
    boot = features.paired_bootstraps(feats, ref_stats, replicates=num_boot, seed=seed)
    n = len(next(iter(feats.values())))
    rng = np.random.default_rng(seed)  # the rows of features.bootstrap_frechet_distances
    idx = np.stack([rng.integers(0, n, n) for _ in range(num_boot)])
    yard = {k: _mean_boot(feature_mahalanobis(f, ref_stats), idx) for k, f in feats.items()}
    cells, gap, share = {}, {}, {}
    grids = list(dict.fromkeys(k[0] for k in samples))
    for g in grids:
        names = list(dict.fromkeys(k[1] for k in samples if k[0] == g))
        variants = list(dict.fromkeys(k[2] for k in samples if k[0] == g))
        for nm in names:
            base = alias[g, nm, "model"]
            for v in variants:
                c = alias[g, nm, v]
                cells.setdefault(g, {}).setdefault(nm, {})[v] = {
                    "fd": {"value": boot[c][0], "ci": features.bootstrap_interval(*boot[c], level)},
                    "fd_vs_model": features.difference_interval(boot[c], boot[base], level),
                    "yardstick": {"value": yard[c][0], "ci": _interval(yard[c][1], level)},
                    "yardstick_vs_model": features.difference_interval(yard[c], yard[base], level),
                }
        if pair[0] in names and pair[1] in names:
            for v in variants:
                a, b = alias[g, pair[1], v], alias[g, pair[0], v]
                m1, m0 = alias[g, pair[1], "model"], alias[g, pair[0], "model"]
                gv = {
                    "fd": (boot[a][0] - boot[b][0], np.asarray(boot[a][1]) - np.asarray(boot[b][1])),
                    "yardstick": (yard[a][0] - yard[b][0], yard[a][1] - yard[b][1]),
                }
                gm = {
                    "fd": (boot[m1][0] - boot[m0][0], np.asarray(boot[m1][1]) - np.asarray(boot[m0][1])),
                    "yardstick": (yard[m1][0] - yard[m0][0], yard[m1][1] - yard[m0][1]),
                }
                gap.setdefault(g, {})[v] = {
                    "fd": features.difference_interval(boot[a], boot[b], level),
                    "yardstick": features.difference_interval(yard[a], yard[b], level),
                }
                share.setdefault(g, {})[v] = {m: _ratio_interval(gv[m], gm[m], level) for m in ("fd", "yardstick")}
    return {
        "cells": cells,
        "gap": gap,
        "share_removed": share,
        "num_samples": int(n),
        "num_boot": int(num_boot),
        "level": level,
        "pair": list(pair),
        "yardstick": "mean squared Mahalanobis distance of the classifier features to the test split, per feature",
    }


# ----------------------------------------------------------------------------------------------------------------
# Everything at a given size
# ----------------------------------------------------------------------------------------------------------------
def check_arguments(
    *,
    num_samples: int,
    num_boot: int,
    grids,
    nfes,
    names,
    hybrid_nfe: int,
    profile_images: int,
    references,
    hybrid_reference: str,
    scales,
    level: float = 0.95,
    schedule=None,
) -> None:
    """Every argument of :func:`run_score_error` checked before any expensive work (``ValueError`` /
    ``TypeError`` naming the argument); with ``schedule`` also that every grid can have ``hybrid_nfe`` steps."""
    for name, v, lo in (
        ("num_samples", num_samples, 3),
        ("num_boot", num_boot, 20),
        ("profile_images", profile_images, 2),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if not grids:
        raise ValueError("no grids given")
    from ..schedules import SPACINGS

    bad = [g for g in grids if g not in SPACINGS]
    if bad:
        raise ValueError(f"unknown grid(s) {bad}; expected some of {SPACINGS}")
    for k in [*nfes, hybrid_nfe]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"every NFE must be an integer >= 1, got {k!r}")
    _check_names(names)
    _check_references(references)
    if hybrid_reference not in references:
        raise ValueError(f"hybrid_reference {hybrid_reference!r} must be one of references {list(references)}")
    _check_scales(scales)
    if schedule is not None:
        for g in grids:
            cmp.grid_timesteps(schedule, hybrid_nfe, g)


def _load_model(model_id, device):
    in_repo = repository_root() / model_id
    path = in_repo if in_repo.is_dir() else model_id
    unet = models.load_unet(path, device=device)
    schedule = models.schedule_from_config(models.load_scheduler_config(path))
    return unet, schedule


def run_score_error(
    num_samples: int = 64,
    num_boot: int = 100,
    seed: int = 0,
    grids=cmp.GRIDS,
    nfes=(5, 10),
    names=PAIR,
    device: str = "cpu",
    *,
    model_id: str = DEFAULT_MODEL,
    hybrid_nfe: int = 5,
    profile_images: int = 32,
    profile_timesteps=None,
    references=REFERENCES,
    hybrid_reference: str = "train",
    scales=SCALES,
    level: float = 0.95,
    batch_size: int = 256,
    progress: bool = False,
) -> dict:
    """The chapter's measurements at one size, as a JSON-ready dict (schema :data:`SCHEMA`).

    1. ``profile[ref]``: :func:`score_error_profile` of the model against each reference (``references``) on
       ``profile_images`` held-out test images (:func:`held_out_images`), at ``profile_timesteps`` (default: every
       level the grids visit at ``hybrid_nfe``);
    2. ``weights``: :func:`all_error_weights` of ``names`` on ``grids`` at ``nfes``; ``direct_error[ref]``:
       :func:`direct_error` where the profile has the grid's levels;
    3. ``hybrids``: :func:`causal_hybrids` at ``hybrid_nfe`` from ``num_samples`` noises
       (:func:`.comparison.initial_noise` with ``seed``) with the reference ``hybrid_reference``, and their
       :func:`hybrid_metrics` (``num_boot`` paired resamples).

    Also ``schema``, ``model_id``, ``device``, ``device_name``, ``torch_threads``, ``execution_s`` (wall time of
    this call), ``cpu_total_s`` (its process CPU time), ``timings_s`` / ``cpu_s`` (the same per stage) and
    ``provenance`` (:func:`.paths.provenance` of the arguments); :func:`save` writes it.  Every
    argument is checked before the model is loaded (:func:`check_arguments`)."""
    t_start, c_start = time.perf_counter(), time.process_time()
    grids, nfes, names, references = list(grids), [int(k) for k in nfes], list(names), list(references)
    scales = list(scales)
    checks = dict(
        num_samples=num_samples,
        num_boot=num_boot,
        grids=grids,
        nfes=nfes,
        names=names,
        hybrid_nfe=hybrid_nfe,
        profile_images=profile_images,
        references=references,
        hybrid_reference=hybrid_reference,
        scales=scales,
        level=level,
    )
    check_arguments(**checks)
    params = {
        "num_samples": int(num_samples),
        "num_boot": int(num_boot),
        "seed": int(seed),
        "grids": grids,
        "nfes": nfes,
        "names": names,
        "device": str(device),
        "model_id": str(model_id),
        "hybrid_nfe": int(hybrid_nfe),
        "profile_images": int(profile_images),
        "profile_timesteps": None if profile_timesteps is None else [int(t) for t in profile_timesteps],
        "references": references,
        "hybrid_reference": hybrid_reference,
        "scales": [float(s) for s in scales],
        "level": level,
        "batch_size": int(batch_size),
    }
    unet, schedule = _load_model(model_id, device)
    check_arguments(**checks, schedule=schedule)
    if profile_timesteps is None:
        profile_timesteps = sorted(
            {int(t) for g in grids for t in cmp.grid_timesteps(schedule, hybrid_nfe, g)}, reverse=True
        )
    else:
        profile_timesteps = check_timesteps(profile_timesteps, schedule.num_train_timesteps).tolist()
    model_fn = models.eps_fn(unet)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    if shape != (1, 28, 28):
        raise ValueError(f"the references are Fashion-MNIST (1, 28, 28); the model makes {shape}")
    timings, cpu = {}, {}

    t0, c0 = time.perf_counter(), time.process_time()
    targets = reference_targets(references)
    ref_fns = {r: reference_eps_fn(targets[r], schedule) for r in references}
    timings["references"], cpu["references"] = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    images = held_out_images(profile_images, seed).to(device)
    shared = MemoEps(model_fn)  # the same x_t for every reference: the model is evaluated once
    profile = {
        r: score_error_profile(
            shared, ref_fns[r], schedule, profile_timesteps, images, seed, num_boot=num_boot, level=level
        )
        for r in references
    }
    del shared
    timings["profile"], cpu["profile"] = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    weights = all_error_weights(schedule, grids, nfes, names)
    direct = {
        r: {
            n: {g: {k: direct_error(w, profile[r]) for k, w in by_k.items()} for g, by_k in by_g.items()}
            for n, by_g in weights.items()
        }
        for r in references
    }
    timings["weights"], cpu["weights"] = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    noise = cmp.initial_noise(num_samples, shape, seed).to(device)
    hyb = causal_hybrids(
        model_fn,
        ref_fns[hybrid_reference],
        schedule,
        noise,
        grids=grids,
        nfe=hybrid_nfe,
        names=names,
        scales=scales,
        batch_size=batch_size,
        progress=progress,
    )
    timings["hybrid_runs"], cpu["hybrid_runs"] = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    pair = tuple(names[:2]) if len(names) >= 2 else (names[0], names[0])
    metrics = hybrid_metrics(hyb, num_boot=num_boot, level=level, seed=seed, pair=pair)
    timings["hybrid_metrics"], cpu["hybrid_metrics"] = time.perf_counter() - t0, time.process_time() - c0

    dev_name = (
        torch.cuda.get_device_name(torch.device(device))
        if str(device).startswith("cuda")
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads)"
    )
    return {
        "provenance": provenance(params),
        "schema": SCHEMA,
        "model_id": str(model_id),
        "device": str(device),
        "device_name": dev_name,
        "torch_threads": torch.get_num_threads(),
        "references": {
            "train": "exact eps of the 60,000 training images (empirical distribution, float64)",
            "mixture": "exact eps of the ten-class Gaussian mixture fitted to the training images (rank 16)",
        },
        "profile": profile,
        "weights": weights,
        "direct_error": direct,
        "hybrids": {
            "reference": hybrid_reference,
            "nfe": int(hybrid_nfe),
            "num_samples": int(num_samples),
            "timesteps": hyb["timesteps"],
            "variants": hyb["variants"],
            "scales": [float(s) for s in scales],
            "evaluations": hyb["evaluations"],
            **metrics,
        },
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "execution_s": round(time.perf_counter() - t_start, 1),
        "cpu_total_s": round(time.process_time() - c_start, 1),
    }


def save(result: dict, name: str = "score_error", *, folder=None, extra: dict | None = None):
    """Write ``result`` of :func:`run_score_error` (plus the top-level entries of ``extra``, e.g. other
    measurements of the chapter) atomically to ``<results>/<name>.json`` with :func:`.paths.save_results`, which
    puts the provenance of the run's parameters first.  Returns the path."""
    body = {k: v for k, v in result.items() if k != "provenance"}
    clash = set(body) & set(extra or {})
    if clash:
        raise ValueError(f"extra entries {sorted(clash)} would overwrite the result's")
    params = (result.get("provenance") or {}).get("parameters")
    return save_results(name, {**body, **(extra or {})}, folder=folder, params=params)


def load(name: str = "score_error", *, folder=None) -> dict:
    """The stored result (:func:`.paths.load_results`: the results folder, else the shipped ``data/results``)."""
    return load_results(name, folder=folder)


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------
def profile_rows(result: dict, reference: str | None = None) -> list[dict]:
    """One row per reference and timestep of ``result["profile"]``: ``reference``, ``t``, ``alpha_bar`` and the
    value and interval of each quantity of :func:`score_error_profile` (``<q>`` and ``<q>_ci``).  A list of
    dicts (``pandas.DataFrame(rows)`` makes a data frame of it)."""
    rows = []
    for ref, prof in result["profile"].items():
        if reference is not None and ref != reference:
            continue
        for t in prof["timesteps"]:
            e = prof["by_t"][str(t)]
            row = {"reference": ref, "t": int(t), "alpha_bar": e["alpha_bar"]}
            for q in ("rms_total", "rms_parallel", "rms_perpendicular", "rms_reference", "relative", "scale"):
                row[q], row[q + "_ci"] = e[q]["value"], e[q]["ci"]
            rows.append(row)
    return rows


def profile_text(result: dict, reference: str | None = None, *, timesteps=None) -> str:
    """:func:`profile_rows` as fixed-width text (RMS per pixel; ``along`` / ``rest``: the parts along the
    reference and orthogonal to it; ``rel.``: total over the reference's RMS), at most 76 characters wide."""
    rows = [r for r in profile_rows(result, reference) if timesteps is None or r["t"] in timesteps]
    body = [
        (
            f"{r['reference']:7s} t={r['t']:3d}",
            [
                interval(r["rms_total"], r["rms_total_ci"], missing="-"),
                f"{r['rms_parallel']:.2g}",
                f"{r['rms_perpendicular']:.2g}",
                f"{r['relative']:.2g}",
                f"{r['scale']:+.2g}",
            ],
        )
        for r in rows
    ]
    return cmp.format_table(["RMS error [95%]", "along", "rest", "rel.", "k"], body, indent="")


def weights_rows(result: dict) -> list[dict]:
    """One row per sampler, grid, NFE and evaluation of ``result["weights"]``: ``name``, ``grid``, ``nfe``,
    ``step`` (1 = first evaluation), ``t``, ``alpha_bar``, ``weight`` and ``x_weight`` (the run's ``A``)."""
    rows = []
    for n, by_g in result["weights"].items():
        for g, by_k in by_g.items():
            for k, w in by_k.items():
                if w is None:
                    continue
                for j, (t, a, wj) in enumerate(zip(w["timesteps"], w["alpha_bar"], w["weights"])):
                    rows.append(
                        {
                            "name": n,
                            "grid": g,
                            "nfe": int(k),
                            "step": j + 1,
                            "t": t,
                            "alpha_bar": a,
                            "weight": wj,
                            "x_weight": w["x_weight"],
                        }
                    )
    return rows


def weights_text(result: dict, nfe: int = 5) -> str:
    """The weights at ``nfe`` as fixed-width text: one row per grid and sampler, one column per evaluation
    (``t: w``)."""
    lines = []
    for n, by_g in result["weights"].items():
        for g, by_k in by_g.items():
            w = by_k.get(str(nfe))
            if w is None:
                continue
            cells = [f"{t}: {v:.3g}" for t, v in zip(w["timesteps"], w["weights"])]
            lines.append(cmp.wrap_items(f"{cmp.short_label(n):12s} {g:9s}", cells, indent=" " * 23))
    return "\n".join(lines)


def hybrid_rows(result: dict, kind: str = "level", metric: str = "fd") -> list[dict]:
    """One row per grid, sampler and hybrid variant of ``kind`` (``"level"``: the reference at one level, with the
    unmodified run first; ``"scale"``: the scaled error at the first level): ``grid``, ``name``, ``variant``,
    ``value``/``ci`` of ``metric`` (``"fd"`` or ``"yardstick"``) and ``vs_model``/``vs_model_ci`` (paired
    difference against the unmodified run)."""
    if kind not in ("level", "scale") or metric not in ("fd", "yardstick"):
        raise ValueError(f"kind must be 'level' or 'scale' and metric 'fd' or 'yardstick', got {kind!r}, {metric!r}")
    h = result["hybrids"]
    rows = []
    for g, by_n in h["cells"].items():
        for n, by_v in by_n.items():
            for v in h["variants"][g]:
                if (kind == "level" and not (v == "model" or v.startswith("ref@"))) or (
                    kind == "scale" and not v.startswith("s=")
                ):
                    continue
                c = by_v[v]
                d = c[f"{metric}_vs_model"]
                rows.append(
                    {
                        "grid": g,
                        "name": n,
                        "variant": v,
                        "value": c[metric]["value"],
                        "ci": c[metric]["ci"],
                        "vs_model": d["value"],
                        "vs_model_ci": d["ci"],
                    }
                )
    return rows


def hybrid_text(result: dict, kind: str = "level", metric: str = "fd") -> str:
    """:func:`hybrid_rows` as fixed-width text, one block per grid, one row per variant and sampler: the value
    [95%] and the paired difference against the unmodified run [95%]."""
    rows = hybrid_rows(result, kind, metric)
    out = []
    for g in dict.fromkeys(r["grid"] for r in rows):
        body = [
            (
                f"{r['variant']:8s} {cmp.short_label(r['name'])}",
                [
                    interval(r["value"], r["ci"], missing="-"),
                    "" if r["variant"] == "model" else interval(r["vs_model"], r["vs_model_ci"], missing="-"),
                ],
            )
            for v in dict.fromkeys(r["variant"] for r in rows if r["grid"] == g)
            for r in rows
            if r["grid"] == g and r["variant"] == v
        ]
        head = ["FD [95%]" if metric == "fd" else "yardstick [95%]", "minus model [95%]"]
        out.append(g + "\n" + cmp.format_table(head, body, indent="  "))
    return "\n\n".join(out)


def gap_rows(result: dict, metric: str = "fd") -> list[dict]:
    """One row per grid and variant: the gap ``pair[1] - pair[0]`` (``gap``/``gap_ci``) and the share of the
    unmodified run's gap that the variant removes (``share``/``share_ci``, ``None`` where undefined)."""
    h = result["hybrids"]
    rows = []
    for g, by_v in h["gap"].items():
        for v, d in by_v.items():
            s = h["share_removed"][g][v][metric]
            rows.append(
                {
                    "grid": g,
                    "variant": v,
                    "gap": d[metric]["value"],
                    "gap_ci": d[metric]["ci"],
                    "share": s["value"],
                    "share_ci": s["ci"],
                }
            )
    return rows


def gap_text(result: dict, metric: str = "fd", variants=None) -> str:
    """:func:`gap_rows` as fixed-width text: per grid and variant, the gap [95%] and the share of the model's gap
    removed [95%] (``variants``: which ones, default all)."""
    pair = result["hybrids"]["pair"]
    body = [
        (
            f"{r['grid']:9s} {r['variant']}",
            [interval(r["gap"], r["gap_ci"], missing="-"), interval(r["share"], r["share_ci"], digits=2, missing="-")],
        )
        for r in gap_rows(result, metric)
        if variants is None or r["variant"] in variants
    ]
    head = [f"{cmp.short_label(pair[1])} - {cmp.short_label(pair[0])}", "share removed"]
    return cmp.format_table(head, body, indent="")


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------
def plot_score_error(result: dict):
    """Two panels against the timestep: the RMS per pixel of ``eps_model - eps_ref`` for each reference (solid,
    with its interval as a band) and its parts along the reference (dashed) and orthogonal to it (dotted); and the
    error relative to the reference's RMS.  Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6.9, 2.9))
    for i, (ref, prof) in enumerate(result["profile"].items()):
        colour = f"C{i}"
        ts = prof["timesteps"]
        e = [prof["by_t"][str(t)] for t in ts]
        tot = np.array([x["rms_total"]["value"] for x in e])
        lo = np.array([x["rms_total"]["ci"][0] for x in e])
        hi = np.array([x["rms_total"]["ci"][1] for x in e])
        axes[0].plot(ts, tot, "o-", color=colour, ms=3, label=f"{ref}: total")
        axes[0].fill_between(ts, lo, hi, color=colour, alpha=0.2)
        axes[0].plot(ts, [x["rms_parallel"]["value"] for x in e], "--", color=colour, label=f"{ref}: along eps_ref")
        axes[0].plot(ts, [x["rms_perpendicular"]["value"] for x in e], ":", color=colour, label=f"{ref}: rest")
        rel = [x["relative"] for x in e]
        axes[1].errorbar(
            ts,
            [r["value"] for r in rel],
            yerr=np.array([[r["value"] - r["ci"][0], r["ci"][1] - r["value"]] for r in rel]).T,
            marker="o",
            ms=3,
            capsize=2,
            color=colour,
            label=ref,
        )
    axes[0].set_yscale("log")
    axes[0].set_xlabel("timestep t")
    axes[0].set_ylabel("RMS per pixel of eps_model - eps_ref")
    axes[0].legend(fontsize=6)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("timestep t")
    axes[1].set_ylabel("RMS error / RMS eps_ref")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_error_weights(result: dict, nfes=None):
    """``|w_j|`` against the timestep of evaluation ``j`` (log scale), one panel per NFE (rows) and grid
    (columns), one line per sampler.  Returns the figure."""
    import matplotlib.pyplot as plt

    w = result["weights"]
    names = list(w)
    grids = list(next(iter(w.values())))
    nfes = sorted({int(k) for n in w for g in w[n] for k in w[n][g]}) if nfes is None else list(nfes)
    fig, axes = plt.subplots(len(nfes), len(grids), figsize=(6.9, 1.9 * len(nfes) + 0.4), squeeze=False, sharey=True)
    for r, k in enumerate(nfes):
        for c, g in enumerate(grids):
            ax = axes[r][c]
            for i, n in enumerate(names):
                e = w[n][g].get(str(k))
                if e is None:
                    continue
                ax.plot(
                    e["timesteps"],
                    np.abs(e["weights"]),
                    marker=samplers.spec(n).marker or "o",
                    ms=3,
                    color=f"C{i}",
                    label=samplers.label(n),
                )
            ax.set_yscale("log")
            ax.invert_xaxis()
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"{g}, {k} NFE", fontsize=8)
            if r == len(nfes) - 1:
                ax.set_xlabel("t of the evaluation", fontsize=8)
            if c == 0:
                ax.set_ylabel("|weight| in the sample", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def _hybrid_panels(result: dict, kind: str, metric: str, xlabel: str):
    import matplotlib.pyplot as plt

    rows = hybrid_rows(result, kind, metric)
    grids = list(dict.fromkeys(r["grid"] for r in rows))
    names = list(dict.fromkeys(r["name"] for r in rows))
    fig, axes = plt.subplots(1, len(grids), figsize=(6.9, 2.6), squeeze=False, sharey=True)
    for ax, g in zip(axes[0], grids):
        rg = [r for r in rows if r["grid"] == g]
        variants = list(dict.fromkeys(r["variant"] for r in rg))
        x = np.arange(len(variants))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            rr = [next(r for r in rg if r["name"] == n and r["variant"] == v) for v in variants]
            y = np.array([r["value"] for r in rr])
            err = np.array([[r["value"] - r["ci"][0], r["ci"][1] - r["value"]] for r in rr]).T
            ax.errorbar(
                x + (i - (len(names) - 1) / 2) * width,
                y,
                yerr=err,
                fmt=samplers.spec(n).marker or "o",
                ms=4,
                capsize=2,
                color=f"C{i}",
                label=samplers.label(n),
            )
        ax.set_xticks(x, [v.replace("ref@", "") for v in variants], fontsize=7, rotation=45)
        ax.set_yscale("log")
        ax.set_title(g, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("Fréchet distance" if metric == "fd" else "feature Mahalanobis", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_level_hybrids(result: dict, metric: str = "fd"):
    """Per grid, ``metric`` (``"fd"`` or ``"yardstick"``) with its interval for the unmodified run (``model``)
    and for the reference at each single level (labelled by its timestep), one marker per sampler.  Returns the
    figure."""
    return _hybrid_panels(result, "level", metric, "reference eps at t")


def plot_scaled_hybrids(result: dict, metric: str = "fd"):
    """Per grid, ``metric`` with its interval against the scale ``s`` of the model's error at the first level
    (``s = 0``: the reference there, ``s = 1``: the model), one marker per sampler.  Returns the figure."""
    return _hybrid_panels(result, "scale", metric, "scale s of the model's error at the first level")
