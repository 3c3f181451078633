"""Calibration under distribution shift (BLoB's protocol, arXiv 2406.11675): train on one task
(OpenBookQA), score its test rows (in domain) and other tasks' (ARC-Easy, ARC-Challenge: shifted), where a
temperature fitted on held-out rows of the training task is known not to transfer.

Every method trains once per seed as a cell of a grid (resumable; processes may split the seeds or the
methods).  A post-hoc method (the ``laplace`` family) is not trained again: its cell starts from the ``map``
cell of its seed and fits its posterior around those weights
(:func:`~monteclora_pyro.runner.sweep.run_sweep_fitting_map`), so the two differ in the posterior alone.
Every cell scores the same test rows (``eval_seed``).  Per scored task, as in the GLUE overfitting
benchmark: each method and ``<method>+temperature`` (fitted on the held-out rows of the training task),
the LoRA ensemble of the ``map`` cells (``map_ensemble``, and each member after its own temperature),
and each one's NLL against ``map``'s and ``map+temperature``'s (paired bootstrap intervals over the
rows, pooled over the seeds).
Then how well each method's uncertainty tells a shifted question from an in-domain one: the AUROC of the
predictive's entropy and of its mutual information, in-domain test rows against each shifted task's.

Writes ``<task>.csv`` (one row per method and seed), ``comparisons.csv``, ``shift_auroc.csv``,
``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ...artifacts import atomic_write_bytes, atomic_write_csv, atomic_write_json
from ...metrics import error_detection_auroc
from ...runner.benchmark import (
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
from ...runner.sweep import Cell, run_sweep_fitting_map
from .family import CommonsenseFamily
from .settings import CommonsenseRunConfig

__all__ = ["ENSEMBLE", "SHIFT_COLUMNS", "run_shift", "shift_table"]

ENSEMBLE = "map_ensemble"
SHIFT_COLUMNS = ("method", "seed", "shifted_task", "auroc_entropy", "auroc_mi", "in_domain_rows", "shifted_rows")
UNCERTAINTIES = ("entropy", "mutual_information")


def _cell_dir(output_dir: Path, method: str, seed: int, base: CommonsenseRunConfig) -> Path:
    return output_dir / "cells" / Cell(method, base.lr, base.batch_size, seed).name


def _predictions(output_dir: Path, method: str, seed: int, base: CommonsenseRunConfig, task: str) -> Path:
    return _cell_dir(output_dir, method, seed, base) / f"predictions_{task}.jsonl"


def _finished(output_dir: Path, method: str, seed: int, base: CommonsenseRunConfig) -> dict[str, Any] | None:
    path = _cell_dir(output_dir, method, seed, base) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def _score_row(task: str, method: str, seed: Any, scores: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    return {"task": task, "method": method, "seed": seed, "metric": scores.get(prefix + "accuracy")} | {
        name: scores.get(prefix + name) for name in SCORES[1:]}


def _check(base: CommonsenseRunConfig, methods: Sequence[str]) -> None:
    if not base.holdout_fraction > 0:
        raise ValueError(f"holdout_fraction = {base.holdout_fraction!r}: the benchmark needs held-out training rows "
                         "(> 0) to fit the temperature")
    if base.eval_seed is None:
        raise ValueError("eval_seed is unset: every seed must score the same test rows (give --eval-seed 0)")
    if base.eval_mode != "options":
        raise ValueError(f"eval_mode = {base.eval_mode!r}: calibration needs the options' probabilities ('options')")
    in_domain = base.train_task_list()[0]
    if in_domain not in base.eval_task_list():
        raise ValueError(f"eval_tasks = {base.eval_tasks!r} must include the training task {in_domain!r} (the "
                         "in-domain rows)")


def run_shift(base: CommonsenseRunConfig, methods: Sequence[str], seeds: Sequence[int], output_dir: str | Path,
              run_missing: bool = True, method_samples: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Run (or, with ``run_missing`` False, only report) the benchmark; returns the summary written.
    ``method_samples``: another number of posterior draws for some methods ({method: draws})."""
    resolved = base.resolved()  # for the checks and the task lists; every cell resolves its own method
    _check(resolved, methods)
    output_dir = Path(output_dir)
    grid = {"lrs": [base.lr], "batch_sizes": [base.batch_size]}
    unknown = sorted(set(method_samples or {}) - set(methods))
    if unknown:
        raise ValueError(f"method_samples names {', '.join(unknown)}, not among the methods {', '.join(methods)}")
    samples = {m: {"num_samples": n} for m, n in (method_samples or {}).items()}

    run_sweep_fitting_map(CommonsenseFamily, base, methods, grid["lrs"], grid["batch_sizes"], seeds, output_dir,
                          run_missing=run_missing, method_overrides=samples)

    base = resolved
    tasks = base.eval_task_list()
    summary: dict[str, Any] = {"settings": {k: v for k, v in dataclasses.asdict(base).items()
                                            if k not in ("output_dir", "progress", "data_dir", "model")},
                               "methods": list(methods), "seeds": list(seeds), "in_domain": base.train_task_list()[0],
                               "tasks": {}}
    members = [s for s in seeds if _finished(output_dir, "map", s, base) is not None]
    for task in tasks:
        rows, nll = [], {}
        for method in methods:
            for seed in seeds:
                metrics = _finished(output_dir, method, seed, base)
                if metrics is None:
                    continue
                path = _predictions(output_dir, method, seed, base, task)
                rows.append(_score_row(task, method, seed, metrics[task]) | error_aurocs(path))
                rows.append(_score_row(task, method + TEMPERATURE, seed, metrics[task], "ts_"))
                nll[method, seed], nll[method + TEMPERATURE, seed] = record_nll(path), record_nll(path, True)
        names = [name for m in methods for name in (m, m + TEMPERATURE)]
        if len(members) >= 2:
            for name, temperatures in ((ENSEMBLE, None), (ENSEMBLE + TEMPERATURE, [
                    _finished(output_dir, "map", s, base)["temperature"] for s in members])):
                mixed = classification_ensemble(
                    [read_records(_predictions(output_dir, "map", s, base, task)) for s in members], temperatures)
                rows.append(_score_row(task, name, ",".join(map(str, members)), mixed["scores"]))
                nll.update({(name, seed): mixed["nll"] for seed in seeds})
                names.append(name)
        atomic_write_csv(output_dir / f"{task}.csv", rows, ["task", "method", "seed", *SCORES])
        summary["tasks"][task] = {"metric": "accuracy", "methods": summarize(rows),
                                  "nll_versus": compare_nll(nll, names, seeds)}
    atomic_write_csv(output_dir / "comparisons.csv",
                     [{"task": t} | r for t, result in summary["tasks"].items() for r in result["nll_versus"]],
                     ["task", *COMPARISON_COLUMNS])
    shift_rows = _shift_aurocs(output_dir, methods, seeds, base, members)
    atomic_write_csv(output_dir / "shift_auroc.csv", shift_rows, SHIFT_COLUMNS)
    summary["shift_auroc"] = _shift_means(shift_rows)
    atomic_write_json(output_dir / "summary.json", summary)
    atomic_write_bytes(output_dir / "summary.md", (summary_table(summary) + "\n" + shift_table(summary)).encode())
    return summary


