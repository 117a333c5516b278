"""Exact-score targets against torch.distributions and autograd."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import accelerated_diffusion as ad

D, K, R = 5, 3, 2


def _mixture_parameters(seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(K, D, generator=g, dtype=torch.float64)
    factors = torch.randn(K, D, R, generator=g, dtype=torch.float64) * 0.7
    return means, factors, torch.rand(K, D, generator=g, dtype=torch.float64) * 0.5 + 0.1


MEANS, FACTORS, DIAG = _mixture_parameters()
COVS = FACTORS @ FACTORS.mT + torch.diag_embed(DIAG)
WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
FULL = ad.GaussianMixture(WEIGHTS, MEANS, COVS)
LOWRANK = ad.GaussianMixture(WEIGHTS, MEANS, factors=FACTORS, diag=DIAG)
LEVELS = [0.01, 0.3, 0.9, 1.0]


def reference_log_prob(x, a):
    comps = [
        MultivariateNormal(math.sqrt(a) * MEANS[k], a * COVS[k] + (1 - a) * torch.eye(D, dtype=torch.float64))
        for k in range(K)
    ]
    return torch.logsumexp(torch.stack([torch.log(WEIGHTS[k]) + comps[k].log_prob(x) for k in range(K)]), 0)


@pytest.mark.parametrize("a", LEVELS)
@pytest.mark.parametrize("target", [FULL, LOWRANK], ids=["full", "lowrank"])
def test_log_prob_and_score_are_exact(target, a, gen):
    x = torch.randn(7, D, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = reference_log_prob(x, a)
    assert torch.allclose(target.log_prob(x, a), ref, atol=1e-10)
    (grad,) = torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(target.score(x.detach(), a), grad, atol=1e-9)
    if a < 1:
        assert torch.allclose(target.eps(x.detach(), a), -math.sqrt(1 - a) * grad, atol=1e-9)


def test_samples_have_the_marginal_moments():
    n = 100_000
    for target in (FULL, LOWRANK):
        x = target.sample(n, 0.5, generator=torch.Generator().manual_seed(1))
        mean = (WEIGHTS[:, None] * math.sqrt(0.5) * MEANS).sum(0)
        assert torch.allclose(x.mean(0), mean, atol=6 * 3 / math.sqrt(n))


def test_gaussian_marginals_and_event_shape():
    g = ad.Gaussian(torch.zeros(4), torch.eye(4) * 2, event_shape=(1, 2, 2))
    assert torch.allclose(g.marginal_cov(0.25), torch.eye(4, dtype=torch.float64) * 1.25)
    x = g.sample(3, 0.25, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 2, 2)
    assert g.eps(x.float(), 0.25).shape == (3, 1, 2, 2) and g.eps(x.float(), 0.25).dtype == torch.float32
    assert torch.allclose(g.score(x, 0.25), -x / 1.25)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
        (dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 0.0], [0.0, -1.0]]]), "semi-definite"),
        (dict(weights=[-1.0], means=[[0.0, 0.0]], covs=[[[1.0, 0.0], [0.0, 1.0]]]), "positive"),
        (dict(weights=[1.0], means=[[0.0, 0.0]]), "either covs"),
        (dict(weights=[1.0], means=[0.0, 0.0], covs=[[[1.0]]]), r"\(K, d\)"),
    ],
)
def test_bad_targets_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ad.GaussianMixture(**kwargs)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="event shape"):
        FULL.score(torch.zeros(3, D + 1), 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        FULL.eps(torch.zeros(3, D), 0.0)
