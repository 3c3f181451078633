"""The composed engine: the tempered ELBO, gradients, frozen backbone, training, predictions."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from conftest import tiny_batch, tiny_bert
from torch.distributions import kl_divergence

from monteclora_pyro import (
    BayesianLoRA,
    TrainConfig,
    available_priors,
    bayesian_lora_from_model,
    load_prior,
    mc_dropout,
    paper_kl_weight,
    predict,
    train,
)
from monteclora_pyro.distributions import WishartCholesky
from monteclora_pyro.likelihoods import GaussianLikelihood

FAMILIES = [("monteclora", None), ("monteclora_scaled", None), ("gaussian", None), ("gaussian", "delta"), ("map", None)]


def make(prior: str = "monteclora", guide: str | None = None, num_data: int = 64, **overrides) -> BayesianLoRA:
    spec = load_prior(prior, rank=4, **overrides)
    return bayesian_lora_from_model(tiny_bert(), spec, num_data=num_data, num_labels=2, guide=guide)


def randomize_b(module: BayesianLoRA) -> None:
    """PEFT starts B at zero, where no gradient reaches A's posterior; move it off zero."""
    with torch.no_grad():
        for name, param in module.network.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)


def test_a_perturbation_scale_that_drowns_the_signal_is_refused_before_training():
    with pytest.raises(ValueError, match=r"perturbation_scale = 1e\+06 perturbs lora_A.4x32 by 9.8e\+06 times its "
                                         r"entries' initial spread 1/sqrt\(3 d\); over 100 the perturbations drown"):
        make("monteclora", perturbation_scale=1e6)  # the tiny BERT's factors have d = 32
    make("monteclora_scaled_ab", perturbation_scale=50.0)  # relative: 50 times the initial spread is allowed


def test_guide_must_fit_the_prior_family():
    with pytest.raises(ValueError, match=r"guide = 'monteclora' fits priors of family monteclora, not 'map'"):
        make("map", guide="monteclora")
    with pytest.raises(ValueError, match=r"guide = 'kfac' is unknown; available: blob, delta, laplace, mean_field, mo"):
        make("monteclora", guide="kfac")
    with pytest.raises(ValueError, match=r"guide = 'laplace' fits priors of family laplace, not 'monteclora'"):
        make("monteclora", guide="laplace")


@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
def test_loss_is_the_tempered_elbo_and_the_papers_loss(beta):
    """-ELBO_beta / N = mean NLL + (beta / N) KL; the paper's lambda is beta / N."""
    num_data = 64
    module = make(num_data=num_data, perturbation_scale=0.05)
    module.kl_weight = beta
    randomize_b(module)
    with torch.no_grad():
        for guide in module.group_guides.values():
            guide.log_scale.add_(torch.randn_like(guide.log_scale) * 0.3)
            guide.log_concentration.add_(torch.randn_like(guide.log_concentration))
    batch = tiny_batch()
    pyro.set_rng_seed(5)
    loss = module(batch)
    pyro.set_rng_seed(5)
    draw = module.posterior_draw()  # the same guide draw the loss used
    logits = module.network_output(batch, draw)
    nll = torch.nn.functional.cross_entropy(logits, batch["labels"])
    kl = sum(module.kl_terms().values())
    lam = paper_kl_weight(beta, num_data) / num_data**2  # = beta / N
    torch.testing.assert_close(loss, nll + lam * kl, rtol=1e-4, atol=1e-5)
    assert kl > 0


