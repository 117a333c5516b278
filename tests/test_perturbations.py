"""Tests of the controlled perturbations of the exact noise prediction (experiments.perturbations)."""

import json
import math

import numpy as np
import pytest
import torch

from accelerated_diffusion import samplers
from accelerated_diffusion.experiments import exact_1d as E
from accelerated_diffusion.experiments import perturbations as P
from accelerated_diffusion.experiments import rates
from accelerated_diffusion.experiments.paths import dumps_strict
from accelerated_diffusion.targets import GaussianMixture

torch.set_num_threads(1)

NARROW = E.mixture_1d(**E.TARGETS["unequal_narrow"])
GAUSS = E.mixture_1d(**E.TARGETS["gaussian"])
TWO_D = rates.two_d_mixture()


def _low_rank(d=12, K=3, r=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(
        torch.tensor([1.0, 2.0, 3.0])[:K],
        torch.randn(K, d, generator=g, dtype=torch.float64),
        factors=0.5 * torch.randn(K, d, r, generator=g, dtype=torch.float64),
        diag=0.1 + torch.rand(K, d, generator=g, dtype=torch.float64),
    )


LOW_RANK = _low_rank()


@pytest.fixture(scope="module")
def path10():
    return P.grid_path(P.linear_schedule(), "uniform", 10)


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("target", [NARROW, TWO_D, LOW_RANK], ids=["1d", "2d", "lowrank"])
def test_jvp_against_finite_differences(kind, target, path10):
    a = float(path10[1])  # the second evaluation: every kind acts there or (first, middle) is zero there
    p = P.Perturbation(kind, target, 0.05, path10, seed=3)
    x = target.sample(16, a, generator=torch.Generator().manual_seed(0))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-6
    fd = (p(x + h * v, a) - p(x - h * v, a)) / (2 * h)
    assert torch.allclose(p.jvp(x, a, v), fd, rtol=1e-6, atol=1e-9)
    if kind in ("step_first", "step_middle"):
        assert torch.count_nonzero(p(x, a)) == 0
    else:
        assert p(x, a).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["white", "smooth", "proportional", "step_second"])
