"""The sympy derivations (``accelerated_diffusion.experiments.derivations``) against the library code, and their symbolic claims.

Every final formula derived in ``derivations.py`` is lambdified and compared on random inputs with the function
of ``accelerated_diffusion.updates`` that implements it (coefficients and whole steps on random tensors).  The
symbolic claims the chapters make (residuals that vanish, orders of local truncation errors, leading terms of
series, moment errors) are checked here too, so a change in either the derivation or the code shows up.
"""

import math

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch

import accelerated_diffusion as ad
import oracles
from accelerated_diffusion.experiments import derivations as D
from accelerated_diffusion import updates

H = D.h


def _random_levels(n=25, gap=0.02):
    """Triples a_next < a_t < a_prev in (0, 1) with gaps of at least ``gap`` (well-conditioned steps)."""
    out, rng = [], np.random.default_rng(20240303)
    while len(out) < n:
        a = np.sort(rng.uniform(0.01, 0.999, 3))
        if np.min(np.diff(a)) > gap:
            out.append(tuple(float(v) for v in a))
    return out


LEVELS = _random_levels()


def _lambdify(expr, symbols, modules="math"):
    return sp.lambdify(symbols, expr, modules=modules)


def _assert_coefficients_match(derived, library, rtol=1e-10):
    for a_next, a_t, a_prev in LEVELS:
        np.testing.assert_allclose(derived(a_next, a_t, a_prev), library(a_next, a_t, a_prev), rtol=rtol, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Coefficients: derived formula vs library, random levels
# ----------------------------------------------------------------------------------------------------------------
LEVEL_SYMBOLS = (D.alpha_bar_next, D.alpha_bar_t, D.alpha_bar_prev)


def _derived(exprs):
    f = _lambdify(list(exprs), LEVEL_SYMBOLS)
    return lambda *a: tuple(f(*a))


def test_exact_ddim_coefficients_match_library():
    _assert_coefficients_match(_derived(D.exact_ddim_coefficients()), lambda n, t, p: updates.ddim_coefficients(t, p))


def test_ddim_type_coefficients_match_library():
    _assert_coefficients_match(
        _derived(D.ddim_type_coefficients()), lambda n, t, p: updates.ddim_type_coefficients(t, p)
    )


def test_ddpm_type_coefficients_match_library():
    _assert_coefficients_match(
        _derived(D.ddpm_type_coefficients()), lambda n, t, p: updates.ddpm_type_coefficients(t, p)
    )


def test_accelerated_ode_coefficient_matches_library():
    _assert_coefficients_match(
        _derived([D.accelerated_ode_coefficient()]), lambda n, t, p: (updates.accelerated_ode_coefficient(n, t, p),)
    )


def test_accelerated_ode_lambda_coefficient_matches_library():
    """The safeguarded ``accelerated_ode_lambda``: the derived coefficient (eps linear in lambda) == the library's
    float closed form (expm1 / log1p), on random levels and on a step to clean data (the library's limit)."""
    _assert_coefficients_match(
        _derived([D.in_alpha_bar(D.accelerated_ode_lambda_coefficient())]),
        lambda n, t, p: (updates.accelerated_ode_lambda_coefficient(n, t, p),),
    )
    f = _lambdify(D.accelerated_ode_lambda_coefficient(), (D.sigma_next, D.sigma_t, D.sigma_prev, D.alpha_bar_prev))
    sig = oracles.sigma_of
    for a_next, a_t, _ in LEVELS[:5]:  # sigma_prev = 0: sigma_prev log sigma_prev -> 0
        near = f(sig(a_next), sig(a_t), 1e-300, 1.0)
        assert near == pytest.approx(updates.accelerated_ode_lambda_coefficient(a_next, a_t, 1.0), rel=1e-12)


RHOS = (0.0, 0.3, 1.0, 2.5, 10.0)


def test_capped_correction_matches_library():
    """The safeguarded ``accelerated_ode_capped``: the derived piecewise coefficient (split integral) == the
    library's closed form on random levels and caps, both branches (cap inside the step or not) exercised."""
    f = _lambdify(D.capped_correction(), (*LEVEL_SYMBOLS, D.max_ratio))
    branches = set()
    for a_next, a_t, a_prev in LEVELS:
        ratio = (a_prev - a_t) / (a_t - a_next)
        for rho in RHOS:
            if abs(ratio - rho) < 1e-9:
                continue
            branches.add(ratio <= rho)
            want = updates.accelerated_ode_capped_coefficient(a_next, a_t, a_prev, rho)
            np.testing.assert_allclose(f(a_next, a_t, a_prev, rho), want, rtol=1e-10, atol=1e-12)
    assert branches == {True, False}


def test_capped_correction_claims():
    """The residuals behind the capped coefficient vanish: u(sigma) decreasing, the pieces meet at ratio = rho,
    rho = 0 is exact DDIM, the library's closed form G(u_*) is the split integral, G' = sigma."""
    assert D.capped_correction_checks() == {
        "monotone": 0,
        "continuity": 0,
        "no_cap": 0,
        "closed_form": 0,
        "antiderivative": 0,
    }


def test_the_safeguarded_comparisons_catch_a_wrong_coefficient(monkeypatch):
    """Power: the paper's coefficient in place of either variant's makes its comparison fail."""
    paper = updates.accelerated_ode_coefficient
    monkeypatch.setattr(updates, "accelerated_ode_lambda_coefficient", paper)
    with pytest.raises(AssertionError):
        test_accelerated_ode_lambda_coefficient_matches_library()
    monkeypatch.setattr(updates, "accelerated_ode_capped_coefficient", lambda n, t, p, rho=1.0: paper(n, t, p))
    with pytest.raises(AssertionError):
        test_capped_correction_matches_library()


def test_accelerated_sde_noise_scale_matches_library():
    scale = _lambdify(D.accelerated_sde_noise_scale().subs(D.alpha_t, D.alpha_bar_t / D.alpha_bar_prev), LEVEL_SYMBOLS)
    _assert_coefficients_match(lambda *a: (scale(*a),), lambda n, t, p: (updates.accelerated_sde_noise_scale(t, p),))


def test_conversions_match_library(rng):
    conv = D.eps_x0_score_conversions()
    x0_of_eps = _lambdify(conv["x0_of_eps"], (D.x, D.eps, D.alpha_bar), "numpy")
    score_of_eps = _lambdify(conv["score_of_eps"], (D.eps, D.alpha_bar), "numpy")
    for a in rng.uniform(0.01, 0.99, 5):
        xv, ev = torch.from_numpy(rng.standard_normal(4)), torch.from_numpy(rng.standard_normal(4))
        np.testing.assert_allclose(
            updates.eps_to_x0(xv, ev, a).numpy(), x0_of_eps(xv.numpy(), ev.numpy(), a), rtol=1e-12
        )
        np.testing.assert_allclose(updates.eps_to_score(ev, a).numpy(), score_of_eps(ev.numpy(), a), rtol=1e-12)


def test_the_comparison_catches_a_wrong_sign(monkeypatch):
    """The coefficient comparison has power: a sign error in the library's correction makes it fail."""
    original = updates.accelerated_ode_coefficient
    monkeypatch.setattr(updates, "accelerated_ode_coefficient", lambda n, t, p: -original(n, t, p))
    with pytest.raises(AssertionError):
        test_accelerated_ode_coefficient_matches_library()
    monkeypatch.setattr(updates, "ddpm_type_coefficients", lambda t, p: (1.0, 1.0, 1.0))
    with pytest.raises(AssertionError):
        test_ddpm_type_coefficients_match_library()


def test_accelerated_ode_coefficient_small_steps_mpmath():
    """On the 1000-step linear schedule (tiny steps), the library's float64 correction agrees with the derived
    formula evaluated with 50 digits: absolute error of c * (eps_next - eps) below 1e-12 for |eps_next - eps| <= 1."""
    mpmath.mp.dps = 50
    f = _lambdify(D.accelerated_ode_coefficient(), LEVEL_SYMBOLS, "mpmath")
    abar = ad.DiscreteSchedule.from_diffusers("linear").alpha_bars.tolist()[::-1] + [1.0]
    for i in range(1, len(abar) - 1, 37):
        a_next, a_t, a_prev = abar[i - 1], abar[i], abar[i + 1]
        if a_prev >= 1.0:
            continue
        ref = f(mpmath.mpf(a_next), mpmath.mpf(a_t), mpmath.mpf(a_prev))
        assert abs(updates.accelerated_ode_coefficient(a_next, a_t, a_prev) - float(ref)) < 1e-12


# ----------------------------------------------------------------------------------------------------------------
# Whole steps on random tensors
# ----------------------------------------------------------------------------------------------------------------
def _tensors(n=3, shape=(6,)):
    return [torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(k)) for k in range(n)]


