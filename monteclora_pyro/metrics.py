"""Metrics for classification predictions (class probabilities) and regression predictions."""

from __future__ import annotations

import torch
from scipy import stats

__all__ = ["accuracy", "negative_log_likelihood", "classification_metrics", "regression_metrics"]


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (probs.argmax(-1) == labels).float().mean().item()


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log p(y) of the true labels (probabilities clamped at 1e-12)."""
    picked = probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return (-picked.clamp_min(1e-12).log()).mean().item()


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"accuracy": accuracy(probs, labels), "nll": negative_log_likelihood(probs, labels)}


def regression_metrics(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Pearson and Spearman correlation (scipy) and mean squared error."""
    x, y = predictions.double().numpy(), targets.double().numpy()
    return {
        "pearson": float(stats.pearsonr(x, y).statistic),
        "spearman": float(stats.spearmanr(x, y).statistic),
        "mse": float(((x - y) ** 2).mean()),
    }
