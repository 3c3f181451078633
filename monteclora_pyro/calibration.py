"""Calibration of class-probability predictions: ECE, MCE, Brier score, reliability bins, and
temperature scaling (Guo et al. 2017), the post-hoc fix users reach for first.

``probs`` is an (n x C) tensor of class probabilities and ``labels`` an (n,) tensor of integer
classes.  The binned metrics use the confidence ``max_c probs[i, c]`` and whether its class is the
label, in ``num_bins`` equal-width bins ``[k / M, (k + 1) / M)``, the last one closed at 1 (the
convention of torchmetrics' ``MulticlassCalibrationError``, except that torchmetrics gives a
confidence of exactly 1 a bin of its own).  Everything is computed in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .kinds import positive_int

__all__ = [
    "ReliabilityBins",
    "brier_score",
    "apply_temperature",
    "calibrated_ece",
    "debiased_calibration_error",
    "expected_calibration_error",
    "fit_temperature",
    "maximum_calibration_error",
    "reliability_bins",
]


class ReliabilityBins(NamedTuple):
    """Per-bin statistics of a reliability diagram; ``confidence`` / ``accuracy`` are NaN in empty bins.

    edges: the num_bins + 1 bin boundaries, 0 to 1.  confidence: mean confidence per bin.
    accuracy: fraction of correct top-1 predictions per bin.  counts: examples per bin.
    """

    edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    counts: torch.Tensor


def _validate(probs: torch.Tensor, labels: torch.Tensor, num_bins: int | None = None) -> None:
    if probs.dim() != 2:
        raise ValueError(f"probs must be a 2-D (examples x classes) tensor; got shape {tuple(probs.shape)}")
    if labels.dim() != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels must be a 1-D tensor with one entry per row of probs ({probs.shape[0]}); "
            f"got shape {tuple(labels.shape)}"
        )
    if probs.shape[0] == 0:
        raise ValueError("probs and labels are empty")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer classes; got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {probs.shape[1] - 1}] (the columns of probs); "
            f"got values from {labels.min().item()} to {labels.max().item()}"
        )
    if not ((probs >= 0) & (probs <= 1)).all():
        raise ValueError(
            "probs must be probabilities in [0, 1] (got values outside it, or NaN); pass softmax(logits)"
        )
    if num_bins is not None:
        positive_int.check("num_bins", num_bins)


def _equal_width_bins(confidence: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the bin edges, each confidence's bin): ``[k / M, (k + 1) / M)``, the last bin closed at 1."""
    edges = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64, device=confidence.device)
    return edges, (torch.bucketize(confidence, edges, right=True) - 1).clamp(max=num_bins - 1)


