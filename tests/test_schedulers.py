"""The diffusers schedulers of :mod:`accelerated_diffusion.schedulers`: equivalences that pin them down, the
closed-form law on a Gaussian target, the config contract, errors, dtypes and state.

Oracles used here:
* diffusers' own ``DDIMScheduler`` (eta = 0; ``use_clipped_model_output=True`` when clipping) for the accelerated
  DDIM scheduler with the correction switched off;
* the core loop :func:`accelerated_diffusion.sample` on the path built by ``schedules.sampling_path`` from the
  scheduler's public ``alphas_cumprod`` and ``timesteps`` (same noise, drawn in the same order);
* on a diagonal Gaussian target: the independent oracles of ``tests/oracles.py``, which write the paper's update
  rules in score form (as the paper states them), compose them as affine maps and propagate the Gaussian law
  exactly.
"""

import math
import tempfile

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import accelerated_diffusion as ad
import oracles
from accelerated_diffusion import metrics, schedules
from accelerated_diffusion.experiments.paths import data_dir
from accelerated_diffusion.schedulers import (
    AcceleratedDDIMScheduler,
    AcceleratedDDPMScheduler,
    DDIMTypeScheduler,
    DDPMTypeScheduler,
)

SCHEDULERS = ad.samplers.scheduler_classes()  # {sampler name: drop-in scheduler class}, from the registry
CONFIG = {n: ad.samplers.scheduler_config(n) for n in SCHEDULERS}  # the config keys that choose each sampler's rule
CLASSES = list(dict.fromkeys(SCHEDULERS.values()))  # each class once
STOCHASTIC = {n for n in SCHEDULERS if ad.samplers.spec(n).stochastic}
# the paper's formulas: noise at the last step too (the core sample() default; the schedulers' is False)
PAPER = {n: {"final_noise": True} if n in STOCHASTIC else {} for n in SCHEDULERS}
CHURCH = data_dir() / "reference" / "ddpm-church-256.scheduler_config.json"  # the google/ddpm-church-256 config

# A diagonal Gaussian target N(MEAN, diag(VAR)) in 3 coordinates: exact eps in closed form.
MEAN = torch.tensor([0.5, -0.3, 0.0], dtype=torch.float64)
VAR = torch.tensor([0.09, 0.25, 1.5], dtype=torch.float64)
TARGET = ad.Gaussian(MEAN, torch.diag(VAR))


def toy_model(alphas_cumprod):
    """A smooth stand-in for a network: the target's exact eps plus a small nonlinearity (O(1) values)."""

    def model(x, t):
        a = float(alphas_cumprod[int(t)])
        c = a * 0.3 + (1 - a)
        return (math.sqrt(1 - a) * (x - math.sqrt(a) * 0.2) / c + 0.05 * torch.tanh(3 * x)).to(x.dtype)

    return model


def run(scheduler, model, x, generator=None, n=None, timesteps=None, **step_kwargs):
    """The pipeline loop (no init_noise_sigma scaling: ``x`` is the start itself); returns final, x0s, NFE."""
    if timesteps is None:
        scheduler.set_timesteps(n)
    else:
        scheduler.set_timesteps(timesteps=timesteps)
    x0s, nfe = [], 0
    for t in scheduler.timesteps:
        out = model(x, t)
        nfe += 1
        res = scheduler.step(out, t, x, generator=generator, **step_kwargs)
        x = res.prev_sample
        x0s.append(res.pred_original_sample)
    return x, x0s, nfe


def make(method, **kwargs):
    """The drop-in scheduler of sampler ``method`` with the config ``kwargs``."""
    return SCHEDULERS[method](**kwargs, **CONFIG[method])


