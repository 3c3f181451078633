"""SVI against a closed form: Bayesian linear regression through the same LoRA-site machinery.

y = x . a + noise, with a = lora_A of a rank-1 LoRA site on a zero linear layer (B fixed at 1,
alpha / r = 1).  Prior a ~ N(0, s0^2 I), noise N(0, sigma^2).  With orthogonal design columns the
exact posterior is a product of independent Normals, so the mean-field guide can match it exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from monteclora_pyro import BayesianLoRA, GaussianLikelihood, TrainConfig, inject_lora, load_prior, train


class Regressor(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(features, 1, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).squeeze(-1)


def test_svi_matches_the_conjugate_posterior():
    torch.manual_seed(0)
    n, p, sigma, s0 = 40, 3, 0.5, 1.0
    q, _ = torch.linalg.qr(torch.randn(n, p))
    x = q * torch.tensor([4.0, 2.0, 1.0])  # orthogonal columns of different norms
    a_true = torch.tensor([1.0, -0.5, 0.25])
    y = x @ a_true + sigma * torch.randn(n)

    precision = torch.diag(x.T @ x) / sigma**2 + 1 / s0**2
    post_mean = (x.T @ y / sigma**2) / precision
    post_var = 1 / precision

    spec = load_prior("gaussian", targets=["proj"], rank=1, alpha=1.0, prior_scale=s0,
                       init_posterior_scale=0.1)
    network = inject_lora(Regressor(p), spec.targets, spec.rank, spec.alpha)
    b = network.get_parameter("base_model.model.proj.lora_B.default.weight")
    with torch.no_grad():
        b.fill_(1.0)
    b.requires_grad_(False)
    module = BayesianLoRA(network, spec, GaussianLikelihood(sigma, learn_scale=False), num_data=n, guide="mean_field")
    batch = {"x": x, "labels": y, "idx": torch.arange(n)}
    config = TrainConfig(lr=0.01, max_steps=6000, warmup_ratio=0.0, grad_clip=float("inf"), progress=False,
                         log_every=500)
    train(module, [batch], config)

    site = module.sites[0]
    mean = network.get_parameter(site.parameter).detach().reshape(-1)
    std = torch.nn.functional.softplus(module.group_guides[module.groups[0].key].raw_scale).detach().reshape(-1)
    post_std = post_var.sqrt()
    assert ((mean - post_mean).abs() / post_std < 0.15).all(), (mean, post_mean, post_std)
    torch.testing.assert_close(std, post_std, rtol=0.1, atol=0.0)