def _binned_sums(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(edges, per-bin sum of confidences, per-bin number correct, per-bin count), all float64."""
    _validate(probs, labels, num_bins)
    confidence, predicted = probs.detach().double().max(dim=-1)
    correct = (predicted == labels.to(predicted.device)).double()
    edges, index = _equal_width_bins(confidence, num_bins)
    zeros = torch.zeros(num_bins, dtype=torch.float64, device=confidence.device)
    return (
        edges,
        zeros.index_add(0, index, confidence),
        zeros.index_add(0, index, correct),
        zeros.index_add(0, index, torch.ones_like(confidence)),
    )


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> ReliabilityBins:
    """Mean confidence, accuracy and count of each equal-width confidence bin (for plotting)."""
    edges, confidence_sum, correct_sum, counts = _binned_sums(probs, labels, num_bins)
    occupied = counts.where(counts > 0, torch.nan)
    return ReliabilityBins(edges, confidence_sum / occupied, correct_sum / occupied, counts.long())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> float:
    """ECE = sum_k (n_k / n) |acc_k - conf_k| over equal-width confidence bins."""
    _, confidence_sum, correct_sum, counts = _binned_sums(probs, labels, num_bins)
    return ((correct_sum - confidence_sum).abs().sum() / counts.sum()).item()


def calibrated_ece(probs: torch.Tensor, num_bins: int = 15, draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the ECE that a perfectly calibrated model with these confidences scores on this many rows.

    Each draw makes every prediction correct with probability its confidence, as calibration means,
    and scores the draw's ECE: the ECE that sampling noise alone gives, the floor below which a
    method's ECE says nothing.
    """
    _validate(probs, torch.zeros(len(probs), dtype=torch.long), num_bins)
    positive_int.check("draws", draws)
    confidence = probs.detach().double().max(dim=-1).values.cpu()
    generator = torch.Generator().manual_seed(seed)
    correct = (torch.rand(draws, len(confidence), generator=generator, dtype=torch.float64) < confidence).double()
    _, index = _equal_width_bins(confidence, num_bins)
    gap = torch.zeros(draws, num_bins, dtype=torch.float64).index_add(1, index, correct - confidence)
    ece = gap.abs().sum(-1) / len(confidence)
    return ece.mean().item(), ece.std().item()


def debiased_calibration_error(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> float:
    """The debiased top-label L2 calibration error of Kumar et al. 2019 (arXiv 1909.10155), over equal-mass bins.

    Per bin b of n_b rows, ``(conf_b - acc_b)^2 - acc_b (1 - acc_b) / (n_b - 1)`` removes the sampling
    variance that inflates the plug-in estimate; the weighted sum is clipped at 0 before the square root.
    The same estimate as ``uncertainty-calibration``'s ``lower_bound_scaling_top_ce(p=2, debias=True)``.
    """
    _validate(probs, labels, num_bins)
    confidence, predicted = probs.detach().double().max(dim=-1)
    correct = (predicted == labels.to(predicted.device)).double()
    ordered = confidence.sort().values.cpu().numpy()
    parts = np.array_split(ordered, min(num_bins, len(ordered)))
    inner = sorted({(a[-1] + b[0]) / 2 for a, b in zip(parts[:-1], parts[1:], strict=True)} | {1.0})
    index = torch.searchsorted(torch.tensor(inner, dtype=torch.float64), confidence.cpu())  # as bisect_left
    zeros = torch.zeros(len(inner), dtype=torch.float64)
    counts = zeros.index_add(0, index, torch.ones_like(confidence.cpu()))
    gap_sum = zeros.index_add(0, index, (confidence - correct).cpu())
    accuracy_sum = zeros.index_add(0, index, correct.cpu())
    filled = counts > 1  # a bin of one row has no variance estimate and counts 0, as in the reference
    n, accuracy = counts[filled], accuracy_sum[filled] / counts[filled]
    square = (gap_sum[filled] / n).pow(2) - accuracy * (1 - accuracy) / (n - 1)
    return float((n / counts.sum() * square).sum().clamp_min(0).sqrt())


def maximum_calibration_error(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> float:
    """MCE = max_k |acc_k - conf_k| over the non-empty equal-width confidence bins."""
    _, confidence_sum, correct_sum, counts = _binned_sums(probs, labels, num_bins)
    occupied = counts > 0
    return ((correct_sum[occupied] - confidence_sum[occupied]).abs() / counts[occupied]).max().item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over examples of sum_c (probs[i, c] - onehot(labels)[i, c])^2, in [0, 2].

    For two classes this is twice the binary Brier score of the positive class
    (``sklearn.metrics.brier_score_loss``'s default halving).
    """
    _validate(probs, labels)
    probs = probs.detach().double()
    onehot = torch.nn.functional.one_hot(labels.long().to(probs.device), probs.shape[1]).double()
    return (probs - onehot).pow(2).sum(-1).mean().item()


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature T > 0 minimizing the NLL of ``softmax(log probs / T)`` on held-out rows.

    One scalar fitted by L-BFGS over log T (Guo et al. 2017, "On calibration of modern neural networks").
    """
    _validate(probs, labels)
    log_probs = probs.double().clamp_min(1e-12).log()
    labels = labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(log_probs / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(log probs / T)``: the probabilities re-scaled by a fitted temperature."""
    if not temperature > 0:
        raise ValueError(f"temperature = {temperature!r} must be > 0")
    return (probs.double().clamp_min(1e-12).log() / temperature).softmax(-1).to(probs.dtype)
