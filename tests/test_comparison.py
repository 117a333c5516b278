"""The comparison's pieces on exact-score targets and synthetic features: grids, shared noises, intervals, the
map and its rule, per-step diagnostics, the exact-score control and diffusers' peers against the library."""

import math

import numpy as np
import pytest
import torch

import accelerated_diffusion as ad
from accelerated_diffusion import updates
from accelerated_diffusion.experiments import comparison as C, features
from accelerated_diffusion.schedules import DiscreteSchedule

SCHED = DiscreteSchedule.from_diffusers("linear")
TARGET = ad.GaussianMixture(
    torch.tensor([0.3, 0.7]),
    torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64),
    torch.stack([0.05 * torch.eye(2, dtype=torch.float64)] * 2),
)


def test_grid_timesteps_checks_the_nfe():
    for g in C.GRIDS:
        assert len(C.grid_timesteps(SCHED, 5, g)) == 5
    with pytest.raises(ValueError, match="divide"):
        C.grid_timesteps(SCHED, 7, "uniform")


def test_initial_noise_is_per_sample():
    a, b = C.initial_noise(3, (2,), seed=1), C.initial_noise(5, (2,), seed=1)
    assert torch.equal(a, b[:3])
    assert not torch.equal(a, C.initial_noise(3, (2,), seed=2))


def test_generate_same_noises_and_seeded_stochastic(one_thread):
    fn = C.exact_eps_fn(TARGET, SCHED)
    x = C.initial_noise(10, (2,), dtype=torch.float64)
    y1 = C.generate(fn, SCHED, "accelerated_sde", "uniform", 5, x, seed=3, batch_size=4)
    y2 = C.generate(fn, SCHED, "accelerated_sde", "uniform", 5, x, seed=3, batch_size=4)
    assert torch.equal(y1, y2)
    y3 = C.generate(fn, SCHED, "accelerated_sde", "uniform", 5, x, seed=3, batch_size=4, final_noise=True)
    assert not torch.equal(y1, y3)  # the paper form adds the last noise


def test_frechet_interval_contains_the_value_and_shrinks():
    rng = np.random.default_rng(0)
    ref = (np.zeros(4), np.eye(4))
    small = features.frechet_with_interval(rng.normal(size=(50, 4)) + 0.5, ref, num_boot=100)
    large = features.frechet_with_interval(rng.normal(size=(2000, 4)) + 0.5, ref, num_boot=100)
    for r in (small, large):
        assert r["ci"][0] <= r["value"] <= r["ci"][1]
    assert large["ci"][1] - large["ci"][0] < small["ci"][1] - small["ci"][0]
    assert large["ci"][0] < 1.0 < large["ci"][1]  # the population value: |mean shift|^2 = 4 * 0.25
    f = rng.normal(size=(30, 4))
    assert features.frechet_with_interval(f, ref)["value"] == features.frechet_distance_from_stats(
        *features.feature_statistics(f), *ref
    )


def _cell(v, lo, hi):
    return {"fd": {"value": v, "ci": [lo, hi]}, "pf": None}


def test_separated_map_and_recommendation():
    comp = {
        "uniform": {"ddim": {"5": _cell(10, 9, 11)}, "accelerated_ode": {"5": _cell(5, 4, 6)}},
        "trailing": {"ddim": {"5": _cell(6, 5.5, 12)}, "accelerated_ode": {"5": _cell(50, 40, 60)}},
    }
    names = ("ddim", "accelerated_ode")
    grids = ("uniform", "trailing")
    assert C.separated(comp["uniform"]["accelerated_ode"]["5"]["fd"], comp["uniform"]["ddim"]["5"]["fd"]) == -1
    assert C.separated(comp["uniform"]["ddim"]["5"]["fd"], comp["trailing"]["ddim"]["5"]["fd"]) == 0
    rec = C.recommend(comp, 5, grids=grids, names=names)
    assert (rec["best"]["grid"], rec["best"]["sampler"]) == ("uniform", "accelerated_ode")
    assert [(t["grid"], t["sampler"]) for t in rec["ties"]] == [("trailing", "ddim")]
    text = C.format_map(comp, 5, grids=grids, names=names)
    assert "5 [4, 6]*" in text and "50 [40, 60] " in text
    assert C.comparison_map(comp, 5, "pf", grids=grids, names=names)["ddim"]["uniform"] is None


