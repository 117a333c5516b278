r"""Exact total variation on one-dimensional Gaussian mixtures, for all seven samplers.

With the exact noise prediction of a one-dimensional Gaussian mixture (:class:`~accelerated_diffusion.targets.
GaussianMixture`) the only error left in a sampler is its discretisation, and in one dimension the law of its
output can be computed to near machine precision, so the total variation distance

.. math:: \mathrm{TV}(q_{\rm out}, p_{\rm out}) = \tfrac12 \int |q_{\rm out}(y) - p_{\rm out}(y)|\, dy

is measured without Monte Carlo noise, for targets whose score is far from linear.

**Deterministic samplers** (:func:`deterministic_tv`).  The sampler is a map ``Phi`` from the start level to the
output level.  It is applied, through the library's own loops and update rules, to a float64 grid of start points
together with its tangent: every rule is linear in its tensor arguments, so running the loop on the stacked pair
``(x, dx)`` with the noise prediction ``(eps(x), eps'(x) dx)`` returns ``(Phi(x), Phi'(x) dx)`` exactly
(:func:`flow_map`; ``eps'`` is the closed-form derivative :func:`eps_derivative`).  When ``Phi' > 0`` everywhere,
``p_out(Phi(x)) Phi'(x) = q_start(x)`` and with ``D(x) = F_start(x) - F_out(Phi(x))`` (``F`` the exact mixture
CDFs)

.. math:: \mathrm{TV} = \tfrac12 \sum_k |D(c_{k+1}) - D(c_k)|,

where ``c_k`` are the sign changes of ``g(x) = q_out(Phi(x)) Phi'(x) - q_start(x)`` (and ``D(+-inf) = 0``): only
the crossing points enter, and an error ``delta`` in their location changes TV by ``O(delta^2)`` because
``D'(c_k) = -g(c_k) = 0``.  The crossings are bracketed on the grid and refined by regula falsi, each step one
more run of the sampler on the few crossing points.  When ``Phi'`` changes sign the discrete map *folds* (two
trajectories cross); the output law is then a sum over the monotone branches of ``Phi`` and TV is computed in
``y`` on a fine partition from the branch CDFs (:func:`_folded_tv`), and where the fold happens is reported.

**Stochastic samplers** (:func:`stochastic_tv`).  Each step is a Gaussian transition kernel
``N(y'; mu(y), sigma^2)`` (two per step for the accelerated SDE: the perturbation, then the update with the score
at the perturbed point).  ``mu``, ``mu'`` and ``sigma`` are read off the library's update rules by linearity:
``mu(y) = rule(y, eps(y), noise=0)``, ``mu'(y) = rule(1, eps'(y), noise=0)``, ``sigma = rule(0, 0, noise=1)``
(:func:`transition_kernels`).  The density is propagated on a uniform grid per level (spacing a fraction of the
narrowest component's standard deviation at that level) by the trapezoid rule in the source variable, which is
spectrally accurate when the kernel is resolved (``sigma >= 1.5 h max|mu'|``); a kernel narrower than that (the
tiny first steps of the paper's schedule) is applied as an exact pushforward (Newton inversion of ``mu``, sixth-
order interpolation) followed by a Gaussian blur in Fourier space.  TV is then computed from the cumulative
distributions at the sign changes of ``q_out - p_out`` (:func:`_grid_tv`).

Accuracy is established against the Gaussian closed forms (a one-component mixture: the output law is Gaussian,
:func:`gaussian_reference_tv`) and by grid refinement (:func:`refinement_check`).
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import resource
import time

import numpy as np
import torch
from scipy import special
from scipy.interpolate import PchipInterpolator

from .. import samplers
from ..targets import Gaussian, GaussianMixture
from . import orders
from .paths import check_params, save_results
from .rates import SAMPLERS, fit_slope, gaussian_output_law, gaussian_tv, make_path

__all__ = [
    "SAMPLERS",
    "STOCHASTIC",
    "TARGETS",
    "mixture_1d",
    "target_params",
    "level_components",
    "density",
    "cdf",
    "sf",
    "eps_derivative",
    "run",
    "flow_map",
    "deterministic_tv",
    "transition_kernels",
    "stochastic_tv",
    "exact_tv",
    "gaussian_tv_1d",
    "gaussian_reference_tv",
    "refinement_check",
    "PAPER_TS",
    "LINEAR_TS",
    "FIT_MIN_NFE",
    "rate_sweep",
    "fit_rates",
    "exact_rates",
    "gaussian_check",
    "refinement_table",
    "results_json",
    "explore",
    "run_experiment",
    "start_experiment",
    "run_jobs",
]

STOCHASTIC = tuple(m for m in SAMPLERS if samplers.spec(m).stochastic)  # ("ddpm_type", "accelerated_sde")


def _stochastic(method: str) -> bool:
    """Whether ``method`` is a stochastic sampler (the registry's word; ``ValueError`` for an unknown name)."""
    return samplers.spec(method).stochastic


#: One-dimensional test targets (``weights``, ``means``, ``variances``).
TARGETS = {
    # a single Gaussian: the closed-form check
    "gaussian": {"weights": [1.0], "means": [0.5], "variances": [0.25]},
    # two well separated, equal, narrow modes
    "separated": {"weights": [0.5, 0.5], "means": [-2.0, 2.0], "variances": [0.01, 0.01]},
    # unequal weights, one broad and one narrow component
    "unequal_narrow": {"weights": [0.8, 0.2], "means": [-1.0, 1.5], "variances": [0.09, 0.0025]},
    # the same with a very narrow component (standard deviation 0.01)
    "very_narrow": {"weights": [0.8, 0.2], "means": [-1.0, 1.5], "variances": [0.09, 0.0001]},
}


# --------------------------------------------------------------------------------------------------------------
# Targets and their closed forms
# --------------------------------------------------------------------------------------------------------------
def mixture_1d(weights, means, variances) -> GaussianMixture:
    """A one-dimensional :class:`GaussianMixture` (float64) from weights, means and variances."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    m = torch.as_tensor(means, dtype=torch.float64).reshape(-1, 1)
    v = torch.as_tensor(variances, dtype=torch.float64).reshape(-1, 1, 1)
    if w.numel() == 1:
        return Gaussian(m[0], v[0])
    return GaussianMixture(w, m, v)


def target_params(target: GaussianMixture) -> dict:
    """``{"weights", "means", "variances"}`` of a one-dimensional mixture (lists)."""
    if target.dim != 1:
        raise ValueError(f"need a one-dimensional target, got d = {target.dim}")
    return {
        "weights": target.weights.tolist(),
        "means": target.means[:, 0].tolist(),
        "variances": target.covariance(1.0)[:, 0, 0].tolist(),
    }


def level_components(target: GaussianMixture, alpha_bar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weights, means, stds)`` of the components of ``q`` at level ``alpha_bar``: ``N(sqrt(a) m_k, a v_k + 1 - a)``."""
    a = float(alpha_bar)
    w = target.weights.numpy()
    mu = math.sqrt(a) * target.means[:, 0].numpy()
    sd = np.sqrt(target.covariance(a)[:, 0, 0].numpy())
    return w, mu, sd


def density(target: GaussianMixture, y, alpha_bar: float) -> np.ndarray:
    """``q_a(y)`` (numpy, float64)."""
    w, mu, sd = level_components(target, alpha_bar)
    z = (np.asarray(y, dtype=float)[..., None] - mu) / sd
    return (w * np.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi))).sum(-1)


