r"""The few-NFE comparison with learned scores: every sampler on every grid, same noises, with intervals.

Pieces used by the chapter *Learned scores* (and its GPU parameter file):

* :func:`grid_timesteps`, :func:`initial_noise`, :func:`generate` -- a sampler on a named grid of a model's
  training schedule, from per-sample seeded noises shared by every sampler;
* :func:`image_features` -- the project's classifier features of a sample set, computed once; the Fréchet
  distance with its bootstrap interval over samples is :func:`.features.frechet_with_interval`;
* :func:`pf_reference`, :func:`pf_distance` -- distance to the probability-flow solution from the same noise: a
  float64 many-step DPM-Solver++(2M) solve from the same start level, checked against half as many steps;
* :func:`paired_fd`, :func:`paired_pf`, :func:`classify` -- every sampler shares its starting noises, so two
  cells are compared by a paired bootstrap of their *difference* (the same resampled rows for both,
  :func:`.features.difference_interval`); a difference is called only when its paired interval excludes 0;
* :func:`check_pf_reference` -- the reference's own error (against its half-step solve) as a fraction of the
  smallest distance it measures, per start level, flagged (or refused) above a bound;
* :func:`separated`, :func:`comparison_map`, :func:`recommend` -- the sampler x grid table and the rule that
  picks a sampler and a grid from it (ties: the cells whose paired difference from the best is not separated
  from 0; :func:`separated`, overlap of the marginal intervals, only for results without paired differences);
* :func:`format_map`, :func:`format_recommendation` -- the table and the rule as text no wider than the book's
  code column (:data:`TEXT_WIDTH`), with the text helpers :func:`short_label`, :func:`ci_text`,
  :func:`format_table`, :func:`wrap_items` and :func:`fill_text`;
* :func:`step_diagnostics` -- per step of a grid, the extrapolation ratio of the accelerated sampler and its
  correction coefficient against DDIM's epsilon coefficient (from :mod:`accelerated_diffusion.updates`);
* :func:`exact_score_control`, :func:`hybrid_eps_fn` -- the same grids with the exact noise prediction of a
  Gaussian-mixture target, and the learned model with the exact prediction at its first step only;
* :func:`peer_agreement` -- diffusers' own DPM-Solver++(2M) / UniPC against the library's float64 loops.

Plot helpers for the chapter: :func:`image_grid`, :func:`map_heatmap`.
"""

from __future__ import annotations

import math
import re
import textwrap

import numpy as np
import torch
from tqdm import tqdm

from .. import samplers, updates
from ..schedules import logsnr_timesteps
from . import features
from .rates import rms_with_ci
from .tables import interval, num

__all__ = [
    "compare_samplers",
    "GRIDS",
    "COMPARED",
    "grid_timesteps",
    "initial_noise",
    "generate",
    "image_features",
    "pf_reference",
    "pf_distance",
    "pf_squared_distances",
    "separated",
    "classify",
    "rms_bootstraps",
    "paired_fd",
    "paired_pf",
    "grid_block",
    "PFReferenceError",
    "check_pf_reference",
    "comparison_map",
    "format_map",
    "recommend",
    "format_recommendation",
    "TEXT_WIDTH",
    "SHORT_LABELS",
    "short_label",
    "label_legend",
    "ci_text",
    "format_table",
    "wrap_items",
    "fill_text",
    "step_diagnostics",
    "exact_eps_fn",
    "hybrid_eps_fn",
    "exact_score_control",
    "peer_agreement",
    "image_grid",
    "map_heatmap",
]

#: The grids compared: the official code's ``uniform`` and ``quadratic``, diffusers' ``trailing`` and ``logsnr``.
GRIDS = ("uniform", "quadratic", "trailing", "logsnr")
#: The samplers compared (registry names): the library's samplers in the order of the tables
#: (:func:`accelerated_diffusion.samplers.table_order`) without the deterministic baseline (DDIM-type, which costs
#: what exact DDIM costs) and the book's safeguarded variants: four deterministic, then the paper's two stochastic
#: ones.
COMPARED = tuple(
    n
    for n in samplers.table_order()
    if samplers.spec(n).role != "safeguarded" and (samplers.spec(n).stochastic or samplers.spec(n).role != "baseline")
)
#: Short labels for the fixed-width text tables, from the registry (``SamplerSpec.short_label``; figures and prose
#: use the registry's :func:`samplers.label`).
SHORT_LABELS = {n: s.short_label for n, s in samplers.SAMPLERS.items() if s.short_label != s.label}
#: Width of the text outputs: the book's code column holds 76 characters.
TEXT_WIDTH = 76


