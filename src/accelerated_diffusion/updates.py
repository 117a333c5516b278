r"""The update rules: one function per rule, the single source of truth.

Every function here maps the iterate at level ``alpha_bar_t`` (noisier) to level ``alpha_bar_prev`` (less noisy,
``alpha_bar_prev > alpha_bar_t``), given the model's noise prediction ``eps = eps_theta(x, t)``.  With an
epsilon-prediction network the score estimate is (the paper's set-up)

.. math:: s_t(x) = -\frac{\varepsilon_\theta(x, t)}{\sqrt{1 - \bar\alpha_t}},

and along any sampling path the per-step ``alpha_t`` of the paper is ``alpha_bar_t / alpha_bar_prev``
(:func:`step_alpha`).  Scalar coefficients are computed in float64 on the host from the (float) levels and then
applied to tensors of any dtype and device, so nothing here synchronises with an accelerator.

The derivation chapters (``chapters/*.ipynb``) derive each coefficient with sympy and the tests compare the
lambdified formulas with the ``*_coefficients`` functions below.

=====================  =================================================================  ==================
function               rule                                                               source
=====================  =================================================================  ==================
``ddim_step``          exact DDIM, eta = 0 (exact integral in ``y = x / sqrt(abar)``)     DDIM; official code
``ddim_type_step``     ``Y_{t-1} = (Y_t + (1 - a_t)/2 s_t(Y_t)) / sqrt(a_t)``            paper, baseline
``ddpm_type_step``     ``Y_{t-1} = (Y_t + (1 - a_t) s_t(Y_t) + sqrt(1 - a_t) Z_t) / sqrt(a_t)``  paper, baseline
``accelerated_ode_step``  DDIM + arcsin correction from the previous evaluation             official README/code
``accelerated_ode_step``  with ``coefficient=`` :func:`accelerated_ode_lambda_coefficient`   book (DPM-Solver-2)
``accelerated_ode_step``  with ``coefficient=`` :func:`accelerated_ode_capped_coefficient`   book (safeguard)
``accelerated_sde_perturb`` ``Phi_t(x, z) = x + sqrt((1 - a_t)/2) z``                       official README
``accelerated_sde_step``  ``Psi_t(y, z) = (y + (1 - a_t) s_t(y)) / sqrt(a_t) + sqrt((1 - a_t)/2) z``  official README
=====================  =================================================================  ==================

A stochastic sampler is a sequence of Gaussian half-steps per step, each affine in the iterate, the noise
prediction and a standard normal draw (:class:`Transition`); :func:`ddpm_type_transitions` and
:func:`accelerated_sde_transitions` give them *in order*.  This is the one place where the order of the accelerated
sampler's half-steps is written: the sampling loop (:mod:`.samplers`), the diffusers scheduler (:mod:`.schedulers`),
the exact Gaussian output laws (``experiments.rates``) and the one-dimensional transition kernels
(``experiments.exact_1d``) all take it from here.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

__all__ = [
    "step_alpha",
    "ddim_coefficients",
    "ddim_step",
    "ddim_type_coefficients",
    "ddim_type_step",
    "ddpm_type_coefficients",
    "ddpm_type_step",
    "accelerated_ode_coefficient",
    "accelerated_ode_lambda_coefficient",
    "accelerated_ode_capped_coefficient",
    "check_max_ratio",
    "EXTRAPOLATIONS",
    "extrapolation_coefficient",
    "accelerated_ode_step",
    "accelerated_sde_noise_scale",
    "accelerated_sde_perturb",
    "accelerated_sde_step",
    "Transition",
    "ddpm_type_transitions",
    "accelerated_sde_transitions",
    "split_at_evaluation",
    "eps_to_score",
    "eps_to_x0",
    "half_log_snr",
    "dpm_solver_pp_2m_step",
    "unipc_bh2_corrector_step",
]


def _level(a, name: str) -> float:
    v = float(a)
    if not 0.0 < v <= 1.0:  # also refuses NaN (every comparison with NaN is false); no math.isnan, which
        raise ValueError(f"{name} must lie in (0, 1], got {v!r}")  # torch.compile cannot trace on a symbolic float
    return v


def step_alpha(alpha_bar_t, alpha_bar_prev) -> float:
    r"""The paper's per-step ``alpha_t = alpha_bar_t / alpha_bar_{t-1}`` along a path (must lie in (0, 1))."""
    a_t, a_prev = _level(alpha_bar_t, "alpha_bar_t"), _level(alpha_bar_prev, "alpha_bar_prev")
    if not a_prev > a_t:
        raise ValueError(f"a step must go to a less noisy level: alpha_bar_prev={a_prev!r} <= alpha_bar_t={a_t!r}")
    return a_t / a_prev


