"""SVI as an ordinary PyTorch training loop (as in Pyro's ``examples/svi_torch.py``).

The loss of a :class:`~monteclora_pyro.lora_method.LoRAMethod` (ours: the per-example negative
tempered ELBO; a PEFT peer: its own objective) is driven by AdamW with linear warm-up and decay,
gradient-norm clipping and an optional linear KL annealing (beta_t = beta * min(1, t / kl_anneal_steps)).
The variational parameters form their own parameter group at ``variational_lr``: a log-scale moves by
about lr per Adam step, so at the LoRA weights' rate a posterior cannot leave its prior in a short run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from ..lora_method import LoRAMethod
from ..prediction import move_to
from .checkpoints import Checkpointer, learnable_state, load_learnable, restore_rng, rng_state
from .distributed import unwrap
from .settings import TrainConfig

__all__ = ["TrainHistory", "check_posterior_stage", "fit_variational", "parameter_groups", "settled_share", "train"]

LossFn = Callable[[nn.Module, Mapping[str, torch.Tensor], float], torch.Tensor]


@dataclass
class TrainHistory:
    """Per-step wall time and loss, and the ELBO's terms at each logged step (per example)."""

    step_seconds: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    logged_steps: list[int] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    expected_log_likelihood: list[float] = field(default_factory=list)
    kl_weight: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.loss)

    def elbo_terms(self) -> dict[str, list[float]]:
        """The logged ELBO terms, keyed as ``metrics.json`` and :func:`~monteclora_pyro.runner.plots.plot_elbo` use."""
        return {"step": self.logged_steps, "kl_per_example": self.kl,
                "expected_log_likelihood_per_example": self.expected_log_likelihood, "kl_weight": self.kl_weight}

    def median_step_seconds(self, skip: int = 2) -> float:
        """Median step time, skipping the first ``skip`` (warm-up) steps when there are more."""
        times = self.step_seconds[skip:] if len(self.step_seconds) > skip else self.step_seconds
        return statistics.median(times)


def method_loss(module: nn.Module, batch: Mapping[str, torch.Tensor], kl_weight: float) -> torch.Tensor:
    """Default loss: the method's own (ours: the per-example negative tempered ELBO)."""
    return module(batch, kl_weight=kl_weight)


def parameter_groups(method: LoRAMethod, params: list[nn.Parameter], variational_lr: float | None) -> list[dict]:
    """The network's parameters at the optimizer's learning rate; the variational ones at ``variational_lr``
    (None: the same), without weight decay."""
    variational = {id(p) for p in method.variational_parameters()}
    if variational_lr is None or not variational:
        return [{"params": params}]
    return [{"params": [p for p in params if id(p) not in variational]},
            {"params": [p for p in params if id(p) in variational], "lr": variational_lr, "weight_decay": 0.0}]


def _check_gradients(total_norm: torch.Tensor, names: Mapping[int, str], params: list[nn.Parameter], step: int,
                     lr: float) -> None:
    """Stop before the optimizer step when a gradient is non-finite, naming the parameter (and so its site).

    The total gradient norm (one scalar, which the clipping uses anyway) is the only check on the hot path;
    the parameters are searched only when it is not finite.  Finite gradients keep AdamW's update finite.
    """
    if bool(torch.isfinite(total_norm)):
        return
    bad = next((p for p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())), None)
    what = f"the gradient of parameter {names[id(bad)]}" if bad is not None else "the gradients' norm"
    raise FloatingPointError(f"step {step}: {what} is non-finite (lr = {lr}); lower the learning rate")


