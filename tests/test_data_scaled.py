"""The data-scaled MonteCLoRA prior: the posterior spread of the perturbations is decided by the data.

Linear regression through one LoRA site (B fixed at 1, as in ``test_conjugate``), with the bundled
``monteclora_scaled`` declaration (relative eps and a LogNormal hyperprior on it) and ``monteclora_wide_prior``
(a ten times wider eps, q(tau) starting at 0.1).  More rows pin the
factor down, so the ELBO's optimum has smaller perturbations: the learned spread must shrink as N grows.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from test_conjugate import Regressor

from monteclora_pyro import BayesianLoRA, GaussianLikelihood, TrainConfig, inject_lora, load_prior, train
from monteclora_pyro.diagnostics import posterior_inference_data
from monteclora_pyro.runner.training import fit_variational


def fitted_spread(num_data: int, seed: int = 0, steps: int = 800, posterior_steps: int = 0,
                  prior: str = "monteclora_scaled") -> tuple[float, float]:
    """(mean posterior perturbation std, KL per example) after SVI on ``num_data`` synthetic rows, with
    ``posterior_steps`` of the guide alone after ``steps`` of training."""
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    features, sigma = 8, 0.3
    x = torch.randn(num_data, features)
    y = x @ torch.linspace(-1, 1, features) + sigma * torch.randn(num_data)
    spec = load_prior(prior, targets=["proj"], rank=2, alpha=2.0)
    network = inject_lora(Regressor(features), spec.targets, spec.rank, spec.alpha)
    b = network.get_parameter("base_model.model.proj.lora_B.default.weight")
    with torch.no_grad():
        b.fill_(1.0)
    b.requires_grad_(False)
    module = BayesianLoRA(network, spec, GaussianLikelihood(sigma, learn_scale=False), num_data=num_data)
    batch = {"x": x, "labels": y, "idx": torch.arange(num_data)}
    config = TrainConfig(lr=0.02, variational_lr=0.05, max_steps=steps, warmup_ratio=0.0, progress=False,
                         log_every=100, posterior_steps=posterior_steps)
    history = train(module, [batch], config)
    kl = history.kl[-1]
    if posterior_steps:
        means = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        guide = {n for n, _ in module.group_guides.named_parameters()}
        trajectory = fit_variational(module, [batch], config)
        for name, value in means.items():  # the means are fixed; only the guide's parameters moved
            moved = not torch.equal(module.get_parameter(name), value)
            assert moved == (name.removeprefix("group_guides.") in guide), name
        first, last = trajectory["loss"][:50], trajectory["loss"][-50:]
        assert sum(last) < sum(first)  # the ELBO went up
        kl = float(module.kl_divergence().detach()) / num_data
    posterior = posterior_inference_data(module, num_draws=300).posterior
    return float(posterior["perturbation_std"].mean()), kl


@pytest.mark.parametrize("prior,shrink", [("monteclora_scaled", 2.0), ("monteclora_wide_prior", 2.5)])
def test_perturbation_spread_shrinks_as_the_training_set_grows(prior, shrink):
    """16 times the rows: monteclora_scaled's spread 0.037 against 0.0075, monteclora_wide_prior's 0.069 against
    0.017 (sqrt(16) = 4 for a posterior limited by the data)."""
    small, large = fitted_spread(50, prior=prior), fitted_spread(800, prior=prior)
    assert small[0] > shrink * large[0], (small, large)
    assert small[1] > 0.01 and large[1] > 0  # the posterior left the prior: KL clearly above 0


def test_the_posterior_stage_lets_the_data_decide_the_spread_after_a_short_run():
    """After 100 steps, where the guide's parameters have barely moved with the schedule, the spread does not
    depend on the rows' number; 600 steps of the guide alone around the trained means shrink it as 800 steps
    of training do (0.036 and 0.0079 with 50 and 800 rows), by more than 3 times for 16 times the rows."""
    short = fitted_spread(50, steps=100)[0], fitted_spread(800, steps=100)[0]
    assert short[0] < 1.5 * short[1], short
    small, large = fitted_spread(50, steps=100, posterior_steps=600), fitted_spread(800, steps=100, posterior_steps=600)
    assert small[0] > 3.0 * large[0], (small, large)
    assert small[0] < 0.8 * short[0] and large[0] < 0.3 * short[1]
    assert small[1] > 0.01 and large[1] > 0