def eps_to_score(eps: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r"""``s_t(x) = -eps / sqrt(1 - abar_t)`` (score of ``q_t`` from a noise prediction)."""
    return eps * (-1.0 / math.sqrt(1.0 - _level(alpha_bar_t, "alpha_bar_t")))


# fmt: off
def eps_to_x0(
    x: torch.Tensor, eps: torch.Tensor, alpha_bar_t
) -> torch.Tensor:
    r"""Tweedie's denoised estimate
    ``x0 = (x - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
    a = _level(alpha_bar_t, "alpha_bar_t")
    return (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
# fmt: on


# --------------------------------------------------------------------------------------------------------------
# Exact DDIM (eta = 0)
# --------------------------------------------------------------------------------------------------------------
# fmt: off
def ddim_coefficients(alpha_bar_t, alpha_bar_prev) -> tuple[float, float]:
    r"""``(c_x, c_eps)`` with ``DDIM(x, eps) = c_x x + c_eps eps``:

    .. math::
        c_x = \sqrt{\bar\alpha_{t-1} / \bar\alpha_t}, \qquad
        c_\varepsilon = \sqrt{1 - \bar\alpha_{t-1}}
            - \sqrt{\bar\alpha_{t-1}}
              \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}.

    ``c_eps = sqrt(abar_prev) (sigma_prev - sigma_t)`` with
    ``sigma = sqrt((1 - abar) / abar)``: the exact solution of
    ``dy = eps d sigma`` for ``y = x / sqrt(abar)`` with ``eps`` frozen
    (chapter *Baselines*).
    """
    step_alpha(alpha_bar_t, alpha_bar_prev)
    a_t, a_prev = float(alpha_bar_t), float(alpha_bar_prev)
    c_x = math.sqrt(a_prev / a_t)
    c_eps = (
        math.sqrt(1.0 - a_prev)
        - math.sqrt(a_prev) * math.sqrt((1.0 - a_t) / a_t)
    )
    return c_x, c_eps
# fmt: on


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_bar_t, alpha_bar_prev) -> torch.Tensor:
    r"""Exact DDIM with eta = 0 (Song et al. 2021, eq. 12; the official code's "vanilla ODE"):

    .. math:: x_{t-1} = \sqrt{\bar\alpha_{t-1}/\bar\alpha_t}\, x_t
              + \Big(\sqrt{1-\bar\alpha_{t-1}} - \sqrt{\bar\alpha_{t-1}}\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}\Big)\,
              \varepsilon_\theta(x_t, t).
    """
    c_x, c_eps = ddim_coefficients(alpha_bar_t, alpha_bar_prev)
    return c_x * x + c_eps * eps


# --------------------------------------------------------------------------------------------------------------
# The paper's baselines (first-order discretisations)
# --------------------------------------------------------------------------------------------------------------
def ddim_type_coefficients(alpha_bar_t, alpha_bar_prev) -> tuple[float, float]:
    r"""``(c_x, c_eps)`` of the DDIM-type update written in eps:
    ``c_x = 1 / sqrt(alpha_t)``, ``c_eps = -(1 - alpha_t) / (2 sqrt(alpha_t) sqrt(1 - abar_t))``."""
    alpha = step_alpha(alpha_bar_t, alpha_bar_prev)
    a_t = float(alpha_bar_t)
    return 1.0 / math.sqrt(alpha), -(1.0 - alpha) / (2.0 * math.sqrt(alpha) * math.sqrt(1.0 - a_t))


def ddim_type_step(x: torch.Tensor, eps: torch.Tensor, alpha_bar_t, alpha_bar_prev) -> torch.Tensor:
    r"""The paper's DDIM-type (deterministic) baseline:

    .. math:: Y_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(Y_t + \frac{1 - \alpha_t}{2} s_t(Y_t)\Big).
    """
    c_x, c_eps = ddim_type_coefficients(alpha_bar_t, alpha_bar_prev)
    return c_x * x + c_eps * eps


# fmt: off
def ddpm_type_coefficients(
    alpha_bar_t, alpha_bar_prev
) -> tuple[float, float, float]:
    r"""``(c_x, c_eps, c_z)`` of the DDPM-type update:
    ``c_x = 1/sqrt(alpha_t)``,
    ``c_eps = -(1 - alpha_t) / (sqrt(alpha_t) sqrt(1 - abar_t))``,
    ``c_z = sqrt((1 - alpha_t) / alpha_t)``."""
    alpha = step_alpha(alpha_bar_t, alpha_bar_prev)
    a_t = float(alpha_bar_t)
    return (
        1.0 / math.sqrt(alpha),
        -(1.0 - alpha) / (math.sqrt(alpha) * math.sqrt(1.0 - a_t)),
        math.sqrt((1.0 - alpha) / alpha),
    )
# fmt: on


def ddpm_type_step(
    x: torch.Tensor, eps: torch.Tensor, alpha_bar_t, alpha_bar_prev, noise: torch.Tensor
) -> torch.Tensor:
    r"""The paper's DDPM-type (stochastic) baseline, ``Z_t ~ N(0, I)`` given as ``noise``:

    .. math:: Y_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(Y_t + (1 - \alpha_t) s_t(Y_t) + \sqrt{1 - \alpha_t}\, Z_t\Big).

    Noise is added at every step, the last included (as in the paper; diffusers' ``DDPMScheduler`` skips it at
    ``t = 0`` and uses the posterior variance, so the two differ).
    """
    c_x, c_eps, c_z = ddpm_type_coefficients(alpha_bar_t, alpha_bar_prev)
    return c_x * x + c_eps * eps + c_z * noise


# --------------------------------------------------------------------------------------------------------------
# Accelerated deterministic sampler
# --------------------------------------------------------------------------------------------------------------
def _arcsin_antiderivative(a: float) -> float:
    # G(a) = integral of sqrt((1 - a) / a) da = sqrt(a (1 - a)) + arcsin(sqrt(a))
    return math.sqrt(a * (1.0 - a)) + math.asin(math.sqrt(a))


def _correction_levels(alpha_bar_next, alpha_bar_t, alpha_bar_prev) -> tuple[float, float, float]:
    """The three levels of a multistep correction as floats, checked: ``0 < a_next < a_t < a_prev <= 1``."""
    a_next = _level(alpha_bar_next, "alpha_bar_next")
    step_alpha(alpha_bar_t, alpha_bar_prev)
    a_t, a_prev = float(alpha_bar_t), float(alpha_bar_prev)
    if not a_t > a_next:
        raise ValueError(f"the previous level must be noisier: alpha_bar_next={a_next!r} >= alpha_bar_t={a_t!r}")
    return a_next, a_t, a_prev


def _arcsin_correction(a_next: float, a_t: float, a_prev: float, a_end: float) -> float:
    r"""``sqrt(abar_prev) / (abar_t - abar_next) * (G(a_end) - G(abar_t) - (a_end - abar_t) sigma_prev)``: the
    correction of ``eps`` extrapolated linearly in ``abar`` up to ``a_end`` and held constant beyond it
    (``a_end = abar_prev``: the paper's coefficient)."""
    sigma_prev = math.sqrt((1.0 - a_prev) / a_prev)
    bracket = _arcsin_antiderivative(a_end) - _arcsin_antiderivative(a_t) - (a_end - a_t) * sigma_prev
    return math.sqrt(a_prev) / (a_t - a_next) * bracket


# fmt: off
def accelerated_ode_coefficient(
    alpha_bar_next, alpha_bar_t, alpha_bar_prev
) -> float:
    r"""Coefficient ``c`` of the accelerated correction
    ``c * (eps_{t+1} - eps_t)``:

    .. math::
        c = \frac{\sqrt{\bar\alpha_{t-1}}}{\bar\alpha_t - \bar\alpha_{t+1}}
            \Big( \bar\alpha_t
                   \sqrt{\tfrac{1 - \bar\alpha_{t-1}}{\bar\alpha_{t-1}}}
                 + \arcsin\sqrt{\bar\alpha_{t-1}}
                 - \bar\alpha_t
                   \sqrt{\tfrac{1 - \bar\alpha_t}{\bar\alpha_t}}
                 - \arcsin\sqrt{\bar\alpha_t} \Big)

    (official README and code).  Equivalently
    ``c = sqrt(abar_prev) / (abar_t - abar_next)
    * (G(abar_prev) - G(abar_t) - (abar_prev - abar_t) sigma_prev)``
    with ``G(a) = sqrt(a(1-a)) + arcsin sqrt(a)`` the antiderivative of
    ``sigma(a) = sqrt((1 - a)/a)``; this is the form evaluated here
    (float64).  The bracket is O((abar_prev - abar_t)^2), so it loses
    relative precision for tiny steps; in float64 the absolute error of
    the correction stays below 1e-12 for any step of a 1000-step
    schedule (tested against mpmath).
    """
    a_next, a_t, a_prev = _correction_levels(
        alpha_bar_next, alpha_bar_t, alpha_bar_prev
    )
    return _arcsin_correction(a_next, a_t, a_prev, a_prev)
# fmt: on


def _expm1_minus_h(h: float) -> float:
    """``e^h - 1 - h`` for ``h >= 0`` without cancellation: its Taylor series below ``h = 0.01`` (relative error
    below 1e-16 there), ``expm1(h) - h`` above."""
    if h < 0.01:
        return 0.5 * h * h * (1.0 + h / 3.0 * (1.0 + h / 4.0 * (1.0 + h / 5.0 * (1.0 + h / 6.0 * (1.0 + h / 7.0)))))
    return math.expm1(h) - h


def _half_log_snr_gap(a_lo: float, a_hi: float) -> float:
    """``lambda(a_hi) - lambda(a_lo)`` for ``0 < a_lo < a_hi < 1``, as
    ``(log1p(d / a_lo) + log1p(d / (1 - a_hi))) / 2`` with ``d = a_hi - a_lo`` (no cancellation for close levels)."""
    d = a_hi - a_lo
    return 0.5 * (math.log1p(d / a_lo) + math.log1p(d / (1.0 - a_hi)))


def accelerated_ode_lambda_coefficient(alpha_bar_next, alpha_bar_t, alpha_bar_prev) -> float:
    r"""Coefficient ``c`` of the correction ``c (eps_{t+1} - eps_t)`` with ``eps`` extrapolated linearly in the half
    log-SNR ``lambda = -log sigma`` instead of in ``alpha_bar`` (the book's safeguarded variant
    ``accelerated_ode_lambda``; ``derivations.extrapolated_correction("lambda")``, eq.
    ``deriv-correction-general``):

    .. math::
        c = -\frac{\sqrt{\bar\alpha_{t-1}}}{\lambda_t - \lambda_{t+1}}
              \int_{\sigma_t}^{\sigma_{t-1}} (\lambda(\sigma) - \lambda_t)\,d\sigma
          = \sqrt{1 - \bar\alpha_{t-1}}\; \frac{e^{h} - 1 - h}{\lambda_t - \lambda_{t+1}},
        \qquad h = \lambda_{t-1} - \lambda_t .

    This is the multistep second-order DPM-Solver (Lu et al. 2022b, multistep DPM-Solver-2 in noise prediction,
    ``solver_type="taylor"``) written as DDIM plus a correction: its step is
    ``x_{t-1} = DDIM(x_t, eps_t) - sigma_{t-1} ((e^h - 1)/h - 1) (eps_t - eps_{t+1}) / r_0`` with
    ``r_0 = (lambda_t - lambda_{t+1}) / h`` and ``sigma_{t-1} = sqrt(1 - abar_{t-1})`` in their notation.  Since
    ``lambda`` grows by about the same amount per step on the usual grids, the extrapolation ratio
    ``h / (lambda_t - lambda_{t+1})`` stays near 1 where the ratio in ``alpha_bar`` exceeds 10.

    Evaluated in float64 with ``e^h - 1 - h`` by its series for small ``h`` and the ``lambda`` gaps by ``log1p``
    (:func:`_half_log_snr_gap`), so there is no cancellation for close levels.  At ``abar_{t-1} = 1``
    (``h = inf``) the limit ``c = sigma_t / (lambda_t - lambda_{t+1})``, ``sigma_t = sqrt((1 - abar_t)/abar_t)``,
    is returned (``sqrt(1 - abar_{t-1}) e^h = sqrt(abar_{t-1}) sigma_t`` and ``sqrt(1 - abar_{t-1}) h -> 0``).
    """
    a_next, a_t, a_prev = _correction_levels(alpha_bar_next, alpha_bar_t, alpha_bar_prev)
    h_last = _half_log_snr_gap(a_next, a_t)
    if a_prev == 1.0:
        return math.sqrt((1.0 - a_t) / a_t) / h_last
    h = _half_log_snr_gap(a_t, a_prev)
    return math.sqrt(1.0 - a_prev) * _expm1_minus_h(h) / h_last


def check_max_ratio(max_ratio) -> float:
    """``max_ratio`` of the capped correction as a float: a number ``>= 0`` (``inf`` allowed: no cap);
    ``TypeError`` / ``ValueError`` otherwise (NaN included)."""
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)):
        raise TypeError(f"max_ratio must be a real number >= 0, got {type(max_ratio).__name__}")
    v = float(max_ratio)
    if not v >= 0.0:
        raise ValueError(f"max_ratio must be >= 0 (inf: no cap), got {v!r}")
    return v


