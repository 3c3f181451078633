"""Point-estimate guide: q(F) = Delta(mean).  With a flat prior this is plain LoRA; with a Normal prior, MAP."""

from __future__ import annotations

import pyro
import torch
from torch import nn

from ..distributions import Delta
from . import register_guide


@register_guide("delta", families=("map", "gaussian", "ensemble"), point_mass=True)
class DeltaGuide(nn.Module):
    """No parameters of its own: the PEFT factor weight is the point estimate."""

    def __init__(self, group, spec) -> None:
        super().__init__()
        self.group = group

    def forward(self, means: torch.Tensor) -> None:
        with self.group.plate():
            pyro.sample(self.group.name, Delta(means, event_dim=2))
