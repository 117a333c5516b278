"""The public sampling loop: NFE accounting, timesteps, determinism, dtype, and clear errors."""

import math

import pytest
import torch

import accelerated_diffusion as ad
from accelerated_diffusion.samplers import ModelOutputError

TARGET = ad.Gaussian([0.5, -1.0], [[1.0, 0.3], [0.3, 0.5]])
PATH = torch.tensor([0.01, 0.2, 0.6, 0.9, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("method", sorted(ad.samplers.LIBRARY_SAMPLERS))
def test_nfe_equals_number_of_steps_and_timesteps_are_passed(method, gen):
    seen = []

    def eps_fn(x, t):
        seen.append(t)
        return TARGET.eps(x, PATH[len(seen) - 1])

    x = torch.randn(8, 2, dtype=torch.float64, generator=gen)
    out, nfe = ad.sample(eps_fn, x, PATH, method, timesteps=[999, 700, 300, 50], generator=gen, return_nfe=True)
    assert nfe == len(PATH) - 1 == len(seen)
    assert seen == [999, 700, 300, 50]
    assert out.shape == x.shape and out.dtype == x.dtype


def test_default_timesteps_are_the_levels():
    seen = []
    ad.sample(lambda x, t: (seen.append(t), torch.zeros_like(x))[1], torch.zeros(1, 2), PATH, "ddim")
    assert seen == pytest.approx(PATH[:-1].tolist())


@pytest.mark.parametrize("method", ["ddpm_type", "accelerated_sde"])
def test_same_seed_gives_bit_identical_samples(method):
    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
        return ad.sample(TARGET.eps, x, PATH, method, generator=gen)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize("method", sorted(ad.samplers.LIBRARY_SAMPLERS))
def test_float32_in_float32_out_close_to_float64(method):
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out64 = ad.sample(TARGET.eps, x, PATH, method, generator=torch.Generator().manual_seed(1))
    out32 = ad.sample(TARGET.eps, x.float(), PATH, method, generator=torch.Generator().manual_seed(1))
    assert out32.dtype == torch.float32
    if method in ("ddim", "ddim_type", "accelerated_ode"):  # noise draws differ by dtype for the stochastic ones
        assert torch.allclose(out32.double(), out64, atol=1e-4)


@pytest.mark.parametrize(
    "path,match",
    [
        ([0.5, 0.4, 1.0], "strictly increasing"),
        ([0.0, 0.5, 1.0], r"\(0, 1\]"),
        ([0.2, 0.5, 1.1], r"\(0, 1\]"),
        ([0.2, float("nan"), 1.0], "NaN"),
        ([0.5], "at least 2"),
        ([[0.1, 0.2]], "1-D"),
    ],
)
def test_bad_paths_are_rejected(path, match):
    with pytest.raises(ValueError, match=match):
        ad.sample(TARGET.eps, torch.zeros(1, 2), path, "ddim")


def test_unknown_method_and_bad_arguments():
    with pytest.raises(ValueError, match="diffusers' own scheduler"):
        ad.sample(lambda x, t: x, torch.zeros(1, 1), [0.1, 0.5], "diffusers_dpm_solver_pp_2m")
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        ad.sample(TARGET.eps, torch.zeros(1, 2), PATH, "euler")
    with pytest.raises(ValueError, match="timesteps has 2 entries"):
        ad.sample(TARGET.eps, torch.zeros(1, 2), PATH, "ddim", timesteps=[1, 2])
    with pytest.raises(TypeError, match="floating-point"):
        ad.sample(TARGET.eps, torch.zeros(1, 2, dtype=torch.int64), PATH, "ddim")


def test_wrong_model_output_shape_names_the_step():
    with pytest.raises(ModelOutputError, match=r"step 0 .*shape \(1,\), expected \(1, 2\)"):
        ad.sample(lambda x, t: torch.zeros(1), torch.zeros(1, 2), PATH, "ddim")


@pytest.mark.parametrize("method", sorted(ad.samplers.LIBRARY_SAMPLERS))
def test_nan_from_the_model_names_the_step(method):
    def eps_fn(x, t):
        return torch.full_like(x, math.nan) if t == PATH[2] else torch.zeros_like(x)

    with pytest.raises(ModelOutputError, match=r"step 2 .*NaN or Inf"):
        ad.sample(eps_fn, torch.zeros(1, 2), PATH, method, generator=torch.Generator().manual_seed(0))


def test_progress_bar_runs(capsys):
    ad.sample(TARGET.eps, torch.zeros(1, 2, dtype=torch.float64), PATH, "accelerated_ode", progress=True)
    assert "accelerated_ode" in capsys.readouterr().err


def test_sample_with_scheduler_matches_diffusers_ddim_and_counts_nfe():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    abar = sched.alphas_cumprod.double()
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, nfe = ad.sample_with_scheduler(lambda x, t: TARGET.eps(x, abar[int(t)]), noise, sched, 10, return_nfe=True)
    path = ad.sampling_path(abar, sched.timesteps, 1.0)
    ref = ad.sample(TARGET.eps, noise, path, "ddim")
    assert nfe == 10
    assert torch.allclose(out.double(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        ad.sample_with_scheduler(TARGET.eps, noise, sched)


@pytest.mark.parametrize("method", sorted(ad.samplers.STOCHASTIC & set(ad.samplers.LIBRARY_SAMPLERS)))
def test_per_sample_generators_make_a_sample_independent_of_its_batch(method):
    """With one generator per sample (diffusers' ``randn_tensor`` convention), sample k drawn in a batch of 4 is
    sample k drawn alone."""
    gens = lambda: [torch.Generator().manual_seed(100 + k) for k in range(4)]  # noqa: E731
    x = torch.cat([torch.randn(1, 2, generator=g, dtype=torch.float64) for g in gens()])
    batch = ad.sample(TARGET.eps, x, PATH, method, generator=gens())
    for k in range(4):
        alone = ad.sample(TARGET.eps, x[k : k + 1], PATH, method, generator=[gens()[k]])
        torch.testing.assert_close(batch[k : k + 1], alone, rtol=0, atol=1e-12)
    # and the draws really differ between samples (not one stream shared by all)
    assert not torch.allclose(batch[0], batch[1])
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        ad.sample(TARGET.eps, x, PATH, method, generator=gens()[:3])
    with pytest.raises(TypeError, match="generator"):
        ad.sample(TARGET.eps, x, PATH, method, generator=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex128])
def test_model_output_must_be_real_floating(dtype):
    with pytest.raises(ModelOutputError, match=rf"step 0 .*dtype {dtype}"):
        ad.sample(lambda x, t: torch.zeros(x.shape, dtype=dtype), torch.zeros(1, 2), PATH, "ddim")


def test_run_sampler_checks_timesteps_before_any_model_call():
    schedule = ad.DiscreteSchedule.from_diffusers("linear")

    def never(x, t):
        raise AssertionError("the model must not be called")

    noise = torch.zeros(1, 2)
    for bad, error in (([900.7, 500], TypeError), ([1000, 5], ValueError), ([-1, 5], ValueError),
                       (torch.tensor([900.0, 500.0]), TypeError)):
        for name in ("ddim", "diffusers_dpm_solver_pp_2m"):
            with pytest.raises(error, match="timesteps"):
                ad.run_sampler(never, noise, name, schedule, bad)