def cdf(target: GaussianMixture, y, alpha_bar: float) -> np.ndarray:
    """``Q_a(y) = P(X <= y)`` under ``q_a`` (exact, ``scipy.special.ndtr``)."""
    w, mu, sd = level_components(target, alpha_bar)
    return (w * special.ndtr((np.asarray(y, dtype=float)[..., None] - mu) / sd)).sum(-1)


def sf(target: GaussianMixture, y, alpha_bar: float) -> np.ndarray:
    """``1 - Q_a(y)``, computed without cancellation."""
    w, mu, sd = level_components(target, alpha_bar)
    return (w * special.ndtr(-(np.asarray(y, dtype=float)[..., None] - mu) / sd)).sum(-1)


def _cdf_minus(target, a1, x1, target2, a2, x2) -> np.ndarray:
    """``Q1(x1) - Q2(x2)`` elementwise, from the lower tails where both are below 1/2, else from the upper ones."""
    lower = cdf(target, x1, a1) - cdf(target2, x2, a2)
    upper = sf(target2, x2, a2) - sf(target, x1, a1)
    use_upper = (cdf(target, x1, a1) > 0.5) & (cdf(target2, x2, a2) > 0.5)
    return np.where(use_upper, upper, lower)


_LEVEL_CACHE: dict = {}


def _level_tensors(target: GaussianMixture, a: float):
    key = (id(target), a)
    hit = _LEVEL_CACHE.get(key)
    if hit is None or hit[0] is not target:
        if len(_LEVEL_CACHE) > 4096:
            _LEVEL_CACHE.clear()
        w, mu, sd = (torch.from_numpy(v) for v in level_components(target, a))
        hit = (target, torch.log(w) - torch.log(sd), mu, 1.0 / sd**2)
        _LEVEL_CACHE[key] = hit
    return hit[1:]


def eps_derivative(target: GaussianMixture, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    r"""``d eps*(x, a) / dx`` of a one-dimensional mixture, in closed form: with responsibilities ``r_k``,
    component scores ``s_k = -(x - sqrt(a) m_k) / C_k`` and ``s = sum_k r_k s_k``,
    ``s' = sum_k r_k (s_k^2 - 1 / C_k) - s^2`` and ``eps' = -sqrt(1 - a) s'``.  Same shape as ``x`` (``(n, 1)``)."""
    a = float(alpha_bar)
    c, mu, prec = _level_tensors(target, a)
    diff = x.reshape(-1, 1).to(torch.float64) - mu
    sk = -diff * prec  # (n, K)
    r = torch.softmax(c + 0.5 * diff * sk, -1)
    s = (r * sk).sum(-1, keepdim=True)
    ds = (r * (sk * sk - prec)).sum(-1, keepdim=True) - s * s
    return (-math.sqrt(1.0 - a) * ds).reshape(x.shape).to(x.dtype)


# --------------------------------------------------------------------------------------------------------------
# Running the library's samplers (one dispatch)
# --------------------------------------------------------------------------------------------------------------
#: Run one of :data:`SAMPLERS` on a path: the library's own :func:`accelerated_diffusion.sample` (kept under this
#: name), which passes the level ``alpha_bar`` as ``t`` to ``eps_fn`` (what the exact-score targets expect).
run = samplers.sample


def flow_map(target: GaussianMixture, path, method: str, x, *, eps_and_derivative=None) -> dict:
    r"""``Phi(x)`` and ``Phi'(x)`` of a deterministic sampler on a one-dimensional target, exactly.

    The library loop runs on the stacked batch ``(x, 1)``; the noise prediction returns ``(eps(x), eps'(x) dx)``.
    Because every update rule is linear in its tensor arguments, the second half of the output is ``Phi'(x)``.
    Also returns ``tangent_min``: the smallest ``d x_i / d x`` over the start points at the input of every step
    (and, last, at the output): where it first becomes ``<= 0`` the map from the start to that level folds.
    ``eps_and_derivative(y, alpha_bar) -> (eps, d eps / dy)`` (both shaped like ``y``, ``(n, 1)`` float64)
    replaces the exact noise prediction and its derivative (default ``target.eps`` and :func:`eps_derivative`),
    e.g. a perturbed prediction (:mod:`.perturbations`)."""
    if _stochastic(method):
        raise ValueError(f"{method} is stochastic: it has no flow map")
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1)
    n = x.shape[0]
    mins: list[float] = []

    def eps_fn(xs, t):
        y, dy = xs[:n], xs[n:]
        mins.append(float(dy.min()))
        if eps_and_derivative is not None:
            e, de = eps_and_derivative(y, float(t))
            return torch.cat([e, de * dy])
        return torch.cat([target.eps(y, float(t)), eps_derivative(target, y, float(t)) * dy])

    out = samplers.sample(
        eps_fn, torch.cat([x, torch.ones_like(x)]), torch.as_tensor(path, dtype=torch.float64), method
    )
    phi, dphi = out[:n, 0].numpy(), out[n:, 0].numpy()
    mins.append(float(dphi.min()))
    return {"phi": phi, "dphi": dphi, "tangent_min": mins}


# --------------------------------------------------------------------------------------------------------------
# Deterministic samplers: change of variables
# --------------------------------------------------------------------------------------------------------------
def _start_grid(target, a_start: float, num_points: int, width: float) -> np.ndarray:
    w, mu, sd = level_components(target, a_start)
    return np.linspace((mu - width * sd).min(), (mu + width * sd).max(), num_points)


def _resolved_flow(target, path, method, x, a0, a1, dy_frac, rounds, max_split, eps_and_derivative=None):
    """``flow_map`` on ``x``, then up to ``rounds`` batched passes that split every cell whose image is longer
    than ``dy_frac`` times the narrowest output standard deviation (where the flow stretches: between modes)."""
    fm = flow_map(target, path, method, x, eps_and_derivative=eps_and_derivative)
    phi, dphi, mins = fm["phi"], fm["dphi"], np.array(fm["tangent_min"])
    dy_max = dy_frac * float(level_components(target, a1)[2].min())
    for _ in range(rounds):
        dy = np.abs(np.diff(phi))
        cell_mass = np.maximum(np.diff(cdf(target, x, a0)), np.abs(np.diff(cdf(target, phi, a1))))
        bad = np.nonzero((dy > dy_max) & (cell_mass > 1e-15))[0]
        if bad.size == 0:
            break
        k = np.minimum(np.ceil(dy[bad] / dy_max).astype(int), max_split)
        new = np.concatenate([x[i] + (x[i + 1] - x[i]) * np.arange(1, j) / j for i, j in zip(bad, k)])
        f2 = flow_map(target, path, method, new, eps_and_derivative=eps_and_derivative)
        mins = np.minimum(mins, np.array(f2["tangent_min"]))
        x = np.concatenate([x, new])
        order = np.argsort(x, kind="stable")
        x, phi, dphi = x[order], np.concatenate([phi, f2["phi"]])[order], np.concatenate([dphi, f2["dphi"]])[order]
    return x, phi, dphi, mins


