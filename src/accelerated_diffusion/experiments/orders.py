r"""Local orders of convergence: what a measured error sequence says about a claimed rate.

An error sequence ``e_1, ..., e_n`` measured at increasing numbers of score evaluations ``N_1 < ... < N_n`` follows
a power law ``e ~ C N^p`` at best asymptotically.  One least-squares line through all points averages a curved
sequence and its interval then measures the curvature, not the exponent.  This module looks at the sequence
locally instead:

* **local slopes** (:func:`local_slopes`): ``p_i = log(e_{i+1} / e_i) / log(N_{i+1} / N_i)`` between neighbouring
  runs, placed at the geometric mean ``sqrt(N_i N_{i+1})``.  For a pure power law every ``p_i`` equals ``p``; for a
  sum of power laws such as ``N^{-1} + c N^{-2}`` they drift from near ``-2`` towards ``-1`` (flattening: the
  slower term wins); a sequence that crosses over from a slow regime to a fast one, such as
  ``N^{-1/2} (1 + N / N_0)^{-1/2}``, steepens from ``-1/2`` to ``-1``;
* **window fits** (:func:`window_fits`): the least-squares slope over ``N >= N_k`` for every start ``N_k`` with at
  least three points, which shows how much a single fit depends on where it starts;
* **settledness** (:func:`settledness`) and a **verdict** (:func:`verdict`) by the criterion :data:`CRITERION`;
* **practical NFE** (:func:`practical`): the same verdict on the runs with ``N <= 100`` only, i.e. what holds at
  the step counts used in practice, as opposed to the asymptotic statement.

:func:`annotate` adds all of these to a rates results dictionary (``rates_gaussian.json``, ``rates_exact_1d.json``;
schema in ``data/results/README.md``).  Plots and tables of them are in :mod:`.report`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import samplers

__all__ = [
    "SETTLE_TOL",
    "SETTLE_DECADES",
    "AGREE_TOL",
    "PRACTICAL_NFE",
    "CRITERION",
    "CLAIMS",
    "claim",
    "local_slopes",
    "window_fits",
    "settledness",
    "verdict",
    "practical",
    "annotate",
]

#: A sequence has *settled* when its local slopes over the last :data:`SETTLE_DECADES` decades of NFE vary by less
#: than this (:func:`settledness`).
SETTLE_TOL = 0.1
#: Width, in decades of NFE, of the window at the end of a sequence in which settledness is judged.
SETTLE_DECADES = 0.5
#: A settled local slope *agrees* with a claimed exponent when it is within this of it.
AGREE_TOL = 0.1
#: The largest NFE counted as "practical" (:func:`practical`).
PRACTICAL_NFE = 100

#: The criterion, in words (quoted in the results files and the rates chapter).
CRITERION = (
    "local slope p_i = log(e_{i+1}/e_i) / log(N_{i+1}/N_i) between neighbouring runs, at sqrt(N_i N_{i+1}); "
    "settled when the local slopes of the neighbouring pairs that end in the last half-decade of NFE measured "
    "(N_{i+1} > N_max / 10^0.5, at least two pairs) vary by less than 0.1: their range, and their change from "
    "the first to the last of them rescaled to half a decade of NFE, both below 0.1; only then a verdict: "
    "agrees when the local slope at the largest T is within 0.1 of the claimed exponent, faster when it is "
    "more negative, slower when less negative (on the paper schedule 'agrees up to log T' when the local "
    "slopes against T / log T settle within 0.1 of it); otherwise 'not settled by T = ...' with the trend of "
    "the local slopes over that window (steepening: becoming more negative)"
)

#: The exponent of NFE claimed for each sampler's total-variation error, and where the claim comes from.  The
#: paper's abstract gives the four paper samplers and DDIM; the two peers and the book's two safeguarded variants are
#: listed with the nominal order of the method, which is not a claim of the paper.
CLAIMS = {
    "ddim_type": {"exponent": -1.0, "source": "paper (abstract): DDIM-type baseline, 1/T"},
    "ddim": {"exponent": -1.0, "source": "paper (abstract): DDIM, 1/T"},
    "accelerated_ode": {"exponent": -2.0, "source": "paper (abstract): accelerated deterministic sampler, 1/T^2"},
    "dpm_solver_pp_2m": {"exponent": -2.0, "source": "nominal order 2 of the method (not a claim of the paper)"},
    "unipc_bh2": {"exponent": -2.0, "source": "nominal order 2 of the method, bh2 (not a claim of the paper)"},
    "ddpm_type": {"exponent": -0.5, "source": "paper (abstract): DDPM-type baseline, 1/sqrt(T)"},
    "accelerated_sde": {"exponent": -1.0, "source": "paper (abstract): accelerated stochastic sampler, 1/T"},
    "accelerated_ode_lambda": {"exponent": -2.0, "source": "nominal order 2 of the method (the book's variant)"},
    "accelerated_ode_capped": {"exponent": -2.0, "source": "nominal order 2 of the method (the book's variant)"},
}


def claim(method: str) -> float:
    """The claimed exponent of ``method`` (:data:`CLAIMS`); ``ValueError`` for a sampler without one (unknown names
    raise the registry's error)."""
    samplers.spec(method)
    if method not in CLAIMS:
        raise ValueError(f"no claimed exponent for sampler {method!r}; add it to orders.CLAIMS")
    return CLAIMS[method]["exponent"]


def _sequence(nfe, err) -> tuple[np.ndarray, np.ndarray]:
    """``(N, e)`` as float arrays, checked: same length >= 2, ``N`` positive and strictly increasing, ``e`` positive
    and finite (``ValueError`` otherwise)."""
    n = np.asarray(nfe, dtype=float)
    if any(v is None for v in err):
        raise ValueError("the error sequence has missing (None) entries")
    e = np.asarray(err, dtype=float)
    if n.ndim != 1 or n.shape != e.shape:
        raise ValueError(f"nfe and err must be 1-d and of the same length, got {n.shape} and {e.shape}")
    if n.size < 2:
        raise ValueError(f"need at least 2 runs, got {n.size}")
    if not (np.all(np.isfinite(n)) and np.all(n > 0) and np.all(np.diff(n) > 0)):
        raise ValueError(f"nfe must be positive and strictly increasing, got {n.tolist()}")
    if not (np.all(np.isfinite(e)) and np.all(e > 0)):
        raise ValueError(f"errors must be positive and finite for a log-log slope, got {e.tolist()}")
    return n, e


def local_slopes(nfe, err) -> dict:
    r"""Local log-log slopes between neighbouring runs:

    .. math:: p_i = \frac{\log(e_{i+1} / e_i)}{\log(N_{i+1} / N_i)}, \qquad \text{at } \sqrt{N_i N_{i+1}}.

    Returns ``{"nfe": [sqrt(N_i N_{i+1}), ...], "slope": [p_i, ...], "between": [[N_i, N_{i+1}], ...]}``."""
    n, e = _sequence(nfe, err)
    p = np.diff(np.log(e)) / np.diff(np.log(n))
    return {
        "nfe": np.sqrt(n[:-1] * n[1:]).tolist(),
        "slope": p.tolist(),
        "between": [[float(a), float(b)] for a, b in zip(n[:-1], n[1:])],
    }


def window_fits(nfe, err, *, min_points: int = 3, level: float = 0.95) -> dict:
    """The least-squares slope of ``log e`` on ``log N`` over ``N >= N_k`` for every start ``N_k`` that leaves at
    least ``min_points`` runs (:func:`rates.fit_slope`, ``level`` t-interval): ``{"nfe_min": [...], "slope":
    [...], "ci": [[lo, hi], ...]}``.  How far these move with the start is how little one fit says about a
    curved sequence."""
    from .rates import fit_slope

    n, e = _sequence(nfe, err)
    if min_points < 3:
        raise ValueError(f"a fit with an interval needs min_points >= 3, got {min_points}")
    out = {"nfe_min": [], "slope": [], "ci": []}
    for k in range(n.size - min_points + 1):
        f = fit_slope(n, e, x_min=float(n[k]), level=level)
        out["nfe_min"].append(float(n[k]))
        out["slope"].append(f["slope"])
        out["ci"].append(f["ci"])
    return out


def settledness(nfe, err, *, tol: float = SETTLE_TOL, decades: float = SETTLE_DECADES) -> dict:
    """Whether the local slopes have settled by the criterion :data:`CRITERION`.

    The window is the neighbouring pairs ``(N_i, N_{i+1})`` with ``N_{i+1} > N_max / 10^decades`` (the last
    ``decades`` of NFE measured); with fewer than two pairs there the sequence is not settled.  Two measures of
    how much the local slope varies there, both required to be below ``tol``:

    * ``spread``: the range (max - min) of the window's local slopes;
    * ``drift``: the change from the first to the last of them per ``decades`` of NFE, ``(p_last - p_first)
      decades / log10(m_last / m_first)`` with ``m`` the pairs' geometric-mean NFE (on a coarse grid the window's
      pairs lie less than ``decades`` apart, and the range alone would understate a steady drift).

    Returns ``{"local_slope_at_max_T"`` (the last local slope), ``"window_nfe": [N_max / 10^decades, N_max]``,
    ``"window_slopes"``, ``"spread"``, ``"drift"`` (both null with fewer than two pairs), ``"settled"``,
    ``"trend"}``; trend ``"steepening"`` (the last slope of the window more negative than the first),
    ``"flattening"`` (less negative) or ``"constant"``."""
    if tol <= 0 or decades <= 0:
        raise ValueError(f"tol and decades must be positive, got tol={tol}, decades={decades}")
    ls = local_slopes(nfe, err)
    n_max = ls["between"][-1][1]
    edge = n_max / 10**decades
    sel = [i for i, (_, b) in enumerate(ls["between"]) if b > edge]
    window = [ls["slope"][i] for i in sel]
    spread = drift = None
    if len(window) >= 2:
        spread = max(window) - min(window)
        span = math.log10(ls["nfe"][sel[-1]] / ls["nfe"][sel[0]])
        drift = (window[-1] - window[0]) * decades / span
    change = window[-1] - window[0]
    trend = "steepening" if change < 0 else "flattening" if change > 0 else "constant"
    settled = spread is not None and spread < tol and abs(drift) < tol
    return {
        "local_slope_at_max_T": ls["slope"][-1],
        "window_nfe": [edge, n_max],
        "window_slopes": window,
        "spread": spread,
        "drift": drift,
        "settled": settled,
        "trend": trend,
    }


def verdict(
    nfe,
    err,
    claimed: float,
    *,
    T=None,
    T_over_logT=None,
    tol: float = SETTLE_TOL,
    decades: float = SETTLE_DECADES,
    agree_tol: float = AGREE_TOL,
) -> dict:
    """The verdict on a claimed exponent ``claimed`` for one error sequence, by :data:`CRITERION`.

    ``T``: the experiment's step parameter of each run (for the wording "not settled by T = ..."; default the
    NFE).  ``T_over_logT``: the abscissa ``T / log T`` of each run, for the paper schedule, whose step is
    ``c1 log T / T`` so that every rate on it carries a factor ``log T``; its local slopes are judged by the same
    criterion.  Verdict, in this order: ``"agrees"`` (settled against NFE, last local slope within ``agree_tol``
    of the claim); ``"agrees up to log T"`` (settled against ``T / log T`` and within ``agree_tol`` there);
    ``"faster"`` / ``"slower"`` (settled against NFE, more / less negative than the claim);
    ``"not settled by T = <T_max> (<trend>)"``.

    Returns ``{"claimed", "local_slope_at_max_T", "settled", "verdict", "trend", "spread", "drift",
    "window_nfe", "T_max", "nfe_max"}`` (``settled``, ``trend``, ``spread``, ``drift`` against NFE,
    :func:`settledness`) plus, with ``T_over_logT``, ``"local_slope_at_max_T_vs_T_over_logT"`` and
    ``"settled_vs_T_over_logT"``."""
    s = settledness(nfe, err, tol=tol, decades=decades)
    T_list = list(nfe) if T is None else list(T)
    if len(T_list) != len(nfe):
        raise ValueError(f"T has {len(T_list)} entries for {len(nfe)} runs")
    T_max = T_list[-1]
    T_max = int(T_max) if float(T_max).is_integer() else float(T_max)
    slope = s["local_slope_at_max_T"]
    out = {
        "claimed": float(claimed),
        "local_slope_at_max_T": slope,
        "settled": s["settled"],
        "verdict": None,
        "trend": s["trend"],
        "spread": s["spread"],
        "drift": s["drift"],
        "window_nfe": s["window_nfe"],
        "T_max": T_max,
        "nfe_max": float(nfe[-1]),
    }
    g = None
    if T_over_logT is not None:
        g = settledness(T_over_logT, err, tol=tol, decades=decades)
        out["local_slope_at_max_T_vs_T_over_logT"] = g["local_slope_at_max_T"]
        out["settled_vs_T_over_logT"] = g["settled"]
    if s["settled"] and abs(slope - claimed) <= agree_tol:
        out["verdict"] = "agrees"
    elif g is not None and g["settled"] and abs(g["local_slope_at_max_T"] - claimed) <= agree_tol:
        out["verdict"] = "agrees up to log T"
    elif s["settled"]:
        out["verdict"] = "faster" if slope < claimed else "slower"
    else:
        out["verdict"] = f"not settled by T = {T_max} ({s['trend']})"
    return out


def practical(nfe, err, claimed: float, *, nfe_max: float = PRACTICAL_NFE, T=None, T_over_logT=None, **kw) -> dict:
    """:func:`verdict` on the runs with ``N <= nfe_max`` only (what holds at practical step counts), plus
    ``"nfe_limit"`` and ``"slope_range": [min, max]`` of all local slopes there.  ``ValueError`` with fewer than
    three such runs."""
    keep = [i for i, v in enumerate(nfe) if v <= nfe_max]
    if len(keep) < 3:
        raise ValueError(f"need at least 3 runs with NFE <= {nfe_max}, got {len(keep)}")
    pick = lambda seq: None if seq is None else [seq[i] for i in keep]
    n, e = pick(list(nfe)), pick(list(err))
    out = verdict(
        n,
        e,
        claimed,
        T=pick(None if T is None else list(T)),
        T_over_logT=pick(None if T_over_logT is None else list(T_over_logT)),
        **kw,
    )
    slopes = local_slopes(n, e)["slope"]
    return {**out, "nfe_limit": nfe_max, "slope_range": [min(slopes), max(slopes)]}


def annotate(results: dict, metric: str = "tv", *, log_factor: bool = False) -> dict:
    """Adds to every sampler ``m`` of ``results`` (``{m: {"T", "nfe", metric: [...]}}``, one schedule) the keys
    ``local_slopes`` (:func:`local_slopes`), ``window_fits`` (:func:`window_fits`), ``verdict`` (:func:`verdict`
    against :func:`claim` ``(m)``) and ``practical`` (:func:`practical`; null with fewer than three runs at NFE <=
    :data:`PRACTICAL_NFE`), all of ``metric`` against NFE; with
    ``log_factor`` (paper schedule) the verdicts also look at ``T / log T``.  Returns ``results``."""
    for m, r in results.items():
        c = claim(m)
        nfe, err, T = r["nfe"], r[metric], r["T"]
        x = [t / math.log(t) for t in T] if log_factor else None
        r["local_slopes"] = local_slopes(nfe, err)
        r["window_fits"] = window_fits(nfe, err)
        r["verdict"] = verdict(nfe, err, c, T=T, T_over_logT=x)
        few = sum(v <= PRACTICAL_NFE for v in nfe) < 3
        r["practical"] = None if few else practical(nfe, err, c, T=T, T_over_logT=x)
    return results
