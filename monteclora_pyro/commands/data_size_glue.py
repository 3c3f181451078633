"""The posterior's response to data: one prior on growing subsets of a GLUE task's training rows, the same
number of steps (or of epochs) for every size, and the learned perturbation spread and KL per example against the rows.
Resumable (a finished size is read, not run again).  Writes OUT/<task>-<rows>/ (one run each),
OUT/data_size.csv, OUT/data_size.json and OUT/plots/spread_vs_rows.png.

    python experiments/data_size_glue.py --prior monteclora_wide_prior --rows 500,1000,2000,4000 --epochs 16 \
        --posterior-steps 300 --posterior-lr 0.05 --output-dir runs/data_size
"""

from __future__ import annotations

from ..kinds import number_list, positive_int
from ..runner.options import add_config_arguments, config_values, parse_arguments
from ..tasks.glue.settings import GlueRunConfig
from . import command_parser

DEFAULT_STEPS = 250
DEFAULTS = {"max_eval_samples": 200, "num_samples": 4, "progress": False}


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    p = command_parser(__doc__, prog)
    p.add_argument("--rows", type=number_list(positive_int), default=[500, 1000, 2000, 4000],
                   help="the training subsets' sizes (comma-separated)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, default=None,
                        help=f"training steps of every size (default {DEFAULT_STEPS}; epochs: steps x batch / rows)")
    budget.add_argument("--epochs", dest="same_epochs", type=positive_int, default=None,
                        help="instead of --steps: the same epochs for every size (more rows, more steps)")
    p.add_argument("--output-dir", "--output_dir", default="runs/data_size")
    p.add_argument("--report-only", "--report_only", action="store_true", help="run nothing: tabulate the finished")
    add_config_arguments(p, GlueRunConfig, skip=("output_dir", "max_train_samples", "epochs", "max_steps",
                                                 "train_file", "validation_file", "overwrite_output_dir"))
    p.set_defaults(**DEFAULTS)
    args = parse_arguments(p, argv)
    from ..tasks.glue.data_size import data_size_table, run_data_size

    try:
        base = GlueRunConfig(**config_values(args, GlueRunConfig))
        steps = None if args.same_epochs else args.steps or DEFAULT_STEPS
        summary = run_data_size(base, args.rows, steps, args.output_dir, run_missing=not args.report_only,
                                epochs=args.same_epochs)
    except ValueError as error:
        p.error(str(error))
    print(data_size_table(summary))
    return summary


if __name__ == "__main__":
    main()