# ----------------------------------------------------------------------------------------------------------------
# Paired comparisons (samplers share their starting noises)
# ----------------------------------------------------------------------------------------------------------------
def _null_column_features(n=64, d=4, seed=0):
    """Features with a last column that is 0 in every row (and in the reference): shifting it by ``delta`` adds
    exactly ``delta**2`` to the Fréchet distance of *any* subset of the rows."""
    f = np.random.default_rng(seed).normal(size=(n, d))
    f[:, -1] = 0.0
    return f, (np.zeros(d), np.diag([1.0] * (d - 1) + [0.0]))


def test_paired_fd_resamples_the_same_rows():
    """Identical sets give exactly 0 [0, 0]; a copy shifted along the null column gives the shift, delta**2, with
    an interval of width 0: only possible when every resample takes the same rows of both sets."""
    f, ref = _null_column_features()
    shifted = f.copy()
    shifted[:, -1] = 0.5
    feats = {("uniform", "ddim", 5): f, ("uniform", "accelerated_ode", 5): shifted, ("trailing", "ddim", 5): f.copy()}
    out = C.paired_fd(
        feats, ref, grids=("uniform", "trailing"), names=("ddim", "accelerated_ode"), nfes=(5,), replicates=50
    )
    u = out["paired"]["uniform"]["5"]
    assert u["ddim"] == {"vs": "ddim", "diff": {"value": 0.0, "ci": [0.0, 0.0]}}
    d = u["accelerated_ode-ddim"]
    assert d["value"] == pytest.approx(0.25, abs=1e-9) and d["ci"] == pytest.approx([0.25, 0.25], abs=1e-9)
    assert u["accelerated_ode"]["vs"] == "ddim" and u["accelerated_ode"]["diff"] == d
    m = out["paired_map"]["5"]
    assert m["best"] in ({"grid": "uniform", "sampler": "ddim"}, {"grid": "trailing", "sampler": "ddim"})
    assert m["diff"]["trailing"]["ddim"] == {"value": 0.0, "ci": [0.0, 0.0]}  # the same samples on two grids
    # the library's one paired interval (model_quality re-exports it) gives the same
    from accelerated_diffusion.experiments import model_quality

    assert model_quality.paired_difference(shifted, f, ref, replicates=50) == d
    with pytest.raises(ValueError, match="same shape"):
        C.paired_fd(
            {("uniform", "ddim", 5): f, ("uniform", "accelerated_ode", 5): f[:-1]},
            ref,
            grids=("uniform",),
            names=("ddim", "accelerated_ode"),
            nfes=(5,),
        )


def test_paired_pf_resamples_the_same_noises():
    sq = np.random.default_rng(1).gamma(2.0, size=16)
    out = C.paired_pf(
        {
            ("trailing", "ddim", 5): sq,
            ("trailing", "accelerated_ode", 5): sq.copy(),
            ("trailing", "ddim", 10): sq,
            ("trailing", "accelerated_ode", 10): 4 * sq,
        },
        grids=("trailing",),
        names=("ddim", "accelerated_ode"),
        nfes=(5, 10),
        replicates=100,
    )
    assert out["paired"]["trailing"]["5"]["accelerated_ode-ddim"] == {"value": 0.0, "ci": [0.0, 0.0]}
    d = out["paired"]["trailing"]["10"]["accelerated_ode-ddim"]
    assert d["value"] == pytest.approx(math.sqrt(sq.mean()))  # RMS doubles: the difference is the RMS itself
    assert d["ci"][0] > 0  # separated, although the RMS of 16 gamma draws varies by tens of per cent
    with pytest.raises(ValueError, match="same number"):
        C.rms_bootstraps({"a": sq, "b": sq[:-1]})