def accelerated_ode_capped_coefficient(alpha_bar_next, alpha_bar_t, alpha_bar_prev, max_ratio=2.0) -> float:
    r"""Coefficient ``c`` of the correction ``c (eps_{t+1} - eps_t)`` with the paper's extrapolation of ``eps``,
    linear in ``u = alpha_bar``, *saturated* after ``max_ratio`` (``rho``) times the last interval (the book's
    safeguarded variant ``accelerated_ode_capped``; ``experiments.derivations.capped_correction``):

    .. math::
        \varepsilon(u) = \varepsilon_t + \frac{\varepsilon_t - \varepsilon_{t+1}}{u_t - u_{t+1}}
                         \min\big(u - u_t,\ \rho\,(u_t - u_{t+1})\big),

    integrated exactly along ``dy = eps d sigma`` from ``sigma_t`` to ``sigma_{t-1}``.  Splitting the integral
    where the extrapolation saturates, at ``u_* = min(abar_{t-1}, abar_t + rho (abar_t - abar_{t+1}))``, and
    integrating by parts gives the paper's form with ``G(abar_{t-1})`` replaced by ``G(u_*)``:

    .. math::
        c = \frac{\sqrt{\bar\alpha_{t-1}}}{\bar\alpha_t - \bar\alpha_{t+1}}
            \Big(G(u_*) - G(\bar\alpha_t) - (u_* - \bar\alpha_t)\,\sigma_{t-1}\Big),
        \qquad G(a) = \sqrt{a(1-a)} + \arcsin\sqrt a .

    So ``c`` equals :func:`accelerated_ode_coefficient` when the extrapolation ratio
    ``(abar_{t-1} - abar_t) / (abar_t - abar_{t+1})`` is at most ``rho`` (``rho = inf``: the paper's sampler), is
    0 (exact DDIM) at ``rho = 0``, and grows with ``rho`` in between.  It depends on the levels only, so the
    step stays linear in its tensor arguments.  On a smoothly refined grid the ratio is ``1 + O(step)`` and the
    cap never acts; the default ``rho = 2`` barely touches the rounded ``linspace`` grids of a 1000-step
    schedule, whose strides alternate 1 and 2 training steps (ratios up to 2.06), where ``rho = 1`` costs the
    order (``tests/test_order.py``), and still cuts ``trailing``'s ratios of 16.3 and 7.0 at 5 NFE.
    """
    a_next, a_t, a_prev = _correction_levels(alpha_bar_next, alpha_bar_t, alpha_bar_prev)
    rho = check_max_ratio(max_ratio)
    a_end = a_prev if a_prev - a_t <= rho * (a_t - a_next) else a_t + rho * (a_t - a_next)
    return _arcsin_correction(a_next, a_t, a_prev, a_end)


