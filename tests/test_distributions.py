"""Samplers against scipy, KLs against torch.distributions.kl_divergence or 1e5-sample Monte Carlo."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from peft.tuners.lora.monteclora import MontecloraSampler
from pyro import poutine
from scipy import stats
from torch.distributions import Dirichlet, Wishart, kl_divergence

from monteclora_pyro.distributions import (
    Categorical,
    Independent,
    LaplaceBridgeDirichlet,
    WishartCholesky,
    wishart_kl,
)

torch.set_default_dtype(torch.float32)


def _scale_tril(p: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(p, p, generator=g, dtype=torch.float64)
    return torch.linalg.cholesky(m @ m.T / p + torch.eye(p, dtype=torch.float64))


@pytest.mark.parametrize("p,df", [(3, 5.0), (4, 6.0), (2, 1.5)])
def test_wishart_rsample_matches_scipy_mean_and_variance(p, df):
    tril = _scale_tril(p)
    scale = (tril @ tril.T).numpy()
    torch.manual_seed(1)
    L = WishartCholesky(torch.tensor(df, dtype=torch.float64), tril).rsample((100_000,))
    sigma = (L @ L.mT).numpy()
    reference = stats.wishart(df=df, scale=scale)
    ref_mean = reference.mean()
    ref_var = reference.var()
    np.testing.assert_allclose(sigma.mean(0), ref_mean, rtol=0.03, atol=0.03 * np.abs(ref_mean).max())
    np.testing.assert_allclose(sigma.var(0), ref_var, rtol=0.08, atol=0.08 * ref_var.max())
    # and scipy's own draws agree with the same moments (the comparison is of like with like)
    np.testing.assert_allclose(reference.rvs(50_000, random_state=0).mean(0), ref_mean, rtol=0.05,
                               atol=0.05 * np.abs(ref_mean).max())


def test_wishart_rsample_is_plain_bartlett_no_resampling():
    """Same seed, same draw as the Bartlett construction by hand: nothing is rejected or redrawn."""
    p, df = 4, 4.0  # df = p: draws can be close to singular, which torch's Wishart would resample
    tril = _scale_tril(p).float()
    torch.manual_seed(7)
    ours = WishartCholesky(df, tril).rsample((500,))
    torch.manual_seed(7)
    chi2 = torch.distributions.Chi2(torch.tensor(df).expand(500, 1) - torch.arange(p)).rsample()
    noise = torch.randn(500, p, p)
    by_hand = tril @ (torch.tril(noise, -1) + torch.diag_embed(chi2.sqrt()))
    torch.testing.assert_close(ours, by_hand)
    assert torch.isfinite(ours).all() and (ours.diagonal(dim1=-2, dim2=-1) > 0).all()


def test_wishart_gradients_reach_the_scale():
    log_scale = torch.zeros(3, requires_grad=True)
    L = WishartCholesky(5.0, torch.diag(log_scale.exp())).rsample((64,))
    (L @ L.mT).diagonal(dim1=-2, dim2=-1).sum().backward()
    assert log_scale.grad is not None and (log_scale.grad.abs() > 0).all()


def test_wishart_cholesky_log_prob_includes_the_jacobian():
    """log p(L) - log W(L L^T) = log|det d vech(L L^T) / d vech(L)| (computed by autograd)."""
    p = 3
    dist = WishartCholesky(torch.tensor(6.0, dtype=torch.float64), _scale_tril(p))
    L = dist.rsample()
    rows, cols = torch.tril_indices(p, p)

    def vech_sigma(vech_l):
        m = torch.zeros(p, p, dtype=vech_l.dtype)
        m[rows, cols] = vech_l
        return (m @ m.T)[rows, cols]

    jac = torch.autograd.functional.jacobian(vech_sigma, L[rows, cols])
    log_det = torch.linalg.slogdet(jac).logabsdet
    wishart = Wishart(dist.df, scale_tril=dist.scale_tril)
    torch.testing.assert_close(dist.log_prob(L) - wishart.log_prob(L @ L.T), log_det)


@pytest.mark.parametrize("df_q,df_p", [(6.0, 6.0), (7.5, 5.0)])
def test_wishart_kl_matches_monte_carlo(df_q, df_p):
    p = 3
    q_tril, p_tril = _scale_tril(p, 1) * 0.7, _scale_tril(p, 2)
    q = WishartCholesky(torch.tensor(df_q, dtype=torch.float64), q_tril)
    prior = WishartCholesky(torch.tensor(df_p, dtype=torch.float64), p_tril)
    closed = kl_divergence(q, prior)
    torch.manual_seed(0)
    sigma = q.rsample((100_000,))
    sigma = sigma @ sigma.mT
    log_ratio = Wishart(q.df, scale_tril=q_tril).log_prob(sigma) - Wishart(prior.df, scale_tril=p_tril).log_prob(sigma)
    mc, stderr = log_ratio.mean(), log_ratio.std() / 100_000**0.5
    assert abs(closed - mc) < 4 * stderr + 1e-3, (closed, mc, stderr)
    torch.testing.assert_close(closed, wishart_kl(q.df, q_tril, prior.df, p_tril))


def test_wishart_kl_of_one_fixed_df_is_the_general_formula():
    """A df given as a number (the guide's and the prior's) takes the KL without the terms that cancel."""
    q_tril, p_tril = _scale_tril(3, 1).expand(2, 3, 3) * torch.tensor([0.7, 1.3])[:, None, None], _scale_tril(3, 2)
    q, prior = WishartCholesky(6.5, q_tril), WishartCholesky(6.5, p_tril).expand((2,))
    assert q.fixed_df == prior.fixed_df == 6.5 and q.batch_shape == (2,)
    general = wishart_kl(q.df, q_tril, prior.df, prior.scale_tril)
    torch.testing.assert_close(kl_divergence(q, prior), general)
    assert WishartCholesky(7.0, q_tril).fixed_df != prior.fixed_df  # other dfs: the general formula
    torch.testing.assert_close(kl_divergence(WishartCholesky(7.0, q_tril), prior),
                               wishart_kl(torch.tensor(7.0, dtype=q_tril.dtype), q_tril, prior.df, prior.scale_tril))


def test_a_diagonal_scale_draws_scores_and_diverges_as_its_matrix():
    """scale_diag (the guide's and prior's parameterization) is the law of scale_tril = diag(scale_diag):
    the same draws from the same seed, the same density and, against full or diagonal laws, the same KL
    as the triangular-solve formula."""
    q_diag = torch.tensor([[0.5, 1.2, 0.9], [1.5, 0.3, 0.8]], dtype=torch.float64, requires_grad=True)
    p_diag = torch.tensor([0.7, 0.7, 0.7], dtype=torch.float64)
    q, q_full = WishartCholesky(4.5, scale_diag=q_diag), WishartCholesky(4.5, torch.diag_embed(q_diag))
    prior, prior_full = WishartCholesky(4.5, scale_diag=p_diag).expand((2,)), WishartCholesky(4.5, torch.diag(p_diag))
    assert q.batch_shape == prior.batch_shape == (2,) and q.event_shape == (3, 3)
    torch.testing.assert_close(q.scale_tril, torch.diag_embed(q_diag))
    torch.manual_seed(0)
    draw = q.rsample()
    torch.manual_seed(0)
    torch.testing.assert_close(draw, q_full.rsample())
    torch.testing.assert_close(q.log_prob(draw.detach()), q_full.log_prob(draw.detach()))
    closed = kl_divergence(q, prior)
    torch.testing.assert_close(closed, wishart_kl(q.df, q_full.scale_tril, prior.df, prior_full.scale_tril))
    torch.testing.assert_close(kl_divergence(q, prior_full.expand((2,))), closed)  # one diagonal, one full
    other_df = WishartCholesky(6.0, scale_diag=p_diag)
    torch.testing.assert_close(kl_divergence(q, other_df),
                               wishart_kl(q.df, q.scale_tril, other_df.df, other_df.scale_tril))
    grad, = torch.autograd.grad(closed.sum(), q_diag)  # differentiable in the diagonal
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="exactly one of scale_tril"):
        WishartCholesky(4.5, torch.eye(3), scale_diag=p_diag)
    with pytest.raises(ValueError, match="p - 1 = 2"):
        WishartCholesky(1.5, scale_diag=p_diag)
    with pytest.raises(ValueError, match="scale_diag"):  # validated like the matrix
        WishartCholesky(4.5, scale_diag=-p_diag, validate_args=True)


def test_categorical_scores_as_pyros_and_normalizes_only_when_asked():
    """The likelihood's law: log_prob (one fused kernel), its gradient, probs, logits, sampling and
    expansion agree with Pyro's Categorical."""
    torch.manual_seed(0)
    raw = (3 * torch.randn(5, 4, 7)).requires_grad_(True)
    labels = torch.randint(0, 7, (5, 4))
    ours, pyros = Categorical(raw), pyro.distributions.Categorical(logits=raw)
    assert ours.batch_shape == pyros.batch_shape and ours.event_shape == pyros.event_shape
    assert "logits" not in vars(ours)  # not normalized at construction
    torch.testing.assert_close(ours.log_prob(labels), pyros.log_prob(labels))
    ours_grad, = torch.autograd.grad(ours.log_prob(labels).sum(), raw)
    pyros_grad, = torch.autograd.grad(pyros.log_prob(labels).sum(), raw)
    torch.testing.assert_close(ours_grad, pyros_grad)
    torch.testing.assert_close(ours.logits, pyros.logits)
    torch.testing.assert_close(ours.probs, pyros.probs)
    torch.testing.assert_close(ours.entropy(), pyros.entropy())
    every_label = torch.arange(7)[:, None, None].expand(7, 5, 4)  # a value with more dims: the parent's way
    torch.testing.assert_close(ours.log_prob(every_label), pyros.log_prob(every_label))
    wide = ours.expand((2, 5, 4))
    assert ours.expand((5, 4)) is ours and wide.batch_shape == (2, 5, 4)
    torch.testing.assert_close(wide.log_prob(labels.expand(2, 5, 4)), pyros.log_prob(labels).expand(2, 5, 4))
    assert ours.sample((3,)).shape == (3, 5, 4)
    with pytest.raises(ValueError, match="support"):
        Categorical(raw, validate_args=True).log_prob(torch.full((5, 4), 7))


