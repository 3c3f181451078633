"""Prior families: each one registered object with its declaration, model statements, default guide,
posterior summaries and plot panels.

A family is an ``nn.Module`` subclass of :class:`PriorFamily`, registered with :func:`register_prior`;
a new family is a new file in this folder, picked up automatically (as guides are), and a TOML in
``models/`` declares a prior of it.  The model statements turn one
:class:`~monteclora_pyro.lora_sites.SiteGroup` and its factors' means (stacked along a leading layer
dim) into sampled factors, one statement per latent under the group's plate.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

__all__ = ["PRIOR_FAMILIES", "Panel", "PriorFamily", "build_prior", "register_prior"]


class Panel(NamedTuple):
    """One panel of ``plots/posterior.png``: a posterior variable reduced to one number per draw and layer.

    reduce: the reduction of the variable's ``xarray`` array (e.g. a mean over its ``rank`` dim).
    reference: where to draw a dotted reference line, given the posterior (e.g. the uniform weights' entropy).
    """

    variable: str
    title: str
    reduce: Callable[[Any], Any] = lambda values: values
    reference: Callable[[Any], float] | None = None


class PriorFamily(nn.Module):
    """A prior family.  Subclasses set:

    declaration: the :class:`~monteclora_pyro.declarations.PriorSpec` subclass of its fields and checks.
    default_guide: the name of its own guide (``guides/``).
    summary_dims: the extra dims of a summary (``{"sigma_diag": ("rank",)}``); others are one number per layer.
    panels: the :class:`Panel` objects of its summaries.
    summarizes_prior: whether :meth:`summaries` of the model's own (prior) draws describe the prior as those of
    the guide's describe the posterior (``posterior.nc`` then has a ``prior`` group).
    and implement :meth:`forward` (the model statements) and :meth:`summaries`.
    """

    name: ClassVar[str]
    declaration: ClassVar[type]
    default_guide: ClassVar[str]
    summary_dims: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    panels: ClassVar[tuple[Panel, ...]] = ()
    summarizes_prior: ClassVar[bool] = False  # its summaries of prior draws mean what the posterior's do

    def __init__(self, spec: Any) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, group: Any, means: torch.Tensor) -> torch.Tensor:
        """Sample the group's factors (layers x factor shape) given their means, inside the model."""
        raise NotImplementedError

    def check(self, groups: list) -> None:
        """Refuse, before any training, a declaration that cannot work on these factor sites (default: none)."""

    def check_likelihood(self, likelihood: nn.Module) -> None:
        """Refuse, before any training, an observation model the family cannot work with (default: none)."""

    # a family trained its own way (BLoB: the KL in a step of its own, flipout) overrides these
    kl_in_loss: ClassVar[bool] = True  # the KL is in the loss (the tempered ELBO); False: after_step takes it
    flipout: bool = False  # the factor draws enter by flipout (per-token sign flips)

    def separately_optimized(self, module: Any) -> list[nn.Parameter]:
        """Parameters the training loop's optimizer leaves to :meth:`after_step` (default: none)."""
        return []

    def after_step(self, module: Any, step: int, steps_per_epoch: int, rows_per_step: int, lr_scale: float
                   ) -> dict[str, Any]:
        """A second update after the loop's optimizer step (``lr_scale``: that step's learning-rate factor of the
        warm-up and decay schedule); what to record (default: nothing)."""
        return {}

    # a family fitted after training (the Laplace approximation) overrides these
    fitted_buffers: ClassVar[tuple[str, ...]] = ()  # buffers set by fit_posterior, saved with the posterior
    linearized: bool = False  # whether the predictive is the linearized model's (linearized_outputs)

    def fit_posterior(self, module: Any, loader: Any, device: torch.device, holdout: Any = None) -> dict[str, Any]:
        """Fit the posterior after training, on the training rows of ``loader`` (and what the declaration leaves
        to the held-out rows of ``holdout``, or None); what to record (default: nothing)."""
        return {}

    def linearized_outputs(self, module: Any, batch: Any, num_samples: int) -> dict[str, torch.Tensor]:
        """The linearized predictive on ``batch``: ``predictive`` and ``num_samples`` ``draws``."""
        raise NotImplementedError(f"prior family {self.name!r} has no linearized predictive")

    post_hoc: ClassVar[bool] = False  # the posterior is fitted or assembled after training, which saw no draws
    trains_as_map: ClassVar[bool] = False  # its training is plain LoRA's, its posterior fitted after: a grid fits
    # it to the trained map cell of the same settings instead of training again

    # a family whose posterior mixes point estimates trained one after the other (a LoRA ensemble) overrides these
    members: int = 1  # how many point estimates the pipeline trains

    def attach(self, module: Any) -> None:
        """Called once the method around this prior is built (default: nothing)."""

    def start_member(self, module: Any, member: int, seed: int) -> None:
        """Set the starting weights of member ``member`` (>= 1), drawn from ``seed``."""
        raise NotImplementedError(f"prior family {self.name!r} trains one point estimate, not members")

    def store_member(self, module: Any, member: int) -> None:
        """Keep the trained weights of member ``member`` (default: nothing to keep)."""

    def place(self, module: Any, factors: dict[str, Any]) -> dict[str, Any]:
        """Put what a posterior draw holds besides factor values in place; the factors left to draw (default: all)."""
        return factors

    def draw(self) -> dict[str, torch.Tensor] | None:
        """A posterior draw of the family's own, or None: the guide's (default)."""
        return None

    def predictive_draws(self, num_samples: int) -> list[dict[str, torch.Tensor]] | None:
        """The draws a predictive averages, when the family sets them (an ensemble: each member once), or None."""
        return None

    def summaries(self, group: Any, guide_sites: Mapping[str, dict], means: torch.Tensor) -> dict[str, torch.Tensor]:
        """One guide draw of the group's latents (``guide_sites``: trace nodes by name) reduced to a few numbers
        per layer (leading dim), for ``posterior.nc``."""
        raise NotImplementedError


PRIOR_FAMILIES: dict[str, type[PriorFamily]] = {}


def register_prior(name: str) -> Callable[[type[PriorFamily]], type[PriorFamily]]:
    """Class decorator: make a prior family available by ``name`` (the ``family`` of a declaration)."""

    def decorate(cls: type[PriorFamily]) -> type[PriorFamily]:
        cls.name = name
        PRIOR_FAMILIES[name] = cls
        return cls

    return decorate


def build_prior(spec: Any) -> PriorFamily:
    """The prior module of a declaration's family."""
    return PRIOR_FAMILIES[spec.family](spec)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