#: How ``eps`` is extrapolated over a step of the accelerated ODE sampler, each with its coefficient function:
#: ``"alpha_bar"`` the paper's (:func:`accelerated_ode_coefficient`), ``"lambda"`` linear in the half log-SNR
#: (:func:`accelerated_ode_lambda_coefficient`), ``"capped"`` the paper's held beyond ``max_ratio`` times the last
#: interval (:func:`accelerated_ode_capped_coefficient`).
EXTRAPOLATIONS = ("alpha_bar", "lambda", "capped")


def extrapolation_coefficient(
    extrapolation: str = "alpha_bar", max_ratio=2.0
) -> Callable[[float, float, float], float]:
    """The coefficient function ``c(abar_{t+1}, abar_t, abar_{t-1})`` of the extrapolation ``extrapolation`` (one of
    :data:`EXTRAPOLATIONS`), for :func:`accelerated_ode_step`: the one place that binds each rule to its function,
    used by the sampler loops and by ``AcceleratedDDIMScheduler``.  ``max_ratio`` (``"capped"`` only) is checked
    here (:func:`check_max_ratio`), before any step; ``ValueError`` for an unknown extrapolation."""
    if extrapolation == "alpha_bar":
        return accelerated_ode_coefficient
    if extrapolation == "lambda":
        return accelerated_ode_lambda_coefficient
    if extrapolation == "capped":
        rho = check_max_ratio(max_ratio)
        return lambda a_next, a_t, a_prev: accelerated_ode_capped_coefficient(a_next, a_t, a_prev, rho)
    raise ValueError(f"unknown extrapolation {extrapolation!r}; expected one of {EXTRAPOLATIONS}")


