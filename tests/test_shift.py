"""The Laplace approximation of a causal LM and the calibration-under-shift benchmark, on tiny random LLaMAs:
the token likelihood's Monte Carlo Fisher against the exact GGN, the finite-difference draws against the
linearized network by forward-mode AD, a post-hoc fit to a trained adapter, held-out temperatures, and the
benchmark end to end (resumable)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from test_commonsense import data_dir, tiny_llama  # noqa: F401  (the fixtures)
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaConfig, LlamaForCausalLM

from monteclora_pyro.bayesian_lora import bayesian_lora_from_model
from monteclora_pyro.declarations import load_prior
from monteclora_pyro.laplace import LINEARIZATION_STEP, diagonal_ggn, finite_difference_draws, linearized_values
from monteclora_pyro.likelihoods import CategoricalLikelihood, TokenLikelihood
from monteclora_pyro.lora_sites import inject_lora
from monteclora_pyro.tasks.commonsense.family import CommonsenseFamily, LeftPaddedBatches, run_commonsense
from monteclora_pyro.tasks.commonsense.settings import CommonsenseRunConfig
from monteclora_pyro.tasks.commonsense.shift import run_shift


def small_vocabulary_laplace(vocab: int = 12):
    """A laplace module on a 1-layer LLaMA of ``vocab`` tokens, B away from 0 (where A's gradients vanish)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    spec = load_prior("laplace", rank=2, alpha=4.0, targets=("q_proj", "v_proj"))
    network = inject_lora(LlamaForCausalLM(config), spec.targets, spec.rank, spec.alpha)
    module = bayesian_lora_from_model(network, spec, num_data=3, likelihood=TokenLikelihood())
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.5)
    return module.eval()


def token_batch(vocab: int = 12) -> dict[str, torch.Tensor]:
    """Three left-padded sequences, each scoring its last tokens (one of them 2, the others 3)."""
    generator = torch.Generator().manual_seed(1)
    rows = [{"prefix": torch.randint(0, vocab, (n,), generator=generator).tolist(),
             "target": torch.randint(0, vocab, (r,), generator=generator).tolist()}
            for n, r in ((4, 3), (2, 2), (5, 3))]
    return LeftPaddedBatches(pad_id=0)(rows)


def test_token_fisher_averages_to_the_exact_ggn():
    """The one-sample Monte Carlo Fisher of the response tokens, averaged over draws, is the GGN
    sum_t J_t^T (diag p_t - p_t p_t^T) J_t, computed exactly one example and one token class at a time."""
    module, batch = small_vocabulary_laplace(), token_batch()
    parameters = [module._layers[s.parameter].weight for g in module.groups for s in g.sites]
    exact = torch.zeros(sum(p.numel() for p in parameters))
    for n in range(len(batch["labels"])):
        single = {k: v[n:n + 1] for k, v in batch.items()}
        logits, _, mask = TokenLikelihood._aligned(module.network_output(single, {}), single["labels"])
        roots = CategoricalLikelihood().ggn_outputs(logits[0][mask[0]])  # tokens x classes: Lambda's square root
        for value in roots.flatten():
            grads = torch.autograd.grad(value, parameters, retain_graph=True)
            exact += torch.cat([g.flatten() for g in grads]).square()
    draws = 300
    estimate = sum(torch.cat([v.flatten() for v in diagonal_ggn(module, [batch], torch.device("cpu")).values()])
                   for _ in range(draws)) / draws
    relative = float((estimate - exact).norm() / exact.norm())
    assert relative < 0.12, relative  # Monte Carlo error of 300 draws; a wrong Lambda is off by far more
    one = torch.cat([v.flatten() for v in diagonal_ggn(module, [batch], torch.device("cpu")).values()])
    assert float((one - exact).norm() / exact.norm()) > relative  # a single draw is noisier than their mean


def sequence_scores(module, batch, factors) -> torch.Tensor:
    return TokenLikelihood().sequence_log_prob(module.network_output(batch, factors), batch["labels"])


