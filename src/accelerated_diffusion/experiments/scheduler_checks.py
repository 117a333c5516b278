r"""What the chapter *Using the schedulers* measures on a diffusers scheduler, with exact noise predictions.

* :func:`record_network_inputs`: the batches entering a network (its NFE) while a pipeline runs;
* :func:`scheduler_eps`: the ideal network of a target for a scheduler's integer timesteps;
* :func:`output_law` and :func:`kl_to_target`: the exact output law of a deterministic scheduler started from
  ``init_noise_sigma * N(0, I)`` on a Gaussian target, and its KL divergence from the target;
* :func:`start_gain`: the linear map from a stochastic scheduler's start to its output, same noise each run;
* :func:`exact_denoiser`: the ideal k-diffusion denoiser ``model(x, sigma)`` of a target.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

from .. import metrics
from ..samplers import sample_with_scheduler
from .comparison import exact_eps_fn

__all__ = ["record_network_inputs", "scheduler_eps", "output_law", "kl_to_target", "start_gain", "exact_denoiser"]


@contextlib.contextmanager
def record_network_inputs(module: torch.nn.Module):
    """Within the ``with`` block, append (a detached copy of) the first positional input of every call of
    ``module`` to the list it yields: one entry per network evaluation call (NFE)."""
    inputs: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach().clone()))
    try:
        yield inputs
    finally:
        handle.remove()


def scheduler_eps(target, scheduler):
    """``eps_fn(x, t)``: the exact noise prediction of ``target`` at the level ``scheduler.alphas_cumprod[t]``
    of integer timestep ``t`` (:func:`~.comparison.exact_eps_fn` on the scheduler's levels)."""
    return exact_eps_fn(target, SimpleNamespace(alpha_bars=scheduler.alphas_cumprod.double()))


def output_law(scheduler, target, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(mean, cov)`` of the output of a *deterministic* ``scheduler`` run for ``num_steps`` steps with the exact
    noise prediction of the Gaussian ``target`` from ``init_noise_sigma * N(0, I)``: the run is affine in its
    start, ``x -> A x + b`` (:func:`~accelerated_diffusion.metrics.affine_map`), so the output law is
    :math:`N(b, s^2 A A^T)` with :math:`s` = ``init_noise_sigma``."""
    d = target.mean.numel()
    eps_fn = scheduler_eps(target, scheduler)
    A, b = metrics.affine_map(lambda x: sample_with_scheduler(eps_fn, x, scheduler, num_steps), d)
    return b, scheduler.init_noise_sigma**2 * A @ A.T


def kl_to_target(scheduler, target, num_steps: int) -> float:
    """KL(target || output law of :func:`output_law`)."""
    m, C = output_law(scheduler, target, num_steps)
    return metrics.gaussian_kl(target.mean, target.cov, m, C)


def start_gain(scheduler, target, num_steps: int, *, noise_seed: int = 3) -> torch.Tensor:
    r"""The matrix ``A`` of the map from the start ``Y_T^+`` of a stochastic ``scheduler`` to its output, with the
    same noise (``torch.Generator().manual_seed(noise_seed)``) in every run: the runs from 0 and the basis vectors
    recover it exactly (the output is affine in the start for a Gaussian target with exact scores)."""
    d = target.mean.numel()
    eps_fn = scheduler_eps(target, scheduler)

    def run_same_noise(points):
        out = [
            sample_with_scheduler(
                eps_fn,
                p[None] / scheduler.init_noise_sigma,
                scheduler,
                num_steps,
                generator=torch.Generator().manual_seed(noise_seed),
            )
            for p in points
        ]
        return torch.cat(out)

    A, _ = metrics.affine_map(run_same_noise, d)
    return A


def exact_denoiser(target):
    r"""k-diffusion's ``model(x, sigma)`` for ``target``: the data estimate
    :math:`x - \sigma\,\varepsilon^\star(x\sqrt{\bar\alpha}, \bar\alpha)` with :math:`\bar\alpha = 1/(1+\sigma^2)`
    (x in the variance-exploding scaling, ``sigma`` a batch of equal noise levels)."""

    def denoiser(x, sigma):
        s = sigma[0].item()
        a = 1 / (1 + s**2)
        return x - s * target.eps(x * a**0.5, a)

    return denoiser
