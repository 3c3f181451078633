"""GLUE data through ``datasets``: a local directory in the standard GLUE layout, the Hugging Face hub, or
your own CSV / TSV / JSON / JSON-lines files (a task of :func:`~.settings.file_task`).

Local GLUE TSVs are read with ``quoting=3`` (QUOTE_NONE): several GLUE files hold bare quotes.  CoLA has
no header.  Labels are mapped to the hub's integer convention (e.g. RTE: entailment = 0).  Every
example gets an ``idx`` (its row in the training set) for the likelihood's subsampling plate.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from .settings import GlueTask

__all__ = ["load_glue"]


def _reader(task: GlueTask, suffix: str) -> tuple[str, dict, int]:
    """(``datasets`` builder, its options, the file line of the first data row) for a task's files."""
    if not task.data_files:  # GLUE's TSVs
        return "csv", {"delimiter": "\t", "quoting": 3} | ({"header": None, "names": list(task.header)}
                                                          if task.header else {}), 1 if task.header else 2
    if suffix in (".json", ".jsonl"):
        return "json", {}, 1
    return "csv", {"keep_default_na": False} | ({"delimiter": "\t"} if suffix == ".tsv" else {}), 2  # 'NA' a label


def _read_local(task: GlueTask, data_dir: Path | None) -> datasets.DatasetDict:
    if not task.data_files:
        folder = data_dir / task.directory
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} does not exist: --data-dir must hold the GLUE folders ({task.directory}/ ...)"
            )
    files = task.files(data_dir)
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"task {task.name!r}: missing files {missing}")
    suffixes = {path.suffix for path in files.values()}
    if len(suffixes) > 1:
        raise ValueError(f"task {task.name!r}: give files of one format, not {sorted(suffixes)}")
    builder, options, first_line = _reader(task, suffixes.pop())
    for path in files.values():
        _check_text(path, header_lines=first_line - 1)
    raw = datasets.load_dataset(builder, data_files={k: str(v) for k, v in files.items()}, **options)
    columns = list(task.text_columns) + [task.label_column]
    for split, path in files.items():
        missing = [c for c in columns if c not in raw[split].column_names]
        if missing:
            raise ValueError(f"{path}: columns {missing} are missing; {task.name} needs {columns}")
        _check_rows(task, path, raw[split].select_columns(columns), first_line)
    raw = raw.select_columns(columns)
    rename = {c: f"text{i}" for i, c in enumerate(task.text_columns)} | {task.label_column: "label"}
    raw = raw.rename_columns(rename)
    if task.label_names:
        ids = {name: i for i, name in enumerate(task.label_names)}
        raw = raw.map(lambda row: {"label": ids[str(row["label"]).strip()]})
    return raw


def _check_text(path: Path, header_lines: int) -> None:
    """UTF-8 throughout and at least one data row; else an error naming the file (and line)."""
    lines = path.read_bytes().splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}, line {number}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if len([line for line in lines[header_lines:] if line.strip()]) == 0:
        raise ValueError(f"{path} has no data rows")


def _check_rows(task: GlueTask, path: Path, rows: datasets.Dataset, first_line: int) -> None:
    """Every row complete and its label one the task allows; else an error naming the file and line (of the first
    data row: ``first_line``)."""
    table = rows.to_dict()
    for column, values in table.items():
        for index, value in enumerate(values):
            if value is None:
                raise ValueError(f"{path}, line {index + first_line}: column {column!r} is empty "
                                 "(a row cut short?)")
    allowed = _allowed_label(task)
    for index, value in enumerate(table[task.label_column]):
        if not allowed(value):
            what = f"one of {list(task.label_names)}" if task.label_names else (
                "a number" if task.num_labels == 1 else f"an integer in 0..{task.num_labels - 1}")
            raise ValueError(f"{path}, line {index + first_line}: label {value!r} is not {what}")


def _allowed_label(task: GlueTask):
    if task.label_names:
        return lambda value: str(value).strip() in task.label_names
    if task.num_labels == 1:
        return lambda value: isinstance(value, (int, float))
    return lambda value: str(value).strip() in {str(i) for i in range(task.num_labels)}


def _read_hub(task: GlueTask) -> datasets.DatasetDict:
    try:
        raw = datasets.load_dataset("nyu-mll/glue", task.name)
    except (OSError, ConnectionError) as error:  # offline, or the hub unreachable
        raise ValueError(f"no local copy of GLUE {task.name!r} and the hub is unreachable ({type(error).__name__}); "
                         f"give --data-dir DIR (holding {task.directory}/) or set $MONTECLORA_GLUE_DIR") from None
    splits = {"train": raw["train"], **{s: raw[h] for s, h in zip(task.dev_splits, task.hub_dev_splits, strict=True)}}
    out = datasets.DatasetDict(splits).select_columns(list(task.hub_text_columns) + ["label"])
    return out.rename_columns({c: f"text{i}" for i, c in enumerate(task.hub_text_columns)})


def load_glue(
    task: GlueTask,
    data_dir: str | Path | None,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 128,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    holdout_fraction: float = 0.0,
) -> datasets.DatasetDict:
    """Tokenized splits ``train`` and the task's dev splits, with ``labels``, ``idx`` (the position in the
    split as loaded) and ``row`` (the row of the task's file, the same whatever subset a seed draws).

    ``holdout_fraction`` > 0 moves that share of the (limited) training rows into a ``holdout``
    split (seeded), e.g. to fit a temperature on rows the model was not trained on.
    """
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction = {holdout_fraction!r} must be in [0, 1)")
    if task.data_files or data_dir is not None:
        raw = _read_local(task, None if data_dir is None else Path(data_dir))
    else:
        raw = _read_hub(task)
    raw = datasets.DatasetDict({split: rows.add_column("row", list(range(len(rows)))) for split, rows in raw.items()})
    limits = {"train": max_train_samples} | {s: max_eval_samples for s in task.dev_splits}
    for split, limit in limits.items():
        if limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].shuffle(seed=seed).select(range(limit))
    if holdout_fraction > 0:
        parts = raw["train"].train_test_split(test_size=holdout_fraction, seed=seed)
        raw["train"], raw["holdout"] = parts["train"], parts["test"]
    texts = [f"text{i}" for i in range(len(task.text_columns))]

    def encode(rows: Mapping) -> dict:
        encoded = tokenizer(*[rows[c] for c in texts], truncation=True, max_length=max_length)
        dtype = float if task.num_labels == 1 else int
        encoded["labels"] = [dtype(v) for v in rows["label"]]
        return encoded

    tokenized = raw.map(encode, batched=True, remove_columns=[c for c in raw["train"].column_names if c != "row"])
    return datasets.DatasetDict(
        {split: ds.add_column("idx", list(range(len(ds)))) for split, ds in tokenized.items()}
    )
