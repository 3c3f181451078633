"""The commonsense-reasoning task family: a causal LM fine-tuned on LLM-Adapters data (loss on the
response tokens only) and scored on the tasks' test files.

Two evaluation protocols:

- ``options``: each answer option (``answer1``..., ``true``/``false``, ...) is scored by its likelihood
  as the response, ``p(option_k | prompt)`` normalized over the options, under each of S posterior
  draws; the predictive averages the S distributions.  Accuracy, NLL, ECE (15 bins), Brier and a
  reliability diagram per task, for the predictive and the posterior mean (``mean_*``).  Every
  option shares the response's first tokens (``the correct answer is``), so when the options differ
  in their last token only (every tokenizer tried), one forward pass scores them all.
- ``generate``: greedy decoding with the posterior-mean adapters and the first option named in the
  text as the answer (the LLM-Adapters protocol); accuracy only.

Prompts follow LLM-Adapters' template (without the indentation its code leaves in the string).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from .artifacts import atomic_write_bytes
from .backbones import load_causal_lm
from .commonsense_tasks import COMMONSENSE_TASKS, CommonsenseRunConfig, task_file
from .likelihoods import IGNORE, TokenLikelihood
from .metrics import classification_metrics
from .pipeline import Evaluation, TaskFamily, make_loader, run
from .plots import plot_reliability
from .svi import move_to

__all__ = ["CommonsenseFamily", "answer_options", "prompt_of", "read_records", "run_commonsense",
           "write_lm_eval_task"]

PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                     "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
RESPONSE = "the correct answer is {}"  # the responses of the LLM-Adapters data
_ANSWER_FORMAT = re.compile(r"Answer format:\s*([\w/]+)\s*$")
_FIELDS = ("instruction", "output", "answer")


def prompt_of(record: dict) -> str:
    """The LLM-Adapters prompt of a record (with its ``input`` when there is one)."""
    if record.get("input"):
        return PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=record["input"])
    return PROMPT.format(instruction=record["instruction"])


def answer_options(record: dict, task: str | None = None) -> list[str]:
    """The answer words of a record: its instruction's ``Answer format: a/b/c``, else the task's."""
    found = _ANSWER_FORMAT.search(record["instruction"].strip())
    if found:
        return found.group(1).split("/")
    if task in COMMONSENSE_TASKS:
        return list(COMMONSENSE_TASKS[task])
    raise ValueError(f"a record of task {task!r} has no 'Answer format: ...' line and the task is not one of "
                     f"{', '.join(COMMONSENSE_TASKS)}: {record['instruction'][:80]!r}")


def read_records(path: str | Path) -> datasets.Dataset:
    """The records of one LLM-Adapters JSON file, checked: every record has a non-empty instruction,
    output and answer; else an error naming the file and the record."""
    path = Path(path)
    try:
        rows = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as error:  # datasets wraps the JSON parser's errors in its own
        raise ValueError(f"{path} is not a JSON list of records: {str(error).splitlines()[0]}") from None
    if len(rows) == 0:
        raise ValueError(f"{path} has no records")
    missing = [f for f in _FIELDS if f not in rows.column_names]
    if missing:
        raise ValueError(f"{path}: the records have no {missing} (the LLM-Adapters format has "
                         "instruction, input, output, answer)")
    table = rows.select_columns(list(_FIELDS)).to_dict()
    for field_name, values in table.items():
        for index, value in enumerate(values):
            if not (isinstance(value, str) and value.strip()):
                raise ValueError(f"{path}, record {index}: {field_name} = {value!r} must be non-empty text")
    if "input" not in rows.column_names:
        rows = rows.add_column("input", [""] * len(rows))
    return rows.select_columns(["instruction", "input", "output", "answer"])


def _subset(rows: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    return rows.shuffle(seed=seed).select(range(limit)) if limit is not None and limit < len(rows) else rows


class LeftPaddedBatches:
    """Collate rows of ``prefix`` and ``target`` token lists into left-padded batches.

    ``input_ids`` = prefix + target, padded on the left, so every target ends at the last position;
    ``labels`` (B x R) are the last R tokens with the non-target ones ``IGNORE``; ``position_ids``
    count the real tokens only.  ``idx`` and ``answer_index`` pass through, and
    ``options`` (lists of token ids) become a (B x K) tensor padded with -1.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [row["prefix"] + row["target"] for row in rows]
        width = max(map(len, sequences))
        span = max(len(row["target"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), span), IGNORE, dtype=torch.long)
        for i, (row, sequence) in enumerate(zip(rows, sequences, strict=True)):
            input_ids[i, width - len(sequence):] = torch.tensor(sequence)
            attention_mask[i, width - len(sequence):] = 1
            if row["target"]:
                labels[i, span - len(row["target"]):] = torch.tensor(row["target"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "position_ids": (attention_mask.cumsum(-1) - 1).clamp_min(0), "labels": labels}
        for key in ("idx", "answer_index"):
            if key in rows[0]:
                batch[key] = torch.tensor([row[key] for row in rows])
        if "options" in rows[0]:
            most = max(len(row["options"]) for row in rows)
            batch["options"] = torch.tensor([row["options"] + [-1] * (most - len(row["options"])) for row in rows])
        return batch


class CommonsenseFamily(TaskFamily):
    """Training on the LLM-Adapters train files (or one combined file), scoring on the test files."""

    kind = "causal_lm"

    def __init__(self, config: CommonsenseRunConfig) -> None:
        super().__init__(config)
        self.tokenizer = None
        self.eval_sets: dict[str, datasets.Dataset] = {}

    def describe(self) -> dict[str, Any]:
        return {"train_tasks": self.config.train_task_list(), "eval_tasks": self.config.eval_task_list(),
                "eval_mode": self.config.eval_mode}

    def load_backbone(self, dtype=torch.float32):
        return load_causal_lm(self.config.model, dtype)

    # ------------------------------------------------------------------ data
    def _encode(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _train_row(self, record: dict) -> dict:
        target = self._encode(record["output"]) + [self.tokenizer.eos_token_id]
        room = self.config.max_length - len(target)
        if room < 1:
            raise ValueError(f"max_length = {self.config.max_length} leaves no room for the prompt of a response of "
                             f"{len(target)} tokens")
        return {"prefix": self._encode(prompt_of(record), special=True)[-room:], "target": target}

    def _option_row(self, record: dict, task: str) -> dict:
        """The prompt and the shared start of the responses (``prefix``), each option's next token."""
        options = answer_options(record, task)
        if record["answer"] not in options:
            raise ValueError(f"task {task}: answer {record['answer']!r} is not one of the options {options}")
        responses = [self._encode(RESPONSE.format(o)) for o in options]
        shared = 0
        while all(len(r) > shared + 1 for r in responses) and len({r[shared] for r in responses}) == 1:
            shared += 1
        if any(len(r) != shared + 1 for r in responses):
            raise ValueError(f"task {task}: the options {options} differ in more than their last token for this "
                             "tokenizer; use eval_mode generate")
        prefix = self._encode(prompt_of(record), special=True) + responses[0][:shared]
        return {"prefix": prefix[-self.config.max_length:], "target": [], "options": [r[shared] for r in responses],
                "answer_index": options.index(record["answer"])}

    def _generate_row(self, record: dict, task: str) -> dict:
        prefix = self._encode(prompt_of(record), special=True)[-self.config.max_length:]
        return {"prefix": prefix, "target": []}

    def load_data(self, tokenizer):
        config = self.config
        self.load_eval_sets(tokenizer)  # sets the tokenizer the rows are encoded with
        train = config.train_task_list()
        files = [Path(train[0])] if train[0].endswith(".json") else [task_file(config.data_dir, t, "train")
                                                                     for t in train]
        records = datasets.concatenate_datasets([read_records(f) for f in files])
        records = _subset(records, config.max_train_samples, config.seed)
        train_set = records.map(self._train_row, remove_columns=records.column_names)
        train_set = train_set.add_column("idx", list(range(len(train_set))))
        return train_set, LeftPaddedBatches(tokenizer.pad_token_id)

    def load_eval_sets(self, tokenizer) -> None:
        """The evaluation tasks' test rows (a seeded subset of ``max_eval_examples`` each), encoded."""
        config = self.config
        self.tokenizer = tokenizer
        for task in config.eval_task_list():
            rows = _subset(read_records(task_file(config.data_dir, task, "test")), config.max_eval_examples,
                           config.seed)
            row = self._option_row if config.eval_mode == "options" else self._generate_row
            self.eval_sets[task] = rows.map(row, fn_kwargs={"task": task}, remove_columns=["input", "output"])

    def likelihood(self, peer: bool) -> nn.Module:
        return TokenLikelihood()

    def _loader(self, task: str):
        return make_loader(self.eval_sets[task], LeftPaddedBatches(self.tokenizer.pad_token_id),
                           self.config.eval_batch_size, shuffle=False)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def option_probabilities(self, module, task: str, device, draws: list) -> dict[str, torch.Tensor]:
        """Per example: each draw's distribution over the options (examples x draws x K, padded options 0),
        the posterior mean's (examples x K) and the answers."""
        module.eval()
        per_draw, mean, answers = [], [], []
        for batch in self._loader(task):
            batch = move_to(batch, device)
            options = batch.pop("options")
            answers.append(batch.pop("answer_index").cpu())
            per_draw.append(torch.stack([_option_distribution(module, batch, options, d) for d in draws], dim=1))
            mean.append(per_draw[-1][:, 0] if module.point_estimate
                        else _option_distribution(module, batch, options, None))
        return {"draws": _cat_padded(per_draw), "mean": _cat_padded(mean), "labels": torch.cat(answers)}

    @torch.no_grad()
    def generated_answers(self, module, task: str, device) -> list[str]:
        """Greedy responses with the posterior-mean adapters, the first option each names (or '')."""
        module.eval()
        texts = []
        for batch in self._loader(task):
            batch = move_to(batch, device)
            out = module.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=self.config.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
            texts += self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        answers = []
        for text, record in zip(texts, self.eval_sets[task], strict=True):
            options = answer_options(record, task)
            found = re.search("|".join(map(re.escape, sorted(options, key=len, reverse=True))), text.lower())
            answers.append(found.group(0) if found else "")
        return answers

    def _draws(self, module) -> list:
        return [module.posterior_draw() for _ in range(1 if module.point_estimate else self.config.num_samples)]

    def epoch_scores(self, module, device) -> dict[str, float]:
        return self._score(module, device, None).epoch_scores

    def evaluate(self, module, device, output_dir: Path) -> Evaluation:
        return self._score(module, device, output_dir)

    def _score(self, module, device, output_dir: Path | None) -> Evaluation:
        """Each evaluation task's metrics under its name, and their average (``average``)."""
        metrics: dict[str, Any] = {}
        labels, log_likelihood = [], []
        if self.config.eval_mode == "options":
            draws = self._draws(module)
            for task in self.eval_sets:
                result = self.option_probabilities(module, task, device, draws)
                predictive = result["draws"].mean(1)
                metrics[task] = classification_metrics(predictive, result["labels"]) | {
                    f"mean_{k}": v for k, v in classification_metrics(result["mean"], result["labels"]).items()
                } | {"examples": len(result["labels"]), "options": predictive.shape[1]}
                labels.append(result["labels"])
                picked = result["draws"].gather(-1, result["labels"][:, None, None].expand(-1, len(draws), 1))
                log_likelihood.append(picked.squeeze(-1).clamp_min(1e-12).log().T)
                if output_dir is not None:
                    plot_reliability(predictive, result["labels"], output_dir / "plots" / f"reliability_{task}.png")
        else:
            for task, rows in self.eval_sets.items():
                answers = self.generated_answers(module, task, device)
                truth = rows["answer"]
                metrics[task] = {"accuracy": sum(a == t for a, t in zip(answers, truth, strict=True)) / len(truth),
                                 "unanswered": sum(a == "" for a in answers) / len(truth), "examples": len(truth)}
        keys = [k for k in metrics[next(iter(metrics))] if k not in ("examples", "options")]
        average = {k: sum(m[k] for m in metrics.values()) / len(metrics) for k in keys}
        evaluation = Evaluation(metrics | {"average": average}, epoch_scores=average)
        if labels:
            evaluation.observed = torch.cat(labels)
            evaluation.log_likelihood = torch.cat(log_likelihood, dim=1)
        return evaluation


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Batches of option distributions concatenated, each padded with 0 to the most options of any."""
    most = max(part.shape[-1] for part in parts)
    return torch.cat([torch.nn.functional.pad(part, (0, most - part.shape[-1])) for part in parts])


def _option_distribution(module, batch, options: torch.Tensor, factors) -> torch.Tensor:
    """p(option_k | prompt) normalized over the options (padded ones 0), from the next-token logits."""
    logits = module.network_output(batch, factors)[:, -1].float()
    picked = logits.log_softmax(-1).gather(-1, options.clamp_min(0))
    return picked.masked_fill(options < 0, -torch.inf).softmax(-1).cpu()


def write_lm_eval_task(data_dir: str | Path, task: str, out_dir: str | Path, limit: int | None = None,
                       seed: int = 0) -> str:
    """A task of ``task``'s test rows for lm-evaluation-harness (``--include_path out_dir``), scored as
    ``options`` mode scores them: context = the prompt and ``the correct answer is``, choices = the
    answer words.  The same seeded subset as a run's ``max_eval_examples``; returns the task's name."""
    rows = _subset(read_records(task_file(data_dir, task, "test")), limit, seed)
    name = "monteclora_" + re.sub(r"\W", "_", task).lower()
    out_dir = Path(out_dir)
    lines = []
    for record in rows:
        options = answer_options(record, task)
        lines.append(json.dumps({"context": prompt_of(record) + RESPONSE.format("").rstrip(), "choices": options,
                                 "label": options.index(record["answer"])}))
    atomic_write_bytes(out_dir / f"{name}.jsonl", ("\n".join(lines) + "\n").encode())
    config = {"task": name, "dataset_path": "json", "test_split": "test", "output_type": "multiple_choice",
              "dataset_kwargs": {"data_files": {"test": str((out_dir / f"{name}.jsonl").resolve())}},
              "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    atomic_write_bytes(out_dir / f"{name}.yaml", json.dumps(config, indent=2).encode())  # JSON is YAML
    return name


def run_commonsense(config: CommonsenseRunConfig) -> dict[str, Any]:
    """Train and evaluate one commonsense configuration (see :func:`~monteclora_pyro.pipeline.run`)."""
    return run(CommonsenseFamily(config.resolved()))
