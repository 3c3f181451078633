"""One GLUE run end to end: validate, load, train (ours or a PEFT peer), predict, write results.

``experiments/svi_glue.py`` is the command-line client of :func:`run_glue`; benchmarks and sweeps
call it too.  Everything is validated before the model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from .artifacts import atomic_write_json
from .backbones import default_model, load_classifier, resolve_device
from .bayesian_lora import DEFAULT_GUIDES, bayesian_lora_from_model
from .calibration import apply_temperature, fit_temperature
from .cli_types import nonnegative_float, nonnegative_int, optional, positive_float, positive_int
from .config_cli import option
from .data import GlueTask, default_glue_dir, get_task, load_glue, make_loader
from .declarations import PriorSpec, load_prior
from .diagnostics import posterior_inference_data, save_posterior
from .metrics import classification_metrics, glue_metrics, regression_metrics
from .peers import PEERS, peer_loss, peft_peer
from .plots import plot_elbo, plot_posterior_spread, plot_reliability
from .prediction import mc_dropout, predict, predict_network
from .svi import TrainConfig, elbo_loss, train

__all__ = ["GlueRunConfig", "run_glue"]


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
        from monteclora_pyro.guides import GUIDES

        if guide not in GUIDES:
            raise ValueError(f"guide = {guide!r} is unknown; available: {', '.join(sorted(GUIDES))}")
        if spec.family not in GUIDES[guide].families:  # type: ignore[attr-defined]
            raise ValueError(f"guide = {guide!r} does not fit prior family {spec.family!r}; "
                             f"use {DEFAULT_GUIDES[spec.family]!r}")
        self.train_config()  # validates lr, epochs, max_steps, ...
        resolve_device(self.device)
        return dataclasses.replace(
            self,
            task=task.name,
            data_dir=str(data_dir) if data_dir is not None else None,
            guide=guide,
            model=self.model or default_model(),
            rank=spec.rank,
        )

    def record(self) -> dict[str, Any]:
        """The configuration as written to ``config.json``: every field, and the prior declaration it loads."""
        return dataclasses.asdict(self) | {"prior_spec": dataclasses.asdict(self.prior_spec())}

    def prior_spec(self) -> PriorSpec:
        return load_prior(self.prior, rank=self.rank, perturbation_scale=self.perturbation_scale)

    def train_config(self) -> TrainConfig:
        return TrainConfig(lr=self.lr, variational_lr=self.variational_lr, weight_decay=self.weight_decay,
                           warmup_ratio=self.warmup_ratio, epochs=self.epochs, max_steps=self.max_steps,
                           grad_clip=self.grad_clip, kl_anneal_steps=self.kl_anneal_steps, progress=self.progress)


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
    """Train and evaluate one configuration; writes ``config.json`` and ``metrics.json`` to output_dir."""
    config = config.resolved()
    task = get_task(config.task)
    spec = config.prior_spec()
    output_dir = Path(config.output_dir)
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
