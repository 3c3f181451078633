"""The GLUE task family: a sequence classifier (or regressor, STS-B) scored on the dev set.

Its evaluation: the posterior-mean (``mean_*``) and S-draw predictive metrics (accuracy, NLL, ECE,
MCE, Brier and the task's GLUE metric; for regression correlations, MSE, and the NLL, quantile ECE
and CRPS of the predictive mixture), the post-hoc fix fitted on held-out training rows (``ts_*``:
temperature scaling, or for regression a refitted noise scale), MC dropout (``mcd_*``) when asked,
and the reliability diagram.  A regression predictive mixes N(draw, s) with s the noise around each
draw (:func:`~monteclora_pyro.regression_calibration.residual_noise_scale`), not the noise learned under q.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithPadding

from ...artifacts import atomic_write_jsonl
from ...backbones import load_classifier, output_layer
from ...calibration import apply_temperature, fit_temperature
from ...likelihoods import GaussianLikelihood, build_likelihood
from ...metrics import classification_metrics, glue_metrics, regression_metrics
from ...prediction import classification_records, mc_dropout, predict, uncertainty
from ...regression_calibration import (
    fit_noise_scale,
    mixture_log_density,
    probability_integral_transform,
    regression_calibration,
    residual_noise_scale,
)
from ...runner.pipeline import Evaluation, TaskFamily, make_loader, run
from ...runner.plots import plot_quantile_calibration, plot_reliability
from .data import load_glue
from .settings import GlueRunConfig, GlueTask

__all__ = ["GlueFamily", "dev_scores", "run_glue"]

NOISE_ROWS = 256  # training rows whose draws' spread is taken out of a noise scale learned under q


def dev_scores(predictive: torch.Tensor, labels: torch.Tensor, task: GlueTask, draws: torch.Tensor | None = None,
            scale: float | None = None) -> dict[str, float]:
    """Classification: accuracy, NLL, ECE, MCE, Brier and the task's GLUE metrics, from class probabilities.
    Regression: correlations and MSE of the predicted values, and with a noise ``scale`` the NLL,
    quantile ECE and CRPS of the mixture over the ``draws`` (examples x draws)."""
    if task.num_labels > 1:
        return classification_metrics(predictive, labels) | glue_metrics(task.metrics, predictive, labels)
    scores = regression_metrics(predictive, labels)
    if scale is not None:
        scores.update(regression_calibration(draws, labels, scale))
    return scores


def _report(predictions: dict[str, torch.Tensor], task: GlueTask, scale: float | None) -> dict[str, float]:
    """Metrics of the posterior-mean predictions (``mean_*``) and of the predictive ones (unprefixed)."""
    labels, mean = predictions["labels"], predictions["mean"]
    report = {f"mean_{k}": v for k, v in dev_scores(mean, labels, task, mean.reshape(len(mean), -1), scale).items()}
    if task.num_labels > 1:  # the predictive's mean entropy and its split (predictions.jsonl has each row's)
        report |= {k: float(v.mean()) for k, v in uncertainty(predictions["draws"]).items()}
    return report | dev_scores(predictions["predictive"], labels, task, predictions["draws"], scale)


def _per_example(predictions: dict[str, torch.Tensor], task: GlueTask, scale: float | None,
                 fitted: dict[str, Any], save_draws: bool = False) -> list[dict[str, Any]]:
    """One record per dev example (``predictions.jsonl``): its ``row`` in the task's file and ``label``; for
    classification the predictive's ``probabilities``, ``predicted`` class, NLL, entropy and its aleatoric /
    epistemic split, for regression the prediction, the draws' spread and the NLL; after the held-out fit,
    ``ts_nll``; with ``save_draws``, each draw's probabilities (or prediction), ``draws``."""
    labels = predictions["labels"]
    if task.num_labels > 1:
        return classification_records(predictions["predictive"], predictions["draws"], labels, predictions["rows"],
                                      fitted.get("temperature"), save_draws)
    columns = {"row": predictions["rows"], "label": labels, "prediction": predictions["predictive"],
               "draw_std": predictions["predictive_var"].sqrt()}
    if scale is not None:
        columns["nll"] = -mixture_log_density(predictions["draws"], labels, scale)
    if "holdout_noise_scale" in fitted:
        columns["ts_nll"] = -mixture_log_density(predictions["draws"], labels, fitted["holdout_noise_scale"])
    if save_draws:
        columns["draws"] = predictions["draws"]
    return [{name: values[i].tolist() for name, values in columns.items()} for i in range(len(labels))]


