"""The command lines as users reach them: installed console scripts, the Hugging Face examples' flag names, a
config file, your own data files, the predictions file and a TensorBoard log."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import GLUE_DIR, REPO

from monteclora_pyro.commands import glue
from monteclora_pyro.tasks.glue.settings import file_task


def record(argv: list[str]) -> dict:
    return glue.parse_args(argv).record()


def test_the_hugging_face_flag_names_and_ours_give_the_same_run(tmp_path):
    ours = record(["--lr", "1e-3", "--output-dir", str(tmp_path / "x"), "--epochs", "3", "--batch-size", "16",
                   "--rank", "4", "--alpha", "8", "--lora-dropout", "0.1", "--max-length", "64"])
    theirs = record(["--learning_rate", "1e-3", "--output_dir", str(tmp_path / "x"), "--num_train_epochs", "3",
                     "--per_device_train_batch_size", "16", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout",
                     "0.1", "--max_seq_length", "64"])
    assert ours == theirs
    assert ours["lr"] == 1e-3 and ours["prior_spec"]["rank"] == 4 and ours["prior_spec"]["alpha"] == 8.0


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_a_config_file_gives_the_run_of_its_flags_and_the_command_line_wins(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    if suffix == ".toml":
        path.write_text('learning_rate = 1e-3\nprior = "map"\ntargets = ["query", "value"]\nno_progress = true\n'
                        f'output_dir = "{tmp_path / "x"}"\nmax_train_samples = "all"\nprogress = false\n'
                        .replace("no_progress = true\n", ""))
    else:
        path.write_text(f"learning-rate: 0.001\nprior: map\ntargets: [query, value]\noutput_dir: {tmp_path / 'x'}\n"
                        "max_train_samples: all\nprogress: false\n")
    flags = ["--lr", "1e-3", "--prior", "map", "--targets", "query,value", "--output-dir", str(tmp_path / "x"),
             "--max-train-samples", "all", "--no-progress"]
    assert record(["--config", str(path)]) == record(flags)
    assert record(["--config", str(path), "--lr", "5e-3"])["lr"] == 5e-3  # a flag given wins over the file


@pytest.mark.parametrize("content,message", [
    ("lerning_rate = 1e-3\n", "'lerning_rate' is not a setting of this command"),
    ("lr = -1\n", "lr: -1.0 must be > 0"),
    ("progress = 3\n", "progress = 3 must be true or false"),
    ("lr = [\n", "is not valid TOML"),
    ("no_progress = true\n", "'no_progress' is not a setting"),  # a switch by its own name: progress = false
])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(SystemExit):
        glue.parse_args(["--config", str(path)])
    err = capsys.readouterr().err
    assert message in err and "bad.toml" in err


def write_csv(path, rows, header=("text", "label")):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_own_files_make_a_classification_or_a_regression_task(tmp_path):
    write_csv(tmp_path / "train.csv", [("good", "pos"), ("bad", "neg"), ("fine", "pos")])
    write_csv(tmp_path / "dev.csv", [("ok", "pos")])
    task = file_task(str(tmp_path / "train.csv"), str(tmp_path / "dev.csv"), ("text",), "label")
    assert task.num_labels == 2 and task.label_names == ("neg", "pos") and task.headline_metric == "accuracy"
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"a": t, "b": t, "y": y}) + "\n"
                                                  for t, y in [("x", 0.5), ("y", 2), ("z", 4.25)]))
    (tmp_path / "dev.jsonl").write_text(json.dumps({"a": "w", "b": "w", "y": 1.0}) + "\n")
    task = file_task(str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"), ("a", "b"), "y")
    assert task.num_labels == 1 and task.headline_metric == "pearson"
    write_csv(tmp_path / "stars.csv", [("a", "1"), ("b", "10"), ("c", "2")])
    assert file_task(str(tmp_path / "stars.csv"), str(tmp_path / "dev.csv"), ("text",), "label").label_names == (
        "1", "2", "10")  # classes by value
    with pytest.raises(ValueError, match=r"columns \['sentence'\] are missing; it has \['text', 'label'\]"):
        file_task(str(tmp_path / "train.csv"), str(tmp_path / "dev.csv"), ("sentence",), "label")
    with pytest.raises(ValueError, match="validation_file = '.*nope.csv' does not exist"):
        file_task(str(tmp_path / "train.csv"), str(tmp_path / "nope.csv"), ("text",), "label")
    with pytest.raises(SystemExit):
        glue.parse_args(["--train-file", str(tmp_path / "train.csv")])  # no validation file or text columns


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed from its wheel into a folder outside the checkout, with its console scripts."""
    where = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(where / "dist")], check=True, cwd=where)
    wheel = next((where / "dist").glob("monteclora_pyro-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(where / "site"),
                    str(wheel)], check=True, cwd=where)
    return where


