"""Observed order of convergence with exact scores on a Gaussian target.

Error measure: mean over 64 starting points of the Euclidean distance between the sampler's output and the exact
probability-flow map (for a Gaussian N(mu, Sigma) the flow keeps z = V^T (x - sqrt(abar) mu) / sqrt(abar lambda +
1 - abar) fixed in the eigenbasis Sigma = V diag(lambda) V^T; ``tests/oracles.py``). Slopes are least-squares fits of log error on log N.

Tolerances: +-0.1 around the theoretical order on a path uniform in alpha_bar over [0.05, 0.95], where eps is smooth
in alpha_bar. On the 1000-step linear schedule ending at alpha_bar = 1 the accelerated sampler is measurably below
second order (eps ~ sqrt(1 - abar) is not smooth at abar = 1; the rates chapter studies this): the test pins the
observed range instead, so a change in either direction is noticed.
"""

import numpy as np
import pytest
import torch

import accelerated_diffusion as ad
import oracles

D = 4
NS = [40, 80, 160, 320, 640]


def _mean_and_cov(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, dtype=torch.float64, generator=g)
    return torch.randn(D, dtype=torch.float64, generator=g), a @ a.T / D + 0.1 * torch.eye(D, dtype=torch.float64)


MU, SIGMA = _mean_and_cov()
TARGET = ad.Gaussian(MU, SIGMA)
X = torch.randn(64, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def exact_flow(x, a0, a1):
    """The exact probability-flow map of the target (closed form, :func:`oracles.gaussian_flow_map`)."""
    A, b = oracles.gaussian_flow_map(MU, SIGMA, a0, a1)
    return x @ torch.from_numpy(A).T + torch.from_numpy(b)


def fitted_slope(method, path_of_n):
    errs = []
    for n in NS:
        path = path_of_n(n)
        out = ad.sample(TARGET.eps, X, path, method)
        errs.append(float((out - exact_flow(X, float(path[0]), float(path[-1]))).norm(dim=-1).mean()))
    return np.polyfit(np.log(NS), np.log(errs), 1)[0], errs


def uniform_path(n):
    return torch.linspace(0.05, 0.95, n + 1, dtype=torch.float64)


def linear_schedule_path(n):
    sched = ad.DiscreteSchedule.from_diffusers("linear", 1000, 1e-4, 0.02)
    return sched.path(sched.subsample(n, "linspace"), final_alpha_bar=1.0)


@pytest.mark.parametrize("method,order", [("ddim", 1.0), ("ddim_type", 1.0), ("accelerated_ode", 2.0)])
def test_order_on_smooth_path(method, order):
    slope, errs = fitted_slope(method, uniform_path)
    print(f"{method}: slope {slope:.3f}, errors {errs}")
    assert abs(-slope - order) < 0.1


def test_safeguarded_variants_are_second_order_on_smooth_path():
    """The lambda-extrapolated variant approaches second order from below on this path (local slopes 1.77, 1.87,
    1.93, 1.96): the fit over the three finest runs is within 0.1 of 2.  The capped one never caps here (the path
    is uniform in alpha_bar: every extrapolation ratio is 1), so it is the paper's sampler."""
    _, errs = fitted_slope("accelerated_ode_lambda", uniform_path)
    slope = np.polyfit(np.log(NS[-3:]), np.log(errs[-3:]), 1)[0]
    print(f"accelerated_ode_lambda: slope of the finest three {slope:.3f}, errors {errs}")
    assert abs(-slope - 2.0) < 0.1
    s_cap, errs_cap = fitted_slope("accelerated_ode_capped", uniform_path)
    assert errs_cap == pytest.approx(fitted_slope("accelerated_ode", uniform_path)[1], rel=1e-12)
    assert abs(-s_cap - 2.0) < 0.1


def test_order_on_linear_schedule():
    s_ddim, _ = fitted_slope("ddim", linear_schedule_path)
    s_acc, errs = fitted_slope("accelerated_ode", linear_schedule_path)
    print(f"linear schedule: ddim {s_ddim:.3f}, accelerated_ode {s_acc:.3f}")
    assert abs(-s_ddim - 1.0) < 0.1
    assert 1.4 < -s_acc < 1.9  # clearly better than first order, clearly short of second (see module docstring)


def test_safeguarded_variants_on_linear_schedule():
    """Pinned observations on the rounded 1000-step linear schedule ending at alpha_bar = 1.  Extrapolating eps
    linearly in lambda is further below second order than the paper's sampler (eps ~ e^(-lambda) near clean data,
    and the last step has h = inf).  The rounded ``linspace`` grids alternate strides of 1 and 2 training steps
    (extrapolation ratios up to 2.06 at 640 steps): a cap of 1 cuts many steps that need no safeguard and loses
    the order, which is why the default cap is 2 (nearly the paper's errors there) and 2.5 gives them exactly."""
    s_lam, _ = fitted_slope("accelerated_ode_lambda", linear_schedule_path)
    s_acc, errs_acc = fitted_slope("accelerated_ode", linear_schedule_path)
    s_cap, errs_cap = fitted_slope("accelerated_ode_capped", linear_schedule_path)
    print(f"linear schedule: accelerated_ode_lambda {s_lam:.3f}, capped {s_cap:.3f} errors {errs_cap}")
    assert 1.1 < -s_lam < -s_acc
    assert abs(s_cap - s_acc) < 0.1
    path = linear_schedule_path(NS[-1])
    one = ad.sample(TARGET.eps, X, path, "accelerated_ode_capped", options={"max_ratio": 1.0})
    err_one = float((one - exact_flow(X, float(path[0]), float(path[-1]))).norm(dim=-1).mean())
    assert err_one > 3 * errs_acc[-1]
    out = ad.sample(TARGET.eps, X, path, "accelerated_ode_capped", options={"max_ratio": 2.5})
    err = float((out - exact_flow(X, float(path[0]), float(path[-1]))).norm(dim=-1).mean())
    assert err == pytest.approx(errs_acc[-1], rel=1e-6)
