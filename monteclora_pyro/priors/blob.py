"""BLoB (Bayesian Low-Rank Adaptation by Backpropagation, arXiv 2406.11675), as its reference code trains it
(Wang-ML-Lab/bayesian-peft, ``modelwrappers/blob.py``).

Only A is random: q(A) = Normal(mean, rho^2) elementwise with rho ~ U(eps / sqrt 2, eps) at the start, the
prior Normal(0, beta), B and the head point estimates.  Each step first takes AdamW on the sampled
network's mean cross-entropy (the mean, B and the head; rho gets that gradient but not AdamW), then one
plain SGD step at ``kl_lr`` (on the same warm-up and decay schedule) on pi_t KL(q || p) plus the
cross-entropy gradient rho holds, with the re-weighting pi_t = 2^i / (2^(M+1) - 1), i = t mod M (in
1..M), over cycles of M = int(100 N^(pi / gamma) / batch) steps (or the steps of an epoch without
dataset rescaling).  The A perturbation enters by flipout: random signs per token on the factor's input
and output, so the examples of a batch see pseudo-independent draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..declarations import PriorSpec
from . import register_prior
from .factor import FactorPrior

__all__ = ["BLoBPrior", "BLoBSpec", "kl_reweighting"]


@dataclass(frozen=True)
class BLoBSpec(PriorSpec):
    """The ``blob`` family's fields (the reference code's names in brackets).

    prior_std: the prior's std on A [bayes_beta, 0.2].  init_std: eps, rho's initial range (eps / sqrt 2, eps),
    the std being rho^2 [bayes_eps, 0.05].  kl_lr: the KL step's SGD learning rate [bayes_kllr].
    kl_reweighting: pi_t as above, else 1 / M [bayes_klreweighting].  dataset_rescaling_gamma: gamma of M
    [bayes_gamma with bayes_datasetrescaling]; omitted: M = the steps of an epoch.  flipout: the per-token
    sign flips (false: one draw of A for the whole batch).
    """

    stochastic: tuple[str, ...] = ("A",)
    prior_std: float = 0.2
    init_std: float = 0.05
    kl_lr: float = 0.02
    kl_reweighting: bool = True
    dataset_rescaling_gamma: float | None = 8.0
    flipout: bool = True

    def _validate(self) -> None:
        super()._validate()
        if tuple(self.stochastic) != ("A",):
            self._fail(f"stochastic = {list(self.stochastic)!r}: BLoB's random factor is A alone (['A'])")
        for name in ("prior_std", "init_std", "kl_lr"):
            if not getattr(self, name) > 0:
                self._fail(f"{name} = {getattr(self, name)!r} must be > 0")
        if self.dataset_rescaling_gamma is not None and not self.dataset_rescaling_gamma > 0:
            self._fail(f"dataset_rescaling_gamma = {self.dataset_rescaling_gamma!r} must be > 0 (or omitted)")
        for name in ("kl_reweighting", "flipout"):
            if not isinstance(getattr(self, name), bool):
                self._fail(f"{name} = {getattr(self, name)!r} must be true or false")


def kl_reweighting(step: int, cycle: int, reweighting: bool = True) -> float:
    """pi of the KL at ``step`` (0-based): 2^i / (2^(M+1) - 1) with i = (step + 1) mod M in 1..M, or 1 / M."""
    if not reweighting:
        return 1.0 / cycle
    i = (step + 1) % cycle or cycle
    return 2.0 ** (i - cycle - 1) / (1 - 2.0 ** -(cycle + 1))  # the same ratio, without overflowing 2^M


@register_prior("blob")
class BLoBPrior(FactorPrior):
    """A ~ Normal(0, prior_std) elementwise; the KL is BLoB's own step (:meth:`after_step`), not in the loss."""

    declaration = BLoBSpec
    default_guide = "blob"
    kl_in_loss = False

    def prior_scale(self) -> float:
        return self.spec.prior_std

    @property
    def flipout(self) -> bool:
        return self.spec.flipout

    def separately_optimized(self, module) -> list[torch.nn.Parameter]:
        """rho: outside AdamW, moved by the KL step's SGD alone."""
        return [guide.rho for guide in module.group_guides.values()]

    def kl_cycle(self, num_data: int, steps_per_epoch: int, rows_per_step: int) -> int:
        """M: int(100 N^(pi / gamma) / rows per step), or the steps of an epoch."""
        gamma = self.spec.dataset_rescaling_gamma
        if gamma is None:
            return steps_per_epoch
        return max(1, int(100 * num_data ** (math.pi / gamma) / rows_per_step))

    def after_step(self, module, step: int, steps_per_epoch: int, rows_per_step: int, lr_scale: float
                   ) -> dict[str, Any]:
        """The KL step: pi KL(q || p) back-propagated onto the gradient rho already holds (the cross-entropy's),
        every other gradient cleared first, then SGD at ``kl_lr * lr_scale`` on every parameter."""
        pi = kl_reweighting(step, self.kl_cycle(module.num_data, steps_per_epoch, rows_per_step),
                            self.spec.kl_reweighting)
        separate = {id(p) for p in self.separately_optimized(module)}
        parameters = [p for p in module.parameters() if p.requires_grad]
        for p in parameters:
            if id(p) not in separate:
                p.grad = None
        cuda = [p.device for p in parameters[:1] if p.device.type == "cuda"]
        with torch.enable_grad(), torch.random.fork_rng(devices=cuda):  # analytic: the trace's draws are unused
            kl = module.kl_divergence()
            (pi * kl).backward()
        with torch.no_grad():
            for p in parameters:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-self.spec.kl_lr * lr_scale)
                    p.grad = None
        return {"kl_weight": pi}
