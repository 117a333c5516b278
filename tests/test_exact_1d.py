"""Tests of the exact one-dimensional TV (accelerated_diffusion.experiments.exact_1d)."""

import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from accelerated_diffusion.experiments import rates
from accelerated_diffusion.experiments import exact_1d as E

torch.set_num_threads(1)

NARROW = E.mixture_1d([0.8, 0.2], [-1.0, 1.5], [0.09, 0.0025])


@pytest.fixture(scope="module")
def gauss():
    return E.mixture_1d(**E.TARGETS["gaussian"])


def test_closed_forms_of_the_mixture():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)[:, None]
    a = 0.3
    assert np.allclose(E.density(NARROW, x[:, 0].numpy(), a), NARROW.log_prob(x, a).exp().numpy(), rtol=1e-13)
    # the CDF integrates the density; sf = 1 - cdf without cancellation
    y = np.linspace(-6, 6, 20001)
    cum = np.concatenate(
        [[0], np.cumsum(0.5 * (y[1] - y[0]) * (E.density(NARROW, y, a)[1:] + E.density(NARROW, y, a)[:-1]))]
    )
    assert np.allclose(E.cdf(NARROW, y, a) - E.cdf(NARROW, y[0], a), cum, atol=1e-8)
    assert np.allclose(E.cdf(NARROW, y, a) + E.sf(NARROW, y, a), 1.0, atol=1e-15)


def test_eps_derivative_against_forward_ad():
    x = torch.linspace(-3, 3, 41, dtype=torch.float64)[:, None]
    for a in (0.01, 0.5, 0.9999):
        with fwAD.dual_level():
            e = NARROW.eps(fwAD.make_dual(x, torch.ones_like(x)), a)
            de = fwAD.unpack_dual(e).tangent
        assert torch.allclose(E.eps_derivative(NARROW, x, a), de, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["ddim", "accelerated_ode", "unipc_bh2"])
def test_flow_map_tangent_is_the_derivative_of_the_library_loop(method):
    """The stacked-tangent run equals forward-mode AD through the library's own loop."""
    path = rates.make_path("linear", 8)
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    fm = E.flow_map(NARROW, path, method, x)
    with fwAD.dual_level():
        y = E.run(NARROW.eps, fwAD.make_dual(x, torch.ones_like(x)), path, method)
        phi, dphi = fwAD.unpack_dual(y)
    assert np.allclose(fm["phi"], phi[:, 0].numpy(), rtol=1e-13, atol=1e-13)
    assert np.allclose(fm["dphi"], dphi[:, 0].numpy(), rtol=1e-10, atol=1e-12)


def test_gaussian_tv_1d():
    assert E.gaussian_tv_1d(0.0, 1.0, 0.0, 1.0) == 0.0
    # equal variances: 2 Phi(|dm| / 2 s) - 1
    assert E.gaussian_tv_1d(0.0, 4.0, 1.0, 4.0) == pytest.approx(math.erf(0.25 / math.sqrt(2)), rel=1e-14)
    for args in [(0.1, 0.3, -0.2, 0.5), (0.0, 1.0, 0.0, 1.7), (1.0, 0.01, 1.001, 0.0101)]:
        y = np.linspace(-12, 12, 400_001)
        n = lambda m, v: np.exp(-0.5 * (y - m) ** 2 / v) / math.sqrt(2 * math.pi * v)
        num = 0.5 * np.trapezoid(np.abs(n(*args[:2]) - n(*args[2:])), y)
        assert E.gaussian_tv_1d(*args) == pytest.approx(num, rel=1e-6)
    # and the library's characteristic-function inversion (relative accuracy 1e-4)
    t = torch.tensor
    ref = rates.gaussian_tv(t([0.1]), t([[0.3]]), t([-0.2]), t([[0.5]]))
    assert E.gaussian_tv_1d(0.1, 0.3, -0.2, 0.5) == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("schedule,T", [("paper", 30), ("linear", 20)])
def test_gaussian_closed_form(gauss, schedule, T):
    """All seven samplers agree with the Gaussian output law's exact TV to 1e-6 relative."""
    check = E.gaussian_check([(schedule, T)], target=gauss)
    assert check["max_rel_error"] < 1e-6, check["rows"]