class GlueFamily(TaskFamily):
    """One GLUE task: its dev splits, a held-out part of the training rows when asked."""

    kind = "classifier"
    settings = GlueRunConfig

    def __init__(self, config: GlueRunConfig) -> None:
        super().__init__(config)
        self.task = self.config.glue_task()
        self.loaders: dict[str, Any] = {}
        self.target_scale = 1.0  # regression: the training targets' standard deviation (prepare_model)

    @property
    def num_labels(self) -> int:
        return self.task.num_labels

    def describe(self) -> dict[str, Any]:
        return {"task": self.task.name}

    def load_backbone(self, dtype=torch.float32):
        return load_classifier(self.config.model, self.task.num_labels, dtype)

    def load_data(self, tokenizer):
        config = self.config
        data = load_glue(self.task, config.data_dir, tokenizer, config.max_length, config.max_train_samples,
                         config.max_eval_samples, config.seed, config.holdout_fraction)
        collate = DataCollatorWithPadding(tokenizer)
        self.loaders = {split: make_loader(data[split], collate, config.eval_batch_size, shuffle=False)
                        for split in (*self.task.dev_splits, "holdout") if split in data}
        if self.task.num_labels == 1:
            rows = data["train"].select(range(min(NOISE_ROWS, len(data["train"]))))
            self.loaders["noise"] = make_loader(rows, collate, config.eval_batch_size, shuffle=False)
        return data["train"], collate

    def prepare_model(self, model, train_set) -> None:
        """Regression: the head starts at the targets' mean, and the noise scale at their standard deviation.
        From a zero mean, the first steps of LoRA push every example's output up alike and the
        representation collapses (``results/README.md``)."""
        if self.task.num_labels != 1:
            return
        labels = torch.tensor(train_set["labels"], dtype=torch.float64)
        spread = float(labels.std()) if len(labels) > 1 else 0.0
        self.target_scale = spread if spread > 0 else 1.0
        head = output_layer(model)
        if head.bias is not None:
            with torch.no_grad():
                head.bias.fill_(float(labels.mean()))

    def likelihood(self, peer: bool) -> nn.Module:
        if self.task.num_labels == 1:  # a regression peer trains on MSE: its noise scale is not learned
            return GaussianLikelihood(self.target_scale, learn_scale=not peer)
        return build_likelihood(self.task.num_labels)

    def _predictions(self, module, device, split: str, with_mean: bool = True,
                     num_samples: int | None = None) -> dict[str, torch.Tensor]:
        return predict(module, self.loaders[split], num_samples or self.config.num_samples, device, with_mean)

    def _noise(self, module, device, held_out: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Regression: ``noise_scale``, the predictive's noise around each draw.  With a scale learned under a
        posterior that is sampled, the residual one (``learned_noise_scale`` minus ``train_draw_variance``,
        the draws' spread on the first training rows); a point mass, or a posterior fitted or assembled
        after training (Laplace, an ensemble: the root mean square of its members'), learned its scale without
        draws and keeps it.  A peer trains
        on MSE and has none: its scale is the one fitted on the held-out rows, or none (no NLL or calibration)
        without them.  Classification: {}."""
        likelihood = module.likelihood
        if not likelihood.regression:
            return {}
        if not likelihood.learned:
            held_out = held_out if held_out is not None else self._held_out(module, device)
            return {} if held_out is None else {"noise_scale": fit_noise_scale(held_out["draws"], held_out["labels"])}
        if module.ensemble_size > 1:  # each member learned its own: their root mean square, as one mixture reads
            scales = []
            for draw in module.predictive_draws(1):
                module.set_draws(draw)
                scales.append(float(likelihood.log_scale.detach().exp()))
            module.set_draws({})
            return {"noise_scale": math.sqrt(sum(v * v for v in scales) / len(scales))}
        learned = float(likelihood.log_scale.detach().exp())
        if module.post_hoc:
            return {"noise_scale": learned}
        spread = float(self._predictions(module, device, "noise", with_mean=False)["predictive_var"].mean())
        return {"noise_scale": residual_noise_scale(learned, spread), "learned_noise_scale": learned,
                "train_draw_variance": spread}

    def _held_out(self, module, device) -> dict[str, torch.Tensor] | None:
        return self._predictions(module, device, "holdout", with_mean=False) if "holdout" in self.loaders else None

    def holdout_loader(self):
        return self.loaders.get("holdout")

    def epoch_scores(self, module, device) -> dict[str, float]:
        predictions = self._predictions(module, device, self.task.dev_splits[0], with_mean=False,
                                        num_samples=self.config.epoch_draws())
        scale = self._noise(module, device).get("noise_scale")
        return dev_scores(predictions["predictive"], predictions["labels"], self.task, predictions["draws"], scale)

    def _recalibrated_scores(self, predictions: dict[str, torch.Tensor], fitted: dict[str, Any]) -> dict[str, float]:
        """Scores after the post-hoc fix fitted on the held-out rows: the temperature, or the noise scale."""
        labels = predictions["labels"]
        if self.task.num_labels > 1:
            return dev_scores(apply_temperature(predictions["predictive"], fitted["temperature"]), labels, self.task)
        scale = fitted["holdout_noise_scale"]
        return dev_scores(predictions["predictive"], labels, self.task, predictions["draws"], scale)

    def evaluate(self, module, device, output_dir: Path) -> Evaluation:
        """Each dev split (the first unprefixed, others as ``<split>_*``), recalibrated on the held-out rows
        (``ts_*``: a temperature, or for regression a refitted noise scale) and with MC dropout when asked;
        each example's predictive in ``predictions.jsonl`` (``predictions_<split>.jsonl`` for the others)."""
        config, task = self.config, self.task
        held_out = self._held_out(module, device)
        metrics: dict[str, Any] = self._noise(module, device, held_out)
        scale = metrics.get("noise_scale")
        if held_out is not None:
            metrics["num_holdout"] = len(self.loaders["holdout"].dataset)
            if task.num_labels > 1:
                metrics["temperature"] = fit_temperature(held_out["predictive"], held_out["labels"])
            else:
                metrics["holdout_noise_scale"] = fit_noise_scale(held_out["draws"], held_out["labels"])
        evaluation = Evaluation(metrics)
        for split in task.dev_splits:
            predictions = self._predictions(module, device, split)
            report = _report(predictions, task, scale)
            if held_out is not None:
                report.update({f"ts_{k}": v for k, v in self._recalibrated_scores(predictions, metrics).items()})
            if config.mc_dropout_samples:
                dropout = mc_dropout(module, self.loaders[split], config.mc_dropout_samples, device)
                report.update({f"mcd_{k}": v for k, v in dev_scores(dropout["mean"], dropout["labels"], task,
                                                                 dropout["draws"], scale).items()})
            first_split = split == task.dev_splits[0]
            metrics.update({("" if first_split else f"{split}_") + k: v for k, v in report.items()})
            atomic_write_jsonl(output_dir / ("predictions.jsonl" if first_split else f"predictions_{split}.jsonl"),
                               _per_example(predictions, task, scale, metrics, config.save_draws))
            if first_split:
                labels = predictions["labels"]
                evaluation.epoch_scores = dev_scores(predictions["predictive"], labels, task, predictions["draws"],
                                                     scale)
                evaluation.observed = labels
                evaluation.log_likelihood = module.likelihood.draw_log_likelihood(predictions["draws"], labels)
                if task.num_labels > 1:
                    plot_reliability(predictions["predictive"], labels, output_dir / "plots" / "reliability.png")
                elif scale is not None:
                    pit = probability_integral_transform(predictions["draws"], labels, scale)
                    plot_quantile_calibration(pit, output_dir / "plots" / "reliability.png")
        return evaluation


def run_glue(config: GlueRunConfig) -> dict[str, Any]:
    """Train and evaluate one GLUE configuration (see :func:`~monteclora_pyro.runner.pipeline.run`)."""
    return run(GlueFamily(config))
