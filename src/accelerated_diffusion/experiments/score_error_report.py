r"""Tables and sentences of the chapter *When does the acceleration help?*, built from its results.

The chapter's measurements come from :mod:`.score_error` (the learned model's score error, how each sampler
weights it, the causal hybrids), :mod:`.perturbations` (controlled perturbations of exact scores) and
:func:`.comparison.compare_samplers` (the safeguarded samplers on the learned model); the exact total variation
of every sampler comes from the rates chapter's ``rates_exact_1d.json``.  Every function here takes those dicts;
nothing here measures.  Tables are :class:`.tables.Table` (HTML in the book, :func:`.tables.html_table`), numbers
are written by :func:`.tables.num` and :func:`.tables.interval`.
"""

from __future__ import annotations

from .. import samplers, updates
from . import comparison as cmp
from .comparison_report import verdict_word
from .perturbations import amplification_rows, exponent_rows
from .tables import MINUS, html_table, interval, num

__all__ = [
    "SAFEGUARDED",
    "safeguard_step_table",
    "amplification_table",
    "exponent_table",
    "share_table",
    "safeguard_table",
    "exact_tv_table",
    "findings",
    "checked_summary",
]

#: The safeguarded samplers of the registry (role ``"safeguarded"``), in table order.
SAFEGUARDED = tuple(n for n in samplers.table_order() if samplers.spec(n).role == "safeguarded")
#: The deterministic samplers whose correction coefficients the step table compares.
_COEFFICIENTS = {
    "accelerated_ode": updates.accelerated_ode_coefficient,
    "accelerated_ode_lambda": updates.accelerated_ode_lambda_coefficient,
    "accelerated_ode_capped": updates.accelerated_ode_capped_coefficient,
}


def _caption(number, text: str) -> str:
    return f"Table {number}. {text}" if number is not None else text


def safeguard_step_table(schedule, grids=cmp.GRIDS, nfe: int = 5, *, number=None):
    """Per grid and step (from the second on) of the ``nfe``-step grids: the extrapolation ratio in
    ``alpha_bar`` and the correction coefficient ``c`` of the paper's sampler and of each safeguarded one."""
    rows = []
    for g in grids:
        for r in cmp.step_diagnostics(schedule, g, nfe)[1:]:
            path = cmp.grid_timesteps(schedule, nfe, g)
            levels = [float(a) for a in schedule.path(path, 1.0)]
            i = r["step"] - 1
            a_next, a_t, a_prev = levels[i - 1], levels[i], levels[i + 1]
            cs = [num(f(a_next, a_t, a_prev)) for f in _COEFFICIENTS.values()]
            rows.append([g, f"{r['t']}", num(r["ratio"]), *cs])
    cols = ["grid", "t", "ratio", *(samplers.spec(n).short_label for n in _COEFFICIENTS)]
    return html_table(
        cols,
        rows,
        caption=_caption(
            number,
            f"The correction c (eps_(t+1) - eps_t) of each step after the first at {nfe} NFE: the ratio of the "
            "step in alpha_bar to the previous one, and c of the paper's sampler and of the two safeguarded ones.",
        ),
    )


def amplification_table(perturb: dict, target: str, sampler: str = "accelerated_ode", *, number=None):
    """``sampler``'s error increase over DDIM's (ratio, paired 95 % interval where the target is sampled) for
    each perturbation kind and grid (rows) and NFE (columns), at the smallest perturbation size."""
    rows = [r for r in amplification_rows(perturb, target) if r["sampler"] == sampler]
    nfes = sorted({r["nfe"] for r in rows})
    cell = {(r["kind"], r["grid"], r["nfe"]): r for r in rows}
    body = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for g in sorted({r["grid"] for r in rows if r["kind"] == kind}, key=cmp.GRIDS.index):
            line = [kind.replace("_", " "), g]
            for k in nfes:
                r = cell.get((kind, g, k)) or {"ratio": None}
                line.append(interval(r["ratio"], None if r.get("lo") is None else [r["lo"], r["hi"]]))
            body.append(line)
    names = {"one_d": "1-D mixture (exact TV)", "two_d": "2-D mixture", "fashion_mnist": "Fashion-MNIST mixture"}
    return html_table(
        ["kind", "grid", *(f"NFE {k}" for k in nfes)],
        body,
        row_labels=2,
        caption=_caption(
            number,
            f"{names.get(target, target)}: the {samplers.label(sampler)} sampler's change of output under each "
            "perturbation divided by DDIM's (above 1: it amplifies the error more), per grid and NFE.",
        ),
    )


