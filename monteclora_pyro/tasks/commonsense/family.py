"""The commonsense-reasoning task family: a causal LM fine-tuned on LLM-Adapters data (loss on the
response tokens only) and scored on the tasks' test files, in one of two protocols:

- ``options``: each answer option is scored by its likelihood as the response, normalized over the
  options, under each of S posterior draws; the predictive averages them (accuracy, NLL, ECE, Brier
  and a reliability diagram per task, for the predictive and the posterior mean).  Options that
  differ in their last token only are scored in one forward pass; longer ones share the prompt's
  key/value cache.
- ``generate``: greedy decoding with the posterior-mean adapters and the first option named in the
  text as the answer (the LLM-Adapters protocol); accuracy only.

The response is LLM-Adapters' (``the correct answer is answer2``) or, with ``answer_format = "text"``,
the option's own text.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from ...artifacts import atomic_write_bytes, atomic_write_jsonl
from ...backbones import load_causal_lm
from ...calibration import apply_temperature, fit_temperature
from ...laplace import finite_difference_draws, linearized_values
from ...likelihoods import IGNORE, TokenLikelihood, categorical_draw_log_likelihood
from ...metrics import classification_metrics
from ...prediction import classification_records, move_to, posterior_draws, uncertainty
from ...runner.pipeline import Evaluation, TaskFamily, make_loader, run
from ...runner.plots import plot_reliability
from .settings import COMMONSENSE_TASKS, CommonsenseRunConfig, task_file

__all__ = ["CommonsenseFamily", "answer_options", "option_texts", "prompt_of", "read_records", "run_commonsense",
           "write_lm_eval_task"]

PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                     "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
RESPONSE = "the correct answer is {}"  # the responses of the LLM-Adapters data
_ANSWER_FORMAT = re.compile(r"Answer format:\s*([\w/]+)\s*$")
_OPTION_TEXT = re.compile(r"\b(?:Answer|Solution|Option|Ending)(\d+):\s*(.*?)\s*"
                          r"(?=\b(?:Answer|Solution|Option|Ending)\d+:|Answer format:|$)", re.S)
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


def option_texts(record: dict, task: str | None = None) -> list[str]:
    """The options' own texts, in the order of :func:`answer_options`: the instruction's ``Answer1: ...``
    (``Solution1:``, ``Option1:``, ``Ending1:``) parts; for questions without them (BoolQ) the answer
    words themselves."""
    options = answer_options(record, task)
    found = {int(m.group(1)): m.group(2) for m in _OPTION_TEXT.finditer(record["instruction"])}
    if not found:
        return options
    texts = [found.get(int(number)) if (number := re.sub(r"\D", "", option)) else None for option in options]
    if not all(texts):
        raise ValueError(f"a record of task {task!r} does not give the text of every option {options} "
                         f"(found {sorted(found)}): {record['instruction'][:80]!r}")
    return texts


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
    settings = CommonsenseRunConfig

    def __init__(self, config: CommonsenseRunConfig) -> None:
        super().__init__(config)
        self.tokenizer = None
        self.eval_sets: dict[str, datasets.Dataset] = {}
        self.holdout: datasets.Dataset | None = None  # held-out training rows, scored as options (a temperature)

    def describe(self) -> dict[str, Any]:
        return {"train_tasks": self.config.train_task_list(), "eval_tasks": self.config.eval_task_list(),
                "eval_mode": self.config.eval_mode}

    def load_backbone(self, dtype=torch.float32):
        return load_causal_lm(self.config.model, dtype)

    # ------------------------------------------------------------------ data
    def _encode(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _choices(self, record: dict, task: str | None) -> list[str]:
        """What the responses name, per option: the answer words, or the options' texts."""
        return option_texts(record, task) if self.config.answer_format == "text" else answer_options(record, task)

    def _response(self, record: dict) -> str:
        if self.config.answer_format == "label":
            return record["output"]
        return RESPONSE.format(option_texts(record)[answer_options(record).index(record["answer"])])

    def _train_row(self, record: dict) -> dict:
        target = self._encode(self._response(record)) + [self.tokenizer.eos_token_id]
        room = self.config.max_length - len(target)
        if room < 1:
            raise ValueError(f"max_length = {self.config.max_length} leaves no room for the prompt of a response of "
                             f"{len(target)} tokens")
        return {"prefix": self._encode(prompt_of(record), special=True)[-room:], "target": target}

    def _option_row(self, record: dict, task: str) -> dict:
        """The prompt and the responses' shared first tokens (``prefix``), and each option's remaining
        tokens (``continuations``)."""
        options = answer_options(record, task)
        if record["answer"] not in options:
            raise ValueError(f"task {task}: answer {record['answer']!r} is not one of the options {options}")
        responses = [self._encode(RESPONSE.format(choice)) for choice in self._choices(record, task)]
        shared = 0
        while all(len(r) > shared + 1 for r in responses) and len({r[shared] for r in responses}) == 1:
            shared += 1
        prefix = self._encode(prompt_of(record), special=True) + responses[0][:shared]
        return {"prefix": prefix[-self.config.max_length:], "target": [],
                "continuations": [r[shared:] for r in responses], "answer_index": options.index(record["answer"])}

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
        if config.holdout_fraction > 0:
            parts = records.train_test_split(test_size=config.holdout_fraction, seed=config.seed)
            records = parts["train"]
            task = train[0] if len(train) == 1 and not train[0].endswith(".json") else None
            self.holdout = self._option_set(parts["test"], task)
        train_set = records.map(self._train_row, remove_columns=records.column_names)
        train_set = train_set.add_column("idx", list(range(len(train_set))))
        return train_set, LeftPaddedBatches(tokenizer.pad_token_id)

    def load_eval_sets(self, tokenizer) -> None:
        """The evaluation tasks' test rows (a seeded subset of ``max_eval_examples`` each), encoded."""
        config = self.config
        self.tokenizer = tokenizer
        seed = config.seed if config.eval_seed is None else config.eval_seed
        for task in config.eval_task_list():
            rows = read_records(task_file(config.data_dir, task, "test"))
            rows = _subset(rows.add_column("row", list(range(len(rows)))), config.max_eval_examples, seed)
            if config.eval_mode == "options":
                self.eval_sets[task] = self._option_set(rows, task)
            else:
                self.eval_sets[task] = rows.map(self._generate_row, fn_kwargs={"task": task},
                                                remove_columns=["input", "output"])

    def _option_set(self, records: datasets.Dataset, task: str | None) -> datasets.Dataset:
        """Records encoded for scoring their options (single-token options as ``options``: one pass scores all)."""
        rows = records.map(self._option_row, fn_kwargs={"task": task}, remove_columns=["input", "output"])
        if all(len(c) == 1 for r in rows["continuations"] for c in r):
            rows = rows.map(lambda r: {"options": [c[0] for c in r["continuations"]]})
        return rows

    def likelihood(self, peer: bool) -> nn.Module:
        return TokenLikelihood()

    def _loader(self, rows: datasets.Dataset):
        return make_loader(rows, LeftPaddedBatches(self.tokenizer.pad_token_id), self.config.eval_batch_size,
                           shuffle=False)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def option_probabilities(self, module, rows: datasets.Dataset | str, device, draws: list,
                             steps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per example of ``rows`` (or of an evaluation task by its name): each draw's distribution over the
        options (examples x draws x K, padded options 0), the posterior mean's (examples x K) and the answers.
        A linearized posterior's draws are :func:`~monteclora_pyro.laplace.finite_difference_draws` and their
        ``steps``: each pair gives one draw of the linearized network."""
        module.eval()
        rows = self.eval_sets[rows] if isinstance(rows, str) else rows
        linearized = module.linearized  # draws are then finite_difference_draws: the mean's pass comes first
        passes = [None, *draws] if linearized else [*draws] if module.point_estimate else [*draws, None]
        if "options" in rows.column_names:
            log_probs = self._next_token_log_probs(module, rows, device, passes)
        else:
            log_probs = self._continuation_log_probs(module, rows, device, passes)
        if linearized:  # the linearized network under each pair of draws; softmax over the options
            log_probs = torch.cat([linearized_values(log_probs[:, :1], log_probs[:, 1:], steps), log_probs[:, :1]], 1)
        probs = log_probs.softmax(-1)  # padded options have log-probability -inf
        return {"draws": probs[:, :-1] if linearized or not module.point_estimate else probs,
                "mean": probs[:, -1], "labels": torch.tensor(rows["answer_index"])}

    def _next_token_log_probs(self, module, rows: datasets.Dataset, device, passes: list) -> torch.Tensor:
        """log p(option_k | prefix) of single-token options, one forward per pass: (examples x passes x K)."""
        out = []
        for batch in self._loader(rows):
            batch = move_to(batch, device)
            options = batch.pop("options")
            batch.pop("answer_index")
            batch.pop("row", None)
            per_pass = []
            for factors in passes:
                logits = module.network_output(batch, factors)[:, -1].float().log_softmax(-1)
                per_pass.append(logits.gather(-1, options.clamp_min(0)).masked_fill(options < 0, -torch.inf))
            out.append(torch.stack(per_pass, dim=1).cpu())
        most = max(part.shape[-1] for part in out)
        return torch.cat([torch.nn.functional.pad(part, (0, most - part.shape[-1]), value=-torch.inf) for part in out])

    def _continuation_log_probs(self, module, rows: datasets.Dataset, device, passes: list) -> torch.Tensor:
        """log p(continuation_k | prefix) summed over its tokens: (examples x passes x K).

        Per batch of examples and pass, the prefixes run once and their key/value cache serves every
        option's continuation (the options share the prompt, which is most of the tokens); the batches
        group examples of similar prompt length."""
        most = max(len(row["continuations"]) for row in rows)
        out = torch.full((len(rows), len(passes), most), -torch.inf)
        pad, size = self.tokenizer.pad_token_id, self.config.eval_batch_size
        # the forward's name for a key/value cache: ``cache`` from transformers 5.x, ``past_key_values`` before
        forward = inspect.signature(module.network.get_base_model().forward).parameters
        cache_keyword = "cache" if "cache" in forward else "past_key_values"
        lengths = [len(prefix) for prefix in rows["prefix"]]
        order = sorted(range(len(rows)), key=lengths.__getitem__)  # batches of similar length: little padding
        for start in range(0, len(rows), size):
            picked = order[start:start + size]
            chunk = rows.select(picked)[:]
            prefixes = move_to(LeftPaddedBatches(pad)([{"prefix": p, "target": []} for p in chunk["prefix"]]), device)
            options = max(map(len, chunk["continuations"]))
            continuations = [c for cs in chunk["continuations"] for c in cs + [[pad]] * (options - len(cs))]
            width = max(map(len, continuations))
            tokens = torch.tensor([c + [pad] * (width - len(c)) for c in continuations], device=device)
            scored = torch.tensor([[t < len(c) for t in range(width)] for c in continuations], device=device)
            real = torch.tensor([k < len(cs) for cs in chunk["continuations"] for k in range(options)])
            mask = torch.cat([prefixes["attention_mask"].repeat_interleave(options, 0), scored.long()], 1)
            positions = prefixes["attention_mask"].sum(-1, keepdim=True).repeat_interleave(options, 0)
            positions = positions + torch.arange(width, device=device)
            prefix_inputs = {key: prefixes[key] for key in ("input_ids", "position_ids", "attention_mask")}
            for p, factors in enumerate(passes):
                prefix = module.network_call(prefix_inputs | {"use_cache": True, "logits_to_keep": 1}, factors)
                logits = prefix.logits[:, -1:].float().repeat_interleave(options, 0)  # predicts token 0
                if width > 1:  # tokens 1... from the continuation's own, on the repeated prefix cache
                    cache = prefix[cache_keyword]
                    cache.batch_repeat_interleave(options)
                    rest = module.network_call({"input_ids": tokens[:, :-1], "position_ids": positions[:, :-1],
                                                "attention_mask": mask[:, :-1], cache_keyword: cache,
                                                "use_cache": False}, factors)
                    logits = torch.cat([logits, rest.logits.float()], 1)
                token = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
                totals = (token * scored).sum(-1).cpu().masked_fill(~real, -torch.inf).view(-1, options)
                out[picked, p, :options] = totals
        return out

    @torch.no_grad()
    def generated_answers(self, module, task: str, device) -> list[str]:
        """Greedy responses with the posterior-mean adapters, the first option each names (or '')."""
        module.eval()
        texts = []
        for batch in self._loader(self.eval_sets[task]):
            batch = move_to(batch, device)
            out = module.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=self.config.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
            texts += self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        answers = []
        for text, record in zip(texts, self.eval_sets[task], strict=True):
            choices = [c.lower() for c in self._choices(record, task)]
            found = re.search("|".join(map(re.escape, sorted(choices, key=len, reverse=True))), text.lower())
            answers.append(answer_options(record, task)[choices.index(found.group(0))] if found else "")
        return answers

    def epoch_scores(self, module, device) -> dict[str, float]:
        return self._score(module, device, None, self.config.epoch_draws()).epoch_scores

    def evaluate(self, module, device, output_dir: Path) -> Evaluation:
        return self._score(module, device, output_dir)

    def _score(self, module, device, output_dir: Path | None, num_samples: int | None = None) -> Evaluation:
        """Each evaluation task's metrics under its name, and their average (``average``); with held-out
        training rows, each task's also after the temperature fitted on them (``ts_*``), and each task's
        examples in ``predictions_<task>.jsonl`` (:func:`~monteclora_pyro.prediction.classification_records`)."""
        metrics: dict[str, Any] = {}
        fitted: dict[str, Any] = {}
        labels, log_likelihood = [], []
        num_samples = num_samples or self.config.num_samples
        if self.config.eval_mode == "options":
            steps = None
            if module.linearized:  # pairs of points around the mean, one draw of the linearized network each
                draws, steps = finite_difference_draws(module, num_samples)
            else:
                draws = posterior_draws(module, num_samples)
            if self.holdout is not None:
                held_out = self.option_probabilities(module, self.holdout, device, draws, steps)
                fitted = {"temperature": fit_temperature(held_out["draws"].mean(1), held_out["labels"]),
                          "num_holdout": len(self.holdout)}
            for task, rows in self.eval_sets.items():
                result = self.option_probabilities(module, rows, device, draws, steps)
                predictive, truth = result["draws"].mean(1), result["labels"]
                metrics[task] = classification_metrics(predictive, truth) | {
                    f"mean_{k}": v for k, v in classification_metrics(result["mean"], truth).items()
                } | {k: float(v.mean()) for k, v in uncertainty(result["draws"]).items()}
                if fitted:
                    recalibrated = apply_temperature(predictive, fitted["temperature"])
                    metrics[task] |= {f"ts_{k}": v for k, v in classification_metrics(recalibrated, truth).items()}
                metrics[task] |= {"examples": len(truth), "options": predictive.shape[1]}
                labels.append(truth)
                log_likelihood.append(categorical_draw_log_likelihood(result["draws"], truth))
                if output_dir is not None:
                    plot_reliability(predictive, truth, output_dir / "plots" / f"reliability_{task}.png")
                    records = classification_records(predictive, result["draws"], truth, torch.tensor(rows["row"]),
                                                     fitted.get("temperature"), self.config.save_draws)
                    atomic_write_jsonl(output_dir / f"predictions_{task}.jsonl", records)
        else:
            for task, rows in self.eval_sets.items():
                answers = self.generated_answers(module, task, device)
                truth = rows["answer"]
                metrics[task] = {"accuracy": sum(a == t for a, t in zip(answers, truth, strict=True)) / len(truth),
                                 "unanswered": sum(a == "" for a in answers) / len(truth), "examples": len(truth)}
        keys = [k for k in metrics[next(iter(metrics))] if k not in ("examples", "options")]
        average = {k: sum(m[k] for m in metrics.values()) / len(metrics) for k in keys}
        evaluation = Evaluation(metrics | {"average": average} | fitted, epoch_scores=average)
        if labels:
            evaluation.observed = torch.cat(labels)
            evaluation.log_likelihood = torch.cat(log_likelihood, dim=1)
        return evaluation


def write_lm_eval_task(data_dir: str | Path, task: str, out_dir: str | Path, limit: int | None = None,
                       seed: int = 0, answer_format: str = "label") -> str:
    """A task of ``task``'s test rows for lm-evaluation-harness (``--include_path out_dir``), scored as
    ``options`` mode scores them: context = the prompt and ``the correct answer is``, choices = the
    answer words (or with ``answer_format`` "text" the options' texts).  The same seeded subset as a
    run's ``max_eval_examples``; returns the task's name."""
    rows = _subset(read_records(task_file(data_dir, task, "test")), limit, seed)
    name = "monteclora_" + re.sub(r"\W", "_", task).lower()
    out_dir = Path(out_dir)
    lines = []
    for record in rows:
        options = answer_options(record, task)
        choices = option_texts(record, task) if answer_format == "text" else options
        lines.append(json.dumps({"context": prompt_of(record) + RESPONSE.format("").rstrip(), "choices": choices,
                                 "label": options.index(record["answer"])}))
    atomic_write_bytes(out_dir / f"{name}.jsonl", ("\n".join(lines) + "\n").encode())
    config = {"task": name, "dataset_path": "json", "test_split": "test", "output_type": "multiple_choice",
              "dataset_kwargs": {"data_files": {"test": str((out_dir / f"{name}.jsonl").resolve())}},
              "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    atomic_write_bytes(out_dir / f"{name}.yaml", json.dumps(config, indent=2).encode())  # JSON is YAML
    return name


def run_commonsense(config: CommonsenseRunConfig) -> dict[str, Any]:
    """Train and evaluate one commonsense configuration (see :func:`~monteclora_pyro.runner.pipeline.run`)."""
    return run(CommonsenseFamily(config))
