r"""Predict with a saved posterior in a new process, and export it for deployment.

A run of ``svi_glue.py`` saves its posterior in OUT/adapter.  This script loads it, evaluates the
posterior-mean and the S-draw predictive on a GLUE dev set, and optionally exports the
posterior-mean adapter in PEFT's format (``PeftModel.from_pretrained``) or merged into the backbone.

    python experiments/predict_glue.py --adapter runs/sst2-monteclora/adapter --task sst2 --num-samples 8 \
        --export-peft runs/sst2-peft --export-merged runs/sst2-merged
"""

from __future__ import annotations

import argparse
import json
import sys

from monteclora_pyro.cli_types import positive_int
from monteclora_pyro.glue_tasks import get_task


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="a saved posterior (a run's OUT/adapter folder)")
    p.add_argument("--task", required=True, help="GLUE task of the dev set to predict")
    p.add_argument("--data-dir", default=None, help="GLUE directory (default: ../shared/data/glue, else the hub)")
    p.add_argument("--model", default=None, help="the backbone, if it moved since training")
    p.add_argument("--num-samples", type=positive_int, default=8, help="posterior draws of the predictive")
    p.add_argument("--max-eval-samples", type=positive_int, default=None)
    p.add_argument("--max-length", type=positive_int, default=128)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--export-peft", default=None, help="write the posterior-mean adapter here (PEFT format)")
    p.add_argument("--export-merged", default=None, help="write the backbone with the adapter merged here")
    args = p.parse_args(argv)
    try:
        task = get_task(args.task)
    except ValueError as error:
        p.error(str(error))
    import pyro
    from transformers import DataCollatorWithPadding

    from monteclora_pyro.adapters import export_merged, export_peft, load_adapter
    from monteclora_pyro.data import default_glue_dir, load_glue
    from monteclora_pyro.metrics import classification_metrics
    from monteclora_pyro.pipeline import make_loader
    from monteclora_pyro.prediction import predict

    try:
        module, tokenizer = load_adapter(args.adapter, args.device, args.model)
    except ValueError as error:
        sys.exit(f"predict_glue.py: error: {error}")
    pyro.set_rng_seed(args.seed)
    data = load_glue(task, args.data_dir or default_glue_dir(), tokenizer, args.max_length, 1,
                     args.max_eval_samples, args.seed)
    loader = make_loader(data[task.dev_splits[0]], DataCollatorWithPadding(tokenizer), args.batch_size, shuffle=False)
    predictions = predict(module, loader, args.num_samples, args.device)
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
    print(json.dumps(report | {"examples": len(labels), "num_samples": args.num_samples}, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
