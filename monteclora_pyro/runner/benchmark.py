"""What the calibration benchmarks share: a cell's per-row predictions, score rows and their summary over
seeds, the paired NLL comparisons with the baselines, the LoRA ensemble of classification cells, and the
Markdown table.

A benchmark's cells are sweep cells (:mod:`~monteclora_pyro.runner.sweep`) that write each evaluated set's
examples as JSON lines (:func:`~monteclora_pyro.prediction.classification_records`: ``row``, ``label``,
``probabilities``, ``nll``, the entropy split, ``ts_nll`` after the held-out temperature).  Every method is
compared row by row with :data:`BASELINES` by a paired bootstrap over the rows, pooled over the seeds.
"""

from __future__ import annotations

import functools
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..calibration import apply_temperature
from ..comparison import paired_bootstrap
from ..metrics import classification_metrics, error_detection_auroc, example_nll
from ..prediction import uncertainty

__all__ = ["BASELINES", "COMPARISON_COLUMNS", "SCORES", "TEMPERATURE", "classification_ensemble", "compare_nll",
           "error_aurocs", "read_records", "record_nll", "summarize", "summary_table", "summary_text"]

# regression: no accuracy, Brier or binned ECE; its ece is the quantile calibration error, and CRPS.
# auroc_entropy / auroc_mi: how well the predictive's entropy / the mutual information (its epistemic part)
# flag wrong predictions (error_detection_auroc; a temperature leaves both orderings of two classes as they are)
SCORES = ("metric", "accuracy", "nll", "ece", "ece_debiased", "ece_floor", "brier", "crps", "auroc_entropy",
          "auroc_mi")
TEMPERATURE = "+temperature"  # <method>+temperature: the method's predictive recalibrated on the held-out rows
BASELINES = ("map", "map+temperature")  # every method's NLL is compared with these, row by row
COMPARISON_COLUMNS = ("method", "baseline", "nll_difference", "low", "high", "rows", "pairs")


@functools.lru_cache(maxsize=256)
def _read_records(path: Path, modified_ns: int) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(line) for line in path.read_text().splitlines())


def read_records(path: Path) -> tuple[dict[str, Any], ...] | None:
    """The rows of a cell's predictions file, parsed once per version of the file (the rows, the ensemble and
    the comparisons all read it), or None when it is absent."""
    return _read_records(path, path.stat().st_mtime_ns) if path.exists() else None


def _aurocs(entropy: torch.Tensor, mutual_information: torch.Tensor, wrong: torch.Tensor) -> dict[str, Any]:
    return {"auroc_entropy": error_detection_auroc(entropy, wrong),
            "auroc_mi": error_detection_auroc(mutual_information, wrong)}


def error_aurocs(path: Path) -> dict[str, Any]:
    """The error-detection AUROCs of one cell's classification predictions (none for regression or no file)."""
    records = read_records(path)
    if not records or "entropy" not in records[0]:
        return {}
    column = {key: torch.tensor([r[key] for r in records]) for key in ("entropy", "mutual_information")}
    wrong = torch.tensor([r["predicted"] != r["label"] for r in records])
    return _aurocs(column["entropy"], column["mutual_information"], wrong)


def record_nll(path: Path, recalibrated: bool = False) -> dict[int, float] | None:
    """{row: NLL} of a predictions file (after the held-out temperature: ``ts_nll``), or None."""
    records = read_records(path)
    key = "ts_nll" if recalibrated else "nll"
    if not records or key not in records[0]:
        return None
    return {record["row"]: record[key] for record in records}