def test_one_d_eps_and_derivative_against_finite_differences(kind, path10):
    a = float(path10[1])
    p = P.Perturbation(kind, NARROW, 0.02, path10)
    y = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None]
    e, de = p.eps_and_derivative(y, a)
    h = 1e-6
    fd = (p.eps(y + h, a) - p.eps(y - h, a)) / (2 * h)
    assert torch.allclose(e, p.eps(y, a), rtol=0, atol=0)
    assert torch.allclose(de, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("target", [NARROW, TWO_D, LOW_RANK], ids=["1d", "2d", "lowrank"])
def test_l2_and_jacobian_sizes_by_monte_carlo(target, path10):
    """The closed-form normalisation: RMS per coordinate = delta under q_abar, and the reported Jacobian size."""
    for kind in ("white", "smooth", "proportional"):
        for a in (float(path10[0]), 0.5, 1.0):
            p = P.Perturbation(kind, target, 0.1, path10)
            x = target.sample(40000, a, generator=torch.Generator().manual_seed(5))
            l2 = math.sqrt(float(p(x, a).reshape(len(x), -1).square().mean()))
            assert l2 == pytest.approx(0.1, rel=0.03), (kind, a)
            xs = x[:1000].reshape(1000, -1)
            j2 = 0.0
            for i in range(xs.shape[1]):
                v = torch.zeros_like(xs)
                v[:, i] = 1.0
                j2 += float(p.jvp(xs.reshape(x[:1000].shape), a, v.reshape(x[:1000].shape)).square().sum()) / 1000
            sz = p.sizes(a)
            assert sz["l2"] == 0.1
            assert math.sqrt(j2 / xs.shape[1]) == pytest.approx(sz["jacobian"], rel=0.08), (kind, a)
    # equal L2 size, Jacobian sizes about kappa apart
    w, s = (P.Perturbation(k, target, 1.0, path10).sizes(0.5)["jacobian"] for k in ("white", "smooth"))
    assert 50 < w / s < 200


def test_single_step_kinds_act_at_one_evaluation(path10):
    levels = [float(a) for a in path10[:-1]]
    for kind, index in (("step_first", 0), ("step_second", 1), ("step_middle", 5)):
        p = P.Perturbation(kind, TWO_D, 0.1, path10)
        assert [p.active(a) for a in levels] == [i == index for i in range(10)]
        assert P._path_sizes(kind, TWO_D, path10)["eps_score"] == pytest.approx(1 / math.sqrt(10))


def test_delta_zero_is_the_unperturbed_result_exactly(path10):
    x = TWO_D.sample(32, float(path10[0]), generator=torch.Generator().manual_seed(0))
    for kind in P.KINDS:
        p = P.Perturbation(kind, TWO_D, 0.0, path10)
        assert torch.equal(p.eps(x, 0.3), TWO_D.eps(x, 0.3))
    r = P.measure_samples(TWO_D, path10, "accelerated_ode", x, ["white", "step_first"], [0.0, 1e-3])
    assert torch.equal(r["y0"], samplers.sample(TWO_D.eps, x, path10, "accelerated_ode").reshape(32, -1))
    assert (r["sq"]["white"][0] == 0).all() and (r["sq"]["white"][1] > 0).all()
    m = P.measure_1d(NARROW, path10, "ddim", ["white", "proportional"], [0.0])
    for kind in ("white", "proportional"):
        assert m[kind]["shift"] == [0.0] and m[kind]["tv"] == [m["tv0"]]


def test_flow_map_hook_with_the_exact_pair_changes_nothing(path10):
    x = np.linspace(-3, 3, 101)
    for method in ("ddim", "accelerated_ode"):
        a = E.flow_map(NARROW, path10, method, x)
        b = E.flow_map(
            NARROW,
            path10,
            method,
            x,
            eps_and_derivative=lambda y, t: (NARROW.eps(y, t), E.eps_derivative(NARROW, y, t)),
        )
        assert np.array_equal(a["phi"], b["phi"]) and np.array_equal(a["dphi"], b["dphi"])
    assert (
        E.deterministic_tv(NARROW, path10, "ddim")["tv"]
        == E.deterministic_tv(
            NARROW, path10, "ddim", eps_and_derivative=lambda y, t: (NARROW.eps(y, t), E.eps_derivative(NARROW, y, t))
        )["tv"]
    )


def _affine(fn, path, method):
    y = samplers.sample(fn, torch.tensor([[0.0], [1.0]], dtype=torch.float64), path, method)[:, 0]
    return float(y[1] - y[0]), float(y[0])


@pytest.mark.parametrize("method", ["ddim", "accelerated_ode"])
def test_proportional_perturbation_on_a_gaussian_against_closed_forms(method, path10):
    """An error proportional to the state keeps the sampler affine on a Gaussian target: the output laws are
    Gaussians, whose TVs have a closed form (independent of the flow-map machinery)."""
    a0, a1 = float(path10[0]), float(path10[-1])
    m0, v0 = math.sqrt(a0) * 0.5, a0 * 0.25 + 1 - a0
    A0, b0 = _affine(GAUSS.eps, path10, method)
    for delta in (1e-4, 1e-2):
        p = P.Perturbation("proportional", GAUSS, delta, path10)
        A1, b1 = _affine(p.eps, path10, method)
        shift = E.gaussian_tv_1d(A1 * m0 + b1, A1**2 * v0, A0 * m0 + b0, A0**2 * v0)
        to_q = E.gaussian_tv_1d(math.sqrt(a1) * 0.5, a1 * 0.25 + 1 - a1, A1 * m0 + b1, A1**2 * v0)
        r = P.pushforward_tv(GAUSS, path10, method, p.eps_and_derivative, None)
        assert r["tv"] == pytest.approx(shift, rel=1e-5)
        m = P.measure_1d(GAUSS, path10, method, ["proportional"], [delta])["proportional"]
        assert m["shift"][0] == pytest.approx(shift, rel=1e-5)
        assert m["tv"][0] == pytest.approx(to_q, rel=1e-6)
        d = E.deterministic_tv(GAUSS, path10, method, eps_and_derivative=p.eps_and_derivative)
        assert d["tv"] == pytest.approx(to_q, rel=1e-6)


@pytest.mark.slow
def test_white_perturbation_tv_matches_a_histogram():
    """A rough field on the two-mode target at 5 NFE: the TV to q_out and the TV between the perturbed and the
    unperturbed laws against a brute-force histogram of the pushed-forward start mass (a lower bound that
    converges from below as the bins shrink): equal for a monotone map (delta = 1e-4), within the histogram's
    bias for a folded one (delta = 3e-3, measured 0.4297 / 0.1924 against 0.4231 / 0.1877 here and 0.4269 /
    0.1914 with 4 times finer cells and bins)."""
    path = P.grid_path(P.linear_schedule(), "uniform", 5)
    a0, a1 = float(path[0]), float(path[-1])
    x = np.linspace(-12, 12, 200_001)
    mass = np.diff(E.cdf(NARROW, x, a0))
    mid = 0.5 * (x[1:] + x[:-1])
    edges = np.linspace(-4, 4, 4001)
    q = np.diff(E.cdf(NARROW, edges, a1))
    h0 = np.histogram(E.flow_map(NARROW, path, "ddim", mid)["phi"], edges, weights=mass)[0]
    for delta, folded in ((1e-4, False), (3e-3, True)):
        p = P.Perturbation("white", NARROW, delta, path)
        m = P.measure_1d(NARROW, path, "ddim", ["white"], [delta])["white"]
        assert m["folded"] == [folded]
        y1 = E.flow_map(NARROW, path, "ddim", mid, eps_and_derivative=p.eps_and_derivative)["phi"]
        h1 = np.histogram(y1, edges, weights=mass)[0]
        tv_hist, shift_hist = 0.5 * np.abs(h1 - q).sum(), 0.5 * np.abs(h1 - h0).sum()
        if not folded:
            assert m["tv"][0] == pytest.approx(tv_hist, abs=1e-4)
        else:
            assert tv_hist < m["tv"][0] < tv_hist + 1e-2
            assert shift_hist < m["shift"][0] < shift_hist + 1e-2
            assert m["shift"][0] > 0.1  # a rough field of size 0.003 moves the output law by far more


def test_linear_response_for_small_delta(path10):
    """Error increase proportional to delta for small delta (smooth maps): exact in 1-D, paired in 2-D."""
    m = P.measure_1d(NARROW, path10, "ddim", ["smooth", "proportional"], [1e-5, 2e-5])
    for kind in ("smooth", "proportional"):
        s = m[kind]["shift"]
        assert s[1] / s[0] == pytest.approx(2.0, rel=2e-3), kind
    x = TWO_D.sample(64, float(path10[0]), generator=torch.Generator().manual_seed(0))
    r = P.measure_samples(TWO_D, path10, "accelerated_ode", x, ["white", "step_second"], [1e-6, 2e-6])
    for kind in ("white", "step_second"):
        rms = np.sqrt(r["sq"][kind].mean(1))
        assert rms[1] / rms[0] == pytest.approx(2.0, rel=1e-3), kind


def test_bootstrap_exponent_recovers_a_power_law():
    rng = np.random.default_rng(0)
    base = rng.exponential(size=50)
    deltas = [1e-3, 1e-2, 1e-1]
    sq = np.stack([base * d**3 for d in deltas])  # RMS grows like delta^1.5
    e = P.bootstrap_exponent(deltas, sq, rng.integers(0, 50, (100, 50)))
    assert e["value"] == pytest.approx(1.5) and e["ci"][0] == pytest.approx(1.5) and e["ci"][1] == pytest.approx(1.5)


@pytest.mark.parametrize(
    "kw, error",
    [
        (dict(samplers=("ddim", "ddpm_type")), ValueError),
        (dict(samplers=("ddim", "no_such")), ValueError),
        (dict(samplers=("accelerated_ode",)), ValueError),
        (dict(kinds=("white", "pink")), ValueError),
        (dict(deltas=(0.01, 0.02)), ValueError),
        (dict(deltas=(0.01, 0.02, -1.0)), ValueError),
        (dict(nfes=(5, 1.5)), ValueError),
        (dict(grids_2d=("uniform", "cosine")), ValueError),
        (dict(target_1d="nope"), ValueError),
        (dict(num_samples_2d=1), ValueError),
        (dict(frequencies={"white": -1.0}), ValueError),
        (dict(workers=2), TypeError),
    ],
)
def test_arguments_are_checked_before_any_work(kw, error, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    for name in ("linear_schedule", "measure_1d", "measure_samples", "two_d_mixture"):
        monkeypatch.setattr(P, name, boom)
    with pytest.raises(error):
        P.run_perturbations(**kw)


def test_perturbation_arguments():
    with pytest.raises(ValueError, match="kind"):
        P.Perturbation("pink", TWO_D, 0.1)
    with pytest.raises(ValueError, match="delta"):
        P.Perturbation("white", TWO_D, -0.1)
    with pytest.raises(ValueError, match="path"):
        P.Perturbation("step_first", TWO_D, 0.1)
    with pytest.raises(ValueError, match="evaluations"):
        P.Perturbation("step_second", TWO_D, 0.1, torch.tensor([0.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="one-dimensional"):
        P.Perturbation("white", TWO_D, 0.1).eps_and_derivative(torch.zeros(3, 2, dtype=torch.float64), 0.5)


@pytest.mark.slow
def test_run_perturbations_small():
    """A tiny run end to end: schema, strict JSON, DDIM's amplification 1, the skipped grid, tables, figures."""
    import matplotlib

    matplotlib.use("Agg")
    r = P.run_perturbations(
        samplers=("ddim", "accelerated_ode"),
        kinds=("smooth", "step_first"),
        nfes=(5, 50),
        deltas=(1e-3, 3e-3, 1e-2),
        grids_1d=("quadratic",),
        grids_2d=("quadratic",),
        grids_fmnist=("uniform",),
        num_samples_2d=16,
        num_samples_fmnist=4,
        reference_steps_2d=20,
        replicates=20,
        fashion_mnist_target=_low_rank(d=16, K=2),
    )
    json.loads(dumps_strict(r))
    assert r["schema"] == "perturbations/1"
    assert [(s["target"], s["grid"], s["nfe"]) for s in r["skipped"]] == [
        ("1d", "quadratic", 50),
        ("2d", "quadratic", 50),
    ]
    assert set(r["two_d"]["results"]["quadratic"]) == {"5"} and set(r["one_d"]["results"]["quadratic"]) == {"5"}
    for target in ("one_d", "two_d", "fashion_mnist"):
        amp = r[target]["amplification"]["smooth"]
        for g, per in amp.items():
            for k, cell in per.items():
                assert cell["ddim"]["value"] == pytest.approx(1.0)
        assert all(len(line) <= 76 for line in P.format_amplification(r, target, 5).splitlines())
        assert all(len(line) <= 76 for line in P.format_exponents(r, target, "smooth").splitlines())
        assert len(P.exponent_rows(r, target)) > 0 and len(P.size_rows(r, target)) > 0
        P.plot_response(r, target)
        P.plot_amplification(r, target)
    cell = r["one_d"]["results"]["quadratic"]["5"]["ddim"]["smooth"]
    assert 0.9 < cell["exponent"]["value"] < 1.1
    assert r["two_d"]["results"]["quadratic"]["5"]["ddim"]["smooth"]["error"][0]["value"] > 0
    assert r["timing"]["cpu_seconds"] > 0
    matplotlib.pyplot.close("all")
