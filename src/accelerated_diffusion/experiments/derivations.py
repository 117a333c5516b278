r"""Symbolic derivations (sympy) of every update rule in :mod:`accelerated_diffusion.updates`.

This module is the *derivation* half of the book: each function below starts from the diffusion process and
returns a sympy expression for a coefficient, a whole step, a series expansion or a moment.  The derivation
chapters (``chapters/background.ipynb`` ... ``chapters/theory.ipynb``) call these functions and display the
results; ``tests/test_derivations.py`` lambdifies every final formula and compares it with the corresponding
function of :mod:`accelerated_diffusion.updates` on random inputs.  So each derivation is written once.

Notation (Li et al. 2024; dpm-solver style names)
-------------------------------------------------
* ``alpha_bar`` (:math:`\bar\alpha`): signal level, ``X = sqrt(abar) X_0 + sqrt(1 - abar) N(0, I)``;
  ``alpha_bar_t`` (current level), ``alpha_bar_prev`` (:math:`\bar\alpha_{t-1}`, the less noisy target level),
  ``alpha_bar_next`` (:math:`\bar\alpha_{t+1}`, the noisier level of the previous iterate);
* ``alpha_t = alpha_bar_t / alpha_bar_prev`` (the paper's per-step :math:`\alpha_t`) and the *step size*
  ``h = 1 - alpha_t`` (the paper's learning rate :math:`\beta_t`) in which every series is written;
* ``sigma = sqrt((1 - abar) / abar)``: the noise-to-signal ratio (DDIM's / EDM's :math:`\sigma`; not
  DPM-Solver's :math:`\sigma_t = \sqrt{1-\bar\alpha_t}`), in which the probability-flow ODE reads
  ``dy = eps d sigma`` with ``y = x / sqrt(abar)``; note ``abar = 1 / (1 + sigma^2)``;
* ``lambda_ = log(sqrt(abar) / sqrt(1 - abar)) = -log(sigma)``: DPM-Solver's half log-SNR;
* ``s``: score :math:`s_t(x)=\nabla\log q_t(x)`; ``eps``: noise prediction, ``s = -eps / sqrt(1 - abar)``.

Contents
--------
* background: forward marginals, score / eps / x0 conversions (Tweedie), the probability-flow ODE;
* baselines: the exponential-Euler discretisation that gives the paper's DDPM-type and DDIM-type updates, exact
  DDIM as the exact integral of ``dy = eps d sigma`` with ``eps`` frozen, series in ``h``;
* accelerated ODE: the correction from integrating ``dy = eps d sigma`` exactly with ``eps`` extrapolated linearly
  in a chosen variable (``alpha_bar`` gives the paper's arcsin coefficient, ``lambda_`` and ``sigma`` give the
  DPM-Solver-type and Adams-Bashforth-type relatives), local truncation errors on a Gaussian test problem;
* safeguarded accelerated ODE: the ``lambda_`` extrapolation (sampler ``accelerated_ode_lambda``) and the paper's
  extrapolation in ``alpha_bar`` saturated after ``rho`` times the last interval (:func:`capped_correction`,
  sampler ``accelerated_ode_capped``);
* accelerated SDE: one-step moments on a Gaussian target, compared with the exact reverse transition.

Everything here is the book's own derivation; where a rule is *defined* by the paper or its official code
(the DDPM-type and DDIM-type baselines, the half-variance injections ``Phi_t``/``Psi_t``), the docstring says so.
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp
import torch

from .. import samplers, updates

__all__ = [
    # symbols
    "alpha_bar",
    "alpha_bar_t",
    "alpha_bar_prev",
    "alpha_bar_next",
    "alpha_t",
    "h",
    "r",
    "sigma_",
    "sigma_t",
    "sigma_prev",
    "sigma_next",
    "x",
    "x0",
    "y",
    "eps",
    "eps_next",
    "score",
    "z",
    "z_plus",
    "data_mean",
    "data_var",
    "var_t",
    # background
    "sigma_of",
    "alpha_bar_of_sigma",
    "lambda_of_sigma",
    "forward_variance_recursion",
    "gaussian_marginal",
    "gaussian_score",
    "eps_x0_score_conversions",
    "tweedie_check",
    "probability_flow_ode",
    "probability_flow_gaussian_residual",
    "probability_flow_from_fokker_planck",
    # display and random inputs of the chapters' code comparisons
    "show",
    "random_levels",
    # baselines
    "exponential_euler_step",
    "eps_form",
    "eps_form_coefficients",
    "ddpm_type_coefficients",
    "ddim_type_coefficients",
    "ddpm_type_mean_residual",
    "exact_ddim_coefficients",
    "with_step_size",
    "series_in_h",
    "baseline_coefficient_series",
    # accelerated ODE
    "EXTRAPOLATION_VARIABLES",
    "extrapolated_correction",
    "in_alpha_bar",
    "accelerated_ode_coefficient",
    "accelerated_ode_lambda_coefficient",
    "max_ratio",
    "alpha_bar_star",
    "sigma_star",
    "capped_correction",
    "capped_correction_checks",
    "atan_sigma_identity_residual",
    "ode_step",
    "ODE_METHODS",
    "ode_step_sigma",
    "gaussian_ode_problem",
    "ode_local_error",
    "correction_coefficient_series",
    "correction_comparison_series",
    # accelerated SDE
    "accelerated_sde_noise_scale",
    "accelerated_sde_perturb",
    "accelerated_sde_step",
    "ddpm_type_step_score_form",
    "STOCHASTIC_METHODS",
    "one_step_moments",
    "exact_reverse_moments",
    "moment_error_series",
]

# ----------------------------------------------------------------------------------------------------------------
# Symbols
# ----------------------------------------------------------------------------------------------------------------
alpha_bar, alpha_bar_t, alpha_bar_prev, alpha_bar_next = sp.symbols(
    r"\bar\alpha \bar\alpha_t \bar\alpha_{t-1} \bar\alpha_{t+1}", positive=True
)
alpha_t = sp.Symbol(r"\alpha_t", positive=True)
h = sp.Symbol("h", positive=True)  #: step size 1 - alpha_t (the paper's learning rate beta_t)
r = sp.Symbol("r", positive=True)  #: ratio of the previous step to the current one (multistep methods)
sigma_, sigma_t, sigma_prev, sigma_next = sp.symbols(r"\sigma \sigma_t \sigma_{t-1} \sigma_{t+1}", positive=True)
x, x0, y, eps, eps_next, score, z, z_plus = sp.symbols(
    r"x x_0 y_t \varepsilon_t \varepsilon_{t+1} s_t Z_t Z_t^+", real=True
)
#: the cap of the safeguarded correction (extrapolation ratio), and the level / sigma where it saturates
max_ratio = sp.Symbol(r"\rho", nonnegative=True)
alpha_bar_star, sigma_star = sp.symbols(r"\bar\alpha_* \sigma_*", positive=True)
data_mean = sp.Symbol("m", real=True)  #: mean of a one-dimensional Gaussian target
data_var = sp.Symbol("v", positive=True)  #: variance of a one-dimensional Gaussian target
var_t = sp.Symbol(r"\varsigma_t^2", positive=True)  #: variance of q_t for a Gaussian target, abar v + 1 - abar


# ----------------------------------------------------------------------------------------------------------------
# Background
# ----------------------------------------------------------------------------------------------------------------
def sigma_of(a):
    r"""Noise-to-signal ratio :math:`\sigma(\bar\alpha) = \sqrt{(1 - \bar\alpha)/\bar\alpha}`."""
    return sp.sqrt((1 - a) / a)


def alpha_bar_of_sigma(s):
    r"""Inverse of :func:`sigma_of`: :math:`\bar\alpha = 1/(1 + \sigma^2)`."""
    return 1 / (1 + s**2)


def lambda_of_sigma(s):
    r"""DPM-Solver's half log-SNR :math:`\lambda = \log(\sqrt{\bar\alpha}/\sqrt{1-\bar\alpha}) = -\log\sigma`."""
    return -sp.log(s)


