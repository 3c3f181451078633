"""The settings of a run, each declared once with its help and check: the training loop's
(:class:`TrainConfig`) and those every run shares (:class:`RunConfig`, which extends them).

A task family extends :class:`RunConfig` with its own fields and may give a field another default
with :func:`~monteclora_pyro.runner.options.redefault`.  Values are checked when a settings object is
made; :meth:`RunConfig.resolved` adds the checks that read files (the prior declaration, data
folders).  Nothing here imports torch, so ``--help`` and a bad value answer at once; a prior
declaration is checked by its family's class, which loads torch and pyro (a second or two).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..declarations import PEERS, PriorSpec, load_prior
from ..kinds import (
    device,
    fraction,
    integer,
    nonnegative_float,
    nonnegative_int,
    optional,
    positive_float,
    positive_int,
    real,
    text,
)
from .options import check_options, option

__all__ = ["BACKBONE_DTYPES", "MIXED_PRECISION", "REPORT_TO", "RESUME_IGNORED", "SHARDING", "RunConfig", "TrainConfig",
           "default_data_dir"]

# settings a resumed run (or a finished sweep cell) may differ in: where things are, how progress is shown
RESUME_IGNORED = ("output_dir", "data_dir", "model", "device", "progress", "resume", "checkpoint_every",
                  "overwrite_output_dir", "report_to")
BACKBONE_DTYPES = ("float32", "bfloat16", "float16")
REPORT_TO = ("none", "tensorboard", "wandb")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
SHARDING = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """The training loop's settings (:func:`~monteclora_pyro.runner.training.train`)."""

    lr: float = option(2e-3, "learning rate of the LoRA weights and the task head", positive_float,
                       aliases=("--learning_rate", "--learning-rate"))
    variational_lr: float | None = option(1e-2, "learning rate of the guides' own parameters (scales, "
                                                "concentrations) and of a regression likelihood's noise scale; "
                                                "'same' for lr", optional(positive_float))
    weight_decay: float = option(0.0, "AdamW weight decay of the network parameters", nonnegative_float)
    warmup_ratio: float = option(0.06, "linear warm-up share of the steps", fraction)
    grad_clip: float = option(1.0, "gradient-norm clipping ('inf' disables it)", positive_float,
                              aliases=("--max_grad_norm",))
    epochs: int = option(2, "passes over the training rows", positive_int, aliases=("--num_train_epochs",))
    max_steps: int | None = option(None, "stop after this many steps (overrides --epochs; 0: no training, e.g. a "
                                         "post-hoc fit to --init-adapter)", optional(nonnegative_int))
    gradient_accumulation_steps: int = option(1, "minibatches per optimizer step (their losses averaged: k batches "
                                                 "of b rows step as one of k b)", positive_int)
    kl_anneal_steps: int = option(0, "linear KL warm-up steps (0 = none)", nonnegative_int)
    log_every: int = option(10, "record the ELBO's terms every N steps", positive_int, aliases=("--logging_steps",))
    divergence_factor: float = option(10.0, "stop the run as failed when the loss of the last steps (their median) "
                                            "is over this many times the first step's (0: never)", nonnegative_float)
    progress: bool = option(True, "progress bar")
    posterior_steps: int = option(0, "after training, Adam steps on the guides' own parameters alone (the LoRA means "
                                     "and head fixed) at --posterior-lr without decay, so the hyper-latents reach "
                                     "the ELBO's optimum around the trained means (0: none)", nonnegative_int)
    posterior_lr: float | None = option(None, "learning rate of the posterior steps ('same': --variational-lr)",
                                        optional(positive_float))

    def __post_init__(self) -> None:
        check_options(self)

    def total_steps(self, steps_per_epoch: int) -> int:
        """``max_steps`` when set (it overrides ``epochs``, as in Hugging Face), else epochs x steps per epoch."""
        return self.epochs * steps_per_epoch if self.max_steps is None else self.max_steps