def test_stochastic_kernels_reproduce_the_library_loop():
    """The kernels, fed the noises of the same generator in the same order, give the loop's samples exactly."""
    path = rates.make_path("linear", 10)
    x0 = torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None]
    for m in E.STOCHASTIC:
        y_lib = E.run(NARROW.eps, x0, path, m, generator=torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)
        y = x0
        for k in E.transition_kernels(NARROW, path, m):
            mu, _ = k.mean_fn(y)
            y = mu + k.sigma * torch.randn(y.shape, generator=g, dtype=torch.float64)
        assert torch.allclose(y, y_lib, rtol=1e-12, atol=1e-12), m


def test_wrong_kernel_std_fails_the_gaussian_check(gauss):
    """Mutation: a 1% error in every kernel's standard deviation is far outside the 1e-6 tolerance."""
    path = rates.make_path("linear", 20)
    for m in E.STOCHASTIC:
        ref = E.gaussian_reference_tv(gauss, path, m)["tv"]
        good = E.stochastic_tv(gauss, path, m)["tv"]
        bad = E.stochastic_tv(gauss, path, m, kernel_std_scale=1.01)["tv"]
        assert abs(good - ref) / ref < 1e-6
        assert abs(bad - ref) / ref > 1e-3


def test_grid_refinement_on_a_mixture():
    """Doubling the resolution changes TV by < 1e-6 relative; where the map folds (the accelerated ODE here), by
    < 1e-4 (the branch CDFs are interpolated)."""
    table = E.refinement_table(
        NARROW, [("linear", 40)], methods=("ddim", "accelerated_ode", "ddpm_type", "accelerated_sde")
    )
    assert table["max_rel_change"] < 1e-6, table["rows"]
    assert table["max_rel_change_folded"] < 1e-4, table["rows"]


def test_folding_is_detected_and_its_tv_matches_a_histogram():
    """Constructed fold: the accelerated ODE's last correction on 5 leading steps of the linear schedule folds the
    map near the narrow mode; the folded TV agrees with a brute-force histogram of the pushed-forward mass."""
    path = rates.make_path("linear", 5)
    r = E.deterministic_tv(NARROW, path, "accelerated_ode")
    assert r["folded"] and r["fold"]["first_level"] == float(path[-1]) and r["fold"]["mass"] > 0.01
    lo, hi = r["fold"]["x_range"]
    assert 0.5 < lo < hi < 4.0
    # brute force: push 400k cells of q_T through the map, histogram against q_out's exact cell masses
    a0, a1 = float(path[0]), float(path[-1])
    x = np.linspace(-12, 12, 400_001)
    fm = E.flow_map(NARROW, path, "accelerated_ode", 0.5 * (x[1:] + x[:-1]))
    assert (fm["dphi"] < 0).any()
    mass = np.diff(E.cdf(NARROW, x, a0))
    edges = np.linspace(-4, 4, 4001)
    p = np.histogram(fm["phi"], edges, weights=mass)[0]
    q = np.diff(E.cdf(NARROW, edges, a1))
    tv_hist = 0.5 * np.abs(p - q).sum()
    assert r["tv"] == pytest.approx(tv_hist, abs=3e-3)
    # a monotone case is reported as such
    assert not E.deterministic_tv(NARROW, path, "ddim")["folded"]


def test_sweep_and_results_schema(tmp_path):
    res = E.exact_rates(
        NARROW,
        paper_Ts=(10, 12, 15),
        linear_Ts=(5, 8, 10),
        methods=("ddim", "ddpm_type"),
        x_min={"paper": 5, "linear": 4},
    )
    obj = E.results_json(NARROW, res, name="rates_exact_1d_test.json", folder=tmp_path)
    assert set(obj["target"]) == {"weights", "means", "variances"}
    for s in ("paper", "linear"):
        for m in ("ddim", "ddpm_type"):
            r = obj["results"][s][m]
            assert {"T", "nfe", "tv", "slope"} <= set(r) and set(r["slope"]) >= {"value", "ci"}
            assert all(0 < v < 1 for v in r["tv"]) and r["slope"]["value"] < 0
            # local orders (experiments.orders): one local slope per neighbouring pair, a verdict on the claim
            assert len(r["local_slopes"]["slope"]) == len(r["local_slopes"]["nfe"]) == len(r["tv"]) - 1
            assert {"claimed", "local_slope_at_max_T", "settled", "verdict"} <= set(r["verdict"])
            assert r["verdict"]["local_slope_at_max_T"] == r["local_slopes"]["slope"][-1]
            assert ("local_slope_at_max_T_vs_T_over_logT" in r["verdict"]) == (s == "paper")
    assert (tmp_path / "rates_exact_1d_test.json").exists()