@pytest.mark.parametrize(
    "method,library",
    [
        ("ddim", lambda x, e, en, n, t, p: updates.ddim_step(x, e, t, p)),
        ("ddim_type", lambda x, e, en, n, t, p: updates.ddim_type_step(x, e, t, p)),
        ("accelerated_ode", lambda x, e, en, n, t, p: updates.accelerated_ode_step(x, e, t, p, en, n)),
        ("accelerated", lambda x, e, en, n, t, p: updates.accelerated_ode_step(x, e, t, p, en, n)),  # the older name
        (
            "accelerated_ode_lambda",
            lambda x, e, en, n, t, p: updates.accelerated_ode_step(
                x, e, t, p, en, n, updates.accelerated_ode_lambda_coefficient
            ),
        ),
    ],
)
def test_deterministic_steps_match_library(method, library):
    f = _lambdify(D.ode_step(method), (D.x, D.eps, D.eps_next, *LEVEL_SYMBOLS), "numpy")
    xv, ev, env = _tensors()
    for a_next, a_t, a_prev in LEVELS[:8]:
        got = library(xv, ev, env, a_next, a_t, a_prev).numpy()
        np.testing.assert_allclose(
            got, f(xv.numpy(), ev.numpy(), env.numpy(), a_next, a_t, a_prev), rtol=1e-10, atol=1e-12
        )


