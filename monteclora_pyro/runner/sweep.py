"""Robustness sweeps: a grid of (method, learning rate, batch size, seed) runs of any task family, resumable.

Each cell writes ``cells/<cell>/metrics.json`` atomically; a cell whose file exists is not rerun,
provided its ``config.json`` has the settings asked for now (else the sweep stops before any work).
After every cell the grid's CSV is rewritten; at the end the robustness statistics per method
(mean, std, min, max and max - min of the headline metric across the grid) and a plot of the
metric against the learning rate are written, with the spread across settings of each method's seed-mean
and its ratio to ``map``'s (a paired bootstrap over seeds, :func:`across_settings`).  :func:`sweep_main` is
the command line of the ``sweep_*.py`` experiments.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_csv, atomic_write_json
from ..comparison import spread_ratio_bootstrap
from ..declarations import PEERS, load_prior
from ..kinds import integer, number_list, positive_float, positive_int
from ..priors import PRIOR_FAMILIES
from .options import add_config_arguments, config_values, parse_arguments
from .pipeline import TaskFamily, run
from .plots import plot_metric_vs_lr
from .settings import RunConfig

__all__ = ["CSV_COLUMNS", "Cell", "TASK_COLUMNS", "across_settings", "fitted_to_map", "method_config", "per_task",
           "robustness", "run_sweep", "run_sweep_fitting_map", "sweep_main"]

CSV_COLUMNS = (
    "task", "method", "lr", "batch_size", "seed", "steps", "train_seconds", "median_step_seconds", "metric",
    "accuracy", "mean_accuracy", "matthews_correlation", "f1", "nll", "mean_nll", "ece", "mean_ece", "brier",
    "mean_brier", "pearson", "spearman",
)


TASK_METRICS = ("accuracy", "nll", "ece", "brier")
TASK_COLUMNS = ("method", "lr", "batch_size", "seed", "task", "examples", *TASK_METRICS)


def method_config(base: RunConfig, method: str, output_dir: str) -> RunConfig:
    """Ours: the bundled prior of that name (or a .toml path); a peer: PEFT, with the monteclora settings."""
    if method in PEERS:
        return dataclasses.replace(base, prior="monteclora", peer=method, output_dir=output_dir)
    return dataclasses.replace(base, prior=method, peer=None, output_dir=output_dir)


@dataclass(frozen=True)
class Cell:
    method: str
    lr: float
    batch_size: int
    seed: int

    @property
    def name(self) -> str:
        method = Path(self.method).stem if self.method.endswith(".toml") else self.method
        return f"{method}_lr{self.lr:g}_bs{self.batch_size}_seed{self.seed}"


def _grid(methods: Sequence[str], lrs: Sequence[float], batch_sizes: Sequence[int], seeds: Sequence[int]) -> list[Cell]:
    """Seed-major, method-minor: a sweep stopped early has every method on the same cells."""
    return [Cell(m, lr, b, s) for s, lr, b, m in itertools.product(seeds, lrs, batch_sizes, methods)]


def _finished(config: RunConfig, unchecked: Sequence[str] = ()) -> bool:
    """Whether the cell has its metrics; raises ValueError when they were made with other settings
    (``unchecked`` ones apart)."""
    folder = Path(config.output_dir)
    if not (folder / "metrics.json").exists():
        return False
    try:
        written = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder / 'config.json'} cannot be read ({error}); delete that cell to rerun it") from None
    changed = config.changes_from(written, unchecked)
    if changed:
        raise ValueError(f"{folder} was finished with other settings ({'; '.join(changed)}); "
                         "give another --output-dir, or delete that cell to rerun it")
    return True


def _finished_metrics(output_dir: Path, cells: Iterable[Cell]) -> Iterator[tuple[Cell, dict[str, Any]]]:
    """(cell, its metrics.json) of every finished cell, in grid order."""
    for cell in cells:
        path = output_dir / "cells" / cell.name / "metrics.json"
        if path.exists():
            yield cell, json.loads(path.read_text())


def _rows(base: RunConfig, output_dir: Path, cells: Iterable[Cell]) -> list[dict[str, Any]]:
    """One row per finished cell; a family that scores several tasks reports their ``average``."""
    rows = []
    task, key = base.headline()
    for cell, metrics in _finished_metrics(output_dir, cells):
        metrics |= metrics.get("average", {})
        row = {c: metrics.get(c) for c in CSV_COLUMNS}
        row.update(task=task, method=cell.method, lr=cell.lr, batch_size=cell.batch_size, seed=cell.seed,
                   metric=metrics.get(key))
        rows.append(row)
    return rows


def _task_rows(tasks: Sequence[str], output_dir: Path, cells: Iterable[Cell]) -> list[dict[str, Any]]:
    """One row per finished cell and scored task (a family that scores several tasks, e.g. commonsense)."""
    rows = []
    for cell, metrics in _finished_metrics(output_dir, cells):
        for task in tasks:
            scores = metrics.get(task, {})
            rows.append({"method": cell.method, "lr": cell.lr, "batch_size": cell.batch_size, "seed": cell.seed,
                         "task": task, "examples": scores.get("examples")} | {m: scores.get(m) for m in TASK_METRICS})
    return rows


def per_task(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {task: {metric: mean over the method's cells}}} of :func:`_task_rows`'s rows."""
    means: dict[str, dict[str, dict[str, float]]] = {}
    for method, task in dict.fromkeys((r["method"], r["task"]) for r in rows):
        chosen = [r for r in rows if r["method"] == method and r["task"] == task]
        means.setdefault(method, {})[task] = {
            m: statistics.fmean(float(r[m]) for r in chosen) for m in TASK_METRICS
            if all(r[m] is not None for r in chosen)
        } | {"cells": len(chosen)}
    return means


