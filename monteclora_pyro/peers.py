"""The peers, trained through the same loop and data: PEFT's plain LoRA and PEFT's MonteCLoRA variant.

PEFT's MonteCLoRA objective is its own: ``task loss + model.base_model._get_monteclora_loss()``
(what ``peft.helpers.MontecloraTrainerMixin`` adds), with its defaults unless told otherwise.  A peer
predicts with its trained weights (PEFT's MonteCLoRA turns its sampler off at evaluation).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from peft import MontecloraConfig, PeftModel
from torch import nn

from .declarations import PEERS, PriorSpec
from .lora_method import LoRAMethod
from .lora_sites import lora_config, peft_model

__all__ = ["PeftPeer", "peft_peer"]


def peft_peer(model: nn.Module, peer: str, spec: PriorSpec, kl_loss_weight: float = 1e-5,
              lora_dropout: float = 0.0) -> PeftModel:
    """PEFT LoRA (``peft-lora``) or PEFT MonteCLoRA (``peft-monteclora``) with the declaration's
    targets, rank, alpha, number of components, perturbation scale and Dirichlet concentration."""
    if peer not in PEERS:
        raise ValueError(f"peer = {peer!r} is unknown; allowed: {', '.join(PEERS)}")
    monteclora = None
    if peer == "peft-monteclora":
        monteclora = MontecloraConfig(num_samples=spec.num_components, sample_scaler=spec.perturbation_scale,
                                      kl_loss_weight=kl_loss_weight, dirichlet_prior=spec.dirichlet_concentration)
    return peft_model(model, lora_config(model, spec.targets, spec.rank, spec.alpha, lora_dropout=lora_dropout,
                                         monteclora_config=monteclora))


class PeftPeer(LoRAMethod):
    """A PEFT peer behind the interface of ours; its likelihood's ``task_loss`` trains it."""

    def forward(self, batch: Mapping[str, torch.Tensor], kl_weight: float | None = None) -> torch.Tensor:
        """PEFT's own objective: the Hugging Face task loss plus PEFT's MonteCLoRA regularizer (0 for plain
        LoRA); ``kl_weight`` is ours and unused."""
        loss = self.likelihood.task_loss(self.network_output(batch), batch["labels"])
        return loss + self.network.base_model._get_monteclora_loss()
