"""One run pipeline for every task family: validate, load, train (ours or a PEFT peer), evaluate, write.

A task family (:class:`TaskFamily`, in ``monteclora_pyro.tasks``) supplies what differs: its settings,
backbone kind, data, likelihood and evaluation protocol.  The pipeline does the rest the same way for
every family, and reads top to bottom: configuration, data, model, train, evaluate, write.

Everything that can be checked is checked before the model or data load; the run's files go to a
staging folder that replaces ``output_dir`` only when the run has finished (a failed run leaves
``output_dir`` as it was and its own files in ``<output_dir>.failed``).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..adapters import load_trained_weights, save_adapter
from ..artifacts import atomic_run_dir, atomic_write_json
from ..backbones import check_backbone, resolve_device
from ..diagnostics import posterior_inference_data, save_posterior
from ..kinds import positive_int
from ..lora_method import LoRAMethod
from ..methods import build_method
from .checkpoints import Checkpointer
from .distributed import World, seeded_sampler, sharded_loader, world
from .plots import plot_elbo, plot_posterior_spread, plot_variational_trajectories
from .settings import RunConfig
from .tracking import check_tracker, open_tracker
from .training import check_posterior_stage, fit_variational, settled_share, train

__all__ = ["Evaluation", "TaskFamily", "environment", "make_loader", "run", "run_or_exit"]


@dataclass
class Evaluation:
    """What a family's evaluation gives back.

    metrics: the run's metrics (written to ``metrics.json``).
    epoch_scores: the headline scores, recorded as the last epoch's when epochs are evaluated.
    observed, log_likelihood: labels and the per-draw log-likelihood (draws x examples) of the main
    evaluation set, stored in ``posterior.nc`` (optional).
    """

    metrics: dict[str, Any]
    epoch_scores: dict[str, float] = field(default_factory=dict)
    observed: torch.Tensor | None = None
    log_likelihood: torch.Tensor | None = None


class TaskFamily(abc.ABC):
    """A task family: what the pipeline needs to know of the tasks, their data and how they are scored.

    ``kind`` is the backbone's (``classifier``: a sequence-classification head of ``num_labels``
    outputs, or ``causal_lm``).  A family is made for a configuration of its ``settings`` class (a
    :class:`~monteclora_pyro.runner.settings.RunConfig`), which it resolves; it loads its evaluation sets
    in :meth:`load_data` and keeps them for :meth:`evaluate`.
    """

    kind: str = "classifier"
    settings: type[RunConfig] = RunConfig

    def __init__(self, config: RunConfig) -> None:
        self.config = config.resolved()

    @property
    def num_labels(self) -> int | None:
        return None

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The tasks of the run, for the head of ``metrics.json`` (e.g. ``{"task": "sst2"}``)."""

    @abc.abstractmethod
    def load_backbone(self, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
        """(model with weights in ``dtype``, tokenizer)."""

    @abc.abstractmethod
    def load_data(self, tokenizer) -> tuple[Dataset, Callable]:
        """(training rows with ``idx``, their collate function); loads and keeps the evaluation sets."""

    def prepare_model(self, model: nn.Module, train_set: Dataset) -> None:
        """Fit the fresh backbone's head to the training rows before adapters are added (default: nothing)."""
        return None

    @abc.abstractmethod
    def likelihood(self, peer: bool) -> nn.Module:
        """The observation model of ours (``peer`` False) or the readout and loss of a PEFT peer."""

    @abc.abstractmethod
    def evaluate(self, module: LoRAMethod, device: torch.device, output_dir: Path | None) -> Evaluation:
        """The final evaluation: metrics, and the family's plots written into ``output_dir``."""

    def holdout_loader(self) -> Iterable | None:
        """Batches of the training rows held out from training (with ``labels``), for a posterior fitted after
        training that chooses a setting on them (default: none)."""
        return None

    @abc.abstractmethod
    def epoch_scores(self, module: LoRAMethod, device: torch.device) -> dict[str, float]:
        """The headline scores after an epoch (``eval_each_epoch``)."""


def make_loader(dataset: Dataset, collate: Callable, batch_size: int, shuffle: bool, seed: int = 0,
                world: World | None = None) -> DataLoader:
    """A minibatch loader, shuffled each epoch by a permutation drawn from ``seed`` and the epoch alone
    (:func:`~monteclora_pyro.runner.distributed.seeded_sampler`, as the Trainer's); in a multi-process
    ``world``, this process's share of each global batch of ``batch_size`` rows."""
    positive_int.check("batch_size", batch_size)
    if world is not None and world.distributed:
        return sharded_loader(dataset, collate, batch_size, world, seed)
    if not shuffle:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    return DataLoader(dataset, batch_size=batch_size, sampler=seeded_sampler(dataset, seed), collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))  # its worker seeds too: never the global stream


