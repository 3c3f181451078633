"""The settings every run shares, declared once with their help and checks (:class:`RunConfig`).

Each task family extends :class:`RunConfig` with its own fields (``GlueRunConfig`` in
:mod:`~monteclora_pyro.glue_tasks`, ``CommonsenseRunConfig`` in
:mod:`~monteclora_pyro.commonsense_tasks`) and may change a default by redeclaring the field.  The
command lines are generated from these dataclasses (:mod:`~monteclora_pyro.config_cli`).  Nothing
here imports torch, pyro, peft or transformers, so ``--help`` and every bad value answer at once.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli_types import nonnegative_float, nonnegative_int, optional, positive_float, positive_int
from .config_cli import option
from .declarations import DEFAULT_GUIDES, PriorSpec, load_prior
from .train_config import TrainConfig

__all__ = ["DEVICE_PATTERN", "PEERS", "RESUME_IGNORED", "RunConfig"]

# config fields a resumed run (or a finished sweep cell) may differ in: where things are, how progress is shown
RESUME_IGNORED = ("output_dir", "data_dir", "model", "device", "progress", "resume", "checkpoint_every")

PEERS = ("peft-lora", "peft-monteclora")  # PEFT's methods, trained by monteclora_pyro.peers
BACKBONE_DTYPES = ("float32", "bfloat16", "float16")
DEVICE_PATTERN = re.compile(r"auto|(cpu|cuda|mps|xpu|hpu|npu)(:\d+)?")


@dataclass
class RunConfig:
    """The method, the optimization and the run's bookkeeping; ``None`` fields resolve to defaults."""

    output_dir: str = option("runs/run", "where config.json, metrics.json, posterior.nc and plots go")
    prior: str = option("monteclora", "bundled prior name (models/*.toml) or a .toml path")
    guide: str | None = option(None, "guide name (guides/); default: the prior family's own")
    peer: str | None = option(None, "train a PEFT peer instead of ours", choices=PEERS)
    model: str | None = option(None, "Hugging Face model id or directory (default: the family's packaged model)")
    rank: int | None = option(None, "LoRA rank (overrides the prior's)", type=positive_int)
    targets: str | None = option(None, "comma-separated module names to adapt (overrides the prior's)")
    perturbation_scale: float | None = option(None, "eps of the monteclora perturbations (overrides the prior's)",
                                              type=positive_float)
    lr: float = option(2e-3, "learning rate of the LoRA weights and the task head", type=positive_float)
    variational_lr: float | None = option(1e-2, "learning rate of the guides' own parameters (scales, "
                                                "concentrations) and of a regression likelihood's noise scale; "
                                                "'same' for lr", type=optional(positive_float))
    weight_decay: float = option(0.0, "AdamW weight decay of the network parameters", type=nonnegative_float)
    warmup_ratio: float = option(0.06, "linear warm-up share of the steps", type=nonnegative_float)
    grad_clip: float = option(1.0, "gradient-norm clipping ('inf' disables it)", type=positive_float)
    batch_size: int = option(32, "training batch size", type=positive_int)
    eval_batch_size: int = option(64, "evaluation batch size", type=positive_int)
    epochs: int = option(2, "passes over the training rows", type=positive_int)
    max_steps: int | None = option(None, "stop after this many steps (overrides --epochs)", type=positive_int)
    seed: int = option(0, "seed of the data order, the subset and every draw", type=int)
    num_samples: int = option(8, "posterior draws averaged by the predictive", type=positive_int)
    kl_weight: float = option(1.0, "ELBO tempering beta (1 = the ELBO; the paper's lambda is beta / N_train)")
    kl_anneal_steps: int = option(0, "linear KL warm-up steps (0 = none)", type=nonnegative_int)
    peft_kl_loss_weight: float = option(1e-5, "PEFT MonteCLoRA's kl_loss_weight (peer only)")
    dirichlet_sampler: str = option("exact", "q(pi) sampler of the monteclora guide", choices=("exact", "laplace"))
    max_length: int = option(128, "tokens per example", type=positive_int)
    backbone_dtype: str = option("float32", "dtype of the frozen backbone's weights (bfloat16 halves their memory; "
                                            "LoRA and variational parameters stay float32)", choices=BACKBONE_DTYPES)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory; the "
                                                 "recomputed forward sees the same posterior draw)")
    eval_each_epoch: bool = option(False, "evaluation metrics after every epoch (metrics.json 'epochs')")
    checkpoint_every: int = option(0, "also write a checkpoint every N steps (one is always written at the end "
                                      "and on Ctrl-C)", type=nonnegative_int)
    resume: bool = option(False, "continue the interrupted run of this output dir from its checkpoint")
    device: str = option("auto", "auto, cpu, cuda, cuda:0, ...")
    progress: bool = option(True, "progress bar")

    def default_model(self) -> str:
        """The family's embedded backbone (a packaged model when installed, else its hub id)."""
        raise NotImplementedError

    def run(self) -> dict[str, Any]:
        """Train and evaluate this configuration with its family's runner; returns the metrics."""
        raise NotImplementedError

    def headline(self) -> tuple[str, str]:
        """(what the run is scored on, its headline metric in ``metrics.json``, or in its ``average``)."""
        raise NotImplementedError

    def scored_tasks(self) -> list[str]:
        """The tasks whose metrics ``metrics.json`` holds under their own names (none: one task, at the top level)."""
        return []

    def resolved(self) -> RunConfig:
        """A copy with defaults filled in and every shared value checked; raises ValueError naming the bad one.

        A family's ``resolved`` checks its own fields and then calls this one."""
        if self.peer is not None and self.peer not in PEERS:
            raise ValueError(f"peer = {self.peer!r} is unknown; available: {', '.join(PEERS)}")
        for name in ("batch_size", "eval_batch_size", "num_samples", "max_length"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} = {value!r} must be an integer >= 1")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight = {self.kl_weight!r} must be >= 0")
        if self.targets is not None and not self.target_list():
            raise ValueError(f"targets = {self.targets!r} names no module (comma-separated names, e.g. q_proj,v_proj)")
        spec = self.prior_spec()
        guide = self.guide or DEFAULT_GUIDES[spec.family]
        if self.guide is not None:  # a guide named by hand: the registry (it imports torch) checks it
            from monteclora_pyro.guides import GUIDES

            if guide not in GUIDES:
                raise ValueError(f"guide = {guide!r} is unknown; available: {', '.join(sorted(GUIDES))}")
            if spec.family not in GUIDES[guide].families:  # type: ignore[attr-defined]
                raise ValueError(f"guide = {guide!r} does not fit prior family {spec.family!r}; "
                                 f"use {DEFAULT_GUIDES[spec.family]!r}")
        self.train_config()  # validates lr, epochs, max_steps, ...
        if self.backbone_dtype not in BACKBONE_DTYPES:
            raise ValueError(f"backbone_dtype = {self.backbone_dtype!r} is unknown; "
                             f"allowed: {', '.join(BACKBONE_DTYPES)}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device = {self.device!r} is not a device (use auto, cpu, cuda, cuda:0, mps, ...)")
        return dataclasses.replace(self, guide=guide, model=self.model or self.default_model(), rank=spec.rank)

    def target_list(self) -> list[str] | None:
        return None if self.targets is None else [t.strip() for t in self.targets.split(",") if t.strip()]

    def record(self) -> dict[str, Any]:
        """The configuration as ``config.json`` holds it: every field, and the prior declaration it loads
        (JSON types: tuples become lists, so a record compares equal to one read back)."""
        return json.loads(json.dumps(dataclasses.asdict(self) | {"prior_spec": dataclasses.asdict(self.prior_spec())}))

    def changes_from(self, written: Mapping[str, Any]) -> list[str]:
        """The settings that differ from an earlier run's record, apart from :data:`RESUME_IGNORED`.

        A setting the record lacks (added in a later version) counts as its default then, so new
        options leave finished runs valid as long as they keep their defaults."""
        then = _defaults(type(self)) | dict(written)
        then["prior_spec"] = _defaults(PriorSpec) | dict(written.get("prior_spec") or {})
        return [f"{k}: {then.get(k)!r} there, {v!r} now" for k, v in self.record().items()
                if k not in RESUME_IGNORED and then.get(k) != v]

    def checkpoint_path(self) -> Path:
        """``<output_dir>.checkpoint/checkpoint.pt``: beside the run's folder, so it survives a failed run."""
        out = Path(self.output_dir)
        return out.with_name(out.name + ".checkpoint") / "checkpoint.pt"

    def prior_spec(self) -> PriorSpec:
        overrides: dict[str, Any] = {"rank": self.rank, "perturbation_scale": self.perturbation_scale}
        if self.targets is not None:
            overrides["targets"] = tuple(self.target_list() or ())
        return load_prior(self.prior, **overrides)

    def train_config(self) -> TrainConfig:
        return TrainConfig(lr=self.lr, variational_lr=self.variational_lr, weight_decay=self.weight_decay,
                           warmup_ratio=self.warmup_ratio, epochs=self.epochs, max_steps=self.max_steps,
                           grad_clip=self.grad_clip, kl_anneal_steps=self.kl_anneal_steps, progress=self.progress)


def _defaults(cls: type) -> dict[str, Any]:
    """A dataclass's field defaults in JSON form (tuples as lists)."""
    return json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(cls)
                                  if f.default is not dataclasses.MISSING}))