def deterministic_tv(
    target: GaussianMixture,
    path,
    method: str,
    *,
    num_points: int = 4001,
    width: float = 12.0,
    refine: int = 0,
    dy_frac: float = 0.25,
    rounds: int = 3,
    max_split: int = 256,
    fold_points: int = 20001,
    eps_and_derivative=None,
) -> dict:
    r"""Exact ``TV(q_out, p_out)`` of a deterministic sampler started from the exact ``q`` at ``path[0]``, output
    compared with ``q`` at ``path[-1]``.  ``num_points`` uniform start points cover ``width`` standard deviations
    of every component; cells whose image is longer than ``dy_frac`` times the narrowest output standard
    deviation are split (up to ``rounds`` passes, ``max_split`` pieces per cell), so that the map is resolved
    where it stretches.  Crossings of the density difference are located by linear interpolation and ``Phi``
    there by cubic Hermite interpolation (``refine = -1``) or by ``refine + 1`` regula-falsi runs of the sampler.
    Returns ``tv``, ``folded`` (``Phi'`` changes sign over the start points carrying mass) and, when it folds,
    ``fold`` = {``x_range`` of the start points with ``Phi' <= 0``, their ``mass`` under ``q_start``, ``y_range``
    of their images, ``first_step`` and ``first_level``: the first level of the path at which the map from the
    start has folded}; ``crossings``: number of sign changes of the density difference; ``num_points``.
    ``eps_and_derivative``: a replacement noise prediction with its derivative, as in :func:`flow_map` (the
    sampler then runs on it; start and output are still compared with the exact ``q``)."""
    path = torch.as_tensor(path, dtype=torch.float64)
    a0, a1 = float(path[0]), float(path[-1])
    x, phi, dphi, mins = _resolved_flow(
        target,
        path,
        method,
        _start_grid(target, a0, num_points, width),
        a0,
        a1,
        dy_frac,
        rounds,
        max_split,
        eps_and_derivative,
    )
    q0 = density(target, x, a0)
    mass = q0 > 1e-300
    folded = bool((dphi[mass] <= 0).any())
    out = {"tv": None, "folded": folded, "fold": None, "crossings": None, "num_points": int(x.size)}
    if folded:
        neg = mass & (dphi <= 0)
        first = int(np.argmax(mins <= 0))
        mid = np.concatenate([[x[0]], 0.5 * (x[1:] + x[:-1]), [x[-1]]])
        cell = np.diff(cdf(target, mid, a0))
        out["fold"] = {
            "x_range": [float(x[neg].min()), float(x[neg].max())],
            "mass": float(cell[neg].sum()),
            "y_range": [float(phi[neg].min()), float(phi[neg].max())],
            "first_step": first,
            "first_level": float(path[first]),
        }
        out["tv"] = _folded_tv(target, x, phi, dphi, a0, a1, fold_points)
        return out
    # monotone: TV from D(x) = Q_start(x) - Q_out(Phi(x)) at the sign changes of g
    g = density(target, phi, a1) * dphi - q0
    cross = _bracket_crossings(x, g)
    out["crossings"] = len(cross)
    if not cross:
        out["tv"] = 0.0
        return out
    lo, hi, glo, ghi = (np.array([c[k] for c in cross], dtype=float) for k in range(4))
    c = lo + (hi - lo) * glo / (glo - ghi)
    if refine < 0:
        # no further run: Phi at the crossings by cubic Hermite interpolation from (Phi, Phi') at the nodes
        i = np.searchsorted(x, c) - 1
        hx = x[i + 1] - x[i]
        phi_c, _ = _hermite3((c - x[i]) / hx, phi[i], phi[i + 1], hx * dphi[i], hx * dphi[i + 1])
    for _ in range(refine + 1):  # regula falsi, all crossings in one run of the sampler
        f = flow_map(target, path, method, c, eps_and_derivative=eps_and_derivative)
        phi_c = f["phi"]
        gc = density(target, phi_c, a1) * f["dphi"] - density(target, c, a0)
        left = np.sign(gc) == np.sign(glo)
        lo, glo = np.where(left, c, lo), np.where(left, gc, glo)
        hi, ghi = np.where(left, hi, c), np.where(left, ghi, gc)
        if _ < refine:
            c = lo + (hi - lo) * glo / (glo - ghi)
    D = np.concatenate([[0.0], _cdf_minus(target, a0, c, target, a1, phi_c), [0.0]])
    out["tv"] = float(0.5 * np.abs(np.diff(D)).sum())
    return out


def _bracket_crossings(x, g):
    """Cells ``[x_i, x_{i+1}]`` where ``g`` changes sign (zeros at nodes are moved by one ulp of sign)."""
    s = np.sign(g)
    s[s == 0] = 1
    idx = np.nonzero(s[:-1] != s[1:])[0]
    return [(x[i], x[i + 1], g[i], g[i + 1]) for i in idx]


def _folded_tv(target, x, phi, dphi, a0, a1, fold_points) -> float:
    r"""TV for a folded map: ``P_out(y) = sum_b M_b(y)`` over the monotone branches ``b`` of ``Phi`` (``M_b(y)`` =
    mass under ``q_start`` of ``{x in b : Phi(x) <= y}``, shape-preserving interpolation of ``Q_start`` against
    ``Phi`` on each branch), and ``TV ~ 1/2 sum |Delta (P_out - Q_out)|`` over a fine partition in ``y`` (the
    union of the branch images of the grid and ``fold_points`` uniform points): a lower bound that is exact when
    the partition contains every sign change."""
    F0 = cdf(target, x, a0)
    s = np.sign(dphi)
    s[s == 0] = 1
    cuts = np.nonzero(s[:-1] != s[1:])[0] + 1
    bounds = np.concatenate([[0], cuts, [len(x)]])
    ys = np.concatenate([phi, np.linspace(phi.min(), phi.max(), fold_points)])
    ys = np.unique(ys)
    P = np.full_like(ys, F0[0])  # mass left of the grid
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        if b1 - b0 < 2:
            # a one-node branch: its mass is attributed to its neighbours' cells (negligible on a fine grid)
            continue
        yb, Fb = phi[b0:b1], F0[b0:b1]
        lo_mass, hi_mass = F0[b0], F0[b1 - 1]
        if s[b0] < 0:
            yb, Fb = yb[::-1], Fb[::-1]
            M = hi_mass - PchipInterpolator(yb, Fb, extrapolate=False)(ys)
            M = np.where(ys < yb[0], 0.0, np.where(ys > yb[-1], hi_mass - lo_mass, M))
        else:
            M = PchipInterpolator(yb, Fb, extrapolate=False)(ys) - lo_mass
            M = np.where(ys < yb[0], 0.0, np.where(ys > yb[-1], hi_mass - lo_mass, M))
        P = P + M
    # also the mass between consecutive branches' end nodes (one grid cell each) goes to where they map
    for c in cuts:
        cell = F0[c] - F0[c - 1]
        P = P + cell * (ys >= 0.5 * (phi[c] + phi[c - 1]))
    E = np.concatenate([[0.0], P - cdf(target, ys, a1), [0.0]])  # both laws have total mass 1
    return float(0.5 * np.abs(np.diff(E)).sum())


# --------------------------------------------------------------------------------------------------------------
# Stochastic samplers: density propagation with the Gaussian transition kernels
# --------------------------------------------------------------------------------------------------------------
class _Kernel:
    """One Gaussian transition ``N(y'; mu(y), sigma^2)`` read off a library rule (see :func:`transition_kernels`)."""

    def __init__(self, mean_fn, sigma: float, level_out: float, name: str):
        self.mean_fn, self.sigma, self.level_out, self.name = mean_fn, float(sigma), float(level_out), name

    def mean(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, dmu = self.mean_fn(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64)).reshape(-1, 1))
        return mu.reshape(-1).numpy(), dmu.reshape(-1).numpy()


