"""Fine-tune a Hugging Face model on a GLUE task with Bayesian LoRA (SVI), evaluate on dev.

With no arguments it runs the embedded default: the packaged MiniLM-L6 on RTE from
../shared/data/glue (or $MONTECLORA_GLUE_DIR), offline.  Writes OUT/config.json and OUT/metrics.json.

    python experiments/svi_glue.py --task rte --prior monteclora --max-steps 200 --output-dir runs/rte
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import arviz as az
import datasets

from monteclora_pyro.cli_types import positive_float, positive_int
from monteclora_pyro.glue import GlueRunConfig, run_glue


def parse_args(argv: list[str] | None = None) -> GlueRunConfig:
    defaults = GlueRunConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=defaults.task, help="GLUE task: cola sst2 mrpc stsb qnli rte wnli mnli")
    p.add_argument("--data-dir", default=None,
                   help="GLUE directory (CoLA/, RTE/, ...); default: ../shared/data/glue if present, else the hub")
    p.add_argument("--output-dir", default=None, help="where metrics.json and config.json go (default runs/TASK-PRIOR)")
    p.add_argument("--prior", default=defaults.prior, help="bundled prior name (models/*.toml) or a .toml path")
    p.add_argument("--guide", default=None, help="guide name (guides/); default: the prior family's own")
    p.add_argument("--peer", default=None, choices=["peft-lora", "peft-monteclora"], help="train a PEFT peer instead")
    p.add_argument("--model", default=None, help="Hugging Face model id or directory (default: packaged MiniLM)")
    p.add_argument("--rank", type=positive_int, default=None, help="LoRA rank (overrides the prior's)")
    p.add_argument("--perturbation-scale", type=positive_float, default=None,
                   help="eps of the monteclora perturbations (overrides the prior's)")
    p.add_argument("--lr", type=positive_float, default=defaults.lr)
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    p.add_argument("--eval-batch-size", type=positive_int, default=defaults.eval_batch_size)
    p.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    p.add_argument("--max-steps", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--num-samples", type=positive_int, default=defaults.num_samples,
                   help="posterior draws averaged by the predictive")
    p.add_argument("--kl-weight", type=float, default=defaults.kl_weight,
                   help="ELBO tempering beta (1 = the ELBO; the paper's lambda is beta / N_train)")
    p.add_argument("--kl-anneal-steps", type=int, default=0, help="linear KL warm-up steps (0 = none)")
    p.add_argument("--peft-kl-loss-weight", type=float, default=defaults.peft_kl_loss_weight)
    p.add_argument("--dirichlet-sampler", choices=["exact", "laplace"], default=defaults.dirichlet_sampler)
    p.add_argument("--max-length", type=positive_int, default=defaults.max_length)
    p.add_argument("--max-train-samples", type=positive_int, default=None)
    p.add_argument("--max-eval-samples", type=positive_int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in ("no_progress", "output_dir")}
    method = args.peer or args.prior.rsplit("/", 1)[-1].removesuffix(".toml")
    output_dir = args.output_dir or f"runs/{args.task}-{method}"
    config = GlueRunConfig(**values, output_dir=output_dir, progress=not args.no_progress)
    try:
        return config.resolved()
    except ValueError as error:
        p.error(str(error))


def main(argv: list[str] | None = None) -> dict:
    config = parse_args(argv)
    datasets.disable_progress_bars()
    print("config:", json.dumps(dataclasses.asdict(config), sort_keys=True), flush=True)
    metrics = run_glue(config)
    summary = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    posterior = Path(config.output_dir) / "posterior.nc"
    if posterior.exists():
        idata = az.from_netcdf(posterior)
        names = [v for v in ("perturbation_std", "factor_std", "factor_norm") if v in idata.posterior]
        print(az.summary(idata, var_names=names, kind="stats", round_to=6).to_string())
    print(f"accuracy: {metrics.get('accuracy', float('nan')):.4f}  (written to {config.output_dir}/metrics.json)")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
