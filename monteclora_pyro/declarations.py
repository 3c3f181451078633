"""Prior declarations: the data in ``models/*.toml``, loaded and validated before any work starts.

A prior is declared, not programmed: a TOML file names the family and its hyperparameters, e.g.
``models/monteclora.toml``.  :class:`PriorSpec` holds what every family shares (targets, rank,
alpha, which factors are random); each registered family (:mod:`monteclora_pyro.priors`) declares
its own fields and checks in a subclass, which ``PriorSpec(family=...)`` and :func:`load_prior`
pick by the family's name.  Every bad value fails with the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["FACTORS", "PEERS", "PriorSpec", "available_priors", "load_prior"]

FACTORS = ("A", "B")
PEERS = ("peft-lora", "peft-monteclora")  # PEFT's methods, run beside ours (monteclora_pyro.peers)


def _declaration_class(family: Any, name: str = "") -> type[PriorSpec]:
    """The declaration class of a registered prior family."""
    from .priors import PRIOR_FAMILIES  # the registry imports the families' model code (torch, pyro)

    if family not in PRIOR_FAMILIES:
        where = f"prior {name!r}: " if name else "prior: "
        raise ValueError(f"{where}family = {family!r} is unknown; allowed: {', '.join(sorted(PRIOR_FAMILIES))}")
    return PRIOR_FAMILIES[family].declaration


@dataclass(frozen=True)
class PriorSpec:
    """A validated prior over the LoRA factors: the fields every family shares.

    ``PriorSpec(family="monteclora", ...)`` makes the family's own declaration class (a subclass with
    the family's hyperparameters).

    family: a registered prior family (``monteclora``, ``gaussian``, ``map``, ...).
    targets: module names that get LoRA sites (``query,value`` for BERT, ``q_proj,v_proj`` for LLaMA).
    rank, alpha: LoRA rank r and scaling numerator (the update is alpha / r * B A).
    stochastic: which factors are random variables: ``["A"]``, ``["B"]`` or ``["A", "B"]``.
    """

    family: str
    targets: tuple[str, ...] = ("query", "value")
    rank: int = 8
    alpha: float = 16.0
    stochastic: tuple[str, ...] = ("A",)
    name: str = field(default="", compare=False)

    def __new__(cls, *args: Any, **kwargs: Any) -> PriorSpec:
        if cls is PriorSpec:
            cls = _declaration_class(kwargs.get("family", args[0] if args else None), kwargs.get("name", ""))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "stochastic", tuple(self.stochastic))
        if type(self) is not _declaration_class(self.family, self.name):
            self._fail(f"family = {self.family!r} does not match the declaration class {type(self).__name__}")
        self._validate()

    @property
    def needs_holdout(self) -> bool:
        """Whether fitting the posterior needs held-out training rows (default: no)."""
        return False

    @property
    def default_guide(self) -> str:
        """The family's own guide."""
        from .priors import PRIOR_FAMILIES

        return PRIOR_FAMILIES[self.family].default_guide

    def replace(self, **changes: Any) -> PriorSpec:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def record(self) -> dict[str, Any]:
        """The declaration as a flat dict (``config.json``, a saved posterior); :meth:`from_record` reads it back."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_record(record: dict[str, Any]) -> PriorSpec:
        """A declaration from :meth:`record`; keys of other families (older records listed them all) are dropped."""
        allowed = {f.name for f in dataclasses.fields(_declaration_class(record.get("family")))}
        return PriorSpec(**{k: v for k, v in record.items() if k in allowed})

    def _fail(self, message: str) -> None:
        raise ValueError((f"prior {self.name!r}: " if self.name else "prior: ") + message)

    def _validate(self) -> None:
        """The checks of the shared fields and of every number field; a family adds its own."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "float" in str(f.type) and value is not None and (isinstance(value, bool) or
                                                                 not isinstance(value, (int, float))):
                self._fail(f"{f.name} = {value!r} must be a number")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            self._fail(f"targets = {list(self.targets)!r} must be a non-empty list of module names")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            self._fail(f"rank = {self.rank!r} must be an integer >= 1")
        if not self.alpha > 0:
            self._fail(f"alpha = {self.alpha!r} must be > 0")
        if not self.stochastic or any(f not in FACTORS for f in self.stochastic):
            self._fail(f"stochastic = {list(self.stochastic)!r} must be a non-empty subset of {list(FACTORS)}")
        if len(set(self.stochastic)) != len(self.stochastic):
            self._fail(f"stochastic = {list(self.stochastic)!r} names a factor twice")


def _bundled_dir() -> Path:
    return Path(str(resources.files("monteclora_pyro.models")))


def available_priors() -> list[str]:
    """Names of the prior declarations shipped in ``models/``."""
    return sorted(p.stem for p in _bundled_dir().glob("*.toml"))


def load_prior(name_or_path: str | Path, **overrides: Any) -> PriorSpec:
    """Load a declaration by bundled name (``monteclora``) or TOML path, with field overrides (None: keep)."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        candidate = _bundled_dir() / f"{name_or_path}.toml"
        if not candidate.exists():
            raise ValueError(
                f"prior {str(name_or_path)!r} is neither a bundled prior ({', '.join(available_priors())}) "
                "nor a path to a .toml file"
            )
        path = candidate
    elif not path.is_file():
        raise ValueError(f"prior file {str(path)!r} does not exist")
    with path.open("rb") as handle:
        try:
            data = tomllib.load(handle)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"prior file {str(path)!r} is not valid TOML: {error}") from error
    if "family" not in data:
        raise ValueError(f"prior file {str(path)!r} must declare a family")
    declaration = _declaration_class(data["family"], path.stem)
    allowed = {f.name for f in dataclasses.fields(declaration)} - {"name"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"prior file {str(path)!r}: unknown keys {unknown}; family {data['family']!r} "
                         f"allows: {sorted(allowed)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    foreign = sorted(set(given) - allowed)
    if foreign:
        raise ValueError(f"prior {path.stem!r}: {foreign} are not settings of family {data['family']!r}; "
                         f"it has: {sorted(allowed)}")
    data.update(given)
    return declaration(name=path.stem, **data)
