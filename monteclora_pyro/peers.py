"""The peers, trained through the same loop and data: PEFT's plain LoRA and PEFT's MonteCLoRA variant.

PEFT's MonteCLoRA objective is its own: ``task loss + model.base_model._get_monteclora_loss()``
(what ``peft.helpers.MontecloraTrainerMixin`` adds), with its defaults unless told otherwise.
:class:`PeftPeer` gives a peer the interface of :class:`~monteclora_pyro.bayesian_lora.BayesianLoRA`
(``forward(batch, kl_weight)`` is the loss, ``network_output``, ``posterior_draw``, ``likelihood``),
so the training loop, the predictions and the runner treat both alike; it predicts with its trained
weights (PEFT's MonteCLoRA turns its sampler off at evaluation), a point estimate.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from peft import LoraConfig, MontecloraConfig, PeftModel
from torch import nn

from .bayesian_lora import BATCH_KEYS, autocast
from .declarations import PriorSpec
from .lora_sites import HEAD_MODULE_NAMES, peft_model
from .run_config import PEERS

__all__ = ["PEERS", "PeftPeer", "peft_peer"]


def peft_peer(model: nn.Module, peer: str, spec: PriorSpec, kl_loss_weight: float = 1e-5) -> PeftModel:
    """PEFT LoRA (``peft-lora``) or PEFT MonteCLoRA (``peft-monteclora``) with the declaration's
    targets, rank, alpha, number of components, perturbation scale and Dirichlet concentration."""
    if peer not in PEERS:
        raise ValueError(f"peer {peer!r} is unknown; available: {', '.join(PEERS)}")
    monteclora = None
    if peer == "peft-monteclora":
        monteclora = MontecloraConfig(
            num_samples=spec.num_components,
            sample_scaler=spec.perturbation_scale,
            kl_loss_weight=kl_loss_weight,
            dirichlet_prior=spec.dirichlet_concentration,
        )
    leaf_names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.targets),
        lora_dropout=0.0,
        modules_to_save=[h for h in HEAD_MODULE_NAMES if h in leaf_names] or None,
        monteclora_config=monteclora,
    )
    return peft_model(model, config)


class PeftPeer(nn.Module):
    """A PEFT peer behind the interface of ours: loss, network output, (point) posterior, likelihood."""

    point_estimate = True
    has_posterior = False
    guide_name = None

    def __init__(self, network: PeftModel, likelihood: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.network = network
        self.likelihood = likelihood  # its task_loss trains the peer, its predictive reads the output
        self.autocast_dtype = autocast_dtype

    def forward(self, batch: Mapping[str, torch.Tensor], kl_weight: float = 0.0) -> torch.Tensor:
        """PEFT's own objective: the Hugging Face task loss plus PEFT's MonteCLoRA regularizer (0 for plain
        LoRA); ``kl_weight`` is ours and unused."""
        loss = self.likelihood.task_loss(self.network_output(batch), batch["labels"])
        return loss + self.network.base_model._get_monteclora_loss()

    def network_output(self, batch: Mapping[str, torch.Tensor], factors: Mapping | None = None) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in BATCH_KEYS} | self.likelihood.network_kwargs(batch)
        return self.network_call(inputs).logits

    def network_call(self, inputs: Mapping[str, Any], factors: Mapping | None = None) -> Any:
        """The network's whole output on ``inputs`` (its own keyword arguments, a tensor first)."""
        with autocast(inputs, self.autocast_dtype):
            return self.network(**inputs)

    def generate(self, **inputs) -> torch.Tensor:
        with autocast(inputs, self.autocast_dtype):
            return self.network.generate(**inputs)

    def posterior_draw(self) -> dict[str, torch.Tensor]:
        """The trained weights themselves: nothing is drawn."""
        return {}

    def variational_parameters(self) -> list[nn.Parameter]:
        return []

    def merged_network(self) -> nn.Module:
        return copy.deepcopy(self.network).merge_and_unload()
