r"""Calibration under distribution shift: train on OpenBookQA, score OpenBookQA (in domain), ARC-Easy and
ARC-Challenge (shifted), BLoB's protocol, with the packaged SmolLM2-135M.

Every method trains once per seed (a post-hoc one, ``laplace``, is fitted to the ``map`` cell of its seed
instead), and is also scored after a temperature fitted on held-out OpenBookQA training rows
(``<method>+temperature``); the ``map`` cells of all seeds are also scored as one LoRA ensemble.  Each
method's per-row NLL is compared with ``map``'s and ``map+temperature``'s (paired bootstrap intervals), and
its uncertainty's power to tell shifted rows from in-domain ones is an AUROC.  Resumable, and processes may
share OUT if they split --seeds or --methods.  Writes OUT/<task>.csv, OUT/comparisons.csv,
OUT/shift_auroc.csv, OUT/summary.json and OUT/summary.md.

    python experiments/shift_commonsense.py --seeds 0,1,2 --methods map,laplace,blob,monteclora_scaled_ab \
        --output-dir results/commonsense/shift
"""

from __future__ import annotations

import argparse

from ..kinds import integer, number_list
from ..runner.options import add_config_arguments, config_values, parse_arguments
from ..tasks.commonsense.settings import CommonsenseRunConfig
from . import command_parser

# 810 training rows (one epoch: 102 steps of 8) and 90 held out; 200 test rows of each task, the same for
# every seed; the options' own texts as the answers (plain LoRA learns OpenBookQA in that format)
BENCHMARK_DEFAULTS = {"train_tasks": "openbookqa", "max_train_samples": 900, "holdout_fraction": 0.1,
                      "answer_format": "text", "epochs": 1, "lr": 2e-3, "batch_size": 8,
                      "eval_tasks": "openbookqa,ARC-Easy,ARC-Challenge", "max_eval_examples": 200, "eval_seed": 0,
                      "num_samples": 4, "progress": False}


def _method_samples(text: str) -> dict[str, int]:
    """``laplace=2,blob=10`` -> {"laplace": 2, "blob": 10}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if not value.strip().isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not METHOD=DRAWS with DRAWS a positive integer")
        out[name.strip()] = int(value)
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    p = command_parser(__doc__, prog)
    p.add_argument("--methods", default="map,laplace,blob,monteclora_scaled_ab",
                   help="bundled prior names or .toml paths (ours) and peft-lora / peft-monteclora; a laplace-family "
                        "method needs map")
    p.add_argument("--seeds", type=number_list(integer), default=[0, 1, 2])
    p.add_argument("--output-dir", "--output_dir", default="runs/shift")
    p.add_argument("--method-samples", "--method_samples", type=_method_samples, default={},
                   help="another number of posterior draws for some methods, e.g. laplace=2 (each draw of a "
                        "linearized laplace predictive costs two forward passes)")
    p.add_argument("--report-only", "--report_only", action="store_true",
                   help="run nothing: summarize the finished cells")
    add_config_arguments(p, CommonsenseRunConfig, skip=("output_dir", "prior", "guide", "peer", "seed",
                                                        "init_adapter"))
    p.set_defaults(**BENCHMARK_DEFAULTS)
    args = parse_arguments(p, argv)
    from ..runner.benchmark import summary_text
    from ..tasks.commonsense.shift import run_shift, shift_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        base = CommonsenseRunConfig(**config_values(args, CommonsenseRunConfig))
        summary = run_shift(base, methods, args.seeds, args.output_dir, run_missing=not args.report_only,
                            method_samples=args.method_samples)
    except ValueError as error:
        p.error(str(error))
    print(summary_text(summary))
    print("\n" + shift_table(summary))
    return summary


if __name__ == "__main__":
    main()
