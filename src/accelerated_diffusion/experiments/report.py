r"""Figures and text tables of the evidence chapters, read from the results files.

The chapters call these functions and show their output; the numbers come from ``data/results/*.json`` (schema in
``data/results/README.md``).  Local orders (:mod:`.orders`):

* :func:`order_figure`: local slope of the error against NFE, one panel per schedule, the claimed exponents as
  horizontal lines (an "order plot");
* :func:`verdict_rows` and :func:`format_verdicts`: the verdict table, claim by claim, target by target;
* :func:`format_window_fits`: how a single least-squares slope moves with the start of its window.

matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

from .. import samplers
from . import orders

__all__ = ["CLAIM_SAMPLERS", "order_figure", "verdict_rows", "format_verdicts", "format_window_fits"]

#: The samplers whose rates the paper's abstract states, in the order of the verdict table: each claim's
#: accelerated sampler, then its baseline.
CLAIM_SAMPLERS = ("accelerated_ode", "ddim_type", "accelerated_sde", "ddpm_type")


def _label(m: str) -> str:
    return samplers.label(m)


def order_figure(
    results: dict,
    *,
    methods=None,
    style: dict | None = None,
    schedules=("paper", "linear"),
    title: str = "",
    ylim=(-3.0, 0.0),
    figsize=(6.8, 7.6),
):
    """The order plot of one target: for each schedule (one panel each) the local slopes
    (``results[schedule][sampler]["local_slopes"]``) of every sampler of ``methods`` (default: all in
    ``results``) against NFE on a log axis, the claimed exponents of :data:`orders.CLAIMS` as horizontal lines,
    the window in which settledness is judged (grey band) and NFE = :data:`orders.PRACTICAL_NFE` (dotted).
    Local slopes outside ``ylim`` are cut off.  ``style``: matplotlib keywords per sampler (e.g.
    :data:`rates.STYLE`).  Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(schedules), 1, figsize=figsize, sharey=True, squeeze=False)
    for ax, s in zip(axes[:, 0], schedules):
        R = results[s]
        names = [m for m in (methods or R) if m in R]
        for m in names:
            ls = R[m]["local_slopes"]
            ax.semilogx(ls["nfe"], ls["slope"], label=_label(m), ms=4, **(style or {}).get(m, {}))
        by_exponent: dict = {}
        for m in names:
            by_exponent.setdefault(R[m]["verdict"]["claimed"], []).append(m)
        for e, ms in sorted(by_exponent.items()):
            ax.axhline(e, color="gray", lw=1, ls="--", zorder=0)
            text = ", ".join(_label(m) for m in ms if orders.CLAIMS[m]["source"].startswith("paper"))
            ax.text(
                0.01,
                e,
                f"claimed {e:g}" + (f": {text}" if text else " (peers' nominal order)"),
                transform=ax.get_yaxis_transform(),
                ha="left",
                va="bottom",
                fontsize=7,
                color="dimgray",
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=0.5),
            )
        lo, hi = R[names[0]]["verdict"]["window_nfe"]
        ax.axvspan(lo, hi, color="0.9", zorder=-1)
        ax.axvline(orders.PRACTICAL_NFE, color="k", ls=":", lw=1)
        ax.set_ylim(*ylim)
        ax.set_xlabel("NFE (score evaluations), geometric mean of neighbouring runs")
        ax.set_ylabel("local slope of log error\nagainst log NFE")
        ax.set_title(f"{title}{', ' if title else ''}{s} schedule", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def verdict_rows(targets: dict, methods=CLAIM_SAMPLERS, schedules=("paper", "linear")) -> list[dict]:
    """One row per sampler of ``methods``, target and schedule: ``targets`` maps a target's name to its
    ``results`` object (``{schedule: {sampler: {..., "verdict", "practical"}}}``).  Each row: ``sampler``,
    ``target``, ``schedule`` and the entries of ``verdict`` and ``practical`` (:func:`orders.annotate`)."""
    rows = []
    for m in methods:
        for tname, res in targets.items():
            for s in schedules:
                r = res[s][m]
                rows.append(
                    {"sampler": m, "target": tname, "schedule": s, **r["verdict"], "practical": r.get("practical")}
                )
    return rows


def _short(v: str) -> str:
    # "not settled by T = 1000 (steepening)" -> "not settled (steepening)": T is in its own column
    return f"not settled ({v.split('(')[-1]}" if v.startswith("not settled") else v


def _settled(v: dict) -> str:
    if v["settled"]:
        return "yes"
    return "T/logT" if v.get("settled_vs_T_over_logT") else "no"


def format_verdicts(rows: list[dict], *, practical: bool = False) -> str:
    """The verdict table as text, one block per sampler (claim): target, schedule, largest ``T``, local slope at
    the largest ``T`` (and against ``T / log T`` on the paper schedule), settled (``yes``, ``no``, or ``T/logT``:
    only against ``T / log T``) and the verdict.  With ``practical`` the same for the runs at NFE <=
    :data:`orders.PRACTICAL_NFE` (:func:`orders.practical`), with the range of the local slopes there."""
    out, current = [], None
    for r in rows:
        v = r["practical"] if practical else r
        if r["sampler"] != current:
            current = r["sampler"]
            if out:
                out.append("")
            src = "paper" if orders.CLAIMS[current]["source"].startswith("paper") else "nominal order"
            out.append(f"{_label(current)}: claimed slope {v['claimed']:g} ({src})")
            if practical:
                out.append(
                    f"  {'target':10s}{'schedule':8s}{'T':>4s} {'range':13s} {'slope':>5s} {'settled':8s}verdict"
                )
            else:
                out.append(
                    f"  {'target':10s}{'schedule':9s}{'T':>5s}  {'slope':>6s} {'T/logT':>7s}  {'settled':8s}verdict"
                )
        T = str(v["T_max"])
        head = f"  {r['target']:10s}{r['schedule']:9s}{T:>5s}  "
        if practical:  # narrower columns: the rows stay within 77 characters, the width of the book's text column
            rng = f"[{v['slope_range'][0]:.2f},{v['slope_range'][1]:.2f}]"
            head = f"  {r['target']:10s}{r['schedule']:8s}{T:>4s} "
            out.append(f"{head}{rng:13s} {v['local_slope_at_max_T']:5.2f} {_settled(v):8s}{_short(v['verdict'])}")
        else:
            g = v.get("local_slope_at_max_T_vs_T_over_logT")
            g = f"{g:7.2f}" if g is not None else " " * 7
            out.append(f"{head}{v['local_slope_at_max_T']:6.2f} {g}  {_settled(v):8s}{_short(v['verdict'])}")
    return "\n".join(out)


def format_window_fits(results: dict, methods=CLAIM_SAMPLERS, *, nfe_from: float = 0.0) -> str:
    """Least-squares slopes over ``NFE >= start`` (``results[sampler]["window_fits"]``, one schedule) for every
    start ``>= nfe_from``: one row per sampler of ``methods``, one column per start."""
    starts = [n for n in results[methods[0]]["window_fits"]["nfe_min"] if n >= nfe_from]
    out = [f"{'NFE >=':17s}" + "".join(f"{int(n):>6d}" for n in starts)]
    for m in methods:
        w = results[m]["window_fits"]
        by = dict(zip(w["nfe_min"], w["slope"]))
        out.append(f"{_label(m):17s}" + "".join(f"{by[n]:6.2f}" for n in starts))
    return "\n".join(out)
