"""The tables, figures and sentences of the chapter *Learned scores* (experiments/comparison_report.py), built from
its results dict: numbers, HTML tables with their paired marks, the summary figure, the sentences of the
findings, and the two generation helpers the chapter no longer defines itself."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch

from accelerated_diffusion.experiments import comparison as cmp
from accelerated_diffusion.experiments import comparison_report as rep
from accelerated_diffusion.schedules import DiscreteSchedule

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = json.loads((ROOT / "data" / "results" / "learned_fmnist.json").read_text())
QUALITY = ROOT / "data" / "results" / "model_quality_fmnist.json"
SCHED = DiscreteSchedule.from_diffusers("linear")


def _c(v, lo, hi):
    return {"value": v, "ci": [lo, hi]}


def _results(paired_tie: bool) -> dict:
    """Two grids x two samplers at 5 NFE. The marginal intervals of (a, ddim) and the best (a, acc) overlap;
    the paired difference of that cell from the best excludes 0 unless ``paired_tie``."""
    comp = {
        "a": {"ddim": {"5": {"fd": _c(60, 40, 90)}}, "accelerated_ode": {"5": {"fd": _c(50, 30, 80)}}},
        "b": {"ddim": {"5": {"fd": _c(200, 180, 220)}}, "accelerated_ode": {"5": {"fd": _c(100, 90, 110)}}},
    }
    d_ddim = _c(10, -2, 20) if paired_tie else _c(10, 4, 16)
    zero = _c(0, 0, 0)
    return {
        "grids": ["a", "b"],
        "samplers": {"ddim": "DDIM", "accelerated_ode": "accelerated ODE"},
        "fd_num_samples": 64,
        "comparison": comp,
        "paired_map": {
            "5": {
                "best": {"grid": "a", "sampler": "accelerated_ode"},
                "diff": {
                    "a": {"ddim": d_ddim, "accelerated_ode": zero},
                    "b": {"ddim": _c(150, 130, 170), "accelerated_ode": _c(50, 30, 70)},
                },
            }
        },
        "paired": {
            "a": {
                "5": {
                    "ddim": {"vs": "accelerated_ode", "diff": d_ddim},
                    "accelerated_ode": {"vs": "accelerated_ode", "diff": zero},
                    "accelerated_ode-ddim": _c(-10, -20, -2) if not paired_tie else _c(-10, -20, 2),
                }
            },
            "b": {
                "5": {
                    "ddim": {"vs": "accelerated_ode", "diff": _c(100, 80, 120)},
                    "accelerated_ode": {"vs": "accelerated_ode", "diff": zero},
                    "accelerated_ode-ddim": _c(-100, -120, -80),
                }
            },
        },
    }


def test_numbers_are_written_without_exponents_and_with_integers_from_100():
    assert rep.num(957.2) == "957" and rep.num(1033.4) == "1033" and rep.num(4358.9) == "4359"
    assert rep.num(77.23) == "77.2" and rep.num(7.0) == "7" and rep.num(0.008317) == "0.00832"
    assert rep.num(-224.3, minus=rep.MINUS) == "\u2212224" and rep.num(-0.0001) == "-0.0001"
    assert rep.num(None) == "\u2013" and rep.num(float("nan")) == "\u2013"
    # the old text helper writes 1.03e+03; the tables write 1033
    assert rep.interval(_c(957, 854, 1033.4)) == "957 [854, 1033]"
    assert rep.interval(_c(-40.43, -74.0, -7.521)) == "-40.4 [-74, -7.52]"


def test_html_table_merges_repeated_row_labels_and_renders_marks():
    t = rep.html_table(
        ["NFE", "grid", "value"],
        [
            ["5 NFE", "a", {"text": "1", "bold": True}],
            ["5 NFE", "b", {"text": "2", "shade": True, "mark": "*"}],
            ["10 NFE", "a", "3 < 4"],
        ],
        row_labels=2,
        caption="Table 1. Test.",
    )
    h = str(t)
    assert h.count('rowspan="2"') == 1 and h.count(">5 NFE<") == 1 and h.count(">a<") == 2  # "a" under 10 NFE kept
    assert "<strong>1</strong>" in h and '<td class="ad-shade">2<sup class="ad-mark">*</sup></td>' in h
    assert "3 &lt; 4" in h and "<caption>Table 1. Test.</caption>" in h
    assert t._repr_html_() == h and repr(t) == "<Table 1 (HTML)>"
    with pytest.raises(ValueError, match="every row needs 3 cells"):
        rep.html_table(["a", "b", "c"], [["1", "2"]])


@pytest.mark.parametrize("paired_tie", [False, True])
def test_map_marks_come_from_the_paired_differences_not_the_intervals(paired_tie):
    r = _results(paired_tie)
    m = rep.map_marks(r, 5)
    assert m["best"] == ("a", "accelerated_ode")
    # the marginal intervals of (a, ddim) overlap the best's: only the paired difference decides
    assert (("a", "ddim") in m["tied"]) is paired_tie
    assert m["grid_best"]["a"] == ({"accelerated_ode", "ddim"} if paired_tie else {"accelerated_ode"})
    assert m["grid_best"]["b"] == {"accelerated_ode"}
    h = str(rep.map_table(r, (5,)))
    assert h.count('class="ad-shade"') == len(m["tied"]) == (2 if paired_tie else 1)
    assert "paired difference" in h


def test_map_marks_fall_back_to_interval_overlap_without_paired_differences():
    r = _results(False)
    del r["paired_map"], r["paired"]
    m = rep.map_marks(r, 5)
    assert ("a", "ddim") in m["tied"]  # the marginal intervals overlap
    assert "interval overlap" in str(rep.map_table(r, (5,)))


def test_pair_rows_table_and_sentence_follow_the_paired_verdicts():
    r = _results(False)
    rows = rep.pair_rows(r, 5)
    assert [(x["grid"], x["verdict"]) for x in rows] == [("a", "lower"), ("b", "lower")]
    r2 = _results(True)
    assert [x["verdict"] for x in rep.pair_rows(r2, 5)] == ["not separated", "lower"]
    s = rep.pair_sentence(r2, 5)
    assert "lower than DDIM's on b (\u2212100 [\u2212120, \u221280])" in s and "not separated on a" in s
    h = str(rep.pair_table(r2, (5,), number=3))
    assert h.startswith('<div class="ad-table">') and "Table 3." in h and h.count("<strong>") == 1


def test_recommendation_sentence_names_few_ties_and_counts_many():
    assert rep.recommendation_sentence(_results(True), 5).endswith("not separated from it: DDIM on a")
    assert rep.recommendation_sentence(_results(False), 5).endswith("every other cell is separated from it")
    s = rep.recommendation_sentence(SHIPPED, 10)
    n = len(rep.map_marks(SHIPPED, 10)["tied"]) - 1
    assert (f"{n} other cells" in s) is (n > 3)


def test_every_table_renders_from_the_shipped_results_and_nothing_breaks_without_them():
    tables = [
        rep.pair_table(SHIPPED, number=1),
        rep.map_table(SHIPPED, number=2),
        rep.map_table(SHIPPED, (4, 5, 8, 10), "pf"),
        rep.peer_table(SHIPPED),
        rep.pf_check_table(SHIPPED),
        rep.final_noise_table(SHIPPED),
        rep.step_table(SHIPPED),
        rep.control_table(SHIPPED),
        rep.hybrid_table(SHIPPED),
    ]
    assert all(isinstance(t, rep.Table) for t in tables)
    fd = SHIPPED["comparison"]["logsnr"]["accelerated_ode"]["5"]["fd"]
    assert rep.interval(fd, minus=rep.MINUS).replace(", ", ",&nbsp;").split(" ")[0] in str(tables[1])
    assert "e+0" not in "".join(str(t) for t in tables)  # no exponent form in any table
    # the last-step noise table names its NFE: the results' figure-2 NFE, or the one passed (the chapter's
    # results before they are complete hold no figure2 entry)
    assert f"{SHIPPED['figure2']['nfe']} NFE" in str(tables[5])
    partial = {k: v for k, v in SHIPPED.items() if k != "figure2"}
    assert "7 NFE" in str(rep.final_noise_table(partial, nfe=7))
    with pytest.raises(ValueError, match="needs nfe"):
        rep.final_noise_table(partial)
    if QUALITY.exists():
        assert "training step" in str(rep.quality_table(json.loads(QUALITY.read_text())))
    # a run that measured nothing (the paper-checkpoint path): every function answers, nothing raises
    empty = {"grids": ["uniform"], "samplers": {"accelerated_ode": "x"}, "comparison": {"uniform": {}}}
    for f in (
        rep.pair_table,
        rep.map_table,
        rep.peer_table,
        rep.pf_check_table,
        rep.final_noise_table,
        rep.step_table,
        rep.control_table,
        rep.hybrid_table,
        rep.summary_figure,
        rep.pf_figure,
    ):
        assert f(empty) is None, f.__name__
    for f in (rep.pair_sentence, rep.recommendation_sentence):
        assert f(empty, 5) == "not measured"
    assert rep.trailing_sentence(empty) == rep.final_noise_sentence(empty) == "not measured"
    assert rep.yardstick(empty) is None


def test_yardstick_is_each_samplers_share_of_the_first_error():
    r = copy.deepcopy(SHIPPED)
    d = r["step_diagnostics"]["trailing"]["5"]
    delta = r["exact_score_control"]["model_eps_error"][str(d[0]["t"])]
    y = rep.yardstick(r)
    assert y["accelerated"] == pytest.approx(abs(d[1]["c"]) * delta / math.sqrt(d[1]["alpha_bar_prev"]))
    assert y["ddim"] == pytest.approx(abs(d[0]["c_eps"]) * delta / math.sqrt(d[0]["alpha_bar_prev"]))
    r["exact_score_control"]["model_eps_error"] = {str(d[0]["t"]): 2 * delta}
    assert rep.yardstick(r)["ddim"] == pytest.approx(2 * y["ddim"])


def test_checked_summary_stays_within_the_text_column_and_matches_the_verdicts():
    text = rep.checked_summary(SHIPPED)
    assert max(len(line) for line in text.splitlines()) <= 77
    for k in (5, 10):
        for r in rep.pair_rows(SHIPPED, k):
            assert re.search(rf"{r['grid']} +{re.escape(rep.interval(r['diff']))} +{r['verdict']}", text)


def test_summary_figure_stars_the_lowest_cell_and_colours_its_ties():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = _results(True)
    fig = rep.summary_figure(r, 5)
    try:
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title().split("\n")[0] for ax in axes] == ["a", "b"]
        stars = [ax.get_title()[0] for ax in axes for ln in ax.lines if ln.get_marker() == "*"]
        assert stars == ["a"]
        orange = [
            (ax.get_title()[0], ln.get_marker())
            for ax in axes
            for ln in ax.lines
            if ln.get_marker() in ("o", "*") and matplotlib.colors.same_color(ln.get_color(), "tab:orange")
        ]
        assert sorted(orange) == [("a", "*"), ("a", "o")]  # the best and its paired tie, nothing on grid b
        assert "\u0394 = \u221210 [\u221220, 2]" in axes[0].get_title()
    finally:
        plt.close(fig)


def test_last_step_noise_std_matches_the_shipped_final_noise():
    std = rep.last_step_noise_std(SCHED, "trailing", 5)
    for s, r in SHIPPED["final_noise"].items():
        assert std[s] == pytest.approx(r["final_noise_std"], rel=1e-9)
    assert rep.last_step_noise_std(SCHED, "uniform", 5)["ddpm_type"] < 0.05  # last step starts at t = 0


def test_figure_rows_leave_a_gap_where_a_grid_cannot_have_the_steps():
    noise = cmp.initial_noise(2, (1, 2, 2), seed=0)
    calls = []

    def eps_fn(x, t):
        calls.append(int(t))
        return torch.zeros_like(x)

    rows = rep.figure_rows(eps_fn, SCHED, noise, [5, 50], grids=["uniform", "quadratic"], names=["ddim"])
    assert list(rows) == [("uniform", "ddim"), ("quadratic", "ddim")]
    assert [x is None for x in rows["uniform", "ddim"]] == [False] * 4
    assert [x is None for x in rows["quadratic", "ddim"]] == [False, False, True, True]
    assert rep.row_label(("quadratic", "ddim")) == "DDIM\nquadratic"


def test_advice_numbers_quote_the_cells_and_paired_verdicts_of_the_results():
    """The advice page's numbers: every quoted cell is the results' interval, the lowest cells come from the
    paired map, and the best stochastic cell at 5 NFE is separated (higher) from the lowest cell."""
    res = json.loads((Path(__file__).resolve().parents[1] / "data/results/learned_fmnist.json").read_text())
    out = rep.advice_numbers(res)
    comp = res["comparison"]
    assert out["ws-n"] == str(res["fd_num_samples"])
    for s, g, k in rep.ADVICE_CELLS:
        assert out[f"ws-{s}-{g}-{k}"] == rep.interval(comp[g][s][str(k)]["fd"])
    for k in (5, 10):
        best = cmp.recommend(
            comp, k, "fd", grids=res["grids"], names=list(res["samplers"]), paired=res["paired_map"][str(k)]
        )
        assert out[f"ws-best{k}"].endswith(rep.interval(best["best"]))
        assert out[f"ws-rec{k}"] == rep.recommendation_sentence(res, k)
        assert out[f"ws-rec{k}"].startswith(out[f"ws-best{k}"].split(",")[0])
        assert out[f"ws-best{k}"].startswith(f"{cmp.samplers.label(best['best']['sampler'])} on {best['best']['grid']}")
    assert out["ws-sto-diff5"].endswith(", higher")
    lo, hi = out["ws-ddpm-range"].split(" to ")
    values = [comp[g]["ddpm_type"][k]["fd"]["value"] for g in res["grids"] for k in ("5", "10")]
    assert (lo, hi) == (f"{min(values):,.0f}", f"{max(values):,.0f}")
