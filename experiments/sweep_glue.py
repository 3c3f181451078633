"""Robustness sweep over learning rates, batch sizes and seeds for several methods on one GLUE task.

Every setting of a single run (``svi_glue.py --help``) applies to all cells, on the full training
set unless --max-train-samples says otherwise.  Resumable: finished cells (OUT/cells/<cell>/metrics.json)
are not rerun.  Writes OUT/sweep.csv (one
row per cell), OUT/robustness.json (mean, std, min, max, max - min per method) and
OUT/plots/metric_vs_lr.png.

    python experiments/sweep_glue.py --task mrpc --lrs 1e-4,3e-4,1e-3,3e-3 --batch-sizes 16,32 \
        --seeds 0,1 --methods map,monteclora,peft-monteclora --output-dir results/sweeps/mrpc
"""

from __future__ import annotations

import argparse
import sys

import datasets

from monteclora_pyro.cli_types import number_list, positive_float, positive_int
from monteclora_pyro.config_cli import add_config_arguments, config_values
from monteclora_pyro.glue import GlueRunConfig
from monteclora_pyro.sweep import run_sweep


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default=None, help="default: runs/sweep-TASK")
    p.add_argument("--methods", default="map,monteclora,peft-monteclora",
                   help="bundled prior names or .toml paths (ours) and peft-lora / peft-monteclora")
    p.add_argument("--lrs", type=number_list(positive_float), default=[1e-4, 3e-4, 1e-3, 3e-3])
    p.add_argument("--batch-sizes", type=number_list(positive_int), default=[16, 32])
    p.add_argument("--seeds", type=number_list(int), default=[0, 1])
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the CSV, statistics and plot of the cells finished so far")
    add_config_arguments(p, GlueRunConfig, skip=("output_dir", "prior", "guide", "peer", "lr", "batch_size", "seed"))
    p.set_defaults(task="mrpc", max_train_samples=None)
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    base = GlueRunConfig(**config_values(args, GlueRunConfig))
    datasets.disable_progress_bars()
    try:
        summary = run_sweep(base, methods, args.lrs, args.batch_sizes, args.seeds,
                            args.output_dir or f"runs/sweep-{args.task}", run_missing=not args.report_only)
    except ValueError as error:
        p.error(str(error))
    print(f"\n{summary['task']}: {summary['metric']} over {summary['finished_cells']} of {summary['grid_cells']} "
          "cells (ECE mean in the last column)")
    print(f"{'method':<18} {'mean':>8} {'std':>8} {'min':>8} {'max':>8} {'max-min':>8} {'cells':>6} {'ECE':>8}")
    for method, s in summary["robustness"].items():
        ece = summary["ece"].get(method, {}).get("mean", float("nan"))
        print(f"{method:<18} {s['mean']:>8.4f} {s['std']:>8.4f} {s['min']:>8.4f} {s['max']:>8.4f} "
              f"{s['spread']:>8.4f} {s['cells']:>6} {ece:>8.4f}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
