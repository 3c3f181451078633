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

import torch
from peft import LoraConfig, MontecloraConfig, PeftModel, get_peft_model
from torch import nn

from .bayesian_lora import BATCH_KEYS, autocast
from .declarations import PriorSpec
from .likelihoods import GaussianLikelihood, build_likelihood
from .lora_sites import HEAD_MODULE_NAMES
from .run_config import PEERS

__all__ = ["PEERS", "PeftPeer", "peft_peer", "peer_loss"]



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
    return get_peft_model(model, config)


def peer_loss(network: PeftModel, batch: Mapping[str, torch.Tensor], kl_weight: float = 0.0) -> torch.Tensor:
    """The Hugging Face task loss plus PEFT's MonteCLoRA regularizer (0 for plain LoRA)."""
    inputs = {k: v for k, v in batch.items() if k not in BATCH_KEYS}
    loss = network(**inputs, labels=batch["labels"]).loss
    return loss + network.base_model._get_monteclora_loss()


class PeftPeer(nn.Module):
    """A PEFT peer behind the interface of ours: loss, network output, (point) posterior, likelihood."""

    point_estimate = True
    has_posterior = False
    guide_name = None

    def __init__(self, network: PeftModel, num_labels: int, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.network = network
        # the readout of the predictions; a regression peer is trained on MSE, so its noise scale is not learned
        self.likelihood = GaussianLikelihood(learn_scale=False) if num_labels == 1 else build_likelihood(num_labels)
        self.autocast_dtype = autocast_dtype

    def forward(self, batch: Mapping[str, torch.Tensor], kl_weight: float = 0.0) -> torch.Tensor:
        """PEFT's own objective (see :func:`peer_loss`); ``kl_weight`` is ours and unused."""
        with autocast(batch, self.autocast_dtype):
            return peer_loss(self.network, batch)

    def network_output(self, batch: Mapping[str, torch.Tensor], factors: Mapping | None = None) -> torch.Tensor:
        with autocast(batch, self.autocast_dtype):
            return self.network(**{k: v for k, v in batch.items() if k not in BATCH_KEYS}).logits

    def posterior_draw(self) -> dict[str, torch.Tensor]:
        """The trained weights themselves: nothing is drawn."""
        return {}

    def variational_parameters(self) -> list[nn.Parameter]:
        return []

    def merged_network(self) -> nn.Module:
        return copy.deepcopy(self.network).merge_and_unload()