def forward_variance_recursion() -> dict:
    r"""Marginal of the forward process by induction (eq. ``deriv-forward-marginal`` of the Background chapter).

    If :math:`X_{t-1} = \sqrt{\bar\alpha_{t-1}}X_0 + \sqrt{1-\bar\alpha_{t-1}}\,W` then
    :math:`X_t = \sqrt{\alpha_t}X_{t-1} + \sqrt{1-\alpha_t}W_t` has signal coefficient
    :math:`\sqrt{\alpha_t\bar\alpha_{t-1}}` and noise variance :math:`\alpha_t(1-\bar\alpha_{t-1}) + 1 - \alpha_t`.
    Returns both, and their residuals against :math:`\sqrt{\bar\alpha_t}` and :math:`1-\bar\alpha_t` with
    :math:`\bar\alpha_t = \alpha_t\bar\alpha_{t-1}` (both simplify to 0).
    """
    signal = sp.sqrt(alpha_t) * sp.sqrt(alpha_bar_prev)
    noise_var = alpha_t * (1 - alpha_bar_prev) + (1 - alpha_t)
    abar_new = alpha_t * alpha_bar_prev
    return {
        "signal": signal,
        "noise_variance": noise_var,
        "signal_residual": sp.simplify(signal - sp.sqrt(abar_new)),
        "variance_residual": sp.simplify(sp.expand(noise_var - (1 - abar_new))),
    }


def gaussian_marginal(a=alpha_bar, m=data_mean, v=data_var) -> tuple:
    r"""Mean and variance of :math:`q_{\bar\alpha}` for a 1-D target :math:`\mathcal N(m, v)`:
    :math:`(\sqrt{\bar\alpha}\,m,\ \bar\alpha v + 1 - \bar\alpha)`."""
    return sp.sqrt(a) * m, a * v + 1 - a


def gaussian_score(y, mean, var):
    r"""Score of :math:`\mathcal N(\mathrm{mean}, \mathrm{var})` at ``y``: :math:`-(y - \mathrm{mean})/\mathrm{var}`."""
    return -(y - mean) / var


def eps_x0_score_conversions(a=alpha_bar) -> dict:
    r"""Solve :math:`x = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,\varepsilon` for ``x0`` and ``eps``, and the
    score from the noise (eq. ``deriv-eps-score``): :math:`s = -\varepsilon/\sqrt{1-\bar\alpha}`.

    The score relation is Tweedie's formula :math:`\mathbb E[X_0\mid X=x] = (x + (1-\bar\alpha)s(x))/\sqrt{\bar\alpha}`
    written with :math:`\varepsilon = \mathbb E[W \mid X = x]`; see :func:`tweedie_check`.
    Returns expressions in the symbols ``x``, ``x0``, ``eps``, ``score``.
    """
    forward = sp.Eq(x, sp.sqrt(a) * x0 + sp.sqrt(1 - a) * eps)
    x0_of_eps = sp.solve(forward, x0)[0]
    eps_of_x0 = sp.solve(forward, eps)[0]
    tweedie_x0 = (x + (1 - a) * score) / sp.sqrt(a)
    # eps such that x0_of_eps equals Tweedie's denoiser:
    eps_of_score = sp.solve(sp.Eq(x0_of_eps, tweedie_x0), eps)[0]
    return {
        "x0_of_eps": x0_of_eps,
        "eps_of_x0": eps_of_x0,
        "eps_of_score": sp.simplify(eps_of_score),
        "score_of_eps": sp.solve(sp.Eq(eps, eps_of_score), score)[0],
    }


def tweedie_check(a=alpha_bar) -> dict:
    r"""Tweedie's formula on a Gaussian target, checked against Gaussian conditioning.

    For :math:`X_0\sim\mathcal N(m, v)` and :math:`X = \sqrt{\bar\alpha}X_0 + \sqrt{1-\bar\alpha}W`, Gaussian
    conditioning gives :math:`\mathbb E[X_0\mid X=x] = m + \frac{\sqrt{\bar\alpha}v}{\bar\alpha v + 1-\bar\alpha}
    (x - \sqrt{\bar\alpha}m)`; Tweedie gives :math:`(x + (1-\bar\alpha)\nabla\log q(x))/\sqrt{\bar\alpha}`.
    Returns both and their simplified difference (0).
    """
    mean_x, var_x = gaussian_marginal(a)
    conditioning = data_mean + sp.sqrt(a) * data_var / var_x * (x - mean_x)
    tweedie = (x + (1 - a) * gaussian_score(x, mean_x, var_x)) / sp.sqrt(a)
    return {"conditioning": conditioning, "tweedie": tweedie, "residual": sp.simplify(conditioning - tweedie)}


def probability_flow_ode() -> dict:
    r"""The probability-flow ODE in the discrete (``alpha_bar``) parametrisation (eq. ``deriv-pf-ode``).

    Start from the DDIM form :math:`dy = \varepsilon\,d\sigma` with :math:`y = x/\sqrt{\bar\alpha}` (Song et al.
    2021a, eq. 14) and change variables with the chain rule: :math:`x = \sqrt{\bar\alpha}\,y`, so
    :math:`dx/d\bar\alpha = y/(2\sqrt{\bar\alpha}) + \sqrt{\bar\alpha}\,\varepsilon\,d\sigma/d\bar\alpha`;
    substituting :math:`\varepsilon = -\sqrt{1-\bar\alpha}\,s` gives :math:`dx/d\bar\alpha = (x + s)/(2\bar\alpha)`,
    i.e. with :math:`d\bar\alpha = -\beta\bar\alpha\,dt` the VP probability-flow ODE
    :math:`dx/dt = -\tfrac{\beta}{2}(x + s)` of Song et al. (2021b).
    """
    y = x / sp.sqrt(alpha_bar)
    dsigma = sp.diff(sigma_of(alpha_bar), alpha_bar)
    dx_da = (
        sp.diff(sp.sqrt(alpha_bar) * sp.Symbol("y"), alpha_bar).subs(sp.Symbol("y"), y)
        + sp.sqrt(alpha_bar) * eps * dsigma
    )
    dx_da_score = sp.simplify(dx_da.subs(eps, -sp.sqrt(1 - alpha_bar) * score))
    return {
        "dx_dalpha_bar_eps": sp.simplify(dx_da),
        "dx_dalpha_bar": dx_da_score,
        "residual": sp.simplify(dx_da_score - (x + score) / (2 * alpha_bar)),
    }


