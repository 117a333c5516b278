r"""Measuring the paper's rate claims with exact scores (chapter *Rates with exact scores*).

With the exact noise prediction ``eps*`` of a target (:mod:`accelerated_diffusion.targets`) the discretisation
error is the only error left, so error-versus-steps curves measure a sampler's rate directly.  This module holds
the experiment code; the update rules themselves are called from :mod:`accelerated_diffusion.samplers` /
:mod:`accelerated_diffusion.updates`, never re-typed.

* **Paths** (:func:`make_path`): ``"paper"`` -- the learning-rate schedule of the theory (:func:`paper_betas`) with
  ``T`` levels ``abar_T .. abar_1`` (``T - 1`` steps, output compared with ``q_1``); ``"linear"`` -- the 1000-step
  DDPM schedule subsampled with a diffusers spacing, ending at the last visited training level (``q_1`` of the
  subsequence) or, with ``final_alpha_bar=1.0``, at clean data.
* **Gaussian targets** (:func:`gaussian_output_law`): every sampler is affine in its start and its noises, so the
  output law is Gaussian and is computed exactly; distances are closed forms (:func:`gaussian_errors`).
* **Monte Carlo targets** (mixtures): distance of each deterministic sample to a high-accuracy reference solution
  of the probability-flow ODE (:func:`flow_reference`, :func:`rms_with_ci`) and a kernel distance (MMD) whose
  target terms are exact (:func:`mmd2_with_ci`), both with confidence intervals.
* **Fits** (:func:`fit_slope`): least-squares slopes of ``log error`` on ``log NFE`` with t-intervals.
* **Fashion-MNIST mixture** (:func:`fit_fashion_mnist_mixture`): one low-rank-plus-diagonal Gaussian per class.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from .. import metrics, samplers, updates
from ..samplers import LIBRARY_SAMPLERS, sample
from ..schedules import DiscreteSchedule, validate_path
from ..targets import Gaussian, GaussianMixture
from .data import load_fashion_mnist

__all__ = [
    "SAMPLERS",
    "DETERMINISTIC",
    "STYLE",
    "LINEAR_SCHEDULE",
    "make_path",
    "gaussian_target",
    "exact_flow_map",
    "gaussian_output_law",
    "gaussian_tv",
    "gaussian_errors",
    "gaussian_rate_sweep",
    "fit_slope",
    "two_d_mixture",
    "flow_reference",
    "rms_with_ci",
    "median_with_ci",
    "mmd2_with_ci",
    "mixture_rate_sweep",
    "fit_fashion_mnist_mixture",
]

#: All of the library's samplers, in the order the rate tables list them (:func:`accelerated_diffusion.samplers.
#: table_order`: deterministic first, each kind's baseline first).
SAMPLERS = samplers.table_order(LIBRARY_SAMPLERS)
DETERMINISTIC = tuple(m for m in SAMPLERS if not samplers.spec(m).stochastic)
#: The matplotlib style of each sampler in the rate figures: colour by position (``C0``, ``C1``, ...) and the
#: registry's marker (:attr:`~accelerated_diffusion.samplers.SamplerSpec.marker`), for any number of samplers.
STYLE = {m: dict(color=f"C{i}", marker=samplers.spec(m).marker) for i, m in enumerate(SAMPLERS)}
LINEAR_SCHEDULE = dict(schedule="linear", num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)


# --------------------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------------------
def make_path(
    schedule: str,
    T: int,
    *,
    c0: float = 2.0,
    c1: float = 4.0,
    spacing: str = "leading",
    final_alpha_bar: float | None = None,
) -> torch.Tensor:
    r"""The sampling path (float64 ``alpha_bar`` levels, noisiest first) of a rate experiment with parameter ``T``.

    * ``"paper"``: the theory's schedule ``beta_1 = T^{-c0}``, ``beta_{t+1} = (c1 log T / T) min(beta_1 (1 + c1
      log T / T)^t, 1)`` (:func:`accelerated_diffusion.schedules.paper_betas`); the path visits all ``T`` levels
      ``abar_T, ..., abar_1``: ``T - 1`` steps (NFE), output at ``abar_1`` (the paper's ``q_1``).
    * ``"linear"``: diffusers' linear schedule (1000 steps, ``beta`` from 1e-4 to 0.02), ``T`` timesteps with
      ``spacing``; ``final_alpha_bar=None`` ends at the last visited level (``T - 1`` steps, output compared with
      ``q`` there), ``1.0`` adds diffusers' final jump to clean data (``T`` steps).
    """
    if schedule == "paper":
        if final_alpha_bar is not None:
            raise ValueError("the paper path ends at abar_1; final_alpha_bar is only for the linear schedule")
        return DiscreteSchedule.paper(T, c0, c1).path(final_alpha_bar=None)
    if schedule == "linear":
        sched = DiscreteSchedule.from_diffusers(**LINEAR_SCHEDULE)
        return sched.path(sched.subsample(T, spacing), final_alpha_bar=final_alpha_bar)
    raise ValueError(f"unknown schedule {schedule!r}; expected 'paper' or 'linear'")


# --------------------------------------------------------------------------------------------------------------
# Gaussian targets: exact output laws
# --------------------------------------------------------------------------------------------------------------
def gaussian_target(
    d: int, *, eig_min: float = 0.05, eig_max: float = 1.0, mean_norm: float = 1.0, seed: int = 0
) -> Gaussian:
    r"""``N(m, Sigma)`` in ``d`` dimensions: eigenvalues of ``Sigma`` log-spaced in ``[eig_min, eig_max]``, a
    random rotation (QR of a seeded Gaussian matrix) and a random mean of norm ``mean_norm``."""
    if d < 1 or not 0 < eig_min <= eig_max:
        raise ValueError(f"need d >= 1 and 0 < eig_min <= eig_max, got d={d}, eig_min={eig_min}, eig_max={eig_max}")
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    eig = torch.logspace(math.log10(eig_min), math.log10(eig_max), d, dtype=torch.float64)
    m = torch.randn(d, generator=g, dtype=torch.float64)
    cov = (q * eig) @ q.T
    return Gaussian(mean_norm * m / m.norm(), 0.5 * (cov + cov.T))


def _log_ratio_form(m0, S0, m1, S1):
    """``log N(x; m0, S0) - log N(x; m1, S1) = x^T M x + v^T x + c`` (float64 numpy)."""
    P0, P1 = np.linalg.inv(S0), np.linalg.inv(S1)
    c = 0.5 * (m1 @ P1 @ m1 - m0 @ P0 @ m0) - 0.5 * (np.linalg.slogdet(S0)[1] - np.linalg.slogdet(S1)[1])
    return 0.5 * (P1 - P0), P0 @ m0 - P1 @ m1, float(c)


def _quadratic_form_law(M, v, c, m, S):
    """``x ~ N(m, S)``: ``x^T M x + v^T x + c = sum_i lam_i w_i^2 + b_i w_i + c0`` with ``w ~ N(0, I)``."""
    L = np.linalg.cholesky(S)
    lam, U = np.linalg.eigh(L.T @ M @ L)
    return lam, U.T @ (L.T @ (2 * M @ m + v)), float(m @ M @ m + v @ m + c)


def _quadratic_form_cf(t: float, lam, b, c0) -> complex:
    r"""Characteristic function of ``sum_i lam_i w_i^2 + b_i w_i + c0``:
    ``e^{i t c0} prod_i (1 - 2 i t lam_i)^{-1/2} exp(-t^2 b_i^2 / (2 (1 - 2 i t lam_i)))``."""
    z = 1 - 2j * t * lam
    return np.exp(1j * t * c0) * np.prod(z**-0.5 * np.exp(-((t * b) ** 2) / (2 * z)))


def gaussian_tv(mean0, cov0, mean1, cov1, *, rtol: float = 1e-4) -> float:
    r"""Total variation distance between two Gaussians, computed to ``rtol`` by one numerical integral.

    ``TV = P_0(A) - P_1(A)`` with ``A = {x : log p_0(x) > log p_1(x)}``.  Under either law the log-ratio is a
    quadratic form of a Gaussian (a generalised chi-square variable), so Gil-Pelaez' inversion formula gives

    .. math:: \mathrm{TV} = \frac1\pi \int_0^\infty \frac{\operatorname{Im}\big(\varphi_0(t) - \varphi_1(t)\big)}{t}\,dt,

    with ``phi_j`` the characteristic function of the log-ratio under law ``j`` (:func:`_quadratic_form_cf`).
    The two are subtracted *inside* the integral (and the form rescaled to unit size, which leaves ``A``
    unchanged), so tiny distances keep their relative accuracy.  The integrand decays like ``t^{-1-r/2}`` with
    ``r`` the rank of the covariance difference; raises ``RuntimeError`` when the quadrature's error estimate
    exceeds ``rtol`` relative (e.g. ``d = 1`` with equal means converges too slowly)."""
    from scipy import integrate

    m0, S0, m1, S1 = (torch.as_tensor(a, dtype=torch.float64).numpy() for a in (mean0, cov0, mean1, cov1))
    M, v, c = _log_ratio_form(m0, S0, m1, S1)
    law0, law1 = _quadratic_form_law(M, v, c, m0, S0), _quadratic_form_law(M, v, c, m1, S1)
    scale = max(float(np.abs(law0[0]).max()), float(np.abs(law0[1]).max()), abs(law0[2]))
    if scale == 0.0:
        return 0.0
    law0 = tuple(a / scale for a in law0)
    law1 = tuple(a / scale for a in law1)

    def integrand(t: float) -> float:
        return float(np.imag(_quadratic_form_cf(t, *law0) - _quadratic_form_cf(t, *law1))) / t

    val, err = integrate.quad(integrand, 0.0, np.inf, limit=2000, epsabs=0.0, epsrel=rtol)
    if not err <= 10 * rtol * abs(val):
        raise RuntimeError(
            f"gaussian_tv: quadrature did not converge (value {val / np.pi:.3g}, error estimate {err / np.pi:.2g})"
        )
    return val / math.pi


def exact_flow_map(target: Gaussian, alpha_bar_in: float, alpha_bar_out: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Independent oracle: the exact probability-flow map of a Gaussian target from level ``a_in`` to ``a_out``,
    ``x -> sqrt(a_out) m + C_out^{1/2} C_in^{-1/2} (x - sqrt(a_in) m)`` with ``C_a = a Sigma + (1 - a) I`` (all
    ``C_a`` commute, and along each eigen-direction the flow is the unique increasing affine map between the
    two one-dimensional marginals).  Returns ``(A, b)`` with ``map(x) = A x + b``."""
    A = metrics.psd_power(target.marginal_cov(alpha_bar_out), 0.5) @ metrics.psd_power(
        target.marginal_cov(alpha_bar_in), -0.5
    )
    return A, target.marginal_mean(alpha_bar_out) - A @ target.marginal_mean(alpha_bar_in)


def _joint_affine(fn, d: int):
    """``(K, N, b)`` with ``fn(x, z) = K x + N z + b`` for a map affine in ``(x, z)`` (batches of shape (n, d))."""
    A, b = metrics.affine_map(lambda xz: fn(xz[:, :d], xz[:, d:]), 2 * d)
    return A[:, :d], A[:, d:], b


def _push(law, K, N, b):
    mean, cov = law
    return K @ mean + b, K @ cov @ K.T + N @ N.T


def _stochastic_law(target: Gaussian, path: torch.Tensor, method: str, law):
    """Exact law of a stochastic sampler's output: each of its Gaussian half-steps (the registry's
    ``transitions``, :class:`accelerated_diffusion.updates.Transition`, the ones the sampling loop runs, in the
    same order) is affine in (iterate, noise), so the Gaussian law is pushed through it exactly.  ``ValueError``
    for a sampler that is not a stochastic one of the library."""
    transitions = samplers.spec(method).transitions
    if transitions is None:
        raise ValueError(f"{method!r} has no Gaussian transitions (not a stochastic sampler of the library)")
    d, levels = target.dim, [float(a) for a in path]
    for a_t, a_prev in zip(levels[:-1], levels[1:]):
        for tr in transitions(a_t, a_prev):

            def fn(x, z, tr=tr, a_t=a_t):
                return tr.rule(x, target.eps(x, a_t) if tr.evaluates else None, z)

            law = _push(law, *_joint_affine(fn, d))
    return law


def gaussian_output_law(
    target: Gaussian,
    path,
    method: str,
    start: str = "exact",
    *,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact ``(mean, cov)`` of a sampler's output on a Gaussian target, started from ``q_T`` itself
    (``start="exact"``: no initialisation error) or from ``N(0, I)`` (``start="standard"``, as in practice).

    Deterministic samplers: the output is an affine map ``A x + b`` of the start (:func:`metrics.affine_map`
    applied to :func:`accelerated_diffusion.sample`), so its law is ``N(A m_T + b, A S_T A^T)``.  Stochastic samplers: see
    :func:`_stochastic_law`.  ``affine`` passes a precomputed ``(A, b)`` of a deterministic sampler."""
    path = validate_path(path)
    a_T, d = float(path[0]), target.dim
    if start == "exact":
        law = (target.marginal_mean(a_T), target.marginal_cov(a_T))
    elif start == "standard":
        law = (torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))
    else:
        raise ValueError(f"start must be 'exact' or 'standard', got {start!r}")
    if samplers.spec(method).stochastic:
        return _stochastic_law(target, path, method, law)
    A, b = _sampler_map(target, path, method) if affine is None else affine
    return A @ law[0] + b, A @ law[1] @ A.T


def _sampler_map(target: Gaussian, path, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, b)`` of a deterministic sampler on a Gaussian target (:func:`metrics.affine_map`)."""
    return metrics.affine_map(lambda x: sample(target.eps, x, path, method), target.dim)


def gaussian_errors(target: Gaussian, path, method: str, *, exact_tv: bool = False) -> dict:
    r"""Closed-form errors of ``method`` on ``path`` for a Gaussian target, output level ``a_out = path[-1]``:

    * ``kl``: ``KL(q_out || p_out)`` with the sampler started from the exact ``q_T`` (discretisation error only);
    * ``tv_upper``: Pinsker's bound ``sqrt(kl / 2) >= TV(q_out, p_out)`` (for nearby Gaussians TV and
      ``sqrt(KL)`` agree up to constant factors, so it has TV's rate);
    * ``tv`` (with ``exact_tv``, else None): ``TV(q_out, p_out)`` itself, by :func:`gaussian_tv`;
    * ``w2``: the 2-Wasserstein distance, started from ``q_T``;
    * ``kl_standard_start``: ``KL(q_out || p_out)`` started from ``N(0, I)`` (adds the initialisation error);
    * ``kl_init``: ``KL(q_T || N(0, I))``, the initialisation error itself;
    * ``rms_flow`` (deterministic samplers): ``sqrt(E ||Phi(x) - Phi*(x)||^2)`` over ``x ~ q_T``, the per-sample
      distance to the exact probability-flow map :func:`exact_flow_map` (closed form for affine maps).
    """
    path = validate_path(path)
    a_T, a_out, d = float(path[0]), float(path[-1]), target.dim
    mq, Cq = target.marginal_mean(a_out), target.marginal_cov(a_out)
    affine = None if samplers.spec(method).stochastic else _sampler_map(target, path, method)
    mp, Cp = gaussian_output_law(target, path, method, "exact", affine=affine)
    ms, Cs = gaussian_output_law(target, path, method, "standard", affine=affine)
    mT, CT = target.marginal_mean(a_T), target.marginal_cov(a_T)
    kl = max(metrics.gaussian_kl(mq, Cq, mp, Cp), 0.0)
    out = {
        "kl": kl,
        "tv_upper": math.sqrt(kl / 2),
        "tv": gaussian_tv(mq, Cq, mp, Cp) if exact_tv else None,
        "w2": metrics.gaussian_w2(mq, Cq, mp, Cp),
        "kl_standard_start": max(metrics.gaussian_kl(mq, Cq, ms, Cs), 0.0),
        "kl_init": metrics.gaussian_kl(mT, CT, torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)),
        "rms_flow": None,
    }
    if affine is not None:
        A, b = affine
        As, bs = exact_flow_map(target, a_T, a_out)
        dA, db = A - As, b - bs
        out["rms_flow"] = math.sqrt(
            float((dA @ metrics.psd_power(CT, 0.5)).square().sum() + (dA @ mT + db).square().sum())
        )
    return out


def gaussian_rate_sweep(
    target: Gaussian, schedule: str, Ts, methods=SAMPLERS, *, progress: bool = True, exact_tv: bool = False, **path_kw
) -> dict:
    """Errors of :func:`gaussian_errors` for every ``T`` in ``Ts`` and sampler: ``{method: {"T", "nfe", metric:
    [...]}}``."""
    for m in methods:
        samplers.spec(m)  # unknown names raise before any work
    res = {m: {"T": [], "nfe": []} for m in methods}
    for T in tqdm(list(Ts), desc=f"gaussian d={target.dim} {schedule}", disable=not progress, leave=False):
        path = make_path(schedule, int(T), **path_kw)
        for m in methods:
            errs = gaussian_errors(target, path, m, exact_tv=exact_tv)
            res[m]["T"].append(int(T))
            res[m]["nfe"].append(int(path.numel() - 1))
            for k, v in errs.items():
                res[m].setdefault(k, []).append(v)
    return res


# --------------------------------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------------------------------
def fit_slope(x, y, *, x_min: float | None = None, x_max: float | None = None, level: float = 0.95) -> dict:
    r"""Least-squares fit ``log y = intercept + slope log x`` over the points with ``x_min <= x <= x_max`` and
    ``y > 0``; returns ``slope``, a ``level`` t-interval ``ci = [lo, hi]`` (from the residuals: for exact,
    noise-free errors it measures how far the points are from a power law, not noise), ``intercept`` and the
    points used.  Raises ``ValueError`` with fewer than 3 usable points."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray([np.nan if v is None else v for v in y], dtype=float)
    keep = np.isfinite(y) & (y > 0) & (x >= (x_min or -np.inf)) & (x <= (x_max or np.inf))
    if keep.sum() < 3:
        raise ValueError(f"need at least 3 positive points to fit a slope, got {int(keep.sum())}")
    lx, ly = np.log(x[keep]), np.log(y[keep])
    fit = stats.linregress(lx, ly)
    half = stats.t.ppf(0.5 + level / 2, keep.sum() - 2) * fit.stderr
    return {
        "slope": float(fit.slope),
        "ci": [float(fit.slope - half), float(fit.slope + half)],
        "intercept": float(fit.intercept),
        "x_used": x[keep].tolist(),
        "level": level,
    }


# --------------------------------------------------------------------------------------------------------------
# Mixtures: Monte Carlo errors with confidence intervals
# --------------------------------------------------------------------------------------------------------------
def two_d_mixture(num_modes: int = 6, radius: float = 2.0, std: float = 0.2, seed: int = 0) -> GaussianMixture:
    r"""A two-dimensional mixture with well separated modes: ``num_modes`` isotropic components of standard
    deviation ``std`` on a circle of radius ``radius``, with unequal weights ``proportional to 1..num_modes`` in a
    seeded random order (so that a sampler's mode-mass errors are visible)."""
    g = torch.Generator().manual_seed(seed)
    angles = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    weights = torch.arange(1, num_modes + 1, dtype=torch.float64)[torch.randperm(num_modes, generator=g)]
    covs = (std**2 * torch.eye(2, dtype=torch.float64)).expand(num_modes, 2, 2).clone()
    return GaussianMixture(weights, means, covs)


def flow_reference(
    target: GaussianMixture,
    x: torch.Tensor,
    alpha_bar_in: float,
    alpha_bar_out: float,
    num_steps: int = 1000,
    method: str = "dpm_solver_pp_2m",
    progress: bool = False,
) -> torch.Tensor:
    r"""High-accuracy solution of the probability-flow ODE from ``alpha_bar_in`` to ``alpha_bar_out`` for the
    starting points ``x``: DPM-Solver++(2M) with ``num_steps`` steps uniform in ``lambda`` (:mod:`.peers`).  When
    ``alpha_bar_out = 1`` the last uniform level is ``1 - 1e-12`` and the final (first-order) jump to 1 returns the
    data prediction there, whose error is ``O(1e-12)``.  Check convergence by comparing two ``num_steps``."""
    top = alpha_bar_out if alpha_bar_out < 1.0 else 1.0 - 1e-12
    lam = torch.linspace(
        updates.half_log_snr(alpha_bar_in), updates.half_log_snr(top), num_steps + 1, dtype=torch.float64
    )
    path = torch.sigmoid(2 * lam)  # abar = sigmoid(2 lambda)
    path[0], path[-1] = alpha_bar_in, top
    if alpha_bar_out == 1.0:
        path = torch.cat([path, torch.ones(1, dtype=torch.float64)])
    return sample(target.eps, x, path, method, progress=progress)


def _mean_ci(v: torch.Tensor, level: float) -> tuple[float, float]:
    from scipy import stats

    v = v.double()
    n = v.numel()
    half = stats.t.ppf(0.5 + level / 2, n - 1) * float(v.std()) / math.sqrt(n)
    return float(v.mean()), half


def rms_with_ci(y: torch.Tensor, ref: torch.Tensor, level: float = 0.95) -> dict:
    r"""Root-mean-square distance ``sqrt(mean ||y_i - ref_i||^2)`` of paired samples, with a ``level`` interval:
    the t-interval of the mean squared distance (i.i.d. terms), mapped through ``sqrt``."""
    sq = (y - ref).reshape(y.shape[0], -1).double().square().sum(1)
    mean, half = _mean_ci(sq, level)
    return {"value": math.sqrt(mean), "ci": [math.sqrt(max(mean - half, 0.0)), math.sqrt(mean + half)]}


def median_with_ci(y: torch.Tensor, ref: torch.Tensor, level: float = 0.95) -> dict:
    r"""Median of the per-sample distances ``||y_i - ref_i||`` with a distribution-free ``level`` interval: the
    order statistics ``k_lo, k_hi`` with ``P(k_lo <= B < k_hi) >= level`` for ``B ~ Binomial(n, 1/2)``.  Unlike
    the RMS it is not dominated by a few samples that end on another mode than the reference."""
    from scipy import stats

    dist = torch.sort((y - ref).reshape(y.shape[0], -1).double().norm(dim=1)).values
    n = dist.numel()
    lo = int(stats.binom.ppf((1 - level) / 2, n, 0.5))
    hi = min(int(stats.binom.isf((1 - level) / 2, n, 0.5)), n - 1)
    return {"value": float(dist.median()), "ci": [float(dist[max(lo - 1, 0)]), float(dist[hi])]}


def _smoothed(target: GaussianMixture, ell2: float) -> GaussianMixture:
    """The mixture convolved with ``N(0, ell2 I)`` (covariances ``Sigma_k + ell2 I``), on flat ``(n, d)`` inputs."""
    if target.covs is not None:
        eye = torch.eye(target.dim, dtype=target.dtype)
        return GaussianMixture(target.weights, target.means, target.covs + ell2 * eye)
    return GaussianMixture(target.weights, target.means, factors=target.factors, diag=target.diag + ell2)


def _kernel_target_terms(target: GaussianMixture, ell2: float) -> tuple[GaussianMixture, float]:
    r"""For ``k(x, y) = exp(-|x - y|^2 / (2 ell2))``: the mixture ``q * N(0, ell2 I)`` (so that
    ``E_{x~q} k(y, x) = (2 pi ell2)^{d/2} q_ell(y)``) and ``E_{x, x' ~ q} k(x, x')`` (exact double sum over the
    component pairs, ``N(m_k - m_l; 0, Sigma_k + Sigma_l + ell2 I)``)."""
    d, K = target.dim, target.num_components
    const = 0.5 * d * math.log(2 * math.pi * ell2)
    total = torch.zeros((), dtype=torch.float64)
    for k in range(K):
        if target.covs is not None:
            pair = GaussianMixture(
                target.weights, target.means, target.covs + target.covs[k] + ell2 * torch.eye(d, dtype=target.dtype)
            )
        else:
            fac = torch.cat([target.factors, target.factors[k].expand_as(target.factors)], -1)
            pair = GaussianMixture(target.weights, target.means, factors=fac, diag=target.diag + target.diag[k] + ell2)
        # E_{x ~ comp k, x' ~ q} k(x, x') = (2 pi ell2)^{d/2} sum_l w_l N(m_k; m_l, S_k + S_l + ell2 I)
        total = total + target.weights[k] * torch.exp(const + pair.log_prob(target.means[k][None], 1.0)[0])
    return _smoothed(target, ell2), float(total)


def mmd2_with_ci(
    y: torch.Tensor, target: GaussianMixture, ell: float, *, num_batches: int = 10, level: float = 0.95
) -> dict:
    r"""Squared maximum mean discrepancy between the law of the samples ``y`` and the mixture ``target``, Gaussian
    kernel of bandwidth ``ell``:

    .. math:: \mathrm{MMD}^2 = \mathbb E\,k(Y, Y') - 2\,\mathbb E\,k(Y, X) + \mathbb E\,k(X, X'),

    with the two target terms exact (:func:`_kernel_target_terms`) and ``E k(Y, Y')`` a U-statistic.  The samples
    are split into ``num_batches`` batches, each giving an unbiased estimate; the interval is the t-interval of
    their mean (batch means), so it needs no asymptotics of U-statistics.  Can be negative within the noise."""
    flat = y.reshape(y.shape[0], -1).double()
    n = flat.shape[0] // num_batches
    if n < 2:
        raise ValueError(f"need at least 2 samples per batch, got {flat.shape[0]} samples for {num_batches} batches")
    smooth, kqq = _kernel_target_terms(target, ell**2)
    const = 0.5 * target.dim * math.log(2 * math.pi * ell**2)
    kq = torch.exp(const + smooth.log_prob(flat[: n * num_batches], 1.0))
    ests = []
    for b in range(num_batches):
        yb = flat[b * n : (b + 1) * n]
        kyy = torch.exp(-torch.cdist(yb, yb).square() / (2 * ell**2))
        ests.append(
            float((kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))) - 2 * float(kq[b * n : (b + 1) * n].mean()) + kqq
        )
    mean, half = _mean_ci(torch.tensor(ests), level)
    return {"value": mean, "ci": [mean - half, mean + half]}


def mixture_rate_sweep(
    target: GaussianMixture,
    schedule: str,
    Ts,
    methods=SAMPLERS,
    *,
    num_samples: int = 2000,
    ell: float = 1.0,
    ref_steps: int = 1000,
    seed: int = 0,
    num_batches: int = 10,
    progress: bool = True,
    **path_kw,
) -> dict:
    r"""Monte Carlo errors on a mixture for every ``T`` and sampler, from the exact ``q_T`` (the same seeded start
    for all samplers): ``rms_flow`` and ``median_flow`` (deterministic samplers: distance to
    :func:`flow_reference`, root-mean-square and median over the samples) and ``mmd2``
    (all samplers), each ``{"value", "ci"}``; also ``ref_check``, the RMS difference between the reference
    with ``ref_steps`` and with ``2 ref_steps`` steps (its own accuracy)."""
    stochastic = {m: samplers.spec(m).stochastic for m in methods}  # unknown names raise before any work
    res = {m: {"T": [], "nfe": [], "rms_flow": [], "median_flow": [], "mmd2": []} for m in methods}
    res["ref_check"] = []
    refs: dict = {}  # (a_T, a_out) -> (x, reference): paths with the same end points share the reference
    for T in tqdm(list(Ts), desc=f"mixture d={target.dim} {schedule}", disable=not progress, leave=False):
        path = make_path(schedule, int(T), **path_kw)
        a_T, a_out = float(path[0]), float(path[-1])
        if (a_T, a_out) not in refs:
            x = target.sample(num_samples, a_T, generator=torch.Generator().manual_seed(seed))
            ref = flow_reference(target, x, a_T, a_out, ref_steps)
            check = rms_with_ci(ref, flow_reference(target, x, a_T, a_out, 2 * ref_steps))["value"]
            refs[(a_T, a_out)] = (x, ref, check)
        x, ref, check = refs[(a_T, a_out)]
        res["ref_check"].append(check)
        for i, m in enumerate(methods):
            y = sample(target.eps, x, path, m, generator=torch.Generator().manual_seed(seed + 1 + i))
            res[m]["T"].append(int(T))
            res[m]["nfe"].append(int(path.numel() - 1))
            res[m]["rms_flow"].append(None if stochastic[m] else rms_with_ci(y, ref))
            res[m]["median_flow"].append(None if stochastic[m] else median_with_ci(y, ref))
            res[m]["mmd2"].append(mmd2_with_ci(y, _target_at(target, a_out), ell, num_batches=num_batches))
    return res


def _target_at(target: GaussianMixture, alpha_bar: float) -> GaussianMixture:
    """The forward marginal ``q_abar`` of a mixture, as a mixture (means ``sqrt(abar) m_k``, covariances
    ``abar Sigma_k + (1 - abar) I``)."""
    if alpha_bar == 1.0:
        return target
    a = float(alpha_bar)
    if target.covs is not None:
        return GaussianMixture(
            target.weights, math.sqrt(a) * target.means, target.covariance(a), event_shape=target.event_shape
        )
    return GaussianMixture(
        target.weights,
        math.sqrt(a) * target.means,
        factors=math.sqrt(a) * target.factors,
        diag=a * target.diag + (1 - a),
        event_shape=target.event_shape,
    )


# --------------------------------------------------------------------------------------------------------------
# Fashion-MNIST as a Gaussian mixture
# --------------------------------------------------------------------------------------------------------------
def fit_fashion_mnist_mixture(rank: int = 16, diag_floor: float = 1e-3, split: str = "train") -> GaussianMixture:
    r"""One Gaussian per Fashion-MNIST class, fitted to the images scaled to ``[-1, 1]`` (``d = 784``):

    ``m_c`` = class mean; ``Sigma_c = U_c U_c^T + diag(D_c)`` with ``U_c = V_r Lambda_r^{1/2}`` the top-``rank``
    principal directions of the class (eigen-decomposition of the class covariance) and ``D_c`` the per-pixel variance left
    over, floored at ``diag_floor`` (border pixels are constant; the floor keeps the covariance invertible).
    Weights are the class frequencies.  Deterministic (no randomness), float64.  The event shape is
    ``(1, 28, 28)``."""

    if rank < 1 or diag_floor <= 0:
        raise ValueError(f"need rank >= 1 and diag_floor > 0, got rank={rank}, diag_floor={diag_floor}")
    images, labels = load_fashion_mnist(split)
    x = images.reshape(images.shape[0], -1).double() / 127.5 - 1.0
    weights, means, factors, diags = [], [], [], []
    for c in range(10):
        xc = x[labels == c]
        m = xc.mean(0)
        cov = (xc - m).T @ (xc - m) / (xc.shape[0] - 1)
        eig, vec = torch.linalg.eigh(cov)  # ascending; the top-`rank` principal directions are the last columns
        u = vec[:, -rank:].flip(-1) * eig[-rank:].flip(-1).clamp(min=0).sqrt()
        resid = torch.diagonal(cov) - u.square().sum(1)
        weights.append(float(xc.shape[0]))
        means.append(m)
        factors.append(u)
        diags.append(resid.clamp(min=diag_floor))
    return GaussianMixture(
        torch.tensor(weights),
        torch.stack(means),
        factors=torch.stack(factors),
        diag=torch.stack(diags),
        event_shape=(1, 28, 28),
    )
