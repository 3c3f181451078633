"""Side by side on one GLUE task with identical settings: ours (monteclora, map) and PEFT's peers.

Every method gets the same data, seed, rank, targets, steps and optimizer; the table gives dev
accuracy (posterior mean and predictive for ours), NLL and the median training-step time, all
measured in this one process.  Results go to OUT/summary.json and OUT/<method>/metrics.json.

    python experiments/compare_peft.py --task rte --max-steps 150 --output-dir runs/compare-rte
"""

from __future__ import annotations

import sys

import datasets

from ..artifacts import atomic_write_json
from ..runner.options import add_config_arguments, config_values, parse_arguments
from ..runner.sweep import method_config
from ..tasks.glue.family import run_glue
from ..tasks.glue.settings import GlueRunConfig
from . import command_parser

METHODS = ("monteclora", "monteclora_scaled", "map", "gaussian", "peft-monteclora", "peft-lora")


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    p = command_parser(__doc__, prog)
    p.add_argument("--output-dir", "--output_dir", default="runs/compare")
    p.add_argument("--methods", default="monteclora,map,peft-monteclora")
    add_config_arguments(p, GlueRunConfig, skip=("output_dir", "prior", "guide", "peer"))
    p.set_defaults(task="rte", max_train_samples=None, epochs=1)
    args = parse_arguments(p, argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}; allowed: {', '.join(METHODS)}")
    try:
        base = GlueRunConfig(**config_values(args, GlueRunConfig))
        configs = {m: method_config(base, m, f"{args.output_dir}/{m}").resolved() for m in methods}  # all checked
    except ValueError as error:
        p.error(str(error))
    datasets.disable_progress_bars()
    rows = {}
    for method, config in configs.items():
        print(f"== {method}", flush=True)
        try:
            metrics = run_glue(config)
        except (ValueError, FloatingPointError) as error:  # e.g. a finished run in the way, a diverged loss
            sys.exit(f"{p.prog}: error: {error}")
        rows[method] = {k: metrics.get(k) for k in
                        ("accuracy", "mean_accuracy", "nll", "mean_nll", "median_step_seconds", "steps")}
    print(f"\n{'method':<16} {'acc (pred)':>10} {'acc (mean)':>10} {'nll':>8} {'step s':>8}")
    for method, row in rows.items():
        print(f"{method:<16} {row['accuracy']:>10.4f} {row['mean_accuracy']:>10.4f} {row['nll']:>8.4f} "
              f"{row['median_step_seconds']:>8.3f}")
    summary = {"task": args.task, "settings": vars(args), "methods": rows}
    atomic_write_json(f"{args.output_dir}/summary.json", summary)
    return summary


if __name__ == "__main__":
    main()
