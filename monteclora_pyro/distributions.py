"""Reparameterized distributions the MonteCLoRA hierarchy needs and torch / Pyro do not provide.

* :class:`WishartCholesky`: the Wishart law over the Cholesky factor ``L`` of ``Sigma = L L^T``, sampled
  by the Bartlett decomposition, so no matrix is factorized and no draw rejected or resampled (torch's
  ``Wishart.rsample`` resamples "singular" draws, which biases it).  Its KL is registered in closed form.
  Written by hand because no maintained library ships it.
* :class:`Dirichlet`, :class:`Independent`, :class:`Delta`, :class:`ImproperUniform`,
  :class:`Categorical`: Pyro's, except that ``expand`` to the batch shape a law already has returns the
  law itself, so a plate's expansion is free and the guide's and the model's noise law stay one object
  (KL zero).  :class:`Categorical` also scores its batch shape with one fused ``cross_entropy``.
* :class:`LaplaceBridgeDirichlet`: a Dirichlet whose ``rsample`` is the softmax-basis Laplace
  approximation of the MonteCLoRA reference code (density and KL exact).
* :func:`kronecker_normal`: a Gaussian over matrices whose covariance is diagonal in a Kronecker eigenbasis
  U (x) V, as a rotation of an elementwise Normal; Pyro's only correlated Gaussian is dense
  (``MultivariateNormal`` over the flattened matrix: 3072 x 3072 for a 384 x 8 LoRA factor).
"""

from __future__ import annotations

import functools
import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch.distributions import Wishart, constraints
from torch.distributions.kl import register_kl
from torch.distributions.transforms import AffineTransform, Transform
from torch.distributions.utils import lazy_property

_NO_SHAPE = torch.Size()

__all__ = ["Categorical", "Delta", "Dirichlet", "ImproperUniform", "Independent", "WishartCholesky",
           "KroneckerRotation", "LaplaceBridgeDirichlet", "kronecker_normal", "multivariate_digamma", "wishart_kl"]


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


