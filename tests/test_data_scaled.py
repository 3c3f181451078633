"""The data-scaled MonteCLoRA prior: the posterior spread of the perturbations is decided by the data.

Linear regression through one LoRA site (B fixed at 1, as in ``test_conjugate``), with the bundled
``monteclora_scaled`` declaration (relative eps and a LogNormal hyperprior on it).  More rows pin the
factor down, so the ELBO's optimum has smaller perturbations: the learned spread must shrink as N grows.
"""

from __future__ import annotations

import pyro
import torch
from test_conjugate import Regressor

from monteclora_pyro import BayesianLoRA, GaussianLikelihood, TrainConfig, inject_lora, load_prior, train
from monteclora_pyro.diagnostics import posterior_inference_data


def fitted_spread(num_data: int, seed: int = 0) -> tuple[float, float]:
    """(mean posterior perturbation std, KL per example) after SVI on ``num_data`` synthetic rows."""
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    features, sigma = 8, 0.3
    x = torch.randn(num_data, features)
    y = x @ torch.linspace(-1, 1, features) + sigma * torch.randn(num_data)
    spec = load_prior("monteclora_scaled", targets=["proj"], rank=2, alpha=2.0)
    network = inject_lora(Regressor(features), spec.targets, spec.rank, spec.alpha)
    b = network.get_parameter("base_model.model.proj.lora_B.default.weight")
    with torch.no_grad():
        b.fill_(1.0)
    b.requires_grad_(False)
    module = BayesianLoRA(network, spec, GaussianLikelihood(sigma, learn_scale=False), num_data=num_data)
    batch = {"x": x, "labels": y, "idx": torch.arange(num_data)}
    config = TrainConfig(lr=0.02, variational_lr=0.05, max_steps=800, warmup_ratio=0.0, progress=False,
                         log_every=100)
    history = train(module, [batch], config)
    posterior = posterior_inference_data(module, num_draws=300).posterior
    return float(posterior["perturbation_std"].mean()), history.kl[-1]


def test_perturbation_spread_shrinks_as_the_training_set_grows():
    small, large = fitted_spread(50), fitted_spread(800)
    assert small[0] > 2.0 * large[0], (small, large)
    assert small[1] > 0.01 and large[1] > 0  # the posterior left the prior: KL clearly above 0