def transition_kernels(target: GaussianMixture, path, method: str) -> list[_Kernel]:
    r"""The Gaussian transition kernels of a stochastic sampler on ``path``, in order: its half-steps of the
    registry (``transitions``, :class:`accelerated_diffusion.updates.Transition`, the ones the sampling loop
    runs, in the same order), each read off by linearity: ``mu(y) = rule(y, eps(y), noise=0)``,
    ``mu'(y) = rule(1, eps'(y), noise=0)``, ``sigma = rule(0, 0, noise=1)`` (``eps`` only for a half-step that
    evaluates the model, at its own input).  ``ddpm_type``: one kernel per step (:func:`updates.ddpm_type_step`).
    ``accelerated_sde``: two per step (:func:`updates.accelerated_sde_transitions`), the perturbation
    (``mu(y) = y``) and the update with ``eps`` taken at the perturbed point.  ``ValueError`` for a sampler that
    is not a stochastic one of the library."""
    transitions = samplers.spec(method).transitions
    if transitions is None:
        raise ValueError(f"{method!r} is not a stochastic sampler of the library; expected one of {STOCHASTIC}")
    levels = [float(a) for a in torch.as_tensor(path, dtype=torch.float64)]
    one = torch.ones(1, 1, dtype=torch.float64)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    out = []
    for a_t, a_prev in zip(levels[:-1], levels[1:]):
        for tr in transitions(a_t, a_prev):

            def mean_fn(y, a_t=a_t, tr=tr):
                z = torch.zeros_like(y)
                if not tr.evaluates:
                    return tr.rule(y, None, z), tr.rule(torch.ones_like(y), None, z)
                mu = tr.rule(y, target.eps(y, a_t), z)
                dmu = tr.rule(torch.ones_like(y), eps_derivative(target, y, a_t), z)
                return mu, dmu

            sigma = float(tr.rule(zero, zero if tr.evaluates else None, one))
            out.append(_Kernel(mean_fn, sigma, tr.level_out, f"{tr.name} {a_t:.4g}"))
    return out


class _GridDensity:
    """A density sampled on a uniform grid ``lo + h * arange(n)``."""

    def __init__(self, lo: float, h: float, p: np.ndarray):
        self.lo, self.h, self.p = float(lo), float(h), np.asarray(p, dtype=float)

    @property
    def nodes(self) -> np.ndarray:
        return self.lo + self.h * np.arange(self.p.size)

    def support(self, tol: float) -> np.ndarray:
        keep = self.p > tol * self.p.max()
        return keep

    def interp(self, y: np.ndarray) -> np.ndarray:
        """Sixth-order (six-point Lagrange) interpolation at ``y``; 0 outside the grid."""
        n = self.p.size
        t = (y - self.lo) / self.h
        j = np.clip(np.floor(t).astype(int) - 2, 0, n - 6)
        s = t - j
        out = np.zeros_like(y)
        for k in range(6):
            L = np.ones_like(y)
            for m in range(6):
                if m != k:
                    L *= (s - m) / (k - m)
            out += L * self.p[j + k]
        out[(t < 0) | (t > n - 1)] = 0.0
        return out


def _spacing(target, a: float, h_frac: float) -> float:
    return h_frac * float(level_components(target, a)[2].min())


def _target_range(target, a: float, width: float) -> tuple[float, float]:
    _, mu, sd = level_components(target, a)
    return float((mu - width * sd).min()), float((mu + width * sd).max())


def _blur(p: np.ndarray, h: float, sigma: float) -> np.ndarray:
    """Convolution with ``N(0, sigma^2)`` in Fourier space (``p`` must vanish near both ends)."""
    n = p.size
    k = 2 * np.pi * np.fft.rfftfreq(n, d=h)
    return np.fft.irfft(np.fft.rfft(p) * np.exp(-0.5 * (sigma * k) ** 2), n=n)


