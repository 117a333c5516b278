"""Tests of accelerated_diffusion.experiments.rates: exact output laws, oracles, estimators and fits."""

import math

import pytest
import torch

import accelerated_diffusion as ad
from accelerated_diffusion import metrics
from accelerated_diffusion.experiments import rates
from accelerated_diffusion.experiments.data import load_fashion_mnist


@pytest.fixture(scope="module")
def gauss():
    return rates.gaussian_target(3, seed=1)


def test_make_path():
    p = rates.make_path("paper", 50)
    assert p.numel() == 50 and abs(float(p[-1]) - (1 - 50**-2)) < 1e-12
    q = rates.make_path("linear", 10)
    assert q.numel() == 10 and float(q[-1]) == pytest.approx(1 - 1e-4)
    assert float(rates.make_path("linear", 10, final_alpha_bar=1.0)[-1]) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        rates.make_path("cosine", 10)
    with pytest.raises(ValueError, match="final_alpha_bar"):
        rates.make_path("paper", 10, final_alpha_bar=1.0)
    with pytest.raises(ValueError, match="unknown sampler"):
        ad.sample(lambda x, t: x, torch.zeros(1, 1), q, "euler")


def test_exact_flow_map_against_a_fine_solver(gauss):
    """Independent check of the oracle: DPM-Solver++(2M) with 2000 lambda-uniform steps converges to it."""
    a_in, a_out = 0.01, 0.999
    A, b = rates.exact_flow_map(gauss, a_in, a_out)
    x = gauss.sample(16, a_in, generator=torch.Generator().manual_seed(0))
    ref = rates.flow_reference(gauss, x, a_in, a_out, 2000)
    assert torch.allclose(ref, x @ A.T + b, atol=1e-6)
    # and it pushes q_in onto q_out exactly
    cov = A @ gauss.marginal_cov(a_in) @ A.T
    assert torch.allclose(cov, gauss.marginal_cov(a_out), atol=1e-12)


@pytest.mark.parametrize("method", sorted(ad.samplers.STOCHASTIC))
def test_stochastic_law_matches_monte_carlo(gauss, method):
    """The propagated exact law agrees with the real sampling loop (Monte Carlo, 40k samples)."""
    path = rates.make_path("linear", 5)
    mean, cov = rates.gaussian_output_law(gauss, path, method, "exact")
    n = 40000
    x = gauss.sample(n, float(path[0]), generator=torch.Generator().manual_seed(3))
    y = ad.sample(gauss.eps, x, path, method, generator=torch.Generator().manual_seed(4))
    m_hat, c_hat = metrics.empirical_moments(y)
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((m_hat - mean).abs() < 5 * se).all()), (m_hat, mean)
    assert torch.allclose(c_hat, cov, atol=0.03 * float(torch.diagonal(cov).max()))
    # not vacuous: the DDIM output law at 5 steps differs from this one by far more than the tolerance
    mean_d, cov_d = rates.gaussian_output_law(gauss, path, "ddim", "exact")
    assert float((cov_d - cov).abs().max()) > 0.1 * float(torch.diagonal(cov).max())


def test_gaussian_errors_and_rates(gauss):
    """Closed-form errors: DDIM is first order and the accelerated ODE faster, on the linear path to q_1."""
    out = {m: [] for m in ("ddim", "accelerated_ode")}
    Ts = [40, 80, 160]
    for T in Ts:
        path = rates.make_path("linear", T)
        for m in out:
            out[m].append(rates.gaussian_errors(gauss, path, m))
    e = out["ddim"][0]
    assert e["tv_upper"] == pytest.approx(math.sqrt(e["kl"] / 2))
    assert e["kl_init"] > 0 and e["kl_standard_start"] > 0
    slope_ddim = rates.fit_slope(Ts, [r["rms_flow"] for r in out["ddim"]])["slope"]
    slope_acc = rates.fit_slope(Ts, [r["rms_flow"] for r in out["accelerated_ode"]])["slope"]
    assert -1.15 < slope_ddim < -0.85
    assert slope_acc < -1.4
    assert rates.gaussian_errors(gauss, rates.make_path("linear", 10), "ddpm_type")["rms_flow"] is None