def probability_flow_gaussian_residual():
    r"""Check that the probability-flow ODE transports the marginals of a Gaussian target.

    For :math:`X_0\sim\mathcal N(m, v)` the map :math:`x(\bar\alpha) = \sqrt{\bar\alpha}\,m + c\sqrt{\bar\alpha v +
    1 - \bar\alpha}` (``c`` a standardised starting point) pushes :math:`q_{\bar\alpha}` to :math:`q_{\bar\alpha'}`;
    it must solve :math:`dx/d\bar\alpha = (x + s(x, \bar\alpha))/(2\bar\alpha)`.  Returns the residual (0).
    """
    c = sp.Symbol("c", real=True)
    mean_a, var_a = gaussian_marginal(alpha_bar)
    path = mean_a + c * sp.sqrt(var_a)
    rhs = probability_flow_ode()["dx_dalpha_bar"].subs(score, gaussian_score(x, mean_a, var_a)).subs(x, path)
    return sp.simplify(sp.diff(path, alpha_bar) - rhs)


def probability_flow_from_fokker_planck() -> dict:
    r"""The probability-flow ODE derived from the forward SDE (eqs. ``deriv-forward-sde`` to ``deriv-pf-ode``).

    In the time :math:`\tau = -\log\bar\alpha` the forward process is the Ornstein-Uhlenbeck SDE
    :math:`dX = -\tfrac12 X\,d\tau + dB_\tau` (its transition has mean :math:`e^{-\tau/2}x_0 = \sqrt{\bar\alpha}\,x_0`
    and variance :math:`1 - e^{-\tau} = 1 - \bar\alpha`).  Its Fokker-Planck equation (one dimension; the
    d-dimensional case is the same per coordinate) is
    :math:`\partial_\tau q = \partial_x\big(\tfrac12 x q\big) + \tfrac12\partial_x^2 q
    = \partial_x\big(\tfrac12 (x + \partial_x\log q)\, q\big)`, which is the continuity equation
    :math:`\partial_\tau q + \partial_x(v q) = 0` of the deterministic flow with velocity
    :math:`v = -\tfrac12(x + s)`.  With :math:`d\tau/d\bar\alpha = -1/\bar\alpha` this is
    :math:`dx/d\bar\alpha = (x + s)/(2\bar\alpha)`.

    Returns ``fokker_planck`` (the right-hand side for a generic density), ``velocity_tau``,
    ``continuity_residual`` (Fokker-Planck minus the continuity equation of the flow, 0 for any density),
    ``gaussian_fp_residual`` (the Gaussian marginals of ``N(m, v)`` data solve the Fokker-Planck equation, 0),
    ``dx_dalpha_bar`` and ``residual`` against ``(x + s) / (2 alpha_bar)`` (0).
    """
    tau = sp.Symbol("tau", positive=True)
    q = sp.Function("q")(x, tau)
    fokker_planck = sp.diff(x * q / 2, x) + sp.diff(q, x, 2) / 2
    velocity = -(x + sp.diff(q, x) / q) / 2  # -(x + d/dx log q) / 2
    continuity_residual = sp.simplify(fokker_planck + sp.diff(velocity * q, x))
    mean_a, var_a = gaussian_marginal(sp.exp(-tau))
    density = sp.exp(-((x - mean_a) ** 2) / (2 * var_a)) / sp.sqrt(2 * sp.pi * var_a)
    fp_gauss = fokker_planck.subs(q, density).doit()
    gaussian_fp_residual = sp.simplify((sp.diff(density, tau) - fp_gauss) / density)
    # change of time: tau = -log(alpha_bar), so d tau / d alpha_bar = -1 / alpha_bar
    dtau_da = sp.diff(-sp.log(alpha_bar), alpha_bar)
    dx_da = sp.simplify(-(x + score) / 2 * dtau_da)
    return {
        "fokker_planck": fokker_planck,
        "velocity_tau": -(x + score) / 2,
        "continuity_residual": continuity_residual,
        "gaussian_fp_residual": gaussian_fp_residual,
        "dx_dalpha_bar": dx_da,
        "residual": sp.simplify(dx_da - (x + score) / (2 * alpha_bar)),
    }


def random_levels(
    generator: torch.Generator, count: int = 2, *, min_gap: float = 1e-3, low: float = 0.01, high: float = 0.99
) -> list[float]:
    """``count`` increasing signal levels ``alpha_bar`` drawn uniformly in ``(low, high)`` with ``generator``,
    redrawn until consecutive levels are at least ``min_gap`` apart: the random steps on which the chapters
    compare a lambdified derivation with the library (noisiest level first)."""
    if count < 1 or not 0.0 < low < high < 1.0 or min_gap * (count - 1) >= high - low:
        raise ValueError(f"cannot draw {count} levels in ({low}, {high}) at least {min_gap} apart")
    while True:
        u = torch.rand(count, dtype=torch.float64, generator=generator) * (high - low) + low
        levels = torch.sort(u).values.tolist()
        if all(b - a >= min_gap for a, b in zip(levels, levels[1:])):
            return levels


def show(label: str, expr) -> None:
    """Print ``label:`` and display the sympy expression ``expr`` as LaTeX (rendered by MathJax in the book)."""
    from IPython.display import Math, display  # optional: only the book's kernels need it

    print(label + ":")
    display(Math(sp.latex(expr)))


# ----------------------------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------------------------
def exponential_euler_step(score_weight, noise_weight):
    r"""One step of the exponential-Euler discretisation of :math:`dx = \beta\,(x/2 + \kappa s)\,dt + \nu\sqrt\beta\,dB`
    from level ``t`` to ``t-1`` (eq. ``deriv-exp-euler``):

    .. math:: Y_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(Y_t + \kappa\,(1-\alpha_t)\,s_t(Y_t) + \nu\sqrt{1-\alpha_t}\,Z_t\Big).

    The linear part :math:`\beta x/2` is integrated exactly (factor :math:`1/\sqrt{\alpha_t}`), the score and noise
    increments are frozen at the start point with :math:`\int\beta\,dt \approx 1-\alpha_t`.  ``score_weight=1,
    noise_weight=1`` (the reverse SDE) is the paper's DDPM-type update, ``score_weight=1/2, noise_weight=0`` (the
    probability-flow ODE) its DDIM-type update; this reading as one scheme is the book's.  Expression in the
    symbols ``x`` (= :math:`Y_t`), ``score``, ``z`` and ``alpha_t``.
    """
    return (x + score_weight * (1 - alpha_t) * score + noise_weight * sp.sqrt(1 - alpha_t) * z) / sp.sqrt(alpha_t)


def eps_form(expr):
    r"""``expr`` (in score form) written along a path: :math:`s_t = -\varepsilon_t/\sqrt{1-\bar\alpha_t}` and
    :math:`\alpha_t = \bar\alpha_t/\bar\alpha_{t-1}`."""
    return expr.subs(score, -eps / sp.sqrt(1 - alpha_bar_t)).subs(alpha_t, alpha_bar_t / alpha_bar_prev)


