"""Where one training step of a method spends its time: torch.profiler operator table or cProfile.

Same backbone, batch and loop as ``step_time.py`` (forward + backward + AdamW step), after
``--warmup`` untimed steps; ``--steps`` profiled steps.

    python -m monteclora_pyro.benchmarks.profile_step --method monteclora     # torch.profiler, MiniLM
    python benchmarks/profile_step.py --method monteclora --profiler cprofile # Python call tree
    python benchmarks/profile_step.py --backbone tiny --batch-size 4 --seq-len 16 --steps 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

from ..kinds import positive_int
from . import step_time


def build_step(args: argparse.Namespace):
    """The step closure of ``args.method`` on the backbone and fixed batch (CPU or CUDA)."""
    backbone, batch, device = step_time.prepare(args)
    module = step_time.method_on(args, backbone, args.method, device)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=args.lr)
    module.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.profiler.record_function("## forward (loss)"):
            loss = module(batch)
        with torch.profiler.record_function("## backward"):
            loss.backward()
        with torch.profiler.record_function("## optimizer"):
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step, device


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=step_time.METHODS, default="monteclora")
    step_time.add_arguments(p, skip=("repeats", "rounds", "threads", "json_out", "in_process", "num_samples"))
    p.add_argument("--steps", type=positive_int, default=3, help="profiled steps")
    p.add_argument("--profiler", choices=["torch", "cprofile"], default="torch")
    p.add_argument("--rows", type=positive_int, default=30, help="rows of the printed table")
    args = p.parse_args(argv)
    step, device = build_step(args)
    for _ in range(args.warmup):
        step()
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.profiler == "cprofile":
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.steps):
            step()
        profiler.disable()
        elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(args.rows)
        stats.sort_stats("tottime").print_stats(args.rows)
        print(out.getvalue())
    else:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
        elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows))
    per_step, cpu_per_step = elapsed / args.steps * 1e3, cpu_elapsed / args.steps * 1e3
    print(f"{args.method}: {args.steps} profiled steps, {per_step:.1f} ms/step wall, "
          f"{cpu_per_step:.1f} ms/step process CPU (with profiler)")


if __name__ == "__main__":
    main()
