"""The one place that composes backbone, prior, guide and likelihood into a Pyro model / guide pair.

Objective (per training example, what :meth:`BayesianLoRA.forward` returns)::

    loss = -ELBO_beta / N,   ELBO_beta = sum_i E_q[log p(y_i | x_i, theta)] - beta * KL(q || p)

with N the training-set size (the likelihood's plate scales the minibatch to N) and ``beta`` the
explicit tempering (``kl_weight``; beta = 1 is the ELBO).  The paper's loss, ``mean cross-entropy +
lambda * KL``, is this objective with ``beta = lambda * N`` (:func:`paper_kl_weight`).

The estimator is Pyro's ``TraceMeanField_ELBO`` (one particle, analytic KLs) computed from the same
traces, without first evaluating the log density of every latent site that a closed-form KL then
replaces (``tests/test_engine.py`` checks equal losses and gradients).  Everything learnable is an
``nn.Parameter`` of this module (no Pyro param store), so ``state_dict()`` holds the whole state and
DDP can wrap it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyro
import torch
from peft import PeftModel
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import nn
from torch.distributions import kl_divergence

from .declarations import PriorSpec, load_prior
from .guides import build_group_guide
from .kinds import nonnegative_float, positive_int
from .likelihoods import build_likelihood
from .lora_method import LoRAMethod
from .lora_sites import factor_sites, group_sites, inject_lora, make_drawable
from .priors import build_prior

__all__ = ["BayesianLoRA", "bayesian_lora_from_model", "paper_kl_weight"]


def paper_kl_weight(paper_lambda: float, num_data: int) -> float:
    """The ELBO tempering beta equivalent to the paper's ``task loss + lambda * KL`` (beta = lambda N)."""
    return paper_lambda * num_data


