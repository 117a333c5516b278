"""The tables, figures and records of the chapter "Rates with exact scores" (experiments.rates_report), on small
synthetic results dicts of the records' schema."""

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from accelerated_diffusion import samplers  # noqa: E402
from accelerated_diffusion.experiments import orders, rates  # noqa: E402
from accelerated_diffusion.experiments import rates_report as rr  # noqa: E402
from accelerated_diffusion.experiments.paths import repository_root  # noqa: E402
from accelerated_diffusion.experiments.report import verdict_rows  # noqa: E402

CLAIMS = ("accelerated_ode", "ddim_type", "accelerated_sde", "ddpm_type")


def _fit(slope, key="slope"):
    return {key: slope, "ci": [slope - 0.05, slope + 0.04]}


def _run(slope, T, *, gaussian=True, c=1.0):
    """One sampler's record entry with TV = c T^slope, annotated like orders.annotate does."""
    nfe = [t - 1 for t in T]
    tv = [c * n**slope for n in nfe]
    r = {"T": list(T), "nfe": nfe, "tv": tv}
    if gaussian:
        r["slopes"] = {"tv": _fit(slope)}
        r["kl_init"] = [1e-4] * len(T)
    else:
        r["slope"] = _fit(slope, "value")
    return r


def _results(slopes: dict, *, gaussian=True, paper_logt=True):
    """{schedule: {sampler: entry}} with verdicts from orders.annotate."""
    out = {}
    for s, T in (("paper", [10, 30, 100, 300, 1000]), ("linear", [10, 20, 50, 100, 200, 500, 1000])):
        out[s] = {m: _run(e, T, gaussian=gaussian) for m, e in slopes.items()}
        if s == "paper" and paper_logt:
            for m, e in slopes.items():
                if gaussian:
                    out[s][m]["slopes"]["tv_vs_T_over_logT"] = _fit(e - 0.2)
                else:
                    out[s][m]["slope_vs_T_over_logT"] = _fit(e - 0.2, "value")
        orders.annotate(out[s], "tv", log_factor=s == "paper")
    return out


SLOPES = {"ddim_type": -1.0, "accelerated_ode": -2.0, "ddpm_type": -1.0, "accelerated_sde": -1.0}


def test_interval_has_one_format():
    assert rr.interval(-1.013, [-1.052, -0.968]) == "-1.01 [-1.05, -0.97]"
    assert rr.interval(0.5, (0.25, 0.75), digits=1) == "0.5 [0.2, 0.8]"


def test_verdict_table_rows_and_cells():
    G = _results(SLOPES)
    X1 = _results(SLOPES, gaussian=False)
    rows = verdict_rows({"Gaussian": G, "mixture": X1})
    t = rr.verdict_table(rows)
    assert t.columns == ["claim (slope)", "target", "schedule", "T", "local slope", "vs T/log T", "verdict"]
    assert len(t) == 4 * 2 * 2
    assert t.rows[0][:4] == ["accelerated ODE (-2)", "Gaussian", "paper", "1000"]
    assert t.rows[0][4] == f"{G['paper']['accelerated_ode']['verdict']['local_slope_at_max_T']:.2f}" == "-2.00"
    assert t.rows[1][5] == "–"  # no T/log T on the linear schedule
    assert t.column("verdict")[1] == "agrees"  # exact power law -2 on the linear schedule
    assert t.rows[-1][0] == "DDPM-type (-0.5)" and t.rows[-1][-1] == "faster"
    p = rr.verdict_table(rows, practical=True)
    assert p.columns[5] == "range" and p.rows[1][3] == "100"
    lo, hi = G["linear"]["accelerated_ode"]["practical"]["slope_range"]
    assert p.rows[1][5] == f"{lo:.2f} to {hi:.2f}"


def test_slope_table_takes_its_samplers_from_the_results():
    G = _results({"ddim": -1.0, "accelerated_ode": -2.0, "ddpm_type": -1.0})
    G["linear"]["ddpm_type"]["slopes"] = {}  # no fit: "–"
    t = rr.slope_table(G, "tv", caption="c")
    assert t.columns == ["sampler", "paper", "paper, vs T/log T", "linear"]
    assert t.column("sampler") == ["DDIM", "accelerated ODE", "DDPM-type"]
    assert t.rows[1][1:] == ["-2.00 [-2.05, -1.96]", "-2.20 [-2.25, -2.16]", "-2.00 [-2.05, -1.96]"]
    assert t.rows[2][3] == "–"
    # the exact 1-d schema (slope / value), without T/log T fits
    X1 = _results({"ddim_type": -0.7}, gaussian=False, paper_logt=False)
    x = rr.slope_table(X1)
    assert x.columns == ["sampler", "paper", "linear"] and x.rows == [
        ["DDIM-type", "-0.70 [-0.75, -0.66]"] * 1 + ["-0.70 [-0.75, -0.66]"]
    ]


