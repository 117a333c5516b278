"""Each update rule against an independent computation.

Oracles used here (``tests/oracles.py``; none of them calls the formula under test):
* exact DDIM and the accelerated ODE step: numerical integration (scipy ``solve_ivp``, rtol 1e-12) of the
  probability-flow ODE in ``x`` with ``eps`` frozen, resp. extrapolated linearly in ``alpha_bar``;
* the paper's baselines and Phi/Psi: the paper's formulas written in score form with numpy;
* on a Gaussian target: the composed affine maps (deterministic samplers) and exactly propagated Gaussian laws
  (stochastic samplers).
"""

import math

import mpmath
import numpy as np
import pytest
import torch

import accelerated_diffusion as ad
import oracles
from accelerated_diffusion import updates


LEVEL_PAIRS = [(0.05, 0.2), (0.3, 0.31), (0.6, 0.9), (0.9, 0.97)]


@pytest.mark.parametrize("a_t,a_prev", LEVEL_PAIRS)
def test_ddim_is_exact_integral_with_frozen_eps(a_t, a_prev, rng):
    x, eps = rng.standard_normal(5), rng.standard_normal(5)
    got = updates.ddim_step(torch.tensor(x), torch.tensor(eps), a_t, a_prev).numpy()
    ref = oracles.flow_integrate(x, a_t, a_prev, lambda a: eps)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_ddim_to_clean_data_is_tweedie(rng):
    # at abar_prev = 1 exact DDIM returns the denoised estimate (x - sqrt(1 - abar) eps) / sqrt(abar)
    x, eps = torch.tensor(rng.standard_normal(4)), torch.tensor(rng.standard_normal(4))
    got = updates.ddim_step(x, eps, 0.4, 1.0)
    np.testing.assert_allclose(got.numpy(), ((x - math.sqrt(0.6) * eps) / math.sqrt(0.4)).numpy(), atol=1e-14)
    np.testing.assert_allclose(got.numpy(), updates.eps_to_x0(x, eps, 0.4).numpy(), atol=1e-14)


@pytest.mark.parametrize(
    "a_next,a_t,a_prev", [(0.02, 0.05, 0.2), (0.25, 0.3, 0.31), (0.4, 0.6, 0.9), (0.85, 0.9, 0.99)]
)
def test_accelerated_ode_is_exact_integral_with_linear_extrapolation(a_next, a_t, a_prev, rng):
    x, eps_t, eps_next = (rng.standard_normal(5) for _ in range(3))
    slope = (eps_t - eps_next) / (a_t - a_next)
    ref = oracles.flow_integrate(x, a_t, a_prev, lambda a: eps_t + (a - a_t) * slope)
    got = updates.accelerated_ode_step(
        torch.tensor(x), torch.tensor(eps_t), a_t, a_prev, torch.tensor(eps_next), a_next
    )
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-9)


def test_accelerated_ode_first_step_is_ddim(gen):
    x, eps = (torch.randn(3, dtype=torch.float64, generator=gen) for _ in range(2))
    assert torch.equal(updates.accelerated_ode_step(x, eps, 0.2, 0.5), updates.ddim_step(x, eps, 0.2, 0.5))
    with pytest.raises(ValueError, match="alpha_bar_next"):
        updates.accelerated_ode_step(x, eps, 0.2, 0.5, eps_next=eps)
    with pytest.raises(ValueError, match="noisier"):
        updates.accelerated_ode_coefficient(0.3, 0.2, 0.5)


def test_accelerated_ode_coefficient_precision_on_1000_step_schedule():
    """The float64 coefficient agrees with a 50-digit evaluation of the README's arcsin form on every step."""
    mpmath.mp.dps = 50
    abar = ad.DiscreteSchedule.from_diffusers("linear").alpha_bars.tolist()[::-1] + [1.0]
    worst = 0.0
    for a_next, a_t, a_prev in zip(abar[:-2], abar[1:-1], abar[2:]):
        A_n, A_t, A_p = (mpmath.mpf(v) for v in (a_next, a_t, a_prev))
        exact = (
            mpmath.sqrt(A_p)
            / (A_t - A_n)
            * (
                A_t * mpmath.sqrt((1 - A_p) / A_p)
                + mpmath.asin(mpmath.sqrt(A_p))
                - A_t * mpmath.sqrt((1 - A_t) / A_t)
                - mpmath.asin(mpmath.sqrt(A_t))
            )
        )
        # the correction multiplies (eps_next - eps_t) = O(a_t - a_next): compare at that scale
        worst = max(
            worst, abs(float(exact) - updates.accelerated_ode_coefficient(a_next, a_t, a_prev)) * (a_t - a_next)
        )
    assert worst < 1e-12


