r"""Peer samplers for comparison: DPM-Solver++(2M) and UniPC (bh2, order 2), on any ``alpha_bar`` path.

Two ways to run them:

1. **On an arbitrary path, in float64** -- :func:`dpm_solver_pp_2m` and :func:`unipc_bh2` walk a sampling path
   (noisiest level first, see :mod:`accelerated_diffusion.schedules`) with an ``eps_fn(x, t)``, exactly like
   :func:`accelerated_diffusion.sample`.  This is what the rate measurements need: diffusers' schedulers compute
   their coefficients in float32 (the DPM-Solver++ scheduler even casts the sample to float32), which puts an
   error floor of about ``1e-7`` under every measurement, and UniPC's scheduler accepts no custom timesteps, so it
   cannot follow the paper's schedule.
2. **As diffusers schedulers** -- :func:`diffusers_dpm_solver_pp_2m` and :func:`diffusers_unipc` configure
   ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` with the given training betas, for use with
   :func:`accelerated_diffusion.sample_with_scheduler` (pretrained models).  The tests check that route 1
   reproduces route 2 on the path that the diffusers scheduler visits (:func:`diffusers_path`).

Notation (Lu et al. 2022, *DPM-Solver++*): along a path level ``abar``,
``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``, ``lambda = log(alpha / sigma)`` (half log-SNR), and the data
prediction ``x0 = (x - sigma eps) / alpha`` (:func:`accelerated_diffusion.updates.eps_to_x0`).  A step goes from
level ``t`` to the less noisy level ``prev`` with ``h = lambda_prev - lambda_t > 0``; ``next`` is the level of the
previous (noisier) evaluation, ``h_last = lambda_t - lambda_next``.  At ``abar = 1`` (``sigma = 0``)
``lambda = +inf``; a step to that level is first order and returns the data prediction ``x0`` exactly (diffusers'
``final_sigmas_type="zero"``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .samplers import _Stepper, run_loop
from .updates import eps_to_x0

__all__ = [
    "PEER_METHODS",
    "half_log_snr",
    "dpm_solver_pp_2m_step",
    "unipc_bh2_corrector_step",
    "dpm_solver_pp_2m",
    "unipc_bh2",
    "sample_peer",
    "diffusers_dpm_solver_pp_2m",
    "diffusers_unipc",
    "diffusers_path",
]


def half_log_snr(alpha_bar) -> float:
    r"""``lambda = log(sqrt(abar) / sqrt(1 - abar)) = (log abar - log1p(-abar)) / 2``; ``+inf`` at ``abar = 1``."""
    a = float(alpha_bar)
    if not 0.0 < a <= 1.0:
        raise ValueError(f"alpha_bar must lie in (0, 1], got {a!r}")
    return math.inf if a == 1.0 else 0.5 * (math.log(a) - math.log1p(-a))


def _first_order_coefficients(alpha_bar_t: float, alpha_bar_prev: float) -> tuple[float, float, float]:
    """``(sigma_prev / sigma_t, -alpha_prev expm1(-h), h)`` of the exponential-integrator step (DDIM in x0 form)."""
    if not alpha_bar_prev > alpha_bar_t:
        raise ValueError(f"a step must go to a less noisy level: alpha_bar_prev={alpha_bar_prev!r} <= alpha_bar_t={alpha_bar_t!r}")
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
            raise ValueError(f"the previous level must be noisier: alpha_bar_next={alpha_bar_next!r} >= alpha_bar_t={alpha_bar_t!r}")
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


# --------------------------------------------------------------------------------------------------------------
# Loops on an arbitrary path (float64 coefficients), same conventions as accelerated_diffusion.sample
# --------------------------------------------------------------------------------------------------------------
def _run_dpm_solver_pp_2m(s: _Stepper, lower_order_final: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M) loop: first step first order; the last step first order when the path ends at
    ``abar = 1`` or, with ``lower_order_final``, when it has fewer than 15 steps (diffusers' rule)."""
    x, x0_next, a_next = s.x, None, None
    n = len(s)
    for i in range(n):
        a_t, a_prev = s.levels[i], s.levels[i + 1]
        x0 = eps_to_x0(x, s.eps(x, i), a_t)
        first = x0_next is None or (i == n - 1 and lower_order_final and n < 15)
        x = dpm_solver_pp_2m_step(x, x0, a_t, a_prev, None if first else x0_next, a_next)
        x0_next, a_next = x0, a_t
        s.done(i, x)
    return x


