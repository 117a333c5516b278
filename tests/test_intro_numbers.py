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
    G = _results("rates_gaussian.json")["results"]
    X = _results("rates_exact_1d.json")["results"]
    gauss = lambda s, m: {"value": G[s][m]["slopes"]["tv"]["slope"], "ci": G[s][m]["slopes"]["tv"]["ci"]}
    expected = [
        _slope(gauss("paper", "accelerated_ode")), _slope(gauss("linear", "accelerated_ode")),
        f"${gauss('paper', 'ddim')['value']:.2f}$", f"${gauss('linear', 'ddim')['value']:.2f}$",
        _slope(X["paper"]["accelerated_ode"]["slope"]), _slope(X["linear"]["accelerated_ode"]["slope"]),
        f"${X['linear']['ddpm_type']['slope']['value']:.2f}$",
        f"${X['linear']['accelerated_sde']['slope']['value']:.2f}$",
    ]
    missing = [e for e in expected if e not in glance]
    assert not missing, f"the intro quotes other numbers than the results files: {missing}"


def test_five_nfe_distances_are_the_current_ones(glance):
    C = _results("learned_fmnist.json")["comparison"]
    expected = [_fd(C["uniform"]["ddim"]["5"]), _fd(C["uniform"]["accelerated_ode"]["5"])]
    expected += [f"{C[g][m]['5']['fd']['value']:.0f}" for g in ("quadratic", "trailing", "logsnr")
                 for m in ("ddim", "accelerated_ode")]
    missing = [e for e in expected if e not in glance]
    assert not missing, f"the intro quotes other numbers than learned_fmnist.json: {missing}"


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
