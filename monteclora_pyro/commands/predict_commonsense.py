r"""Score a saved causal-LM posterior in a new process, export it, and hand it to lm-evaluation-harness.

A run of ``svi_commonsense.py`` saves its posterior in OUT/adapter.  This script loads it, scores the
test rows of the evaluation tasks by option likelihood (posterior mean and S-draw predictive:
accuracy, NLL, ECE, Brier), and optionally exports the posterior-mean adapter in PEFT's format or
merged into the backbone, and writes lm-evaluation-harness tasks of the same rows:

    python experiments/predict_commonsense.py --adapter runs/svi_commonsense/adapter --eval-tasks ARC-Easy,boolq \
        --max-eval-examples 100 --export-peft runs/cs-peft --lm-eval-dir runs/cs-lm-eval
    lm_eval --model hf --model_args pretrained=BACKBONE,peft=runs/cs-peft --include_path runs/cs-lm-eval \
        --tasks monteclora_arc_easy,monteclora_boolq
"""

from __future__ import annotations

import json
import sys

from ..runner.options import add_config_arguments, config_values, parse_arguments
from ..tasks.commonsense.settings import CommonsenseRunConfig
from . import command_parser

SETTINGS = ("data_dir", "eval_tasks", "max_eval_examples", "num_samples", "answer_format", "eval_batch_size", "seed",
            "device", "model")  # the run settings that apply to scoring, as a run declares them


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    p = command_parser(__doc__, prog)
    p.add_argument("--adapter", required=True, help="a saved posterior (a run's OUT/adapter folder)")
    p.add_argument("--export-peft", "--export_peft", default=None,
                   help="write the posterior-mean adapter here (PEFT format)")
    p.add_argument("--export-merged", "--export_merged", default=None,
                   help="write the backbone with the adapter merged here")
    p.add_argument("--lm-eval-dir", "--lm_eval_dir", default=None,
                   help="write lm-evaluation-harness tasks of the same rows here")
    add_config_arguments(p, CommonsenseRunConfig, only=SETTINGS)
    p.set_defaults(max_eval_examples=100)
    args = parse_arguments(p, argv)
    try:
        config = CommonsenseRunConfig(**config_values(args, CommonsenseRunConfig)).resolved()
    except ValueError as error:
        p.error(str(error))
    import pyro

    from ..adapters import export_merged, export_peft, load_adapter
    from ..backbones import resolve_device
    from ..tasks.commonsense.family import CommonsenseFamily, write_lm_eval_task

    try:
        device = resolve_device(config.device)
        module, tokenizer = load_adapter(args.adapter, device, args.model)
        family = CommonsenseFamily(config)
        family.load_eval_sets(tokenizer)
    except ValueError as error:
        sys.exit(f"{p.prog}: error: {error}")
    pyro.set_rng_seed(config.seed)
    metrics = family.evaluate(module, device, None).metrics
    if args.export_peft:
        export_peft(module, args.export_peft)
    if args.export_merged:
        export_merged(module, args.export_merged, tokenizer)
    if args.lm_eval_dir:
        metrics["lm_eval_tasks"] = [write_lm_eval_task(config.data_dir, task, args.lm_eval_dir,
                                                       config.max_eval_examples, config.seed, config.answer_format)
                                    for task in config.eval_task_list()]
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
