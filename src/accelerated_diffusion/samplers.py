r"""Sampling loops: one short function per sampler with one shared signature (k-diffusion style).

Every loop walks a sampling path ``alpha_bars`` (noisiest level first, output level last; see
:mod:`accelerated_diffusion.schedules`), calls ``eps_fn(x, t)`` exactly once per step with ``t = timesteps[i]``
(by default the level ``alpha_bars[i]`` itself, which is what the exact-score targets of
:mod:`accelerated_diffusion.targets` expect), and applies one update rule of :mod:`accelerated_diffusion.updates`.
So the number of function evaluations (NFE) is ``len(alpha_bars) - 1``.

Every sampler has one name, registered in :data:`SAMPLERS` (a :class:`SamplerSpec`: its display label, whether
it is stochastic, how it runs, its options); the code, the results files and the book's tables all use these
names, and every list of samplers in the project derives from the registry (:data:`LIBRARY_SAMPLERS`,
:func:`table_order`, :func:`scheduler_classes`, ...).  The loops themselves are private: a sampler is run by its
name through the entry points below, and its options (DPM-Solver++(2M)'s ``lower_order_final``) are passed as
``options=``.  Adding a sampler touches :mod:`.updates` (its rule; for a stochastic sampler its Gaussian
half-steps, :class:`~.updates.Transition`), this module (its loop, if deterministic, and its registry entry) and
their tests.  Entry points:

* :func:`sample` -- a library sampler on any path (exact-score targets, custom grids);
* :func:`run_sampler` -- any registered sampler, diffusers' own peer schedulers included, on a model's
  integer timesteps (the one dispatch the experiments use); :func:`run_grid` -- the same on a named grid of
  the training schedule, in batches, with its NFE checked (the one generation wrapper);
* :func:`sample_with_scheduler` -- drive any diffusers scheduler the way a pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm import tqdm

from . import peers, updates
from .schedules import check_timesteps, validate_path

__all__ = [
    "SAMPLERS",
    "LIBRARY_SAMPLERS",
    "PAPER_SAMPLERS",
    "STOCHASTIC",
    "DETERMINISTIC",
    "SamplerSpec",
    "spec",
    "label",
    "sample",
    "sample_with_scheduler",
    "run_sampler",
    "grid_timesteps",
    "run_grid",
    "ROLES",
    "table_order",
    "scheduler_class",
    "scheduler_classes",
    "scheduler_config",
    "scheduler_for",
    "ModelOutputError",
]

EpsFn = Callable[[torch.Tensor, object], torch.Tensor]


class ModelOutputError(RuntimeError):
    """The model returned something unusable (wrong shape, NaN or Inf); the message names the step."""


class _Stepper:
    """Shared bookkeeping of a loop: the path, timesteps, NFE count, noise draws and output checks."""

    def __init__(
        self,
        eps_fn,
        x,
        alpha_bars,
        timesteps,
        generator,
        progress,
        check_finite,
        desc,
        final_noise=True,
        noise_sampler=None,
    ):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if isinstance(generator, (list, tuple)):
            if len(generator) != x.shape[0] or not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError(
                    f"a list of generators must hold one torch.Generator per sample: got {len(generator)} entries "
                    f"for a batch of {x.shape[0]}"
                )
            generator = list(generator)
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        self.path = validate_path(alpha_bars)
        n = self.path.numel() - 1
        if timesteps is None:
            timesteps = [float(a) for a in self.path[:-1]]
        elif len(timesteps) != n:
            raise ValueError(f"timesteps has {len(timesteps)} entries but alpha_bars defines {n} steps")
        self.eps_fn, self.x, self.timesteps = eps_fn, x, list(timesteps)
        self.final_noise = bool(final_noise)
        if noise_sampler is not None and generator is not None:
            raise ValueError("give a generator or a noise_sampler, not both")
        self.noise_sampler, self.step = noise_sampler, 0  # step: the index of the step under way
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
        if not out.is_floating_point():
            raise ModelOutputError(
                f"step {i} (t={t}): model output has dtype {out.dtype}; eps must be a real floating-point tensor"
            )
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise ModelOutputError(f"step {i} (t={t}): model output contains NaN or Inf")
        return out.to(x.dtype)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise like ``like``; with a list of generators, row ``k`` is drawn from generator ``k``
        (diffusers' ``randn_tensor``), so a sample does not depend on the batch it is drawn in."""
        if self.noise_sampler is not None:
            return self.noise_sampler(self.step, like)
        return randn_tensor(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def final_step_noise(self, i: int, like: torch.Tensor) -> torch.Tensor:
        """The noise added after the model evaluation of step ``i``: drawn as always (the random stream does not
        depend on ``final_noise``), but zero at the last step when ``final_noise`` is off."""
        z = self.noise(like)
        return z if self.final_noise or i < len(self) - 1 else torch.zeros_like(z)

    def done(self, i: int, x: torch.Tensor) -> None:
        if self.check_finite and not bool(torch.isfinite(x).all()):
            raise ModelOutputError(f"step {i} (t={self.timesteps[i]}): the update produced NaN or Inf")
        self.step = i + 1
        self.bar.update(1)


def _one_evaluation_loop(s: _Stepper, step) -> torch.Tensor:
    """``x <- step(x, eps_fn(x, t_i), abar_i, abar_{i+1})`` along the path (the deterministic one-step rules)."""
    x = s.x
    for i in range(len(s)):
        x = step(x, s.eps(x, i), s.levels[i], s.levels[i + 1])
        s.done(i, x)
    return x


def _ddim_loop(s: _Stepper) -> torch.Tensor:
    """Exact DDIM, eta = 0 (:func:`updates.ddim_step`)."""
    return _one_evaluation_loop(s, updates.ddim_step)


def _ddim_type_loop(s: _Stepper) -> torch.Tensor:
    """The paper's DDIM-type baseline (:func:`updates.ddim_type_step`)."""
    return _one_evaluation_loop(s, updates.ddim_type_step)


def _transition_loop(s: _Stepper, transitions) -> torch.Tensor:
    """The stochastic samplers: at every step the Gaussian half-steps ``transitions(abar_i, abar_{i+1})`` of
    :mod:`.updates` (:class:`updates.Transition`), in their order, each with one standard normal draw; a half-step
    that ``evaluates`` calls ``eps_fn`` at its own input (one evaluation per step for both of the paper's
    samplers).  So the noises are drawn in the order of the half-steps: ``Z_t`` then ``Z_t^+`` for
    ``accelerated_sde`` (:func:`updates.accelerated_sde_transitions`).  Without ``final_noise`` the last step's
    noises from the evaluation on are zero (drawn all the same): ``ddpm_type``'s last step adds no noise and
    ``accelerated_sde``'s last step drops ``Z^+`` and keeps the perturbation ``Z`` before the evaluation, as both
    official codes do at ``t == 0`` (CIFAR: ``mask`` on the second noise only; ImageNet: ``nonzero_mask`` on the
    noise after the mean, the perturbation inside ``p_mean_variance`` unmasked)."""
    x = s.x
    for i in range(len(s)):
        evaluated = False
        for tr in transitions(s.levels[i], s.levels[i + 1]):
            if tr.evaluates:
                eps, evaluated = s.eps(x, i), True
            else:
                eps = None
            x = tr.rule(x, eps, s.final_step_noise(i, x) if evaluated else s.noise(x))
        s.done(i, x)
    return x


def _accelerated_ode_loop(s: _Stepper, coefficient=None) -> torch.Tensor:
    """Accelerated deterministic sampler (:func:`updates.accelerated_ode_step`), multistep: the first step is
    plain DDIM, every later step reuses the previous model output, so NFE = number of steps.  ``coefficient``:
    the correction's coefficient function (default the paper's :func:`updates.accelerated_ode_coefficient`; the
    safeguarded variants pass theirs)."""
    x, eps_next, a_next = s.x, None, None
    for i in range(len(s)):
        a_t, a_prev = s.levels[i], s.levels[i + 1]
        eps = s.eps(x, i)  # eps_t(x_t)
        x = updates.accelerated_ode_step(x, eps, a_t, a_prev, eps_next, a_next, coefficient)
        eps_next, a_next = eps, a_t  # becomes eps_{t+1}, abar_{t+1} of the next step
        s.done(i, x)
    return x


def _accelerated_ode_lambda_loop(s: _Stepper) -> torch.Tensor:
    """The accelerated ODE with ``eps`` extrapolated linearly in the half log-SNR
    (:func:`updates.accelerated_ode_lambda_coefficient`: multistep DPM-Solver-2 in eps form)."""
    return _accelerated_ode_loop(s, updates.extrapolation_coefficient("lambda"))


def _accelerated_ode_capped_loop(s: _Stepper, max_ratio: float = 2.0) -> torch.Tensor:
    """The accelerated ODE with the paper's extrapolation saturated after ``max_ratio`` times the last interval
    (:func:`updates.accelerated_ode_capped_coefficient`); ``max_ratio`` is checked before the first model call."""
    return _accelerated_ode_loop(s, updates.extrapolation_coefficient("capped", max_ratio))


def _dpm_solver_pp_2m_loop(s: _Stepper, lower_order_final: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M) loop: first step first order; the last step first order when the path ends at
    ``abar = 1`` or, with the option ``lower_order_final`` (default on), when it has fewer than 15 steps
    (diffusers' rule).  Set it with ``sample(..., options={"lower_order_final": False})``."""
    x, x0_next, a_next = s.x, None, None
    n = len(s)
    for i in range(n):
        a_t, a_prev = s.levels[i], s.levels[i + 1]
        x0 = updates.eps_to_x0(x, s.eps(x, i), a_t)
        first = x0_next is None or (i == n - 1 and lower_order_final and n < 15)
        x = updates.dpm_solver_pp_2m_step(x, x0, a_t, a_prev, None if first else x0_next, a_next)
        x0_next, a_next = x0, a_t
        s.done(i, x)
    return x


def _unipc_bh2_loop(s: _Stepper) -> torch.Tensor:
    """UniPC loop (predictor UniP-2 = DPM-Solver++(2M) step, corrector UniC), diffusers' order schedule: order
    ``min(2, evaluations so far, steps left)`` for the predictor, the corrector at step ``i`` uses the order of the
    predictor of step ``i - 1``; no corrector after the last step."""
    x, n = s.x, len(s)
    hist: list[tuple[torch.Tensor, float]] = []  # (x0, level) of the evaluations, newest last
    last_x, last_order = None, 0
    for i in range(n):
        a_t, a_prev = s.levels[i], s.levels[i + 1]
        x0 = updates.eps_to_x0(x, s.eps(x, i), a_t)
        if last_x is not None:
            older = hist[-2] if last_order == 2 else (None, None)
            x = updates.unipc_bh2_corrector_step(last_x, hist[-1][0], x0, hist[-1][1], a_t, *older)
        hist = (hist + [(x0, a_t)])[-2:]
        order = min(2, len(hist), n - i)
        last_x, last_order = x, order
        x0_next, a_next = hist[-2] if order == 2 else (None, None)
        x = updates.dpm_solver_pp_2m_step(x, x0, a_t, a_prev, x0_next, a_next)
        s.done(i, x)
    return x


# --------------------------------------------------------------------------------------------------------------
# The registry: one name per sampler, used by the code, the results files and the book's labels
# --------------------------------------------------------------------------------------------------------------
#: What a sampler is for the tables: the paper's first-order ``"baseline"``\ s, its ``"accelerated"`` samplers,
#: ``"exact"`` DDIM, the ``"peer"`` solvers of other papers, and the book's ``"safeguarded"`` variants of the
#: accelerated deterministic sampler (its correction limited where the extrapolation overshoots).
ROLES = ("baseline", "accelerated", "exact", "peer", "safeguarded")


@dataclass(frozen=True)
class SamplerSpec:
    """What the rest of the project needs to know about a sampler: everything about a sampler outside its update
    rule (:mod:`.updates`) and its loop is here.

    ``name`` is the one identifier (results keys, parameters, command line); ``label`` is how tables and figures
    show it (``short_label`` in fixed-width text tables, default ``label``); ``stochastic`` whether it draws
    noise; ``source`` where the rule comes from; ``role`` one of :data:`ROLES`; ``marker`` its matplotlib marker.

    How it runs (exactly one of the three): ``loop(stepper, **options)``, a deterministic loop on any path;
    ``transitions(abar_t, abar_prev)``, a stochastic sampler's Gaussian half-steps of one step (from
    :mod:`.updates`), run on any path by the one stochastic loop and read by the exact-law code of the
    experiments; or ``factory(betas, timesteps) -> (scheduler, set_timesteps keywords)``, diffusers' own scheduler
    (:mod:`.peers`), run by :func:`run_sampler` through :func:`sample_with_scheduler`.  ``options`` are the loop's
    keyword options with their defaults (set through ``sample(..., options=...)`` / ``run_sampler``);
    ``scheduler`` names the drop-in diffusers scheduler class of this package (or of diffusers) that implements
    the same rule (:func:`scheduler_class`), with the config keys ``scheduler_config`` that select this rule (the
    loop's ``options`` are config keys of the same names: :func:`scheduler_config`, :func:`scheduler_for`);
    ``same_rule_as`` names, for diffusers' own schedulers, the library
    sampler that computes the same rule.
    """

    name: str
    label: str
    stochastic: bool
    source: str
    role: str
    marker: str
    loop: Callable[..., torch.Tensor] | None = None
    transitions: Callable[[float, float], tuple[updates.Transition, ...]] | None = None
    factory: Callable | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    scheduler: str | None = None
    scheduler_config: Mapping[str, object] = field(default_factory=dict)
    same_rule_as: str | None = None
    short_label: str | None = None

    def __post_init__(self):
        runners = [f for f in ("loop", "transitions", "factory") if getattr(self, f) is not None]
        if len(runners) != 1:
            raise ValueError(f"sampler {self.name!r}: give exactly one of loop, transitions and factory, got {runners}")
        if self.role not in ROLES:
            raise ValueError(f"sampler {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if (self.transitions is not None) != self.stochastic and self.factory is None:
            raise ValueError(f"sampler {self.name!r}: a library sampler is stochastic exactly when it has transitions")
        if self.short_label is None:
            object.__setattr__(self, "short_label", self.label)
        if self.scheduler_config and self.scheduler is None:
            raise ValueError(f"sampler {self.name!r}: scheduler_config given without a scheduler")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "scheduler_config", MappingProxyType(dict(self.scheduler_config)))

    @property
    def runs_on_any_path(self) -> bool:
        """Whether :func:`sample` runs it (the library's samplers; diffusers' own schedulers run only through
        :func:`run_sampler` and :func:`sample_with_scheduler`)."""
        return self.factory is None

    def check_options(self, options) -> dict:
        """The loop's options: the defaults updated with ``options``; ``ValueError`` for an unknown one."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"sampler {self.name!r} has no option(s) {unknown}; its options are {dict(self.options) or 'none'}"
            )
        return {**self.options, **options}

    def run(self, stepper: _Stepper, options=None) -> torch.Tensor:
        """Run the loop on a prepared stepper (see :func:`sample`)."""
        opts = self.check_options(options)
        if self.transitions is not None:
            return _transition_loop(stepper, self.transitions)
        if self.loop is None:
            raise ValueError(
                f"{self.name!r} is diffusers' own scheduler: run it with run_sampler or "
                f"sample_with_scheduler; sample() runs {list(LIBRARY_SAMPLERS)}"
            )
        return self.loop(stepper, **opts)


SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in (
        SamplerSpec("ddim", "DDIM", False, "DDIM (Song et al.), exact eta = 0 step", "exact", "s", loop=_ddim_loop),
        SamplerSpec(
            "ddim_type",
            "DDIM-type",
            False,
            "the paper's deterministic baseline",
            "baseline",
            "o",
            loop=_ddim_type_loop,
            scheduler="DDIMTypeScheduler",
        ),
        SamplerSpec(
            "ddpm_type",
            "DDPM-type",
            True,
            "the paper's stochastic baseline",
            "baseline",
            "x",
            transitions=updates.ddpm_type_transitions,
            scheduler="DDPMTypeScheduler",
        ),
        SamplerSpec(
            "accelerated_ode",
            "accelerated ODE",
            False,
            "the paper's accelerated deterministic sampler",
            "accelerated",
            "^",
            loop=_accelerated_ode_loop,
            scheduler="AcceleratedDDIMScheduler",
            scheduler_config={"extrapolation": "alpha_bar"},
            short_label="acc. ODE",
        ),
        SamplerSpec(
            "accelerated_sde",
            "accelerated SDE",
            True,
            "the paper's accelerated stochastic sampler",
            "accelerated",
            "P",
            transitions=updates.accelerated_sde_transitions,
            scheduler="AcceleratedDDPMScheduler",
            short_label="acc. SDE",
        ),
        SamplerSpec(
            "dpm_solver_pp_2m",
            "DPM-Solver++(2M)",
            False,
            "Lu et al. 2022b, Algorithm 2 (peer)",
            "peer",
            "v",
            loop=_dpm_solver_pp_2m_loop,
            options={"lower_order_final": True},
            short_label="DPM++2M",
        ),
        SamplerSpec(
            "unipc_bh2", "UniPC-bh2", False, "Zhao et al. 2023, bh2, order 2 (peer)", "peer", "D", loop=_unipc_bh2_loop
        ),
        SamplerSpec(
            "accelerated_ode_lambda",
            "accelerated ODE, λ-extrapolated",
            False,
            "the book's safeguarded variant: eps linear in the half log-SNR (multistep DPM-Solver-2, eps form)",
            "safeguarded",
            "h",
            loop=_accelerated_ode_lambda_loop,
            scheduler="AcceleratedDDIMScheduler",
            scheduler_config={"extrapolation": "lambda"},
            short_label="acc. ODE-λ",
        ),
        SamplerSpec(
            "accelerated_ode_capped",
            "accelerated ODE, capped",
            False,
            "the book's safeguarded variant: the paper's extrapolation held beyond max_ratio times the last step",
            "safeguarded",
            "*",
            loop=_accelerated_ode_capped_loop,
            options={"max_ratio": 2.0},
            scheduler="AcceleratedDDIMScheduler",
            scheduler_config={"extrapolation": "capped"},
            short_label="acc. ODE-cap",
        ),
        SamplerSpec(
            "diffusers_dpm_solver_pp_2m",
            "DPM-Solver++(2M), diffusers",
            False,
            "diffusers' DPMSolverMultistepScheduler",
            "peer",
            "<",
            factory=peers.dpm_solver_pp_2m_for_timesteps,
            scheduler="DPMSolverMultistepScheduler",
            same_rule_as="dpm_solver_pp_2m",
        ),
        SamplerSpec(
            "diffusers_unipc_bh2",
            "UniPC-bh2, diffusers",
            False,
            "diffusers' UniPCMultistepScheduler",
            "peer",
            ">",
            factory=peers.unipc_bh2_for_timesteps,
            scheduler="UniPCMultistepScheduler",
            same_rule_as="unipc_bh2",
        ),
    )
}
#: The samplers implemented here, which run on any path (:func:`sample`).
LIBRARY_SAMPLERS = tuple(n for n, s in SAMPLERS.items() if s.runs_on_any_path)
#: The paper's four samplers and exact DDIM (the library's samplers that are neither peers nor the book's
#: safeguarded variants).
PAPER_SAMPLERS = tuple(n for n in LIBRARY_SAMPLERS if SAMPLERS[n].role not in ("peer", "safeguarded"))
STOCHASTIC = frozenset(n for n, s in SAMPLERS.items() if s.stochastic)
DETERMINISTIC = tuple(n for n in LIBRARY_SAMPLERS if n not in STOCHASTIC)


def table_order(names=None) -> tuple[str, ...]:
    """``names`` (default :data:`LIBRARY_SAMPLERS`) in the order of the book's tables and figures: the
    deterministic samplers before the stochastic ones, within each the paper's baseline first, otherwise in the
    order of :data:`SAMPLERS`; the book's safeguarded variants last (so the others keep their places, and their
    colours in the figures).  Unknown names raise."""
    names = LIBRARY_SAMPLERS if names is None else tuple(names)
    order = {n: i for i, n in enumerate(SAMPLERS)}
    return tuple(
        sorted(
            names,
            key=lambda n: (spec(n).role == "safeguarded", spec(n).stochastic, spec(n).role != "baseline", order[n]),
        )
    )


def scheduler_class(name: str) -> type | None:
    """The drop-in diffusers scheduler class of sampler ``name`` (one of :mod:`.schedulers`, or diffusers' own for
    the ``diffusers_*`` peers); ``None`` when it has none."""
    s = spec(name)
    if s.scheduler is None:
        return None
    from . import schedulers  # imported here: schedulers imports this module

    if hasattr(schedulers, s.scheduler):
        return getattr(schedulers, s.scheduler)
    import diffusers

    return getattr(diffusers, s.scheduler)


def scheduler_classes() -> dict[str, type]:
    """``{sampler name: scheduler class}`` for the samplers with a drop-in scheduler of this package
    (:mod:`.schedulers`), in registry order: the one list the scheduler tests iterate over.  A class can serve
    several samplers (``AcceleratedDDIMScheduler``: ``accelerated_ode`` and its safeguarded variants): build the
    scheduler of a sampler with :func:`scheduler_for`, or pass :func:`scheduler_config` to the class."""
    from . import schedulers

    return {
        n: getattr(schedulers, s.scheduler)
        for n, s in SAMPLERS.items()
        if s.scheduler is not None and hasattr(schedulers, s.scheduler)
    }


def scheduler_config(name: str, options=None) -> dict:
    """The config keys that make sampler ``name``'s drop-in scheduler of this package (:func:`scheduler_classes`)
    run its rule: the registry's ``scheduler_config`` (``{"extrapolation": "lambda"}`` for
    ``accelerated_ode_lambda``) and the sampler's options, its defaults updated with ``options`` (checked as by
    :func:`sample`; ``max_ratio`` of ``accelerated_ode_capped``).  ``ValueError`` for a sampler without one."""
    s = spec(name)
    if name not in scheduler_classes():
        raise ValueError(
            f"sampler {name!r} has no drop-in scheduler of this package; those that have one: {list(scheduler_classes())}"
        )
    return {**s.scheduler_config, **s.check_options(options)}


def scheduler_for(name: str, config=None, options=None, **kwargs):
    """The drop-in diffusers scheduler of sampler ``name``, ``cls.from_config(config, **kwargs,
    **scheduler_config(name, options))``: from a pipeline's scheduler config (``pipe.scheduler.config``; default
    the class's defaults) with the keys of ``kwargs`` (``clip_sample=False``, ...) changed, running that sampler's
    rule, e.g. ``pipe.scheduler = scheduler_for("accelerated_ode_lambda", pipe.scheduler.config)``.  The keys that
    choose the rule are set by the sampler and its ``options``: ``ValueError`` if ``kwargs`` gives one."""
    cfg = scheduler_config(name, options)
    clash = sorted(set(kwargs) & set(cfg))
    if clash:
        raise ValueError(
            f"{clash} are set by sampler {name!r} ({ {k: cfg[k] for k in clash} }): choose the sampler of the rule "
            f"you want, and give its options as options= (its options: {dict(spec(name).options) or 'none'})"
        )
    cls = scheduler_classes()[name]
    return cls.from_config({} if config is None else config, **kwargs, **cfg)


def label(name: str) -> str:
    """The display label of sampler ``name`` (tables, legends)."""
    return spec(name).label


def spec(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` of ``name``; a clear error for an unknown name."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {list(SAMPLERS)}") from None


def sample(
    eps_fn: EpsFn,
    x: torch.Tensor,
    alpha_bars,
    method: str,
    *,
    timesteps=None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: bool = False,
    check_finite: bool = True,
    return_nfe: bool = False,
    final_noise: bool = True,
    noise_sampler: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    options: Mapping[str, object] | None = None,
):
    r"""Run a sampler from ``x`` (the sample at level ``alpha_bars[0]``) along the path ``alpha_bars``.

    Which ``t`` the model sees: by default ``t = alpha_bars[i]``, the level itself, which is what the exact-score
    targets of :mod:`accelerated_diffusion.targets` (``target.eps(x, alpha_bar)``) take.  A trained network takes
    its integer training step instead: pass ``timesteps=`` (e.g. ``schedule.subsample(n)`` with
    ``alpha_bars=schedule.path(...)`` of the same timesteps), or call :func:`run_sampler`, which takes the schedule
    and builds both.  :func:`accelerated_diffusion.models.eps_fn` refuses a ``t`` that is not an integer timestep.

    Parameters
    ----------
    eps_fn:
        ``eps_fn(x, t) -> eps`` with the shape of ``x``; called once per step, ``t = timesteps[i]``.
    x:
        Starting point ``Y_T`` (e.g. ``torch.randn``); its dtype and device are kept.
    alpha_bars:
        The path: strictly increasing levels in (0, 1], noisiest first, output level last.
    method:
        A name of :data:`LIBRARY_SAMPLERS`: the paper's ``"ddim_type"``, ``"ddpm_type"``, ``"accelerated_ode"``,
        ``"accelerated_sde"``, exact ``"ddim"``, the peers ``"dpm_solver_pp_2m"``, ``"unipc_bh2"``, and the book's
        safeguarded ``"accelerated_ode_lambda"``, ``"accelerated_ode_capped"`` (option ``max_ratio``)
        (``ValueError`` listing the names for any other).
    timesteps:
        What to pass to ``eps_fn`` at each step (a model's integer timesteps); default ``alpha_bars[:-1]`` as
        floats (exact-score targets only, see above).
    generator:
        ``torch.Generator`` for the stochastic samplers' noise (seed it for reproducible samples), or a list of
        ``x.shape[0]`` generators, one per sample (as diffusers' ``randn_tensor``): sample ``k`` then depends only
        on ``x[k]`` and ``generator[k]``, not on the batch it is drawn in.
    progress:
        Show a tqdm progress bar.
    check_finite:
        Raise :class:`ModelOutputError` naming the step when the model output or the iterate holds NaN/Inf (one
        host synchronisation per step; switch off for speed on an accelerator).
    return_nfe:
        Also return the number of model evaluations used.
    final_noise:
        Stochastic samplers only: add noise at the last step too, as the paper's formulas do (default, used by the
        rate measurements).  ``False`` is the authors' image code: ``ddpm_type``'s last step adds no noise and
        ``accelerated_sde``'s last step drops ``Z^+`` (see :func:`_transition_loop`).
    noise_sampler:
        Instead of ``generator``: ``noise_sampler(i, like)`` returns each standard normal draw of step ``i`` (shape,
        dtype and device of ``like``), in the loop's order (:mod:`.k_samplers` passes k-diffusion's noise samplers).
    options:
        The sampler's own options (:attr:`SamplerSpec.options`, e.g. ``{"lower_order_final": False}`` for
        ``"dpm_solver_pp_2m"``); an option the sampler does not have raises ``ValueError``.

    Returns
    -------
    The sample at level ``alpha_bars[-1]``, or ``(sample, nfe)`` when ``return_nfe``.
    """
    return _run_loop(
        eps_fn,
        x,
        alpha_bars,
        method,
        timesteps=timesteps,
        generator=generator,
        progress=progress,
        check_finite=check_finite,
        return_nfe=return_nfe,
        final_noise=final_noise,
        noise_sampler=noise_sampler,
        options=options,
    )


def _run_loop(
    eps_fn,
    x,
    alpha_bars,
    method: str,
    *,
    timesteps=None,
    generator=None,
    progress=False,
    check_finite=True,
    return_nfe=False,
    final_noise=True,
    noise_sampler=None,
    options=None,
):
    s = spec(method)
    if not s.runs_on_any_path:
        raise ValueError(
            f"{method!r} is diffusers' own scheduler: run it with run_sampler or sample_with_scheduler; "
            f"sample() runs {list(LIBRARY_SAMPLERS)}"
        )
    opts = s.check_options(options)
    stepper = _Stepper(
        eps_fn,
        x,
        alpha_bars,
        timesteps,
        generator,
        progress,
        check_finite,
        desc=method,
        final_noise=final_noise,
        noise_sampler=noise_sampler,
    )
    try:
        out = s.run(stepper, opts)
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
    generator: torch.Generator | list[torch.Generator] | None = None,
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


def run_sampler(
    eps_fn: EpsFn,
    noise: torch.Tensor,
    name: str,
    schedule,
    timesteps,
    *,
    final_alpha_bar: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: bool = False,
    return_nfe: bool = False,
    final_noise: bool = False,
    options: Mapping[str, object] | None = None,
):
    r"""The one dispatch for a model with integer timesteps: run sampler ``name`` (any key of :data:`SAMPLERS`)
    from ``noise`` through the training ``schedule``'s ``timesteps`` (noisiest first; a
    :class:`~accelerated_diffusion.schedules.DiscreteSchedule` and e.g. ``schedule.subsample(nfe, spacing)``),
    ending at ``final_alpha_bar`` (1.0: clean data, as diffusers' pipelines do).  The timesteps must be integers
    in ``[0, schedule.num_train_timesteps)`` (``TypeError`` / ``ValueError`` otherwise, before any model call).

    The library's samplers run :func:`sample` on ``schedule.path(timesteps, final_alpha_bar)`` and pass the
    integer timestep to ``eps_fn``; diffusers' own peer schedulers are built by their registry ``factory`` from
    the schedule's betas and the timesteps and driven by :func:`sample_with_scheduler` (``diffusers_unipc_bh2``
    accepts no custom timesteps: it raises unless its own spacing gives exactly these). NFE = ``len(timesteps)``.
    ``final_noise`` (stochastic samplers) defaults to ``False`` here, as the authors run them for images: no noise
    on the last step (see :func:`sample`).  ``options``: the sampler's own options, as in :func:`sample`
    (diffusers' schedulers have none).
    """
    s = spec(name)
    ts = check_timesteps(timesteps, schedule.num_train_timesteps).tolist()
    path = schedule.path(torch.tensor(ts), final_alpha_bar)  # descending, no repeats: checked for every sampler
    if s.runs_on_any_path:
        return sample(
            eps_fn,
            noise,
            path,
            name,
            timesteps=ts,
            generator=generator,
            progress=progress,
            return_nfe=return_nfe,
            final_noise=final_noise,
            options=options,
        )
    s.check_options(options)
    if final_alpha_bar != 1.0:
        raise ValueError(f"{name} (diffusers' scheduler) always ends at clean data; final_alpha_bar must be 1.0")
    scheduler, set_timesteps_kwargs = s.factory(schedule.betas, ts)
    return sample_with_scheduler(
        eps_fn, noise, scheduler, **set_timesteps_kwargs, progress=progress, return_nfe=return_nfe
    )


def grid_timesteps(schedule, nfe: int, spacing: str = "leading") -> torch.Tensor:
    """The ``nfe`` training steps (noisiest first) of the ``spacing`` grid of ``schedule``
    (:meth:`~accelerated_diffusion.schedules.DiscreteSchedule.subsample`); a clear ``ValueError`` when the grid
    does not have exactly ``nfe`` entries (``uniform`` = ``range(0, N, N // nfe)`` has more when ``nfe`` does not
    divide ``N``)."""
    ts = schedule.subsample(int(nfe), spacing)
    if len(ts) != int(nfe):
        raise ValueError(
            f"the {spacing!r} grid visits {len(ts)} timesteps for nfe={nfe} (for 'uniform' the NFE must "
            f"divide {schedule.num_train_timesteps}); pick another NFE or spacing"
        )
    return ts


def run_grid(
    eps_fn: EpsFn,
    noise: torch.Tensor,
    name: str,
    schedule,
    nfe: int,
    spacing: str = "leading",
    *,
    timesteps=None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    final_noise: bool = False,
    progress: bool = False,
    batch_size: int | None = None,
    device=None,
    options: Mapping[str, object] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    r"""The one generation wrapper: sampler ``name`` from ``noise`` with ``nfe`` model evaluations on the
    ``spacing`` grid of the training ``schedule`` (:func:`grid_timesteps`; or on the given ``timesteps``, which must
    then have ``nfe`` entries), through :func:`run_sampler`, in batches of ``batch_size`` rows of ``noise``
    (default all at once) that draw one after the other from ``generator``.  Checks that every batch used exactly
    ``nfe`` evaluations (``RuntimeError``).  ``device``: where the batches are gathered (e.g. ``"cpu"``; default:
    where they were computed).  Returns ``(samples, timesteps)``."""
    spec(name)
    if timesteps is None:
        ts = grid_timesteps(schedule, nfe, spacing)
    else:
        ts = torch.as_tensor(timesteps)
        if len(ts) != int(nfe):
            raise ValueError(f"{len(ts)} timesteps given for nfe={nfe}")
    step = max(len(noise), 1) if batch_size is None else int(batch_size)
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for i in range(0, len(noise), step):
        x, used = run_sampler(
            eps_fn,
            noise[i : i + step],
            name,
            schedule,
            ts,
            generator=generator,
            progress=progress,
            return_nfe=True,
            final_noise=final_noise,
            options=options,
        )
        if used != len(ts):
            raise RuntimeError(f"{name} used {used} model evaluations on {len(ts)} timesteps")
        out.append(x if device is None else x.to(device))
    return (out[0] if len(out) == 1 else torch.cat(out)), [int(t) for t in ts]