def classification_ensemble(members: Sequence[Sequence[Mapping[str, Any]]],
                            temperatures: Sequence[float] | None = None) -> dict[str, Any]:
    """The equal-weight mixture of several cells' class probabilities on the rows they share (a LoRA
    ensemble, each member a point mass or a posterior of its own), each member first after its own
    temperature when ``temperatures`` are given: its scores (:func:`~monteclora_pyro.metrics.classification_metrics`
    and the error-detection AUROCs of the entropy split), the mixture's ``probabilities``, ``labels`` and
    ``rows``, ``nll`` ({row: NLL}) and the entropy split per row (``uncertainty``: {key: {row: value}})."""
    by_row = [{r["row"]: r for r in records} for records in members]
    shared = sorted(set.intersection(*(set(rows) for rows in by_row)))
    labels = torch.tensor([by_row[0][row]["label"] for row in shared])
    probs = [torch.tensor([member[row]["probabilities"] for row in shared], dtype=torch.float64) for member in by_row]
    if temperatures is not None:
        probs = [apply_temperature(p, t) for p, t in zip(probs, temperatures, strict=True)]
    mixture = torch.stack(probs).mean(0)
    split = uncertainty(torch.stack(probs, dim=1))  # the members are the draws
    scores = classification_metrics(mixture, labels) | _aurocs(split["entropy"], split["mutual_information"],
                                                                mixture.argmax(-1) != labels)
    return {"scores": scores, "probabilities": mixture, "labels": labels, "rows": shared,
            "nll": dict(zip(shared, example_nll(mixture, labels).tolist(), strict=True)),
            "uncertainty": {key: dict(zip(shared, value.tolist(), strict=True)) for key, value in split.items()}}


def compare_nll(nll: Mapping[tuple[str, Any], Mapping[Any, float] | None], names: Sequence[str],
                seeds: Sequence[Any], num_resamples: int = 2000) -> list[dict[str, Any]]:
    """Each of ``names``' per-row NLL minus each baseline's (:data:`BASELINES`), on the rows both scored, pooled
    over the seeds both have (``nll[(name, seed)]``: {row: NLL}, or None when unfinished): the mean and its
    paired bootstrap 95 % interval (rows resampled, each with all its seeds' differences)."""
    out = []
    for method in names:
        for baseline in BASELINES:
            if method == baseline:
                continue
            rows, differences = [], []
            for seed in seeds:
                ours, theirs = nll.get((method, seed)), nll.get((baseline, seed))
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
            values = [float(r[score]) for r in rows if r["method"] == method and r.get(score) is not None]
            if values:
                out[method][score] = {"mean": statistics.fmean(values), "seeds": len(values),
                                      "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def _interval(row: Mapping[str, Any] | None) -> str:
    return "" if row is None else f"{row['nll_difference']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]"


def _formatter(scores: Mapping[str, Mapping[str, float]]):
    def mean(name: str, digits: int = 4) -> str:
        return f"{scores[name]['mean']:.{digits}f}" if name in scores else ""

    return mean


def summary_table(summary: Mapping[str, Any]) -> str:
    """The summary as one Markdown table: per task and method the headline metric, NLL, its difference to
    ``map`` and to ``map+temperature`` with the intervals, the ECE beside its calibrated floor, the debiased
    calibration error, Brier (CRPS for regression) and the error-detection AUROC of the entropy, means over
    the seeds (how many in the last column).  ``summary["tasks"][task]`` holds ``methods``
    (:func:`summarize`) and ``nll_versus`` (:func:`compare_nll`)."""
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


def summary_text(summary: Mapping[str, Any]) -> str:
    """The summary as a command prints it: per task, each score's mean +- std over the seeds, then each NLL
    comparison with its interval."""
    lines = []
    for task, result in summary["tasks"].items():
        lines.append(f"\n{task} ({result['metric']}; mean +- std over seeds; ece_floor: the ECE of a calibrated "
                     "model with the same confidences on these rows)")
        columns = [s for s in SCORES if any(s in scores for scores in result["methods"].values())]
        lines.append(f"{'method':<34}" + "".join(f"{s:>18}" for s in columns))
        for method, scores in result["methods"].items():
            cells = [f"{scores[s]['mean']:.4f} +- {scores[s]['std']:.4f}" if s in scores else "-" for s in columns]
            lines.append(f"{method:<34}" + "".join(f"{c:>18}" for c in cells))
        lines.append("\nNLL minus the baseline's on the same rows, pooled over seeds (paired bootstrap 95 % interval)")
        lines += [f"{row['method']:<34} - {row['baseline']:<16} {row['nll_difference']:+.4f} "
                  f"[{row['low']:+.4f}, {row['high']:+.4f}]  ({row['rows']} rows, {row['pairs']} pairs)"
                  for row in result["nll_versus"]]
    return "\n".join(lines)
