"""The posterior's response to data: one prior trained on growing subsets of a GLUE task's rows with the same
number of steps (or of epochs), and the learned perturbation spread, the predictive's mutual information (its
spread in function space, where the data speak) and KL per example against the number of rows.

A posterior the data decide shrinks as the rows grow (about as 1 / sqrt(N) for a well-specified model); one
set by hand, or stopped by the optimizer's schedule, does not.  Each size is one run (a cell, resumable:
a finished cell is read, not run again), with the same steps for every size (the epochs are steps x batch /
rows, rounded), so the sizes differ in data, not in the number of updates; or with the same epochs for every
size, so that each is trained as far towards its own optimum (the fewest rows are not seen more often).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ...artifacts import atomic_write_csv, atomic_write_json
from .family import run_glue
from .settings import GlueRunConfig

__all__ = ["COLUMNS", "data_size_table", "run_data_size"]

COLUMNS = ("rows", "steps", "epochs", "perturbation_std", "perturbation_std_min", "perturbation_std_max",
           "hyper_scale", "kl_per_example", "shrink", "mutual_information", "information_shrink", "accuracy", "nll",
           "ece", "mean_ece")


def _cell(base: GlueRunConfig, rows: int, steps: int | None, epochs: int | None, output_dir: Path) -> GlueRunConfig:
    if epochs is None:
        epochs = max(1, round(steps * base.batch_size / rows))
    return dataclasses.replace(base, max_train_samples=rows, epochs=epochs, max_steps=None,
                               output_dir=str(output_dir / f"{base.task}-{rows}"), overwrite_output_dir=True)


def _spread(cell_dir: Path) -> dict[str, float]:
    """The perturbation std (mean over layers and draws, and the layers' range of their means) and tau."""
    import arviz as az

    posterior = az.from_netcdf(cell_dir / "posterior.nc").posterior
    if "perturbation_std" not in posterior:
        raise ValueError(f"{cell_dir}: the posterior has no perturbation_std (a monteclora prior is needed)")
    per_layer = posterior["perturbation_std"].mean(("chain", "draw"))
    out = {"perturbation_std": float(per_layer.mean()), "perturbation_std_min": float(per_layer.min()),
           "perturbation_std_max": float(per_layer.max())}
    if "hyper_scale" in posterior:
        out["hyper_scale"] = float(posterior["hyper_scale"].mean())
    return out


def run_data_size(base: GlueRunConfig, rows: list[int], steps: int | None, output_dir: str | Path,
                  run_missing: bool = True, epochs: int | None = None) -> dict[str, Any]:
    """Run (or read) each size's cell, with ``steps`` updates or ``epochs`` passes each (one of the two), and write
    OUT/data_size.csv, OUT/data_size.json and OUT/plots/spread_vs_rows.png; returns the summary (``rows``: one
    record per size)."""
    output_dir = Path(output_dir)
    if not rows or any(r < 1 for r in rows):
        raise ValueError(f"rows = {rows!r} must be positive numbers of training rows")
    if (steps is None) == (epochs is None):
        raise ValueError(f"steps = {steps!r}, epochs = {epochs!r}: give one of them (the same for every size)")
    if (steps if epochs is None else epochs) < 1:
        raise ValueError(f"steps = {steps!r}, epochs = {epochs!r}: the one given must be >= 1")
    spec = base.resolved().prior_spec()  # a bad prior or setting fails here, before any training
    if spec.family != "monteclora":
        raise ValueError(f"prior = {base.prior!r} is of family {spec.family!r}; the spread measured here is a "
                         "monteclora prior's perturbation std")
    records = []
    for size in sorted(rows):
        config = _cell(base, size, steps, epochs, output_dir)
        cell_dir = Path(config.output_dir)
        if not (cell_dir / "metrics.json").exists():
            if not run_missing:
                continue
            run_glue(config)
        changed = config.resolved().changes_from(json.loads((cell_dir / "config.json").read_text()))
        if changed:
            raise ValueError(f"{cell_dir} holds a run with other settings ({'; '.join(changed)}); give another "
                             "--output-dir")
        metrics = json.loads((cell_dir / "metrics.json").read_text())
        stage = metrics.get("posterior_stage") or {}
        kl = stage.get("kl_per_example", (metrics.get("elbo_history") or {}).get("kl_per_example", [math.nan])[-1])
        records.append({"rows": metrics["num_train"], "steps": metrics["steps"], "epochs": config.epochs,
                        **_spread(cell_dir), "kl_per_example": kl,
                        "mutual_information": metrics.get("mutual_information"), "accuracy": metrics.get("accuracy"),
                        "nll": metrics.get("nll"), "ece": metrics.get("ece"), "mean_ece": metrics.get("mean_ece")})
    if records:
        smallest, information = records[0]["perturbation_std"], records[0]["mutual_information"]
        for record in records:
            record["shrink"] = smallest / record["perturbation_std"]
            if information and record["mutual_information"]:  # a classifier's; a regression has none
                record["information_shrink"] = information / record["mutual_information"]
        atomic_write_csv(output_dir / "data_size.csv", [{c: r.get(c) for c in COLUMNS} for r in records], COLUMNS)
        from ...runner.plots import plot_spread_vs_rows

        plot_spread_vs_rows(records, output_dir / "plots" / "spread_vs_rows.png")
    summary = {"task": base.task, "prior": base.prior, "steps": steps, "epochs": epochs,
               "posterior_steps": base.posterior_steps, "posterior_lr": base.posterior_lr, "rows": records}
    atomic_write_json(output_dir / "data_size.json", summary)
    return summary


def data_size_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    head = ("| rows | steps | perturbation std (layers' range) | tau | KL per example | shrink vs the fewest rows "
            "| mutual information (shrink) | dev accuracy | NLL | ECE (predictive / mean) |")
    lines = [head, "|" + "---|" * 10]
    for r in summary["rows"]:
        tau = f"{r['hyper_scale']:.3f}" if r.get("hyper_scale") is not None else ""
        information = (f"{r['mutual_information']:.4f} ({r['information_shrink']:.2f})"
                       if r.get("information_shrink") is not None else "")
        lines.append(f"| {r['rows']} | {r['steps']} | {r['perturbation_std']:.4f} ({r['perturbation_std_min']:.4f}-"
                     f"{r['perturbation_std_max']:.4f}) | {tau} | {r['kl_per_example']:.4f} | {r['shrink']:.2f} | "
                     f"{information} | {r['accuracy']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} / {r['mean_ece']:.4f} |")
    return "\n".join(lines)