def test_classification_and_map_use_the_paired_difference():
    """Marginal intervals that overlap widely, a paired difference that excludes 0: the verdict and the map's
    ties follow the paired difference."""
    f, ref = _null_column_features(n=40)
    shifted = f.copy()
    shifted[:, -1] = 0.5
    feats = {("uniform", "ddim", 5): f, ("uniform", "accelerated_ode", 5): shifted}
    names, grids = ("ddim", "accelerated_ode"), ("uniform",)
    comp = {
        "uniform": {
            s: {"5": {"fd": features.frechet_with_interval(feats["uniform", s, 5], ref, num_boot=50), "pf": None}}
            for s in names
        }
    }
    a, b = comp["uniform"]["accelerated_ode"]["5"]["fd"], comp["uniform"]["ddim"]["5"]["fd"]
    assert C.separated(a, b) == 0  # the marginal intervals overlap
    out = C.paired_fd(feats, ref, grids=grids, names=names, nfes=(5,), replicates=50)
    assert C.classify(out["paired"]["uniform"]["5"]["accelerated_ode-ddim"]) == 1  # worse, by the paired interval
    assert C.classify({"value": -1.0, "ci": [-2.0, -0.5]}) == -1 and C.classify(None) == 0
    unpaired = C.recommend(comp, 5, grids=grids, names=names)
    paired = C.recommend(comp, 5, grids=grids, names=names, paired=out["paired_map"]["5"])
    assert [t["sampler"] for t in unpaired["ties"]] == ["accelerated_ode"] and paired["ties"] == []
    assert paired["paired"] and not unpaired["paired"]
    assert (
        "*"
        not in C.format_map(comp, 5, grids=grids, names=names, paired=out["paired_map"]["5"])
        .split("acc. ODE")[1]
        .split("\n")[0]
    )
    block = C.grid_block(out["paired"], "uniform", 5)
    assert C.recommend(comp, 5, grids=grids, names=names, paired=block)["ties"] == []
    with pytest.raises(ValueError, match="taken against"):
        C.recommend(
            comp,
            5,
            grids=grids,
            names=names,
            paired={"best": {"grid": "uniform", "sampler": "accelerated_ode"}, "diff": {}},
        )


def test_pf_reference_check_reports_flags_and_refuses():
    out = C.check_pf_reference({800: 0.2, 999: 0.01}, {800: [2.0, 8.0], 999: [1.0, 5.0]})
    assert out["800"] == {"rms_vs_half": 0.2, "smallest_distance": 2.0, "ratio": 0.1, "ok": False}
    assert out["999"]["ratio"] == pytest.approx(0.01) and out["999"]["ok"]
    assert C.check_pf_reference({800: 0.2}, {})["800"]["ok"] is False  # nothing measured: not passed
    with pytest.raises(C.PFReferenceError, match=r"t = 800 \(ratio 0.100\)"):
        C.check_pf_reference({800: 0.2, 999: 0.01}, {800: [2.0], 999: [1.0]}, strict=True)
    assert C.check_pf_reference({800: 0.2}, {800: [2.0]}, max_ratio=0.2, strict=True)["800"]["ok"]