def _uncertainties(records) -> dict[str, list[float]]:
    return {key: [r[key] for r in records] for key in UNCERTAINTIES}


def _auroc_row(method: str, seed: Any, task: str, inside: dict[str, list[float]], shifted: dict[str, list[float]]
               ) -> dict[str, Any]:
    is_shifted = torch.tensor([False] * len(inside["entropy"]) + [True] * len(shifted["entropy"]))
    scores = {f"auroc_{'mi' if key == 'mutual_information' else key}":
              error_detection_auroc(torch.tensor(inside[key] + shifted[key]), is_shifted) for key in UNCERTAINTIES}
    return {"method": method, "seed": seed, "shifted_task": task, **scores,
            "in_domain_rows": len(inside["entropy"]), "shifted_rows": len(shifted["entropy"])}


def _shift_aurocs(output_dir: Path, methods: Sequence[str], seeds: Sequence[int], base: CommonsenseRunConfig,
                  members: Sequence[int]) -> list[dict[str, Any]]:
    """One row per method, seed and shifted task: the AUROC with which the entropy (and the mutual information)
    ranks that task's rows above the in-domain test rows."""
    in_domain = base.train_task_list()[0]
    shifted = [t for t in base.eval_task_list() if t != in_domain]
    out = []
    for method in methods:
        for seed in seeds:
            if _finished(output_dir, method, seed, base) is None:
                continue
            inside = _uncertainties(read_records(_predictions(output_dir, method, seed, base, in_domain)))
            for task in shifted:
                other = _uncertainties(read_records(_predictions(output_dir, method, seed, base, task)))
                out.append(_auroc_row(method, seed, task, inside, other))
    if len(members) >= 2:
        def mixed(task: str) -> dict[str, list[float]]:
            split = classification_ensemble(
                [read_records(_predictions(output_dir, "map", s, base, task)) for s in members])["uncertainty"]
            return {key: list(split[key].values()) for key in UNCERTAINTIES}

        inside = mixed(in_domain)
        out += [_auroc_row(ENSEMBLE, ",".join(map(str, members)), task, inside, mixed(task)) for task in shifted]
    return out


def _shift_means(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {shifted task: {auroc_entropy, auroc_mi: mean over seeds, seeds}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, task in dict.fromkeys((r["method"], r["shifted_task"]) for r in rows):
        chosen = [r for r in rows if r["method"] == method and r["shifted_task"] == task]
        out.setdefault(method, {})[task] = {key: statistics.fmean(r[key] for r in chosen)
                                            for key in ("auroc_entropy", "auroc_mi")
                                            if all(r[key] is not None for r in chosen)} | {"seeds": len(chosen)}
    return out


def shift_table(summary: dict[str, Any]) -> str:
    """The shift-detection AUROCs as a Markdown table (method x shifted task: entropy, mutual information)."""
    lines = [f"| method | shifted task | AUROC, entropy (vs {summary['in_domain']}) | AUROC, mutual information "
             "| seeds |", "|---|---|---|---|---|"]
    for method, tasks in summary["shift_auroc"].items():
        for task, scores in tasks.items():
            cells = [f"{scores[k]:.3f}" if k in scores else "" for k in ("auroc_entropy", "auroc_mi")]
            lines.append(f"| `{method}` | {task} | {cells[0]} | {cells[1]} | {scores['seeds']} |")
    return "\n".join(lines) + "\n"
