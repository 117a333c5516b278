"""Independent oracles for the samplers on Gaussian targets, in numpy / scipy only (nothing here calls
:mod:`accelerated_diffusion`, so a test comparing the library with these compares two separate computations).

A Gaussian target ``N(mean, cov)`` noised to level ``a`` (``x = sqrt(a) x0 + sqrt(1 - a) z``) is
``N(sqrt(a) mean, a cov + (1 - a) I)``, so its exact noise prediction is affine in ``x``; every sampler is then an
affine map (deterministic ones) or propagates a Gaussian law exactly (stochastic ones):

* :func:`sigma_of`, :func:`flow_integrate` -- the probability-flow ODE integrated numerically (``solve_ivp``,
  rtol 1e-12) for a given path of ``eps`` values;
* :func:`gaussian_eps_affine` -- the exact ``eps = E x + e`` of the target at a level;
* :func:`gaussian_flow_map` -- the exact probability-flow map between two levels, in closed form;
* :func:`deterministic_affine` -- the paper's deterministic samplers (and exact DDIM) in score form, as the paper
  states them, composed as affine maps ``x -> K x + b``;
* :func:`deterministic_by_integration` -- the same samplers with exact DDIM and the accelerated step computed by
  integrating the flow with ``eps`` frozen, resp. extrapolated linearly in ``alpha_bar``;
* :func:`stochastic_law` -- the exact Gaussian law of the stochastic samplers' output.

Levels are a sampling path: noisiest first, output level last.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import solve_ivp


def sigma_of(a: float) -> float:
    """``sigma = sqrt((1 - a) / a)``: in ``y = x / sqrt(a)`` the flow reads ``dy / dsigma = eps``."""
    return math.sqrt((1 - a) / a)


def flow_integrate(x, a_from: float, a_to: float, eps_of_a) -> np.ndarray:
    """Integrate the probability-flow ODE numerically for a given eps path ``eps_of_a(alpha_bar)``: in
    ``y = x / sqrt(abar)`` and ``sigma`` it reads ``dy / dsigma = eps(abar(sigma))``, ``abar(sigma) = 1 / (1 + sigma^2)``."""

    def rhs(sigma, y):
        return eps_of_a(1.0 / (1.0 + sigma * sigma))

    x = np.asarray(x, dtype=np.float64)
    sol = solve_ivp(
        rhs, (sigma_of(a_from), sigma_of(a_to)), x / math.sqrt(a_from), rtol=1e-12, atol=1e-13, method="DOP853"
    )
    return math.sqrt(a_to) * sol.y[:, -1]


def gaussian_eps_affine(a: float, mean, cov) -> tuple[np.ndarray, np.ndarray]:
    """``(E, e)`` with ``eps*(x, a) = E x + e = sqrt(1 - a) C^{-1} (x - sqrt(a) mean)``, ``C = a cov + (1 - a) I``."""
    mean, cov = np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    E = math.sqrt(1 - a) * np.linalg.inv(a * cov + (1 - a) * np.eye(len(mean)))
    return E, -E @ (math.sqrt(a) * mean)


def gaussian_flow_map(mean, cov, a0: float, a1: float) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)``: the exact probability-flow map ``x -> A x + b`` from level ``a0`` to ``a1``.  In the eigenbasis
    ``cov = V diag(lam) V^T`` the flow keeps ``z = V^T (x - sqrt(a) mean) / sqrt(a lam + 1 - a)`` fixed."""
    mean, cov = np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    lam, V = np.linalg.eigh(cov)
    A = V @ np.diag(np.sqrt((a1 * lam + 1 - a1) / (a0 * lam + 1 - a0))) @ V.T
    return A, math.sqrt(a1) * mean - A @ (math.sqrt(a0) * mean)


def accelerated_coefficient(a_next: float, a: float, a_prev: float) -> float:
    """The official README's arcsin coefficient of the accelerated ODE correction ``c (eps_{t+1} - eps_t)``."""
    return (
        math.sqrt(a_prev)
        / (a - a_next)
        * (a * sigma_of(a_prev) + math.asin(math.sqrt(a_prev)) - a * sigma_of(a) - math.asin(math.sqrt(a)))
    )