def console(installed, name: str, *argv: str, cwd) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(installed / "site"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    env.pop("MONTECLORA_GLUE_DIR", None)
    return subprocess.run([str(installed / "site" / "bin" / name), *argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.mark.integration
def test_installed_console_scripts_run_the_default_job_and_train_on_a_csv_file(installed, tmp_path):
    tiny = ["--max-train-samples", "32", "--max-eval-samples", "24", "--max-steps", "2", "--batch-size", "8",
            "--max-length", "48", "--num-samples", "2", "--no-progress"]
    done = console(installed, "monteclora-glue", "--data-dir", str(GLUE_DIR), "--output_dir", "default", *tiny,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "default" / "metrics.json").read_text())
    assert metrics["task"] == "sst2" and metrics["steps"] == 2
    source = json.loads((tmp_path / "default" / "config.json").read_text())["environment"]
    assert source["git_revision"] is None  # the installed copy, not the checkout

    sst2 = list(csv.DictReader((GLUE_DIR / "SST-2" / "train.tsv").open(), delimiter="\t", quoting=3))
    names = {"0": "negative", "1": "positive"}
    write_csv(tmp_path / "train.csv", [(r["sentence"], names[r["label"]]) for r in sst2[:32]], ("review", "stars"))
    write_csv(tmp_path / "dev.csv", [(r["sentence"], names[r["label"]]) for r in sst2[32:56]], ("review", "stars"))
    done = console(installed, "monteclora", "glue", "--train-file", "train.csv", "--validation-file", "dev.csv",
                   "--text-columns", "review", "--label-column", "stars", "--prior", "map", "--output-dir", "own",
                   "--save-draws", "--report-to", "tensorboard", *tiny, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert metrics["task"] == "own" and 0 <= metrics["accuracy"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "own" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(r["mutual_information"] == 0 for r in rows)  # plain LoRA: every draw the same
    assert all(len(r["draws"]) == 1 and r["draws"][0] == pytest.approx(r["probabilities"]) for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = [EventAccumulator(str(p.parent)).Reload() for p in (tmp_path / "own" / "logs").rglob("events.out.*")]
    (curves,) = [events for events in logs if "train/loss" in events.Tags()["scalars"]]  # beside the settings' run
    assert [e.step for e in curves.Scalars("train/loss")] == [0, 1]


@pytest.mark.integration
def test_missing_data_offline_is_one_line_naming_the_variable(installed, tmp_path):
    done = console(installed, "monteclora-glue", "--max-steps", "1", "--no-progress", cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "hub is unreachable" in last and "$MONTECLORA_GLUE_DIR" in last, done.stderr[-2000:]


def test_the_command_list_and_a_predict_without_a_saved_posterior(capsys, tmp_path):
    from monteclora_pyro import commands

    commands.main([])
    listed = capsys.readouterr().out
    assert all(name in listed for name in commands.COMMANDS)
    with pytest.raises(SystemExit):
        commands.main(["predict", "--adapter", str(tmp_path)])
    assert "is not a saved posterior" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["train"])
    assert "'train' is not a command" in str(exit_info.value.code)


def test_a_peft_peer_takes_the_papers_prior_unless_another_is_named():
    """PEFT's MonteCLoRA is the paper's method: with the GLUE default (monteclora_wide_prior, a relative eps PEFT
    cannot represent) a peer runs with the paper's declaration; a prior named by hand is kept."""
    from monteclora_pyro.tasks.glue.settings import GlueRunConfig

    assert GlueRunConfig().prior == "monteclora_wide_prior"
    assert GlueRunConfig(peer="peft-monteclora").resolved().prior == "monteclora"
    assert GlueRunConfig(peer="peft-lora", prior="map").resolved().prior == "map"
    assert GlueRunConfig().resolved().prior == "monteclora_wide_prior"
