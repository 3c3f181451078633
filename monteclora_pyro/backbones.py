"""Backbones: the packaged MiniLM offline, any Hugging Face model id or directory online."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .run_config import HUB_DEFAULT_MODEL, default_model

__all__ = ["HUB_DEFAULT_MODEL", "default_model", "load_classifier", "resolve_device"]



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


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else must be a valid torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device = {device!r} is not a torch device (use auto, cpu, cuda, cuda:0, ...)") from error
