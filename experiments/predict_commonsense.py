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

import argparse
import json
import sys

from monteclora_pyro.cli_types import optional, positive_int
from monteclora_pyro.commonsense_tasks import ANSWER_FORMATS, CommonsenseRunConfig


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="a saved posterior (a run's OUT/adapter folder)")
    p.add_argument("--data-dir", default=None, help="task folders (default: ../shared/data/commonsense)")
    p.add_argument("--eval-tasks", default=None, help="comma-separated task folders (default: every one staged)")
    p.add_argument("--max-eval-examples", type=optional(positive_int), default=100, help="test rows per task")
    p.add_argument("--num-samples", type=positive_int, default=8, help="posterior draws of the predictive")
    p.add_argument("--answer-format", choices=ANSWER_FORMATS, default="label",
                   help="the responses the posterior was trained on (the run's --answer-format)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="the backbone, if it moved since training")
    p.add_argument("--export-peft", default=None, help="write the posterior-mean adapter here (PEFT format)")
    p.add_argument("--export-merged", default=None, help="write the backbone with the adapter merged here")
    p.add_argument("--lm-eval-dir", default=None, help="write lm-evaluation-harness tasks of the same rows here")
    args = p.parse_args(argv)
    try:
        config = CommonsenseRunConfig(data_dir=args.data_dir, eval_tasks=args.eval_tasks, seed=args.seed,
                                      max_eval_examples=args.max_eval_examples, num_samples=args.num_samples,
                                      device=args.device, model=args.model,
                                      answer_format=args.answer_format).resolved()
    except ValueError as error:
        p.error(str(error))
    import pyro
    import torch

    from monteclora_pyro.adapters import export_merged, export_peft, load_adapter
    from monteclora_pyro.commonsense import CommonsenseFamily, write_lm_eval_task

    try:
        module, tokenizer = load_adapter(args.adapter, args.device, args.model)
        family = CommonsenseFamily(config)
        family.load_eval_sets(tokenizer)
    except ValueError as error:
        sys.exit(f"predict_commonsense.py: error: {error}")
    pyro.set_rng_seed(args.seed)
    metrics = family.evaluate(module, torch.device(args.device), None).metrics
    if args.export_peft:
        export_peft(module, args.export_peft)
    if args.export_merged:
        export_merged(module, args.export_merged, tokenizer)
    if args.lm_eval_dir:
        metrics["lm_eval_tasks"] = [write_lm_eval_task(config.data_dir, task, args.lm_eval_dir, args.max_eval_examples,
                                                       args.seed, args.answer_format)
                                    for task in config.eval_task_list()]
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
