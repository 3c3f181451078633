"""Training step time, peak memory and eval throughput: PEFT LoRA, PEFT MonteCLoRA and ours, side by side.

Every method gets the same backbone (same seed), the same fixed batch (seeded random token ids,
attention mask all ones, random labels, ``idx = arange(batch)``), the same rank, targets and number
of components, and the same loop: forward + backward + AdamW step, ``--warmup`` steps, then the
median over ``--repeats`` timed steps.  Each method runs in its own subprocess (this script
re-invoked with ``--worker METHOD``), so each peak memory is its own: the growth of the peak resident
set (CPU; the peak is reset through ``/proc/self/clear_refs`` once the backbone and batch are built)
or of ``torch.cuda.max_memory_allocated`` (CUDA) while the method is built and trained.

Ours ``monteclora`` also reports eval throughput: the posterior-mean forward against the S-draw
posterior predictive (draws taken once and one forward per draw, as ``predict`` does).

    python -m monteclora_pyro.benchmarks.step_time                   # MiniLM, 32 x 128, CPU or CUDA
    python benchmarks/step_time.py --backbone roberta-base --device cuda --json-out results/step.json
    python benchmarks/step_time.py --backbone tiny --batch-size 4 --seq-len 16 --warmup 1 --repeats 2

The last line printed is one JSON object (ratios, raw per-method numbers, backbone, device, versions).
On a loaded machine use ``--rounds 3`` (each method keeps its fastest round) and the CPU-time ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..kinds import nonnegative_int, optional, positive_int
from ..runner.options import add_config_arguments, option
from ..runner.settings import RunConfig

BACKBONES = ("minilm", "roberta-base", "llama-7b", "tiny", "tiny-24", "llama-tiny")
METHODS = ("peft-lora", "peft-monteclora", "map", "monteclora")
NUM_LABELS = 2
RUN_SETTINGS = ("batch_size", "rank", "targets", "num_samples", "lr", "seed", "device")  # declared by RunConfig


@dataclass
class StepTimeConfig:
    """The benchmark's own settings (the rest are a run's: :data:`RUN_SETTINGS`)."""

    backbone: str = option("minilm", "minilm (packaged MiniLM-L6), roberta-base or llama-7b (random-initialized "
                                     "shapes; LLaMA in bf16 on CUDA), tiny (2 layers), tiny-24 (24 layers: many "
                                     "adapted modules) or llama-tiny (tests)", choices=BACKBONES)
    seq_len: int = option(128, "tokens per example of the fixed batch", positive_int)
    warmup: int = option(2, "untimed steps before the timed ones", nonnegative_int)
    repeats: int = option(5, "timed steps; the median is reported", positive_int)
    num_components: int = option(8, "N, the MonteCLoRA components", positive_int)
    num_data: int = option(1000, "training-set size N (ELBO scaling)", positive_int)
    rounds: int = option(1, "run the four workers this many times, interleaved; each method keeps its fastest "
                            "round's median (robust to other load on the machine)", positive_int)
    threads: int | None = option(None, "torch intra-op threads (default: torch's)", optional(positive_int))
    json_out: str | None = option(None, "also write the final JSON here (atomically)")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (every method alike)")
    in_process: bool = option(False, "run the methods in this process, one after another (a quick smoke run: the "
                                      "peak memory of a method is then not its own)")


WORKER_MODULE = "monteclora_pyro.benchmarks.step_time"  # this module, also when run as ``python -m`` (__main__)
WORKER_SETTINGS = ("backbone", "seq_len", "warmup", "repeats", "num_components", "num_data", "threads",
                   "gradient_checkpointing", *RUN_SETTINGS)  # what a worker is told


# ----------------------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The benchmark's settings and the run settings it shares (:data:`RUN_SETTINGS`), as options of ``p``."""
    add_config_arguments(p, StepTimeConfig, skip=skip)
    add_config_arguments(p, RunConfig, only=RUN_SETTINGS, skip=skip)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--no-eval", action="store_true", help=argparse.SUPPRESS)  # workers of scaling.py
    p.add_argument("--worker", choices=METHODS, default=None, help=argparse.SUPPRESS)
    return p