def test_capped_step_matches_library():
    """The whole capped step (``ode_step("accelerated_ode_capped")``, an expression in ``max_ratio`` too) == the
    library's step with the capped coefficient, on random tensors, levels and caps."""
    f = _lambdify(D.ode_step("accelerated_ode_capped"), (D.x, D.eps, D.eps_next, *LEVEL_SYMBOLS, D.max_ratio), "numpy")
    xv, ev, env = _tensors()
    for a_next, a_t, a_prev in LEVELS[:8]:
        for rho in RHOS:
            got = updates.accelerated_ode_step(
                xv,
                ev,
                a_t,
                a_prev,
                env,
                a_next,
                lambda n, t, p: updates.accelerated_ode_capped_coefficient(n, t, p, rho),
            ).numpy()
            with np.errstate(invalid="ignore"):  # numpy evaluates both branches: the unused one may be NaN
                want = f(xv.numpy(), ev.numpy(), env.numpy(), a_next, a_t, a_prev, rho)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["ddim", "ddim_type", "accelerated_ode"])
def test_sigma_form_steps_match_library(method):
    """The y/sigma forms used for the truncation-error series are the library's steps in other variables."""
    lib = {
        "ddim": lambda x, e, en, n, t, p: updates.ddim_step(x, e, t, p),
        "ddim_type": lambda x, e, en, n, t, p: updates.ddim_type_step(x, e, t, p),
        "accelerated_ode": lambda x, e, en, n, t, p: updates.accelerated_ode_step(x, e, t, p, en, n),
    }[method]
    expr = D.ode_step_sigma(method).subs(D.alpha_bar_prev, D.alpha_bar_of_sigma(D.sigma_prev))
    f = _lambdify(expr, (D.y, D.eps, D.eps_next, D.sigma_next, D.sigma_t, D.sigma_prev), "numpy")
    sig = oracles.sigma_of
    xv, ev, env = _tensors()
    for a_next, a_t, a_prev in LEVELS[:8]:
        y_prev = f(xv.numpy() / math.sqrt(a_t), ev.numpy(), env.numpy(), sig(a_next), sig(a_t), sig(a_prev))
        np.testing.assert_allclose(
            math.sqrt(a_prev) * y_prev, lib(xv, ev, env, a_next, a_t, a_prev).numpy(), rtol=1e-10, atol=1e-12
        )