def exponent_table(perturb: dict, target: str, grid: str = "uniform", kinds=("white", "smooth"), *, number=None):
    """Fitted exponent of each sampler's change of output in the perturbation size (log-log slope; 1: linear
    response), with its 95 % interval where the target is sampled: rows kind x sampler, columns NFE, on ``grid``."""
    rows = [r for r in exponent_rows(perturb, target) if r["grid"] == grid and r["kind"] in kinds]
    nfes = sorted({r["nfe"] for r in rows})
    cell = {(r["kind"], r["sampler"], r["nfe"]): r for r in rows}
    body = []
    for kind in kinds:
        for n in dict.fromkeys(r["sampler"] for r in rows):
            line = [kind, samplers.spec(n).short_label]
            for k in nfes:
                r = cell.get((kind, n, k)) or {"exponent": None}
                ci = None if r.get("lo") is None else [r["lo"], r["hi"]]
                line.append(interval(r["exponent"], ci, decimals=2, minus=MINUS))
            body.append(line)
    return html_table(
        ["kind", "sampler", *(f"NFE {k}" for k in nfes)],
        body,
        row_labels=2,
        caption=_caption(
            number,
            f"Exponent of each sampler's change of output in the perturbation size on the {grid} grid (1: the "
            "change grows linearly with the error), for a rough and a smooth field of the same size.",
        ),
    )


def share_table(result: dict, *, number=None):
    """Per grid: the gap accelerated ODE minus DDIM (FD) of the model, and the share of it removed when the
    model's noise prediction is replaced by the reference at one level (``ref@t``) or scaled at the first level
    (``s=...``), with paired 95 % intervals."""
    h = result["hybrids"]
    rows = []
    for g, by_v in h["gap"].items():
        for v, d in by_v.items():
            share = h["share_removed"][g][v]["fd"]
            rows.append([g, v, interval(d["fd"], minus=MINUS), interval(share, minus=MINUS) if v != "model" else ""])
    return html_table(
        ["grid", "variant", "gap (FD)", "share removed"],
        rows,
        caption=_caption(
            number,
            f"Accelerated ODE minus DDIM at {h['nfe']} NFE ({h['num_samples']} samples, same noises): 'model' is "
            "the learned model, 'ref@t' the model with the reference noise prediction at level t only, 's=...' the "
            "model's error scaled by s at the first level; the share of the model's gap each variant removes.",
        ),
    )


def safeguard_table(compared: dict, *, number=None):
    """The safeguarded samplers on the learned model: per grid and NFE, the Fréchet distance of every sampler and
    each safeguarded one minus each baseline (paired 95 % intervals, with the verdict word)."""
    base = compared["baselines"]
    names = [n for n in next(iter(compared["fd"].values())) if n not in base]
    rows = []
    for g, per_s in compared["fd"].items():
        for k in per_s[base[0]]:
            pair = compared["paired"][g][k]
            for n in names:
                diffs = [pair[f"{n}-{b}"] for b in base]
                rows.append(
                    [
                        f"{g} {k}",
                        samplers.spec(n).short_label,
                        interval(per_s[n][k]),
                        *(interval(d, minus=MINUS) for d in diffs),
                    ]
                )
    return html_table(
        ["grid, NFE", "sampler", "FD", *(f"minus {samplers.spec(b).short_label}" for b in base)],
        rows,
        row_labels=1,
        caption=_caption(
            number,
            f"The safeguarded samplers on the Fashion-MNIST model ({compared['num_samples']} samples per value, "
            "the same noises for every sampler): Fréchet distance and paired differences with 95 % intervals; an "
            "interval that excludes 0 separates the two samplers.",
        ),
    )


