"""The collapsed MonteCLoRA perturbation equals the paper's N-component mixture in distribution."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine

from monteclora_pyro.declarations import PriorSpec
from monteclora_pyro.lora_sites import FactorSite, SiteGroup
from monteclora_pyro.priors.monteclora import MonteCLoRAPrior


def test_one_scaled_draw_matches_the_sum_of_n_weighted_draws():
    """Given pi and L: eps sum_n pi_n Z_n L^T  ~  eps ||pi|| Z L^T (same Gaussian law of each row)."""
    d, r, n, eps = 3, 2, 5, 0.1
    spec = PriorSpec(family="monteclora", rank=r, num_components=n, perturbation_scale=eps)
    site = FactorSite("layer.lora_A", "layer.lora_A.default.weight", "A", r, d)
    group = SiteGroup(site.name, (site,))
    prior = MonteCLoRAPrior(spec)
    tril = torch.tensor([[1.0, 0.0], [0.6, 0.5]])
    weights = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])
    draws = 40_000
    condition = {f"{group.name}.sigma_tril": tril[None], f"{group.name}.weights": weights[None]}  # one layer
    with poutine.condition(data=condition):
        samples = torch.cat([prior(group, torch.zeros(1, r, d)) for _ in range(draws // 40)])
    # vectorized reference: the paper's explicit mixture of N independent perturbations
    z = torch.randn(draws, n, d, r)
    explicit = eps * torch.einsum("n,sndr->sdr", weights, z @ tril.T)
    ours_rows = samples.mT.reshape(-1, r)  # rows of the (d x r) feature-major perturbation
    ref_rows = explicit.reshape(-1, r)
    expected = eps**2 * weights.pow(2).sum() * tril @ tril.T
    torch.testing.assert_close(torch.cov(ours_rows.T), expected, rtol=0.1, atol=2e-5)
    torch.testing.assert_close(torch.cov(ref_rows.T), expected, rtol=0.05, atol=1e-5)
    assert ours_rows.mean(0).abs().max() < 4 * (expected.diagonal().sqrt().max() / ours_rows.shape[0] ** 0.5)
    pyro.clear_param_store()
