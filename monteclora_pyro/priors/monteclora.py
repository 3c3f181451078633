"""MonteCLoRA (arXiv 2411.04358): a Wishart / Dirichlet hierarchy over Gaussian perturbations of the factor.

Per group of factor sites (feature-major factors, d x r), independently per layer::

    L   ~ WishartCholesky(df, sqrt(scale / df) I)       site  <group>.sigma_tril   (Sigma = L L^T)
    pi  ~ Dirichlet(c 1_N)                               site  <group>.weights
    Z   ~ Normal(0, 1), shape d x r                      site  <group>.noise
    tau ~ LogNormal(0, s)     (only with a hyperprior)   site  <group>.scale        (else tau = 1)
    factor = mean + eps * tau * ||pi||_2 * Z L^T

The paper's estimator ``sum_n pi_n (mean + eps Z_n L^T)`` with N independent ``Z_n`` is, given ``pi``
and ``L``, the same Gaussian law as ``mean + eps ||pi||_2 Z L^T``: one noise draw replaces N
(``tests/test_priors.py`` checks it by Monte Carlo).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from ..declarations import PriorSpec
from ..distributions import Dirichlet, WishartCholesky
from . import Panel, PriorFamily, register_prior

__all__ = ["MAX_RELATIVE_SCALE", "MonteCLoRAPrior", "MonteCLoRASpec"]

MAX_RELATIVE_SCALE = 100.0  # the widest perturbation allowed, in units of a factor's initial spread


@dataclass(frozen=True)
class MonteCLoRASpec(PriorSpec):
    """The ``monteclora`` family's fields.

    num_components: N, the number of Monte Carlo components mixed by the Dirichlet weights.
    wishart_df: degrees of freedom of the Wishart on the r x r covariance (default r + 2; must be > r - 1).
    wishart_scale: prior mean of the covariance is wishart_scale * I (the scale matrix is that / df).
    dirichlet_concentration: symmetric Dirichlet concentration of the mixture weights (> 0).
    perturbation_scale: eps, the scale of the Gaussian perturbations (> 0).
    perturbation_relative: if true, eps is in units of the factor's initialization scale ``1 / sqrt(3 d)``
        (the std of PEFT's default ``lora_A`` init); false: eps is absolute (the paper).
    scale_hyperprior_std: s > 0 puts ``tau ~ LogNormal(0, s)`` per layer on the perturbation scale, with its own
        LogNormal variational factor, so the data decide the scale; omitted: eps is fixed (the paper).
    scale_init: the median q(tau) starts at (default 1, the hyperprior's median). Below 1 a wide hyperprior
        (a large eps) starts training at small perturbations and lets the ELBO widen them where the data allow.
    cooperative_weight: weight w >= 0 of the paper's optional cooperative term, log factor -w sum pi^2.
    learn_df: if true, q(Sigma) has degrees of freedom of its own per layer, learned with its scale (starting
        at the prior's), so the posterior of Sigma can be tighter than its prior; false: q keeps the prior's
        df (the paper), and the relative spread of Sigma_ii stays sqrt(2 / df) whatever the data say.
    """

    num_components: int = 8
    wishart_df: float | None = None
    wishart_scale: float = 1.0
    dirichlet_concentration: float = 1.0
    perturbation_scale: float = 1e-3
    perturbation_relative: bool = False
    scale_hyperprior_std: float | None = None
    scale_init: float = 1.0
    cooperative_weight: float = 0.0
    learn_df: bool = False

    @property
    def df(self) -> float:
        """The Wishart degrees of freedom in force (r + 2 unless declared)."""
        return float(self.wishart_df) if self.wishart_df is not None else float(self.rank + 2)

    def _validate(self) -> None:
        super()._validate()
        n = self.num_components
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            self._fail(f"num_components = {n!r} must be an integer >= 1")
        if not self.df > self.rank - 1:
            self._fail(f"wishart_df = {self.df!r} must be > rank - 1 = {self.rank - 1} "
                       f"(r + 2 = {self.rank + 2} is the default)")
        for name in ("wishart_scale", "dirichlet_concentration", "perturbation_scale"):
            if not getattr(self, name) > 0:
                self._fail(f"{name} = {getattr(self, name)!r} must be > 0")
        if not isinstance(self.perturbation_relative, bool):
            self._fail(f"perturbation_relative = {self.perturbation_relative!r} must be true or false")
        if self.scale_hyperprior_std is not None and not self.scale_hyperprior_std > 0:
            self._fail(f"scale_hyperprior_std = {self.scale_hyperprior_std!r} must be > 0 (or omitted for a fixed eps)")
        if not self.scale_init > 0:
            self._fail(f"scale_init = {self.scale_init!r} must be > 0 (the median q(tau) starts at)")
        if self.scale_init != 1.0 and self.scale_hyperprior_std is None:
            self._fail(f"scale_init = {self.scale_init!r} needs scale_hyperprior_std (without it tau is fixed at 1)")
        if not isinstance(self.learn_df, bool):
            self._fail(f"learn_df = {self.learn_df!r} must be true or false")
        if not self.cooperative_weight >= 0:
            self._fail(f"cooperative_weight = {self.cooperative_weight!r} must be >= 0")


def _entropy(weights):
    return -(weights * np.log(weights.clip(min=1e-30))).sum("component")


@register_prior("monteclora")
class MonteCLoRAPrior(PriorFamily):
    """Wishart / Dirichlet hierarchy over Gaussian perturbations of the factor mean."""

    declaration = MonteCLoRASpec
    default_guide = "monteclora"
    summary_dims = {"sigma_diag": ("rank",), "mixture_weights": ("component",)}
    summarizes_prior = True
    panels = (
        Panel("sigma_diag", "mean of diag(Sigma) over rank", lambda values: values.mean("rank")),
        Panel("perturbation_std", "perturbation std"),
        Panel("mixture_weights", "entropy of the mixture weights", _entropy,
              reference=lambda posterior: float(np.log(posterior.sizes["component"]))),  # uniform weights
    )

    def __init__(self, spec: MonteCLoRASpec) -> None:
        super().__init__(spec)
        self.register_buffer("scale_diag", torch.full((spec.rank,), (spec.wishart_scale / spec.df) ** 0.5),
                             persistent=False)
        self.register_buffer("concentration", torch.full((spec.num_components,), spec.dirichlet_concentration),
                             persistent=False)

    def forward(self, group, means: torch.Tensor) -> torch.Tensor:
        spec, layers = self.spec, len(group.sites)
        with group.plate():  # laws made at the plate's batch shape (expanding them is then free)
            wishart = WishartCholesky(spec.df, scale_diag=self.scale_diag.expand(layers, -1))
            tril = pyro.sample(f"{group.name}.sigma_tril", wishart)
            weights = pyro.sample(f"{group.name}.weights", Dirichlet(self.concentration.expand(layers, -1)))
            noise = pyro.sample(f"{group.name}.noise", group.standard_noise(means.device))
            scale = None
            if spec.scale_hyperprior_std is not None:
                hyperprior = dist.LogNormal(means.new_zeros(layers), spec.scale_hyperprior_std)
                scale = pyro.sample(f"{group.name}.scale", hyperprior)
            if spec.cooperative_weight > 0:
                pyro.factor(f"{group.name}.cooperative", -spec.cooperative_weight * weights.pow(2).sum(-1))
        return means + group.from_feature_major(self.perturbation(group, tril, weights, noise, scale))

    def check(self, groups: list) -> None:
        """Perturbations far wider than a factor's initial spread ``1 / sqrt(3 d)`` drown what the factor has
        learned: a perturbation scale over :data:`MAX_RELATIVE_SCALE` of them is refused."""
        for group in groups:
            relative = self.eps(group) * (3 * group.features) ** 0.5
            if relative > MAX_RELATIVE_SCALE:
                raise ValueError(f"perturbation_scale = {self.spec.perturbation_scale:g} perturbs {group.name} by "
                                 f"{relative:.3g} times its entries' initial spread 1/sqrt(3 d); over "
                                 f"{MAX_RELATIVE_SCALE:g} the perturbations drown the signal: lower it")

    def eps(self, group) -> float:
        """The perturbation scale of ``group``: eps, times ``1 / sqrt(3 d)`` when declared relative."""
        relative = (3 * group.features) ** -0.5 if self.spec.perturbation_relative else 1.0
        return self.spec.perturbation_scale * relative

    def perturbation(self, group, tril: torch.Tensor, weights: torch.Tensor, noise: torch.Tensor,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
        """The feature-major (..., d, r) perturbations ``eps * tau * ||pi||_2 * Z L^T`` (leading dims: layers)."""
        coefficient = self.eps(group) * weights.norm(dim=-1)
        if scale is not None:
            coefficient = coefficient * scale
        return coefficient[..., None, None] * (noise @ tril.mT)

    def summaries(self, group, guide_sites, means: torch.Tensor) -> dict[str, torch.Tensor]:
        """``sigma_diag`` (diagonal of Sigma = L L^T), ``mixture_weights`` (pi), ``perturbation_std`` (std of
        ``eps tau ||pi||_2 Z L^T`` over the factor's entries) and, with a hyperprior, ``hyper_scale`` (tau)."""
        tril = guide_sites[f"{group.name}.sigma_tril"]["value"]
        weights = guide_sites[f"{group.name}.weights"]["value"]
        noise = guide_sites[f"{group.name}.noise"]["value"]
        scale_site = guide_sites.get(f"{group.name}.scale")
        scale = None if scale_site is None else scale_site["value"]
        summaries = {"sigma_diag": tril.pow(2).sum(-1), "mixture_weights": weights,  # diag(L L^T)_i = sum_j L_ij^2
                     "perturbation_std": self.perturbation(group, tril, weights, noise, scale).flatten(1).std(-1)}
        if scale is not None:
            summaries["hyper_scale"] = scale
        return summaries
