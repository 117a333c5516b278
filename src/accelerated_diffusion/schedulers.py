r"""Drop-in diffusers schedulers for the paper's samplers and its baselines.

Try the accelerated samplers on any epsilon-, v- or x0-prediction diffusers model with one line::

    pipe.scheduler = AcceleratedDDIMScheduler.from_config(pipe.scheduler.config)

The schedulers and the update function(s) of :mod:`.updates` each ``step`` calls:

* :class:`AcceleratedDDIMScheduler` -- :func:`~.updates.accelerated_ode_step` (exact DDIM plus the arcsin
  correction from the previous model output); ``init_noise_sigma = 1``;
* :class:`AcceleratedDDPMScheduler` -- :func:`~.updates.accelerated_sde_step` (``Psi_t``), then
  :func:`~.updates.accelerated_sde_perturb` (``Phi_{t-1}`` of the next step); ``init_noise_sigma =
  sqrt(1 + (1 - alpha_T)/2)``;
* :class:`DDIMTypeScheduler` -- :func:`~.updates.ddim_type_step` (the paper's baseline); ``init_noise_sigma = 1``;
* :class:`DDPMTypeScheduler` -- :func:`~.updates.ddpm_type_step` (the paper's baseline); ``init_noise_sigma = 1``.

Use them in any pipeline that multiplies its start by ``init_noise_sigma`` (Stable Diffusion and the other latent
pipelines, :class:`accelerated_diffusion.pipelines.InitNoiseDDPMPipeline`,
:func:`accelerated_diffusion.sample_with_scheduler`); diffusers' ``DDPMPipeline`` does not, which matters only for
:class:`AcceleratedDDPMScheduler`.

How a diffusers schedule becomes a sampling path
-------------------------------------------------
``set_timesteps`` picks training indices ``tau_S > ... > tau_1`` (``timestep_spacing`` leading / trailing /
linspace as in diffusers, plus the official code's ``uniform`` and ``quadratic``; or ``timesteps=`` given
explicitly) and the path of levels ``[abar[tau_S], ..., abar[tau_1], final]`` with ``final = 1`` when
``set_alpha_to_one`` (the output is clean data) and ``abar[0]`` otherwise.  Step ``i`` goes from level
``path[i]`` to ``path[i + 1]``, i.e. *to the level of the next timestep in the list*.  This is the core
:func:`accelerated_diffusion.sample` convention.  diffusers' ``DDIMScheduler`` instead steps to
``t - num_train_timesteps // num_inference_steps``, which is the next timestep only for ``leading`` spacing (and
``trailing`` when the step count divides ``num_train_timesteps``); with ``linspace`` at 10 of 1000 steps it evaluates
the model at 888 on a sample it moved to level 899.  Here the two always agree.  If ``set_alpha_to_one=False`` and
the last timestep is 0, the last step goes from ``abar[0]`` to ``abar[0]``: it returns the sample unchanged (as
``DDIMScheduler`` does), so NFE is still ``len(scheduler.timesteps)``.

The coefficients are float64 host scalars computed from the levels (see :mod:`.updates`), so a step launches a
few element-wise kernels and never synchronises with an accelerator.

How ``step`` finds its position
-------------------------------
``step(model_output, timestep, sample)`` goes from the level of ``timestep`` to the next level of the path, on
every device, and never reads a device value to find out which step it is:

* a Python/NumPy integer or a CPU tensor is looked up by value on the host;
* an element of ``scheduler.timesteps`` on an accelerator (what ``for t in scheduler.timesteps`` and every
  diffusers pipeline pass) is a view of that tensor: its position is its offset in it, host metadata, so the
  value is honoured exactly as on the CPU, also when a run was aborted and a new one starts at the first timestep;
* any other accelerator tensor (a copy) cannot be read without a synchronisation: the step takes the position
  that follows the previous step (the first one of a run after the last step, ``set_timesteps`` or
  ``set_begin_index``), and compares the tensor with the timestep expected there *on the device*; the flag is read
  at the last step of the run together with the finite-values flag (one synchronisation per run), and a mismatch
  raises ``ValueError`` naming the first wrong position.

The timestep must be an integer (int, NumPy integer or integer tensor; a float is never truncated) of the current
schedule; a stateful scheduler (the two accelerated ones) also requires consecutive positions within a run.

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

import inspect
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
    "AcceleratedSchedulerOutput",
    "AcceleratedDDIMScheduler",
    "AcceleratedDDPMScheduler",
    "DDIMTypeScheduler",
    "DDPMTypeScheduler",
    "model_output_to_eps",
    "x0_to_eps",
    "v_to_eps",
    "dynamic_threshold",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


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
class _PathScheduler(SchedulerMixin, ConfigMixin):
    """Shared base: the diffusers config and schedule, ``set_timesteps`` -> sampling path, model-output
    conversion, clipping, dtype handling and checks.  Subclasses implement :meth:`_update` (one call of
    :mod:`.updates`) and, if stateful, reset their state in :meth:`_reset`."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1
    #: whether ``step`` must be called on consecutive timesteps (the sampler carries state between steps)
    _chained = False
    #: whether ``step`` draws noise
    _stochastic = False

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
        check_finite: bool = True,
    ):
        self._build()

    # ---- construction ------------------------------------------------------------------------------------
    def _build(self) -> None:
        """Validate the config and build the training schedule (reads ``self.config``; shared by subclasses)."""
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
            betas = betas_for(cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, dtype=torch.float32)
        else:
            raise ValueError(f"unknown beta_schedule {cfg.beta_schedule!r}; expected one of {BETA_SCHEDULES}")
        # float32 like diffusers, so that add_noise and the levels match a model trained with DDPMScheduler.
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = alpha_bars_from_betas(betas)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0].clone()
        self.num_inference_steps = None
        self._install(np.arange(cfg.num_train_timesteps - 1, -1, -1, dtype=np.int64), device=None)
        self.num_inference_steps = None  # step() still requires set_timesteps

    def _install(self, timesteps: np.ndarray, device) -> None:
        """Make ``timesteps`` (descending int64) the current schedule: path, host copies, fresh state."""
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
        self._index_of = {t: i for i, t in enumerate(self._timesteps_host)}
        self._levels = levels  # float64 host scalars: path[i] -> path[i + 1] is step i
        self._step_index = None
        self._begin_index = None
        self._start_run()
        self.init_noise_sigma = self._init_noise_sigma()

    def _reset(self) -> None:
        """Forget the state of a previous run (stateful subclasses override)."""

    def _init_noise_sigma(self) -> float:
        """Standard deviation of the start ``x_T = init_noise_sigma * N(0, I)``; 1 unless overridden."""
        return 1.0

    # ---- the diffusers API ---------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Choose the timesteps of a run (and reset all state): ``num_inference_steps`` of the configured
        ``timestep_spacing`` (with ``steps_offset`` for ``leading``), or custom descending ``timesteps``.
        NFE = ``len(self.timesteps)``.  ``device`` is where ``self.timesteps`` lives."""
        n_train = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("give exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            ts = check_timesteps(timesteps, n_train, "custom timesteps").numpy()
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
                raise TypeError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
            if not 1 <= num_inference_steps <= n_train:
                raise ValueError(
                    f"num_inference_steps must be in [1, num_train_timesteps={n_train}], got {num_inference_steps}"
                )
            spacing = self.config.timestep_spacing
            if spacing not in SPACINGS:
                raise ValueError(f"unknown timestep_spacing {spacing!r}; expected one of {SPACINGS}")
            ts = timestep_subsequence(n_train, int(num_inference_steps), spacing, self.config.steps_offset).numpy()
        self._install(ts, device)

    @property
    def begin_index(self) -> int | None:
        """Position of the first step of a run that does not start at the first timestep (set by img2img
        pipelines through :meth:`set_begin_index`); ``None`` means 0."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Called by diffusers' img2img-style pipelines after ``set_timesteps``: the run starts at position
        ``begin_index`` of ``self.timesteps``.  (The accelerated DDPM sampler then starts from a sample the pipeline
        noised with ``add_noise``, i.e. ``Y_t`` rather than ``Y_t^+``: its first step is not the paper's.)"""
        if not 0 <= begin_index < len(self._timesteps_host):
            raise ValueError(f"begin_index must be in [0, {len(self._timesteps_host)}), got {begin_index}")
        self._begin_index = int(begin_index)

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
        """One step of the sampler from ``timestep`` to the next level of the path.

        ``model_output`` is the network's output at ``(sample, timestep)`` (of the configured
        ``prediction_type``, a real floating-point tensor); ``timestep`` an integer of ``self.timesteps`` (see the
        module docstring); ``generator`` (one ``torch.Generator`` or one per batch entry, as diffusers'
        ``randn_tensor`` takes) seeds the stochastic schedulers' noise and is ignored by the deterministic ones.
        Returns ``prev_sample`` and ``pred_original_sample`` (or the tuple of both).

        ``eta`` and ``use_clipped_model_output`` are the keywords ``DDIMPipeline`` passes (so these schedulers run
        in it): the noise of each sampler is fixed by its update rule, so ``eta`` must be 0; the update always uses
        the noise consistent with the clipped ``x0`` (``use_clipped_model_output=True``), so ``False`` is refused
        when ``clip_sample`` or ``thresholding`` is on (``None``, the pipeline's default, means this convention).
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        self._check_ddim_keywords(eta, use_clipped_model_output)
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
        i = self._index_for(timestep)
        out_dtype = sample.dtype
        compute = torch.float32 if out_dtype in _LOW_PRECISION else out_dtype
        x, out = sample.to(compute), model_output.to(compute)
        a_t, a_prev = self._levels[i], self._levels[i + 1]
        eps, x0 = self._eps_and_x0(out, x, a_t)
        prev = x if a_prev == a_t else self._update(i, x, eps, generator)
        prev = prev.to(out_dtype)
        self._check_finite(i, prev)
        self._step_index = i
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

    def _index_for(self, timestep) -> int:
        """Position of ``timestep`` in ``self.timesteps`` (see the module docstring): by value for host integers and
        CPU tensors, by offset for views of ``self.timesteps``; otherwise the next position, verified on the
        device."""
        n = len(self._timesteps_host)
        if isinstance(timestep, (bool, float, complex)) or not isinstance(timestep, (int, np.integer, torch.Tensor)):
            raise TypeError(f"timestep must be an integer of scheduler.timesteps, got {timestep!r}")
        if isinstance(timestep, torch.Tensor):
            if not is_integer_dtype(timestep.dtype):
                raise TypeError(
                    f"timestep must be an integer of scheduler.timesteps, got a tensor of dtype {timestep.dtype}"
                )
            if timestep.numel() != 1:
                raise ValueError(f"step takes one timestep, got a tensor of shape {tuple(timestep.shape)}")
        if isinstance(timestep, torch.Tensor) and not _host_readable(timestep):
            i = self._view_position(timestep)
            if i is None:  # a copy on the device: the next position, compared on the device
                i = self._step_index + 1 if self._step_index is not None and self._step_index + 1 < n else None
                if i is None:
                    self._start_run()
                    i = self._begin_index or 0
                self._verify_on_device(i, timestep)
                return i
        else:
            t = int(timestep)
            if t not in self._index_of:
                raise ValueError(
                    f"timestep {t} is not in the schedule set by set_timesteps ({self._timesteps_host[:3]}..."
                    f"{self._timesteps_host[-1]}, {n} steps)"
                )
            i = self._index_of[t]
        starts = (0, self._begin_index or 0)  # where a run may begin
        if self._chained and self._step_index is not None and i not in (*starts, self._step_index + 1):
            raise ValueError(
                f"{type(self).__name__} carries state from step to step: step() was called at timestep "
                f"{self._timesteps_host[i]} (position {i}) after position {self._step_index}; follow "
                "scheduler.timesteps in order, or call set_timesteps to start a new run"
            )
        continues = self._step_index is not None and i == self._step_index + 1
        if i in starts and not continues:
            self._start_run()
        return i

    def _view_position(self, timestep: torch.Tensor) -> int | None:
        """The position of ``timestep`` in ``self.timesteps`` when it is one of its elements (a view, as iterating
        or indexing gives), read from host metadata; ``None`` otherwise."""
        ts = self.timesteps
        if timestep._base is not ts and timestep is not ts:
            return None
        offset = timestep.storage_offset() - ts.storage_offset()
        i, rem = divmod(offset, ts.stride(0))
        return i if rem == 0 and 0 <= i < len(self._timesteps_host) else None

    def _verify_on_device(self, i: int, timestep: torch.Tensor) -> None:
        """Record, on the device, the first position where ``timestep`` differs from the expected timestep."""
        wrong = (timestep.reshape(()) != self._timesteps_host[i]).to(timestep.device)
        if self._mismatch_at is None:
            self._mismatch_at = torch.full((), -1, dtype=torch.int64, device=timestep.device)
        self._mismatch_at = torch.where(wrong & (self._mismatch_at < 0), i, self._mismatch_at)

    def _start_run(self) -> None:
        """A new run begins: forget the previous one."""
        self._nonfinite_at = None
        self._mismatch_at = None
        self._reset()

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

    def _check_finite(self, i: int, prev: torch.Tensor) -> None:
        """Raise for a non-finite sample: at once on the CPU; on an accelerator the flag is accumulated on the
        device and read, with the timestep-verification flag, at the last step of the run."""
        last = i == len(self._timesteps_host) - 1
        where = f"{type(self).__name__}.step at timestep {self._timesteps_host[i]} (position {i})"
        if self.config.check_finite and prev.device.type == "cpu":
            if not bool(torch.isfinite(prev).all()):
                raise ModelOutputError(f"{where} produced NaN or Inf (model output or correction not finite)")
        elif self.config.check_finite:
            bad = ~torch.isfinite(prev).all()  # stays on the device: no synchronisation here
            if self._nonfinite_at is None:
                self._nonfinite_at = torch.full((), -1, dtype=torch.int64, device=prev.device)
            self._nonfinite_at = torch.where(bad & (self._nonfinite_at < 0), i, self._nonfinite_at)
        if not last:
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
                f"position {mismatch} of the run (a device tensor that is not an element of scheduler.timesteps is "
                "taken to follow the previous step); pass the elements of scheduler.timesteps, or call "
                "set_timesteps before a new run"
            )
        if nonfinite >= 0:
            raise ModelOutputError(
                f"{type(self).__name__}: the sample became NaN or Inf at timestep {self._timesteps_host[nonfinite]} "
                f"(position {nonfinite})"
            )

    def _update(self, i: int, x: torch.Tensor, eps: torch.Tensor, generator) -> torch.Tensor:
        raise NotImplementedError


def _host_readable(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s value costs no synchronisation with an accelerator (CPU tensors)."""
    return t.device.type == "cpu"


def _init_with_extra_config(base_cls, **extra):
    """An ``__init__`` taking ``base_cls``'s config parameters plus ``extra`` (``name=default``), registered to the
    config exactly like a ``@register_to_config`` init (so ``from_config``, ``save_config`` and the compatibility
    checks see every key); its body only builds the schedule from ``self.config``."""
    base = inspect.signature(base_cls.__init__)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [*base.parameters.values(), *(inspect.Parameter(k, kind, default=v) for k, v in extra.items())]

    def __init__(self, *args, **kwargs):
        self._build()

    __init__.__signature__ = base.replace(parameters=params)
    return register_to_config(__init__)


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

    Config: the ``DDIMScheduler`` keys (see the module docstring for ``timestep_spacing``, ``clip_sample``,
    ``thresholding``), plus ``use_correction`` and ``check_finite``.
    """

    _chained = True
    __init__ = _init_with_extra_config(_PathScheduler, use_correction=True)

    def _reset(self) -> None:
        self._eps_next = None  # eps_{t+1}: the model output of the previous (noisier) step
        self._alpha_bar_next = None

    def _update(self, i, x, eps, generator):
        eps_next = self._eps_next if self.config.use_correction else None
        prev = updates.accelerated_ode_step(x, eps, self._levels[i], self._levels[i + 1], eps_next, self._alpha_bar_next)
        self._eps_next, self._alpha_bar_next = eps, self._levels[i]
        return prev


class AcceleratedDDPMScheduler(_PathScheduler):
    r"""The paper's accelerated stochastic sampler (official README), one model evaluation per step:

    .. math:: Y_t^+ = \Phi_t(Y_t, Z_t) = Y_t + \sqrt{(1-\alpha_t)/2}\,Z_t, \qquad
              Y_{t-1} = \Psi_t(Y_t^+, Z_t^+) = \frac{Y_t^+ + (1-\alpha_t)\, s_t(Y_t^+)}{\sqrt{\alpha_t}}
                        + \sqrt{(1-\alpha_t)/2}\,Z_t^+ .

    The model is evaluated at the *perturbed* point ``Y_t^+``, so the sample a pipeline holds between steps is
    ``Y_t^+``: ``step`` applies ``Psi_t`` (:func:`~accelerated_diffusion.updates.accelerated_sde_step`, drawing
    ``Z_t^+``) and then, except at the last step, ``Phi_{t-1}`` of the next step
    (:func:`~accelerated_diffusion.updates.accelerated_sde_perturb`, drawing ``Z_{t-1}``).  The start must be
    ``Y_T^+``: if ``Y_T ~ N(0, I)`` then ``Y_T^+ ~ N(0, (1 + (1 - alpha_T)/2) I)`` exactly, so

    .. math:: \texttt{init\_noise\_sigma} = \sqrt{1 + (1 - \alpha_T)/2}, \qquad \alpha_T = \bar\alpha_{\tau_S} /
              \bar\alpha_{\tau_{S-1}}

    (the per-step alpha of the first step; it depends on ``set_timesteps``).  Pipelines that honour
    ``init_noise_sigma`` (Stable Diffusion, :func:`accelerated_diffusion.sample_with_scheduler`,
    :class:`accelerated_diffusion.pipelines.InitNoiseDDPMPipeline`) start from the right law; diffusers'
    ``DDPMPipeline`` starts from ``N(0, I)`` and is off by that factor.  The last step adds ``Z_1^+`` too, like the
    core :func:`accelerated_diffusion.sample` (the official ImageNet code omits it).
    """

    _chained = True
    _stochastic = True

    def _init_noise_sigma(self) -> float:
        a_T, a_next = self._levels[0], self._levels[1]
        if a_next == a_T:  # a single identity step (set_alpha_to_one=False, timesteps=[0])
            return 1.0
        return math.sqrt(1.0 + updates.accelerated_sde_noise_scale(a_T, a_next) ** 2)

    def _update(self, i, x_plus, eps, generator):
        lv = self._levels
        y = updates.accelerated_sde_step(x_plus, eps, lv[i], lv[i + 1], self._noise(x_plus, generator))  # Psi_t
        if i + 2 < len(lv) and lv[i + 2] > lv[i + 1]:  # Phi_{t-1} for the next step
            y = updates.accelerated_sde_perturb(y, lv[i + 1], lv[i + 2], self._noise(y, generator))
        return y


class DDIMTypeScheduler(_PathScheduler):
    r"""The paper's DDIM-type baseline, :func:`accelerated_diffusion.updates.ddim_type_step`:
    ``Y_{t-1} = (Y_t + (1 - alpha_t)/2 s_t(Y_t)) / sqrt(alpha_t)`` (first-order; differs from exact DDIM)."""

    def _update(self, i, x, eps, generator):
        return updates.ddim_type_step(x, eps, self._levels[i], self._levels[i + 1])


class DDPMTypeScheduler(_PathScheduler):
    r"""The paper's DDPM-type baseline, :func:`accelerated_diffusion.updates.ddpm_type_step`:
    ``Y_{t-1} = (Y_t + (1 - alpha_t) s_t(Y_t) + sqrt(1 - alpha_t) Z_t) / sqrt(alpha_t)``, noise at every step.
    Not diffusers' ``DDPMScheduler`` (posterior mean and variance, no noise at the last step)."""

    _stochastic = True

    def _update(self, i, x, eps, generator):
        return updates.ddpm_type_step(x, eps, self._levels[i], self._levels[i + 1], self._noise(x, generator))
