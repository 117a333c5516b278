r"""Targets with exact scores: Gaussians and Gaussian mixtures, in closed form at every noise level.

If ``X_0 ~ sum_k w_k N(m_k, Sigma_k)`` then the forward marginal at level ``alpha_bar`` is

.. math:: q_{\bar\alpha} = \sum_k w_k\, \mathcal N\big(\sqrt{\bar\alpha}\, m_k,\ \bar\alpha \Sigma_k + (1 - \bar\alpha) I\big),

so samples, log-density, score ``s = grad log q`` and noise prediction ``eps = -sqrt(1 - abar) s`` (the ideal
epsilon-network) are all exact.  Covariances are either full (``covs``, shape ``(K, d, d)``) or
low-rank-plus-diagonal (``Sigma_k = U_k U_k^T + diag(D_k)``, ``factors`` ``(K, d, r)`` and ``diag`` ``(K, d)``),
the latter solved with the Woodbury identity and the matrix determinant lemma so that ``d = 784`` is cheap.

Everything is batched over samples: ``x`` has shape ``(n, *event_shape)`` (``event_shape`` defaults to
``(d,)``; e.g. ``(1, 28, 28)`` for images).  Computations run in the target's dtype (float64 by default);
inputs are converted to it and results converted back to the input's dtype.

``target.eps(x, alpha_bar)`` has the ``eps_fn(x, t)`` signature that :func:`accelerated_diffusion.sample` uses
with its default timesteps (``t = alpha_bar``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = ["GaussianMixture", "Gaussian"]


class GaussianMixture:
    """A Gaussian mixture with exact forward marginals (see module docstring)."""

    def __init__(
        self,
        weights,
        means,
        covs=None,
        *,
        factors=None,
        diag=None,
        event_shape=None,
        dtype: torch.dtype = torch.float64,
    ):
        self.dtype = dtype
        self.means = torch.as_tensor(means, dtype=dtype)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(self.means.shape)}")
        K, d = self.means.shape
        self.weights = torch.as_tensor(weights, dtype=dtype)
        if self.weights.shape != (K,) or bool((self.weights <= 0).any()):
            raise ValueError(f"weights must be {K} positive numbers, got {self.weights}")
        self.weights = self.weights / self.weights.sum()
        self.log_weights = torch.log(self.weights)
        if (covs is None) == (factors is None and diag is None):
            raise ValueError("give either covs (full) or factors and diag (low-rank plus diagonal)")
        if covs is not None:
            self.covs = torch.as_tensor(covs, dtype=dtype)
            if self.covs.shape != (K, d, d):
                raise ValueError(f"covs must have shape {(K, d, d)}, got {tuple(self.covs.shape)}")
            if not torch.allclose(self.covs, self.covs.mT):
                raise ValueError("covs must be symmetric")
            if bool((torch.linalg.eigvalsh(self.covs) < -1e-10).any()):
                raise ValueError("covs must be positive semi-definite")
            self.factors = self.diag = None
        else:
            self.factors = torch.as_tensor(factors, dtype=dtype)
            self.diag = torch.as_tensor(diag, dtype=dtype)
            if self.factors.ndim != 3 or self.factors.shape[:2] != (K, d):
                raise ValueError(f"factors must have shape (K={K}, d={d}, r), got {tuple(self.factors.shape)}")
            if self.diag.shape != (K, d) or bool((self.diag < 0).any()):
                raise ValueError(f"diag must be non-negative with shape {(K, d)}, got {tuple(self.diag.shape)}")
            self.covs = None
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not have {d} elements")
        self._cache = lru_cache(maxsize=8)(self._level_factors)

    # ----------------------------------------------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def covariance(self, alpha_bar: float = 1.0) -> torch.Tensor:
        """Dense component covariances at level ``alpha_bar``: ``abar Sigma_k + (1 - abar) I``, shape (K, d, d)."""
        a = _check_level(alpha_bar)
        eye = torch.eye(self.dim, dtype=self.dtype)
        sigma = self.covs if self.covs is not None else self.factors @ self.factors.mT + torch.diag_embed(self.diag)
        return a * sigma + (1 - a) * eye

    def _level_factors(self, a: float):
        """Per-level factorisation: (kind, data) used by solve / logdet / sample."""
        if self.covs is not None:
            chol = torch.linalg.cholesky(self.covariance(a))
            return "full", (chol, 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1))
        V = math.sqrt(a) * self.factors  # (K, d, r)
        e = a * self.diag + (1 - a)  # (K, d)
        if bool((e <= 0).any()):
            raise ValueError(f"covariance is singular at alpha_bar={a}; give a positive diag")
        VtEinv = V.mT / e[:, None, :]  # (K, r, d)
        cap = torch.eye(V.shape[-1], dtype=self.dtype) + VtEinv @ V  # (K, r, r) capacitance
        cap_chol = torch.linalg.cholesky(cap)
        logdet = torch.log(e).sum(-1) + 2 * torch.log(torch.diagonal(cap_chol, dim1=-2, dim2=-1)).sum(-1)
        return "lowrank", (V, e, VtEinv, cap_chol, logdet)

    def _solve(self, diff: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``C_k^{-1} diff_k`` for diff of shape (K, n, d), and log det C_k."""
        kind, data = self._cache(a)
        if kind == "full":
            chol, logdet = data
            return torch.cholesky_solve(diff.mT, chol).mT, logdet
        V, e, VtEinv, cap_chol, logdet = data
        y = diff / e[:, None, :]  # E^{-1} diff
        w = torch.cholesky_solve(VtEinv @ diff.mT, cap_chol)  # (K, r, n)
        return y - (VtEinv.mT @ w).mT, logdet

    def _flatten(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        x = torch.as_tensor(x)
        k = len(self.event_shape)
        if tuple(x.shape[x.ndim - k :]) != self.event_shape:
            raise ValueError(f"x must end in event shape {self.event_shape}, got {tuple(x.shape)}")
        batch = x.shape[: x.ndim - k]
        return x.reshape(-1, self.dim).to(self.dtype), batch

    def _component_terms(self, x: torch.Tensor, alpha_bar: float):
        a = _check_level(alpha_bar)
        diff = x[None, :, :] - math.sqrt(a) * self.means[:, None, :]  # (K, n, d)
        cinv_diff, logdet = self._solve(diff, a)
        maha = (diff * cinv_diff).sum(-1)  # (K, n)
        logp = self.log_weights[:, None] - 0.5 * (maha + logdet[:, None] + self.dim * math.log(2 * math.pi))
        return logp, cinv_diff

    # ----------------------------------------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """``log q_abar(x)``, shape ``x.shape[:-len(event_shape)]``."""
        flat, batch = self._flatten(x)
        logp, _ = self._component_terms(flat, alpha_bar)
        return torch.logsumexp(logp, 0).reshape(batch)

    def score(self, x: torch.Tensor, alpha_bar: float = 1.0) -> torch.Tensor:
        """``grad_x log q_abar(x) = -sum_k r_k(x) C_k^{-1} (x - sqrt(abar) m_k)`` with responsibilities ``r_k``."""
        flat, batch = self._flatten(x)
        logp, cinv_diff = self._component_terms(flat, alpha_bar)
        resp = torch.softmax(logp, 0)  # (K, n)
        s = -(resp[:, :, None] * cinv_diff).sum(0)
        return s.reshape(*batch, *self.event_shape).to(torch.as_tensor(x).dtype)

    def eps(self, x: torch.Tensor, alpha_bar) -> torch.Tensor:
        """The ideal noise prediction ``eps*(x, abar) = -sqrt(1 - abar) grad log q_abar(x)``; usable as ``eps_fn``."""
        a = _check_level(alpha_bar)
        return -math.sqrt(1 - a) * self.score(x, a)

    def sample(self, n: int, alpha_bar: float = 1.0, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples of ``q_abar``, shape ``(n, *event_shape)``, in the target's dtype."""
        a = _check_level(alpha_bar)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        kind, data = self._cache(a)
        if kind == "full":
            chol = data[0][comp]  # (n, d, d)
            z = torch.randn(n, self.dim, 1, generator=generator, dtype=self.dtype)
            noise = (chol @ z)[..., 0]
        else:
            V, e = data[0][comp], data[1][comp]
            zr = torch.randn(n, V.shape[-1], 1, generator=generator, dtype=self.dtype)
            zd = torch.randn(n, self.dim, generator=generator, dtype=self.dtype)
            noise = (V @ zr)[..., 0] + torch.sqrt(e) * zd
        out = math.sqrt(a) * self.means[comp] + noise
        return out.reshape(n, *self.event_shape)


class Gaussian(GaussianMixture):
    r"""A single Gaussian ``N(mean, cov)``; its marginals ``N(sqrt(abar) mean, abar cov + (1 - abar) I)`` are
    exposed by :meth:`marginal_mean` and :meth:`marginal_cov` (the closed-form references of the tests)."""

    def __init__(self, mean, cov=None, *, factors=None, diag=None, event_shape=None, dtype=torch.float64):
        mean = torch.as_tensor(mean, dtype=dtype)
        covs = None if cov is None else torch.as_tensor(cov, dtype=dtype)[None]
        super().__init__(
            torch.ones(1, dtype=dtype),
            mean[None],
            covs,
            factors=None if factors is None else torch.as_tensor(factors, dtype=dtype)[None],
            diag=None if diag is None else torch.as_tensor(diag, dtype=dtype)[None],
            event_shape=event_shape,
            dtype=dtype,
        )

    @property
    def mean(self) -> torch.Tensor:
        return self.means[0]

    @property
    def cov(self) -> torch.Tensor:
        return self.covariance(1.0)[0]

    def marginal_mean(self, alpha_bar: float) -> torch.Tensor:
        return math.sqrt(_check_level(alpha_bar)) * self.mean

    def marginal_cov(self, alpha_bar: float) -> torch.Tensor:
        return self.covariance(alpha_bar)[0]


def _check_level(alpha_bar) -> float:
    a = float(alpha_bar)
    if not 0.0 < a <= 1.0:
        raise ValueError(f"alpha_bar must lie in (0, 1], got {a!r}")
    return a