class BayesianLoRA(LoRAMethod):
    """A frozen network with LoRA sites whose factors follow ``spec``, and its variational posterior.

    network: a PEFT-injected model (:func:`~monteclora_pyro.lora_sites.inject_lora`).
    spec: the prior declaration.  guide: a guide name from ``guides/`` (default: the family's own).
    likelihood: the observation model.  num_data: the training-set size N.
    kl_weight: beta, the explicit tempering of the KL (1 = the ELBO).
    autocast_dtype: e.g. ``torch.bfloat16`` to run the backbone under autocast on CUDA; samplers
    and KLs stay in fp32.
    group_by_shape: sample equally shaped sites together (False: one group per site, the reference
    the grouped program is tested against).
    """

    def __init__(
        self,
        network: PeftModel,
        spec: PriorSpec,
        likelihood: nn.Module,
        num_data: int,
        guide: str | None = None,
        kl_weight: float = 1.0,
        guide_options: Mapping[str, Any] | None = None,
        autocast_dtype: torch.dtype | None = None,
        group_by_shape: bool = True,
    ) -> None:
        super().__init__(network, likelihood, autocast_dtype)
        positive_int.check("num_data", num_data)
        nonnegative_float.check("kl_weight", kl_weight)
        self.spec = spec
        self.guide_name = guide or spec.default_guide
        make_drawable(network)  # a PEFT model made elsewhere too: every stochastic factor holds its draws
        self.sites = factor_sites(network, spec.stochastic)
        self.groups = group_sites(self.sites, by_shape=group_by_shape)
        self._layers = {s.parameter: network.get_submodule(s.parameter.removesuffix(".weight")) for s in self.sites}
        self.prior = build_prior(spec)
        self.prior.check(self.groups)
        self.prior.check_likelihood(likelihood)
        for layer in self._layers.values():
            layer.flipout = self.prior.flipout
        self.guide_options = dict(guide_options or {})
        self.group_guides = nn.ModuleDict(
            {g.key: build_group_guide(self.guide_name, g, spec, **self.guide_options) for g in self.groups}
        )
        self._validated = False
        self.num_data = num_data
        self.kl_weight = float(kl_weight)
        self.prior.attach(self)

    # ----------------------------------------------------------------- the probabilistic program
    def _tempered(self, kl_weight: float):
        """Scale every latent site (model and guide alike) by beta; beta = 0 masks the KL out."""
        return poutine.scale(scale=kl_weight) if kl_weight > 0 else poutine.mask(mask=False)

    def factor_means(self, group) -> torch.Tensor:
        """The group's PEFT factor weights (the posterior means), stacked along a leading layer dim."""
        return torch.stack([self._layers[site.parameter].weight for site in group.sites])

    def stacked_means(self) -> dict[str, torch.Tensor]:
        """{group key: :meth:`factor_means`}: stacked once per step, shared by the guide and the model."""
        return {group.key: self.factor_means(group) for group in self.groups}

    def sample_factors(self, means: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The model's prior statements; returns {PEFT parameter name: sampled factor}."""
        means = self.stacked_means() if means is None else means
        factors = {}
        for group in self.groups:
            values = self.prior(group, means[group.key])
            factors.update(zip((site.parameter for site in group.sites), values.unbind(0), strict=True))
        return factors

    def sample_guide(self, means: Mapping[str, torch.Tensor] | None = None) -> None:
        """The guide's statements for every group of factor sites."""
        means = self.stacked_means() if means is None else means
        for group in self.groups:
            self.group_guides[group.key](means[group.key])

    def model(self, batch: Mapping[str, torch.Tensor], kl_weight: float | None = None,
              means: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        with self._tempered(self.kl_weight if kl_weight is None else kl_weight):
            factors = self.sample_factors(means)
        output = self.network_output(batch, factors)
        return self.likelihood(output, batch.get("labels"), self.num_data, batch["idx"])

    def guide(self, batch: Mapping[str, torch.Tensor], kl_weight: float | None = None,
              means: Mapping[str, torch.Tensor] | None = None) -> None:
        with self._tempered(self.kl_weight if kl_weight is None else kl_weight):
            self.sample_guide(means)

    def forward(self, batch: Mapping[str, torch.Tensor], kl_weight: float | None = None) -> torch.Tensor:
        """-ELBO_beta / N for one minibatch (``batch["idx"]``: the rows' indices in the training set)."""
        means = self.stacked_means()
        if not self.prior.kl_in_loss:  # the family takes the KL in a step of its own (after_step)
            kl_weight = 0.0
        with pyro.validation_enabled(not self._validated):  # laws and values checked on the first step
            guide_trace = poutine.trace(self.guide).get_trace(batch, kl_weight, means)
            replayed = poutine.replay(self.model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(batch, kl_weight, means)
            log_likelihood, kl = [], []
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample" or site_is_subsample(site):  # a plate's subsample site is no latent
                    continue
                if site["is_observed"]:  # the likelihood (scaled by its plate) and any pyro.factor
                    terms, term = log_likelihood, site["fn"].log_prob(site["value"])
                elif guide_trace.nodes[name]["fn"] is site["fn"]:  # the guide keeps the prior's law: KL = 0
                    continue
                else:
                    terms, term = kl, _site_kl(guide_trace.nodes[name], site)
                terms.append(scale_and_mask(term, site["scale"], site["mask"]).sum())
        self._validated = True
        return (_total(kl) - _total(log_likelihood)) / self.num_data

    # ----------------------------------------------------------------- network and posterior
    def set_draws(self, factors: Mapping[str, torch.Tensor]) -> None:
        """Put ``factors`` ({PEFT parameter name: value}) in place of the PEFT weights; the others (and all
        of them, for ``{}``) are the posterior mean.  They stay until the next call, so a recomputed
        forward (gradient checkpointing) sees the same draw.  A draw of an ensemble names its member, whose
        weights the prior family puts in place."""
        factors = self.prior.place(self, dict(factors))
        for site in self.sites:
            self._layers[site.parameter].draw = factors.get(site.parameter)

    def posterior_draw(self) -> dict[str, torch.Tensor]:
        """One draw of every stochastic factor from the variational posterior (of an ensemble: a member)."""
        own = self.prior.draw()
        if own is not None:
            return own
        with poutine.block():
            guide_trace = poutine.trace(self.sample_guide).get_trace()
            with poutine.replay(trace=guide_trace):
                return {name: value.detach() for name, value in self.sample_factors().items()}

    def latent_trace(self) -> tuple[pyro.poutine.Trace, pyro.poutine.Trace]:
        """(guide trace, model trace) of the latent sites only, without running the network."""
        with poutine.block():
            guide_trace = poutine.trace(self.sample_guide).get_trace()
            model_trace = poutine.trace(poutine.replay(self.sample_factors, trace=guide_trace)).get_trace()
        return prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)

    def kl_terms(self) -> dict[str, torch.Tensor]:
        """Untempered KL(q || p) of each latent site (closed form where registered, else one-sample)."""
        guide_trace, model_trace = self.latent_trace()
        terms = {}
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] != "sample":
                continue
            terms[name] = _site_kl(guide_site, model_trace.nodes[name]).sum()
        return terms

    def kl_divergence(self) -> torch.Tensor:
        """The untempered KL(q || p) of every latent site together."""
        return sum(self.kl_terms().values())

    has_posterior = True  # a guide whose draws posterior.nc describes (a PEFT peer has none)

    @property
    def point_estimate(self) -> bool:
        """Whether the guide is a point mass (``delta``, or ``laplace`` before its fit) and no mixture of members
        replaces it: every draw is the same."""
        return self.prior.predictive_draws(1) is None and all(g.point_mass for g in self.group_guides.values())

    def predictive_draws(self, num_samples: int) -> list[dict[str, torch.Tensor]]:
        own = self.prior.predictive_draws(num_samples)
        return own if own is not None else super().predictive_draws(num_samples)

    @property
    def ensemble_size(self) -> int:
        return self.prior.members

    def start_member(self, member: int, seed: int) -> None:
        self.prior.start_member(self, member, seed)

    def store_member(self, member: int) -> None:
        self.prior.store_member(self, member)

    @property
    def post_hoc(self) -> bool:
        return self.prior.post_hoc

    @property
    def kl_in_loss(self) -> bool:
        return self.prior.kl_in_loss

    def separately_optimized(self) -> list[nn.Parameter]:
        return self.prior.separately_optimized(self)

    def after_step(self, step: int, steps_per_epoch: int, rows_per_step: int, lr_scale: float) -> dict[str, Any]:
        return self.prior.after_step(self, step, steps_per_epoch, rows_per_step, lr_scale)

    def fit_posterior(self, loader, device: torch.device, holdout=None) -> dict[str, Any]:
        """The prior family's post-hoc fit on the training rows (the Laplace approximation); what it records."""
        with torch.no_grad():
            return self.prior.fit_posterior(self, loader, device, holdout)

    @property
    def linearized(self) -> bool:
        return self.prior.linearized

    def linearized_outputs(self, batch: Mapping[str, torch.Tensor], num_samples: int) -> dict[str, torch.Tensor]:
        return self.prior.linearized_outputs(self, batch, num_samples)

    def fitted_state(self) -> dict[str, torch.Tensor]:
        """The buffers a post-hoc fit set (prior and guides' ``fitted_buffers``), by ``state_dict`` name."""
        modules = {"prior": self.prior} | {f"group_guides.{key}": g for key, g in self.group_guides.items()}
        return {f"{prefix}.{name}": getattr(m, name) for prefix, m in modules.items()
                for name in getattr(m, "fitted_buffers", ())}

    def variational_parameters(self) -> list[nn.Parameter]:
        """The guides' own parameters (scales, concentrations) and the likelihood's (a regression's noise
        scale), apart from the LoRA means and the head: scales that must move in log space faster than
        the LoRA weights' learning rate allows."""
        return [*self.group_guides.parameters(), *self.likelihood.parameters()]

    def guide_parameters(self) -> list[nn.Parameter]:
        return list(self.group_guides.parameters())


def _total(terms: list[torch.Tensor]) -> torch.Tensor | float:
    """The sum of scalar tensors, without adding a zero first (each add is an autograd node)."""
    total: torch.Tensor | float = terms[0] if terms else 0.0
    for term in terms[1:]:
        total = total + term
    return total


def _site_kl(guide_site: dict, model_site: dict) -> torch.Tensor:
    """KL(q || p) of one latent site: zero where the guide keeps the prior's law (one object, such as
    MonteCLoRA's noise), closed form where registered, else log q(z) - log p(z) at the draw (for a point
    mass, -log p at the point: MAP's penalty)."""
    q, p, value = guide_site["fn"], model_site["fn"], guide_site["value"]
    if q is p:
        return value.new_zeros(q.batch_shape)
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return q.log_prob(value) - p.log_prob(value)


def bayesian_lora_from_model(
    model: nn.Module,
    spec: PriorSpec | str | Path,
    num_data: int,
    num_labels: int | None = None,
    guide: str | None = None,
    kl_weight: float = 1.0,
    guide_options: Mapping[str, Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
    likelihood: nn.Module | None = None,
    group_by_shape: bool = True,
    lora_dropout: float = 0.0,
) -> BayesianLoRA:
    """The Bayesian model of ``model`` under a prior (a declaration, or a bundled name or TOML path).

    ``model``: a transformers (or torch) model, into which the LoRA sites the prior declares are injected,
    or a PEFT model of yours (``peft.get_peft_model``), whose LoRA configuration then sets the prior's
    targets, rank and alpha.  The likelihood is ``likelihood``, or that of a head with ``num_labels``
    outputs (:func:`build_likelihood`).  ``lora_dropout``: PEFT's dropout on the factors' input, for LoRA
    injected here (a PEFT model keeps its own).
    """
    if likelihood is None:
        if num_labels is None:
            raise ValueError("give num_labels (a classification or regression head) or a likelihood")
        likelihood = build_likelihood(num_labels)
    if not isinstance(spec, PriorSpec):
        spec = load_prior(spec)
    if isinstance(model, PeftModel):
        config = model.peft_config[model.active_adapter]
        targets = (config.target_modules,) if isinstance(config.target_modules, str) else config.target_modules
        targets = spec.targets if set(spec.targets) == set(targets) else tuple(sorted(targets))  # the declared order
        spec = spec.replace(rank=config.r, alpha=float(config.lora_alpha), targets=targets)
        network = model
    else:
        network = inject_lora(model, spec.targets, spec.rank, spec.alpha, lora_dropout=lora_dropout)
    return BayesianLoRA(network, spec, likelihood, num_data, guide, kl_weight, guide_options, autocast_dtype,
                        group_by_shape)
