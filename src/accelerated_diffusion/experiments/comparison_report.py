r"""Tables, figures and sentences of the chapter *Learned scores*, built from its results dict.

Every function here takes the dict the chapter writes to ``data/results/<results_name>.json`` (schema
``learned_scores/3``, ``data/results/README.md``) or a block of it, so the same call renders the chapter's default
run, its full-size run (``learned_fmnist_full.json``) and its GPU run.  Nothing here computes a measurement; the
verdicts come from :mod:`.comparison` (:func:`~.comparison.classify`, :func:`~.comparison.recommend`).

* numbers: :func:`~.tables.num` and :func:`~.tables.interval` (``957 [854, 1030]``: values of 100 or more as
  integers, others to 3 significant digits, never in exponent form), re-exported from :mod:`.tables`;
* HTML tables (:class:`~.tables.Table`, shown by Jupyter through ``_repr_html_``; :func:`~.tables.html_table`
  builds them; both re-exported from :mod:`.tables`):
  :func:`peer_table`, :func:`pf_check_table`, :func:`pair_table` (accelerated DDIM against DDIM per grid),
  :func:`map_table` (the sampler x grid map with its paired marks), :func:`noise_std_table`,
  :func:`final_noise_table`, :func:`step_table`, :func:`control_table`, :func:`hybrid_table`,
  :func:`quality_table`;
* figures: :func:`summary_figure` (the map at one NFE as intervals per grid, with the paired marks) and
  :func:`pf_figure` (distance to the probability-flow solution against NFE);
* sentences for the findings: :func:`pair_sentence`, :func:`recommendation_sentence`, :func:`trailing_sentence`,
  :func:`yardstick`, :func:`control_sentence`, :func:`final_noise_sentence`; :func:`checked_summary` prints the
  key numbers compactly (the chapter's output checked by nbval);
* the chapter's two generation helpers: :func:`figure_rows` (the images of its Figures 1 and 2) and
  :func:`last_step_noise_std` (the standard deviation of the paper-form last-step noise).

matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

import math

from .. import samplers, updates
from . import comparison as cmp
from .tables import MINUS, Table, html_table, interval, num

__all__ = [
    "MINUS",
    "num",
    "interval",
    "Table",
    "html_table",
    "verdict_word",
    "pair_rows",
    "pair_table",
    "map_marks",
    "map_table",
    "peer_table",
    "pf_check_table",
    "noise_std_table",
    "final_noise_table",
    "step_table",
    "control_table",
    "hybrid_table",
    "quality_table",
    "summary_figure",
    "pf_figure",
    "pair_sentence",
    "recommendation_sentence",
    "trailing_sentence",
    "yardstick",
    "control_sentence",
    "final_noise_sentence",
    "checked_summary",
    "advice_numbers",
    "figure_rows",
    "row_label",
    "last_step_noise_std",
]

#: The pair the paper's Figures 1 and 2 compare: (accelerated, baseline).
PAIR = ("accelerated_ode", "ddim")


def _caption(number, text: str) -> str:
    return f"Table {number}. {text}" if number is not None else text


# ----------------------------------------------------------------------------------------------------------------
# Accelerated DDIM against DDIM, per grid
# ----------------------------------------------------------------------------------------------------------------
_WORDS = {-1: "lower", 1: "higher", 0: "not separated"}


def verdict_word(diff: dict | None) -> str:
    """The verdict of a paired difference (accelerated minus DDIM): ``lower``, ``higher`` or ``not separated``
    (:func:`.comparison.classify`)."""
    return _WORDS[cmp.classify(diff)]


def _fd(results: dict, grid: str, name: str, nfe, metric: str = "fd"):
    return ((results.get("comparison") or {}).get(grid, {}).get(name, {}).get(str(nfe)) or {}).get(metric)


def pair_rows(results: dict, nfe, pair=PAIR) -> list[dict]:
    """Per grid of ``results``, the Fréchet distances of ``pair`` (accelerated, baseline) at ``nfe`` and the
    paired difference accelerated minus baseline (``results["paired"][grid][nfe]["<a>-<b>"]``), with its
    verdict: ``[{"grid", "accelerated", "baseline", "diff", "verdict"}]``; grids where either distance is
    missing are left out."""
    a, b = pair
    rows = []
    for g in results.get("grids", []):
        fa, fb = _fd(results, g, a, nfe), _fd(results, g, b, nfe)
        if not fa or not fb:
            continue
        d = (results.get("paired") or {}).get(g, {}).get(str(nfe), {}).get(f"{a}-{b}")
        rows.append({"grid": g, "accelerated": fa, "baseline": fb, "diff": d, "verdict": verdict_word(d)})
    return rows


def pair_table(results: dict, nfes=(5, 10), *, number=None, pair=PAIR) -> Table | None:
    """Accelerated DDIM against DDIM on every grid (rows: NFE, grid): both Fréchet distances with their 95%
    intervals, their paired difference (same noises) and its verdict; ``None`` when nothing was measured."""
    rows = []
    for k in nfes:
        for r in pair_rows(results, k, pair):
            d = r["diff"]
            rows.append(
                [
                    f"{k} NFE",
                    r["grid"],
                    {"html": interval(r["baseline"], minus=MINUS, html=True)},
                    {"html": interval(r["accelerated"], minus=MINUS, html=True)},
                    {"html": interval(d, minus=MINUS, html=True), "bold": cmp.classify(d) != 0},
                    r["verdict"],
                ]
            )
    if not rows:
        return None
    n = results.get("fd_num_samples")
    a, b = (samplers.label(s) for s in pair)
    return html_table(
        ["NFE", "grid", b, a, f"{a} {MINUS} {b}", "accelerated"],
        rows,
        row_labels=2,
        caption=_caption(
            number,
            f"Fréchet distance of {b} and {a} on every grid ({n} samples each, the same noises; 95% bootstrap "
            "intervals) and their paired difference (both sample sets resampled at the same rows); bold: the "
            "difference is separated from 0.",
        ),
    )


# ----------------------------------------------------------------------------------------------------------------
# The sampler x grid map
# ----------------------------------------------------------------------------------------------------------------
def _paired_blocks(results: dict, metric: str) -> tuple[dict, dict]:
    """``(paired_map, paired)`` of ``metric``: the map-wide and the per-grid paired differences."""
    if metric == "fd":
        return results.get("paired_map") or {}, results.get("paired") or {}
    pf = results.get("pf_paired") or {}
    return pf.get("paired_map") or {}, pf.get("paired") or {}


def _names(results: dict, metric: str) -> list[str]:
    names = list(results.get("samplers") or [])
    if metric == "pf":
        names = [s for s in names if s not in samplers.STOCHASTIC]
    return names


def map_marks(results: dict, nfe, metric: str = "fd") -> dict | None:
    """The marks of the map at ``nfe``: ``{"best": (grid, sampler), "tied": {(grid, sampler), ...},
    "grid_best": {grid: {sampler, ...}}}``. ``tied``: the lowest value of the whole map and every cell whose
    paired difference from it (``paired_map``) is not separated from 0 (:func:`.comparison.recommend`);
    ``grid_best``: per grid, the lowest value on that grid and every sampler whose paired difference from it
    (``paired[grid][nfe][sampler]``) is not separated from 0.  Without paired differences the marginal
    intervals decide (:func:`.comparison.separated`).  ``None`` when nothing was measured at ``nfe``."""
    grids, names = results.get("grids", []), _names(results, metric)
    comp = results.get("comparison") or {}
    pm, pg = _paired_blocks(results, metric)
    try:
        rec = cmp.recommend(comp, nfe, metric, grids=grids, names=names, paired=pm.get(str(nfe)))
    except ValueError:
        return None
    tied = {(rec["best"]["grid"], rec["best"]["sampler"])} | {(t["grid"], t["sampler"]) for t in rec["ties"]}
    grid_best = {}
    for g in grids:
        block = cmp.grid_block(pg, g, nfe)
        try:
            r = cmp.recommend(comp, nfe, metric, grids=[g], names=names, paired=block)
        except ValueError:
            continue
        grid_best[g] = {r["best"]["sampler"]} | {t["sampler"] for t in r["ties"]}
    return {"best": (rec["best"]["grid"], rec["best"]["sampler"]), "tied": tied, "grid_best": grid_best, "rec": rec}


_METRIC = {
    "fd": "Fréchet distance",
    "pf": "distance to the probability-flow solution (RMS over noises, pixel scale [-1, 1])",
}


def map_table(results: dict, nfes=(5, 10), metric: str = "fd", *, number=None) -> Table | None:
    """The sampler x grid map (rows: NFE, sampler; columns: grids): the value and its 95% interval in each
    cell; shaded with ``*``: the lowest value at that NFE and every cell not separated from it by the paired
    difference; bold: the lowest on its grid and every sampler there not separated from it (:func:`map_marks`).
    ``None`` when nothing was measured."""
    grids, names = results.get("grids", []), _names(results, metric)
    rows = []
    for k in nfes:
        marks = map_marks(results, k, metric)
        if marks is None:
            continue
        for s in names:
            row = [f"{k} NFE", cmp.short_label(s)]
            for g in grids:
                c = _fd(results, g, s, k, metric)
                tied = (g, s) in marks["tied"]
                row.append(
                    {
                        "html": interval(c, minus=MINUS, html=True),
                        "bold": s in marks["grid_best"].get(g, ()),
                        "shade": tied,
                        "mark": "*" if tied else "",
                    }
                )
            rows.append(row)
    if not rows:
        return None
    how = "paired difference (same noises)" if _paired_blocks(results, metric)[0] else "interval overlap"
    size = (
        f"{results.get('fd_num_samples')} samples per value"
        if metric == "fd"
        else f"{results.get('pf_num_samples')} noises per value"
    )
    legend = "; ".join(
        f"{cmp.short_label(s)} = {samplers.label(s)}" for s in names if cmp.short_label(s) != samplers.label(s)
    )
    return html_table(
        ["NFE", "sampler", *grids],
        rows,
        row_labels=2,
        caption=_caption(
            number,
            f"{_METRIC[metric][0].upper()}{_METRIC[metric][1:]} of every sampler on every grid, {size}, 95% "
            f"intervals. Shaded, with *: the lowest value at that NFE and every cell not separated from it by the "
            f"{how}. Bold: the lowest on its grid and the samplers there not separated from it.",
        ),
        notes=legend,
    )


# ----------------------------------------------------------------------------------------------------------------
# The other tables
# ----------------------------------------------------------------------------------------------------------------
def peer_table(results: dict, *, number=None) -> Table | None:
    """diffusers' own schedulers against the library's loops (``results["peer_check"]``): the largest absolute
    difference per grid and NFE, ``-`` where diffusers cannot visit the grid."""
    pc = results.get("peer_check")
    if not pc:
        return None
    peers = list(next(iter(next(iter(pc.values())).values())))
    rows = [
        [g, f"{k} NFE", *("\u2013" if row.get(p) is None else f"{row[p]:.0e}" for p in peers)]
        for g, by_nfe in pc.items()
        for k, row in by_nfe.items()
    ]
    return html_table(
        ["grid", "NFE", *(samplers.label(p) for p in peers)],
        rows,
        row_labels=2,
        caption=_caption(
            number,
            "Largest absolute difference between diffusers' schedulers (float32) and the library's loops "
            "(float64), same noises, pixel scale [-1, 1]; \u2013: diffusers cannot visit the grid.",
        ),
    )


def pf_check_table(results: dict, *, number=None) -> Table | None:
    """The probability-flow reference's own error per start level (``results["pf_reference"]["check"]``):
    RMS difference to its half-step solve, the smallest distance it measures, their ratio and the verdict."""
    ref = results.get("pf_reference") or {}
    check = ref.get("check") or {}
    if not check:
        return None
    bound = ref.get("max_ratio", 0.05)
    rows = [
        [
            f"t = {t}",
            f"{r['rms_vs_half']:.2g}",
            num(r["smallest_distance"]),
            "\u2013" if r["ratio"] is None else f"{r['ratio']:.2f}",
            {"text": "resolved" if r["ok"] else "not resolved", "bold": not r["ok"]},
        ]
        for t, r in check.items()
    ]
    return html_table(
        ["start level", "error", "smallest distance", "ratio", "distances"],
        rows,
        caption=_caption(
            number,
            f"The probability-flow reference ({ref.get('nfe')} float64 steps): its RMS difference to the solve "
            f"with half as many steps (error), against the smallest distance measured from that start level; "
            f"the distances are resolved when the ratio is below {bound:g}.",
        ),
    )


def noise_std_table(stds: dict, nfe, *, number=None) -> Table:
    """``stds[grid][sampler]``, the standard deviation of the paper-form last-step noise
    (:func:`last_step_noise_std`), as a table (rows grids)."""
    grids = list(stds)
    names = list(stds[grids[0]])
    return html_table(
        ["grid", *(samplers.label(s) for s in names)],
        [[g, *(f"{stds[g][s]:.3f}" for s in names)] for g in grids],
        caption=_caption(number, f"Standard deviation of the noise the paper's form adds on the last step, {nfe} NFE."),
    )


def final_noise_table(results: dict, *, nfe=None, number=None) -> Table | None:
    """The stochastic samplers with and without the paper-form last-step noise (``results["final_noise"]``) at
    ``nfe`` (default: the results file's ``figure2`` NFE, the one the chapter measures them at)."""
    fz = results.get("final_noise")
    if not fz:
        return None
    nfe = nfe if nfe is not None else (results.get("figure2") or {}).get("nfe")
    if nfe is None:
        raise ValueError("final_noise_table needs nfe: the results hold no figure2 NFE")
    rows = [
        [
            samplers.label(s),
            f"{r['final_noise_std']:.2f}",
            {"html": interval(r["fd_with"], minus=MINUS, html=True)},
            {"html": interval(r["fd_without"], minus=MINUS, html=True)},
        ]
        for s, r in fz.items()
    ]
    return html_table(
        ["sampler", "noise std", "FD with", "FD without"],
        rows,
        caption=_caption(
            number,
            f"Fréchet distance with and without the paper's last-step noise, {nfe} NFE, "
            f"{results.get('fd_num_samples')} samples, same noises and noise stream; 95% intervals.",
        ),
    )


def step_table(results: dict, grids=None, nfes=("4", "5"), *, number=None) -> Table | None:
    """Per step of the accelerated deterministic sampler (``results["step_diagnostics"]``): training step,
    ``alpha_bar`` before and after, the extrapolation ratio, its correction coefficient ``c`` and DDIM's
    ``c_eps``; bold where the ratio exceeds 10."""
    diag = results.get("step_diagnostics") or {}
    rows = []
    for g in grids or list(diag):
        for k in nfes:
            for r in diag.get(g, {}).get(str(k), []):
                big = r["ratio"] is not None and r["ratio"] > 10
                rows.append(
                    [
                        g,
                        f"{k} NFE",
                        str(r["step"]),
                        str(r["t"]),
                        f"{r['alpha_bar_t']:.3g} \u2192 {r['alpha_bar_prev']:.3g}",
                        {"text": "\u2013" if r["ratio"] is None else num(r["ratio"]), "bold": big},
                        {"text": "\u2013" if r["c"] is None else num(r["c"]), "bold": big},
                        num(r["c_eps"], minus=MINUS),
                    ]
                )
    if not rows:
        return None
    return html_table(
        ["grid", "NFE", "step", "t", "\u1fb1 before \u2192 after", "ratio", "c", "c_eps"],
        rows,
        row_labels=2,
        caption=_caption(
            number,
            "Per step of the accelerated deterministic sampler: the extrapolation ratio (length in \u1fb1 of the "
            "step over that of the step its two evaluations span), the coefficient c of its correction and "
            "DDIM's coefficient c_eps of the noise prediction; bold: ratio above 10.",
        ),
    )


def control_table(results: dict, *, number=None, pair=PAIR) -> Table | None:
    """The exact-score control (``results["exact_score_control"]``): per grid and NFE, the distance to the
    probability-flow solution of both samplers with the mixture's exact noise prediction, their paired
    difference, and the same two with the learned model (from ``results["comparison"]``)."""
    ctl = results.get("exact_score_control")
    if not ctl:
        return None
    a, b = pair
    rows = []
    for g, by_name in ctl["values"].items():
        for k in by_name[b]:
            d = ctl["paired"].get(g, {}).get(k)
            rows.append(
                [
                    g,
                    f"{k} NFE",
                    {"html": interval(by_name[b][k], minus=MINUS, html=True)},
                    {"html": interval(by_name[a][k], minus=MINUS, html=True)},
                    {"html": interval(d, minus=MINUS, html=True), "bold": cmp.classify(d) != 0},
                    num((_fd(results, g, b, k, "pf") or {}).get("value")),
                    num((_fd(results, g, a, k, "pf") or {}).get("value")),
                ]
            )
    la, lb = cmp.short_label(a), cmp.short_label(b)
    return html_table(
        ["grid", "NFE", lb, la, f"{la} {MINUS} {lb}", lb, la],
        rows,
        row_labels=2,
        groups=[("", 2), ("exact scores (mixture)", 3), ("learned", 2)],
        caption=_caption(
            number,
            f"Distance to the probability-flow solution with the exact noise prediction of the mixture "
            f"({ctl.get('num_samples')} noises, 95% intervals; the difference paired over the same noises; bold: "
            f"separated from 0), and with the learned model ({results.get('pf_num_samples')} noises).",
        ),
    )


def hybrid_table(results: dict, *, number=None, pair=PAIR) -> Table | None:
    """The hybrids (``results["hybrid_first_step"]``): Fréchet distances of both samplers with the exact noise
    prediction at the first evaluation, at the first two, and of the model alone, and the paired differences."""
    h = results.get("hybrid_first_step")
    if not h or "paired" not in h:
        return None
    a, b = pair
    t1, t2 = h["first_two_t"]
    model = {s: _fd(results, h["grid"], s, h["nfe"]) for s in pair}
    cols = [f"exact at t = {t1}", f"exact at t = {t1}, {t2}", "model alone"]
    rows = [
        [
            samplers.label(s),
            *({"html": interval(c, minus=MINUS, html=True)} for c in (h[s], h["first_two"][s], model[s])),
        ]
        for s in (b, a)
    ]
    rows.append(
        [
            f"{cmp.short_label(a)} {MINUS} {cmp.short_label(b)}",
            *(
                {"html": interval(h["paired"][v], minus=MINUS, html=True), "bold": cmp.classify(h["paired"][v]) != 0}
                for v in ("first", "first_two", "model")
            ),
        ]
    )
    return html_table(
        ["", *cols],
        rows,
        caption=_caption(
            number,
            f"Fréchet distance on {h['grid']} at {h['nfe']} NFE ({results.get('fd_num_samples')} samples, 95% "
            "intervals) with the mixture's exact noise prediction in place of the model's at the first "
            "evaluation(s); last row: the paired difference (bold: separated from 0).",
        ),
    )


def quality_table(q: dict, *, number=None) -> Table:
    """The model-quality measurement (``data/results/model_quality_fmnist.json``): per training checkpoint, its
    Fréchet distance, its ratio to the real-data floor and its paired change from the first checkpoint."""
    fl = q["real_data_floor"]
    rows = [["real data", "\u2013", {"html": interval(fl, minus=MINUS, html=True)}, "1", "\u2013"]]
    for c in q["checkpoints"]:
        d = c.get("change")
        rows.append(
            [
                "model",
                str(c["step"]) + (" (shipped)" if c["step"] == q.get("shipped_step") else ""),
                {"html": interval(c["fd"], minus=MINUS, html=True)},
                f"{c['fd']['value'] / fl['value']:.2f}",
                {"html": interval(d, minus=MINUS, html=True)} if d else "\u2013",
            ]
        )
    return html_table(
        ["", "training step", "FD", "\u00d7 floor", "change (paired)"],
        rows,
        caption=_caption(
            number,
            f"{samplers.label(q['sampler'])}, {q['spacing']} grid, {q['nfe']} NFE, {q['n']} samples per value, "
            f"95% intervals; real data: {fl.get('n', q['n'])} training images (the floor).",
        ),
    )


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------
def summary_figure(results: dict, nfe=5, metric: str = "fd", *, fontsize: int = 9, figsize=(5.2, 6.0)):
    """The map at ``nfe`` as one panel per grid (2 x 2): each sampler's value with its 95% interval on a log
    axis; filled orange: the lowest value of the map and every cell not separated from it by the paired
    difference (a star on the lowest), grey: separated from it; each panel's title gives the paired difference
    accelerated DDIM minus DDIM on that grid (``\u0394``).  For ``fd`` the real-data floor's range over subsets is shaded.
    Returns the figure (``None`` when nothing was measured)."""
    import matplotlib.pyplot as plt

    marks = map_marks(results, nfe, metric)
    if marks is None:
        return None
    grids, names = results.get("grids", []), _names(results, metric)
    ncol = 2 if len(grids) > 1 else 1
    nrow = -(-len(grids) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=figsize, sharex=True, sharey=True, squeeze=False)
    vals = [c for g in grids for s in names if (c := _fd(results, g, s, nfe, metric))]
    lo = min(c["ci"][0] for c in vals if c["ci"][0] > 0) if any(c["ci"][0] > 0 for c in vals) else 1.0
    hi = max(c["ci"][1] for c in vals)
    spread = results.get("real_data_floor_spread") if metric == "fd" else None
    for ax, g in zip(axes.flat, grids):
        for i, s in enumerate(names):
            c = _fd(results, g, s, nfe, metric)
            if not c:
                continue
            tied = (g, s) in marks["tied"]
            colour = "tab:orange" if tied else "0.45"
            ax.plot([max(c["ci"][0], lo / 2), c["ci"][1]], [i, i], color=colour, lw=2, solid_capstyle="butt")
            best = (g, s) == marks["best"]
            ax.plot(c["value"], i, "*" if best else "o", color=colour, ms=11 if best else 6, mec="k", mew=0.6)
        if spread:
            ax.axvspan(min(spread["by_seed"]), max(spread["by_seed"]), color="tab:blue", alpha=0.12, lw=0)
        d = (results.get("paired") if metric == "fd" else (results.get("pf_paired") or {}).get("paired")) or {}
        d = d.get(g, {}).get(str(nfe), {}).get(f"{PAIR[0]}-{PAIR[1]}")
        sub = f"\n\u0394 = {interval(d, minus=MINUS)}" if d else ""
        ax.set_title(f"{g}{sub}", fontsize=fontsize)
        ax.set_xscale("log")
        ax.set_xlim(lo / 2, hi * 1.6)
        ax.grid(axis="x", alpha=0.3, which="major")
        ax.tick_params(labelsize=fontsize)
    for ax in axes.flat[len(grids) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(names)), [cmp.short_label(s) for s in names], fontsize=fontsize)
        ax.set_ylim(len(names) - 0.5, -0.5)
    label = "Fréchet distance" if metric == "fd" else "distance to PF solution"
    for ax in axes[-1]:
        ax.set_xlabel(f"{label}, {nfe} NFE", fontsize=fontsize)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], marker="*", ls="", color="tab:orange", mec="k", ms=11, label="lowest"),
        Line2D([], [], marker="o", ls="", color="tab:orange", mec="k", label="not separated from it"),
        Line2D([], [], marker="o", ls="", color="0.45", mec="k", label="separated (higher)"),
    ]
    if spread:
        handles.append(Patch(color="tab:blue", alpha=0.12, label=f"real data, {spread.get('n')} images"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=fontsize, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def pf_figure(results: dict, *, fontsize: int = 9, figsize=(6.0, 5.2)):
    """Distance to the probability-flow solution against NFE, one log-log panel per grid, every deterministic
    sampler with its 95% interval (``results["comparison"][grid][sampler][nfe]["pf"]``).  Returns the figure
    (``None`` when nothing was measured)."""
    import matplotlib.pyplot as plt
    import numpy as np

    grids, names = results.get("grids", []), _names(results, "pf")
    comp = results.get("comparison") or {}
    if not any(_fd(results, g, s, k, "pf") for g in grids for s in names for k in comp.get(g, {}).get(s, {})):
        return None
    ncol = 2 if len(grids) > 1 else 1
    nrow = -(-len(grids) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=figsize, sharex=True, sharey=True, squeeze=False)
    for ax, g in zip(axes.flat, grids):
        for s in names:
            ks = sorted(int(k) for k in comp[g][s] if _fd(results, g, s, k, "pf"))
            if not ks:
                continue
            v = [_fd(results, g, s, k, "pf") for k in ks]
            y = np.array([c["value"] for c in v])
            err = np.array([[c["value"] - c["ci"][0], c["ci"][1] - c["value"]] for c in v]).T
            ax.errorbar(ks, y, yerr=err, marker="o", ms=4, capsize=2, label=samplers.label(s))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(g, fontsize=fontsize + 1)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=fontsize)
    for ax in axes.flat[len(grids) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("NFE", fontsize=fontsize)
    for ax in axes[:, 0]:
        ax.set_ylabel("RMS distance to PF solution", fontsize=fontsize)
    axes[0, 0].legend(fontsize=fontsize - 1)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Sentences
# ----------------------------------------------------------------------------------------------------------------
def _join(items) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def pair_sentence(results: dict, nfe, *, minus: str = MINUS) -> str:
    """One sentence: on which grids accelerated DDIM's Fréchet distance at ``nfe`` is lower than DDIM's, higher,
    or not separated from it, each with the paired difference (accelerated minus DDIM)."""
    rows = pair_rows(results, nfe)
    if not rows:
        return "not measured"
    parts = []
    for word, text in (("lower", "lower than DDIM's on"), ("higher", "higher on"), ("not separated", "not separated")):
        gs = [f"{r['grid']} ({interval(r['diff'], minus=minus)})" for r in rows if r["verdict"] == word]
        if gs:
            parts.append(f"{text} {_join(gs)}" if word != "not separated" else f"not separated on {_join(gs)}")
    return f"at {nfe} NFE, accelerated DDIM's Fréchet distance is " + "; ".join(parts)


def recommendation_sentence(results: dict, nfe, metric: str = "fd", *, minus: str = MINUS) -> str:
    """The lowest cell of the map at ``nfe`` with its value, and how many cells are not separated from it
    (named when at most three)."""
    marks = map_marks(results, nfe, metric)
    if marks is None:
        return "not measured"
    rec = marks["rec"]
    b = rec["best"]
    ties = [f"{samplers.label(t['sampler'])} on {t['grid']}" for t in rec["ties"]]
    head = f"{samplers.label(b['sampler'])} on {b['grid']}, {interval(b, minus=minus)}"
    if not ties:
        return head + "; every other cell is separated from it"
    if len(ties) <= 3:
        return head + "; not separated from it: " + _join(ties)
    return head + f"; {len(ties)} other cells are not separated from it"


def yardstick(results: dict, grid: str = "trailing", nfe="5") -> dict | None:
    """How much of the model's error at the first evaluation each sampler carries into the next clean-image
    estimate, per pixel: ``delta`` (RMS of the model's minus the mixture's noise prediction at the first level,
    ``exact_score_control["model_eps_error"]``), the accelerated sampler's correction share ``c delta /
    sqrt(abar)`` at its second step and DDIM's ``|c_eps| delta / sqrt(abar)`` at its first
    (``step_diagnostics``; ``abar`` the level each step lands on).  ``None`` when either is missing."""
    d = (results.get("step_diagnostics") or {}).get(grid, {}).get(str(nfe))
    ctl = results.get("exact_score_control") or {}
    err = ctl.get("model_eps_error") or {}
    if not d or len(d) < 2 or str(d[0]["t"]) not in err:
        return None
    delta = err[str(d[0]["t"])]
    s1, s2 = d[0], d[1]
    return {
        "delta": delta,
        "t": d[0]["t"],
        "accelerated": abs(s2["c"]) * delta / math.sqrt(s2["alpha_bar_prev"]),
        "ddim": abs(s1["c_eps"]) * delta / math.sqrt(s1["alpha_bar_prev"]),
    }


def trailing_sentence(results: dict, *, minus: str = MINUS) -> str:
    """What the controls show on ``trailing`` at 5 NFE: the first correction's ratio and coefficient, the
    exact-score paired difference, and the Fréchet-distance differences of the model alone and of the hybrids;
    ``not measured`` when a part is missing."""
    d = (results.get("step_diagnostics") or {}).get("trailing", {}).get("5")
    ctl = results.get("exact_score_control")
    h = results.get("hybrid_first_step")
    if not (d and ctl and "trailing" in ctl["values"] and h and "paired" in h):
        return "not measured"
    r2, e, hp = d[1], ctl["paired"]["trailing"]["5"], h["paired"]
    t1, t2 = h["first_two_t"]

    def said(x):
        return f"{interval(x, minus=minus)}, {verdict_word(x)}"

    return (
        f"its first correction extrapolates over a step {r2['ratio']:.1f} times longer than the last one, with "
        f"c = {r2['c']:.1f}. With exact scores, its distance to the probability-flow solution minus DDIM's is "
        f"{said(e)}; with the model, its Fréchet distance minus DDIM's is {said(hp['model'])}; with the exact "
        f"noise prediction at t = {t1} only, {said(hp['first'])}; at t = {t1} and {t2}, {said(hp['first_two'])}"
    )


def control_sentence(results: dict, grid: str = "logsnr", nfes=("4", "5"), *, minus: str = MINUS) -> str:
    """The exact-score paired differences (accelerated minus DDIM, distance to the probability-flow solution)
    on ``grid`` at ``nfes``, with their verdicts."""
    ctl = results.get("exact_score_control")
    if not ctl or grid not in ctl.get("paired", {}):
        return "not measured"
    parts = [
        f"{interval(ctl['paired'][grid][k], minus=minus)} at {k} NFE ({verdict_word(ctl['paired'][grid][k])})"
        for k in nfes
        if k in ctl["paired"][grid]
    ]
    return _join(parts)


def final_noise_sentence(results: dict, *, minus: str = MINUS) -> str:
    """Per stochastic sampler, its Fréchet distance with and without the paper-form last-step noise."""
    fz = results.get("final_noise")
    if not fz:
        return "not measured"
    return "; ".join(
        f"{samplers.label(s)} {interval(r['fd_with'], minus=minus)} with it, "
        f"{interval(r['fd_without'], minus=minus)} without"
        for s, r in fz.items()
    )


def checked_summary(results: dict, nfes=(5, 10)) -> str:
    """The key numbers in a few lines of plain text (at most 77 characters): the samples per value, per NFE the
    lowest cell of the map, and per grid the paired difference accelerated DDIM minus DDIM."""
    out = [f"{results.get('fd_num_samples')} samples per Fréchet distance"]
    for k in nfes:
        marks = map_marks(results, k)
        if marks is None:
            continue
        b = marks["rec"]["best"]
        out.append(
            f"{k:>2} NFE lowest: {cmp.short_label(b['sampler'])} on {b['grid']} "
            f"{interval(b)}, {len(marks['tied']) - 1} not separated"
        )
        for r in pair_rows(results, k):
            out.append(f"   acc. ODE - DDIM {r['grid']:9s} {interval(r['diff']):>22s}  {r['verdict']}")
    return "\n".join(out)


#: The cells the advice page quotes: (sampler, grid, NFE).
ADVICE_CELLS = (
    ("ddim", "uniform", 5),
    ("accelerated_ode", "trailing", 5),
    ("accelerated_ode", "logsnr", 5),
    ("accelerated_ode", "logsnr", 10),
)


def advice_numbers(results: dict, cells=ADVICE_CELLS) -> dict[str, str]:
    """The numbers the page *Which sampler should I use?* quotes, as ``{glue key: text}``: ``ws-n`` (samples per
    value), ``ws-floor`` (the real-data score at that size), per NFE ``k`` the lowest cell of the map
    (``ws-best{k}``, ties decided by the paired differences of ``paired_map``), the same with the cells not
    separated from it (``ws-rec{k}``, :func:`recommendation_sentence`), the lowest stochastic cell
    (``ws-sto-best{k}``) and its paired difference from the lowest cell with its verdict (``ws-sto-diff{k}``),
    the DDPM-type range (``ws-ddpm-range``) and each cell of ``cells`` (``ws-{sampler}-{grid}-{k}``)."""
    comp, grids = results["comparison"], results["grids"]
    names = list(results["samplers"])
    stochastic = [s for s in names if s in samplers.STOCHASTIC]
    pmap = results.get("paired_map", {})
    nfes = sorted({int(k) for g in grids for s in names for k, c in comp[g][s].items() if (c or {}).get("fd")})
    fd = lambda c: interval(c)  # noqa: E731
    out = {"ws-n": str(results["fd_num_samples"]), "ws-floor": f"{results['real_data_floor']:.0f}"}
    for k in nfes:
        best = cmp.recommend(comp, k, "fd", grids=grids, names=names, paired=pmap.get(str(k)))["best"]
        out[f"ws-best{k}"] = f"{samplers.label(best['sampler'])} on {best['grid']}, {fd(best)}"
        out[f"ws-rec{k}"] = recommendation_sentence(results, k)
        sto = cmp.recommend(comp, k, "fd", grids=grids, names=stochastic)["best"]
        out[f"ws-sto-best{k}"] = f"{samplers.label(sto['sampler'])} on {sto['grid']}, {fd(sto)}"
        diff = pmap[str(k)]["diff"][sto["grid"]][sto["sampler"]]
        out[f"ws-sto-diff{k}"] = f"{fd(diff)}, {verdict_word(diff)}"
    ddpm = [comp[g]["ddpm_type"][str(k)]["fd"]["value"] for g in grids for k in nfes]
    out["ws-ddpm-range"] = f"{min(ddpm):,.0f} to {max(ddpm):,.0f}"
    for s, g, k in cells:
        out[f"ws-{s}-{g}-{k}"] = fd(comp[g][s][str(k)]["fd"])
    return out


# ----------------------------------------------------------------------------------------------------------------
# The chapter's generation helpers
# ----------------------------------------------------------------------------------------------------------------
def figure_rows(eps_fn, schedule, noise, nfes, *, grids, names, seed: int = 0) -> dict:
    """The images of the chapter's Figures 1 and 2: ``{(grid, sampler): [image, ...]}``, for every NFE of
    ``nfes`` the samples from every noise (:func:`.comparison.generate`, stochastic samplers seeded with
    ``seed``); ``None`` in place of the images where the grid has no such NFE (``quadratic`` visits t = 0 twice
    from 40 steps on)."""
    rows = {}
    for g in grids:
        for name in names:
            rows[(g, name)] = []
            for nfe in nfes:
                try:
                    cmp.grid_timesteps(schedule, nfe, g)
                except ValueError:
                    rows[(g, name)] += [None] * len(noise)
                    continue
                rows[(g, name)] += list(cmp.generate(eps_fn, schedule, name, g, nfe, noise, seed=seed))
    return rows


def row_label(key) -> str:
    """The row label of a figure row ``(grid, sampler)``: the sampler's label over the grid's name."""
    return f"{samplers.label(key[1])}\n{key[0]}"


def last_step_noise_std(schedule, grid: str, nfe: int) -> dict:
    """Standard deviation of the noise the paper's form of each stochastic sampler adds on the last step of
    ``grid`` at ``nfe`` (:func:`updates.ddpm_type_coefficients`, :func:`updates.accelerated_sde_noise_scale`)."""
    path = schedule.path(cmp.grid_timesteps(schedule, nfe, grid))
    a_t, a_prev = float(path[-2]), float(path[-1])
    return {
        "ddpm_type": updates.ddpm_type_coefficients(a_t, a_prev)[2],
        "accelerated_sde": updates.accelerated_sde_noise_scale(a_t, a_prev),
    }