def _paper_alpha(a_t, a_prev):
    return a_t / a_prev


@pytest.mark.parametrize("a_t,a_prev", LEVEL_PAIRS)
def test_baselines_match_paper_formulas(a_t, a_prev, rng):
    x, eps, z = (rng.standard_normal(6) for _ in range(3))
    alpha = _paper_alpha(a_t, a_prev)
    score = -eps / math.sqrt(1 - a_t)  # s_t = -eps / sqrt(1 - abar_t)
    ddim_type = (x + (1 - alpha) / 2 * score) / math.sqrt(alpha)
    ddpm_type = (x + (1 - alpha) * score + math.sqrt(1 - alpha) * z) / math.sqrt(alpha)
    T = torch.tensor
    np.testing.assert_allclose(updates.ddim_type_step(T(x), T(eps), a_t, a_prev).numpy(), ddim_type, atol=1e-13)
    np.testing.assert_allclose(updates.ddpm_type_step(T(x), T(eps), a_t, a_prev, T(z)).numpy(), ddpm_type, atol=1e-13)


@pytest.mark.parametrize("a_t,a_prev", LEVEL_PAIRS)
def test_accelerated_sde_matches_readme(a_t, a_prev, rng):
    y, eps, z1, z2 = (rng.standard_normal(6) for _ in range(4))
    alpha = _paper_alpha(a_t, a_prev)
    phi = y + math.sqrt((1 - alpha) / 2) * z1
    score = -eps / math.sqrt(1 - a_t)
    psi = (phi + (1 - alpha) * score) / math.sqrt(alpha) + math.sqrt((1 - alpha) / 2) * z2
    T = torch.tensor
    got_phi = updates.accelerated_sde_perturb(T(y), a_t, a_prev, T(z1))
    np.testing.assert_allclose(got_phi.numpy(), phi, atol=1e-14)
    np.testing.assert_allclose(
        updates.accelerated_sde_step(got_phi, T(eps), a_t, a_prev, T(z2)).numpy(), psi, atol=1e-13
    )


def test_ddim_type_equals_ddim_to_first_order(rng):
    # one step of size h: the two differ by O(h^2), so the difference / h -> 0
    x, eps = torch.tensor(rng.standard_normal(3)), torch.tensor(rng.standard_normal(3))
    ratios = []
    for h in (1e-2, 1e-3, 1e-4):
        diff = updates.ddim_type_step(x, eps, 0.5, 0.5 + h) - updates.ddim_step(x, eps, 0.5, 0.5 + h)
        ratios.append(float(diff.abs().max()) / h**2)
    assert max(ratios) / min(ratios) < 1.1  # difference is exactly second order in the step


@pytest.mark.parametrize(
    "call",
    [
        lambda: updates.ddim_step(torch.zeros(2), torch.zeros(2), 0.5, 0.4),
        lambda: updates.ddim_step(torch.zeros(2), torch.zeros(2), 0.0, 0.4),
        lambda: updates.ddim_type_step(torch.zeros(2), torch.zeros(2), 0.5, 1.2),
        lambda: updates.ddpm_type_step(torch.zeros(2), torch.zeros(2), float("nan"), 0.9, torch.zeros(2)),
    ],
)
def test_updates_reject_bad_levels(call):
    with pytest.raises(ValueError):
        call()


def test_updates_keep_dtype():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.ones(3, dtype=dtype)
        assert updates.accelerated_ode_step(x, x, 0.3, 0.5, x * 0.5, 0.1).dtype == dtype
        assert updates.accelerated_sde_step(x, x, 0.3, 0.5, x).dtype == dtype


# ---------------------------------------------------------------------------------------------------------------
# Whole samplers on a Gaussian target
# ---------------------------------------------------------------------------------------------------------------
D = 3


def _gaussian_target(seed=1234):
    g = np.random.default_rng(seed)
    a = g.standard_normal((D, D))
    return g.standard_normal(D), a @ a.T / D + 0.2 * np.eye(D)


