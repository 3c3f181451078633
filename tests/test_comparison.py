"""The instruments that tell methods apart: the paired bootstrap interval, the debiased calibration error,
the ECE floor of a calibrated model and the predictive's entropy split, each against a known answer."""

from __future__ import annotations

import math

import calibration as kumar  # uncertainty-calibration: the reference code of Kumar et al. 2019
import numpy as np
import pytest
import torch

from monteclora_pyro.calibration import calibrated_ece, debiased_calibration_error, expected_calibration_error
from monteclora_pyro.comparison import paired_bootstrap, spread_ratio_bootstrap
from monteclora_pyro.prediction import uncertainty


def clustered_differences(rng, rows: int, seeds: int, mean: float) -> tuple[list[int], np.ndarray]:
    """Differences with a per-row effect shared by every seed (hard rows stay hard) and per-seed noise."""
    row_effect = rng.standard_t(df=4, size=rows) * 0.3
    noise = rng.normal(0, 0.1, size=(seeds, rows))
    return [r for _ in range(seeds) for r in range(rows)], (mean + row_effect + noise).ravel()


def test_the_paired_bootstrap_interval_covers_the_true_difference_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    trials, covered, unclustered = 300, 0, 0
    for trial in range(trials):
        rows, differences = clustered_differences(rng, rows=200, seeds=3, mean=0.05)
        interval = paired_bootstrap(rows, differences, num_resamples=400, seed=trial)
        covered += interval["low"] <= 0.05 <= interval["high"]
        naive = paired_bootstrap(range(len(differences)), differences, num_resamples=400, seed=trial)
        unclustered += naive["low"] <= 0.05 <= naive["high"]
    assert 0.91 <= covered / trials <= 0.99  # 95 % nominal; the binomial sd over 300 trials is 1.3 points
    assert unclustered / trials < 0.85  # treating one row's seeds as independent rows is overconfident
    assert interval["rows"] == 200 and interval["pairs"] == 600