def worker_argv(args: argparse.Namespace, method: str) -> list[str]:
    """The command line that runs this benchmark as the worker of one method."""
    argv = [sys.executable, "-m", WORKER_MODULE, "--worker", method]
    for name in WORKER_SETTINGS:
        value = getattr(args, name)
        if isinstance(value, bool):
            argv += ["--" + ("" if value else "no-") + name.replace("_", "-")]
        elif value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv + (["--no-eval"] if args.no_eval else [])


# ----------------------------------------------------------------------------- backbone and batch
def build_backbone(name: str, seq_len: int, device: torch.device | None = None) -> torch.nn.Module:
    """The backbone, with weights fixed by the seed set before the call (random-initialized shapes).

    LLaMA shapes are built directly on ``device``, in bf16 on CUDA (a 7B model never exists in fp32).
    """
    if name.startswith("llama"):
        from transformers import LlamaConfig, LlamaForSequenceClassification

        sizes = (
            {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}
            if name == "llama-7b"
            else {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
        )
        config = LlamaConfig(vocab_size=32000, max_position_embeddings=max(2048, seq_len), num_labels=NUM_LABELS,
                             pad_token_id=0, **sizes)
        device = device or torch.device("cpu")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with device:
                return LlamaForSequenceClassification(config)
        finally:
            torch.set_default_dtype(default_dtype)
    if name == "minilm":
        from ..backbones import load_classifier
        from ..tasks.glue.settings import default_model

        model, _ = load_classifier(default_model(), NUM_LABELS)
    elif name == "roberta-base":
        from transformers import RobertaConfig, RobertaForSequenceClassification

        config = RobertaConfig(num_labels=NUM_LABELS)
        model = RobertaForSequenceClassification(config)
    elif name in ("tiny", "tiny-24"):  # tiny-24: the same shapes 24 layers deep (many adapted modules)
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=1000,
            hidden_size=32,
            num_hidden_layers=24 if name == "tiny-24" else 2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=max(512, seq_len),
            num_labels=NUM_LABELS,
        )
        model = BertForSequenceClassification(config)
    else:
        raise ValueError(f"backbone {name!r} is unknown; available: {', '.join(BACKBONES)}")
    positions = getattr(model.config, "max_position_embeddings", None)
    padding = 2 if model.config.model_type == "roberta" else 0  # RoBERTa's positions start after the pad id
    if positions is not None and seq_len > positions - padding:
        raise ValueError(f"seq_len = {seq_len} exceeds the backbone's {positions - padding} positions")
    return model


def build_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """The fixed batch: seeded token ids (above the special ids), full attention, random labels, idx."""
    generator = torch.Generator().manual_seed(seed)
    low = min(5, vocab_size - 1)
    return {
        "input_ids": torch.randint(low, vocab_size, (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=generator),
        "idx": torch.arange(batch_size),
    }


# ----------------------------------------------------------------------------- measurement helpers
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Growth of the peak memory between :meth:`start` and :meth:`stop`, in MiB.

    CPU: the peak resident set is reset (``/proc/self/clear_refs``) at start, so the growth is
    VmHWM at stop minus VmRSS at start; without that file, ``ru_maxrss`` after minus before (which
    under-reports when an earlier transient peak was higher).  CUDA: ``max_memory_allocated`` growth.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        gc.collect()
        self.rss_method = "ru_maxrss"
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.rss_method = "clear_refs"
        except OSError:
            pass
        rss = _proc_status_kib("VmRSS") if self.rss_method == "clear_refs" else None
        self.rss_before = rss if rss is not None else _maxrss_kib()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_before = torch.cuda.memory_allocated(self.device)

    def stop(self) -> dict[str, Any]:
        hwm = _proc_status_kib("VmHWM") if self.rss_method == "clear_refs" else None
        rss_peak = hwm if hwm is not None else _maxrss_kib()
        result: dict[str, Any] = {
            "rss_method": self.rss_method,
            "peak_rss_mib": rss_peak / 1024,
            "peak_rss_growth_mib": max(rss_peak - self.rss_before, 0) / 1024,
        }
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            result["peak_cuda_mib"] = peak / 2**20
            result["peak_cuda_growth_mib"] = (peak - self.cuda_before) / 2**20
        result["peak_growth_mib"] = result[
            "peak_cuda_growth_mib" if self.device.type == "cuda" else "peak_rss_growth_mib"
        ]
        return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]], warmup: int, repeats: int, device: torch.device
) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds of ``repeats`` calls of each function, after ``warmup`` untimed ones.

    The functions take turns within each repeat, so a change of load on the machine hits them alike.
    The CPU time (all threads of this process) is the cross-check when other processes load the
    machine: time-sharing stretches the wall time, the CPU time much less (not at all with 1 thread).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[name][0].append(time.perf_counter() - start)
            times[name][1].append(time.process_time() - cpu_start)
    return times


