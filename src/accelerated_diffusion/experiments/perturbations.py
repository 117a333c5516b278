r"""Controlled perturbations of the exact noise prediction: how each sampler amplifies score errors of a given
size and structure (chapter *When does the acceleration help?*).

The bound stated for the accelerated deterministic sampler (as summarised, not quoted from the paper) carries two
terms for the score estimate: ``sqrt(d log^3 T) eps_score`` with ``eps_score^2 = (1/T) sum_t E||s_t - s_t*||^2``
(the *size* of the error) and ``d log T eps_Jacobi`` with ``eps_Jacobi = (1/T) sum_t E||J_{s_t} - J_{s_t*}||``
(the error of its *Jacobian*, i.e. how rough it is).  A learned network has both at once.  Here the exact noise
prediction ``eps*`` of a Gaussian mixture (:mod:`accelerated_diffusion.targets`) is perturbed,

.. math:: \hat\varepsilon(x, \bar\alpha) = \varepsilon^*(x, \bar\alpha) + e(x, \bar\alpha),

by fields ``e`` of *set* size and structure, so that the two terms are separated: fields of **equal L2 size but
different smoothness** have equal ``eps_score`` and Jacobian errors a factor ``kappa_white / kappa_smooth`` apart.

**Size.**  Every perturbation has a size ``delta``: the root-mean-square per coordinate of ``e`` under the exact
marginal at that level, ``sqrt(E_{x ~ q_abar} |e(x, abar)|^2 / d) = delta`` at every level where it acts
(computed in closed form, not by Monte Carlo: :meth:`RandomField.moments`).  Since ``s = -eps / sqrt(1 - abar)``,
the score error at that level has size ``delta / sqrt(1 - abar)`` per coordinate.  Its Jacobian size is reported
as ``sqrt(E ||J_e||_F^2 / d)`` (root-mean-square over the ``d`` rows of the Jacobian of the row norms; exact too),
see :meth:`Perturbation.sizes`.

**Kinds** (:data:`KINDS`), all deterministic given ``seed``:

* ``"white"`` -- a fixed random field varying rapidly in ``x``: random Fourier features (:class:`RandomField`)
  ``e_j(x) = s_abar sum_m A_jm cos(omega_m . x + b_m)``, ``m = 1..M``, with ``A_jm ~ N(0, 1)``,
  ``b_m ~ U[0, 2 pi)`` and ``omega_m = kappa g_m / sqrt(d)``, ``g_m ~ N(0, I_d)`` (so ``E |omega_m|^2 =
  kappa^2`` in every dimension: the field varies over distances ``~ 1 / kappa`` of the state), ``kappa =``
  :data:`FREQUENCIES` ``["white"]`` (30); ``s_abar`` normalises the size to ``delta``.  Jacobian size ``~ kappa
  delta``: a large Jacobian error for its size.
* ``"smooth"`` -- the same field (same ``A``, ``b``, ``g``) with ``kappa =`` :data:`FREQUENCIES` ``["smooth"]``
  (0.3): nearly affine over the data, Jacobian size ``~ 0.3 delta``; equal L2 size, a hundred times smaller
  Jacobian error.
* ``"proportional"`` -- ``e(x) = delta x / r_abar`` with ``r_abar^2 = E_{q_abar} |x|^2 / d``: an error
  proportional to the state, Jacobian ``(delta / r_abar) I`` (size ``delta / r_abar``, about ``delta`` at noisy
  levels); keeps a Gaussian target Gaussian (closed-form checks).
* ``"step_first"``, ``"step_second"``, ``"step_middle"`` -- the smooth field at one evaluation only: the first,
  the second, or evaluation ``nfe // 2`` of the sampling path (identified by its level); zero elsewhere.  Over a
  path of ``N`` evaluations its ``eps_score``-like average is ``delta / sqrt(N)``.

The fields are the *same function of x* at every level (a network's errors are correlated across nearby
timesteps), rescaled per level.

**What is measured** (:func:`measure_1d`, :func:`measure_samples`, :func:`run_perturbations`), for the
deterministic samplers given by name, on the grids of the learned-score comparison
(:data:`.comparison.GRIDS`: the ``timesteps`` of the 1000-step linear training schedule of the shipped model,
:func:`linear_schedule`, path ending at clean data, ``alpha_bar = 1``), started from the exact marginal at the
grid's first level:

* 1-D mixture, exactly (:mod:`.exact_1d`): ``tv`` = ``TV(q_out, p_out^delta)``, its signed change
  ``tv_change = TV(q_out, p^delta) - TV(q_out, p^0)``, and the **error increase** ``shift = TV(p^delta, p^0)``,
  the total variation between the perturbed and the unperturbed output laws (:func:`pushforward_tv`).
* 2-D mixture and the Fashion-MNIST mixture (784-D), by Monte Carlo from the same seeded start points for every
  sampler, kind and size: the **error increase** ``shift`` = root-mean-square distance between the perturbed and
  the unperturbed outputs of the same sampler on the same grid from the same start point
  (:func:`.rates.rms_with_ci`), and (2-D) ``error`` = root-mean-square distance to the exact-score solution of the
  probability-flow ODE from the same start (:func:`.rates.flow_reference`) with and without perturbation.

**Why the error increase is a distance between perturbed and unperturbed outputs**, not the error with the
perturbation minus the error without: the signed difference mixes the sampler's response to the perturbation
with its discretisation error, and its sign is not controlled (a perturbation can move the output *towards* the
target where the discretisation error is large, at 5 NFE), so it has no power law in ``delta``.  The distance
between the two outputs is the response itself, positive, linear in ``delta`` for small ``delta`` (when the maps
are smooth), and by the triangle inequality it bounds the change of the error: ``|TV(q, p^delta) - TV(q, p^0)| <=
TV(p^delta, p^0)`` (likewise for the RMS distances).  Where the discretisation error is small (50 NFE) the two
agree.  In 2-D and 784-D the reference of the shift is therefore the unperturbed run of the *same* sampler and
grid (the exact-score solution of that sampler), not the probability-flow solution: the latter would add the
sampler's discretisation error, which is what the comparison chapter measures, to every point.

**Fits and amplification.**  ``exponent`` = slope of ``log shift`` on ``log delta`` (:func:`.rates.fit_slope`;
1 = linear response), with a 95 % interval: from the residuals for the exact 1-D values, from a bootstrap over
the start points (rows resampled together for all sizes) in 2-D and 784-D.  ``amplification`` = each sampler's
shift divided by DDIM's at the same kind, grid, NFE and ``delta`` (paired bootstrap interval over the same rows
in 2-D and 784-D; exact in 1-D).
"""

from __future__ import annotations

import math
import os
import resource
import time
from functools import lru_cache

import numpy as np
import torch
from tqdm import tqdm

from .. import samplers
from ..schedules import DiscreteSchedule
from ..targets import GaussianMixture
from . import exact_1d
from .comparison import GRIDS
from .rates import LINEAR_SCHEDULE, flow_reference, rms_with_ci, two_d_mixture
from .tables import interval, num

__all__ = [
    "KINDS",
    "FIELD_KINDS",
    "STEP_KINDS",
    "FREQUENCIES",
    "DEFAULT_SAMPLERS",
    "NFES",
    "DELTAS",
    "DEFAULTS",
    "linear_schedule",
    "grid_path",
    "RandomField",
    "Perturbation",
    "make_perturbation",
    "pushforward_tv",
    "measure_1d",
    "measure_samples",
    "bootstrap_exponent",
    "run_perturbations",
    "exponent_rows",
    "amplification_rows",
    "size_rows",
    "format_exponents",
    "format_amplification",
    "amplified",
    "plot_response",
    "plot_amplification",
]

#: The perturbation kinds (see the module docstring).
FIELD_KINDS = ("white", "smooth", "proportional")
STEP_KINDS = ("step_first", "step_second", "step_middle")
KINDS = FIELD_KINDS + STEP_KINDS
#: ``kappa`` of the random-Fourier-feature fields: ``E |omega|^2 = kappa^2``; Jacobian size ~ ``kappa * delta``.
FREQUENCIES = {"white": 30.0, "smooth": 0.3}
#: DDIM, the paper's DDIM-type baseline, the accelerated ODE sampler, DPM-Solver++(2M) and UniPC (registry names).
DEFAULT_SAMPLERS = ("ddim", "ddim_type", "accelerated_ode", "dpm_solver_pp_2m", "unipc_bh2")
NFES = (5, 10, 50)
DELTAS = (0.003, 0.01, 0.03)


