"""LoRA sites on any Hugging Face (or plain torch) model, injected with PEFT.

PEFT owns the injection, merging and export; this module names the factors.  A :class:`FactorSite`
is one LoRA factor (``lora_A`` or ``lora_B``) of one adapted layer, named by its full module path
(the ``layer`` coordinates of ``posterior.nc``).  A :class:`SiteGroup` is a set of equally shaped
sites, sampled with one statement per latent under a plate over its layers, so a step costs a few
statements per shape, not per adapted module.

A sampled factor reaches the network through the factor's own linear map, a :class:`DrawnLinear`
holding the draw until the next one, so a forward that gradient checkpointing recomputes in the
backward pass sees the same draw.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from pyro import poutine
from torch import nn

from .distributions import Independent

__all__ = ["DrawnLinear", "FactorSite", "HEAD_MODULE_NAMES", "SiteGroup", "factor_sites", "group_sites", "inject_lora",
           "lora_config", "lora_settings", "make_drawable", "peft_model"]

# Task heads that stay trainable (point estimates) when present: BERT/RoBERTa, DistilBERT, LLaMA/GPT heads.
HEAD_MODULE_NAMES = ("classifier", "pre_classifier", "score")
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class FactorSite:
    """One LoRA factor of one adapted layer.

    name: full module path of the factor, e.g. ``encoder.layer.0.attention.self.query.lora_A``.
    parameter: the PEFT parameter's name in the wrapped network (``....lora_A.default.weight``).
    factor: ``"A"`` (shape r x d_in) or ``"B"`` (shape d_out x r).
    rank: r.  features: d_in for A, d_out for B.
    """

    name: str
    parameter: str
    factor: str
    rank: int
    features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rank, self.features) if self.factor == "A" else (self.features, self.rank)

    @property
    def key(self) -> str:
        """The name with dots replaced, usable as an ``nn.ModuleDict`` key."""
        return self.name.replace(".", "__")

    def to_feature_major(self, value: torch.Tensor) -> torch.Tensor:
        """The factor as (features x rank): rows are the vectors the rank-space covariance acts on."""
        return value.mT if self.factor == "A" else value

    def from_feature_major(self, value: torch.Tensor) -> torch.Tensor:
        return value.mT if self.factor == "A" else value


@dataclass(frozen=True)
class SiteGroup:
    """Equally shaped factor sites (same factor, rank and features), sampled together.

    name: the Pyro name of the group's latents (``<name>.sigma_tril``, ...): ``lora_A.8x384`` for a
    shape group, the site's own name for a group of one.  Latents carry a leading ``layer`` dim in
    the order of ``sites``.
    """

    name: str
    sites: tuple[FactorSite, ...]

    @property
    def factor(self) -> str:
        return self.sites[0].factor

    @property
    def rank(self) -> int:
        return self.sites[0].rank

    @property
    def features(self) -> int:
        return self.sites[0].features

    @property
    def shape(self) -> tuple[int, int]:
        return self.sites[0].shape

    @property
    def key(self) -> str:
        """The name with dots replaced, usable as an ``nn.ModuleDict`` key."""
        return self.name.replace(".", "__")

    def plate(self) -> pyro.plate:
        """The plate over the group's layers (dim -1 of every latent's batch shape).

        Made once and re-entered by every statement: a plate's constructor sends a Pyro message of its
        own (the subsample site, whole here), a fixed cost per group and step otherwise."""
        return self._plate

    @functools.cached_property
    def _plate(self) -> pyro.plate:
        with poutine.block():
            return pyro.plate(f"{self.name}.layers", len(self.sites))

    def standard_noise(self, device: torch.device) -> dist.Distribution:
        """N(0, I) over the group's (layers, features, rank) noise: it has no parameter, so it is made once
        per device and shared by the guide and the prior (one object in both traces: its KL is zero)."""
        if device not in self._noise:
            shape = (len(self.sites), self.features, self.rank)
            self._noise[device] = Independent(dist.Normal(torch.zeros((), device=device), 1.0).expand(shape), 2)
        return self._noise[device]

    @functools.cached_property
    def _noise(self) -> dict[torch.device, dist.Distribution]:
        return {}

    def to_feature_major(self, value: torch.Tensor) -> torch.Tensor:
        return self.sites[0].to_feature_major(value)

    def from_feature_major(self, value: torch.Tensor) -> torch.Tensor:
        return self.sites[0].from_feature_major(value)


def group_sites(sites: Sequence[FactorSite], by_shape: bool = True) -> list[SiteGroup]:
    """The sites in groups of equal shape (in order of first appearance), or one group per site."""
    if not by_shape:
        return [SiteGroup(site.name, (site,)) for site in sites]
    groups: dict[tuple[str, int, int], list[FactorSite]] = {}
    for site in sites:
        groups.setdefault((site.factor, *site.shape), []).append(site)
    return [SiteGroup(f"lora_{factor}.{rows}x{cols}", tuple(members))
            for (factor, rows, cols), members in groups.items()]


class DrawnLinear(nn.Linear):
    """A LoRA factor's linear map by the posterior draw it holds (``draw``), or by its weight when none is.

    With ``flipout`` (Wen et al. 2018, as BLoB uses it) the draw's deviation from the weight enters with random
    signs on each token's input and output, ``x W^T + ((x * r) (draw - W)^T) * s``: one draw, pseudo-independent
    perturbations per example."""

    draw: torch.Tensor | None = None
    flipout: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.draw is None or not self.flipout:
            return F.linear(x, self.weight if self.draw is None else self.draw, self.bias)
        mean = F.linear(x, self.weight, self.bias)
        signs_in = torch.empty_like(x).uniform_(-1, 1).sign()
        signs_out = torch.empty_like(mean).uniform_(-1, 1).sign()
        return mean + F.linear(x * signs_in, self.draw - self.weight) * signs_out


def _linear_leaf_names(model: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name})


def lora_config(model: nn.Module, targets: Sequence[str], rank: int, alpha: float,
                trainable_modules: Sequence[str] | None = None, lora_dropout: float = 0.0, **options) -> LoraConfig:
    """PEFT's ``LoraConfig`` for ``model``: LoRA (rank, alpha) at every linear module whose name ends in a
    target, dropout ``lora_dropout`` on the factors' input (PEFT's; none by default), and the task heads of
    :data:`HEAD_MODULE_NAMES` present in the model trained (unless ``trainable_modules`` says otherwise);
    ``options`` go to ``LoraConfig`` as they are.

    An unknown target raises ``ValueError`` listing the linear modules that exist.
    """
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(
            f"target modules {missing} not found in {type(model).__name__}; "
            f"its linear modules are: {', '.join(_linear_leaf_names(model))}"
        )
    if trainable_modules is None:
        leaf_names = {n.rsplit(".", 1)[-1] for n in names}
        trainable_modules = [h for h in HEAD_MODULE_NAMES if h in leaf_names]
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=lora_dropout,
                      modules_to_save=list(trainable_modules) or None, **options)


def inject_lora(
    model: nn.Module,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    trainable_modules: Sequence[str] | None = None,
    lora_dropout: float = 0.0,
) -> PeftModel:
    """Freeze ``model`` and add LoRA (:func:`lora_config`) whose factors can hold a posterior draw."""
    return make_drawable(peft_model(model, lora_config(model, targets, rank, alpha, trainable_modules, lora_dropout)))


def make_drawable(network: PeftModel) -> PeftModel:
    """Let the active adapter's LoRA factors hold a posterior draw: each ``lora_A`` / ``lora_B`` linear map
    becomes a :class:`DrawnLinear` (same parameters and names, so PEFT saves and merges it as before).

    A PEFT model made elsewhere (``get_peft_model``) passes through here too; what cannot hold a draw is an
    error naming it, never a factor that silently ignores its draws.
    """
    if not isinstance(network, PeftModel):
        raise ValueError(f"the network is a {type(network).__name__}, not a PEFT model; give a transformers model "
                         "(LoRA is added) or the output of peft.get_peft_model")
    adapter = network.active_adapter
    config = network.peft_config[adapter]
    if not isinstance(config, LoraConfig):
        raise ValueError(f"adapter {adapter!r} is a {type(config).__name__}; only LoRA adapters have factor sites")
    if getattr(config, "rank_pattern", None) or getattr(config, "alpha_pattern", None):
        raise ValueError(f"adapter {adapter!r} sets per-module ranks or alphas (rank_pattern, alpha_pattern); a prior "
                         "has one rank, so give every module the same r and lora_alpha")
    if getattr(config, "use_dora", False):
        raise ValueError(f"adapter {adapter!r} uses DoRA, whose magnitude reads the factors' weights directly, so a "
                         "posterior draw would not reach it; use plain LoRA (use_dora=False)")
    for name, module in network.named_modules():
        if name.endswith((f".lora_A.{adapter}", f".lora_B.{adapter}")) and not isinstance(module, DrawnLinear):
            if type(module) is not nn.Linear:
                raise ValueError(f"LoRA factor {name} is a {type(module).__name__}; only linear LoRA factors can "
                                 "hold a posterior draw (leave that module out of target_modules)")
            module.__class__ = DrawnLinear
    return network


def lora_settings(network: PeftModel) -> dict:
    """The active adapter's ``LoraConfig`` as JSON data, which ``LoraConfig(**settings)`` rebuilds."""
    config = network.peft_config[network.active_adapter]
    fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    data = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in config.to_dict().items() if k in fields}
    return json.loads(json.dumps(data, default=str))


def peft_model(model: nn.Module, config: LoraConfig) -> PeftModel:
    """``get_peft_model``, without the FutureWarning PEFT raises on every call by reading transformers'
    deprecated ``is_gradient_checkpointing`` (nothing a user can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def factor_sites(network: PeftModel, stochastic: Sequence[str]) -> list[FactorSite]:
    """The stochastic factor sites of the active adapter of a PEFT network, in module order."""
    adapter = network.active_adapter
    sites = []
    for name, param in network.named_parameters():
        for factor in stochastic:
            suffix = f".lora_{factor}.{adapter}.weight"
            if name.endswith(suffix):
                path = name.removeprefix(_PEFT_PREFIX).removesuffix(suffix)
                rank, features = (param.shape[0], param.shape[1]) if factor == "A" else (param.shape[1], param.shape[0])
                sites.append(FactorSite(f"{path}.lora_{factor}", name, factor, rank, features))
    if not sites:
        raise ValueError("the network has no LoRA factors; inject LoRA first (inject_lora)")
    return sites
