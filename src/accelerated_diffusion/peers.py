r"""diffusers' own peer schedulers, configured for epsilon-prediction models with given training betas.

The peer *rules* -- DPM-Solver++(2M) and UniPC-bh2 -- are implemented once, in float64, in
:mod:`accelerated_diffusion.updates` (:func:`~accelerated_diffusion.updates.dpm_solver_pp_2m_step`,
:func:`~accelerated_diffusion.updates.unipc_bh2_corrector_step`) and run on any path by
:func:`accelerated_diffusion.sample` as ``"dpm_solver_pp_2m"`` and ``"unipc_bh2"``.  This module builds diffusers'
``DPMSolverMultistepScheduler`` and ``UniPCMultistepScheduler`` with the same settings, registered as
``"diffusers_dpm_solver_pp_2m"`` and ``"diffusers_unipc_bh2"``, so that the tests and the book can show that
the two routes agree: diffusers computes its coefficients in float32 (an error floor near ``1e-7``), and its
UniPC accepts no custom timesteps.
"""

from __future__ import annotations

import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

__all__ = [
    "diffusers_dpm_solver_pp_2m",
    "diffusers_unipc_bh2",
    "diffusers_path",
    "unipc_for_timesteps",
    "dpm_solver_pp_2m_for_timesteps",
    "unipc_bh2_for_timesteps",
]


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
    return DPMSolverMultistepScheduler(
        **_diffusers_kwargs(betas, spacing),
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
    )


def diffusers_unipc_bh2(betas, spacing: str = "leading"):
    r"""diffusers' ``UniPCMultistepScheduler`` (``solver_type="bh2"``, ``solver_order=2``, ``predict_x0=True``,
    corrector on, ``lower_order_final=True``, ``final_sigmas_type="zero"``) for the training ``betas``.  Its
    ``set_timesteps`` takes no custom timesteps (diffusers 0.42): only ``num_inference_steps`` with a spacing."""
    return UniPCMultistepScheduler(
        **_diffusers_kwargs(betas, spacing),
        solver_type="bh2",
        solver_order=2,
        predict_x0=True,
        lower_order_final=True,
    )


def diffusers_path(scheduler) -> tuple[torch.Tensor, list[int]]:
    r"""``(alpha_bars, timesteps)``: the path a diffusers scheduler visits after ``set_timesteps``, with its own
    (float32) ``alphas_cumprod`` at ``scheduler.timesteps`` followed by the final level (1.0 for
    ``final_sigmas_type="zero"``, else the first training level)."""
    ts = [int(t) for t in scheduler.timesteps]
    abar = scheduler.alphas_cumprod.double()
    final = 1.0 if scheduler.config.final_sigmas_type == "zero" else float(abar[0])
    return torch.cat([abar[ts], torch.tensor([final], dtype=torch.float64)]), ts


def unipc_for_timesteps(scheduler, timesteps) -> UniPCMultistepScheduler:
    """``scheduler`` (diffusers' UniPC) reconfigured with the diffusers spacing that visits exactly ``timesteps``;
    a clear error when none does (diffusers' UniPC takes no custom timesteps)."""
    ts = [int(t) for t in timesteps]
    for spacing in ("leading", "trailing", "linspace"):
        candidate = UniPCMultistepScheduler.from_config(scheduler.config, timestep_spacing=spacing)
        candidate.set_timesteps(len(ts))
        if [int(t) for t in candidate.timesteps] == ts:
            return candidate
    raise ValueError(
        f"diffusers' UniPCMultistepScheduler cannot visit the timesteps {ts[:3]}...{ts[-2:]} (no spacing of its own "
        "gives them and it accepts no custom timesteps); use the library's 'unipc_bh2', which takes any grid"
    )


# The factories of the registry (:data:`accelerated_diffusion.samplers.SAMPLERS`): ``factory(betas, timesteps)`` ->
# ``(scheduler, set_timesteps keywords)``, so that :func:`accelerated_diffusion.run_sampler` runs every diffusers
# peer the same way, without knowing which one it is.
def dpm_solver_pp_2m_for_timesteps(betas, timesteps) -> tuple[DPMSolverMultistepScheduler, dict]:
    """:func:`diffusers_dpm_solver_pp_2m` for the training ``betas``, with the keywords of ``set_timesteps`` that
    visit ``timesteps`` (it takes custom timesteps)."""
    return diffusers_dpm_solver_pp_2m(betas), {"timesteps": [int(t) for t in timesteps]}


def unipc_bh2_for_timesteps(betas, timesteps) -> tuple[UniPCMultistepScheduler, dict]:
    """:func:`diffusers_unipc_bh2` for the training ``betas``, reconfigured by :func:`unipc_for_timesteps` with
    the spacing that visits ``timesteps`` (a clear error when none does), and the keywords of ``set_timesteps``."""
    return unipc_for_timesteps(diffusers_unipc_bh2(betas), timesteps), {"num_inference_steps": len(timesteps)}