def test_mc_slope_table_marks_missing_fits():
    block = {
        "results": {
            "ddim": {"slopes": {"rms_flow": _fit(-1.0), "median_flow": _fit(-0.9), "mmd2": None}},
            "ddpm_type": {"slopes": {"mmd2": _fit(-2.0)}},
        }
    }
    t = rr.mc_slope_table(block)
    assert t.columns == ["sampler", "RMS distance", "median distance", "MMD²"]
    assert t.rows == [
        ["DDIM", "-1.00 [-1.05, -0.96]", "-0.90 [-0.95, -0.86]", "–"],
        ["DDPM-type", "–", "–", "-2.00 [-2.05, -1.96]"],
    ]


def test_summary_figure_has_labelled_axes_and_one_curve_per_sampler_and_schedule():
    G = _results(SLOPES)
    G = {"target": {"d": 4}, "results": G}
    X1 = {"results": _results(SLOPES, gaussian=False)}
    fig = rr.summary_figure(G, X1)
    try:
        axes = fig.axes
        assert len(axes) == 4
        for ax in axes:
            solid = [ln for ln in ax.get_lines() if ln.get_linestyle() in ("-", "--")]
            assert len(solid) == 4  # accelerated and baseline, paper and linear
            assert len([ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]) == 2  # claimed slopes
            assert ax.get_xscale() == ax.get_yscale() == "log"
        assert all(ax.get_xlabel() for ax in axes[2:]) and all(ax.get_ylabel() for ax in axes[::2])
        assert [ax.get_title() for ax in axes[:2]] == ["Gaussian, d = 4", "1-d mixture"]
        # each curve ends with its local slope at the largest T
        texts = {t.get_text() for t in axes[0].texts}
        assert "-2.00" in texts and "-1.00" in texts
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels[:4] == [samplers.label(m) for m in CLAIMS]
    finally:
        plt.close(fig)


def test_tv_figure_draws_every_sampler_of_the_results():
    R = _results({"ddim": -1.0, "accelerated_ode": -2.0, "unipc_bh2": -2.0})
    fig = rr.tv_figure(R, fit_from={"paper": 99, "linear": 39}, init_bound=True)
    try:
        for ax, s in zip(fig.axes, ("paper", "linear")):
            assert ax.get_xlabel() and ax.get_ylabel() and s in ax.get_title()
            labelled = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
            assert labelled[:3] == ["DDIM", "accelerated ODE", "UniPC-bh2"]
        assert [t.get_text() for t in fig.legends[0].get_texts()][:3] == ["DDIM", "accelerated ODE", "UniPC-bh2"]
    finally:
        plt.close(fig)


def test_lambda_uniform_path_keeps_end_points_and_is_uniform_in_lambda():
    p = rates.make_path("linear", 20)
    q = rr.lambda_uniform_path(p)
    assert q.numel() == p.numel() and q[0] == p[0] and q[-1] == p[-1]
    lam = torch.tensor([float(rr.updates.half_log_snr(a)) for a in q], dtype=torch.float64)
    steps = lam.diff()
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-9)
    assert not torch.allclose(p, q)


def test_mc_block_fits_only_resolved_mmd():
    nfe = [4, 9, 19, 49]
    ok = [{"value": 0.1 * n**-1.0, "ci": [0.05 * n**-1.0, 0.2 * n**-1.0]} for n in nfe]
    noisy = ok[:2] + [{"value": 1e-4, "ci": [-1e-3, 1e-3]}] * 2
    res = {
        "ddim": {"nfe": nfe, "rms_flow": ok, "median_flow": ok, "mmd2": ok},
        "ddpm_type": {"nfe": nfe, "rms_flow": [None] * 4, "median_flow": [None] * 4, "mmd2": noisy},
        "ref_check": [1e-5] * 4,
    }
    b = rr.mc_block(res, {"spacing": "leading"}, 100, 50)
    assert list(b["results"]) == ["ddim", "ddpm_type"]
    assert math.isclose(b["results"]["ddim"]["slopes"]["mmd2"]["slope"], -1.0)
    assert b["results"]["ddpm_type"]["slopes"] == {"mmd2": None}  # two resolved points: no fit
    assert b["reference"]["rms_difference_to_twice_the_steps"] == [1e-5] * 4


def test_quoted_numbers_match_the_results_files():
    G = json.loads((repository_root() / "data" / "results" / "rates_gaussian.json").read_text())
    X1 = json.loads((repository_root() / "data" / "results" / "rates_exact_1d.json").read_text())
    q = rr.quoted_numbers(G, X1)
    v = G["results"]["paper"]["accelerated_ode"]["verdict"]
    assert q["v-g-paper-acc-ode-slope"] == (f"${v['local_slope_at_max_T']:.2f}$", True)
    assert q["v-g-paper-acc-ode-tlogt"] == (f"${v['local_slope_at_max_T_vs_T_over_logT']:.2f}$", True)
    f = X1["results"]["linear"]["ddpm_type"]["slope"]
    assert q["x1-ddpm-type-linear-slope"][0] == f"${f['value']:.2f}$ $[{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]$"
    assert q["x1-paper-T-max"] == (str(X1["results"]["paper"]["ddim"]["T"][-1]), False)
    assert q["v-log6-shift"] == (f"{6 / math.log(1000):.2f}", False)
