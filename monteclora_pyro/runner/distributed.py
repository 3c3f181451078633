"""Multi-process data-parallel training (``torchrun`` or ``accelerate launch``), with torch's DDP, or with the
frozen backbone's weights sharded across the processes by torch's FSDP (``sharding = "fsdp"``).

Each process trains on its shard of every global batch (a ``DistributedSampler``: the same seeded
permutation everywhere, rank r taking every W-th row), computes its local -ELBO / N with the
likelihood's plate scaled from its local rows to N, and DDP averages the gradients.  The mean of
the W local estimates is the single-process estimate with the global batch, so the objective and
its scale are unchanged; every process draws the same posterior sample (same seed), so the
variational parameters stay synchronized, and only rank 0 writes files.

With FSDP (``fully_shard`` on every transformer block of the network and on the network), each process
keeps 1/W of every frozen weight and gathers a block's weights for its forward and backward; the LoRA
factors, the head, the guides' and the likelihood's parameters (everything trained: small) are left out of
the sharding, replicated in float32, and their gradients averaged across processes as DDP would.  For the
evaluation, which rank 0 runs alone, the processes gather the full weights once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .settings import SHARDING

__all__ = ["World", "seeded_sampler", "sharded_loader", "unwrap", "world"]


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes (1 process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def init(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, NCCL on CUDA) when launched with several processes."""
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def wrap(self, module: nn.Module, device: torch.device, sharding: str = "ddp") -> nn.Module:
        """``module`` in DDP when distributed (its gradients averaged across processes), or with ``fsdp`` its
        network's frozen weights sharded and its trained parameters' gradients averaged; else itself."""
        if sharding not in SHARDING:
            raise ValueError(f"sharding = {sharding!r}; allowed: {', '.join(SHARDING)}")
        if not self.distributed:
            return module
        if sharding == "fsdp":
            return _fully_shard(module, self.size, device)
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def gather_for_evaluation(self, module: nn.Module) -> None:
        """After sharded training: every process gathers the full weights and keeps them, so that rank 0 can
        run forward passes alone (no-op without FSDP)."""
        from torch.distributed.fsdp import FSDPModule

        for handle in getattr(module, "_gradient_averaging", ()):  # rank 0's backward passes (Laplace) are its own
            handle.remove()
        for part in module.modules():
            if isinstance(part, FSDPModule):
                part.set_reshard_after_forward(False)
                part.set_reshard_after_backward(False)
                part.unshard()
        self.barrier()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _fully_shard(module: nn.Module, size: int, device: torch.device) -> nn.Module:
    """FSDP over the network's transformer blocks (the model's ``_no_split_modules``) and the network, the trained
    parameters left out of it and their gradients averaged over the ``size`` processes by a hook."""
    import inspect

    from torch.distributed.fsdp import fully_shard

    if "ignored_params" not in inspect.signature(fully_shard).parameters:
        raise ValueError(f"sharding = 'fsdp' needs torch >= 2.7 (FSDP's ignored_params); this is torch "
                         f"{torch.__version__}")
    if device.type == "cuda":  # FSDP's device mesh is made on the current device
        torch.cuda.set_device(device)
    network = getattr(module, "network", module)
    trained = {p for p in module.parameters() if p.requires_grad}
    blocks = set(getattr(_hf_model(network), "_no_split_modules", None) or ())
    for part in list(network.modules()):
        if type(part).__name__ in blocks:
            fully_shard(part, ignored_params=trained)
    fully_shard(network, ignored_params=trained)

    def average(gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.clone()
        dist.all_reduce(gradient)
        return gradient / size

    # each backward's gradient, before it is accumulated (gradient accumulation)
    module._gradient_averaging = [parameter.register_hook(average) for parameter in trained]
    return module


def _hf_model(network: nn.Module) -> nn.Module:
    """The Hugging Face model inside a PEFT model (or the network itself)."""
    get_base = getattr(network, "get_base_model", None)
    return get_base() if callable(get_base) else network


def world() -> World:
    """The world ``torchrun`` / ``accelerate launch`` describe in the environment (else one process)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def seeded_sampler(dataset: Dataset, seed: int, world: World | None = None) -> DistributedSampler:
    """Each epoch's order, a permutation drawn from ``seed + epoch`` alone (``set_epoch``), this process's share
    of it in a multi-process ``world``: no other random stream moves it, and none is moved by it."""
    world = world or World()
    return DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed)


def sharded_loader(dataset: Dataset, collate_fn, global_batch_size: int, world: World, seed: int) -> DataLoader:
    """This process's share of each shuffled global batch (``global_batch_size / world.size`` rows)."""
    if global_batch_size % world.size:
        raise ValueError(f"batch_size = {global_batch_size} (the global batch) must be divisible by the "
                         f"{world.size} processes")
    return DataLoader(dataset, batch_size=global_batch_size // world.size, sampler=seeded_sampler(dataset, seed, world),
                      collate_fn=collate_fn, generator=torch.Generator().manual_seed(seed))  # not the global stream


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module
