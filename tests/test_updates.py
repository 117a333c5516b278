"""Each update rule against an independent computation.

Oracles used here (none of them calls the formula under test):
* exact DDIM and the accelerated ODE step: numerical integration (scipy ``solve_ivp``, rtol 1e-12) of the
  probability-flow ODE in ``x`` with ``eps`` frozen, resp. extrapolated linearly in ``alpha_bar``;
* the paper's baselines and Phi/Psi: the paper's formulas written in score form with numpy;
* on a Gaussian target: the composed affine maps (deterministic samplers) and exactly propagated Gaussian laws
  (stochastic samplers), built from those numpy oracles.
"""

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import accelerated_diffusion as ad
from accelerated_diffusion import updates

RNG = np.random.default_rng(1234)


def _sigma(a):
    return math.sqrt((1 - a) / a)


def _flow_oracle(x, a_from, a_to, eps_of_a):
    """Integrate the probability-flow ODE numerically for a given eps path: in y = x / sqrt(abar) and
    sigma = sqrt((1 - abar) / abar) it reads dy / dsigma = eps(abar(sigma)), abar(sigma) = 1 / (1 + sigma^2)."""

    def rhs(sigma, y):
        return eps_of_a(1.0 / (1.0 + sigma * sigma))

    sol = solve_ivp(rhs, (_sigma(a_from), _sigma(a_to)), x / math.sqrt(a_from), rtol=1e-12, atol=1e-13, method="DOP853")
    return math.sqrt(a_to) * sol.y[:, -1]


LEVEL_PAIRS = [(0.05, 0.2), (0.3, 0.31), (0.6, 0.9), (0.9, 0.97)]


@pytest.mark.parametrize("a_t,a_prev", LEVEL_PAIRS)
def test_ddim_is_exact_integral_with_frozen_eps(a_t, a_prev):
    x, eps = RNG.standard_normal(5), RNG.standard_normal(5)
    got = updates.ddim_step(torch.tensor(x), torch.tensor(eps), a_t, a_prev).numpy()
    ref = _flow_oracle(x, a_t, a_prev, lambda a: eps)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_ddim_to_clean_data_is_tweedie():
    # at abar_prev = 1 exact DDIM returns the denoised estimate (x - sqrt(1 - abar) eps) / sqrt(abar)
    x, eps = torch.tensor(RNG.standard_normal(4)), torch.tensor(RNG.standard_normal(4))
    got = updates.ddim_step(x, eps, 0.4, 1.0)
    np.testing.assert_allclose(got.numpy(), ((x - math.sqrt(0.6) * eps) / math.sqrt(0.4)).numpy(), atol=1e-14)
    np.testing.assert_allclose(got.numpy(), updates.eps_to_x0(x, eps, 0.4).numpy(), atol=1e-14)


@pytest.mark.parametrize("a_next,a_t,a_prev", [(0.02, 0.05, 0.2), (0.25, 0.3, 0.31), (0.4, 0.6, 0.9), (0.85, 0.9, 0.99)])
def test_accelerated_ode_is_exact_integral_with_linear_extrapolation(a_next, a_t, a_prev):
    x, eps_t, eps_next = (RNG.standard_normal(5) for _ in range(3))
    slope = (eps_t - eps_next) / (a_t - a_next)
    ref = _flow_oracle(x, a_t, a_prev, lambda a: eps_t + (a - a_t) * slope)
    got = updates.accelerated_ode_step(torch.tensor(x), torch.tensor(eps_t), a_t, a_prev, torch.tensor(eps_next), a_next)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-9)


def test_accelerated_ode_first_step_is_ddim():
    x, eps = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
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
        exact = mpmath.sqrt(A_p) / (A_t - A_n) * (
            A_t * mpmath.sqrt((1 - A_p) / A_p) + mpmath.asin(mpmath.sqrt(A_p))
            - A_t * mpmath.sqrt((1 - A_t) / A_t) - mpmath.asin(mpmath.sqrt(A_t))
        )
        # the correction multiplies (eps_next - eps_t) = O(a_t - a_next): compare at that scale
        worst = max(worst, abs(float(exact) - updates.accelerated_ode_coefficient(a_next, a_t, a_prev)) * (a_t - a_next))
    assert worst < 1e-12


