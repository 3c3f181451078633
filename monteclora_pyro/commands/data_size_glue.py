"""The posterior's response to data: one prior on growing subsets of a GLUE task's training rows, the same
number of steps for every size, and the learned perturbation spread and KL per example against the rows.
Resumable (a finished size is read, not run again).  Writes OUT/<task>-<rows>/ (one run each),
OUT/data_size.csv, OUT/data_size.json and OUT/plots/spread_vs_rows.png.

    python experiments/data_size_glue.py --rows 500,1000,2000,4000 --steps 250 --posterior-steps 300 \
        --posterior-lr 0.05 --output-dir results/data_size/stage
"""

from __future__ import annotations

from ..kinds import number_list, positive_int
from ..runner.options import add_config_arguments, config_values, parse_arguments
from ..tasks.glue.settings import GlueRunConfig
from . import command_parser

DEFAULTS = {"max_eval_samples": 200, "num_samples": 4, "progress": False}


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    p = command_parser(__doc__, prog)
    p.add_argument("--rows", type=number_list(positive_int), default=[500, 1000, 2000, 4000],
                   help="the training subsets' sizes (comma-separated)")
    p.add_argument("--steps", type=positive_int, default=250,
                   help="training steps of every size (its epochs: steps x batch / rows, rounded)")
    p.add_argument("--output-dir", "--output_dir", default="runs/data_size")
    p.add_argument("--report-only", "--report_only", action="store_true", help="run nothing: tabulate the finished")
    add_config_arguments(p, GlueRunConfig, skip=("output_dir", "max_train_samples", "epochs", "max_steps",
                                                 "train_file", "validation_file", "overwrite_output_dir"))
    p.set_defaults(**DEFAULTS)
    args = parse_arguments(p, argv)
    from ..tasks.glue.data_size import data_size_table, run_data_size

    try:
        base = GlueRunConfig(**config_values(args, GlueRunConfig))
        summary = run_data_size(base, args.rows, args.steps, args.output_dir, run_missing=not args.report_only)
    except ValueError as error:
        p.error(str(error))
    print(data_size_table(summary))
    return summary


if __name__ == "__main__":
    main()