def test_the_paired_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([0, 1], [0.1])
    with pytest.raises(ValueError, match="must be finite"):
        paired_bootstrap([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match=r"level = 1.5 must be in \[0, 1\)"):
        paired_bootstrap([0], [0.1], level=1.5)


def test_the_spread_ratio_is_max_minus_min_of_the_seed_means_over_the_baselines():
    baseline = [[0.80, 0.70], [0.90, 0.80], [0.85, 0.85]]  # settings x seeds: seed-means 0.75, 0.85, 0.85
    steady = [[0.80, 0.80], [0.85, 0.85], [0.84, 0.82]]  # 0.80, 0.85, 0.83
    table = spread_ratio_bootstrap({"map": baseline, "steady": steady}, "map", num_resamples=200)
    assert table["map"]["spread"] == pytest.approx(0.10) and table["map"]["ratio"] == pytest.approx(1.0)
    assert table["steady"]["spread"] == pytest.approx(0.05) and table["steady"]["ratio"] == pytest.approx(0.5)
    assert table["steady"]["seed_mean"] == pytest.approx([0.80, 0.85, 0.83])
    assert table["map"]["seed_std"] == pytest.approx([math.sqrt(0.005), math.sqrt(0.005), 0.0])
    assert table["steady"]["low"] <= table["steady"]["ratio"] <= table["steady"]["high"]


def test_the_spread_ratio_resamples_seeds_paired_across_methods():
    rng = np.random.default_rng(0)
    baseline = rng.normal(0.8, 0.03, size=(4, 5))  # 4 learning rates x 5 seeds
    seed_effect = rng.normal(0, 0.05, size=5)  # a seed good at every setting, for every method
    # twice the baseline's swing plus a per-seed shift: its spread is twice the baseline's in every resample
    # of the seeds, but only if both methods get the same seeds
    doubled = 2 * baseline + seed_effect
    table = spread_ratio_bootstrap({"map": baseline, "doubled": doubled}, "map", num_resamples=500)
    assert table["doubled"]["ratio"] == pytest.approx(2.0)
    assert table["doubled"]["low"] == pytest.approx(2.0) and table["doubled"]["high"] == pytest.approx(2.0)


def test_the_spread_ratio_interval_narrows_onto_the_true_ratio_with_more_seeds():
    rng = np.random.default_rng(1)
    effect = np.array([0.0, 0.04, 0.08, 0.02])[:, None]  # the baseline's true swing: 0.08; the other's 0.04

    def interval(seeds: int) -> dict:
        scores = {"map": 0.8 + effect + rng.normal(0, 0.02, (4, seeds)),
                  "half": 0.8 + effect / 2 + rng.normal(0, 0.02, (4, seeds))}
        return spread_ratio_bootstrap(scores, "map", num_resamples=1000)["half"]

    few, many = interval(5), interval(400)
    assert many["low"] <= 0.5 <= many["high"] and many["high"] - many["low"] < 0.15
    assert few["high"] - few["low"] > 2 * (many["high"] - many["low"])


def test_the_spread_ratio_rejects_bad_input():
    with pytest.raises(ValueError, match="baseline = 'map' is not among"):
        spread_ratio_bootstrap({"a": [[0.1], [0.2]]}, "map")
    with pytest.raises(ValueError, match=r"scores\['a'\] has shape \(2, 3\)"):
        spread_ratio_bootstrap({"map": [[0.1, 0.2], [0.2, 0.3]], "a": [[0.1] * 3] * 2}, "map")
    with pytest.raises(ValueError, match="settings >= 2"):
        spread_ratio_bootstrap({"map": [[0.1, 0.2]]}, "map")
    with pytest.raises(ValueError, match=r"scores\['map'\] must be finite"):
        spread_ratio_bootstrap({"map": [[0.1], [float("nan")]]}, "map")


def test_a_sweeps_table_pairs_each_method_with_map_on_the_seeds_both_finished():
    from monteclora_pyro.runner.sweep import across_settings

    def row(method, lr, seed, metric):
        return {"method": method, "lr": lr, "batch_size": 32, "seed": seed, "metric": metric}

    rows = [row("map", lr, s, 0.8 + lr * 10 + s * 0.01) for lr in (1e-3, 2e-3) for s in (0, 1, 2)]
    rows += [row("other", lr, s, 0.8 + s * 0.01) for lr in (1e-3, 2e-3) for s in (0, 1)]  # seed 2 unfinished
    rows += [row("other", 1e-3, 2, 0.9), row("diverged", 1e-3, 0, None), row("diverged", 2e-3, 0, 0.5)]
    table = across_settings(rows, num_resamples=100)
    assert table["map"]["seeds"] == [0, 1, 2] and table["other"]["seeds"] == [0, 1]
    assert table["map"]["spread"] == pytest.approx(0.01) and table["other"]["ratio"] == pytest.approx(0.0, abs=1e-12)
    assert table["other"]["baseline_spread"] == pytest.approx(0.01)
    assert [s["lr"] for s in table["other"]["settings"]] == [1e-3, 2e-3]
    assert "diverged" not in table  # no seed with every setting finished
    assert across_settings([r for r in rows if r["lr"] == 1e-3]) == {}  # one setting: nothing to compare


@pytest.mark.parametrize("rows,classes", [(400, 2), (872, 2), (1000, 3), (37, 4)])
def test_the_debiased_calibration_error_equals_the_reference_implementation(rows, classes):
    rng = np.random.default_rng(rows)
    probs = torch.tensor(rng.normal(size=(rows, classes)) * 2).softmax(-1)
    labels = torch.tensor(rng.integers(0, classes, size=rows))
    reference = kumar.lower_bound_scaling_top_ce(probs.numpy(), labels.numpy(), p=2, debias=True, num_bins=15,
                                                 binning_scheme=kumar.get_equal_bins)
    assert debiased_calibration_error(probs, labels) == pytest.approx(reference, rel=1e-9, abs=1e-12)


def test_a_calibrated_model_scores_the_floor_and_the_debiased_error_removes_most_of_its_bias():
    rng = np.random.default_rng(1)
    rows = 400
    confidence = torch.tensor(rng.uniform(0.5, 1.0, size=rows))
    probs = torch.stack([confidence, 1 - confidence], dim=1)
    floor, spread = calibrated_ece(probs, draws=2000)
    eces, debiased = [], []
    for _ in range(200):  # labels drawn as the probabilities say: a perfectly calibrated model
        labels = torch.tensor((rng.uniform(size=rows) >= confidence.numpy()).astype(np.int64))
        eces.append(expected_calibration_error(probs, labels))
        debiased.append(debiased_calibration_error(probs, labels))
    assert np.mean(eces) == pytest.approx(floor, rel=0.08) and np.std(eces) == pytest.approx(spread, rel=0.2)
    assert np.mean(debiased) < 0.5 * floor  # the plug-in ECE of a calibrated model is all bias


def test_the_floor_of_one_confidence_is_the_mean_absolute_binomial_error():
    """All rows at confidence p fall in one bin: ECE = |mean(correct) - p|, E = sqrt(2 p (1 - p) / (pi n))."""
    probs = torch.tensor([[0.8, 0.2]]).repeat(400, 1)
    floor, _ = calibrated_ece(probs, draws=20_000)
    assert floor == pytest.approx(math.sqrt(2 * 0.8 * 0.2 / (math.pi * 400)), rel=0.05)


def test_the_entropy_splits_into_aleatoric_and_epistemic_parts():
    agree = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])  # every draw unsure: all aleatoric
    disagree = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # each draw sure, of another class: all epistemic
    for draws, aleatoric, epistemic in ((agree, math.log(2), 0.0), (disagree, 0.0, math.log(2))):
        parts = uncertainty(draws)
        assert parts["entropy"].item() == pytest.approx(math.log(2))
        assert parts["expected_entropy"].item() == pytest.approx(aleatoric, abs=1e-9)
        assert parts["mutual_information"].item() == pytest.approx(epistemic, abs=1e-9)
    mixed = torch.tensor(np.random.default_rng(0).dirichlet([1, 1, 1], size=(5, 4)))
    parts = uncertainty(mixed)
    torch.testing.assert_close(parts["entropy"], parts["expected_entropy"] + parts["mutual_information"])
    assert (parts["mutual_information"] >= 0).all()