def test_fit_slope():
    x = [10, 20, 40, 80]
    f = rates.fit_slope(x, [3.0 * v**-2 for v in x])
    assert (
        f["slope"] == pytest.approx(-2.0)
        and f["ci"][0] == pytest.approx(-2.0)
        and f["intercept"] == pytest.approx(math.log(3))
    )
    g = rates.fit_slope(x, [v**-1 * (1 + 0.1 * (-1) ** i) for i, v in enumerate(x)])
    assert g["ci"][0] < -1 < g["ci"][1]
    assert rates.fit_slope(x, [1.0, None, 2.0, 3.0], x_min=1)["x_used"] == [10, 40, 80]
    with pytest.raises(ValueError, match="at least 3"):
        rates.fit_slope(x, [1.0, 2.0, -1.0, 0.0])


def test_mmd_and_rms_estimators():
    tgt = rates.two_d_mixture()
    gen = torch.Generator().manual_seed(0)
    exact = tgt.sample(4000, generator=gen)
    r0 = rates.mmd2_with_ci(exact, tgt, 0.5)
    shifted = rates.mmd2_with_ci(exact + 0.3, tgt, 0.5)
    assert r0["ci"][0] < 0 < r0["ci"][1] or abs(r0["value"]) < 1e-3
    assert shifted["ci"][0] > 10 * (r0["ci"][1] - r0["ci"][0])
    # exact target terms against brute force Monte Carlo
    smooth, kqq = rates._kernel_target_terms(tgt, 0.25)
    other = tgt.sample(4000, generator=gen)
    brute = torch.exp(-torch.cdist(exact, other).square() / 0.5).mean()
    assert abs(float(brute) - kqq) < 0.01
    rm = rates.rms_with_ci(torch.zeros(100, 2), torch.ones(100, 2))
    assert rm["value"] == pytest.approx(math.sqrt(2)) and rm["ci"] == pytest.approx([math.sqrt(2)] * 2)
    d = torch.arange(1, 102, dtype=torch.float64)[:, None]  # distances 1..101
    med = rates.median_with_ci(d, torch.zeros_like(d))
    assert med["value"] == 51 and med["ci"][0] < 51 < med["ci"][1] and 38 <= med["ci"][0] and med["ci"][1] <= 64
    with pytest.raises(ValueError, match="2 samples per batch"):
        rates.mmd2_with_ci(exact[:5], tgt, 0.5)


def test_mixture_sweep_runs_and_reference_converges():
    tgt = rates.two_d_mixture()
    res = rates.mixture_rate_sweep(
        tgt, "linear", [5, 10], methods=("ddim", "ddpm_type"), num_samples=100, ell=0.5, ref_steps=100, progress=False
    )
    assert res["ddim"]["nfe"] == [4, 9]
    assert res["ddim"]["rms_flow"][0]["value"] > res["ddim"]["rms_flow"][1]["value"] > 10 * max(res["ref_check"])
    assert res["ddpm_type"]["rms_flow"] == [None, None] and len(res["ddpm_type"]["mmd2"]) == 2


def test_fashion_mnist_mixture():
    try:
        fm = rates.fit_fashion_mnist_mixture(rank=4, split="test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not available")
    assert fm.dim == 784 and fm.num_components == 10 and fm.event_shape == (1, 28, 28)
    assert fm.factors.shape == (10, 784, 4) and bool((fm.diag >= 1e-3).all())
    assert float(fm.means.min()) >= -1 and float(fm.means.max()) <= 1
    assert torch.allclose(fm.weights, torch.full((10,), 0.1, dtype=torch.float64))  # 1000 test images per class
    # the fit reproduces the per-pixel class variance wherever the floor is not active
    imgs, labels = load_fashion_mnist("test")
    x = imgs[labels == 0].reshape(-1, 784).double() / 127.5 - 1
    var = x.var(0)
    model = fm.factors[0].square().sum(1) + fm.diag[0]
    ok = var > 2e-3
    assert torch.allclose(model[ok], var[ok], rtol=1e-8)
    with pytest.raises(ValueError, match="rank"):
        rates.fit_fashion_mnist_mixture(rank=0)


