"""The overfitting benchmark: small training sets, several epochs, calibration of every method.

Per GLUE task, every method trains on the same seeded subset (a share held out) for several epochs,
once per seed, as the cells of a grid (resumable, shareable by processes that split the seeds); a
post-hoc posterior (Laplace) is fitted to the trained ``map`` cell of its seed instead
(:func:`~monteclora_pyro.runner.sweep.run_sweep_fitting_map`).  Every method is also scored after temperature scaling
fitted on the held-out rows (``<method>+temperature``; for regression a refitted noise scale), and the
``map`` (plain LoRA) cells give ``map+mc_dropout``.  The finished ``map`` cells of all seeds together are
a LoRA ensemble (``map_ensemble``, arXiv 2310.00035: members differing in initialization, data order and
training subset), scored as the mixture of its members' predictives.  Each method's per-row NLL is
compared with ``map``'s and ``map+temperature``'s by a paired bootstrap interval.  Writes per task
``overfitting.csv`` and ``comparisons.csv``, and ``summary.json`` (mean and std over seeds of each
score, the comparisons, the ECE after each epoch), ``summary.md`` (one table of it all) and
``plots/ece_vs_epoch_<task>.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ...artifacts import atomic_write_bytes, atomic_write_csv, atomic_write_json
from ...metrics import glue_metrics
from ...regression_calibration import mixture_log_density
from ...runner.benchmark import (
    BASELINES,
    COMPARISON_COLUMNS,
    SCORES,
    TEMPERATURE,
    classification_ensemble,
    compare_nll,
    error_aurocs,
    read_records,
    record_nll,
    summarize,
    summary_table,
)
from ...runner.plots import plot_ece_vs_epoch
from ...runner.sweep import Cell, run_sweep_fitting_map
from .family import GlueFamily, dev_scores
from .settings import GlueRunConfig, get_task, primary_metric

__all__ = ["BASELINES", "COMPARISON_COLUMNS", "ENSEMBLE", "SCORES", "comparisons", "ensemble", "overfitting_rows",
           "run_overfitting", "summarize", "summary_table"]

ENSEMBLE = "map_ensemble"  # the map cells of all seeds, as one mixture


def _score_row(task: str, method: str, seed: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    key = primary_metric(task)
    row = {"task": task, "method": method, "seed": seed, "metric": metrics.get(prefix + key)}
    row.update({name: metrics.get(prefix + name) for name in SCORES[1:]})
    return row


def _cell_dir(output_dir: Path, method: str, seed: int, config: GlueRunConfig) -> Path:
    return output_dir / "cells" / Cell(method, config.lr, config.batch_size, seed).name


def overfitting_rows(task: str, output_dir: Path, methods: Sequence[str], seeds: Sequence[int],
                     config: GlueRunConfig) -> tuple[list[dict[str, Any]], dict[str, list[list[float]]]]:
    """Rows (method, seed, scores) of the finished cells, each method also after temperature scaling
    (``<method>+temperature``) and ``map`` with MC dropout (``map+mc_dropout``), and the ECE after each
    epoch per method (one list per seed)."""
    rows, epochs = [], {}
    for method in methods:
        for seed in seeds:
            path = _cell_dir(output_dir, method, seed, config) / "metrics.json"
            if not path.exists():
                continue
            metrics = json.loads(path.read_text())
            rows.append(_score_row(task, method, seed, metrics) | error_aurocs(path.parent / "predictions.jsonl"))
            epochs.setdefault(method, []).append([e["ece"] for e in metrics.get("epochs", [])])
            post_hoc = {method + TEMPERATURE: "ts_"} | ({"map+mc_dropout": "mcd_"} if method == "map" else {})
            rows.extend(_score_row(task, name, seed, metrics, prefix) for name, prefix in post_hoc.items()
                        if metrics.get(prefix + "ece") is not None)
    return rows, epochs


def _read_cell(output_dir: Path, method: str, seed: int, config: GlueRunConfig
               ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(metrics, per-row predictions) of a finished cell, or None."""
    cell = _cell_dir(output_dir, method, seed, config)
    records = read_records(cell / "predictions.jsonl")
    if not (cell / "metrics.json").exists() or records is None:
        return None
    return json.loads((cell / "metrics.json").read_text()), list(records)