def test_every_kl_the_objective_uses_is_a_reference_kl():
    module = make(perturbation_scale=0.05)
    with torch.no_grad():
        for guide in module.group_guides.values():
            guide.log_scale.add_(0.4)
            guide.log_concentration.sub_(0.7)
    guide_trace, model_trace = module.latent_trace()
    terms = module.kl_terms()
    site = module.groups[0].name  # every latent carries a layer dim; the group's term sums the layers
    # Wishart: checked against Monte Carlo in test_distributions; here: the closed form is what is used
    wq, wp = guide_trace.nodes[f"{site}.sigma_tril"]["fn"], model_trace.nodes[f"{site}.sigma_tril"]["fn"]
    assert wq.batch_shape == wp.batch_shape == (len(module.sites),)
    torch.testing.assert_close(terms[f"{site}.sigma_tril"], kl_divergence(wq, wp).sum())
    dq, dp = guide_trace.nodes[f"{site}.weights"]["fn"], model_trace.nodes[f"{site}.weights"]["fn"]
    torch.testing.assert_close(terms[f"{site}.weights"], kl_divergence(
        torch.distributions.Dirichlet(dq.concentration), torch.distributions.Dirichlet(dp.concentration)).sum())
    assert terms[f"{site}.noise"] == 0  # q(Z) = p(Z)
    gaussian = make("gaussian")
    g_site = gaussian.groups[0]
    g_guide, g_model = gaussian.latent_trace()
    q, p = g_guide.nodes[g_site.name]["fn"], g_model.nodes[g_site.name]["fn"]
    expected = kl_divergence(torch.distributions.Normal(q.base_dist.loc, q.base_dist.scale),
                             torch.distributions.Normal(p.base_dist.loc, p.base_dist.scale)).sum()
    torch.testing.assert_close(gaussian.kl_terms()[g_site.name], expected)
    # MAP with a Normal prior: the "KL" is -log p(point estimate), i.e. weight decay
    map_module = make("gaussian", guide="delta")
    mean = map_module.factor_means(map_module.groups[0])
    expected_map = -torch.distributions.Normal(0.0, map_module.spec.prior_scale).log_prob(mean).sum()
    torch.testing.assert_close(map_module.kl_terms()[map_module.groups[0].name], expected_map)
    # the hyperprior on the perturbation scale: LogNormal q against the LogNormal hyperprior, per layer
    scaled = make("monteclora_scaled")
    with torch.no_grad():
        for guide in scaled.group_guides.values():
            guide.scale_loc.fill_(-0.8)
            guide.scale_log_scale.fill_(-1.5)
    h_site = f"{scaled.groups[0].name}.scale"
    h_guide, h_model = scaled.latent_trace()
    expected = kl_divergence(torch.distributions.LogNormal(torch.tensor(-0.8), torch.tensor(-1.5).exp()),
                             torch.distributions.LogNormal(torch.tensor(0.0), scaled.spec.scale_hyperprior_std))
    torch.testing.assert_close(scaled.kl_terms()[h_site], len(scaled.sites) * expected)
    assert h_guide.nodes[h_site]["fn"].has_rsample and expected > 0


def test_scale_init_starts_q_tau_at_its_median_and_leaves_the_hyperprior_alone():
    default, low = make("monteclora_scaled"), make("monteclora_scaled", scale_init=0.1)
    site = f"{low.groups[0].name}.scale"
    for module, median in ((default, 1.0), (low, 0.1)):
        pyro.set_rng_seed(0)
        draws = torch.stack([module.latent_trace()[0].nodes[site]["value"] for _ in range(400)])
        assert abs(draws.median().item() / median - 1) < 0.03, (median, draws.median())  # q's spread: 0.05 in log
        prior = module.latent_trace()[1].nodes[site]["fn"]
        torch.testing.assert_close(prior.loc, torch.zeros_like(prior.loc))  # the hyperprior's median stays 1


def _layer_independent(shape: torch.Size) -> torch.Tensor:
    """A fixed 'standard draw' that depends on a value's last two dims only (so not on its layer)."""
    if len(shape) < 2:
        return torch.full(shape, 0.3)
    rows, cols = shape[-2:]
    return torch.linspace(-1.5, 1.5, rows * cols).reshape(rows, cols).expand(shape)


