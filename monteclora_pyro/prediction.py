"""Predictions: the posterior mean (zero overhead, mergeable into W0) and the posterior predictive.

The posterior predictive averages the likelihood's prediction over S draws of the adapters,
p(y | x) ~ (1/S) sum_s p(y | x, theta_s); the S draws are taken once and shared by every batch, so
each draw is one coherent model of the whole dev set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .calibration import apply_temperature
from .kinds import positive_int
from .lora_method import LoRAMethod
from .metrics import example_nll

__all__ = ["Predictions", "classification_records", "draw_outputs", "mc_dropout", "mixture", "move_to",
           "posterior_draws", "predict", "uncertainty"]

Predictions = dict[str, torch.Tensor]


def move_to(batch: Mapping[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def posterior_draws(module: LoRAMethod, num_samples: int) -> list[dict[str, torch.Tensor]]:
    """``num_samples`` posterior draws of the adapters, taken once and shared by every batch (one draw for a
    point estimate, whose draws are all the same; each member once for an ensemble)."""
    positive_int.check("num_samples", num_samples)
    return module.predictive_draws(num_samples)


def draw_outputs(module: LoRAMethod, batch: Mapping[str, torch.Tensor], draws: list) -> torch.Tensor:
    """The likelihood's prediction on ``batch`` under each draw: (examples x draws x ...)."""
    readout = module.likelihood.predictive
    return torch.stack([readout(module.network_output(batch, draw)) for draw in draws], dim=1)


@torch.no_grad()
def _collect(loader: Iterable, device: torch.device, heads: Mapping[str, Callable]) -> Predictions:
    """Each head's output on every batch, concatenated; a head may give several named outputs (a dict)."""
    outputs: dict[str, list[torch.Tensor]] = {}
    labels, rows = [], []
    for batch in loader:
        batch = move_to(batch, device)
        labels.append(batch["labels"].cpu())
        rows.append(batch["row"].cpu() if "row" in batch else None)
        for name, head in heads.items():
            output = head(batch)
            for key, value in (output if isinstance(output, dict) else {name: output}).items():
                outputs.setdefault(key, []).append(value.detach().cpu())
    known_rows = {"rows": torch.cat(rows)} if rows and all(r is not None for r in rows) else {}
    return {"labels": torch.cat(labels), **known_rows, **{name: torch.cat(v) for name, v in outputs.items()}}


def predict(module: LoRAMethod, loader: Iterable, num_samples: int, device=None,
            with_mean: bool = True) -> Predictions:
    """``mean``: predictions with the posterior-mean adapters; ``predictive``: averaged over draws;
    ``draws``: each draw's predictions (examples x draws x ...).  ``with_mean=False`` skips the
    posterior-mean pass (``mean`` is then absent).

    Classification gives class probabilities; regression gives the predicted value (``predictive``
    is then the mean over draws and ``predictive_var`` the spread of the draws).  A point-mass guide
    (``delta``) has one distinct draw, so it is drawn once whatever ``num_samples`` says.  A linearized
    predictive (the Laplace approximation's) gives its own ``predictive`` and ``draws`` of the linear model.
    """
    device = device or next(module.parameters()).device
    module.eval()

    def mean(batch):
        return module.likelihood.predictive(module.network_output(batch))

    if module.linearized:
        heads = {"linearized": lambda batch: module.linearized_outputs(batch, num_samples)}
    else:
        draws = posterior_draws(module, num_samples)
        heads = {"draws": lambda batch: draw_outputs(module, batch, draws)}
    result = _collect(loader, device, ({"mean": mean} if with_mean else {}) | heads)
    stacked = result["draws"]  # (examples, draws, ...)
    result.setdefault("predictive", stacked.mean(1))
    if module.likelihood.regression:
        result["predictive_var"] = stacked.var(1) if stacked.shape[1] > 1 else torch.zeros_like(stacked[:, 0])
    return result


def mixture(members: list[Predictions]) -> Predictions:
    """The equal-weight mixture of several models' predictions on the same rows (a LoRA ensemble, arXiv
    2310.00035: each member a point mass, or a posterior of its own): ``predictive`` and ``mean`` averaged,
    ``draws`` side by side (examples x every member's draws x ...), so :func:`uncertainty` splits the
    ensemble's entropy into its members' average and their disagreement."""
    if not members:
        raise ValueError("a mixture needs at least one member's predictions")
    labels = members[0]["labels"]
    if any(not torch.equal(m["labels"], labels) for m in members):
        raise ValueError("the members' predictions are not of the same rows (their labels differ)")
    out: Predictions = {key: value for key, value in members[0].items() if key in ("labels", "rows")}
    out["draws"] = torch.cat([m["draws"] for m in members], dim=1)
    out["predictive"] = torch.stack([m["predictive"] for m in members]).mean(0)
    if all("mean" in m for m in members):
        out["mean"] = torch.stack([m["mean"] for m in members]).mean(0)
    if "predictive_var" in members[0]:  # regression: the spread of every member's draws around the mixture
        out["predictive_var"] = out["draws"].var(1) if out["draws"].shape[1] > 1 else torch.zeros_like(labels)
    return out


def uncertainty(draws: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per example, from each draw's class probabilities (examples x draws x C): the predictive's ``entropy``
    H[mean_s p_s], split into the ``expected_entropy`` E_s H[p_s] (aleatoric: the noise every draw sees)
    and the ``mutual_information`` between the label and the draw (epistemic: the draws' disagreement)."""
    draws = draws.double()

    def entropy(probs: torch.Tensor) -> torch.Tensor:
        return -(probs * probs.clamp_min(1e-300).log()).sum(-1)

    total, expected = entropy(draws.mean(1)), entropy(draws).mean(1)
    return {"entropy": total, "expected_entropy": expected, "mutual_information": (total - expected).clamp_min(0)}


def classification_records(predictive: torch.Tensor, draws: torch.Tensor, labels: torch.Tensor,
                           rows: torch.Tensor | None = None, temperature: float | None = None,
                           save_draws: bool = False) -> list[dict[str, Any]]:
    """One record per example (a predictions file's lines): its ``row`` in the data file when known, ``label``,
    the predictive's ``probabilities``, ``predicted`` class and ``nll``, its ``entropy`` split into
    ``expected_entropy`` and ``mutual_information`` (:func:`uncertainty` of the ``draws``, examples x draws x C),
    ``ts_nll`` after a ``temperature``, and with ``save_draws`` each draw's probabilities (``draws``)."""
    probs = predictive.double()
    columns: dict[str, torch.Tensor] = ({} if rows is None else {"row": rows}) | {
        "label": labels, "probabilities": probs, "predicted": probs.argmax(-1), "nll": example_nll(probs, labels)}
    columns |= uncertainty(draws)
    if temperature is not None:
        columns["ts_nll"] = example_nll(apply_temperature(probs, temperature), labels)
    if save_draws:
        columns["draws"] = draws
    return [{name: values[i].tolist() for name, values in columns.items()} for i in range(len(labels))]


def mc_dropout(module: LoRAMethod, loader: Iterable, num_samples: int, device=None) -> Predictions:
    """MC dropout (Gal and Ghahramani 2016): the posterior-mean weights with the network's dropout
    layers left on, ``num_samples`` passes averaged; ours or a PEFT peer.

    ``draws`` is each pass's prediction (class probabilities, or the value for regression) and ``mean``
    their average.
    """
    positive_int.check("num_samples", num_samples)
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
