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
from .data import GlueTask, default_glue_dir, get_task, load_glue, make_loader
from .declarations import PriorSpec, load_prior
from .diagnostics import posterior_inference_data, save_posterior
from .metrics import classification_metrics, glue_metrics, regression_metrics
from .peers import PEERS, peer_loss, peft_peer
from .plots import plot_elbo, plot_posterior_spread, plot_reliability
from .prediction import predict, predict_network
from .svi import TrainConfig, elbo_loss, train

__all__ = ["GlueRunConfig", "run_glue"]


@dataclass
class GlueRunConfig:
    """Everything one run needs; ``None`` fields resolve to the embedded defaults."""

    task: str = "rte"
    data_dir: str | None = None  # None: ../shared/data/glue (or $MONTECLORA_GLUE_DIR) if present, else the hub
    output_dir: str = "runs/svi_glue"
    prior: str = "monteclora"  # bundled name or path to a .toml declaration
    guide: str | None = None  # None: the family's own guide
    peer: str | None = None  # "peft-lora" or "peft-monteclora": train PEFT's method instead of ours
    model: str | None = None  # None: the packaged MiniLM (offline) or its hub id
    rank: int | None = None  # overrides the declaration's rank
    perturbation_scale: float | None = None  # overrides the declaration's eps
    lr: float = 5e-4
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 0
    num_samples: int = 8
    kl_weight: float = 1.0
    kl_anneal_steps: int = 0
    peft_kl_loss_weight: float = 1e-5
    dirichlet_sampler: str = "exact"
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    device: str = "auto"
    progress: bool = True

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
        return TrainConfig(lr=self.lr, epochs=self.epochs, max_steps=self.max_steps,
                           kl_anneal_steps=self.kl_anneal_steps, progress=self.progress)


def _report(predictions: dict[str, torch.Tensor], predictive: bool, task: GlueTask, module=None) -> dict[str, float]:
    """Metrics of the posterior-mean predictions (``mean_*``) and of the predictive ones (unprefixed).

    Regression NLL uses the learned Gaussian noise scale: the predictive is the mixture over draws.
    """
    labels = predictions["labels"]

    def metrics(values: torch.Tensor) -> dict[str, float]:
        if task.num_labels == 1:
            return regression_metrics(values, labels)
        return classification_metrics(values, labels) | glue_metrics(task.metrics, values, labels)

    report = {f"mean_{k}": v for k, v in metrics(predictions["mean"]).items()}
    report.update(metrics(predictions["predictive"] if predictive else predictions["mean"]))
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
                     config.max_eval_samples, config.seed)
    train_loader = make_loader(data["train"], tokenizer, config.batch_size, shuffle=True, seed=config.seed)
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

    start = time.perf_counter()
    history = train(module, train_loader, config.train_config(), loss_fn=loss_fn, device=device)
    train_seconds = time.perf_counter() - start

    metrics: dict[str, Any] = {
        "task": task.name, "prior": spec.name, "guide": config.guide if config.peer is None else None,
        "method": config.peer or spec.name, "seed": config.seed, "steps": history.steps,
        "train_seconds": train_seconds, "median_step_seconds": history.median_step_seconds(),
        "final_loss": history.loss[-1], "num_train": num_data,
        "num_samples": config.num_samples if config.peer is None else None,
    }
    for split in task.dev_splits:
        loader = make_loader(data[split], tokenizer, config.eval_batch_size, shuffle=False)
        if config.peer is None:
            predictions = predict(module, loader, config.num_samples, device)
        else:
            predictions = predict_network(module, loader, device, regression=task.num_labels == 1)
        report = _report(predictions, predictive=config.peer is None, task=task,
                         module=module if config.peer is None else None)
        first_split = split == task.dev_splits[0]
        metrics.update({("" if first_split else f"{split}_") + k: v for k, v in report.items()})
        if first_split and config.peer is None:
            _write_artifacts(output_dir, module, predictions, history, task)
        elif first_split and task.num_labels > 1:
            plot_reliability(predictions["mean"], predictions["labels"], output_dir / "plots" / "reliability.png")
    if config.peer is None:
        metrics["elbo_history"] = history.elbo_terms()
    atomic_write_json(output_dir / "metrics.json", metrics)
    return metrics


def load_metrics(output_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(output_dir) / "metrics.json").read_text())
