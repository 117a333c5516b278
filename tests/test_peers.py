"""The library's float64 DPM-Solver++(2M) and UniPC-bh2 (``ad.sample``) against diffusers' schedulers (``peers``)."""

import pytest
import torch

import accelerated_diffusion as ad
import oracles
from accelerated_diffusion import peers, updates
from accelerated_diffusion.schedules import betas_for


def _target(d=3):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return ad.Gaussian(
        torch.randn(d, generator=g, dtype=torch.float64), a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    )


def _run_diffusers(scheduler, target, x, **kw):
    abar = scheduler.alphas_cumprod.double()
    eps_fn = lambda y, t: target.eps(y, float(abar[int(t)]))  # noqa: E731
    return ad.sample_with_scheduler(eps_fn, x, scheduler, **kw)


@pytest.mark.parametrize("num_steps", [5, 8, 20])
def test_dpm_solver_pp_2m_matches_diffusers(num_steps):
    """Same path (diffusers' own float32 levels): ours and diffusers' agree to float32 tolerance."""
    target = _target()
    sched = peers.diffusers_dpm_solver_pp_2m(betas_for("linear"))
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = _run_diffusers(sched, target, x, num_inference_steps=num_steps)
    path, _ = peers.diffusers_path(sched)
    ours = ad.sample(target.eps, x, path, "dpm_solver_pp_2m")
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5), float((ours - ref).abs().max())
    # not a trivially equal comparison: DDIM on the same path differs by far more than the tolerance
    ddim = ad.sample(target.eps, x, path, "ddim")
    assert float((ddim - ref).abs().max()) > 1e-3


def test_dpm_solver_pp_2m_custom_timesteps_match_diffusers():
    """A custom subsequence of the linear schedule (the route used for the paper-like paths)."""
    target = _target()
    sched = peers.diffusers_dpm_solver_pp_2m(betas_for("linear"))
    ts = ad.timestep_subsequence(1000, 20, "quadratic").tolist()
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = _run_diffusers(sched, target, x, timesteps=ts)
    path, visited = peers.diffusers_path(sched)
    assert visited == ts
    ours = ad.sample(target.eps, x, path, "dpm_solver_pp_2m")
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5), float((ours - ref).abs().max())


@pytest.mark.parametrize("num_steps,spacing", [(5, "linspace"), (10, "trailing"), (25, "leading")])
def test_unipc_matches_diffusers(num_steps, spacing):
    target = _target()
    sched = peers.diffusers_unipc_bh2(betas_for("linear"), spacing)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = _run_diffusers(sched, target, x, num_inference_steps=num_steps)
    path, _ = peers.diffusers_path(sched)
    ours = ad.sample(target.eps, x, path, "unipc_bh2")
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5), float((ours - ref).abs().max())
    dpm = ad.sample(target.eps, x, path, "dpm_solver_pp_2m")  # the corrector must matter
    assert float((dpm - ref).abs().max()) > 1e-4


def test_second_order_on_a_gaussian():
    """Independent oracle: the exact probability-flow map of a 1-d Gaussian N(0, s2) from level a0 to a1
    (``oracles.gaussian_flow_map``: x -> sqrt((a1 s2 + 1 - a1) / (a0 s2 + 1 - a0)) x). Halving the step size
    divides the error by about 4."""
    s2 = 0.05
    target = ad.Gaussian(torch.zeros(1, dtype=torch.float64), torch.tensor([[s2]], dtype=torch.float64))
    a0, a1 = 0.02, 0.98
    x = torch.ones(1, 1, dtype=torch.float64)
    exact = float(oracles.gaussian_flow_map([0.0], [[s2]], a0, a1)[0][0, 0])
    for method in ("dpm_solver_pp_2m", "unipc_bh2"):
        errs = []
        for n in (40, 80, 160):
            lam = torch.linspace(updates.half_log_snr(a0), updates.half_log_snr(a1), n + 1, dtype=torch.float64)
            path = torch.sigmoid(2 * lam)  # uniform in lambda
            errs.append(abs(float(ad.sample(target.eps, x, path, method)) - exact))
        ratios = [errs[i] / errs[i + 1] for i in range(2)]
        assert all(3.5 < r < 4.7 for r in ratios), (method, errs)


def test_nfe_and_final_level_one():
    target = _target()
    path = torch.tensor([0.1, 0.4, 0.8, 1.0], dtype=torch.float64)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for method in ("dpm_solver_pp_2m", "unipc_bh2"):
        out, nfe = ad.sample(target.eps, x, path, method, return_nfe=True)
        assert nfe == 3 and torch.isfinite(out).all()


def test_bad_input():
    with pytest.raises(ValueError, match="unknown sampler"):
        ad.sample(lambda x, t: x, torch.zeros(1, 1), [0.1, 0.5], "dpm3")
    with pytest.raises(ValueError, match="strictly increasing"):
        ad.sample(lambda x, t: x, torch.zeros(1, 1), [0.5, 0.1], "dpm_solver_pp_2m")
    with pytest.raises(ValueError, match="alpha_bar"):
        updates.half_log_snr(0.0)
    with pytest.raises(ValueError, match="less noisy"):
        updates.dpm_solver_pp_2m_step(torch.zeros(1), torch.zeros(1), 0.5, 0.4)
    with pytest.raises(ValueError, match="alpha_bar = 1"):
        updates.unipc_bh2_corrector_step(torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.5, 1.0)


@pytest.mark.parametrize("ts", [[10, 500, 900], [900, 500, 500, 10]], ids=["ascending", "repeated"])
def test_run_sampler_checks_the_peers_timesteps_like_the_library_samplers(ts):
    """Ascending or repeated timesteps: every sampler, diffusers' peers included, refuses them with the same
    message before the model is called (diffusers' DPMSolverMultistepScheduler itself would run on them)."""
    schedule = ad.DiscreteSchedule.from_diffusers("linear")
    noise = torch.zeros(2, 3, dtype=torch.float64)

    def never(x, t):
        raise AssertionError("the model was called")

    messages = set()
    for name in ad.SAMPLERS:
        with pytest.raises(ValueError, match="strictly increasing") as err:
            ad.run_sampler(never, noise, name, schedule, ts)
        messages.add(str(err.value))
    assert len(messages) == 1, messages