def linear_schedule() -> DiscreteSchedule:
    """The training schedule of the shipped Fashion-MNIST model and of the comparison (diffusers' linear betas
    ``1e-4 .. 0.02``, 1000 steps: :data:`.rates.LINEAR_SCHEDULE`, what ``models.schedule_from_config`` builds from
    the model's scheduler config)."""
    return DiscreteSchedule.from_diffusers(**LINEAR_SCHEDULE)


def grid_path(schedule: DiscreteSchedule, grid: str, nfe: int) -> torch.Tensor:
    """The sampling path (float64 levels, ending at ``alpha_bar = 1``) of ``grid`` at ``nfe`` evaluations, as the
    comparison runs it (``schedule.path(grid_timesteps(...), 1.0)``); ``ValueError`` when the grid does not have
    ``nfe`` distinct timesteps (``quadratic`` at 50)."""
    return schedule.path(samplers.grid_timesteps(schedule, int(nfe), grid), 1.0)


# --------------------------------------------------------------------------------------------------------------
# The perturbations
# --------------------------------------------------------------------------------------------------------------
def _level_covariance_times(target: GaussianMixture, a: float, omega: torch.Tensor) -> torch.Tensor:
    """``C_k omega`` for every component, ``C_k = a Sigma_k + (1 - a) I`` (shape ``(K, d, M)``)."""
    if target.covs is not None:
        return target.covariance(a) @ omega
    U = target.factors  # (K, d, r)
    return a * (U @ (U.mT @ omega) + target.diag[:, :, None] * omega) + (1 - a) * omega


def _second_moment(target: GaussianMixture, a: float) -> float:
    """``E_{q_a} |x|^2 / d`` (exact)."""
    if target.covs is not None:
        tr = torch.diagonal(target.covariance(a), dim1=-2, dim2=-1).sum(-1)
    else:
        tr = a * (target.diag.sum(-1) + target.factors.square().sum((-2, -1))) + (1 - a) * target.dim
    return float((target.weights * (a * target.means.square().sum(-1) + tr)).sum()) / target.dim


