r"""Predict with a saved posterior in a new process, and export it for deployment.

A run of ``svi_glue.py`` saves its posterior in OUT/adapter.  This script loads it, evaluates the
posterior-mean and the S-draw predictive on a GLUE dev set, and optionally exports the
posterior-mean adapter in PEFT's format (``PeftModel.from_pretrained``) or merged into the backbone.
Several adapters (comma-separated) are scored as their equal-weight mixture: a LoRA ensemble.
``--split holdout`` scores the training rows the run held out instead, to choose between declarations
without touching the dev rows: the settings that drew them (task, data files, ``--max-train-samples``,
``--holdout-fraction``, ``--seed``) are read from the run's ``config.json`` beside the adapter folder, and flags
given win (without that file, give them).

    python experiments/predict_glue.py --adapter runs/sst2-monteclora_wide_prior/adapter --task sst2 --num-samples 8 \
        --export-peft runs/sst2-peft --export-merged runs/sst2-merged
    python experiments/predict_glue.py --adapter runs/seed0/adapter,runs/seed1/adapter,runs/seed2/adapter --task sst2
    python experiments/predict_glue.py --adapter runs/sst2-monteclora_wide_prior/adapter --split holdout
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runner.options import add_config_arguments, config_values, parse_arguments
from ..tasks.glue.settings import GlueRunConfig, default_glue_dir
from . import command_parser

# the run settings that apply to predicting, as a run declares them (your own files: the training run's)
SETTINGS = ("task", "data_dir", "model", "num_samples", "max_eval_samples", "max_length", "eval_batch_size", "seed",
            "device", "train_file", "validation_file", "text_columns", "label_column", "max_train_samples",
            "holdout_fraction")
SPLITS = ("dev", "holdout")
# the settings that drew a run's held-out rows, read from its config.json for --split holdout
HOLDOUT_SETTINGS = ("task", "train_file", "validation_file", "text_columns", "label_column", "max_train_samples",
                    "holdout_fraction", "seed")


def run_holdout_settings(adapter: str) -> dict:
    """The settings that drew the held-out rows of the run whose ``OUT/adapter`` is ``adapter`` (the first
    member's when several are given), from ``OUT/config.json``; empty when there is no such file."""
    record = Path(adapter.split(",")[0].strip()).parent / "config.json"
    if not record.is_file():
        return {}
    try:
        written = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{record} cannot be read ({error.__class__.__name__}); "
                         "give the run's settings as flags") from None
    return {name: written[name] for name in HOLDOUT_SETTINGS if name in written}


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    p = command_parser(__doc__, prog)
    p.add_argument("--adapter", required=True, help="a saved posterior (a run's OUT/adapter folder), or several, "
                                                    "comma-separated: their equal-weight mixture (a LoRA ensemble)")
    p.add_argument("--export-peft", "--export_peft", default=None,
                   help="write the posterior-mean adapter here (PEFT format)")
    p.add_argument("--export-merged", "--export_merged", default=None,
                   help="write the backbone with the adapter merged here")
    p.add_argument("--split", choices=SPLITS, default="dev",
                   help="the rows to score: the task's dev set, or the training rows a run held out (the "
                        "settings that drew them read from the run's config.json beside --adapter; flags win)")
    add_config_arguments(p, GlueRunConfig, only=SETTINGS)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--adapter")
    pre.add_argument("--split")
    known, _ = pre.parse_known_args(argv)
    if known.split == "holdout" and known.adapter:
        try:
            p.set_defaults(**run_holdout_settings(known.adapter))  # below --config's values and the flags
        except ValueError as error:
            p.error(str(error))
    args = parse_arguments(p, argv)
    if args.split == "holdout" and not args.holdout_fraction:
        p.error("--split holdout scores the rows a run held out: give its --holdout-fraction (> 0), "
                "--max-train-samples and --seed (no config.json of the run beside --adapter says them)")
    try:
        config = GlueRunConfig(**config_values(args, GlueRunConfig))
        task = config.glue_task()  # a GLUE task, or your own files (the ones the adapter was trained on)
    except ValueError as error:
        p.error(str(error))
    import pyro
    from transformers import DataCollatorWithPadding

    from ..adapters import export_merged, export_peft, load_adapter
    from ..backbones import resolve_device
    from ..metrics import classification_metrics
    from ..prediction import mixture, predict
    from ..runner.pipeline import make_loader
    from ..tasks.glue.data import load_glue

    folders = [a.strip() for a in args.adapter.split(",") if a.strip()]
    if len(folders) > 1 and (args.export_peft or args.export_merged):
        p.error("--export-peft / --export-merged write one adapter; give one --adapter")
    try:
        device = resolve_device(config.device)
        members = [load_adapter(folder, device, config.model) for folder in folders]  # all checked first
    except ValueError as error:
        sys.exit(f"{p.prog}: error: {error}")
    module, tokenizer = members[0]
    pyro.set_rng_seed(config.seed)
    data_dir = None if task.data_files else config.data_dir or default_glue_dir()
    holdout = args.split == "holdout"
    data = load_glue(task, data_dir, tokenizer, config.max_length, config.max_train_samples if holdout else 1,
                     config.max_eval_samples, config.seed, config.holdout_fraction if holdout else 0.0)
    loader = make_loader(data["holdout" if holdout else task.dev_splits[0]], DataCollatorWithPadding(tokenizer),
                         config.eval_batch_size, shuffle=False)
    predictions = mixture([predict(member, loader, config.num_samples, device) for member, _ in members])
    labels = predictions["labels"]
    if task.num_labels > 1:
        report = {f"mean_{k}": v for k, v in classification_metrics(predictions["mean"], labels).items()}
        report.update(classification_metrics(predictions["predictive"], labels))
    else:
        report = {"mean_mse": float(((predictions["mean"] - labels) ** 2).mean()),
                  "mse": float(((predictions["predictive"] - labels) ** 2).mean())}
    if args.export_peft:
        export_peft(module, args.export_peft)
    if args.export_merged:
        export_merged(module, args.export_merged, tokenizer)
    print(json.dumps(report | {"split": args.split, "examples": len(labels), "num_samples": config.num_samples,
                               "members": len(members)}, indent=2))
    return report


if __name__ == "__main__":
    main()