def _upsample(p: np.ndarray, m: int) -> np.ndarray:
    """Trigonometric interpolation of ``p`` (vanishing at both ends) onto a grid ``m`` times finer."""
    n = p.size
    P = np.fft.rfft(p)
    Q = np.zeros(n * m // 2 + 1, dtype=complex)
    Q[: P.size] = P
    if n % 2 == 0:
        Q[n // 2] *= 0.5  # split the Nyquist term
    return np.fft.irfft(Q, n=n * m) * m


def _quadrature(y, w, mu, sig, lo, h_out, n_out) -> np.ndarray:
    """``out_i = sum_j w_j N(lo + i h_out; mu_j, sig^2)`` over the kernel's 10-sigma band, vectorised."""
    B = int(math.ceil(10 * sig / h_out)) + 1
    out = np.zeros(n_out)
    offs = np.arange(-B, B + 1)
    chunk = max(1, int(2e6 // offs.size))
    for c0 in range(0, y.size, chunk):
        mc, wc = mu[c0 : c0 + chunk], w[c0 : c0 + chunk]
        ii = np.rint((mc - lo) / h_out).astype(int)[:, None] + offs
        z = (lo + ii * h_out - mc[:, None]) / sig
        val = wc[:, None] * np.exp(-0.5 * z * z) / (sig * math.sqrt(2 * math.pi))
        ok = (ii >= 0) & (ii < n_out)
        out += np.bincount(ii[ok], val[ok], minlength=n_out)
    return out


def _apply_kernel(
    dens: _GridDensity,
    kern: _Kernel,
    target,
    h_frac: float,
    width: float,
    tol: float,
    max_points: int,
    stats: dict,
    resolve: float = 1.2,
    max_upsample: int = 128,
) -> _GridDensity:
    """One transition: ``p'(y') = integral p(y) N(y'; mu(y), sigma^2) dy`` on the output level's grid."""
    keep = dens.support(tol)
    idx = np.nonzero(keep)[0]
    i0, i1 = max(idx[0] - 8, 0), min(idx[-1] + 9, dens.p.size)
    y = dens.nodes[i0:i1]
    p = dens.p[i0:i1]
    mu, dmu = kern.mean(y)
    sig = kern.sigma
    if (dmu[p > tol * p.max()] <= 0).any():
        stats["mean_map_folds"] += 1
    if np.array_equal(mu, y) and np.all(dmu == 1.0):
        # identity mean (the perturbation of the accelerated SDE): an exact Gaussian blur in Fourier space
        stats["blur"] += 1
        pad = int(math.ceil(10 * sig / dens.h)) + 8
        q = np.concatenate([np.zeros(pad), p, np.zeros(pad)])
        out = _blur(q, dens.h, sig)
        out[out < 1e-15 * out.max()] = 0.0
        return _GridDensity(y[0] - pad * dens.h, dens.h, out)
    h_out = _spacing(target, kern.level_out, h_frac)
    tlo, thi = _target_range(target, kern.level_out, width)
    lo = min(float(mu.min()) - 10 * sig, tlo)
    hi = max(float(mu.max()) + 10 * sig, thi)
    if (hi - lo) / h_out + 1 > max_points:
        h_out = (hi - lo) / (max_points - 1)
        stats["coarsened"] += 1
    n_out = int(math.ceil((hi - lo) / h_out)) + 1
    ratio = sig / (dens.h * np.abs(dmu).max())
    m = 1 if ratio >= resolve else int(math.ceil(resolve / ratio))
    if m <= max_upsample:
        # trapezoid rule in the source variable (spectrally accurate once the Gaussian integrand is resolved;
        # the source density is first refined m times by trigonometric interpolation)
        if m > 1:
            stats["upsampled"] += 1
            p = _upsample(p, m)
            p[p < 1e-15 * p.max()] = 0.0  # round-off ripples of the interpolation
            y = y[0] + (dens.h / m) * np.arange(p.size)
            mu, _ = kern.mean(y)
        stats["quadrature"] += 1
        out = _quadrature(y, (dens.h / m) * p, mu, sig, lo, h_out, n_out)
        return _GridDensity(lo, h_out, out)
    # a kernel far narrower than the grid: pushforward of the density by mu, then a Gaussian blur
    stats["pushforward"] += 1
    if (dmu <= 0).any():
        raise RuntimeError(f"{kern.name}: narrow kernel with a non-monotone mean map; refine the grid")
    pad = int(math.ceil(10 * sig / h_out)) + 8
    lo -= pad * h_out
    n_out += 2 * pad
    u = lo + h_out * np.arange(n_out)
    inside = (u > mu[0]) & (u < mu[-1])
    ui = u[inside]
    yi = np.interp(ui, mu, y)
    for _ in range(3):  # Newton on mu(y) = u, exact mu and mu' from the rule
        m_i, d_i = kern.mean(yi)
        yi = yi - (m_i - ui) / d_i
    m_i, d_i = kern.mean(yi)
    stats["newton_residual"] = max(stats["newton_residual"], float(np.abs(m_i - ui).max()) if ui.size else 0.0)
    push = np.zeros(n_out)
    fine = _upsample(p, 16)  # six-point interpolation on a 16 times finer trigonometric interpolant
    fine[fine < 1e-15 * fine.max()] = 0.0
    push[inside] = _GridDensity(y[0], dens.h / 16, fine).interp(yi) / d_i
    out = _blur(push, h_out, sig)
    out[out < 1e-15 * out.max()] = 0.0
    return _GridDensity(lo, h_out, out)


def _spectral_derivatives(p: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    n = p.size
    k = 2 * np.pi * np.fft.rfftfreq(n, d=h)
    P = np.fft.rfft(p)
    return np.fft.irfft(1j * k * P, n=n), np.fft.irfft((1j * k) ** 3 * P, n=n)


def _grid_tv(target, dens: _GridDensity, a_out: float) -> tuple[float, float, int]:
    r"""``TV(q_out, p)`` for a density on a grid: ``E(x) = Q_out(x) - P(x)`` with ``P`` the cumulative trapezoid
    integral of ``p`` plus its Euler-Maclaurin corrections (spectral derivatives; error ``O(h^6)``), evaluated at
    the sign changes of ``q_out - p`` by quintic Hermite interpolation, and ``TV = 1/2 sum_k |E(c_{k+1}) - E(c_k)|``.
    Returns ``(tv, mass_defect, crossings)`` with ``mass_defect = 1 - integral p``."""
    x, h, p = dens.nodes, dens.h, dens.p
    p1, p3 = _spectral_derivatives(p, h)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * h * (p[1:] + p[:-1]))])
    P = cum - h**2 / 12 * (p1 - p1[0]) + h**4 / 720 * (p3 - p3[0])
    q = density(target, x, a_out)
    w, mu, sd = level_components(target, a_out)
    z = (x[:, None] - mu) / sd
    q1 = (w * np.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi)) * (-z / sd)).sum(-1)
    g, g1 = q - p, q1 - p1
    E = cdf(target, x, a_out) - P
    mass_defect = 1.0 - P[-1]
    s = np.sign(g)
    s[s == 0] = 1
    idx = np.nonzero(s[:-1] != s[1:])[0]
    Ec = []
    for i in idx:
        # quintic Hermite for E on [x_i, x_i+1] (E' = g, E'' = g'); crossing where the cubic Hermite g vanishes
        t = g[i] / (g[i] - g[i + 1])
        for _ in range(30):  # Newton on the cubic Hermite interpolant of g
            gt, dgt = _hermite3(t, g[i], g[i + 1], h * g1[i], h * g1[i + 1])
            if dgt == 0:
                break
            step = gt / dgt
            t = min(max(t - step, 0.0), 1.0)
            if abs(step) < 1e-15:
                break
        Ec.append(_hermite5(t, E[i], E[i + 1], h * g[i], h * g[i + 1], h * h * g1[i], h * h * g1[i + 1]))
    vals = np.concatenate([[0.0], Ec, [0.0]])  # both laws have total mass 1 (the defect is reported)
    return float(0.5 * np.abs(np.diff(vals)).sum()), float(mass_defect), int(idx.size)


def _hermite3(t, f0, f1, d0, d1):
    h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
    dh00, dh10, dh01, dh11 = 6 * t**2 - 6 * t, 3 * t**2 - 4 * t + 1, -6 * t**2 + 6 * t, 3 * t**2 - 2 * t
    return f0 * h00 + d0 * h10 + f1 * h01 + d1 * h11, f0 * dh00 + d0 * dh10 + f1 * dh01 + d1 * dh11


def _hermite5(t, f0, f1, d0, d1, s0, s1):
    """Quintic Hermite interpolation on [0, 1] from values, first and second derivatives at both ends."""
    t2, t3, t4, t5 = t * t, t**3, t**4, t**5
    H0 = 1 - 10 * t3 + 15 * t4 - 6 * t5
    H1 = t - 6 * t3 + 8 * t4 - 3 * t5
    H2 = 0.5 * t2 - 1.5 * t3 + 1.5 * t4 - 0.5 * t5
    H3 = 0.5 * t3 - t4 + 0.5 * t5
    H4 = -4 * t3 + 7 * t4 - 3 * t5
    H5 = 10 * t3 - 15 * t4 + 6 * t5
    return f0 * H0 + d0 * H1 + s0 * H2 + s1 * H3 + d1 * H4 + f1 * H5


def stochastic_tv(
    target: GaussianMixture,
    path,
    method: str,
    *,
    h_frac: float = 0.25,
    width: float = 12.0,
    tol: float = 1e-16,
    max_points: int = 40000,
    final_upsample: int = 4,
    kernel_std_scale: float = 1.0,
) -> dict:
    r"""Exact ``TV(q_out, p_out)`` of a stochastic sampler started from the exact ``q`` at ``path[0]``, by
    propagating the density with the transition kernels of :func:`transition_kernels`.  Grid spacing at level
    ``a``: ``h_frac`` times the narrowest component's standard deviation there; ranges cover ``width`` standard
    deviations of the target at every level and 10 kernel widths around the image of the density's support
    (values below ``tol`` times the maximum are dropped).  ``kernel_std_scale`` multiplies every kernel's standard
    deviation (1 = the sampler; anything else is a deliberately wrong kernel, for the tests).  Returns ``tv``,
    ``mass_defect``, ``crossings`` and counters: how many kernels were applied by quadrature and by pushforward,
    ``mean_map_folds`` (kernels whose mean map ``mu`` is decreasing somewhere on the density's support: the
    step's deterministic part folds there) and ``coarsened`` (grids capped at ``max_points``)."""
    path = torch.as_tensor(path, dtype=torch.float64)
    a0, a1 = float(path[0]), float(path[-1])
    h = _spacing(target, a0, h_frac)
    lo, hi = _target_range(target, a0, width)
    n = int(math.ceil((hi - lo) / h)) + 1
    dens = _GridDensity(lo, h, density(target, lo + h * np.arange(n), a0))
    stats = {
        "quadrature": 0,
        "upsampled": 0,
        "blur": 0,
        "pushforward": 0,
        "mean_map_folds": 0,
        "coarsened": 0,
        "newton_residual": 0.0,
    }
    for kern in transition_kernels(target, path, method):
        if kernel_std_scale != 1.0:
            kern.sigma *= kernel_std_scale
        dens = _apply_kernel(dens, kern, target, h_frac, width, tol, max_points, stats)
    fine = _upsample(dens.p, final_upsample)  # TV is evaluated on a finer (trigonometric) interpolant
    fine[fine < 1e-15 * fine.max()] = 0.0
    tv, defect, crossings = _grid_tv(target, _GridDensity(dens.lo, dens.h / final_upsample, fine), a1)
    return {"tv": tv, "mass_defect": defect, "crossings": crossings, "num_points": int(dens.p.size), **stats}


