"""A trained posterior saved, reloaded (in this process and in a new one), exported to PEFT and merged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from monteclora_pyro import bayesian_lora_from_model, load_prior
from monteclora_pyro.adapters import export_merged, export_peft, load_adapter, save_adapter
from monteclora_pyro.backbones import load_classifier
from monteclora_pyro.tasks.glue.settings import default_model

pytestmark = pytest.mark.integration


def test_saved_posterior_reloads_exports_and_merges_with_equal_outputs(tmp_path, glue_dir):
    model_path = default_model()
    network, tokenizer = load_classifier(model_path, 2)
    module = bayesian_lora_from_model(network, load_prior("monteclora_scaled"), num_data=100, num_labels=2)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking posterior: B off zero, guides off their start
        for name, param in module.named_parameters():
            if param.requires_grad and ("lora_B" in name or "group_guides" in name or "classifier" in name):
                param.add_(0.05 * torch.randn_like(param))
    module.eval()
    batch = dict(tokenizer(["a fine film", "dull and long"], padding=True, return_tensors="pt"))
    save_adapter(module, tmp_path / "adapter", model_path, 2)

    loaded, _ = load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        expected = module.network_output(batch)
        torch.testing.assert_close(loaded.network_output(batch), expected)
    for (name, mine), (_, theirs) in zip(module.group_guides.named_parameters(),
                                         loaded.group_guides.named_parameters(), strict=True):
        torch.testing.assert_close(theirs, mine, msg=name)

    export_peft(loaded, tmp_path / "peft")
    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    export_merged(loaded, tmp_path / "merged", tokenizer)
    merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-5)

    # a new process predicts with the saved posterior
    result = subprocess.run([sys.executable, "experiments/predict_glue.py", "--adapter", str(tmp_path / "adapter"),
                             "--task", "sst2", "--data-dir", str(glue_dir), "--max-eval-samples", "16",
                             "--num-samples", "2", "--max-length", "32"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["examples"] == 16 and report["num_samples"] == 2 and report["members"] == 1
    assert {"accuracy", "mean_accuracy", "nll", "ece"} <= set(report)
    two = ",".join([str(tmp_path / "adapter")] * 2)  # a mixture of two members: one posterior mean, 4 draws
    result = subprocess.run([sys.executable, "experiments/predict_glue.py", "--adapter", two, "--task", "sst2",
                             "--data-dir", str(glue_dir), "--max-eval-samples", "16", "--num-samples", "2",
                             "--max-length", "32"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    mixed = json.loads(result.stdout[result.stdout.index("{"):])
    assert mixed["members"] == 2 and mixed["mean_nll"] == pytest.approx(report["mean_nll"], rel=1e-5)
    # the rows a run of 40 training rows held out at seed 3: its 10, not the dev set's
    result = subprocess.run([sys.executable, "experiments/predict_glue.py", "--adapter", str(tmp_path / "adapter"),
                             "--task", "sst2", "--data-dir", str(glue_dir), "--split", "holdout",
                             "--max-train-samples", "40", "--holdout-fraction", "0.25", "--seed", "3",
                             "--num-samples", "2", "--max-length", "32"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    held_out = json.loads(result.stdout[result.stdout.index("{"):])
    assert held_out["split"] == "holdout" and held_out["examples"] == 10
    assert held_out["nll"] != pytest.approx(report["nll"])
    # the same rows with the settings read from the run's config.json beside the adapter; a flag given wins
    from monteclora_pyro.commands.predict_glue import main as predict_glue

    (tmp_path / "config.json").write_text(json.dumps({"task": "sst2", "max_train_samples": 40,
                                                      "holdout_fraction": 0.25, "seed": 3, "lr": 1e-3}))
    common = ["--adapter", str(tmp_path / "adapter"), "--data-dir", str(glue_dir), "--split", "holdout",
              "--num-samples", "2", "--max-length", "32"]
    assert predict_glue(common) == pytest.approx({k: v for k, v in held_out.items()
                                                  if k not in ("split", "examples", "num_samples", "members")})
    assert predict_glue(common + ["--seed", "4"])["nll"] != pytest.approx(held_out["nll"])


def test_scoring_the_held_out_rows_needs_the_runs_holdout_fraction(capsys):
    from monteclora_pyro.commands.predict_glue import main

    with pytest.raises(SystemExit):
        main(["--adapter", "unused", "--task", "sst2", "--split", "holdout", "--max-train-samples", "1000"])
    assert "give its --holdout-fraction (> 0)" in capsys.readouterr().err


def test_a_runs_unreadable_config_is_named_before_any_work(tmp_path, capsys):
    from monteclora_pyro.commands.predict_glue import main

    (tmp_path / "adapter").mkdir()
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SystemExit):
        main(["--adapter", str(tmp_path / "adapter"), "--split", "holdout"])
    assert "config.json cannot be read (JSONDecodeError)" in capsys.readouterr().err


def test_a_folder_that_is_no_saved_posterior_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"is not a saved posterior: posterior.json is missing"):
        load_adapter(tmp_path)


def test_a_posterior_saved_per_site_format_1_loads_into_its_groups(tmp_path):
    """Format 1 kept one guide tensor per site; loading stacks them into the shape groups."""
    model_path = default_model()
    network, _ = load_classifier(model_path, 2)
    module = bayesian_lora_from_model(network, load_prior("monteclora_scaled_ab"), num_data=100, num_labels=2)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in module.group_guides.parameters():
            param.add_(torch.randn_like(param))
    directory = save_adapter(module, tmp_path / "adapter", model_path, 2)
    tensors = load_file(str(directory / "posterior.safetensors"))
    per_site = {name: value for name, value in tensors.items() if not name.startswith("group_guides.")}
    for group in module.groups:
        for name, param in module.group_guides[group.key].named_parameters():
            for i, site in enumerate(group.sites):
                per_site[f"site_guides.{site.key}.{name}"] = param.detach()[i].contiguous()
    save_file(per_site, str(directory / "posterior.safetensors"))
    meta = json.loads((directory / "posterior.json").read_text())
    (directory / "posterior.json").write_text(json.dumps(meta | {"format": 1}))

    loaded, _ = load_adapter(directory)
    assert len(module.groups) == 2 < len(module.sites)
    for (name, mine), (_, theirs) in zip(module.group_guides.named_parameters(),
                                         loaded.group_guides.named_parameters(), strict=True):
        torch.testing.assert_close(theirs, mine, msg=name)
