"""accelerated_diffusion: the samplers of Li et al. (ICML 2024), *Accelerating Convergence of Score-Based
Diffusion Models, Provably*, implemented once and checked.

* :mod:`.schedules` -- noise schedules and sampling paths (diffusers' beta schedules, the paper's c0/c1
  schedule, timestep spacings);
* :mod:`.updates` -- one function per update rule (the single source of truth);
* :mod:`.samplers` -- one loop per sampler, the registry :data:`SAMPLERS` of their names, :func:`sample` and
  the one dispatch :func:`run_sampler`;
* :mod:`.k_samplers` -- every library sampler as a k-diffusion sampler function (denoiser, sigma schedule);
* :mod:`.schedulers` -- the paper's samplers as drop-in diffusers schedulers;
* :mod:`.pipelines` -- a ``DDPMPipeline`` that honours ``init_noise_sigma``;
* :mod:`.peers` -- diffusers' own DPM-Solver++(2M) and UniPC schedulers, configured for comparison;
* :mod:`.models` -- loading pretrained UNets (local folder, cache, then the hub with bounded calls);
* :mod:`.integrity` -- SHA-256 sums recorded beside shipped weights, checked before loading;
* :mod:`.targets` -- Gaussian and Gaussian-mixture targets with exact scores;
* :mod:`.metrics` -- closed-form distances between Gaussians and estimators.

The reproduction (training, metrics, rate measurements, derivations) lives in
:mod:`accelerated_diffusion.experiments` and needs the ``experiments`` extra.
"""

from . import (
    _progress,  # first: silences tqdm.auto's notebook warning before diffusers imports tqdm.auto
    integrity,
    k_samplers,
    metrics,
    models,
    peers,
    pipelines,
    samplers,
    schedulers,
    schedules,
    targets,
    updates,
)
from .samplers import SAMPLERS, ModelOutputError, run_sampler, sample, sample_with_scheduler
from .schedulers import AcceleratedDDIMScheduler, AcceleratedDDPMScheduler, DDIMTypeScheduler, DDPMTypeScheduler
from .schedules import DiscreteSchedule, paper_betas, sampling_path, timestep_subsequence
from .targets import Gaussian, GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "SAMPLERS",
    "ModelOutputError",
    "run_sampler",
    "sample",
    "sample_with_scheduler",
    "AcceleratedDDIMScheduler",
    "AcceleratedDDPMScheduler",
    "DDIMTypeScheduler",
    "DDPMTypeScheduler",
    "DiscreteSchedule",
    "paper_betas",
    "sampling_path",
    "timestep_subsequence",
    "Gaussian",
    "GaussianMixture",
    "metrics",
    "models",
    "peers",
    "pipelines",
    "samplers",
    "k_samplers",
    "schedulers",
    "schedules",
    "targets",
    "updates",
]
