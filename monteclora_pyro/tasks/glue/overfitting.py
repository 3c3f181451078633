"""The overfitting benchmark: small training sets, several epochs, calibration of every method.

Per GLUE task, every method trains on the same seeded subset (a share held out) for several epochs,
once per seed, as the cells of a :func:`~monteclora_pyro.runner.sweep.run_sweep` grid (resumable,
shareable by processes that split the seeds).  The ``map`` (plain LoRA) cells also give the post-hoc
baselines ``map+temperature`` (temperature scaling fitted on the held-out rows, or for regression a
refitted noise scale) and ``map+mc_dropout``.  Writes per task ``overfitting.csv``, and
``summary.json`` (mean and std over seeds of each score; the ECE after each epoch) and
``plots/ece_vs_epoch_<task>.png``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...artifacts import atomic_write_csv, atomic_write_json
from ...runner.plots import plot_ece_vs_epoch
from ...runner.sweep import Cell, run_sweep
from .family import GlueFamily
from .settings import GlueRunConfig, get_task, primary_metric

__all__ = ["POST_HOC", "SCORES", "overfitting_rows", "run_overfitting", "summarize"]

SCORES = ("metric", "accuracy", "nll", "ece", "brier", "crps")  # regression: no accuracy or Brier; CRPS
POST_HOC = {"map+temperature": "ts_", "map+mc_dropout": "mcd_"}  # derived from the map cells


def _score_row(task: str, method: str, seed: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    key = primary_metric(task)
    row = {"task": task, "method": method, "seed": seed, "metric": metrics.get(prefix + key)}
    row.update({name: metrics.get(prefix + name) for name in SCORES[1:]})
    return row


def overfitting_rows(task: str, output_dir: Path, methods: Sequence[str], seeds: Sequence[int],
                     config: GlueRunConfig) -> tuple[list[dict[str, Any]], dict[str, list[list[float]]]]:
    """Rows (method, seed, scores) of the finished cells, with the post-hoc baselines of ``map``, and
    the ECE after each epoch per method (one list per seed)."""
    rows, epochs = [], {}
    for method in methods:
        for seed in seeds:
            path = output_dir / "cells" / Cell(method, config.lr, config.batch_size, seed).name / "metrics.json"
            if not path.exists():
                continue
            metrics = json.loads(path.read_text())
            rows.append(_score_row(task, method, seed, metrics))
            epochs.setdefault(method, []).append([e["ece"] for e in metrics.get("epochs", [])])
            if method == "map":
                rows.extend(_score_row(task, name, seed, metrics, prefix) for name, prefix in POST_HOC.items()
                            if metrics.get(prefix + "ece") is not None)
    return rows, epochs


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {score: {mean, std, seeds}}} over the seeds (std is the sample std; 0 for one seed)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        out[method] = {}
        for score in SCORES:
            values = [float(r[score]) for r in rows if r["method"] == method and r[score] is not None]
            if values:
                out[method][score] = {"mean": statistics.fmean(values), "seeds": len(values),
                                      "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def run_overfitting(
    base: GlueRunConfig,
    tasks: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    output_dir: str | Path,
    run_missing: bool = True,
) -> dict[str, Any]:
    """Run (or, with ``run_missing`` False, only report) the benchmark; returns the summary written."""
    if not base.holdout_fraction > 0:
        raise ValueError(f"holdout_fraction = {base.holdout_fraction!r}: the benchmark needs held-out rows (> 0) "
                         "to fit the temperature")
    output_dir = Path(output_dir)
    configs = [dataclasses.replace(base, task=get_task(task).name, eval_each_epoch=True) for task in tasks]
    mc_dropout = {"map": {"mc_dropout_samples": base.mc_dropout_samples}}  # the other methods skip it
    summary: dict[str, Any] = {"settings": {k: v for k, v in dataclasses.asdict(base).items()
                                            if k not in ("task", "output_dir", "progress")},
                               "methods": list(methods), "seeds": list(seeds), "tasks": {}}
    for config in configs:
        task_dir = output_dir / config.task
        run_sweep(GlueFamily, dataclasses.replace(config, mc_dropout_samples=0), methods, [config.lr],
                  [config.batch_size], seeds, task_dir, run_missing=run_missing, method_overrides=mc_dropout)
        rows, epochs = overfitting_rows(config.task, task_dir, methods, seeds, config)
        atomic_write_csv(task_dir / "overfitting.csv", rows, ["task", "method", "seed", *SCORES])
        ece_by_epoch = {m: [statistics.fmean(e) for e in zip(*runs, strict=False)] for m, runs in epochs.items()
                        if runs and all(runs)}
        summary["tasks"][config.task] = {"metric": primary_metric(config.task), "methods": summarize(rows),
                                         "ece_by_epoch": ece_by_epoch}
        if ece_by_epoch:
            plot_ece_vs_epoch(ece_by_epoch, output_dir / "plots" / f"ece_vs_epoch_{config.task}.png", config.task)
    atomic_write_json(output_dir / "summary.json", summary)
    return summary
