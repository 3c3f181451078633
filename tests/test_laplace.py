"""The Laplace approximation: its curvature (diagonal and Kronecker-factored) against per-example Jacobians taken
one example at a time, and its posterior, predictive and evidence against the exact ones of a linear-Gaussian
model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_batch, tiny_bert
from torch import nn

from monteclora_pyro import adapters
from monteclora_pyro.adapters import load_adapter, save_adapter
from monteclora_pyro.bayesian_lora import bayesian_lora_from_model
from monteclora_pyro.declarations import PriorSpec, load_prior
from monteclora_pyro.distributions import kronecker_normal
from monteclora_pyro.laplace import (
    diagonal_ggn,
    kronecker_ggn,
    linear_output_covariance,
    log_evidence,
    optimal_prior_precision,
)
from monteclora_pyro.likelihoods import GaussianLikelihood
from monteclora_pyro.prediction import predict


def laplace_module(num_labels: int, **fields) -> object:
    spec = PriorSpec(family="laplace", targets=("query", "value"), rank=2, alpha=4.0, stochastic=("A", "B"), **fields)
    module = bayesian_lora_from_model(tiny_bert(num_labels), spec, num_data=16, num_labels=num_labels)
    torch.manual_seed(1)
    for site in module.sites:  # B starts at zero, where A's gradients vanish
        module._layers[site.parameter].weight.data.normal_(0, 0.3)
    return module.eval()


def batches(num_labels: int) -> list[dict[str, torch.Tensor]]:
    """Two batches, the second padded: padding must not reach the curvature."""
    first, second = tiny_batch(5, 9, num_labels, seed=0), tiny_batch(3, 12, num_labels, seed=1)
    second["attention_mask"][:, 8:] = 0
    if num_labels == 1:
        for batch in (first, second):
            batch["labels"] = batch["labels"].float()
    return [first, second]


def one_by_one_jacobian(module, batch: dict, outputs) -> torch.Tensor:
    """(examples x K x parameters): each example alone, each output's gradient by its own backward pass."""
    parameters = [module._layers[s.parameter].weight for g in module.groups for s in g.sites]
    rows = []
    for n in range(len(batch["labels"])):
        single = {k: v[n:n + 1] for k, v in batch.items()}
        values = outputs(module.network_output(single, {}))[0]
        rows.append(torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(v, parameters,
                                                                                      retain_graph=True)])
                                 for v in values]))
    return torch.stack(rows)


def flat(per_group: dict, module) -> torch.Tensor:
    return torch.cat([per_group[g.key].flatten() for g in module.groups])


