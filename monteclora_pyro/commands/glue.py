"""Fine-tune a Hugging Face model on a GLUE task with Bayesian LoRA (SVI), evaluate on dev.

With no arguments it runs the embedded default: the packaged MiniLM-L6 on 2000 rows of SST-2 from
../shared/data/glue (or $MONTECLORA_GLUE_DIR) for 2 epochs, offline.  Writes OUT/config.json,
OUT/metrics.json, OUT/posterior.nc and OUT/plots/.

    python experiments/svi_glue.py --task rte --max-train-samples all --epochs 3 --output-dir runs/rte
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..runner.options import add_config_arguments, config_values, parse_arguments, resolve_or_exit
from ..tasks.glue.settings import GlueRunConfig
from . import command_parser


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> GlueRunConfig:
    p = command_parser(__doc__, prog)
    add_config_arguments(p, GlueRunConfig, skip=("output_dir",))
    p.add_argument("--output-dir", "--output_dir", default=None,
                   help="where the results go (default runs/TASK-METHOD)")
    args = parse_arguments(p, argv)
    method = args.peer or args.prior.rsplit("/", 1)[-1].removesuffix(".toml")
    task = "own" if args.train_file else args.task  # your own files' run is not named after a GLUE task
    output_dir = args.output_dir or f"runs/{task}-{method}"
    return resolve_or_exit(p, GlueRunConfig, config_values(args, GlueRunConfig) | {"output_dir": output_dir})


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    config = parse_args(argv, prog)
    from ..runner.pipeline import run_or_exit  # torch and the rest load once the arguments are good
    from ..tasks.glue.family import GlueFamily

    metrics = run_or_exit(GlueFamily(config), prog or sys.argv[0])
    if not metrics:  # another process than rank 0 of a multi-process run: rank 0 reports
        return metrics
    summary = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    posterior = Path(config.output_dir) / "posterior.nc"
    if posterior.exists():
        import arviz as az

        idata = az.from_netcdf(posterior)  # the summaries with one number per layer and draw
        names = [v for v, values in idata.posterior.items() if values.dims == ("chain", "draw", "layer")]
        print(az.summary(idata, var_names=names, kind="stats", round_to=6).to_string())
    _, metric = config.headline()  # accuracy, or CoLA's Matthews correlation, or STS-B's Pearson
    print(f"{metric}: {metrics[metric]:.4f}  (written to {config.output_dir}/metrics.json)")
    return metrics


if __name__ == "__main__":
    main()
