"""The real packaged MiniLM on real GLUE rows, and the experiment script as a user runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from transformers import DataCollatorWithPadding

from monteclora_pyro import TrainConfig, bayesian_lora_from_model, load_prior, train
from monteclora_pyro.backbones import load_classifier
from monteclora_pyro.runner.pipeline import make_loader
from monteclora_pyro.tasks.glue.data import load_glue
from monteclora_pyro.tasks.glue.settings import default_model, get_task

pytestmark = pytest.mark.integration


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_elbo_falls_on_64_real_rte_rows_with_minilm(glue_dir):
    task = get_task("rte")
    model, tokenizer = load_classifier(default_model(), task.num_labels)
    data = load_glue(task, glue_dir, tokenizer, max_length=64, max_train_samples=64, max_eval_samples=8)
    assert len(data["train"]) == 64 and set(data["train"]["labels"]) == {0, 1}
    loader = make_loader(data["train"], DataCollatorWithPadding(tokenizer), batch_size=16, shuffle=True)
    module = bayesian_lora_from_model(model, load_prior("monteclora"), num_data=64, num_labels=2)
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    history = train(module, loader, TrainConfig(lr=2e-3, epochs=6, warmup_ratio=0.0, progress=False))
    first_epoch, last_epoch = history.loss[:4], history.loss[-4:]
    assert sum(last_epoch) / 4 < sum(first_epoch) / 4 - 0.05, history.loss
    for name, param in module.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name])


def test_svi_glue_script_end_to_end(glue_dir, tmp_path):
    script = load_script("svi_glue")
    out = tmp_path / "run"
    metrics = script.main(["--task", "rte", "--data-dir", str(glue_dir), "--output-dir", str(out),
                           "--prior", "monteclora", "--guide", "monteclora", "--max-steps", "3",
                           "--batch-size", "8", "--max-train-samples", "32", "--max-eval-samples", "24",
                           "--num-samples", "2", "--max-length", "64", "--no-progress"])
    written = json.loads((out / "metrics.json").read_text())
    assert written["accuracy"] == metrics["accuracy"] and 0.0 <= written["accuracy"] <= 1.0
    assert written["steps"] == 3 and written["task"] == "rte" and written["guide"] == "monteclora"
    assert {"mean_accuracy", "nll", "mean_nll", "median_step_seconds"} <= set(written)
    config = json.loads((out / "config.json").read_text())
    assert config["prior_spec"]["family"] == "monteclora" and config["rank"] == 8
    environment = config["environment"]  # what the run ran on
    assert environment["packages"]["torch"] == torch.__version__ and environment["device"].startswith("cpu")
    assert environment["git_revision"] is None or len(environment["git_revision"]) == 40
    saved = json.loads((out / "adapter" / "posterior.json").read_text())
    assert saved["guide"] == "monteclora" and saved["prior_spec"] == config["prior_spec"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and len({r["row"] for r in rows}) == 24  # one per dev example, the same predictive
    assert sum(r["nll"] for r in rows) / 24 == pytest.approx(written["nll"], abs=1e-5)
    assert sum(r["predicted"] == r["label"] for r in rows) / 24 == pytest.approx(written["accuracy"])
    assert sum(r["entropy"] for r in rows) / 24 == pytest.approx(written["entropy"], abs=1e-9)
    assert sum(r["mutual_information"] for r in rows) / 24 == pytest.approx(written["mutual_information"], abs=1e-9)
    for r in rows:
        assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-5) and r["mutual_information"] >= 0
        assert r["entropy"] == pytest.approx(r["expected_entropy"] + r["mutual_information"], abs=1e-9)
    assert 0 <= written["ece_floor"] < 0.5 and written["ece_floor_std"] > 0 and written["ece_debiased"] >= 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lr", "-1"], "argument --lr: -1.0 must be > 0"),
        (["--batch-size", "0"], "argument --batch-size: 0 must be an integer >= 1"),
        (["--task", "squad"], "task 'squad' is unknown; GLUE tasks: cola, sst2"),
        (["--prior", "nonexistent"], "prior 'nonexistent' is neither a bundled prior"),
        (["--prior", "map", "--guide", "monteclora"], "guide = 'monteclora' fits priors of family monteclora"),
        (["--data-dir", "/nonexistent"], "data_dir = '/nonexistent' has no SST-2/ folder"),
        (["--rank", "0"], "argument --rank: 0 must be an integer >= 1"),
        (["--kl-weight", "-2"], "argument --kl-weight: -2.0 must be >= 0"),
    ],
)
def test_bad_cli_values_fail_before_any_work(argv, message, capsys):
    script = load_script("svi_glue")
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_compare_peft_script_runs_ours_and_the_peer(glue_dir, tmp_path):
    script = load_script("compare_peft")
    summary = script.main(["--task", "rte", "--data-dir", str(glue_dir), "--output-dir", str(tmp_path),
                           "--methods", "monteclora,peft-monteclora", "--max-steps", "2", "--batch-size", "4",
                           "--max-train-samples", "16", "--max-eval-samples", "8", "--num-samples", "2",
                           "--no-progress"])
    assert set(summary["methods"]) == {"monteclora", "peft-monteclora"}
    for row in summary["methods"].values():
        assert row["steps"] == 2 and 0 <= row["accuracy"] <= 1 and row["median_step_seconds"] > 0
    assert (tmp_path / "summary.json").exists() and (tmp_path / "peft-monteclora" / "metrics.json").exists()


def test_sweep_script_is_resumable_on_real_cola_rows(glue_dir, tmp_path, capsys):
    script = load_script("sweep_glue")
    argv = ["--task", "cola", "--data-dir", str(glue_dir), "--output-dir", str(tmp_path), "--methods",
            "map,peft-monteclora", "--lrs", "1e-3", "--batch-sizes", "8", "--seeds", "0,1", "--max-steps", "2",
            "--max-train-samples", "16", "--max-eval-samples", "32", "--max-length", "32", "--num-samples", "2",
            "--perturbation-scale", "0.01", "--no-progress"]
    summary = script.main(argv)
    cell_config = json.loads((tmp_path / "cells" / "peft-monteclora_lr0.001_bs8_seed0" / "config.json").read_text())
    assert cell_config["prior_spec"]["perturbation_scale"] == 0.01 and cell_config["peer"] == "peft-monteclora"
    assert summary["metric"] == "matthews_correlation"
    assert set(summary["robustness"]) == {"map", "peft-monteclora"}
    for stats in summary["robustness"].values():
        assert stats["cells"] == 2 and stats["spread"] == stats["max"] - stats["min"] >= 0
    rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("task,method,lr,batch_size,seed")
    assert (tmp_path / "plots" / "metric_vs_lr.png").stat().st_size > 10_000
    capsys.readouterr()
    script.main(argv)  # a second run finds every cell finished
    assert capsys.readouterr().out.count("done already, skipped") == 4
    summary = script.main([("0,1,2" if a == "0,1" else a) for a in argv] + ["--report-only"])
    assert (summary["finished_cells"], summary["grid_cells"]) == (4, 6)  # seed 2 was not run
    # resuming with settings that change results is refused before any cell trains
    with pytest.raises(SystemExit) as exit_info:
        script.main([("3" if previous == "--max-steps" else a) for previous, a in zip(["", *argv], argv, strict=False)])
    assert exit_info.value.code == 2
    assert "finished with other settings (max_steps: 2 there, 3 now)" in capsys.readouterr().err
    cell_config = tmp_path / "cells" / "map_lr0.001_bs8_seed0" / "config.json"
    cell_config.write_text(cell_config.read_text()[:40])  # truncated
    with pytest.raises(SystemExit):
        script.main(argv)
    assert f"{cell_config} cannot be read" in capsys.readouterr().err


def test_overfitting_benchmark_script_on_real_sst2_rows(glue_dir, tmp_path, monkeypatch):
    import monteclora_pyro.tasks.glue.family as glue_family

    draws_asked, predict = [], glue_family.predict
    monkeypatch.setattr(glue_family, "predict", lambda module, loader, num_samples, *args: (
        draws_asked.append((len(loader.dataset), num_samples)) or predict(module, loader, num_samples, *args)))
    script = load_script("overfit_glue")
    argv = ["--tasks", "sst2", "--data-dir", str(glue_dir), "--output-dir", str(tmp_path), "--methods",
            "map,monteclora_scaled,laplace", "--seeds", "0", "--epochs", "2", "--batch-size", "8",
            "--max-train-samples", "40", "--holdout-fraction", "0.2", "--max-eval-samples", "24", "--num-samples", "3",
            "--epoch-num-samples", "1", "--mc-dropout-samples", "2", "--max-length", "32"]
    summary = script.main(argv)
    dev_draws = [n for rows, n in draws_asked if rows == 24]  # a trained method's first epoch: 1 draw; the
    assert sorted(dev_draws) == [1] * 2 + [3] * 3  # final scores (also the last epoch's): 3; laplace trains no epoch
    methods = summary["tasks"]["sst2"]["methods"]
    assert set(methods) == {"map", "map+temperature", "map+mc_dropout", "monteclora_scaled",
                            "monteclora_scaled+temperature", "laplace", "laplace+temperature"}
    assert methods["map"]["ece"]["seeds"] == 1
    assert methods["map"]["metric"]["mean"] == methods["map"]["accuracy"]["mean"]  # SST-2's metric
    cell = json.loads((tmp_path / "sst2" / "cells" / "map_lr0.002_bs8_seed0" / "metrics.json").read_text())
    assert cell["num_train"] == 32 and cell["num_holdout"] == 8 and cell["temperature"] > 0
    assert [e["epoch"] for e in cell["epochs"]] == [1, 2]
    assert methods["map+temperature"]["ece"]["mean"] == cell["ts_ece"]
    scaled = json.loads((tmp_path / "sst2" / "cells" / "monteclora_scaled_lr0.002_bs8_seed0" / "metrics.json")
                        .read_text())
    assert "mcd_ece" not in scaled  # MC dropout is the map baseline's
    laplace = json.loads((tmp_path / "sst2" / "cells" / "laplace_lr0.002_bs8_seed0" / "metrics.json").read_text())
    assert laplace["mean_nll"] == pytest.approx(cell["mean_nll"], abs=1e-6)  # fitted to the map cell's weights
    laplace_config = json.loads((tmp_path / "sst2" / "cells" / "laplace_lr0.002_bs8_seed0" / "config.json").read_text())
    assert laplace["steps"] == 0 and laplace_config["init_adapter"].endswith("map_lr0.002_bs8_seed0/adapter")
    assert laplace["prior_precision"] > 0 and laplace["nll"] != laplace["mean_nll"]  # the linearized predictive
    assert len(summary["tasks"]["sst2"]["ece_by_epoch"]["map"]) == 2
    assert (tmp_path / "plots" / "ece_vs_epoch_sst2.png").stat().st_size > 10_000
    rows = (tmp_path / "sst2" / "overfitting.csv").read_text().splitlines()
    assert rows[0] == ("task,method,seed,metric,accuracy,nll,ece,ece_debiased,ece_floor,brier,crps,auroc_entropy,"
                       "auroc_mi")
    assert len(rows) == 1 + 7
    versus = {(c["method"], c["baseline"]): c for c in summary["tasks"]["sst2"]["nll_versus"]}
    assert set(versus) == {("map", "map+temperature"), ("map+temperature", "map"),
                           *((m, b) for m in ("monteclora_scaled", "monteclora_scaled+temperature", "laplace",
                                              "laplace+temperature") for b in ("map", "map+temperature"))}
    own = versus[("monteclora_scaled", "map")]  # the mean of the per-row differences is the difference of means
    means = {m: methods[m]["nll"]["mean"] for m in ("monteclora_scaled", "map")}
    assert own["nll_difference"] == pytest.approx(means["monteclora_scaled"] - means["map"], abs=1e-6)
    assert own["low"] <= own["nll_difference"] <= own["high"] and own["rows"] == own["pairs"] == 24
    assert len((tmp_path / "sst2" / "comparisons.csv").read_text().splitlines()) == 1 + len(versus)
    again = script.main([*argv, "--report-only"])
    assert again["tasks"] == summary["tasks"]
    clone = tmp_path / "clone"  # the cells' records as a clone holds them: no trained weights
    shutil.copytree(tmp_path / "sst2" / "cells", clone / "sst2" / "cells", ignore=shutil.ignore_patterns("adapter"))
    from_records = script.main([str(clone) if a == str(tmp_path) else a for a in argv] + ["--report-only"])
    assert from_records["tasks"] == summary["tasks"]
    sweep = (tmp_path / "sst2" / "sweep.csv").read_text()
    assert "\nsst2,laplace,0.002,8,0," in sweep and (clone / "sst2" / "sweep.csv").read_text() == sweep
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[0].startswith("| task | method | metric | NLL |") and len(table) == 2 + len(methods)
    assert any(line.startswith("| sst2 | `laplace` |") for line in table)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "/nonexistent"], "model = '/nonexistent': no such directory"),
        (["--rank", "100000"], "rank = 100000 exceeds the smallest adapted layer (384 features)"),
        (["--device", "cuda"], "device = 'cuda', but CUDA is not available here"),
        (["--prior", "PRIOR_Q_PROJ"], "targets ['q_proj', 'v_proj'] are not modules of"),
    ],
)
def test_errors_found_before_training_are_one_line_and_leave_no_folder(argv, message, tmp_path, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is present")
    prior = tmp_path / "llama.toml"
    prior.write_text('family = "monteclora"\ntargets = ["q_proj", "v_proj"]\n')
    out = tmp_path / "run"
    argv = [str(prior) if a == "PRIOR_Q_PROJ" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        load_script("svi_glue").main([*argv, "--output-dir", str(out), "--no-progress"])
    assert message in str(exit_info.value.code) and str(exit_info.value.code).count("\n") == 0
    assert not out.exists() and not (tmp_path / "run.failed").exists()


def test_a_finished_run_is_never_replaced_by_accident_and_a_diverged_run_fails(glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--task", "sst2", "--data-dir", str(glue_dir), "--output-dir", str(out), "--prior", "map",
            "--max-train-samples", "64", "--batch-size", "8", "--max-steps", "12", "--max-eval-samples", "16",
            "--max-length", "32", "--no-progress"]
    script = load_script("svi_glue")
    script.main(argv)
    finished = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:  # a rerun into the finished folder is refused, one line
        script.main([*argv, "--lr", "1e3"])
    message = str(exit_info.value.code)
    assert "holds a finished run; give --overwrite-output-dir" in message and message.count("\n") == 0
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == finished  # byte-identical
    with pytest.raises(SystemExit) as exit_info:  # told to replace it, a diverging run fails instead
        script.main([*argv, "--lr", "1e3", "--overwrite-output-dir"])
    message = str(exit_info.value.code)
    assert "the loss diverged" in message and "lr = 1000.0" in message and message.count("\n") == 0
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == finished  # still the good run
    assert "diverged" in json.loads((tmp_path / "run.failed" / "failed.json").read_text())["error"]
    assert not (tmp_path / "run.failed" / "metrics.json").exists()
    again = script.main([*argv, "--seed", "1", "--overwrite-output-dir"])  # a good run replaces it
    assert json.loads((out / "metrics.json").read_text())["seed"] == again["seed"] == 1


def test_interrupted_run_resumes_from_its_checkpoint(glue_dir, tmp_path):
    """Ctrl-C leaves a checkpoint and a one-line message; --resume finishes the run from it."""
    out = tmp_path / "run"
    argv = ["--task", "sst2", "--data-dir", str(glue_dir), "--output-dir", str(out), "--prior", "map",
            "--max-train-samples", "64", "--batch-size", "4", "--epochs", "2", "--max-eval-samples", "16",
            "--max-length", "32", "--checkpoint-every", "1", "--no-progress"]
    checkpoint = tmp_path / "run.checkpoint" / "checkpoint.pt"
    child = subprocess.Popen([sys.executable, "experiments/svi_glue.py", *argv], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (checkpoint.exists() and torch.load(checkpoint, weights_only=False)["step"] >= 3):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1][-2000:]
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 1 and "run the same command with --resume" in stderr.strip().splitlines()[-1]
    stopped = torch.load(checkpoint, weights_only=False)["step"]
    assert 3 <= stopped < 32 and not out.exists()
    script = load_script("svi_glue")
    with pytest.raises(SystemExit) as exit_info:
        script.main([*argv, "--lr", "1e-3", "--resume"])
    assert "was made with other settings (lr: 0.002 there, 0.001 now)" in str(exit_info.value.code)
    metrics = script.main([*argv, "--resume"])
    assert metrics["steps"] == 32 and (out / "checkpoint.pt").exists() and not checkpoint.parent.exists()


def test_torchrun_two_processes_share_the_global_batch(glue_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "experiments/svi_glue.py", "--task", "sst2", "--data-dir", str(glue_dir), "--max-train-samples", "32",
               "--batch-size", "8", "--epochs", "1", "--max-eval-samples", "16", "--max-length", "32",
               "--num-samples", "2", "--no-progress", "--output-dir", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert (config["world_size"], config["global_batch_size"]) == (2, 8)
    assert metrics["steps"] == 4 and metrics["num_train"] == 32  # 32 rows in global batches of 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one writer, nothing left behind


LAUNCHERS = {"torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
             "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
                            "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_two_process_run_killed_and_resumed_ends_as_an_uninterrupted_one(glue_dir, tmp_path, launcher):
    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, *LAUNCHERS[launcher], "experiments/svi_glue.py", "--task", "sst2", "--data-dir",
                str(glue_dir), "--prior",
                "monteclora_scaled_ab", "--max-train-samples", "64", "--batch-size", "8", "--epochs", "2",
                "--max-eval-samples", "8", "--max-length", "32", "--num-samples", "2", "--no-progress",
                "--checkpoint-every", "1", "--output-dir", str(out), *extra]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    checkpoint = tmp_path / "killed.checkpoint" / "checkpoint.pt"
    child = subprocess.Popen(command(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 300
    while not (checkpoint.exists() and torch.load(checkpoint, weights_only=False)["step"] >= 4):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1][-2000:]
        time.sleep(0.05)
    for proc in Path("/proc").iterdir():  # the launcher and both processes (each in a session of its own)
        try:
            if str(killed) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    child.wait()
    assert 4 <= torch.load(checkpoint, weights_only=False)["step"] < 16 and not killed.exists()
    for out, extra in ((killed, ["--resume"]), (whole, [])):
        done = subprocess.run(command(out, *extra), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    resumed, reference = (torch.load(out / "checkpoint.pt", weights_only=False) for out in (killed, whole))
    assert resumed["step"] == reference["step"] == 16
    for name, value in reference["learnable"].items():
        torch.testing.assert_close(resumed["learnable"][name], value, rtol=0, atol=0, msg=name)