class Categorical(dist.Categorical):
    """Pyro's Categorical over ``logits`` (unnormalized, last dim the categories); ``log_prob`` of a value
    shaped like the batch is ``-cross_entropy``, one fused kernel and its backward, where the parent
    normalizes the logits at construction and gathers (about five times the CPU time on a small head).
    """

    arg_constraints = {"unnormalized_logits": constraints.independent(constraints.real, 1)}

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        if logits.dim() < 1:
            raise ValueError("logits must have at least one dimension (the categories)")
        self.unnormalized_logits = self._param = logits
        self._num_events = logits.shape[-1]
        TorchDistribution.__init__(self, logits.shape[:-1], validate_args=validate_args)

    @lazy_property
    def logits(self) -> torch.Tensor:  # what the parent computes at construction
        return self.unnormalized_logits - self.unnormalized_logits.logsumexp(-1, keepdim=True)

    @lazy_property
    def probs(self) -> torch.Tensor:
        return self.unnormalized_logits.softmax(-1)

    def expand(self, batch_shape, _instance=None):  # the parent's would copy normalized logits it has not got
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        return Categorical(self.unnormalized_logits.expand(batch_shape + (self._num_events,)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.shape != self.batch_shape:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        logits = self.unnormalized_logits.reshape(-1, self._num_events)
        return -F.cross_entropy(logits, value.reshape(-1).long(), reduction="none").reshape(value.shape)


def multivariate_digamma(x: torch.Tensor, p: int) -> torch.Tensor:
    """psi_p(x) = sum_{i=1..p} psi(x + (1 - i) / 2), the derivative of ``torch.mvlgamma``."""
    offsets = (1 - torch.arange(1, p + 1, dtype=x.dtype, device=x.device)) / 2
    return torch.digamma(x.unsqueeze(-1) + offsets).sum(-1)


class WishartCholesky(TorchDistribution):
    """Law of ``L = chol(Sigma)`` for ``Sigma ~ Wishart(df, V)``, ``V = scale_tril @ scale_tril.T``.

    ``rsample`` is the Bartlett decomposition ``L = scale_tril @ T`` with ``T`` lower triangular,
    ``T_ii = sqrt(chi2(df - i))`` (i from 0) and ``T_ij ~ N(0, 1)`` below the diagonal; it is
    differentiable in ``scale_tril`` (chi-square draws use torch's reparameterized Gamma).

    A diagonal ``V`` may be given as ``scale_diag`` (its square root's diagonal) instead: then the
    draw scales the rows of ``T`` and the KL between two such laws takes vectors, with no
    triangular solve (``scale_tril`` is formed only when asked for).
    """

    has_rsample = True
    support = constraints.lower_cholesky

    def __init__(
        self,
        df: float | torch.Tensor,
        scale_tril: torch.Tensor | None = None,
        validate_args: bool | None = None,
        *,
        scale_diag: torch.Tensor | None = None,
    ):
        if (scale_tril is None) == (scale_diag is None):
            raise ValueError("give exactly one of scale_tril (..., p, p) and scale_diag (..., p)")
        if scale_tril is not None and (scale_tril.dim() < 2 or scale_tril.shape[-1] != scale_tril.shape[-2]):
            raise ValueError(f"scale_tril must be a square matrix (..., p, p); got shape {tuple(scale_tril.shape)}")
        if scale_diag is not None and scale_diag.dim() < 1:
            raise ValueError("scale_diag must have at least one dimension (..., p)")
        scale = scale_tril if scale_tril is not None else scale_diag
        p = scale.shape[-1]
        scale_batch = scale.shape[:-2] if scale_tril is not None else scale.shape[:-1]
        if isinstance(df, (int, float)):  # checked on the host: no device sync per draw
            if not df > p - 1:
                raise ValueError(f"Wishart df must be > p - 1 = {p - 1} for p = {p}; got df = {df}")
            self.fixed_df: float | None = float(df)  # one df for the batch, known on the host
            batch_shape = scale_batch
        else:
            if bool((df <= p - 1).any()):
                raise ValueError(f"Wishart df must be > p - 1 = {p - 1} for p = {p}; got df = {df.tolist()}")
            self.fixed_df = None
            batch_shape = torch.broadcast_shapes(df.shape, scale_batch)
        df = torch.as_tensor(df, dtype=scale.dtype, device=scale.device)
        self.df = df.expand(batch_shape)
        self.dim = p
        if scale_tril is not None:
            self.scale_tril = scale_tril.expand(batch_shape + (p, p))
            self.scale_diag = None
        else:
            self.scale_diag = scale_diag.expand(batch_shape + (p,))
        super().__init__(batch_shape, torch.Size((p, p)), validate_args=validate_args)

    @property
    def arg_constraints(self) -> dict[str, constraints.Constraint]:
        if self.scale_diag is not None:
            return {"df": constraints.positive, "scale_diag": constraints.independent(constraints.positive, 1)}
        return {"df": constraints.positive, "scale_tril": constraints.lower_cholesky}

    @lazy_property
    def scale_tril(self) -> torch.Tensor:  # set in __init__ unless the law was given scale_diag
        return torch.diag_embed(self.scale_diag)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape:  # a plate re-expands every site to the shape it already has
            return self
        df = self.fixed_df if self.fixed_df is not None else self.df.expand(batch_shape)
        if self.scale_diag is not None:
            return WishartCholesky(df, scale_diag=self.scale_diag.expand(batch_shape + (self.dim,)))
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
        # building a distribution per draw; the clamp is Gamma.rsample's (outside the autograd graph, and on
        # a result of the draw, not the draw itself, whose backward to a learned df needs it unchanged)
        chi2 = 2 * torch._standard_gamma(half_chi2_df)
        chi2.detach().clamp_(min=torch.finfo(chi2.dtype).tiny)
        diag = chi2.sqrt()
        noise = torch.randn(shape + (p, p), dtype=self.df.dtype, device=self.df.device)
        bartlett = torch.tril(noise, diagonal=-1) + torch.diag_embed(diag)
        if self.scale_diag is not None:
            return self.scale_diag.unsqueeze(-1) * bartlett
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
    return _wishart_kl(df_q, df_p, tril_q.shape[-1], *_log_det_ratio_and_trace(tril_q, tril_p))


def _wishart_kl(
    df_q: torch.Tensor, df_p: torch.Tensor, p: int, log_det_ratio: torch.Tensor, trace: torch.Tensor
) -> torch.Tensor:
    """The Wishart KL from ``log det V_p - log det V_q`` and ``tr(V_p^-1 V_q)`` (full or diagonal scales)."""
    half_q, half_p = df_q / 2, df_p / 2
    return (
        half_p * log_det_ratio
        + half_q * (trace - p)
        + torch.mvlgamma(half_p, p)
        - torch.mvlgamma(half_q, p)
        + (half_q - half_p) * multivariate_digamma(half_q, p)
    )


def _wishart_kl_same_df(df: float, p: int, log_det_ratio: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
    """:func:`_wishart_kl` for ``df_q = df_p = df``: its log-gamma and digamma terms cancel."""
    return df / 2 * (log_det_ratio + trace - p)


def _log_det_ratio_and_trace(tril_q: torch.Tensor, tril_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log det V_p - log det V_q, tr(V_p^-1 V_q)) from the Cholesky factors."""
    def log_det(tril: torch.Tensor) -> torch.Tensor:
        return 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    log_det_ratio = log_det(tril_p) - log_det(tril_q)
    whitened = torch.linalg.solve_triangular(tril_p, tril_q, upper=False)
    return log_det_ratio, whitened.pow(2).sum((-2, -1))


def _diagonal_log_det_ratio_and_trace(diag_q: torch.Tensor, diag_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_log_det_ratio_and_trace` for diagonal factors, from their diagonals."""
    ratio = diag_q / diag_p
    return -2 * ratio.log().sum(-1), ratio.pow(2).sum(-1)


@register_kl(WishartCholesky, WishartCholesky)
def _kl_wishart_cholesky(q: WishartCholesky, p: WishartCholesky) -> torch.Tensor:
    if q.scale_diag is not None and p.scale_diag is not None:
        terms = _diagonal_log_det_ratio_and_trace(q.scale_diag, p.scale_diag)
    else:
        terms = _log_det_ratio_and_trace(q.scale_tril, p.scale_tril)
    if q.fixed_df is not None and q.fixed_df == p.fixed_df:
        return _wishart_kl_same_df(q.fixed_df, q.dim, *terms)
    return _wishart_kl(q.df, p.df, q.dim, *terms)


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


class KroneckerRotation(Transform):
    """y = U x V^T for orthogonal U (... x o x o) and V (... x i x i) on matrices x (... x o x i): a bijection of
    unit Jacobian determinant, the rotation from a Kronecker eigenbasis to the matrix's own."""

    domain = constraints.independent(constraints.real, 2)
    codomain = constraints.independent(constraints.real, 2)
    bijective = True

    def __init__(self, out_basis: torch.Tensor, in_basis: torch.Tensor, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.out_basis, self.in_basis = out_basis, in_basis

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_basis @ x @ self.in_basis.transpose(-1, -2)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.out_basis.transpose(-1, -2) @ y @ self.in_basis

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-2])


def kronecker_normal(loc: torch.Tensor, scale: torch.Tensor, out_basis: torch.Tensor, in_basis: torch.Tensor
                     ) -> dist.TransformedDistribution:
    """The law of loc + U Z V^T with Z_ab ~ Normal(0, scale_ab) independent (event: the last two dims): a
    Gaussian over matrices whose covariance in vec(X) = row-major flattening is (U (x) V) diag(scale^2)
    (U (x) V)^T, e.g. a Kronecker-factored Laplace posterior's in the eigenbases U, V of its two factors."""
    base = Independent(dist.Normal(torch.zeros_like(loc), scale), 2)
    return dist.TransformedDistribution(base, [KroneckerRotation(out_basis, in_basis),
                                               AffineTransform(loc, 1.0, event_dim=2)])
