r"""The library's samplers as k-diffusion sampler functions (sigma space, a denoiser, any sigma schedule).

Stable Diffusion front ends and ComfyUI run samplers as functions of `k-diffusion
<https://github.com/crowsonkb/k-diffusion>`_::

    samples = sample_accelerated_ode(model, x, sigmas, extra_args=None, callback=None, disable=None)

with the conventions of k-diffusion (Karras et al. 2022):

* ``model(x, sigma * s_in, **extra_args)`` is a *denoiser*: it returns the data estimate ``x0`` of the
  VE-scaled sample ``x = x0 + sigma * n`` (``s_in = x.new_ones([x.shape[0]])``), e.g.
  ``k_diffusion.external.DiscreteEpsDDPMDenoiser`` around an epsilon-prediction network;
* ``sigmas`` is the schedule, noisiest first, strictly decreasing and ending at ``0``
  (``k_diffusion.sampling.get_sigmas_karras``, or :func:`get_sigmas_karras` here); ``x`` starts at
  ``sigmas[0]`` (e.g. ``torch.randn(shape) * sigmas[0]``); NFE = ``len(sigmas) - 1``;
* ``callback({'x', 'i', 'sigma', 'sigma_hat', 'denoised'})`` after every model evaluation, a tqdm progress bar
  unless ``disable``; the stochastic samplers take ``noise_sampler(sigma, sigma_next)`` (default
  ``torch.randn_like(x)``, so ``torch.manual_seed`` seeds them, as in k-diffusion).

Each function runs the library loop of the same name (:func:`accelerated_diffusion.samplers.sample`, update rules
of :mod:`accelerated_diffusion.updates`; nothing is re-typed here) on the sampling path of the sigmas,

.. math::
    \bar\alpha = \frac{1}{1 + \sigma^2}, \qquad x_{\rm VP} = \sqrt{\bar\alpha}\, x_{\rm VE}, \qquad
    \varepsilon(x_{\rm VP}, t) = \frac{x_{\rm VE} - D(x_{\rm VE}, \sigma_t)}{\sigma_t},

so ``sigma = 0`` is the clean-data level ``alpha_bar = 1``, where the two scalings coincide, and the samples are
those of the alpha_bar-path loops on the same levels. The stochastic samplers add no noise on the last step, as
k-diffusion never does at ``sigma = 0`` (the loops' ``final_noise=False``, the authors' image code).
:data:`K_SAMPLERS` maps every name of :data:`~accelerated_diffusion.samplers.LIBRARY_SAMPLERS` to its function;
a sampler's own options that change its samples are keywords after k-diffusion's (``max_ratio`` of
``sample_accelerated_ode_capped``).
"""

from __future__ import annotations

import functools
import math

import torch
from tqdm import tqdm

from . import samplers
from .samplers import ModelOutputError

