"""Gradient accumulation steps as one larger batch does; mixed precision trains with float32 posteriors."""

from __future__ import annotations

import pyro
import pytest
import torch
from conftest import tiny_batch, tiny_bert
from torch import nn
from torch.utils.data import DataLoader

from monteclora_pyro import TrainConfig, bayesian_lora_from_model, load_prior, train
from monteclora_pyro.runner import training


def module_and_rows(prior: str = "map", autocast_dtype=None):
    pyro.set_rng_seed(0)
    model = tiny_bert(2)
    for layer in model.modules():  # no dropout: the two ways must see the same network
        if isinstance(layer, nn.Dropout):
            layer.p = 0.0
    module = bayesian_lora_from_model(model, load_prior(prior, rank=2), num_data=16, num_labels=2,
                                      autocast_dtype=autocast_dtype)
    for site in module.sites:
        module._layers[site.parameter].weight.data.normal_(0, 0.1)
    rows = tiny_batch(16, 10, seed=2)
    return module, [{k: v[i] for k, v in rows.items()} for i in range(16)]


def first_step_gradients(monkeypatch, batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    module, rows = module_and_rows()
    seen = {}

    def capture(params, max_norm, total_norm, *args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})

    monkeypatch.setattr(training.torch.nn.utils, "clip_grads_with_norm_", capture)
    config = TrainConfig(max_steps=1, gradient_accumulation_steps=accumulate, progress=False, divergence_factor=0.0)
    train(module, DataLoader(rows, batch_size=batch_size), config)
    return seen


def test_two_batches_of_8_accumulated_give_the_gradients_of_one_batch_of_16(monkeypatch):
    whole = first_step_gradients(monkeypatch, 16, 1)
    accumulated = first_step_gradients(monkeypatch, 8, 2)
    assert whole.keys() == accumulated.keys() and len(whole) > 4
    for name, grad in whole.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_accumulation_counts_optimizer_steps():
    module, rows = module_and_rows()
    history = train(module, DataLoader(rows, batch_size=4), TrainConfig(epochs=2, gradient_accumulation_steps=2,
                                                                         progress=False))
    assert history.steps == 4  # 4 batches an epoch, 2 a step, 2 epochs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_trains_with_float32_variational_parameters(dtype):
    module, rows = module_and_rows("monteclora_scaled_ab", autocast_dtype=dtype)
    history = train(module, DataLoader(rows, batch_size=8), TrainConfig(max_steps=3, progress=False))
    assert all(torch.isfinite(torch.tensor(history.loss)))
    assert all(p.dtype == torch.float32 for p in module.variational_parameters())


def test_fp16_and_the_flag_resolve():
    from monteclora_pyro.runner.settings import RunConfig

    assert RunConfig(mixed_precision="auto").autocast_dtype("cpu") is None
    assert RunConfig(mixed_precision="bf16").autocast_dtype("cpu") == "bfloat16"
    assert RunConfig(mixed_precision="fp16").autocast_dtype("cuda") == "float16"
    with pytest.raises(ValueError, match="mixed_precision = 'fp8' is unknown; allowed: auto, no, bf16, fp16"):
        RunConfig(mixed_precision="fp8")


def test_an_epoch_ends_where_its_rows_do_whatever_the_accumulation():
    """8 batches an epoch, 3 a step: steps of 3, 3 and 2 batches, each epoch exactly its 8 batches."""
    module, rows = module_and_rows()
    seen = []

    def counting(module, batch, kl_weight):
        seen.append(int(batch["idx"][0]))
        return training.method_loss(module, batch, kl_weight)

    epochs = []
    history = train(module, DataLoader(rows, batch_size=2), TrainConfig(epochs=2, gradient_accumulation_steps=3,
                                                                         progress=False), loss_fn=counting,
                    on_epoch_end=epochs.append)
    assert history.steps == 6 and epochs == [1, 2]
    assert seen == [0, 2, 4, 6, 8, 10, 12, 14] * 2  # no epoch reaches into the next


def test_a_checkpoint_resumes_only_with_as_many_processes(tmp_path):
    from monteclora_pyro.runner.checkpoints import Checkpointer

    module, rows = module_and_rows()
    path = tmp_path / "checkpoint.pt"
    train(module, DataLoader(rows, batch_size=8), TrainConfig(max_steps=1, progress=False),
          checkpoint=Checkpointer(path))
    state = torch.load(path, weights_only=False)
    assert state["world_size"] == 1
    torch.save(state | {"world_size": 2}, path)
    with pytest.raises(ValueError, match="written by 2 process"):
        train(module, DataLoader(rows, batch_size=8), TrainConfig(max_steps=2, progress=False),
              checkpoint=Checkpointer(path, resume=True))