def test_finite_difference_draws_are_the_linearized_network():
    """f(theta* +- h delta) read by linearized_values equals f* + J delta from forward-mode AD, within the
    O(h^2) error of central differences, for the log-likelihoods of whole responses."""
    module, batch = small_vocabulary_laplace(), token_batch()
    module.fit_posterior([batch], torch.device("cpu"))
    (plus, minus), steps = finite_difference_draws(module, 1)
    means = {name: module.network.get_parameter(name).detach() for name in plus}
    tangent = {name: (value - means[name]) / float(steps[0]) for name, value in plus.items()}
    torch.testing.assert_close({n: means[n] - float(steps[0]) * tangent[n] for n in plus}, minus)
    widths = [float(tangent[n].norm() / means[n].norm()) for n in plus]
    assert max(widths) > 1 and float(steps[0]) < LINEARIZATION_STEP  # a wide posterior: the step shrinks
    with torch.no_grad():
        base = sequence_scores(module, batch, {})
        moved = torch.stack([sequence_scores(module, batch, plus), sequence_scores(module, batch, minus)], 1)
        with forward_ad.dual_level(), sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no forward AD
            dual = {name: forward_ad.make_dual(means[name], tangent[name]) for name in plus}
            jvp = forward_ad.unpack_dual(sequence_scores(module, batch, dual)).tangent
    linear = linearized_values(base[:, None, None], moved[..., None], steps)[:, 0, 0]
    assert float(jvp.abs().max()) > 0.1  # the draw moves the outputs
    torch.testing.assert_close(linear, base + jvp, atol=0.01 * float(jvp.abs().max()), rtol=0)
    with torch.no_grad():  # the network at the draw itself is not the linearized one
        sampled = sequence_scores(module, batch, {n: means[n] + tangent[n] for n in plus})
    assert not torch.allclose(sampled, base + jvp, atol=0.01 * float(jvp.abs().max()))


def commonsense_config(tiny_llama, data_dir, tmp_path, **fields) -> CommonsenseRunConfig:  # noqa: F811
    return CommonsenseRunConfig(**{
        "model": tiny_llama, "data_dir": str(data_dir), "output_dir": str(tmp_path / "out"),
        "train_tasks": "openbookqa", "eval_tasks": "openbookqa,ARC-Easy", "max_train_samples": 12,
        "holdout_fraction": 0.25, "answer_format": "text", "max_steps": 2, "batch_size": 4, "max_eval_examples": 6,
        "eval_seed": 0, "num_samples": 2, "progress": False, "prior": "map"} | fields)


def test_a_laplace_posterior_fitted_to_a_trained_adapter(tiny_llama, data_dir, tmp_path):  # noqa: F811
    """--init-adapter with --max-steps 0 fits the Laplace approximation around a map run's weights: the same
    posterior mean, a fitted prior precision, a temperature from the held-out rows, every row's predictive."""
    trained = run_commonsense(commonsense_config(tiny_llama, data_dir, tmp_path, output_dir=str(tmp_path / "map")))
    fitted = run_commonsense(commonsense_config(tiny_llama, data_dir, tmp_path, prior="laplace", max_steps=0,
                                                init_adapter=str(tmp_path / "map" / "adapter")))
    assert fitted["steps"] == 0 and fitted["prior_precision"] > 0 and fitted["num_holdout"] == 3
    for task in ("openbookqa", "ARC-Easy"):
        assert fitted[task]["mean_nll"] == pytest.approx(trained[task]["mean_nll"], rel=1e-5)
        assert fitted[task]["mutual_information"] > 0 == trained[task]["mutual_information"]
        assert fitted[task]["ts_nll"] > 0 and trained[task]["ts_accuracy"] == trained[task]["accuracy"]
        records = [json.loads(line) for line in (tmp_path / "out" / f"predictions_{task}.jsonl").open()]
        assert len(records) == 6 and all(abs(sum(r["probabilities"]) - 1) < 1e-6 for r in records)
        assert {r["row"] for r in records} == {json.loads(line)["row"] for line in
                                               (tmp_path / "map" / f"predictions_{task}.jsonl").open()}
    with pytest.raises(ValueError, match="init_adapter = .* is not a saved posterior"):
        commonsense_config(tiny_llama, data_dir, tmp_path, init_adapter=str(tmp_path)).resolved()


def test_an_ensemble_of_a_causal_lm_mixes_its_members(tiny_llama, data_dir, tmp_path):  # noqa: F811
    """The ensemble family on the commonsense runner: member 0 is the map run, the mixture of two members
    disagrees (mutual information > 0) and its posterior-mean scores are member 0's."""
    toml = tmp_path / "ensemble2.toml"
    toml.write_text('family = "ensemble"\nmembers = 2\n')
    trained = run_commonsense(commonsense_config(tiny_llama, data_dir, tmp_path, output_dir=str(tmp_path / "map")))
    mixed = run_commonsense(commonsense_config(tiny_llama, data_dir, tmp_path, prior=str(toml)))
    assert mixed["members"] == 2 and mixed["steps"] == 2 * trained["steps"]
    assert mixed["member_final_losses"][0] == trained["final_loss"]
    for task in ("openbookqa", "ARC-Easy"):
        assert mixed[task]["mean_nll"] == pytest.approx(trained[task]["mean_nll"], rel=1e-6)
        assert mixed[task]["mutual_information"] > 0 == trained[task]["mutual_information"]


