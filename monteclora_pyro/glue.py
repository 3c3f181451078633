"""One GLUE run end to end: validate, load, train (ours or a PEFT peer), predict, write results.

The runner reads top to bottom: configuration, data, model, train, predict and evaluate, write.
Ours and the peers share one interface (:class:`~monteclora_pyro.peers.PeftPeer`), and the
likelihood math (per-draw log-likelihood, the regression predictive's NLL) lives with the likelihoods.

``experiments/svi_glue.py`` is the command-line client of :func:`run_glue`; benchmarks and sweeps
call it too.  Everything is validated before the model or data is loaded.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from .adapters import save_adapter
from .artifacts import atomic_run_dir, atomic_write_json
from .backbones import check_backbone, load_classifier, resolve_device
from .bayesian_lora import bayesian_lora_from_model
from .calibration import apply_temperature, fit_temperature
from .checkpoints import Checkpointer
from .data import GlueTask, get_task, load_glue, make_loader
from .declarations import PriorSpec
from .diagnostics import posterior_inference_data, save_posterior
from .distributed import World, world
from .metrics import classification_metrics, glue_metrics, regression_metrics
from .peers import PeftPeer, peft_peer
from .plots import plot_elbo, plot_posterior_spread, plot_reliability
from .prediction import mc_dropout, predict
from .run_config import GlueRunConfig
from .svi import train

__all__ = ["GlueRunConfig", "run_glue"]


def _scores(probs: torch.Tensor, labels: torch.Tensor, task: GlueTask) -> dict[str, float]:
    """Classification metrics (accuracy, NLL, ECE, MCE, Brier) and the task's GLUE metrics; regression:
    correlations and MSE."""
    if task.num_labels == 1:
        return regression_metrics(probs, labels)
    return classification_metrics(probs, labels) | glue_metrics(task.metrics, probs, labels)


def _report(predictions: dict[str, torch.Tensor], likelihood, task: GlueTask) -> dict[str, float]:
    """Metrics of the posterior-mean predictions (``mean_*``) and of the predictive ones (unprefixed).

    Regression NLL uses the learned Gaussian noise scale: the predictive is the mixture over draws.
    """
    labels = predictions["labels"]
    report = {f"mean_{k}": v for k, v in _scores(predictions["mean"], labels, task).items()}
    report.update(_scores(predictions["predictive"], labels, task))
    if likelihood.regression and likelihood.learned:
        report["mean_nll"] = likelihood.nll(predictions["mean"][:, None], labels)
        report["nll"] = likelihood.nll(predictions["draws"], labels)
    return report


def _write_artifacts(output_dir: Path, config: GlueRunConfig, module, predictions, history, task: GlueTask) -> None:
    """The reliability diagram; for a posterior (ours), the saved posterior (``adapter/``), posterior.nc
    and its plots."""
    if task.num_labels > 1:
        plot_reliability(predictions["predictive"], predictions["labels"], output_dir / "plots" / "reliability.png")
    if not module.has_posterior:  # a peer
        return
    save_adapter(module, output_dir / "adapter", config.model, task.num_labels)
    log_likelihood = module.likelihood.draw_log_likelihood(predictions["draws"], predictions["labels"])
    idata = posterior_inference_data(module, num_draws=200, observed=predictions["labels"],
                                     log_likelihood=log_likelihood)
    save_posterior(idata, output_dir / "posterior.nc")
    plot_posterior_spread(idata, output_dir / "plots" / "posterior.png")
    plot_elbo(history.elbo_terms(), output_dir / "plots" / "elbo.png", loss=history.loss)


def run_glue(config: GlueRunConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; writes ``config.json``, ``metrics.json``, ``posterior.nc`` and
    ``plots/`` into a staging folder that replaces ``output_dir`` only when the run has finished (a failed
    run leaves ``output_dir`` as it was and its own files in ``<output_dir>.failed``)."""
    config = config.resolved()
    spec = config.prior_spec()
    resolve_device(config.device)
    check_backbone(config.model, spec.targets, spec.rank, get_task(config.task).num_labels)
    processes = world()
    if processes.distributed and config.resume:
        raise ValueError("resume = True: resuming is for single-process runs for now")
    if not processes.is_main:  # only rank 0 writes files
        return _run(config, None, processes)
    with atomic_run_dir(config.output_dir) as staging:
        return _run(config, staging, processes)


def _build_method(config: GlueRunConfig, spec: PriorSpec, model, num_data: int, num_labels: int,
                  device: torch.device):
    """Ours (a :class:`BayesianLoRA`) or a PEFT peer (a :class:`PeftPeer`): one interface for what follows."""
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    if config.peer is not None:
        network = peft_peer(model, config.peer, spec, config.peft_kl_loss_weight)
        return PeftPeer(network, num_labels, autocast_dtype).to(device)
    guide_options = {"dirichlet_sampler": config.dirichlet_sampler} if config.guide == "monteclora" else None
    return bayesian_lora_from_model(model, spec, num_data, num_labels, config.guide, config.kl_weight,
                                    guide_options, autocast_dtype).to(device)


