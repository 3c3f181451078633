"""Task metrics: accuracy, NLL and calibration for classification, correlations for regression, and
the GLUE metrics (Matthews correlation for CoLA, F1 for MRPC) from scikit-learn."""

from __future__ import annotations

import torch
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

from .calibration import (
    brier_score,
    calibrated_ece,
    debiased_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
)

__all__ = ["accuracy", "classification_metrics", "error_detection_auroc", "example_nll", "glue_metrics",
           "negative_log_likelihood", "regression_metrics"]


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (probs.argmax(-1) == labels).float().mean().item()


def example_nll(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(y_i) of each true label (probabilities clamped at 1e-12)."""
    return -probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1).clamp_min(1e-12).log()


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log p(y) of the true labels."""
    return example_nll(probs, labels).mean().item()


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> dict[str, float]:
    """accuracy, nll, ece and mce (``num_bins`` equal-width bins), the Brier score, the debiased L2 calibration
    error (``ece_debiased``) and the ECE a calibrated model with these confidences would score on these rows
    (``ece_floor``, with its spread ``ece_floor_std``)."""
    labels = labels.long()
    floor, floor_std = calibrated_ece(probs, num_bins)
    return {
        "accuracy": accuracy(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "ece": float(expected_calibration_error(probs, labels, num_bins)),
        "mce": float(maximum_calibration_error(probs, labels, num_bins)),
        "brier": float(brier_score(probs, labels)),
        "ece_debiased": debiased_calibration_error(probs, labels, num_bins),
        "ece_floor": floor,
        "ece_floor_std": floor_std,
    }


def error_detection_auroc(uncertainty: torch.Tensor, wrong: torch.Tensor) -> float | None:
    """The AUROC with which a higher ``uncertainty`` flags a wrong prediction (1: every wrong one above every right
    one; 0.5: chance), or None when the predictions are all right or all wrong."""
    wrong = torch.as_tensor(wrong).bool()
    if wrong.all() or not wrong.any():
        return None
    return float(roc_auc_score(wrong.numpy(), torch.as_tensor(uncertainty).double().numpy()))


def regression_metrics(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Pearson and Spearman correlation (scipy) and mean squared error."""
    x, y = predictions.double().numpy(), targets.double().numpy()
    return {
        "pearson": float(stats.pearsonr(x, y).statistic),
        "spearman": float(stats.spearmanr(x, y).statistic),
        "mse": float(((x - y) ** 2).mean()),
    }


def glue_metrics(task_metrics: tuple[str, ...], probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The task's official GLUE metrics beyond accuracy: ``matthews_correlation`` and ``f1``."""
    predicted, truth = probs.argmax(-1).numpy(), labels.long().numpy()
    out = {}
    if "matthews_correlation" in task_metrics:
        out["matthews_correlation"] = float(matthews_corrcoef(truth, predicted))
    if "f1" in task_metrics:
        out["f1"] = float(f1_score(truth, predicted))
    return out
