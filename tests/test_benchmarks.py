"""Smoke tests of the ``step_time`` and ``scaling`` benchmarks on the tiny BERT shape: they run, and their
last line is the JSON.  The methods run in the test's process (``--in-process``); one test runs the real
subprocess workers.

No assertion on wall-clock values: only that every number is there, positive and finite.
"""

from __future__ import annotations

import json
import math

import pytest

from monteclora_pyro.benchmarks import laplace_cost, scaling, step_time

RATIOS = (
    "monteclora_vs_lora",
    "monteclora_vs_peft_monteclora",
    "map_vs_lora",
    "memory_vs_lora",
    "predictive8_vs_mean",
)
METHODS = ("peft-lora", "peft-monteclora", "map", "monteclora")


def _positive_finite(value) -> bool:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and value > 0


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_step_time_tiny(tmp_path, capsys):
    json_out = tmp_path / "step_time.json"
    step_time.main(["--backbone", "tiny", "--batch-size", "4", "--seq-len", "16", "--warmup", "1", "--repeats", "2",
                    "--device", "cpu", "--threads", "1", "--json-out", str(json_out), "--in-process"])
    summary = _last_json(capsys.readouterr().out)

    for key in RATIOS:
        if key.startswith("memory"):  # in one process the peaks are not each method's own
            assert summary[key] is None
        else:
            assert _positive_finite(summary[key]), (key, summary[key])
    assert summary["backbone"] == "tiny"
    assert summary["device"].startswith("cpu")
    assert summary["torch"]
    assert summary["threads"] == 1
    for method in METHODS:
        result = summary["methods"][method]
        assert result["method"] == method
        assert len(result["step_seconds"]) == 2
        for key in ("step_seconds_median", "trainable_parameters"):
            assert _positive_finite(result[key]), (method, key, result[key])
        assert math.isfinite(result["peak_growth_mib"]) and result["peak_growth_mib"] >= 0
        assert math.isfinite(result["final_loss"])
    ours_eval = summary["methods"]["monteclora"]["eval"]
    for key in ("mean_examples_per_second", "predictive_examples_per_second", "draw_seconds"):
        assert _positive_finite(ours_eval[key]), (key, ours_eval[key])
    assert ours_eval["num_samples"] == 8
    # MonteCLoRA adds r + N parameters per adapted layer (4 layers: query, value in 2 layers) to LoRA's
    lora, ours = summary["methods"]["peft-lora"], summary["methods"]["monteclora"]
    assert ours["trainable_parameters"] - lora["trainable_parameters"] == 4 * (8 + 8)
    assert summary["methods"]["map"]["trainable_parameters"] == lora["trainable_parameters"]

    assert json.loads(json_out.read_text()) == summary


@pytest.mark.parametrize("curvature", ["diagonal", "kron"])
def test_laplace_cost_tiny(tmp_path, capsys, curvature):
    json_out = tmp_path / "laplace_cost.json"
    result = laplace_cost.main(["--backbone", "tiny", "--batch-size", "4", "--seq-len", "16", "--warmup", "1",
                                "--repeats", "2", "--device", "cpu", "--threads", "1", "--curvature", curvature,
                                "--json-out", str(json_out)])
    assert result["curvature"] == curvature and json.loads(json_out.read_text()) == result
    for key in ("fit_epochs_per_training_epoch", "linearized_over_posterior_mean",
                *(f"median_seconds.{name}" for name in ("train_step", "laplace_fit", "posterior_mean",
                                                        "linearized_predictive"))):
        value = result["median_seconds"][key.split(".")[1]] if "." in key else result[key]
        assert _positive_finite(value), (key, value)


def test_a_subprocess_worker_reports_its_method():
    """The real driver path: one worker process per method, its JSON on the last line."""
    args = step_time.build_parser().parse_args(["--backbone", "tiny", "--batch-size", "2", "--seq-len", "8",
                                                "--warmup", "0", "--repeats", "1", "--threads", "1"])
    result = step_time.run_method(args, "monteclora")
    assert result["method"] == "monteclora" and result["adapted_modules"] == 4
    assert _positive_finite(result["step_seconds_median"]) and _positive_finite(result["peak_growth_mib"])
    failing = step_time.build_parser().parse_args(["--backbone", "tiny", "--targets", "q_proj"])  # not in BERT
    with pytest.raises(RuntimeError, match=r"the map worker failed \(exit code 1\): .*q_proj"):
        step_time.run_method(failing, "map")


def test_worker_argv_round_trips():
    """The worker's command line carries every setting the driver was given."""
    args = step_time.build_parser().parse_args(["--backbone", "tiny", "--rank", "4", "--targets", "query"])
    argv = step_time.worker_argv(args, "map")
    assert argv[1:3] == ["-m", "monteclora_pyro.benchmarks.step_time"]  # the module, however the driver was started
    again = step_time.build_parser().parse_args(argv[3:])
    assert again.worker == "map"
    for name in ("backbone", "rank", "targets", "batch_size", "seq_len", "num_components", "seed", "device"):
        assert getattr(again, name) == getattr(args, name)


def test_scaling_tiny(tmp_path, capsys):
    """Each axis point reports every method; the adapters' sizes follow r, N and the targets."""
    json_out = tmp_path / "scaling.json"
    argv = ["--backbone", "tiny", "--batch-size", "2", "--seq-len", "8", "--ranks", "2", "--components", "3",
            "--target-sets", "query", "--warmup", "0", "--repeats", "1", "--json-out", str(json_out), "--in-process"]
    scaling.main(argv)
    summary = _last_json(capsys.readouterr().out)
    assert json.loads(json_out.read_text()) == summary
    points = {(p["axis"], p["value"]): p for p in summary["points"]}
    assert set(points) == {("rank", 2), ("num_components", 3), ("targets", "query")}
    for point in points.values():
        methods = point["methods"]
        assert set(methods) == {"peft-lora", "peft-monteclora", "monteclora"}
        for result in methods.values():
            assert _positive_finite(result["step_cpu_seconds_median"])
            assert result["adapted_modules"] == point["adapted_modules"]
        # the tiny BERT has 2 layers; MonteCLoRA adds r + N parameters per adapted module to LoRA's
        extra = methods["monteclora"]["trainable_parameters"] - methods["peft-lora"]["trainable_parameters"]
        assert extra == point["adapted_modules"] * (point["rank"] + point["num_components"])
        assert methods["peft-monteclora"]["trainable_parameters"] == methods["monteclora"]["trainable_parameters"]
    assert points[("targets", "query")]["adapted_modules"] == 2  # query in each of the 2 layers
    assert points[("rank", 2)]["adapted_modules"] == 4  # the base targets: query, value
    assert (points[("rank", 2)]["rank"], points[("num_components", 3)]["num_components"]) == (2, 3)

    scaling.main(argv)  # resumes: nothing left to measure
    again = capsys.readouterr()
    assert "running" not in again.err
    assert _last_json(again.out) == summary