def test_held_out_temperature_scores_every_seed_on_the_same_rows(tiny_llama, data_dir, tmp_path):  # noqa: F811
    config = commonsense_config(tiny_llama, data_dir, tmp_path)
    family = CommonsenseFamily(config)
    _, tokenizer = family.load_backbone()
    train_set, _ = family.load_data(tokenizer)
    other = CommonsenseFamily(commonsense_config(tiny_llama, data_dir, tmp_path, seed=1))
    other.load_data(tokenizer)
    assert len(train_set) == 9 and len(family.holdout) == 3
    assert family.eval_sets["ARC-Easy"]["row"] == other.eval_sets["ARC-Easy"]["row"]  # eval_seed fixes them
    unfixed = CommonsenseFamily(commonsense_config(tiny_llama, data_dir, tmp_path, seed=1, eval_seed=None))
    unfixed.load_eval_sets(tokenizer)
    assert unfixed.eval_sets["ARC-Easy"]["row"] != family.eval_sets["ARC-Easy"]["row"]


def test_shift_benchmark_end_to_end_and_resumable(tiny_llama, data_dir, tmp_path):  # noqa: F811
    base = commonsense_config(tiny_llama, data_dir, tmp_path, lr=1e-3)
    out = tmp_path / "shift"
    summary = run_shift(base, ["map", "laplace", "monteclora_scaled_ab"], [0, 1], out)
    cells = out / "cells"
    map_cell = json.loads((cells / "map_lr0.001_bs4_seed0" / "metrics.json").read_text())
    laplace_cell = json.loads((cells / "laplace_lr0.001_bs4_seed0" / "metrics.json").read_text())
    assert laplace_cell["steps"] == 0 and map_cell["steps"] == 2
    assert laplace_cell["ARC-Easy"]["mean_nll"] == pytest.approx(map_cell["ARC-Easy"]["mean_nll"], rel=1e-5)
    for task in ("openbookqa", "ARC-Easy"):
        methods = summary["tasks"][task]["methods"]
        assert {"map", "map+temperature", "laplace", "laplace+temperature", "monteclora_scaled_ab",
                "map_ensemble", "map_ensemble+temperature"} <= set(methods)
        assert methods["map"]["nll"]["seeds"] == 2
        versus = {(r["method"], r["baseline"]): r for r in summary["tasks"][task]["nll_versus"]}
        assert versus["laplace", "map"]["rows"] == 6 and versus["laplace", "map"]["pairs"] == 12
        assert versus["map_ensemble", "map+temperature"]["low"] <= versus["map_ensemble", "map+temperature"]["high"]
        rows = list(csv.DictReader((out / f"{task}.csv").open()))
        assert float([r for r in rows if r["method"] == "map" and r["seed"] == "0"][0]["nll"]) == pytest.approx(
            map_cell[task]["nll"])
    shift = list(csv.DictReader((out / "shift_auroc.csv").open()))
    assert {r["method"] for r in shift} == {"map", "laplace", "monteclora_scaled_ab", "map_ensemble"}
    assert all(0 <= float(r["auroc_entropy"]) <= 1 and r["shifted_task"] == "ARC-Easy" for r in shift)
    assert "| `laplace` | ARC-Easy |" in (out / "summary.md").read_text()
    written = {p: p.stat().st_mtime_ns for p in cells.glob("*/metrics.json")}
    again = run_shift(base, ["map", "laplace", "monteclora_scaled_ab"], [0, 1], out)  # nothing reruns
    assert {p: p.stat().st_mtime_ns for p in cells.glob("*/metrics.json")} == written
    assert again["tasks"] == json.loads(json.dumps(summary["tasks"]))
    sweep = (out / "sweep.csv").read_text()
    shutil.rmtree(cells / "map_lr0.001_bs4_seed1" / "adapter")  # a clone of the records: no weights
    reported = run_shift(base, ["map", "laplace", "monteclora_scaled_ab"], [0, 1], out, run_missing=False)
    assert reported["tasks"] == again["tasks"]
    assert (out / "sweep.csv").read_text() == sweep  # the fitted cells reported from their records
    assert {r["method"] for r in csv.DictReader((out / "sweep.csv").open())} == {"map", "laplace",
                                                                                 "monteclora_scaled_ab"}
    with pytest.raises(ValueError, match="add map"):
        run_shift(base, ["laplace"], [0], out)



def test_shift_command_refuses_bad_settings_before_any_work(tiny_llama, data_dir, tmp_path, capsys):  # noqa: F811
    from monteclora_pyro.commands.shift_commonsense import main

    common = ["--model", tiny_llama, "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "out")]
    for bad, says in ((["--method-samples", "laplace=x"], "'laplace=x' is not METHOD=DRAWS"),
                      (["--methods", "map", "--method-samples", "blob=2"], "method_samples names blob"),
                      (["--methods", "laplace"], "add map"),
                      (["--holdout-fraction", "0"], "needs held-out training rows")):
        with pytest.raises(SystemExit):
            main(common + bad)
        assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