def grid_timesteps(schedule, nfe: int, grid: str) -> torch.Tensor:
    """The ``nfe`` training steps of ``grid`` (noisiest first); a clear error when the grid does not have exactly
    ``nfe`` entries (``uniform`` = ``range(0, N, N // nfe)`` has more when ``nfe`` does not divide ``N``):
    :func:`accelerated_diffusion.samplers.grid_timesteps`."""
    return samplers.grid_timesteps(schedule, nfe, grid)


def initial_noise(n: int, shape, seed: int = 0, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` standard normal draws of ``shape``, draw ``i`` from its own generator seeded with ``(seed, i)``: the
    first ``m`` noises are the same for any ``n >= m`` (a CPU tensor)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gen = torch.Generator()
    out = torch.empty((n, *shape), dtype=torch.float64)
    for i in range(n):
        gen.manual_seed(int(seed) * 1_000_003 + i)
        out[i] = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
    return out.to(dtype)


def generate(
    eps_fn,
    schedule,
    name: str,
    grid: str,
    nfe: int,
    noise: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 256,
    final_noise: bool = False,
    timesteps=None,
) -> torch.Tensor:
    """Sampler ``name`` from every noise (batches of ``batch_size``) on ``grid`` at ``nfe`` (or on
    ``timesteps``), through the library's generation wrapper :func:`accelerated_diffusion.samplers.run_grid`; the
    stochastic samplers draw from one generator seeded with ``seed`` (the same stream for every stochastic
    sampler).  Returns a CPU tensor in ``noise``'s dtype."""
    gen = torch.Generator(noise.device).manual_seed(int(seed)) if samplers.spec(name).stochastic else None
    x, _ = samplers.run_grid(
        eps_fn,
        noise,
        name,
        schedule,
        nfe,
        grid,
        timesteps=timesteps,
        generator=gen,
        final_noise=final_noise,
        batch_size=batch_size,
        device="cpu",
    )
    return x


# ----------------------------------------------------------------------------------------------------------------
# Intervals
# ----------------------------------------------------------------------------------------------------------------
def image_features(samples: torch.Tensor, classifier=None, *, batch_size: int = 500) -> np.ndarray:
    """Classifier features of generated images, clamped to ``[-1, 1]`` first as saving them as images would (a
    diverged sampler's values far outside the range are then counted as saturated pixels, not rejected)."""
    return features.extract_features(samples.float().clamp(-1, 1), model=classifier, batch_size=batch_size)


def separated(a: dict | None, b: dict | None) -> int:
    """``-1`` when interval ``a`` lies wholly below ``b``, ``+1`` when above, ``0`` when they overlap (or either
    is missing): a difference is called only when the intervals separate."""
    if not a or not b:
        return 0
    if a["ci"][1] < b["ci"][0]:
        return -1
    if a["ci"][0] > b["ci"][1]:
        return 1
    return 0


def classify(diff: dict | None) -> int:
    """The verdict of a paired difference ``{"value", "ci": [lo, hi]}`` (first minus second): ``-1`` when the
    interval lies below 0 (the first is lower), ``+1`` above, ``0`` when it contains 0 or is missing (not
    separated)."""
    if not diff:
        return 0
    if diff["ci"][1] < 0:
        return -1
    if diff["ci"][0] > 0:
        return 1
    return 0


def rms_bootstraps(sq_by_key: dict, *, replicates: int = 200, seed: int = 0) -> dict:
    """``{key: (value, resampled)}`` for per-noise squared distances (``(n,)`` arrays, row ``i`` from noise
    ``i``, one ``n`` for all): ``value`` the root-mean-square, ``resampled`` the root-mean-squares of
    ``replicates`` resamples of the rows, the *same* rows for every key (one generator seeded with ``seed``), the
    input of :func:`.features.difference_interval`."""
    arrays = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in sq_by_key.items()}
    ns = {len(a) for a in arrays.values()}
    if len(ns) > 1 or min(ns, default=2) < 2:
        raise ValueError(f"paired distances need the same number (>= 2) of noises, got {sorted(ns)}")
    if replicates < 2:
        raise ValueError(f"need replicates >= 2, got {replicates}")
    if not arrays:
        return {}
    n = ns.pop()
    idx = np.random.default_rng(seed).integers(0, n, (replicates, n))
    return {k: (float(np.sqrt(a.mean())), np.sqrt(a[idx].mean(1))) for k, a in arrays.items()}


def _paired_layout(boot: dict, *, grids, names, nfes, level: float, pair) -> dict:
    """The paired blocks from ``boot[(grid, sampler, nfe)] = (value, resampled)`` (one row draw for all)."""
    per_grid, per_map = {}, {}
    for k in nfes:
        cells = [(g, s, k) for g in grids for s in names if (g, s, k) in boot and math.isfinite(boot[g, s, k][0])]
        if not cells:
            continue
        best = min(cells, key=lambda c: boot[c][0])
        per_map[str(k)] = {
            "best": {"grid": best[0], "sampler": best[1]},
            "diff": {
                g: {
                    s: features.difference_interval(boot[g, s, k], boot[best], level) for (gg, s, _) in cells if gg == g
                }
                for g in grids
                if any(c[0] == g for c in cells)
            },
        }
        for g in grids:
            cg = [c for c in cells if c[0] == g]
            if not cg:
                continue
            bg = min(cg, key=lambda c: boot[c][0])
            block = {c[1]: {"vs": bg[1], "diff": features.difference_interval(boot[c], boot[bg], level)} for c in cg}
            a, b = (g, pair[0], k), (g, pair[1], k)
            if a in boot and b in boot:
                block[f"{pair[0]}-{pair[1]}"] = features.difference_interval(boot[a], boot[b], level)
            per_grid.setdefault(g, {})[str(k)] = block
    return {"paired": per_grid, "paired_map": per_map}


def paired_fd(
    feats: dict,
    reference=None,
    *,
    grids=GRIDS,
    names=COMPARED,
    nfes=(5, 10),
    replicates: int = 200,
    level: float = 0.95,
    seed: int = 0,
    pair=("accelerated_ode", "ddim"),
) -> dict:
    r"""Paired Fréchet-distance differences from ``feats[(grid, sampler, nfe)]`` (classifier features ``(n, d)``,
    row ``i`` from starting noise ``i`` for every cell): each cell is resampled once at the same rows
    (:func:`.features.paired_bootstraps`) and every difference gets :func:`.features.difference_interval`.
    Returns ``{"paired": {grid: {str(nfe): {sampler: {"vs": best sampler on that grid, "diff": {"value",
    "ci"}}, "<pair[0]>-<pair[1]>": {"value", "ci"}}}}, "paired_map": {str(nfe): {"best": {"grid", "sampler"},
    "diff": {grid: {sampler: {"value", "ci"}}}}}}``: per grid, every sampler against the lowest FD on that grid
    (itself: ``0 [0, 0]``) and ``pair[0]`` minus ``pair[1]``; per NFE, every cell against the lowest FD of the
    whole map."""
    keys = [(g, s, k) for g in grids for s in names for k in nfes if (g, s, k) in feats]
    boot = features.paired_bootstraps({c: feats[c] for c in keys}, reference, replicates=replicates, seed=seed)
    return _paired_layout(boot, grids=grids, names=names, nfes=nfes, level=level, pair=pair)


def paired_pf(
    sq: dict,
    *,
    grids=GRIDS,
    names=COMPARED,
    nfes=(4, 5, 8, 10),
    replicates: int = 200,
    level: float = 0.95,
    seed: int = 0,
    pair=("accelerated_ode", "ddim"),
) -> dict:
    """:func:`paired_fd` for distances to the probability-flow solution: ``sq[(grid, sampler, nfe)]`` holds the
    per-noise squared distances (:func:`pf_squared_distances`); the value is their root-mean-square and the rows
    (noises) are resampled together (:func:`rms_bootstraps`)."""
    keys = [(g, s, k) for g in grids for s in names for k in nfes if (g, s, k) in sq]
    boot = rms_bootstraps({c: sq[c] for c in keys}, replicates=replicates, seed=seed)
    return _paired_layout(boot, grids=grids, names=names, nfes=nfes, level=level, pair=pair)


def grid_block(paired: dict, grid: str, nfe) -> dict | None:
    """The comparison on one grid (``paired[grid][str(nfe)]`` of :func:`paired_fd`) in the form
    :func:`recommend` takes, ``{"best": {"grid", "sampler"}, "diff": {grid: {sampler: diff}}}``; ``None`` when
    absent."""
    block = (paired or {}).get(grid, {}).get(str(nfe))
    if not block:
        return None
    rows = {s: e for s, e in block.items() if isinstance(e, dict) and "vs" in e}
    best = next(iter(rows.values()))["vs"]
    return {"best": {"grid": grid, "sampler": best}, "diff": {grid: {s: e["diff"] for s, e in rows.items()}}}


class PFReferenceError(ValueError):
    """The probability-flow reference is not accurate enough for the distances it is meant to measure."""


def check_pf_reference(rms_vs_half: dict, distances: dict, *, max_ratio: float = 0.05, strict: bool = False) -> dict:
    """The reference's own error against the distances it measures, per start level: ``rms_vs_half[t]`` (RMS
    difference of the reference to its half-step solve, :func:`pf_reference`) over the smallest of the
    ``distances[t]`` (the distances measured from start level ``t``).  Returns ``{str(t): {"rms_vs_half",
    "smallest_distance", "ratio", "ok"}}`` with ``ok`` = ``ratio < max_ratio``; a start level without distances
    gets ``ratio`` null and ``ok`` false.  ``strict``: raise :class:`PFReferenceError` naming every failing level
    instead of flagging it."""
    if not 0 < max_ratio < 1:
        raise ValueError(f"need 0 < max_ratio < 1, got {max_ratio}")
    out = {}
    for t, err in rms_vs_half.items():
        ds = [float(d) for d in distances.get(t, distances.get(str(t), [])) if math.isfinite(float(d))]
        smallest = min(ds) if ds else None
        ratio = None if not smallest else float(err) / smallest
        out[str(t)] = {
            "rms_vs_half": float(err),
            "smallest_distance": smallest,
            "ratio": ratio,
            "ok": ratio is not None and ratio < max_ratio,
        }
    bad = {t: r["ratio"] for t, r in out.items() if not r["ok"]}
    if strict and bad:
        raise PFReferenceError(
            "the probability-flow reference's error (RMS difference to its half-step solve) is not below "
            f"{max_ratio:.0%} of the smallest distance it measures at start level(s) "
            + ", ".join(f"t = {t} (ratio {'n/a' if r is None else f'{r:.3f}'})" for t, r in bad.items())
            + "; raise the reference's number of steps (pf_reference_nfe)"
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# Distance to the probability-flow solution
# ----------------------------------------------------------------------------------------------------------------
def pf_reference(eps_fn, schedule, t_start: int, noise: torch.Tensor, *, nfe: int = 40, batch_size: int = 256) -> dict:
    r"""The probability-flow solution from ``noise`` at training step ``t_start`` to ``alpha_bar = 1``:
    DPM-Solver++(2M) in float64 on ``nfe`` steps uniform in log-SNR from ``t_start`` to step 0
    (:func:`~accelerated_diffusion.schedules.logsnr_timesteps`), and the same with ``nfe // 2`` steps as a
    convergence check.  ``eps_fn`` should be the model in float64 (``models.load_unet(..., dtype=torch.float64)``).
    Returns ``{"solution", "t_start", "nfe", "rms_vs_half"}`` (RMS over noises of the difference to the
    half-step solve: an upper estimate of the reference's own error)."""
    x = noise.double()
    sol = {}
    for k in (int(nfe), int(nfe) // 2):
        ts = logsnr_timesteps(schedule.alpha_bars, k, t_max=int(t_start))
        sol[k] = generate(eps_fn, schedule, "dpm_solver_pp_2m", "logsnr", k, x, batch_size=batch_size, timesteps=ts)
    return {
        "solution": sol[int(nfe)],
        "t_start": int(t_start),
        "nfe": int(nfe),
        "rms_vs_half": rms_with_ci(sol[int(nfe) // 2], sol[int(nfe)])["value"],
    }


def pf_distance(samples: torch.Tensor, reference: torch.Tensor, level: float = 0.95) -> dict:
    """RMS over noises of the Euclidean distance between paired samples and reference solutions (images in
    [-1, 1], unclipped), with the ``level`` t-interval of :func:`rates.rms_with_ci`."""
    return rms_with_ci(samples.double(), reference.double(), level)


def pf_squared_distances(samples: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Per noise, the squared Euclidean distance between a sample and its reference solution (the terms whose
    mean :func:`pf_distance` takes the root of), for :func:`paired_pf`."""
    d = (samples.double().cpu() - reference.double().cpu()).flatten(1)
    return d.pow(2).sum(1).numpy()


# ----------------------------------------------------------------------------------------------------------------
# The sampler x grid map and the recommendation
# ----------------------------------------------------------------------------------------------------------------
def _cell(comparison: dict, grid: str, name: str, nfe, metric: str):
    entry = comparison.get(grid, {}).get(name, {}).get(str(nfe))
    return None if entry is None else entry.get(metric)


def comparison_map(comparison: dict, nfe, metric: str = "fd", *, grids=GRIDS, names=COMPARED) -> dict:
    """``{name: {grid: {"value", "ci"} or None}}`` at ``nfe`` for ``metric`` (``"fd"`` or ``"pf"``) from a
    ``comparison[grid][sampler][str(nfe)]`` results block."""
    return {n: {g: _cell(comparison, g, n, nfe, metric) for g in grids} for n in names}


def short_label(name: str) -> str:
    """The label of sampler ``name`` in the text tables: :data:`SHORT_LABELS`, else the registry's label."""
    return SHORT_LABELS.get(name, samplers.label(name))


def wrap_items(head: str, items, *, width: int = TEXT_WIDTH, indent: str = "  ", sep: str = ",") -> str:
    """``head`` followed by ``items`` separated by ``sep`` and a space, in lines of at most ``width`` characters
    broken only between items (an item longer than a line gets a line of its own); continuation lines start
    with ``indent``."""
    items = [str(it) for it in items]
    tokens = [f"{it}{sep}" for it in items[:-1]] + items[-1:]
    lines, line = [], head
    for tok in tokens:
        joined = f"{line} {tok}" if line.strip() else line + tok
        if len(joined) <= width or not line.strip():
            line = joined
        else:
            lines.append(line)
            line = indent + tok
    return "\n".join(lines + [line])


def fill_text(text: str, *, width: int = TEXT_WIDTH, indent: str = "  ") -> str:
    """``text`` in lines of at most ``width`` characters, broken at spaces only, never inside a hyphenated word,
    a number or an interval ``[lo, hi]``; continuation lines start with ``indent``."""
    glued = re.sub(r"\[[^\]]*\]", lambda m: m.group().replace(" ", "\0"), text)
    out = textwrap.fill(glued, width, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)
    return out.replace("\0", " ")


def ci_text(c: dict) -> str:
    """An estimate with its interval, ``{"value", "ci": [lo, hi]}``, as ``value [lo, hi]``: :func:`.tables.interval`
    (3 significant digits; values of 100 or more as integers, never in exponent form)."""
    return interval(c)


def format_table(header, rows, *, indent: str = "  ", gap: int = 2) -> str:
    """Rows ``(label, [cell, ...])`` as fixed-width text under ``header`` (one title per cell column): labels
    left-aligned after ``indent``, cells and titles right-aligned, each column as wide as its widest entry plus
    ``gap`` spaces."""
    rows = [(str(lab), [str(c) for c in cells]) for lab, cells in rows]
    if any(len(cells) != len(header) for _, cells in rows):
        raise ValueError(f"every row needs {len(header)} cells, one per column title")
    lab = max(len(lab) for lab, _ in rows)
    widths = [max([len(h)] + [len(cells[j]) for _, cells in rows]) + gap for j, h in enumerate(header)]
    lines = [indent + " " * lab + "".join(f"{h:>{w}s}" for h, w in zip(header, widths))]
    for row_label, cells in rows:
        lines.append(indent + f"{row_label:{lab}s}" + "".join(f"{c:>{w}s}" for c, w in zip(cells, widths)))
    return "\n".join(lines)


def label_legend(names=COMPARED, *, width: int = TEXT_WIDTH) -> str:
    """One line (wrapped at ``width``) saying what the short labels of ``names`` stand for; empty when none is
    shortened."""
    pairs = [f"{short_label(n)} = {samplers.label(n)}" for n in names if short_label(n) != samplers.label(n)]
    return wrap_items("", pairs, width=width, sep=";") if pairs else ""


def format_map(
    comparison: dict, nfe, metric: str = "fd", *, grids=GRIDS, names=COMPARED, width: int = TEXT_WIDTH, paired=None
) -> str:
    """The map at ``nfe`` as fixed-width text no wider than ``width`` characters, one row per sampler (labels
    from :func:`short_label`): ``value [lo, hi]`` (3 significant digits; values of 100 or more as integers);
    ``*`` marks the best cell and every cell not separated from it (:func:`recommend`, with the ``paired`` block
    at this NFE when given).  Grids that do not fit side by side are split into tables of equal (or nearly
    equal) numbers of grids, separated by a blank line."""
    m = comparison_map(comparison, nfe, metric, grids=grids, names=names)
    rec = recommend(comparison, nfe, metric, grids=grids, names=names, paired=paired)
    tied = {(rec["best"]["grid"], rec["best"]["sampler"])} | {(t["grid"], t["sampler"]) for t in rec["ties"]}
    text = {}
    for n in names:
        for g in grids:
            c = m[n][g]
            value = interval(c, missing="-")
            text[n, g] = value + ("*" if (g, n) in tied else " ")
    w = max(len(t) for t in text.values())
    text = {key: t.rjust(w) for key, t in text.items()}  # the same column width in every table
    titles = {g: (g + " ").rjust(w) for g in grids}
    lab = max(len(short_label(n)) for n in names)
    per_table = max(1, (width - lab) // (w + 2))
    n_tables = -(-len(grids) // per_table)
    size = -(-len(grids) // n_tables)
    grids = list(grids)
    return "\n\n".join(
        format_table(
            [titles[g] for g in grids[i : i + size]],
            [(short_label(n), [text[n, g] for g in grids[i : i + size]]) for n in names],
            indent="",
        )
        for i in range(0, len(grids), size)
    )


def recommend(comparison: dict, nfe, metric: str = "fd", *, grids=GRIDS, names=COMPARED, paired=None) -> dict:
    """The rule: the cell (grid, sampler) with the lowest value, and every cell not separated from it (equally
    recommendable at this sample size).  With ``paired`` (the block at this NFE, ``{"best": {"grid",
    "sampler"}, "diff": {grid: {sampler: {"value", "ci"}}}}``, from :func:`paired_fd` / :func:`paired_pf` or
    :func:`grid_block`) a cell is tied when its paired difference from the best contains 0 (:func:`classify`);
    without it, when the marginal intervals overlap (:func:`separated`; for results files that hold no paired
    differences).  Returns ``{"best": {"grid", "sampler", "value", "ci"}, "ties": [...same, with "diff" when
    paired...], "paired": bool}``."""
    cells = [
        {"grid": g, "sampler": n, **c}
        for n in names
        for g in grids
        if (c := _cell(comparison, g, n, nfe, metric)) is not None and math.isfinite(c["value"])
    ]
    if not cells:
        raise ValueError(f"no {metric} values at nfe={nfe}")
    best = min(cells, key=lambda c: c["value"])
    if paired is None:
        ties = [c for c in cells if c is not best and separated(c, best) == 0]
    else:
        pb = paired["best"]
        if (pb["grid"], pb["sampler"]) != (best["grid"], best["sampler"]):
            raise ValueError(
                f"the paired differences are taken against {pb['sampler']} on {pb['grid']}, but the "
                f"lowest {metric} among these cells is {best['sampler']} on {best['grid']}"
            )
        ties = []
        for c in cells:
            if c is best:
                continue
            d = paired["diff"].get(c["grid"], {}).get(c["sampler"])
            if d is None:
                raise ValueError(f"no paired difference for {c['sampler']} on {c['grid']} at nfe={nfe}")
            if classify(d) == 0:
                ties.append({**c, "diff": d})
    return {"best": best, "ties": sorted(ties, key=lambda c: c["value"]), "paired": paired is not None}


def format_recommendation(rec: dict, *, width: int = TEXT_WIDTH, label=short_label) -> str:
    """The result of :func:`recommend` as text of at most ``width`` characters a line: the lowest cell, then
    every cell not separated from it (in increasing order of value)."""
    b = rec["best"]
    ties = [f"{label(t['sampler'])} on {t['grid']}" for t in rec["ties"]] or ["none"]
    return wrap_items(f"lowest: {label(b['sampler'])} on {b['grid']}; not separated from it:", ties, width=width)


# ----------------------------------------------------------------------------------------------------------------
# Per-step diagnostics of the accelerated deterministic sampler
# ----------------------------------------------------------------------------------------------------------------
def step_diagnostics(schedule, grid: str, nfe: int) -> list[dict]:
    r"""Per step ``i`` of ``grid`` at ``nfe`` (path ending at ``alpha_bar = 1``): the levels ``abar_t ->
    abar_prev``, the extrapolation ratio ``(abar_prev - abar_t) / (abar_t - abar_next)`` (how far beyond the last
    two evaluations the accelerated sampler extrapolates eps, linear in ``abar``), its correction coefficient
    ``c`` of ``c (eps_{t+1} - eps_t)`` (:func:`updates.accelerated_ode_coefficient`) and DDIM's ``c_eps``
    (:func:`updates.ddim_coefficients`).  The first step has no correction (``None``)."""
    ts = grid_timesteps(schedule, nfe, grid)
    path = [float(a) for a in schedule.path(ts, 1.0)]
    rows = []
    for i in range(len(ts)):
        a_t, a_prev = path[i], path[i + 1]
        c_eps = updates.ddim_coefficients(a_t, a_prev)[1]
        row = {
            "step": i + 1,
            "t": int(ts[i]),
            "alpha_bar_t": a_t,
            "alpha_bar_prev": a_prev,
            "c_eps": c_eps,
            "ratio": None,
            "c": None,
        }
        if i > 0:
            a_next = path[i - 1]
            row["ratio"] = (a_prev - a_t) / (a_t - a_next)
            row["c"] = updates.accelerated_ode_coefficient(a_next, a_t, a_prev)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# A few samplers against fixed baselines
# ----------------------------------------------------------------------------------------------------------------
def compare_samplers(
    eps_fn,
    schedule,
    noise: torch.Tensor,
    names,
    *,
    baselines=("ddim", "accelerated_ode"),
    grids=GRIDS,
    nfes=(5, 10),
    classifier=None,
    reference=None,
    replicates: int = 200,
    level: float = 0.95,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> dict:
    """Fréchet distances of ``names`` and ``baselines`` (deterministic registry names) on every grid and NFE, all
    from the same ``noise``, and each of ``names`` minus each baseline with its paired bootstrap interval
    (:func:`.features.paired_differences`): ``{"fd": {grid: {sampler: {str(nfe): {"value", "ci"}}}}, "paired":
    {grid: {str(nfe): {"<name>-<baseline>": {"value", "ci"}}}}, "num_samples"}``.  Names are checked before any
    model call."""
    everyone = list(dict.fromkeys([*baselines, *names]))
    for n in everyone:
        if samplers.spec(n).stochastic:
            raise ValueError(f"compare_samplers compares deterministic samplers; {n!r} is stochastic")
    for g in grids:
        if g not in GRIDS:
            raise ValueError(f"unknown grid {g!r}; expected one of {GRIDS}")
    out = {"fd": {}, "paired": {}, "num_samples": int(noise.shape[0]), "baselines": list(baselines)}
    jobs = [(g, k) for g in grids for k in nfes]
    for g, k in tqdm(jobs, desc="safeguarded samplers", disable=not progress, leave=False):
        feats = {
            n: image_features(generate(eps_fn, schedule, n, g, k, noise, batch_size=batch_size), classifier)
            for n in everyone
        }
        boot = features.paired_bootstraps(feats, reference, replicates=replicates, seed=seed)
        for n in everyone:
            value, resampled = boot[n]
            ci = features.bootstrap_interval(value, resampled, level)
            out["fd"].setdefault(g, {}).setdefault(n, {})[str(k)] = {"value": float(value), "ci": ci}
        out["paired"].setdefault(g, {})[str(k)] = {
            f"{n}-{b}": features.difference_interval(boot[n], boot[b], level) for n in names for b in baselines
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# Exact-score control
# ----------------------------------------------------------------------------------------------------------------
def exact_eps_fn(target, schedule):
    """``eps_fn(x, t)`` with integer training steps ``t`` for an exact-score target (``target.eps(x, abar_t)``)."""
    abar = schedule.alpha_bars

    def fn(x: torch.Tensor, t) -> torch.Tensor:
        return target.eps(x.double(), float(abar[int(t)])).to(x.dtype)

    return fn


def hybrid_eps_fn(eps_fn, exact_fn, first_t):
    """``eps_fn`` everywhere except at training step ``first_t`` (an integer, or a collection of steps), where
    ``exact_fn`` answers (the learned model with the exact noise prediction at its first step(s) only)."""
    steps = {int(first_t)} if isinstance(first_t, (int, np.integer)) else {int(t) for t in first_t}

    def fn(x: torch.Tensor, t) -> torch.Tensor:
        return exact_fn(x, t) if int(t) in steps else eps_fn(x, t)

    return fn


def exact_score_control(
    target,
    schedule,
    noise: torch.Tensor,
    *,
    grids=GRIDS,
    nfes=(4, 5, 8, 10),
    names=("ddim", "accelerated_ode"),
    reference_nfe: int = 200,
    level: float = 0.95,
    progress: bool = False,
) -> dict:
    r"""The distance to the probability-flow solution with the *exact* noise prediction of ``target`` (e.g.
    :func:`rates.fit_fashion_mnist_mixture`) on the model's grids: ``{"values": {grid: {name: {str(nfe):
    {"value", "ci"}}}}, "paired": {grid: {str(nfe): {"value", "ci"}}}, "reference": {str(t_start):
    rms_vs_half}}``, all in float64 from ``noise``; ``paired`` is ``names[1]`` minus ``names[0]`` with the paired
    bootstrap over noises (:func:`rms_bootstraps`, :func:`.features.difference_interval`)."""
    fn = exact_eps_fn(target, schedule)
    x = noise.double()
    refs, values, sq = {}, {}, {}
    jobs = [(g, k) for g in grids for k in nfes]
    for g, k in tqdm(jobs, desc="exact-score control", disable=not progress, leave=False):
        ts = grid_timesteps(schedule, k, g)
        t0 = int(ts[0])
        if t0 not in refs:
            refs[t0] = pf_reference(fn, schedule, t0, x, nfe=reference_nfe, batch_size=len(x))
        for n in names:
            y = generate(fn, schedule, n, g, k, x, batch_size=len(x))
            values.setdefault(g, {}).setdefault(n, {})[str(k)] = pf_distance(y, refs[t0]["solution"], level)
            sq[g, n, k] = pf_squared_distances(y, refs[t0]["solution"])
    paired = {}
    if len(names) >= 2:
        boot = rms_bootstraps(sq)
        for g, k in jobs:
            paired.setdefault(g, {})[str(k)] = features.difference_interval(
                boot[g, names[1], k], boot[g, names[0], k], level
            )
    return {
        "values": values,
        "paired": paired,
        "reference": {str(t): r["rms_vs_half"] for t, r in refs.items()},
        "reference_nfe": reference_nfe,
        "num_samples": len(x),
    }


# ----------------------------------------------------------------------------------------------------------------
# diffusers' own peers against the library
# ----------------------------------------------------------------------------------------------------------------
#: diffusers' own schedulers and the library samplers that compute the same rules (the registry's ``same_rule_as``).
_PEER_PAIRS = tuple((n, s.same_rule_as) for n, s in samplers.SAMPLERS.items() if s.same_rule_as is not None)


def peer_agreement(eps_fn, schedule, noise: torch.Tensor, *, grids=GRIDS, nfes=(5, 10)) -> dict:
    """Max abs difference between diffusers' ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` (float32
    noise, the schedulers' own arithmetic) and the library's ``dpm_solver_pp_2m`` / ``unipc_bh2`` run in float64,
    from the same noise: ``{grid: {str(nfe): {"diffusers_dpm_solver_pp_2m": d, "diffusers_unipc_bh2": d or
    None}}}``; ``None`` where diffusers' UniPC cannot visit the grid (it takes no custom timesteps)."""
    out = {}
    for g in grids:
        for k in nfes:
            ts = grid_timesteps(schedule, k, g)
            row = {}
            for peer, ours in _PEER_PAIRS:
                try:
                    theirs = samplers.run_sampler(eps_fn, noise.float(), peer, schedule, ts)
                except ValueError:
                    row[peer] = None
                    continue
                mine = samplers.run_sampler(eps_fn, noise.double(), ours, schedule, ts)
                row[peer] = float((theirs.double().cpu() - mine.cpu()).abs().max())
            out.setdefault(g, {})[str(k)] = row
    return out


# ----------------------------------------------------------------------------------------------------------------
# Plot helpers
# ----------------------------------------------------------------------------------------------------------------
def _to_display(img: torch.Tensor) -> np.ndarray:
    img = ((img.detach().float().clamp(-1, 1) + 1) / 2).cpu()
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def image_grid(rows, row_labels, col_labels, *, cell: float = 0.72, label_width: float = 1.5, fontsize: int = 9):
    """A matplotlib figure with one row of images (``(C, H, W)`` in ``[-1, 1]``, or ``None``: shown as "n/a") per
    entry of ``rows``, row labels on the left and column labels on top; ``cell`` inches per image.  Returns the
    figure."""
    import matplotlib.pyplot as plt

    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(cell * nc + label_width, cell * nr + 0.4), squeeze=False)
    for r, (row, lab) in enumerate(zip(rows, row_labels)):
        for c in range(nc):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row) and row[c] is not None:
                ax.imshow(_to_display(row[c]), cmap="gray", vmin=0, vmax=1)
            elif c < len(row):  # a grid that cannot have this many steps
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=fontsize, transform=ax.transAxes)
            else:
                ax.axis("off")
            if r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=fontsize)
        axes[r][0].set_ylabel(lab, fontsize=fontsize, rotation=0, ha="right", va="center")
    fig.subplots_adjust(wspace=0.04, hspace=0.06)
    return fig


