r"""The records, tables and figures of the chapter "Rates with exact scores" (``chapters/rates_exact_scores.ipynb``).

The chapter runs the experiments of :mod:`.rates` and :mod:`.exact_1d`; this module turns their output into

* the results records it saves (``rates_gaussian.json``, ``rates_mixture2d.json``, ``rates_fashion_mnist.json``;
  schema in ``data/results/README.md``): :func:`gaussian_record`, :func:`dimension_sweep`,
  :func:`mixture2d_record`, :func:`fashion_mnist_record`;
* HTML tables read from those records (:class:`.tables.Table`, re-exported here as ``Table``; intervals as
  ``"-1.01 [-1.05, -0.97]"``, :func:`.tables.interval` with two decimals): :func:`verdict_table`,
  :func:`slope_table`, :func:`mc_slope_table` and the smaller ones below;
* its figures: :func:`summary_figure` (the chapter's main result), :func:`tv_figure`, :func:`mc_figure`, ...;
* the numbers its text quotes (:func:`quoted_numbers`, pasted with ``{glue}``).

Every sampler list is taken from the records (or :data:`.rates.SAMPLERS`, the registry's), so a sampler added to
the registry appears in every table and figure.  matplotlib is imported inside the plotting functions only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import samplers, updates
from . import orders, rates, tables
from .report import CLAIM_SAMPLERS, _short
from .tables import Table

__all__ = [
    "PARAMETERS",
    "Table",
    "interval",
    "lambda_uniform_path",
    "lambda_uniform_errors",
    "gaussian_record",
    "dimension_sweep",
    "mc_block",
    "mixture2d_record",
    "fashion_mnist_record",
    "verdict_table",
    "slope_table",
    "mc_slope_table",
    "init_error_table",
    "path_slope_table",
    "last_step_table",
    "dimension_table",
    "mode_mass_table",
    "rms_table",
    "tv_last_table",
    "fold_table",
    "exploration_table",
    "window_fit_table",
    "quoted_numbers",
    "summary_figure",
    "tv_figure",
    "init_error_figure",
    "lambda_path_figure",
    "dimension_figure",
    "mc_figure",
    "histogram_grid",
    "image_grid",
    "exploration_figure",
]

#: The chapter's parameters (its ``parameters`` cell), recorded in every results file it writes.
PARAMETERS = (
    "d",
    "paper_Ts",
    "linear_Ts",
    "c0",
    "c1",
    "fit_min_nfe",
    "dims",
    "dim_T",
    "mix_Ts",
    "mix_samples",
    "mix_ref_steps",
    "mix_paper_Ts",
    "mix_paper_samples",
    "mix_ell",
    "fm_Ts",
    "fm_samples",
    "fm_rank",
    "fm_ref_steps",
    "seed",
    "mix1d_target",
    "mix1d_paper_Ts",
    "mix1d_explore",
    "workers",
)

SCHEDULES = ("paper", "linear")
_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def _label(m: str) -> str:
    return samplers.label(m)


def _count(n: int) -> str:
    return _WORDS[n] if 0 <= n < len(_WORDS) else str(n)


# ==============================================================================================================
# Tables
# ==============================================================================================================
def interval(value: float, ci, digits: int = 2) -> str:
    """``value [lo, hi]`` with ``digits`` decimals: :func:`.tables.interval` with ``decimals=digits``, the book's one
    format for a number with its interval (this module's tables call that directly)."""
    return tables.interval(value, ci, decimals=digits)


def _claim_label(m: str, claimed: float) -> str:
    return f"{_label(m)} ({claimed:g})"


def verdict_table(rows: list[dict], *, practical: bool = False, caption: str = "") -> Table:
    """The verdict table of :func:`.report.verdict_rows` (one row per claim sampler, target and schedule): the
    claim (sampler and claimed slope), target, schedule, largest ``T``, the local slope there (and against
    ``T / log T`` where recorded) and the verdict (:func:`.orders.verdict`).  With ``practical`` the same for the
    runs with NFE <= :data:`.orders.PRACTICAL_NFE` (:func:`.orders.practical`), with the range of the local slopes
    there instead of the slope against ``T / log T``."""
    out = []
    for r in rows:
        v = r["practical"] if practical else r
        claim = _claim_label(r["sampler"], v["claimed"])
        if practical:
            lo, hi = v["slope_range"]
            extra = f"{lo:.2f} to {hi:.2f}"
        else:
            g = v.get("local_slope_at_max_T_vs_T_over_logT")
            extra = f"{g:.2f}" if g is not None else "–"
        out.append(
            [
                claim,
                r["target"],
                r["schedule"],
                str(v["T_max"]),
                f"{v['local_slope_at_max_T']:.2f}",
                extra,
                _short(v["verdict"]),
            ]
        )
    cols = [
        "claim (slope)",
        "target",
        "schedule",
        "T",
        "local slope",
        "range" if practical else "vs T/log T",
        "verdict",
    ]
    return Table(cols, out, caption=caption, group=2)


def _fit(r: dict, metric: str | None, logt: bool = False):
    """``(value, ci)`` of a fit in either schema: Gaussian records ``slopes[metric(_vs_T_over_logT)]`` with
    ``slope``, exact 1-d records ``slope(_vs_T_over_logT)`` with ``value``; ``None`` where absent."""
    if metric is None:
        f = r.get("slope_vs_T_over_logT" if logt else "slope")
        return None if not f else (f["value"], f["ci"])
    f = r.get("slopes", {}).get(metric + ("_vs_T_over_logT" if logt else ""))
    return None if not f else (f["slope"], f["ci"])


def slope_table(results: dict, metric: str | None = None, *, schedules=SCHEDULES, caption: str = "") -> Table:
    """Fitted slopes with their 95% intervals, one row per sampler of ``results[schedule]`` (in its order): one
    column per schedule and, where recorded (paper schedule), one against ``T / log T``.  ``metric``: the key in
    a Gaussian record's ``slopes`` (``"tv"``, ``"rms_flow"``, ...); ``None`` for the exact 1-d records
    (``slope``).  Samplers without that fit (``rms_flow`` of a stochastic sampler) are left out."""
    methods = list(dict.fromkeys(m for s in schedules for m in results[s]))
    cols, keys = ["sampler"], []
    for s in schedules:
        for logt in (False, True):
            if any(_fit(results[s][m], metric, logt) for m in results[s]):
                cols.append(f"{s}, vs T/log T" if logt else s)
                keys.append((s, logt))
    rows = []
    for m in methods:
        cells = [_fit(results[s][m], metric, logt) if m in results[s] else None for s, logt in keys]
        if any(cells):
            rows.append([_label(m)] + [tables.interval(*c, decimals=2) if c else "–" for c in cells])
    return Table(cols, rows, caption=caption)


MC_METRICS = (
    ("rms_flow", "RMS distance", "RMS distance\nto the reference"),
    ("median_flow", "median distance", "median distance\nto the reference"),
    ("mmd2", "MMD²", "MMD$^2$ (CI excludes 0)"),
)


def mc_slope_table(block: dict, *, caption: str = "") -> Table:
    """Slopes against NFE of the Monte Carlo errors of one schedule block (``block["results"][sampler]["slopes"]``,
    :func:`mc_block`): one row per sampler, one column per metric of :data:`MC_METRICS`; ``–`` where there is no
    fit (no such error, or fewer than three MMD² values whose interval excludes 0)."""
    rows = []
    for m, r in block["results"].items():
        sl = r["slopes"]
        rows.append(
            [_label(m)]
            + [tables.interval(sl[k]["slope"], sl[k]["ci"], decimals=2) if sl.get(k) else "–" for k, _, _ in MC_METRICS]
        )
    return Table(["sampler"] + [name for _, name, _ in MC_METRICS], rows, caption=caption)


def init_error_table(G: dict, method: str = "accelerated_ode", *, caption: str = "") -> Table:
    """KL at the largest NFE of ``method`` on each schedule: started from the exact ``q_T``, from N(0, I), and the
    initialisation error ``KL(q_T || N(0, I))`` itself."""
    rows = []
    for s, R in G["results"].items():
        r = R[method]
        rows.append(
            [s, str(r["nfe"][-1]), f"{r['kl'][-1]:.3g}", f"{r['kl_standard_start'][-1]:.3g}", f"{r['kl_init'][-1]:.3g}"]
        )
    return Table(["schedule", "NFE", "start q_T", "start N(0,I)", "KL(q_T || N(0,I))"], rows, caption=caption)


PATHS = (
    ("leading, to q_1", None),
    ("uniform in λ", "linear_lambda_uniform"),
    ("+ jump to ᾱ = 1", "linear_to_data"),
)


def path_slope_table(G: dict, *, caption: str = "") -> Table:
    """Slope of the RMS distance to the exact flow map on the linear schedule's end points (:data:`PATHS`): the
    ``leading`` path to ``q_1``, levels uniform in ``lambda`` (:func:`lambda_uniform_errors`) and the leading path
    with the final jump to ``alpha_bar = 1``; one row per deterministic sampler of the diagnostics."""
    rows = []
    for m in G["diagnostics"]["linear_lambda_uniform"]:
        if m == "path":
            continue
        cells = []
        for _, key in PATHS:
            r = G["results"]["linear"][m] if key is None else G["diagnostics"][key][m]
            cells.append(f"{r['slopes']['rms_flow']['slope']:.2f}")
        rows.append([_label(m)] + cells)
    return Table(["sampler"] + [name for name, _ in PATHS], rows, caption=caption)


def last_step_table(Ss=(10, 100, 1000), *, caption: str = "") -> Table:
    """The last step of the ``S``-step leading path of the linear schedule (:func:`.rates.make_path`): its end
    points in ``lambda`` (:func:`.updates.half_log_snr`), its width ``h`` and ``1 - alpha_bar`` at both ends."""
    rows = []
    for S in Ss:
        p = rates.make_path("linear", int(S))
        la, lb = updates.half_log_snr(p[-2]), updates.half_log_snr(p[-1])
        rows.append(
            [str(S), f"{la:.2f} → {lb:.2f}", f"{lb - la:.2f}", f"{1 - float(p[-2]):.2e} → {1 - float(p[-1]):.2e}"]
        )
    return Table(["S", "λ", "h", "1 − ᾱ"], rows, caption=caption)


def dimension_table(G: dict, *, caption: str = "") -> Table:
    """Slope of KL in the dimension ``d`` (``d >= 4``) of every sampler of the dimension sweep."""
    R = G["dimension_sweep"]["results"]
    rows = [[_label(m), f"{r['slope_in_d']['kl']['slope']:.2f}"] for m, r in R.items()]
    return Table(["sampler", "slope of KL in d"], rows, caption=caption)


def mode_masses(y: torch.Tensor, means: torch.Tensor) -> tuple[np.ndarray, float]:
    """The share of the samples ``y`` nearest each of ``means`` (mode masses) and the mean distance of a sample
    to its nearest mean (spread)."""
    dist = torch.cdist(y, means)
    masses = torch.bincount(dist.argmin(1), minlength=means.shape[0]).double() / y.shape[0]
    return masses.numpy(), float(dist.min(1).values.mean())


def mode_mass_table(panels: dict, mix, *, caption: str = "") -> Table:
    """Mode masses and spread (:func:`mode_masses`) of each set of samples in ``panels`` (name: samples), after a
    first row with the mixture's weights."""
    k = mix.num_components
    rows = [["target weights"] + [f"{w:.3f}" for w in mix.weights.numpy()] + [""]]
    for name, y in panels.items():
        w, spread = mode_masses(y, mix.means)
        rows.append([name] + [f"{v:.3f}" for v in w] + [f"{spread:.3f}"])
    return Table(["samples"] + [f"mode {i + 1}" for i in range(k)] + ["spread"], rows, caption=caption)


def rms_table(block: dict, *, caption: str = "") -> Table:
    """The RMS distance to the reference flow solution against NFE: one row per sampler with such an error."""
    R = block["results"]
    names = [m for m in R if R[m]["rms_flow"][0] is not None]
    nfe = R[names[0]]["nfe"]
    rows = []
    for m in names:
        if R[m]["nfe"] != nfe:
            raise ValueError(f"{m}: NFE {R[m]['nfe']} differ from {nfe}")
        rows.append([_label(m)] + [f"{e['value']:.3g}" for e in R[m]["rms_flow"]])
    return Table(["NFE"] + [str(n) for n in nfe], rows, caption=caption)


def tv_last_table(X1: dict, *, caption: str = "") -> Table:
    """The exact TV of every sampler at the largest ``T`` of each schedule (1-d record)."""
    R = X1["results"]
    first = {s: next(iter(R[s].values())) for s in R}
    cols = ["sampler"] + [f"{s}, T = {first[s]['T'][-1]}" for s in R]
    methods = list(dict.fromkeys(m for s in R for m in R[s]))
    rows = [[_label(m)] + [f"{R[s][m]['tv'][-1]:.2e}" if m in R[s] else "–" for s in R] for m in methods]
    return Table(cols, rows, caption=caption)


def fold_table(X1: dict, *, caption: str = "") -> Table:
    """Every run whose deterministic map folds (``folds`` of the 1-d record): schedule, sampler, ``T``, the start
    points with ``Phi' <= 0`` (x), their mass under ``q_T``, their images (y), and the level and step at which
    the map from the start first folds."""
    rows = []
    for s, R in X1["results"].items():
        for m, r in R.items():
            for f in r.get("folds", []):
                rows.append(
                    [
                        s,
                        _label(m),
                        str(f["T"]),
                        f"[{f['x_range'][0]:.2f}, {f['x_range'][1]:.2f}]",
                        f"{f['mass']:.3f}",
                        f"[{f['y_range'][0]:.2f}, {f['y_range'][1]:.2f}]",
                        f"{f['first_level']:.6f}",
                        str(f["first_step"]),
                    ]
                )
    return Table(["schedule", "sampler", "T", "x", "mass", "y", "level", "step"], rows, caption=caption, group=2)


def _components(t: dict) -> str:
    return ", ".join(f"{w:.1f} N({mu:g}, {v:g})" for w, mu, v in zip(t["weights"], t["means"], t["variances"]))


def _explored(X1: dict) -> list[dict]:
    """The exploration targets of the 1-d record, then the main target on the linear schedule, in one form."""
    R = X1["results"]["linear"]
    methods = [m for m in X1["exploration"][0] if m not in ("target", "schedule", "T")]
    main = {"target": X1["target"], "T": R[methods[0]]["T"], **{m: R[m] for m in methods}}
    return X1["exploration"] + [main], methods


def exploration_table(X1: dict, *, caption: str = "") -> Table:
    """The exact TV of the explored stochastic samplers at the smallest and the largest ``S`` of the linear
    schedule, for the exploration targets and the main one."""
    targets, methods = _explored(X1)
    rows = []
    for e in targets:
        rows.append(
            [_components(e["target"]), f"{e['T'][0]}–{e['T'][-1]}"]
            + [f"{e[m]['tv'][0]:.3g} → {e[m]['tv'][-1]:.3g}" for m in methods]
        )
    return Table(["target", "S"] + [_label(m) for m in methods], rows, caption=caption)


def window_fit_table(results: dict, methods=CLAIM_SAMPLERS, *, nfe_from: float = 0.0, caption: str = "") -> Table:
    """Least-squares slopes over ``NFE >= start`` (``results[sampler]["window_fits"]``, one schedule) for every
    start ``>= nfe_from``: one row per sampler of ``methods``, one column per start."""
    starts = [n for n in results[methods[0]]["window_fits"]["nfe_min"] if n >= nfe_from]
    rows = []
    for m in methods:
        by = dict(zip(results[m]["window_fits"]["nfe_min"], results[m]["window_fits"]["slope"]))
        rows.append([_label(m)] + [f"{by[n]:.2f}" for n in starts])
    return Table(["NFE ≥"] + [str(int(n)) for n in starts], rows, caption=caption)


# ==============================================================================================================
# Records: what the chapter saves
# ==============================================================================================================
def lambda_uniform_path(path: torch.Tensor) -> torch.Tensor:
    """A path with the end points and the number of levels of ``path`` whose levels are uniform in ``lambda =
    log-SNR / 2`` (:func:`.updates.half_log_snr`; ``alpha_bar = sigmoid(2 lambda)``); the end points are copied
    exactly."""
    lam = torch.linspace(
        updates.half_log_snr(path[0]), updates.half_log_snr(path[-1]), path.numel(), dtype=torch.float64
    )
    q = torch.sigmoid(2 * lam)
    q[0], q[-1] = path[0], path[-1]
    return q


def lambda_uniform_errors(target, Ts, methods=rates.DETERMINISTIC) -> dict:
    """RMS distance to the exact flow map (:func:`.rates.gaussian_errors`) of each deterministic sampler on the
    linear schedule's ``S``-level paths for ``S`` in ``Ts``, with the levels made uniform in ``lambda``
    (:func:`lambda_uniform_path`): ``{sampler: {"nfe": [...], "rms_flow": [...]}}``."""
    out = {m: {"nfe": [], "rms_flow": []} for m in methods}
    for T in Ts:
        q = lambda_uniform_path(rates.make_path("linear", int(T)))
        for m in methods:
            out[m]["nfe"].append(q.numel() - 1)
            out[m]["rms_flow"].append(rates.gaussian_errors(target, q, m)["rms_flow"])
    return out


def _fits_for(res: dict, schedule: str, fit_min_nfe: dict, metrics=("tv", "tv_upper", "kl", "rms_flow", "w2")):
    # slopes of every metric over NFE >= fit_min_nfe[schedule]; on the paper schedule, whose step is
    # c1 log T / T, also against T / log T
    out = {}
    x_min = fit_min_nfe[schedule]
    for m, r in res.items():
        out[m] = {}
        for k in metrics:
            if r.get(k) is None or r[k][0] is None:
                continue
            out[m][k] = rates.fit_slope(r["nfe"], r[k], x_min=x_min)
            if schedule == "paper":
                x = [T / math.log(T) for T in r["T"]]
                out[m][k + "_vs_T_over_logT"] = rates.fit_slope(x, r[k], x_min=x_min / math.log(x_min))
    return out


def _diagnostic(res: dict, path: str, x_min: float) -> dict:
    return {
        "path": path,
        **{
            m: {**r, "slopes": {"rms_flow": rates.fit_slope(r["nfe"], r["rms_flow"], x_min=x_min)}}
            for m, r in res.items()
        },
    }


def gaussian_record(
    target, gauss: dict, to_data: dict, lambda_uniform: dict, *, fit_min_nfe: dict, c0: float, c1: float, seed: int
) -> dict:
    """The record ``rates_gaussian.json`` (without its dimension sweep, :func:`dimension_sweep`): the Gaussian
    ``target`` (``rates.gaussian_target(d, seed)``), the sweeps ``gauss[schedule]`` of
    :func:`.rates.gaussian_rate_sweep`, their fitted slopes (over NFE >= ``fit_min_nfe[schedule]``), the local
    slopes, window fits and verdicts of the exact TV (:func:`.orders.annotate`) and the two linear-schedule
    diagnostics (``to_data``: with the final jump to ``alpha_bar = 1``; ``lambda_uniform``:
    :func:`lambda_uniform_errors`)."""
    n = len(next(iter(gauss.values())))
    record = {
        "description": (
            f"Closed-form errors of {_count(n)} samplers driven by the exact eps of a Gaussian target, started from "
            "the exact q_T"
        ),
        "target": {
            "kind": "Gaussian",
            "d": target.dim,
            "mean": target.mean.tolist(),
            "cov": target.cov.tolist(),
            "eigenvalues": torch.linalg.eigvalsh(target.cov).tolist(),
            "construction": "rates.gaussian_target(d, seed)",
            "seed": seed,
        },
        "metrics": {
            "kl": "KL(q_out || p_out), sampler started from the exact q_T",
            "tv": "TV(q_out, p_out), exact (rates.gaussian_tv: Gil-Pelaez inversion, relative accuracy 1e-4), start q_T",
            "tv_upper": "sqrt(kl / 2), Pinsker's upper bound on TV(q_out, p_out)",
            "w2": "2-Wasserstein distance between q_out and p_out (start q_T)",
            "rms_flow": (
                "sqrt(E ||Phi(x) - Phi*(x)||^2), x ~ q_T, distance to the exact probability-flow map (deterministic "
                "samplers; null otherwise)"
            ),
            "kl_standard_start": "KL(q_out || p_out) with the sampler started from N(0, I)",
            "kl_init": "KL(q_T || N(0, I)), the initialisation error",
        },
        "schedules": {
            "paper": {
                "c0": c0,
                "c1": c1,
                "path": "all T levels abar_T..abar_1 of paper_betas(T, c0, c1); NFE = T - 1; output compared with q_1",
            },
            "linear": {
                "betas": "linear 1e-4..0.02, 1000 steps",
                "spacing": "leading",
                "path": "abar at the T leading timesteps; NFE = T - 1; output compared with q at abar = 1 - 1e-4",
            },
        },
        "fit": {
            "x": "nfe",
            "x_min": fit_min_nfe,
            "level": 0.95,
            "note": "least squares of log error on log NFE; *_vs_T_over_logT: on log(T / log T)",
        },
        "results": {
            s: {m: {**gauss[s][m], "slopes": f} for m, f in _fits_for(gauss[s], s, fit_min_nfe).items()} for s in gauss
        },
        # local slopes, window fits and verdicts of the exact TV (orders.annotate)
        "orders_criterion": orders.CRITERION,
        "diagnostics": {
            "linear_to_data": _diagnostic(
                to_data, "linear leading timesteps then the final jump to abar = 1; NFE = T", fit_min_nfe["linear"]
            ),
            "linear_lambda_uniform": _diagnostic(
                lambda_uniform,
                "same end points as the linear path to q_1, levels uniform in lambda",
                fit_min_nfe["linear"],
            ),
        },
    }
    for s, R in record["results"].items():
        orders.annotate(R, "tv", log_factor=s == "paper")
    return record


def dimension_sweep(dims, T: int, *, c0: float, c1: float, seed: int, methods=rates.SAMPLERS) -> dict:
    """KL and Pinsker's bound on TV of every sampler on the Gaussian targets ``rates.gaussian_target(d, seed)``
    for ``d`` in ``dims``, paper schedule at ``T``, with the slopes of both in ``d`` (fitted on ``d >= 4``): the
    ``dimension_sweep`` entry of ``rates_gaussian.json``."""
    res = {m: {"d": [], "kl": [], "tv_upper": []} for m in methods}
    path = rates.make_path("paper", int(T), c0=c0, c1=c1)
    for d in dims:
        tg = rates.gaussian_target(d, seed=seed)
        for m in methods:
            e = rates.gaussian_errors(tg, path, m)
            res[m]["d"].append(d)
            res[m]["kl"].append(e["kl"])
            res[m]["tv_upper"].append(e["tv_upper"])
    for m in methods:
        res[m]["slope_in_d"] = {k: rates.fit_slope(res[m]["d"], res[m][k], x_min=4) for k in ("kl", "tv_upper")}
    return {"schedule": "paper", "T": T, "c0": c0, "c1": c1, "fit": "log error on log d, d >= 4", "results": res}


def _mc_fits(res: dict, x_min=None) -> dict:
    # slopes of the Monte Carlo errors: rms_flow and median_flow over all points (positive), mmd2 only where its
    # interval excludes zero (below the Monte Carlo noise it is unresolved); None with fewer than 3 points
    fits = {}
    for m in [m for m in rates.SAMPLERS if m in res] + [m for m in res if m not in rates.SAMPLERS and m != "ref_check"]:
        fits[m] = {}
        for k in ("rms_flow", "median_flow", "mmd2"):
            r = res[m][k]
            if r[0] is None:
                continue
            vals = [v["value"] if (k != "mmd2" or v["ci"][0] > 0) else None for v in r]
            try:
                fits[m][k] = rates.fit_slope(res[m]["nfe"], vals, x_min=x_min)
            except ValueError:
                fits[m][k] = None
    return fits


def mc_block(res: dict, schedule: dict, num_samples: int, ref_steps: int, x_min=None) -> dict:
    """One schedule's entry of a Monte Carlo record: the sweep ``res`` of :func:`.rates.mixture_rate_sweep` with
    each sampler's slopes against NFE (``rms_flow``, ``median_flow`` over all points, ``mmd2`` over the points
    whose interval excludes 0; ``None`` with fewer than three), and the reference solution's accuracy."""
    return {
        "schedule": schedule,
        "num_samples": num_samples,
        "reference": {
            "method": "dpm_solver_pp_2m, uniform in lambda (to 1 - 1e-12, then to 1, when the output level is 1)",
            "steps": ref_steps,
            "rms_difference_to_twice_the_steps": res["ref_check"],
        },
        "results": {m: {**res[m], "slopes": f} for m, f in _mc_fits(res, x_min).items()},
    }


_LINEAR_BETAS = "linear 1e-4..0.02, 1000 steps"


def mixture2d_record(
    mix, linear: dict, paper: dict, *, samples: dict, ref_steps: int, ell: float, c0: float, c1: float, seed: int
) -> dict:
    """The record ``rates_mixture2d.json``: the mixture ``mix`` (``rates.two_d_mixture(seed)``) and the sweeps of
    :func:`.rates.mixture_rate_sweep` on the linear (leading) and paper schedules (:func:`mc_block`);
    ``samples[schedule]`` the number of samples of each."""
    return {
        "description": "Monte Carlo errors on a 2-d Gaussian mixture with exact scores, started from the exact q_T",
        "target": {
            "kind": "GaussianMixture",
            "d": 2,
            "weights": mix.weights.tolist(),
            "means": mix.means.tolist(),
            "covs": mix.covs.tolist(),
            "construction": "rates.two_d_mixture(seed)",
        },
        "metrics": {
            "rms_flow": "RMS distance to the reference probability-flow solution from the same start (deterministic samplers)",
            "median_flow": (
                "median distance to the reference probability-flow solution, distribution-free 95% CI (deterministic "
                "samplers)"
            ),
            "mmd2": f"squared MMD, Gaussian kernel of bandwidth {ell}, exact target terms, 10 batches, batch-means 95% CI",
        },
        "seed": seed,
        "fit": "log value on log NFE, 95% t-interval; rms_flow, median_flow: all points; mmd2: points whose CI excludes 0",
        "schedules": {
            "linear": mc_block(
                linear,
                {"betas": _LINEAR_BETAS, "spacing": "leading", "final_alpha_bar": None},
                samples["linear"],
                ref_steps,
            ),
            "paper": mc_block(
                paper, {"c0": c0, "c1": c1, "path": "all T levels, output at abar_1"}, samples["paper"], ref_steps
            ),
        },
    }


def fashion_mnist_record(fm, res: dict, *, rank: int, ell: float, num_samples: int, ref_steps: int, seed: int) -> dict:
    """The record ``rates_fashion_mnist.json``: the mixture ``fm`` (``rates.fit_fashion_mnist_mixture(rank)``),
    the kernel bandwidth ``ell`` and the sweep ``res`` on the linear schedule (trailing spacing, final jump to
    ``alpha_bar = 1``; slopes over NFE >= 10)."""
    return {
        "description": (
            "Monte Carlo errors on a 10-component Gaussian mixture fitted to Fashion-MNIST (d = 784), exact scores, "
            "started from the exact q_T"
        ),
        "target": {
            "kind": "GaussianMixture, low-rank plus diagonal",
            "d": 784,
            "rank": rank,
            "diag_floor": 1e-3,
            "construction": "rates.fit_fashion_mnist_mixture(rank) on the training split scaled to [-1, 1]",
            "weights": fm.weights.tolist(),
        },
        "metrics": {
            "rms_flow": "RMS Euclidean distance (784 pixels) to the reference flow solution from the same start",
            "median_flow": "median Euclidean distance to the reference flow solution, distribution-free 95% CI",
            "mmd2": "squared MMD, Gaussian kernel, bandwidth = median distance of exact samples; 5 batches, 95% CI",
        },
        "kernel_bandwidth": ell,
        "seed": seed,
        "fit": (
            "log value on log NFE for NFE >= 10; rms_flow, median_flow: all points; mmd2: points whose CI excludes 0"
        ),
        "schedules": {
            "linear": mc_block(
                res,
                {"betas": _LINEAR_BETAS, "spacing": "trailing", "final_alpha_bar": 1.0},
                num_samples,
                ref_steps,
                x_min=10,
            )
        },
    }


# ==============================================================================================================
# Numbers quoted in the text
# ==============================================================================================================
#: Short names of the samplers in the chapter's glue keys (``x1-acc-ode-paper-slope``); a sampler not listed
#: gets its name with ``-`` for ``_``.
SHORT = {
    "ddim_type": "ddim-type",
    "ddim": "ddim",
    "accelerated_ode": "acc-ode",
    "dpm_solver_pp_2m": "dpm",
    "unipc_bh2": "unipc",
    "ddpm_type": "ddpm-type",
    "accelerated_sde": "acc-sde",
}


def _short_name(m: str) -> str:
    return SHORT.get(m, m.replace("_", "-"))


def _sci(v: float) -> str:
    # 8.07e-05 -> 8.1\cdot10^{-5}
    mant, exp = f"{v:.1e}".split("e")
    return rf"{mant}\cdot10^{{{int(exp)}}}"


def _slope_md(value: float, ci) -> str:
    return f"${value:.2f}$ $[{ci[0]:.2f}, {ci[1]:.2f}]$"


def _list_md(values) -> str:
    return ", ".join(f"${v:.2f}$" for v in values)


def _last_slope(T, err) -> float:
    # log-log slope between the last two points (NFE = T - 1)
    nfe = [t - 1 for t in T[-2:]]
    return math.log(err[-1] / err[-2]) / math.log(nfe[1] / nfe[0])


def quoted_numbers(G: dict, X1: dict, M: dict | None = None, F: dict | None = None) -> dict:
    """The numbers the chapter's text quotes, read from the records ``G`` (``rates_gaussian.json``), ``X1``
    (``rates_exact_1d.json``) and, where given, ``M`` (``rates_mixture2d.json``) and ``F``
    (``rates_fashion_mnist.json``): ``{key: (text, is_markdown)}``, pasted with ``{glue:md}`` (markdown, with its
    maths) or ``{glue:text}``.  Keys: ``x1-...`` fitted slopes and TV of the 1-d mixture, ``g-...`` of the
    Gaussian, ``v-...`` the local slopes of the verdicts (``v-{g|x1}-{schedule}-{sampler}-{slope|tlogt|prange|
    pslope}``), and a few derived numbers."""
    out: dict = {}

    def md(key, text):
        out[key] = (text, True)

    def txt(key, text):
        out[key] = (str(text), False)

    R1 = X1["results"]
    for s in SCHEDULES:
        for m, r in R1[s].items():
            k = _short_name(m)
            md(f"x1-{k}-{s}-slope", _slope_md(r["slope"]["value"], r["slope"]["ci"]))
            if r.get("slope_vs_T_over_logT"):
                f = r["slope_vs_T_over_logT"]
                md(f"x1-{k}-{s}-tlogt", _slope_md(f["value"], f["ci"]))
            md(f"x1-{k}-{s}-tv-last", f"${_sci(r['tv'][-1])}$")
        txt(f"x1-{s}-T-max", next(iter(R1[s].values()))["T"][-1])
    txt("x1-lin-S-fit", X1["fit"]["x_min"]["linear"] + 1)  # NFE = S - 1
    acc = X1["accuracy"]
    md("x1-acc-closed-form", f"${_sci(acc['gaussian']['max_rel_error'])}$")
    ref = acc["refinement"]
    md("x1-acc-refinement", f"${_sci(max(ref['max_rel_change'], ref['max_rel_change_folded']))}$")
    # folds of the deterministic maps on the linear schedule
    folds_lin = []
    for m, r in R1["linear"].items():
        if "folds" not in r:
            continue
        Ts = [f["T"] for f in r["folds"]]
        folds_lin += r["folds"]
        md(f"x1-{_short_name(m)}-folds", "$S = " + ", ".join(map(str, Ts)) + "$" if Ts else "no $S$")
        txt(f"x1-{_short_name(m)}-fold-max", max(Ts, default="none"))
    # the smallest S from which every folded region has mass below 1e-3
    S_all = next(iter(R1["linear"].values()))["T"]
    S_small = min((S for S in S_all if all(f["mass"] < 1e-3 for f in folds_lin if f["T"] >= S)), default="none")
    txt("x1-fold-mass-S", S_small)
    r = R1["linear"]["ddpm_type"]
    md("x1-ddpm-type-linear-last", f"${_last_slope(r['T'], r['tv']):.2f}$")
    # the other two targets (exploration), linear schedule
    E = X1["exploration"]
    md("x1-explore-S", rf"$S = {E[0]['T'][0]} \dots {E[0]['T'][-1]}$")
    for m in [m for m in E[0] if m not in ("target", "schedule", "T")]:
        md(f"x1-explore-{_short_name(m)}", _list_md([e[m]["slope"]["value"] for e in E]))
        md(f"x1-explore-{_short_name(m)}-last", _list_md([_last_slope(e["T"], e[m]["tv"]) for e in E]))
    txt("x1-explore-S-last", f"{E[0]['T'][-2]} and {E[0]['T'][-1]}")
    # gain in exponent of the accelerated ODE over DDIM-type where the flow is smooth
    GR = G["results"]
    gains = [
        GR[s]["ddim_type"]["slopes"]["tv"]["slope"] - GR[s]["accelerated_ode"]["slopes"]["tv"]["slope"]
        for s in SCHEDULES
    ]
    gains.append(R1["paper"]["ddim_type"]["slope"]["value"] - R1["paper"]["accelerated_ode"]["slope"]["value"])
    txt("x1-gain-range", f"{min(gains):.1f} to {max(gains):.1f}")
    # fitted slopes of the Gaussian target, every sampler and metric quoted
    for s in SCHEDULES:
        for m, r in GR[s].items():
            for metric, suffix in (("tv", "slope"), ("rms_flow", "flow")):
                f = r["slopes"].get(metric)
                if f:
                    md(f"g-{_short_name(m)}-{s}-{suffix}", _slope_md(f["slope"], f["ci"]))
                    txt(f"g-{_short_name(m)}-{s}-{suffix}-value", f"{f['slope']:.2f}")
                g = r["slopes"].get(metric + "_vs_T_over_logT")
                if g:
                    txt(f"g-{_short_name(m)}-{s}-{suffix}-tlogt-value", f"{g['slope']:.2f}")
    # verdict entries (orders.annotate)
    from .report import verdict_rows

    rows = verdict_rows({"Gaussian": GR, "mixture": R1})
    short_t = {"Gaussian": "g", "mixture": "x1"}
    for r in rows:
        key = f"v-{short_t[r['target']]}-{r['schedule']}-{_short_name(r['sampler'])}"
        md(f"{key}-slope", f"${r['local_slope_at_max_T']:.2f}$")
        if "local_slope_at_max_T_vs_T_over_logT" in r:
            md(f"{key}-tlogt", f"${r['local_slope_at_max_T_vs_T_over_logT']:.2f}$")
        p = r["practical"]
        lo, hi = p["slope_range"]
        md(f"{key}-prange", f"${lo:.2f}$ to ${hi:.2f}$")
        md(f"{key}-pslope", f"${p['local_slope_at_max_T']:.2f}$")
    ode_p = [r["practical"]["local_slope_at_max_T"] for r in rows if r["sampler"] == "accelerated_ode"]
    txt("v-acc-ode-practical-range", f"{min(ode_p):.2f} to {max(ode_p):.2f}")
    txt("v-log6-shift", f"{6 / math.log(1000):.2f}")  # log^6 T shifts a local slope by 6 / ln T at T = 1000
    # TV of DDPM-type over the accelerated SDE's at S = 100, mixture, linear schedule
    R = R1["linear"]
    i = R["ddpm_type"]["T"].index(100)
    txt("v-x1-sde-ratio", f"{R['ddpm_type']['tv'][i] / R['accelerated_sde']['tv'][i]:.1f}")
    # Gaussian: TV at the largest T and the smallest, paper schedule
    for m in ("ddim", "accelerated_ode", "ddpm_type", "accelerated_sde"):
        r = GR["paper"][m]
        md(f"g-{_short_name(m)}-paper-tv-last", f"${_sci(r['tv'][-1])}$")
        txt(f"g-{_short_name(m)}-paper-tv-first", f"{r['tv'][0]:.2g}")
    txt("g-paper-T-max", GR["paper"]["ddim"]["T"][-1])
    txt("g-paper-T-min", GR["paper"]["ddim"]["T"][0])
    # Gaussian: dimension sweep and the initialisation error
    D = G["dimension_sweep"]
    ks = [r["slope_in_d"]["kl"]["slope"] for r in D["results"].values()]
    txt("g-dim-kl-range", f"{min(ks):.2f} to {max(ks):.2f}")
    txt("g-dim-range", f"{D['results']['ddim']['d'][0]} to {D['results']['ddim']['d'][-1]}")
    ratios = [a / b for R_ in GR.values() for r in R_.values() for a, b in zip(r["tv"], r["tv_upper"])]
    txt("g-tv-pinsker-range", f"{min(ratios):.2f} to {max(ratios):.2f}")
    for s in SCHEDULES:
        r = GR[s]["accelerated_ode"]
        for k in ("kl", "kl_init", "kl_standard_start"):
            md(f"g-acc-ode-{s}-{k.replace('_', '-')}-last", f"${_sci(r[k][-1])}$")
    lin = GR["linear"]["ddim"]
    for S in (5, 10, 100, 1000):
        if S in lin["T"]:
            md(f"g-kl-init-S{S}", f"${_sci(lin['kl_init'][lin['T'].index(S)])}$")
    # diagnostics: slopes of the flow-map distance on the other linear paths
    for key, name in (("linear_lambda_uniform", "lambda"), ("linear_to_data", "jump")):
        for m, r in G["diagnostics"][key].items():
            if m != "path":
                txt(f"g-{_short_name(m)}-{name}-slope", f"{r['slopes']['rms_flow']['slope']:.2f}")
    # Monte Carlo mixtures: median slopes
    for name, rec in (("m2", M), ("fm", F)):
        if rec is None:
            continue
        for s, B in rec["schedules"].items():
            for m, r in B["results"].items():
                f = r["slopes"].get("median_flow")
                if f:
                    txt(f"{name}-{_short_name(m)}-{s}-median", f"{f['slope']:.2f}")
    if F is not None:  # how much smaller the accelerated ODE's RMS error is than DDIM's, at each NFE
        R = F["schedules"]["linear"]["results"]
        for n, a, b in zip(R["ddim"]["nfe"], R["ddim"]["rms_flow"], R["accelerated_ode"]["rms_flow"]):
            txt(f"fm-ddim-over-acc-ode-{n}", f"{a['value'] / b['value']:.1f}")
    return out


# ==============================================================================================================
# Figures
# ==============================================================================================================
def _guide(ax, nfe, err, exponent, **kw):
    """A dotted guide line of slope ``exponent`` through the last point of a curve, shifted up by a factor 2."""
    n = np.array([nfe[0], nfe[-1]], dtype=float)
    ax.loglog(n, 2 * err[-1] * (n / n[-1]) ** exponent, ":", color="gray", lw=1, **kw)


def summary_figure(G: dict, X1: dict, *, claims=CLAIM_SAMPLERS, style=None, figsize=(6.0, 6.4)):
    """The chapter's main result: the exact TV against NFE of each claim's accelerated sampler and its baseline
    (``claims`` in pairs, :data:`.report.CLAIM_SAMPLERS`), one row per claim, one column per exact target
    (Gaussian, 1-d mixture); paper schedule solid, linear dashed.  Each curve ends with its local slope at the
    largest ``T`` (the verdicts' number, :func:`.orders.verdict`); dotted: the claimed exponents, through the
    last point of each paper-schedule curve."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    style = style or rates.STYLE
    pairs = [tuple(claims[i : i + 2]) for i in range(0, len(claims), 2)]
    targets = ((f"Gaussian, d = {G['target']['d']}", G["results"]), ("1-d mixture", X1["results"]))
    fig, axes = plt.subplots(len(pairs), len(targets), figsize=figsize, sharex=True, squeeze=False)
    for i, pair in enumerate(pairs):
        for j, (tname, R) in enumerate(targets):
            ax = axes[i, j]
            ends = []  # (log10 TV at the last point, last NFE, local slope there, colour)
            for m in pair:
                c = style.get(m, {}).get("color")
                for s, ls in zip(SCHEDULES, ("-", "--")):
                    r = R[s][m]
                    ax.loglog(r["nfe"], r["tv"], ls, color=c, lw=1.4)
                    ends.append([math.log10(r["tv"][-1]), r["nfe"][-1], r["verdict"]["local_slope_at_max_T"], c])
                r = R["paper"][m]
                _guide(ax, r["nfe"], r["tv"], r["verdict"]["claimed"])
            _label_ends(ax, ends)
            if i == 0:
                ax.set_title(tname)
            if i == len(pairs) - 1:
                ax.set_xlabel("NFE")
            if j == 0:
                kind = "stochastic" if samplers.spec(pair[0]).stochastic else "deterministic"
                ax.set_ylabel(f"{kind} claim\nexact TV")
    handles = [Line2D([], [], color=style.get(m, {}).get("color"), lw=1.4, label=_label(m)) for m in claims]
    handles += [Line2D([], [], color="k", ls=ls, lw=1.4, label=s) for s, ls in zip(SCHEDULES, ("-", "--"))]
    handles.append(Line2D([], [], color="gray", ls=":", lw=1, label="claimed slope"))
    for ax in axes.flat:  # room on the right for the numbers (shared x axis: set once)
        nfe_max = max(ln.get_xdata()[-1] for ln in ax.get_lines())
    axes[0, 0].set_xlim(right=nfe_max * 6)
    fig.legend(handles=handles, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    return fig


def _label_ends(ax, ends, gap: float = 0.075):
    """Write each curve's number right of its last point, moved apart vertically where two would overlap (at
    least ``gap`` of the axis height, in log10 units)."""
    ax.autoscale_view()
    lo, hi = (math.log10(v) for v in ax.get_ylim())
    step = gap * (hi - lo)
    ends = sorted(ends)
    ys = [e[0] for e in ends]
    for i in range(1, len(ys)):
        ys[i] = max(ys[i], ys[i - 1] + step)
    for (y0, x, slope, c), y in zip(ends, ys):
        ax.annotate(f"{slope:.2f}", (x, 10**y0), xytext=(x * 1.25, 10**y), fontsize=10, color=c, va="center")


def _below_legend(fig, axes, ncol: int = 3, bottom: float = 0.16):
    # one legend for all panels under them, each label once
    entries = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(lab, h)
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=ncol)
    fig.tight_layout(rect=(0, bottom, 1, 1))


def tv_figure(
    results: dict,
    *,
    fit_from: dict,
    title: str = "",
    style=None,
    init_bound: bool = False,
    mark_folds: bool = False,
    guides=(-1.0, -2.0),
    figsize=(6.0, 8.6),
):
    """Exact TV against NFE of every sampler of ``results[schedule]``, one panel per schedule (fit window in the
    title: ``fit_from[schedule]``), one legend under the panels; dotted guides of slopes ``guides``.
    ``init_bound``: Pinsker's bound on the initialisation error, ``sqrt(KL(q_T || N(0, I)) / 2)`` (Gaussian
    records); ``mark_folds``: circles where a deterministic map folds (1-d records)."""
    import matplotlib.pyplot as plt

    style = style or rates.STYLE
    fig, axes = plt.subplots(len(results), 1, figsize=figsize, sharey=True, squeeze=False)
    for ax, (s, R) in zip(axes[:, 0], results.items()):
        for m, r in R.items():
            ax.loglog(r["nfe"], r["tv"], label=_label(m), ms=4, **style.get(m, {}))
            if mark_folds:
                folded = {f_["T"] for f_ in r.get("folds", [])}
                idx = [i for i, T in enumerate(r["T"]) if T in folded]
                ax.loglog(
                    [r["nfe"][i] for i in idx],
                    [r["tv"][i] for i in idx],
                    "o",
                    mfc="none",
                    mec="k",
                    ms=10,
                    label="map folds" if idx else None,
                )
        if init_bound:
            r = next(iter(R.values()))
            ax.loglog(
                r["nfe"], [math.sqrt(v / 2) for v in r["kl_init"]], "k--", lw=1, label=r"$\sqrt{KL(q_T\|N(0,I))/2}$"
            )
        n = np.array([10.0, 1000.0])
        for e in guides:
            ax.loglog(n, 2 * (n / 10) ** e, ":", c="gray", lw=1)
        ax.set_title(f"{title}{', ' if title else ''}{s} schedule (fit on NFE >= {fit_from[s]})")
        ax.set_xlabel("NFE (score evaluations)")
        ax.set_ylabel(r"$\mathrm{TV}(q_1, p_1)$ (exact)")
    _below_legend(fig, axes, ncol=2, bottom=0.17)
    return fig


def init_error_figure(
    G: dict, methods=("ddim", "accelerated_ode", "accelerated_sde"), *, style=None, figsize=(6.0, 4.6)
):
    """KL against NFE of ``methods`` started from the exact ``q_T`` (solid) and from N(0, I) (dashed), with the
    initialisation error ``KL(q_T || N(0, I))`` (dotted), one panel per schedule."""
    import matplotlib.pyplot as plt

    style = style or rates.STYLE
    fig, axes = plt.subplots(1, len(G["results"]), figsize=figsize, sharey=True, squeeze=False)
    for ax, (s, R) in zip(axes[0], G["results"].items()):
        for m in methods:
            r = R[m]
            ax.loglog(r["nfe"], r["kl"], label=f"{_label(m)}, start $q_T$", **style.get(m, {}))
            ax.loglog(
                r["nfe"],
                r["kl_standard_start"],
                "--",
                color=style.get(m, {}).get("color"),
                label=f"{_label(m)}, start $N(0,I)$",
            )
        ax.loglog(r["nfe"], r["kl_init"], "k:", label=r"$KL(q_T\|N(0,I))$")
        ax.set_title(f"{s} schedule", fontsize=10)
        ax.set_xlabel("NFE")
    axes[0, 0].set_ylabel(r"$\mathrm{KL}(q_1\|p_1)$")
    fig.legend(*axes[0, -1].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=10)
    fig.tight_layout(rect=(0, 0.24, 1, 1))
    return fig


def lambda_path_figure(G: dict, methods=None, *, style=None, figsize=(6.0, 5.6)):
    """RMS distance to the exact flow map against NFE on the linear schedule's ``leading`` path (solid) and on the
    path with the same end points uniform in ``lambda`` (dashed), for ``methods`` (default: every sampler of the
    diagnostic but the baselines)."""
    import matplotlib.pyplot as plt

    style = style or rates.STYLE
    D = G["diagnostics"]["linear_lambda_uniform"]
    methods = methods or [m for m in D if m != "path" and samplers.spec(m).role != "baseline"]
    fig, ax = plt.subplots(figsize=figsize)
    for m in methods:
        r = G["results"]["linear"][m]
        ax.loglog(r["nfe"], r["rms_flow"], label=f"{_label(m)}, leading", **style.get(m, {}))
        ax.loglog(
            D[m]["nfe"],
            D[m]["rms_flow"],
            "--",
            color=style.get(m, {}).get("color"),
            label=f"{_label(m)}, uniform in $\\lambda$",
        )
    ax.set_xlabel("NFE")
    ax.set_ylabel("RMS distance to the exact flow map")
    ax.set_title("Linear schedule: leading vs uniform in $\\lambda$")
    _below_legend(fig, ax, ncol=2, bottom=0.3)
    return fig


def dimension_figure(G: dict, *, style=None, figsize=(6.0, 5.2)):
    """KL against the dimension ``d`` of every sampler of the dimension sweep."""
    import matplotlib.pyplot as plt

    style = style or rates.STYLE
    D = G["dimension_sweep"]
    fig, ax = plt.subplots(figsize=figsize)
    for m, r in D["results"].items():
        ax.loglog(r["d"], r["kl"], label=_label(m), **style.get(m, {}))
    ax.set_xlabel("dimension d")
    ax.set_ylabel(r"$\mathrm{KL}(q_1\|p_1)$")
    ax.set_title(f"Dimension sweep, paper schedule, T = {D['T']}")
    _below_legend(fig, ax, ncol=3, bottom=0.22)
    return fig


def _plot_mc(axes, block, style):
    # one panel per metric (MC_METRICS), 95% intervals; lower ends clipped at 1% of the value on the log axis
    R = block["results"]
    for m, r in R.items():
        for ax, (k, _, _) in zip(axes, MC_METRICS):
            if r[k][0] is None:
                continue
            nfe = np.array(r["nfe"])
            v = np.array([e["value"] for e in r[k]])
            lo = np.array([e["ci"][0] for e in r[k]])
            hi = np.array([e["ci"][1] for e in r[k]])
            ok = v > 0 if k != "mmd2" else lo > 0
            lo = np.maximum(lo, 0.01 * v)
            ax.errorbar(
                nfe[ok],
                v[ok],
                yerr=[v[ok] - lo[ok], hi[ok] - v[ok]],
                label=_label(m),
                capsize=2,
                ms=4,
                **style.get(m, {}),
            )
    first = next(iter(R.values()))
    axes[0].plot(
        first["nfe"], block["reference"]["rms_difference_to_twice_the_steps"], "k--", label="reference accuracy"
    )
    for ax, (_, _, name) in zip(axes, MC_METRICS):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(name)


def _legend(where, axes, **kw):
    # one legend for all panels, each label once, in the order first met
    entries = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(lab, h)
    where.legend(list(entries.values()), list(entries), fontsize=10, **kw)


def mc_figure(blocks: dict, *, style=None, figsize=None):
    """The Monte Carlo errors (:data:`MC_METRICS`) of each schedule block of ``blocks`` (name: :func:`mc_block`
    entry) against NFE with their 95% intervals: one column per block (a 2 x 2 grid for a single block) and the
    reference solution's accuracy (dashed)."""
    import matplotlib.pyplot as plt

    style = style or rates.STYLE
    if len(blocks) == 1:
        fig, axes = plt.subplots(2, 2, figsize=figsize or (6.0, 5.8), sharex=True)
        _plot_mc([axes[0, 0], axes[0, 1], axes[1, 0]], next(iter(blocks.values())), style)
        for ax in axes[0]:
            ax.tick_params(labelbottom=True)
        axes[1, 1].set_axis_off()
        _legend(axes[1, 1], axes.flat, loc="center")
        fig.tight_layout()
        return fig
    fig, axes = plt.subplots(3, len(blocks), figsize=figsize or (6.0, 9.6), sharex="col", squeeze=False)
    for col, (s, B) in zip(axes.T, blocks.items()):
        _plot_mc(col, B, style)
        col[0].set_title(f"{s} schedule", fontsize=10)
    for ax in axes[:-1].flat:
        ax.set_xlabel("")
    _legend(fig, axes.flat, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def histogram_grid(panels: dict, mix, *, lim: float = 3.2, bins: int = 80, ncols: int = 3, figsize=(6.0, 7.4)):
    """2-d histograms of each set of samples of ``panels`` (name: samples) on ``[-lim, lim]^2`` with the density
    contours of the 2-d mixture ``mix``."""
    import matplotlib.pyplot as plt

    grid = torch.linspace(-lim, lim, 200, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    dens = mix.log_prob(torch.stack([gx, gy], -1).reshape(-1, 2)).exp().reshape(200, 200)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, sharex=True, sharey=True, squeeze=False)
    for ax, (name, y) in zip(axes.flat, panels.items()):
        ax.hist2d(y[:, 0].numpy(), y[:, 1].numpy(), bins=bins, range=[[-lim, lim], [-lim, lim]], cmap="Blues")
        ax.contour(gx.numpy(), gy.numpy(), dens.numpy(), levels=4, colors="k", linewidths=0.5)
        ax.set_title(name, fontsize=10)
        ax.set_aspect("equal")
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_axis_off()
        elif k + ncols >= len(panels):  # the lowest panel of its column
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("$x_1$")
    for ax in axes[:, 0]:
        ax.set_ylabel("$x_2$")
    fig.tight_layout()
    return fig


def image_grid(rows: dict, *, per_row: int = 8, width: float = 4.6):
    """One row of grey-scale images per entry of ``rows`` (name: images ``(n, 1, h, w)`` in ``[-1, 1]``), the
    first ``per_row`` of each, the name on the left."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), per_row, figsize=(width, len(rows) * 0.72), squeeze=False)
    for i, (name, y) in enumerate(rows.items()):
        for j in range(per_row):
            axes[i, j].imshow(y[j, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", fontsize=10)
    fig.tight_layout(w_pad=0.3, h_pad=0.3)
    return fig


def exploration_figure(X1: dict, *, style=None, figsize=(6.0, 8.4)):
    """Exact TV against NFE of the explored stochastic samplers on the exploration targets and the main target
    of the 1-d record (linear schedule), one panel per target; dotted: slope -1."""
    import matplotlib.pyplot as plt

    style = style or rates.STYLE
    targets, methods = _explored(X1)
    fig, axes = plt.subplots(len(targets), 1, figsize=figsize, sharex=True, sharey=True, squeeze=False)
    for ax, e in zip(axes[:, 0], targets):
        for m in methods:
            ax.loglog(np.array(e["T"]) - 1, e[m]["tv"], label=_label(m), **style.get(m, {}))
        n = np.array([10.0, 1000.0])
        ax.loglog(n, 0.5 * (n / 10) ** -1.0, ":", c="gray", lw=1, label="slope -1")
        ax.set_title(_components(e["target"]), fontsize=10)
        ax.set_ylabel(r"$\mathrm{TV}(q_1, p_1)$")
    axes[-1, 0].set_xlabel("NFE (linear schedule)")
    axes[0, 0].legend(fontsize=10)
    fig.tight_layout()
    return fig
