"""BLoB's guide: q(A) = Normal(mean, rho^2) elementwise, rho drawn from U(eps / sqrt 2, eps) at the start."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import Independent
from . import register_guide


@register_guide("blob", families=("blob",))
class BLoBGuide(nn.Module):
    """Elementwise Normal around the PEFT factor weight with std rho^2 (the reference code's parameterization)."""

    def __init__(self, group, spec) -> None:
        super().__init__()
        self.group = group
        rho = torch.empty(len(group.sites), *group.shape).uniform_(spec.init_std / math.sqrt(2), spec.init_std)
        self.rho = nn.Parameter(rho)

    def forward(self, means: torch.Tensor) -> None:
        with self.group.plate():
            pyro.sample(self.group.name, Independent(dist.Normal(means, self.rho.square()), 2))
