"""Multi-process data-parallel training (``torchrun`` or ``accelerate launch``), with torch's DDP.

Each process trains on its shard of every global batch (a ``DistributedSampler``: the same seeded
permutation everywhere, rank r taking every W-th row), computes its local -ELBO / N with the
likelihood's plate scaled from its local rows to N, and DDP averages the gradients.  The mean of
the W local estimates is the single-process estimate with the global batch, so the objective and
its scale are unchanged; every process draws the same posterior sample (same seed), so the
variational parameters stay synchronized, and only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

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

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DDP when distributed (its gradients averaged across processes), else itself."""
        if not self.distributed:
            return module
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


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