@dataclass
class RunConfig(TrainConfig):
    """The method, the optimization and the run's bookkeeping; ``None`` fields resolve to defaults."""

    output_dir: str = option("runs/run", "where config.json, metrics.json, posterior.nc and plots go")
    prior: str = option("monteclora", "bundled prior name (models/*.toml) or a .toml path")
    guide: str | None = option(None, "guide name (guides/); default: the prior family's own")
    peer: str | None = option(None, "train a PEFT peer instead of ours (with the paper's prior, monteclora, unless "
                                    "--prior names another)", choices=PEERS)
    model: str | None = option(None, "Hugging Face model id or directory (default: the family's packaged model)",
                               aliases=("--model_name_or_path",))
    rank: int | None = option(None, "LoRA rank (overrides the prior's)", optional(positive_int), aliases=("--lora_r",))
    alpha: float | None = option(None, "LoRA alpha: the update is alpha / rank * B A (overrides the prior's)",
                                 optional(positive_float), aliases=("--lora_alpha",))
    lora_dropout: float = option(0.0, "dropout on the LoRA factors' input while training (PEFT's lora_dropout)",
                                 fraction)
    targets: str | None = option(None, "comma-separated module names to adapt, overriding the prior's ('none': "
                                       "the prior's)", optional(text))
    perturbation_scale: float | None = option(None, "eps of the monteclora perturbations (overrides the prior's)",
                                              optional(positive_float))
    batch_size: int = option(32, "training batch size", positive_int, aliases=("--per_device_train_batch_size",))
    eval_batch_size: int = option(64, "evaluation batch size", positive_int, aliases=("--per_device_eval_batch_size",))
    seed: int = option(0, "seed of the data order, the subset and every draw", integer)
    num_samples: int = option(8, "posterior draws averaged by the predictive", positive_int)
    epoch_num_samples: int | None = option(None, "posterior draws of the scores after each epoch (eval_each_epoch; "
                                                 "default: num_samples): a cheaper curve, the final scores keep "
                                                 "num_samples", optional(positive_int))
    kl_weight: float = option(1.0, "ELBO tempering beta (1 = the ELBO; the paper's lambda is beta / N_train)",
                              nonnegative_float)
    peft_kl_loss_weight: float = option(1e-5, "PEFT MonteCLoRA's kl_loss_weight (peer only)", real)
    dirichlet_sampler: str = option("exact", "q(pi) sampler of the monteclora guide", choices=("exact", "laplace"))
    max_length: int = option(128, "tokens per example", positive_int, aliases=("--max_seq_length",))
    mixed_precision: str = option("auto", "autocast of the backbone's forward: auto (bf16 on a CUDA device that has "
                                          "it, else fp16 on CUDA, none on CPU), no, bf16 or fp16 (with loss "
                                          "scaling); samplers and KLs stay float32", choices=MIXED_PRECISION)
    backbone_dtype: str = option("float32", "dtype of the frozen backbone's weights (bfloat16 halves their memory; "
                                            "LoRA and variational parameters stay float32)", choices=BACKBONE_DTYPES)
    sharding: str = option("ddp", "how several processes (torchrun, accelerate launch) share the model: ddp (each "
                                  "holds the whole frozen backbone) or fsdp (its weights sharded across them by "
                                  "torch's FSDP; the trained parameters replicated in float32)", choices=SHARDING)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory; the "
                                                 "recomputed forward sees the same posterior draw)")
    eval_each_epoch: bool = option(False, "evaluation metrics after every epoch (metrics.json 'epochs')")
    holdout_fraction: float = option(0.0, "share of the training rows held out to fit a temperature "
                                          "(regression: a noise scale), reported as ts_*", fraction)
    save_draws: bool = option(False, "also write each posterior draw's class probabilities (regression: its "
                                     "prediction) per example in the predictions files")
    init_adapter: str | None = option(None, "start from this saved posterior's trained weights (an adapter/ folder "
                                            "of the same backbone, targets and rank: its LoRA means and head); with "
                                            "--max-steps 0, fit a post-hoc posterior (laplace) to a trained adapter")
    checkpoint_every: int = option(0, "also write a checkpoint every N steps (one is always written at the end "
                                      "and on Ctrl-C)", nonnegative_int)
    resume: bool = option(False, "continue the interrupted run of this output dir from its checkpoint")
    overwrite_output_dir: bool = option(False, "replace what output_dir holds (a finished run); without it such "
                                               "a folder is refused")
    device: str = option("auto", "where to train: auto (CUDA when present), cpu, cuda, cuda:0, ...", device)
    report_to: str = option("none", "also log the training curves to TensorBoard (in OUTPUT_DIR/logs) or Weights & "
                                    "Biases, through Accelerate's trackers", choices=REPORT_TO)

    def epoch_draws(self) -> int:
        """Posterior draws of the scores after each epoch."""
        return self.epoch_num_samples or self.num_samples

    def default_model(self) -> str:
        """The family's embedded backbone (a packaged model when installed, else its hub id)."""
        raise NotImplementedError

    def headline(self) -> tuple[str, str]:
        """(what the run is scored on, its headline metric in ``metrics.json``, or in its ``average``)."""
        raise NotImplementedError

    def scored_tasks(self) -> list[str]:
        """The tasks whose metrics ``metrics.json`` holds under their own names (none: one task, at the top level)."""
        return []

    def resolved(self) -> RunConfig:
        """A copy with defaults filled in and the prior and guide checked; raises ValueError naming the bad one.

        A family's ``resolved`` checks its own files and then calls this one."""
        if self.__dict__.get("_resolved"):
            return self
        if self.targets is not None and not self.target_list():
            raise ValueError(f"targets = {self.targets!r} names no module (comma-separated names, e.g. q_proj,v_proj)")
        if self.init_adapter is not None and not (Path(self.init_adapter) / "posterior.json").is_file():
            raise ValueError(f"init_adapter = {self.init_adapter!r} is not a saved posterior (an adapter/ folder "
                             "with posterior.json, as a run writes into OUTPUT_DIR/adapter)")
        if self.peer is not None and self.prior == _defaults(type(self))["prior"] != "monteclora":
            return dataclasses.replace(self, prior="monteclora").resolved()  # PEFT's MonteCLoRA is the paper's
        spec = self.prior_spec()
        if spec.needs_holdout and not self.holdout_fraction > 0:
            raise ValueError(f"prior {self.prior!r} chooses its prior precision on held-out training rows; "
                             f"holdout_fraction = {self.holdout_fraction!r} (give > 0)")
        if self.guide is not None:
            from ..guides import check_guide  # the registry imports torch: only for a guide named by hand

            check_guide(self.guide, spec)
        resolved = dataclasses.replace(self, guide=self.guide or spec.default_guide,
                                       model=self.model or self.default_model(), rank=spec.rank)
        resolved.__dict__.update(_resolved=True, _prior_spec=(resolved._spec_key(), spec))  # the same declaration
        return resolved

    def target_list(self) -> list[str] | None:
        return None if self.targets is None else [t.strip() for t in self.targets.split(",") if t.strip()]

    def _spec_key(self) -> tuple:
        return self.prior, self.rank, self.alpha, self.targets, self.perturbation_scale

    def prior_spec(self) -> PriorSpec:
        """The prior declaration with this run's overrides, read once per run."""
        key = self._spec_key()
        cached = self.__dict__.get("_prior_spec")
        if cached is None or cached[0] != key:
            targets = tuple(self.target_list() or ()) or None
            spec = load_prior(self.prior, rank=self.rank, alpha=self.alpha, targets=targets)
            if self.perturbation_scale is not None and hasattr(spec, "perturbation_scale"):
                spec = spec.replace(perturbation_scale=self.perturbation_scale)
            self.__dict__["_prior_spec"] = cached = (key, spec)
        return cached[1]

    def record(self) -> dict[str, Any]:
        """The configuration as ``config.json`` holds it: every field, and the prior declaration it loads
        (JSON types: tuples become lists, so a record compares equal to one read back)."""
        return json.loads(json.dumps(dataclasses.asdict(self) | {"prior_spec": self.prior_spec().record()}))

    def changes_from(self, written: Mapping[str, Any], unchecked: Sequence[str] = ()) -> list[str]:
        """The settings that differ from an earlier run's record, apart from :data:`RESUME_IGNORED` and
        ``unchecked``.

        A setting the record lacks (added in a later version) counts as its default then, so new
        options leave finished runs valid as long as they keep their defaults; a prior setting of
        another family (an older record listed every family's) is not compared."""
        now = self.record()
        then = _defaults(type(self)) | dict(written)
        changes = [f"{k}: {then.get(k)!r} there, {v!r} now" for k, v in now.items()
                   if k not in (*RESUME_IGNORED, *unchecked, "prior_spec") and then.get(k) != v]
        spec_then = _defaults(type(self.prior_spec())) | dict(written.get("prior_spec") or {})
        return changes + [f"prior_spec.{k}: {spec_then.get(k)!r} there, {v!r} now"
                          for k, v in now["prior_spec"].items() if k != "name" and spec_then.get(k) != v]

    def autocast_dtype(self, device_type: str) -> str | None:
        """The autocast dtype's name (``bfloat16``, ``float16``) of ``mixed_precision`` on a device type, or None."""
        if self.mixed_precision == "auto":
            if device_type != "cuda":
                return None
            import torch

            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return {"no": None, "bf16": "bfloat16", "fp16": "float16"}[self.mixed_precision]

    def checkpoint_path(self) -> Path:
        """``<output_dir>.checkpoint/checkpoint.pt``: beside the run's folder, so it survives a failed run."""
        out = Path(self.output_dir)
        return out.with_name(out.name + ".checkpoint") / "checkpoint.pt"


def default_data_dir(variable: str, folder: str) -> Path | None:
    """``$<variable>``, else ``../shared/data/<folder>`` beside the checkout, else None (a family's hub data)."""
    if os.environ.get(variable):
        return Path(os.environ[variable])
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data" / folder
    return candidate if candidate.is_dir() else None


def _defaults(cls: type) -> dict[str, Any]:
    """A dataclass's field defaults in JSON form (tuples as lists)."""
    return json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(cls)
                                  if f.default is not dataclasses.MISSING}))