def test_gaussian_tv_against_independent_oracles():
    """1-d: trapezoid rule on a fine grid; 3-d: Monte Carlo of E_p[(1 - q/p)_+]; and TV <= sqrt(KL/2)."""
    import numpy as np
    from scipy import stats

    xs = np.linspace(-30, 30, 600001)
    oracle = 0.5 * np.trapezoid(np.abs(stats.norm.pdf(xs, 0.3, 0.5) - stats.norm.pdf(xs, 0.0, 0.8)), xs)
    assert rates.gaussian_tv([0.3], [[0.25]], [0.0], [[0.64]]) == pytest.approx(oracle, rel=1e-4)
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    S0 = a @ a.T + torch.eye(3, dtype=torch.float64)
    S1 = S0 + 0.2 * torch.eye(3, dtype=torch.float64)
    m0, m1 = torch.zeros(3, dtype=torch.float64), torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64)
    tv = rates.gaussian_tv(m0, S0, m1, S1)
    p0 = torch.distributions.MultivariateNormal(m0, S0)
    p1 = torch.distributions.MultivariateNormal(m1, S1)
    x = p0.sample((200000,))
    terms = (1 - torch.exp(p1.log_prob(x) - p0.log_prob(x))).clamp(min=0)
    assert abs(tv - float(terms.mean())) < 5 * float(terms.std()) / math.sqrt(x.shape[0])
    assert tv < math.sqrt(metrics.gaussian_kl(m0, S0, m1, S1) / 2)
    assert rates.gaussian_tv(m0, S0, m0, S0) == 0.0
    # tiny distances keep their relative accuracy (TV is linear in a small perturbation)
    t1 = rates.gaussian_tv(m0, S0, 1e-6 * m1, S0 + 1e-6 * torch.eye(3, dtype=torch.float64))
    t2 = rates.gaussian_tv(m0, S0, 2e-6 * m1, S0 + 2e-6 * torch.eye(3, dtype=torch.float64))
    assert t2 / t1 == pytest.approx(2.0, rel=1e-3)


# --------------------------------------------------------------------------------------------------------------
# The registry is the only list (issue 21)
# --------------------------------------------------------------------------------------------------------------
def test_sampler_lists_and_styles_derive_from_the_registry():
    S = ad.samplers
    assert rates.SAMPLERS == S.table_order(S.LIBRARY_SAMPLERS) and sorted(rates.SAMPLERS) == sorted(S.LIBRARY_SAMPLERS)
    assert rates.DETERMINISTIC == tuple(m for m in rates.SAMPLERS if m not in S.STOCHASTIC)
    # the style of the figures: the colours and markers of the committed figures, one per sampler, for any number
    assert list(rates.STYLE) == list(rates.SAMPLERS)
    assert [(m, st["color"], st["marker"]) for m, st in rates.STYLE.items()][:7] == [
        ("ddim_type", "C0", "o"),
        ("ddim", "C1", "s"),
        ("accelerated_ode", "C2", "^"),
        ("dpm_solver_pp_2m", "C3", "v"),
        ("unipc_bh2", "C4", "D"),
        ("ddpm_type", "C5", "x"),
        ("accelerated_sde", "C6", "P"),
    ]
    assert all(st["marker"] == S.spec(m).marker for m, st in rates.STYLE.items())


def test_a_new_stochastic_sampler_gets_its_own_exact_law(gauss, monkeypatch):
    """A stochastic sampler added to the registry is pushed through its own Gaussian half-steps, not treated as
    the accelerated SDE: one registered with the DDPM-type half-step has exactly ``ddpm_type``'s law."""
    S = ad.samplers
    new = S.SamplerSpec("new_sde", "new", True, "test", "peer", "*", transitions=ad.updates.ddpm_type_transitions)
    monkeypatch.setattr(S, "SAMPLERS", {**S.SAMPLERS, "new_sde": new})
    path = rates.make_path("linear", 6)
    for start in ("exact", "standard"):
        got = rates.gaussian_output_law(gauss, path, "new_sde", start)
        ddpm = rates.gaussian_output_law(gauss, path, "ddpm_type", start)
        sde = rates.gaussian_output_law(gauss, path, "accelerated_sde", start)
        assert all(torch.equal(a, b) for a, b in zip(got, ddpm))
        assert not torch.allclose(got[1], sde[1], atol=1e-6)
    assert rates.gaussian_errors(gauss, path, "new_sde")["kl"] == rates.gaussian_errors(gauss, path, "ddpm_type")["kl"]
    with pytest.raises(ValueError, match="no Gaussian transitions"):
        rates._stochastic_law(gauss, path, "ddim", (gauss.mean, gauss.cov))


def test_unknown_names_raise_before_any_work(gauss, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("no work before the names are checked")

    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        rates.gaussian_output_law(gauss, rates.make_path("linear", 5), "euler")
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        rates.gaussian_errors(gauss, rates.make_path("linear", 5), "euler")
    monkeypatch.setattr(rates, "make_path", no_work)
    monkeypatch.setattr(rates, "flow_reference", no_work)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        rates.gaussian_rate_sweep(gauss, "linear", [5], methods=("ddim", "euler"), progress=False)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        rates.mixture_rate_sweep(rates.two_d_mixture(), "linear", [5], methods=("ddim", "euler"), progress=False)
