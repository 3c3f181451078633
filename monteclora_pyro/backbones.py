"""Backbones: the packaged MiniLM offline, any Hugging Face model id or directory online."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .run_config import HUB_DEFAULT_MODEL, default_model

__all__ = ["HUB_DEFAULT_MODEL", "check_backbone", "default_model", "load_classifier", "resolve_device"]


def load_classifier(
    name_or_path: str | None, num_labels: int, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence-classification model (new head of ``num_labels`` outputs) and its tokenizer."""
    name_or_path = name_or_path or default_model()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def check_backbone(name_or_path: str, targets: Sequence[str], rank: int, num_labels: int) -> None:
    """Before any weights load: the model exists, has the target modules, and each is wider than ``rank``.

    The architecture is built from its config on the meta device (no memory, no weights).
    """
    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        raise ValueError(f"model = {name_or_path!r}: no such directory")
    try:
        config = AutoConfig.from_pretrained(name_or_path, num_labels=num_labels)
    except (OSError, ValueError) as error:
        raise ValueError(f"model = {name_or_path!r} cannot be loaded: {str(error).splitlines()[0]}") from None
    with torch.device("meta"):
        skeleton = AutoModelForSequenceClassification.from_config(config)
    linear = {name: m for name, m in skeleton.named_modules() if isinstance(m, nn.Linear)}
    leaf_names = sorted({name.rsplit(".", 1)[-1] for name in linear})
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:
        raise ValueError(f"targets {missing} are not modules of {name_or_path!r} ({type(skeleton).__name__}); "
                         f"its linear modules are: {', '.join(leaf_names)}")
    widths = [min(m.in_features, m.out_features) for n, m in linear.items()
              if any(n == t or n.endswith("." + t) for t in targets)]
    if rank > min(widths):
        raise ValueError(f"rank = {rank} exceeds the smallest adapted layer ({min(widths)} features) of "
                         f"{name_or_path!r}; use a rank <= {min(widths)}")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; a CUDA device must be present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device = {device!r} is not a torch device (use auto, cpu, cuda, cuda:0, ...)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device = {device!r}, but CUDA is not available here; use auto or cpu")
    return resolved