# fmt: off
def accelerated_ode_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t,
    alpha_bar_prev,
    eps_next: torch.Tensor | None = None,
    alpha_bar_next=None,
    coefficient: Callable[[float, float, float], float] | None = None,
) -> torch.Tensor:
    r"""Accelerated deterministic update, one model evaluation per step
    (official multistep form):

    .. math::
        x_{t-1} = \mathrm{DDIM}(x_t, \varepsilon_t)
                  + c\,(\varepsilon_{t+1} - \varepsilon_t),

    with ``c = coefficient(abar_{t+1}, abar_t, abar_{t-1})``, by default
    the paper's :func:`accelerated_ode_coefficient`,
    ``eps_t = eps_theta(x_t, t)`` and ``eps_next`` = ``eps_{t+1}`` the
    model output at the previous (noisier) iterate, level
    ``alpha_bar_next``.  Without a previous evaluation (first step) it is
    plain DDIM.  Derivation: in ``y = x / sqrt(abar)`` the
    probability-flow ODE is ``dy = eps d sigma``; integrating it exactly
    from ``abar_t`` to ``abar_{t-1}`` with ``eps`` extrapolated linearly
    in ``abar`` through ``(abar_{t+1}, eps_{t+1})`` and
    ``(abar_t, eps_t)`` gives this formula (chapter *Accelerated ODE*).
    The book's safeguarded variants are this step with another
    extrapolation of ``eps``: :func:`accelerated_ode_lambda_coefficient`
    (linear in the half log-SNR) and
    :func:`accelerated_ode_capped_coefficient` (linear in ``abar``,
    saturated).
    """
    out = ddim_step(x, eps, alpha_bar_t, alpha_bar_prev)
    if eps_next is None:
        return out
    if alpha_bar_next is None:
        raise ValueError("eps_next given without alpha_bar_next")
    if coefficient is None:
        coefficient = accelerated_ode_coefficient
    c = coefficient(alpha_bar_next, alpha_bar_t, alpha_bar_prev)
    return out + c * (eps_next - eps)