def eps_form_coefficients(step) -> tuple:
    r"""Write a step given in score form as ``c_x x + c_eps eps + c_z z`` along a path (:func:`eps_form`)."""
    e = sp.expand(eps_form(step))
    return tuple(sp.simplify(e.coeff(v)) for v in (x, eps, z))


def ddpm_type_coefficients() -> tuple:
    r"""``(c_x, c_eps, c_z)`` of the paper's DDPM-type update, from :func:`exponential_euler_step` (1, 1)."""
    return eps_form_coefficients(exponential_euler_step(1, 1))


def ddim_type_coefficients() -> tuple:
    r"""``(c_x, c_eps)`` of the paper's DDIM-type update, from :func:`exponential_euler_step` (1/2, 0)."""
    return eps_form_coefficients(exponential_euler_step(sp.Rational(1, 2), 0))[:2]


def ddpm_type_mean_residual():
    r"""The DDPM-type mean is the exact posterior mean :math:`\mathbb E[X_{t-1}\mid X_t=y]` (one-step Tweedie).

    On a 1-D Gaussian target with :math:`\mathrm{Var}\,q_t = \varsigma_t^2` (symbol ``var_t``), Gaussian
    conditioning of :math:`X_t = \sqrt{\alpha_t}X_{t-1} + \sqrt{1-\alpha_t}W_t` gives
    :math:`\mathbb E[X_{t-1}\mid X_t = y] = \mu_{t-1} + \sqrt{\alpha_t}\varsigma_{t-1}^2(y - \mu_t)/\varsigma_t^2`.
    Returns its difference with the noise-free DDPM-type step with the exact score (simplifies to 0).
    """
    mu_t = sp.Symbol(r"\mu_t", real=True)
    var_prev = (var_t - (1 - alpha_t)) / alpha_t  # var_t = alpha_t var_prev + 1 - alpha_t
    mu_prev = mu_t / sp.sqrt(alpha_t)
    posterior_mean = mu_prev + sp.sqrt(alpha_t) * var_prev * (x - mu_t) / var_t
    ddpm_mean = exponential_euler_step(1, 0).subs(score, gaussian_score(x, mu_t, var_t))
    return sp.simplify(posterior_mean - ddpm_mean)


# fmt: off
def exact_ddim_coefficients() -> tuple:
    r"""``(c_x, c_eps)`` of exact DDIM: integrate
    :math:`dy = \varepsilon\,d\sigma` from :math:`\sigma_t` to
    :math:`\sigma_{t-1}` with :math:`\varepsilon` frozen, then
    :math:`x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,y_{t-1}`
    (eq. ``deriv-ddim-exact``)."""
    frozen = sp.integrate(1, (sigma_, sigma_t, sigma_prev))
    y_prev = x / sp.sqrt(alpha_bar_t) + eps * frozen
    step = sp.expand(in_alpha_bar(sp.sqrt(alpha_bar_prev) * y_prev))
    return sp.simplify(step.coeff(x)), sp.expand(step.coeff(eps))
# fmt: on


def with_step_size(expr, a=alpha_bar_t):
    r"""Substitute :math:`\bar\alpha_{t-1} = \bar\alpha_t/(1-h)` and :math:`\alpha_t = 1-h` (``h`` = step size)."""
    return expr.subs(alpha_bar_prev, a / (1 - h)).subs(alpha_t, 1 - h)


def series_in_h(expr, order: int = 3):
    r"""Taylor series of ``expr`` in ``h`` around 0 up to (excluding) ``h**order``."""
    return sp.series(expr, h, 0, order)


def baseline_coefficient_series(order: int = 4) -> dict:
    r"""The DDIM-type and exact-DDIM ``eps`` coefficients as series in the step size ``h`` (eq. ``deriv-baseline-series``).

    Their ``x`` coefficients are identical (:math:`1/\sqrt{\alpha_t}`); the ``eps`` coefficients agree at order
    ``h`` and differ from order ``h^2`` on.  Returns the two series and the series of their difference.
    """
    ddim_type = with_step_size(ddim_type_coefficients()[1])
    ddim = with_step_size(exact_ddim_coefficients()[1])
    return {
        "ddim_type": series_in_h(ddim_type, order),
        "ddim": series_in_h(ddim, order),
        "difference": series_in_h(sp.simplify(ddim_type - ddim), order),
    }


# ----------------------------------------------------------------------------------------------------------------
# Accelerated deterministic update
# ----------------------------------------------------------------------------------------------------------------
EXTRAPOLATION_VARIABLES = {
    "alpha_bar": alpha_bar_of_sigma,  # the paper's accelerated sampler
    "lambda": lambda_of_sigma,  # DPM-Solver's variable (multistep DPM-Solver-2 in eps form, exact phi_2)
    "sigma": lambda s: s,  # the ODE's own variable: two-step Adams-Bashforth
}


# fmt: off
def extrapolated_correction(variable: str = "alpha_bar"):
    r"""Coefficient ``c`` of
    :math:`x_{t-1} = \mathrm{DDIM}(x_t, \varepsilon_t)
    + c\,(\varepsilon_{t+1} - \varepsilon_t)` obtained by integrating
    :math:`dy = \varepsilon\,d\sigma` exactly with :math:`\varepsilon`
    extrapolated linearly in the variable :math:`u` through
    :math:`(u_{t+1}, \varepsilon_{t+1})` and :math:`(u_t, \varepsilon_t)`
    (eq. ``deriv-correction-general``):

    .. math::
        c = -\frac{\sqrt{\bar\alpha_{t-1}}}{u_t - u_{t+1}}
            \int_{\sigma_t}^{\sigma_{t-1}} (u(\sigma) - u_t)\,d\sigma.

    ``variable`` is ``"alpha_bar"`` (:math:`u = 1/(1+\sigma^2)`, the
    paper's sampler), ``"lambda"`` (:math:`u = -\log\sigma`) or
    ``"sigma"`` (:math:`u=\sigma`, Adams-Bashforth).  The result is in
    the sigma symbols and ``alpha_bar_prev``; :func:`in_alpha_bar`
    rewrites it in ``alpha_bar`` levels.
    """
    if variable not in EXTRAPOLATION_VARIABLES:
        raise ValueError(
            f"unknown extrapolation variable {variable!r}; "
            f"expected one of {list(EXTRAPOLATION_VARIABLES)}"
        )
    u = EXTRAPOLATION_VARIABLES[variable]
    integral = sp.integrate(
        u(sigma_) - u(sigma_t), (sigma_, sigma_t, sigma_prev)
    )
    du = u(sigma_t) - u(sigma_next)
    return -sp.sqrt(alpha_bar_prev) * integral / du
# fmt: on


def in_alpha_bar(expr):
    r"""Rewrite an expression in the sigma symbols in ``alpha_bar`` levels.

    Uses :math:`\arctan\sigma(\bar\alpha) = \pi/2 - \arcsin\sqrt{\bar\alpha}` for :math:`\bar\alpha\in(0,1)` (checked
    by :func:`atan_sigma_identity_residual`), so the arcsin form of the official README appears.
    """
    pairs = [(sigma_t, alpha_bar_t), (sigma_prev, alpha_bar_prev), (sigma_next, alpha_bar_next)]
    pairs.append((sigma_star, alpha_bar_star))  # the saturation point of capped_correction
    for s, a in pairs:
        expr = expr.subs(sp.atan(s), sp.pi / 2 - sp.asin(sp.sqrt(a)))
    return expr.subs({s: sigma_of(a) for s, a in pairs})