def _run_unipc_bh2(s: _Stepper) -> torch.Tensor:
    """UniPC loop (predictor UniP-2 = DPM-Solver++(2M) step, corrector UniC), diffusers' order schedule: order
    ``min(2, evaluations so far, steps left)`` for the predictor, the corrector at step ``i`` uses the order of the
    predictor of step ``i - 1``; no corrector after the last step."""
    x, n = s.x, len(s)
    hist: list[tuple[torch.Tensor, float]] = []  # (x0, level) of the evaluations, newest last
    last_x, last_order = None, 0
    for i in range(n):
        a_t, a_prev = s.levels[i], s.levels[i + 1]
        x0 = eps_to_x0(x, s.eps(x, i), a_t)
        if last_x is not None:
            older = hist[-2] if last_order == 2 else (None, None)
            x = unipc_bh2_corrector_step(last_x, hist[-1][0], x0, hist[-1][1], a_t, *older)
        hist = (hist + [(x0, a_t)])[-2:]
        order = min(2, len(hist), n - i)
        last_x, last_order = x, order
        x0_next, a_next = hist[-2] if order == 2 else (None, None)
        x = dpm_solver_pp_2m_step(x, x0, a_t, a_prev, x0_next, a_next)
        s.done(i, x)
    return x


PEER_METHODS: dict[str, Callable[[_Stepper], torch.Tensor]] = {
    "dpm_solver_pp_2m": _run_dpm_solver_pp_2m,
    "unipc_bh2": _run_unipc_bh2,
}


def sample_peer(
    eps_fn,
    x: torch.Tensor,
    alpha_bars,
    method: str,
    *,
    timesteps=None,
    progress: bool = False,
    check_finite: bool = True,
    return_nfe: bool = False,
):
    r"""Run a peer sampler (``"dpm_solver_pp_2m"`` or ``"unipc_bh2"``) from ``x`` at level ``alpha_bars[0]`` along
    the path ``alpha_bars``; same arguments and conventions as :func:`accelerated_diffusion.sample` (one
    ``eps_fn(x, timesteps[i])`` call per step, NFE = ``len(alpha_bars) - 1``)."""
    return run_loop(PEER_METHODS, eps_fn, x, alpha_bars, method, timesteps=timesteps, progress=progress,
                    check_finite=check_finite, return_nfe=return_nfe)

def dpm_solver_pp_2m(eps_fn, x, alpha_bars, **kwargs):
    """DPM-Solver++(2M) on the path ``alpha_bars`` (see :func:`dpm_solver_pp_2m_step`, :func:`sample_peer`)."""
    return sample_peer(eps_fn, x, alpha_bars, "dpm_solver_pp_2m", **kwargs)


def unipc_bh2(eps_fn, x, alpha_bars, **kwargs):
    """UniPC-bh2 of order 2 on the path ``alpha_bars`` (see :func:`unipc_bh2_corrector_step`, :func:`sample_peer`)."""
    return sample_peer(eps_fn, x, alpha_bars, "unipc_bh2", **kwargs)


# --------------------------------------------------------------------------------------------------------------
# diffusers' schedulers, configured for epsilon-prediction models with given training betas
# --------------------------------------------------------------------------------------------------------------
def _diffusers_kwargs(betas, spacing: str) -> dict:
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or betas.numel() < 2:
        raise ValueError(f"betas must be 1-D with at least 2 entries, got shape {tuple(betas.shape)}")
    return dict(
        num_train_timesteps=int(betas.numel()),
        trained_betas=betas.tolist(),
        prediction_type="epsilon",
        timestep_spacing=spacing,
        final_sigmas_type="zero",
    )


def diffusers_dpm_solver_pp_2m(betas, spacing: str = "leading"):
    r"""diffusers' ``DPMSolverMultistepScheduler`` as DPM-Solver++(2M) (``algorithm_type="dpmsolver++"``,
    ``solver_order=2``, ``solver_type="midpoint"``, ``lower_order_final=True``, ``final_sigmas_type="zero"``) for
    the training ``betas`` (e.g. :func:`accelerated_diffusion.schedules.betas_for`).  It accepts custom
    ``timesteps`` in :func:`accelerated_diffusion.sample_with_scheduler`."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        **_diffusers_kwargs(betas, spacing), algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True,
    )


def diffusers_unipc(betas, spacing: str = "leading"):
    r"""diffusers' ``UniPCMultistepScheduler`` (``solver_type="bh2"``, ``solver_order=2``, ``predict_x0=True``,
    corrector on, ``lower_order_final=True``, ``final_sigmas_type="zero"``) for the training ``betas``.  Its
    ``set_timesteps`` takes no custom timesteps (diffusers 0.42): only ``num_inference_steps`` with a spacing."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        **_diffusers_kwargs(betas, spacing), solver_type="bh2", solver_order=2, predict_x0=True, lower_order_final=True,
    )


def diffusers_path(scheduler) -> tuple[torch.Tensor, list[int]]:
    r"""``(alpha_bars, timesteps)``: the path a diffusers scheduler visits after ``set_timesteps``, with its own
    (float32) ``alphas_cumprod`` at ``scheduler.timesteps`` followed by the final level (1.0 for
    ``final_sigmas_type="zero"``, else the first training level)."""
    ts = [int(t) for t in scheduler.timesteps]
    abar = scheduler.alphas_cumprod.double()
    final = 1.0 if scheduler.config.final_sigmas_type == "zero" else float(abar[0])
    return torch.cat([abar[ts], torch.tensor([final], dtype=torch.float64)]), ts
