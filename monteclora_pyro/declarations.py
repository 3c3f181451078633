"""Prior declarations: the data in ``models/*.toml``, loaded and validated before any work starts.

A prior is declared, not programmed: a TOML file names the family and its hyperparameters, e.g.
``models/monteclora.toml``.  :func:`load_prior` accepts a bundled name (the file stem) or a path.
Every bad value fails here with a message that names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

__all__ = ["DEFAULT_GUIDES", "FAMILIES", "PriorSpec", "available_priors", "load_prior"]

FAMILIES = ("monteclora", "gaussian", "map")
DEFAULT_GUIDES = {"monteclora": "monteclora", "gaussian": "mean_field", "map": "delta"}  # each family's own
FACTORS = ("A", "B")
_NUMBER_FIELDS = ("alpha", "wishart_df", "wishart_scale", "dirichlet_concentration", "perturbation_scale",
                  "scale_hyperprior_std", "cooperative_weight", "prior_scale", "init_posterior_scale")


@dataclass(frozen=True)
class PriorSpec:
    """A validated prior over the LoRA factors.

    family: ``monteclora`` (Wishart / Dirichlet hierarchy over Gaussian perturbations of the factor),
        ``gaussian`` (mean-field Normal(0, prior_scale) on the factor, as BLoB) or ``map`` (the factor
        is a point estimate; ``prior_scale`` = None means a flat prior, i.e. plain LoRA).
    targets: module names that get LoRA sites (``query,value`` for BERT, ``q_proj,v_proj`` for LLaMA).
    rank, alpha: LoRA rank r and scaling numerator (the update is alpha / r * B A).
    stochastic: which factors are random variables: ``["A"]``, ``["B"]`` or ``["A", "B"]``.
    num_components: N, the number of Monte Carlo components mixed by the Dirichlet weights.
    wishart_df: degrees of freedom of the Wishart on the r x r covariance (default r + 2; must be > r - 1).
    wishart_scale: prior mean of the covariance is wishart_scale * I (the scale matrix is that / df).
    dirichlet_concentration: symmetric Dirichlet concentration of the mixture weights (> 0).
    perturbation_scale: eps, the scale of the Gaussian perturbations (> 0).
    perturbation_relative: if true, eps is in units of the factor's initialization scale
        ``1 / sqrt(3 d)`` (the std of PEFT's default ``lora_A`` init, d = the factor's feature size), so
        eps = 1 perturbs the factor as much as its initial spread; false: eps is absolute (the paper).
    scale_hyperprior_std: s > 0 puts a hyperprior on the perturbation scale: per factor site a latent
        ``tau ~ LogNormal(0, s)`` multiplies eps, with its own LogNormal variational factor, so the
        data decide the scale; omitted: eps is a fixed constant (the paper).
    cooperative_weight: weight w >= 0 of the paper's optional cooperative term, log factor -w sum pi^2.
    prior_scale: standard deviation of the Normal prior of the ``gaussian`` and ``map`` families;
        omitted means a flat prior, allowed for ``map`` only (plain LoRA).
    init_posterior_scale: the starting standard deviation of the ``mean_field`` guide (BLoB: 0.05).
    """

    family: str
    targets: tuple[str, ...] = ("query", "value")
    rank: int = 8
    alpha: float = 16.0
    stochastic: tuple[str, ...] = ("A",)
    num_components: int = 8
    wishart_df: float | None = None
    wishart_scale: float = 1.0
    dirichlet_concentration: float = 1.0
    perturbation_scale: float = 1e-3
    perturbation_relative: bool = False
    scale_hyperprior_std: float | None = None
    cooperative_weight: float = 0.0
    prior_scale: float | None = None
    init_posterior_scale: float = 1e-3
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "stochastic", tuple(self.stochastic))
        self._validate()

    @property
    def df(self) -> float:
        """The Wishart degrees of freedom in force (r + 2 unless declared)."""
        return float(self.wishart_df) if self.wishart_df is not None else float(self.rank + 2)

    def replace(self, **changes: Any) -> PriorSpec:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def _validate(self) -> None:
        where = f"prior {self.name!r}: " if self.name else "prior: "

        def fail(message: str) -> None:
            raise ValueError(where + message)

        if self.family not in FAMILIES:
            fail(f"family = {self.family!r} is unknown; allowed: {', '.join(FAMILIES)}")
        for name in _NUMBER_FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                fail(f"{name} = {value!r} must be a number")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            fail(f"targets = {list(self.targets)!r} must be a non-empty list of module names")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            fail(f"rank = {self.rank!r} must be an integer >= 1")
        if not self.alpha > 0:
            fail(f"alpha = {self.alpha!r} must be > 0")
        if not self.stochastic or any(f not in FACTORS for f in self.stochastic):
            fail(f"stochastic = {list(self.stochastic)!r} must be a non-empty subset of {list(FACTORS)}")
        if len(set(self.stochastic)) != len(self.stochastic):
            fail(f"stochastic = {list(self.stochastic)!r} names a factor twice")
        n = self.num_components
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            fail(f"num_components = {n!r} must be an integer >= 1")
        if not self.df > self.rank - 1:
            fail(
                f"wishart_df = {self.df!r} must be > rank - 1 = {self.rank - 1} "
                f"(r + 2 = {self.rank + 2} is the default)"
            )
        if not self.wishart_scale > 0:
            fail(f"wishart_scale = {self.wishart_scale!r} must be > 0")
        if not self.dirichlet_concentration > 0:
            fail(f"dirichlet_concentration = {self.dirichlet_concentration!r} must be > 0")
        if not self.perturbation_scale > 0:
            fail(f"perturbation_scale = {self.perturbation_scale!r} must be > 0")
        if not isinstance(self.perturbation_relative, bool):
            fail(f"perturbation_relative = {self.perturbation_relative!r} must be true or false")
        if self.scale_hyperprior_std is not None and not self.scale_hyperprior_std > 0:
            fail(f"scale_hyperprior_std = {self.scale_hyperprior_std!r} must be > 0 (or omitted for a fixed eps)")
        if not self.init_posterior_scale > 0:
            fail(f"init_posterior_scale = {self.init_posterior_scale!r} must be > 0")
        if not self.cooperative_weight >= 0:
            fail(f"cooperative_weight = {self.cooperative_weight!r} must be >= 0")
        if self.prior_scale is None:
            if self.family == "gaussian":
                fail(
                    f"prior_scale is missing: family {self.family!r} needs a Normal prior scale > 0 "
                    "(a flat prior is for 'map')"
                )
        elif not self.prior_scale > 0:
            fail(f"prior_scale = {self.prior_scale!r} must be > 0 (or omitted for a flat 'map' prior)")


def _bundled_dir() -> Path:
    return Path(str(resources.files("monteclora_pyro.models")))


def available_priors() -> list[str]:
    """Names of the prior declarations shipped in ``models/``."""
    return sorted(p.stem for p in _bundled_dir().glob("*.toml"))


def load_prior(name_or_path: str | Path, **overrides: Any) -> PriorSpec:
    """Load a declaration by bundled name (``monteclora``) or TOML path, with optional field overrides."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        candidate = _bundled_dir() / f"{name_or_path}.toml"
        if not candidate.exists():
            raise ValueError(
                f"prior {str(name_or_path)!r} is neither a bundled prior ({', '.join(available_priors())}) "
                "nor a path to a .toml file"
            )
        path = candidate
    elif not path.exists():
        raise FileNotFoundError(f"prior file {str(path)!r} does not exist")
    with path.open("rb") as handle:
        try:
            data = tomllib.load(handle)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"prior file {str(path)!r} is not valid TOML: {error}") from error
    allowed = {f.name for f in dataclasses.fields(PriorSpec)} - {"name"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"prior file {str(path)!r}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    if "family" not in data:
        raise ValueError(f"prior file {str(path)!r} must declare a family ({', '.join(FAMILIES)})")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return PriorSpec(name=path.stem, **data)
