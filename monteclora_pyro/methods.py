"""A method by name, on a backbone: ours (a prior declaration and its guide) or one of PEFT's peers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .bayesian_lora import bayesian_lora_from_model
from .declarations import PriorSpec
from .lora_method import LoRAMethod
from .peers import PeftPeer, peft_peer

__all__ = ["build_method"]


def build_method(model: nn.Module, spec: PriorSpec, likelihood: nn.Module, num_data: int, peer: str | None = None,
                 guide: str | None = None, kl_weight: float = 1.0, guide_options: Mapping[str, Any] | None = None,
                 peft_kl_loss_weight: float = 1e-5, autocast_dtype: torch.dtype | None = None,
                 lora_dropout: float = 0.0) -> LoRAMethod:
    """Ours (a :class:`~monteclora_pyro.bayesian_lora.BayesianLoRA` of ``spec``) or, with ``peer``, a PEFT peer
    with the declaration's targets, rank and MonteCLoRA settings: one interface for what follows."""
    if peer is not None:
        return PeftPeer(peft_peer(model, peer, spec, peft_kl_loss_weight, lora_dropout), likelihood, autocast_dtype)
    return bayesian_lora_from_model(model, spec, num_data, guide=guide, kl_weight=kl_weight,
                                    guide_options=guide_options, autocast_dtype=autocast_dtype, likelihood=likelihood,
                                    lora_dropout=lora_dropout)