class RandomField:
    r"""A fixed random vector field on ``R^d`` by random Fourier features, ``f(x) = A cos(Omega^T x + b)``:
    ``A`` ``(d, M)`` standard normal, ``Omega = kappa G / sqrt(d)`` with ``G`` ``(d, M)`` standard normal, ``b``
    uniform in ``[0, 2 pi)``; ``G``, ``A``, ``b`` drawn from ``torch.Generator().manual_seed(seed)`` (so two fields
    with the same seed and different ``kappa`` share them).  Unnormalised: :class:`Perturbation` rescales it per
    level with :meth:`moments`."""

    def __init__(self, dim: int, kappa: float, *, num_features: int = 64, seed: int = 0):
        if int(dim) < 1 or int(num_features) < 1:
            raise ValueError(f"need dim >= 1 and num_features >= 1, got {dim}, {num_features}")
        if not (math.isfinite(kappa) and kappa > 0):
            raise ValueError(f"kappa must be a positive number, got {kappa!r}")
        g = torch.Generator().manual_seed(int(seed))
        d, M = int(dim), int(num_features)
        G = torch.randn(d, M, generator=g, dtype=torch.float64)
        self.A = torch.randn(d, M, generator=g, dtype=torch.float64)
        self.b = 2 * math.pi * torch.rand(M, generator=g, dtype=torch.float64)
        self.kappa, self.dim, self.num_features = float(kappa), d, M
        self.omega = self.kappa * G / math.sqrt(d)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` for flat ``x`` of shape ``(n, d)``."""
        return torch.cos(torch.addmm(self.b, x, self.omega)) @ self.A.T

    def jvp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The directional derivative ``J_f(x) v`` (flat ``(n, d)``)."""
        return (-torch.sin(torch.addmm(self.b, x, self.omega)) * (v @ self.omega)) @ self.A.T

    def value_and_jvp(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x), J_f(x) v)`` with one evaluation of the phases."""
        u = torch.addmm(self.b, x, self.omega)
        return torch.cos(u) @ self.A.T, (-torch.sin(u) * (v @ self.omega)) @ self.A.T

    def moments(self, target: GaussianMixture, a: float) -> tuple[float, float]:
        r"""``(E |f(x)|^2 / d, E ||J_f(x)||_F^2 / d)`` under ``x ~ q_a``, exactly: with ``u_m = omega_m . x + b_m``
        and, per component, ``u ~ N(P_m, G_mm)`` jointly Gaussian (``P = Omega^T sqrt(a) m_k + b``,
        ``G = Omega^T C_k Omega``), ``E cos u_m cos u_n = (1/2) [e^{-V^-/2} cos(P_m - P_n) + e^{-V^+/2} cos(P_m +
        P_n)]`` and ``E sin u_m sin u_n`` the same with a minus between, ``V^{-+} = G_mm + G_nn -+ 2 G_mn``;
        ``|f|^2 = sum_mn (A^T A)_mn cos u_m cos u_n`` and ``||J_f||_F^2 = sum_mn (A^T A)_mn (Omega^T Omega)_mn
        sin u_m sin u_n``."""
        om = self.omega.to(target.dtype)
        P = math.sqrt(a) * target.means @ om + self.b  # (K, M)
        G = om.T @ _level_covariance_times(target, a, om)  # (K, M, M)
        g = torch.diagonal(G, dim1=-2, dim2=-1)  # (K, M)
        base = g[:, :, None] + g[:, None, :]
        em = torch.exp(-0.5 * (base - 2 * G)) * torch.cos(P[:, :, None] - P[:, None, :])
        ep = torch.exp(-0.5 * (base + 2 * G)) * torch.cos(P[:, :, None] + P[:, None, :])
        w = target.weights[:, None, None]
        cc = 0.5 * (w * (em + ep)).sum(0)
        ss = 0.5 * (w * (em - ep)).sum(0)
        AtA = self.A.T @ self.A
        return float((AtA * cc).sum()) / self.dim, float((AtA * (om.T @ om) * ss).sum()) / self.dim


@lru_cache(maxsize=32)
def _field(dim: int, kappa: float, num_features: int, seed: int) -> RandomField:
    """One :class:`RandomField` per ``(dim, kappa, num_features, seed)`` (they are deterministic)."""
    return RandomField(dim, kappa, num_features=num_features, seed=seed)


_MOMENTS: dict = {}  # (id(target), id(field), level) -> (target, E|f|^2/d, E||J||^2/d)


class Perturbation:
    r"""``e(x, abar)`` of kind ``kind`` (:data:`KINDS`) and size ``delta`` for ``target`` along ``path`` (the
    levels of the sampling path: the single-step kinds act at one of its evaluations, identified by its level).

    * ``perturbation(x, a)`` -- ``e(x, a)`` in ``x``'s shape (zero for ``delta = 0`` and at levels where a
      single-step kind does not act);
    * :meth:`eps` -- ``eps*(x, a) + e(x, a)``, an ``eps_fn`` for :func:`accelerated_diffusion.sample` with the
      levels as ``t``; with ``delta = 0`` it *is* ``target.eps`` (bit for bit);
    * :meth:`jvp` -- ``J_e(x, a) v``; :meth:`eps_and_derivative` -- the pair :func:`.exact_1d.flow_map` takes
      (one-dimensional targets);
    * :meth:`sizes` -- the L2 size (``delta`` where it acts) and the Jacobian size at a level (both exact).
    """

    def __init__(
        self,
        kind: str,
        target: GaussianMixture,
        delta: float,
        path=None,
        *,
        seed: int = 0,
        frequencies: dict | None = None,
        num_features: int = 64,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown perturbation kind {kind!r}; expected one of {KINDS}")
        if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
            raise ValueError(f"delta must be a finite number >= 0, got {delta!r}")
        self.kind, self.target, self.delta = kind, target, float(delta)
        freq = {**FREQUENCIES, **(frequencies or {})}
        self.step_level = None
        if kind in STEP_KINDS:
            if path is None:
                raise ValueError(f"{kind} needs the sampling path (its evaluation is identified by its level)")
            levels = [float(a) for a in torch.as_tensor(path, dtype=torch.float64)]
            n = len(levels) - 1  # evaluations
            index = {"step_first": 0, "step_second": 1, "step_middle": n // 2}[kind]
            if index >= n:
                raise ValueError(f"{kind} needs at least {index + 1} evaluations, the path has {n}")
            self.step_index, self.step_level = index, levels[index]
        field_kind = "smooth" if kind in STEP_KINDS else kind
        self.field = None if kind == "proportional" else _field(target.dim, freq[field_kind], num_features, seed)
        self._scale: dict = {}

    def active(self, a: float) -> bool:
        """Whether the perturbation acts at level ``a`` (always, except for the single-step kinds)."""
        return self.step_level is None or math.isclose(float(a), self.step_level, rel_tol=1e-12, abs_tol=0.0)

    def _norms(self, a: float) -> tuple[float, float]:
        """``(s_a, jacobian size per unit delta)``: the factor that makes the RMS size ``delta`` at level ``a``."""
        a = float(a)
        if a not in self._scale:
            if self.field is None:
                r = math.sqrt(_second_moment(self.target, a))
                self._scale[a] = (1.0 / r, 1.0 / r)
            else:
                key = (id(self.target), id(self.field), a)
                hit = _MOMENTS.get(key)
                if hit is None or hit[0] is not self.target:
                    if len(_MOMENTS) > 4096:
                        _MOMENTS.clear()
                    hit = _MOMENTS[key] = (self.target, *self.field.moments(self.target, a))
                f2, j2 = hit[1:]
                self._scale[a] = (1.0 / math.sqrt(f2), math.sqrt(j2 / f2))
        return self._scale[a]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def __call__(self, x: torch.Tensor, a) -> torch.Tensor:
        if self.delta == 0.0 or not self.active(a):
            return torch.zeros_like(x)
        s = self.delta * self._norms(a)[0]
        xf = self._flat(x)
        e = s * xf if self.field is None else s * self.field(xf)
        return e.reshape(x.shape).to(x.dtype)

    def jvp(self, x: torch.Tensor, a, v: torch.Tensor) -> torch.Tensor:
        """``J_e(x, a) v`` in ``x``'s shape."""
        if self.delta == 0.0 or not self.active(a):
            return torch.zeros_like(x)
        s = self.delta * self._norms(a)[0]
        vf = self._flat(v)
        out = s * vf if self.field is None else s * self.field.jvp(self._flat(x), vf)
        return out.reshape(x.shape).to(x.dtype)

    def eps(self, x: torch.Tensor, a) -> torch.Tensor:
        """``eps*(x, a) + e(x, a)``; exactly ``target.eps(x, a)`` when ``delta = 0`` or the kind does not act."""
        out = self.target.eps(x, a)
        if self.delta == 0.0 or not self.active(a):
            return out
        return out + self(x, a).to(out.dtype)

    def eps_and_derivative(self, y: torch.Tensor, a) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps*(y) + e(y), eps*'(y) + e'(y))`` for a one-dimensional target, ``y`` of shape ``(n, 1)``: the
        ``eps_and_derivative`` of :func:`.exact_1d.flow_map` / :func:`.exact_1d.deterministic_tv`."""
        if self.target.dim != 1:
            raise ValueError(f"eps_and_derivative is for one-dimensional targets, got d = {self.target.dim}")
        a = float(a)
        e, de = self.target.eps(y, a), exact_1d.eps_derivative(self.target, y, a)
        if self.delta == 0.0 or not self.active(a):
            return e, de
        s = self.delta * self._norms(a)[0]
        y = y.to(torch.float64)
        if self.field is None:
            return e + s * y, de + s
        f, df = self.field.value_and_jvp(y, torch.ones_like(y))
        return e + s * f, de + s * df

    def sizes(self, a) -> dict:
        """``{"l2": sqrt(E_{q_a} |e|^2 / d), "jacobian": sqrt(E_{q_a} ||J_e||_F^2 / d)}`` at level ``a`` (exact;
        ``l2 = delta`` where the perturbation acts, both 0 elsewhere)."""
        if self.delta == 0.0 or not self.active(a):
            return {"l2": 0.0, "jacobian": 0.0}
        return {"l2": self.delta, "jacobian": self.delta * self._norms(a)[1]}


def make_perturbation(kind: str, target: GaussianMixture, delta: float, path=None, **kw) -> Perturbation:
    """:class:`Perturbation` (keywords ``seed``, ``frequencies``, ``num_features``)."""
    return Perturbation(kind, target, delta, path, **kw)


def _path_sizes(kind, target, path, **kw) -> dict:
    """Per unit ``delta``, over the evaluations of ``path``: ``eps_score = sqrt(mean_i l2_i^2)`` and
    ``eps_jacobi = mean_i jacobian_i`` (the step averages of the bound's two terms, in eps units)."""
    p = Perturbation(kind, target, 1.0, path, **kw)
    levels = [float(a) for a in torch.as_tensor(path, dtype=torch.float64)][:-1]
    s = [p.sizes(a) for a in levels]
    return {
        "eps_score": math.sqrt(sum(v["l2"] ** 2 for v in s) / len(s)),
        "eps_jacobi": sum(v["jacobian"] for v in s) / len(s),
    }


# --------------------------------------------------------------------------------------------------------------
# One dimension: exact total variation
# --------------------------------------------------------------------------------------------------------------
def _hermite_refine(x, phi, dphi, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x', Phi(x'))`` on a grid ``factor`` times finer, ``Phi`` by cubic Hermite interpolation from the exact
    values and derivatives at the nodes (fourth order; no further run of the sampler)."""
    h = np.diff(x)
    t = (np.arange(factor) / factor)[None, :]
    h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
    y = h00 * phi[:-1, None] + h10 * (h * dphi[:-1])[:, None] + h01 * phi[1:, None] + h11 * (h * dphi[1:])[:, None]
    xf = x[:-1, None] + h[:, None] * t
    return np.append(xf.reshape(-1), x[-1]), np.append(y.reshape(-1), phi[-1])


def _cell_cdf(phi, F, ys) -> np.ndarray:
    r"""``P(y) = sum_i m_i clip((y - l_i) / (u_i - l_i), 0, 1)`` at ``ys``: every cell ``[x_i, x_{i+1}]`` of
    start mass ``m_i = F(x_{i+1}) - F(x_i)`` spread uniformly over its image ``[l_i, u_i]`` (folded maps
    included: cells overlap), plus the mass left of the grid.  For an increasing map this is linear
    interpolation of ``F`` against ``phi``; otherwise it is vectorised with sorted cumulative sums (round-off
    ``~1e-16`` times the largest cumulative density, summed over the partition: a floor ``~1e-7`` on TV)."""
    if bool((np.diff(phi) > 0).all()):
        return np.interp(ys, phi, F)
    m = np.diff(F)
    lo, hi = np.minimum(phi[:-1], phi[1:]), np.maximum(phi[:-1], phi[1:])
    width = hi - lo
    slope = np.where(width > 0, m / np.where(width > 0, width, 1.0), 0.0)
    ol, ou = np.argsort(lo), np.argsort(hi)
    lo_s, hi_s = lo[ol], hi[ou]
    cs_l, csl_l = np.concatenate([[0], np.cumsum(slope[ol])]), np.concatenate([[0], np.cumsum((slope * lo)[ol])])
    cs_u, csl_u = np.concatenate([[0], np.cumsum(slope[ou])]), np.concatenate([[0], np.cumsum((slope * lo)[ou])])
    cm_u = np.concatenate([[0], np.cumsum(m[ou])])
    il = np.searchsorted(lo_s, ys, "left")  # cells with l_i < y
    iu = np.searchsorted(hi_s, ys, "right")  # cells with u_i <= y (finished)
    active = (cs_l[il] - cs_u[iu]) * ys - (csl_l[il] - csl_u[iu])
    return F[0] + cm_u[iu] + active


#: Hermite refinement factor of the start grid in the partition method (:func:`_hermite_refine`).
REFINE = 32


def _tv_against_target(target, x, phi, dphi, a0, a1, fold_points: int) -> float:
    """``TV(q_out, p)`` for a map given at the nodes ``x`` by the partition method of :func:`pushforward_tv`
    (used where :func:`.exact_1d.deterministic_tv` cannot resolve a fold between its nodes)."""
    xf, yf = _hermite_refine(x, phi, dphi, REFINE)
    ys = np.unique(np.concatenate([yf, np.linspace(yf.min(), yf.max(), int(fold_points))]))
    E = np.concatenate([[0.0], _cell_cdf(yf, exact_1d.cdf(target, xf, a0), ys) - exact_1d.cdf(target, ys, a1), [0.0]])
    return float(0.5 * np.abs(np.diff(E)).sum())


def pushforward_tv(
    target: GaussianMixture,
    path,
    method: str,
    eps_a=None,
    eps_b=None,
    *,
    num_points: int = 4001,
    width: float = 12.0,
    fold_points: int = 40001,
) -> dict:
    r"""``TV(Phi_a # q_start, Phi_b # q_start)``: the total variation between the output laws of one deterministic
    sampler run with two noise predictions (``eps_a``, ``eps_b``: ``eps_and_derivative`` callables of
    :func:`.exact_1d.flow_map`, ``None`` = the exact one), both started from the exact ``q`` at ``path[0]``.

    Both maps are computed with their derivatives (:func:`.exact_1d.flow_map`) on ``num_points`` start points
    covering ``width`` standard deviations of every component, refined :data:`REFINE` times by cubic Hermite
    interpolation (exact values and derivatives at the nodes); each refined cell's start mass (exact CDF) is
    spread uniformly over its image (:func:`_cell_cdf`, folded maps included), and ``TV = 1/2 sum |Delta (P_a -
    P_b)|`` over the partition made of both image sets and ``fold_points`` uniform points is the exact TV of the
    two piecewise-uniform laws, within ``O(h)`` of the true one with ``h`` the refined cells' image length (and
    far closer for two nearby maps, whose cells move together: checked against the Gaussian closed form in the
    tests).
    Returns ``tv`` and ``folded_a``, ``folded_b`` (whether each map folds on the start points carrying mass)."""
    path = torch.as_tensor(path, dtype=torch.float64)
    a0 = float(path[0])
    x = _start_points(target, a0, num_points, width)
    x, fa, fb = _resolved_pair(target, path, method, x, eps_a, eps_b)
    q0 = exact_1d.density(target, x, a0)
    mass = q0 > 1e-300
    return {
        "tv": _shift_tv(target, a0, x, fa, fb, fold_points),
        "folded_a": bool((fa["dphi"][mass] <= 0).any()),
        "folded_b": bool((fb["dphi"][mass] <= 0).any()),
    }


def _start_points(target, a0: float, num_points: int, width: float = 12.0) -> np.ndarray:
    _, mu, sd = exact_1d.level_components(target, a0)
    return np.linspace((mu - width * sd).min(), (mu + width * sd).max(), int(num_points))


def _resolved_pair(target, path, method, x, eps_a, eps_b, fb=None, *, dy_frac=0.25, rounds=3, max_split=64):
    """Both maps on common start nodes, refined where either image cell is longer than ``dy_frac`` times the
    narrowest output standard deviation (where the flow stretches, as :func:`.exact_1d.deterministic_tv` does):
    ``(x, fa, fb)`` with ``f = {"phi", "dphi"}``; ``fb`` may be given for ``x`` (the cached unperturbed map)."""
    a1 = float(torch.as_tensor(path, dtype=torch.float64)[-1])
    dy_max = dy_frac * float(exact_1d.level_components(target, a1)[2].min())

    def run(pts, fn):
        f = exact_1d.flow_map(target, path, method, pts, eps_and_derivative=fn)
        return f["phi"], f["dphi"]

    pa = run(x, eps_a)
    pb = run(x, eps_b) if fb is None else (fb["phi"], fb["dphi"])
    for _ in range(rounds):
        dy = np.maximum(np.abs(np.diff(pa[0])), np.abs(np.diff(pb[0])))
        bad = np.nonzero(dy > dy_max)[0]
        if bad.size == 0:
            break
        k = np.minimum(np.ceil(dy[bad] / dy_max).astype(int), max_split)
        new = np.concatenate([x[i] + (x[i + 1] - x[i]) * np.arange(1, j) / j for i, j in zip(bad, k)])
        na, nb = run(new, eps_a), run(new, eps_b)
        order = np.argsort(np.concatenate([x, new]), kind="stable")
        x = np.concatenate([x, new])[order]
        pa = tuple(np.concatenate([u, v])[order] for u, v in zip(pa, na))
        pb = tuple(np.concatenate([u, v])[order] for u, v in zip(pb, nb))
    return x, {"phi": pa[0], "dphi": pa[1]}, {"phi": pb[0], "dphi": pb[1]}


def _hermite_cdf(phi, F, slope, ys) -> np.ndarray:
    """The output CDF of an increasing map at ``ys``: cubic Hermite interpolation of ``F`` against ``phi`` with the
    exact slopes ``dF/dy = q_start / Phi'`` (a continuous density; ``F[0]`` / ``F[-1]`` outside the image)."""
    i = np.clip(np.searchsorted(phi, ys, "right") - 1, 0, phi.size - 2)
    h = phi[i + 1] - phi[i]
    t = np.clip((ys - phi[i]) / h, 0.0, 1.0)
    h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
    return h00 * F[i] + h10 * h * slope[i] + h01 * F[i + 1] + h11 * h * slope[i + 1]


def _monotone_pair_tv(x, F, q0, fa: dict, fb: dict, fold_points: int) -> float:
    """``TV`` of two increasing maps' output laws from their Hermite CDFs (:func:`_hermite_cdf`) over the partition
    of both node images and ``fold_points`` uniform points: consistent for nearby maps (continuous densities)."""
    ya, yb = fa["phi"], fb["phi"]
    lo, hi = min(ya.min(), yb.min()), max(ya.max(), yb.max())
    ys = np.unique(np.concatenate([ya, yb, np.linspace(lo, hi, int(fold_points))]))
    D = _hermite_cdf(ya, F, q0 / fa["dphi"], ys) - _hermite_cdf(yb, F, q0 / fb["dphi"], ys)
    return float(0.5 * np.abs(np.diff(np.concatenate([[0.0], D, [0.0]]))).sum())


def _increasing(f: dict) -> bool:
    return bool((f["dphi"] > 0).all()) and bool((np.diff(f["phi"]) > 0).all())


def _target_tv(target, a0: float, a1: float, x, f: dict, fold_points: int) -> float:
    """``TV(q_out, p)`` of an increasing map from its Hermite CDF against the exact CDF of ``q`` at ``a1``, over
    the partition of the node images and ``fold_points`` uniform points."""
    y = f["phi"]
    ys = np.unique(np.concatenate([y, np.linspace(y.min(), y.max(), int(fold_points))]))
    q0 = exact_1d.density(target, x, a0)
    D = _hermite_cdf(y, exact_1d.cdf(target, x, a0), q0 / f["dphi"], ys) - exact_1d.cdf(target, ys, a1)
    return float(0.5 * np.abs(np.diff(np.concatenate([[0.0], D, [0.0]]))).sum())


def _shift_tv(target, a0, x, fa: dict, fb: dict, fold_points: int) -> float:
    """TV between the output laws of two maps on common nodes: :func:`_monotone_pair_tv` when both increase on
    the start points carrying mass, else the cell method of :func:`_pair_tv` on a :data:`REFINE` times finer
    Hermite-refined grid (folded maps; an error of first order in the ratio of cell image length to
    displacement, small where folds dominate the response)."""
    q0 = exact_1d.density(target, x, a0)
    F = exact_1d.cdf(target, x, a0)
    if _increasing(fa) and _increasing(fb):
        return _monotone_pair_tv(x, F, q0, fa, fb, fold_points)
    ra, rb = (_hermite_refine(x, f["phi"], f["dphi"], REFINE) for f in (fa, fb))
    return _pair_tv(exact_1d.cdf(target, ra[0], a0), ra, rb, fold_points)


def _pair_tv(F, fa: tuple, fb: tuple, fold_points: int) -> float:
    """``1/2 sum |Delta (P_a - P_b)|`` over the partition made of both (refined) images and ``fold_points``
    uniform points; ``fa``, ``fb``: refined ``(x', Phi(x'))`` of :func:`_hermite_refine`, ``F`` the start CDF at
    ``x'``."""
    ya, yb = fa[1], fb[1]
    lo, hi = min(ya.min(), yb.min()), max(ya.max(), yb.max())
    ys = np.unique(np.concatenate([ya, yb, np.linspace(lo, hi, int(fold_points))]))
    D = _cell_cdf(ya, F, ys) - _cell_cdf(yb, F, ys)
    return float(0.5 * np.abs(np.diff(np.concatenate([[0.0], D, [0.0]]))).sum())


def _fine_tv(target, path, method, eps_and_derivative, num_points: int, width: float = 12.0) -> dict:
    path = torch.as_tensor(path, dtype=torch.float64)
    a0, a1 = float(path[0]), float(path[-1])
    x = _start_points(target, a0, num_points, width)
    f = exact_1d.flow_map(target, path, method, x, eps_and_derivative=eps_and_derivative)
    tv = _tv_against_target(target, x, f["phi"], f["dphi"], a0, a1, 10 * num_points)
    return {"tv": tv, "folded": True}


def measure_1d(
    target: GaussianMixture,
    path,
    method: str,
    kinds=KINDS,
    deltas=DELTAS,
    *,
    seed: int = 0,
    frequencies: dict | None = None,
    num_features: int = 64,
    num_points: int = 2001,
    fold_points: int = 40001,
) -> dict:
    """Exact 1-D measurements of ``method`` on ``path`` for every kind and size: ``{"tv0", "folded0", kind:
    {"delta", "tv", "tv_change", "shift", "folded"}}`` with ``tv`` = ``TV(q_out, p^delta)``, ``tv_change = tv -
    tv0`` and ``shift`` = ``TV(p^delta, p^0)`` (as :func:`pushforward_tv`, the unperturbed map computed once),
    the error increase.  The maps run through :func:`.exact_1d.flow_map` with the perturbed prediction; ``tv``
    of an increasing map comes from its Hermite CDF on the resolved nodes (:func:`_target_tv`, the same
    construction as ``shift``), of a folded one from :func:`.exact_1d.deterministic_tv` (branch sums)."""
    kw = dict(seed=seed, frequencies=frequencies, num_features=num_features)
    path = torch.as_tensor(path, dtype=torch.float64)
    a0, a1 = float(path[0]), float(path[-1])
    x = _start_points(target, a0, num_points)
    f0 = exact_1d.flow_map(target, path, method, x)
    if _increasing(f0):
        xr, fr, _ = _resolved_pair(target, path, method, x, None, None, f0)
        base = {"tv": _target_tv(target, a0, a1, xr, fr, fold_points), "folded": False}
    else:
        base = exact_1d.deterministic_tv(target, path, method, refine=-1)
    out = {"tv0": base["tv"], "folded0": base["folded"]}
    for kind in kinds:
        rec = {"delta": [], "tv": [], "tv_change": [], "shift": [], "folded": []}
        for delta in deltas:
            p = Perturbation(kind, target, float(delta), path, **kw)
            xs, f, fb = _resolved_pair(target, path, method, x, p.eps_and_derivative, None, f0)
            if _increasing(f):  # TV to q_out from the same map (Hermite CDF), as exact as deterministic_tv
                r = {"tv": _target_tv(target, a0, a1, xs, f, fold_points), "folded": False}
            else:
                try:
                    r = exact_1d.deterministic_tv(
                        target, path, method, refine=-1, eps_and_derivative=p.eps_and_derivative
                    )
                except ValueError:  # folds finer than its nodes: the partition method on a finer start grid
                    r = _fine_tv(target, path, method, p.eps_and_derivative, 4 * num_points)
            rec["delta"].append(float(delta))
            rec["tv"].append(r["tv"])
            rec["tv_change"].append(r["tv"] - base["tv"])
            rec["shift"].append(_shift_tv(target, a0, xs, f, fb, fold_points))
            rec["folded"].append(bool(r["folded"]))
        out[kind] = rec
    return out


# --------------------------------------------------------------------------------------------------------------
# Two and 784 dimensions: paired Monte Carlo
# --------------------------------------------------------------------------------------------------------------
def measure_samples(
    target: GaussianMixture,
    path,
    method: str,
    x0: torch.Tensor,
    kinds=KINDS,
    deltas=DELTAS,
    *,
    reference: torch.Tensor | None = None,
    seed: int = 0,
    frequencies: dict | None = None,
    num_features: int = 64,
) -> dict:
    r"""``method`` on ``path`` from the start points ``x0`` (float64, at level ``path[0]``) with the exact
    prediction and with every ``(kind, delta)``, all in one batch (block ``0`` unperturbed, then one block per
    kind and size, each a copy of ``x0``).  Returns ``{"y0": unperturbed outputs, "sq": {kind: (len(deltas), n)
    array of |y^delta_i - y^0_i|^2}, "sq_ref": ...}``; with ``reference`` (the exact-score probability-flow
    solutions from ``x0``) also the squared distances of every block to it (``sq_ref0`` for block 0,
    ``sq_ref[kind]``)."""
    kw = dict(seed=seed, frequencies=frequencies, num_features=num_features)
    n = x0.shape[0]
    blocks = [(k, float(d)) for k in kinds for d in deltas]
    perts = [Perturbation(k, target, d, path, **kw) for k, d in blocks]

    def eps_fn(x, a):
        e = target.eps(x, a)
        parts = [e[:n]]
        for j, p in enumerate(perts, start=1):
            sl = slice(j * n, (j + 1) * n)
            parts.append(e[sl] + p(x[sl], a) if p.active(a) and p.delta > 0 else e[sl])
        return torch.cat(parts)

    x = x0.to(torch.float64).repeat(len(blocks) + 1, *([1] * (x0.ndim - 1)))
    y = samplers.sample(eps_fn, x, torch.as_tensor(path, dtype=torch.float64), method).reshape(len(blocks) + 1, n, -1)
    y0 = y[0]
    sq = (y[1:] - y0).square().sum(-1).reshape(len(kinds), len(deltas), n).numpy()
    out = {"y0": y0, "sq": {k: sq[i] for i, k in enumerate(kinds)}}
    if reference is not None:
        r = (y - reference.reshape(1, n, -1).to(torch.float64)).square().sum(-1)
        out["sq_ref0"] = r[0].numpy()
        rr = r[1:].reshape(len(kinds), len(deltas), n).numpy()
        out["sq_ref"] = {k: rr[i] for i, k in enumerate(kinds)}
    return out


def bootstrap_exponent(deltas, sq: np.ndarray, idx: np.ndarray, level: float = 0.95) -> dict:
    r"""Slope of ``log RMS`` on ``log delta`` for per-sample squared distances ``sq`` (``(len(deltas), n)``),
    with a ``level`` percentile interval from resampling the rows ``idx`` (``(replicates, n)``, the same rows
    for every size)."""
    lx = np.log(np.asarray(deltas, dtype=float))
    lx = lx - lx.mean()
    rms = np.sqrt(sq.mean(1))
    val = float((lx * np.log(rms)).sum() / (lx * lx).sum())
    boot = np.log(np.sqrt(sq[:, idx].mean(-1)))  # (len(deltas), replicates)
    slopes = (lx[:, None] * boot).sum(0) / (lx * lx).sum()
    q = np.quantile(slopes, [(1 - level) / 2, (1 + level) / 2])
    return {"value": val, "ci": [float(q[0]), float(q[1])]}


def _fit_exact(deltas, values) -> dict | None:
    """:func:`.rates.fit_slope` of exact values (interval from the residuals), ``None`` with < 3 positive ones."""
    from .rates import fit_slope

    try:
        f = fit_slope(deltas, values)
    except ValueError:
        return None
    return {"value": f["slope"], "ci": [_finite(c) for c in f["ci"]]}


def _finite(v):
    return float(v) if v is not None and math.isfinite(v) else None


def _rms(sq: np.ndarray, level: float = 0.95) -> dict:
    """``rms_with_ci`` from per-sample squared distances."""
    t = torch.from_numpy(np.sqrt(np.asarray(sq, dtype=float)))[:, None]
    return rms_with_ci(t, torch.zeros_like(t), level)


# --------------------------------------------------------------------------------------------------------------
# Everything at a given size
# --------------------------------------------------------------------------------------------------------------
#: The default size of :func:`run_perturbations` (about 1.5 minutes on 2 cores): a parameter file can enlarge it.
DEFAULTS = dict(
    samplers=DEFAULT_SAMPLERS,
    kinds=KINDS,
    nfes=NFES,
    deltas=DELTAS,
    grids_1d=("uniform",),
    grids_2d=("uniform", "trailing"),
    grids_fmnist=("uniform",),
    target_1d="unequal_narrow",
    num_samples_2d=256,
    num_samples_fmnist=16,
    reference_steps_2d=400,
    num_features=64,
    frequencies=None,
    replicates=200,
    seed=0,
)


def _check_args(s: dict) -> None:
    """Every argument of :func:`run_perturbations`, before any work."""
    names = tuple(s["samplers"])
    if not names:
        raise ValueError("give at least one sampler")
    for m in names:
        sp = samplers.spec(m)  # ValueError for an unknown name
        if sp.stochastic or not sp.runs_on_any_path:
            raise ValueError(f"{m!r} is not a deterministic sampler of the library (perturbations need a flow map)")
    if "ddim" not in names:
        raise ValueError("the amplification is relative to DDIM: include 'ddim' in samplers")
    bad = [k for k in s["kinds"] if k not in KINDS]
    if bad or not s["kinds"]:
        raise ValueError(f"unknown perturbation kinds {bad}; expected some of {KINDS}")
    for key in ("nfes",):
        v = list(s[key])
        if not v or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2 for k in v):
            raise ValueError(f"{key} must be integers >= 2, got {v}")
    d = list(s["deltas"])
    if len(d) < 3 or any(not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0) for x in d):
        raise ValueError(f"deltas must be at least 3 positive numbers (to fit an exponent), got {d}")
    if len(set(d)) != len(d):
        raise ValueError(f"deltas must be distinct, got {d}")
    for key in ("grids_1d", "grids_2d", "grids_fmnist"):
        bad = [g for g in s[key] if g not in GRIDS]
        if bad:
            raise ValueError(f"{key}: unknown grids {bad}; expected some of {GRIDS}")
    if s["grids_1d"] and s["target_1d"] not in exact_1d.TARGETS:
        raise ValueError(f"target_1d must be one of {list(exact_1d.TARGETS)}, got {s['target_1d']!r}")
    for key in ("num_samples_2d", "num_samples_fmnist"):
        if int(s[key]) < 2:
            raise ValueError(f"{key} must be >= 2, got {s[key]}")
    if int(s["replicates"]) < 10 or int(s["num_features"]) < 1 or int(s["reference_steps_2d"]) < 0:
        raise ValueError("need replicates >= 10, num_features >= 1 and reference_steps_2d >= 0")
    freq = s["frequencies"] or {}
    if set(freq) - set(FREQUENCIES) or any(not (math.isfinite(v) and v > 0) for v in freq.values()):
        raise ValueError(f"frequencies: positive numbers for keys of {list(FREQUENCIES)}, got {freq}")


def _grid_jobs(schedule, grids, nfes) -> tuple[list, list]:
    jobs, skipped = [], []
    for g in grids:
        for k in nfes:
            try:
                jobs.append((g, int(k), grid_path(schedule, g, k)))
            except ValueError as err:
                skipped.append({"grid": g, "nfe": int(k), "why": str(err)})
    return jobs, skipped


def _run_1d(target, jobs, s, kw, bar) -> dict:
    res = {}
    for g, k, path in jobs:
        for m in s["samplers"]:
            r = measure_1d(target, path, m, s["kinds"], s["deltas"], **kw)
            for kind in s["kinds"]:
                r[kind]["exponent"] = _fit_exact(s["deltas"], r[kind]["shift"])
            res.setdefault(g, {}).setdefault(str(k), {})[m] = r
            bar.update(1)
    return res


def _run_samples(target, jobs, s, kw, n, reference_steps, seed, bar) -> tuple[dict, dict]:
    """Monte Carlo blocks: ``(results, squared distances by (grid, nfe, sampler, kind))``."""
    res, store = {}, {}
    idx = np.random.default_rng(seed).integers(0, n, (int(s["replicates"]), n))
    starts: dict = {}
    for g, k, path in jobs:
        a0 = float(path[0])
        if a0 not in starts:
            x0 = target.sample(n, a0, generator=torch.Generator().manual_seed(seed))
            ref = flow_reference(target, x0, a0, 1.0, reference_steps) if reference_steps else None
            starts[a0] = (x0, ref)
        x0, ref = starts[a0]
        for m in s["samplers"]:
            r = measure_samples(target, path, m, x0, s["kinds"], s["deltas"], reference=ref, **kw)
            cell = {}
            if ref is not None:
                cell["error0"] = _rms(r["sq_ref0"])
            for kind in s["kinds"]:
                sq = r["sq"][kind]
                rec = {
                    "delta": [float(d) for d in s["deltas"]],
                    "shift": [_rms(v) for v in sq],
                    "exponent": bootstrap_exponent(s["deltas"], sq, idx) if (sq > 0).all(axis=1).all() else None,
                }
                if ref is not None:
                    rec["error"] = [_rms(v) for v in r["sq_ref"][kind]]
                    e0 = math.sqrt(float(r["sq_ref0"].mean()))
                    rec["error_change"] = [e["value"] - e0 for e in rec["error"]]
                cell[kind] = rec
                store[g, k, m, kind] = sq
            res.setdefault(g, {}).setdefault(str(k), {})[m] = cell
            bar.update(1)
    return res, {"sq": store, "idx": idx}


def _amplification_exact(res: dict, s: dict) -> dict:
    out = {}
    for kind in s["kinds"]:
        for g, per_nfe in res.items():
            for k, cell in per_nfe.items():
                base = cell["ddim"][kind]["shift"]
                for m in s["samplers"]:
                    ratios = [_finite(v / b) if b > 0 else None for v, b in zip(cell[m][kind]["shift"], base)]
                    out.setdefault(kind, {}).setdefault(g, {}).setdefault(k, {})[m] = {
                        "ratio": ratios,
                        "value": ratios[0],
                        "ci": None,
                        "delta": float(s["deltas"][0]),
                    }
    return out


def _amplification_paired(store: dict, s: dict, level: float = 0.95) -> dict:
    """Ratio of RMS shifts to DDIM's at every size, with a paired percentile interval at the smallest size."""
    sq, idx = store["sq"], store["idx"]
    out = {}
    for (g, k, m, kind), v in sq.items():
        b = sq[g, k, "ddim", kind]
        rms_m, rms_b = np.sqrt(v.mean(1)), np.sqrt(b.mean(1))
        ratios = [_finite(x / y) if y > 0 else None for x, y in zip(rms_m, rms_b)]
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = np.sqrt(v[0][idx].mean(-1)) / np.sqrt(b[0][idx].mean(-1))
        boot = boot[np.isfinite(boot)]
        ci = [float(q) for q in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])] if boot.size > 10 else None
        out.setdefault(kind, {}).setdefault(g, {}).setdefault(str(k), {})[m] = {
            "ratio": ratios,
            "value": ratios[0],
            "ci": ci,
            "delta": float(s["deltas"][0]),
        }
    return out


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_perturbations(*, fashion_mnist_target: GaussianMixture | None = None, progress: bool = False, **kw) -> dict:
    r"""All measurements of this module at one size; returns a JSON-ready dict (strict JSON: no NaN).

    Keywords and defaults: :data:`DEFAULTS` -- ``samplers`` (deterministic registry names, ``"ddim"`` among them),
    ``kinds``, ``nfes``, ``deltas`` (at least 3 positive sizes), the grids of each target (``grids_1d``,
    ``grids_2d``, ``grids_fmnist``; some of :data:`.comparison.GRIDS`, empty to skip the target), ``target_1d``
    (a key of :data:`.exact_1d.TARGETS`), ``num_samples_2d``, ``num_samples_fmnist``, ``reference_steps_2d``
    (steps of the 2-D probability-flow reference; 0: none), ``num_features``, ``frequencies``, ``replicates``
    (bootstrap), ``seed``.  ``fashion_mnist_target``: the 784-D mixture (default
    :func:`.rates.fit_fashion_mnist_mixture`, fitted when ``grids_fmnist`` is not empty).  Every argument is
    checked before any work.  A grid without ``nfe`` distinct timesteps (``quadratic`` at 50) is skipped and
    listed under ``"skipped"``.

    Returns ``{"schema": "perturbations/1", "settings", "kinds": {kind: description}, "one_d": {"target",
    "results": {grid: {nfe: {sampler: {"tv0", "folded0", kind: {"delta", "tv", "tv_change", "shift", "folded",
    "exponent"}}}}}, "sizes", "amplification"}, "two_d": {"target", "results": {grid: {nfe: {sampler: {"error0",
    kind: {"delta", "shift": [{"value", "ci"}], "error", "error_change", "exponent"}}}}}, "sizes",
    "amplification"}, "fashion_mnist": {... as two_d without "error"}, "skipped", "timing"}``; ``sizes[kind][grid]
    [nfe] = {"eps_score", "eps_jacobi"}`` per unit ``delta``; ``amplification[kind][grid][nfe][sampler] =
    {"ratio": [per delta], "value", "ci", "delta"}`` (shift over DDIM's; ``value``/``ci`` at the smallest
    ``delta``).  A target whose grids are empty is ``None``."""
    unknown = set(kw) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"run_perturbations() got unexpected keyword arguments {sorted(unknown)}")
    s = {**DEFAULTS, **kw}
    _check_args(s)
    s = {
        **s,
        "samplers": list(s["samplers"]),
        "kinds": list(s["kinds"]),
        "nfes": [int(k) for k in s["nfes"]],
        "deltas": sorted(float(d) for d in s["deltas"]),
        "grids_1d": list(s["grids_1d"]),
        "grids_2d": list(s["grids_2d"]),
        "grids_fmnist": list(s["grids_fmnist"]),
    }
    t0, c0, load0 = time.perf_counter(), _cpu_seconds(), os.getloadavg()
    schedule = linear_schedule()
    pkw = dict(seed=s["seed"], frequencies=s["frequencies"], num_features=s["num_features"])
    jobs = {key: _grid_jobs(schedule, s[key], s["nfes"]) for key in ("grids_1d", "grids_2d", "grids_fmnist")}
    total = sum(len(j[0]) for j in jobs.values()) * len(s["samplers"])
    bar = tqdm(total=total, desc="perturbations", disable=not progress, leave=False)
    out = {
        "schema": "perturbations/1",
        "settings": {**s, "frequencies": {**FREQUENCIES, **(s["frequencies"] or {})}},
        "kinds": _KIND_TEXT,
        "schedule": "linear betas 1e-4 .. 0.02, 1000 training steps; grids of the comparison, path ending at "
        "alpha_bar = 1; start: exact marginal at the grid's first level",
        "skipped": [dict(j, target=key[6:]) for key in jobs for j in jobs[key][1]],
    }
    timing = {}
    # 1-D, exact
    if jobs["grids_1d"][0]:
        t, c = time.perf_counter(), _cpu_seconds()
        target = exact_1d.mixture_1d(**exact_1d.TARGETS[s["target_1d"]])
        res = _run_1d(target, jobs["grids_1d"][0], s, pkw, bar)
        out["one_d"] = {
            "target": {"name": s["target_1d"], **exact_1d.target_params(target)},
            "results": res,
            "sizes": _sizes(target, jobs["grids_1d"][0], s["kinds"], pkw),
            "amplification": _amplification_exact(res, s),
        }
        timing["one_d"] = {"wall_seconds": time.perf_counter() - t, "cpu_seconds": _cpu_seconds() - c}
    else:
        out["one_d"] = None
    # 2-D and 784-D, paired Monte Carlo
    for key, name in (("grids_2d", "two_d"), ("grids_fmnist", "fashion_mnist")):
        if not jobs[key][0]:
            out[name] = None
            continue
        t, c = time.perf_counter(), _cpu_seconds()
        if name == "two_d":
            target, n, ref_steps = two_d_mixture(), int(s["num_samples_2d"]), int(s["reference_steps_2d"])
            desc = {"name": "two_d_mixture", "num_modes": 6, "radius": 2.0, "std": 0.2, "seed": 0}
        else:
            if fashion_mnist_target is None:
                from .rates import fit_fashion_mnist_mixture

                fashion_mnist_target = fit_fashion_mnist_mixture()
            target, n, ref_steps = fashion_mnist_target, int(s["num_samples_fmnist"]), 0
            desc = {"name": "fit_fashion_mnist_mixture", "dim": target.dim, "components": target.num_components}
        res, store = _run_samples(target, jobs[key][0], s, pkw, n, ref_steps, s["seed"], bar)
        out[name] = {
            "target": desc,
            "num_samples": n,
            "reference": (
                f"flow_reference: DPM-Solver++(2M), {ref_steps} steps uniform in lambda, to alpha_bar = 1"
                if ref_steps
                else None
            ),
            "results": res,
            "sizes": _sizes(target, jobs[key][0], s["kinds"], pkw),
            "amplification": _amplification_paired(store, s),
        }
        timing[name] = {"wall_seconds": time.perf_counter() - t, "cpu_seconds": _cpu_seconds() - c}
    bar.close()
    out["timing"] = {
        "wall_seconds": time.perf_counter() - t0,
        "cpu_seconds": _cpu_seconds() - c0,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": list(load0),
        "load_average_end": list(os.getloadavg()),
        "parts": timing,
    }
    return out


def _sizes(target, jobs, kinds, kw) -> dict:
    """``{kind: {grid: {nfe: {"eps_score", "eps_jacobi"}}}}`` per unit ``delta`` (:func:`_path_sizes`)."""
    out = {}
    for kind in kinds:
        for g, k, path in jobs:
            out.setdefault(kind, {}).setdefault(g, {})[str(k)] = _path_sizes(kind, target, path, **kw)
    return out


_KIND_TEXT = {
    "white": "random Fourier features, kappa = 30 (rough): Jacobian size ~ 30 delta",
    "smooth": "the same field with kappa = 0.3 (smooth): Jacobian size ~ 0.3 delta",
    "proportional": "delta * x / rms(x): error proportional to the state",
    "step_first": "the smooth field at the first evaluation only",
    "step_second": "the smooth field at the second evaluation only",
    "step_middle": "the smooth field at evaluation nfe // 2 only",
}


# --------------------------------------------------------------------------------------------------------------
# Tables and figures
# --------------------------------------------------------------------------------------------------------------
_TARGET_NAMES = {"one_d": "1-D mixture", "two_d": "2-D mixture", "fashion_mnist": "Fashion-MNIST mixture"}


def _parts(results: dict, target: str) -> dict:
    if target not in _TARGET_NAMES:
        raise ValueError(f"target must be one of {list(_TARGET_NAMES)}, got {target!r}")
    part = results.get(target)
    if not part:
        raise ValueError(f"no results for {target!r} (its grids were empty)")
    return part


def _short(name: str) -> str:
    return samplers.spec(name).short_label


def exponent_rows(results: dict, target: str = "one_d") -> list[dict]:
    """One row per ``(grid, nfe, sampler, kind)``: ``{"grid", "nfe", "sampler", "kind", "exponent", "lo",
    "hi"}``, the fitted exponent of the error increase in ``delta`` and its 95 % interval (``pandas.DataFrame(rows)``
    makes a data frame of it)."""
    part, s = _parts(results, target), results["settings"]
    rows = []
    for g, per in part["results"].items():
        for k, cell in per.items():
            for m in s["samplers"]:
                for kind in s["kinds"]:
                    e = cell[m][kind]["exponent"] or {"value": None, "ci": [None, None]}
                    rows.append(
                        {
                            "grid": g,
                            "nfe": int(k),
                            "sampler": m,
                            "kind": kind,
                            "exponent": e["value"],
                            "lo": e["ci"][0],
                            "hi": e["ci"][1],
                        }
                    )
    return rows


def amplification_rows(results: dict, target: str = "one_d") -> list[dict]:
    """One row per ``(kind, grid, nfe, sampler)``: ``{"kind", "grid", "nfe", "sampler", "ratio", "lo", "hi",
    "delta"}``, the sampler's error increase over DDIM's at the smallest ``delta`` (paired 95 % interval for the
    Monte Carlo targets, ``None`` in 1-D where it is exact)."""
    part = _parts(results, target)
    rows = []
    for kind, per_g in part["amplification"].items():
        for g, per_k in per_g.items():
            for k, cell in per_k.items():
                for m, c in cell.items():
                    ci = c["ci"] or [None, None]
                    rows.append(
                        {
                            "kind": kind,
                            "grid": g,
                            "nfe": int(k),
                            "sampler": m,
                            "ratio": c["value"],
                            "lo": ci[0],
                            "hi": ci[1],
                            "delta": c["delta"],
                        }
                    )
    return rows


def size_rows(results: dict, target: str = "one_d") -> list[dict]:
    """One row per ``(kind, grid, nfe)``: the step averages of the L2 size (``eps_score``) and of the Jacobian
    size (``eps_jacobi``) per unit ``delta`` (exact) and their ratio: equal L2 size and different Jacobian size
    is how the bound's two terms are separated."""
    part = _parts(results, target)
    rows = []
    for kind, per_g in part["sizes"].items():
        for g, per_k in per_g.items():
            for k, v in per_k.items():
                ratio = v["eps_jacobi"] / v["eps_score"] if v["eps_score"] else None
                rows.append(
                    {
                        "kind": kind,
                        "grid": g,
                        "nfe": int(k),
                        "eps_score": v["eps_score"],
                        "eps_jacobi": v["eps_jacobi"],
                        "jacobi_over_score": ratio,
                    }
                )
    return rows


def format_exponents(results: dict, target: str = "one_d", kind: str = "smooth") -> str:
    """Text table (within the book's code column) of the exponents of one kind: rows ``grid nfe``, one column per
    sampler, ``value`` with the half-width of its interval where the target is sampled."""
    from .comparison import format_table

    s = results["settings"]
    rows = {}
    for r in exponent_rows(results, target):
        if r["kind"] != kind:
            continue
        cell = num(r["exponent"], decimals=2, missing="-")
        if target != "one_d" and r["lo"] is not None:
            cell += "+-" + num(max(r["hi"] - r["exponent"], r["exponent"] - r["lo"]), decimals=2, missing="-")
        rows.setdefault(f"{r['grid']} {r['nfe']}", {})[r["sampler"]] = cell
    return format_table(
        [_short(m) for m in s["samplers"]], [(k, [v.get(m, "-") for m in s["samplers"]]) for k, v in rows.items()]
    )


def format_amplification(results: dict, target: str = "one_d", nfe: int = 5, names=None, width: int = 76) -> str:
    """Text table of the amplification over DDIM at ``nfe``: rows ``kind grid``, one column per sampler of
    ``names`` (default all but DDIM), ``ratio [lo, hi]`` (paired interval) for the sampled targets, ``ratio`` in
    1-D; the intervals are left out when the table would be wider than ``width`` (then they are in
    :func:`amplification_rows`)."""
    from .comparison import format_table

    names = [m for m in (names or results["settings"]["samplers"]) if m != "ddim"]
    for intervals in (True, False):
        rows = {}
        for r in amplification_rows(results, target):
            if r["nfe"] != int(nfe) or r["sampler"] not in names:
                continue
            ci = [r["lo"], r["hi"]] if intervals and r["lo"] is not None else None
            cell = interval(r["ratio"], ci, digits=3 if ci is None else 2, missing="-")
            label = f"{_KIND_SHORT.get(r['kind'], r['kind'])} {r['grid']}"
            rows.setdefault(label, {})[r["sampler"]] = cell
        text = format_table([_short(m) for m in names], [(k, [v.get(m, "-") for m in names]) for k, v in rows.items()])
        if max(len(line) for line in text.splitlines()) <= width:
            break
    return text


_KIND_SHORT = {"proportional": "prop.", "step_first": "step 1", "step_second": "step 2", "step_middle": "step mid"}


def amplified(results: dict, sampler: str = "accelerated_ode", *, threshold: float = 1.0) -> list[dict]:
    """The cells where ``sampler`` amplifies a kind more than DDIM: ratio of error increases above ``threshold``
    (and, for the Monte Carlo targets, the whole paired interval above it), each ``{"target", "kind", "grid",
    "nfe", "ratio", "ci"}``; sorted by ratio, largest first.  The closing note's answer."""
    out = []
    for target in _TARGET_NAMES:
        part = results.get(target)
        if not part:
            continue
        for kind, per_g in part["amplification"].items():
            for g, per_k in per_g.items():
                for k, cell in per_k.items():
                    c = cell.get(sampler)
                    if not c or c["value"] is None:
                        continue
                    lo = c["ci"][0] if c["ci"] else c["value"]
                    if c["value"] > threshold and lo > threshold:
                        out.append(
                            {
                                "target": target,
                                "kind": kind,
                                "grid": g,
                                "nfe": int(k),
                                "ratio": c["value"],
                                "ci": c["ci"],
                            }
                        )
    return sorted(out, key=lambda r: -r["ratio"])


def _style(names) -> dict:
    return {m: dict(color=f"C{i}", marker=samplers.spec(m).marker) for i, m in enumerate(names)}


def plot_response(results: dict, target: str = "one_d", grid: str | None = None, nfe: int | None = None, kinds=None):
    """Error increase against ``delta`` (log-log), one panel per kind, one line per sampler, for ``grid`` and
    ``nfe`` (default the first of each); a dotted line of slope 1 for reference.  Returns the figure."""
    import matplotlib.pyplot as plt

    part, s = _parts(results, target), results["settings"]
    grid = grid or next(iter(part["results"]))
    nfe = str(nfe or next(iter(part["results"][grid])))
    cell = part["results"][grid][nfe]
    kinds = list(kinds or s["kinds"])
    style = _style(s["samplers"])
    cols = min(3, len(kinds))
    rows = math.ceil(len(kinds) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), squeeze=False, sharex=True)
    ylabel = "TV(perturbed, unperturbed)" if target == "one_d" else "RMS |perturbed - unperturbed|"
    for ax, kind in zip(axes.flat, kinds):
        for m in s["samplers"]:
            r = cell[m][kind]
            y = [v if target == "one_d" else v["value"] for v in r["shift"]]
            ax.loglog(r["delta"], y, label=samplers.label(m), **style[m], ms=4)
        d = np.asarray(s["deltas"])
        ref = cell["ddim"][kind]["shift"][0]
        ref = ref if target == "one_d" else ref["value"]
        ax.loglog(d, ref * d / d[0], "k:", lw=1, label="slope 1")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("perturbation size delta")
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in list(axes.flat)[len(kinds) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{_TARGET_NAMES[target]}, {grid} grid, {nfe} NFE", fontsize=10)
    fig.tight_layout()
    return fig


def plot_amplification(results: dict, target: str = "one_d", grid: str | None = None):
    """Each sampler's error increase over DDIM's at the smallest ``delta`` (log scale), per kind, one panel per
    NFE, for ``grid`` (default the first); intervals where the target is sampled.  Returns the figure."""
    import matplotlib.pyplot as plt

    part, s = _parts(results, target), results["settings"]
    amp = part["amplification"]
    grid = grid or next(iter(part["results"]))
    nfes = list(part["results"][grid])
    kinds = [k for k in s["kinds"] if k in amp]
    style = _style(s["samplers"])
    fig, axes = plt.subplots(1, len(nfes), figsize=(3.6 * len(nfes), 3.0), squeeze=False, sharey=True)
    others = [m for m in s["samplers"] if m != "ddim"]
    for ax, k in zip(axes[0], nfes):
        for j, m in enumerate(others):
            xs = np.arange(len(kinds)) + 0.15 * (j - (len(others) - 1) / 2)
            vals = [amp[kind][grid][k][m]["value"] for kind in kinds]
            cis = [amp[kind][grid][k][m]["ci"] for kind in kinds]
            v = np.array([np.nan if x is None else x for x in vals], dtype=float)
            err = None
            if all(c for c in cis):
                err = np.abs(np.array([[c[0], c[1]] for c in cis]).T - v)
            ax.errorbar(xs, v, yerr=err, ls="none", label=samplers.label(m), **style[m], ms=4)
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(kinds)), kinds, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{k} NFE", fontsize=9)
        ax.set_xlabel("perturbation kind")
    axes[0, 0].set_ylabel("error increase / DDIM's")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{_TARGET_NAMES[target]}, {grid} grid, delta = {s['deltas'][0]:g}", fontsize=10)
    fig.tight_layout()
    return fig
