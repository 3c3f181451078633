"""The Laplace guide: a point mass while training, then q(F) = N(mean, (GGN + delta I)^-1).

The precision (the GGN of the training set, diagonal or Kronecker-factored, plus the prior precision) is
fitted after training by the ``laplace`` prior family
(:meth:`~monteclora_pyro.priors.laplace.LaplacePrior.fit_posterior`) and kept in buffers, saved with the
posterior: its eigenvalues ``precision`` and, for a Kronecker-factored GGN (``curvature = "kron"``), the
eigenbases U, V of its two factors, where q(F) is F = mean + U Z V^T with Z ~ Normal(0, precision^-1/2)
elementwise.  Before the fit the precision is zero and the guide is a point mass.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import Delta, Independent, kronecker_normal
from . import register_guide


@register_guide("laplace", families=("laplace",), point_mass=None)
class LaplaceGuide(nn.Module):
    """Delta(mean) until :attr:`precision` is fitted, then the Laplace posterior around the mean."""

    def __init__(self, group, spec) -> None:
        super().__init__()
        self.group = group
        layers, (rows, columns) = len(group.sites), group.shape
        self.register_buffer("precision", torch.zeros(layers, rows, columns))
        self.fitted_buffers: tuple[str, ...] = ("precision",)
        if spec.curvature == "kron":
            self.register_buffer("out_basis", torch.zeros(layers, rows, rows))
            self.register_buffer("in_basis", torch.zeros(layers, columns, columns))
            self.fitted_buffers += ("out_basis", "in_basis")

    @property
    def basis(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The eigenbases (U, V) of a Kronecker-factored precision; None: it is diagonal in the factors' own."""
        return (self.out_basis, self.in_basis) if "out_basis" in self.fitted_buffers else None

    @property
    def fitted(self) -> bool:
        return bool((self.precision > 0).all())

    @property
    def point_mass(self) -> bool:
        """Every draw is the mean until the precision is fitted."""
        return not self.fitted

    def forward(self, means: torch.Tensor) -> None:
        with self.group.plate():
            if self.fitted and self.basis is not None:
                pyro.sample(self.group.name, kronecker_normal(means, self.precision.rsqrt(), *self.basis))
            elif self.fitted:
                pyro.sample(self.group.name, Independent(dist.Normal(means, self.precision.rsqrt()), 2))
            else:
                pyro.sample(self.group.name, Delta(means, event_dim=2))