def test_run_experiment_in_two_processes_equals_one():
    """The sweeps' runs are independent: two worker processes give exactly the serial results, in order."""
    kw = dict(
        paper_Ts=(10, 15, 20),
        linear_Ts=(5, 8, 10),
        x_min={"paper": 9, "linear": 4},
        gaussian_cases=(("linear", 5),),
        refinement_cases=(),
        explore_targets=[E.TARGETS["separated"]],
        explore_Ts=(5, 8, 10),
    )
    serial = E.run_experiment(E.TARGETS["unequal_narrow"], **kw)
    parallel = E.run_experiment(E.TARGETS["unequal_narrow"], workers=2, **kw)
    for key in ("results", "accuracy", "exploration"):
        assert parallel[key] == serial[key], key
    assert serial["results"]["linear"]["ddim"]["T"] == [5, 8, 10]
    assert [r[2] for r in serial["accuracy"]["gaussian"]["rows"]] == list(E.SAMPLERS)
    with pytest.raises(ValueError, match="workers"):
        E.run_jobs([], workers=0)


def test_started_experiment_equals_a_serial_run():
    """start_experiment runs in the background and .result() gives the serial run's object."""
    kw = dict(
        paper_Ts=(10, 15, 20),
        linear_Ts=(5, 8, 10),
        x_min={"paper": 9, "linear": 4},
        gaussian_cases=(("paper", 10),),
        refinement_cases=(("linear", 5),),
        explore_targets=(),
    )
    pending = E.start_experiment(E.TARGETS["separated"], workers=2, **kw)
    serial = E.run_experiment(E.TARGETS["separated"], **kw)
    started = pending.result()
    for key in ("results", "accuracy", "exploration", "target"):
        assert started[key] == serial[key], key
    with pytest.raises(TypeError, match="paper_T"):
        E.start_experiment(E.TARGETS["separated"], paper_T=(10,))


# --------------------------------------------------------------------------------------------------------------
# The registry is the only list (issue 21)
# --------------------------------------------------------------------------------------------------------------
def test_run_is_the_library_sample_with_the_levels_as_t():
    """``run`` (kept by name) is the library's ``sample``, identical to the former wrapper that passed the levels
    ``alpha_bar`` as ``t`` explicitly."""
    from accelerated_diffusion import samplers

    path = rates.make_path("linear", 8)
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)[:, None]
    assert E.run is samplers.sample
    for m in E.SAMPLERS:
        old = samplers.sample(
            NARROW.eps, x, path, m, timesteps=[float(a) for a in path[:-1]], generator=torch.Generator().manual_seed(2)
        )
        assert torch.equal(E.run(NARROW.eps, x, path, m, generator=torch.Generator().manual_seed(2)), old), m


def test_a_new_stochastic_sampler_gets_its_own_kernels(monkeypatch):
    """The kernels are the registry's half-steps of the sampler: a new one registered with the DDPM-type
    half-step has ``ddpm_type``'s kernels (it is not taken for the accelerated SDE), and names that are not
    stochastic samplers of the library raise."""
    import accelerated_diffusion as ad

    S = ad.samplers
    new = S.SamplerSpec("new_sde", "new", True, "test", "peer", "*", transitions=ad.updates.ddpm_type_transitions)
    monkeypatch.setattr(S, "SAMPLERS", {**S.SAMPLERS, "new_sde": new})
    path = rates.make_path("linear", 6)
    y = np.linspace(-3, 3, 41)
    got, ref = E.transition_kernels(NARROW, path, "new_sde"), E.transition_kernels(NARROW, path, "ddpm_type")
    assert len(got) == len(ref) == len(path) - 1
    for a, b in zip(got, ref):
        assert (a.sigma, a.level_out, a.name) == (b.sigma, b.level_out, b.name)
        assert all(np.array_equal(u, v) for u, v in zip(a.mean(y), b.mean(y)))
    assert E.exact_tv(NARROW, path, "new_sde")["tv"] == E.exact_tv(NARROW, path, "ddpm_type")["tv"]
    for bad, match in (("ddim", "not a stochastic sampler"), ("euler", "unknown sampler 'euler'")):
        with pytest.raises(ValueError, match=match):
            E.transition_kernels(NARROW, path, bad)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        E.exact_tv(NARROW, path, "euler")
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        E.flow_map(NARROW, path, "euler", [0.0])


def test_sampler_lists_derive_from_the_registry():
    from accelerated_diffusion import samplers

    assert E.SAMPLERS is rates.SAMPLERS
    assert E.STOCHASTIC == tuple(m for m in rates.SAMPLERS if m in samplers.STOCHASTIC)
