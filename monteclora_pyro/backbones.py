"""Backbones: a sequence classifier (GLUE) or a causal LM (commonsense), from a Hugging Face model id, a
directory, or a GGUF file (dequantized on load, e.g. the packaged SmolLM2); the packaged models work
offline."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = ["check_backbone", "gguf_as_directory", "load_causal_lm", "load_classifier", "output_layer", "resolve_device"]

AUTO_CLASSES = {"classifier": AutoModelForSequenceClassification, "causal_lm": AutoModelForCausalLM}


def cache_dir() -> Path:
    """``$MONTECLORA_CACHE``, else ``~/.cache/monteclora_pyro``."""
    return Path(os.environ.get("MONTECLORA_CACHE") or Path.home() / ".cache" / "monteclora_pyro")


def gguf_as_directory(path: str | Path) -> Path:
    """A GGUF model file as a Hugging Face model directory, dequantized once and cached.

    Reading a GGUF file parses all of it (seconds per read: config, tokenizer and weights each read
    it), and dequantizes every tensor; the cached directory (fp32 safetensors) reloads in about a second.
    The cache key is the file's name, size and modification time.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"model = {str(path)!r}: no such GGUF file")
    stat = path.stat()
    target = cache_dir() / "gguf" / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer, model.is_quantized = None, False  # dequantized: save it as a plain model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        os.chmod(staging, 0o755)
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        os.replace(staging, target)
    except OSError:  # another process cached it first
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _source(name_or_path: str) -> str:
    """The directory or hub id to load: a ``.gguf`` file becomes its cached Hugging Face directory."""
    return str(gguf_as_directory(name_or_path)) if name_or_path.endswith(".gguf") else name_or_path


def load_causal_lm(
    name_or_path: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer (padding on the left, with a pad token: the EOS token if it has none)."""
    source = _source(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_classifier(
    name_or_path: str, num_labels: int, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence-classification model (new head of ``num_labels`` outputs) and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def output_layer(model: nn.Module) -> nn.Linear:
    """The last linear map of a sequence-classification head: BERT's ``classifier``, RoBERTa's
    ``classifier.out_proj``, LLaMA's ``score``."""
    heads = [module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in ("classifier", "score")]
    linears = [m for m in heads[-1].modules() if isinstance(m, nn.Linear)] if heads else []
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier or score head")
    return linears[-1]


def check_backbone(name_or_path: str, targets: Sequence[str], rank: int, num_labels: int = 2,
                   kind: str = "classifier") -> None:
    """Before any weights load: the model exists, has the target modules, and each is wider than ``rank``.

    The architecture (``kind``: ``classifier`` or ``causal_lm``) is built from its config on the meta
    device (no memory, no weights).
    """
    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not name_or_path.endswith(".gguf") and not Path(name_or_path).expanduser().is_dir():
        raise ValueError(f"model = {name_or_path!r}: no such directory")
    try:
        config = AutoConfig.from_pretrained(_source(name_or_path), num_labels=num_labels)
    except (OSError, ValueError) as error:
        raise ValueError(f"model = {name_or_path!r} cannot be loaded: {str(error).splitlines()[0]}") from None
    with torch.device("meta"):
        skeleton = AUTO_CLASSES[kind].from_config(config)
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