def map_heatmap(
    comparison: dict, nfes, metric: str = "fd", *, grids=GRIDS, names=COMPARED, fontsize: int = 8, paired=None
):
    """One heat-map panel per NFE (stacked vertically): rows samplers, columns grids, colour ``log10`` of the
    value, each cell annotated ``value`` and ``[lo, hi]``; the best cell and those not separated from it framed
    (:func:`recommend`; ``paired``: the ``paired_map`` of :func:`paired_fd`, keyed by ``str(nfe)``).  Returns the
    figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(nfes), 1, figsize=(6.9, 2.9 * len(nfes)), squeeze=False)
    for ax, k in zip(axes[:, 0], nfes):
        m = comparison_map(comparison, k, metric, grids=grids, names=names)
        vals = np.array([[np.nan if m[n][g] is None else m[n][g]["value"] for g in grids] for n in names])
        im = ax.imshow(np.log10(vals), cmap="viridis_r", aspect="auto")
        rec = recommend(
            comparison, k, metric, grids=grids, names=names, paired=None if paired is None else paired[str(k)]
        )
        framed = [rec["best"]] + rec["ties"]
        for i, n in enumerate(names):
            for j, g in enumerate(grids):
                c = m[n][g]
                if c is None:
                    continue
                ax.text(
                    j,
                    i,
                    f"{num(c['value'])}\n[{num(c['ci'][0])}, {num(c['ci'][1])}]",
                    ha="center",
                    va="center",
                    fontsize=fontsize - 1,
                    color="white" if np.log10(c["value"]) > np.nanmean(np.log10(vals)) else "black",
                )
        for c in framed:
            i, j = names.index(c["sampler"]), grids.index(c["grid"])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_xticks(range(len(grids)), grids, fontsize=fontsize + 1)
        ax.set_yticks(range(len(names)), [samplers.label(n) for n in names], fontsize=fontsize + 1)
        ax.set_title(f"{k} NFE", fontsize=fontsize + 2)
        fig.colorbar(im, ax=ax, label=f"log10 {metric.upper()}", shrink=0.8)
    fig.tight_layout()
    return fig
