"""LoRA sites: injection through PEFT, names by module path, clear errors, no mutation in forward."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_batch, tiny_bert

from monteclora_pyro import bayesian_lora_from_model, factor_sites, inject_lora, load_prior


def test_unknown_target_lists_the_existing_modules():
    with pytest.raises(ValueError, match=r"target modules \['q_proj'\] not found in BertForSequenceClassification; "
                                         r"its linear modules are: .*query.*value"):
        inject_lora(tiny_bert(), ["query", "q_proj"], rank=4, alpha=8)


def test_sites_are_named_by_full_module_path_and_backbone_is_frozen():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        network = inject_lora(tiny_bert(), ["query", "value"], rank=4, alpha=8)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # PEFT's, silenced
    sites = factor_sites(network, ["A", "B"])
    names = [s.name for s in sites]
    assert "bert.encoder.layer.0.attention.self.query.lora_A" in names
    assert "bert.encoder.layer.1.attention.self.value.lora_B" in names
    assert len(sites) == 8
    a = next(s for s in sites if s.factor == "A")
    assert a.shape == (4, 32) and a.shape == tuple(network.get_parameter(a.parameter).shape)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "classifier" in n for n in trainable)
    assert any("classifier" in n for n in trainable)  # the task head stays trainable


def test_sampled_factors_do_not_mutate_the_network():
    module = bayesian_lora_from_model(tiny_bert(), load_prior("monteclora", rank=4, perturbation_scale=0.5),
                                      num_data=50, num_labels=2)
    with torch.no_grad():
        for name, param in module.network.named_parameters():
            if "lora_B" in name:
                param.normal_()
    module.eval()  # no dropout: equal inputs must give equal outputs
    before = {k: v.clone() for k, v in module.network.state_dict().items()}
    draw = module.posterior_draw()
    out_draw = module.network_output(tiny_batch(), draw)
    out_mean = module.network_output(tiny_batch())
    for key, value in module.network.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert not torch.allclose(out_draw, out_mean)  # the draw was used ...
    torch.testing.assert_close(module.network_output(tiny_batch(), draw), out_draw)  # ... and only for that call
