"""The Pyro model statements for each prior family (the declarations live in ``models/``).

A prior module turns one :class:`~monteclora_pyro.lora_sites.SiteGroup` and its factors' means
(the PEFT ``lora_A`` / ``lora_B`` weights, stacked along a leading layer dim) into sampled factors,
inside the model.  Each latent is one statement under the group's plate: independent per layer,
exactly as if every site had its own statements (``tests/test_engine.py`` checks equal losses and
gradients).

MonteCLoRA, per factor (feature-major, d x r)::

    L   ~ WishartCholesky(df, sqrt(scale / df) I)       site  <group>.sigma_tril   (Sigma = L L^T)
    pi  ~ Dirichlet(c 1_N)                               site  <group>.weights
    Z   ~ Normal(0, 1), shape d x r                      site  <group>.noise
    tau ~ LogNormal(0, s)     (only with a hyperprior)   site  <group>.scale        (else tau = 1)
    factor = mean + eps * tau * ||pi||_2 * Z L^T

``eps`` is absolute (the paper) or, with ``perturbation_relative``, in units of the factor's
initialization scale ``1 / sqrt(3 d)``.  The hyperprior on ``tau`` lets the data decide the
perturbations' scale: its guide is a LogNormal of its own.

The paper's estimator is ``sum_n pi_n (mean + eps Z_n L^T)`` with N independent ``Z_n``.  Given
``pi`` and ``L`` that is exactly ``mean + eps ||pi||_2 Z L^T`` in distribution (a sum of independent
Gaussians), so one noise draw replaces N: N times fewer random numbers and O(d r) memory, not
O(N d r).  ``tests/test_priors.py`` checks the identity by Monte Carlo.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .declarations import PriorSpec
from .distributions import Dirichlet, ImproperUniform, Independent, WishartCholesky
from .lora_sites import SiteGroup

__all__ = ["FactorPrior", "MonteCLoRAPrior", "build_prior"]


class MonteCLoRAPrior(nn.Module):
    """Wishart / Dirichlet hierarchy over Gaussian perturbations of the factor mean."""

    def __init__(self, spec: PriorSpec, rank: int) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("scale_diag", torch.full((rank,), (spec.wishart_scale / spec.df) ** 0.5), persistent=False)
        self.register_buffer(
            "concentration", torch.full((spec.num_components,), spec.dirichlet_concentration), persistent=False
        )

    def forward(self, group: SiteGroup, means: torch.Tensor) -> torch.Tensor:
        spec, layers = self.spec, len(group.sites)
        with group.plate():  # laws made at the plate's batch shape (expanding the Wishart is then free)
            wishart = WishartCholesky(spec.df, scale_diag=self.scale_diag.expand(layers, -1))
            tril = pyro.sample(f"{group.name}.sigma_tril", wishart)
            weights = pyro.sample(f"{group.name}.weights", Dirichlet(self.concentration.expand(layers, -1)))
            noise = pyro.sample(f"{group.name}.noise", group.standard_noise(means.device))
            scale = None
            if spec.scale_hyperprior_std is not None:
                hyperprior = dist.LogNormal(means.new_zeros(layers), spec.scale_hyperprior_std)
                scale = pyro.sample(f"{group.name}.scale", hyperprior)
            if spec.cooperative_weight > 0:
                pyro.factor(f"{group.name}.cooperative", -spec.cooperative_weight * weights.pow(2).sum(-1))
        return means + group.from_feature_major(self.perturbation(group, tril, weights, noise, scale))

    def eps(self, group: SiteGroup) -> float:
        """The perturbation scale of ``group``: eps, times ``1 / sqrt(3 d)`` when declared relative."""
        relative = (3 * group.features) ** -0.5 if self.spec.perturbation_relative else 1.0
        return self.spec.perturbation_scale * relative

    def perturbation(
        self,
        group: SiteGroup,
        tril: torch.Tensor,
        weights: torch.Tensor,
        noise: torch.Tensor,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The feature-major (..., d, r) perturbations ``eps * tau * ||pi||_2 * Z L^T`` (leading dims: layers)."""
        coefficient = self.eps(group) * weights.norm(dim=-1)
        if scale is not None:
            coefficient = coefficient * scale
        return coefficient[..., None, None] * (noise @ tril.mT)


class FactorPrior(nn.Module):
    """The factor itself is the latent: Normal(0, prior_scale) elementwise, or flat (plain LoRA)."""

    def __init__(self, spec: PriorSpec, rank: int) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, group: SiteGroup, means: torch.Tensor) -> torch.Tensor:
        layers = means.shape[:1]  # laws made at the plate's batch shape
        if self.spec.prior_scale is None:
            prior = ImproperUniform(dist.constraints.real, layers, group.shape)
        else:
            prior = Independent(dist.Normal(means.new_zeros(()), self.spec.prior_scale).expand(means.shape), 2)
        with group.plate():
            return pyro.sample(group.name, prior)


_FAMILY_MODULES = {"monteclora": MonteCLoRAPrior, "gaussian": FactorPrior, "map": FactorPrior}


def build_prior(spec: PriorSpec) -> nn.Module:
    """The prior module of a declaration's family."""
    return _FAMILY_MODULES[spec.family](spec, spec.rank)