def exact_tv(target: GaussianMixture, path, method: str, **kw) -> dict:
    """:func:`stochastic_tv` or :func:`deterministic_tv`, by sampler."""
    return (stochastic_tv if _stochastic(method) else deterministic_tv)(target, path, method, **kw)


# --------------------------------------------------------------------------------------------------------------
# References and accuracy
# --------------------------------------------------------------------------------------------------------------
def gaussian_tv_1d(m0: float, v0: float, m1: float, v1: float) -> float:
    r"""``TV(N(m0, v0), N(m1, v1))`` in closed form: the densities cross where a quadratic vanishes, and TV is the
    difference of the two laws' masses between (or outside) the crossings (normal CDFs)."""
    s0, s1 = math.sqrt(v0), math.sqrt(v1)
    # log N0 - log N1 = A x^2 + B x + C
    A = 0.5 / v1 - 0.5 / v0
    B = m0 / v0 - m1 / v1
    C = 0.5 * (m1**2 / v1 - m0**2 / v0) + math.log(s1 / s0)
    if A == 0.0:
        if B == 0.0:
            return 0.0
        roots = [-C / B]
    else:
        disc = B * B - 4 * A * C
        r = math.sqrt(max(disc, 0.0))
        q = -0.5 * (B + math.copysign(r, B))
        roots = sorted([q / A, C / q] if q != 0 else [0.0])
    pts = [-math.inf, *roots, math.inf]
    tv = 0.0
    for lo, hi in zip(pts[:-1], pts[1:]):
        d0 = special.ndtr((hi - m0) / s0) - special.ndtr((lo - m0) / s0)
        d1 = special.ndtr((hi - m1) / s1) - special.ndtr((lo - m1) / s1)
        tv += abs(d0 - d1)
    return 0.5 * tv


def gaussian_reference_tv(target: Gaussian, path, method: str, *, with_rates: bool = False) -> dict:
    """For a one-component target: the output law ``N(m, v)`` of the sampler (:func:`rates.gaussian_output_law`,
    an independent closed form) and ``tv`` = its exact TV to ``q_out`` (:func:`gaussian_tv_1d`); with
    ``with_rates`` also ``tv_rates`` = the same by :func:`rates.gaussian_tv` (characteristic-function inversion,
    relative accuracy 1e-4; slow when it struggles to converge, None when it fails)."""
    path = torch.as_tensor(path, dtype=torch.float64)
    a1 = float(path[-1])
    mp, Cp = gaussian_output_law(target, path, method, "exact")
    mq, Cq = target.marginal_mean(a1), target.marginal_cov(a1)
    out = {
        "tv": gaussian_tv_1d(float(mq[0]), float(Cq[0, 0]), float(mp[0]), float(Cp[0, 0])),
        "mean": float(mp[0]),
        "var": float(Cp[0, 0]),
    }
    if with_rates:
        try:
            out["tv_rates"] = gaussian_tv(mq, Cq, mp, Cp)
        except RuntimeError:
            out["tv_rates"] = None
    return out


def refinement_check(target: GaussianMixture, path, method: str, *, factor: int = 2, **kw) -> dict:
    """TV at the default grid and at a grid ``factor`` times finer; returns both and their relative change."""
    if _stochastic(method):
        base = stochastic_tv(target, path, method, **kw)
        fine = stochastic_tv(target, path, method, **{**kw, "h_frac": kw.get("h_frac", 0.25) / factor})
    else:
        n = kw.get("num_points", 4001)
        base = deterministic_tv(target, path, method, **kw)
        fine = deterministic_tv(
            target,
            path,
            method,
            **{
                **kw,
                "num_points": factor * (n - 1) + 1,
                "dy_frac": kw.get("dy_frac", 0.25) / factor,
                "fold_points": factor * kw.get("fold_points", 20001),
            },
        )
    return {
        "tv": base["tv"],
        "tv_fine": fine["tv"],
        "rel_change": abs(fine["tv"] - base["tv"]) / fine["tv"],
        "folded": bool(base.get("folded", False)),
    }


# --------------------------------------------------------------------------------------------------------------
# Sweeps, fits, results
# --------------------------------------------------------------------------------------------------------------
PAPER_TS = (10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000)
LINEAR_TS = (5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000)  # divisors of 1000 (leading spacing)
FIT_MIN_NFE = {"paper": 99, "linear": 39}


def _job(job: tuple):
    """One independent computation of the sweeps, by kind: ``("tv", params, schedule, T, path_kw, method)`` ->
    :func:`exact_tv`; ``"refine"`` -> :func:`refinement_check` (extra ``factor``); ``"reference"`` ->
    :func:`gaussian_reference_tv`.  A module-level function of plain arguments, so it can run in a worker
    process (:func:`run_jobs`)."""
    kind, params, schedule, T, path_kw, method, *extra = job
    target = mixture_1d(**params)
    path = make_path(schedule, int(T), **path_kw)
    if kind == "tv":
        return exact_tv(target, path, method)
    if kind == "refine":
        return refinement_check(target, path, method, factor=extra[0])
    if kind == "reference":
        return gaussian_reference_tv(target, path, method)
    raise ValueError(f"unknown job kind {kind!r}")


def _job_cost(job: tuple) -> float:
    # rough relative cost, to start the longest jobs first: stochastic runs grow faster than T
    kind, _, _, T, _, method, *extra = job
    stochastic = _stochastic(method)
    cost = float(T) * (4.0 if stochastic else 1.0) * (1.0 + T / 300.0 if stochastic else 1.0)
    return cost * (4.0 if kind == "refine" else 1.0)


class PendingJobs:
    """Jobs of :func:`_job` running in ``workers`` worker processes (started with ``spawn``, one torch thread
    each), the longest first; :meth:`result` waits for them and returns their results in the jobs' order.  The
    jobs are independent and deterministic, so the results equal a serial run's."""

    def __init__(self, jobs: list, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._n = len(jobs)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
        )
        order = sorted(range(len(jobs)), key=lambda i: -_job_cost(jobs[i]))
        self._futures = {self._pool.submit(_job, jobs[i]): i for i in order}

    def result(self) -> list:
        out = [None] * self._n
        try:
            for f in concurrent.futures.as_completed(self._futures):
                out[self._futures[f]] = f.result()
        finally:
            self._pool.shutdown(cancel_futures=True)
        return out


