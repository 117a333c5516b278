"""The score-error measurements (experiments/score_error.py): the exact eps of an empirical set against a brute-force
computation, an independent Gaussian-mixture implementation and its limits; the direct error weights against hand
computations; the split of the error into its parts; the hybrids' noise predictions and runs; argument checks before
any expensive work; and a small end-to-end run (slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from accelerated_diffusion import updates
from accelerated_diffusion.experiments import comparison as cmp
from accelerated_diffusion.experiments import score_error as se
from accelerated_diffusion.schedules import DiscreteSchedule
from accelerated_diffusion.targets import GaussianMixture

SCHED = DiscreteSchedule.from_diffusers("linear", 1000, 1e-4, 0.02)


def _brute_force_eps(data: torch.Tensor, x: torch.Tensor, a: float) -> torch.Tensor:
    """eps* of the empirical distribution of ``data`` (N, d) at ``x`` (n, d), one sample at a time."""
    out = []
    for xi in x.double():
        logp = torch.stack([-(xi - math.sqrt(a) * c).square().sum() / (2 * (1 - a)) for c in data.double()])
        w = torch.softmax(logp, 0)
        mean = (w[:, None] * data.double()).sum(0)
        out.append((xi - math.sqrt(a) * mean) / math.sqrt(1 - a))
    return torch.stack(out)


@pytest.mark.parametrize("a", [0.02, 0.5, 0.97, 0.9999])
def test_empirical_eps_matches_brute_force_and_a_mixture_of_narrow_gaussians(gen, a):
    data = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    x = math.sqrt(a) * data[torch.tensor([0, 3, 5, 6, 1])] + math.sqrt(1 - a) * torch.randn(
        5, 3, generator=gen, dtype=torch.float64
    )
    want = _brute_force_eps(data, x, a)
    for chunk in (2, 3, 100):  # several chunks: the online log-sum-exp must rescale what it holds
        got = se.EmpiricalTarget(data, chunk=chunk).eps(x, a)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the library's own Gaussian mixture with components N(x_i, delta I), delta -> 0: an independent computation
    delta = 1e-12
    mix = GaussianMixture(torch.ones(7), data, torch.eye(3, dtype=torch.float64).expand(7, 3, 3) * delta)
    torch.testing.assert_close(se.EmpiricalTarget(data).eps(x, a), mix.eps(x, a), rtol=1e-7, atol=1e-7)


def test_empirical_eps_limits(gen):
    data = torch.rand(20, 1, 2, 2, generator=gen, dtype=torch.float64) * 2 - 1
    target = se.EmpiricalTarget(data, chunk=6)
    x = torch.randn(4, 1, 2, 2, generator=gen, dtype=torch.float64)
    # abar -> 0: every point equally likely, eps -> x / sqrt(1 - abar) (the posterior mean enters with sqrt(abar))
    a = 1e-12
    torch.testing.assert_close(target.eps(x, a), x / math.sqrt(1 - a), rtol=0, atol=2e-6)
    torch.testing.assert_close(target.posterior_mean(x, a), data.mean(0).expand_as(x), rtol=0, atol=1e-5)
    # abar -> 1 near a data point: the posterior mean is that point and eps is the noise that was added
    a = 1 - 1e-8
    z = torch.randn(4, 1, 2, 2, generator=gen, dtype=torch.float64)
    xs = math.sqrt(a) * data[[2, 7, 11, 19]] + math.sqrt(1 - a) * z
    torch.testing.assert_close(target.eps(xs, a), z, rtol=0, atol=1e-9)
    # float32 in, float32 out (computed in float64)
    assert target.eps(x.float(), 0.3).dtype == torch.float32


def test_empirical_target_refuses_bad_input():
    t = se.EmpiricalTarget(torch.zeros(3, 2))
    for a in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha_bar"):
            t.eps(torch.zeros(1, 2), a)
    with pytest.raises(ValueError, match="shape"):
        t.eps(torch.zeros(1, 3), 0.5)
    with pytest.raises(TypeError, match="float"):
        se.EmpiricalTarget(torch.zeros(3, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        se.EmpiricalTarget(torch.tensor([[0.0, math.nan]]))


def test_reference_eps_fn_reads_the_level_of_the_training_step(gen):
    data = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    target = se.EmpiricalTarget(data)
    fn = se.reference_eps_fn(target, SCHED)
    x = torch.randn(3, 4, generator=gen)
    got = fn(x, 600)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, target.eps(x.double(), float(SCHED.alpha_bars[600])).float())
    mix = GaussianMixture(torch.ones(5), data, torch.eye(4, dtype=torch.float64).expand(5, 4, 4) * 0.1)
    torch.testing.assert_close(se.reference_eps_fn(mix, SCHED)(x, 300), mix.eps(x, float(SCHED.alpha_bars[300])))


# ----------------------------------------------------------------------------------------------------------------
# Direct error weights
# ----------------------------------------------------------------------------------------------------------------
def test_error_weights_of_one_ddim_step_are_its_coefficients():
    t = 700
    w = se.error_weights(SCHED, None, 1, "ddim", timesteps=[t])
    c_x, c_eps = updates.ddim_coefficients(float(SCHED.alpha_bars[t]), 1.0)
    assert w["weights"] == pytest.approx([c_eps], rel=1e-12)
    assert w["x_weight"] == pytest.approx(c_x, rel=1e-12)
    assert w["timesteps"] == [t] and w["nfe"] == 1


def test_error_weights_of_ddim_and_the_accelerated_sampler_by_hand():
    ts = cmp.grid_timesteps(SCHED, 5, "trailing").tolist()
    path = [float(a) for a in SCHED.path(torch.tensor(ts), 1.0)]
    cx = [updates.ddim_coefficients(path[i], path[i + 1])[0] for i in range(5)]
    ce = [updates.ddim_coefficients(path[i], path[i + 1])[1] for i in range(5)]
    ddim = se.error_weights(SCHED, "trailing", 5, "ddim")
    want = [ce[j] * math.prod(cx[j + 1 :]) for j in range(5)]
    assert ddim["weights"] == pytest.approx(want, rel=1e-12)
    assert ddim["x_weight"] == pytest.approx(math.prod(cx), rel=1e-12)
    # accelerated ODE: x_{i+1} = c_x x_i + c_eps e_i + c_i (e_{i-1} - e_i) from the second step on
    c = [None] + [updates.accelerated_ode_coefficient(path[i - 1], path[i], path[i + 1]) for i in range(1, 5)]
    acc = se.error_weights(SCHED, "trailing", 5, "accelerated_ode")
    want = []
    for j in range(5):
        own = ce[j] - (c[j] if j > 0 else 0.0)  # its own step
        w = own * math.prod(cx[j + 1 :])
        if j + 1 < 5:  # and the correction of the next step
            w += c[j + 1] * math.prod(cx[j + 2 :])
        want.append(w)
    assert acc["weights"] == pytest.approx(want, rel=1e-10)
    assert acc["weights"] != pytest.approx(ddim["weights"], rel=1e-3)


def test_error_weights_refuse_stochastic_unknown_and_impossible_grids():
    with pytest.raises(ValueError, match="stochastic"):
        se.error_weights(SCHED, "trailing", 5, "ddpm_type")
    with pytest.raises(ValueError, match="unknown sampler"):
        se.error_weights(SCHED, "trailing", 5, "no_such_sampler")
    with pytest.raises(ValueError, match="divide"):
        se.error_weights(SCHED, "uniform", 7, "ddim")
    w = se.all_error_weights(SCHED, ("uniform", "trailing"), (5, 7), ("ddim",))
    assert w["ddim"]["uniform"]["7"] is None and w["ddim"]["trailing"]["7"]["nfe"] == 7


def test_direct_error_multiplies_weights_by_the_profile():
    w = {"timesteps": [999, 500], "weights": [-2.0, 0.5]}
    prof = {"by_t": {"999": {"rms_total": {"value": 0.1}}, "500": {"rms_total": {"value": 0.4}}}}
    d = se.direct_error(w, prof)
    assert d["per_step"] == pytest.approx([0.2, 0.2]) and d["sum"] == pytest.approx(0.4)
    assert se.direct_error(w, {"by_t": {"999": {"rms_total": {"value": 0.1}}}}) is None


# ----------------------------------------------------------------------------------------------------------------
# The profile
# ----------------------------------------------------------------------------------------------------------------
def _ref(x, t):
    return torch.tanh(x) + 0.01 * int(t) / 1000


def test_profile_splits_the_error_into_its_parts(gen):
    images = torch.rand(6, 1, 3, 3, generator=gen) * 2 - 1
    ts = [900, 400, 20]
    direction = torch.randn(1, 1, 3, 3, generator=gen)

    def model(x, t):  # the reference, 10 % longer, plus a field that is not along it
        return 1.1 * _ref(x, t) + 0.05 * direction * torch.cos(3 * x)

    prof = se.score_error_profile(model, _ref, SCHED, ts, images, seed=3, num_boot=50)
    assert prof["timesteps"] == ts and prof["num_images"] == 6
    for t in ts:
        e = prof["by_t"][str(t)]
        tot, par, perp = (e[q]["value"] for q in ("rms_total", "rms_parallel", "rms_perpendicular"))
        assert tot**2 == pytest.approx(par**2 + perp**2, rel=1e-10)
        assert par > 0 and perp > 0
        assert e["relative"]["value"] == pytest.approx(tot / e["rms_reference"]["value"], rel=1e-12)
        for q in ("rms_total", "rms_parallel", "rms_perpendicular", "relative", "scale"):
            lo, hi = e[q]["ci"]
            assert lo <= e[q]["value"] <= hi
    # purely along the reference: no rest, k = 0.1 exactly
    along = se.score_error_profile(lambda x, t: 1.1 * _ref(x, t), _ref, SCHED, ts, images, num_boot=20)
    for e in along["by_t"].values():
        assert e["rms_perpendicular"]["value"] < 1e-6 * e["rms_total"]["value"]
        assert e["scale"]["value"] == pytest.approx(0.1, rel=1e-5)
        assert e["rms_total"]["value"] == pytest.approx(0.1 * e["rms_reference"]["value"], rel=1e-5)
    # the same seed gives the same points, whatever the reference
    again = se.score_error_profile(model, _ref, SCHED, ts, images, seed=3, num_boot=50)
    assert again == prof


def test_profile_checks_its_arguments_before_calling_the_model(gen):
    def never(x, t):
        raise AssertionError("called")

    images = torch.zeros(4, 1, 2, 2)
    with pytest.raises(TypeError, match="integers"):
        se.score_error_profile(never, never, SCHED, [0.5], images)
    with pytest.raises(ValueError, match="must lie in"):
        se.score_error_profile(never, never, SCHED, [1000], images)
    with pytest.raises(ValueError, match="images"):
        se.score_error_profile(never, never, SCHED, [10], torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="num_boot"):
        se.score_error_profile(never, never, SCHED, [10], images, num_boot=5)


# ----------------------------------------------------------------------------------------------------------------
# Hybrids
# ----------------------------------------------------------------------------------------------------------------
def _model(x, t):
    return 0.8 * torch.tanh(1.3 * x) + 0.37 * x + 1e-3 * int(t) / 7


def test_scaled_eps_at_one_level(gen):
    x = torch.randn(3, 1, 4, 4, generator=gen)
    for s in (0.0, 0.5, 1.0, 2.0):
        fn = se.scaled_eps_fn(_model, _ref, 799, s)
        torch.testing.assert_close(fn(x, 799), _ref(x, 799) + s * (_model(x, 799) - _ref(x, 799)))
        assert torch.equal(fn(x, 599), _model(x, 599))
    assert torch.equal(se.scaled_eps_fn(_model, _ref, [799], 1.0)(x, 799), _model(x, 799))
    assert torch.equal(se.scaled_eps_fn(_model, _ref, [799], 0.0)(x, 799), _ref(x, 799))
    with pytest.raises(ValueError, match="finite"):
        se.scaled_eps_fn(_model, _ref, 799, math.nan)


@pytest.mark.parametrize("name", ["ddim", "accelerated_ode"])
def test_hybrid_runs_scale_one_is_the_model_and_scale_zero_the_single_level_hybrid(gen, name):
    noise = torch.randn(4, 1, 4, 4, generator=gen)
    ts = cmp.grid_timesteps(SCHED, 5, "trailing").tolist()
    plain = cmp.generate(_model, SCHED, name, "trailing", 5, noise)
    one = cmp.generate(se.scaled_eps_fn(_model, _ref, ts[0], 1.0), SCHED, name, "trailing", 5, noise)
    assert torch.equal(one, plain)  # bit for bit
    for t in ts:
        single = cmp.generate(cmp.hybrid_eps_fn(_model, _ref, t), SCHED, name, "trailing", 5, noise)
        zero = cmp.generate(se.scaled_eps_fn(_model, _ref, t, 0.0), SCHED, name, "trailing", 5, noise)
        assert torch.equal(zero, single)
        assert not torch.equal(single, plain)
    two = cmp.generate(se.scaled_eps_fn(_model, _ref, ts[0], 2.0), SCHED, name, "trailing", 5, noise)
    assert not torch.equal(two, plain)


def test_memo_eps_answers_repeated_states_from_memory(gen):
    calls = []

    def fn(x, t):
        calls.append(int(t))
        return _model(x, t)

    memo = se.MemoEps(fn)
    x = torch.randn(2, 3, generator=gen)
    a = memo(x, 5)
    b = memo(x.clone(), 5)
    assert torch.equal(a, b) and memo.calls == 1 and memo.hits == 1
    memo(x, 6)
    memo(x + 1e-7, 5)
    memo(x.double(), 5)
    assert memo.calls == 4 and calls == [5, 6, 5, 5]
    b.add_(1.0)  # a caller changing its answer does not change the memory
    assert torch.equal(memo(x, 5), a)


def test_causal_hybrids_runs_every_variant_once_and_equals_direct_runs(gen):
    noise = torch.randn(3, 1, 4, 4, generator=gen)
    calls = {"model": 0}

    def model(x, t):
        calls["model"] += 1
        return _model(x, t)

    out = se.causal_hybrids(model, _ref, SCHED, noise, grids=("trailing", "logsnr"), nfe=5)
    ts = out["timesteps"]["trailing"]
    assert ts == cmp.grid_timesteps(SCHED, 5, "trailing").tolist()
    assert out["variants"]["trailing"] == ["model"] + [f"ref@{t}" for t in ts] + ["s=0", "s=0.5", "s=1", "s=2"]
    s = out["samples"]
    for g in ("trailing", "logsnr"):
        first = out["timesteps"][g][0]
        for n in se.PAIR:
            assert torch.equal(s[g, n, "s=1"], s[g, n, "model"])
            assert torch.equal(s[g, n, "s=0"], s[g, n, f"ref@{first}"])
    direct = cmp.generate(cmp.hybrid_eps_fn(_model, _ref, ts[2]), SCHED, "accelerated_ode", "trailing", 5, noise)
    assert torch.equal(s["trailing", "accelerated_ode", f"ref@{ts[2]}"], direct)
    # without memory: 2 grids x 2 samplers x (1 + 5 levels + 4 scales) runs of 5 evaluations
    assert calls["model"] == out["evaluations"]["model"] < 2 * 2 * 10 * 5 // 2
    with pytest.raises(ValueError, match="stochastic"):
        se.causal_hybrids(model, _ref, SCHED, noise, names=("ddim", "accelerated_sde"))
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        se.causal_hybrids(model, _ref, SCHED, noise, grids=("bogus",))
    with pytest.raises(ValueError, match="finite"):
        se.causal_hybrids(model, _ref, SCHED, noise, scales=(0.0, math.inf))


def test_hybrid_metrics_gaps_and_shares_are_consistent(gen):
    from accelerated_diffusion.experiments import features
    from accelerated_diffusion.experiments.data import load_fashion_mnist

    images, _ = load_fashion_mnist("test")
    real = features.to_model_range(images[:40])
    blur = torch.nn.functional.avg_pool2d(real, 3, 1, 1)
    noisy = (real + 0.5 * torch.randn(real.shape, generator=gen)).clamp(-1, 1)
    samples = {
        ("trailing", "ddim", "model"): real,
        ("trailing", "accelerated_ode", "model"): noisy,
        ("trailing", "ddim", "ref@999"): real,
        ("trailing", "accelerated_ode", "ref@999"): blur,
        ("trailing", "ddim", "s=1"): real.clone(),
        ("trailing", "accelerated_ode", "s=1"): noisy.clone(),
    }
    m = se.hybrid_metrics({"samples": samples}, num_boot=30, seed=1)
    c = m["cells"]["trailing"]
    for v in ("model", "ref@999", "s=1"):
        gap = c["accelerated_ode"][v]["fd"]["value"] - c["ddim"][v]["fd"]["value"]
        assert m["gap"]["trailing"][v]["fd"]["value"] == pytest.approx(gap, rel=1e-12)
    g_model = m["gap"]["trailing"]["model"]["fd"]["value"]
    g_ref = m["gap"]["trailing"]["ref@999"]["fd"]["value"]
    assert m["share_removed"]["trailing"]["ref@999"]["fd"]["value"] == pytest.approx(1 - g_ref / g_model, rel=1e-12)
    assert m["share_removed"]["trailing"]["model"]["fd"] == {"value": 0.0, "ci": [0.0, 0.0]}
    # identical sets: identical cells and zero paired differences
    assert c["accelerated_ode"]["s=1"] == c["accelerated_ode"]["model"]
    assert c["ddim"]["ref@999"]["fd_vs_model"] == {"value": 0.0, "ci": [0.0, 0.0]}
    assert c["accelerated_ode"]["model"]["fd_vs_model"]["ci"] == [0.0, 0.0]
    # the noisy set is far from the data on both yardsticks, with paired intervals that say so
    assert m["gap"]["trailing"]["model"]["fd"]["ci"][0] > 0
    assert m["gap"]["trailing"]["model"]["yardstick"]["ci"][0] > 0
    json.dumps(m, allow_nan=False)


def test_feature_mahalanobis_against_the_reference_statistics():
    from accelerated_diffusion.experiments import features

    mu, sigma = features.load_reference_stats("test")
    z = np.random.default_rng(0).standard_normal((5000, 128))
    f = mu + z @ np.linalg.cholesky(sigma).T  # the reference's own statistics
    assert se.feature_mahalanobis(f).mean() == pytest.approx(1.0, abs=0.01)
    lam, vec = np.linalg.eigh(sigma)
    one = mu + np.sqrt(lam[[0, -1]])[:, None] * vec[:, [0, -1]].T  # one standard deviation along two directions
    assert se.feature_mahalanobis(np.vstack([mu, one])) == pytest.approx([0.0, 1 / 128, 1 / 128], abs=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Argument checks of the whole run
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, match",
    [
        ({"num_samples": 2}, "num_samples"),
        ({"num_boot": 10}, "num_boot"),
        ({"grids": ("uniform", "bogus")}, "unknown grid"),
        ({"nfes": (5, 0)}, "NFE"),
        ({"names": ("ddim", "ddpm_type")}, "stochastic"),
        ({"names": ("ddim", "nope")}, "unknown sampler"),
        ({"references": ("train", "other")}, "reference"),
        ({"hybrid_reference": "mixture", "references": ("train",)}, "hybrid_reference"),
        ({"scales": (0.0, math.nan)}, "finite"),
        ({"profile_images": 1}, "profile_images"),
    ],
)
def test_run_checks_arguments_before_loading_anything(monkeypatch, bad, match):
    def boom(*a, **k):
        raise AssertionError("expensive work started")

    monkeypatch.setattr(se, "_load_model", boom)
    monkeypatch.setattr(se, "reference_targets", boom)
    with pytest.raises(ValueError, match=match):
        se.run_score_error(**bad)


def test_run_checks_that_every_grid_has_the_hybrid_nfe(monkeypatch):
    def refs(*a, **k):
        raise AssertionError("references built before the grids were checked")

    monkeypatch.setattr(se, "_load_model", lambda model_id, device: (None, SCHED))
    monkeypatch.setattr(se, "reference_targets", refs)
    with pytest.raises(ValueError, match="divide"):
        se.run_score_error(hybrid_nfe=7)


@pytest.mark.slow
def test_small_run_end_to_end(tmp_path):
    """The whole measurement at a tiny size: JSON-ready, saved atomically with its provenance, tables and figures
    built from the stored file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = se.run_score_error(
        num_samples=3,
        num_boot=20,
        grids=("trailing",),
        nfes=(5,),
        profile_images=2,
        references=("train",),
        scales=(0.0, 1.0),
    )
    assert r["provenance"]["parameters"]["num_samples"] == 3
    path = se.save(r, folder=tmp_path, extra={"note": "x"})
    stored = se.load(folder=tmp_path)
    assert list(stored)[0] == "provenance" and stored["note"] == "x" and path.exists()
    assert stored["provenance"]["parameters"] == r["provenance"]["parameters"]
    h = stored["hybrids"]
    assert h["timesteps"]["trailing"] == [999, 799, 599, 399, 199]
    assert set(h["cells"]["trailing"]["ddim"]) == {
        "model",
        "ref@999",
        "ref@799",
        "ref@599",
        "ref@399",
        "ref@199",
        "s=0",
        "s=1",
    }
    assert stored["direct_error"]["train"]["ddim"]["trailing"]["5"]["sum"] > 0
    for text in (
        se.profile_text(stored),
        se.weights_text(stored, 5),
        se.hybrid_text(stored, "level"),
        se.hybrid_text(stored, "scale", "yardstick"),
        se.gap_text(stored),
    ):
        assert text and max(len(line) for line in text.splitlines()) <= 76
    for fig in (
        se.plot_score_error(stored),
        se.plot_error_weights(stored),
        se.plot_level_hybrids(stored),
        se.plot_scaled_hybrids(stored, "yardstick"),
    ):
        plt.close(fig)
    with pytest.raises(ValueError, match="overwrite"):
        se.save(r, folder=tmp_path, extra={"profile": {}})
