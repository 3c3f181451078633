"""The LoRA ensemble: of the overfitting benchmark (the mixture of the map cells' predictives, from their files),
and as a prior family of the engine (``ensemble``: members trained one after the other, their mixture)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

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


# ---------------------------------------------------------------- the ensemble as a prior family of the engine

def _ensemble_config(tmp_path, glue_dir, name: str, prior: str, **changes) -> GlueRunConfig:
    return GlueRunConfig(**{"task": "sst2", "data_dir": str(glue_dir), "output_dir": str(tmp_path / name),
                            "prior": prior, "max_steps": 3, "batch_size": 8, "num_samples": 3, "max_length": 32,
                            "max_train_samples": 24, "max_eval_samples": 16, "progress": False} | changes)


def _network_weights(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(directory / "adapter" / "posterior.safetensors")).items()
            if k.startswith("network.")}


def test_an_ensemble_trains_its_members_and_predicts_with_their_mixture(tmp_path, glue_dir):
    """members = 2: member 0 is the map run of the same seed (same weights), member 1 starts elsewhere and ends
    elsewhere; the predictive is the exact mean of the two members' class probabilities, whatever num_samples
    says, and the saved posterior gives it back in a new module."""
    from monteclora_pyro.adapters import load_adapter
    from monteclora_pyro.prediction import predict
    from monteclora_pyro.priors.ensemble import MEMBER
    from monteclora_pyro.tasks.glue.family import GlueFamily, run_glue
    from monteclora_pyro.tasks.glue.settings import default_model

    toml = tmp_path / "ensemble2.toml"
    toml.write_text('family = "ensemble"\nmembers = 2\n')
    metrics = run_glue(_ensemble_config(tmp_path, glue_dir, "ensemble", str(toml)))
    reference = run_glue(_ensemble_config(tmp_path, glue_dir, "map", "map"))
    assert metrics["members"] == 2 and metrics["steps"] == 6
    assert metrics["member_final_losses"][0] == reference["final_loss"]
    assert metrics["mean_nll"] == pytest.approx(reference["nll"])  # the point estimate is member 0

    saved = _network_weights(tmp_path / "ensemble")  # the weights at rest: member 0's
    for name, value in _network_weights(tmp_path / "map").items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0, msg=name)

    module, tokenizer = load_adapter(tmp_path / "ensemble" / "adapter", model=default_model())
    assert module.predictive_draws(7) == [{MEMBER: torch.tensor(0)}, {MEMBER: torch.tensor(1)}]
    family = GlueFamily(_ensemble_config(tmp_path, glue_dir, "unused", str(toml)))
    family.load_data(tokenizer)
    loader = family.loaders["dev"]
    predictions = predict(module, loader, num_samples=7, device=torch.device("cpu"))
    members = []
    with torch.no_grad():
        for k in (0, 1):
            draw = {MEMBER: torch.tensor(k)}
            probabilities = torch.cat([module.network_output(batch, draw).softmax(-1) for batch in loader])
            module.set_draws(draw)
            weights = {name: p.detach().clone() for name, p in module.network.named_parameters() if p.requires_grad}
            members.append((weights, probabilities))
    assert predictions["draws"].shape[1] == 2
    torch.testing.assert_close(predictions["predictive"], (members[0][1] + members[1][1]) / 2)
    lora_a = [name for name in members[0][0] if ".lora_A." in name]
    assert lora_a and all(not torch.equal(members[0][0][n], members[1][0][n]) for n in lora_a)
    assert not torch.allclose(members[0][1], members[1][1])
    records = [json.loads(line) for line in (tmp_path / "ensemble" / "predictions.jsonl").read_text().splitlines()]
    torch.testing.assert_close(torch.tensor([r["probabilities"] for r in records]), predictions["predictive"],
                               rtol=0, atol=1e-6)
    assert metrics["mutual_information"] > 0 and (tmp_path / "ensemble" / "posterior.nc").exists()


def test_an_interrupted_ensemble_resumes_at_the_member_it_was_training(tmp_path, glue_dir, monkeypatch):
    """Ctrl-C while member 1 trains; --resume takes member 0 from its finished checkpoint and member 1 from its
    own (at step 2 of 4), and ends with the weights of an uninterrupted run."""
    import monteclora_pyro.runner.pipeline as pipeline
    from monteclora_pyro.runner.training import method_loss
    from monteclora_pyro.tasks.glue.family import run_glue

    toml = tmp_path / "ensemble2.toml"
    toml.write_text('family = "ensemble"\nmembers = 2\n')
    uninterrupted = run_glue(_ensemble_config(tmp_path, glue_dir, "whole", str(toml), max_steps=4))
    calls, real_train = [], pipeline.train

    def interrupted_train(*args, **kwargs):
        calls.append(kwargs["checkpoint"].path.name)
        if len(calls) == 2:  # member 1: Ctrl-C during its second step
            steps = []

            def loss(module, batch, kl_weight):
                steps.append(batch)
                if len(steps) == 2:
                    os.kill(os.getpid(), signal.SIGINT)
                return method_loss(module, batch, kl_weight)

            kwargs["loss_fn"] = loss
        return real_train(*args, **kwargs)

    config = _ensemble_config(tmp_path, glue_dir, "cut", str(toml), max_steps=4)
    monkeypatch.setattr(pipeline, "train", interrupted_train)
    with pytest.raises(KeyboardInterrupt):
        run_glue(config)
    assert calls == ["checkpoint.pt", "checkpoint-member1.pt"]
    member_checkpoint = config.checkpoint_path().with_name("checkpoint-member1.pt")
    assert torch.load(member_checkpoint, weights_only=False)["step"] == 2
    trained_steps = []

    def counted_train(*args, **kwargs):  # how many steps each member still takes
        trained_steps.append(0)

        def loss(module, batch, kl_weight):
            trained_steps[-1] += 1
            return method_loss(module, batch, kl_weight)

        return real_train(*args, **kwargs | {"loss_fn": loss})

    monkeypatch.setattr(pipeline, "train", counted_train)
    resumed = run_glue(dataclasses.replace(config, resume=True, overwrite_output_dir=True))
    assert trained_steps == [0, 2]
    assert resumed["member_final_losses"] == uninterrupted["member_final_losses"]
    from safetensors.torch import load_file

    whole, cut = (load_file(str(tmp_path / run / "adapter" / "posterior.safetensors")) for run in ("whole", "cut"))
    assert "prior.member_weights" in whole  # both members' weights, the resumed member 1 included
    for name, value in whole.items():
        torch.testing.assert_close(cut[name], value, rtol=0, atol=0, msg=name)
    assert resumed["nll"] == pytest.approx(uninterrupted["nll"], abs=1e-6)


def test_an_ensemble_needs_two_members():
    from monteclora_pyro.declarations import PriorSpec

    with pytest.raises(ValueError, match=r"prior: members = 1 must be an integer >= 2 \(one member is 'map'\)"):
        PriorSpec(family="ensemble", members=1)


def test_a_regression_ensemble_reads_its_members_noise_scales(tmp_path, glue_dir):
    """STS-B: every member learns its own noise scale; the mixture's is their root mean square."""
    from monteclora_pyro.adapters import load_adapter
    from monteclora_pyro.priors.ensemble import MEMBER
    from monteclora_pyro.tasks.glue.family import run_glue
    from monteclora_pyro.tasks.glue.settings import default_model

    toml = tmp_path / "ensemble2.toml"
    toml.write_text('family = "ensemble"\nmembers = 2\n')
    metrics = run_glue(_ensemble_config(tmp_path, glue_dir, "stsb", str(toml), task="stsb"))
    module, _ = load_adapter(tmp_path / "stsb" / "adapter", model=default_model())
    scales = []
    for k in (0, 1):
        module.set_draws({MEMBER: torch.tensor(k)})
        scales.append(float(module.likelihood.log_scale.exp()))
    assert scales[0] != scales[1]
    assert metrics["noise_scale"] == pytest.approx(math.sqrt((scales[0] ** 2 + scales[1] ** 2) / 2), rel=1e-5)
    assert metrics["num_samples"] == 2 and math.isfinite(metrics["nll"])
