"""From a user's own PEFT model: the Bayesian model is built on it, trains, and its draws reach the network."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batch, tiny_bert
from peft import LoraConfig, get_peft_model

from monteclora_pyro import TrainConfig, bayesian_lora_from_model, predict, train
from monteclora_pyro.lora_sites import DrawnLinear


def test_a_users_get_peft_model_output_trains_and_its_draws_change_the_outputs():
    peft = get_peft_model(tiny_bert(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                  modules_to_save=["classifier"]))
    module = bayesian_lora_from_model(peft, "monteclora_scaled_ab", num_data=32, num_labels=2)
    assert (module.spec.rank, module.spec.alpha, module.spec.targets) == (4, 8.0, ("query", "value"))
    assert module.network is peft and all(isinstance(module.network.get_submodule(s.parameter[:-7]), DrawnLinear)
                                          for s in module.sites)
    batch = tiny_batch(32)
    history = train(module, [batch], TrainConfig(max_steps=5, progress=False, log_every=1))
    assert history.steps == 5 and history.kl[-1] > 0
    module.eval()
    with torch.no_grad():
        mean = module.network_output(batch)
        drawn = module.network_output(batch, module.posterior_draw())
    assert (drawn - mean).abs().max() > 1e-4  # the draw reached the network (a silent no-op gives 0)
    predictions = predict(module, [batch], num_samples=3)
    assert predictions["draws"].shape == (32, 3, 2) and (predictions["draws"].std(1) > 0).any()


def test_what_cannot_hold_a_draw_is_an_error_naming_it():
    dora = get_peft_model(tiny_bert(), LoraConfig(r=4, target_modules=["query"], use_dora=True))
    with pytest.raises(ValueError, match=r"adapter 'default' uses DoRA"):
        bayesian_lora_from_model(dora, "monteclora", num_data=8, num_labels=2)
    with pytest.raises(ValueError, match=r"the network is a BertForSequenceClassification, not a PEFT model"):
        from monteclora_pyro import BayesianLoRA, load_prior
        from monteclora_pyro.likelihoods import CategoricalLikelihood

        BayesianLoRA(tiny_bert(), load_prior("monteclora"), CategoricalLikelihood(), num_data=8)


def test_per_module_ranks_are_refused():
    peft = get_peft_model(tiny_bert(), LoraConfig(r=4, target_modules=["query", "value"], rank_pattern={"value": 2}))
    with pytest.raises(ValueError, match=r"per-module ranks or alphas \(rank_pattern, alpha_pattern\)"):
        bayesian_lora_from_model(peft, "monteclora", num_data=8, num_labels=2)


@pytest.mark.integration
def test_a_users_lora_configuration_is_saved_and_rebuilt(tmp_path):
    from monteclora_pyro.adapters import load_adapter, save_adapter
    from monteclora_pyro.backbones import load_classifier
    from monteclora_pyro.tasks.glue.settings import default_model

    network, tokenizer = load_classifier(default_model(), 2)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.1, use_rslora=True,
                        modules_to_save=["classifier"])
    module = bayesian_lora_from_model(get_peft_model(network, config), "monteclora_scaled_ab", num_data=16,
                                      num_labels=2)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    save_adapter(module.eval(), tmp_path / "adapter", default_model(), 2)
    loaded, _ = load_adapter(tmp_path / "adapter")
    rebuilt = loaded.network.peft_config["default"]
    assert (rebuilt.r, rebuilt.lora_dropout, rebuilt.use_rslora) == (4, 0.1, True)
    batch = dict(tokenizer(["a fine film", "dull and long"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.network_output(batch), module.network_output(batch))
