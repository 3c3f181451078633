"""Every GLUE task loads in its own format; MNLI and QNLI train (not staged here) from files the test writes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import GLUE_DIR
from safetensors.torch import load_file

from monteclora_pyro.backbones import load_classifier
from monteclora_pyro.tasks.glue.data import load_glue
from monteclora_pyro.tasks.glue.family import run_glue
from monteclora_pyro.tasks.glue.settings import GLUE_TASKS, GlueRunConfig, default_model, get_task

pytestmark = pytest.mark.integration

STAGED = ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_classifier(default_model(), 2)[1]


@pytest.mark.parametrize("name", STAGED)
def test_staged_tasks_load_with_integer_labels(name, tokenizer, glue_dir):
    task = get_task(name)
    data = load_glue(task, glue_dir, tokenizer, max_length=32, max_train_samples=40, max_eval_samples=40)
    assert len(data["train"]) == 40 and len(data["dev"]) == 40
    labels = data["dev"]["labels"]
    if task.num_labels == 1:
        assert all(isinstance(v, float) and 0.0 <= v <= 5.0 for v in labels)
    else:
        assert set(labels) <= set(range(task.num_labels)) and len(set(labels)) > 1
    assert data["train"]["idx"] == list(range(40))


def test_full_staged_dev_sizes_match_glue(tokenizer, glue_dir):
    sizes = {"cola": 1043, "mrpc": 408, "rte": 277, "wnli": 71}
    for name, size in sizes.items():
        data = load_glue(get_task(name), glue_dir, tokenizer, max_length=16, max_train_samples=8)
        assert len(data["dev"]) == size, name


def test_unknown_task_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="task 'qqp' is unknown; GLUE tasks: cola, sst2, mrpc, stsb, qnli, rte"):
        get_task("qqp")
    assert get_task("SST-2").name == "sst2" and set(GLUE_TASKS) >= {"mnli", "qnli"}
    with pytest.raises(ValueError, match="has no MNLI/ folder"):
        GlueRunConfig(task="mnli", data_dir=str(tmp_path)).resolved()
    (tmp_path / "QNLI").mkdir()
    (tmp_path / "QNLI" / "dev.tsv").write_text("index\tquestion\tsentence\tlabel\n")  # train.tsv missing
    with pytest.raises(ValueError, match=r"qnli needs .*QNLI/train.tsv$"):
        GlueRunConfig(task="qnli", data_dir=str(tmp_path)).resolved()


MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_ROWS = [("A man plays a guitar.", "A person makes music.", "entailment"),
             ("A man plays a guitar.", "The man is asleep.", "contradiction"),
             ("A woman reads a book.", "She is reading a novel.", "neutral"),
             ("Two dogs run in a park.", "Animals are outside.", "entailment"),
             ("Two dogs run in a park.", "The dogs are sleeping indoors.", "contradiction"),
             ("A child eats an \"apple\".", "The child is hungry.", "neutral")]


def _write_mnli(folder, split: str, rows) -> None:
    lines = ["\t".join(MNLI_HEADER)]
    for i, (s1, s2, label) in enumerate(rows):
        lines.append("\t".join([str(i), "1", f"{i}e", "fiction", "(", "(", "(", "(", s1, s2, label, label]))
    (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def test_mnli_runs_with_matched_and_mismatched_dev(tmp_path):
    folder = tmp_path / "MNLI"
    folder.mkdir()
    for split in ("train", "dev_matched", "dev_mismatched"):
        _write_mnli(folder, split, MNLI_ROWS)
    metrics = run_glue(GlueRunConfig(task="mnli", data_dir=str(tmp_path), output_dir=str(tmp_path / "out"),
                                     prior="map", max_steps=2, batch_size=3, num_samples=1, max_length=32,
                                     progress=False))
    assert {"accuracy", "dev_mismatched_accuracy", "ece", "dev_mismatched_ece"} <= set(metrics)
    assert metrics["num_train"] == 6


def test_qnli_train_in_its_format(tmp_path, tokenizer):
    folder = tmp_path / "QNLI"
    folder.mkdir()
    dev = (GLUE_DIR / "QNLI" / "dev.tsv").read_text().splitlines()
    (folder / "train.tsv").write_text("\n".join(dev[:21]) + "\n")
    (folder / "dev.tsv").write_text("\n".join([dev[0], *dev[21:31]]) + "\n")
    data = load_glue(get_task("qnli"), tmp_path, tokenizer, max_length=32)
    assert len(data["train"]) == 20 and len(data["dev"]) == 10
    assert set(data["train"]["labels"]) == {0, 1}


def test_stsb_regression_end_to_end(tmp_path, glue_dir):
    metrics = run_glue(GlueRunConfig(task="stsb", data_dir=str(glue_dir), output_dir=str(tmp_path), prior="monteclora",
                                     max_steps=2, batch_size=8, num_samples=2, max_length=32, max_train_samples=20,
                                     max_eval_samples=24, holdout_fraction=0.2, mc_dropout_samples=2, progress=False))
    assert {"pearson", "spearman", "mean_pearson", "mse", "nll", "mean_nll", "ece", "crps"} <= set(metrics)
    assert {"ts_nll", "ts_ece", "mcd_nll", "mcd_crps", "noise_scale", "holdout_noise_scale"} <= set(metrics)
    assert metrics["nll"] > 0 and 0 <= metrics["ece"] <= 0.5 and metrics["crps"] > 0
    assert -1.0 <= metrics["pearson"] <= 1.0
    # the predictive's noise is the one around each draw: the learned one less the draws' spread
    assert metrics["train_draw_variance"] > 0
    assert metrics["noise_scale"] ** 2 == pytest.approx(metrics["learned_noise_scale"] ** 2
                                                        - metrics["train_draw_variance"], rel=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["task"] == "stsb"
    assert (tmp_path / "posterior.nc").exists() and (tmp_path / "plots" / "reliability.png").exists()
    # the head starts at the targets' mean (STS-B's is about 2.7), not at 0, where LoRA's first steps
    # collapse every example's output to one value
    state = load_file(str(tmp_path / "adapter" / "posterior.safetensors"))
    bias = next(value for name, value in state.items() if "classifier" in name and name.endswith("bias"))
    assert 1.5 < float(bias) < 4.0


def test_stsb_peer_gets_its_noise_scale_from_the_held_out_rows(tmp_path, glue_dir):
    """A peer trains on MSE, without a noise scale: its NLL uses the one fitted on the held-out rows, so it
    equals the recalibrated (ts_) NLL; without held-out rows it has no NLL."""
    config = GlueRunConfig(task="stsb", data_dir=str(glue_dir), output_dir=str(tmp_path / "a"), peer="peft-lora",
                           max_steps=2, batch_size=8, max_length=32, max_train_samples=20, max_eval_samples=24,
                           holdout_fraction=0.2, progress=False)
    metrics = run_glue(config)
    assert metrics["noise_scale"] == metrics["holdout_noise_scale"] > 0
    assert metrics["nll"] == pytest.approx(metrics["ts_nll"])
    metrics = run_glue(dataclasses.replace(config, holdout_fraction=0.0, output_dir=str(tmp_path / "b")))
    assert "nll" not in metrics and "ece" not in metrics and metrics["pearson"] is not None


RTE_HEADER = "index\tsentence1\tsentence2\tlabel"
RTE_ROWS = ["0\tA dog barks.\tAn animal makes a sound.\tentailment",
            "1\tA dog barks.\tThe cat sleeps.\tnot_entailment"]


@pytest.mark.parametrize(
    "train,message",
    [
        ([RTE_HEADER, *RTE_ROWS, "2\tA dog barks.\tIt is loud.\tmaybe"],
         r"train.tsv, line 4: label 'maybe' is not one of \['entailment', 'not_entailment'\]"),
        ([RTE_HEADER], r"train.tsv has no data rows"),
        ([RTE_HEADER, *RTE_ROWS, "2\tA dog barks."], r"train.tsv, line 4: column 'sentence2' is empty"),
        ([RTE_HEADER, *RTE_ROWS[:1], "1\tA dog barks.\tThe cat sleeps."], r"line 3: column 'label' is empty"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, tokenizer, train, message):
    folder = tmp_path / "RTE"
    folder.mkdir()
    (folder / "train.tsv").write_text("\n".join(train) + "\n")
    (folder / "dev.tsv").write_text("\n".join([RTE_HEADER, *RTE_ROWS]) + "\n")
    with pytest.raises(ValueError, match=message):
        load_glue(get_task("rte"), tmp_path, tokenizer)


def test_undecodable_file_is_named(tmp_path, tokenizer):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe bad bytes\t1\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match=r"SST-2/train.tsv, line 2: not UTF-8 text \(invalid start byte at byte 0\)"):
        load_glue(get_task("sst2"), tmp_path, tokenizer)


def test_a_failed_rerun_leaves_the_finished_run_alone(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "RTE").mkdir(parents=True)
    (data / "RTE" / "train.tsv").write_text("\n".join([RTE_HEADER, *RTE_ROWS * 3]) + "\n")
    (data / "RTE" / "dev.tsv").write_text("\n".join([RTE_HEADER, *RTE_ROWS]) + "\n")
    config = GlueRunConfig(task="rte", data_dir=str(data), output_dir=str(out), prior="map", max_steps=1,
                           batch_size=2, num_samples=1, max_length=16, progress=False)
    run_glue(config)
    finished = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"config.json", "metrics.json", "posterior.nc"} <= set(finished)
    with pytest.raises(ValueError, match=r"output_dir = '.*out' holds a finished run; give --overwrite-output-dir"):
        run_glue(dataclasses.replace(config, lr=1e-2))  # refused before any work
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == finished
    (data / "RTE" / "train.tsv").write_text("\n".join([RTE_HEADER, "0\ta\tb\tmaybe"]) + "\n")
    with pytest.raises(ValueError, match="label 'maybe'"):
        run_glue(dataclasses.replace(config, lr=1e-2, overwrite_output_dir=True))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == finished  # untouched
    failed = json.loads((tmp_path / "out.failed" / "failed.json").read_text())
    assert "label 'maybe'" in failed["error"]
    assert json.loads((tmp_path / "out.failed" / "config.json").read_text())["lr"] == 1e-2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_an_output_dir_that_is_a_file_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    config = GlueRunConfig(task="rte", output_dir=str(target), prior="map", max_steps=1, progress=False,
                           overwrite_output_dir=True)
    with pytest.raises(ValueError, match=r"output_dir = '.*notes.txt' is a file; give a folder"):
        run_glue(config)
    assert target.read_text() == "mine"


def test_the_posterior_stage_runs_after_training_and_is_refused_where_there_is_no_guide(tmp_path, glue_dir):
    config = GlueRunConfig(task="sst2", data_dir=str(glue_dir), output_dir=str(tmp_path / "stage"),
                           prior="monteclora_scaled_ab", max_steps=2, posterior_steps=4, batch_size=8, num_samples=2,
                           max_length=32, max_train_samples=16, max_eval_samples=8, progress=False)
    metrics = run_glue(config)
    stage = metrics["posterior_stage"]
    assert stage["steps"] == 4 and len(stage["trajectory"]["loss"]) == 4 and stage["seconds"] > 0
    assert any(name.endswith("scale_loc") for name in stage["settled_share"])
    assert (tmp_path / "stage" / "plots" / "variational.png").stat().st_size > 0
    for prior, why in (("map", "this method's guide has none"), ("blob", "takes its KL in a step of its own")):
        with pytest.raises(ValueError, match=why):
            run_glue(dataclasses.replace(config, prior=prior, output_dir=str(tmp_path / prior)))
        assert not (tmp_path / prior).exists()


def test_the_data_size_command_runs_each_size_once_and_tabulates_the_spread(tmp_path, glue_dir, capsys):
    from monteclora_pyro.commands.data_size_glue import main

    argv = ["--rows", "32,16", "--steps", "4", "--batch-size", "8", "--data-dir", str(glue_dir), "--max-length", "32",
            "--max-eval-samples", "8", "--num-samples", "2", "--posterior-steps", "3", "--output-dir", str(tmp_path)]
    summary = main(argv)
    rows = summary["rows"]
    assert [r["rows"] for r in rows] == [16, 32] and [r["steps"] for r in rows] == [4, 4]
    assert [r["epochs"] for r in rows] == [2, 1] and rows[0]["shrink"] == 1.0
    assert all(r["perturbation_std"] > 0 and r["kl_per_example"] > 0 and r["mutual_information"] > 0 for r in rows)
    assert rows[0]["information_shrink"] == 1.0
    assert (tmp_path / "plots" / "spread_vs_rows.png").stat().st_size > 0
    assert len((tmp_path / "data_size.csv").read_text().splitlines()) == 3
    finished = (tmp_path / "sst2-16" / "metrics.json").stat().st_mtime_ns
    again = main([*argv, "--report-only"])  # read, not run again
    assert again["rows"] == rows and (tmp_path / "sst2-16" / "metrics.json").stat().st_mtime_ns == finished
    assert "| 16 | 4 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # no perturbation spread to measure: refused before training
        main([*argv, "--prior", "map", "--output-dir", str(tmp_path / "map")])
    assert "prior = 'map' is of family 'map'" in capsys.readouterr().err and not (tmp_path / "map").exists()
    with pytest.raises(SystemExit):  # a finished size made with other settings is not read as this one's
        main([*argv, "--lr", "1e-3", "--report-only"])
    assert "holds a run with other settings (lr: 0.002 there, 0.001 now)" in capsys.readouterr().err


def test_the_data_size_command_can_give_every_size_the_same_epochs(tmp_path, glue_dir, capsys):
    from monteclora_pyro.commands.data_size_glue import main

    argv = ["--rows", "16,32", "--epochs", "1", "--batch-size", "8", "--data-dir", str(glue_dir), "--max-length", "32",
            "--max-eval-samples", "8", "--num-samples", "2", "--output-dir", str(tmp_path)]
    rows = main(argv)["rows"]
    assert [r["epochs"] for r in rows] == [1, 1] and [r["steps"] for r in rows] == [2, 4]  # more rows, more steps
    with pytest.raises(SystemExit):  # one budget or the other, not both
        main([*argv, "--steps", "4"])
    assert "not allowed with argument" in capsys.readouterr().err
