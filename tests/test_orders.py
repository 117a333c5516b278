"""Local orders of convergence (experiments.orders): local slopes, settledness and verdicts on synthetic error
sequences whose behaviour is known in closed form."""

import math

import numpy as np
import pytest

from accelerated_diffusion.experiments import orders, rates

# the linear schedule's grid of the rates chapter (NFE = S - 1)
NFE = [4, 7, 9, 19, 24, 39, 49, 99, 124, 199, 249, 499, 999]
N = np.array(NFE, dtype=float)


def test_local_slopes_of_a_pure_power_law():
    ls = orders.local_slopes(NFE, 3.0 * N**-1.5)
    assert ls["slope"] == pytest.approx([-1.5] * (len(NFE) - 1), abs=1e-12)
    assert ls["nfe"] == pytest.approx(np.sqrt(N[:-1] * N[1:]).tolist())
    assert ls["between"][0] == [4.0, 7.0] and ls["between"][-1] == [499.0, 999.0]


def test_a_pure_power_law_is_settled_at_its_exponent():
    e = 0.7 * N**-2.0
    v = orders.verdict(NFE, e, -2.0, T=[n + 1 for n in NFE])
    assert v["settled"] and v["verdict"] == "agrees"
    assert v["local_slope_at_max_T"] == pytest.approx(-2.0) and v["spread"] == pytest.approx(0.0, abs=1e-12)
    assert v["T_max"] == 1000
    assert orders.verdict(NFE, e, -1.0)["verdict"] == "faster"
    assert orders.verdict(NFE, e, -2.5)["verdict"] == "slower"
    # window fits of a power law do not depend on the start
    w = orders.window_fits(NFE, e)
    assert w["slope"] == pytest.approx([-2.0] * (len(NFE) - 2)) and w["nfe_min"][-1] == 249.0


def test_a_sum_of_power_laws_is_not_settled_and_flattens():
    # T^-1 + c T^-2: the faster term fades, the local slope drifts from near -2 towards -1
    e = N**-1.0 + 300.0 * N**-2.0
    v = orders.verdict(NFE, e, -1.0, T=[n + 1 for n in NFE])
    assert not v["settled"] and v["trend"] == "flattening"
    assert v["verdict"] == "not settled by T = 1000 (flattening)"
    ls = orders.local_slopes(NFE, e)["slope"]
    assert ls[0] < -1.8 and -1.5 < ls[-1] < -1.0 and all(np.diff(ls) > 0)
    # the same with T^-1/2 + c T^-3/2
    assert orders.verdict(NFE, N**-0.5 + 100.0 * N**-1.5, -0.5)["trend"] == "flattening"
    assert not orders.verdict(NFE, N**-0.5 + 100.0 * N**-1.5, -0.5)["settled"]


def test_a_crossover_steepens_and_is_not_settled():
    # 1/sqrt(T) up to N0, 1/T beyond: the DDPM-type picture on a mixture with a narrow mode
    e = N**-0.5 * (1 + N / 300.0) ** -0.5
    v = orders.verdict(NFE, e, -0.5)
    assert not v["settled"] and v["trend"] == "steepening" and v["verdict"].startswith("not settled by T = 999")
    # ... while at practical NFE it is still 1/sqrt(T)
    p = orders.practical(NFE, e, -0.5, nfe_max=30)
    assert p["settled"] and p["verdict"] == "agrees" and p["nfe_limit"] == 30
    assert p["slope_range"][0] > -0.55


def test_drift_on_a_coarse_window_is_rescaled_to_half_a_decade():
    # the last half-decade holds two pairs whose midpoints are 0.3 decades apart; a local slope moving by 0.08
    # between them moves by 0.13 per half-decade: not settled, although the range alone is below 0.1
    nfe = [62.0, 125.0, 250.0, 500.0, 1000.0]
    slopes = [-1.0, -1.0, -1.0, -1.08]
    e = [1.0]
    for (a, b), p in zip(zip(nfe[:-1], nfe[1:]), slopes):
        e.append(e[-1] * (b / a) ** p)
    s = orders.settledness(nfe, e)
    assert s["window_slopes"] == pytest.approx([-1.0, -1.08])
    assert s["spread"] == pytest.approx(0.08) and s["drift"] == pytest.approx(-0.08 * 0.5 / math.log10(2))
    assert not s["settled"] and s["trend"] == "steepening"


