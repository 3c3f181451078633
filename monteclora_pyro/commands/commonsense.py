r"""Fine-tune a causal LM on commonsense reasoning with Bayesian LoRA (SVI), score it on the eight tasks.

With no arguments it runs the embedded default, offline: the packaged SmolLM2-135M-Instruct (GGUF,
dequantized on load) on 64 ARC-Easy training rows from ../shared/data/commonsense (or
$MONTECLORA_COMMONSENSE_DIR), scored on 10 test rows of every task there by the likelihood of each
answer option under the posterior predictive.  Writes OUT/config.json, OUT/metrics.json (each task's
metrics under its name, and their average), OUT/posterior.nc and OUT/plots/.

    python experiments/svi_commonsense.py --train-tasks boolq,ARC-Easy,ARC-Challenge,openbookqa \
        --max-train-samples all --epochs 2 --eval-tasks ARC-Challenge,ARC-Easy --max-eval-examples all
"""

from __future__ import annotations

import sys

from ..runner.options import add_config_arguments, config_values, parse_arguments, resolve_or_exit
from ..tasks.commonsense.settings import CommonsenseRunConfig
from . import command_parser


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> CommonsenseRunConfig:
    p = command_parser(__doc__, prog)
    add_config_arguments(p, CommonsenseRunConfig)
    return resolve_or_exit(p, CommonsenseRunConfig, config_values(parse_arguments(p, argv), CommonsenseRunConfig))


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    config = parse_args(argv, prog)
    from ..runner.pipeline import run_or_exit  # torch and the rest load once the arguments are good
    from ..tasks.commonsense.family import CommonsenseFamily

    metrics = run_or_exit(CommonsenseFamily(config), prog or sys.argv[0])
    if not metrics:  # another process than rank 0 of a multi-process run: rank 0 reports
        return metrics
    tasks = [*config.eval_task_list(), "average"]
    columns = [k for k in ("accuracy", "nll", "ece", "brier", "mean_accuracy", "mean_ece", "unanswered")
               if k in metrics["average"]]
    print(f"{'task':<15}" + "".join(f"{c:>15}" for c in columns))
    for task in tasks:
        print(f"{task:<15}" + "".join(f"{metrics[task][c]:>15.4f}" for c in columns))
    print(f"steps {metrics['steps']}, {metrics['train_seconds']:.0f} s of training "
          f"(written to {config.output_dir}/metrics.json)")
    return metrics


if __name__ == "__main__":
    main()