def exact_tv_table(rates_1d: dict, names, nfes=(4, 9, 19, 99, 499), schedule: str = "linear", *, number=None):
    """Exact TV of ``names`` on the rates chapter's 1-D mixture at ``nfes`` on ``schedule``, with each sampler's
    local slope at the largest T and its verdict (the rates chapter's ``verdict`` entries)."""
    res = rates_1d["results"][schedule]
    rows = []
    for n in names:
        r = res[n]
        tv = dict(zip(r["nfe"], r["tv"]))
        v = r.get("verdict") or {}
        slope = v.get("local_slope_at_max_T")
        rows.append([samplers.spec(n).short_label, *(num(tv.get(k)) for k in nfes), num(slope)])
    return html_table(
        ["sampler", *(f"NFE {k}" for k in nfes), "local slope"],
        rows,
        caption=_caption(
            number,
            f"Exact total variation on the 1-D two-mode mixture ({schedule} schedule), and the local slope of log TV "
            "against log NFE at the largest T (verdicts in the rates chapter).",
        ),
    )


def _share(result: dict, grid: str, variant: str, sign: float = 1.0) -> str:
    """The share of the model's gap a variant removes (``sign=-1``: by how much it grows the gap), in percent."""
    c = result["hybrids"]["share_removed"][grid][variant]["fd"]
    lo, hi = sorted(sign * 100 * v for v in c["ci"])
    return f"{sign * 100 * c['value']:.0f} % [{lo:.0f}, {hi:.0f}]".replace("-", MINUS)


def findings(result: dict, perturb: dict, compared: dict) -> dict[str, str]:
    """The numbers the chapter's findings quote, as ``{glue key: text}``."""
    out = {}
    h = result["hybrids"]
    first = {g: h["timesteps"][g][0] for g in h["timesteps"]}
    for g in ("trailing", "logsnr", "uniform"):
        if g in h["gap"]:
            out[f"se-gap-{g}"] = interval(h["gap"][g]["model"]["fd"], minus=MINUS)
            out[f"se-share-{g}"] = _share(result, g, f"ref@{first[g]}")
            out[f"se-grow2-{g}"] = _share(result, g, "s=2", sign=-1.0)
    prof = result["profile"]["train"]["by_t"]
    t_hi = max(prof, key=int)
    out["se-rms-first"] = f"{prof[t_hi]['rms_total']['value']:.4f} at t = {t_hi}"
    w = result["weights"]
    for n in ("ddim", "accelerated_ode"):
        if n in w and "trailing" in w[n]:
            out[f"se-w-{n}"] = num(w[n]["trailing"]["5"]["weights"][0])
    amp = {}
    for r in amplification_rows(perturb, "fashion_mnist"):
        if r["sampler"] == "accelerated_ode":
            amp[r["kind"], r["nfe"]] = r
    for kind in ("white", "smooth"):
        for k in (5, 10):
            r = amp.get((kind, k))
            if r:
                out[f"se-amp-{kind}-{k}"] = interval(r["ratio"], [r["lo"], r["hi"]])
    for n in SAFEGUARDED:
        for g in ("uniform", "trailing", "logsnr"):
            if g in compared["paired"] and "5" in compared["paired"][g]:
                for b in compared["baselines"]:
                    d = compared["paired"][g]["5"][f"{n}-{b}"]
                    out[f"se-{n}-{g}-{b}"] = f"{interval(d, minus=MINUS)}, {verdict_word(d)}"
    return out


def checked_summary(result: dict, compared: dict) -> str:
    """A few lines of plain text (within 77 characters) with the key numbers, for the chapter's checked cell."""
    h = result["hybrids"]
    lines = [f"{h['num_samples']} samples per Fréchet distance, {h['nfe']} NFE"]
    for g in h["gap"]:
        t0 = h["timesteps"][g][0]
        lines.append(
            f"{g:9s} acc. ODE - DDIM {interval(h['gap'][g]['model']['fd']):>20s}; "
            f"removed at t={t0}: {interval(h['share_removed'][g][f'ref@{t0}']['fd'])}"
        )
    for g, per_k in compared["paired"].items():
        for k, pair in per_k.items():
            for key, d in pair.items():
                if key.endswith("-ddim"):
                    name = samplers.spec(key.split("-")[0]).short_label
                    lines.append(f"{g:9s} {k:>2} NFE {name:12s} - DDIM {interval(d):>20s} {verdict_word(d)}")
    return "\n".join(lines)