def _batches(loader: Iterable, start: int, epoch_rng: torch.Tensor | None) -> Iterator[tuple[int, Any, Any]]:
    """(step, batch, shuffling state at the start of its epoch) from step ``start`` on.

    A loader with a ``generator`` (a shuffling DataLoader) draws each epoch's order from it, so its
    state at the epoch's start and the step give the data position exactly.
    """
    generator = getattr(loader, "generator", None)
    if generator is not None and epoch_rng is not None:
        generator.set_state(epoch_rng)
    step, skip = start, start % len(loader)  # type: ignore[arg-type]
    sampler = getattr(loader, "sampler", None)
    while True:
        if hasattr(sampler, "set_epoch"):  # a DistributedSampler draws each epoch's order from seed + epoch
            sampler.set_epoch(step // len(loader))  # type: ignore[arg-type]
        epoch_state = generator.get_state() if generator is not None else None
        for batch in loader:
            if skip:
                skip -= 1
                continue
            yield step, batch, epoch_state
            step += 1


def _agreed(flag: bool, device: torch.device) -> bool:
    """``flag`` of any process (a signal reaches each process at its own step): every process then stops, and
    saves, at the same step."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device if device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _rank() -> int:
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if initialized else 0


DIVERGENCE_WINDOW = 5  # a diverged loss stays high: the median of this many last steps, not one spike


def _check_divergence(losses: list[float], config: TrainConfig, step: int) -> None:
    """Stop when the median loss of the last steps exceeds ``divergence_factor`` times its start: the first
    step's, or with KL annealing the first at the full KL weight (the loss grows while the weight does)."""
    first = config.kl_anneal_steps
    if not config.divergence_factor or len(losses) <= first:
        return
    start, recent = losses[first], statistics.median(losses[max(first, len(losses) - DIVERGENCE_WINDOW):])
    if recent > config.divergence_factor * max(start, 0.1):
        raise FloatingPointError(f"step {step}: the loss diverged (median of the last {DIVERGENCE_WINDOW} steps "
                                 f"{recent:.4g}, over {config.divergence_factor:g} times its start {start:.4g}; "
                                 f"lr = {config.lr}); lower the learning rate")


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[list[bool]]:
    """A flag Ctrl-C or SIGTERM (a scheduler's notice) sets, so the loop stops between steps and checkpoints."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag[0]:  # a second signal stops at once
            raise KeyboardInterrupt
        flag[0] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train(
    module: nn.Module,
    loader: Iterable,
    config: TrainConfig,
    loss_fn: LossFn = method_loss,
    device: torch.device | str | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    checkpoint: Checkpointer | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainHistory:
    """Optimize ``loss_fn`` over the trainable parameters of ``module`` (a :class:`LoRAMethod`, or one in a
    DDP wrapper); returns the history.

    ``on_epoch_end(epoch)`` (epochs counted from 1) runs after each full pass over ``loader``, e.g. to
    evaluate; the module is put back in training mode after it.  With ``checkpoint``, the state is
    written every ``checkpoint.every`` steps, at the end and on Ctrl-C or SIGTERM (which then raise
    KeyboardInterrupt after the step in progress), and a run with ``checkpoint.resume`` continues
    from the saved state exactly.  ``on_log(step, values)`` receives the loss, learning rate and (for a
    method with a KL) the ELBO's terms every ``config.log_every`` steps, e.g. for a tracker.
    """
    device = torch.device(device) if device is not None else next(module.parameters()).device
    separate = {id(p) for p in unwrap(module).separately_optimized()}  # moved by the method's after_step
    params = [p for p in module.parameters() if p.requires_grad and id(p) not in separate]
    if not params:
        raise ValueError("the module has no trainable parameters")
    method: LoRAMethod = unwrap(module)  # attributes live on the module inside a DDP wrapper
    accumulate = config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(loader) / accumulate)  # type: ignore[arg-type]
    total = config.total_steps(steps_per_epoch)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rows_per_step = (getattr(loader, "batch_size", None) or 1) * accumulate * world
    scaler = torch.amp.GradScaler(device.type, enabled=method.autocast_dtype == torch.float16)
    if scaler.is_enabled() and separate:
        raise ValueError("fp16 loss scaling does not reach the parameters this method updates in a step of its own "
                         "(BLoB's rho); use --mixed-precision bf16 or no")

    def first_batch(step: int) -> int:
        """The position (counted over epochs of ``len(loader)`` batches) of ``step``'s first minibatch: a step
        takes ``accumulate`` of them, the last step of an epoch what remains of it."""
        epoch, within = divmod(step, steps_per_epoch)
        return epoch * len(loader) + within * accumulate  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(parameter_groups(method, params, config.variational_lr), lr=config.lr,
                                  weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    beta = method.kl_weight
    history = TrainHistory()
    names = {id(p): n for n, p in module.named_parameters()}
    start_step, epoch_rng = 0, None
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        load_learnable(module, saved["learnable"], checkpoint.path)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        history = TrainHistory(**saved["history"])
        start_step, epoch_rng = saved["step"], saved["epoch_rng"]
        if saved.get("world_size", 1) != world:
            raise ValueError(f"checkpoint {checkpoint.path} was written by {saved.get('world_size', 1)} process(es); "
                             f"resume it with as many, not {world}")
        restore_rng(saved["rng_by_rank"][_rank()] if "rng_by_rank" in saved else saved["rng"])

    def save(next_step: int, epoch_state) -> None:
        rng = {"rng": rng_state()}
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # each process's own streams
            rng["rng_by_rank"] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(rng["rng_by_rank"], rng["rng"])
        checkpoint.save({"step": next_step, "epoch_rng": epoch_state, "learnable": learnable_state(module),
                         "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                         "history": dataclasses.asdict(history), "world_size": world} | rng)

    module.train()
    bar = tqdm(total=total, initial=start_step, disable=not config.progress, desc="train", dynamic_ncols=True)
    batches = _batches(loader, first_batch(start_step), epoch_rng)
    with _interrupt_flag() as interrupted:
        for step in range(start_step, total):
            start = time.perf_counter()
            kl_weight = beta * min(1.0, (step + 1) / config.kl_anneal_steps) if config.kl_anneal_steps else beta
            optimizer.zero_grad(set_to_none=True)
            loss_value, finished_epoch = 0.0, None
            share = min(accumulate, len(loader) - first_batch(step) % len(loader))  # type: ignore[arg-type]
            for _ in range(share):  # the step's minibatches, each loss a share of the step's
                position, batch, epoch_state = next(batches)
                loss = loss_fn(module, move_to(batch, device), kl_weight) / share
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"step {step}: the loss is {value} (lr = {config.lr}); "
                                             "lower the learning rate")
                scaler.scale(loss).backward()
                loss_value += value
                if (position + 1) % len(loader) == 0:  # type: ignore[arg-type]
                    finished_epoch = (position + 1) // len(loader)  # type: ignore[arg-type]
            scaler.unscale_(optimizer)
            total_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if not scaler.is_enabled():  # fp16's scaler skips a step with non-finite gradients itself
                _check_gradients(total_norm, names, params, step, config.lr)
            if config.grad_clip != math.inf:
                torch.nn.utils.clip_grads_with_norm_(params, config.grad_clip, total_norm)
            scaler.step(optimizer)
            scaler.update()
            lr_scale = schedule.get_last_lr()[0] / config.lr  # this step's factor of the warm-up and decay
            schedule.step()
            recorded = method.after_step(step, steps_per_epoch, rows_per_step, lr_scale)
            history.step_seconds.append(time.perf_counter() - start)
            history.loss.append(loss_value)
            _check_divergence(history.loss, config, step)
            if step % config.log_every == 0 or step == total - 1:
                # the record's draws come from a fork of the random streams: logging never moves the training's
                with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    kl_total = method.kl_divergence()
                if kl_total is not None:  # a method with a KL: the ELBO's terms per example
                    kl = float(kl_total) / method.num_data
                    history.logged_steps.append(step)
                    history.kl.append(kl)
                    weight = kl_weight if method.kl_in_loss else recorded.get("kl_weight", 0.0)
                    history.kl_weight.append(weight)
                    history.expected_log_likelihood.append(-(loss_value - (weight * kl if method.kl_in_loss else 0)))
                if on_log is not None:
                    values = {"loss": loss_value, "lr": schedule.get_last_lr()[0]}
                    if kl_total is not None:
                        values |= {"kl_per_example": kl, "kl_weight": history.kl_weight[-1],
                                   "expected_log_likelihood": history.expected_log_likelihood[-1]}
                    on_log(step, values)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if on_epoch_end is not None and finished_epoch is not None:
                on_epoch_end(finished_epoch)
                module.train()
            stop = _agreed(interrupted[0], device)
            if checkpoint is not None and (checkpoint.due(step + 1) or step + 1 == total or stop):
                save(step + 1, epoch_state)
            if stop:
                raise KeyboardInterrupt(f"interrupted after step {step}; checkpoint at {checkpoint.path}"
                                        if checkpoint is not None else f"interrupted after step {step}")
    bar.close()
    return history


def check_posterior_stage(method: LoRAMethod) -> None:
    """Refuse, before training, a stage on the guides' parameters that a method cannot take."""
    if not method.guide_parameters():
        raise ValueError("posterior_steps > 0 fits the guide's own parameters, and this method's guide has none "
                         "(a point estimate, Laplace, an ensemble or a PEFT peer); use posterior_steps = 0")
    if not method.kl_in_loss:
        raise ValueError("posterior_steps > 0 fits the guide on the ELBO, and this method takes its KL in a step "
                         "of its own (BLoB); use posterior_steps = 0")
    if method.autocast_dtype == torch.float16:
        raise ValueError("posterior_steps > 0 takes no fp16 loss scaling; use --mixed-precision bf16 or no")


def fit_variational(module: nn.Module, loader: Iterable, config: TrainConfig, device: torch.device | str | None = None
                    ) -> dict[str, list[float]]:
    """The hyper-latents' stage: ``config.posterior_steps`` Adam steps on the guides' parameters (and a regression
    likelihood's noise scale) alone, the LoRA means and head fixed, on the same tempered -ELBO at
    ``posterior_lr`` (default: ``variational_lr``) held constant.

    In training the variational parameters share the LoRA weights' warm-up and decay, so a log-scale moves by
    at most about lr per step and ends where the schedule stopped it; here, the means fixed, their optimum is
    the best q of the hyper-latents given the trained means.  In a multi-process run every process takes its
    shard of each batch and the gradients are averaged.  Returns the trajectory: ``loss`` per step and each
    parameter's mean per step (by name)."""
    device = torch.device(device) if device is not None else next(module.parameters()).device
    method: LoRAMethod = unwrap(module)
    check_posterior_stage(method)
    stage = method.variational_parameters()  # the guides' and a noise scale, which must fit q where it ends
    in_stage = {id(p) for p in stage}
    fixed = [p for p in method.parameters() if p.requires_grad and id(p) not in in_stage]
    names = {id(p): n for n, p in method.named_parameters()}
    optimizer = torch.optim.Adam(stage, lr=config.posterior_lr or config.variational_lr or config.lr)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    average = world > 1 and not getattr(method, "_gradient_averaging", None)  # FSDP's hooks average already
    trajectory: dict[str, list[float]] = {"loss": []} | {names[id(p)]: [] for p in stage}
    for p in fixed:
        p.requires_grad_(False)
    method.train()
    batches = _batches(loader, 0, None)
    try:
        for step in tqdm(range(config.posterior_steps), disable=not config.progress, desc="posterior",
                         dynamic_ncols=True):
            optimizer.zero_grad(set_to_none=True)
            _, batch, _ = next(batches)
            loss = method(move_to(batch, device), kl_weight=method.kl_weight)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"posterior step {step}: the loss is {loss.item()} (posterior lr = "
                                         f"{optimizer.param_groups[0]['lr']}); lower it")
            loss.backward()
            if average:
                for p in stage:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
            _check_gradients(torch.nn.utils.get_total_norm([p.grad for p in stage if p.grad is not None]), names,
                             stage, step, optimizer.param_groups[0]["lr"])
            optimizer.step()
            trajectory["loss"].append(loss.item())
            for p in stage:
                trajectory[names[id(p)]].append(float(p.detach().float().mean()))
    finally:
        for p in fixed:
            p.requires_grad_(True)
    return trajectory


def settled_share(values: list[float], window: float = 0.2) -> float:
    """How much a trajectory still drifts at its end: the change of its mean between the last two ``window``
    shares of its steps, as a share of how far that last mean is from the start.  About 0.2 for a straight
    line, near 0 once it only fluctuates around where it ended (a noisy gradient keeps it fluctuating)."""
    size = int(len(values) * window)
    if size < 2:
        return float("nan")
    last, previous = statistics.fmean(values[-size:]), statistics.fmean(values[-2 * size:-size])
    moved = abs(last - values[0])
    return abs(last - previous) / moved if moved > 0 else 0.0
