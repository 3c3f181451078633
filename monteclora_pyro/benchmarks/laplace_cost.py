"""What the Laplace approximation costs beside training and plain prediction, on one fixed batch.

Times, interleaved (``step_time``'s backbone, batch and timing): a training step of plain LoRA (forward,
backward, AdamW), the Laplace fit's work on one batch (the diagonal or Kronecker-factored GGN: one forward
and, for two classes, one backward pass), a posterior-mean evaluation and the linearized predictive.  The fit passes
over the training rows once, as an epoch does, so ``fit / train step`` is the fit's cost in epochs; the
linearized predictive is reported as a multiple of the posterior-mean evaluation of the same rows.

    python benchmarks/laplace_cost.py                       # MiniLM, batch 32, 128 tokens
    python benchmarks/laplace_cost.py --curvature kron        # Laplace-LoRA's K-FAC
    python benchmarks/laplace_cost.py --backbone tiny --batch-size 4 --seq-len 16 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from ..artifacts import atomic_write_json
from ..kinds import positive_int
from ..priors.laplace import CURVATURES
from . import step_time

PRIORS = dict(zip(CURVATURES, ("laplace", "laplace_kron"), strict=True))  # each curvature's bundled declaration


def measure(args: argparse.Namespace) -> dict:
    """Median wall and CPU seconds of each operation and the two ratios."""
    backbone, batch, device = step_time.prepare(args)
    module = step_time.method_on(args, backbone, PRIORS[args.curvature], device)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=args.lr)

    def train_step():
        module.train()
        optimizer.zero_grad(set_to_none=True)
        module(batch).backward()
        optimizer.step()

    module.fit_posterior([batch], device)  # the linearized predictive needs a fitted posterior

    def fit():
        module.prior.curvature(module, [batch], device)

    @torch.no_grad()
    def posterior_mean():
        module.eval()
        module.network_output(batch)

    @torch.no_grad()
    def linearized():
        module.eval()
        module.linearized_outputs(batch, args.num_samples)

    times = step_time.time_interleaved({"train_step": train_step, "laplace_fit": fit, "posterior_mean": posterior_mean,
                                        "linearized_predictive": linearized}, args.warmup, args.repeats, device)
    seconds = {name: statistics.median(wall) for name, (wall, _) in times.items()}
    cpu = {name: statistics.median(cpu) for name, (_, cpu) in times.items()}
    return {"backbone": args.backbone, "curvature": args.curvature,
            "batch_size": args.batch_size, "seq_len": args.seq_len,
            "device": step_time.device_name(device), "threads": torch.get_num_threads(),
            "repeats": args.repeats, "median_seconds": seconds, "median_cpu_seconds": cpu,
            "fit_epochs_per_training_epoch": seconds["laplace_fit"] / seconds["train_step"],
            "linearized_over_posterior_mean": seconds["linearized_predictive"] / seconds["posterior_mean"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_time.add_arguments(p, skip=("rounds", "in_process", "num_components", "num_samples"))
    p.add_argument("--num-samples", type=positive_int, default=32, help="draws of the linearized outputs")
    p.add_argument("--curvature", choices=CURVATURES, default=CURVATURES[0], help="the GGN's approximation")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    for name, value in result["median_seconds"].items():
        print(f"{name:24s} {value * 1e3:9.1f} ms")
    print(f"Laplace fit / training step:                  {result['fit_epochs_per_training_epoch']:.2f} "
          "(epochs of training the fit costs)")
    print(f"linearized predictive / posterior-mean eval:  {result['linearized_over_posterior_mean']:.2f}")
    if args.json_out:
        atomic_write_json(args.json_out, result)
    else:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
