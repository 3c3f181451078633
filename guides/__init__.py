"""Variational families (installed as ``monteclora_pyro.guides``).

Each module here defines one guide: an ``nn.Module`` built for one
:class:`~monteclora_pyro.lora_sites.SiteGroup` (equally shaped factor sites) that draws the group's
latents with ``pyro.sample`` under ``group.plate()``, with a leading layer dim on its parameters.
Register it with :func:`register_guide`; a new guide is a new file in this folder, picked up
automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["GUIDES", "register_guide", "build_group_guide"]

GUIDES: dict[str, type[nn.Module]] = {}


def register_guide(name: str, families: tuple[str, ...]) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a guide available by ``name`` for priors of the given ``families``."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        cls.guide_name = name  # type: ignore[attr-defined]
        cls.families = families  # type: ignore[attr-defined]
        GUIDES[name] = cls
        return cls

    return decorate


def build_group_guide(name: str, group: Any, spec: Any, **options: Any) -> nn.Module:
    """The guide ``name`` for one group of factor sites, after checking it fits the prior's family."""
    if name not in GUIDES:
        raise ValueError(f"guide {name!r} is unknown; available: {', '.join(sorted(GUIDES))}")
    cls = GUIDES[name]
    if spec.family not in cls.families:  # type: ignore[attr-defined]
        raise ValueError(
            f"guide {name!r} fits priors of family {' or '.join(cls.families)}, "  # type: ignore[attr-defined]
            f"not {spec.family!r} (prior {spec.name or spec.family!r})"
        )
    return cls(group, spec, **options)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