def atan_sigma_identity_residual():
    r"""Residual of :math:`\arctan\sqrt{(1-\bar\alpha)/\bar\alpha} + \arcsin\sqrt{\bar\alpha} - \pi/2`: its derivative
    simplifies to 0 and its value at :math:`\bar\alpha = 1/2` is 0, so it vanishes on (0, 1).
    Returns ``(derivative, value_at_one_half)``."""
    res = sp.atan(sigma_of(alpha_bar)) + sp.asin(sp.sqrt(alpha_bar)) - sp.pi / 2
    return sp.simplify(sp.diff(res, alpha_bar)), sp.simplify(res.subs(alpha_bar, sp.Rational(1, 2)))


@lru_cache(maxsize=None)
def accelerated_ode_coefficient():
    r"""The paper's accelerated correction coefficient in ``alpha_bar`` levels (eq. ``deriv-arcsin-coefficient``):
    :func:`extrapolated_correction` with ``eps`` linear in ``alpha_bar``, rewritten by :func:`in_alpha_bar`."""
    return sp.simplify(in_alpha_bar(extrapolated_correction("alpha_bar")))


@lru_cache(maxsize=None)
def accelerated_ode_lambda_coefficient():
    r"""The correction coefficient of the safeguarded sampler ``accelerated_ode_lambda``: :func:`extrapolated_correction`
    with ``eps`` linear in the half log-SNR :math:`\lambda = -\log\sigma`, in the sigma symbols (eq.
    ``deriv-correction-general``):

    .. math:: c = \sqrt{\bar\alpha_{t-1}}\,
              \frac{\sigma_t - \sigma_{t-1} - \sigma_{t-1}\log(\sigma_t/\sigma_{t-1})}{\log(\sigma_{t+1}/\sigma_t)}
              = \sqrt{1-\bar\alpha_{t-1}}\,\frac{e^h - 1 - h}{\lambda_t - \lambda_{t+1}},
              \quad h = \lambda_{t-1} - \lambda_t,

    the multistep DPM-Solver-2 in noise prediction (checked against the published update in the tests).  Use
    :func:`in_alpha_bar` for ``alpha_bar`` levels."""
    return sp.factor_terms(sp.expand(extrapolated_correction("lambda")))


def _capped_parts(rho=max_ratio) -> dict:
    r"""The two pieces of the capped correction in the sigma symbols (saturation at the symbol ``sigma_star``)."""
    u = alpha_bar_of_sigma
    delta = u(sigma_t) - u(sigma_next)  # the last interval in alpha_bar
    ramp = sp.integrate(u(sigma_) - u(sigma_t), (sigma_, sigma_t, sigma_star))  # eps still linear in alpha_bar
    flat = sp.integrate(rho * delta, (sigma_, sigma_star, sigma_prev))  # eps held at its value at sigma_star
    return {"delta": delta, "ramp": ramp, "flat": flat, "saturated": -sp.sqrt(alpha_bar_prev) * (ramp + flat) / delta}


@lru_cache(maxsize=None)
def capped_correction():
    r"""Coefficient ``c`` of :math:`x_{t-1} = \mathrm{DDIM}(x_t, \varepsilon_t) + c\,(\varepsilon_{t+1} -
    \varepsilon_t)` for the safeguarded sampler ``accelerated_ode_capped``: the
    paper's extrapolation linear in :math:`u = \bar\alpha`, saturated after :math:`\rho` (symbol ``max_ratio``)
    times the last interval,

    .. math::
        \varepsilon(u) = \varepsilon_t + \frac{\varepsilon_t - \varepsilon_{t+1}}{u_t - u_{t+1}}
                         \min\big(u - u_t,\ \rho\,(u_t - u_{t+1})\big),

    integrated exactly along :math:`dy = \varepsilon\,d\sigma`.  Since :math:`u(\sigma) = 1/(1+\sigma^2)` decreases
    in :math:`\sigma`, the minimum is the ramp :math:`u - u_t` on :math:`[\sigma_*, \sigma_t]` and the constant
    :math:`\rho\,(u_t - u_{t+1})` on :math:`[\sigma_{t-1}, \sigma_*]`, where
    :math:`u(\sigma_*) = u_* = u_t + \rho\,(u_t - u_{t+1})`; it saturates inside the step exactly when the
    extrapolation ratio :math:`(u_{t-1} - u_t)/(u_t - u_{t+1})` exceeds :math:`\rho`.  Returns a ``Piecewise`` in the
    ``alpha_bar`` levels and ``max_ratio``: :func:`accelerated_ode_coefficient` when the ratio is at most
    :math:`\rho`, the split integral (rewritten by :func:`in_alpha_bar`, :math:`u_*` substituted) otherwise.
    :func:`capped_correction_checks` verifies the claims made here."""
    parts = _capped_parts()
    saturated = in_alpha_bar(parts["saturated"]).subs(
        alpha_bar_star, alpha_bar_t + max_ratio * (alpha_bar_t - alpha_bar_next)
    )
    ratio = (alpha_bar_prev - alpha_bar_t) / (alpha_bar_t - alpha_bar_next)
    return sp.Piecewise((accelerated_ode_coefficient(), ratio <= max_ratio), (saturated, True))


def capped_correction_checks() -> dict:
    r"""Residuals (each simplifies to 0) behind :func:`capped_correction` and its closed form in
    :func:`accelerated_diffusion.updates.accelerated_ode_capped_coefficient`:

    * ``monotone``: :math:`du/d\sigma + 2\sigma/(1+\sigma^2)^2` (so :math:`du/d\sigma < 0`: the ramp comes first);
    * ``continuity``: the saturated piece at :math:`\sigma_* = \sigma_{t-1}` minus the paper's
      :func:`extrapolated_correction` (the two pieces meet where the ratio equals :math:`\rho`);
    * ``no_cap``: the saturated piece at :math:`\rho = 0` (:math:`\sigma_* = \sigma_t`): exact DDIM, no correction;
    * ``closed_form``: the saturated piece minus
      :math:`\frac{\sqrt{\bar\alpha_{t-1}}}{u_t - u_{t+1}}\big(G(u_*) - G(u_t) - (u_* - u_t)\,\sigma_{t-1}\big)`
      with :math:`G(a) = \sqrt{a(1-a)} + \arcsin\sqrt a` (the paper's form with :math:`G(u_{t-1})` replaced by
      :math:`G(u_*)`), in ``alpha_bar`` levels, :math:`u_* = u_t + \rho\,(u_t - u_{t+1})`;
    * ``antiderivative``: :math:`G'(a) - \sigma(a)`.
    """
    parts = _capped_parts()
    G = lambda a: sp.sqrt(a) * sp.sqrt(1 - a) + sp.asin(sp.sqrt(a))  # noqa: E731
    closed = (
        sp.sqrt(alpha_bar_prev)
        / (alpha_bar_t - alpha_bar_next)
        * (G(alpha_bar_star) - G(alpha_bar_t) - (alpha_bar_star - alpha_bar_t) * sigma_of(alpha_bar_prev))
    )
    # in terms of u_*: rho = (u_* - u_t) / (u_t - u_{t+1})
    rho_of_star = (alpha_bar_star - alpha_bar_t) / (alpha_bar_t - alpha_bar_next)
    saturated_levels = in_alpha_bar(parts["saturated"]).subs(max_ratio, rho_of_star)
    paper = extrapolated_correction("alpha_bar")
    return {
        "monotone": sp.simplify(sp.diff(alpha_bar_of_sigma(sigma_), sigma_) + 2 * sigma_ / (1 + sigma_**2) ** 2),
        "continuity": sp.simplify(parts["saturated"].subs(sigma_star, sigma_prev) - paper),
        "no_cap": sp.simplify(parts["saturated"].subs({max_ratio: 0, sigma_star: sigma_t})),
        "closed_form": sp.simplify(saturated_levels - closed),
        "antiderivative": sp.simplify(sp.diff(G(alpha_bar), alpha_bar) - sigma_of(alpha_bar)),
    }


