"""Noise schedules and timestep spacings against diffusers and the official code's definitions."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from accelerated_diffusion import schedules as S


@pytest.mark.parametrize("name", S.BETA_SCHEDULES)
def test_beta_schedules_equal_diffusers(name):
    ref = DDPMScheduler(
        beta_schedule=name,
        beta_start=1e-4 if name == "linear" else 0.00085,
        beta_end=0.02 if name == "linear" else 0.012,
    )
    ours = S.betas_for(name, 1000, ref.config.beta_start, ref.config.beta_end, dtype=torch.float32)
    assert torch.allclose(ours, ref.betas, rtol=1e-6, atol=1e-9)
    assert torch.allclose(S.alpha_bars_from_betas(ours), ref.alphas_cumprod, rtol=1e-5)


@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
@pytest.mark.parametrize("steps", [1, 5, 7, 10, 50, 1000])
def test_spacings_equal_diffusers(spacing, steps, offset):
    if offset and steps == 1000:  # diffusers would visit timestep 1000, which does not exist: we refuse
        with pytest.raises(ValueError, match="outside"):
            S.timestep_subsequence(1000, steps, spacing, offset)
        return
    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(steps)
    assert S.timestep_subsequence(1000, steps, spacing, offset).tolist() == ref.timesteps.tolist()


def test_official_spacings():
    # uniform: range(0, N, N // S) as in the official (DDIM) code -- 8 entries for S = 7
    assert S.timestep_subsequence(1000, 10, "uniform").tolist() == list(range(900, -1, -100))
    assert len(S.timestep_subsequence(1000, 7, "uniform")) == 8
    q = S.timestep_subsequence(1000, 10, "quadratic").tolist()
    assert q == [int(v) for v in (np.linspace(0, math.sqrt(800), 10) ** 2)][::-1]
    with pytest.raises(ValueError, match="visits a timestep twice"):
        S.timestep_subsequence(1000, 200, "quadratic")


@pytest.mark.parametrize("bad", [dict(num_steps=0), dict(num_steps=1001), dict(spacing="cosine")])
def test_bad_spacing_arguments(bad):
    kwargs = dict(num_train_timesteps=1000, num_steps=10, spacing="leading") | bad
    with pytest.raises(ValueError):
        S.timestep_subsequence(**kwargs)


def test_paper_schedule_definition():
    T, c0, c1 = 200, 2.0, 4.0
    b = S.paper_betas(T, c0, c1).tolist()
    rate = c1 * math.log(T) / T
    assert b[0] == pytest.approx(T**-c0, rel=1e-14)
    for t in range(1, T):  # beta_{t+1} = rate * min(beta_1 (1 + rate)^t, 1), checked with a plain loop
        assert b[t] == pytest.approx(rate * min(T**-c0 * (1 + rate) ** t, 1.0), rel=1e-12)
    assert max(b) == pytest.approx(rate)
    abar = S.alpha_bars_from_betas(torch.tensor(b))
    assert float(abar[-1]) < 1e-3  # the schedule reaches (near) pure noise
    with pytest.raises(ValueError, match="too small"):
        S.paper_betas(5, 2.0, 4.0)


def test_sampling_path_and_schedule_object():
    sched = S.DiscreteSchedule.from_diffusers("linear")
    ts = sched.subsample(10, "leading")
    path = sched.path(ts, final_alpha_bar=1.0)
    assert path.shape == (11,) and path[-1] == 1.0 and path[0] == sched.alpha_bars[900]
    assert torch.equal(sched.path(ts, final_alpha_bar=None), sched.alpha_bars[ts])
    lam = sched.lambda_
    assert torch.allclose(torch.exp(2 * lam), sched.alpha_bars / (1 - sched.alpha_bars))
    full = sched.path()
    assert full.shape == (1001,)
    with pytest.raises(ValueError, match="strictly increasing"):
        S.sampling_path(sched.alpha_bars, torch.tensor([0, 100]))


@pytest.mark.parametrize(
    "timesteps,error,match",
    [
        (torch.tensor([-1, 5]), ValueError, r"timesteps\[0\] = -1"),  # would wrap around to alpha_bar[999]
        (torch.tensor([1000, 5]), ValueError, r"\[0, num_train_timesteps=1000\)"),
        (torch.tensor([5.7, 3.2]), TypeError, "must be integers"),  # would be truncated to 5, 3
        ([5.0, 3], TypeError, "must be integers"),
        (torch.tensor([True, False]), TypeError, "must be integers"),
        (np.array([[5, 3]]), ValueError, "1-D"),
    ],
)
def test_path_rejects_timesteps_that_are_not_training_steps(timesteps, error, match):
    sched = S.DiscreteSchedule.from_diffusers("linear")
    with pytest.raises(error, match=match):
        sched.path(timesteps)
    with pytest.raises(error, match=match):
        S.sampling_path(sched.alpha_bars, timesteps)


def test_subsample_takes_integer_counts_only():
    sched = S.DiscreteSchedule.from_diffusers("linear")
    for bad in (10.7, 10.0, True, "10"):
        with pytest.raises(TypeError, match="num_steps must be an int"):
            sched.subsample(bad)
    with pytest.raises(TypeError, match="steps_offset must be an int"):
        sched.subsample(10, steps_offset=0.5)
    assert sched.subsample(np.int64(10)).tolist() == sched.subsample(10).tolist()


def test_schedule_from_a_list_of_betas():
    sched = S.DiscreteSchedule([0.1, 0.2, 0.3])
    assert sched.betas.dtype == torch.float64 and sched.num_train_timesteps == 3
    torch.testing.assert_close(sched.alpha_bars, torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64))
    assert sched.path().tolist() == pytest.approx([0.504, 0.72, 0.9, 1.0])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        S.DiscreteSchedule([0.1, 1.5])
    with pytest.raises(ValueError, match="1-D"):
        S.DiscreteSchedule([[0.1, 0.2]])
    with pytest.raises(TypeError, match="sequence of numbers"):
        S.DiscreteSchedule(["a", "b"])


@pytest.mark.parametrize("steps", [2, 5, 10, 50, 300, 1000])
def test_logsnr_spacing_is_uniform_in_lambda_and_distinct(steps):
    sched = S.DiscreteSchedule.from_diffusers("linear")
    ts = sched.subsample(steps, "logsnr")
    assert len(ts) == steps and len(ts.unique()) == steps
    assert ts[0] == 999 and ts[-1] == 0 and bool((ts[1:] < ts[:-1]).all())
    lam = sched.lambda_[ts].numpy()
    target = np.linspace(lam[0], lam[-1], steps)
    if steps <= 10:  # no two targets share an index here: the nearest index, within half a training step
        dlam = np.abs(np.diff(sched.lambda_.numpy())).max()
        assert np.abs(lam - target).max() <= dlam / 2 + 1e-12


def test_logsnr_spacing_needs_the_levels_and_starts_at_t_max():
    with pytest.raises(ValueError, match="alpha_bars_train"):
        S.timestep_subsequence(1000, 5, "logsnr")
    abar = S.DiscreteSchedule.from_diffusers("linear").alpha_bars
    ts = S.logsnr_timesteps(abar, 5, t_max=800)
    assert ts[0] == 800 and ts[-1] == 0
    with pytest.raises(ValueError, match="num_steps"):
        S.logsnr_timesteps(abar, 10, t_max=5)