def ensemble(task: str, output_dir: Path, seeds: Sequence[int], config: GlueRunConfig) -> dict[str, Any] | None:
    """The ``map`` cells of ``seeds`` as one LoRA ensemble, or None with fewer than two finished: its score
    rows (the mixture, and ``+temperature``: the mixture of the members each after its own temperature,
    fitted on its own held-out rows, as no held-out row is every member's) and {dev row: NLL} of each.

    Classification mixes the members' class probabilities
    (:func:`~monteclora_pyro.runner.benchmark.classification_ensemble`).  Regression mixes N(member's
    prediction, sigma) with sigma the root mean square of the members' noise scales (their learned ones;
    after ``+temperature``, those refitted on their held-out rows).
    """
    members = {seed: cell for seed in seeds if (cell := _read_cell(output_dir, "map", seed, config)) is not None}
    if len(members) < 2:
        return None
    name = ",".join(str(seed) for seed in members)
    rows, nll = [], {}
    for method in (ENSEMBLE, ENSEMBLE + TEMPERATURE):
        recalibrated = method.endswith(TEMPERATURE)
        if get_task(task).num_labels == 1:
            shared = sorted(set.intersection(*({r["row"] for r in records} for _, records in members.values())))
            by_row = [{r["row"]: r for r in records} for _, records in members.values()]
            labels = torch.tensor([by_row[0][row]["label"] for row in shared])
            draws = torch.tensor([[member[row]["prediction"] for member in by_row] for row in shared])
            fitted = "holdout_noise_scale" if recalibrated else "noise_scale"
            scale = math.sqrt(statistics.fmean(metrics[fitted] ** 2 for metrics, _ in members.values()))
            scores = dev_scores(draws.mean(1), labels, get_task(task), draws, scale)
            nll[method] = dict(zip(shared, (-mixture_log_density(draws, labels, scale)).tolist(), strict=True))
        else:
            temperatures = [metrics["temperature"] for metrics, _ in members.values()] if recalibrated else None
            mixed = classification_ensemble([records for _, records in members.values()], temperatures)
            scores = mixed["scores"] | glue_metrics(get_task(task).metrics, mixed["probabilities"], mixed["labels"])
            nll[method] = mixed["nll"]
        rows.append(_score_row(task, method, name, scores))
    return {"rows": rows, "nll": nll, "members": list(members)}


def comparisons(output_dir: Path, methods: Sequence[str], seeds: Sequence[int], config: GlueRunConfig,
                num_resamples: int = 2000, ensemble_nll: Mapping[str, dict[int, float]] | None = None
                ) -> list[dict[str, Any]]:
    """Each method's (and ``<method>+temperature``'s) NLL minus each baseline's (:data:`BASELINES`), on the same
    dev rows, pooled over the seeds both have (:func:`~monteclora_pyro.runner.benchmark.compare_nll`).
    ``ensemble_nll`` ({name: {row: NLL}}, :func:`ensemble`) is one predictive for all seeds, compared with
    each seed's baseline."""
    names = [name for m in methods for name in (m, m + TEMPERATURE)]
    nll = {(name, seed): record_nll(_cell_dir(output_dir, name.removesuffix(TEMPERATURE), seed, config)
                                    / "predictions.jsonl", name.endswith(TEMPERATURE))
           for name in dict.fromkeys([*names, *BASELINES]) for seed in seeds}
    for name, values in (ensemble_nll or {}).items():
        names.append(name)
        nll.update({(name, seed): values for seed in seeds})
    return compare_nll(nll, names, seeds, num_resamples)


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
    summary: dict[str, Any] = {"settings": {k: v for k, v in dataclasses.asdict(configs[0]).items()
                                            if k not in ("task", "output_dir", "progress")},
                               "methods": list(methods), "seeds": list(seeds), "tasks": {}}
    for config in configs:
        task_dir = output_dir / config.task
        run_sweep_fitting_map(GlueFamily, dataclasses.replace(config, mc_dropout_samples=0), methods, [config.lr],
                              [config.batch_size], seeds, task_dir, run_missing=run_missing,
                              method_overrides=mc_dropout)
        rows, epochs = overfitting_rows(config.task, task_dir, methods, seeds, config)
        mixture = ensemble(config.task, task_dir, seeds, config) if "map" in methods else None
        rows += mixture["rows"] if mixture else []
        atomic_write_csv(task_dir / "overfitting.csv", rows, ["task", "method", "seed", *SCORES])
        versus = comparisons(task_dir, methods, seeds, config, ensemble_nll=mixture["nll"] if mixture else None)
        atomic_write_csv(task_dir / "comparisons.csv", versus, COMPARISON_COLUMNS)
        ece_by_epoch = {m: [statistics.fmean(e) for e in zip(*runs, strict=False)] for m, runs in epochs.items()
                        if runs and all(runs)}
        summary["tasks"][config.task] = {"metric": primary_metric(config.task), "methods": summarize(rows),
                                         "nll_versus": versus, "ece_by_epoch": ece_by_epoch}
        if ece_by_epoch:
            plot_ece_vs_epoch(ece_by_epoch, output_dir / "plots" / f"ece_vs_epoch_{config.task}.png", config.task)
    atomic_write_json(output_dir / "summary.json", summary)
    atomic_write_bytes(output_dir / "summary.md", summary_table(summary).encode())
    return summary
