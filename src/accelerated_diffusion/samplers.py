r"""Sampling loops: one short function per sampler with one shared signature (k-diffusion style).

Every loop walks a sampling path ``alpha_bars`` (noisiest level first, output level last; see
:mod:`accelerated_diffusion.schedules`), calls ``eps_fn(x, t)`` exactly once per step with ``t = timesteps[i]``
(by default the level ``alpha_bars[i]`` itself, which is what the exact-score targets of
:mod:`accelerated_diffusion.targets` expect), and applies one update rule of :mod:`accelerated_diffusion.updates`.
So the number of function evaluations (NFE) is ``len(alpha_bars) - 1``.

The public entry point is :func:`sample`.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm import tqdm

from . import updates
from .schedules import validate_path

__all__ = ["METHODS", "sample", "sample_with_scheduler", "ModelOutputError"]

EpsFn = Callable[[torch.Tensor, object], torch.Tensor]


class ModelOutputError(RuntimeError):
    """The model returned something unusable (wrong shape, NaN or Inf); the message names the step."""


class _Stepper:
    """Shared bookkeeping of a loop: the path, timesteps, NFE count, noise draws and output checks."""

    def __init__(self, eps_fn, x, alpha_bars, timesteps, generator, progress, check_finite, desc):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        self.path = validate_path(alpha_bars)
        n = self.path.numel() - 1
        if timesteps is None:
            timesteps = [float(a) for a in self.path[:-1]]
        elif len(timesteps) != n:
            raise ValueError(f"timesteps has {len(timesteps)} entries but alpha_bars defines {n} steps")
        self.eps_fn, self.x, self.timesteps = eps_fn, x, list(timesteps)
        self.generator, self.check_finite = generator, check_finite
        self.levels = [float(a) for a in self.path]
        self.nfe = 0
        self.bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)

    def __len__(self) -> int:
        return len(self.timesteps)

    def eps(self, x: torch.Tensor, i: int) -> torch.Tensor:
        t = self.timesteps[i]
        out = self.eps_fn(x, t)
        self.nfe += 1
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelOutputError(f"step {i} (t={t}): model output has shape {shape}, expected {tuple(x.shape)}")
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise ModelOutputError(f"step {i} (t={t}): model output contains NaN or Inf")
        return out.to(x.dtype)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def done(self, i: int, x: torch.Tensor) -> None:
        if self.check_finite and not bool(torch.isfinite(x).all()):
            raise ModelOutputError(f"step {i} (t={self.timesteps[i]}): the update produced NaN or Inf")
        self.bar.update(1)


def _one_evaluation_loop(s: _Stepper, step) -> torch.Tensor:
    """``x <- step(x, eps_fn(x, t_i), abar_i, abar_{i+1})`` along the path (the deterministic one-step rules)."""
    x = s.x
    for i in range(len(s)):
        x = step(x, s.eps(x, i), s.levels[i], s.levels[i + 1])
        s.done(i, x)
    return x


def sample_ddim(s: _Stepper) -> torch.Tensor:
    """Exact DDIM, eta = 0 (:func:`updates.ddim_step`)."""
    return _one_evaluation_loop(s, updates.ddim_step)


def sample_ddim_type(s: _Stepper) -> torch.Tensor:
    """The paper's DDIM-type baseline (:func:`updates.ddim_type_step`)."""
    return _one_evaluation_loop(s, updates.ddim_type_step)


def sample_ddpm_type(s: _Stepper) -> torch.Tensor:
    """The paper's DDPM-type baseline (:func:`updates.ddpm_type_step`); one noise draw per step."""
    x = s.x
    for i in range(len(s)):
        eps = s.eps(x, i)
        x = updates.ddpm_type_step(x, eps, s.levels[i], s.levels[i + 1], s.noise(x))
        s.done(i, x)
    return x


def sample_accelerated_ode(s: _Stepper) -> torch.Tensor:
    """Accelerated deterministic sampler (:func:`updates.accelerated_ode_step`), multistep: the first step is
    plain DDIM, every later step reuses the previous model output, so NFE = number of steps."""
    x, eps_next, a_next = s.x, None, None
    for i in range(len(s)):
        a_t, a_prev = s.levels[i], s.levels[i + 1]
        eps = s.eps(x, i)  # eps_t(x_t)
        x = updates.accelerated_ode_step(x, eps, a_t, a_prev, eps_next, a_next)
        eps_next, a_next = eps, a_t  # becomes eps_{t+1}, abar_{t+1} of the next step
        s.done(i, x)
    return x


def sample_accelerated_sde(s: _Stepper) -> torch.Tensor:
    """Accelerated stochastic sampler (:func:`updates.accelerated_sde_perturb` then
    :func:`updates.accelerated_sde_step`); noise is drawn in the order ``Z_T, Z_T^+, Z_{T-1}, Z_{T-1}^+, ...``."""
    x = s.x
    for i in range(len(s)):
        a_t, a_prev = s.levels[i], s.levels[i + 1]
        x_plus = updates.accelerated_sde_perturb(x, a_t, a_prev, s.noise(x))  # Y_t^+ = Phi_t(Y_t, Z_t)
        eps = s.eps(x_plus, i)  # one evaluation, at the perturbed point, time index t
        x = updates.accelerated_sde_step(x_plus, eps, a_t, a_prev, s.noise(x))  # Y_{t-1} = Psi_t(Y_t^+, Z_t^+)
        s.done(i, x)
    return x


