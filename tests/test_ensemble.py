"""The LoRA ensemble of the overfitting benchmark: the mixture of the map cells' predictives, from their files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from monteclora_pyro.calibration import apply_temperature
from monteclora_pyro.tasks.glue.overfitting import ENSEMBLE, _cell_dir, comparisons, ensemble
from monteclora_pyro.tasks.glue.settings import GlueRunConfig


def write_cell(task_dir, config, seed: int, metrics: dict, records: list[dict]) -> None:
    cell = _cell_dir(task_dir, "map", seed, config)
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(json.dumps(metrics))
    (cell / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_ensemble_mixes_its_members_class_probabilities(tmp_path):
    config = GlueRunConfig(task="sst2")
    members = {0: ([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], 1.5), 1: ([[0.7, 0.3], [0.1, 0.9], [0.2, 0.8]], 2.0)}
    labels = [0, 1, 0]
    for seed, (probs, temperature) in members.items():
        records = [{"row": row, "label": label, "probabilities": p, "nll": -math.log(p[label])}
                   for row, (p, label) in enumerate(zip(probs, labels, strict=True))]
        write_cell(tmp_path, config, seed, {"temperature": temperature}, records)
    assert ensemble("sst2", tmp_path, [0], config) is None  # one member is no ensemble
    result = ensemble("sst2", tmp_path, [0, 1, 2], config)  # seed 2 has no cell
    assert result["members"] == [0, 1]
    probs = torch.tensor([members[0][0], members[1][0]], dtype=torch.float64)
    expected = -probs.mean(0)[torch.arange(3), torch.tensor(labels)].log()
    assert list(result["nll"][ENSEMBLE].values()) == pytest.approx(expected.tolist())
    scaled = torch.stack([apply_temperature(probs[i], members[i][1]) for i in (0, 1)]).mean(0)
    expected_ts = -scaled[torch.arange(3), torch.tensor(labels)].log()
    assert list(result["nll"][ENSEMBLE + "+temperature"].values()) == pytest.approx(expected_ts.tolist())
    (plain, _) = result["rows"]
    assert plain["seed"] == "0,1" and plain["nll"] == pytest.approx(float(expected.mean()))
    assert plain["accuracy"] == pytest.approx(2 / 3)  # mixture: [0.8, 0.2], [0.2, 0.8], [0.4, 0.6]

    # against each seed's baseline: one pair per row and seed
    versus = comparisons(tmp_path, ["map"], [0, 1], config, num_resamples=200, ensemble_nll=result["nll"])
    row = next(r for r in versus if r["method"] == ENSEMBLE and r["baseline"] == "map")
    baseline = torch.tensor([[-math.log(members[s][0][r][labels[r]]) for r in range(3)] for s in (0, 1)])
    assert row["pairs"] == 6 and row["nll_difference"] == pytest.approx(float((expected - baseline).mean()))


def test_the_regression_ensemble_is_a_gaussian_mixture_at_the_members_noise_scale(tmp_path):
    config = GlueRunConfig(task="stsb")
    predictions, scales = {0: [1.0, 3.0], 1: [2.0, 2.5]}, {0: 0.5, 1: 1.0}
    targets = [1.5, 2.0]
    for seed in (0, 1):
        records = [{"row": r, "label": targets[r], "prediction": predictions[seed][r]} for r in range(2)]
        write_cell(tmp_path, config, seed, {"noise_scale": scales[seed], "holdout_noise_scale": 2 * scales[seed]},
                   records)
    result = ensemble("stsb", tmp_path, [0, 1], config)
    sigma = math.sqrt((0.5**2 + 1.0**2) / 2)
    for r in range(2):
        density = sum(math.exp(-0.5 * ((targets[r] - predictions[s][r]) / sigma) ** 2) for s in (0, 1)) / 2
        density /= sigma * math.sqrt(2 * math.pi)
        assert result["nll"][ENSEMBLE][r] == pytest.approx(-math.log(density))
    assert result["rows"][0]["metric"] == pytest.approx(1.0)  # Pearson of the mixture means (1.5, 2.75) and targets
