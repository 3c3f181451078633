"""One GLUE run end to end: validate, load, train (ours or a PEFT peer), predict, write results.

``experiments/svi_glue.py`` is the command-line client of :func:`run_glue`; benchmarks and sweeps
call it too.  Everything is validated before the model or data is loaded.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from .artifacts import atomic_run_dir, atomic_write_json
from .backbones import check_backbone, load_classifier, resolve_device
from .bayesian_lora import bayesian_lora_from_model
from .calibration import apply_temperature, fit_temperature
from .data import GlueTask, get_task, load_glue, make_loader
from .diagnostics import posterior_inference_data, save_posterior
from .metrics import classification_metrics, glue_metrics, regression_metrics
from .peers import peer_loss, peft_peer
from .plots import plot_elbo, plot_posterior_spread, plot_reliability
from .prediction import mc_dropout, predict, predict_network
from .run_config import GlueRunConfig
from .svi import elbo_loss, train

__all__ = ["GlueRunConfig", "run_glue"]


def _scores(probs: torch.Tensor, labels: torch.Tensor, task: GlueTask) -> dict[str, float]:
    """Classification metrics (accuracy, NLL, ECE, MCE, Brier) and the task's GLUE metrics; regression:
    correlations and MSE."""
    if task.num_labels == 1:
        return regression_metrics(probs, labels)
    return classification_metrics(probs, labels) | glue_metrics(task.metrics, probs, labels)


def _report(predictions: dict[str, torch.Tensor], predictive: bool, task: GlueTask, module=None) -> dict[str, float]:
    """Metrics of the posterior-mean predictions (``mean_*``) and of the predictive ones (unprefixed).

    Regression NLL uses the learned Gaussian noise scale: the predictive is the mixture over draws.
    """
    labels = predictions["labels"]
    report = {f"mean_{k}": v for k, v in _scores(predictions["mean"], labels, task).items()}
    report.update(_scores(predictions["predictive"] if predictive else predictions["mean"], labels, task))
    if task.num_labels == 1 and module is not None:
        scale = module.likelihood.log_scale.exp().detach().cpu()
        report["mean_nll"] = -torch.distributions.Normal(predictions["mean"], scale).log_prob(labels).mean().item()
        draws = _draw_log_likelihood(module, predictions)
        report["nll"] = -(draws.logsumexp(0) - math.log(draws.shape[0])).mean().item()
    return report


def _draw_log_likelihood(module, predictions: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(y_i | draw s) on the dev set, (draws x examples)."""
    labels, draws = predictions["labels"], predictions["draws"]
    if module.likelihood.regression:
        scale = module.likelihood.log_scale.exp().detach().cpu()
        return torch.distributions.Normal(draws, scale).log_prob(labels[:, None]).T
    picked = draws.gather(-1, labels.long()[:, None, None].expand(-1, draws.shape[1], 1)).squeeze(-1)
    return picked.clamp_min(1e-12).log().T


def _write_artifacts(output_dir: Path, module, predictions, history, task: GlueTask) -> None:
    """posterior.nc and the plots of one run of ours."""
    idata = posterior_inference_data(module, num_draws=200, observed=predictions["labels"],
                                     log_likelihood=_draw_log_likelihood(module, predictions))
    save_posterior(idata, output_dir / "posterior.nc")
    plot_posterior_spread(idata, output_dir / "plots" / "posterior.png")
    plot_elbo(history.elbo_terms(), output_dir / "plots" / "elbo.png", loss=history.loss)
    if task.num_labels > 1:
        plot_reliability(predictions["predictive"], predictions["labels"], output_dir / "plots" / "reliability.png")