METHODS: dict[str, Callable[[_Stepper], torch.Tensor]] = {
    "ddim": sample_ddim,
    "ddim_type": sample_ddim_type,
    "ddpm_type": sample_ddpm_type,
    "accelerated_ode": sample_accelerated_ode,
    "accelerated_sde": sample_accelerated_sde,
}
STOCHASTIC = frozenset({"ddpm_type", "accelerated_sde"})


def sample(
    eps_fn: EpsFn,
    x: torch.Tensor,
    alpha_bars,
    method: str,
    *,
    timesteps=None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    check_finite: bool = True,
    return_nfe: bool = False,
):
    r"""Run a sampler from ``x`` (the sample at level ``alpha_bars[0]``) along the path ``alpha_bars``.

    Parameters
    ----------
    eps_fn:
        ``eps_fn(x, t) -> eps`` with the shape of ``x``; called once per step, ``t = timesteps[i]``.
    x:
        Starting point ``Y_T`` (e.g. ``torch.randn``); its dtype and device are kept.
    alpha_bars:
        The path: strictly increasing levels in (0, 1], noisiest first, output level last.
    method:
        One of ``"ddim"``, ``"ddim_type"``, ``"ddpm_type"``, ``"accelerated_ode"``, ``"accelerated_sde"``.
    timesteps:
        What to pass to ``eps_fn`` at each step (e.g. the model's integer timesteps); default ``alpha_bars[:-1]``
        as floats.
    generator:
        ``torch.Generator`` for the stochastic samplers' noise (seed it for reproducible samples).
    progress:
        Show a tqdm progress bar.
    check_finite:
        Raise :class:`ModelOutputError` naming the step when the model output or the iterate holds NaN/Inf (one
        host synchronisation per step; switch off for speed on an accelerator).
    return_nfe:
        Also return the number of model evaluations used.

    Returns
    -------
    The sample at level ``alpha_bars[-1]``, or ``(sample, nfe)`` when ``return_nfe``.
    """
    return run_loop(METHODS, eps_fn, x, alpha_bars, method, timesteps=timesteps, generator=generator,
                    progress=progress, check_finite=check_finite, return_nfe=return_nfe)


def run_loop(loops: dict, eps_fn, x, alpha_bars, method: str, *, timesteps=None, generator=None, progress=False,
             check_finite=True, return_nfe=False):
    """Validate the arguments and run ``loops[method]`` (shared by :func:`sample` and
    :func:`accelerated_diffusion.peers.sample_peer`)."""
    if method not in loops:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(loops)}")
    stepper = _Stepper(eps_fn, x, alpha_bars, timesteps, generator, progress, check_finite, desc=method)
    try:
        out = loops[method](stepper)
    finally:
        stepper.bar.close()
    return (out, stepper.nfe) if return_nfe else out

def sample_with_scheduler(
    eps_fn: EpsFn,
    noise: torch.Tensor,
    scheduler,
    num_inference_steps: int | None = None,
    *,
    timesteps=None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    return_nfe: bool = False,
):
    r"""Drive any diffusers scheduler (ours or diffusers' own: DDIM, DPM-Solver++, UniPC, ...) with ``eps_fn``.

    The loop every diffusers pipeline runs, and nothing else: ``set_timesteps``, start from
    ``noise * scheduler.init_noise_sigma`` (which ``DDPMPipeline`` does not do), then for each timestep
    ``model_output = eps_fn(scheduler.scale_model_input(x, t), t)`` and ``x = scheduler.step(...).prev_sample``.
    ``eps_fn`` must return what the scheduler's ``prediction_type`` expects. Give either ``num_inference_steps``
    or ``timesteps`` (custom schedules, for schedulers that accept them). NFE = ``len(scheduler.timesteps)``.
    """
    if (num_inference_steps is None) == (timesteps is None):
        raise ValueError("give exactly one of num_inference_steps and timesteps")
    if timesteps is None:
        scheduler.set_timesteps(num_inference_steps, device=noise.device)
    else:
        scheduler.set_timesteps(timesteps=list(timesteps), device=noise.device)
    x = noise * scheduler.init_noise_sigma
    nfe = 0
    kwargs = {"generator": generator} if generator is not None else {}
    for i, t in enumerate(tqdm(scheduler.timesteps, desc=type(scheduler).__name__, disable=not progress, leave=False)):
        out = eps_fn(scheduler.scale_model_input(x, t), t)
        nfe += 1
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelOutputError(f"step {i} (t={int(t)}): model output has shape {shape}, expected {tuple(x.shape)}")
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return (x, nfe) if return_nfe else x