def test_a_plate_keeps_the_laws_made_at_its_shape_and_a_number_df_draws_as_a_tensor_df():
    """A plate expands every law at every statement: one made at the plate's shape stays itself (so the
    guide's and the model's noise law are one object); to another shape, Pyro's own expansion."""
    from monteclora_pyro.distributions import Delta
    from monteclora_pyro.distributions import Dirichlet as PlateDirichlet

    concentration = torch.rand(3, 4) + 0.5
    weights, noise = PlateDirichlet(concentration), Independent(pyro.distributions.Normal(torch.zeros(3, 5, 2), 1.0), 2)
    point = Delta(torch.ones(3, 5, 2), event_dim=2)

    def model():
        with pyro.plate("layers", 3):
            pyro.sample("weights", weights)
            pyro.sample("noise", noise)
            pyro.sample("point", point)

    trace = poutine.trace(model).get_trace()
    laws = {"weights": weights, "noise": noise, "point": point}
    assert all(trace.nodes[name]["fn"] is law for name, law in laws.items())
    wide = weights.expand((2, 3))
    assert wide is not weights and wide.batch_shape == (2, 3) and torch.equal(wide.concentration[1], concentration)
    assert noise.expand((2, 3)).batch_shape == (2, 3) and noise.expand((2, 3)).event_shape == (5, 2)
    # the Bartlett Gamma shapes of a number df are cached; the draws are those of the same df as a tensor
    tril = _scale_tril(3).expand(2, 3, 3)
    torch.manual_seed(0)
    fixed = WishartCholesky(5.5, tril).rsample()
    torch.manual_seed(0)
    torch.testing.assert_close(fixed, WishartCholesky(torch.tensor(5.5, dtype=tril.dtype), tril).rsample())


