"""The overfitting benchmark: small training sets, several epochs, calibration of every method.

Per GLUE task, every method trains on the same seeded subset (a share held out) for several epochs,
once per seed, as the cells of a :func:`~monteclora_pyro.runner.sweep.run_sweep` grid (resumable,
shareable by processes that split the seeds).  Every method is also scored after temperature scaling
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
import functools
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ...artifacts import atomic_write_bytes, atomic_write_csv, atomic_write_json
from ...calibration import apply_temperature
from ...comparison import paired_bootstrap
from ...metrics import error_detection_auroc, example_nll
from ...prediction import uncertainty
from ...regression_calibration import mixture_log_density
from ...runner.plots import plot_ece_vs_epoch
from ...runner.sweep import Cell, run_sweep
from .family import GlueFamily, dev_scores
from .settings import GlueRunConfig, get_task, primary_metric

__all__ = ["BASELINES", "COMPARISON_COLUMNS", "ENSEMBLE", "SCORES", "comparisons", "ensemble", "overfitting_rows",
           "run_overfitting", "summarize", "summary_table"]

# regression: no accuracy, Brier or binned ECE; its ece is the quantile calibration error, and CRPS.
# auroc_entropy / auroc_mi: how well the predictive's entropy / the mutual information (its epistemic part)
# flag wrong predictions (error_detection_auroc; a temperature leaves both orderings of two classes as they are)
SCORES = ("metric", "accuracy", "nll", "ece", "ece_debiased", "ece_floor", "brier", "crps", "auroc_entropy",
          "auroc_mi")
TEMPERATURE = "+temperature"  # <method>+temperature: the method's predictive recalibrated on the held-out rows
BASELINES = ("map", "map+temperature")  # every method's NLL is compared with these, row by row
ENSEMBLE = "map_ensemble"  # the map cells of all seeds, as one mixture
COMPARISON_COLUMNS = ("method", "baseline", "nll_difference", "low", "high", "rows", "pairs")


def _score_row(task: str, method: str, seed: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    key = primary_metric(task)
    row = {"task": task, "method": method, "seed": seed, "metric": metrics.get(prefix + key)}
    row.update({name: metrics.get(prefix + name) for name in SCORES[1:]})
    return row


def _aurocs(entropy: torch.Tensor, mutual_information: torch.Tensor, wrong: torch.Tensor) -> dict[str, Any]:
    return {"auroc_entropy": error_detection_auroc(entropy, wrong),
            "auroc_mi": error_detection_auroc(mutual_information, wrong)}


@functools.lru_cache(maxsize=256)
def _read_records(path: Path, modified_ns: int) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(line) for line in path.read_text().splitlines())


def _records(path: Path) -> tuple[dict[str, Any], ...] | None:
    """The rows of a cell's ``predictions.jsonl``, parsed once per version of the file (the rows, the ensemble and
    the comparisons all read it), or None when it is absent."""
    return _read_records(path, path.stat().st_mtime_ns) if path.exists() else None


def _error_aurocs(path: Path) -> dict[str, Any]:
    """The error-detection AUROCs of one cell's classification predictions (none for regression or no file)."""
    records = _records(path)
    if not records or "entropy" not in records[0]:
        return {}
    column = {key: torch.tensor([r[key] for r in records]) for key in ("entropy", "mutual_information")}
    wrong = torch.tensor([r["predicted"] != r["label"] for r in records])
    return _aurocs(column["entropy"], column["mutual_information"], wrong)


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
            rows.append(_score_row(task, method, seed, metrics) | _error_aurocs(path.parent / "predictions.jsonl"))
            epochs.setdefault(method, []).append([e["ece"] for e in metrics.get("epochs", [])])
            post_hoc = {method + TEMPERATURE: "ts_"} | ({"map+mc_dropout": "mcd_"} if method == "map" else {})
            rows.extend(_score_row(task, name, seed, metrics, prefix) for name, prefix in post_hoc.items()
                        if metrics.get(prefix + "ece") is not None)
    return rows, epochs


