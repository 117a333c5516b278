"""accelerated_diffusion: the samplers of Li et al. (ICML 2024), *Accelerating Convergence of Score-Based
Diffusion Models, Provably*, implemented once and checked.

* :mod:`.schedules` -- noise schedules and sampling paths (diffusers' beta schedules, the paper's c0/c1
  schedule, timestep spacings);
* :mod:`.updates` -- one function per update rule (the single source of truth);
* :mod:`.samplers` -- the loops, and the public :func:`sample`;
* :mod:`.targets` -- Gaussian and Gaussian-mixture targets with exact scores;
* :mod:`.metrics` -- closed-form distances between Gaussians and estimators.
"""

from . import metrics, schedules, targets, updates
from .samplers import METHODS, ModelOutputError, sample, sample_with_scheduler
from .schedulers import AcceleratedDDIMScheduler, AcceleratedDDPMScheduler, DDIMTypeScheduler, DDPMTypeScheduler
from .schedules import DiscreteSchedule, paper_betas, sampling_path, timestep_subsequence
from .targets import Gaussian, GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ModelOutputError",
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
    "schedules",
    "targets",
    "updates",
]
