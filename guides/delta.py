"""Point-estimate guide: q(F) = Delta(mean).  With a flat prior this is plain LoRA; with a Normal prior, MAP."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from . import register_guide


@register_guide("delta", families=("map", "gaussian"))
class DeltaGuide(nn.Module):
    """No parameters of its own: the PEFT factor weight is the point estimate."""

    def __init__(self, site, spec) -> None:
        super().__init__()
        self.site = site

    def forward(self, mean: torch.Tensor) -> None:
        pyro.sample(self.site.name, dist.Delta(mean, event_dim=2))
