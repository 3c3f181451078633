"""Reparameterized distributions the MonteCLoRA hierarchy needs and torch / Pyro do not provide.

* :class:`WishartCholesky` -- the Wishart law, but over the Cholesky factor ``L`` of ``Sigma = L L^T``.
  Sampling it is the Bartlett decomposition, which yields ``L`` directly, so neither the guide nor
  the model ever factorizes a matrix, and no draw is ever rejected or resampled (torch's
  ``Wishart.rsample`` resamples "singular" draws, which biases it; PEFT calls its private
  ``_bartlett_sampling``).  Written by hand because no maintained library ships it.
* :class:`Dirichlet`, :class:`Independent`, :class:`Delta`, :class:`ImproperUniform` -- Pyro's,
  except that ``expand`` to the batch shape a law already has returns the law itself.  A plate
  expands every site's law at every statement; the laws here are made at the plate's shape, so
  that expansion is a no-op (it took about 10 us a statement on a 2-core CPU), and the guide's and
  the model's noise law stay one object, whose KL is zero.
* :class:`LaplaceBridgeDirichlet` -- a Dirichlet whose ``rsample`` is the softmax-basis Laplace
  approximation used by the MonteCLoRA reference code.  Its density and KL are the exact
  Dirichlet ones, so only the sampler is approximate; torch's exact ``Dirichlet.rsample`` is the
  default elsewhere in this package.

KL divergences: ``kl_divergence(WishartCholesky, WishartCholesky)`` is registered in closed form
(the KL is invariant under the bijection ``L -> L L^T``, so it is the Wishart-Wishart KL); the
Dirichlet KL is torch's own.
"""

from __future__ import annotations

import functools
import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import Wishart, constraints
from torch.distributions.kl import register_kl

_NO_SHAPE = torch.Size()

__all__ = ["Delta", "Dirichlet", "ImproperUniform", "Independent", "WishartCholesky", "LaplaceBridgeDirichlet",
           "multivariate_digamma", "wishart_kl", "wishart_kl_same_df"]


class _SameShapeExpandIsIdentity:
    """``expand`` to the law's own batch shape returns the law (distributions are immutable)."""

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        return super().expand(batch_shape, _instance)


class Dirichlet(_SameShapeExpandIsIdentity, dist.Dirichlet):
    """Pyro's Dirichlet; expanding it to its own batch shape is free."""


class Independent(_SameShapeExpandIsIdentity, dist.Independent):
    """Pyro's Independent; expanding it to its own batch shape is free."""


class Delta(_SameShapeExpandIsIdentity, dist.Delta):
    """Pyro's Delta; expanding it to its own batch shape is free."""


class ImproperUniform(_SameShapeExpandIsIdentity, dist.ImproperUniform):
    """Pyro's ImproperUniform; expanding it to its own batch shape is free."""


def multivariate_digamma(x: torch.Tensor, p: int) -> torch.Tensor:
    """psi_p(x) = sum_{i=1..p} psi(x + (1 - i) / 2), the derivative of ``torch.mvlgamma``."""
    offsets = (1 - torch.arange(1, p + 1, dtype=x.dtype, device=x.device)) / 2
    return torch.digamma(x.unsqueeze(-1) + offsets).sum(-1)