def robustness(rows: list[dict[str, Any]], column: str = "metric") -> dict[str, dict[str, float]]:
    """Per method: mean, std, min, max and spread (max - min) of ``column`` across the grid."""
    stats: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        values = [float(r[column]) for r in rows if r["method"] == method and r[column] is not None]
        values = [v for v in values if math.isfinite(v)]
        if not values:
            continue
        stats[method] = {
            "mean": statistics.fmean(values), "std": statistics.pstdev(values), "min": min(values),
            "max": max(values), "spread": max(values) - min(values), "cells": len(values),
        }
    return stats


def across_settings(rows: list[dict[str, Any]], column: str = "metric", baseline: str = "map",
                    num_resamples: int = 2000) -> dict[str, dict[str, Any]]:
    """Per method: ``column``'s mean and std over seeds at each (learning rate, batch size), the spread
    (max - min) of those means across the settings, and its ratio to ``baseline``'s with a 95 % interval
    (:func:`~monteclora_pyro.comparison.spread_ratio_bootstrap`).  A method is paired with the baseline on
    the seeds where both have every setting finished (``seeds``); without the baseline, or with fewer than
    2 settings, there is nothing to compare and the result is empty."""
    settings = sorted({(float(r["lr"]), int(r["batch_size"])) for r in rows})
    value = {(r["method"], float(r["lr"]), int(r["batch_size"]), int(r["seed"])): float(r[column]) for r in rows
             if r[column] is not None and math.isfinite(float(r[column]))}

    all_seeds = {int(r["seed"]) for r in rows}
    complete = {m: {s for s in all_seeds if all((m, *setting, s) in value for setting in settings)}
                for m in dict.fromkeys(r["method"] for r in rows)}  # seeds with every setting finished
    if len(settings) < 2 or not complete.get(baseline):
        return {}
    table = {}
    for method, finished in complete.items():
        seeds = sorted(finished & complete[baseline])
        if not seeds:
            continue
        scores = {m: [[value[(m, *setting, s)] for s in seeds] for setting in settings] for m in (baseline, method)}
        table[method] = spread_ratio_bootstrap(scores, baseline, num_resamples)[method] | {
            "seeds": seeds, "settings": [{"lr": lr, "batch_size": b} for lr, b in settings]}
    return table