def _eps_form(expr):
    """Score form -> eps form along a path (the derivation's own substitution, eps_form_coefficients)."""
    return expr.subs(D.score, -D.eps / sp.sqrt(1 - D.alpha_bar_t)).subs(D.alpha_t, D.alpha_bar_t / D.alpha_bar_prev)


def test_stochastic_steps_match_library():
    ddpm = _lambdify(
        _eps_form(D.ddpm_type_step_score_form()), (D.x, D.eps, D.z, D.alpha_bar_t, D.alpha_bar_prev), "numpy"
    )
    phi = _lambdify(_eps_form(D.accelerated_sde_perturb()), (D.x, D.z, D.alpha_bar_t, D.alpha_bar_prev), "numpy")
    psi = _lambdify(
        _eps_form(D.accelerated_sde_step()), (D.x, D.eps, D.z_plus, D.alpha_bar_t, D.alpha_bar_prev), "numpy"
    )
    xv, ev, zv = _tensors()
    for _, a_t, a_prev in LEVELS[:8]:
        n = (xv.numpy(), ev.numpy(), zv.numpy())
        np.testing.assert_allclose(
            updates.ddpm_type_step(xv, ev, a_t, a_prev, zv).numpy(), ddpm(*n, a_t, a_prev), rtol=1e-10
        )
        np.testing.assert_allclose(
            updates.accelerated_sde_perturb(xv, a_t, a_prev, zv).numpy(), phi(n[0], n[2], a_t, a_prev), rtol=1e-10
        )
        np.testing.assert_allclose(
            updates.accelerated_sde_step(xv, ev, a_t, a_prev, zv).numpy(), psi(*n, a_t, a_prev), rtol=1e-10
        )


# ----------------------------------------------------------------------------------------------------------------
# Symbolic claims
# ----------------------------------------------------------------------------------------------------------------
def test_background_identities():
    fwd = D.forward_variance_recursion()
    assert fwd["signal_residual"] == 0 and fwd["variance_residual"] == 0
    assert D.tweedie_check()["residual"] == 0
    assert D.probability_flow_ode()["residual"] == 0
    assert D.probability_flow_gaussian_residual() == 0
    assert D.ddpm_type_mean_residual() == 0
    assert D.atan_sigma_identity_residual() == (0, 0)


def test_probability_flow_from_fokker_planck():
    fp = D.probability_flow_from_fokker_planck()
    assert fp["continuity_residual"] == 0
    assert fp["gaussian_fp_residual"] == 0
    assert fp["residual"] == 0
    # the same ODE as the chain-rule form of dy = eps d sigma
    assert sp.simplify(fp["dx_dalpha_bar"] - D.probability_flow_ode()["dx_dalpha_bar"]) == 0
    # a wrong velocity (no score) does not satisfy the continuity equation
    q = fp["fokker_planck"].atoms(sp.Function).pop()
    wrong = fp["fokker_planck"] + sp.diff(-D.x / 2 * q, D.x)
    assert sp.simplify(wrong) != 0


def test_exact_ddim_to_clean_data_is_tweedie():
    c_x, c_eps = D.exact_ddim_coefficients()
    x0 = D.eps_x0_score_conversions(D.alpha_bar_t)["x0_of_eps"]
    assert sp.simplify((c_x * D.x + c_eps * D.eps).subs(D.alpha_bar_prev, 1) - x0) == 0


def _coeffs(series_expr, n):
    e = sp.expand(sp.sympify(series_expr).removeO() if hasattr(series_expr, "removeO") else series_expr)
    return [sp.simplify(e.coeff(H, k)) for k in range(n)]


def test_baselines_agree_to_first_order_only():
    s = D.baseline_coefficient_series(order=3)
    c = _coeffs(s["difference"], 3)
    assert c[0] == 0 and c[1] == 0
    assert c[2] != 0 and sp.simplify(c[2].subs(D.alpha_bar_t, sp.Rational(1, 2))) != 0


@pytest.mark.parametrize("ratio", [1, 2])
def test_local_truncation_error_orders(ratio):
    """DDIM and DDIM-type: local error O(h^2) (first order); the multistep and two-stage methods: O(h^3)."""
    v, s = sp.Rational(1, 4), sp.Integer(2)
    for method in D.ODE_METHODS:
        c = _coeffs(D.ode_local_error(method, v, s, ratio, order=4), 4)
        assert c[0] == 0 and c[1] == 0, method
        if method in ("ddim", "ddim_type"):
            assert c[2] != 0, method
        else:
            assert c[2] == 0 and c[3] != 0, method