def run_jobs(jobs: list, workers: int = 1) -> list:
    """``[_job(j) for j in jobs]``, in ``workers`` processes (:class:`PendingJobs`) when ``workers > 1``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(jobs) < 2:
        return [_job(j) for j in jobs]
    return PendingJobs(jobs, workers).result()


def _sweep_jobs(params: dict, schedule: str, Ts, methods, path_kw: dict) -> list:
    return [("tv", params, schedule, int(T), path_kw, m) for T in Ts for m in methods]


def _sweep_results(jobs: list, outs: list, methods) -> dict:
    res = {m: {"T": [], "nfe": [], "tv": [], "folds": [], "mean_map_folds": []} for m in methods}
    for (_, _, schedule, T, path_kw, m), r in zip(jobs, outs):
        res[m]["T"].append(int(T))
        res[m]["nfe"].append(int(make_path(schedule, int(T), **path_kw).numel() - 1))
        res[m]["tv"].append(r["tv"])
        if r.get("folded"):
            res[m]["folds"].append({"T": int(T), **r["fold"]})
        if _stochastic(m):
            res[m]["mean_map_folds"].append(r["mean_map_folds"])
    for m in methods:
        if not _stochastic(m):
            del res[m]["mean_map_folds"]
    return res


def rate_sweep(target: GaussianMixture, schedule: str, Ts, methods=SAMPLERS, *, workers: int = 1, **path_kw) -> dict:
    """``{method: {"T", "nfe", "tv", "folds", "mean_map_folds"}}`` over ``Ts`` on the path
    :func:`rates.make_path` (``schedule`` ``"paper"`` or ``"linear"``), started from the exact ``q`` at the first
    level, output compared with ``q`` at the last.  ``folds``: one entry per folded run of a deterministic sampler
    (``T`` and the fold report of :func:`deterministic_tv`); ``mean_map_folds``: per run of a stochastic sampler,
    the number of kernels whose mean map decreases somewhere on the density's support.  ``workers``: processes
    (:func:`run_jobs`)."""
    jobs = _sweep_jobs(target_params(target), schedule, Ts, methods, path_kw)
    return _sweep_results(jobs, run_jobs(jobs, workers), methods)


def fit_rates(res: dict, x_min: float, *, log_factor: bool = False) -> dict:
    """Adds ``slope = {"value", "ci", "x_min"}`` to every sampler of ``res`` (:func:`rates.fit_slope` of log TV on
    log NFE over ``nfe >= x_min``, 95% t-interval); with ``log_factor`` also ``slope_vs_T_over_logT`` (the same
    fit against ``T / log T``, for the paper schedule whose step is ``c1 log T / T``)."""
    for m, r in res.items():
        f = fit_slope(r["nfe"], r["tv"], x_min=x_min)
        r["slope"] = {"value": f["slope"], "ci": f["ci"], "x_min": x_min}
        if log_factor:
            x = [T / math.log(T) for T in r["T"]]
            g = fit_slope(x, r["tv"], x_min=x_min / math.log(x_min))
            r["slope_vs_T_over_logT"] = {"value": g["slope"], "ci": g["ci"]}
    return res


def _rates_jobs(params: dict, paper_Ts, linear_Ts, methods, c0: float, c1: float) -> list:
    return _sweep_jobs(params, "paper", paper_Ts, methods, {"c0": c0, "c1": c1}) + _sweep_jobs(
        params, "linear", linear_Ts, methods, {}
    )


def _rates_results(jobs: list, outs: list, methods, x_min: dict) -> dict:
    out = {}
    for schedule in ("paper", "linear"):
        sel = [i for i, j in enumerate(jobs) if j[2] == schedule]
        res = _sweep_results([jobs[i] for i in sel], [outs[i] for i in sel], methods)
        out[schedule] = fit_rates(res, x_min[schedule], log_factor=schedule == "paper")
        orders.annotate(out[schedule], "tv", log_factor=schedule == "paper")
    return out


def exact_rates(
    target: GaussianMixture,
    *,
    paper_Ts=PAPER_TS,
    linear_Ts=LINEAR_TS,
    methods=SAMPLERS,
    c0: float = 2.0,
    c1: float = 4.0,
    x_min: dict | None = None,
    workers: int = 1,
) -> dict:
    """Both schedules, all samplers, fitted slopes and local orders: ``{schedule: {sampler: {"T", "nfe", "tv",
    "slope", "local_slopes", "window_fits", "verdict", "practical", ...}}}`` (:func:`fit_rates`,
    :func:`orders.annotate`)."""
    x_min = {**FIT_MIN_NFE, **(x_min or {})}
    jobs = _rates_jobs(target_params(target), paper_Ts, linear_Ts, methods, c0, c1)
    return _rates_results(jobs, run_jobs(jobs, workers), methods, x_min)


def _gaussian_jobs(cases, methods, target: GaussianMixture) -> list:
    params = target_params(target)
    return [
        (kind, params, schedule, int(T), {}, m)
        for schedule, T in cases
        for m in methods
        for kind in ("tv", "reference")
    ]


def _gaussian_results(jobs: list, outs: list, target: GaussianMixture) -> dict:
    rows = []
    for k in range(0, len(jobs), 2):  # ("tv", "reference") pairs
        _, _, schedule, T, _, m = jobs[k]
        tv, ref = outs[k]["tv"], outs[k + 1]["tv"]
        rows.append([schedule, int(T), m, tv, ref, abs(tv - ref) / ref])
    return {"target": target_params(target), "rows": rows, "max_rel_error": max(r[-1] for r in rows)}


def gaussian_check(cases, methods=SAMPLERS, target: Gaussian | None = None, *, workers: int = 1) -> dict:
    """Relative error of :func:`exact_tv` against the closed form :func:`gaussian_reference_tv` on a one-component
    target (default :data:`TARGETS` ``["gaussian"]``) for every ``(schedule, T)`` in ``cases`` and sampler:
    ``{"rows": [[schedule, T, sampler, tv, reference, rel_error], ...], "max_rel_error": ...}``."""
    target = target or mixture_1d(**TARGETS["gaussian"])
    jobs = _gaussian_jobs(cases, methods, target)
    return _gaussian_results(jobs, run_jobs(jobs, workers), target)


def _refinement_jobs(target: GaussianMixture, cases, methods, factor: int) -> list:
    params = target_params(target)
    return [("refine", params, schedule, int(T), {}, m, factor) for schedule, T in cases for m in methods]


def _refinement_results(jobs: list, outs: list, factor: int) -> dict:
    rows = [[j[2], int(j[3]), j[5], r["tv"], r["tv_fine"], r["rel_change"], r["folded"]] for j, r in zip(jobs, outs)]
    return {
        "factor": factor,
        "rows": rows,
        "max_rel_change": max([r[5] for r in rows if not r[6]], default=None),
        "max_rel_change_folded": max([r[5] for r in rows if r[6]], default=None),
    }


def refinement_table(target: GaussianMixture, cases, methods=SAMPLERS, factor: int = 2, *, workers: int = 1) -> dict:
    """:func:`refinement_check` for every ``(schedule, T)`` in ``cases`` and sampler: ``{"rows": [[schedule, T,
    sampler, tv, tv_fine, rel_change, folded], ...], "max_rel_change": ..., "max_rel_change_folded": ...}`` (the
    largest change over the unfolded and the folded runs; deterministic samplers: ``factor`` times the start
    points and a ``factor`` times finer split of stretched cells; stochastic: grids ``factor`` times finer)."""
    jobs = _refinement_jobs(target, cases, methods, factor)
    return _refinement_results(jobs, run_jobs(jobs, workers), factor)


def results_json(
    target: GaussianMixture, results: dict, *, name: str | None = None, folder=None, params: dict | None = None, **extra
) -> dict:
    """The results object ``{"target": {"weights", "means", "variances"}, "results": {schedule: {sampler: {"T",
    "nfe", "tv", "slope": {"value", "ci"}}}}}`` plus ``extra`` keys, saved as ``name`` (:func:`paths.save_results`,
    in ``folder`` or the results folder, with ``params``, the settings of the run, in its provenance) when given."""
    obj = {"target": target_params(target), **extra, "results": results}
    if name is not None:
        save_results(name, obj, folder=folder, params=params)
    return obj


def _explore_jobs(targets, Ts, schedule: str, methods) -> list:
    return [
        job for params in targets for job in _sweep_jobs(target_params(mixture_1d(**params)), schedule, Ts, methods, {})
    ]


def _explore_results(jobs: list, outs: list, targets, Ts, schedule: str, methods) -> list:
    out, per = [], len(Ts) * len(methods)
    for k, params in enumerate(targets):
        res = _sweep_results(jobs[k * per : (k + 1) * per], outs[k * per : (k + 1) * per], methods)
        entry = {"target": target_params(mixture_1d(**params)), "schedule": schedule, "T": [int(T) for T in Ts]}
        for m in methods:
            f = fit_slope(res[m]["nfe"], res[m]["tv"])
            entry[m] = {"tv": res[m]["tv"], "slope": {"value": f["slope"], "ci": f["ci"]}}
        out.append(entry)
    return out


def explore(targets, Ts, schedule: str = "linear", methods=STOCHASTIC, *, workers: int = 1) -> list:
    """TV of ``methods`` over ``Ts`` for each target of ``targets`` (dicts of :func:`mixture_1d` arguments), with
    the slope fitted over all points: ``[{"target", "schedule", "T", method: {"tv", "slope"}}, ...]``."""
    jobs = _explore_jobs(targets, Ts, schedule, methods)
    return _explore_results(jobs, run_jobs(jobs, workers), targets, Ts, schedule, methods)


class _Experiment:
    """The runs of :func:`run_experiment`, in progress; :meth:`result` assembles (and saves) the results object."""

    def __init__(
        self,
        target_params_,
        *,
        paper_Ts,
        linear_Ts,
        c0,
        c1,
        x_min,
        gaussian_cases,
        refinement_cases,
        explore_targets,
        explore_Ts,
        name,
        folder,
        workers,
        background,
    ):
        self.t0_wall = time.perf_counter()
        self.t0_cpu = _cpu_seconds()
        self.x_min = {**FIT_MIN_NFE, **(x_min or {})}
        self.params = {
            "target": target_params_,
            "paper_Ts": paper_Ts,
            "linear_Ts": linear_Ts,
            "c0": c0,
            "c1": c1,
            "x_min": self.x_min,
            "gaussian_cases": gaussian_cases,
            "refinement_cases": refinement_cases,
            "explore_targets": explore_targets,
            "explore_Ts": explore_Ts,
        }
        if name is not None:
            check_params(self.params)  # settings that could not be recorded fail before the sweeps
        self.c0, self.c1, self.name, self.folder, self.workers = c0, c1, name, folder, workers
        self.target = mixture_1d(**target_params_)
        self.gauss_target = mixture_1d(**TARGETS["gaussian"])
        self.explore_targets, self.explore_Ts = list(explore_targets), explore_Ts
        self.parts = [
            _rates_jobs(target_params(self.target), paper_Ts, linear_Ts, SAMPLERS, c0, c1),
            _gaussian_jobs(gaussian_cases, SAMPLERS, self.gauss_target),
            _refinement_jobs(self.target, refinement_cases, SAMPLERS, 2),
            _explore_jobs(self.explore_targets, explore_Ts, "linear", STOCHASTIC),
        ]
        jobs = [j for part in self.parts for j in part]
        self._pending = PendingJobs(jobs, workers) if background else None
        self._outs = None if background else run_jobs(jobs, workers)

    def result(self) -> dict:
        outs = self._pending.result() if self._pending is not None else self._outs
        split, k = [], 0
        for part in self.parts:
            split.append(outs[k : k + len(part)])
            k += len(part)
        results = _rates_results(self.parts[0], split[0], SAMPLERS, self.x_min)
        accuracy = {
            "gaussian": _gaussian_results(self.parts[1], split[1], self.gauss_target),
            "refinement": _refinement_results(self.parts[2], split[2], 2),
        }
        exploration = (
            _explore_results(self.parts[3], split[3], self.explore_targets, self.explore_Ts, "linear", STOCHASTIC)
            if self.explore_targets
            else []
        )
        extra = {
            "description": "Exact TV of seven samplers on a one-dimensional Gaussian mixture with exact scores, "
            "started from the exact q at the first level",
            "schedules": {
                "paper": {
                    "c0": self.c0,
                    "c1": self.c1,
                    "path": "all T levels abar_T .. abar_1, nfe = T - 1, output vs q_1",
                },
                "linear": {
                    "betas": "linear 1e-4 .. 0.02, 1000 steps",
                    "spacing": "leading",
                    "path": "timesteps arange(T)[::-1] * (1000 // T), output vs q at the last level, nfe = T - 1",
                },
            },
            "fit": {"x": "nfe", "x_min": self.x_min, "level": 0.95},
            "orders_criterion": orders.CRITERION,
            "accuracy": accuracy,
            "exploration": exploration,
            "timing": {
                "cpu_seconds": _cpu_seconds() - self.t0_cpu,
                "wall_seconds": time.perf_counter() - self.t0_wall,
                "workers": self.workers,
            },
        }
        return results_json(self.target, results, name=self.name, folder=self.folder, params=self.params, **extra)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


_EXPERIMENT_DEFAULTS = dict(
    paper_Ts=PAPER_TS,
    linear_Ts=LINEAR_TS,
    c0=2.0,
    c1=4.0,
    x_min=None,
    gaussian_cases=(("paper", 30), ("paper", 300), ("linear", 20), ("linear", 200)),
    refinement_cases=(("paper", 100), ("linear", 40)),
    explore_targets=(),
    explore_Ts=(50, 100, 200, 500, 1000),
    name=None,
    folder=None,
)


def run_experiment(target_params_: dict, *, workers: int = 1, **kw) -> dict:
    """Everything behind ``rates_exact_1d.json``: the rate sweeps of :func:`exact_rates` on the mixture
    ``target_params_`` (weights, means, variances) over ``paper_Ts`` and ``linear_Ts``, the accuracy checks
    (:func:`gaussian_check` on the one-component target for ``gaussian_cases``, :func:`refinement_table` on the
    mixture for ``refinement_cases``), the :func:`explore` runs of ``explore_targets`` over ``explore_Ts``, and
    the CPU time of this process and its workers; saved as ``name`` (in ``folder``) when given (schema in
    ``data/results/README.md``).  All runs are independent, so they go through one :func:`run_jobs` with
    ``workers`` processes.  Keywords and defaults: ``_EXPERIMENT_DEFAULTS``."""
    unknown = set(kw) - set(_EXPERIMENT_DEFAULTS)
    if unknown:
        raise TypeError(f"run_experiment() got unexpected keyword arguments {sorted(unknown)}")
    return _Experiment(target_params_, workers=workers, background=False, **{**_EXPERIMENT_DEFAULTS, **kw}).result()


def start_experiment(target_params_: dict, *, workers: int = 2, **kw) -> _Experiment:
    """:func:`run_experiment` in the background: the runs start now in ``workers`` worker processes and the
    caller goes on; ``.result()`` waits for them and returns (and saves) the same object ``run_experiment``
    would.  Used by the rates chapter, whose other sections run meanwhile."""
    unknown = set(kw) - set(_EXPERIMENT_DEFAULTS)
    if unknown:
        raise TypeError(f"start_experiment() got unexpected keyword arguments {sorted(unknown)}")
    return _Experiment(target_params_, workers=workers, background=True, **{**_EXPERIMENT_DEFAULTS, **kw})