def test_text_outputs_fit_the_width():
    grids = ("uniform", "quadratic", "trailing", "logsnr")
    comp = {
        g: {n: {"5": _cell(1234.5 + i, 1000.0, 1500.0 + j)} for j, n in enumerate(C.COMPARED)}
        for i, g in enumerate(grids)
    }
    one_table = C.format_map(comp, 5, grids=grids, width=200)
    assert "\n\n" not in one_table and max(map(len, one_table.splitlines())) > 76
    split = C.format_map(comp, 5, grids=grids)
    tables = split.split("\n\n")
    assert len(tables) == 2 and all(len(t.splitlines()) == 1 + len(C.COMPARED) for t in tables)
    assert max(map(len, split.splitlines())) <= C.TEXT_WIDTH
    for g in grids:  # every cell once, in one of the tables
        assert sum(g in t.splitlines()[0] for t in tables) == 1
    assert split.count("[1000, 1500]") == len(grids)  # the best cell of each grid's first row
    rec = C.format_recommendation(C.recommend(comp, 5, grids=grids))
    assert max(map(len, rec.splitlines())) <= C.TEXT_WIDTH and rec.count(" on ") == len(grids) * len(C.COMPARED)
    items = [f"item {i}" for i in range(40)]
    text = C.wrap_items("head:", items, width=30)
    assert max(map(len, text.splitlines())) <= 30 and text.replace("\n  ", " ") == "head: " + ", ".join(items)
    long = "x " * 20 + "[1.19e+03, 1.29e+03] " + "y " * 20
    filled = C.fill_text(long, width=30)
    assert "[1.19e+03, 1.29e+03]" in filled and max(map(len, filled.splitlines())) <= 30
    assert C.ci_text({"value": 1188.2, "ci": [1097.0, 1287.4]}) == "1188 [1097, 1287]"  # never in exponent form
    table = C.format_table(["a", "bbb"], [("row", ["1", "22"]), ("longer row", ["333", "4"])])
    assert table.splitlines() == [" " * 16 + "a  bbb", "  row           1   22", "  longer row  333    4"]
    with pytest.raises(ValueError, match="cells"):
        C.format_table(["a"], [("row", ["1", "2"])])
    assert "acc. ODE = accelerated ODE" in C.label_legend() and C.label_legend(("ddim",)) == ""


def test_step_diagnostics_use_the_update_coefficients():
    rows = C.step_diagnostics(SCHED, "trailing", 5)
    a = [float(v) for v in SCHED.path(SCHED.subsample(5, "trailing"))]
    assert rows[0]["c"] is None and rows[0]["ratio"] is None
    for i, r in enumerate(rows[1:], start=1):
        assert r["ratio"] == pytest.approx((a[i + 1] - a[i]) / (a[i] - a[i - 1]))
        assert r["c"] == updates.accelerated_ode_coefficient(a[i - 1], a[i], a[i + 1])
        assert r["c_eps"] == updates.ddim_coefficients(a[i], a[i + 1])[1]
    assert rows[1]["ratio"] > 10 and rows[1]["c"] > 3 * abs(rows[1]["c_eps"])  # the long first extrapolation


def test_exact_score_control_reference_converged_and_ddim_first_order(one_thread):
    x = C.initial_noise(32, (2,), dtype=torch.float64)
    out = C.exact_score_control(TARGET, SCHED, x, grids=("trailing",), nfes=(5, 10, 20), reference_nfe=100)
    d = out["values"]["trailing"]["ddim"]
    assert d["20"]["value"] < d["10"]["value"] < d["5"]["value"]
    assert max(out["reference"].values()) < 0.1 * d["20"]["value"]
    hybrid = C.hybrid_eps_fn(lambda y, t: torch.zeros_like(y), C.exact_eps_fn(TARGET, SCHED), 999)
    assert torch.equal(hybrid(x, 999), C.exact_eps_fn(TARGET, SCHED)(x, 999))
    assert torch.equal(hybrid(x, 500), torch.zeros_like(x))
    two = C.hybrid_eps_fn(lambda y, t: torch.zeros_like(y), C.exact_eps_fn(TARGET, SCHED), (999, 799))
    assert torch.equal(two(x, 799), C.exact_eps_fn(TARGET, SCHED)(x, 799))
    assert torch.equal(two(x, 500), torch.zeros_like(x))
    p = out["paired"]["trailing"]["5"]  # accelerated ODE minus DDIM, paired over the same noises
    v = out["values"]["trailing"]
    assert p["value"] == pytest.approx(v["accelerated_ode"]["5"]["value"] - v["ddim"]["5"]["value"])
    assert p["ci"][0] <= p["value"] <= p["ci"][1]


