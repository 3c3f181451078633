"""Calibration metrics against torchmetrics (ECE, MCE), numpy and scikit-learn (Brier)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss

from monteclora_pyro.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    reliability_bins,
)

torchmetrics = pytest.importorskip("torchmetrics")


def random_predictions(n: int, classes: int, seed: int, sharpness: float = 3.0):
    generator = torch.Generator().manual_seed(seed)
    probs = (sharpness * torch.randn(n, classes, generator=generator)).softmax(-1)
    labels = torch.randint(classes, (n,), generator=generator)
    return probs, labels


def reference_calibration_error(probs, labels, norm: str, num_bins: int = 15) -> float:
    """torchmetrics' multiclass calibration error (``l1``: ECE, ``max``: MCE)."""
    metric = torchmetrics.classification.MulticlassCalibrationError(
        num_classes=probs.shape[1], n_bins=num_bins, norm=norm
    )
    return metric(probs, labels).item()


@pytest.mark.parametrize("classes", [2, 3, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_bins", [1, 5, 15])
def test_ece_and_mce_match_torchmetrics(classes, seed, num_bins):
    probs, labels = random_predictions(500, classes, seed)
    ece = expected_calibration_error(probs, labels, num_bins)
    mce = maximum_calibration_error(probs, labels, num_bins)
    assert ece == pytest.approx(reference_calibration_error(probs, labels, "l1", num_bins), abs=1e-6)
    assert mce == pytest.approx(reference_calibration_error(probs, labels, "max", num_bins), abs=1e-6)
    assert 0 <= ece <= mce <= 1


def test_perfectly_calibrated_predictions_have_zero_error():
    # In every bin the fraction of correct predictions equals the (constant) confidence.
    probs = torch.tensor([[0.7, 0.3]] * 10 + [[0.1, 0.9]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 7 + [1] * 3 + [1] * 9 + [0] * 1)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert maximum_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert reference_calibration_error(probs, labels, "l1") == pytest.approx(0.0, abs=1e-6)


def test_all_predictions_in_one_bin():
    probs = torch.tensor([[0.62, 0.38], [0.35, 0.65], [0.61, 0.39], [0.36, 0.64]])
    labels = torch.tensor([0, 0, 1, 1])  # half correct, mean confidence 0.63
    bins = reliability_bins(probs, labels, num_bins=15)
    assert bins.counts.tolist() == [0] * 9 + [4] + [0] * 5
    assert bins.confidence[9].item() == pytest.approx(0.63)
    assert bins.accuracy[9].item() == pytest.approx(0.5)
    assert torch.isnan(bins.confidence[bins.counts == 0]).all()
    assert expected_calibration_error(probs, labels) == pytest.approx(0.13)
    assert maximum_calibration_error(probs, labels) == pytest.approx(0.13)
    assert reference_calibration_error(probs, labels, "l1") == pytest.approx(0.13)


def test_confident_predictions_land_in_the_last_bin():
    probs = torch.eye(3)[[0, 1, 2, 0]]
    labels = torch.tensor([0, 1, 0, 0])  # one confident mistake
    assert reliability_bins(probs, labels, num_bins=4).counts.tolist() == [0, 0, 0, 4]
    assert expected_calibration_error(probs, labels) == pytest.approx(0.25)
    assert maximum_calibration_error(probs, labels) == pytest.approx(0.25)


def test_reliability_bins_are_consistent_with_ece():
    probs, labels = random_predictions(300, 4, seed=3)
    bins = reliability_bins(probs, labels, num_bins=10)
    assert bins.edges.tolist() == pytest.approx(np.linspace(0, 1, 11).tolist())
    assert int(bins.counts.sum()) == 300
    occupied = bins.counts > 0
    weights = bins.counts[occupied].double() / 300
    gaps = (bins.accuracy[occupied] - bins.confidence[occupied]).abs()
    assert (weights * gaps).sum().item() == pytest.approx(expected_calibration_error(probs, labels, 10))
    lower, upper = bins.edges[:-1][occupied], bins.edges[1:][occupied]
    assert ((bins.confidence[occupied] >= lower) & (bins.confidence[occupied] <= upper)).all()


@pytest.mark.parametrize("classes", [2, 5])
def test_brier_score_matches_numpy_and_sklearn(classes):
    probs, labels = random_predictions(400, classes, seed=classes)
    probs = probs.double() / probs.double().sum(-1, keepdim=True)  # rows sum to 1 in float64 too
    p, y = probs.double().numpy(), labels.numpy()
    expected = np.mean(np.sum((p - np.eye(classes)[y]) ** 2, axis=1))
    assert brier_score(probs, labels) == pytest.approx(expected, rel=1e-12)
    sklearn_score = brier_score_loss(y, p, labels=list(range(classes)), scale_by_half=False)
    assert brier_score(probs, labels) == pytest.approx(sklearn_score, rel=1e-9)
    if classes == 2:  # the customary binary Brier score of the positive class is half of ours
        assert brier_score(probs, labels) == pytest.approx(2 * brier_score_loss(y, p[:, 1]), rel=1e-9)


def test_brier_score_extremes():
    labels = torch.tensor([0, 1, 2])
    assert brier_score(torch.eye(3), labels) == 0.0
    assert brier_score(torch.eye(3)[[1, 2, 0]], labels) == 2.0


@pytest.mark.parametrize(
    ("probs", "labels", "num_bins", "message"),
    [
        (torch.full((4, 2), 0.5), torch.tensor([0, 1, 0]), 15, "one entry per row"),
        (torch.full((4,), 0.5), torch.tensor([0, 1, 0, 1]), 15, "2-D"),
        (torch.full((4, 2), 0.5), torch.tensor([[0, 1, 0, 1]]), 15, "1-D"),
        (torch.full((4, 2), 0.5), torch.tensor([0, 1, 0, 1]), 0, "num_bins"),
        (torch.full((4, 2), 0.5), torch.tensor([0, 1, 0, 1]), 2.5, "num_bins"),
        (torch.tensor([[1.5, -0.5]] * 4), torch.tensor([0, 1, 0, 1]), 15, r"\[0, 1\]"),
        (torch.tensor([[float("nan"), 0.5]] * 4), torch.tensor([0, 1, 0, 1]), 15, r"\[0, 1\]"),
        (torch.full((4, 2), 0.5), torch.tensor([0, 1, 2, 1]), 15, "labels must lie"),
        (torch.full((4, 2), 0.5), torch.tensor([0.0, 1.0, 0.0, 1.0]), 15, "integer"),
        (torch.empty(0, 2), torch.empty(0, dtype=torch.long), 15, "empty"),
    ],
)
def test_invalid_inputs_raise(probs, labels, num_bins, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(probs, labels, num_bins)
    with pytest.raises(ValueError, match=message):
        maximum_calibration_error(probs, labels, num_bins)
    with pytest.raises(ValueError, match=message):
        reliability_bins(probs, labels, num_bins)
    if message != "num_bins":
        with pytest.raises(ValueError, match=message):
            brier_score(probs, labels)


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_temperature_scaling_recovers_the_temperature_that_made_the_labels(true_temperature):
    """Labels drawn from softmax(z / T0): the NLL-optimal temperature of softmax(z) is T0."""
    generator = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(20_000, 3, generator=generator)
    labels = torch.multinomial((logits / true_temperature).softmax(-1), 1, generator=generator).squeeze(-1)
    fitted = fit_temperature(logits.softmax(-1), labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    scaled = apply_temperature(logits.softmax(-1), fitted)
    torch.testing.assert_close(scaled, (logits / fitted).softmax(-1), rtol=1e-4, atol=1e-6)
    assert expected_calibration_error(scaled, labels) < expected_calibration_error(logits.softmax(-1), labels)
    with pytest.raises(ValueError, match=r"temperature = 0.0 must be > 0"):
        apply_temperature(scaled, 0.0)
