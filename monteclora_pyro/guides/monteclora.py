"""The paper's reparameterized family: q(Sigma) Wishart, q(pi) Dirichlet, q(Z) = p(Z).

Learnable per factor site (rows of the group's parameters): ``log_scale`` (theta in R^r, the
Wishart scale is diag(exp(theta))^2) and ``log_concentration`` (phi in R^N); with ``learn_df``, the
degrees of freedom ``r - 1 + exp(log_df_excess)``; with a hyperprior on the perturbation scale, also
the location and log-scale of q(tau) = LogNormal.  The noise ``Z``
keeps its prior N(0, I) in the guide, so its KL is exactly zero and the ELBO's KL is
KL_Wishart + KL_Dirichlet, both in closed form.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import Dirichlet, LaplaceBridgeDirichlet, WishartCholesky
from . import register_guide

DIRICHLET_SAMPLERS = ("exact", "laplace")


@register_guide("monteclora", families=("monteclora",))
class MonteCLoRAGuide(nn.Module):
    """q(L) = WishartCholesky(df, diag(exp theta)), q(pi) = Dirichlet(exp phi), q(Z) = N(0, I).

    dirichlet_sampler: ``exact`` (torch's reparameterized Dirichlet) or ``laplace`` (the reference
    code's softmax-basis Laplace approximation; biased, kept for comparison).
    Initialised at the prior's mean covariance and uniform mixture weights.
    """

    def __init__(self, group, spec, dirichlet_sampler: str = "exact") -> None:
        super().__init__()
        if dirichlet_sampler not in DIRICHLET_SAMPLERS:
            raise ValueError(f"dirichlet_sampler = {dirichlet_sampler!r}; allowed: {', '.join(DIRICHLET_SAMPLERS)}")
        self.group, self.df = group, spec.df
        self.dirichlet = LaplaceBridgeDirichlet if dirichlet_sampler == "laplace" else Dirichlet
        layers = len(group.sites)
        init_log_scale = 0.5 * math.log(spec.wishart_scale / spec.df)
        self.log_scale = nn.Parameter(torch.full((layers, group.rank), init_log_scale))
        self.log_concentration = nn.Parameter(
            torch.full((layers, spec.num_components), math.log(spec.dirichlet_concentration))
        )
        if spec.learn_df:  # starts at the prior's df; exp keeps it above r - 1, where the Wishart is proper
            self.log_df_excess = nn.Parameter(torch.full((layers,), math.log(spec.df - (group.rank - 1))))
        self.hyperprior = spec.scale_hyperprior_std is not None
        if self.hyperprior:  # q(tau) starts at median scale_init with a tenth of the hyperprior's spread
            self.scale_loc = nn.Parameter(torch.full((layers,), math.log(spec.scale_init)))
            self.scale_log_scale = nn.Parameter(torch.full((layers,), math.log(0.1 * spec.scale_hyperprior_std)))

    def degrees_of_freedom(self) -> float | torch.Tensor:
        """q(Sigma)'s df: the prior's (a number), or with ``learn_df`` one per layer, r - 1 + exp(log_df_excess)."""
        if hasattr(self, "log_df_excess"):
            return self.group.rank - 1 + self.log_df_excess.exp()
        return self.df

    def forward(self, means: torch.Tensor) -> None:
        group = self.group
        with group.plate():
            pyro.sample(f"{group.name}.sigma_tril", WishartCholesky(self.degrees_of_freedom(),
                                                                    scale_diag=self.log_scale.exp()))
            pyro.sample(f"{group.name}.weights", self.dirichlet(self.log_concentration.exp()))
            pyro.sample(f"{group.name}.noise", group.standard_noise(means.device))
            if self.hyperprior:
                pyro.sample(f"{group.name}.scale", dist.LogNormal(self.scale_loc, self.scale_log_scale.exp()))