def time_calls(
    fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    return time_interleaved({"fn": fn}, warmup, repeats, device)["fn"]


# ----------------------------------------------------------------------------- one method
def prepare(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.device]:
    """(the seeded backbone, the fixed batch, the device) every method gets."""
    from ..backbones import resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    backbone = build_backbone(args.backbone, args.seq_len, device).to(device)
    if args.gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = build_batch(backbone.config.vocab_size, args.batch_size, args.seq_len, args.seed)
    return backbone, {k: v.to(device) for k, v in batch.items()}, device


def method_on(args: argparse.Namespace, backbone: torch.nn.Module, method: str, device: torch.device):
    """``method`` (a peer, or ours with the bundled prior of that name) built by the library on ``backbone``."""
    from ..declarations import PEERS, load_prior
    from ..likelihoods import build_likelihood
    from ..methods import build_method

    peer = method if method in PEERS else None
    family = "monteclora" if peer else method
    targets = None if args.targets is None else [t.strip() for t in args.targets.split(",") if t.strip()]
    spec = load_prior(family, rank=args.rank, targets=targets,
                      num_components=args.num_components if family == "monteclora" else None)
    torch.manual_seed(args.seed)  # same LoRA / sampler initialization stream for every method
    module = build_method(backbone, spec, build_likelihood(NUM_LABELS), args.num_data, peer=peer,
                          autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)
    return module.to(device)


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Build one method on the backbone, train it for warmup + repeats steps, report times and memory."""
    method = args.worker
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backbone, batch, device = prepare(args)
    memory = PeakMemory(device)
    memory.start()
    module = method_on(args, backbone, method, device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    module.train()
    losses: list[torch.Tensor] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = module(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    load_before = os.getloadavg()
    seconds, cpu_seconds = time_calls(step, args.warmup, args.repeats, device)
    result: dict[str, Any] = {
        "method": method,
        "step_seconds_median": statistics.median(seconds),
        "step_seconds": seconds,
        "step_cpu_seconds_median": statistics.median(cpu_seconds),
        "trainable_parameters": sum(p.numel() for p in params),
        "adapted_modules": sum(1 for name, _ in module.named_modules() if name.endswith(".lora_A")),
        "final_loss": float(losses[-1]),
        "load_average": [load_before[0], os.getloadavg()[0]],  # 1-minute load before / after the steps
        **memory.stop(),
    }
    if not math.isfinite(result["final_loss"]):
        raise FloatingPointError(f"{method}: the loss is {result['final_loss']}")
    module.eval()
    if method in ("peft-lora", "monteclora") and not args.no_eval:
        result["eval"] = eval_throughput(module, batch, args, device, predictive=method == "monteclora")
    return result


@torch.no_grad()
def eval_throughput(module, batch, args, device, predictive: bool) -> dict[str, Any]:
    """The posterior-mean forward (for PEFT LoRA, the zero-overhead reference) and, with ``predictive``, the
    S-draw posterior predictive (draws taken once, as ``predict`` does)."""
    from ..prediction import draw_outputs, posterior_draws

    def mean() -> torch.Tensor:
        return module.likelihood.predictive(module.network_output(batch))

    calls: dict[str, Callable[[], Any]] = {"mean": mean}
    result: dict[str, Any] = {}
    if predictive:
        start = time.perf_counter()
        draws = posterior_draws(module, args.num_samples)
        _sync(device)
        result.update(num_samples=len(draws), draw_seconds=time.perf_counter() - start)
        calls["predictive"] = lambda: draw_outputs(module, batch, draws).mean(1)
    times = time_interleaved(calls, args.warmup, args.repeats, device)
    for name, (wall, cpu) in times.items():
        seconds = statistics.median(wall)
        result.update({f"{name}_seconds": seconds, f"{name}_cpu_seconds": statistics.median(cpu),
                       f"{name}_examples_per_second": args.batch_size / seconds})
    return result


# ----------------------------------------------------------------------------- driver
def run_method(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """Run one worker subprocess and parse the JSON object on its last stdout line (or, with
    ``--in-process``, the worker here, restoring the thread count it sets)."""
    if args.in_process:
        threads = torch.get_num_threads()
        try:
            return json.loads(json.dumps(run_worker(argparse.Namespace(**{**vars(args), "worker": method}))))
        finally:
            torch.set_num_threads(threads)
    process = subprocess.run(worker_argv(args, method), capture_output=True, text=True)
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    if process.returncode != 0 or not lines:
        sys.stderr.write(process.stderr)
        errors = [line for line in process.stderr.splitlines() if line.strip()]
        reason = errors[-1] if errors else "no output"
        raise RuntimeError(f"the {method} worker failed (exit code {process.returncode}): {reason}")
    return json.loads(lines[-1])


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's result: the round with the fastest median step, the other rounds' medians kept."""
    best = dict(min(runs, key=lambda r: r["step_seconds_median"]))
    best["round_step_seconds_medians"] = [r["step_seconds_median"] for r in runs]
    best["round_peak_growth_mib"] = [r["peak_growth_mib"] for r in runs]
    return best


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def summarize(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from ..backbones import resolve_device

    device = resolve_device(args.device)
    step = {m: r["step_seconds_median"] for m, r in results.items()}
    cpu = {m: r["step_cpu_seconds_median"] for m, r in results.items()}
    peak = {m: r["peak_growth_mib"] for m, r in results.items()}
    ours_eval = results["monteclora"]["eval"]
    own_peaks = not args.in_process  # in one process, a method's peak is not its own: no memory ratios
    return {
        "monteclora_vs_lora": step["monteclora"] / step["peft-lora"],
        "monteclora_vs_peft_monteclora": step["monteclora"] / step["peft-monteclora"],
        "map_vs_lora": step["map"] / step["peft-lora"],
        "peft_monteclora_vs_lora": step["peft-monteclora"] / step["peft-lora"],
        "memory_vs_lora": peak["monteclora"] / peak["peft-lora"] if own_peaks else None,
        "memory_vs_peft_monteclora": peak["monteclora"] / peak["peft-monteclora"] if own_peaks else None,
        "predictive8_vs_mean": ours_eval["predictive_seconds"] / ours_eval["mean_seconds"],
        # the predictive's cost per draw over the mean forward's (1 = no overhead beyond S forwards)
        "predictive_per_draw_vs_mean": ours_eval["predictive_seconds"]
        / (ours_eval["num_samples"] * ours_eval["mean_seconds"]),
        "cpu_time_ratios": {
            "monteclora_vs_lora": cpu["monteclora"] / cpu["peft-lora"],
            "monteclora_vs_peft_monteclora": cpu["monteclora"] / cpu["peft-monteclora"],
            "map_vs_lora": cpu["map"] / cpu["peft-lora"],
            "predictive8_vs_mean": ours_eval["predictive_cpu_seconds"] / ours_eval["mean_cpu_seconds"],
        },
        "mean_eval_vs_lora": ours_eval["mean_seconds"] / results["peft-lora"]["eval"]["mean_seconds"],
        "tokens_per_second": {m: args.batch_size * args.seq_len / s for m, s in step.items()},
        "methods": results,
        "backbone": args.backbone,
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "in_process": args.in_process,
        "config": {k: getattr(args, k) for k in (*RUN_SETTINGS, "seq_len", "warmup", "repeats", "num_components",
                                                 "num_data", "rounds")},
    }


def print_table(summary: dict[str, Any]) -> None:
    methods = summary["methods"]
    lora = methods["peft-lora"]
    config = summary["config"]
    print(
        f"\nbackbone {summary['backbone']}, batch {config['batch_size']} x {config['seq_len']}, "
        f"rank {config['rank'] or 'of the prior'}, N {config['num_components']}, "
        f"targets {config['targets'] or 'of the prior'}, "
        f"{summary['device']}, torch {summary['torch']}, {summary['threads']} threads"
    )
    header = (
        f"{'method':<16} {'step ms':>9} {'vs LoRA':>8} {'cpu ms':>9} {'vs LoRA':>8} "
        f"{'peak +MiB':>10} {'vs LoRA':>8} {'trainable':>10} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for name in METHODS:
        r = methods[name]
        print(
            f"{name:<16} {1e3 * r['step_seconds_median']:>9.1f} "
            f"{r['step_seconds_median'] / lora['step_seconds_median']:>8.3f} "
            f"{1e3 * r['step_cpu_seconds_median']:>9.1f} "
            f"{r['step_cpu_seconds_median'] / lora['step_cpu_seconds_median']:>8.3f} "
            f"{r['peak_growth_mib']:>10.1f} "
            f"{'-' if summary['in_process'] else format(r['peak_growth_mib'] / lora['peak_growth_mib'], '.3f'):>8} "
            f"{r['trainable_parameters']:>10,} {r['load_average'][0]:>5.2f}"
        )
    print("(load: the machine's 1-minute load average before the steps; above 0 means other processes ran)")
    ours = methods["monteclora"]["eval"]
    print(f"\n{'eval (no_grad)':<34} {'ms/batch':>9} {'examples/s':>11}")
    rows = [
        ("PEFT LoRA forward", lora["eval"]["mean_seconds"]),
        ("ours posterior mean", ours["mean_seconds"]),
        (f"ours predictive, {ours['num_samples']} draws", ours["predictive_seconds"]),
    ]
    for label, seconds in rows:
        print(f"{label:<34} {1e3 * seconds:>9.1f} {config['batch_size'] / seconds:>11.1f}")
    print(f"({ours['num_samples']} posterior draws taken once: {1e3 * ours['draw_seconds']:.1f} ms)\n")
    for key in (
        "monteclora_vs_lora",
        "monteclora_vs_peft_monteclora",
        "map_vs_lora",
        "memory_vs_lora",
        "predictive8_vs_mean",
    ):
        cpu = summary["cpu_time_ratios"].get(key)
        value = "-" if summary[key] is None else format(summary[key], ".3f")
        print(f"{key:<32} {value}" + (f"   (CPU time: {cpu:.3f})" if cpu is not None else ""))


def emit(summary: dict[str, Any], json_out: str | None) -> None:
    """Write the summary to ``json_out`` (atomically) when given, and print it as the last line."""
    if json_out:
        from ..artifacts import atomic_write_json

        atomic_write_json(json_out, summary)
        print(f"written to {json_out}")
    print(json.dumps(summary, sort_keys=True), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(args)), flush=True)
        return None
    if args.no_eval:
        parser.error("--no-eval applies to workers only (benchmarks/scaling.py); the summary needs the eval times")
    print(
        "config:",
        json.dumps({k: v for k, v in vars(args).items() if k != "worker"}, sort_keys=True),
        flush=True,
    )
    rounds: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
    for round_index in range(args.rounds):
        for method in METHODS:
            print(f"round {round_index + 1}/{args.rounds}: running {method} ...", flush=True)
            rounds[method].append(run_method(args, method))
    results = {method: merge_rounds(runs) for method, runs in rounds.items()}
    summary = summarize(args, results)
    print_table(summary)
    emit(summary, args.json_out)
    return summary


if __name__ == "__main__":
    main()