def run(family: TaskFamily) -> dict[str, Any]:
    """Train and evaluate ``family``'s configuration; writes ``config.json``, ``metrics.json``,
    ``posterior.nc``, ``adapter/``, ``checkpoint.pt`` and ``plots/``."""
    config = family.config
    _check_output_dir(Path(config.output_dir), config.overwrite_output_dir)
    spec = config.prior_spec()
    resolve_device(config.device)
    check_tracker(config.report_to)
    check_backbone(config.model, spec.targets, spec.rank, family.num_labels or 2, family.kind)
    processes = world()
    if not processes.is_main:  # only rank 0 writes files
        return _run(family, None, processes)
    with atomic_run_dir(config.output_dir) as staging:
        return _run(family, staging, processes)


PACKAGES = ("monteclora-pyro", "torch", "pyro-ppl", "transformers", "peft", "datasets", "arviz")


def environment(device: torch.device) -> dict[str, Any]:
    """What a run ran on, for ``config.json``: Python and package versions, the git revision of the checkout
    the package runs from (None for an installed package; ``git_dirty`` when it has uncommitted changes) and
    the device."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    tracked = git("ls-files", "--error-unmatch", "__init__.py") is not None  # the package is this checkout's
    revision = git("rev-parse", "HEAD") if tracked else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"python": platform.python_version(), "packages": versions, "git_revision": revision,
            "git_dirty": None if revision is None else bool(git("status", "--porcelain", "--untracked-files=no")),
            "device": f"{device} ({name})"}


def _check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a file, or a folder that holds anything, unless told to replace it (a finished run is never
    replaced by accident)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"output_dir = {str(path)!r} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        finished = "a finished run" if (path / "metrics.json").exists() else "files"
        raise ValueError(f"output_dir = {str(path)!r} holds {finished}; give --overwrite-output-dir to replace "
                         "it, or another --output-dir")


def run_or_exit(family: TaskFamily, script: str) -> dict[str, Any]:
    """:func:`run` for a command line: an error found once the data or model is read exits with one line,
    Ctrl-C with how to resume.  Ranks other than 0 of a multi-process run get {}."""
    import datasets

    datasets.disable_progress_bars()
    print("config:", json.dumps(dataclasses.asdict(family.config), sort_keys=True), flush=True)
    try:
        return run(family)
    except (ValueError, FloatingPointError, OSError) as error:  # OSError: a file or the network (offline)
        sys.exit(f"{script}: error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"{script}: interrupted; checkpoint in {family.config.checkpoint_path()}: run the same command "
                 "with --resume to continue")


def _method(family: TaskFamily, model: nn.Module, num_data: int, device: torch.device) -> LoRAMethod:
    """Ours or a PEFT peer, as the configuration says, on ``device``."""
    config = family.config
    guide_options = {"dirichlet_sampler": config.dirichlet_sampler} if config.guide == "monteclora" else None
    return build_method(model, config.prior_spec(), family.likelihood(peer=config.peer is not None), num_data,
                        peer=config.peer, guide=config.guide, kl_weight=config.kl_weight,
                        guide_options=guide_options, peft_kl_loss_weight=config.peft_kl_loss_weight,
                        autocast_dtype=_autocast(config, device),
                        lora_dropout=config.lora_dropout).to(device)


def _autocast(config: RunConfig, device: torch.device) -> torch.dtype | None:
    name = config.autocast_dtype(device.type)
    return None if name is None else getattr(torch, name)


def _run(family: TaskFamily, output_dir: Path | None, processes: World) -> dict[str, Any]:
    # configuration
    config, spec = family.config, family.config.prior_spec()
    device = resolve_device(config.device)
    if processes.distributed and device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)
    processes.init(device)
    if output_dir is not None:
        atomic_write_json(output_dir / "config.json", config.record() | {
            "world_size": processes.size, "global_batch_size": config.batch_size, "environment": environment(device)})
    pyro.set_rng_seed(config.seed)

    # data
    model, tokenizer = family.load_backbone(getattr(torch, config.backbone_dtype))
    if config.gradient_checkpointing:  # non-reentrant: frozen inputs need no gradient, the draw is reused
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    train_set, collate = family.load_data(tokenizer)
    family.prepare_model(model, train_set)
    train_loader = make_loader(train_set, collate, config.batch_size, shuffle=True, seed=config.seed, world=processes)

    # model
    module = _method(family, model, len(train_set), device)
    if config.init_adapter is not None:
        load_trained_weights(module, config.init_adapter)
    if config.posterior_steps:
        check_posterior_stage(module)
    if module.ensemble_size > 1 and config.init_adapter is not None:
        raise ValueError("init_adapter starts one model from a trained adapter; an ensemble's members start from "
                         "their own initializations (leave init_adapter out)")
    if processes.distributed and config.sharding == "fsdp" and config.eval_each_epoch:
        raise ValueError("eval_each_epoch evaluates on rank 0 alone, which a sharded (fsdp) backbone cannot do "
                         "until training ends; leave one of them out")

    # train, with the scores after each epoch when asked (by rank 0)
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    total_epochs = math.ceil(config.total_steps(steps_per_epoch) / steps_per_epoch)
    def checkpointer(path: Path) -> Checkpointer:  # every process resumes from it; rank 0 writes it
        return Checkpointer(path, config.checkpoint_every, resume=config.resume,
                            extra={"config": config.record(), "epochs": []},
                            compare=lambda saved: config.changes_from(saved["config"]), writer=processes.is_main)

    checkpoint = checkpointer(config.checkpoint_path())

    tracker = None if output_dir is None else open_tracker(  # written with the run, in OUTPUT_DIR/logs
        config.report_to, Path(config.output_dir).name, output_dir / "logs", config.record())

    def evaluate_epoch(epoch: int) -> None:
        if epoch < total_epochs and processes.is_main:  # the final evaluation below is the last epoch's
            scores = family.epoch_scores(module, device)
            checkpoint.extra["epochs"].append({"epoch": epoch} | scores)
            if tracker is not None:
                tracker.log({f"dev/{k}": v for k, v in scores.items()}, step=epoch * steps_per_epoch)

    start = time.perf_counter()
    wrapped, histories = processes.wrap(module, device, config.sharding), []
    try:
        # an ensemble's members one after the other (member k from seed + k, its own checkpoint); else one model
        for member in range(module.ensemble_size):
            if member:
                module.start_member(member, config.seed + member)
                train_loader = make_loader(train_set, collate, config.batch_size, shuffle=True,
                                           seed=config.seed + member, world=processes)
            history = train(wrapped, train_loader, config, device=device,
                            checkpoint=checkpoint if member == 0 else checkpointer(
                                checkpoint.path.with_name(f"checkpoint-member{member}.pt")),
                            on_epoch_end=evaluate_epoch if config.eval_each_epoch and member == 0 else None,
                            on_log=None if tracker is None or member else
                            lambda step, values: tracker.log({f"train/{k}": v for k, v in values.items()}, step=step))
            module.store_member(member)
            histories.append(history)
        stage_start = time.perf_counter()
        stage = fit_variational(wrapped, train_loader, config, device) if config.posterior_steps else None
        stage_seconds = time.perf_counter() - stage_start
    finally:
        if tracker is not None:
            tracker.finish()
    if config.sharding == "fsdp":
        processes.gather_for_evaluation(module)
    if not processes.is_main:
        return {}
    history = histories[0]  # the plots and the per-epoch scores are the first member's
    steps = sum(h.steps for h in histories)
    metrics: dict[str, Any] = family.describe() | {
        "prior": spec.name, "guide": module.guide_name, "method": config.peer or spec.name,
        "seed": config.seed, "steps": steps,
        "train_seconds": time.perf_counter() - start,
        "median_step_seconds": statistics.median(h.median_step_seconds() for h in histories if h.steps)
        if steps else None,
        "final_loss": history.loss[-1] if history.steps else None, "num_train": len(train_set),
        "num_samples": (module.ensemble_size if module.ensemble_size > 1 else config.num_samples)
        if module.has_posterior else None,
    }
    if stage is not None:  # where the guide's parameters ended, and whether they had stopped moving
        metrics["posterior_stage"] = {"steps": config.posterior_steps, "seconds": stage_seconds, "settled_share": {
            name: settled_share(values) for name, values in stage.items() if name != "loss"}, "trajectory": stage}
        plot_variational_trajectories(stage, output_dir / "plots" / "variational.png")
        with torch.no_grad():  # the KL where the stage left q (the training's last logged one is before it)
            metrics["posterior_stage"]["kl_per_example"] = float(module.kl_divergence()) / module.num_data
    if len(histories) > 1:
        metrics["members"] = len(histories)
        metrics["member_final_losses"] = [h.loss[-1] if h.steps else None for h in histories]

    # a posterior fitted after training (the Laplace approximation), on the training rows in order
    fit_loader = make_loader(train_set, collate, config.eval_batch_size, shuffle=False)
    metrics.update(module.fit_posterior(fit_loader, device, family.holdout_loader()))

    # predict and evaluate
    evaluation = family.evaluate(module, device, output_dir)
    metrics.update(evaluation.metrics)
    epochs = checkpoint.extra["epochs"]
    if config.eval_each_epoch:
        epochs.append({"epoch": total_epochs} | evaluation.epoch_scores)

    # write
    if module.has_posterior:
        _write_posterior(output_dir, family, module, evaluation)
        if history.steps:
            plot_elbo(history.elbo_terms(), output_dir / "plots" / "elbo.png", loss=history.loss)
            metrics["elbo_history"] = history.elbo_terms()
    if epochs:
        metrics["epochs"] = epochs
    atomic_write_json(output_dir / "metrics.json", metrics)
    if checkpoint.path.exists():  # the final one, kept with the finished run (none when nothing trained)
        os.replace(checkpoint.path, output_dir / "checkpoint.pt")
    shutil.rmtree(checkpoint.path.parent, ignore_errors=True)
    return metrics


def _write_posterior(output_dir: Path, family: TaskFamily, module: LoRAMethod, evaluation: Evaluation) -> None:
    """The saved posterior (``adapter/``), ``posterior.nc`` and its plot."""
    save_adapter(module, output_dir / "adapter", family.config.model, family.num_labels, family.kind)
    idata = posterior_inference_data(module, num_draws=200, observed=evaluation.observed,
                                     log_likelihood=evaluation.log_likelihood)
    save_posterior(idata, output_dir / "posterior.nc")
    plot_posterior_spread(idata, output_dir / "plots" / "posterior.png")
