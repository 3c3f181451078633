"""Two processes (DDP over gloo on CPU) train to the same parameters as one process with the same
global batch and seed: the plate's scale and the variational parameters stay right when sharded, also
through the posterior stage (the guide alone, its gradients averaged by hand); and a tiny LLaMA whose frozen
weights FSDP shards across two processes trains as one process does."""

from __future__ import annotations

import dataclasses
import socket

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_batch
from transformers import BertConfig, BertForSequenceClassification

from monteclora_pyro import TrainConfig, bayesian_lora_from_model, load_prior, train
from monteclora_pyro.runner.distributed import World, sharded_loader, unwrap
from monteclora_pyro.runner.training import fit_variational

CONFIG = TrainConfig(lr=5e-3, epochs=2, progress=False, log_every=3, posterior_steps=3)
GLOBAL_BATCH, ROWS = 8, 32


def build(world: World):
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    module = bayesian_lora_from_model(BertForSequenceClassification(config), load_prior("monteclora_scaled", rank=4),
                                      num_data=ROWS, num_labels=2)
    rows = tiny_batch(ROWS)
    dataset = [{k: v[i] for k, v in rows.items()} for i in range(ROWS)]
    return module, sharded_loader(dataset, None, GLOBAL_BATCH, world, seed=3)


def learnable(module):
    return {n: p.detach().clone() for n, p in unwrap(module).named_parameters() if p.requires_grad}


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    world = World(rank, 2)
    module, loader = build(world)
    wrapped = world.wrap(module, torch.device("cpu"))
    history = train(wrapped, loader, CONFIG)
    stage = fit_variational(wrapped, loader, CONFIG)
    if world.is_main:
        torch.save({"params": learnable(module), "kl": history.kl, "steps": history.steps, "stage": stage}, out)
    dist.destroy_process_group()


def run_two_processes(target, tmp_path):
    """``target(rank, port, out)`` in 2 gloo processes; what rank 0 saved to ``out``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(target, args=(port, str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    two = run_two_processes(worker, tmp_path)

    module, loader = build(World())
    history = train(module, loader, CONFIG)
    trained = {n: p.detach().clone() for n, p in module.group_guides.named_parameters()}
    fit_variational(module, loader, CONFIG)  # then the parameters below are compared after the stage
    assert len(two["stage"]["loss"]) == 3
    assert all(not torch.equal(p, trained[n]) for n, p in module.group_guides.named_parameters())
    assert two["steps"] == history.steps == 2 * ROWS // GLOBAL_BATCH
    for name, value in learnable(module).items():
        torch.testing.assert_close(two["params"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(torch.tensor(two["kl"]), torch.tensor(history.kl), rtol=1e-4, atol=1e-6)
    assert history.kl[-1] > 0


def tiny_llama_method():
    from transformers import LlamaConfig, LlamaForCausalLM

    from monteclora_pyro.likelihoods import TokenLikelihood

    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    spec = load_prior("monteclora_scaled", rank=2, alpha=4.0, targets=("q_proj", "v_proj"))
    return bayesian_lora_from_model(LlamaForCausalLM(config), spec, num_data=ROWS, likelihood=TokenLikelihood())


def token_rows():
    generator = torch.Generator().manual_seed(5)
    return [{"input_ids": torch.randint(0, 50, (10,), generator=generator), "attention_mask": torch.ones(10).long(),
             "labels": torch.randint(0, 50, (3,), generator=generator), "idx": torch.tensor(i)} for i in range(ROWS)]


def fsdp_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    world = World(rank, 2)
    module = tiny_llama_method()
    wrapped = world.wrap(module, torch.device("cpu"), "fsdp")
    frozen = module.network.get_base_model().model.layers[0].mlp.up_proj.weight
    local_rows = frozen.to_local().shape[0]  # this process's share of a frozen weight
    history = train(wrapped, sharded_loader(token_rows(), None, GLOBAL_BATCH, world, seed=3),
                    dataclasses.replace(CONFIG, posterior_steps=0))
    world.gather_for_evaluation(module)
    if world.is_main:  # rank 0 alone predicts, as the pipeline's evaluation does
        with torch.no_grad():
            logits = module.network_output(next(iter(sharded_loader(token_rows(), None, 4, World(), seed=0))))
        torch.save({"params": learnable(module), "kl": history.kl, "local_rows": local_rows,
                    "placement": str(frozen.placements), "logits": logits}, out)
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp_shards_the_frozen_backbone_and_trains_as_one_process(tmp_path):
    two = run_two_processes(fsdp_worker, tmp_path)
    assert two["local_rows"] == 24 and "Shard(dim=0)" in two["placement"]  # half of up_proj's 48 rows each

    module = tiny_llama_method()
    history = train(module, sharded_loader(token_rows(), None, GLOBAL_BATCH, World(), seed=3),
                    dataclasses.replace(CONFIG, posterior_steps=0))
    for name, value in learnable(module).items():
        torch.testing.assert_close(two["params"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(torch.tensor(two["kl"]), torch.tensor(history.kl), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        logits = module.network_output(next(iter(sharded_loader(token_rows(), None, 4, World(), seed=0))))
    torch.testing.assert_close(two["logits"], logits, rtol=1e-4, atol=1e-5)