def deterministic_affine(method: str, levels, mean, cov) -> tuple[np.ndarray, np.ndarray]:
    """``(K, b)``: the output of ``method`` (``ddim``, ``ddim_type``, ``accelerated_ode``) with exact scores is
    ``K x_T + b``.  Written in score form (``s = -eps / sqrt(1 - a)``, ``alpha = a / a_prev``) as the paper states
    the rules: DDIM-type ``Y' = (Y + (1 - alpha)/2 s) / sqrt(alpha)``; exact DDIM
    ``sqrt(a_prev) x0 + sqrt(1 - a_prev) eps``; accelerated = DDIM ``+ c (eps_{t+1} - eps_t)``."""
    levels = [float(v) for v in levels]
    K, b = np.eye(len(mean)), np.zeros(len(mean))
    prev = None  # (K, b) of eps_{t+1}(x_{t+1}) as an affine function of x_T
    for i in range(len(levels) - 1):
        a, ap = levels[i], levels[i + 1]
        E, e = gaussian_eps_affine(a, mean, cov)
        eK, eb = E @ K, E @ b + e
        if method == "ddim_type":
            al = a / ap
            K, b = ((u - (1 - al) / 2 * v / math.sqrt(1 - a)) / math.sqrt(al) for u, v in ((K, eK), (b, eb)))
        elif method in ("ddim", "accelerated_ode"):
            nK, nb = (
                math.sqrt(ap) * (u - math.sqrt(1 - a) * v) / math.sqrt(a) + math.sqrt(1 - ap) * v
                for u, v in ((K, eK), (b, eb))
            )
            if method == "accelerated_ode" and prev is not None:
                c = accelerated_coefficient(levels[i - 1], a, ap)
                nK, nb = nK + c * (prev[0] - eK), nb + c * (prev[1] - eb)
            K, b = nK, nb
        else:
            raise ValueError(f"no deterministic oracle for {method!r}")
        prev = (eK, eb)
    return K, b


def deterministic_by_integration(method: str, x, levels, mean, cov) -> np.ndarray:
    """The deterministic samplers on a batch ``x`` (rows), exact DDIM and the accelerated step computed by
    :func:`flow_integrate` with ``eps`` frozen, resp. extrapolated linearly in ``alpha_bar`` from the previous
    evaluation; DDIM-type in score form."""
    x, levels = np.array(x, dtype=np.float64), [float(v) for v in levels]
    eps_prev, a_next = None, None
    for a_t, a_prev in zip(levels[:-1], levels[1:]):
        E, e = gaussian_eps_affine(a_t, mean, cov)
        eps = x @ E.T + e
        if method == "ddim_type":
            alpha = a_t / a_prev
            x = (x - (1 - alpha) / (2 * math.sqrt(1 - a_t)) * eps) / math.sqrt(alpha)
        elif method == "ddim" or (method == "accelerated_ode" and eps_prev is None):
            x = np.stack([flow_integrate(xi, a_t, a_prev, lambda a, ei=ei: ei) for xi, ei in zip(x, eps)])
        elif method == "accelerated_ode":
            x = np.stack(
                [
                    flow_integrate(
                        xi, a_t, a_prev, lambda a, ei=ei, slope=(ei - pi) / (a_t - a_next): ei + (a - a_t) * slope
                    )
                    for xi, ei, pi in zip(x, eps, eps_prev)
                ]
            )
        else:
            raise ValueError(f"no deterministic oracle for {method!r}")
        eps_prev, a_next = eps, a_t
    return x


def stochastic_law(method: str, levels, mean, cov, *, phi_times_sqrt_alpha: bool = False):
    """``(m, S)``: the exact law of the output of ``ddpm_type`` or ``accelerated_sde`` with exact scores when
    ``Y_T ~ N(0, I)``, propagated step by step: ``Y^+ = Y + sqrt((1 - alpha)/2) Z`` (accelerated only), then
    ``(Y + (1 - alpha) s) / sqrt(alpha)`` plus noise of variance ``(1 - alpha) / alpha`` (DDPM-type) or
    ``(1 - alpha) / 2`` (accelerated).  ``phi_times_sqrt_alpha`` multiplies the first noise by an extra
    ``sqrt(alpha)`` (a variant found in the official CIFAR code)."""
    levels = [float(v) for v in levels]
    d = len(mean)
    m, S, I = np.zeros(d), np.eye(d), np.eye(d)
    for a_t, a_prev in zip(levels[:-1], levels[1:]):
        alpha = a_t / a_prev
        if method == "accelerated_sde":
            S = S + (alpha if phi_times_sqrt_alpha else 1.0) * (1 - alpha) / 2 * I
        elif method != "ddpm_type":
            raise ValueError(f"no stochastic oracle for {method!r}")
        E, e = gaussian_eps_affine(a_t, mean, cov)
        k = -(1 - alpha) / math.sqrt(1 - a_t)  # (1 - alpha) s = k eps
        M, c = (I + k * E) / math.sqrt(alpha), k * e / math.sqrt(alpha)
        noise_var = (1 - alpha) / alpha if method == "ddpm_type" else (1 - alpha) / 2
        m, S = M @ m + c, M @ S @ M.T + noise_var * I
    return m, S
