"""The Hugging Face Trainer trains a Bayesian LoRA model as our own loop does, and evaluates its predictive."""

from __future__ import annotations

import datasets
import pyro
import pytest
import torch
from conftest import tiny_batch, tiny_bert
from transformers import TrainingArguments, default_data_collator

from monteclora_pyro import bayesian_lora_from_model, load_prior
from monteclora_pyro.runner.hf_trainer import BayesianTrainer
from monteclora_pyro.runner.pipeline import make_loader
from monteclora_pyro.runner.settings import TrainConfig
from monteclora_pyro.runner.training import train


def rows(count: int = 16) -> datasets.Dataset:
    batch = tiny_batch(count, 10, seed=3)
    return datasets.Dataset.from_dict({k: v.tolist() for k, v in batch.items()})


def model():
    pyro.set_rng_seed(0)
    spec = load_prior("monteclora_scaled_ab", targets=("query", "value"), rank=2)
    return bayesian_lora_from_model(tiny_bert(2), spec, num_data=16, num_labels=2)


def arguments(tmp_path, **changes) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=2, learning_rate=5e-3,
                    lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, seed=0, report_to=[],
                    save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True)
    return TrainingArguments(**(settings | changes))


def test_the_trainer_gives_the_posterior_of_our_loop(tmp_path):
    data = rows()
    ours = model()
    pyro.set_rng_seed(0)
    history = train(ours, make_loader(data.with_format("torch"), default_data_collator, 8, shuffle=True, seed=0),
                    TrainConfig(lr=5e-3, variational_lr=1e-2, epochs=2, warmup_ratio=0.0, log_every=1,
                                progress=False, divergence_factor=0.0))
    theirs = model()
    trainer = BayesianTrainer(theirs, arguments(tmp_path), train_dataset=data, data_collator=default_data_collator,
                              variational_lr=1e-2)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == len(history.loss) == 4
    assert losses == pytest.approx(history.loss, abs=1e-3)  # the Trainer logs 4 decimals
    mine, yours = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == yours.keys()
    moved = 0
    for name, value in mine.items():
        torch.testing.assert_close(yours[name], value, rtol=1e-4, atol=1e-6, msg=name)
        moved += "log_scale" in name and not torch.equal(value, model().state_dict()[name])
    assert moved  # the variational parameters trained, in their own group


def test_the_trainer_evaluates_the_posterior_predictive(tmp_path):
    data = rows()
    trainer = BayesianTrainer(model(), arguments(tmp_path, num_train_epochs=1), train_dataset=data,
                              eval_dataset=data, data_collator=default_data_collator, num_samples=4,
                              compute_metrics=lambda out: {"accuracy": float((out.predictions.argmax(-1)
                                                                               == out.label_ids).mean())})
    trainer.train()
    scores = trainer.evaluate()
    assert scores["eval_loss"] > 0 and 0 <= scores["eval_accuracy"] <= 1
    predictions = trainer.predict(data).predictions
    assert predictions.shape == (16, 2) and abs(predictions.sum(-1) - 1).max() < 1e-5  # averaged probabilities


def test_the_trainer_refuses_a_plain_model_and_an_ensemble(tmp_path):
    with pytest.raises(ValueError, match="give a Bayesian LoRA model"):
        BayesianTrainer(tiny_bert(2), arguments(tmp_path))
    ensemble = bayesian_lora_from_model(tiny_bert(2), load_prior("ensemble", rank=2), num_data=16, num_labels=2)
    with pytest.raises(ValueError, match="an ensemble of 5 members trains one member after the other"):
        BayesianTrainer(ensemble, arguments(tmp_path))


def test_a_users_peft_model_trains_through_the_trainer_and_its_draws_change_the_outputs(tmp_path):
    from peft import LoraConfig, get_peft_model

    pyro.set_rng_seed(0)
    peft = get_peft_model(tiny_bert(2), LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                                                   modules_to_save=["classifier"]))
    module = bayesian_lora_from_model(peft, "monteclora_scaled_ab", num_data=16, num_labels=2)
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    BayesianTrainer(module, arguments(tmp_path, num_train_epochs=1), train_dataset=rows(),
                    data_collator=default_data_collator).train()
    assert any(not torch.equal(before[n], p) for n, p in module.named_parameters() if p.requires_grad)
    module.eval()
    batch = tiny_batch(4, 10, seed=5)
    with torch.no_grad():
        mean = module.network_output(batch)
        drawn = [module.network_output(batch, module.posterior_draw()) for _ in range(2)]
    assert not torch.allclose(drawn[0], mean) and not torch.allclose(drawn[0], drawn[1])


def test_a_laplace_model_trains_through_the_trainer_and_predicts_with_its_linearized_predictive(tmp_path):
    pyro.set_rng_seed(0)
    module = bayesian_lora_from_model(tiny_bert(2), load_prior("laplace", targets=("query", "value"), rank=2),
                                      num_data=16, num_labels=2)
    data = rows()
    trainer = BayesianTrainer(module, arguments(tmp_path, num_train_epochs=1), train_dataset=data,
                              data_collator=default_data_collator, num_samples=4)
    trainer.train()
    plain = trainer.predict(data).predictions  # a point mass before the fit: every draw the posterior mean
    module.fit_posterior(make_loader(data.with_format("torch"), default_data_collator, 8, shuffle=False),
                         torch.device("cpu"))
    assert module.linearized
    fitted = trainer.predict(data).predictions
    assert abs(fitted.sum(-1) - 1).max() < 1e-5 and not (abs(fitted - plain) < 1e-7).all()