# fmt: on


# --------------------------------------------------------------------------------------------------------------
# Accelerated stochastic sampler
# --------------------------------------------------------------------------------------------------------------
def accelerated_sde_noise_scale(alpha_bar_t, alpha_bar_prev) -> float:
    r"""``sqrt((1 - alpha_t) / 2)``, the scale of each of the two half-variance injections."""
    return math.sqrt((1.0 - step_alpha(alpha_bar_t, alpha_bar_prev)) / 2.0)


# fmt: off
def accelerated_sde_perturb(
    x: torch.Tensor, alpha_bar_t, alpha_bar_prev, noise: torch.Tensor
) -> torch.Tensor:
    r"""First half of the accelerated stochastic step (official README):

    .. math::
        Y_t^+ = \Phi_t(Y_t, Z_t) = Y_t + \sqrt{(1 - \alpha_t)/2}\, Z_t.
    """
    scale = accelerated_sde_noise_scale(alpha_bar_t, alpha_bar_prev)
    return x + scale * noise
# fmt: on


# fmt: off
def accelerated_sde_step(
    x_plus: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t,
    alpha_bar_prev,
    noise: torch.Tensor,
) -> torch.Tensor:
    r"""Second half of the accelerated stochastic step (official README),
    with ``eps = eps_theta(Y_t^+, t)`` evaluated at the perturbed point
    and the time index ``t``:

    .. math::
        Y_{t-1} = \Psi_t(Y_t^+, Z_t^+)
                = \frac{Y_t^+ + (1 - \alpha_t) s_t(Y_t^+)}{\sqrt{\alpha_t}}
                  + \sqrt{(1 - \alpha_t)/2}\, Z_t^+.

    The official CIFAR code multiplies the first noise by an extra
    ``sqrt(alpha_t)`` (issue #1 of the authors' repository); this follows
    the README, as the paper does.
    """
    c_x, c_eps, _ = ddpm_type_coefficients(alpha_bar_t, alpha_bar_prev)
    scale = accelerated_sde_noise_scale(alpha_bar_t, alpha_bar_prev)
    return c_x * x_plus + c_eps * eps + scale * noise
# fmt: on


# --------------------------------------------------------------------------------------------------------------
# The stochastic samplers as Gaussian half-steps, in order
# --------------------------------------------------------------------------------------------------------------
class Transition(NamedTuple):
    r"""One Gaussian half-step ``x' = rule(x, eps, z)`` of a stochastic sampler, ``z ~ N(0, I)``.

    ``rule`` is affine in ``x``, ``eps`` and ``z`` (so the law of ``x'`` given ``x`` is ``N(mu(x), sigma^2 I)``
    with ``mu(x) = rule(x, eps(x), 0)`` and ``sigma = rule(0, 0, 1)``); ``evaluates`` says whether it needs the
    model's noise prediction at its own input, ``eps = eps_theta(x, t)`` (otherwise ``eps`` is ``None``);
    ``level_out`` is the level whose marginal its output approximates and ``name`` a short name.
    """

    rule: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]
    evaluates: bool
    level_out: float
    name: str