def run_glue(config: GlueRunConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; writes ``config.json``, ``metrics.json``, ``posterior.nc`` and
    ``plots/`` into a staging folder that replaces ``output_dir`` only when the run has finished (a failed
    run leaves ``output_dir`` as it was and its own files in ``<output_dir>.failed``)."""
    config = config.resolved()
    spec = config.prior_spec()
    resolve_device(config.device)
    check_backbone(config.model, spec.targets, spec.rank, get_task(config.task).num_labels)
    with atomic_run_dir(config.output_dir) as staging:
        return _run(config, staging)


def _run(config: GlueRunConfig, output_dir: Path) -> dict[str, Any]:
    task = get_task(config.task)
    spec = config.prior_spec()
    atomic_write_json(output_dir / "config.json", config.record())

    pyro.set_rng_seed(config.seed)
    device = resolve_device(config.device)
    model, tokenizer = load_classifier(config.model, task.num_labels)
    data = load_glue(task, config.data_dir, tokenizer, config.max_length, config.max_train_samples,
                     config.max_eval_samples, config.seed, config.holdout_fraction)
    train_loader = make_loader(data["train"], tokenizer, config.batch_size, shuffle=True, seed=config.seed)
    loaders = {split: make_loader(data[split], tokenizer, config.eval_batch_size, shuffle=False)
               for split in (*task.dev_splits, "holdout") if split in data}
    num_data = len(data["train"])

    if config.peer is None:
        module = bayesian_lora_from_model(
            model, spec, num_data, task.num_labels, config.guide, config.kl_weight,
            {"dirichlet_sampler": config.dirichlet_sampler} if config.guide == "monteclora" else None,
            torch.bfloat16 if device.type == "cuda" else None,
        ).to(device)
        loss_fn = elbo_loss
    else:
        module = peft_peer(model, config.peer, spec, config.peft_kl_loss_weight).to(device)
        loss_fn = peer_loss

    def predictions_on(split: str, with_mean: bool = True) -> dict[str, torch.Tensor]:
        """The method's predictions on a split; ``predictive`` is what it scores (the mean for peers)."""
        if config.peer is None:
            return predict(module, loaders[split], config.num_samples, device, with_mean)
        predictions = predict_network(module, loaders[split], device, regression=task.num_labels == 1)
        return predictions | {"predictive": predictions["mean"]}

    epochs: list[dict[str, float]] = []

    total_epochs = math.ceil(config.train_config().total_steps(len(train_loader)) / len(train_loader))

    def evaluate_epoch(epoch: int) -> None:
        if epoch == total_epochs:  # the final evaluation below is the last epoch's
            return
        predictions = predictions_on(task.dev_splits[0], with_mean=False)
        epochs.append({"epoch": epoch} | _scores(predictions["predictive"], predictions["labels"], task))

    start = time.perf_counter()
    history = train(module, train_loader, config.train_config(), loss_fn=loss_fn, device=device,
                    on_epoch_end=evaluate_epoch if config.eval_each_epoch else None)
    train_seconds = time.perf_counter() - start

    metrics: dict[str, Any] = {
        "task": task.name, "prior": spec.name, "guide": config.guide if config.peer is None else None,
        "method": config.peer or spec.name, "seed": config.seed, "steps": history.steps,
        "train_seconds": train_seconds, "median_step_seconds": history.median_step_seconds(),
        "final_loss": history.loss[-1], "num_train": num_data,
        "num_samples": config.num_samples if config.peer is None else None,
    }
    temperature = None
    if "holdout" in loaders and task.num_labels > 1:
        held_out = predictions_on("holdout", with_mean=False)
        temperature = fit_temperature(held_out["predictive"], held_out["labels"])
        metrics.update(temperature=temperature, num_holdout=len(data["holdout"]))
    for split in task.dev_splits:
        predictions = predictions_on(split)
        report = _report(predictions, predictive=config.peer is None, task=task,
                         module=module if config.peer is None else None)
        if temperature is not None:
            scaled = apply_temperature(predictions["predictive"], temperature)
            report.update({f"ts_{k}": v for k, v in _scores(scaled, predictions["labels"], task).items()})
        if config.mc_dropout_samples:
            dropout = mc_dropout(module, loaders[split], config.mc_dropout_samples, device)
            report.update({f"mcd_{k}": v for k, v in _scores(dropout["mean"], dropout["labels"], task).items()})
        first_split = split == task.dev_splits[0]
        if first_split and config.eval_each_epoch:
            epochs.append({"epoch": total_epochs} | _scores(predictions["predictive"], predictions["labels"], task))
        metrics.update({("" if first_split else f"{split}_") + k: v for k, v in report.items()})
        if first_split and config.peer is None:
            _write_artifacts(output_dir, module, predictions, history, task)
        elif first_split and task.num_labels > 1:
            plot_reliability(predictions["mean"], predictions["labels"], output_dir / "plots" / "reliability.png")
    if epochs:
        metrics["epochs"] = epochs
    if config.peer is None:
        metrics["elbo_history"] = history.elbo_terms()
    atomic_write_json(output_dir / "metrics.json", metrics)
    return metrics


def load_metrics(output_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(output_dir) / "metrics.json").read_text())
