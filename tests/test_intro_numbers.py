"""The intro's "Results at a glance" and the model card quote numbers from the results files; they must be the current
ones."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "data" / "results"


def _results(name):
    return json.loads((RESULTS / name).read_text())


@pytest.fixture(scope="module")
def glance():
    text = (ROOT / "chapters" / "intro.md").read_text()
    m = re.search(r"## Results at a glance\n(.*?)\n## ", text, re.S)
    assert m, "the intro has no 'Results at a glance' section"
    return m.group(1)


def _slope(f):
    return f"${f['value']:.2f}$ $[{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]$"


def _fd(cell):
    v, (lo, hi) = cell["fd"]["value"], cell["fd"]["ci"]
    return f"{v:.0f} $[{lo:.0f}, {hi:.0f}]$"


def test_rate_slopes_are_the_current_ones(glance):
    """The rates rows quote local slopes at the largest T (the `verdict` and `practical` entries of the results
    files, experiments.orders) and the verdicts they support."""
    G = _results("rates_gaussian.json")["results"]
    X = _results("rates_exact_1d.json")["results"]
    v = lambda R, s, m: R[s][m]["verdict"]
    num = lambda x: f"${x:.2f}$"
    expected = [
        num(v(G, "paper", "accelerated_ode")["local_slope_at_max_T"]),
        num(v(G, "paper", "accelerated_ode")["local_slope_at_max_T_vs_T_over_logT"]),
        num(v(G, "linear", "accelerated_ode")["local_slope_at_max_T"]),
        num(v(G, "paper", "ddim_type")["local_slope_at_max_T"]),
        num(v(G, "linear", "ddim_type")["local_slope_at_max_T"]),
        num(v(X, "paper", "accelerated_ode")["local_slope_at_max_T"]),
        num(v(X, "linear", "accelerated_ode")["local_slope_at_max_T"]),
        num(v(G, "linear", "accelerated_sde")["local_slope_at_max_T"]),
        num(v(G, "linear", "ddpm_type")["local_slope_at_max_T"]),
        num(v(X, "linear", "ddpm_type")["local_slope_at_max_T"]),
        num(v(X, "linear", "accelerated_sde")["local_slope_at_max_T"]),
    ]
    lo, hi = X["linear"]["ddpm_type"]["practical"]["slope_range"]
    expected.append(f"${lo:.2f}$ to ${hi:.2f}$")
    missing = [e for e in expected if e not in glance]
    assert not missing, f"the intro quotes other numbers than the results files: {missing}"
    # the verdicts the rows state
    assert v(G, "paper", "accelerated_ode")["verdict"] == "agrees up to log T"
    for R, s in ((G, "linear"), (X, "paper"), (X, "linear")):
        assert v(R, s, "accelerated_ode")["verdict"].startswith("not settled")
    assert v(X, "linear", "ddpm_type")["verdict"].startswith("not settled")
    assert X["linear"]["ddpm_type"]["practical"]["verdict"] == "agrees"
    assert all(
        v(R, s, "ddpm_type")["verdict"] == "faster"
        for R in (G, X)
        for s in ("paper", "linear")
        if v(R, s, "ddpm_type")["settled"]
    )


#: The learned-model verdicts come from the full-size run of learned_scores (chapters/params/fmnist-full.yaml).
FULL = "learned_fmnist_full.json"


def test_five_nfe_distances_are_the_current_ones(glance):
    C = _results(FULL)["comparison"]
    assert "1,000 samples" in glance and _results(FULL)["fd_num_samples"] == 1000
    expected = [_fd(C["uniform"]["ddim"]["5"]), _fd(C["uniform"]["accelerated_ode"]["5"])]
    expected += [
        f"{C[g][m]['5']['fd']['value']:.0f}"
        for g in ("quadratic", "trailing", "logsnr")
        for m in ("ddim", "accelerated_ode")
    ]
    missing = [e for e in expected if e not in glance]
    assert not missing, f"the intro quotes other numbers than {FULL}: {missing}"


def _diff(d):
    return f"{d['value']:.0f} $[{d['ci'][0]:.0f}, {d['ci'][1]:.0f}]$"


def test_paired_differences_are_the_current_ones(glance):
    """The accelerated-minus-DDIM differences the intro quotes: paired over the same noises, from the results, and
    the verdicts its rows state (lower at 10 NFE on three grids, higher on log-SNR; the exact first prediction
    turns the `trailing` verdict)."""
    R = _results(FULL)
    P, H = R["paired"], R["hybrid_first_step"]["paired"]
    expected = [_diff(P["uniform"]["5"]["accelerated_ode-ddim"])]
    expected += [_diff(P[g]["10"]["accelerated_ode-ddim"]) for g in ("uniform", "quadratic", "trailing", "logsnr")]
    expected += [_diff(H["first"]), _diff(H["model"])]
    missing = [e for e in expected if e not in glance]
    assert not missing, f"the intro quotes other paired differences than {FULL}: {missing}"
    assert all(P[g]["10"]["accelerated_ode-ddim"]["ci"][1] < 0 for g in ("uniform", "quadratic", "trailing"))
    assert P["logsnr"]["10"]["accelerated_ode-ddim"]["ci"][0] > 0
    assert H["model"]["ci"][0] > 0 > H["first"]["ci"][1]
    # "on each of the first three grids the accelerated ODE sampler has the lowest FD or is not separated from it"
    from accelerated_diffusion.experiments.comparison_report import map_marks

    grid_best = map_marks(R, 10)["grid_best"]
    assert all("accelerated_ode" in grid_best[g] for g in ("uniform", "quadratic", "trailing"))
    assert "accelerated_ode" not in grid_best["logsnr"]


def _ci1(c):
    return f"{c['value']:.1f} [{c['ci'][0]:.1f}, {c['ci'][1]:.1f}]"


def test_model_card_quotes_the_current_model_quality():
    """The model card's quality table: every checkpoint's FD, its change from the first, and the floor."""
    card = (ROOT / "data" / "fmnist-ddpm" / "MODEL_CARD.md").read_text()
    q = _results("model_quality_fmnist.json")
    expected = [_ci1(q["real_data_floor"])]
    for c in q["checkpoints"]:
        expected.append(_ci1(c["fd"]))
        if c.get("change"):
            expected.append(_ci1(c["change"]))
    expected.append(f"**{q['shipped_step']:,}** optimiser steps")
    missing = [e for e in expected if e not in card]
    assert not missing, f"the model card quotes other numbers than model_quality_fmnist.json: {missing}"


def test_score_error_row_quotes_the_current_results(glance):
    """The 'why it fails' row: the share of the trailing gap removed by the exact first prediction and the
    lambda-extrapolated sampler minus DDIM at 5 NFE, from score_error.json."""
    r = _results("score_error.json")
    share = r["hybrids"]["share_removed"]["trailing"]["ref@999"]["fd"]
    lo, hi = (100 * v for v in share["ci"])
    expected = [f"${100 * share['value']:.0f}\\,\\%$ $[{lo:.0f}, {hi:.0f}]$"]
    for g in ("uniform", "trailing", "logsnr"):
        d = r["safeguards"]["paired"][g]["5"]["accelerated_ode_lambda-ddim"]
        expected.append(f"${d['value']:.0f}$ $[{d['ci'][0]:.0f}, {d['ci'][1]:.0f}]$")
        assert d["ci"][1] < 0
    missing = [e for e in expected if e not in glance]
    assert not missing, f"the intro quotes other numbers than score_error.json: {missing}"
