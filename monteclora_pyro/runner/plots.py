"""Figures for a run: reliability diagram, spread of the posterior across layers, ELBO trace.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot state, so any backend
and any thread is fine), writes a PNG through a temporary sibling (a reader never sees a partial
file) and returns the path.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..artifacts import atomic_write_bytes
from ..calibration import expected_calibration_error, reliability_bins
from ..priors import PRIOR_FAMILIES
from ..regression_calibration import quantile_coverage

if TYPE_CHECKING:
    import arviz as az

__all__ = ["plot_ece_vs_epoch", "plot_elbo", "plot_metric_vs_lr", "plot_posterior_spread", "plot_quantile_calibration",
           "plot_reliability"]

ELBO_KEYS = ("step", "kl_per_example", "expected_log_likelihood_per_example", "kl_weight")


def _save(figure: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_reliability(probs: torch.Tensor, labels: torch.Tensor, path: str | Path, num_bins: int = 15) -> Path:
    """Accuracy against confidence per bin (gap to the diagonal shaded), with the examples per bin below."""
    probs, labels = probs.detach().cpu(), labels.cpu()
    bins = reliability_bins(probs, labels, num_bins)
    ece = expected_calibration_error(probs, labels, num_bins)
    edges = bins.edges.numpy()
    left, width = edges[:-1], np.diff(edges)
    accuracy, confidence = bins.accuracy.numpy(), bins.confidence.numpy()
    figure = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(left, np.nan_to_num(accuracy), width, align="edge", edgecolor="black", label="accuracy")
    gap_bottom = np.fmin(accuracy, confidence)
    top.bar(left, np.abs(accuracy - confidence), width, bottom=gap_bottom, align="edge", color="tab:red",
            alpha=0.35, edgecolor="tab:red", hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"Reliability diagram (ECE = {ece:.4f})")
    top.legend(loc="upper left")
    bottom.bar(left, bins.counts.numpy(), width, align="edge", color="gray", edgecolor="black")
    bottom.set(xlabel="confidence (max class probability)", ylabel="examples")
    return _save(figure, path)


def plot_quantile_calibration(pit: torch.Tensor, path: str | Path, num_levels: int = 15) -> Path:
    """A regression predictive's reliability diagram: the share of targets below the predicted q-quantile
    against q (the diagonal when calibrated; below it when intervals are too narrow in the upper tail),
    with the histogram of the PIT values ``F_i(y_i)`` (flat when calibrated) below."""
    pit = pit.detach().double().cpu()
    levels, observed = (t.numpy() for t in quantile_coverage(pit, num_levels))
    error = float(np.abs(observed - levels).mean())
    figure = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(levels, observed, "o-", label="observed share below the quantile")
    top.fill_between(levels, levels, observed, color="tab:red", alpha=0.3, label="gap")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="share of targets <= predicted q-quantile",
            title=f"Quantile calibration (ECE = {error:.4f})")
    top.legend(loc="upper left")
    bottom.hist(pit.numpy(), bins=num_levels, range=(0, 1), color="gray", edgecolor="black")
    bottom.set(xlabel="quantile level q / PIT value F(y)", ylabel="examples")
    return _save(figure, path)


def _short_names(names: Sequence[str]) -> list[str]:
    """Site names reduced to the dotted parts that tell them apart (``0.query`` for BERT's layers)."""
    parts = [name.split(".") for name in names]
    if len(names) > 1 and len({len(p) for p in parts}) == 1:
        varying = [i for i, column in enumerate(zip(*parts, strict=True)) if len(set(column)) > 1]
        return [".".join(p[i] for i in varying) for p in parts]
    return list(names)


def plot_posterior_spread(idata: az.InferenceData, path: str | Path) -> Path:
    """Per-layer box plots (over draws) of the posterior's summaries, one panel per summary a prior family
    declares (:attr:`~monteclora_pyro.priors.PriorFamily.panels`) that ``idata`` holds; beside each, in gray,
    the prior's when ``idata`` has a ``prior`` group."""
    posterior = idata.posterior
    declared = {panel.variable: panel for family in PRIOR_FAMILIES.values() for panel in family.panels}
    panels = [(panel, panel.reduce(posterior[name])) for name, panel in declared.items() if name in posterior]
    if not panels:
        raise ValueError(f"idata.posterior has no diagnostics variable; it has {list(posterior.data_vars)}")
    layers = _short_names(posterior["layer"].values.tolist())
    figure = Figure(figsize=(3.6 * len(panels) + 1.5, 1.6 + 0.35 * len(layers)), layout="constrained")
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    prior = idata.prior if "prior" in idata.groups() else None
    for axis, (panel, values) in zip(axes, panels, strict=True):
        draws = values.transpose("chain", "draw", "layer").values.reshape(-1, len(layers))  # chains pooled
        positions = np.arange(1, len(layers) + 1)
        if prior is not None and panel.variable in prior:
            before = panel.reduce(prior[panel.variable]).transpose("chain", "draw", "layer").values
            axis.boxplot(before.reshape(-1, len(layers)), positions=positions + 0.2, widths=0.3,
                         orientation="horizontal", showfliers=False, patch_artist=True,
                         boxprops={"facecolor": "lightgray", "color": "gray"}, medianprops={"color": "gray"},
                         whiskerprops={"color": "gray"}, capprops={"color": "gray"})
            positions = positions - 0.2
        axis.boxplot(draws, positions=positions, widths=0.3 if prior is not None else 0.5, orientation="horizontal",
                     showfliers=False)
        axis.set_title(panel.title, fontsize=10)
        axis.grid(axis="x", alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(5))
        axis.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        if panel.reference is not None:
            axis.axvline(panel.reference(posterior), color="gray", linestyle=":")
    axes[0].set_yticks(range(1, len(layers) + 1), layers)
    axes[0].invert_yaxis()  # first layer at the top
    against = " (gray: the prior)" if prior is not None else ""
    figure.suptitle(f"Posterior spread across adapted layers ({posterior.sizes['draw']} draws){against}")
    return _save(figure, path)


def plot_elbo(
    history: Mapping[str, Sequence[float]], path: str | Path, loss: Sequence[float] | None = None
) -> Path:
    """The tempered ELBO per example, E[log lik] - beta KL, and its terms over training.

    history: the ``elbo_history`` of a GLUE run's metrics (:data:`ELBO_KEYS`, one entry per logged step).
    loss: optional per-step training loss (-ELBO_beta / N estimated on each minibatch), drawn as -loss.
    """
    missing = [key for key in ELBO_KEYS if key not in history]
    if missing:
        raise ValueError(f"history lacks {missing}; it needs {list(ELBO_KEYS)}")
    if len({len(history[key]) for key in ELBO_KEYS}) != 1 or not history["step"]:
        raise ValueError(f"history's {list(ELBO_KEYS)} must be non-empty and of equal length")
    step, kl, ell, beta = (np.asarray(history[key], dtype=float) for key in ELBO_KEYS)
    figure = Figure(figsize=(7, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    if loss is not None:
        top.plot(np.arange(len(loss)), -np.asarray(loss, dtype=float), color="lightgray", lw=0.8,
                 label="-loss (each step's minibatch estimate)")
    top.plot(step, ell - beta * kl, "o-", color="tab:blue", label="ELBO per example: E[log lik] - beta KL")
    top.plot(step, ell, "s--", color="tab:green", ms=4, label="E[log lik] per example")
    top.set(ylabel="nats per example", title="Evidence lower bound")
    top.legend(fontsize=8)
    bottom.plot(step, kl, "o-", color="tab:red", label="KL per example")
    bottom.set(xlabel="step", ylabel="KL (nats per example)")
    weight_axis = bottom.twinx()
    weight_axis.plot(step, beta, color="tab:purple", lw=1, linestyle=":", label="KL weight beta")
    weight_axis.set_ylabel("KL weight beta")
    lines = bottom.get_lines() + weight_axis.get_lines()
    bottom.legend(lines, [line.get_label() for line in lines], fontsize=8)
    return _save(figure, path)


def plot_variational_trajectories(trajectory: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """The posterior stage (``posterior_steps``): the -ELBO per example and each guide parameter's mean over its
    steps, one panel per kind of parameter (``log_scale``, ``scale_loc``, ...), one line per group of sites; flat
    lines at the end say the stage reached the optimum given the means."""
    if not trajectory.get("loss"):
        raise ValueError("trajectory has no 'loss' steps")
    kinds: dict[str, list[str]] = {}
    for name in trajectory:
        if name != "loss":
            kinds.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    figure = Figure(figsize=(7, 2.2 * (1 + len(kinds))), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1 + len(kinds), 1, sharex=True))
    steps = np.arange(1, len(trajectory["loss"]) + 1)
    axes[0].plot(steps, trajectory["loss"], color="lightgray", lw=0.8)
    axes[0].set(ylabel="-ELBO / N", title="Posterior stage: the guide's parameters alone, the means fixed")
    for axis, (kind, names) in zip(axes[1:], sorted(kinds.items()), strict=True):
        for name, short in zip(names, _short_names([n.rsplit(".", 1)[0] for n in names]), strict=True):
            axis.plot(steps, trajectory[name], lw=1, label=short)
        axis.set_ylabel(f"mean {kind}", fontsize=8)
        axis.legend(fontsize=6)
    axes[-1].set_xlabel("posterior step")
    return _save(figure, path)


def plot_spread_vs_rows(records: Sequence[Mapping], path: str | Path) -> Path:
    """The learned perturbation std (mean over layers, with the layers' range), the predictive's mean mutual
    information on the dev rows (a classifier's) and the KL per example against the training rows, on log
    axes, beside the 1 / sqrt(N) shrinkage of a posterior limited by the data."""
    rows = np.asarray([r["rows"] for r in records], dtype=float)
    spread = np.asarray([r["perturbation_std"] for r in records], dtype=float)
    low = spread - np.asarray([r["perturbation_std_min"] for r in records], dtype=float)
    high = np.asarray([r["perturbation_std_max"] for r in records], dtype=float) - spread
    information = [r.get("mutual_information") for r in records]
    shown = all(value is not None and value > 0 for value in information)
    figure = Figure(figsize=(12 if shown else 8, 3.5), layout="constrained")
    axes = figure.subplots(1, 3 if shown else 2)
    axes[0].errorbar(rows, spread, yerr=[low, high], fmt="o-", capsize=3, label="learned (layers' range)")
    axes[0].plot(rows, spread[0] * np.sqrt(rows[0] / rows), ":", color="gray", label="1 / sqrt(N) from the fewest")
    axes[0].set(xscale="log", yscale="log", xlabel="training rows", ylabel="perturbation std",
                title="Posterior spread")
    axes[0].legend(fontsize=8)
    if shown:
        axes[1].plot(rows, information, "o-", color="tab:green", label="predictive (dev rows)")
        axes[1].plot(rows, information[0] * rows[0] / rows, ":", color="gray", label="1 / N from the fewest")
        axes[1].set(xscale="log", yscale="log", xlabel="training rows", ylabel="nats per dev row",
                    title="Mutual information (epistemic)")
        axes[1].legend(fontsize=8)
    axes[-1].plot(rows, [r["kl_per_example"] for r in records], "s-", color="tab:red")
    axes[-1].set(xscale="log", yscale="log", xlabel="training rows", ylabel="nats per example",
                 title="KL per example")
    return _save(figure, path)


def plot_metric_vs_lr(rows: Sequence[Mapping], path: str | Path, metric: str) -> Path:
    """A sweep's metric against the learning rate: one colour per method, one line style per batch size,
    the mean over seeds with its min-max range as error bars."""
    if not rows:
        raise ValueError("no finished sweep cells to plot")
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axis = figure.subplots()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    batch_sizes = sorted({int(r["batch_size"]) for r in rows})
    styles = ["-", "--", ":", "-."]
    for colour, method in enumerate(methods):
        for style, batch_size in enumerate(batch_sizes):
            cells = [r for r in rows if r["method"] == method and int(r["batch_size"]) == batch_size
                     and r["metric"] is not None]
            lrs = sorted({float(r["lr"]) for r in cells})
            if not lrs:
                continue
            values = [[float(r["metric"]) for r in cells if float(r["lr"]) == lr] for lr in lrs]
            mean = np.array([np.mean(v) for v in values])
            low, high = mean - [min(v) for v in values], [max(v) for v in values] - mean
            axis.errorbar(lrs, mean, yerr=[low, high], color=f"C{colour}", linestyle=styles[style % 4],
                          marker="o", capsize=3, label=f"{method} (batch {batch_size})")
    axis.set_xscale("log")
    axis.set(xlabel="learning rate", ylabel=metric, title=f"{metric} across the grid (mean, min-max over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_ece_vs_epoch(ece_by_epoch: Mapping[str, Sequence[float]], path: str | Path, task: str) -> Path:
    """Dev ECE after each epoch, one line per method (the mean over seeds): the overfitting plot."""
    if not ece_by_epoch:
        raise ValueError("no per-epoch ECE to plot")
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axis = figure.subplots()
    for method, values in ece_by_epoch.items():
        axis.plot(np.arange(1, len(values) + 1), values, "o-", label=method)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="epoch", ylabel="dev ECE (15 bins)", title=f"{task}: calibration while training (mean over seeds)")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)