def test_diffusers_peers_agree_with_the_library(one_thread):
    fn = C.exact_eps_fn(TARGET, SCHED)
    x = C.initial_noise(4, (2,), dtype=torch.float64)
    out = C.peer_agreement(fn, SCHED, x, grids=("trailing", "logsnr"), nfes=(5,))
    assert out["trailing"]["5"]["diffusers_dpm_solver_pp_2m"] < 1e-4
    assert out["trailing"]["5"]["diffusers_unipc_bh2"] < 1e-4
    assert out["logsnr"]["5"]["diffusers_dpm_solver_pp_2m"] < 1e-4
    assert out["logsnr"]["5"]["diffusers_unipc_bh2"] is None  # diffusers' UniPC takes no custom grid


def test_pf_reference_from_its_start(one_thread):
    fn = C.exact_eps_fn(TARGET, SCHED)
    x = C.initial_noise(8, (2,), dtype=torch.float64)
    ref = C.pf_reference(fn, SCHED, 800, x, nfe=60)
    assert ref["t_start"] == 800 and ref["rms_vs_half"] < 1e-2
    y = C.generate(fn, SCHED, "dpm_solver_pp_2m", "quadratic", 10, x)  # quadratic starts at 800
    assert (
        C.pf_distance(y, ref["solution"])["value"]
        < C.pf_distance(C.generate(fn, SCHED, "ddim", "quadratic", 10, x), ref["solution"])["value"]
    )
    assert math.isfinite(ref["rms_vs_half"])


# ----------------------------------------------------------------------------------------------------------------
# One generation wrapper, the registry's lists (issue 21)
# ----------------------------------------------------------------------------------------------------------------
def _old_comparison_generate(
    eps_fn, schedule, name, grid, nfe, noise, *, seed=0, batch_size=256, final_noise=False, timesteps=None
):
    """comparison.generate as it was before the one wrapper (verbatim, on the public run_sampler)."""
    ts = C.grid_timesteps(schedule, nfe, grid) if timesteps is None else torch.as_tensor(timesteps)
    gen = torch.Generator(noise.device).manual_seed(int(seed)) if name in ad.samplers.STOCHASTIC else None
    out = []
    for i in range(0, len(noise), batch_size):
        x, used = ad.run_sampler(
            eps_fn,
            noise[i : i + batch_size],
            name,
            schedule,
            ts,
            generator=gen,
            final_noise=final_noise,
            return_nfe=True,
        )
        assert used == len(ts)
        out.append(x.cpu())
    return torch.cat(out)


def _old_generate_run_sampler(eps_fn, noise, sampler, nfe, schedule, *, spacing="leading", generator=None):
    """generate.run_sampler as it was before the one wrapper (verbatim, on the public run_sampler)."""
    ts = schedule.subsample(nfe, spacing).tolist()
    assert len(ts) == nfe
    x, used = ad.run_sampler(eps_fn, noise, sampler, schedule, ts, generator=generator, return_nfe=True)
    assert used == nfe
    return x, ts


def test_the_wrappers_give_what_they_gave_before(one_thread):
    """comparison.generate and generate.run_sampler, now both on samplers.run_grid, give bit for bit what their
    former implementations gave, for every sampler (stochastic ones from the same seeds, in batches, with and
    without the last noise); exact_1d.run is checked in test_exact_1d.py."""
    from accelerated_diffusion.experiments import generate as G

    fn = C.exact_eps_fn(TARGET, SCHED)
    x64, x32 = C.initial_noise(10, (2,), dtype=torch.float64), C.initial_noise(10, (2,))
    for name in ad.samplers.SAMPLERS:
        for grid in ("trailing", "uniform"):
            if name == "diffusers_unipc_bh2" and grid == "uniform":  # it cannot visit that grid
                continue
            x = x32 if name.startswith("diffusers") else x64
            for final in (False, True):
                new = C.generate(fn, SCHED, name, grid, 5, x, seed=3, batch_size=4, final_noise=final)
                old = _old_comparison_generate(fn, SCHED, name, grid, 5, x, seed=3, batch_size=4, final_noise=final)
                assert new.device.type == "cpu" and torch.equal(new, old), (name, grid, final)
            new, ts = G.run_sampler(fn, x, name, 5, SCHED, spacing=grid, generator=torch.Generator().manual_seed(1))
            old, ts_old = _old_generate_run_sampler(
                fn, x, name, 5, SCHED, spacing=grid, generator=torch.Generator().manual_seed(1)
            )
            assert ts == ts_old and torch.equal(new, old), (name, grid)
    ts = ad.schedules.logsnr_timesteps(SCHED.alpha_bars, 6, t_max=700)
    assert torch.equal(
        C.generate(fn, SCHED, "dpm_solver_pp_2m", "logsnr", 6, x64, batch_size=3, timesteps=ts),
        _old_comparison_generate(fn, SCHED, "dpm_solver_pp_2m", "logsnr", 6, x64, batch_size=3, timesteps=ts),
    )
    with pytest.raises(ValueError, match="divide"):
        G.run_sampler(fn, x64, "ddim", 7, SCHED, spacing="uniform")


