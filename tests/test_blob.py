"""BLoB against its reference code (Wang-ML-Lab/bayesian-peft, modelwrappers/blob.py): the KL, the flipout
perturbation, the KL re-weighting and the training step, each beside the reference's own formula or loop."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from conftest import tiny_batch, tiny_bert
from torch import nn
from transformers import get_linear_schedule_with_warmup

from monteclora_pyro import TrainConfig, bayesian_lora_from_model, load_prior, train
from monteclora_pyro.lora_sites import DrawnLinear
from monteclora_pyro.priors.blob import kl_reweighting


def reference_kl(mu_q, sigma_q, mu_p, sigma_p, eps: float = 1e-6):
    """``kl_div_stable`` of the reference code, summed (``eps``: its guard against log 0)."""
    kl = (math.log(sigma_p + eps) - torch.log(sigma_q.to(torch.float64) + eps)
          + (sigma_q.to(torch.float64) ** 2 + (mu_q.to(torch.float64) - mu_p) ** 2) / (2 * (sigma_p**2) + eps) - 0.5)
    return kl.sum()


def blob_module(seed: int = 0, **fields):
    pyro.set_rng_seed(seed)
    model = tiny_bert(2)
    for layer in model.modules():
        if isinstance(layer, nn.Dropout):
            layer.p = 0.0
    spec = load_prior("blob", rank=2).replace(dataset_rescaling_gamma=None, **fields)  # M: the steps of an epoch
    module = bayesian_lora_from_model(model, spec, num_data=24, num_labels=2)
    for site in module.network.named_parameters():  # B away from zero, so A's perturbations reach the output
        if "lora_B" in site[0]:
            site[1].data.normal_(0, 0.1)
    return module


def reference_kl_of(module, eps: float = 1e-6) -> torch.Tensor:
    total = 0
    for group in module.groups:
        rho = module.group_guides[group.key].rho
        total = total + reference_kl(module.factor_means(group), rho.square(), 0.0, module.spec.prior_std, eps)
    return total


def test_the_kl_is_the_references_and_the_std_is_rho_squared():
    module = blob_module()
    rho = next(iter(module.group_guides.values())).rho
    assert rho.min() >= 0.05 / math.sqrt(2) and rho.max() <= 0.05  # U(eps / sqrt 2, eps)
    ours = float(module.kl_divergence())
    assert ours == pytest.approx(float(reference_kl_of(module, eps=0.0)), rel=1e-6)
    elements = sum(len(g.sites) * g.shape[0] * g.shape[1] for g in module.groups)  # its guard: < 1e-3 nats each
    assert abs(ours - float(reference_kl_of(module))) < 1e-3 * elements


def test_flipout_has_the_mean_and_the_spread_of_its_formula():
    """((x r) E^T) s with random signs: mean x W^T over the signs, variance (x^2)(E^2)^T per output."""
    torch.manual_seed(0)
    layer = DrawnLinear(6, 3, bias=False)
    layer.flipout = True
    noise = 0.5 * torch.randn(3, 6)
    layer.draw = layer.weight.detach() + noise
    x = torch.randn(1, 6)
    with torch.no_grad():
        outputs = torch.stack([layer(x.expand(20000, 6)) for _ in range(2)]).reshape(-1, 3)
    mean = x @ layer.weight.detach().T
    torch.testing.assert_close(outputs.mean(0), mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(outputs.var(0), (x.square() @ noise.square().T)[0], rtol=0.05, atol=0)
    layer.flipout = False  # one draw for the whole batch: the draw's own output, every row alike
    torch.testing.assert_close(layer(x), x @ layer.draw.T)


def test_the_kl_reweighting_is_the_references():
    cycle = 6
    for step in range(20):
        i = (step + 1) % cycle or cycle  # the reference's self.i starts at 1
        assert kl_reweighting(step, cycle) == pytest.approx(2**i / (2 ** (cycle + 1) - 1))
    assert sum(kl_reweighting(step, cycle) for step in range(cycle)) == pytest.approx(1 - 1 / (2 ** (cycle + 1) - 1))
    assert kl_reweighting(3, 500) > 0 and kl_reweighting(3, 7, reweighting=False) == pytest.approx(1 / 7)


def reference_fit(module, batches, lr: float, kl_lr: float, steps: int) -> None:
    """The reference's ``fit``: AdamW (rho not in it) on the mean cross-entropy of the sampled network, then
    SGD on every parameter on pi KL, each with its own linear warm-up and decay (AdamW's eps as ours)."""
    rho = [g.rho for g in module.group_guides.values()]
    params = [p for p in module.parameters() if p.requires_grad and all(p is not r for r in rho)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    opt2 = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=kl_lr)
    scheduler = get_linear_schedule_with_warmup(opt, 0, steps)
    scheduler2 = get_linear_schedule_with_warmup(opt2, 0, steps)
    module.train()
    for step, batch in zip(range(steps), batches * steps, strict=False):
        nll = module(batch)  # the cross-entropy of one flipout draw (the KL is not in BLoB's loss)
        nll.backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
        kl = reference_kl_of(module, eps=0.0)  # without its log guard (tested above), to compare the steps exactly
        (kl * kl_reweighting(step, len(batches))).backward()
        opt2.step()
        opt2.zero_grad()
        scheduler2.step()


def test_a_training_step_is_the_reference_loops():
    batches = [tiny_batch(8, 10, seed=s) | {"idx": torch.arange(8 * s, 8 * s + 8)} for s in range(3)]
    ours = blob_module(kl_lr=0.05)  # a large KL step, so that its part shows
    start = {n: p.detach().clone() for n, p in ours.named_parameters() if p.requires_grad}
    pyro.set_rng_seed(1)
    train(ours, batches, TrainConfig(lr=5e-3, max_steps=4, warmup_ratio=0.0, grad_clip=math.inf, progress=False,
                                     divergence_factor=0.0, log_every=100))
    theirs = blob_module(kl_lr=0.05)
    pyro.set_rng_seed(1)
    reference_fit(theirs, batches, lr=5e-3, kl_lr=0.05, steps=4)
    mine = dict(ours.named_parameters())
    for name, value in theirs.named_parameters():
        if value.requires_grad:
            torch.testing.assert_close(mine[name], value, rtol=1e-4, atol=1e-6, msg=name)
    rho = next(n for n in start if n.endswith("rho"))
    assert not torch.allclose(mine[rho], start[rho])  # rho moved, by the KL step's SGD


def test_blob_refuses_fp16_loss_scaling_and_the_trainer(tmp_path):
    from transformers import TrainingArguments

    from monteclora_pyro.runner.hf_trainer import BayesianTrainer

    module = blob_module()
    module.autocast_dtype = torch.float16
    with pytest.raises(ValueError, match="fp16 loss scaling does not reach"):
        train(module, [tiny_batch(8, 10)], TrainConfig(max_steps=1, progress=False))
    with pytest.raises(ValueError, match="takes its KL in a step of its own"):
        BayesianTrainer(blob_module(), TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))