def _read_cell(output_dir: Path, method: str, seed: int, config: GlueRunConfig
               ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(metrics, per-row predictions) of a finished cell, or None."""
    cell = _cell_dir(output_dir, method, seed, config)
    records = _records(cell / "predictions.jsonl")
    if not (cell / "metrics.json").exists() or records is None:
        return None
    return json.loads((cell / "metrics.json").read_text()), list(records)


def ensemble(task: str, output_dir: Path, seeds: Sequence[int], config: GlueRunConfig) -> dict[str, Any] | None:
    """The ``map`` cells of ``seeds`` as one LoRA ensemble, or None with fewer than two finished: its score
    rows (the mixture, and ``+temperature``: the mixture of the members each after its own temperature,
    fitted on its own held-out rows, as no held-out row is every member's) and {dev row: NLL} of each.

    Classification mixes the members' class probabilities.  Regression mixes N(member's prediction, sigma)
    with sigma the root mean square of the members' noise scales (their learned ones; after ``+temperature``,
    those refitted on their held-out rows).
    """
    members = {seed: cell for seed in seeds if (cell := _read_cell(output_dir, "map", seed, config)) is not None}
    if len(members) < 2:
        return None
    shared = sorted(set.intersection(*({r["row"] for r in records} for _, records in members.values())))
    by_row = [{r["row"]: r for r in records} for _, records in members.values()]
    labels = torch.tensor([by_row[0][row]["label"] for row in shared])
    regression = get_task(task).num_labels == 1
    name = ",".join(str(seed) for seed in members)
    rows, nll = [], {}
    for method in (ENSEMBLE, ENSEMBLE + TEMPERATURE):
        recalibrated = method.endswith(TEMPERATURE)
        if regression:
            draws = torch.tensor([[member[row]["prediction"] for member in by_row] for row in shared])
            fitted = "holdout_noise_scale" if recalibrated else "noise_scale"
            scale = math.sqrt(statistics.fmean(metrics[fitted] ** 2 for metrics, _ in members.values()))
            scores = dev_scores(draws.mean(1), labels, get_task(task), draws, scale)
            row_nll = -mixture_log_density(draws, labels, scale)
        else:
            probs = [torch.tensor([member[row]["probabilities"] for row in shared], dtype=torch.float64)
                     for member in by_row]
            if recalibrated:
                probs = [apply_temperature(p, metrics["temperature"])
                         for p, (metrics, _) in zip(probs, members.values(), strict=True)]
            mixture = torch.stack(probs).mean(0)
            scores = dev_scores(mixture, labels, get_task(task))
            split = uncertainty(torch.stack(probs, dim=1))  # the members are the draws
            scores |= _aurocs(split["entropy"], split["mutual_information"], mixture.argmax(-1) != labels)
            row_nll = example_nll(mixture, labels)
        rows.append(_score_row(task, method, name, scores))
        nll[method] = dict(zip(shared, row_nll.tolist(), strict=True))
    return {"rows": rows, "nll": nll, "members": list(members)}


def _example_nll(output_dir: Path, method: str, seed: int, config: GlueRunConfig) -> dict[int, float] | None:
    """{dev row: NLL} of one cell's predictive (``<method>+temperature``: after the temperature), or None."""
    base, recalibrated = method.removesuffix(TEMPERATURE), method.endswith(TEMPERATURE)
    records = _records(_cell_dir(output_dir, base, seed, config) / "predictions.jsonl")
    key = "ts_nll" if recalibrated else "nll"
    if not records or key not in records[0]:
        return None
    return {record["row"]: record[key] for record in records}


