"""q(Sigma) with degrees of freedom of its own (``learn_df``): SVI reaches the exact posterior of a conjugate
Wishart model, and the monteclora guide learns, saves and reloads its per-layer df."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from test_conjugate import Regressor

from monteclora_pyro import BayesianLoRA, GaussianLikelihood, TrainConfig, inject_lora, load_prior, train
from monteclora_pyro.distributions import WishartCholesky


def test_svi_with_a_learned_df_reaches_the_conjugate_wishart_posterior():
    """Lambda = L L^T ~ Wishart(df0, v0 I) and x_i ~ N(0, Lambda^-1): the posterior is Wishart(df0 + n,
    (I / v0 + S)^-1).  With a diagonal scatter S the guide's family (a df and a diagonal scale) holds it,
    and SVI on the ELBO must find both: the df rises from the prior's 4 to 4 + n."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    p, df0, v0 = 2, 4.0, 0.5
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    x = signs.repeat(8, 1) * torch.tensor([0.5, 2.0])  # 32 rows whose scatter sum_i x_i x_i^T is diagonal
    scatter = x.T @ x
    assert torch.allclose(scatter, torch.diag(scatter.diagonal()))

    def model():
        tril = pyro.sample("L", WishartCholesky(df0, scale_diag=torch.full((p,), v0 ** 0.5)))
        # sum_i log N(x_i | 0, Lambda^-1) up to a constant: n/2 log det Lambda - 1/2 sum_i x_i^T Lambda x_i
        log_det = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        pyro.factor("x", len(x) / 2 * log_det - 0.5 * (x @ tril).square().sum((-2, -1)))

    def guide():
        log_excess = pyro.param("log_df_excess", torch.tensor(math.log(df0 - (p - 1))))
        log_scale = pyro.param("log_scale", torch.full((p,), 0.5 * math.log(v0)))
        pyro.sample("L", WishartCholesky(p - 1 + log_excess.exp(), scale_diag=log_scale.exp()))

    svi = pyro.infer.SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.999}),
                         pyro.infer.TraceMeanField_ELBO(num_particles=16, vectorize_particles=True))
    for _ in range(1500):
        svi.step()
    df = float(p - 1 + pyro.param("log_df_excess").detach().exp())
    scale = pyro.param("log_scale").exp().detach() ** 2
    exact_df, exact_scale = df0 + len(x), 1 / (1 / v0 + scatter.diagonal())
    assert df == pytest.approx(exact_df, rel=0.1), (df, exact_df)
    torch.testing.assert_close(scale * df, exact_scale * exact_df, rtol=0.1, atol=0)  # E[Lambda] = df V


def test_the_monteclora_guide_learns_and_keeps_its_df(tmp_path):
    torch.manual_seed(0)
    features, rows = 8, 64
    x = torch.randn(rows, features)
    y = x @ torch.linspace(-1, 1, features) + 0.3 * torch.randn(rows)
    spec = load_prior("monteclora_scaled", targets=["proj"], rank=2, alpha=2.0).replace(learn_df=True)
    network = inject_lora(Regressor(features), spec.targets, spec.rank, spec.alpha)
    module = BayesianLoRA(network, spec, GaussianLikelihood(0.3, learn_scale=False), num_data=rows)
    (guide,) = module.group_guides.values()
    assert float(guide.degrees_of_freedom().detach()) == pytest.approx(spec.df)  # starts at the prior's
    assert any(p is guide.log_df_excess for p in module.variational_parameters())
    batch = {"x": x, "labels": y, "idx": torch.arange(rows)}
    train(module, [batch], TrainConfig(lr=0.02, variational_lr=0.05, max_steps=50, progress=False))
    assert float(guide.degrees_of_freedom().detach()) != pytest.approx(spec.df)
    assert "group_guides." + next(iter(module.group_guides)) + ".log_df_excess" in module.state_dict()
    assert math.isfinite(float(module.kl_divergence()))
    with pytest.raises(ValueError, match="learn_df = 'yes' must be true or false"):
        spec.replace(learn_df="yes")
    fixed = BayesianLoRA(inject_lora(Regressor(features), spec.targets, spec.rank, spec.alpha),
                         spec.replace(learn_df=False), GaussianLikelihood(0.3, learn_scale=False), num_data=rows)
    assert not hasattr(next(iter(fixed.group_guides.values())), "log_df_excess")  # the paper's q keeps p's df
