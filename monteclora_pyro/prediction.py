"""Predictions: the posterior mean (zero overhead, mergeable into W0) and the posterior predictive.

The posterior predictive averages the likelihood's prediction over S draws of the adapters,
p(y | x) ~ (1/S) sum_s p(y | x, theta_s); the S draws are taken once and shared by every batch, so
each draw is one coherent model of the whole dev set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .bayesian_lora import BayesianLoRA
from .svi import move_to

__all__ = ["Predictions", "mc_dropout", "predict"]

Predictions = dict[str, torch.Tensor]


@torch.no_grad()
def _collect(loader: Iterable, device: torch.device, heads: Mapping[str, Callable]) -> Predictions:
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in heads}
    labels = []
    for batch in loader:
        batch = move_to(batch, device)
        labels.append(batch["labels"].cpu())
        for name, head in heads.items():
            outputs[name].append(head(batch).cpu())
    return {"labels": torch.cat(labels), **{name: torch.cat(v) for name, v in outputs.items()}}


def _check_samples(num_samples: int) -> None:
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples = {num_samples!r} must be an integer >= 1")


def predict(module: BayesianLoRA | nn.Module, loader: Iterable, num_samples: int = 8, device=None,
            with_mean: bool = True) -> Predictions:
    """``mean``: predictions with the posterior-mean adapters; ``predictive``: averaged over draws;
    ``draws``: each draw's predictions (examples x draws x ...).  ``with_mean=False`` skips the
    posterior-mean pass (``mean`` is then absent).

    Classification gives class probabilities; regression gives the predicted value (``predictive``
    is then the mean over draws and ``predictive_var`` the spread of the draws).  A point-mass guide
    (``delta``) has one distinct draw, so it is drawn once whatever ``num_samples`` says.
    """
    _check_samples(num_samples)
    device = device or next(module.parameters()).device
    module.eval()
    draws = [module.posterior_draw() for _ in range(1 if module.point_estimate else num_samples)]
    readout = module.likelihood.predictive

    def mean(batch):
        return readout(module.network_output(batch))

    def each_draw(batch):
        return torch.stack([readout(module.network_output(batch, draw)) for draw in draws], dim=1)

    result = _collect(loader, device, {"mean": mean, "draws": each_draw} if with_mean else {"draws": each_draw})
    stacked = result["draws"]  # (examples, draws, ...)
    result["predictive"] = stacked.mean(1)
    if module.likelihood.regression:
        result["predictive_var"] = stacked.var(1) if len(draws) > 1 else torch.zeros_like(stacked[:, 0])
    return result


def mc_dropout(module: nn.Module, loader: Iterable, num_samples: int, device=None) -> Predictions:
    """MC dropout (Gal and Ghahramani 2016): the posterior-mean weights with the network's dropout
    layers left on, ``num_samples`` passes averaged.  ``module`` is ours or a PEFT peer
    (:class:`~monteclora_pyro.peers.PeftPeer`).

    ``draws`` is each pass's prediction (class probabilities, or the value for regression) and ``mean``
    their average.
    """
    _check_samples(num_samples)
    device = device or next(module.parameters()).device
    module.eval()
    dropouts = [m for m in module.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    if not dropouts:
        raise ValueError("MC dropout needs dropout layers with p > 0; the network has none")
    for layer in dropouts:
        layer.train()

    readout = module.likelihood.predictive

    def each_pass(batch):
        return torch.stack([readout(module.network_output(batch)) for _ in range(num_samples)], dim=1)

    try:
        result = _collect(loader, device, {"draws": each_pass})
    finally:
        module.eval()
    result["mean"] = result["draws"].mean(1)
    return result