def test_the_error_detection_auroc_ranks_wrong_predictions_above_right_ones():
    from monteclora_pyro.metrics import error_detection_auroc

    wrong = torch.tensor([False, False, True, True])
    assert error_detection_auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), wrong) == 1.0
    assert error_detection_auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), wrong) == 0.0
    assert error_detection_auroc(torch.tensor([0.1, 0.8, 0.2, 0.9]), wrong) == 0.75  # 3 of the 4 pairs ordered
    assert error_detection_auroc(torch.ones(4), torch.zeros(4, dtype=torch.bool)) is None


def test_a_mixture_averages_the_members_and_keeps_their_draws():
    from monteclora_pyro.prediction import mixture

    labels = torch.tensor([0, 1])
    first = {"labels": labels, "predictive": torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
             "draws": torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]]]), "mean": torch.tensor([[0.9, 0.1], [0.2, 0.8]])}
    second = {"labels": labels, "predictive": torch.tensor([[0.5, 0.5], [0.4, 0.6]]),
              "draws": torch.tensor([[[0.5, 0.5]], [[0.4, 0.6]]]), "mean": torch.tensor([[0.5, 0.5], [0.4, 0.6]])}
    both = mixture([first, second])
    torch.testing.assert_close(both["predictive"], torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    assert both["draws"].shape == (2, 2, 2)
    split = uncertainty(both["draws"])  # the members disagree on row 0 more than on row 1
    assert split["mutual_information"][0] > split["mutual_information"][1] > 0
    with pytest.raises(ValueError, match="not of the same rows"):
        mixture([first, second | {"labels": torch.tensor([1, 1])}])