def ddpm_type_transitions(alpha_bar_t, alpha_bar_prev) -> tuple[Transition]:
    r"""The DDPM-type step as one Gaussian half-step (:func:`ddpm_type_step`, the model evaluated at ``Y_t``):

    .. math:: Y_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(Y_t + (1 - \alpha_t) s_t(Y_t) + \sqrt{1 - \alpha_t}\, Z_t\Big).
    """
    a_t, a_prev = float(alpha_bar_t), float(alpha_bar_prev)
    return (Transition(lambda x, eps, z: ddpm_type_step(x, eps, a_t, a_prev, z), True, a_prev, "ddpm_type"),)


def accelerated_sde_transitions(alpha_bar_t, alpha_bar_prev) -> tuple[Transition, Transition]:
    r"""The accelerated stochastic step as two Gaussian half-steps, in the order of the official README:

    .. math::
        Y_t^+ = \Phi_t(Y_t, Z_t) = Y_t + \sqrt{(1 - \alpha_t)/2}\, Z_t, \qquad
        Y_{t-1} = \Psi_t(Y_t^+, Z_t^+)
                = \frac{Y_t^+ + (1 - \alpha_t) s_t(Y_t^+)}{\sqrt{\alpha_t}} + \sqrt{(1 - \alpha_t)/2}\, Z_t^+:

    first the perturbation (:func:`accelerated_sde_perturb`, no model evaluation, output still at level
    ``abar_t``), then the update (:func:`accelerated_sde_step`) with the model evaluated once, at the perturbed
    point ``Y_t^+`` and the time index ``t``.  The noises are drawn in this order: ``Z_t``, then ``Z_t^+``.
    """
    a_t, a_prev = float(alpha_bar_t), float(alpha_bar_prev)
    return (
        Transition(lambda x, eps, z: accelerated_sde_perturb(x, a_t, a_prev, z), False, a_t, "perturb"),
        Transition(lambda x, eps, z: accelerated_sde_step(x, eps, a_t, a_prev, z), True, a_prev, "accelerated_sde"),
    )


def split_at_evaluation(transitions) -> tuple[tuple[Transition, ...], tuple[Transition, ...]]:
    """``(before, after)``: the half-steps of one step before the model evaluation and from it on (``after[0]``
    is the one that evaluates), for code that cuts a step at the evaluation, as a diffusers scheduler's ``step``
    does.  ``ValueError`` unless exactly one half-step evaluates."""
    transitions = tuple(transitions)
    k = [j for j, tr in enumerate(transitions) if tr.evaluates]
    if len(k) != 1:
        raise ValueError(f"expected exactly one half-step that evaluates the model, got {len(k)}")
    return transitions[: k[0]], transitions[k[0] :]


# --------------------------------------------------------------------------------------------------------------
# Peer rules (exponential integrators in the data prediction x0, in the half log-SNR lambda)
# --------------------------------------------------------------------------------------------------------------
def half_log_snr(alpha_bar) -> float:
    r"""``lambda = log(sqrt(abar) / sqrt(1 - abar)) = (log abar - log1p(-abar)) / 2``; ``+inf`` at ``abar = 1``."""
    a = float(alpha_bar)
    if not 0.0 < a <= 1.0:
        raise ValueError(f"alpha_bar must lie in (0, 1], got {a!r}")
    return math.inf if a == 1.0 else 0.5 * (math.log(a) - math.log1p(-a))


def _first_order_coefficients(alpha_bar_t: float, alpha_bar_prev: float) -> tuple[float, float, float]:
    """``(sigma_prev / sigma_t, -alpha_prev expm1(-h), h)`` of the exponential-integrator step (DDIM in x0 form)."""
    if not alpha_bar_prev > alpha_bar_t:
        raise ValueError(
            f"a step must go to a less noisy level: alpha_bar_prev={alpha_bar_prev!r} <= alpha_bar_t={alpha_bar_t!r}"
        )
    h = half_log_snr(alpha_bar_prev) - half_log_snr(alpha_bar_t)
    sigma_ratio = math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t))
    return sigma_ratio, -math.sqrt(alpha_bar_prev) * math.expm1(-h), h