def _paper_alpha(a_t, a_prev):
    return a_t / a_prev


@pytest.mark.parametrize("a_t,a_prev", LEVEL_PAIRS)
def test_baselines_match_paper_formulas(a_t, a_prev):
    x, eps, z = (RNG.standard_normal(6) for _ in range(3))
    alpha = _paper_alpha(a_t, a_prev)
    score = -eps / math.sqrt(1 - a_t)  # s_t = -eps / sqrt(1 - abar_t)
    ddim_type = (x + (1 - alpha) / 2 * score) / math.sqrt(alpha)
    ddpm_type = (x + (1 - alpha) * score + math.sqrt(1 - alpha) * z) / math.sqrt(alpha)
    T = torch.tensor
    np.testing.assert_allclose(updates.ddim_type_step(T(x), T(eps), a_t, a_prev).numpy(), ddim_type, atol=1e-13)
    np.testing.assert_allclose(updates.ddpm_type_step(T(x), T(eps), a_t, a_prev, T(z)).numpy(), ddpm_type, atol=1e-13)


@pytest.mark.parametrize("a_t,a_prev", LEVEL_PAIRS)
def test_accelerated_sde_matches_readme(a_t, a_prev):
    y, eps, z1, z2 = (RNG.standard_normal(6) for _ in range(4))
    alpha = _paper_alpha(a_t, a_prev)
    phi = y + math.sqrt((1 - alpha) / 2) * z1
    score = -eps / math.sqrt(1 - a_t)
    psi = (phi + (1 - alpha) * score) / math.sqrt(alpha) + math.sqrt((1 - alpha) / 2) * z2
    T = torch.tensor
    got_phi = updates.accelerated_sde_perturb(T(y), a_t, a_prev, T(z1))
    np.testing.assert_allclose(got_phi.numpy(), phi, atol=1e-14)
    np.testing.assert_allclose(updates.accelerated_sde_step(got_phi, T(eps), a_t, a_prev, T(z2)).numpy(), psi, atol=1e-13)


def test_ddim_type_equals_ddim_to_first_order():
    # one step of size h: the two differ by O(h^2), so the difference / h -> 0
    x, eps = torch.tensor(RNG.standard_normal(3)), torch.tensor(RNG.standard_normal(3))
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
_A = RNG.standard_normal((D, D))
SIGMA = _A @ _A.T / D + 0.2 * np.eye(D)
MU = RNG.standard_normal(D)
TARGET = ad.Gaussian(MU, SIGMA)
PATH = torch.tensor([0.02, 0.1, 0.3, 0.55, 0.8, 0.95, 1.0], dtype=torch.float64)


def _eps_affine(a):
    """Oracle: eps*(x, abar) = sqrt(1 - abar) C^{-1} (x - sqrt(abar) mu) = E x + e."""
    C = a * SIGMA + (1 - a) * np.eye(D)
    E = math.sqrt(1 - a) * np.linalg.inv(C)
    return E, -E @ (math.sqrt(a) * MU)


def _deterministic_oracle(method, x0):
    """Run the oracle recursion in numpy on a batch (rows) -- independent of accelerated_diffusion.updates."""
    x, eps_prev, a_next = x0.copy(), None, None
    a = PATH.tolist()
    for a_t, a_prev in zip(a[:-1], a[1:]):
        E, e = _eps_affine(a_t)
        eps = x @ E.T + e
        if method == "ddim_type":  # Y' = (Y + (1 - alpha)/2 s) / sqrt(alpha), s = -eps / sqrt(1 - abar_t)
            alpha = a_t / a_prev
            x = (x - (1 - alpha) / (2 * math.sqrt(1 - a_t)) * eps) / math.sqrt(alpha)
            continue
        # exact DDIM / accelerated: integrate the flow ODE numerically with eps frozen / linearly extrapolated
        if method == "ddim" or eps_prev is None:
            path_eps = (lambda ep: (lambda aa: ep))
            x = np.stack([_flow_oracle(xi, a_t, a_prev, path_eps(ei)) for xi, ei in zip(x, eps)])
        else:
            rows = []
            for xi, ei, pi in zip(x, eps, eps_prev):
                slope = (ei - pi) / (a_t - a_next)
                rows.append(_flow_oracle(xi, a_t, a_prev, lambda aa, ei=ei, slope=slope: ei + (aa - a_t) * slope))
            x = np.stack(rows)
        eps_prev, a_next = eps, a_t
    return x