def test_log_factor_verdict():
    # (log T / T)^2 on the paper schedule's T range: slower than -2 against T, agrees against T / log T
    T = np.array([10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000], dtype=float)
    e = (np.log(T) / T) ** 2
    v = orders.verdict(T - 1, e, -2.0, T=T, T_over_logT=T / np.log(T))
    assert v["verdict"] == "agrees up to log T" and v["settled_vs_T_over_logT"]
    assert v["local_slope_at_max_T_vs_T_over_logT"] == pytest.approx(-2.0, abs=0.02)
    assert v["local_slope_at_max_T"] > -1.8
    assert orders.verdict(T - 1, e, -2.0)["verdict"] != "agrees up to log T"


def test_annotate_and_claims():
    assert set(orders.CLAIMS) == set(rates.SAMPLERS)
    assert orders.claim("accelerated_ode") == -2.0 and orders.claim("ddpm_type") == -0.5
    with pytest.raises(ValueError):
        orders.claim("no_such_sampler")
    T = [n + 1 for n in NFE]
    res = {
        "ddim": {"T": T, "nfe": NFE, "tv": (N**-1.0).tolist()},
        "ddpm_type": {"T": T, "nfe": NFE, "tv": (N**-0.5 * (1 + N / 300.0) ** -0.5).tolist()},
    }
    orders.annotate(res, "tv")
    assert res["ddim"]["verdict"]["verdict"] == "agrees" and res["ddim"]["verdict"]["claimed"] == -1.0
    assert set(res["ddim"]["local_slopes"]) >= {"nfe", "slope"}
    assert {"claimed", "local_slope_at_max_T", "settled", "verdict"} <= set(res["ddpm_type"]["verdict"])
    assert res["ddpm_type"]["verdict"]["verdict"] == "not settled by T = 1000 (steepening)"
    assert res["ddpm_type"]["practical"]["nfe_limit"] == orders.PRACTICAL_NFE


def test_bad_input_raises():
    with pytest.raises(ValueError):
        orders.local_slopes([1, 2, 3], [1.0, 0.0, 0.5])  # zero error
    with pytest.raises(ValueError):
        orders.local_slopes([1, 3, 2], [1.0, 0.5, 0.2])  # not increasing
    with pytest.raises(ValueError):
        orders.local_slopes([1, 2], [1.0, None])
    with pytest.raises(ValueError):
        orders.practical(NFE, N**-1.0, -1.0, nfe_max=5)
    # one pair in the window: not settled
    assert not orders.settledness([10, 100, 1000], [1.0, 0.1, 0.01], decades=0.2)["settled"]


def test_report_tables_and_order_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from accelerated_diffusion.experiments import report

    T = [n + 1 for n in NFE]
    seqs = {
        "accelerated_ode": N**-2.0,
        "ddim_type": N**-1.0,
        "accelerated_sde": N**-1.0,
        "ddpm_type": N**-0.5 * (1 + N / 300.0) ** -0.5,
    }
    res = {
        s: orders.annotate(
            {m: {"T": T, "nfe": NFE, "tv": e.tolist()} for m, e in seqs.items()}, "tv", log_factor=s == "paper"
        )
        for s in ("paper", "linear")
    }
    rows = report.verdict_rows({"synthetic": res})
    assert len(rows) == 8 and rows[0]["sampler"] == "accelerated_ode"
    text = report.format_verdicts(rows)
    assert "accelerated ODE: claimed slope -2 (paper)" in text and "not settled (steepening)" in text
    assert text.count("agrees") == 6
    assert "[-0.60,-0.51] -0.60 yes     agrees" in report.format_verdicts(rows, practical=True)
    # both tables fit the book's text column (about 80 characters of output)
    assert max(len(line) for t in (text, report.format_verdicts(rows, practical=True)) for line in t.splitlines()) <= 77
    assert report.format_window_fits(res["linear"]).splitlines()[1].split()[-1] == "-2.00"
    fig = report.order_figure(res, style=rates.STYLE, title="synthetic")
    ax = fig.axes[0]
    assert [round(y, 2) for y in sorted({float(l.get_ydata()[0]) for l in ax.lines if l.get_linestyle() == "--"})] == [
        -2.0,
        -1.0,
        -0.5,
    ]
    assert ax.get_xscale() == "log" and ax.get_ylabel() and ax.get_xlabel()
    plt.close(fig)