def comparisons(output_dir: Path, methods: Sequence[str], seeds: Sequence[int], config: GlueRunConfig,
                num_resamples: int = 2000, ensemble_nll: Mapping[str, dict[int, float]] | None = None
                ) -> list[dict[str, Any]]:
    """Each method's (and ``<method>+temperature``'s) NLL minus each baseline's (:data:`BASELINES`), on the same
    dev rows, pooled over the seeds both have: the mean and its paired bootstrap 95 % interval (rows resampled,
    each with all its seeds' differences).  ``ensemble_nll`` ({name: {row: NLL}}, :func:`ensemble`) is one
    predictive for all seeds, compared with each seed's baseline."""
    names = [name for m in methods for name in (m, m + TEMPERATURE)]
    nll = {(name, seed): _example_nll(output_dir, name, seed, config)  # each cell's file read once per name
           for name in dict.fromkeys([*names, *BASELINES]) for seed in seeds}
    for name, values in (ensemble_nll or {}).items():
        names.append(name)
        nll.update({(name, seed): values for seed in seeds})
    out = []
    for method in names:
        for baseline in BASELINES:
            if method == baseline:
                continue
            rows, differences = [], []
            for seed in seeds:
                ours, theirs = nll[method, seed], nll[baseline, seed]
                if ours is None or theirs is None:
                    continue
                shared = sorted(set(ours) & set(theirs))
                rows += shared
                differences += [ours[r] - theirs[r] for r in shared]
            if differences:
                interval = paired_bootstrap(rows, differences, num_resamples=num_resamples)
                out.append({"method": method, "baseline": baseline, "nll_difference": interval["mean"]}
                           | {k: interval[k] for k in ("low", "high", "rows", "pairs")})
    return out


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
    summary: dict[str, Any] = {"settings": {k: v for k, v in dataclasses.asdict(configs[0]).items()
                                            if k not in ("task", "output_dir", "progress")},
                               "methods": list(methods), "seeds": list(seeds), "tasks": {}}
    for config in configs:
        task_dir = output_dir / config.task
        run_sweep(GlueFamily, dataclasses.replace(config, mc_dropout_samples=0), methods, [config.lr],
                  [config.batch_size], seeds, task_dir, run_missing=run_missing, method_overrides=mc_dropout)
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


def _interval(row: Mapping[str, Any] | None) -> str:
    return "" if row is None else f"{row['nll_difference']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]"


def _formatter(scores: Mapping[str, Mapping[str, float]]):
    def mean(name: str, digits: int = 4) -> str:
        return f"{scores[name]['mean']:.{digits}f}" if name in scores else ""

    return mean


def summary_table(summary: Mapping[str, Any]) -> str:
    """The summary as one Markdown table (``summary.md``): per task and method the headline metric, NLL, its
    difference to ``map`` and to ``map+temperature`` with the intervals, the ECE beside its calibrated floor,
    the debiased calibration error, Brier (CRPS for regression) and the error-detection AUROC of the
    entropy, means over the seeds (how many in the last column)."""
    lines = ["| task | method | metric | NLL | NLL − `map` [95 %] | NLL − `map+temperature` [95 %] | ECE (floor) "
             "| debiased ECE | Brier / CRPS | AUROC (entropy) | seeds |", "|" + "---|" * 11]
    for task, result in summary["tasks"].items():
        versus = {(r["method"], r["baseline"]): r for r in result["nll_versus"]}
        for method, scores in result["methods"].items():
            mean = _formatter(scores)
            ece = mean("ece", 3) + (f" ({mean('ece_floor', 3)})" if "ece_floor" in scores else "")
            seeds = scores["nll"]["seeds"] if "nll" in scores else ""
            lines.append(f"| {task} | `{method}` | {mean('metric')} | {mean('nll')} | "
                         f"{_interval(versus.get((method, 'map')))} | "
                         f"{_interval(versus.get((method, 'map+temperature')))} | {ece} | "
                         f"{mean('ece_debiased', 3)} | {mean('brier') or mean('crps')} | {mean('auroc_entropy', 3)} | "
                         f"{seeds} |")
    return "\n".join(lines) + "\n"
