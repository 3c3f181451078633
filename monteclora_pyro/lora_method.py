"""The interface of what the runner trains, predicts with and saves: ours and the PEFT peers alike.

:class:`LoRAMethod` is a PEFT-injected network with a likelihood (the observation model, or a peer's
readout and loss).  The training loop needs its loss for a batch and KL weight, its KL for the
record, and its variational parameters (their own learning rate); prediction needs a posterior
draw and whether every draw is the same.  Ours (:class:`~monteclora_pyro.bayesian_lora.BayesianLoRA`)
and the peers (:class:`~monteclora_pyro.peers.PeftPeer`) implement it.
"""

from __future__ import annotations

import abc
import contextlib
import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["BATCH_KEYS", "LoRAMethod", "autocast"]

BATCH_KEYS = ("labels", "idx", "row")  # batch entries that are not network inputs


def autocast(batch: Mapping[str, torch.Tensor], dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on the batch's device, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(next(iter(batch.values())).device.type, dtype=dtype)


class LoRAMethod(nn.Module, abc.ABC):
    """A LoRA-adapted network trained by the runner.

    network: the PEFT model.  likelihood: its observation model (``predictive``, ``task_loss``, ...).
    kl_weight: beta of the tempered ELBO (0 for a method without a KL).  num_data: the training-set size N.
    guide_name: the variational family (None for a peer).  has_posterior: whether draws describe a posterior
    (``posterior.nc``).  autocast_dtype: the backbone's autocast dtype on CUDA, or None.
    """

    guide_name: str | None = None
    has_posterior: bool = False
    kl_weight: float = 0.0
    num_data: int | None = None

    def __init__(self, network: nn.Module, likelihood: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.network = network
        self.likelihood = likelihood
        self.autocast_dtype = autocast_dtype

    @abc.abstractmethod
    def forward(self, batch: Mapping[str, torch.Tensor], kl_weight: float | None = None) -> torch.Tensor:
        """The training loss of one minibatch (``kl_weight``: the KL's weight at this step)."""

    def kl_divergence(self) -> torch.Tensor | None:
        """The untempered KL(q || p) of the whole posterior, or None for a method without one."""
        return None

    @property
    def point_estimate(self) -> bool:
        """Whether every posterior draw is the same (a predictive then needs one)."""
        return True

    def posterior_draw(self) -> dict[str, torch.Tensor]:
        """One draw of the stochastic factors ({PEFT parameter name: value}); {} for the trained weights."""
        return {}

    def predictive_draws(self, num_samples: int) -> list[dict[str, torch.Tensor]]:
        """The draws a predictive averages: ``num_samples`` posterior draws (one for a point estimate)."""
        return [self.posterior_draw() for _ in range(1 if self.point_estimate else num_samples)]

    # a posterior mixing point estimates trained one after the other (a LoRA ensemble)
    ensemble_size: int = 1  # how many the runner trains

    def start_member(self, member: int, seed: int) -> None:
        """Set the starting weights of member ``member`` (>= 1) from ``seed``."""
        raise NotImplementedError(f"{type(self).__name__} trains one point estimate, not members")

    def store_member(self, member: int) -> None:
        """Keep member ``member``'s trained weights (a single model: nothing to keep)."""

    post_hoc: bool = False  # the posterior is fitted or assembled after training: training saw no draws

    kl_in_loss: bool = True  # the loss holds the (tempered) KL; False: after_step takes it

    def separately_optimized(self) -> list[nn.Parameter]:
        """Parameters the training loop's optimizer leaves alone (:meth:`after_step` moves them)."""
        return []

    def after_step(self, step: int, steps_per_epoch: int, rows_per_step: int, lr_scale: float) -> dict[str, Any]:
        """A second update after each optimizer step (BLoB's KL step); what to record.  Default: none."""
        return {}

    def fit_posterior(self, loader: Any, device: torch.device, holdout: Any = None) -> dict[str, Any]:
        """Fit the posterior after training on the training rows (a Laplace approximation), choosing what the
        declaration leaves to ``holdout``'s rows (held out from training; None: there are none); what to record.
        Default: nothing (the posterior was trained with the weights)."""
        return {}

    linearized: bool = False  # the predictive is the linearized network's (linearized_outputs), not the draws'

    def linearized_outputs(self, batch: Mapping[str, torch.Tensor], num_samples: int) -> dict[str, torch.Tensor]:
        """``predictive`` and ``num_samples`` ``draws`` of the linearized network on ``batch``."""
        raise NotImplementedError(f"{type(self).__name__} has no linearized predictive")

    def fitted_state(self) -> dict[str, torch.Tensor]:
        """Buffers set by :meth:`fit_posterior` that a saved posterior keeps ({state_dict name: tensor})."""
        return {}

    def variational_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at the variational learning rate (scales, concentrations, a noise scale)."""
        return []

    def guide_parameters(self) -> list[nn.Parameter]:
        """The guide's own parameters (the variational ones less a likelihood's noise scale)."""
        return []

    def set_draws(self, factors: Mapping[str, torch.Tensor]) -> None:
        """Put ``factors`` in place of the PEFT weights until the next call ({}: the weights themselves)."""

    def network_call(self, inputs: Mapping[str, Any], factors: Mapping[str, torch.Tensor] | None = None) -> Any:
        """The network's whole output on ``inputs`` (its own keyword arguments, a tensor first) with the given
        factors in place of the PEFT weights (none: the posterior mean)."""
        self.set_draws(factors or {})
        with autocast(inputs, self.autocast_dtype):
            return self.network(**inputs)

    def network_output(self, batch: Mapping[str, torch.Tensor],
                       factors: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The network's output (logits) on a batch, with the given factors in place of the PEFT weights."""
        inputs = {k: v for k, v in batch.items() if k not in BATCH_KEYS} | self.likelihood.network_kwargs(batch)
        output = self.network_call(inputs, factors)
        return output.logits if hasattr(output, "logits") else output

    def generate(self, **inputs: Any) -> torch.Tensor:
        """The network's ``generate`` with the posterior-mean adapters."""
        self.set_draws({})
        with autocast(inputs, self.autocast_dtype):
            return self.network.generate(**inputs)

    def merged_network(self) -> nn.Module:
        """The posterior-mean network with LoRA merged into W0 (zero overhead; a copy)."""
        self.set_draws({})
        return copy.deepcopy(self.network).merge_and_unload()
