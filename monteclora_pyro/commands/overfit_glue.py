r"""The overfitting benchmark: small GLUE training sets, several epochs, calibration per method.

Every method trains on the same seeded subset (a share held out for temperature scaling) once per
seed, and is also scored after temperature scaling (``<method>+temperature``); ``map`` also yields
``map+mc_dropout``.  Each method's per-row NLL is compared with ``map``'s and ``map+temperature``'s
(paired bootstrap intervals).  Resumable, and processes may share OUT if they split --seeds or
--tasks.  Writes OUT/<task>/overfitting.csv, OUT/<task>/comparisons.csv, OUT/summary.json and
OUT/plots/ece_vs_epoch_<task>.png.

    python experiments/overfit_glue.py --tasks sst2,mrpc,stsb --seeds 0,1,2 \
        --methods map,monteclora,monteclora_scaled,gaussian,peft-monteclora --output-dir results/overfitting
"""

from __future__ import annotations

from ..kinds import integer, number_list
from ..runner.options import add_config_arguments, config_values, parse_arguments
from ..tasks.glue.settings import GlueRunConfig
from . import command_parser

BENCHMARK_DEFAULTS = {"max_train_samples": 1000, "holdout_fraction": 0.1, "epochs": 6, "mc_dropout_samples": 8,
                      "max_eval_samples": None, "num_samples": 32, "epoch_num_samples": 4, "progress": False}


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    p = command_parser(__doc__, prog)
    p.add_argument("--tasks", default="sst2,mrpc,stsb", help="comma-separated GLUE tasks")
    p.add_argument("--methods", default="map,monteclora,monteclora_scaled,gaussian,peft-monteclora",
                   help="bundled prior names or .toml paths (ours) and peft-lora / peft-monteclora")
    p.add_argument("--seeds", type=number_list(integer), default=[0, 1, 2])
    p.add_argument("--output-dir", "--output_dir", default="runs/overfitting")
    p.add_argument("--report-only", "--report_only", action="store_true",
                   help="run nothing: summarize the finished cells")
    add_config_arguments(p, GlueRunConfig, skip=("task", "output_dir", "prior", "guide", "peer", "seed",
                                                 "eval_each_epoch"))
    p.set_defaults(**BENCHMARK_DEFAULTS)
    args = parse_arguments(p, argv)
    from ..runner.benchmark import summary_text
    from ..tasks.glue.overfitting import run_overfitting

    split = [t.strip() for t in args.tasks.split(",") if t.strip()], [m.strip() for m in args.methods.split(",")]
    try:
        base = GlueRunConfig(**config_values(args, GlueRunConfig))
        summary = run_overfitting(base, *split, args.seeds, args.output_dir, run_missing=not args.report_only)
    except ValueError as error:
        p.error(str(error))
    print(summary_text(summary))
    return summary


if __name__ == "__main__":
    main()
