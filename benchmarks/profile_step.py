"""Where one training step of a method spends its time: torch.profiler operator table or cProfile.

Same backbone, batch and loop as ``step_time.py`` (forward + backward + AdamW step), after
``--warmup`` untimed steps; ``--steps`` profiled steps.

    python benchmarks/profile_step.py --method monteclora                     # torch.profiler, MiniLM
    python benchmarks/profile_step.py --method monteclora --profiler cprofile # Python call tree
    python benchmarks/profile_step.py --backbone tiny --batch-size 4 --seq-len 16 --steps 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import BACKBONES, METHODS, NUM_LABELS, _spec, build_backbone, build_batch  # noqa: E402


def build_step(args: argparse.Namespace):
    """The step closure of ``args.method`` on the backbone and fixed batch (CPU or CUDA)."""
    from monteclora_pyro.backbones import resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    backbone = build_backbone(args.backbone, args.seq_len).to(device)
    batch = build_batch(backbone.config.vocab_size, args.batch_size, args.seq_len, args.seed)
    batch = {k: v.to(device) for k, v in batch.items()}
    bf16 = device.type == "cuda"
    torch.manual_seed(args.seed)
    if args.method.startswith("peft-"):
        from monteclora_pyro.likelihoods import build_likelihood
        from monteclora_pyro.peers import PeftPeer, peft_peer

        module = PeftPeer(peft_peer(backbone, args.method, _spec(args, "monteclora")), build_likelihood(NUM_LABELS),
                          torch.bfloat16 if bf16 else None).to(device)

        def loss_fn():
            return module(batch)
    else:
        from monteclora_pyro import bayesian_lora_from_model

        module = bayesian_lora_from_model(
            backbone,
            _spec(args, args.method),
            num_data=args.num_data,
            num_labels=NUM_LABELS,
            autocast_dtype=torch.bfloat16 if bf16 else None,
        ).to(device)

        def loss_fn():
            return module(batch)

    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.profiler.record_function("## forward (loss)"):
            loss = loss_fn()
        with torch.profiler.record_function("## backward"):
            loss.backward()
        with torch.profiler.record_function("## optimizer"):
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step, device


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="monteclora")
    p.add_argument("--backbone", choices=BACKBONES, default="minilm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--num-components", type=int, default=8)
    p.add_argument("--targets", default="query,value")
    p.add_argument("--num-data", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--profiler", choices=["torch", "cprofile"], default="torch")
    p.add_argument("--rows", type=int, default=30, help="rows of the printed table")
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
