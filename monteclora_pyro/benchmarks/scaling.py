"""Training step time and peak memory against rank r, components N and the number of adapted modules.

Each point of each axis runs PEFT LoRA, PEFT MonteCLoRA and ours ``monteclora`` as
``step_time.py`` workers (one process per method and point: same backbone, fixed batch, loop and
memory measurement), varying one setting from the base (r = 8, N = 8, targets query,value):

    python -m monteclora_pyro.benchmarks.scaling --json-out results/scaling_minilm_cpu.json   # MiniLM, 8 x 128
    python benchmarks/scaling.py --backbone tiny --batch-size 2 --seq-len 8 --ranks 2,4 --components 2,4

Ratios are of the process CPU time per step (with ``--threads 1`` it is the step's compute, unaffected
by other processes time-sharing the cores); wall times are in the JSON.  A method that fails at a point
is reported with its error.  With ``--json-out`` the file is rewritten after every point and a rerun
with the same settings measures only the missing points.  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..artifacts import atomic_write_json
from ..backbones import resolve_device
from ..kinds import number_list, positive_int
from . import step_time

METHODS = ("peft-lora", "peft-monteclora", "monteclora")
BASE = {"rank": 8, "num_components": 8, "targets": "query,value"}
RESULT_KEYS = ("step_seconds_median", "step_cpu_seconds_median", "peak_growth_mib", "trainable_parameters",
               "adapted_modules")


def _target_sets(text: str) -> list[str]:
    sets = [t.strip() for t in text.split(";") if t.strip()]
    if not sets:
        raise argparse.ArgumentTypeError(f"{text!r} holds no target set; separate sets by ';'")
    return sets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_time.add_arguments(p, skip=("rank", "num_components", "targets", "num_samples", "num_data", "lr", "rounds",
                                     "gradient_checkpointing"))
    p.add_argument("--ranks", type=number_list(positive_int), default=[4, 8, 16, 32, 64],
                   help="the rank axis (N, targets at base)")
    p.add_argument("--components", type=number_list(positive_int), default=[2, 4, 8, 16, 32],
                   help="the N axis (r, targets at base)")
    p.add_argument(
        "--target-sets",
        type=_target_sets,
        default=["query", "query,value", "query,key,value", "query,key,value,dense"],
        help="the adapted-modules axis: target lists separated by ';' (r, N at base)",
    )
    p.set_defaults(batch_size=8, warmup=1, repeats=3, threads=1)
    return p


def points(args: argparse.Namespace) -> list[tuple[str, Any, dict[str, Any]]]:
    """(axis, value, settings) for every point: one setting varied, the others at ``BASE``."""
    axes = {"rank": args.ranks, "num_components": args.components, "targets": args.target_sets}
    return [(axis, value, {**BASE, axis: value}) for axis, values in axes.items() for value in values]


def worker_args(args: argparse.Namespace, settings: dict[str, Any]) -> argparse.Namespace:
    """``step_time.py``'s settings for one point: this run's shared ones, the point's r, N and targets."""
    worker = step_time.build_parser().parse_args([])
    for name in ("backbone", "batch_size", "seq_len", "warmup", "repeats", "device", "threads", "seed", "in_process"):
        setattr(worker, name, getattr(args, name))
    vars(worker).update(settings, no_eval=True)
    return worker


def measure(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """One point: every method's step time, CPU time, peak memory growth and trainable parameters.

    A method whose worker fails is recorded with its error (a measured fact, e.g. a peer that
    diverges at some N), and the ratios that need it are ``None``.
    """
    results: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        print(f"{settings}: running {method} ...", file=sys.stderr, flush=True)
        try:
            run = step_time.run_method(worker_args(args, settings), method)
        except RuntimeError as error:
            results[method] = {"error": str(error)}
            continue
        results[method] = {k: run[k] for k in RESULT_KEYS}

    def ratio(key: str, peer: str) -> float | None:
        ours, other = results["monteclora"], results[peer]
        return ours[key] / other[key] if key in ours and other.get(key) else None  # in-process growth may be 0

    return {
        **settings,
        "adapted_modules": next((r["adapted_modules"] for r in results.values() if "adapted_modules" in r), None),
        "methods": results,
        "monteclora_vs_lora": ratio("step_cpu_seconds_median", "peft-lora"),
        "monteclora_vs_peft_monteclora": ratio("step_cpu_seconds_median", "peft-monteclora"),
        "memory_vs_lora": ratio("peak_growth_mib", "peft-lora"),
        "memory_vs_peft_monteclora": ratio("peak_growth_mib", "peft-monteclora"),
    }


def _key(settings: dict[str, Any]) -> tuple:
    return tuple(settings[k] for k in BASE)


def previous_points(args: argparse.Namespace, header: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """Points already in ``--json-out`` from a run with the same settings (an interrupted run resumes)."""
    if not args.json_out or not Path(args.json_out).exists():
        return {}
    written = json.loads(Path(args.json_out).read_text())
    if any(written.get(k) != v for k, v in header.items()):
        return {}
    return {_key(point): point for point in written.get("points", [])}


def _cell(value: float | None, fmt: str) -> str:
    return "failed" if value is None else format(value, fmt)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        "| axis | value | modules | LoRA cpu ms | PEFT MC cpu ms | ours cpu ms | ours/LoRA | ours/PEFT MC "
        "| LoRA +MiB | PEFT MC +MiB | ours +MiB |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        m = row["methods"]
        cpu = [_cell(1e3 * m[k]["step_cpu_seconds_median"] if "error" not in m[k] else None, ".1f") for k in METHODS]
        mem = [_cell(m[k].get("peak_growth_mib"), ".0f") for k in METHODS]
        ratios = [_cell(row[k], ".3f") for k in ("monteclora_vs_lora", "monteclora_vs_peft_monteclora")]
        print(f"| {row['axis']} | {row['value']} | {row['adapted_modules']} | {' | '.join(cpu)} | "
              f"{' | '.join(ratios)} | {' | '.join(mem)} |")
    for row in rows:
        for method, result in row["methods"].items():
            if "error" in result:
                print(f"{row['axis']} = {row['value']}: {method} failed: {result['error']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    header = {
        "backbone": args.backbone,
        "device": step_time.device_name(resolve_device(args.device)),
        "torch": torch.__version__,
        "threads": args.threads,
        "config": {k: getattr(args, k) for k in ("batch_size", "seq_len", "warmup", "repeats", "seed")},
        "base": BASE,
    }
    measured = previous_points(args, header)  # the base point lies on every axis: it is measured once
    rows = []
    for axis, value, settings in points(args):
        if _key(settings) not in measured:
            measured[_key(settings)] = measure(args, settings)
            if args.json_out:  # after every point, so an interrupted run keeps what it measured
                atomic_write_json(args.json_out, {**header, "points": list(measured.values())})
        rows.append({**measured[_key(settings)], "axis": axis, "value": value})
    summary = {**header, "points": rows}
    print_table(rows)
    step_time.emit(summary, args.json_out)
    return summary


if __name__ == "__main__":
    main()
