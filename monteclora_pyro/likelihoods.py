"""Likelihoods: the observation site, inside a data plate scaled to the training-set size.

``pyro.plate("data", size=num_data, subsample=indices)`` multiplies the minibatch log-likelihood by
``num_data / batch_size``, so the ELBO is that of the whole training set.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .distributions import Categorical, Independent
from .laplace import probit_scale

__all__ = ["CategoricalLikelihood", "GaussianLikelihood", "TokenLikelihood", "build_likelihood",
           "categorical_draw_log_likelihood"]

IGNORE = -100  # the label of a token that is not scored (prompt, padding), as in Hugging Face


def categorical_draw_log_likelihood(draws: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(y_i | draw s), (draws x examples), from each draw's class probabilities (examples x draws x C)."""
    picked = draws.gather(-1, labels.long()[:, None, None].expand(-1, draws.shape[1], 1)).squeeze(-1)
    return picked.clamp_min(1e-12).log().T


class CategoricalLikelihood(nn.Module):
    """y ~ Categorical(logits = network output)."""

    regression = False

    def network_kwargs(self, batch) -> dict:
        """Extra arguments for the network's forward (none: every output is read)."""
        return {}

    def task_loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The peers' training loss, as Hugging Face computes it for the head: mean cross-entropy."""
        return F.cross_entropy(output.float(), labels)

    def forward(self, output: torch.Tensor, labels: torch.Tensor | None, num_data: int, subsample: torch.Tensor):
        with pyro.plate("data", size=num_data, subsample=subsample):
            return pyro.sample("obs", Categorical(output.float()), obs=labels)

    def predictive(self, output: torch.Tensor) -> torch.Tensor:
        """Class probabilities for one posterior draw."""
        return output.float().softmax(-1)

    def draw_log_likelihood(self, draws: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(y_i | draw s), (draws x examples), from each draw's probabilities (examples x draws x C)."""
        return categorical_draw_log_likelihood(draws, labels)

    # the Laplace approximation's hooks (monteclora_pyro.laplace)
    def ggn_outputs(self, output: torch.Tensor, batch=None) -> torch.Tensor:
        """K scalars per example (examples x K) whose output gradients g_k give the likelihood's Hessian in the
        logits, Lambda = diag(p) - p p^T = sum_k g_k g_k^T: sqrt(p_c) (f_c - p.f) per class, or for two
        classes the one direction sqrt(p_0 p_1) (f_1 - f_0)."""
        logits = output.float()
        p = logits.detach().softmax(-1)
        if logits.shape[-1] == 2:
            return ((p[:, 0] * p[:, 1]).sqrt() * (logits[:, 1] - logits[:, 0]))[:, None]
        return p.sqrt() * (logits - (p * logits).sum(-1, keepdim=True))

    def linear_outputs(self, output: torch.Tensor) -> torch.Tensor:
        """The outputs the linearized predictive is Gaussian in: the logit difference for two classes (the
        predictive is then a probit of one variable), else every logit."""
        logits = output.float()
        return logits[:, 1:] - logits[:, :1] if logits.shape[-1] == 2 else logits

    def linearized_predictive(self, outputs: torch.Tensor, covariance: torch.Tensor, num_samples: int
                              ) -> dict[str, torch.Tensor]:
        """From Gaussian linear outputs (mean ``outputs``, examples x K, and ``covariance``, examples x K x K):
        ``predictive``, the probit approximation of E[softmax] (MacKay), and ``draws`` (examples x draws x C),
        the class probabilities of ``num_samples`` draws of the outputs."""
        variance = covariance.diagonal(dim1=-2, dim2=-1)
        scaled = outputs * probit_scale(variance)
        noise = torch.randn(*outputs.shape[:1], num_samples, outputs.shape[1], device=outputs.device)
        chol = torch.linalg.cholesky(covariance + 1e-9 * torch.eye(outputs.shape[1], device=outputs.device))
        sampled = outputs[:, None] + torch.einsum("nkm,nsm->nsk", chol, noise)
        if outputs.shape[1] == 1:  # two classes: the outputs are the logit difference
            return {"predictive": _binary(scaled[:, 0]), "draws": _binary(sampled[..., 0])}
        return {"predictive": scaled.softmax(-1), "draws": sampled.softmax(-1)}

    def linearized_log_density(self, outputs: torch.Tensor, covariance: torch.Tensor, labels: torch.Tensor
                               ) -> torch.Tensor:
        """log p(label) under the probit approximation of the linearized predictive, per example."""
        scaled = outputs * probit_scale(covariance.diagonal(dim1=-2, dim2=-1))
        log_p = F.logsigmoid(torch.stack([-scaled[:, 0], scaled[:, 0]], -1)) if outputs.shape[1] == 1 else (
            scaled.log_softmax(-1))
        return log_p.gather(1, labels.long()[:, None])[:, 0]


def _binary(difference: torch.Tensor) -> torch.Tensor:
    """Two-class probabilities from the logit difference f_1 - f_0."""
    p1 = difference.sigmoid()
    return torch.stack([1 - p1, p1], dim=-1)


class GaussianLikelihood(nn.Module):
    """y ~ Normal(network output, sigma); sigma learned (point estimate) unless ``learn_scale`` is False."""

    regression = True
    network_kwargs = CategoricalLikelihood.network_kwargs

    def task_loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The peers' training loss, as Hugging Face computes it for a regression head: mean squared error."""
        return F.mse_loss(output.float().reshape(labels.shape), labels)

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

    def ggn_outputs(self, output: torch.Tensor, batch=None) -> torch.Tensor:
        """f / sigma (examples x 1): the Hessian of -log N(y | f, sigma) in f is 1 / sigma^2."""
        return output.float().reshape(-1, 1) / self.log_scale.detach().exp()

    def linear_outputs(self, output: torch.Tensor) -> torch.Tensor:
        return output.float().reshape(-1, 1)

    def linearized_predictive(self, outputs: torch.Tensor, covariance: torch.Tensor, num_samples: int
                              ) -> dict[str, torch.Tensor]:
        """``predictive``: the mean f* (the linearized predictive is N(f*, J Sigma J^T + sigma^2)); ``draws``
        (examples x draws): ``num_samples`` draws of f, each read with the noise scale sigma as every draw is."""
        std = covariance[:, 0, 0].clamp_min(0).sqrt()
        noise = torch.randn(outputs.shape[0], num_samples, device=outputs.device)
        return {"predictive": outputs[:, 0], "draws": outputs[:, :1] + std[:, None] * noise}

    def linearized_log_density(self, outputs: torch.Tensor, covariance: torch.Tensor, labels: torch.Tensor
                               ) -> torch.Tensor:
        """log N(label; f*, J Sigma J^T + sigma^2), the linearized predictive's exact density, per example."""
        variance = covariance[:, 0, 0].clamp_min(0) + self.log_scale.detach().exp() ** 2
        return dist.Normal(outputs[:, 0], variance.sqrt()).log_prob(labels.reshape(-1).to(outputs.dtype))


class TokenLikelihood(nn.Module):
    """A causal LM's response given its prompt: y_i = the response tokens, each Categorical(logits) given
    the tokens before it; log p(y_i | x_i) sums over the response tokens (prompt and padding carry the
    label ``IGNORE``).

    Batches are left-padded, so every response ends at the last position: ``labels`` (B x R) are the
    last R tokens, and the network computes logits for the last R + 1 positions only
    (``logits_to_keep``), never the full B x T x vocabulary tensor.
    """

    regression = False

    def network_kwargs(self, batch) -> dict:
        return {"logits_to_keep": batch["labels"].shape[1] + 1, "use_cache": False}

    @staticmethod
    def _aligned(output: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits predicting each label, labels with ignored ones set to 0, mask of the scored ones)."""
        logits = output[:, -labels.shape[1] - 1:-1].float()
        mask = labels != IGNORE
        return logits, labels.clamp_min(0), mask

    def forward(self, output: torch.Tensor, labels: torch.Tensor | None, num_data: int, subsample: torch.Tensor):
        logits, targets, mask = self._aligned(output, labels)
        with pyro.plate("data", size=num_data, subsample=subsample):
            return pyro.sample("obs", Independent(Categorical(logits).mask(mask), 1), obs=targets)

    def sequence_log_prob(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(response_i | prompt_i) per example."""
        logits, targets, mask = self._aligned(output, labels)
        token = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
        return (token * mask).sum(-1)

    def task_loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The peers' training loss, as Hugging Face computes it for a causal LM: mean cross-entropy per
        response token."""
        logits, targets, mask = self._aligned(output, labels)
        return F.cross_entropy(logits[mask], targets[mask])

    def ggn_outputs(self, output: torch.Tensor, batch) -> torch.Tensor:
        """One scalar per example (examples x 1) whose gradient is a one-sample Monte Carlo square root of the
        GGN of its response tokens: sum_t (e_y~t - p_t) . f_t with y~t drawn from the model's own p_t (the
        Fisher, which equals the GGN for a softmax; Kunstner et al. 2019).  E[g g^T] = sum_t J_t^T (diag p_t -
        p_t p_t^T) J_t, since each token's draw is independent and the tokens fed in are the data's; a
        vocabulary-sized Lambda is never formed."""
        logits, _, mask = self._aligned(output, batch["labels"])
        p = logits.detach().softmax(-1)
        drawn = torch.distributions.Categorical(probs=p).sample()
        direction = F.one_hot(drawn, p.shape[-1]).to(p.dtype) - p
        return ((logits * direction).sum(-1) * mask).sum(-1, keepdim=True)


def build_likelihood(num_labels: int) -> nn.Module:
    """Categorical for classification heads (num_labels >= 2), Gaussian for a regression head (1)."""
    if num_labels < 1:
        raise ValueError(f"num_labels = {num_labels!r} must be >= 1 (1 means regression)")
    return GaussianLikelihood() if num_labels == 1 else CategoricalLikelihood()