def run_sweep(
    family: type[TaskFamily],
    base: RunConfig,
    methods: Sequence[str],
    lrs: Sequence[float],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    output_dir: str | Path,
    run_missing: bool = True,
    method_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    cell_overrides: Callable[[Cell], Mapping[str, Any]] | None = None,
    unchecked: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every unfinished cell of ``family`` (unless ``run_missing`` is False: report on the finished ones only;
    a cell whose training diverges is reported in ``failed_cells`` and tried again by a rerun),
    then write ``sweep.csv``, ``robustness.json`` and ``plots/metric_vs_lr.png``; a family that scores
    several tasks also gets ``tasks.csv`` (one row per cell and task) and their means per method
    (``robustness.json``'s ``per_task``).

    ``method_overrides``: settings that differ for one method, {method: {field: value}}; ``cell_overrides(cell)``:
    those that differ for one cell (e.g. the trained adapter a post-hoc method starts from); ``unchecked``:
    settings a finished cell's record is not compared on (only when ``run_missing`` is False).
    """
    if unchecked and run_missing:
        raise ValueError(f"unchecked = {list(unchecked)}: only a report (run_missing False) may leave settings "
                         "unchecked; a cell that runs is checked on all of them")
    output_dir = Path(output_dir)
    cells = _grid(methods, lrs, batch_sizes, seeds)
    configs = {
        cell: dataclasses.replace(
            method_config(base, cell.method, str(output_dir / "cells" / cell.name)),
            lr=cell.lr, batch_size=cell.batch_size, seed=cell.seed, **(method_overrides or {}).get(cell.method, {}),
            **(cell_overrides(cell) if cell_overrides is not None else {}),
        ).resolved()
        for cell in cells
    }  # every cell's values are checked before the first one trains
    # a finished cell with other settings stops the sweep here, before any work
    finished = {cell: _finished(config, unchecked) for cell, config in configs.items()}
    csv_path = output_dir / "sweep.csv"
    failed: dict[str, str] = {}
    for index, (cell, config) in enumerate(configs.items(), start=1):
        if finished[cell] or _finished(config):  # another process sharing the grid may have finished it since
            print(f"[{index}/{len(cells)}] {cell.name}: done already, skipped", flush=True)
            continue
        if not run_missing:
            continue
        print(f"[{index}/{len(cells)}] {cell.name}", flush=True)
        try:
            run(family(config))
        except FloatingPointError as error:  # a diverged cell is a result of the grid, not the sweep's end
            failed[cell.name] = str(error)
            print(f"[{index}/{len(cells)}] {cell.name}: failed: {error}", flush=True)
            continue
        atomic_write_csv(csv_path, _rows(base, output_dir, cells), CSV_COLUMNS)
    rows = _rows(base, output_dir, cells)
    atomic_write_csv(csv_path, rows, CSV_COLUMNS)
    summary = {
        "task": base.headline()[0], "metric": base.headline()[1],
        "finished_cells": len(rows), "grid_cells": len(cells), "failed_cells": failed,
        "robustness": robustness(rows), "ece": robustness(rows, "ece"), "across_settings": across_settings(rows),
        "grid": {"methods": list(methods), "lrs": list(lrs), "batch_sizes": list(batch_sizes), "seeds": list(seeds)},
    }
    tasks = next(iter(configs.values())).scored_tasks()
    if tasks:
        task_rows = _task_rows(tasks, output_dir, cells)
        atomic_write_csv(output_dir / "tasks.csv", task_rows, TASK_COLUMNS)
        summary["per_task"] = per_task(task_rows)
    atomic_write_json(output_dir / "robustness.json", summary)
    plot_metric_vs_lr(rows, output_dir / "plots" / "metric_vs_lr.png", summary["metric"])
    return summary


def fitted_to_map(method: str) -> bool:
    """Whether ``method`` trains as plain LoRA does and fits its posterior after (Laplace): a grid fits it to
    the ``map`` cell of the same settings rather than training it again."""
    return method not in PEERS and PRIOR_FAMILIES[load_prior(method).family].trains_as_map


def run_sweep_fitting_map(
    family: type[TaskFamily],
    base: RunConfig,
    methods: Sequence[str],
    lrs: Sequence[float],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    output_dir: str | Path,
    run_missing: bool = True,
    method_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """:func:`run_sweep`, where a method :func:`fitted_to_map` is not trained: its cell starts from the ``map``
    cell of its learning rate, batch size and seed (``init_adapter``, ``max_steps`` 0, no per-epoch scores)
    and fits its posterior around those weights, so that the two differ in the posterior alone.  Its cell
    waits until that ``map`` cell is finished.  A fitted cell's settings name the ``map`` weights, which a
    clone holding the cells' records alone lacks: there the summary's files (``sweep.csv``,
    ``robustness.json``) report its finished cells from their records, checked on every setting but the
    weights' path (which names the ``map`` cell of the same settings, as this function wrote it)."""
    output_dir = Path(output_dir)
    fitted = [m for m in methods if fitted_to_map(m)]
    trained = [m for m in methods if m not in fitted]
    if fitted and "map" not in methods:
        raise ValueError(f"methods = {','.join(methods)}: {', '.join(fitted)} is fitted to the map cell of its "
                         "settings; add map")

    def map_weights(cell: Cell) -> str | None:
        adapter = output_dir / "cells" / Cell("map", cell.lr, cell.batch_size, cell.seed).name / "adapter"
        return str(adapter) if (adapter / "posterior.json").exists() else None

    def from_map(cell: Cell) -> dict[str, Any]:
        return ({"max_steps": 0, "eval_each_epoch": False, "init_adapter": map_weights(cell)}
                if cell.method in fitted else {})  # each declaration read once, above

    if run_missing:
        run_sweep(family, base, trained, lrs, batch_sizes, seeds, output_dir, method_overrides=method_overrides)
        for method, lr, batch_size in itertools.product(fitted, lrs, batch_sizes):
            ready = [s for s in seeds if map_weights(Cell(method, lr, batch_size, s))]
            for seed in sorted(set(seeds) - set(ready)):
                print(f"{Cell(method, lr, batch_size, seed).name}: waits for its map cell", flush=True)
            if ready:
                run_sweep(family, base, [method], [lr], [batch_size], ready, output_dir,
                          method_overrides=method_overrides, cell_overrides=from_map)
    weights_absent = fitted and not all(map_weights(cell) for cell in _grid(["map"], lrs, batch_sizes, seeds))
    if weights_absent:
        print(f"{', '.join(fitted)}: a map cell's weights are absent; reported from the cells' records", flush=True)
    return run_sweep(family, base, methods, lrs, batch_sizes, seeds, output_dir, run_missing=False,
                     method_overrides=method_overrides, cell_overrides=from_map,
                     unchecked=("init_adapter",) if weights_absent else ())


def sweep_main(family: type[TaskFamily], description: str, argv: Sequence[str] | None = None,
               prog: str | None = None, **defaults: Any) -> dict[str, Any]:
    """The command line of a sweep over runs of ``family``: the grid's options, and every setting of a single
    run (its settings class's) applied to all cells (``defaults`` change the run's defaults)."""
    import datasets

    settings = family.settings
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", "--output_dir", required=True,
                   help="the sweep's folder (cells/, sweep.csv, robustness.json)")
    p.add_argument("--methods", default="map,monteclora,peft-monteclora",
                   help="bundled prior names or .toml paths (ours) and peft-lora / peft-monteclora")
    p.add_argument("--lrs", type=number_list(positive_float), default=[1e-4, 3e-4, 1e-3, 3e-3])
    p.add_argument("--batch-sizes", "--batch_sizes", type=number_list(positive_int), default=[16, 32])
    p.add_argument("--seeds", type=number_list(integer), default=[0, 1])
    p.add_argument("--report-only", "--report_only", action="store_true",
                   help="run nothing: write the CSV, statistics and plot of the cells finished so far")
    add_config_arguments(p, settings, skip=("output_dir", "prior", "guide", "peer", "lr", "batch_size", "seed"))
    p.set_defaults(**defaults)
    args = parse_arguments(p, None if argv is None else list(argv))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    datasets.disable_progress_bars()
    try:
        base = settings(**config_values(args, settings))
        summary = run_sweep(family, base, methods, args.lrs, args.batch_sizes, args.seeds, args.output_dir,
                            run_missing=not args.report_only)
    except ValueError as error:
        p.error(str(error))
    print(f"\n{summary['task']}: {summary['metric']} over {summary['finished_cells']} of {summary['grid_cells']} "
          "cells (ECE mean in the last column)")
    print(f"{'method':<22} {'mean':>8} {'std':>8} {'min':>8} {'max':>8} {'max-min':>8} {'cells':>6} {'ECE':>8}")
    for method, s in summary["robustness"].items():
        ece = summary["ece"].get(method, {}).get("mean", float("nan"))
        print(f"{method:<22} {s['mean']:>8.4f} {s['std']:>8.4f} {s['min']:>8.4f} {s['max']:>8.4f} "
              f"{s['spread']:>8.4f} {s['cells']:>6} {ece:>8.4f}")
    if summary["across_settings"]:
        print(f"\n{summary['metric']}: spread across settings of the mean over seeds, and its ratio to map's "
              "[95 % bootstrap over seeds]")
        print(f"{'method':<22} {'seeds':>5} {'spread':>8} {'map':>8}  ratio [95 %]")
        for method, s in summary["across_settings"].items():
            print(f"{method:<22} {len(s['seeds']):>5} {s['spread']:>8.4f} {s['baseline_spread']:>8.4f}  "
                  f"{s['ratio']:.2f} [{s['low']:.2f}, {s['high']:.2f}]")
    if summary.get("per_task"):
        print(f"\nper task, mean over each method's cells: {', '.join(TASK_METRICS)}")
        for method, tasks in summary["per_task"].items():
            for task, means in tasks.items():
                values = " ".join(f"{means.get(m, float('nan')):>8.4f}" for m in TASK_METRICS)
                print(f"{method:<18} {task:<16} {values}")
    return summary