@pytest.mark.parametrize("method", ["ddim", "ddim_type", "accelerated_ode"])
def test_deterministic_samplers_are_the_oracle_affine_maps(method):
    x0 = RNG.standard_normal((4, D))
    got = ad.sample(TARGET.eps, torch.tensor(x0), PATH, method).numpy()
    np.testing.assert_allclose(got, _deterministic_oracle(method, x0), rtol=0, atol=1e-9)
    # and the sampler is affine: the map recovered from D+1 points predicts any other point to 1e-10
    A, b = ad.metrics.affine_map(lambda x: ad.sample(TARGET.eps, x, PATH, method), D)
    np.testing.assert_allclose(got, x0 @ A.numpy().T + b.numpy(), rtol=0, atol=1e-10)


def _stochastic_law(method):
    """Oracle: exact Gaussian law of the output when Y_T ~ N(0, I), propagated step by step."""
    m, S, I = np.zeros(D), np.eye(D), np.eye(D)
    a = PATH.tolist()
    for a_t, a_prev in zip(a[:-1], a[1:]):
        alpha = a_t / a_prev
        if method == "accelerated_sde":
            S = S + (1 - alpha) / 2 * I  # Y^+ = Y + sqrt((1 - alpha)/2) Z
        E, e = _eps_affine(a_t)
        k = -(1 - alpha) / math.sqrt(1 - a_t)  # (1 - alpha) s = k eps
        M, c = (I + k * E) / math.sqrt(alpha), k * e / math.sqrt(alpha)
        noise_var = (1 - alpha) / alpha if method == "ddpm_type" else (1 - alpha) / 2
        m, S = M @ m + c, M @ S @ M.T + noise_var * I
    return m, S


@pytest.mark.parametrize("method", ["ddpm_type", "accelerated_sde"])
def test_stochastic_samplers_have_the_oracle_gaussian_law(method):
    n = 200_000
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64)
    out = ad.sample(TARGET.eps, x, PATH, method, generator=gen)
    m_hat, S_hat = ad.metrics.empirical_moments(out)
    m, S = _stochastic_law(method)
    # 5-sigma tolerances from the sample size: var(mean_i) = S_ii / n, var(S_ij) ~ (S_ii S_jj + S_ij^2) / n
    tol_m = 5 * np.sqrt(np.diag(S) / n)
    tol_S = 5 * np.sqrt((np.outer(np.diag(S), np.diag(S)) + S**2) / n)
    assert np.all(np.abs(m_hat.numpy() - m) < tol_m), (m_hat, m)
    assert np.all(np.abs(S_hat.numpy() - S) < tol_S), (S_hat, S)


def test_stochastic_law_check_detects_the_official_cifar_variant():
    """The extra sqrt(alpha_t) on the first noise (official CIFAR code, its issue #1) gives a different law, and the
    moment test above is sensitive enough to see it: guards the test's power, not the library."""
    m, S = _stochastic_law("accelerated_sde")
    mv, Sv, I = np.zeros(D), np.eye(D), np.eye(D)
    a = PATH.tolist()
    for a_t, a_prev in zip(a[:-1], a[1:]):
        alpha = a_t / a_prev
        Sv = Sv + alpha * (1 - alpha) / 2 * I
        E, e = _eps_affine(a_t)
        k = -(1 - alpha) / math.sqrt(1 - a_t)
        M, c = (I + k * E) / math.sqrt(alpha), k * e / math.sqrt(alpha)
        mv, Sv = M @ mv + c, M @ Sv @ M.T + (1 - alpha) / 2 * I
    tol_S = 5 * np.sqrt((np.outer(np.diag(S), np.diag(S)) + S**2) / 200_000)
    assert np.any(np.abs(Sv - S) > 3 * tol_S)
