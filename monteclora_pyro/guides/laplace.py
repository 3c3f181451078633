"""The Laplace guide: a point mass while training, then q(F) = Normal(mean, precision^-1/2) elementwise.

The precision (the diagonal GGN of the training set plus the prior precision) is fitted after training by
the ``laplace`` prior family (:meth:`~monteclora_pyro.priors.laplace.LaplacePrior.fit_posterior`) and kept
in a buffer, saved with the posterior; before the fit it is zero and the guide is a point mass.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import Delta, Independent
from . import register_guide


@register_guide("laplace", families=("laplace",), point_mass=None)
class LaplaceGuide(nn.Module):
    """Delta(mean) until :attr:`precision` is fitted, then the diagonal Laplace posterior around the mean."""

    fitted_buffers = ("precision",)

    def __init__(self, group, spec) -> None:
        super().__init__()
        self.group = group
        self.register_buffer("precision", torch.zeros(len(group.sites), *group.shape))

    @property
    def fitted(self) -> bool:
        return bool((self.precision > 0).all())

    @property
    def point_mass(self) -> bool:
        """Every draw is the mean until the precision is fitted."""
        return not self.fitted

    def forward(self, means: torch.Tensor) -> None:
        with self.group.plate():
            if self.fitted:
                pyro.sample(self.group.name, Independent(dist.Normal(means, self.precision.rsqrt()), 2))
            else:
                pyro.sample(self.group.name, Delta(means, event_dim=2))