def _run(config: GlueRunConfig, output_dir: Path | None, processes: World) -> dict[str, Any]:
    # configuration
    task, spec = get_task(config.task), config.prior_spec()
    device = resolve_device(config.device)
    if processes.distributed and device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)
    processes.init(device)
    if output_dir is not None:
        atomic_write_json(output_dir / "config.json", config.record() | {
            "world_size": processes.size, "global_batch_size": config.batch_size})
    pyro.set_rng_seed(config.seed)

    # data
    model, tokenizer = load_classifier(config.model, task.num_labels)
    data = load_glue(task, config.data_dir, tokenizer, config.max_length, config.max_train_samples,
                     config.max_eval_samples, config.seed, config.holdout_fraction)
    train_loader = make_loader(data["train"], tokenizer, config.batch_size, shuffle=True, seed=config.seed,
                               world=processes)
    loaders = {split: make_loader(data[split], tokenizer, config.eval_batch_size, shuffle=False)
               for split in (*task.dev_splits, "holdout") if split in data}

    # model
    module = _build_method(config, spec, model, len(data["train"]), task.num_labels, device)

    # train, with the dev metrics after each epoch when asked (by rank 0)
    def predictions_on(split: str, with_mean: bool = True) -> dict[str, torch.Tensor]:
        return predict(module, loaders[split], config.num_samples, device, with_mean)

    train_config = config.train_config()
    total_epochs = math.ceil(train_config.total_steps(len(train_loader)) / len(train_loader))
    checkpoint = Checkpointer(config.checkpoint_path(), config.checkpoint_every, resume=config.resume,
                              extra={"config": config.record(), "epochs": []},
                              compare=lambda saved: config.changes_from(saved["config"]))

    def evaluate_epoch(epoch: int) -> None:
        if epoch < total_epochs and processes.is_main:  # the final evaluation below is the last epoch's
            predictions = predictions_on(task.dev_splits[0], with_mean=False)
            scores = _scores(predictions["predictive"], predictions["labels"], task)
            checkpoint.extra["epochs"].append({"epoch": epoch} | scores)

    start = time.perf_counter()
    history = train(processes.wrap(module, device), train_loader, train_config, device=device,
                    checkpoint=checkpoint if processes.is_main else None,
                    on_epoch_end=evaluate_epoch if config.eval_each_epoch else None)
    if not processes.is_main:
        return {}
    epochs = checkpoint.extra["epochs"]
    metrics: dict[str, Any] = {
        "task": task.name, "prior": spec.name, "guide": module.guide_name, "method": config.peer or spec.name,
        "seed": config.seed, "steps": history.steps,
        "train_seconds": time.perf_counter() - start, "median_step_seconds": history.median_step_seconds(),
        "final_loss": history.loss[-1], "num_train": len(data["train"]),
        "num_samples": config.num_samples if module.has_posterior else None,
    }

    # predict and evaluate: a temperature fitted on the held-out rows, MC dropout when asked
    temperature = None
    if "holdout" in loaders and task.num_labels > 1:
        held_out = predictions_on("holdout", with_mean=False)
        temperature = fit_temperature(held_out["predictive"], held_out["labels"])
        metrics.update(temperature=temperature, num_holdout=len(data["holdout"]))
    for split in task.dev_splits:
        predictions = predictions_on(split)
        report = _report(predictions, module.likelihood, task)
        if temperature is not None:
            scaled = apply_temperature(predictions["predictive"], temperature)
            report.update({f"ts_{k}": v for k, v in _scores(scaled, predictions["labels"], task).items()})
        if config.mc_dropout_samples:
            dropout = mc_dropout(module, loaders[split], config.mc_dropout_samples, device)
            report.update({f"mcd_{k}": v for k, v in _scores(dropout["mean"], dropout["labels"], task).items()})
        first_split = split == task.dev_splits[0]
        metrics.update({("" if first_split else f"{split}_") + k: v for k, v in report.items()})
        if first_split:
            if config.eval_each_epoch:
                epochs.append({"epoch": total_epochs} | _scores(predictions["predictive"], predictions["labels"], task))
            _write_artifacts(output_dir, config, module, predictions, history, task)

    # write
    if epochs:
        metrics["epochs"] = epochs
    if module.has_posterior:
        metrics["elbo_history"] = history.elbo_terms()
    atomic_write_json(output_dir / "metrics.json", metrics)
    os.replace(checkpoint.path, output_dir / "checkpoint.pt")  # the final one, kept with the finished run
    shutil.rmtree(checkpoint.path.parent, ignore_errors=True)
    return metrics