def safeguarded_coefficient_gaps(num_draws: int = 20, seed: int = 0, ratios=(0.5, 1.0, 2.0, 8.0)) -> dict:
    r"""Largest absolute gap between the sympy coefficients of the two safeguarded samplers and their float64
    implementations in :mod:`accelerated_diffusion.updates`, at ``num_draws`` random level triples
    (:func:`random_levels`, noisiest first) and, for the capped one, at every cap ``rho`` of ``ratios``:
    ``{"accelerated_ode_lambda": gap, "accelerated_ode_capped": gap, "capped_saturated": number of draws
    where the cap acted}``.  The lambda coefficient is :func:`accelerated_ode_lambda_coefficient` rewritten in
    ``alpha_bar`` levels by :func:`in_alpha_bar`; the capped one is :func:`capped_correction` (a ``Piecewise``)."""
    levels = (alpha_bar_next, alpha_bar_t, alpha_bar_prev)
    lam = sp.lambdify(levels, in_alpha_bar(accelerated_ode_lambda_coefficient()), "math")
    cap = sp.lambdify((*levels, max_ratio), capped_correction(), "math")
    gen = torch.Generator().manual_seed(int(seed))
    gaps = {"accelerated_ode_lambda": 0.0, "accelerated_ode_capped": 0.0, "capped_saturated": 0}
    for _ in range(int(num_draws)):
        a_next, a_t, a_prev = random_levels(gen, 3, min_gap=1e-2)
        got = updates.accelerated_ode_lambda_coefficient(a_next, a_t, a_prev)
        gaps["accelerated_ode_lambda"] = max(gaps["accelerated_ode_lambda"], abs(lam(a_next, a_t, a_prev) - got))
        for rho in ratios:
            got = updates.accelerated_ode_capped_coefficient(a_next, a_t, a_prev, rho)
            gap = abs(float(cap(a_next, a_t, a_prev, rho)) - got)
            gaps["accelerated_ode_capped"] = max(gaps["accelerated_ode_capped"], gap)
            gaps["capped_saturated"] += int(a_prev - a_t > rho * (a_t - a_next))
    return gaps


def ode_step(method: str):
    r"""A whole deterministic step as an expression in ``x``, ``eps`` (:math:`\varepsilon_t`), ``eps_next``
    (:math:`\varepsilon_{t+1}`) and the levels.

    ``"ddim"``: exact DDIM; ``"ddim_type"``: the paper's DDIM-type update; ``"accelerated_ode"`` (also accepted
    as ``"accelerated"``), ``"lambda"`` (also accepted by its sampler name ``"accelerated_ode_lambda"``),
    ``"sigma"``: exact DDIM plus :func:`extrapolated_correction` for that variable (in ``alpha_bar`` levels);
    ``"accelerated_ode_capped"``: exact DDIM plus :func:`capped_correction` (an expression in ``max_ratio`` too).
    """
    if method == "ddim_type":
        c_x, c_eps = ddim_type_coefficients()
        return c_x * x + c_eps * eps
    c_x, c_eps = exact_ddim_coefficients()
    base = c_x * x + c_eps * eps
    if method == "ddim":
        return base
    if method == "accelerated_ode_capped":
        return base + capped_correction() * (eps_next - eps)
    variable = _EXTRAPOLATED.get(method)
    if variable is None:
        raise ValueError(f"unknown method {method!r}; expected one of {ODE_METHODS[:5]}")
    c = accelerated_ode_coefficient() if variable == "alpha_bar" else in_alpha_bar(extrapolated_correction(variable))
    return base + c * (eps_next - eps)


#: The deterministic steps derived here: the library's samplers by their registry names
#: (:data:`accelerated_diffusion.samplers.SAMPLERS`) and the relatives that are derived only: ``"lambda"`` and
#: ``"sigma"`` (the accelerated correction with ``eps`` extrapolated in another variable) and ``"dpm_solver_2"``.
#: ``"lambda"`` is also the library's safeguarded sampler ``accelerated_ode_lambda`` (:func:`ode_step` accepts that
#: name); the capped one, ``"accelerated_ode_capped"``, is derived by :func:`capped_correction`.
ODE_METHODS = ("ddim", "ddim_type", "accelerated_ode", "lambda", "sigma", "dpm_solver_2", "dpm_solver_pp_2m")
#: The extrapolation variable of each multistep correction; ``"accelerated"`` is the older name of
#: ``"accelerated_ode"``, still accepted.
_EXTRAPOLATED = {
    "accelerated_ode": "alpha_bar",
    "accelerated": "alpha_bar",
    "lambda": "lambda",
    "accelerated_ode_lambda": "lambda",
    "sigma": "sigma",
}


def ode_step_sigma(method: str):
    r"""A whole deterministic step in the ODE's own variables: :math:`y_{t-1}` as an expression in ``y``
    (:math:`y_t = x_t/\sqrt{\bar\alpha_t}`), ``eps``, ``eps_next`` and the sigma symbols.

    ``"ddim"``: :math:`y_t + \varepsilon_t(\sigma_{t-1}-\sigma_t)` (eq. ``deriv-ddim-exact``); ``"accelerated_ode"``,
    ``"lambda"``, ``"sigma"``: plus :func:`extrapolated_correction` divided by :math:`\sqrt{\bar\alpha_{t-1}}`;
    ``"ddim_type"``: the DDIM-type update with :math:`\bar\alpha = 1/(1+\sigma^2)` substituted.  The same steps as
    :func:`ode_step` (checked in the tests), written where series are cheap.  The two DPM-Solver methods need
    :math:`\varepsilon` at other points and are handled by :func:`ode_local_error`.
    """
    c_x, c_eps = exact_ddim_coefficients()
    if method == "ddim_type":
        c_x, c_eps = ddim_type_coefficients()
    step_x = c_x * x + c_eps * eps
    to_sigma = {a: alpha_bar_of_sigma(s) for s, a in ((sigma_t, alpha_bar_t), (sigma_prev, alpha_bar_prev))}
    if method in ("ddim", "ddim_type"):
        out = (step_x / sp.sqrt(alpha_bar_prev)).subs(x, y * sp.sqrt(alpha_bar_t)).subs(to_sigma)
        return sp.simplify(out) if method == "ddim" else out
    variable = _EXTRAPOLATED.get(method)
    if variable is None:
        raise ValueError(f"unknown method {method!r}; expected one of {ODE_METHODS[:5]}")
    base = y + eps * sp.integrate(1, (sigma_, sigma_t, sigma_prev))
    return base + extrapolated_correction(variable) / sp.sqrt(alpha_bar_prev) * (eps_next - eps)