def test_accelerated_local_error_symbolic():
    lead = _coeffs(D.ode_local_error("accelerated_ode", order=4), 4)
    assert lead[2] == 0
    expected = (
        5
        * D.data_var
        * (3 * D.sigma_t**2 * D.data_var - 4 * D.sigma_t**2 - D.data_var)
        / (12 * D.sigma_t * (D.sigma_t**2 + 1) * (D.sigma_t**2 + D.data_var) ** 3)
    )
    assert sp.simplify(lead[3] - expected) == 0


def test_corrections_agree_to_leading_order_and_differ_next():
    series = D.correction_coefficient_series()
    first = [sp.simplify(sp.expand(s).coeff(H, 1)) for s in series.values()]
    assert all(sp.simplify(f - 1 / (2 * D.r)) == 0 for f in first)
    second = {k: sp.simplify(sp.expand(s).coeff(H, 2)) for k, s in series.items()}
    assert second["sigma"] == 0 and second["alpha_bar"] != 0 and second["lambda"] != 0
    assert sp.simplify(second["alpha_bar"] - second["lambda"]) != 0
    comp = D.correction_comparison_series(sp.Rational(1, 4), sp.Integer(2))
    h2 = {k: sp.expand(v).coeff(H, 2) for k, v in comp.items()}
    h3 = {k: sp.expand(v).coeff(H, 3) for k, v in comp.items()}
    assert len(set(h2.values())) == 1 and h2["accelerated_ode"] != 0
    assert h3["accelerated_ode"] != h3["dpm_solver_pp_2m"]


def test_stochastic_moment_errors():
    for kind in ("marginal", "conditional"):
        ddpm = D.moment_error_series("ddpm_type", kind)
        acc = D.moment_error_series("accelerated_sde", kind)
        assert ddpm["mean"] == 0 and acc["mean"] == 0
        assert sp.simplify(sp.expand(ddpm["variance"]).coeff(H, 2) - 1 / D.var_t) == 0
        assert sp.simplify(sp.expand(acc["variance"]).coeff(H, 2) + sp.Rational(1, 2)) == 0
        assert sp.expand(ddpm["variance"]).coeff(H, 1) == 0 and sp.expand(acc["variance"]).coeff(H, 1) == 0


def test_total_injected_variance_matches_ddpm_to_first_order():
    total = (D.accelerated_sde_noise_scale() ** 2 / D.alpha_t + D.accelerated_sde_noise_scale() ** 2).subs(
        D.alpha_t, 1 - H
    )
    ddpm = (D.ddpm_type_coefficients()[2] ** 2).subs(D.alpha_bar_prev, D.alpha_bar_t / (1 - H))
    diff = sp.series(sp.simplify(total - ddpm), H, 0, 3).removeO()
    assert sp.expand(diff).coeff(H, 1) == 0 and sp.expand(diff).coeff(H, 2) != 0


def test_method_lists_use_the_registry_names():
    """The derived methods that are samplers carry their registry names; the others are the derivation-only
    relatives; the stochastic ones are the paper's stochastic samplers of the registry."""
    from accelerated_diffusion import samplers

    assert [m for m in D.ODE_METHODS if m not in samplers.SAMPLERS] == ["lambda", "sigma", "dpm_solver_2"]
    assert {"ddim", "ddim_type", "accelerated_ode", "dpm_solver_pp_2m"} <= set(D.ODE_METHODS)
    assert D.STOCHASTIC_METHODS == tuple(m for m in samplers.PAPER_SAMPLERS if samplers.spec(m).stochastic)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="extrapolation variable"):
        D.extrapolated_correction("time")
    with pytest.raises(ValueError, match="unknown method"):
        D.ode_step("rk4")
    with pytest.raises(ValueError, match="stochastic method"):
        D.one_step_moments("euler", 0, 1)


# ----------------------------------------------------------------------------------------------------------------
# The relatives of the accelerated sampler against their published update formulas
# ----------------------------------------------------------------------------------------------------------------
def _half_log_snr(a):
    return 0.5 * math.log(a / (1 - a))