def test_unknown_names_raise_before_any_model_call():
    from accelerated_diffusion.experiments import generate as G

    def never(x, t):
        raise AssertionError("the model must not be called")

    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        C.generate(never, SCHED, "euler", "uniform", 5, x)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        G.run_sampler(never, x, "euler", 5, SCHED)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        C.short_label("euler")


def test_compared_samplers_and_labels_derive_from_the_registry():
    S = ad.samplers
    assert C.COMPARED == tuple(m for m in S.table_order() if m != "ddim_type" and S.spec(m).role != "safeguarded")
    assert (
        C.SHORT_LABELS.items()
        >= {"accelerated_ode": "acc. ODE", "accelerated_sde": "acc. SDE", "dpm_solver_pp_2m": "DPM++2M"}.items()
    )
    assert all(C.short_label(n) == S.spec(n).short_label for n in S.SAMPLERS)
    assert C._PEER_PAIRS == tuple((n, s.same_rule_as) for n, s in S.SAMPLERS.items() if s.same_rule_as)
    assert C._PEER_PAIRS[:2] == (
        ("diffusers_dpm_solver_pp_2m", "dpm_solver_pp_2m"),
        ("diffusers_unipc_bh2", "unipc_bh2"),
    )


def test_compare_samplers_pairs_every_name_with_every_baseline_on_the_same_noises():
    """Each name minus each baseline is the difference of their Fréchet distances, with a paired interval; a
    sampler against itself is exactly 0 [0, 0]; a stochastic name is refused before any model call."""
    from accelerated_diffusion.experiments import comparison as cmp
    from accelerated_diffusion.schedules import DiscreteSchedule, betas_for

    sched = DiscreteSchedule(betas_for("linear", 1000, 1e-4, 0.02))
    calls = []

    def eps_fn(x, t):
        calls.append(int(t))
        return 0.3 * x

    noise = cmp.initial_noise(24, (1, 28, 28), seed=1)
    with pytest.raises(ValueError, match="stochastic"):
        cmp.compare_samplers(eps_fn, sched, noise, ["accelerated_sde"])
    assert calls == []
    out = cmp.compare_samplers(
        eps_fn, sched, noise, ["ddim", "accelerated_ode_capped"], grids=("trailing",), nfes=(5,), replicates=50
    )
    fd, paired = out["fd"]["trailing"], out["paired"]["trailing"]["5"]
    assert paired["ddim-ddim"] == {"value": 0.0, "ci": [0.0, 0.0]}
    d = paired["accelerated_ode_capped-accelerated_ode"]
    assert d["value"] == pytest.approx(fd["accelerated_ode_capped"]["5"]["value"] - fd["accelerated_ode"]["5"]["value"])
    assert d["ci"][0] <= d["value"] <= d["ci"][1] and d["value"] != 0.0
    assert out["num_samples"] == 24 and set(fd) == {"ddim", "accelerated_ode", "accelerated_ode_capped"}
