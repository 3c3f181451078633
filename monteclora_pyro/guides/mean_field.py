"""Mean-field Normal guide on the factor itself (BLoB-style): q(F) = Normal(mean, softplus(rho))."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from ..distributions import Independent
from . import register_guide


@register_guide("mean_field", families=("gaussian",))
class MeanFieldGuide(nn.Module):
    """Elementwise Normal around the PEFT factor weight, starting at std ``spec.init_posterior_scale``."""

    def __init__(self, group, spec) -> None:
        super().__init__()
        self.group = group
        self.raw_scale = nn.Parameter(
            torch.full((len(group.sites), *group.shape), math.log(math.expm1(spec.init_posterior_scale)))
        )

    def forward(self, means: torch.Tensor) -> None:
        with self.group.plate():
            pyro.sample(self.group.name, Independent(dist.Normal(means, softplus(self.raw_scale)), 2))