@pytest.fixture
def fixed_draws(monkeypatch):
    """Every reparameterized draw made a deterministic, differentiable function of its parameters."""
    def normal(self, sample_shape=()):
        return self.loc + self.scale * _layer_independent(self._extended_shape(sample_shape))

    def dirichlet(self, sample_shape=()):
        return self.concentration / self.concentration.sum(-1, keepdim=True)

    def wishart(self, sample_shape=()):
        p = self.dim
        diag = (self.df[..., None] - torch.arange(p)).sqrt()
        bartlett = torch.tril(_layer_independent(self.scale_tril.shape), -1) + torch.diag_embed(diag)
        return self.scale_tril @ bartlett

    monkeypatch.setattr(torch.distributions.Normal, "rsample", normal)
    monkeypatch.setattr(torch.distributions.Dirichlet, "rsample", dirichlet)
    monkeypatch.setattr(WishartCholesky, "rsample", wishart)


@pytest.mark.parametrize("prior,guide", [*FAMILIES, ("monteclora_scaled_ab", None)])
def test_grouped_sites_give_the_per_site_loss_and_gradients(prior, guide, fixed_draws):
    """One statement per shape group under a plate is the same program as one per site."""
    torch.manual_seed(0)
    grouped = make(prior, guide, perturbation_scale=0.05) if prior == "monteclora" else make(prior, guide)
    per_site = bayesian_lora_from_model(tiny_bert(), grouped.spec, 64, 2, guide, group_by_shape=False)
    assert len(grouped.groups) < len(per_site.groups) == len(per_site.sites)
    randomize_b(grouped)
    with torch.no_grad():
        for param in grouped.group_guides.parameters():  # guides off their (layer-independent) start
            param.add_(0.3 * torch.randn_like(param))
    per_site.network.load_state_dict(grouped.network.state_dict())
    for group in grouped.groups:
        for i, site in enumerate(group.sites):
            for name, param in grouped.group_guides[group.key].named_parameters():
                per_site.group_guides[site.key].get_parameter(name).data.copy_(param.data[i:i + 1])
    batch = tiny_batch()
    losses = []
    for module in (grouped, per_site):
        module.eval()  # no dropout
        losses.append(module(batch))
        losses[-1].backward()
    torch.testing.assert_close(losses[0], losses[1])
    for name, param in per_site.network.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grouped.network.get_parameter(name).grad, msg=name)
    for group in grouped.groups:
        for name, param in grouped.group_guides[group.key].named_parameters():
            per_layer = [per_site.group_guides[site.key].get_parameter(name).grad for site in group.sites]
            torch.testing.assert_close(torch.cat(per_layer), param.grad, msg=f"{group.name}.{name}")


def test_likelihood_gradients_reach_every_learnable():
    module = make(perturbation_scale=0.05, stochastic=["A", "B"])
    module.kl_weight = 0.0  # likelihood only
    randomize_b(module)
    module(tiny_batch()).backward()
    missing = [n for n, p in module.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any("log_scale" in n for n in names) and any("log_concentration" in n for n in names)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)


@pytest.mark.parametrize("prior,guide", FAMILIES)
def test_training_lowers_the_loss_and_leaves_the_backbone_alone(prior, guide):
    module = make(prior, guide, num_data=32)
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    batches = [tiny_batch(32, seed=0)]
    config = TrainConfig(lr=1e-2, max_steps=60, warmup_ratio=0.0, progress=False, log_every=10)
    history = train(module, batches, config)
    assert sum(history.loss[-10:]) / 10 < sum(history.loss[:5]) / 5 - 0.05  # nats per example
    assert len(history.kl) == len(history.logged_steps) > 0
    for name, param in module.named_parameters():
        if name in frozen:
            torch.testing.assert_close(param, frozen[name], msg=f"backbone weight {name} changed")
    assert any(not torch.equal(p, trainable[n]) for n, p in module.named_parameters() if n in trainable)


