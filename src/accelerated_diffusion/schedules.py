r"""Noise schedules and sampling paths.

Notation follows Li et al. (2024), *Accelerating Convergence of Score-Based Diffusion Models, Provably*:

* forward process ``X_t = sqrt(alpha_t) X_{t-1} + sqrt(1 - alpha_t) W_t`` for ``t = 1..T``;
* ``beta_t = 1 - alpha_t`` (the paper calls these *learning rates*);
* ``alpha_bar_t = prod_{k <= t} alpha_k`` so that ``X_t = sqrt(alpha_bar_t) X_0 + sqrt(1 - alpha_bar_t) N(0, I)``.

A *sampling path* is the 1-D tensor of ``alpha_bar`` levels a sampler visits, in sampling order (noisiest
first, strictly increasing, inside (0, 1]); its last entry is the level of the output (1.0 for "clean data",
or ``alpha_bar_1`` for the paper's ``q_1``).  Every sampler in :mod:`accelerated_diffusion.samplers` takes such
a path, so schedules are built here and apart from the update rules (k-diffusion style).

Three sources of paths are provided:

1. diffusers' beta schedules (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``) with the same formulas as
   ``diffusers.DDPMScheduler``, see :func:`betas_for`;
2. the learning-rate schedule of the paper's theory (constants ``c0``, ``c1``), see :func:`paper_betas`;
3. subsequences ``tau_1 < ... < tau_S`` of a training schedule, as used with pretrained models, see
   :func:`timestep_subsequence` (diffusers' ``leading`` / ``trailing`` / ``linspace`` spacings, the official
   code's ``uniform`` and ``quadratic`` ones, and ``logsnr``, uniform in the half log-SNR, see
   :func:`logsnr_timesteps`). Along a subsequence the per-step ``alpha_t`` is
   ``alpha_bar_{tau_t} / alpha_bar_{tau_{t-1}}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "BETA_SCHEDULES",
    "SPACINGS",
    "DiscreteSchedule",
    "betas_for",
    "alpha_bars_from_betas",
    "paper_betas",
    "timestep_subsequence",
    "logsnr_timesteps",
    "sampling_path",
    "validate_path",
    "is_integer_dtype",
    "check_timesteps",
]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace", "uniform", "quadratic", "logsnr")


def betas_for(
    schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    r"""Betas of a diffusers beta schedule, ``beta_1 .. beta_N`` (index 0 holds ``beta_1``).

    * ``linear``: ``linspace(beta_start, beta_end, N)`` (the DDPM schedule, google/ddpm-* checkpoints);
    * ``scaled_linear``: ``linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2`` (Stable Diffusion);
    * ``squaredcos_cap_v2``: Nichol & Dhariwal's cosine schedule,
      ``beta_i = min(1 - abar(i/N) / abar((i-1)/N), 0.999)`` with ``abar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2``.

    diffusers computes these in float32; pass ``dtype=torch.float32`` to reproduce its values bit for bit.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    n = num_train_timesteps
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=dtype)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=dtype) ** 2
    elif schedule == "squaredcos_cap_v2":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=dtype)
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; expected one of {BETA_SCHEDULES}")
    return betas