@pytest.mark.parametrize("num_labels", [1, 2, 3])
def test_diagonal_ggn_equals_one_example_at_a_time(num_labels):
    module = laplace_module(num_labels)
    data = batches(num_labels)
    expected = 0
    for batch in data:
        jacobian = one_by_one_jacobian(module, batch, lambda out: out.reshape(out.shape[0], -1))  # logits
        logits = module.network_output(batch, {}).detach().reshape(len(jacobian), -1)
        if num_labels == 1:
            hessian = torch.ones(len(logits), 1, 1) / module.likelihood.log_scale.exp().detach() ** 2
        else:
            p = logits.softmax(-1)
            hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        expected = expected + torch.einsum("ncp,ncd,ndp->p", jacobian, hessian, jacobian)
    ggn = flat(diagonal_ggn(module, data, torch.device("cpu")), module)
    assert expected.abs().max() > 0
    torch.testing.assert_close(ggn, expected.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("num_labels", [1, 2, 3])
def test_linear_output_covariance_equals_jacobian_sandwich(num_labels):
    module = laplace_module(num_labels)
    batch = batches(num_labels)[1]
    variances = {g.key: torch.rand(len(g.sites), *g.shape) for g in module.groups}
    outputs, covariance = linear_output_covariance(module, batch, variances)
    jacobian = one_by_one_jacobian(module, batch, module.likelihood.linear_outputs)
    expected = torch.einsum("nkp,p,nmp->nkm", jacobian, flat(variances, module), jacobian)
    torch.testing.assert_close(covariance, expected.detach(), rtol=1e-4, atol=1e-7)
    assert outputs.shape == covariance.shape[:2]


def orthogonal(layers: int, size: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(layers, size, size))[0]


def random_bases(module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {g.key: (orthogonal(len(g.sites), g.shape[0]), orthogonal(len(g.sites), g.shape[1])) for g in module.groups}


def test_linear_output_covariance_in_kronecker_bases_equals_the_dense_sandwich():
    module = laplace_module(3)
    batch = batches(3)[1]
    variances = {g.key: torch.rand(len(g.sites), *g.shape) for g in module.groups}
    bases = random_bases(module)
    _, covariance = linear_output_covariance(module, batch, variances, bases)
    blocks = [torch.kron(u[layer], v[layer]) @ torch.diag(variances[g.key][layer].flatten())
              @ torch.kron(u[layer], v[layer]).T
              for g in module.groups for u, v in [bases[g.key]] for layer in range(len(g.sites))]
    jacobian = one_by_one_jacobian(module, batch, module.likelihood.linear_outputs)
    expected = torch.einsum("nkp,pq,nmq->nkm", jacobian, torch.block_diag(*blocks), jacobian)
    torch.testing.assert_close(covariance, expected.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("num_labels", [1, 3])
def test_kronecker_ggn_of_one_token_per_example_is_the_exact_ggn_of_one_example(num_labels):
    """For one example of one token, G (x) A = sum_k (g_k a^T)(g_k a^T)^T is that example's exact GGN block; with
    padded tokens appended the curvature does not change (the mask keeps them out of the input means)."""
    module = laplace_module(num_labels)
    single = {k: v[:1, :1] if v.ndim == 2 else v[:1] for k, v in batches(num_labels)[0].items()}
    eigenvalues, bases = kronecker_ggn(module, [single], torch.device("cpu"))
    jacobian = one_by_one_jacobian(module, single, lambda out: out.reshape(out.shape[0], -1))[0]
    logits = module.network_output(single, {}).detach().reshape(1, -1)
    if num_labels == 1:
        hessian = torch.ones(1, 1) / module.likelihood.log_scale.exp().detach() ** 2
    else:
        p = logits.softmax(-1)[0]
        hessian = torch.diag(p) - p[:, None] * p[None, :]
    exact = (jacobian.T @ hessian @ jacobian).detach()
    blocks = [torch.kron(u[layer], v[layer]) @ torch.diag(eigenvalues[g.key][layer].flatten())
              @ torch.kron(u[layer], v[layer]).T
              for g in module.groups for u, v in [bases[g.key]] for layer in range(len(g.sites))]
    assert len(blocks) == len(module.sites) and exact.abs().max() > 0  # one_by_one_jacobian's order: the groups'
    torch.testing.assert_close(torch.block_diag(*blocks), exact, rtol=1e-3, atol=1e-5)

    padded = {k: v for k, v in single.items()}
    padded["input_ids"] = torch.cat([single["input_ids"], torch.tensor([[7, 9, 11]])], dim=1)
    padded["attention_mask"] = torch.tensor([[1, 0, 0, 0]])
    again, _ = kronecker_ggn(module, [padded], torch.device("cpu"))
    for key, values in eigenvalues.items():
        torch.testing.assert_close(again[key], values, rtol=1e-3, atol=1e-6)


def test_kronecker_normal_is_the_dense_gaussian_of_its_covariance():
    torch.manual_seed(0)
    layers, rows, columns = 2, 3, 4
    loc, scale = torch.randn(layers, rows, columns), torch.rand(layers, rows, columns) + 0.2
    u, v = orthogonal(layers, rows), orthogonal(layers, columns)
    law = kronecker_normal(loc, scale, u, v)
    covariances = torch.stack([torch.kron(u[i], v[i]) @ torch.diag(scale[i].flatten() ** 2) @ torch.kron(u[i], v[i]).T
                               for i in range(layers)])
    dense = torch.distributions.MultivariateNormal(loc.flatten(1), covariances)
    values = law.sample((5,))
    torch.testing.assert_close(law.log_prob(values), dense.log_prob(values.flatten(2)), rtol=1e-4, atol=1e-4)
    draws = law.sample((40000,)).flatten(2)
    empirical = torch.stack([torch.cov(draws[:, i].T) for i in range(layers)])
    torch.testing.assert_close(empirical, covariances, rtol=0.0, atol=0.05)  # 40000 draws
    assert law.batch_shape == (layers,) and law.event_shape == (rows, columns)


class LinearRegressor(nn.Module):
    """f(x) = query(x): with LoRA on ``query`` (W0 = 0, A = I) the output is B x, linear in B."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.query = nn.Linear(features, 1, bias=False)
        nn.init.zeros_(self.query.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.query(x)


def dense_covariance(guide) -> torch.Tensor:
    """A fitted Laplace guide's posterior covariance over its first layer's factor, row-major flattened."""
    variance = guide.precision[0].reciprocal().flatten()
    if guide.basis is None:
        return torch.diag(variance)
    rotation = torch.kron(guide.basis[0][0], guide.basis[1][0])  # U (x) V: eigenvectors of G (x) A
    return rotation @ torch.diag(variance) @ rotation.T


@pytest.mark.parametrize("curvature", ["diagonal", "kron"])
def test_laplace_is_the_exact_posterior_of_a_linear_gaussian_model(curvature):
    """With orthogonal features the GGN is the exact (diagonal) Hessian; with any features, one output and one
    token per example, K-FAC is the exact (full) Hessian.  So the Laplace posterior over B, its linearized
    predictive and its evidence are the conjugate model's exactly."""
    torch.manual_seed(0)
    features, noise, delta = 3, 0.5, 2.0
    if curvature == "diagonal":
        x = torch.linalg.qr(torch.randn(8, features, dtype=torch.float64))[0].float() * torch.tensor([3.0, 1.0, 0.5])
    else:  # correlated features: the diagonal would miss the posterior's correlations
        x = torch.randn(8, features) @ torch.tensor([[1.0, 0.8, 0.0], [0.0, 1.0, -0.6], [0.0, 0.0, 0.7]])
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + noise * torch.randn(8)
    spec = PriorSpec(family="laplace", targets=("query",), rank=features, alpha=float(features), stochastic=("B",),
                     prior_precision=delta, curvature=curvature)
    likelihood = GaussianLikelihood(noise, learn_scale=False)
    module = bayesian_lora_from_model(LinearRegressor(features), spec, num_data=8, likelihood=likelihood).eval()
    (site,) = module.sites
    a_site = site.parameter.replace("lora_B", "lora_A")
    module.network.get_parameter(a_site).data.copy_(torch.eye(features))
    precision = x.T @ x / noise**2 + delta * torch.eye(features)  # the conjugate posterior
    posterior_mean = torch.linalg.solve(precision, x.T @ y / noise**2)
    module._layers[site.parameter].weight.data.copy_(posterior_mean[None])
    loader = [{"x": x[:5], "labels": y[:5], "idx": torch.arange(5)},
              {"x": x[5:], "labels": y[5:], "idx": torch.arange(5, 8)}]

    record = module.fit_posterior(loader, torch.device("cpu"))
    (guide,) = module.group_guides.values()
    torch.testing.assert_close(dense_covariance(guide), torch.linalg.inv(precision), rtol=1e-4, atol=1e-6)
    assert record["prior_precision"] == delta and not module.point_estimate and module.linearized
    if curvature == "kron":
        assert precision.inverse().triu(1).abs().max() > 0.01  # the posterior's correlations are there

    test = torch.randn(4, features)
    result = predict(module, [{"x": test, "labels": torch.zeros(4), "idx": torch.arange(4)}], num_samples=20000)
    exact_var = torch.einsum("nd,de,ne->n", test, torch.linalg.inv(precision), test)
    torch.testing.assert_close(result["predictive"], test @ posterior_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result["mean"], test @ posterior_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result["predictive_var"], exact_var, rtol=0.05, atol=1e-4)  # 20000 draws
    _, covariance = linear_output_covariance(module, {"x": test}, {g.key: 1 / module.group_guides[g.key].precision
                                                                   for g in module.groups},
                                             {g.key: guide.basis for g in module.groups} if guide.basis else None)
    torch.testing.assert_close(covariance[:, 0, 0], exact_var, rtol=1e-4, atol=1e-6)

    # the evidence: log p(D | theta*) + log_evidence(delta) = log N(y; 0, sigma^2 I + X X^T / delta)
    log_likelihood = torch.distributions.Normal(x @ posterior_mean, noise).log_prob(y).sum()
    laplace = float(log_likelihood) + log_evidence(delta, guide.precision.double().numpy().ravel() - delta,
                                                   float(posterior_mean.double().square().sum()))
    marginal = torch.distributions.MultivariateNormal(torch.zeros(8), noise**2 * torch.eye(8) + x @ x.T / delta)
    exact = marginal.log_prob(y)
    assert laplace == pytest.approx(float(exact), abs=1e-3)


def test_the_chosen_prior_precision_maximizes_the_evidence():
    torch.manual_seed(0)
    ggn, theta = torch.rand(500) * 50, torch.randn(500) * 0.3
    best = optimal_prior_precision(ggn, theta)
    h, norm = ggn.double().numpy(), float(theta.double().square().sum())
    assert log_evidence(best, h, norm) >= max(log_evidence(best * f, h, norm) for f in (0.9, 1.1, 0.5, 2.0))
    # the stationarity condition: ||theta||^2 = P / delta - sum 1 / (h + delta)
    assert norm == pytest.approx(500 / best - float((1 / (h + best)).sum()), rel=1e-3)


@pytest.mark.parametrize("curvature", ["diagonal", "kron"])
def test_a_fitted_laplace_posterior_saves_and_predicts_the_same(tmp_path, monkeypatch, curvature):
    module = laplace_module(2, curvature=curvature)
    data = batches(2)
    assert module.point_estimate and not module.linearized  # before the fit: plain LoRA
    record = module.fit_posterior(data, torch.device("cpu"))
    assert record["prior_precision"] > 0 and module.linearized and not module.point_estimate
    first = predict(module, data, num_samples=4)
    assert torch.allclose(first["predictive"].sum(-1), torch.ones(8))
    assert first["draws"].shape == (8, 4, 2)
    # the probit predictive is less confident than the trained weights' wherever the outputs are uncertain
    assert (first["predictive"].max(-1).values <= first["mean"].max(-1).values + 1e-6).all()
    save_adapter(module, tmp_path / "laplace", "unused", num_labels=2)
    monkeypatch.setattr(adapters, "load_classifier", lambda model, num_labels: (tiny_bert(num_labels), None))
    loaded, _ = load_adapter(tmp_path / "laplace")
    torch.testing.assert_close(predict(loaded, data, 4)["predictive"], first["predictive"])


def test_laplace_refuses_a_likelihood_without_curvature_and_bad_declarations():
    class Unknown(nn.Module):  # no ggn_outputs: the curvature cannot be fitted
        regression = False

    spec = load_prior("laplace")
    with pytest.raises(ValueError, match="the likelihood is a Unknown"):
        bayesian_lora_from_model(tiny_bert(2), spec, num_data=4, likelihood=Unknown())
    with pytest.raises(ValueError, match="predictive = 'mean'"):
        spec.replace(predictive="mean")
    with pytest.raises(ValueError, match="prior_precision = -1"):
        spec.replace(prior_precision=-1.0)
    with pytest.raises(ValueError, match="curvature = 'full'; allowed: diagonal, kron"):
        spec.replace(curvature="full")
    from monteclora_pyro.likelihoods import TokenLikelihood

    with pytest.raises(ValueError, match="curvature = 'kron' averages"):
        bayesian_lora_from_model(tiny_bert(2), load_prior("laplace_kron"), num_data=4, likelihood=TokenLikelihood())


def test_sampled_laplace_draws_spread_around_the_mean():
    module = laplace_module(2, predictive="sampled")
    module.fit_posterior(batches(2), torch.device("cpu"))
    assert not module.linearized
    draws = [module.posterior_draw() for _ in range(400)]
    name = module.sites[0].parameter
    values = torch.stack([d[name] for d in draws])
    (guide,) = [module.group_guides[g.key] for g in module.groups if g.sites[0].parameter == name]
    expected_std = guide.precision[0].rsqrt()
    assert math.isclose(float((values.std(0) / expected_std).mean()), 1.0, rel_tol=0.05)


@pytest.mark.parametrize(("num_labels", "curvature"), [(1, "diagonal"), (2, "diagonal"), (3, "diagonal"),
                                                       (1, "kron"), (3, "kron")])
def test_the_held_out_prior_precision_minimizes_the_linearized_predictives_held_out_nll(num_labels, curvature):
    module = laplace_module(num_labels, prior_precision_by="holdout", curvature=curvature)
    train, held_out = batches(num_labels)
    record = module.fit_posterior([train], torch.device("cpu"), holdout=[held_out])
    scores = record["holdout_nll_by_prior_precision"]
    assert record["prior_precision"] == float(min(scores, key=scores.get)) and len(scores) == 49
    # the score at the chosen delta is the NLL of the fitted posterior's own linearized predictive there
    variances = {g.key: module.group_guides[g.key].precision.reciprocal() for g in module.groups}
    bases = {g.key: module.group_guides[g.key].basis for g in module.groups} if curvature == "kron" else None
    outputs, covariance = linear_output_covariance(module, held_out, variances, bases)
    labels = held_out["labels"]
    if num_labels == 1:
        sd = (covariance[:, 0, 0] + module.likelihood.log_scale.detach().exp() ** 2).sqrt()
        nll = -torch.distributions.Normal(outputs[:, 0], sd).log_prob(labels).mean()
    else:
        probabilities = module.likelihood.linearized_predictive(outputs, covariance, 1)["predictive"]
        nll = -probabilities.log().gather(1, labels[:, None]).mean()
    assert scores[f"{record['prior_precision']:.3g}"] == pytest.approx(float(nll), rel=1e-4)


def test_a_held_out_prior_precision_needs_held_out_rows_and_a_linearized_head():
    from monteclora_pyro.likelihoods import TokenLikelihood
    from monteclora_pyro.tasks.glue.settings import GlueRunConfig

    spec = load_prior("laplace").replace(prior_precision_by="holdout")
    assert spec.needs_holdout and not load_prior("laplace").needs_holdout
    with pytest.raises(ValueError, match="prior_precision_by = 'median'; allowed: evidence, holdout"):
        spec.replace(prior_precision_by="median")
    with pytest.raises(ValueError, match="allowed with it: linearized"):
        spec.replace(predictive="sampled")
    with pytest.raises(ValueError, match="causal LM's is by finite differences"):
        bayesian_lora_from_model(tiny_bert(2), spec, num_data=4, likelihood=TokenLikelihood())
    with pytest.raises(ValueError, match="laplace_holdout' chooses its prior precision on held-out training rows; "
                                         "holdout_fraction = 0.0"):
        GlueRunConfig(task="sst2", prior="laplace_holdout", holdout_fraction=0.0).resolved()
    module = laplace_module(2, prior_precision_by="holdout")
    with pytest.raises(ValueError, match="needs held-out training rows"):
        module.fit_posterior(batches(2), torch.device("cpu"))