def gaussian_ode_problem(v=data_var) -> dict:
    r"""Test problem for local truncation errors: target :math:`\mathcal N(0, v)` in one dimension, in the
    variables :math:`y = x/\sqrt{\bar\alpha}` and :math:`\sigma`.

    There :math:`\mathrm{Var}\,q = (v + \sigma^2)/(1 + \sigma^2)`, the ideal noise prediction is
    :math:`\varepsilon^*(y, \sigma) = \sigma y/(v + \sigma^2)` and the exact solution of
    :math:`dy/d\sigma = \varepsilon^*` is :math:`y(\sigma) = y_0\sqrt{(v+\sigma^2)/(v+\sigma_0^2)}`
    (:func:`probability_flow_gaussian_residual` in other variables).  Returns callables on sympy expressions.
    """
    return {
        "eps": lambda y_, s: s * y_ / (v + s**2),
        "flow": lambda y_, s_from, s_to: y_ * sp.sqrt((v + s_to**2) / (v + s_from**2)),
    }


def _dpm_solver_steps(method, y_t, s_t, s_prev, s_next, eps_fn, y_next):
    r"""DPM-Solver-2 and DPM-Solver++(2M) in the variables ``y``, ``sigma`` (derived as in this module).

    * DPM-Solver-2 (Lu et al. 2022a, Algorithm 1 with :math:`r_1 = 1/2`): a DDIM step to the
      :math:`\lambda`-midpoint :math:`\sigma_m = \sqrt{\sigma_t\sigma_{t-1}}`, a *fresh* evaluation there, and a DDIM
      step over the whole interval with that :math:`\varepsilon`: two evaluations per step.
    * DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): in :math:`w = x/\sqrt{1-\bar\alpha} = y/\sigma` the ODE reads
      :math:`dw = x_0\,d(1/\sigma)` with the data prediction :math:`x_0 = y - \sigma\varepsilon`
      (:func:`eps_x0_score_conversions`); it freezes :math:`x_0` at its linear extrapolation in :math:`\lambda = -\log\sigma` evaluated at the
      :math:`\lambda`-midpoint, :math:`D = (1 + \tfrac{1}{2r})x_{0,t} - \tfrac{1}{2r}x_{0,t+1}`,
      :math:`r = (\lambda_t - \lambda_{t+1})/(\lambda_{t-1} - \lambda_t)`, and integrates exactly.
    """
    if method == "dpm_solver_2":
        s_mid = sp.sqrt(s_t * s_prev)
        y_mid = y_t + eps_fn(y_t, s_t) * (s_mid - s_t)
        return y_t + eps_fn(y_mid, s_mid) * (s_prev - s_t)
    if method == "dpm_solver_pp_2m":
        conv = eps_x0_score_conversions()["x0_of_eps"].subs(x, y * sp.sqrt(alpha_bar))  # x0 = y - sigma eps
        y0 = lambda y_, s: conv.subs(alpha_bar, alpha_bar_of_sigma(s)).subs(
            {y: y_, eps: eps_fn(y_, s)}, simultaneous=True
        )  # noqa: E731
        # lambda = -log(sigma): the step ratio (lambda_{t-1} - lambda_t) / (lambda_t - lambda_{t+1}), logs combined
        ratio = sp.log(s_t / s_prev) / sp.log(s_next / s_t)
        d = y0(y_t, s_t) + ratio / 2 * (y0(y_t, s_t) - y0(y_next, s_next))
        w_prev = y_t / s_t + d * (1 / s_prev - 1 / s_t)
        return s_prev * w_prev
    raise ValueError(f"unknown DPM-Solver method {method!r}")


def ode_local_error(method: str, v=data_var, s=sigma_t, ratio=1, order: int = 4):
    r"""Local truncation error of one deterministic step on :func:`gaussian_ode_problem`, as a series in the step
    :math:`h_\sigma = \sigma_t - \sigma_{t-1}` (eq. ``deriv-lte``).

    The step starts on the exact trajectory at :math:`\sigma_t =` ``s`` with :math:`y_t = 1`; the multistep methods
    use :math:`\varepsilon_{t+1}` at the exact previous iterate, :math:`\sigma_{t+1} = \sigma_t + \mathrm{ratio}\cdot
    h_\sigma`.  The symbol ``h`` stands for :math:`h_\sigma` here; since :math:`1-\alpha_t = 2\sigma_t h_\sigma/(1+
    \sigma_t^2) + O(h_\sigma^2)` the orders are those in the step size :math:`1-\alpha_t`.  Returns the series of
    (step - exact) in ``y`` up to ``h**order`` (errors in ``x`` are these times :math:`\sqrt{\bar\alpha_{t-1}}`).
    """
    prob = gaussian_ode_problem(v)
    s_prev, s_next = s - h, s + ratio * h
    y_t = sp.Integer(1)
    y_next = prob["flow"](y_t, s, s_next)
    if method in ("dpm_solver_2", "dpm_solver_pp_2m"):
        out = _dpm_solver_steps(method, y_t, s, s_prev, s_next, prob["eps"], y_next)
    else:
        out = ode_step_sigma(method).subs(
            {
                y: y_t,
                eps: prob["eps"](y_t, s),
                eps_next: prob["eps"](y_next, s_next),
                sigma_t: s,
                sigma_prev: s_prev,
                sigma_next: s_next,
                alpha_bar_prev: alpha_bar_of_sigma(s_prev),
            },
            simultaneous=True,
        )
    err = sp.series(out - prob["flow"](y_t, s, s_prev), h, 0, order).removeO()
    return sp.collect(sp.expand(err), h, sp.factor)


def correction_coefficient_series(ratio=r, order: int = 3) -> dict:
    r"""The correction coefficients (in ``y`` units, :math:`c/\sqrt{\bar\alpha_{t-1}}`) for ``eps`` extrapolated
    linearly in ``alpha_bar``, ``lambda`` and ``sigma``, as series in :math:`h_\sigma` with
    :math:`\sigma_{t-1} = \sigma_t - h_\sigma`, :math:`\sigma_{t+1} = \sigma_t + \mathrm{ratio}\cdot h_\sigma`
    (eq. ``deriv-correction-series``).

    Whatever the variable, the leading term is :math:`h_\sigma/(2\,\mathrm{ratio})` (they agree to leading order:
    all are linear extrapolations, which coincide to first order); the next term depends on the variable.
    Returns ``{variable: series}``.
    """
    out = {}
    subs = {sigma_prev: sigma_t - h, sigma_next: sigma_t + ratio * h}
    for var in EXTRAPOLATION_VARIABLES:
        c = (extrapolated_correction(var) / sp.sqrt(alpha_bar_prev)).subs(subs)
        out[var] = sp.collect(sp.expand(sp.series(c, h, 0, order).removeO()), h, sp.factor)
    return out