def test_lambda_extrapolation_is_multistep_dpm_solver_2(rng):
    """eps linear in lambda, integrated exactly == multistep second-order DPM-Solver, Taylor variant.

    Independent oracle: the published update (Lu et al. 2022b, multistep DPM-Solver-2 in noise prediction,
    ``solver_type="taylor"``) in DPM-Solver's notation alpha = sqrt(abar), sigma = sqrt(1 - abar):
    x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_s - sigma_t ((e^h - 1) / h - 1) (eps_s - eps_prev) / r0.
    """
    f = _lambdify(D.ode_step("lambda"), (D.x, D.eps, D.eps_next, *LEVEL_SYMBOLS))
    for a_next, a_t, a_prev in LEVELS[:10]:
        xv, e, en = rng.standard_normal(3)
        h = _half_log_snr(a_prev) - _half_log_snr(a_t)
        r0 = (_half_log_snr(a_t) - _half_log_snr(a_next)) / h
        ref = (
            math.sqrt(a_prev / a_t) * xv
            - math.sqrt(1 - a_prev) * math.expm1(h) * e
            - math.sqrt(1 - a_prev) * (math.expm1(h) / h - 1) * (e - en) / r0
        )
        assert f(xv, e, en, a_next, a_t, a_prev) == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_dpm_solver_pp_2m_matches_published_update(rng):
    """The module's DPM-Solver++(2M) (used for the truncation-error table) == the published update.

    Independent oracle: Lu et al. 2022b, Algorithm 2: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D with
    D = (1 + 1/(2 r)) x0_s - x0_prev / (2 r), x0 = (x - sigma eps) / alpha, alpha = sqrt(abar), sigma = sqrt(1 - abar).
    """
    yt, yn, et, en = sp.symbols("y_t y_n e_t e_n", real=True)
    st, sprev, snext = D.sigma_t, D.sigma_prev, D.sigma_next
    eps_fn = lambda y_, s: et if s == st else en  # noqa: E731  (the two stored evaluations)
    y_prev = D._dpm_solver_steps("dpm_solver_pp_2m", yt, st, sprev, snext, eps_fn, yn)
    f = _lambdify(y_prev, (yt, yn, et, en, st, sprev, snext))
    for a_next, a_t, a_prev in LEVELS[:10]:
        xt, xn, e, en_ = rng.standard_normal(4)
        sig = [math.sqrt((1 - a) / a) for a in (a_t, a_prev, a_next)]
        got = math.sqrt(a_prev) * f(xt / math.sqrt(a_t), xn / math.sqrt(a_next), e, en_, *sig)
        h = _half_log_snr(a_prev) - _half_log_snr(a_t)
        r = (_half_log_snr(a_t) - _half_log_snr(a_next)) / h
        x0_t = (xt - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        x0_n = (xn - math.sqrt(1 - a_next) * en_) / math.sqrt(a_next)
        d = (1 + 1 / (2 * r)) * x0_t - x0_n / (2 * r)
        ref = math.sqrt((1 - a_prev) / (1 - a_t)) * xt - math.sqrt(a_prev) * math.expm1(-h) * d
        assert got == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_random_levels():
    gen = torch.Generator().manual_seed(0)
    for count, gap in ((2, 1e-3), (3, 1e-2)):
        for _ in range(50):
            levels = D.random_levels(gen, count, min_gap=gap)
            assert len(levels) == count
            assert 0.01 <= levels[0] and levels[-1] <= 0.99
            assert all(b - a >= gap for a, b in zip(levels, levels[1:]))
    with pytest.raises(ValueError):
        D.random_levels(gen, 3, min_gap=0.5)


def test_safeguarded_coefficient_gaps_cover_both_branches_and_vanish():
    """The chapter's check of the safeguarded coefficients: sympy and float64 agree to 1e-12 on random levels,
    and the capped branch where the cap acts is among the draws."""
    gaps = D.safeguarded_coefficient_gaps(num_draws=8, seed=3)
    assert gaps["accelerated_ode_lambda"] < 1e-12 and gaps["accelerated_ode_capped"] < 1e-12
    assert 0 < gaps["capped_saturated"] < 8 * 4