def dpm_solver_pp_2m_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    alpha_bar_t,
    alpha_bar_prev,
    x0_next: torch.Tensor | None = None,
    alpha_bar_next=None,
) -> torch.Tensor:
    r"""One step of DPM-Solver++(2M) (Lu et al. 2022, *DPM-Solver++*, Algorithm 2; diffusers' ``midpoint``):

    .. math::
        x_{\rm prev} = \frac{\sigma_{\rm prev}}{\sigma_t}\, x_t - \alpha_{\rm prev}\big(e^{-h} - 1\big)\, D,
        \qquad
        D = \Big(1 + \frac{1}{2r}\Big) x_0(x_t) - \frac{1}{2r}\, x_0(x_{\rm next}),
        \quad r = \frac{h_{\rm last}}{h},

    with ``x0`` the data predictions at the current and the previous (noisier) iterate.  Without ``x0_next``
    (first step), or when ``alpha_bar_prev = 1`` (``h = inf``), ``D = x0(x_t)``: the first-order step, which is
    exact DDIM written in ``x0``.  The step is exact when ``x0`` is linear in ``lambda`` along the step.
    """
    sigma_ratio, c_x0, h = _first_order_coefficients(float(alpha_bar_t), float(alpha_bar_prev))
    if x0_next is None or math.isinf(h):
        d = x0
    else:
        if alpha_bar_next is None:
            raise ValueError("x0_next given without alpha_bar_next")
        h_last = half_log_snr(alpha_bar_t) - half_log_snr(alpha_bar_next)
        if not h_last > 0:
            raise ValueError(
                f"the previous level must be noisier: alpha_bar_next={alpha_bar_next!r} >= alpha_bar_t={alpha_bar_t!r}"
            )
        half_inv_r = 0.5 * h / h_last
        d = (1.0 + half_inv_r) * x0 - half_inv_r * x0_next
    return sigma_ratio * x + c_x0 * d


def _unic_weights(h: float, rk: float | None) -> tuple[float | None, float]:
    r"""UniC-bh2 weights ``(rho_1, rho_t)`` of the differences ``D_1`` and ``x0_t - x0_s0`` (Zhao et al. 2023,
    Algorithm 3, ``B(h) = e^{-h} - 1``).  Order 1 (``rk`` is None): ``rho_t = 1/2``.  Order 2: the solution of
    ``[[1, 1], [rk, 1]] (rho_1, rho_t) = (b_1, b_2)`` with ``b_k = k! g_k / B(h)``, ``g_1 = expm1(hh)/hh - 1``,
    ``g_{k+1} = g_k / hh - 1/(k+1)!`` and ``hh = -h`` (diffusers' recursion, written out for order 2)."""
    if rk is None:
        return None, 0.5
    hh = -h
    b_h = math.expm1(hh)
    phi = b_h / hh - 1.0
    b1 = phi / b_h
    phi = phi / hh - 0.5
    b2 = 2.0 * phi / b_h
    rho_1 = (b1 - b2) / (1.0 - rk)
    return rho_1, b1 - rho_1


def unipc_bh2_corrector_step(
    x_s0: torch.Tensor,
    x0_s0: torch.Tensor,
    x0_t: torch.Tensor,
    alpha_bar_s0,
    alpha_bar_t,
    x0_s1: torch.Tensor | None = None,
    alpha_bar_s1=None,
) -> torch.Tensor:
    r"""The UniC corrector (Zhao et al. 2023, *UniPC*, bh2 variant, data prediction; diffusers'
    ``multistep_uni_c_bh_update``): after the predictor moved ``x_s0`` (level ``s0``) to level ``t`` and the model
    was evaluated there (data prediction ``x0_t``, at the *uncorrected* point), the corrected iterate is

    .. math::
        x_t^{c} = \frac{\sigma_t}{\sigma_{s_0}} x_{s_0} - \alpha_t (e^{-h} - 1)\, x_0(s_0)
                  - \alpha_t B(h) \big(\rho_1 D_1 + \rho_t (x_0(t) - x_0(s_0))\big),
        \qquad B(h) = e^{-h} - 1,

    with ``h = lambda_t - lambda_s0``, ``D_1 = (x0(s1) - x0(s0)) / r_1``, ``r_1 = (lambda_s1 - lambda_s0) / h``
    and the weights of :func:`_unic_weights` (order 2 when the older evaluation ``x0_s1`` is given, else order 1
    with ``rho_t = 1/2`` and no ``D_1`` term).  The corrector costs no model evaluation: ``x0_t`` is reused by the
    next predictor step.
    """
    sigma_ratio, c_x0, h = _first_order_coefficients(float(alpha_bar_s0), float(alpha_bar_t))
    if math.isinf(h):
        raise ValueError("the UniC corrector is never applied at alpha_bar = 1 (no model evaluation there)")
    alpha_t = math.sqrt(float(alpha_bar_t))
    b_h = math.expm1(-h)
    if x0_s1 is None:
        _, rho_t = _unic_weights(h, None)
        corr = rho_t * (x0_t - x0_s0)
    else:
        if alpha_bar_s1 is None:
            raise ValueError("x0_s1 given without alpha_bar_s1")
        rk = (half_log_snr(alpha_bar_s1) - half_log_snr(alpha_bar_s0)) / h
        rho_1, rho_t = _unic_weights(h, rk)
        corr = rho_1 * (x0_s1 - x0_s0) / rk + rho_t * (x0_t - x0_s0)
    return sigma_ratio * x_s0 + c_x0 * x0_s0 - alpha_t * b_h * corr
