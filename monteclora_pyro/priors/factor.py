"""Priors whose latent is the factor itself: ``gaussian`` (BLoB's Normal prior) and ``map`` (plain LoRA).

The factor F ~ Normal(0, prior_scale) elementwise, or a flat prior when ``map`` declares no
``prior_scale`` (with the point-mass guide that is plain LoRA through the same engine).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

from ..declarations import PriorSpec
from ..distributions import ImproperUniform, Independent
from . import Panel, PriorFamily, register_prior

__all__ = ["FactorPrior", "GaussianPrior", "GaussianSpec", "MapPrior", "MapSpec"]


@dataclass(frozen=True)
class MapSpec(PriorSpec):
    """The ``map`` family's field: prior_scale, the std of a Normal prior (MAP, i.e. weight decay on the
    factor), or omitted for a flat prior (plain LoRA)."""

    prior_scale: float | None = None

    def _validate(self) -> None:
        super()._validate()
        if self.prior_scale is not None and not self.prior_scale > 0:
            self._fail(f"prior_scale = {self.prior_scale!r} must be > 0 (or omitted for a flat 'map' prior)")


@dataclass(frozen=True)
class GaussianSpec(MapSpec):
    """The ``gaussian`` family's fields: prior_scale (required: the Normal prior's std; BLoB: 0.2) and
    init_posterior_scale (the mean-field guide's starting std; BLoB: 0.05)."""

    init_posterior_scale: float = 1e-3

    def _validate(self) -> None:
        if self.prior_scale is None:
            self._fail(f"prior_scale is missing: family {self.family!r} needs a Normal prior scale > 0 "
                       "(a flat prior is for 'map')")
        super()._validate()
        if not self.init_posterior_scale > 0:
            self._fail(f"init_posterior_scale = {self.init_posterior_scale!r} must be > 0")


class FactorPrior(PriorFamily):
    """The factor is the latent: Normal(0, prior_scale) elementwise, or flat."""

    panels = (Panel("factor_std", "factor std around its mean"), Panel("factor_norm", "factor norm"))

    def prior_scale(self) -> float | None:
        """The Normal prior's std, or None for a flat prior."""
        return self.spec.prior_scale

    def forward(self, group, means: torch.Tensor) -> torch.Tensor:
        layers = means.shape[:1]  # laws made at the plate's batch shape
        scale = self.prior_scale()
        if scale is None:
            prior = ImproperUniform(dist.constraints.real, layers, group.shape)
        else:
            prior = Independent(dist.Normal(means.new_zeros(()), scale).expand(means.shape), 2)
        with group.plate():
            return pyro.sample(group.name, prior)

    def summaries(self, group, guide_sites, means: torch.Tensor) -> dict[str, torch.Tensor]:
        """``factor_norm`` (Frobenius norm of the drawn factor) and, unless the guide is a point mass,
        ``factor_std`` (std of the drawn factor minus its mean)."""
        site = guide_sites[group.name]
        summaries = {"factor_norm": site["value"].flatten(1).norm(dim=-1)}
        if not isinstance(site["fn"], dist.Delta):
            summaries["factor_std"] = (site["value"] - means).flatten(1).std(-1)
        return summaries


@register_prior("gaussian")
class GaussianPrior(FactorPrior):
    """Mean-field Gaussian prior on the factor, as in BLoB."""

    declaration = GaussianSpec
    default_guide = "mean_field"


@register_prior("map")
class MapPrior(FactorPrior):
    """A point estimate of the factor under a flat (plain LoRA) or Normal (MAP) prior."""

    declaration = MapSpec
    default_guide = "delta"
