"""The GLUE tasks: where each task's files are and how to read them (no heavy imports, so the command
line can validate a task name before torch or ``datasets`` load)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GLUE_TASKS", "GlueTask", "default_glue_dir", "get_task"]


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task's files are and how to read them."""

    name: str
    directory: str
    text_columns: tuple[str, ...]
    label_column: str
    num_labels: int  # 1 = regression
    label_names: tuple[str, ...] = ()  # string labels in id order, when the TSV stores names
    dev_splits: tuple[str, ...] = ("dev",)
    header: tuple[str, ...] | None = None  # column names for header-less files
    hub_text_columns: tuple[str, ...] = ()
    hub_dev_splits: tuple[str, ...] = ("validation",)
    metrics: tuple[str, ...] = field(default=("accuracy",))


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", "CoLA", ("sentence",), "label", 2, header=("source", "label", "orig_label", "sentence"),
                 hub_text_columns=("sentence",), metrics=("matthews_correlation", "accuracy")),
        GlueTask("sst2", "SST-2", ("sentence",), "label", 2, hub_text_columns=("sentence",)),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", 2,
                 hub_text_columns=("sentence1", "sentence2"), metrics=("accuracy", "f1")),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", 1,
                 hub_text_columns=("sentence1", "sentence2"), metrics=("pearson", "spearman")),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", 2, ("entailment", "not_entailment"),
                 hub_text_columns=("question", "sentence")),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", 2, ("entailment", "not_entailment"),
                 hub_text_columns=("sentence1", "sentence2")),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", 2, hub_text_columns=("sentence1", "sentence2")),
        GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", 3,
                 ("entailment", "neutral", "contradiction"), dev_splits=("dev_matched", "dev_mismatched"),
                 hub_text_columns=("premise", "hypothesis"),
                 hub_dev_splits=("validation_matched", "validation_mismatched")),
    ]
}


def get_task(name: str) -> GlueTask:
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"task {name!r} is unknown; GLUE tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def default_glue_dir() -> Path | None:
    """``$MONTECLORA_GLUE_DIR``, else ``../shared/data/glue`` beside the checkout, else None (use the hub)."""
    env = os.environ.get("MONTECLORA_GLUE_DIR")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
    return candidate if candidate.is_dir() else None
