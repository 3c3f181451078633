"""Trained posteriors users keep and deploy: save one, load it in a new process, export it to PEFT.

A saved posterior is a folder with ``posterior.json`` (the backbone and its kind, a classifier with its
number of labels or a causal LM, the prior declaration, the LoRA configuration, the guide and its
options, N and beta: everything that rebuilds the model) and
``posterior.safetensors`` (every learnable tensor: LoRA means, task head, variational parameters, a
learned likelihood scale).  :func:`load_adapter` rebuilds the same :class:`BayesianLoRA`, ready for
the posterior-mean or the S-draw predictive.  The posterior mean is PEFT's own LoRA weights, so
:func:`export_peft` writes a standard PEFT adapter (``PeftModel.from_pretrained`` loads it) and
:func:`export_merged` a plain Hugging Face model with it merged into W0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from .artifacts import atomic_output, atomic_write_json
from .backbones import load_causal_lm, load_classifier
from .bayesian_lora import BayesianLoRA, bayesian_lora_from_model
from .declarations import PriorSpec
from .likelihoods import TokenLikelihood, build_likelihood
from .lora_sites import lora_settings, peft_model

__all__ = ["export_merged", "export_peft", "load_adapter", "load_trained_weights", "save_adapter"]

META_FILE, TENSOR_FILE = "posterior.json", "posterior.safetensors"
FORMAT = 2  # 2: guide parameters per group of equally shaped sites; 1: per site (read and converted)


def save_adapter(module: BayesianLoRA, directory: str | Path, model: str, num_labels: int | None = None,
                 kind: str = "classifier") -> Path:
    """Write the posterior of ``module`` (trained on backbone ``model``: a ``classifier`` with ``num_labels``
    outputs or a ``causal_lm``) to ``directory``."""
    directory = Path(directory)
    module.set_draws({})  # the point estimate in place (an ensemble's member 0), not the last draw
    tensors = {name: p.detach().float().cpu().contiguous() for name, p in _stored(module).items()}
    meta: dict[str, Any] = {
        "format": FORMAT, "model": model, "kind": kind, "num_labels": num_labels, "num_data": module.num_data,
        "guide": module.guide_name, "guide_options": module.guide_options, "kl_weight": module.kl_weight,
        "prior_spec": module.spec.record(), "lora_config": lora_settings(module.network),
    }
    with atomic_output(directory / TENSOR_FILE) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(directory / META_FILE, meta)
    return directory


def load_adapter(directory: str | Path, device: str | torch.device = "cpu", model: str | None = None):
    """(module, tokenizer): the saved posterior on its backbone (or ``model``, a local copy of it)."""
    directory = Path(directory)
    for name in (META_FILE, TENSOR_FILE):
        if not (directory / name).is_file():
            raise ValueError(f"{directory} is not a saved posterior: {name} is missing")
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{directory / META_FILE} cannot be read: {error}") from None
    if meta.get("format") not in (1, FORMAT):
        raise ValueError(f"{directory / META_FILE}: format {meta.get('format')!r}, this version reads 1 and {FORMAT}")
    if meta.get("kind", "classifier") == "causal_lm":
        network, tokenizer = load_causal_lm(model or meta["model"])
        likelihood = TokenLikelihood()
    else:
        network, tokenizer = load_classifier(model or meta["model"], meta["num_labels"])
        likelihood = build_likelihood(meta["num_labels"])
    if "lora_config" in meta:  # the LoRA configuration trained with, a user's own included
        network = peft_model(network, LoraConfig(**meta["lora_config"]))
    module = bayesian_lora_from_model(network, PriorSpec.from_record(meta["prior_spec"]), meta["num_data"], None,
                                      meta["guide"], meta["kl_weight"], meta["guide_options"], likelihood=likelihood)
    state = load_file(str(directory / TENSOR_FILE))
    if meta["format"] == 1:
        state = _group_site_tensors(state, module)
    learnable = set(_stored(module))
    if set(state) != learnable:
        raise ValueError(f"{directory / TENSOR_FILE} does not fit the declared model: missing "
                         f"{sorted(learnable - set(state))[:3]}, unexpected {sorted(set(state) - learnable)[:3]}")
    module.load_state_dict(state, strict=False)
    return module.to(device).eval(), tokenizer


def load_trained_weights(module: BayesianLoRA, directory: str | Path) -> dict[str, Any]:
    """Copy a saved posterior's trained network weights (LoRA means and task head, not its guide's parameters)
    into ``module``, e.g. a ``map`` run's into a ``laplace`` module that then fits its posterior around them.
    Every trainable weight of ``module``'s network must be in the file with its shape (the same backbone,
    targets and rank), else a ValueError names the first that is not; returns the saved ``posterior.json``."""
    directory = Path(directory)
    if not (directory / META_FILE).is_file() or not (directory / TENSOR_FILE).is_file():
        raise ValueError(f"init_adapter = {str(directory)!r} is not a saved posterior (an adapter/ folder with "
                         f"{META_FILE} and {TENSOR_FILE})")
    state = load_file(str(directory / TENSOR_FILE))
    wanted = {name: p for name, p in module.named_parameters() if p.requires_grad and name.startswith("network.")}
    for name, parameter in wanted.items():
        if name not in state or state[name].shape != parameter.shape:
            found = "absent" if name not in state else f"of shape {tuple(state[name].shape)}"
            raise ValueError(f"init_adapter = {str(directory)!r} does not fit this model: {name} "
                             f"{tuple(parameter.shape)} is {found} there (same backbone, targets and rank needed)")
    with torch.no_grad():
        for name, parameter in wanted.items():
            parameter.copy_(state[name])
    return json.loads((directory / META_FILE).read_text())


def _stored(module: BayesianLoRA) -> dict[str, torch.Tensor]:
    """What a saved posterior holds: every learnable tensor and what a post-hoc fit set (a Laplace precision)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad} | module.fitted_state()


def _group_site_tensors(state: dict[str, torch.Tensor], module: BayesianLoRA) -> dict[str, torch.Tensor]:
    """Format 1's per-site guide tensors (``site_guides.<site>.<param>``) stacked into their groups'."""
    grouped = {name: value for name, value in state.items() if not name.startswith("site_guides.")}
    for group in module.groups:
        for param, _ in module.group_guides[group.key].named_parameters():
            per_site = [state.get(f"site_guides.{site.key}.{param}") for site in group.sites]
            if all(value is not None for value in per_site):
                grouped[f"group_guides.{group.key}.{param}"] = torch.stack(per_site)
    return grouped


def export_peft(module: BayesianLoRA, directory: str | Path) -> Path:
    """The posterior-mean adapter in PEFT's format (with the trained task head; an ensemble's member 0)."""
    module.set_draws({})
    module.network.save_pretrained(str(directory))
    return Path(directory)


def export_merged(module: BayesianLoRA, directory: str | Path, tokenizer=None) -> Path:
    """A plain Hugging Face model with the posterior-mean adapter merged into W0 (no inference overhead)."""
    module.merged_network().save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return Path(directory)