MU, SIGMA = _gaussian_target()
TARGET = ad.Gaussian(MU, SIGMA)
PATH = torch.tensor([0.02, 0.1, 0.3, 0.55, 0.8, 0.95, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("method", ["ddim", "ddim_type", "accelerated_ode"])
def test_deterministic_samplers_are_the_oracle_affine_maps(method, rng):
    x0 = rng.standard_normal((4, D))
    got = ad.sample(TARGET.eps, torch.tensor(x0), PATH, method).numpy()
    np.testing.assert_allclose(
        got, oracles.deterministic_by_integration(method, x0, PATH, MU, SIGMA), rtol=0, atol=1e-9
    )
    K, b = oracles.deterministic_affine(method, PATH, MU, SIGMA)  # the closed-form composition agrees too
    np.testing.assert_allclose(got, x0 @ K.T + b, rtol=0, atol=1e-9)
    # and the sampler is affine: the map recovered from D+1 points predicts any other point to 1e-10
    A, b = ad.metrics.affine_map(lambda x: ad.sample(TARGET.eps, x, PATH, method), D)
    np.testing.assert_allclose(got, x0 @ A.numpy().T + b.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["ddpm_type", "accelerated_sde"])
def test_stochastic_samplers_have_the_oracle_gaussian_law(method):
    n = 200_000
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64)
    out = ad.sample(TARGET.eps, x, PATH, method, generator=gen)
    m_hat, S_hat = ad.metrics.empirical_moments(out)
    m, S = oracles.stochastic_law(method, PATH, MU, SIGMA)
    # 5-sigma tolerances from the sample size: var(mean_i) = S_ii / n, var(S_ij) ~ (S_ii S_jj + S_ij^2) / n
    tol_m = 5 * np.sqrt(np.diag(S) / n)
    tol_S = 5 * np.sqrt((np.outer(np.diag(S), np.diag(S)) + S**2) / n)
    assert np.all(np.abs(m_hat.numpy() - m) < tol_m), (m_hat, m)
    assert np.all(np.abs(S_hat.numpy() - S) < tol_S), (S_hat, S)


def test_stochastic_law_check_detects_the_official_cifar_variant():
    """The extra sqrt(alpha_t) on the first noise (official CIFAR code, its issue #1) gives a different law, and the
    moment test above is sensitive enough to see it: guards the test's power, not the library."""
    m, S = oracles.stochastic_law("accelerated_sde", PATH, MU, SIGMA)
    mv, Sv = oracles.stochastic_law("accelerated_sde", PATH, MU, SIGMA, phi_times_sqrt_alpha=True)
    tol_S = 5 * np.sqrt((np.outer(np.diag(S), np.diag(S)) + S**2) / 200_000)
    assert np.any(np.abs(Sv - S) > 3 * tol_S)


# --------------------------------------------------------------------------------------------------------------
# The stochastic samplers' Gaussian half-steps, written once
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a_t,a_prev", LEVEL_PAIRS)
def test_transitions_are_the_paper_s_half_steps_in_order(a_t, a_prev, rng):
    """``accelerated_sde``: Phi_t first (no evaluation, output at abar_t), then Psi_t with eps at the perturbed
    point; ``ddpm_type``: one evaluating half-step.  Each is affine in (x, eps, z) with ``sigma = rule(0, 0, 1)``."""
    x, eps, z = (torch.tensor(rng.standard_normal(5)) for _ in range(3))
    phi, psi = updates.accelerated_sde_transitions(a_t, a_prev)
    assert (phi.evaluates, phi.level_out, phi.name) == (False, a_t, "perturb")
    assert (psi.evaluates, psi.level_out, psi.name) == (True, a_prev, "accelerated_sde")
    assert torch.equal(phi.rule(x, None, z), updates.accelerated_sde_perturb(x, a_t, a_prev, z))
    assert torch.equal(psi.rule(x, eps, z), updates.accelerated_sde_step(x, eps, a_t, a_prev, z))
    (ddpm,) = updates.ddpm_type_transitions(a_t, a_prev)
    assert (ddpm.evaluates, ddpm.level_out) == (True, a_prev)
    assert torch.equal(ddpm.rule(x, eps, z), updates.ddpm_type_step(x, eps, a_t, a_prev, z))
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    scale = updates.accelerated_sde_noise_scale(a_t, a_prev)
    assert float(phi.rule(zero, None, one)) == pytest.approx(scale, rel=1e-15)
    assert float(psi.rule(zero, zero, one)) == pytest.approx(scale, rel=1e-15)
    assert float(ddpm.rule(zero, zero, one)) == pytest.approx(updates.ddpm_type_coefficients(a_t, a_prev)[2], rel=1e-15)


def test_split_at_evaluation():
    phi, psi = updates.accelerated_sde_transitions(0.3, 0.5)
    assert updates.split_at_evaluation((phi, psi)) == ((phi,), (psi,))
    (ddpm,) = updates.ddpm_type_transitions(0.3, 0.5)
    assert updates.split_at_evaluation([ddpm]) == ((), (ddpm,))
    for bad in ((phi,), (psi, psi)):
        with pytest.raises(ValueError, match="exactly one half-step that evaluates"):
            updates.split_at_evaluation(bad)


# ---------------------------------------------------------------------------------------------------------------
# The safeguarded variants of the accelerated ODE (eps extrapolated in lambda; the paper's extrapolation capped)
# ---------------------------------------------------------------------------------------------------------------
def _half_log_snr(a):
    return 0.5 * math.log(a / (1.0 - a))


STEP_TRIPLES = [(0.02, 0.05, 0.2), (0.25, 0.3, 0.31), (0.4, 0.6, 0.9), (0.85, 0.9, 0.99), (4.0e-5, 1.53e-3, 2.59e-2)]


@pytest.mark.parametrize("a_next,a_t,a_prev", STEP_TRIPLES)
def test_accelerated_ode_lambda_is_exact_integral_with_lambda_extrapolation(a_next, a_t, a_prev, rng):
    """Oracle: numerical integration of dy = eps d sigma with eps linear in lambda = log(sqrt(a / (1 - a)))."""
    x, eps_t, eps_next = (rng.standard_normal(5) for _ in range(3))
    lam_t, lam_next = _half_log_snr(a_t), _half_log_snr(a_next)
    slope = (eps_t - eps_next) / (lam_t - lam_next)
    ref = oracles.flow_integrate(x, a_t, a_prev, lambda a: eps_t + (_half_log_snr(a) - lam_t) * slope)
    T = torch.tensor
    got = updates.accelerated_ode_step(
        T(x), T(eps_t), a_t, a_prev, T(eps_next), a_next, updates.accelerated_ode_lambda_coefficient
    )
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("max_ratio", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("a_next,a_t,a_prev", STEP_TRIPLES)
def test_accelerated_ode_capped_is_exact_integral_with_saturated_extrapolation(a_next, a_t, a_prev, max_ratio, rng):
    """Oracle: numerical integration with eps(a) = eps_t + slope min(a - a_t, rho (a_t - a_next)), slope the
    paper's (linear in alpha_bar); integrated in two pieces at the kink, where the cap sets in inside the step."""
    x, eps_t, eps_next = (rng.standard_normal(5) for _ in range(3))
    cap = max_ratio * (a_t - a_next)
    slope = (eps_t - eps_next) / (a_t - a_next)

    def eps_of(a):
        return eps_t + slope * min(a - a_t, cap)

    kink = a_t + cap
    if a_t < kink < a_prev:
        ref = oracles.flow_integrate(oracles.flow_integrate(x, a_t, kink, eps_of), kink, a_prev, eps_of)
    else:
        ref = oracles.flow_integrate(x, a_t, a_prev, eps_of)
    T = torch.tensor

    def coefficient(n, t, p):
        return updates.accelerated_ode_capped_coefficient(n, t, p, max_ratio)

    got = updates.accelerated_ode_step(T(x), T(eps_t), a_t, a_prev, T(eps_next), a_next, coefficient)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-9)


def test_accelerated_ode_lambda_coefficient_precision():
    """The float64 coefficient against a 50-digit evaluation of sqrt(1 - a_prev) (e^h - 1 - h) / (lambda_t -
    lambda_next) on every step of the 1000-step linear schedule (tiny steps: no cancellation), and at a_prev = 1
    the limit sigma_t / (lambda_t - lambda_next), which the 50-digit formula approaches as a_prev -> 1."""
    mpmath.mp.dps = 50

    def exact(a_next, a_t, a_prev):
        A_n, A_t, A_p = (mpmath.mpf(v) for v in (a_next, a_t, a_prev))
        lam = lambda a: mpmath.log(a / (1 - a)) / 2  # noqa: E731
        h = lam(A_p) - lam(A_t)
        return mpmath.sqrt(1 - A_p) * (mpmath.expm1(h) - h) / (lam(A_t) - lam(A_n))

    abar = ad.DiscreteSchedule.from_diffusers("linear").alpha_bars.tolist()[::-1]
    worst = 0.0
    for a_next, a_t, a_prev in zip(abar[:-2], abar[1:-1], abar[2:]):
        ref = float(exact(a_next, a_t, a_prev))
        worst = max(worst, abs(updates.accelerated_ode_lambda_coefficient(a_next, a_t, a_prev) - ref) / ref)
    assert worst < 1e-12
    a_next, a_t = 0.4, 0.6
    limit = updates.accelerated_ode_lambda_coefficient(a_next, a_t, 1.0)
    assert limit == pytest.approx(math.sqrt(0.4 / 0.6) / (_half_log_snr(a_t) - _half_log_snr(a_next)), rel=1e-14)
    near = exact(a_next, a_t, mpmath.mpf(1) - mpmath.mpf(10) ** -40)
    assert float(near) == pytest.approx(limit, rel=1e-15)


def test_accelerated_ode_capped_coefficient_limits():
    """The paper's coefficient when the extrapolation ratio is at most rho (bit for bit: same formula), 0 at rho = 0
    (exact DDIM), nondecreasing and continuous in rho, the paper's again for rho = inf; bad rho refused."""
    paper, capped = updates.accelerated_ode_coefficient, updates.accelerated_ode_capped_coefficient
    for a_next, a_t, a_prev in STEP_TRIPLES:
        ratio = (a_prev - a_t) / (a_t - a_next)
        assert capped(a_next, a_t, a_prev, 2 * ratio) == paper(a_next, a_t, a_prev)
        assert capped(a_next, a_t, a_prev, math.inf) == paper(a_next, a_t, a_prev)
        assert capped(a_next, a_t, a_prev, 0.0) == 0.0
        rhos = np.linspace(0.0, 1.5 * ratio, 61)
        cs = [capped(a_next, a_t, a_prev, float(r)) for r in rhos]
        assert all(b >= a for a, b in zip(cs, cs[1:]))
        assert capped(a_next, a_t, a_prev, ratio * (1 - 1e-12)) == pytest.approx(paper(a_next, a_t, a_prev), rel=1e-9)
        if ratio > 2.0:  # the default cap (2) acts: strictly smaller than the paper's
            assert capped(a_next, a_t, a_prev) < paper(a_next, a_t, a_prev)
    for bad, err in ((-0.5, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(err, match="max_ratio"):
            capped(0.2, 0.3, 0.5, bad)
    with pytest.raises(ValueError, match="noisier"):
        capped(0.3, 0.2, 0.5)
    with pytest.raises(ValueError, match="noisier"):
        updates.accelerated_ode_lambda_coefficient(0.3, 0.2, 0.5)


def test_accelerated_ode_step_takes_the_coefficient_function(gen):
    """One update rule: the variants differ only in the coefficient (the default is the paper's)."""
    x, eps, eps_next = (torch.randn(4, dtype=torch.float64, generator=gen) for _ in range(3))
    base = updates.ddim_step(x, eps, 0.3, 0.7)
    for coef in (
        updates.accelerated_ode_coefficient,
        updates.accelerated_ode_lambda_coefficient,
        updates.accelerated_ode_capped_coefficient,
    ):
        got = updates.accelerated_ode_step(x, eps, 0.3, 0.7, eps_next, 0.1, coef)
        torch.testing.assert_close(got, base + coef(0.1, 0.3, 0.7) * (eps_next - eps), rtol=0, atol=1e-15)
    assert torch.equal(
        updates.accelerated_ode_step(x, eps, 0.3, 0.7, eps_next, 0.1),
        updates.accelerated_ode_step(x, eps, 0.3, 0.7, eps_next, 0.1, updates.accelerated_ode_coefficient),
    )


def test_each_extrapolation_is_bound_to_its_coefficient_function_in_one_place():
    """extrapolation_coefficient: the paper's and the lambda coefficient as they are, the capped one with its
    max_ratio (checked when the function is made, before any step); an unknown name is an error."""
    assert updates.extrapolation_coefficient() is updates.accelerated_ode_coefficient
    assert updates.extrapolation_coefficient("lambda") is updates.accelerated_ode_lambda_coefficient
    levels = (0.2, 0.3, 0.9)  # ratio 6: the cap acts for max_ratio 2 and 5, not for 10
    for rho in (0.0, 2, 5.0, 10.0, math.inf):
        got = updates.extrapolation_coefficient("capped", rho)(*levels)
        assert got == updates.accelerated_ode_capped_coefficient(*levels, rho)
    assert updates.extrapolation_coefficient("capped")(*levels) == updates.accelerated_ode_capped_coefficient(*levels)
    with pytest.raises(ValueError, match="max_ratio must be >= 0"):
        updates.extrapolation_coefficient("capped", -1.0)
    with pytest.raises(ValueError, match=r"unknown extrapolation 'alphabar'; expected one of \('alpha_bar'"):
        updates.extrapolation_coefficient("alphabar")
