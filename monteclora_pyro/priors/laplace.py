"""The Laplace approximation as a prior family (Laplace-LoRA, arXiv 2308.13111): plain LoRA while training,
then a Normal(0, delta^-1/2) prior on the factors and the Laplace posterior around the trained ones, with a
diagonal or Kronecker-factored GGN (:mod:`monteclora_pyro.laplace`), fitted after training on the training rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..declarations import PriorSpec
from ..laplace import (
    diagonal_ggn,
    holdout_prior_precision,
    kronecker_ggn,
    linear_output_covariance,
    log_evidence,
    optimal_prior_precision,
)
from ..likelihoods import CategoricalLikelihood, GaussianLikelihood, TokenLikelihood
from . import register_prior
from .factor import FactorPrior

__all__ = ["CURVATURES", "PREDICTIVES", "PRIOR_PRECISION_BY", "LaplacePrior", "LaplaceSpec"]

CURVATURES = ("diagonal", "kron")
PREDICTIVES = ("linearized", "sampled")
PRIOR_PRECISION_BY = ("evidence", "holdout")


@dataclass(frozen=True)
class LaplaceSpec(PriorSpec):
    """The ``laplace`` family's fields.

    prior_precision: delta of the Normal(0, delta^-1/2) prior on the factors; omitted: chosen as
        ``prior_precision_by`` says.
    prior_precision_by: ``evidence`` (the delta that maximizes the Laplace approximation of the marginal
        likelihood on the training rows) or ``holdout`` (the delta of a log grid whose linearized predictive
        has the lowest NLL on the held-out training rows: a run needs ``holdout_fraction`` > 0).
    predictive: ``linearized`` (the network linear in the factors around the trained ones, through the
        probit approximation; Laplace-LoRA's) or ``sampled`` (the network under draws of the factors).
    curvature: the GGN's approximation, ``diagonal`` or ``kron`` (K-FAC per factor, Laplace-LoRA's:
        correlations within each factor's rows and columns; classification and regression heads).
    """

    prior_precision: float | None = None
    curvature: str = "diagonal"
    prior_precision_by: str = "evidence"
    predictive: str = "linearized"

    @property
    def needs_holdout(self) -> bool:
        return self.prior_precision is None and self.prior_precision_by == "holdout"

    def _validate(self) -> None:
        super()._validate()
        if self.prior_precision_by not in PRIOR_PRECISION_BY:
            self._fail(f"prior_precision_by = {self.prior_precision_by!r}; allowed: {', '.join(PRIOR_PRECISION_BY)}")
        if self.prior_precision_by == "holdout" and self.predictive != "linearized":
            self._fail(f"prior_precision_by = 'holdout' scores the linearized predictive; predictive = "
                       f"{self.predictive!r} (allowed with it: linearized)")
        if self.prior_precision is not None and not self.prior_precision > 0:
            self._fail(f"prior_precision = {self.prior_precision!r} must be > 0 (or omitted: the marginal "
                       "likelihood chooses it)")
        if self.curvature not in CURVATURES:
            self._fail(f"curvature = {self.curvature!r}; allowed: {', '.join(CURVATURES)}")
        if self.predictive not in PREDICTIVES:
            self._fail(f"predictive = {self.predictive!r}; allowed: {', '.join(PREDICTIVES)}")


@register_prior("laplace")
class LaplacePrior(FactorPrior):
    """A flat prior while training (plain LoRA), Normal(0, delta^-1/2) once :meth:`fit_posterior` has run."""

    declaration = LaplaceSpec
    default_guide = "laplace"
    fitted_buffers = ("prior_precision",)
    post_hoc = True
    trains_as_map = True

    def __init__(self, spec: LaplaceSpec) -> None:
        super().__init__(spec)
        self.register_buffer("prior_precision", torch.zeros(()))  # 0: not fitted yet

    def prior_scale(self) -> float | None:
        return float(self.prior_precision.rsqrt()) if self.prior_precision > 0 else None

    def check_likelihood(self, likelihood) -> None:
        if not isinstance(likelihood, (CategoricalLikelihood, GaussianLikelihood, TokenLikelihood)):
            raise ValueError(f"prior family 'laplace' fits classification and regression heads and causal LMs; the "
                             f"likelihood is a {type(likelihood).__name__}")
        if self.spec.needs_holdout and isinstance(likelihood, TokenLikelihood):
            raise ValueError("prior_precision_by = 'holdout' scores a head's linearized predictive; a causal LM's is "
                             "by finite differences (allowed for it: evidence)")
        if self.spec.curvature == "kron" and isinstance(likelihood, TokenLikelihood):
            raise ValueError("curvature = 'kron' averages a factor's inputs over one sequence per example; a causal "
                             "LM scores answer options over a shared prefix (allowed for it: diagonal)")

    @property
    def linearized(self) -> bool:
        return self.spec.predictive == "linearized" and self.prior_precision > 0

    def curvature(self, module, loader, device: torch.device) -> tuple[dict[str, torch.Tensor], dict | None]:
        """The declared GGN approximation over ``loader``'s rows: its eigenvalues and, where Kronecker-factored,
        its eigenbases (None: diagonal)."""
        if self.spec.curvature == "kron":
            return kronecker_ggn(module, loader, device)
        return diagonal_ggn(module, loader, device), None

    def fit_posterior(self, module, loader, device: torch.device, holdout=None) -> dict[str, Any]:
        """The GGN over ``loader``'s rows (its eigenvalues, and eigenbases where Kronecker-factored), the prior
        precision (on ``holdout``'s rows where the declaration says so), and the guides' posterior precision."""
        start = time.perf_counter()
        ggn, bases = self.curvature(module, loader, device)
        h = torch.cat([ggn[g.key].flatten() for g in module.groups])
        theta = torch.cat([module.factor_means(g).detach().flatten() for g in module.groups])
        chosen: dict[str, Any] = {}
        if self.spec.prior_precision is not None:
            delta = self.spec.prior_precision
        elif self.spec.needs_holdout:
            if holdout is None:
                raise ValueError("prior_precision_by = 'holdout' needs held-out training rows (holdout_fraction > 0)")
            delta, scores = holdout_prior_precision(module, holdout, device, ggn, bases=bases)
            chosen = {"holdout_nll_by_prior_precision": scores}
        else:
            delta = optimal_prior_precision(h, theta)
        self.prior_precision.fill_(delta)
        for group in module.groups:
            guide = module.group_guides[group.key]
            guide.precision.copy_(ggn[group.key] + delta)
            if bases is not None:
                guide.out_basis.copy_(bases[group.key][0])
                guide.in_basis.copy_(bases[group.key][1])
        return {"prior_precision": delta, "ggn_mean": float(h.mean()),
                "log_evidence": log_evidence(delta, h.double().cpu().numpy(), float(theta.double().square().sum())),
                "laplace_fit_seconds": time.perf_counter() - start} | chosen

    def linearized_outputs(self, module, batch, num_samples: int) -> dict[str, torch.Tensor]:
        guides = {g.key: module.group_guides[g.key] for g in module.groups}
        variances = {key: guide.precision.reciprocal() for key, guide in guides.items()}
        bases = {key: guide.basis for key, guide in guides.items() if guide.basis is not None}
        outputs, covariance = linear_output_covariance(module, batch, variances, bases)
        return module.likelihood.linearized_predictive(outputs, covariance, num_samples)