def correction_comparison_series(v=data_var, s=sigma_t, ratio=1, order: int = 4) -> dict:
    r"""The corrections of the multistep methods over DDIM on :func:`gaussian_ode_problem`: series of
    (method step - DDIM step) in :math:`h_\sigma`, for ``accelerated_ode``, ``lambda``, ``sigma`` and
    ``dpm_solver_pp_2m``.  All start with the same :math:`h_\sigma^2` term (which cancels DDIM's local error) and
    differ at :math:`h_\sigma^3`.
    """
    ddim = ode_local_error("ddim", v, s, ratio, order)
    return {
        m: sp.collect(sp.expand(ode_local_error(m, v, s, ratio, order) - ddim), h, sp.factor)
        for m in ("accelerated_ode", "lambda", "sigma", "dpm_solver_pp_2m")
    }


# ----------------------------------------------------------------------------------------------------------------
# Accelerated stochastic update
# ----------------------------------------------------------------------------------------------------------------
def accelerated_sde_noise_scale():
    r"""Scale of each half-variance injection, :math:`\sqrt{(1-\alpha_t)/2}` (official README; defined, not derived)."""
    return sp.sqrt((1 - alpha_t) / 2)


def accelerated_sde_perturb(y=x, noise=z):
    r""":math:`\Phi_t(y, Z_t) = y + \sqrt{(1-\alpha_t)/2}\,Z_t` (official README)."""
    return y + accelerated_sde_noise_scale() * noise


def accelerated_sde_step(y=x, score_at_y=score, noise=z_plus):
    r""":math:`\Psi_t(y, Z_t^+) = (y + (1-\alpha_t)s_t(y))/\sqrt{\alpha_t} + \sqrt{(1-\alpha_t)/2}\,Z_t^+` (official
    README): the noise-free DDPM-type step (:func:`exponential_euler_step` (1, 0)) plus the second injection."""
    drift = exponential_euler_step(1, 0).subs({score: score_at_y, x: y}, simultaneous=True)
    return drift + accelerated_sde_noise_scale() * noise


def ddpm_type_step_score_form(y=x, score_at_y=score, noise=z):
    r"""The DDPM-type step (:func:`exponential_euler_step` (1, 1)) at ``y`` with the given score and noise."""
    return exponential_euler_step(1, 1).subs({score: score_at_y, z: noise, x: y}, simultaneous=True)


#: The paper's stochastic samplers (registry names, in registry order), whose one-step moments are derived here.
STOCHASTIC_METHODS = tuple(n for n in samplers.PAPER_SAMPLERS if samplers.spec(n).stochastic)


def _affine_gaussian_push(expr_of_y, y_mean, y_var, noises):
    r"""Mean and variance of ``expr_of_y`` (affine in the symbol ``x`` and the independent standard normal
    ``noises``) when ``x ~ N(y_mean, y_var)``."""
    e = sp.expand(expr_of_y)
    coeff_y = e.coeff(x)
    coeffs_noise = [e.coeff(n) for n in noises]
    const = e.subs({x: 0, **{n: 0 for n in noises}})
    mean = coeff_y * y_mean + const
    var = coeff_y**2 * y_var + sum(c**2 for c in coeffs_noise)
    return sp.simplify(mean), sp.simplify(var)


def one_step_moments(method: str, mu_in, var_in):
    r"""Mean and variance of one stochastic step on a 1-D Gaussian target with the exact score.

    The target's level-``t`` marginal is :math:`q_t = \mathcal N(\mu_t, \varsigma_t^2)` with symbols
    :math:`\mu_t` and ``var_t``; the score is :math:`s_t(y) = -(y-\mu_t)/\varsigma_t^2`.  The input is
    :math:`Y_t\sim\mathcal N(\) ``mu_in``, ``var_in`` :math:`)` (a point mass for ``var_in = 0``, i.e. the
    transition kernel from ``y = mu_in``).  ``method``: ``"ddpm_type"`` or ``"accelerated_sde"``
    (:math:`\Psi_t(\Phi_t(Y_t, Z_t), Z_t^+)`, score evaluated at the perturbed point, time index ``t``).
    """
    mu_t = sp.Symbol(r"\mu_t", real=True)
    s = gaussian_score(x, mu_t, var_t)
    if method == "ddpm_type":
        return _affine_gaussian_push(ddpm_type_step_score_form(x, s, z), mu_in, var_in, [z])
    if method == "accelerated_sde":
        y_plus = accelerated_sde_perturb(x, z)
        out = accelerated_sde_step(y_plus, s.subs(x, y_plus), z_plus)
        return _affine_gaussian_push(out, mu_in, var_in, [z, z_plus])
    raise ValueError(f"unknown stochastic method {method!r}; expected one of {STOCHASTIC_METHODS}")


def exact_reverse_moments(kind: str, y=x):
    r"""Moments of the exact reverse process on the same Gaussian target (:math:`\mathrm{Var}\,q_t = \varsigma_t^2`).

    ``kind="marginal"``: :math:`q_{t-1} = \mathcal N(\mu_t/\sqrt{\alpha_t}, (\varsigma_t^2 - 1 + \alpha_t)/\alpha_t)`
    (invert :math:`\varsigma_t^2 = \alpha_t\varsigma_{t-1}^2 + 1 - \alpha_t`); ``kind="conditional"``: the law of
    :math:`X_{t-1}` given :math:`X_t = y` by Gaussian conditioning, variance
    :math:`\varsigma_{t-1}^2(1-\alpha_t)/\varsigma_t^2`.
    """
    mu_t = sp.Symbol(r"\mu_t", real=True)
    var_prev = (var_t - (1 - alpha_t)) / alpha_t
    mu_prev = mu_t / sp.sqrt(alpha_t)
    if kind == "marginal":
        return mu_prev, var_prev
    if kind == "conditional":
        mean = mu_prev + sp.sqrt(alpha_t) * var_prev * (y - mu_t) / var_t
        return sp.simplify(mean), sp.simplify(var_prev * (1 - alpha_t) / var_t)
    raise ValueError(f"unknown kind {kind!r}; expected 'marginal' or 'conditional'")


def moment_error_series(method: str, kind: str = "marginal", order: int = 4) -> dict:
    r"""Errors of a stochastic step's mean and variance against the exact reverse process, series in ``h``.

    ``kind="marginal"``: input :math:`Y_t\sim q_t` exactly, output compared with :math:`q_{t-1}`;
    ``kind="conditional"``: input the point ``x`` (transition kernel), compared with :math:`X_{t-1}\mid X_t=x`.
    Returns ``{"mean": series, "variance": series}`` (series of method minus exact, with ``alpha_t = 1 - h``).
    """
    mu_t = sp.Symbol(r"\mu_t", real=True)
    if kind == "marginal":
        got = one_step_moments(method, mu_t, var_t)
    elif kind == "conditional":
        got = one_step_moments(method, x, 0)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected 'marginal' or 'conditional'")
    ref = exact_reverse_moments(kind)
    return {
        name: sp.simplify(sp.series((g - e).subs(alpha_t, 1 - h), h, 0, order).removeO())
        for name, g, e in zip(("mean", "variance"), got, ref)
    }
