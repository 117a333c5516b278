r"""Distances between distributions: closed forms for Gaussians, estimators otherwise."""

from __future__ import annotations

import torch

__all__ = [
    "gaussian_kl",
    "gaussian_w2",
    "gaussian_w2_squared",
    "gaussian_w2_squared_batch",
    "psd_power",
    "empirical_moments",
    "affine_map",
]


def gaussian_kl(mean0, cov0, mean1, cov1) -> float:
    r"""``KL(N(mean0, cov0) || N(mean1, cov1))`` in closed form (float64):

    .. math:: \tfrac12\big(\operatorname{tr}(\Sigma_1^{-1}\Sigma_0) + (\mu_1-\mu_0)^\top\Sigma_1^{-1}(\mu_1-\mu_0)
              - d + \log\det\Sigma_1 - \log\det\Sigma_0\big).
    """
    m0, m1 = torch.as_tensor(mean0, dtype=torch.float64), torch.as_tensor(mean1, dtype=torch.float64)
    S0, S1 = torch.as_tensor(cov0, dtype=torch.float64), torch.as_tensor(cov1, dtype=torch.float64)
    d = m0.numel()
    L1 = torch.linalg.cholesky(S1)
    L0 = torch.linalg.cholesky(S0)
    A = torch.cholesky_solve(S0, L1)
    diff = (m1 - m0)[:, None]
    maha = float((diff * torch.cholesky_solve(diff, L1)).sum())
    logdet1 = 2 * torch.log(torch.diagonal(L1)).sum()
    logdet0 = 2 * torch.log(torch.diagonal(L0)).sum()
    return 0.5 * float(torch.trace(A) + maha - d + logdet1 - logdet0)


def psd_power(S, p: float) -> torch.Tensor:
    """``S ** p`` for a symmetric positive semi-definite ``S`` via ``eigh`` (float64; round-off negative eigenvalues
    are set to 0 first)."""
    S = torch.as_tensor(S, dtype=torch.float64)
    w, V = torch.linalg.eigh(0.5 * (S + S.mT))
    return (V * w.clamp(min=0) ** p) @ V.mT


def gaussian_w2_squared_batch(means0, covs0, mean1, cov1) -> torch.Tensor:
    r"""Squared 2-Wasserstein distances between each Gaussian ``N(means0[b], covs0[b])`` and one ``N(mean1, cov1)``
    (``means0`` ``(B, d)``, ``covs0`` ``(B, d, d)``), which are also Fréchet distances (FID):

    .. math:: W_2^2 = |m_0 - m_1|^2 + \operatorname{tr}\big(S_0 + S_1 - 2 (S_1^{1/2} S_0 S_1^{1/2})^{1/2}\big).

    The trace of the cross term is the sum of square roots of the eigenvalues of ``S_1^{1/2} S_0 S_1^{1/2}``
    (symmetric eigendecompositions only, batched; ``S_1^{1/2}`` computed once), so it is exact for singular
    covariances; never negative.  Returns a float64 tensor ``(B,)``.
    """
    m0, m1 = torch.as_tensor(means0, dtype=torch.float64), torch.as_tensor(mean1, dtype=torch.float64)
    S0, S1 = torch.as_tensor(covs0, dtype=torch.float64), torch.as_tensor(cov1, dtype=torch.float64)
    r1 = psd_power(S1, 0.5)
    m = r1 @ S0 @ r1
    cross = torch.linalg.eigvalsh(0.5 * (m + m.mT)).clamp(min=0).sqrt().sum(-1)
    w2sq = ((m0 - m1) ** 2).sum(-1) + torch.diagonal(S0, dim1=-2, dim2=-1).sum(-1) + torch.trace(S1) - 2 * cross
    return w2sq.clamp(min=0.0)


def gaussian_w2_squared(mean0, cov0, mean1, cov1) -> float:
    r"""Squared 2-Wasserstein distance between two Gaussians (the Fréchet distance of FID): the one-element case of
    :func:`gaussian_w2_squared_batch`."""
    return float(gaussian_w2_squared_batch(torch.as_tensor(mean0)[None], torch.as_tensor(cov0)[None], mean1, cov1)[0])


def gaussian_w2(mean0, cov0, mean1, cov1) -> float:
    r"""2-Wasserstein distance between Gaussians, ``sqrt`` of :func:`gaussian_w2_squared`."""
    return gaussian_w2_squared(mean0, cov0, mean1, cov1) ** 0.5


def empirical_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and (unbiased) covariance of ``x`` with shape ``(n, d)``, in float64."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(x.shape[0], -1)
    m = x.mean(0)
    c = x - m
    return m, c.T @ c / (x.shape[0] - 1)


def affine_map(fn, dim: int, *, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(A, b)`` with ``fn(x) = x @ A.T + b`` for an affine ``fn`` acting on batches of shape ``(n, dim)``.

    A deterministic sampler driven by the exact eps of a Gaussian target is affine in its starting point, so
    evaluating it at ``0`` and the ``dim`` basis vectors (one batch) recovers the map exactly; pushing the start
    law ``N(m, S)`` through it gives the output law ``N(A m + b, A S A^T)`` in closed form.
    """
    pts = torch.cat([torch.zeros(1, dim, dtype=dtype), torch.eye(dim, dtype=dtype)])
    out = fn(pts).reshape(dim + 1, -1).to(torch.float64)
    b = out[0]
    return (out[1:] - b).T, b