class WishartCholesky(TorchDistribution):
    """Law of ``L = chol(Sigma)`` for ``Sigma ~ Wishart(df, V)``, ``V = scale_tril @ scale_tril.T``.

    ``rsample`` is the Bartlett decomposition ``L = scale_tril @ T`` with ``T`` lower triangular,
    ``T_ii = sqrt(chi2(df - i))`` (i from 0) and ``T_ij ~ N(0, 1)`` below the diagonal; it is
    differentiable in ``scale_tril`` (chi-square draws use torch's reparameterized Gamma).
    """

    arg_constraints = {"df": constraints.positive, "scale_tril": constraints.lower_cholesky}
    support = constraints.lower_cholesky
    has_rsample = True

    def __init__(self, df: float | torch.Tensor, scale_tril: torch.Tensor, validate_args: bool | None = None):
        if scale_tril.dim() < 2 or scale_tril.shape[-1] != scale_tril.shape[-2]:
            raise ValueError(f"scale_tril must be a square matrix (..., p, p); got shape {tuple(scale_tril.shape)}")
        p = scale_tril.shape[-1]
        if isinstance(df, (int, float)):  # checked on the host: no device sync per draw
            if not df > p - 1:
                raise ValueError(f"Wishart df must be > p - 1 = {p - 1} for p = {p}; got df = {df}")
            self.fixed_df: float | None = float(df)  # one df for the batch, known on the host
            batch_shape = scale_tril.shape[:-2]
        else:
            if bool((df <= p - 1).any()):
                raise ValueError(f"Wishart df must be > p - 1 = {p - 1} for p = {p}; got df = {df.tolist()}")
            self.fixed_df = None
            batch_shape = torch.broadcast_shapes(df.shape, scale_tril.shape[:-2])
        df = torch.as_tensor(df, dtype=scale_tril.dtype, device=scale_tril.device)
        self.df = df.expand(batch_shape)
        self.scale_tril = scale_tril.expand(batch_shape + (p, p))
        self.dim = p
        super().__init__(batch_shape, torch.Size((p, p)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:  # a plate re-expands every site to the shape it already has
            return self
        df = self.fixed_df if self.fixed_df is not None else self.df.expand(batch_shape)
        return WishartCholesky(df, self.scale_tril.expand(batch_shape + (self.dim,) * 2))

    @property
    def mean(self) -> torch.Tensor:
        """Not the mean of ``L``; see :meth:`covariance_mean` for E[Sigma]."""
        raise NotImplementedError("E[L] has no closed form; use covariance_mean() for E[Sigma] = df V")

    def covariance_mean(self) -> torch.Tensor:
        """E[Sigma] = df * V."""
        return self.df[..., None, None] * self.scale_tril @ self.scale_tril.mT

    def rsample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        p = self.dim
        if self.fixed_df is not None:
            half_chi2_df = _bartlett_half_dfs(self.fixed_df, p, self.df.dtype, self.df.device).expand(shape + (p,))
        else:
            half_chi2_df = (self.df.expand(shape).unsqueeze(-1) - torch.arange(p, dtype=self.df.dtype,
                                                                               device=self.df.device)) / 2
        # chi2(k) = 2 Gamma(k / 2, 1): the reparameterized sampler torch's Chi2.rsample calls, without
        # building a distribution per draw; the clamp is Gamma.rsample's (outside the autograd graph)
        gamma = torch._standard_gamma(half_chi2_df)
        gamma.detach().clamp_(min=torch.finfo(gamma.dtype).tiny)
        diag = (2 * gamma).sqrt()
        noise = torch.randn(shape + (p, p), dtype=self.scale_tril.dtype, device=self.scale_tril.device)
        bartlett = torch.tril(noise, diagonal=-1) + torch.diag_embed(diag)
        return self.scale_tril @ bartlett

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Wishart log density of ``L L^T`` plus log|d(L L^T)/dL| = p log 2 + sum_i (p - i) log L_ii."""
        if self._validate_args:
            self._validate_sample(value)
        p = self.dim
        wishart = Wishart(df=self.df, scale_tril=self.scale_tril, validate_args=False)
        diag = value.diagonal(dim1=-2, dim2=-1)
        powers = torch.arange(p, 0, -1, dtype=value.dtype, device=value.device)
        log_jacobian = p * math.log(2.0) + (powers * diag.log()).sum(-1)
        return wishart.log_prob(value @ value.mT) + log_jacobian


@functools.lru_cache(maxsize=64)
def _bartlett_half_dfs(df: float, p: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(df - i) / 2 for i = 0..p-1: the Gamma shapes of the Bartlett diagonal's chi-square draws."""
    return (df - torch.arange(p, dtype=dtype, device=device)) / 2


def wishart_kl(
    df_q: torch.Tensor, tril_q: torch.Tensor, df_p: torch.Tensor, tril_p: torch.Tensor
) -> torch.Tensor:
    """KL(Wishart(df_q, V_q) || Wishart(df_p, V_p)) in closed form, V = tril @ tril^T."""
    p = tril_q.shape[-1]
    half_q, half_p = df_q / 2, df_p / 2
    log_det_ratio, trace = _log_det_ratio_and_trace(tril_q, tril_p)
    return (
        half_p * log_det_ratio
        + half_q * (trace - p)
        + torch.mvlgamma(half_p, p)
        - torch.mvlgamma(half_q, p)
        + (half_q - half_p) * multivariate_digamma(half_q, p)
    )


def wishart_kl_same_df(df: float, tril_q: torch.Tensor, tril_p: torch.Tensor) -> torch.Tensor:
    """:func:`wishart_kl` for ``df_q = df_p = df``: its log-gamma and digamma terms cancel."""
    log_det_ratio, trace = _log_det_ratio_and_trace(tril_q, tril_p)
    return df / 2 * (log_det_ratio + trace - tril_q.shape[-1])


def _log_det_ratio_and_trace(tril_q: torch.Tensor, tril_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log det V_p - log det V_q, tr(V_p^-1 V_q)) from the Cholesky factors."""
    def log_det(tril: torch.Tensor) -> torch.Tensor:
        return 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    log_det_ratio = log_det(tril_p) - log_det(tril_q)
    whitened = torch.linalg.solve_triangular(tril_p, tril_q, upper=False)
    return log_det_ratio, whitened.pow(2).sum((-2, -1))


@register_kl(WishartCholesky, WishartCholesky)
def _kl_wishart_cholesky(q: WishartCholesky, p: WishartCholesky) -> torch.Tensor:
    if q.fixed_df is not None and q.fixed_df == p.fixed_df:
        return wishart_kl_same_df(q.fixed_df, q.scale_tril, p.scale_tril)
    return wishart_kl(q.df, q.scale_tril, p.df, p.scale_tril)


class LaplaceBridgeDirichlet(Dirichlet):
    """Dirichlet(concentration) with the softmax-basis Laplace approximation as its sampler.

    ``pi = softmax(m + sqrt(v) * z)``, ``m = log a - mean(log a)``,
    ``v = (1 - 2/N) / a + sum(1/a) / N^2`` (MacKay's softmax basis, diagonal).  ``log_prob`` and
    the KL are the exact Dirichlet ones; the sampler is biased, which is why it is an option only.
    """

    def rsample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        alpha = self.concentration
        n = alpha.shape[-1]
        log_alpha = alpha.log()
        loc = log_alpha - log_alpha.mean(-1, keepdim=True)
        inv = alpha.reciprocal()
        var = inv * (1 - 2 / n) + inv.sum(-1, keepdim=True) / n**2
        z = torch.randn(torch.Size(sample_shape) + alpha.shape, dtype=alpha.dtype, device=alpha.device)
        return torch.softmax(loc + var.sqrt() * z, dim=-1)