def test_posterior_mean_merges_into_the_weights_and_predictive_averages_draws():
    module = make(perturbation_scale=0.2)
    randomize_b(module)
    batch = tiny_batch()
    module.eval()
    merged = module.merged_network().eval()
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "idx")}
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, module.network_output(batch), rtol=1e-4, atol=1e-5)
    loader = [batch, tiny_batch(seed=1)]
    result = predict(module, loader, num_samples=6)
    assert result["mean"].shape == result["predictive"].shape == (16, 2)
    torch.testing.assert_close(result["predictive"].sum(-1), torch.ones(16))
    assert not torch.allclose(result["predictive"], result["mean"])
    single = predict(module, loader, num_samples=1)
    assert not torch.allclose(single["predictive"], result["predictive"])


def test_kl_annealing_and_bad_train_values():
    with pytest.raises(ValueError, match=r"lr = -0.1 must be > 0"):
        TrainConfig(lr=-0.1)
    with pytest.raises(ValueError, match=r"max_steps = -1 must be an integer >= 0 or None"):
        TrainConfig(max_steps=-1)
    module = make(num_data=32)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    untrained = train(module, [tiny_batch(32)], TrainConfig(max_steps=0, progress=False))  # a post-hoc fit's run
    assert untrained.steps == 0 and all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    config = TrainConfig(lr=1e-3, max_steps=4, kl_anneal_steps=4, log_every=1, progress=False)
    history = train(module, [tiny_batch(32)], config)
    assert history.kl_weight == pytest.approx([0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("prior,guide", FAMILIES)
def test_loss_equals_pyros_trace_mean_field_elbo(prior, guide):
    """The engine's loss is TraceMeanField_ELBO's, value and gradients, on the same draw."""
    from pyro.infer import TraceMeanField_ELBO

    module = make(prior, guide, perturbation_scale=0.05) if prior == "monteclora" else make(prior, guide)
    module.kl_weight = 0.7
    randomize_b(module)
    module.eval()  # no dropout, so both see the same network
    batch = tiny_batch()
    params = [p for p in module.parameters() if p.requires_grad]
    pyro.set_rng_seed(11)
    ours = module(batch)
    ours_grads = torch.autograd.grad(ours, params, allow_unused=True)
    pyro.set_rng_seed(11)
    reference = TraceMeanField_ELBO().differentiable_loss(module.model, module.guide, batch) / module.num_data
    reference_grads = torch.autograd.grad(reference, params, allow_unused=True)
    torch.testing.assert_close(ours, reference)
    for a, b in zip(ours_grads, reference_grads, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("prior", available_priors())
def test_every_bundled_declaration_loads_and_trains(prior):
    module = make(prior, num_data=32)
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    history = train(module, [tiny_batch(32)], TrainConfig(lr=1e-2, max_steps=3, progress=False, log_every=1))
    assert len(history.loss) == 3 and all(math.isfinite(v) for v in history.loss)
    assert all(kl >= 0 for kl in history.kl) if module.spec.family == "monteclora" else history.kl
    changed = [n for n, p in module.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed


def test_variational_parameters_get_their_own_learning_rate():
    module = make("monteclora_scaled", num_data=32)
    variational = module.variational_parameters()
    assert variational and {id(p) for p in variational} <= {id(p) for p in module.parameters() if p.requires_grad}
    config = TrainConfig(lr=1e-4, variational_lr=5e-2, max_steps=1, warmup_ratio=0.0, progress=False)
    guide = next(iter(module.group_guides.values()))
    start = guide.log_concentration.detach().clone()
    randomize_b(module)
    train(module, [tiny_batch(32)], config)
    # Adam's first step moves every parameter by about its own learning rate
    moved = (guide.log_concentration.detach() - start).abs().max().item()
    assert moved == pytest.approx(5e-2, rel=0.05)
    with pytest.raises(ValueError, match=r"variational_lr = 0 must be > 0 or None"):
        TrainConfig(variational_lr=0)


def test_a_regression_noise_scale_learns_at_the_variational_rate():
    """At the LoRA weights' rate (1e-4) the noise scale would barely move; it is a log-scale like the guides'."""
    module = bayesian_lora_from_model(tiny_bert(num_labels=1), load_prior("map", rank=4), num_data=32,
                                      likelihood=GaussianLikelihood(2.0))
    assert any(p is module.likelihood.log_scale for p in module.variational_parameters())
    batch = tiny_batch(32) | {"labels": torch.randn(32)}
    start = module.likelihood.log_scale.detach().clone()
    train(module, [batch], TrainConfig(lr=1e-4, variational_lr=5e-2, max_steps=1, warmup_ratio=0.0, progress=False))
    assert (module.likelihood.log_scale.detach() - start).abs().item() == pytest.approx(5e-2, rel=0.05)


def test_epoch_callback_runs_after_each_pass_and_training_resumes():
    module = make(num_data=32)
    seen = []

    def on_epoch_end(epoch):
        seen.append((epoch, module.training))
        module.eval()

    batches = [tiny_batch(16, seed=0), tiny_batch(16, seed=1)]
    history = train(module, batches, TrainConfig(lr=1e-3, epochs=3, progress=False), on_epoch_end=on_epoch_end)
    assert history.steps == 6 and seen == [(1, True), (2, True), (3, True)]


def test_mc_dropout_averages_passes_with_dropout_on():
    module = make("map")
    randomize_b(module)
    loader = [tiny_batch(), tiny_batch(seed=1)]
    result = mc_dropout(module, loader, num_samples=5)
    assert result["draws"].shape == (16, 5, 2) and not module.training
    torch.testing.assert_close(result["mean"], result["draws"].mean(1))
    assert (result["draws"].std(1) > 0).any()  # the passes differ: dropout was on
    assert not any(m.training for m in module.modules())
    for layer in module.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    with pytest.raises(ValueError, match="MC dropout needs dropout layers with p > 0"):
        mc_dropout(module, loader, num_samples=2)


def test_divergence_stops_with_the_step_and_learning_rate():
    with pytest.raises(FloatingPointError, match=r"step \d+: the loss is nan \(lr = 1000.0\); lower the learning rate"):
        train(make(num_data=64), [tiny_batch(32)], TrainConfig(lr=1e3, variational_lr=None, max_steps=30,
                                                               progress=False))
    with pytest.raises(FloatingPointError, match=r"step \d+: the loss diverged \(median of the last 5 steps .*, "
                                                 r"over 10 times its start .*; lr = 1000.0\); lower the learning rate"):
        train(make("map", num_data=64), [tiny_batch(32)], TrainConfig(lr=1e3, max_steps=30, progress=False))
    annealed = make("gaussian", num_data=64, prior_scale=0.01)  # the loss grows with the KL weight, by design
    history = train(annealed, [tiny_batch(32)], TrainConfig(max_steps=24, kl_anneal_steps=20, progress=False))
    assert history.steps == 24 and max(history.loss) > 10 * history.loss[0]  # no divergence: its start is step 20's
    history = train(make("map", num_data=64), [tiny_batch(32)],  # the rule can be switched off
                    TrainConfig(lr=1e3, max_steps=30, progress=False, divergence_factor=0))
    assert history.steps == 30 and max(history.loss) > 10 * history.loss[0]


def test_a_non_finite_parameter_is_named():
    module = make("monteclora_scaled", num_data=32)
    guide = next(iter(module.group_guides.values()))
    guide.scale_loc.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    config = TrainConfig(lr=1e-3, max_steps=3, progress=False, grad_clip=float("inf"))
    before = guide.scale_loc.detach().clone()
    with pytest.raises(FloatingPointError, match=r"step 0: the gradient of parameter group_guides\.lora_A__4x32\."
                                                 r"scale_loc is non-finite \(lr = 0.001\)"):
        train(module, [tiny_batch(32)], config)
    assert torch.equal(guide.scale_loc.detach(), before)  # stopped before the step: the parameters are intact
