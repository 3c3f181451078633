"""Optimization settings of the SVI loop, validated at construction (no heavy imports)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings; every bad value fails at construction, naming the value."""

    lr: float = 5e-4
    variational_lr: float | None = None  # None: the same as lr
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    epochs: int = 1
    max_steps: int | None = None
    grad_clip: float = 1.0
    kl_anneal_steps: int = 0
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("lr", self.lr > 0, "> 0"),
            ("variational_lr", self.variational_lr is None or self.variational_lr > 0, "> 0 or None"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"),
            ("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "an integer >= 1"),
            ("max_steps", self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
             "an integer >= 1 or None"),
            ("grad_clip", self.grad_clip > 0 or self.grad_clip == math.inf, "> 0 (inf disables clipping)"),
            ("kl_anneal_steps", self.kl_anneal_steps >= 0, ">= 0"),
            ("log_every", self.log_every >= 1, ">= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} = {getattr(self, name)!r} must be {allowed}")

    def total_steps(self, batches_per_epoch: int) -> int:
        """``max_steps`` when set (it overrides ``epochs``, as in Hugging Face), else epochs x batches."""
        return self.max_steps or self.epochs * batches_per_epoch
