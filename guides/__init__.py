"""Variational families (installed as ``monteclora_pyro.guides``).

Each module here defines one guide: an ``nn.Module`` built for one factor site that draws that
site's latents with ``pyro.sample``.  Register it with :func:`register_guide`; a new guide is a new
file in this folder, picked up automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["GUIDES", "register_guide", "build_site_guide"]

GUIDES: dict[str, type[nn.Module]] = {}


def register_guide(name: str, families: tuple[str, ...]) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a guide available by ``name`` for priors of the given ``families``."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        cls.guide_name = name  # type: ignore[attr-defined]
        cls.families = families  # type: ignore[attr-defined]
        GUIDES[name] = cls
        return cls

    return decorate


def build_site_guide(name: str, site: Any, spec: Any, **options: Any) -> nn.Module:
    """The guide ``name`` for one factor site, after checking it fits the prior's family."""
    if name not in GUIDES:
        raise ValueError(f"guide {name!r} is unknown; available: {', '.join(sorted(GUIDES))}")
    cls = GUIDES[name]
    if spec.family not in cls.families:  # type: ignore[attr-defined]
        raise ValueError(
            f"guide {name!r} fits priors of family {' or '.join(cls.families)}, "  # type: ignore[attr-defined]
            f"not {spec.family!r} (prior {spec.name or spec.family!r})"
        )
    return cls(site, spec, **options)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
