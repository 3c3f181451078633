"""A LoRA ensemble as a prior family (arXiv 2310.00035): ``members`` point estimates of plain LoRA, each trained
from its own initialization and data order, and the posterior predictive of their equal-weight mixture.

The posterior is a mixture of point masses, q = (1/K) sum_k Delta(theta_k).  Each member trains as ``map`` does
(a flat prior, or a Normal one with ``prior_scale``, and the point-mass guide); the pipeline trains them one
after the other (:meth:`EnsemblePrior.start_member` before member k, :meth:`EnsemblePrior.store_member` after),
member 0 exactly as a ``map`` run of the same seed and member k with LoRA A drawn from seed + k and the rows
in seed + k's order (B, the task head and a noise scale start where member 0's started).  A draw of the
posterior is one member: every trained weight of it (LoRA factors, head, noise scale) is put in place, so the
S-draw predictive is the exact mixture of the K members whatever S is.  The members are kept in one buffer
(members x trained weights), saved with the posterior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from . import register_prior
from .factor import MapPrior, MapSpec

__all__ = ["EnsemblePrior", "EnsembleSpec", "MEMBER"]

MEMBER = "member"  # the key of a posterior draw of an ensemble: which member it is


@dataclass(frozen=True)
class EnsembleSpec(MapSpec):
    """The ``ensemble`` family's fields: members, the number K of separately trained point estimates (>= 2),
    and each member's ``prior_scale`` (omitted: plain LoRA)."""

    members: int = 5

    def _validate(self) -> None:
        super()._validate()
        if not isinstance(self.members, int) or isinstance(self.members, bool) or self.members < 2:
            self._fail(f"members = {self.members!r} must be an integer >= 2 (one member is 'map')")


def _trained(module: nn.Module) -> list[nn.Parameter]:
    """The weights a member trains, in a fixed order: every trainable parameter of the method."""
    return [p for _, p in module.named_parameters() if p.requires_grad]


@register_prior("ensemble")
class EnsemblePrior(MapPrior):
    """``members`` point estimates; their weights in :attr:`member_weights` once trained."""

    declaration = EnsembleSpec
    default_guide = "delta"
    fitted_buffers = ("member_weights", "trained_members")
    post_hoc = True  # the posterior is assembled after training: a learned noise scale saw no draws

    def __init__(self, spec: EnsembleSpec) -> None:
        super().__init__(spec)
        self.register_buffer("trained_members", torch.zeros((), dtype=torch.long))
        self.loaded_member: int | None = None  # the member whose weights are in place (None: still training)
        self._initial: torch.Tensor | None = None
        self._trained_count = 0  # trained_members as a number: set_draws asks each forward, without a device sync

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._trained_count, self.loaded_member = int(self.trained_members), None  # a saved ensemble, read

    @property
    def members(self) -> int:
        return self.spec.members

    @property
    def complete(self) -> bool:
        return self._trained_count == self.spec.members

    def attach(self, module) -> None:
        """Make room for the members' weights, and keep the starting weights every member starts from."""
        flat = parameters_to_vector(_trained(module)).detach()
        self.register_buffer("member_weights", flat.new_zeros(self.spec.members, flat.numel()))
        self._initial = flat.clone()

    def _put(self, module, flat: torch.Tensor) -> None:
        """Copy ``flat`` into the trained weights (torch's ``vector_to_parameters`` would make them views of it)."""
        with torch.no_grad():
            offset = 0
            for p in _trained(module):
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def start_member(self, module, member: int, seed: int) -> None:
        """Member ``member``'s starting weights: member 0's, with every LoRA A drawn again from ``seed`` as PEFT
        draws it (Kaiming-uniform, a = sqrt 5)."""
        self._put(module, self._initial.to(self.member_weights.device))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            for name, p in module.network.named_parameters():
                if p.requires_grad and ".lora_A." in name:
                    fresh = torch.empty(p.shape, dtype=torch.float32)
                    nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
                    p.copy_(fresh)
        self.loaded_member = None

    def store_member(self, module, member: int) -> None:
        """Keep the trained weights of ``member``; once the last one is in, member 0 is put in place."""
        with torch.no_grad():
            self.member_weights[member] = parameters_to_vector(_trained(module))
        self._trained_count = max(self._trained_count, member + 1)
        self.trained_members.fill_(self._trained_count)
        self.loaded_member = member
        if self.complete:
            self.load_member(module, 0)

    def load_member(self, module, member: int) -> None:
        """Put member ``member``'s weights in place of the method's trained ones."""
        if self.loaded_member != member:
            self._put(module, self.member_weights[member])
            self.loaded_member = member

    def place(self, module, factors: dict[str, Any]) -> dict[str, Any]:
        """The draw ``factors`` names: its member's weights put in place (none named: member 0's, the point
        estimate), and no factor drawn on top of them.  While the members train, ``factors`` as they are."""
        if not self.complete and MEMBER not in factors:
            return factors
        if self._trained_count == 0:
            raise ValueError("an ensemble's member was drawn before any member was trained")
        self.load_member(module, int(factors.get(MEMBER, 0)))
        return {}

    def draw(self) -> dict[str, torch.Tensor] | None:
        """One posterior draw: a member chosen uniformly (None while the members train: the guide's point mass)."""
        return {MEMBER: torch.randint(self.spec.members, ())} if self.complete else None

    def predictive_draws(self, num_samples: int) -> list[dict[str, torch.Tensor]] | None:
        """Every member once, the predictive then being the exact mixture (None while the members train)."""
        return [{MEMBER: torch.tensor(k)} for k in range(self.spec.members)] if self.complete else None