def alpha_bars_from_betas(betas: torch.Tensor) -> torch.Tensor:
    r"""``alpha_bar_t = prod_{k <= t} (1 - beta_k)`` (cumulative product, in the dtype of ``betas``)."""
    betas = torch.as_tensor(betas)
    if betas.ndim != 1:
        raise ValueError(f"betas must be 1-D, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("every beta must lie in (0, 1)")
    return torch.cumprod(1.0 - betas, dim=0)


# fmt: off
def paper_betas(
    T: int,
    c0: float = 2.0,
    c1: float = 4.0,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    r"""The learning-rate schedule of the paper's theory (Li et al. 2024,
    Section 3; also Li-Wei-Chen-Chi 2023):

    .. math::
        \beta_1 = T^{-c_0}, \qquad
        \beta_{t+1} = \frac{c_1 \log T}{T}
            \min\Big\{ \beta_1 \Big(1 + \frac{c_1 \log T}{T}\Big)^{t},\
                       1 \Big\},
        \quad t = 1, \dots, T - 1.

    The theory only asks ``c0, c1`` to be "sufficiently large"; the
    defaults are the book's choice (see the theory chapter): with
    ``c1 = 4`` the geometric growth from ``T^{-c0}`` reaches the cap after
    a fraction ``c0 / c1`` of the steps, leaving ``alpha_bar_T`` small.
    Computed in float64; the geometric factor is evaluated as
    ``exp(log beta_1 + t log1p(rate))`` so it cannot overflow before the
    cap.
    """
    if T < 2:
        raise ValueError(f"T must be >= 2, got {T}")
    if c0 <= 0 or c1 <= 0:
        raise ValueError(
            f"c0 and c1 must be positive, got c0={c0}, c1={c1}"
        )
    rate = c1 * math.log(T) / T
    if rate >= 1:
        raise ValueError(
            f"c1 log T / T = {rate:.3g} >= 1: T is too small for c1={c1} "
            "(betas would reach 1)"
        )
    beta1 = T ** (-c0)
    t = torch.arange(1, T, dtype=torch.float64)
    # beta_1 (1 + rate)^t computed as exp(log(beta_1) + t log1p(rate))
    # to avoid overflow for large t.
    growth = torch.exp(math.log(beta1) + t * math.log1p(rate))
    betas = torch.cat([
        torch.tensor([beta1], dtype=torch.float64),
        rate * torch.clamp(growth, max=1.0),
    ])
    return betas.to(dtype)
# fmt: on


def is_integer_dtype(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` holds integers (``bool`` does not count: ``True`` is no timestep)."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def check_timesteps(timesteps, num_train_timesteps: int, name: str = "timesteps") -> torch.Tensor:
    """``timesteps`` as a 1-D int64 CPU tensor, after checking that they are integer training steps in
    ``[0, num_train_timesteps)``.

    Accepts a Python or NumPy integer, a sequence of them, or an integer array or tensor.  Raises ``TypeError`` for
    anything else (a float is never truncated, a bool is not a timestep) and ``ValueError`` naming the first entry
    outside the range (a negative index would otherwise wrap around to the end of the schedule).
    """
    if isinstance(timesteps, (bool, float, complex)) or (
        isinstance(timesteps, (list, tuple)) and any(isinstance(t, (bool, float, complex)) for t in timesteps)
    ):
        raise TypeError(f"{name} must be integers (training step indices), got {timesteps!r}")
    try:
        ts = torch.as_tensor(np.asarray(timesteps) if not isinstance(timesteps, torch.Tensor) else timesteps)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be integers (training step indices), got {timesteps!r}") from err
    if not is_integer_dtype(ts.dtype):
        raise TypeError(f"{name} must be integers (training step indices), got dtype {ts.dtype}: {_shown(ts)}")
    if ts.ndim > 1:
        raise ValueError(f"{name} must be an integer or a 1-D sequence, got shape {tuple(ts.shape)}")
    ts = ts.detach().cpu().to(torch.int64).reshape(-1)
    bad = torch.nonzero((ts < 0) | (ts >= num_train_timesteps)).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"{name} must lie in [0, num_train_timesteps={num_train_timesteps}); {name}[{i}] = {int(ts[i])}"
        )
    return ts


def _shown(ts) -> list:
    """At most 12 entries of ``ts`` for an error message."""
    v = torch.as_tensor(ts).reshape(-1).tolist()
    return v if len(v) <= 12 else v[:6] + ["..."] + v[-6:]


def logsnr_timesteps(alpha_bars_train: torch.Tensor, num_steps: int, t_max: int | None = None) -> torch.Tensor:
    r"""``num_steps`` distinct training-step indices, descending, uniform in the half log-SNR
    ``lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t))`` between ``lambda`` of step ``t_max`` (default the last
    training step, the noisiest level) and ``lambda`` of step 0 (the first training level).

    Each target ``lambda`` is mapped to the index with the nearest ``lambda``; where two targets land on the same
    index (only where ``lambda`` changes faster than the target spacing), the indices are pushed apart by one step,
    first upwards from step 0, then downwards from ``t_max``, so the grid always starts at ``t_max`` and ends at 0.
    Raises ``ValueError`` when ``num_steps`` exceeds ``t_max + 1`` (not enough distinct indices).
    """
    abar = torch.as_tensor(alpha_bars_train, dtype=torch.float64)
    n = abar.numel()
    t_max = n - 1 if t_max is None else int(t_max)
    s = int(num_steps)
    if not 0 <= t_max < n:
        raise ValueError(f"t_max must be in [0, {n}), got {t_max}")
    if not 1 <= s <= t_max + 1:
        raise ValueError(f"num_steps must be in [1, t_max + 1 = {t_max + 1}], got {num_steps}")
    lam = (0.5 * (torch.log(abar) - torch.log1p(-abar))).numpy()[: t_max + 1]  # decreasing in t
    targets = np.linspace(lam[0], lam[t_max], s) if s > 1 else np.array([lam[t_max]])
    ts = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1).astype(np.int64)  # ascending in t
    for k in range(1, s):  # distinct: push up from step 0 ...
        ts[k] = max(ts[k], ts[k - 1] + 1)
    ts[-1] = t_max
    for k in range(s - 2, -1, -1):  # ... and down from t_max
        ts[k] = min(ts[k], ts[k + 1] - 1)
    return torch.from_numpy(ts[::-1].copy())


def timestep_subsequence(
    num_train_timesteps: int,
    num_steps: int,
    spacing: str = "leading",
    steps_offset: int = 0,
    alpha_bars_train: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Training-step indices to visit, in sampling order (descending), as an int64 tensor.

    Indices are 0-based as in diffusers (index ``i`` is the paper's ``t = i + 1``).

    * ``leading``  (diffusers): ``arange(S) * (N // S)`` reversed, plus ``steps_offset``;
    * ``trailing`` (diffusers): ``round(arange(N, 0, -N / S)) - 1``;
    * ``linspace`` (diffusers): ``round(linspace(0, N - 1, S))`` reversed;
    * ``uniform``  (official code, from DDIM): ``range(0, N, N // S)`` reversed -- note that it has more than
      ``S`` entries when ``S`` does not divide ``N`` (e.g. 8 entries for ``N = 1000, S = 7``), exactly as there;
    * ``quadratic`` (official code): ``int(linspace(0, sqrt(0.8 N), S) ** 2)`` reversed;
    * ``logsnr``: uniform in the half log-SNR between the last and the first training levels
      (:func:`logsnr_timesteps`); needs ``alpha_bars_train`` (or use :meth:`DiscreteSchedule.subsample`).

    Raises ``TypeError`` for a count or offset that is not an integer, ``ValueError`` for an unknown spacing,
    ``num_steps`` outside ``[1, N]``, or a spacing that would visit the same index twice or leave ``[0, N)``.
    """
    for what, v in (
        ("num_train_timesteps", num_train_timesteps),
        ("num_steps", num_steps),
        ("steps_offset", steps_offset),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{what} must be an int, got {v!r}")
    n, s = int(num_train_timesteps), int(num_steps)
    if not 1 <= s <= n:
        raise ValueError(f"num_steps must be in [1, num_train_timesteps={n}], got {num_steps}")
    if spacing == "leading":
        ts = (np.arange(0, s) * (n // s)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / s)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, n - 1, s).round()[::-1].astype(np.int64)
    elif spacing == "uniform":
        ts = np.arange(0, n, n // s, dtype=np.int64)[::-1]
    elif spacing == "quadratic":
        ts = np.array([int(v) for v in np.linspace(0, math.sqrt(0.8 * n), s) ** 2], dtype=np.int64)[::-1]
    elif spacing == "logsnr":
        if alpha_bars_train is None or len(alpha_bars_train) != n:
            raise ValueError(
                "the 'logsnr' spacing needs the training levels: pass alpha_bars_train (length "
                f"{n}) or use DiscreteSchedule.subsample"
            )
        ts = (logsnr_timesteps(alpha_bars_train, s) + steps_offset).numpy()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
    ts = np.ascontiguousarray(ts)
    shown = _shown(torch.from_numpy(ts))
    if len(np.unique(ts)) != len(ts):
        raise ValueError(f"spacing {spacing!r} with {s} steps visits a timestep twice: {shown}")
    if ts.min() < 0 or ts.max() >= n:
        raise ValueError(
            f"spacing {spacing!r} with steps_offset={steps_offset} gives timesteps outside [0, {n}): {shown}"
        )
    return torch.from_numpy(ts)


def validate_path(alpha_bars: torch.Tensor) -> torch.Tensor:
    """Check that ``alpha_bars`` is a sampling path: 1-D, at least 2 levels, finite, strictly increasing, in (0, 1].

    Returns it as a float64 tensor; raises ``ValueError`` naming the first offending position otherwise.
    """
    a = torch.as_tensor(alpha_bars, dtype=torch.float64).detach().cpu()
    if a.ndim != 1 or a.numel() < 2:
        raise ValueError(f"alpha_bars must be 1-D with at least 2 levels, got shape {tuple(a.shape)}")
    if not bool(torch.isfinite(a).all()):
        raise ValueError(
            f"alpha_bars contains NaN or Inf at positions {torch.nonzero(~torch.isfinite(a)).flatten().tolist()}"
        )
    bad = torch.nonzero((a <= 0) | (a > 1)).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"alpha_bars must lie in (0, 1]; alpha_bars[{i}] = {float(a[i])!r}")
    steps = torch.nonzero(a[1:] <= a[:-1]).flatten()
    if steps.numel():
        i = int(steps[0])
        raise ValueError(
            "alpha_bars must be strictly increasing (noisiest first); "
            f"alpha_bars[{i}] = {float(a[i])!r} >= alpha_bars[{i + 1}] = {float(a[i + 1])!r}"
        )
    return a


def sampling_path(
    alpha_bars_train: torch.Tensor, timesteps: torch.Tensor, final_alpha_bar: float | None = 1.0
) -> torch.Tensor:
    r"""The sampling path for a subsequence of training steps.

    ``alpha_bars_train[i]`` is the training level of (0-based) step ``i``; ``timesteps`` (integers in
    ``[0, len(alpha_bars_train))``, checked by :func:`check_timesteps`) are visited in the given (descending)
    order; the path is ``[abar[tau_S], ..., abar[tau_1], final_alpha_bar]``.  ``final_alpha_bar=1.0`` is diffusers'
    ``set_alpha_to_one=True`` (output at clean data); ``None`` makes the path ``abar[timesteps]`` itself, whose last
    visited level is the output level (e.g. the paper's ``q_1``).
    """
    abar = torch.as_tensor(alpha_bars_train, dtype=torch.float64)
    ts = check_timesteps(timesteps, abar.numel())
    path = abar[ts]
    if final_alpha_bar is not None:
        path = torch.cat([path, torch.tensor([float(final_alpha_bar)], dtype=torch.float64)])
    return validate_path(path)


@dataclass(frozen=True)
class DiscreteSchedule:
    r"""A discrete training schedule ``beta_1..beta_N`` with the paper's derived quantities (dpm-solver style).

    Attributes are float64 tensors indexed from 0 (``[i]`` is the paper's ``t = i + 1``).  ``betas`` may be given as
    any 1-D sequence of numbers in (0, 1) (a list is converted to a float64 tensor).
    """

    betas: torch.Tensor

    def __post_init__(self) -> None:
        betas = self.betas
        if not (isinstance(betas, torch.Tensor) and betas.is_floating_point()):
            try:
                betas = torch.as_tensor(np.asarray(betas, dtype=np.float64))
            except (TypeError, ValueError) as err:
                raise TypeError(f"betas must be a 1-D sequence of numbers, got {type(self.betas).__name__}") from err
        alpha_bars_from_betas(betas)  # checks: 1-D, every beta in (0, 1)
        object.__setattr__(self, "betas", betas)

    @classmethod
    def from_diffusers(
        cls, schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> "DiscreteSchedule":
        return cls(betas_for(schedule, num_train_timesteps, beta_start, beta_end))

    @classmethod
    def paper(cls, T: int, c0: float = 2.0, c1: float = 4.0) -> "DiscreteSchedule":
        return cls(paper_betas(T, c0, c1))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.numel())

    @property
    def alphas(self) -> torch.Tensor:
        """``alpha_t = 1 - beta_t``."""
        return 1.0 - self.betas.double()

    @property
    def alpha_bars(self) -> torch.Tensor:
        """``alpha_bar_t = prod_{k<=t} alpha_k``."""
        return alpha_bars_from_betas(self.betas.double())

    @property
    def lambda_(self) -> torch.Tensor:
        """Half log-SNR ``lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t))`` (DPM-Solver's lambda)."""
        a = self.alpha_bars
        return 0.5 * (torch.log(a) - torch.log1p(-a))

    def path(self, timesteps: torch.Tensor | None = None, final_alpha_bar: float | None = 1.0) -> torch.Tensor:
        """Sampling path through ``timesteps`` (default: every step, ``N-1 .. 0``) ending at ``final_alpha_bar``;
        ``timesteps`` must be integers in ``[0, N)`` (see :func:`check_timesteps`)."""
        if timesteps is None:
            timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1)
        return sampling_path(self.alpha_bars, timesteps, final_alpha_bar)

    def subsample(self, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> torch.Tensor:
        """Timesteps of a ``spacing`` subsequence with ``num_steps`` entries (see :func:`timestep_subsequence`)."""
        return timestep_subsequence(
            self.num_train_timesteps, num_steps, spacing, steps_offset, self.alpha_bars if spacing == "logsnr" else None
        )
