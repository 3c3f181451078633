"""Likelihoods: the observation site, inside a data plate scaled to the training-set size.

``pyro.plate("data", size=num_data, subsample=indices)`` multiplies the minibatch log-likelihood by
``num_data / batch_size``, so the ELBO is that of the whole training set.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["CategoricalLikelihood", "GaussianLikelihood", "build_likelihood"]


class CategoricalLikelihood(nn.Module):
    """y ~ Categorical(logits = network output)."""

    regression = False

    def forward(self, output: torch.Tensor, labels: torch.Tensor | None, num_data: int, subsample: torch.Tensor):
        with pyro.plate("data", size=num_data, subsample=subsample):
            return pyro.sample("obs", dist.Categorical(logits=output.float()), obs=labels)

    def predictive(self, output: torch.Tensor) -> torch.Tensor:
        """Class probabilities for one posterior draw."""
        return output.float().softmax(-1)

    def draw_log_likelihood(self, draws: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(y_i | draw s), (draws x examples), from each draw's probabilities (examples x draws x C)."""
        picked = draws.gather(-1, labels.long()[:, None, None].expand(-1, draws.shape[1], 1)).squeeze(-1)
        return picked.clamp_min(1e-12).log().T


class GaussianLikelihood(nn.Module):
    """y ~ Normal(network output, sigma); sigma learned (point estimate) unless ``learn_scale`` is False."""

    regression = True

    def __init__(self, scale: float = 1.0, learn_scale: bool = True) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"likelihood scale = {scale!r} must be > 0")
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, output: torch.Tensor, labels: torch.Tensor | None, num_data: int, subsample: torch.Tensor):
        loc = output.float().reshape(subsample.shape)
        with pyro.plate("data", size=num_data, subsample=subsample):
            return pyro.sample("obs", dist.Normal(loc, self.log_scale.exp()), obs=labels)

    def predictive(self, output: torch.Tensor) -> torch.Tensor:
        return output.float().reshape(-1)

    @property
    def learned(self) -> bool:
        """Whether the noise scale was learned (a scale fixed by hand gives no meaningful NLL)."""
        return isinstance(self.log_scale, nn.Parameter)

    def draw_log_likelihood(self, draws: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log N(y_i | draw s, sigma), (draws x examples), from each draw's prediction (examples x draws)."""
        return torch.distributions.Normal(draws, self.log_scale.exp().detach().cpu()).log_prob(labels[:, None]).T

    def nll(self, draws: torch.Tensor, labels: torch.Tensor) -> float:
        """Mean -log of the predictive density: the mixture over the draws of N(draw, sigma)."""
        log_lik = self.draw_log_likelihood(draws, labels)
        return -(log_lik.logsumexp(0) - math.log(log_lik.shape[0])).mean().item()


def build_likelihood(num_labels: int) -> nn.Module:
    """Categorical for classification heads (num_labels >= 2), Gaussian for a regression head (1)."""
    if num_labels < 1:
        raise ValueError(f"num_labels = {num_labels!r} must be >= 1 (1 means regression)")
    return GaussianLikelihood() if num_labels == 1 else CategoricalLikelihood()