def _start(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------------------------------
# 1. Accelerated DDIM with the correction off == diffusers' DDIMScheduler (eta = 0)
# --------------------------------------------------------------------------------------------------------------
DDIM_CASES = [
    dict(clip_sample=False),
    dict(clip_sample=False, timestep_spacing="trailing"),
    dict(clip_sample=False, steps_offset=1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(clip_sample=False, prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2"),
    dict(clip_sample=False, prediction_type="sample"),
    dict(clip_sample=False, set_alpha_to_one=False),
    dict(clip_sample=True, clip_sample_range=0.8),
    dict(thresholding=True, sample_max_value=1.5, dynamic_thresholding_ratio=0.9),
]


@pytest.mark.parametrize("cfg", DDIM_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_no_correction_equals_diffusers_ddim(cfg):
    ref = DDIMScheduler(**cfg)
    ours = AcceleratedDDIMScheduler.from_config(ref.config, use_correction=False)
    model = toy_model(ref.alphas_cumprod)
    x = _start((2, 3, 4, 4), 0) * 1.3
    clipped = cfg.get("clip_sample", True) or cfg.get("thresholding", False)
    y_ref, x0_ref, _ = run(ref, model, x, n=10, eta=0.0, use_clipped_model_output=clipped)
    y, x0, nfe = run(ours, model, x, n=10)
    assert nfe == len(ours.timesteps) == 10
    assert torch.equal(ours.timesteps, ref.timesteps)
    torch.testing.assert_close(y, y_ref, rtol=2e-5, atol=2e-5)
    for a, b in zip(x0, x0_ref):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    # The correction is not a no-op: switching it on moves the sample far beyond the tolerance.
    y_acc, _, _ = run(AcceleratedDDIMScheduler.from_config(ref.config), model, x, n=10)
    assert (y_acc - y_ref).abs().max() > 1e-3


def test_linspace_steps_to_the_next_listed_timestep_unlike_diffusers_ddim():
    """diffusers' DDIM steps to t - N // S; with linspace spacing that is not the next timestep (documented)."""
    ours = AcceleratedDDIMScheduler(timestep_spacing="linspace", use_correction=False, clip_sample=False)
    ref = DDIMScheduler(timestep_spacing="linspace", clip_sample=False)
    model = toy_model(ref.alphas_cumprod)
    x = _start((2, 3, 4, 4), 1)
    y_ref, _, _ = run(ref, model, x, n=10)
    y, _, _ = run(ours, model, x, n=10)
    assert ours.timesteps.tolist()[:2] == [999, 888] and ref.timesteps.tolist()[:2] == [999, 888]
    assert (y - y_ref).abs().max() > 1e-3
    # ...and ours is the core sampler on the path through the listed timesteps:
    path = schedules.sampling_path(ours.alphas_cumprod, ours.timesteps, 1.0)
    core = ad.sample(model, x, path, "ddim", timesteps=ours.timesteps.tolist())
    torch.testing.assert_close(y, core, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 2. The schedulers == the core sample() for the same noise and path
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(SCHEDULERS))
@pytest.mark.parametrize(
    "spacing,n,alpha_to_one",
    [("leading", 10, True), ("linspace", 7, False), ("trailing", 4, True), ("logsnr", 8, True)],
)
def test_equals_core_sample(method, spacing, n, alpha_to_one):
    s = make(method, clip_sample=False, timestep_spacing=spacing, set_alpha_to_one=alpha_to_one, **PAPER[method])
    s.set_timesteps(n)
    ts = s.timesteps.tolist()
    if alpha_to_one:
        path = schedules.sampling_path(s.alphas_cumprod, s.timesteps, 1.0)
    else:  # output level abar[0] = the last visited level: the scheduler's last step is the identity
        assert ts[-1] == 0
        path, ts = schedules.sampling_path(s.alphas_cumprod, s.timesteps, None), ts[:-1]
    model = toy_model(s.alphas_cumprod)
    y_T = _start((3, 2, 4, 4), 2, torch.float64)
    core = ad.sample(model, y_T, path, method, timesteps=ts, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    start = y_T
    if method == "accelerated_sde":  # Y_T^+ = Y_T + sqrt((1 - alpha_T)/2) Z_T, Z_T the core's first draw
        alpha_T = float(path[0] / path[1])
        start = y_T + math.sqrt((1 - alpha_T) / 2) * torch.randn(y_T.shape, generator=gen, dtype=y_T.dtype)
    y, _, _ = run(s, model, start, generator=gen, n=n)
    torch.testing.assert_close(y, core, rtol=1e-12, atol=1e-12)


def test_float32_matches_core_sample_too():
    s = AcceleratedDDPMScheduler(clip_sample=False, final_noise=True)
    s.set_timesteps(6)
    path = schedules.sampling_path(s.alphas_cumprod, s.timesteps, 1.0)
    model = toy_model(s.alphas_cumprod)
    y_T = _start((2, 1, 4, 4), 3)
    core = ad.sample(
        model, y_T, path, "accelerated_sde", timesteps=s.timesteps.tolist(), generator=torch.Generator().manual_seed(1)
    )
    gen = torch.Generator().manual_seed(1)
    start = y_T + ad.updates.accelerated_sde_noise_scale(path[0], path[1]) * torch.randn(y_T.shape, generator=gen)
    y, _, _ = run(s, model, start, generator=gen, n=6)
    torch.testing.assert_close(y, core, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 3. Gaussian target with exact eps: the closed-form output law (independent oracle)
# --------------------------------------------------------------------------------------------------------------
def _target_model(s):
    return lambda x, t: TARGET.eps(x, float(s.alphas_cumprod[int(t)]))


@pytest.mark.parametrize("method", ["accelerated_ode", "ddim_type"])
def test_gaussian_deterministic_law_is_closed_form(method):
    s = make(method, clip_sample=False)
    s.set_timesteps(8)
    levels = [float(a) for a in schedules.sampling_path(s.alphas_cumprod, s.timesteps, 1.0)]
    A, b = metrics.affine_map(lambda x: run(s, _target_model(s), x, n=8)[0], 3)
    K, b_or = (torch.from_numpy(v) for v in oracles.deterministic_affine(method, levels, MEAN, torch.diag(VAR)))
    torch.testing.assert_close(A, K, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b, b_or, rtol=1e-10, atol=1e-12)
    # the output law N(b, A A^T) from Y_T ~ N(0, I) (init_noise_sigma = 1) is that of the oracle
    assert s.init_noise_sigma == 1.0
    assert metrics.gaussian_kl(b, A @ A.T, b_or, K @ K.T) < 1e-12


@pytest.mark.parametrize("method", ["accelerated_sde", "ddpm_type"])
def test_gaussian_stochastic_law_is_closed_form(method):
    n = 100_000
    s = make(method, clip_sample=False, final_noise=True)  # the oracle adds noise at every step
    s.set_timesteps(8)
    levels = [float(a) for a in schedules.sampling_path(s.alphas_cumprod, s.timesteps, 1.0)]
    m_or, S_or = (torch.from_numpy(v) for v in oracles.stochastic_law(method, levels, MEAN, torch.diag(VAR)))
    v_or = torch.diagonal(S_or)
    start_var = 1 + (1 - levels[0] / levels[1]) / 2 if method == "accelerated_sde" else 1.0
    assert s.init_noise_sigma**2 == pytest.approx(start_var, rel=1e-12)
    gen = torch.Generator().manual_seed(11)
    noise = torch.randn(n, 3, dtype=torch.float64, generator=gen)
    x = ad.sample_with_scheduler(_target_model(s), noise, s, 8, generator=gen)  # starts at noise * init_noise_sigma
    mean, var = x.mean(0), x.var(0)
    se_m, se_v = (v_or / n).sqrt(), v_or * math.sqrt(2 / (n - 1))
    assert bool(((mean - m_or).abs() < 5 * se_m).all()), (mean, m_or)
    assert bool(((var - v_or).abs() < 5 * se_v).all()), (var, v_or)


# --------------------------------------------------------------------------------------------------------------
# 4. Timesteps, config and state
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n,offset", [(5, 0), (10, 1), (1, 0), (1000, 0)])
def test_timesteps_equal_diffusers(spacing, n, offset):
    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(n)
    for cls in CLASSES:
        s = cls.from_config(ref.config)
        s.set_timesteps(n)
        assert torch.equal(s.timesteps, ref.timesteps)
        assert s.num_inference_steps == len(s.timesteps) == n


def test_custom_timesteps_and_nfe():
    s = AcceleratedDDIMScheduler(clip_sample=False)
    model = toy_model(s.alphas_cumprod)
    y, _, nfe = run(s, model, _start((1, 1, 4, 4), 0), timesteps=[999, 500, 250, 50])
    assert nfe == 4 and s.timesteps.tolist() == [999, 500, 250, 50] and s.num_inference_steps == 4
    # the same as the core sampler on that path
    path = schedules.sampling_path(s.alphas_cumprod, torch.tensor([999, 500, 250, 50]), 1.0)
    core = ad.sample(model, _start((1, 1, 4, 4), 0), path, "accelerated_ode", timesteps=[999, 500, 250, 50])
    torch.testing.assert_close(y, core, rtol=1e-6, atol=1e-6)


def test_from_church_config():
    """The google/ddpm-church-256 scheduler config (DDPMScheduler, clip_sample true) loads into every scheduler."""
    cfg = DDPMScheduler.from_config(DDPMScheduler.load_config(CHURCH)).config
    for cls in CLASSES:
        s = cls.from_config(cfg)
        assert s.config.clip_sample is True and s.config.num_train_timesteps == 1000
        assert s.config.beta_schedule == "linear" and s.config.prediction_type == "epsilon"
        torch.testing.assert_close(s.alphas_cumprod, DDPMScheduler.from_config(cfg).alphas_cumprod, rtol=0, atol=0)
        assert cls.from_config(cfg, clip_sample=False).config.clip_sample is False


def test_init_noise_sigma_is_law_of_Y_T_plus():
    s = AcceleratedDDPMScheduler()
    for n in (1, 5, 10, 50):
        s.set_timesteps(n)
        t0 = int(s.timesteps[0])
        a_next = float(s.alphas_cumprod[int(s.timesteps[1])]) if n > 1 else 1.0
        alpha_T = float(s.alphas_cumprod[t0]) / a_next
        assert s.init_noise_sigma == pytest.approx(math.sqrt(1 + (1 - alpha_T) / 2), rel=1e-12)
    for cls in (AcceleratedDDIMScheduler, DDIMTypeScheduler, DDPMTypeScheduler):
        s = cls()
        s.set_timesteps(5)
        assert s.init_noise_sigma == 1.0


def test_set_alpha_to_one_false_ends_with_identity_step():
    s = AcceleratedDDIMScheduler(set_alpha_to_one=False, clip_sample=False)
    s.set_timesteps(5)
    assert s.timesteps.tolist()[-1] == 0
    model = toy_model(s.alphas_cumprod)
    x = _start((1, 1, 4, 4), 0)
    for t in s.timesteps[:-1]:
        x = s.step(model(x, t), t, x).prev_sample
    last = s.step(model(x, s.timesteps[-1]), s.timesteps[-1], x).prev_sample
    assert torch.equal(last, x)


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_state_does_not_leak_between_runs(method):
    s = make(method, clip_sample=False)
    model, x = toy_model(s.alphas_cumprod), _start((2, 1, 4, 4), 4)
    first, _, _ = run(s, model, x, torch.Generator().manual_seed(0), n=6)
    run(s, model, x * 3, torch.Generator().manual_seed(9), n=9)  # a different run in between
    again, _, _ = run(s, model, x, torch.Generator().manual_seed(0), n=6)
    assert torch.equal(first, again)
    # after the last step of a run the next run starts at the first timestep, without set_timesteps
    y, gen = x, torch.Generator().manual_seed(0)
    for t in s.timesteps:
        y = s.step(model(y, t), t, y, generator=gen).prev_sample
    assert torch.equal(y, first)
    # an aborted run is not restarted silently: the counter expects the next position
    t0 = s.timesteps[0]
    s.step(model(y, t0), t0, y * 2, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match=r"called at timestep .* \(position 0\) where the run is at position 1"):
        s.step(model(y, t0), t0, y)


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_only_stochastic_schedulers_use_the_generator(method):
    s = make(method, clip_sample=False)
    model, x = toy_model(s.alphas_cumprod), _start((2, 1, 4, 4), 4)
    a, _, _ = run(s, model, x, torch.Generator().manual_seed(0), n=5)
    b, _, _ = run(s, model, x, torch.Generator().manual_seed(1), n=5)
    assert torch.equal(a, b) == (method not in STOCHASTIC)


# --------------------------------------------------------------------------------------------------------------
# 5. Errors, dtypes, non-finite values
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_bad_input_raises_clearly(cls):
    s = cls()
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 999, x)
    for bad in (0, -3, 1001):
        with pytest.raises(ValueError, match="num_inference_steps"):
            s.set_timesteps(bad)
    with pytest.raises(TypeError, match="int"):
        s.set_timesteps(2.5)
    with pytest.raises(ValueError, match="exactly one"):
        s.set_timesteps()
    with pytest.raises(ValueError, match="strictly decreasing"):
        s.set_timesteps(timesteps=[10, 500])
    with pytest.raises(ValueError, match=r"\[0, num_train_timesteps"):
        s.set_timesteps(timesteps=[1000, 5])
    with pytest.raises(ValueError, match="prediction_type"):
        cls(prediction_type="noise")
    with pytest.raises(ValueError, match="timestep_spacing"):
        cls(timestep_spacing="uniformly")
    with pytest.raises(ValueError, match="beta_schedule"):
        cls(beta_schedule="cosine")
    with pytest.raises(ValueError, match="trained_betas"):
        cls(num_train_timesteps=10, trained_betas=[0.1] * 9)
    with pytest.raises(NotImplementedError, match="rescale_betas_zero_snr"):
        cls(rescale_betas_zero_snr=True)
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="begin_index"):
        s.set_begin_index(5)
    with pytest.raises(ValueError, match="not in the schedule"):
        s.step(x, 999, x)
    with pytest.raises(ValueError, match="shape"):
        s.step(torch.zeros(1, 2, 4, 4), s.timesteps[0], x)


def test_out_of_order_steps_raise():
    for cls in CLASSES:
        s = cls()
        s.set_timesteps(5)
        x = torch.zeros(1, 1, 4, 4)
        s.step(x, s.timesteps[0], x)
        with pytest.raises(ValueError, match="in order"):
            s.step(x, s.timesteps[2], x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_low_precision_returns_its_dtype_computed_in_float32(method, dtype):
    s = make(method, clip_sample=False)
    model = toy_model(s.alphas_cumprod)
    x = _start((2, 1, 4, 4), 6)
    y32, _, _ = run(s, model, x, torch.Generator().manual_seed(0), n=5)
    s.set_timesteps(5)
    y, gen = x.to(dtype), torch.Generator().manual_seed(0)
    for t in s.timesteps:
        out = s.step(model(y, t).to(dtype), t, y, generator=gen)
        assert out.prev_sample.dtype == dtype and out.pred_original_sample.dtype == dtype
        y = out.prev_sample
    # float32 inside: the only errors are the roundings of inputs and outputs to the low precision
    tol = 0.05 if dtype == torch.float16 else 0.3
    assert (y.float() - y32).abs().max() < tol * max(1.0, float(y32.abs().max()))


def test_nan_in_model_output_raises_naming_the_step():
    for cls in CLASSES:
        s = cls()
        s.set_timesteps(4)
        x = torch.zeros(1, 1, 2, 2)
        bad = torch.full_like(x, float("nan"))
        with pytest.raises(ad.ModelOutputError, match="timestep 750"):
            s.step(bad, s.timesteps[0], x)


def test_nan_in_accelerated_correction_raises_not_skipped(monkeypatch):
    """The official code prints and skips a NaN correction; here it raises (unless check_finite=False)."""
    s = AcceleratedDDIMScheduler(clip_sample=False)
    model = toy_model(s.alphas_cumprod)
    x = _start((1, 1, 2, 2), 0)
    monkeypatch.setattr(ad.updates, "accelerated_ode_coefficient", lambda *a: float("nan"))
    s.set_timesteps(4)
    x = s.step(model(x, s.timesteps[0]), s.timesteps[0], x).prev_sample  # first step: plain DDIM, no correction
    with pytest.raises(ad.ModelOutputError, match="position 1"):
        s.step(model(x, s.timesteps[1]), s.timesteps[1], x)
    quiet = AcceleratedDDIMScheduler(clip_sample=False, check_finite=False)
    y, _, _ = run(quiet, model, _start((1, 1, 2, 2), 0), n=4)
    assert bool(torch.isnan(y).all())


def test_fp16_overflow_is_reported():
    s = DDIMTypeScheduler(clip_sample=False)
    s.set_timesteps(2)
    x = torch.full((1, 1, 2, 2), 6e4, dtype=torch.float16)
    with pytest.raises(ad.ModelOutputError):
        s.step(-x, s.timesteps[0], x)


def test_prediction_types_agree_on_the_same_model():
    """eps, v and x0 outputs of one underlying eps model give the same samples (conversion formulas)."""
    base = AcceleratedDDPMScheduler(clip_sample=False)
    model = toy_model(base.alphas_cumprod)
    abar = base.alphas_cumprod.double()

    def as_v(x, t):
        a = float(abar[int(t)])
        eps = model(x, t)
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        return math.sqrt(a) * eps - math.sqrt(1 - a) * x0

    def as_x0(x, t):
        a = float(abar[int(t)])
        return (x - math.sqrt(1 - a) * model(x, t)) / math.sqrt(a)

    x = _start((2, 1, 4, 4), 8, torch.float64)
    ref, _, _ = run(base, model, x, torch.Generator().manual_seed(0), n=6)
    for ptype, fn in (("v_prediction", as_v), ("sample", as_x0)):
        s = AcceleratedDDPMScheduler(clip_sample=False, prediction_type=ptype)
        y, _, _ = run(s, fn, x, torch.Generator().manual_seed(0), n=6)
        torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_no_host_device_synchronisation_per_step(method):
    """Reading a meta tensor's data raises, so a whole run on the meta device shows that ``step`` never reads a
    device value on the host (no per-step synchronisation on an accelerator): none at all with host timesteps and
    ``check_finite=False``; with device timesteps the timestep and finite-check flags are read once, at the last
    step."""
    s = make(method, check_finite=False, thresholding=True)
    s.set_timesteps(5)
    x = torch.empty(2, 3, 4, 4, device="meta")
    for t in s.timesteps.tolist():
        x = s.step(torch.empty_like(x), t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert x.device.type == "meta" and x.shape == (2, 3, 4, 4)
    s = make(method)
    s.set_timesteps(5, device="meta")
    x = torch.empty(2, 3, 4, 4, device="meta")
    for t in s.timesteps[:-1]:
        x = s.step(torch.empty_like(x), t, x).prev_sample
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        s.step(torch.empty_like(x), s.timesteps[-1], x)


# --------------------------------------------------------------------------------------------------------------
# 6. The timestep is honoured the same way on every device
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_aborted_run_then_fresh_run_on_the_meta_device(method):
    """On an accelerator the position comes from the step counter, never from a device value: after a run aborted
    at its second step and ``set_timesteps``, a fresh run starts at position 0 and its last step is the one that
    reads the flags (reading a meta tensor raises, so that read shows where the run ends); without
    ``set_timesteps`` the run goes on from position 2 and reads them two steps earlier."""
    s = make(method)
    s.set_timesteps(5, device="meta")
    x = torch.empty(2, 3, 4, 4, device="meta")
    for t in s.timesteps[:2]:  # aborted run
        x = s.step(torch.empty_like(x), t, x).prev_sample
    s.set_timesteps(5, device="meta")
    for t in s.timesteps[:-1]:  # fresh run: four steps without any host read
        x = s.step(torch.empty_like(x), t, x).prev_sample
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        s.step(torch.empty_like(x), s.timesteps[-1], x)
    s.set_timesteps(5, device="meta")
    for t in s.timesteps[:2]:  # aborted run, then a restart without set_timesteps: positions 2, 3, 4
        x = s.step(torch.empty_like(x), t, x).prev_sample
    for t in s.timesteps[:2]:
        x = s.step(torch.empty_like(x), t, x).prev_sample
    assert s.step_index == 4
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        s.step(torch.empty_like(x), s.timesteps[2], x)


@pytest.fixture
def as_on_an_accelerator(monkeypatch):
    """CPU tensors take the path of accelerator tensors (their values are treated as unreadable)."""
    from accelerated_diffusion import schedulers

    monkeypatch.setattr(schedulers, "_host_readable", lambda t: False)


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
@pytest.mark.parametrize("device", ["host", "accelerator"])
def test_aborted_run_then_fresh_run(method, device, monkeypatch):
    """The same on every device: after an aborted run, ``set_timesteps`` starts a fresh run that gives the right
    result; a restart without it is refused (at once on the host, at the run's last step on an accelerator)."""
    if device == "accelerator":  # CPU tensors take the path of accelerator tensors
        from accelerated_diffusion import schedulers

        monkeypatch.setattr(schedulers, "_host_readable", lambda t: False)
    s = make(method, clip_sample=False)
    model, x = toy_model(s.alphas_cumprod), _start((2, 1, 4, 4), 4)
    ref, _, _ = run(s, model, x, torch.Generator().manual_seed(0), n=6)

    def aborted_then_full():
        y = x
        for t in s.timesteps[:3]:  # aborted run
            y = s.step(model(y, t), t, y, generator=torch.Generator().manual_seed(3)).prev_sample
        s.set_timesteps(6)
        y, gen = x, torch.Generator().manual_seed(0)
        for t in s.timesteps:
            y = s.step(model(y, t), t, y, generator=gen).prev_sample
        return y

    s.set_timesteps(6)
    torch.testing.assert_close(aborted_then_full(), ref, rtol=0, atol=0)
    for t in s.timesteps[:3]:
        s.step(model(x, t), t, x)
    with pytest.raises(ValueError, match="position 3"):
        for t in s.timesteps:
            s.step(model(x, t), t, x)


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_device_copies_of_timesteps_are_verified(method, as_on_an_accelerator):
    """A copy of a timestep (not an element of ``scheduler.timesteps``) is taken to follow the previous step and
    compared on the device: right in a run started by set_timesteps, a clear error after an aborted run."""
    s = make(method, clip_sample=False)
    model, x = toy_model(s.alphas_cumprod), _start((2, 1, 4, 4), 4)
    ref, _, _ = run(s, model, x, torch.Generator().manual_seed(0), n=6)
    s.set_timesteps(6)
    y, gen = x, torch.Generator().manual_seed(0)
    for t in s.timesteps:
        y = s.step(model(y, t), t.clone(), y, generator=gen).prev_sample
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    s.set_timesteps(6)
    for t in s.timesteps[:3]:  # aborted run
        s.step(model(x, t), t.clone(), x)
    with pytest.raises(ValueError, match=rf"other than {int(s.timesteps[3])} at position 3"):
        for t in s.timesteps:
            s.step(model(x, t), t.clone(), x)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_timesteps_and_model_outputs_of_the_wrong_type_are_refused(cls):
    s = cls(clip_sample=False)
    s.set_timesteps(10)  # 900, 800, ...
    x = torch.zeros(1, 1, 2, 2)
    for t in (900.7, 900.0, torch.tensor(900.7), torch.tensor(900.0), True, "900"):
        with pytest.raises(TypeError, match="timestep must be an integer"):
            s.step(x, t, x)
    for dtype in (torch.int64, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match=rf"model_output must be a real floating-point tensor, got dtype {dtype}"):
            s.step(torch.zeros(x.shape, dtype=dtype), 900, x)
    with pytest.raises(TypeError, match="sample must be a real floating-point tensor"):
        s.step(x, 900, torch.zeros(x.shape, dtype=torch.int64))
    for t in (torch.tensor([900.7]), [900.7], torch.tensor([True])):
        with pytest.raises(TypeError, match="integers"):
            s.add_noise(x, x, t)
    with pytest.raises(TypeError, match="integers"):
        s.set_timesteps(timesteps=[900.7, 500.0])
    s.step(x, 900, x)  # integers pass


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_ddim_pipeline_keywords(cls):
    """``eta`` and ``use_clipped_model_output``, which DDIMPipeline passes, are accepted where they mean what the
    scheduler does, and refused otherwise."""
    model, x = toy_model(cls().alphas_cumprod), _start((1, 1, 4, 4), 0)
    for clip in (True, False):
        s = cls(clip_sample=clip)
        ref, _, _ = run(s, model, x, torch.Generator().manual_seed(0), n=4)
        for kw in (dict(eta=0.0), dict(eta=0.0, use_clipped_model_output=None), dict(use_clipped_model_output=True)):
            y, _, _ = run(s, model, x, torch.Generator().manual_seed(0), n=4, **kw)
            torch.testing.assert_close(y, ref, rtol=0, atol=0)
        s.set_timesteps(4)
        with pytest.raises(ValueError, match="eta=0.5"):
            s.step(x, s.timesteps[0], x, eta=0.5)
        if clip:
            with pytest.raises(ValueError, match="use_clipped_model_output"):
                s.step(x, s.timesteps[0], x, use_clipped_model_output=False)
        else:
            s.step(x, s.timesteps[0], x, use_clipped_model_output=False)


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_a_run_from_begin_index(method):
    """img2img pipelines start at ``begin_index``: a run starts there (afresh: the accelerated ODE's first step is
    plain DDIM), and so does the next run after its last step; the counter follows."""
    s = make(method, clip_sample=False)
    model, x = toy_model(s.alphas_cumprod), _start((2, 1, 4, 4), 4)

    def from_position_2(steps):
        y, gen = x, torch.Generator().manual_seed(0)
        for t in s.timesteps[2 : 2 + steps]:
            y = s.step(model(y, t), t, y, generator=gen).prev_sample
        return y

    s.set_timesteps(6)
    s.set_begin_index(2)
    assert (s.begin_index, s.step_index) == (2, None)
    ref = from_position_2(4)
    assert s.step_index == 6
    torch.testing.assert_close(from_position_2(4), ref, rtol=0, atol=0)  # the next run starts at 2 again
    from_position_2(2)  # aborted
    with pytest.raises(ValueError, match="in order"):
        from_position_2(4)
    s.set_timesteps(6)
    s.set_begin_index(2)
    torch.testing.assert_close(from_position_2(4), ref, rtol=0, atol=0)
    # the same as the core sampler on the path from position 2
    path = schedules.sampling_path(s.alphas_cumprod, s.timesteps[2:], 1.0)
    if method in STOCHASTIC:
        return
    core = ad.sample(model, x, path, method, timesteps=s.timesteps[2:].tolist())
    torch.testing.assert_close(ref, core, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 7. Strict configuration: unknown keywords, foreign configs, Karras sigmas, logsnr, the last step's noise
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_unknown_keywords_raise(method):
    cls = SCHEDULERS[method]
    with pytest.raises(TypeError, match="beta_strat"):
        cls(beta_strat=0.5)
    if method in STOCHASTIC:
        assert cls().config.final_noise is False and cls(final_noise=True).config.final_noise is True
    else:
        with pytest.raises(TypeError, match="final_noise"):
            cls(final_noise=True)


def _vp_sources():
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler

    return [
        DDPMScheduler,
        DDIMScheduler,
        PNDMScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
        EulerDiscreteScheduler,
    ]


@pytest.mark.parametrize("source", _vp_sources(), ids=lambda c: c.__name__)
def test_from_config_of_variance_preserving_schedulers(source):
    """The configs of diffusers' DDPM, DDIM, PNDM, DPM-Solver, UniPC and Euler schedulers load (their solvers'
    own keys dropped), with the same training levels."""
    ref = source(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    for cls in CLASSES:
        s = cls.from_config(ref.config)
        assert s.config.prediction_type == "v_prediction" and s.config.use_karras_sigmas is False
        torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)
        s.set_timesteps(5)
        assert len(s.timesteps) == 5


REFUSED = [
    ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0), "flow matching"),  # Stable Diffusion 3
    (
        "FlowMatchEulerDiscreteScheduler",
        dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        "flow",
    ),  # Flux
    ("FlowMatchEulerDiscreteScheduler", {}, "flow matching"),
    ("EDMEulerScheduler", {}, "sigma space"),
    ("DPMSolverMultistepScheduler", dict(use_exponential_sigmas=True), "use_exponential_sigmas"),
    ("DPMSolverMultistepScheduler", dict(use_beta_sigmas=True), "use_beta_sigmas"),
    ("DPMSolverMultistepScheduler", dict(use_lu_lambdas=True), "use_lu_lambdas"),
    (
        "DPMSolverMultistepScheduler",
        dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
        "flow",
    ),
    ("EulerDiscreteScheduler", dict(timestep_type="continuous", prediction_type="v_prediction"), "timestep_type"),
    ("EulerDiscreteScheduler", dict(use_karras_sigmas=True, sigma_min=0.1), "sigma_min"),
]


@pytest.mark.parametrize("source,kwargs,match", REFUSED, ids=[f"{s}-{','.join(k)}" for s, k, _ in REFUSED])
def test_from_config_refuses_what_it_cannot_run(source, kwargs, match):
    import diffusers

    if source == "DPMSolverMultistepScheduler" and kwargs.get("use_beta_sigmas"):
        pytest.importorskip("scipy")
    source_scheduler = getattr(diffusers, source)(**kwargs)
    with tempfile.TemporaryDirectory() as folder:  # as loaded from the hub: with its _class_name
        source_scheduler.save_config(folder)
        loaded = type(source_scheduler).load_config(folder)
    for cfg in (source_scheduler.config, loaded):
        for cls in CLASSES:
            with pytest.raises(ValueError, match=match):
                cls.from_config(cfg)
    with pytest.raises(ValueError, match="shift=3.0"):  # a refused value given as a keyword
        AcceleratedDDIMScheduler.from_config(DDPMScheduler().config, shift=3.0)


def test_every_config_key_of_a_compatible_scheduler_is_classified():
    """Each config key of diffusers' compatible schedulers (and of the flow-matching one) is ours, dropped as
    harmless (IGNORED_CONFIG_KEYS) or refused unless off (REFUSED_CONFIG): none is dropped unexamined."""
    import inspect

    import diffusers
    from accelerated_diffusion import schedulers

    ours = set().union(*(inspect.signature(c.__init__).parameters for c in CLASSES))
    known = ours | schedulers.IGNORED_CONFIG_KEYS | set(schedulers.REFUSED_CONFIG) | set(schedulers.OTHER_PROCESS_KEYS)
    known.add("self")
    classes = [c for c in AcceleratedDDIMScheduler().compatibles if c.__name__ in dir(diffusers)]
    classes.append(diffusers.FlowMatchEulerDiscreteScheduler)
    for c in classes:
        unknown = set(inspect.signature(c.__init__).parameters) - known
        assert not unknown, (c.__name__, unknown)


KARRAS = [
    dict(),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
]


@pytest.mark.parametrize("n", [5, 10, 25])
@pytest.mark.parametrize("cfg", KARRAS, ids=["linear", "scaled_linear", "cosine"])
def test_karras_timesteps_equal_dpm_solver(cfg, n):
    from diffusers import DPMSolverMultistepScheduler

    ref = DPMSolverMultistepScheduler(use_karras_sigmas=True, **cfg)
    ref.set_timesteps(n)
    for cls in CLASSES:
        s = cls.from_config(ref.config)
        assert s.config.use_karras_sigmas is True
        if len(set(ref.timesteps.tolist())) < n:  # repeated timesteps (cosine: its capped last betas)
            with pytest.raises(ValueError, match="same training timestep"):
                s.set_timesteps(n)
            continue
        s.set_timesteps(n)
        assert torch.equal(s.timesteps, ref.timesteps), (s.timesteps, ref.timesteps)
        s.set_timesteps(sigmas=ref.sigmas.tolist())  # k-diffusion style: the Karras sigmas and a final 0
        assert torch.equal(s.timesteps, ref.timesteps)


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_karras_sigmas_run_end_to_end(method):
    s = make(method, clip_sample=False, use_karras_sigmas=True, **PAPER[method])
    s.set_timesteps(6)
    path = schedules.sampling_path(s.alphas_cumprod, s.timesteps, 1.0)
    model = toy_model(s.alphas_cumprod)
    y_T = _start((2, 1, 4, 4), 2, torch.float64)
    core = ad.sample(
        model, y_T, path, method, timesteps=s.timesteps.tolist(), generator=torch.Generator().manual_seed(5)
    )
    gen = torch.Generator().manual_seed(5)
    start = y_T
    if method == "accelerated_sde":
        start = y_T + ad.updates.accelerated_sde_noise_scale(path[0], path[1]) * torch.randn(
            y_T.shape, generator=gen, dtype=y_T.dtype
        )
    y, _, _ = run(s, model, start, generator=gen, n=6)
    torch.testing.assert_close(y, core, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        s.set_timesteps(timesteps=[999, 500])
    with pytest.raises(ValueError, match="same training timestep"):
        s.set_timesteps(sigmas=[80.0, 0.01, 0.0099999])
    with pytest.raises(ValueError, match="strictly decreasing"):
        s.set_timesteps(sigmas=[0.5, 1.0])


def test_logsnr_timesteps_are_the_schedules():
    for cls in CLASSES:
        s = cls(timestep_spacing="logsnr")
        s.set_timesteps(8)
        assert s.timesteps.tolist() == schedules.logsnr_timesteps(s.alphas_cumprod, 8).tolist()
        assert s.timesteps.tolist()[0] == 999 and s.timesteps.tolist()[-1] == 0


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_scheduler_loop_equals_run_sampler(method):
    """With the defaults (no noise on the last step: run_sampler's final_noise=False), a scheduler loop and
    run_sampler give the same sample for the same generator; final_noise=True gives another."""
    s = make(method, clip_sample=False)
    s.set_timesteps(6)
    a = s.alphas_cumprod.double()
    schedule = ad.DiscreteSchedule(torch.cat([1 - a[:1], 1 - a[1:] / a[:-1]]))  # the scheduler's levels in float64
    model = toy_model(s.alphas_cumprod)
    y_T = _start((2, 1, 4, 4), 7, torch.float64)
    ref = ad.run_sampler(model, y_T, method, schedule, s.timesteps.tolist(), generator=torch.Generator().manual_seed(5))

    def scheduler_loop(sched):
        gen, start = torch.Generator().manual_seed(5), y_T
        if method == "accelerated_sde":  # Y_T^+ from the first draw, as the core loop does
            start = y_T + (sched.init_noise_sigma**2 - 1) ** 0.5 * torch.randn(
                y_T.shape, generator=gen, dtype=y_T.dtype
            )
        return run(sched, model, start, generator=gen, n=6)[0]

    torch.testing.assert_close(scheduler_loop(s), ref, rtol=1e-12, atol=1e-12)
    if method in STOCHASTIC:
        other = scheduler_loop(make(method, clip_sample=False, final_noise=True))
        assert (other - ref).abs().max() > 1e-3


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_step_index_and_begin_index(method):
    s = make(method, clip_sample=False)
    x = _start((1, 1, 2, 2), 0)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.set_begin_index(1)
    s.set_timesteps(4)
    assert s.step_index is None and s.begin_index is None
    for k, t in enumerate(s.timesteps):
        x = s.step(0.1 * x, t, x).prev_sample
        assert s.step_index == s._step_index == k + 1
    s.set_timesteps(4)
    assert s.step_index is None
    s.set_begin_index(1)
    assert s.begin_index == 1 and s.step_index is None
    s.step(0.1 * x, s.timesteps[1], x)
    assert s.step_index == 2


# --------------------------------------------------------------------------------------------------------------
# 8. torch.compile: no graph break, at most one recompilation for a 10-step loop
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(SCHEDULERS))
def test_compiled_loop_compiles_at_most_twice(method):
    """A compiled 10-step loop (fullgraph: a graph break raises) compiles the first step and then one graph for
    all the others (``unique_graphs <= 2``, i.e. at most one recompilation), in two runs; and gives the eager
    result.  The stochastic schedulers draw from the global generator here (a torch.Generator argument is a graph
    break of PyTorch's)."""
    from torch._dynamo.utils import counters

    s = make(method, clip_sample=False)

    def one_step(x, t):
        return s.step(0.1 * x + 0.05 * torch.tanh(3 * x), t, x).prev_sample

    def loop(step_fn):
        s.set_timesteps(10)
        torch.manual_seed(0)
        x = _start((2, 3, 4, 4), 0)
        for t in s.timesteps:
            x = step_fn(x, t)
        return x

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(one_step, backend="eager", fullgraph=True)
    first, second = loop(compiled), loop(compiled)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    assert torch.equal(first, second) and torch.equal(first, loop(one_step))
    s.set_timesteps(10)  # while compiling, a wrong timestep fails a device-side assertion
    with pytest.raises(RuntimeError, match="timestep other than"):
        compiled(_start((2, 3, 4, 4), 0), s.timesteps[1])
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------------------------
# 9. The book's safeguarded variants: AcceleratedDDIMScheduler(extrapolation="lambda" / "capped")
# --------------------------------------------------------------------------------------------------------------
SAFEGUARDED = ("accelerated_ode_lambda", "accelerated_ode_capped")
CUSTOM = {5: [999, 700, 350, 120, 15], 10: [999, 950, 800, 640, 500, 333, 200, 90, 40, 7]}  # uneven strides


def _exact_eps(s, dtype):
    """The Gaussian target's exact eps at the scheduler's level of the integer timestep, in ``dtype``."""
    return lambda x, t: TARGET.eps(x.double(), float(s.alphas_cumprod[int(t)])).to(dtype)


def _float64_schedule(s):
    a = s.alphas_cumprod.double()
    return ad.DiscreteSchedule(torch.cat([1 - a[:1], 1 - a[1:] / a[:-1]]))  # the scheduler's levels in float64


def _max_extrapolation_ratio(s):
    """The largest ``(abar_{t-1} - abar_t) / (abar_t - abar_{t+1})`` of a correction on the scheduler's path."""
    p = [float(a) for a in schedules.sampling_path(s.alphas_cumprod.double(), s.timesteps, 1.0)]
    return max((p[i + 1] - p[i]) / (p[i] - p[i - 1]) for i in range(1, len(p) - 1))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["float32", "float64"])
@pytest.mark.parametrize("n", [5, 10])
@pytest.mark.parametrize("grid", ["leading", "trailing", "custom"])
@pytest.mark.parametrize("method", SAFEGUARDED)
def test_safeguarded_scheduler_equals_run_sampler(method, grid, n, dtype, tol):
    """The scheduler of each safeguarded variant (its registry config) gives run_sampler's sample of that variant,
    on leading, trailing and custom grids, and is not the paper's sampler (each grid has an extrapolation ratio
    above the default max_ratio = 2, where the capped one differs from it too)."""
    s = make(method, clip_sample=False, timestep_spacing="trailing" if grid == "trailing" else "leading")
    paper = make("accelerated_ode", clip_sample=False, timestep_spacing=s.config.timestep_spacing)
    if grid == "custom":
        s.set_timesteps(timesteps=CUSTOM[n])
    else:
        s.set_timesteps(n)
    ts = s.timesteps.tolist()
    model, y_T = _exact_eps(s, dtype), _start((4, 3), 12, dtype)
    ref = ad.run_sampler(model, y_T, method, _float64_schedule(s), ts)
    y, _, nfe = run(s, model, y_T, timesteps=ts)
    assert nfe == n and y.dtype == dtype
    torch.testing.assert_close(y, ref, rtol=tol, atol=tol)
    y_paper, _, _ = run(paper, model, y_T, timesteps=ts)
    assert _max_extrapolation_ratio(s) > s.config.max_ratio
    assert (y - y_paper).abs().max() > 1e3 * tol


@pytest.mark.parametrize("max_ratio", [0.5, 1, 5.0, 50.0, math.inf])
def test_capped_scheduler_follows_max_ratio_as_the_sampler_option(max_ratio):
    s = ad.samplers.scheduler_for("accelerated_ode_capped", clip_sample=False, options={"max_ratio": max_ratio})
    assert s.config.extrapolation == "capped" and s.config.max_ratio == max_ratio
    s.set_timesteps(timesteps=CUSTOM[5])
    model, y_T = _exact_eps(s, torch.float64), _start((4, 3), 13, torch.float64)
    ref = ad.run_sampler(
        model, y_T, "accelerated_ode_capped", _float64_schedule(s), CUSTOM[5], options={"max_ratio": max_ratio}
    )
    y, _, _ = run(s, model, y_T, timesteps=CUSTOM[5])
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    default, _, _ = run(make("accelerated_ode_capped", clip_sample=False), model, y_T, timesteps=CUSTOM[5])
    assert (y - default).abs().max() > 1e-6  # the ratios of this grid: 40.5, 2.07, 0.25, 0.03
    # no cap acts where max_ratio is above every ratio: then it is the paper's sampler bit for bit
    paper, _, _ = run(make("accelerated_ode", clip_sample=False), model, y_T, timesteps=CUSTOM[5])
    assert torch.equal(y, paper) == (max_ratio >= _max_extrapolation_ratio(s))


def _accelerated_ode_step_loop(s, model, x, n, use_correction):
    """The loop of ``updates.accelerated_ode_step`` with its default (the paper's) coefficient on the scheduler's
    path: plain DDIM first, then the correction from the previous eps (none at all without ``use_correction``)."""
    s.set_timesteps(n)
    levels = [float(a) for a in schedules.sampling_path(s.alphas_cumprod.double(), s.timesteps, 1.0)]
    eps_next = None
    for i, t in enumerate(s.timesteps.tolist()):
        eps = model(x, t)
        a_next = levels[i - 1] if eps_next is not None else None
        x = ad.updates.accelerated_ode_step(x, eps, levels[i], levels[i + 1], eps_next, a_next)
        eps_next = eps if use_correction else None
    return x


def test_alpha_bar_extrapolation_is_the_default_and_unchanged():
    """``extrapolation="alpha_bar"`` is the default and gives, bit for bit, the loop of
    ``updates.accelerated_ode_step`` with its default (the paper's) coefficient (``max_ratio`` ignored); so does
    ``"capped"`` with no cap (``max_ratio=inf``); with the correction off every extrapolation is exact DDIM, as is
    ``"capped"`` with ``max_ratio=0``."""
    default = AcceleratedDDIMScheduler()
    assert (default.config.extrapolation, default.config.max_ratio) == ("alpha_bar", 2.0)
    model, x = toy_model(default.alphas_cumprod), _start((2, 1, 4, 4), 14)
    paper = [{}, dict(extrapolation="alpha_bar"), dict(max_ratio=0.5), dict(extrapolation="capped", max_ratio=math.inf)]
    no_correction = [dict(use_correction=False, extrapolation=e) for e in ("alpha_bar", "lambda", "capped")]
    for spacing in ("leading", "trailing"):
        for use_correction, cases in (
            (True, paper),
            (False, [*no_correction, dict(extrapolation="capped", max_ratio=0)]),
        ):
            ref = _accelerated_ode_step_loop(
                AcceleratedDDIMScheduler(timestep_spacing=spacing), model, x, 10, use_correction
            )
            for kw in cases:
                y, _, _ = run(
                    AcceleratedDDIMScheduler(clip_sample=False, timestep_spacing=spacing, **kw), model, x, n=10
                )
                assert torch.equal(y, ref), (spacing, kw)


BAD_EXTRAPOLATION = [
    (
        dict(extrapolation="linear"),
        ValueError,
        r"extrapolation 'linear'; expected one of \('alpha_bar', 'lambda', 'capped'\)",
    ),
    (dict(extrapolation=None), ValueError, "unknown extrapolation None"),
    (dict(extrapolation="Lambda"), ValueError, "unknown extrapolation 'Lambda'"),
    (dict(extrapolation="capped", max_ratio=-1.0), ValueError, r"max_ratio must be >= 0 \(inf: no cap\), got -1.0"),
    (dict(extrapolation="capped", max_ratio=math.nan), ValueError, "max_ratio must be >= 0"),
    (dict(max_ratio=-0.5), ValueError, "max_ratio must be >= 0"),
    (dict(extrapolation="capped", max_ratio="2"), TypeError, "max_ratio must be a real number >= 0, got str"),
    (dict(extrapolation="capped", max_ratio=True), TypeError, "max_ratio must be a real number >= 0, got bool"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_EXTRAPOLATION, ids=[str(k) for k, _, _ in BAD_EXTRAPOLATION])
def test_bad_extrapolation_config_raises_before_any_work(kwargs, error, match, monkeypatch):
    def built(self):
        raise AssertionError("the schedule was built before the extrapolation config was checked")

    monkeypatch.setattr(AcceleratedDDIMScheduler, "_build", built)
    with pytest.raises(error, match=match):
        AcceleratedDDIMScheduler(**kwargs)
    with pytest.raises(error, match=match):
        AcceleratedDDIMScheduler.from_config(DDPMScheduler().config, **kwargs)


def test_the_registry_gives_the_safeguarded_variants_their_scheduler():
    """Each safeguarded sampler has the drop-in scheduler whose config selects its rule; the config survives
    save / from_pretrained; ``scheduler_for`` builds it from a pipeline's config with the rule's keys set by the
    sampler (and its options), and refuses to be given them."""
    import inspect

    from accelerated_diffusion import schedulers

    safeguarded = {n for n in ad.samplers.LIBRARY_SAMPLERS if ad.samplers.spec(n).role == "safeguarded"}
    assert safeguarded == set(SAFEGUARDED) and set(SAFEGUARDED) <= set(SCHEDULERS)
    assert tuple(schedulers.EXTRAPOLATIONS) == ad.updates.EXTRAPOLATIONS  # one list of the rules
    for extrapolation, name in schedulers.EXTRAPOLATIONS.items():
        assert SCHEDULERS[name] is AcceleratedDDIMScheduler and CONFIG[name]["extrapolation"] == extrapolation
    assert CONFIG["accelerated_ode_capped"] == {"extrapolation": "capped", "max_ratio": 2.0}
    for name, cls in SCHEDULERS.items():  # the config keys of every sampler are keywords of its class
        assert set(CONFIG[name]) <= set(inspect.signature(cls.__init__).parameters), name
    capped = AcceleratedDDIMScheduler(extrapolation="capped", max_ratio=3.0, clip_sample=False)
    with tempfile.TemporaryDirectory() as folder:
        capped.save_config(folder)
        loaded = AcceleratedDDIMScheduler.from_pretrained(folder)
    assert (loaded.config.extrapolation, loaded.config.max_ratio) == ("capped", 3.0)
    pipe_config = capped.config  # a pipeline that runs the capped variant swaps in another one
    for name in ("accelerated_ode", *SAFEGUARDED):
        s = ad.samplers.scheduler_for(name, pipe_config, clip_sample=True)
        assert type(s) is AcceleratedDDIMScheduler and s.config.clip_sample is True
        assert s.config.extrapolation == CONFIG[name]["extrapolation"]
    assert ad.samplers.scheduler_for("accelerated_ode_capped", pipe_config).config.max_ratio == 2.0
    with pytest.raises(ValueError, match=r"\['extrapolation'\] are set by sampler 'accelerated_ode_lambda'"):
        ad.samplers.scheduler_for("accelerated_ode_lambda", extrapolation="capped")
    with pytest.raises(ValueError, match=r"\['max_ratio'\] are set by sampler 'accelerated_ode_capped'"):
        ad.samplers.scheduler_for("accelerated_ode_capped", max_ratio=3.0)
    with pytest.raises(ValueError, match=r"has no option\(s\) \['max_ratio'\]"):
        ad.samplers.scheduler_for("accelerated_ode_lambda", options={"max_ratio": 3.0})
    for name in ("ddim", "dpm_solver_pp_2m", "diffusers_unipc_bh2"):
        with pytest.raises(ValueError, match="no drop-in scheduler of this package"):
            ad.samplers.scheduler_config(name)
    with pytest.raises(ValueError, match="unknown sampler"):
        ad.samplers.scheduler_config("accelerated_ode_cap")
    with pytest.raises(ValueError, match="scheduler_config given without a scheduler"):
        ad.samplers.SamplerSpec(
            "x", "X", False, "", "safeguarded", "o", loop=lambda s: None, scheduler_config={"extrapolation": "lambda"}
        )
