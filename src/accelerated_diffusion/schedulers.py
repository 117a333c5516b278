r"""Drop-in diffusers schedulers for the paper's samplers and its baselines.

Try the accelerated samplers on any epsilon-, v- or x0-prediction diffusers model with one line::

    pipe.scheduler = AcceleratedDDIMScheduler.from_config(pipe.scheduler.config)

The schedulers and the update function(s) of :mod:`.updates` each ``step`` calls:

* :class:`AcceleratedDDIMScheduler` -- :func:`~.updates.accelerated_ode_step` (exact DDIM plus the arcsin
  correction from the previous model output); ``init_noise_sigma = 1``; with ``extrapolation="lambda"`` or
  ``"capped"`` the book's safeguarded variants (samplers ``accelerated_ode_lambda``, ``accelerated_ode_capped``);
* :class:`AcceleratedDDPMScheduler` -- the Gaussian half-steps of :func:`~.updates.accelerated_sde_transitions`
  cut at the model evaluation: ``Psi_t`` (:func:`~.updates.accelerated_sde_step`), then ``Phi_{t-1}`` of the next
  step (:func:`~.updates.accelerated_sde_perturb`); ``init_noise_sigma = sqrt(1 + (1 - alpha_T)/2)``;
* :class:`DDIMTypeScheduler` -- :func:`~.updates.ddim_type_step` (the paper's baseline); ``init_noise_sigma = 1``;
* :class:`DDPMTypeScheduler` -- :func:`~.updates.ddpm_type_step` (the paper's baseline); ``init_noise_sigma = 1``.

Use them in any pipeline that multiplies its start by ``init_noise_sigma`` (Stable Diffusion and the other latent
pipelines, :class:`accelerated_diffusion.pipelines.InitNoiseDDPMPipeline`,
:func:`accelerated_diffusion.sample_with_scheduler`); diffusers' ``DDPMPipeline`` does not, which matters only for
:class:`AcceleratedDDPMScheduler`.

Configuration
-------------
Each scheduler has an explicit ``__init__`` (registered to the config as in diffusers): an unknown keyword raises
``TypeError`` naming it.  ``from_config`` reads the config of any variance-preserving diffusers scheduler (DDPM,
DDIM, PNDM, DPM-Solver, UniPC, Euler, ...): the keys these schedulers share are used; the keys of the other
scheduler's own *solver* (:data:`IGNORED_CONFIG_KEYS`: solver order and type, corrector, last-step rule, learned
variance, ...) do not change the model and are dropped, as diffusers drops them; what would change the noise
process, what the model is given or the timesteps it is run at is refused with a ``ValueError`` naming the key
(:data:`REFUSED_CONFIG`): flow-matching configs (``FlowMatchEulerDiscreteScheduler`` of SD3 and Flux, ``shift``,
``use_dynamic_shifting``, ``use_flow_sigmas``, ``prediction_type="flow_prediction"``), sigma-space models (EDM,
variance-exploding, consistency), continuous timesteps, a shifted SNR, and the sigma spacings not implemented here
(exponential, beta, Lu's lambdas).  ``rescale_betas_zero_snr=True`` is refused too (``alpha_bar = 0`` at the last
training step, where the eps-form updates divide by ``sqrt(alpha_bar)``).

How a diffusers schedule becomes a sampling path
-------------------------------------------------
``set_timesteps`` picks training indices ``tau_S > ... > tau_1`` -- ``timestep_spacing`` leading / trailing /
linspace as in diffusers, the official code's ``uniform`` and ``quadratic``, ``logsnr`` (uniform in the half
log-SNR of the training levels, :func:`~accelerated_diffusion.schedules.logsnr_timesteps`); with
``use_karras_sigmas=True`` the timesteps of Karras et al.'s sigmas exactly as diffusers'
``DPMSolverMultistepScheduler`` computes them (:func:`karras_timesteps`); or ``timesteps=`` / ``sigmas=`` given
explicitly (sigmas are mapped to training steps as for ``use_karras_sigmas``) -- and the path of levels
``[abar[tau_S], ..., abar[tau_1], final]`` with ``final = 1`` when ``set_alpha_to_one`` (the output is clean data)
and ``abar[0]`` otherwise.  Step ``i`` goes from level ``path[i]`` to ``path[i + 1]``, i.e. *to the level of the
next timestep in the list* (with Karras sigmas: the levels of the rounded timesteps, where the model is evaluated).
This is the core :func:`accelerated_diffusion.sample` convention.  diffusers' ``DDIMScheduler`` instead steps to
``t - num_train_timesteps // num_inference_steps``, which is the next timestep only for ``leading`` spacing (and
``trailing`` when the step count divides ``num_train_timesteps``); with ``linspace`` at 10 of 1000 steps it evaluates
the model at 888 on a sample it moved to level 899.  Here the two always agree.  If ``set_alpha_to_one=False`` and
the last timestep is 0, the last step goes from ``abar[0]`` to ``abar[0]``: it returns the sample unchanged (as
``DDIMScheduler`` does), so NFE is still ``len(scheduler.timesteps)``.

The coefficients are float64 host scalars computed from the levels (see :mod:`.updates`), so a step launches a
few element-wise kernels and never synchronises with an accelerator.

The step counter
----------------
As diffusers' DPM-Solver schedulers, a scheduler counts its steps: ``step_index`` is ``None`` until the first
``step`` of a run and the position of the next step afterwards; a run starts at position ``begin_index`` (0 unless
an img2img pipeline calls :meth:`set_begin_index`) after ``set_timesteps``, and again after the last step of a run.
``step`` takes the position from the counter, never from the timestep's value, and checks that the timestep it is
given is the one of that position, on every device: a host integer or CPU tensor at once (``ValueError``); an
accelerator tensor on the device, the flag read at the last step of the run together with the finite-values flag
(one synchronisation per run, ``ValueError`` naming the first wrong position).  So the steps follow
``scheduler.timesteps`` in order; an aborted run is restarted with ``set_timesteps``.  The timestep must be an
integer (int, NumPy integer or integer tensor; a float is never truncated).

``torch.compile``: ``step`` has no graph break (with ``generator=None``; drawing from a ``torch.Generator`` is a
graph break of PyTorch's) and reads no device value.  The counter moves along a chain of per-step records
(:class:`_PlannedStep`) whose integers and float levels ``torch.compile`` turns into symbolic inputs after the
first recompilation, so a compiled loop compiles twice (the first step of a run, then every other step) and not
once per step; the last-step switches (``final_noise``, the next step's perturbation) are tensors.  With
``set_alpha_to_one=False`` the identity last step is a third graph.  While compiling, the checks are device-side
assertions (``torch._assert_async``: a ``RuntimeError`` on the CPU, a device-side assert on CUDA) rather than the
host reads of eager mode.

Model outputs
-------------
Every update rule is written in the noise prediction ``eps``; the model output is converted first
(:func:`model_output_to_eps`), at the level ``abar_t`` of the current timestep and the sample ``x`` it saw:

* ``epsilon``: ``eps = model_output``;
* ``sample`` (x0-prediction): ``eps = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t)`` (:func:`x0_to_eps`);
* ``v_prediction`` (Salimans & Ho 2022, ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``):
  ``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x`` (:func:`v_to_eps`).

``clip_sample`` (clamp ``x0`` to ``[-clip_sample_range, clip_sample_range]``) and ``thresholding`` (Imagen's dynamic
thresholding, :func:`dynamic_threshold`) act on the denoised estimate ``x0 = (x - sqrt(1 - abar_t) eps) /
sqrt(abar_t)``; the update then uses the noise *consistent with the clipped* ``x0``, ``eps = x0_to_eps(x, x0_clipped)``
(the DPM-Solver convention, and what ``DDIMScheduler(use_clipped_model_output=True)`` does).  The paper's official
code never clips; the google/ddpm-* configs switch ``clip_sample`` on, so pass ``clip_sample=False`` to
``from_config`` to run the paper's samplers.

Precision and checks
--------------------
float16 and bfloat16 inputs are computed in float32 and returned in their own dtype; float32 and float64 stay as
they are.  With ``check_finite`` (default) a NaN or Inf in the new sample (e.g. a non-finite accelerated
correction, which the official code skips silently) raises :class:`~accelerated_diffusion.samplers.ModelOutputError`
naming the step: at once for CPU tensors, and at the last step of the run for accelerator tensors (the flag is
accumulated on the device, one synchronisation per run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from . import updates
from .samplers import ModelOutputError
from .schedules import (
    BETA_SCHEDULES,
    SPACINGS,
    alpha_bars_from_betas,
    betas_for,
    check_timesteps,
    is_integer_dtype,
    timestep_subsequence,
)

__all__ = [
    "PREDICTION_TYPES",
    "EXTRAPOLATIONS",
    "IGNORED_CONFIG_KEYS",
    "REFUSED_CONFIG",
    "OTHER_PROCESS_KEYS",
    "AcceleratedSchedulerOutput",
    "AcceleratedDDIMScheduler",
    "AcceleratedDDPMScheduler",
    "DDIMTypeScheduler",
    "DDPMTypeScheduler",
    "model_output_to_eps",
    "x0_to_eps",
    "v_to_eps",
    "dynamic_threshold",
    "karras_timesteps",
    "sigmas_to_timesteps",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: The extrapolations of ``eps`` behind :class:`AcceleratedDDIMScheduler`'s correction (its ``extrapolation``
#: config key, :data:`.updates.EXTRAPOLATIONS`, each bound to its coefficient function by
#: :func:`.updates.extrapolation_coefficient`): ``{value: the sampler of that rule}``.
EXTRAPOLATIONS = {
    "alpha_bar": "accelerated_ode",
    "lambda": "accelerated_ode_lambda",
    "capped": "accelerated_ode_capped",
}
_LOW_PRECISION = (torch.float16, torch.bfloat16)

# --------------------------------------------------------------------------------------------------------------
# Foreign configs: what from_config drops and what it refuses
# --------------------------------------------------------------------------------------------------------------
_FLOW = "flow matching (a velocity model on the straight path x_t = (1 - t) x_0 + t eps, as SD3 and Flux)"
_SIGMA_SPACE = (
    "a model in sigma space (EDM preconditioning, a variance-exploding SDE or a consistency model), which "
    "takes continuous noise levels, not the integer steps of a beta schedule"
)
_SPACING = "not implemented here: use use_karras_sigmas=True, timestep_spacing, sigmas= or timesteps="
#: Config keys of other diffusers schedulers that ``from_config`` refuses unless they hold their "off" value:
#: ``{key: (off value, what it would mean)}``.  They change the noise process, what the model is given, or the
#: timesteps the source scheduler runs at (and silently dropping them would run the model elsewhere).
REFUSED_CONFIG: dict[str, tuple[object, str]] = {
    "shift": (1.0, "a flow-matching time shift: " + _FLOW),
    "use_dynamic_shifting": (False, "a resolution-dependent flow-matching time shift: " + _FLOW),
    "use_flow_sigmas": (False, "flow-matching sigmas: " + _FLOW),
    "shift_terminal": (None, "a flow-matching terminal shift: " + _FLOW),
    "snr_shift_scale": (1.0, "a shifted signal-to-noise ratio: the model was trained on other levels"),
    "timestep_type": ("discrete", "continuous timesteps: the model takes 0.25 log(sigma), not an integer step"),
    "predict_epsilon": (True, "an old x0-prediction config: pass prediction_type='sample'"),
    "use_exponential_sigmas": (False, "timesteps from exponentially spaced sigmas, " + _SPACING),
    "use_beta_sigmas": (False, "timesteps from beta-distributed sigmas, " + _SPACING),
    "use_lu_lambdas": (
        False,
        "timesteps uniform in lambda (Lu et al.), "
        + _SPACING
        + " (timestep_spacing='logsnr' is uniform in lambda too, with its own rounding)",
    ),
}
#: Config keys that only the schedulers of another noise process have: their presence alone makes
#: ``from_config`` refuse the config (a scheduler built in memory has no ``_class_name`` in its config).
OTHER_PROCESS_KEYS: dict[str, str] = {
    **{
        k: _FLOW
        for k in (
            "base_shift",
            "max_shift",
            "base_image_seq_len",
            "max_image_seq_len",
            "invert_sigmas",
            "stochastic_sampling",
        )
    },
    **{k: _SIGMA_SPACE for k in ("sigma_data", "sigma_schedule", "rho")},
}
#: Config keys of other diffusers schedulers that ``from_config`` drops: the other scheduler's own solver
#: (order, algorithm, corrector, last-step rule, sigma interpolation), a learned variance (the model then returns
#: twice the channels, which ``step`` refuses with a clear message), settings that act only together with a
#: refused key (``flow_shift`` with ``use_flow_sigmas``, ``time_shift_type`` with ``use_dynamic_shifting``, a
#: custom Karras range ``sigma_min`` / ``sigma_max``, refused with ``use_karras_sigmas``), LCM/TCD's distillation
#: settings, and obsolete keys of old configs.
IGNORED_CONFIG_KEYS = frozenset(
    {
        "solver_order",
        "solver_type",
        "algorithm_type",
        "lower_order_final",
        "euler_at_final",
        "predict_x0",
        "disable_corrector",
        "solver_p",
        "skip_prk_steps",
        "noise_sampler_seed",
        "final_sigmas_type",
        "lambda_min_clipped",
        "interpolation_type",
        "variance_type",
        "flow_shift",
        "time_shift_type",
        "sigma_min",
        "sigma_max",
        "original_inference_steps",
        "timestep_scaling",
        "timestep_values",
        "tensor_format",
    }
)
_SIGMA_SPACE_CLASSES = frozenset(
    {
        "EDMEulerScheduler",
        "EDMDPMSolverMultistepScheduler",
        "CosineDPMSolverMultistepScheduler",
        "ScoreSdeVeScheduler",
        "KarrasVeScheduler",
        "CMStochasticIterativeScheduler",
        "SCMScheduler",
    }
)


def _other_process(class_name) -> str | None:
    """Why a config of diffusers scheduler ``class_name`` describes another noise process (``None`` if it does not)."""
    if not isinstance(class_name, str):
        return None
    if class_name.startswith(("FlowMatch", "FlowMap")) or class_name.endswith("RFScheduler"):
        return _FLOW
    return _SIGMA_SPACE if class_name in _SIGMA_SPACE_CLASSES else None


def _refuse_foreign_config(name: str, config: dict, kwargs: dict) -> None:
    """Raise ``ValueError`` for a config these schedulers cannot run faithfully (see :data:`REFUSED_CONFIG`)."""
    defaults = set(config.get("_use_default_values", []))  # keys the source scheduler left at its defaults
    cfg = {**{k: v for k, v in config.items() if k not in defaults}, **kwargs}
    source = config.get("_class_name")
    why, what = _other_process(source), f"a {source} config"
    for key in config:
        if why is None and key in OTHER_PROCESS_KEYS:
            why, what = OTHER_PROCESS_KEYS[key], f"a config with {key!r}"
    if why is not None:
        raise ValueError(
            f"{name}.from_config: {what} belongs to {why}; these samplers run variance-preserving "
            "diffusion models with a beta schedule (DDPM, DDIM, Stable Diffusion 1/2, ...)"
        )
    if cfg.get("prediction_type") == "flow_prediction":
        raise ValueError(
            f"{name}.from_config: prediction_type='flow_prediction' is {_FLOW}; these samplers take "
            f"one of {PREDICTION_TYPES}"
        )
    for key, (off, what) in REFUSED_CONFIG.items():
        if key in cfg and cfg[key] != off:
            raise ValueError(
                f"{name}.from_config: {key}={cfg[key]!r} means {what}; it is not supported here (only {key}={off!r})"
            )
    if cfg.get("use_karras_sigmas") and (cfg.get("sigma_min") is not None or cfg.get("sigma_max") is not None):
        raise ValueError(
            f"{name}.from_config: use_karras_sigmas with a custom range (sigma_min="
            f"{cfg.get('sigma_min')!r}, sigma_max={cfg.get('sigma_max')!r}) is not supported; the Karras "
            "sigmas span the training levels here, as in DPMSolverMultistepScheduler"
        )


# --------------------------------------------------------------------------------------------------------------
# Timesteps from sigmas (as diffusers' DPMSolverMultistepScheduler)
# --------------------------------------------------------------------------------------------------------------
def _training_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)`` of the training steps, computed as diffusers does (float32)."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()


def sigmas_to_timesteps(alphas_cumprod: torch.Tensor, sigmas, round_to_integers: bool = True) -> np.ndarray:
    r"""Training-step positions of the noise levels ``sigmas`` (``sigma = sqrt((1 - abar) / abar)``): linear
    interpolation of ``log sigma`` between neighbouring training steps, then rounded to the nearest step (truncated
    when ``round_to_integers=False``), exactly as diffusers' ``DPMSolverMultistepScheduler`` maps its Karras sigmas
    (``_sigma_to_t``)."""
    log_sigmas = np.log(_training_sigmas(alphas_cumprod))
    sigma = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)
    return (t.round() if round_to_integers else t).astype(np.int64)


def karras_timesteps(
    alphas_cumprod: torch.Tensor, num_inference_steps: int, beta_schedule: str = "linear"
) -> np.ndarray:
    r"""The timesteps of ``use_karras_sigmas=True``, as diffusers' ``DPMSolverMultistepScheduler`` computes them:
    Karras et al. (2022, eq. 5) sigmas ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
    ``rho = 7``, between the last and the first training sigma, mapped to training steps by
    :func:`sigmas_to_timesteps` (rounded; truncated for ``squaredcos_cap_v2``, as there)."""
    train = _training_sigmas(alphas_cumprod)
    sigma_min, sigma_max = train[0].item(), train[-1].item()
    rho = 7.0
    ramp = np.linspace(0, 1, num_inference_steps)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return sigmas_to_timesteps(alphas_cumprod, sigmas, round_to_integers=beta_schedule != "squaredcos_cap_v2")


@dataclass
class AcceleratedSchedulerOutput(SchedulerOutput):
    """Output of ``step``: ``prev_sample`` (the next model input, or the final sample after the last step) and
    ``pred_original_sample`` (the denoised estimate ``x0`` at the current timestep, clipped if configured)."""

    pred_original_sample: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------------------
# Model-output conversions (not update rules: they only change what the network predicts into eps)
# --------------------------------------------------------------------------------------------------------------
def x0_to_eps(x: torch.Tensor, x0: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r"""Noise implied by a denoised estimate: ``eps = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t)`` (inverse of
    :func:`accelerated_diffusion.updates.eps_to_x0`)."""
    a = float(alpha_bar_t)
    if not 0.0 < a < 1.0:
        raise ValueError(f"x0 determines eps only for alpha_bar_t in (0, 1), got {a!r}")
    return (x - math.sqrt(a) * x0) / math.sqrt(1.0 - a)


def v_to_eps(x: torch.Tensor, v: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r"""Noise from a v-prediction (Salimans & Ho 2022, ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` with
    ``x = sqrt(abar) x0 + sqrt(1 - abar) eps``): ``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x``."""
    a = float(alpha_bar_t)
    return math.sqrt(a) * v + math.sqrt(1.0 - a) * x


def model_output_to_eps(model_output: torch.Tensor, x: torch.Tensor, alpha_bar_t, prediction_type: str) -> torch.Tensor:
    """The noise prediction ``eps`` from a model output of the given ``prediction_type`` (see module docstring)."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return v_to_eps(x, model_output, alpha_bar_t)
    if prediction_type == "sample":
        return x0_to_eps(x, model_output, alpha_bar_t)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    r"""Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3), as diffusers' ``thresholding=True``: per
    sample, ``s = clamp(quantile(|x0|, ratio), 1, max_value)`` and ``x0 <- clamp(x0, -s, s) / s``."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs().float(), ratio, dim=1).clamp(min=1.0, max=max_value).to(flat.dtype)[:, None]
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)


# --------------------------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------------------------
_NONFINITE = "scheduler step produced NaN or Inf (model output or update not finite)"
_WRONG_TIMESTEP = (
    "scheduler step was given a timestep other than the one of its position (follow "
    "scheduler.timesteps in order; call set_timesteps to start a new run)"
)


class _PlannedStep:
    """One step of the current schedule: its position ``index``, ``timestep`` (also as a tensor), the levels
    ``a_t -> a_prev`` (and ``a_next``, the level of the step before, and ``coefficient``, the accelerated ODE
    correction's coefficient from these three levels), whether it is the ``first`` / ``last`` step of a run or an
    ``identity`` step, the gate of the noise drawn from the model evaluation on (``final_noise`` at the last step),
    the levels and gate of the following step's perturbation (accelerated SDE), and the step that ``follows`` it
    (the run's first step after its last).

    The chain is the step counter in the form ``torch.compile`` traces without one graph per step: ``step`` reads
    floats (symbolic after one recompilation), bools that change only at the first step, and tensors, never an
    integer (integers reached from a global are always specialised by the tracer)."""

    __slots__ = (
        "index",
        "timestep",
        "timestep_t",
        "a_t",
        "a_prev",
        "a_next",
        "coefficient",
        "first",
        "last",
        "identity",
        "final_gate",
        "perturb",
        "perturb_gate",
        "follows",
    )

    def __init__(self, index: int, timestep: int, levels: list[float], final_noise: bool):
        self.index, self.timestep, self.timestep_t = index, timestep, torch.tensor(timestep)
        self.a_t, self.a_prev = levels[index], levels[index + 1]
        self.a_next = levels[index - 1] if index > 0 else 0.0  # unused at the first step of a run
        self.coefficient = 0.0  # set by AcceleratedDDIMScheduler._install
        self.identity = self.a_prev == self.a_t
        self.last = index == len(levels) - 2
        self.first = False
        self.final_gate = torch.tensor(float(final_noise or not self.last))
        self.perturb: tuple[float, float] = (0.25, 0.5)
        self.perturb_gate = torch.tensor(0.0)
        self.follows: _PlannedStep | None = None


def _compiling() -> bool:
    """Whether ``torch.compile`` is tracing (a constant to the tracer)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return bool(is_compiling())


def _host_readable(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s value costs no synchronisation with an accelerator (CPU tensors)."""
    return t.device.type == "cpu"


class _PathScheduler(SchedulerMixin, ConfigMixin):
    """Shared base: the diffusers config and schedule, ``set_timesteps`` -> sampling path, the step counter,
    model-output conversion, clipping, dtype handling and checks.  Subclasses declare their ``__init__`` (the
    config) and implement :meth:`_update` (calls of :mod:`.updates`)."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers if _other_process(e.name) is None]
    order = 1
    #: whether ``step`` draws noise
    _stochastic = False

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' config reader (used by ``from_config`` and ``from_pretrained``), after refusing the configs
        these schedulers cannot run (:data:`REFUSED_CONFIG`; the keys of :data:`IGNORED_CONFIG_KEYS` are dropped)."""
        _refuse_foreign_config(cls.__name__, dict(config_dict), kwargs)
        return super().extract_init_dict(config_dict, **kwargs)

    def _build(self) -> None:
        """Validate the config and build the training schedule (reads ``self.config``; every ``__init__`` calls
        it)."""
        cfg = self.config
        if cfg.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {cfg.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        if cfg.timestep_spacing not in SPACINGS:
            raise ValueError(f"unknown timestep_spacing {cfg.timestep_spacing!r}; expected one of {SPACINGS}")
        if cfg.rescale_betas_zero_snr:
            raise NotImplementedError(
                "rescale_betas_zero_snr=True gives alpha_bar = 0 at the last training step, where the eps-form "
                "updates of this library divide by sqrt(alpha_bar); use diffusers' DDIMScheduler for such models"
            )
        if cfg.trained_betas is not None:
            betas = torch.tensor(np.asarray(cfg.trained_betas), dtype=torch.float32)
            if betas.ndim != 1 or betas.numel() != cfg.num_train_timesteps:
                raise ValueError(
                    f"trained_betas must be 1-D with num_train_timesteps={cfg.num_train_timesteps} entries, "
                    f"got shape {tuple(betas.shape)}"
                )
        elif cfg.beta_schedule in BETA_SCHEDULES:
            betas = betas_for(
                cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, dtype=torch.float32
            )
        else:
            raise ValueError(f"unknown beta_schedule {cfg.beta_schedule!r}; expected one of {BETA_SCHEDULES}")
        # float32 like diffusers, so that add_noise and the levels match a model trained with DDPMScheduler.
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = alpha_bars_from_betas(betas)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0].clone()
        self._install(np.arange(cfg.num_train_timesteps - 1, -1, -1, dtype=np.int64), device=None, plan=False)
        self.num_inference_steps = None  # step() still requires set_timesteps

    def _install(self, timesteps: np.ndarray, device, plan: bool = True) -> None:
        """Make ``timesteps`` (descending int64) the current schedule: path, per-step records (unless ``plan`` is
        false: the schedule of a new scheduler, which cannot step before ``set_timesteps``), a fresh run."""
        n_train = self.config.num_train_timesteps
        ts = np.asarray(timesteps, dtype=np.int64)
        if ts.ndim != 1 or ts.size < 1:
            raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {ts.shape}")
        if ts.min() < 0 or ts.max() >= n_train:
            raise ValueError(f"timesteps must lie in [0, num_train_timesteps={n_train}), got {ts.tolist()}")
        if ts.size > 1 and not bool((np.diff(ts) < 0).all()):
            raise ValueError(f"timesteps must be strictly decreasing, got {ts.tolist()}")
        abar = self.alphas_cumprod.double()
        levels = [float(abar[t]) for t in ts] + [float(self.final_alpha_cumprod)]
        if levels[-1] < levels[-2] or any(b <= a for a, b in zip(levels[:-2], levels[1:-1])):
            raise ValueError(f"the schedule's alpha_bar must increase along the path, got {levels}")
        self.timesteps = torch.from_numpy(ts.copy()).to(device)
        self.num_inference_steps = int(ts.size)
        self._timesteps_host = ts.tolist()
        self._levels = levels  # float64 host scalars: path[i] -> path[i + 1] is step i
        final = bool(getattr(self.config, "final_noise", True))
        self._steps = [_PlannedStep(i, t, levels, final) for i, t in enumerate(self._timesteps_host)] if plan else []
        self._begin_index = None
        self._link(0)
        self.init_noise_sigma = self._init_noise_sigma()

    def _link(self, begin: int) -> None:
        """Runs start at position ``begin``: chain the steps (the last one followed by the first of the next run),
        reset the counter and forget the previous run."""
        steps = self._steps
        for p in steps:
            p.first = p.index == begin
            p.follows = steps[begin] if p.last else steps[p.index + 1]
            # the following step's perturbation (accelerated SDE): none after the last step or before an identity
            # step, where a valid pair of levels is used with a zero gate (no other graph under torch.compile)
            real = not p.last and not p.follows.identity
            p.perturb = (p.follows.a_t, p.follows.a_prev) if real else (0.25, 0.5)
            p.perturb_gate = torch.tensor(float(real))
        self._plan = steps[begin] if steps else None  # the next step
        self._done: _PlannedStep | None = None  # the last step taken in this run
        self._start_run()

    def _init_noise_sigma(self) -> float:
        """Standard deviation of the start ``x_T = init_noise_sigma * N(0, I)``; 1 unless overridden."""
        return 1.0

    # ---- the diffusers API ---------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
    ) -> None:
        """Choose the timesteps of a run (and reset the counter): ``num_inference_steps`` of the configured
        ``timestep_spacing`` (with ``steps_offset`` for ``leading`` and ``logsnr``) or of Karras sigmas
        (``use_karras_sigmas``), custom descending ``timesteps``, or custom descending ``sigmas`` (noise levels
        ``sqrt((1 - abar) / abar)``, one per step, mapped to training steps by :func:`sigmas_to_timesteps`; a
        trailing 0, as k-diffusion's ``get_sigmas_*`` append, is dropped: the output level is set by
        ``set_alpha_to_one``).  NFE = ``len(self.timesteps)``.  ``device`` is where ``self.timesteps`` lives."""
        cfg, n_train = self.config, self.config.num_train_timesteps
        if sum(v is not None for v in (num_inference_steps, timesteps, sigmas)) != 1:
            raise ValueError("give exactly one of num_inference_steps, timesteps and sigmas")
        if timesteps is not None:
            if cfg.use_karras_sigmas:
                raise ValueError(
                    "Cannot use `timesteps` with `config.use_karras_sigmas = True` (as "
                    "DPMSolverMultistepScheduler); pass sigmas= or switch use_karras_sigmas off"
                )
            ts = check_timesteps(timesteps, n_train, "custom timesteps").numpy()
        elif sigmas is not None:
            ts = self._timesteps_for_sigmas(sigmas)
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
                raise TypeError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
            if not 1 <= num_inference_steps <= n_train:
                raise ValueError(
                    f"num_inference_steps must be in [1, num_train_timesteps={n_train}], got {num_inference_steps}"
                )
            if cfg.use_karras_sigmas:
                ts = karras_timesteps(self.alphas_cumprod, int(num_inference_steps), cfg.beta_schedule)
                self._check_distinct(ts, f"use_karras_sigmas with {num_inference_steps} steps")
            else:
                spacing = cfg.timestep_spacing
                if spacing not in SPACINGS:
                    raise ValueError(f"unknown timestep_spacing {spacing!r}; expected one of {SPACINGS}")
                train = self.alphas_cumprod if spacing == "logsnr" else None
                ts = timestep_subsequence(n_train, int(num_inference_steps), spacing, cfg.steps_offset, train).numpy()
        self._install(ts, device)

    def _timesteps_for_sigmas(self, sigmas) -> np.ndarray:
        s = np.asarray(sigmas.detach().cpu() if isinstance(sigmas, torch.Tensor) else sigmas, dtype=np.float64)
        if s.ndim != 1 or s.size < 1 or not np.isfinite(s).all():
            raise ValueError(f"sigmas must be a non-empty 1-D sequence of finite numbers, got {sigmas!r}")
        if s.size > 1 and s[-1] == 0:
            s = s[:-1]
        if (s <= 0).any() or (s.size > 1 and not (np.diff(s) < 0).all()):
            raise ValueError(f"sigmas must be positive and strictly decreasing (noisiest first), got {s.tolist()}")
        ts = sigmas_to_timesteps(self.alphas_cumprod, s)
        self._check_distinct(ts, f"the {s.size} sigmas")
        return ts

    @staticmethod
    def _check_distinct(ts: np.ndarray, what: str) -> None:
        if len(np.unique(ts)) != len(ts):
            raise ValueError(
                f"{what} map to the same training timestep more than once ({ts.tolist()}): use fewer "
                "steps or other sigmas"
            )

    @property
    def step_index(self) -> int | None:
        """The position of the next step in ``self.timesteps``, counted by ``step`` (diffusers' ``step_index``):
        ``None`` until the first step of a run, ``len(self.timesteps)`` after its last."""
        return None if self._done is None else self._done.index + 1

    _step_index = step_index  # diffusers' private name, read by some pipelines

    @property
    def begin_index(self) -> int | None:
        """Position of the first step of a run that does not start at the first timestep (set by img2img
        pipelines through :meth:`set_begin_index`); ``None`` means 0."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Called by diffusers' img2img-style pipelines after ``set_timesteps``: runs start at position
        ``begin_index`` of ``self.timesteps``.  (The accelerated DDPM sampler then starts from a sample the pipeline
        noised with ``add_noise``, i.e. ``Y_t`` rather than ``Y_t^+``: its first step is not the paper's.)"""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)):
            raise TypeError(f"begin_index must be an int, got {begin_index!r}")
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before set_begin_index")
        if not 0 <= begin_index < len(self._timesteps_host):
            raise ValueError(f"begin_index must be in [0, {len(self._timesteps_host)}), got {begin_index}")
        self._begin_index = int(begin_index)
        self._link(self._begin_index)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """No input scaling (variance-preserving models see ``x_t`` itself); present for interchangeability."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
        use_clipped_model_output: bool | None = None,
    ) -> AcceleratedSchedulerOutput | tuple:
        """One step of the sampler, at position ``step_index`` (``begin_index`` for the first step of a run), from
        ``timestep`` to the next level of the path.

        ``model_output`` is the network's output at ``(sample, timestep)`` (of the configured
        ``prediction_type``, a real floating-point tensor); ``timestep`` the integer of ``self.timesteps`` at the
        current position (checked, see the module docstring); ``generator`` (one ``torch.Generator`` or one per
        batch entry, as diffusers' ``randn_tensor`` takes) seeds the stochastic schedulers' noise and is ignored by
        the deterministic ones.  Returns ``prev_sample`` and ``pred_original_sample`` (or the tuple of both).

        ``eta`` and ``use_clipped_model_output`` are the keywords ``DDIMPipeline`` passes (so these schedulers run
        in it): the noise of each sampler is fixed by its update rule, so ``eta`` must be 0; the update always uses
        the noise consistent with the clipped ``x0`` (``use_clipped_model_output=True``), so ``False`` is refused
        when ``clip_sample`` or ``thresholding`` is on (``None``, the pipeline's default, means this convention).
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        self._check_ddim_keywords(eta, use_clipped_model_output)
        _check_step_inputs(model_output, timestep, sample)
        p, compiling = self._plan, _compiling()
        if p.first and not compiling:
            self._start_run()
        self._check_timestep(p, timestep, compiling)
        out_dtype = sample.dtype
        compute = torch.float32 if out_dtype in _LOW_PRECISION else out_dtype
        x, out = sample.to(compute), model_output.to(compute)
        eps, x0 = self._eps_and_x0(out, x, p.a_t)
        prev = x if p.identity else self._update(p, x, eps, generator)
        prev = prev.to(out_dtype)
        self._check_finite(p, prev, compiling)
        self._done, self._plan = p, p.follows
        x0 = x0.to(out_dtype)
        if not return_dict:
            return prev, x0
        return AcceleratedSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (one timestep per batch entry)."""
        sqrt_a, sqrt_1ma = self._broadcast_levels(timesteps, original_samples)
        return sqrt_a * original_samples + sqrt_1ma * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v-prediction target ``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0`` (``sample`` is ``x_0``)."""
        sqrt_a, sqrt_1ma = self._broadcast_levels(timesteps, sample)
        return sqrt_a * noise - sqrt_1ma * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ---- helpers -------------------------------------------------------------------------------------------
    def _check_ddim_keywords(self, eta, use_clipped_model_output) -> None:
        name = type(self).__name__
        if eta is not None and float(eta) != 0.0:
            kind = "adds the noise its update rule prescribes" if self._stochastic else "is deterministic"
            raise ValueError(
                f"{name} {kind}; eta={eta!r} asks for DDIM's stochastic variant, which it does not implement: "
                "pass eta=0.0 (or use diffusers' DDIMScheduler for eta > 0)"
            )
        clipping = self.config.clip_sample or self.config.thresholding
        if use_clipped_model_output is False and clipping:
            raise ValueError(
                f"{name} always uses the noise consistent with the clipped x0 (use_clipped_model_output=True); "
                "pass use_clipped_model_output=None or True, or switch clip_sample and thresholding off"
            )

    def _broadcast_levels(self, timesteps, like: torch.Tensor):
        n_train = self.config.num_train_timesteps
        t = timesteps if isinstance(timesteps, torch.Tensor) else check_timesteps(timesteps, n_train)
        if not is_integer_dtype(t.dtype):
            raise TypeError(f"timesteps must be integers (training step indices), got dtype {t.dtype}")
        t = t.to(like.device).long().flatten()
        if bool(((t < 0) | (t >= n_train)).any()):
            raise ValueError(f"timesteps must lie in [0, {n_train}), got {t.tolist()}")
        abar = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)[t]
        shape = (-1,) + (1,) * (like.ndim - 1)
        return abar.sqrt().reshape(shape), (1 - abar).sqrt().reshape(shape)

    def _check_timestep(self, p: _PlannedStep, timestep, compiling: bool) -> None:
        """``timestep`` must be the one of position ``p``: compared at once on the host, on the device for an
        accelerator tensor (read at the end of the run), by a device-side assertion while compiling."""
        if compiling:
            torch._assert_async((torch.as_tensor(timestep) == p.timestep_t).all(), _WRONG_TIMESTEP)
        elif not isinstance(timestep, torch.Tensor):
            if timestep != p.timestep:
                raise self._wrong_timestep(p, int(timestep))
        elif _host_readable(timestep):
            if int(timestep) != p.timestep:
                raise self._wrong_timestep(p, int(timestep))
        else:  # no synchronisation: the first wrong position is recorded on the device
            wrong = (timestep.reshape(()) != p.timestep).to(timestep.device)
            if self._mismatch_at is None:
                self._mismatch_at = torch.full((), -1, dtype=torch.int64, device=timestep.device)
            self._mismatch_at = torch.where(wrong & (self._mismatch_at < 0), p.index, self._mismatch_at)

    def _wrong_timestep(self, p: _PlannedStep, t: int) -> ValueError:
        ts, n = self._timesteps_host, len(self._timesteps_host)
        if t not in ts:
            return ValueError(
                f"timestep {t} is not in the schedule set by set_timesteps ({ts[:3]}...{ts[-1]}, {n} steps)"
            )
        return ValueError(
            f"{type(self).__name__}.step() was called at timestep {t} (position {ts.index(t)}) where the run is at "
            f"position {p.index} (timestep {p.timestep}): follow scheduler.timesteps in order; call set_timesteps "
            "(and set_begin_index) to start a new run"
        )

    def _start_run(self) -> None:
        """A new run begins: forget the flags of the previous one."""
        self._nonfinite_at = None
        self._mismatch_at = None

    def _eps_and_x0(self, model_output: torch.Tensor, x: torch.Tensor, a_t: float):
        """``(eps, x0)`` from the model output, with ``x0`` clipped / thresholded and ``eps`` made consistent."""
        cfg = self.config
        eps = model_output_to_eps(model_output, x, a_t, cfg.prediction_type)
        x0 = updates.eps_to_x0(x, eps, a_t)
        if cfg.thresholding:
            x0 = dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        elif cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        else:
            return eps, x0
        return x0_to_eps(x, x0, a_t), x0

    def _noise(self, like: torch.Tensor, generator) -> torch.Tensor:
        return randn_tensor(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    def _check_finite(self, p: _PlannedStep, prev: torch.Tensor, compiling: bool) -> None:
        """Raise for a non-finite sample: at once on the CPU; on an accelerator the flag is accumulated on the
        device and read, with the timestep flag, at the last step of the run; a device assertion while compiling."""
        check = self.config.check_finite
        if compiling:
            if check:
                torch._assert_async(torch.isfinite(prev).all(), _NONFINITE)
            return
        if check and _host_readable(prev):
            if not bool(torch.isfinite(prev).all()):
                raise ModelOutputError(
                    f"{type(self).__name__}.step at timestep {p.timestep} (position {p.index}) "
                    "produced NaN or Inf (model output or correction not finite)"
                )
        elif check:
            bad = ~torch.isfinite(prev).all()  # stays on the device: no synchronisation here
            if self._nonfinite_at is None:
                self._nonfinite_at = torch.full((), -1, dtype=torch.int64, device=prev.device)
            self._nonfinite_at = torch.where(bad & (self._nonfinite_at < 0), p.index, self._nonfinite_at)
        if not p.last:
            return
        flags = [f for f in (self._mismatch_at, self._nonfinite_at) if f is not None]
        if not flags:
            return
        values = torch.stack([f.to(flags[0].device) for f in flags]).tolist()  # the one synchronisation of the run
        mismatch = values.pop(0) if self._mismatch_at is not None else -1
        nonfinite = values.pop(0) if self._nonfinite_at is not None else -1
        if mismatch >= 0:
            raise ValueError(
                f"{type(self).__name__}: step() was given a timestep other than {self._timesteps_host[mismatch]} at "
                f"position {mismatch} of the run (the steps of a run follow scheduler.timesteps in order); pass the "
                "elements of scheduler.timesteps, and call set_timesteps before a new run"
            )
        if nonfinite >= 0:
            raise ModelOutputError(
                f"{type(self).__name__}: the sample became NaN or Inf at timestep {self._timesteps_host[nonfinite]} "
                f"(position {nonfinite})"
            )

    def _update(self, p: _PlannedStep, x: torch.Tensor, eps: torch.Tensor, generator) -> torch.Tensor:
        raise NotImplementedError


def _check_step_inputs(model_output, timestep, sample) -> None:
    """Types, dtypes and shapes of ``step``'s arguments (static: no value is read)."""
    if isinstance(timestep, (bool, float, complex)) or not isinstance(timestep, (int, np.integer, torch.Tensor)):
        raise TypeError(f"timestep must be an integer of scheduler.timesteps, got {timestep!r}")
    if isinstance(timestep, torch.Tensor):
        if not is_integer_dtype(timestep.dtype):
            raise TypeError(
                f"timestep must be an integer of scheduler.timesteps, got a tensor of dtype {timestep.dtype}"
            )
        if timestep.numel() != 1:
            raise ValueError(f"step takes one timestep, got a tensor of shape {tuple(timestep.shape)}")
    if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
        raise TypeError("model_output and sample must be torch tensors")
    for what, v in (("model_output", model_output), ("sample", sample)):
        if not v.is_floating_point():
            raise TypeError(f"{what} must be a real floating-point tensor, got dtype {v.dtype}")
    if model_output.shape != sample.shape:
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; "
            "a model with learned variance returns 2x the channels: pass its first half"
        )


# --------------------------------------------------------------------------------------------------------------
# The four schedulers
# --------------------------------------------------------------------------------------------------------------
class AcceleratedDDIMScheduler(_PathScheduler):
    r"""The paper's accelerated deterministic sampler (official multistep form, one model evaluation per step):

    .. math:: x_{t-1} = \mathrm{DDIM}(x_t, \varepsilon_t) + c\,(\varepsilon_{t+1} - \varepsilon_t)

    (:func:`accelerated_diffusion.updates.accelerated_ode_step`, arcsin coefficient
    :func:`~accelerated_diffusion.updates.accelerated_ode_coefficient`); ``eps_{t+1}`` is the (converted, clipped)
    model output of the previous step.  The first step of a run is plain DDIM.  With ``use_correction=False``
    every step is exact DDIM (eta = 0), equal to diffusers' ``DDIMScheduler`` on the same path.

    ``extrapolation`` chooses how ``eps`` is extrapolated through ``(abar_{t+1}, eps_{t+1})`` and
    ``(abar_t, eps_t)`` over the step, i.e. the ``coefficient`` passed to ``accelerated_ode_step``
    (:data:`EXTRAPOLATIONS`):

    * ``"alpha_bar"`` (default): linear in ``alpha_bar``, the paper's sampler (sampler ``accelerated_ode``);
    * ``"lambda"``: linear in the half log-SNR, the book's safeguarded variant ``accelerated_ode_lambda``
      (:func:`~accelerated_diffusion.updates.accelerated_ode_lambda_coefficient`, multistep DPM-Solver-2 in
      ``eps`` form);
    * ``"capped"``: the paper's, held constant beyond ``max_ratio`` times the last interval in ``alpha_bar``, the
      book's safeguarded variant ``accelerated_ode_capped``
      (:func:`~accelerated_diffusion.updates.accelerated_ode_capped_coefficient`; ``max_ratio`` a number
      ``>= 0``, ``inf`` for no cap, default 2.0 as the sampler's; the other extrapolations ignore it).

    ``AcceleratedDDIMScheduler.from_config(pipe.scheduler.config, extrapolation="lambda")`` swaps a safeguarded
    variant into a pipeline (or :func:`accelerated_diffusion.samplers.scheduler_for` with the sampler's name).
    ``set_timesteps`` evaluates the coefficient function once per step (float64, on the host, from the step's
    three levels); ``step`` reads that float, so every extrapolation compiles to the same two graphs.

    Config: the ``DDIMScheduler`` keys (see the module docstring for ``timestep_spacing``, ``clip_sample``,
    ``thresholding``), ``use_karras_sigmas``, ``check_finite``, ``use_correction``, ``extrapolation`` and
    ``max_ratio`` (the last two checked before anything else is built).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        use_karras_sigmas: bool = False,
        check_finite: bool = True,
        use_correction: bool = True,
        extrapolation: str = "alpha_bar",
        max_ratio: float = 2.0,
    ):
        if not isinstance(extrapolation, str) or extrapolation not in EXTRAPOLATIONS:
            raise ValueError(f"unknown extrapolation {extrapolation!r}; expected one of {tuple(EXTRAPOLATIONS)}")
        self._max_ratio = updates.check_max_ratio(max_ratio)  # TypeError / ValueError as the sampler's option
        self._build()

    def _link(self, begin: int) -> None:
        super()._link(begin)
        self._eps_next = None  # eps_{t+1}: the model output of the previous (noisier) step

    def _install(self, timesteps: np.ndarray, device, plan: bool = True) -> None:
        super()._install(timesteps, device, plan)
        # The correction's coefficient of every step from its three levels, on the host when the timesteps are set:
        # then a step only reads a float (the log1p / expm1 of the lambda coefficient and the cap's comparison would
        # specialise torch.compile's graph to each step's levels).
        coefficient = updates.extrapolation_coefficient(self.config.extrapolation, self._max_ratio)
        for p in self._steps:
            if p.index > 0 and not p.identity:
                p.coefficient = coefficient(p.a_next, p.a_t, p.a_prev)

    def _update(self, p, x, eps, generator):
        first = p.first or not self.config.use_correction  # the first step of a run is plain DDIM
        # read at every step: symbolic from the second step on under torch.compile
        a_next, c = float(p.a_next), float(p.coefficient)
        eps_next, a_next = (None, None) if first else (self._eps_next, a_next)
        prev = updates.accelerated_ode_step(x, eps, p.a_t, p.a_prev, eps_next, a_next, lambda *levels: c)
        self._eps_next = eps
        return prev


class AcceleratedDDPMScheduler(_PathScheduler):
    r"""The paper's accelerated stochastic sampler (official README), one model evaluation per step:

    .. math:: Y_t^+ = \Phi_t(Y_t, Z_t) = Y_t + \sqrt{(1-\alpha_t)/2}\,Z_t, \qquad
              Y_{t-1} = \Psi_t(Y_t^+, Z_t^+) = \frac{Y_t^+ + (1-\alpha_t)\, s_t(Y_t^+)}{\sqrt{\alpha_t}}
                        + \sqrt{(1-\alpha_t)/2}\,Z_t^+ .

    The model is evaluated at the *perturbed* point ``Y_t^+``, so the sample a pipeline holds between steps is
    ``Y_t^+``: ``step`` applies the half-steps of :func:`~accelerated_diffusion.updates.accelerated_sde_transitions`
    from the evaluation on (``Psi_t``, drawing ``Z_t^+``) and then, except at the last step, those of the next step
    before its evaluation (``Phi_{t-1}``, drawing ``Z_{t-1}``).  The start must be ``Y_T^+``: if
    ``Y_T ~ N(0, I)`` then ``Y_T^+ ~ N(0, (1 + (1 - alpha_T)/2) I)`` exactly, so

    .. math:: \texttt{init\_noise\_sigma} = \sqrt{1 + (1 - \alpha_T)/2}, \qquad \alpha_T = \bar\alpha_{\tau_S} /
              \bar\alpha_{\tau_{S-1}}

    (the per-step alpha of the first step; it depends on ``set_timesteps``).  Pipelines that honour
    ``init_noise_sigma`` (Stable Diffusion, :func:`accelerated_diffusion.sample_with_scheduler`,
    :class:`accelerated_diffusion.pipelines.InitNoiseDDPMPipeline`) start from the right law; diffusers'
    ``DDPMPipeline`` starts from ``N(0, I)`` and is off by that factor.

    ``final_noise`` (default ``False``, as :func:`accelerated_diffusion.run_sampler` and the authors' image code):
    whether the last step adds ``Z_1^+``; ``True`` is the paper's formula (the core :func:`accelerated_diffusion.sample`
    default).  The noise is drawn either way, so the random stream does not depend on it; the last step also
    draws the (absent) next step's perturbation noise and multiplies it by zero, so that it is the same graph as
    the others under ``torch.compile`` (the samples are those of the core loop; the generator ends one draw later).
    """

    _stochastic = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        use_karras_sigmas: bool = False,
        check_finite: bool = True,
        final_noise: bool = False,
    ):
        self._build()

    def _init_noise_sigma(self) -> float:
        a_T, a_next = self._levels[0], self._levels[1]
        if a_next == a_T:  # a single identity step (set_alpha_to_one=False, timesteps=[0])
            return 1.0
        return math.sqrt(1.0 + updates.accelerated_sde_noise_scale(a_T, a_next) ** 2)

    def _update(self, p, x_plus, eps, generator):
        # the half-steps of updates.accelerated_sde_transitions, cut at the model evaluation: this step's from it
        # on (Psi_t, the model saw x_plus), then the next step's before it (Phi_{t-1}); the gates are 1 except at
        # the last step (final_noise; no next step: a zero perturbation)
        y = x_plus
        for k, tr in enumerate(updates.split_at_evaluation(updates.accelerated_sde_transitions(p.a_t, p.a_prev))[1]):
            y = tr.rule(y, eps if k == 0 else None, self._noise(y, generator) * p.final_gate)
        for tr in updates.split_at_evaluation(updates.accelerated_sde_transitions(*p.perturb))[0]:
            y = tr.rule(y, None, self._noise(y, generator) * p.perturb_gate)
        return y


class DDIMTypeScheduler(_PathScheduler):
    r"""The paper's DDIM-type baseline, :func:`accelerated_diffusion.updates.ddim_type_step`:
    ``Y_{t-1} = (Y_t + (1 - alpha_t)/2 s_t(Y_t)) / sqrt(alpha_t)`` (first-order; differs from exact DDIM)."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        use_karras_sigmas: bool = False,
        check_finite: bool = True,
    ):
        self._build()

    def _update(self, p, x, eps, generator):
        return updates.ddim_type_step(x, eps, p.a_t, p.a_prev)


class DDPMTypeScheduler(_PathScheduler):
    r"""The paper's DDPM-type baseline, :func:`accelerated_diffusion.updates.ddpm_type_step`:
    ``Y_{t-1} = (Y_t + (1 - alpha_t) s_t(Y_t) + sqrt(1 - alpha_t) Z_t) / sqrt(alpha_t)``, noise at every step but,
    unless ``final_noise=True`` (the paper's formula), the last (default ``False``, as
    :func:`accelerated_diffusion.run_sampler` and the official code's ``t == 0`` mask; the noise is drawn either
    way).  Not diffusers' ``DDPMScheduler`` (posterior mean and variance)."""

    _stochastic = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        use_karras_sigmas: bool = False,
        check_finite: bool = True,
        final_noise: bool = False,
    ):
        self._build()

    def _update(self, p, x, eps, generator):
        noise = self._noise(x, generator) * p.final_gate
        return updates.ddpm_type_step(x, eps, p.a_t, p.a_prev, noise)
