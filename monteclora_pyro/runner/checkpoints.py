"""Training checkpoints that survive faults: everything a run needs to continue exactly.

A checkpoint holds the learnable tensors (LoRA means, task head, variational parameters), the
optimizer and scheduler states, every random generator (torch, CUDA, numpy, Python) and the data
position (the shuffling generator at the start of the current epoch, and the step), plus the
training history and whatever the caller keeps in ``extra``.  It is written atomically, so a kill
at any moment leaves the previous checkpoint whole; a non-finite step raises before it is written,
so the last good checkpoint is never overwritten.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifacts import atomic_output
from ..kinds import nonnegative_int

__all__ = ["Checkpointer", "restore_rng", "rng_state"]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpointer:
    """Where and how often :func:`~monteclora_pyro.runner.training.train` writes checkpoints.

    path: the checkpoint file.  every: write after every ``every`` steps (0: only at the end and when
    interrupted).  extra: the caller's own state, saved and restored (in place) with the checkpoint.
    resume: continue from ``path`` if it exists.  compare: given the saved ``extra``, the settings in
    which it differs from this run (a resume with any is refused, naming them).  writer: whether this
    process writes it (in a multi-process run rank 0 writes it, with every process's random streams,
    and every process resumes from it).
    """

    path: Path
    every: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    compare: Callable[[dict[str, Any]], list[str]] | None = None
    writer: bool = True

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        nonnegative_int.check("checkpoint every", self.every)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        if not self.writer:
            return
        with atomic_output(self.path) as tmp:
            torch.save(state | {"extra": self.extra}, tmp)

    def load(self) -> dict[str, Any] | None:
        """The saved state when resuming from an existing checkpoint, else None."""
        if not (self.resume and self.path.exists()):
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as error:  # torch raises several types for a damaged file
            raise ValueError(f"checkpoint {self.path} cannot be read ({type(error).__name__}: {error})") from None
        changed = self.compare(state["extra"]) if self.compare is not None else []
        if changed:
            raise ValueError(f"checkpoint {self.path} was made with other settings ({'; '.join(changed)})")
        self.extra.clear()
        self.extra.update(state["extra"])
        return state


def learnable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def load_learnable(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    learnable = {name for name, p in module.named_parameters() if p.requires_grad}
    if set(state) != learnable:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {sorted(learnable - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - learnable)[:3]}")
    module.load_state_dict(state, strict=False)