__all__ = [
    "K_SAMPLERS",
    "get_sigmas_karras",
    "sigmas_to_alpha_bars",
    "sample_ddim",
    "sample_ddim_type",
    "sample_ddpm_type",
    "sample_accelerated_ode",
    "sample_accelerated_sde",
    "sample_dpm_solver_pp_2m",
    "sample_unipc_bh2",
    "sample_accelerated_ode_lambda",
    "sample_accelerated_ode_capped",
]


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu") -> torch.Tensor:
    r"""The noise schedule of Karras et al. (2022), eq. (5), with a final ``0`` appended:
    ``sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, ``i < n``.
    The same values (float32) as ``k_diffusion.sampling.get_sigmas_karras``, without importing k-diffusion."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])]).to(device)


def _check(x, sigmas) -> tuple[torch.Tensor, list[float], torch.Tensor]:
    """``(sigmas as a tensor, their float64 values, the alpha_bar path)``; ``TypeError`` / ``ValueError`` for bad
    input, before any model call."""
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 0:
        raise ValueError("x needs a batch dimension: the model is called with sigma * x.new_ones([x.shape[0]])")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf")
    s = sigmas if isinstance(sigmas, torch.Tensor) else torch.tensor(sigmas, dtype=torch.float64)
    if not torch.is_floating_point(s):
        s = s.to(torch.float64)
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of at least 2 entries (one step), got shape {tuple(s.shape)}")
    vals = _values(s)
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"sigmas must be finite, got {vals}")
    if vals[-1] != 0.0:
        raise ValueError(f"sigmas must end at 0 (clean data), as get_sigmas_karras returns; the last is {vals[-1]!r}")
    if not all(v > 0.0 for v in vals[:-1]):
        raise ValueError(f"sigmas before the last must be positive, got {vals}")
    if not all(a > b for a, b in zip(vals, vals[1:])):
        raise ValueError(f"sigmas must be strictly decreasing (noisiest first), got {vals}")
    path = sigmas_to_alpha_bars(vals)
    if not bool((path[1:] > path[:-1]).all()) or float(path[0]) <= 0.0:
        raise ValueError(
            f"sigmas {vals} do not give distinct levels alpha_bar = 1 / (1 + sigma^2) in float64 "
            "(a sigma below about 1e-8 or above about 1e154, or two sigmas too close)"
        )
    return s, vals, path


def sigmas_to_alpha_bars(sigmas) -> torch.Tensor:
    r"""The sampling path ``alpha_bar = 1 / (1 + sigma^2)`` (float64) of a sigma schedule; ``sigma = 0`` gives
    ``alpha_bar = 1``.  Conversely ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``."""
    vals = _values(sigmas)
    return torch.tensor([1.0 / (1.0 + v * v) for v in vals], dtype=torch.float64)


def _values(sigmas) -> list[float]:
    if isinstance(sigmas, torch.Tensor):
        return sigmas.detach().to("cpu", torch.float64).tolist()  # one transfer from the device
    return [float(v) for v in sigmas]


@functools.lru_cache(maxsize=None)
def _draws_per_step(name: str) -> int:
    """How many standard normal draws loop ``name`` makes per step, asked of the loop itself (a 3-step run on a
    one-element zero problem), so the half-step structure is not re-typed here."""
    steps: list[int] = []

    def record(i, like):
        steps.append(i)
        return torch.zeros_like(like)

    path = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    samplers.sample(
        lambda x, t: torch.zeros_like(x), torch.zeros(1, dtype=torch.float64), path, name, noise_sampler=record
    )
    counts = {steps.count(i) for i in range(3)}
    if len(counts) != 1:
        raise NotImplementedError(f"{name}: the k-diffusion noise mapping needs the same number of draws per step")
    return counts.pop()


def _noise_hook(name, x, s, vals, noise_sampler):
    """``(i, like) -> noise`` for the loop: draw ``j`` of the ``m`` draws of step ``i`` comes from
    ``noise_sampler`` on the ``j``-th of ``m`` equal parts of ``[sigma_{i+1}, sigma_i]`` (the whole step when
    ``m = 1``, as k-diffusion's ancestral samplers call it), so a Brownian-tree sampler gives independent draws.
    The draw whose part ends at ``sigma = 0`` is the last step's output noise, which the loop discards
    (``final_noise=False``): ``noise_sampler`` is not called for it."""
    m = _draws_per_step(name)
    if noise_sampler is None:
        noise_sampler = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731 (k-diffusion's default)
    drawn = [0] * (len(vals) - 1)

    def hook(i, like):
        j = drawn[i]
        drawn[i] += 1
        if j >= m:
            raise RuntimeError(f"{name}: step {i} drew more than the {m} noises per step of its loop")
        hi = s[i] if j == 0 else s[i] + (s[i + 1] - s[i]) * (j / m)
        lo = s[i + 1] if j == m - 1 else s[i] + (s[i + 1] - s[i]) * ((j + 1) / m)
        if j == m - 1 and vals[i + 1] == 0.0:
            return torch.zeros_like(like)
        z = noise_sampler(hi, lo)
        if not isinstance(z, torch.Tensor) or z.shape != like.shape:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"noise_sampler returned {shape} at step {i}, expected noise of shape {tuple(like.shape)}")
        return z.to(like.dtype)

    return hook


@torch.no_grad()
def _run(name, model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None, options=None):
    """Loop ``name`` of :mod:`.samplers` on the alpha_bar path of ``sigmas`` with the denoiser ``model`` (and the
    sampler's ``options``, checked before any model call)."""
    s, vals, path = _check(x, sigmas)
    options = samplers.spec(name).check_options(options)
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    bar = tqdm(total=len(vals) - 1, disable=disable)

    def eps_fn(x_vp, i):  # t = i: the index of the step (timesteps below)
        sigma = vals[i]
        x_ve = x_vp * math.sqrt(1.0 + sigma * sigma)
        denoised = model(x_ve, s[i] * s_in, **extra_args)
        if not isinstance(denoised, torch.Tensor) or denoised.shape != x_ve.shape:
            shape = tuple(denoised.shape) if isinstance(denoised, torch.Tensor) else type(denoised).__name__
            raise ModelOutputError(
                f"step {i} (sigma={sigma}): the denoiser returned {shape}, expected {tuple(x_ve.shape)}"
            )
        if callback is not None:
            callback({"x": x_ve, "i": i, "sigma": s[i], "sigma_hat": s[i], "denoised": denoised})
        bar.update(1)
        return (x_ve - denoised) / sigma

    hook = _noise_hook(name, x, s, vals, noise_sampler) if samplers.spec(name).stochastic else None
    try:
        return samplers.sample(
            eps_fn,
            x / math.sqrt(1.0 + vals[0] ** 2),
            path,
            name,
            timesteps=list(range(len(vals) - 1)),
            final_noise=False,
            noise_sampler=hook,
            options=options,
        )
    finally:  # at sigma = 0 (alpha_bar = 1) the VP iterate is the VE one
        bar.close()


def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    r"""Exact DDIM, eta = 0 (Song et al. 2021, eq. 12; :func:`~accelerated_diffusion.updates.ddim_step`).  In sigma
    it is Euler's method on the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (the ODE of Karras
    et al. 2022; their Algorithm 2 with Euler steps and no churn): the same samples as k-diffusion's ``sample_euler``."""
    return _run("ddim", model, x, sigmas, extra_args, callback, disable)


def sample_ddim_type(model, x, sigmas, extra_args=None, callback=None, disable=None):
    r"""The paper's DDIM-type baseline, ``Y_{t-1} = (Y_t + (1 - alpha_t)/2 s_t(Y_t)) / sqrt(alpha_t)`` with
    ``alpha_t = alpha_bar_t / alpha_bar_{t-1}`` (:func:`~accelerated_diffusion.updates.ddim_type_step`)."""
    return _run("ddim_type", model, x, sigmas, extra_args, callback, disable)


def sample_ddpm_type(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    r"""The paper's DDPM-type baseline,
    ``Y_{t-1} = (Y_t + (1 - alpha_t) s_t(Y_t) + sqrt(1 - alpha_t) Z_t) / sqrt(alpha_t)``
    (:func:`~accelerated_diffusion.updates.ddpm_type_step`); ``Z_t`` from ``noise_sampler(sigma_t, sigma_{t-1})``,
    none on the last step."""
    return _run("ddpm_type", model, x, sigmas, extra_args, callback, disable, noise_sampler)


def sample_accelerated_ode(model, x, sigmas, extra_args=None, callback=None, disable=None):
    r"""The paper's accelerated deterministic sampler, ``x_{t-1} = DDIM(x_t, eps_t) + c (eps_{t+1} - eps_t)`` with
    the arcsin coefficient ``c`` of the official README
    (:func:`~accelerated_diffusion.updates.accelerated_ode_step`, :func:`~accelerated_diffusion.updates.
    accelerated_ode_coefficient`); one evaluation per step, the first step plain DDIM."""
    return _run("accelerated_ode", model, x, sigmas, extra_args, callback, disable)


def sample_accelerated_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    r"""The paper's accelerated stochastic sampler (official README): ``Y_t^+ = Y_t + sqrt((1 - alpha_t)/2) Z_t``
    (:func:`~accelerated_diffusion.updates.accelerated_sde_perturb`), one evaluation at ``Y_t^+`` with the level
    ``t`` (``sigma_t``), then ``Y_{t-1} = (Y_t^+ + (1 - alpha_t) s_t(Y_t^+)) / sqrt(alpha_t) + sqrt((1 - alpha_t)/2)
    Z_t^+`` (:func:`~accelerated_diffusion.updates.accelerated_sde_step`).  ``Z_t`` comes from
    ``noise_sampler(sigma_t, sigma_mid)`` and ``Z_t^+`` from ``noise_sampler(sigma_mid, sigma_{t-1})``,
    ``sigma_mid`` the midpoint; the last step has no ``Z^+``, and a ``BrownianTreeNoiseSampler`` must reach down to
    ``sigmas[-2] / 2``.  The callback's ``x`` is ``Y_t^+`` (VE-scaled), where the model was evaluated."""
    return _run("accelerated_sde", model, x, sigmas, extra_args, callback, disable, noise_sampler)


def sample_dpm_solver_pp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    r"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2; :func:`~accelerated_diffusion.updates.dpm_solver_pp_2m_step`),
    ``x_{prev} = (sigma_prev / sigma_t) x_t - alpha_prev (e^{-h} - 1) D`` in the half log-SNR ``lambda = -log sigma``;
    first order on the first step and on the step to ``sigma = 0``: k-diffusion's ``sample_dpmpp_2m``."""
    return _run("dpm_solver_pp_2m", model, x, sigmas, extra_args, callback, disable)


def sample_unipc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    r"""UniPC-bh2, order 2 (Zhao et al. 2023, Algorithm 3): the DPM-Solver++(2M) predictor and the UniC corrector
    (:func:`~accelerated_diffusion.updates.unipc_bh2_corrector_step`) with diffusers' order schedule."""
    return _run("unipc_bh2", model, x, sigmas, extra_args, callback, disable)


def sample_accelerated_ode_lambda(model, x, sigmas, extra_args=None, callback=None, disable=None):
    r"""The accelerated ODE with ``eps`` extrapolated linearly in the half log-SNR ``lambda = -log sigma``:
    ``x_{t-1} = DDIM(x_t, eps_t) + c (eps_{t+1} - eps_t)`` with
    :func:`~accelerated_diffusion.updates.accelerated_ode_lambda_coefficient` (the multistep second-order
    DPM-Solver in eps form, :func:`~accelerated_diffusion.updates.accelerated_ode_step`); one evaluation per step,
    the first step plain DDIM."""
    return _run("accelerated_ode_lambda", model, x, sigmas, extra_args, callback, disable)


def sample_accelerated_ode_capped(model, x, sigmas, extra_args=None, callback=None, disable=None, max_ratio=2.0):
    r"""The accelerated ODE with the paper's extrapolation of ``eps`` (linear in ``alpha_bar``) held constant beyond
    ``max_ratio`` times the last interval
    (:func:`~accelerated_diffusion.updates.accelerated_ode_capped_coefficient`,
    :func:`~accelerated_diffusion.updates.accelerated_ode_step`): the paper's sampler on every step whose
    extrapolation ratio is at most ``max_ratio``, exact DDIM at ``max_ratio = 0``."""
    return _run(
        "accelerated_ode_capped", model, x, sigmas, extra_args, callback, disable, options={"max_ratio": max_ratio}
    )


#: Every library sampler (:data:`~accelerated_diffusion.samplers.LIBRARY_SAMPLERS`) with its k-diffusion function;
#: a registered sampler without a ``sample_<name>`` here is missing (``tests/test_k_samplers.py`` fails).
K_SAMPLERS = {n: globals()[f"sample_{n}"] for n in samplers.LIBRARY_SAMPLERS if f"sample_{n}" in globals()}
