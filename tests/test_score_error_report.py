"""The chapter *When does the acceleration help?*: its tables say what the results and the update rules say."""

from __future__ import annotations

import re

from accelerated_diffusion.experiments import score_error_report as rep
from accelerated_diffusion.schedules import DiscreteSchedule, betas_for

SCHED = DiscreteSchedule(betas_for("linear", 1000, 1e-4, 0.02))


def _rows(table, width: int) -> list[list[str]]:
    """The body rows of an HTML table, the merged first column filled in."""
    body = str(table).split("<tbody>")[1]
    out, label = [], None
    for r in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S)
        if len(cells) == width:
            label = cells[0]
        else:
            cells = [label, *cells]
        out.append(cells)
    return out


def test_safeguarded_samplers_are_the_registry_role():
    assert rep.SAFEGUARDED == ("accelerated_ode_lambda", "accelerated_ode_capped")


def test_step_table_caps_exactly_the_steps_beyond_the_default_ratio():
    """The capped coefficient equals the paper's where the ratio of successive steps is at most 2 (the default
    cap) and is smaller where it is larger; trailing's second step at 5 NFE has ratio 16.3 and c = 10.0."""
    rows = _rows(rep.safeguard_step_table(SCHED, nfe=5), 6)
    assert len(rows) == 4 * 4
    seen_capped = 0
    for grid, t, ratio, paper, lam, capped in rows:
        if float(ratio) <= 2.0:
            assert capped == paper, (grid, t)
        else:
            assert float(capped) < float(paper), (grid, t)
            seen_capped += 1
    assert seen_capped >= 4
    trailing = [r for r in rows if r[0] == "trailing"]
    assert trailing[0][1:4] == ["799", "16.3", "10"]


def test_exponent_table_shows_every_sampler_and_nfe_of_the_results():
    """One row per kind and sampler, one column per NFE, each exponent with its interval from the results."""
    import json
    from pathlib import Path

    r = json.loads((Path(__file__).resolve().parents[1] / "data/results/score_error.json").read_text())
    p = r["perturbations"]
    table = rep.exponent_table(p, "fashion_mnist")
    rows = _rows(table, 5)
    names = p["settings"]["samplers"]
    assert len(rows) == 2 * len(names)
    cell = p["fashion_mnist"]["results"]["uniform"]["5"]["accelerated_ode"]["white"]["exponent"]
    text = f"{cell['value']:.2f} [{cell['ci'][0]:.2f}, {cell['ci'][1]:.2f}]".replace("-", "\u2212")
    assert text in [r[2] for r in rows if r[0] == "white" and r[1] == "acc. ODE"]