def test_dirichlet_kl_at_peft_defaults_is_positive_and_torchs():
    """PEFT's Dirichlet KL is negative (a sign error and exp/log overflow); ours is torch's closed form."""
    torch.manual_seed(3)
    sampler = MontecloraSampler(in_features=16, out_features=8, num_samples=8, dirichlet_prior=0.1,
                                buffer_size=1, device="cpu")
    concentration = sampler.expert_weights_prior.detach().exp()
    prior = torch.full((8,), 0.1)
    ours = kl_divergence(Dirichlet(concentration), Dirichlet(prior))
    peft = sampler.dirichlet_kl(concentration)
    assert 9.0 < ours.item() < 11.0  # about 9.9 at this draw
    assert peft.item() < -20.0  # PEFT returns about -26.7 here
    torch.manual_seed(0)
    x = Dirichlet(concentration).sample((100_000,))
    mc = (Dirichlet(concentration).log_prob(x) - Dirichlet(prior).log_prob(x)).mean()
    assert abs(mc - ours) < 0.1


def test_laplace_bridge_samples_the_simplex_with_dirichlet_kl():
    alpha = torch.tensor([2.0, 5.0, 1.0, 3.0])
    q = LaplaceBridgeDirichlet(alpha)
    pi = q.rsample((20_000,))
    torch.testing.assert_close(pi.sum(-1), torch.ones(20_000))
    # the bridge is an approximation: its mean is close to, not equal to, alpha / sum(alpha)
    assert (pi.mean(0) - alpha / alpha.sum()).abs().max() < 0.08
    prior = Dirichlet(torch.ones(4))
    torch.testing.assert_close(kl_divergence(q, prior), kl_divergence(Dirichlet(alpha), prior))
