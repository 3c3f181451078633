"""Variational families (``guides/``): each module defines one guide, registered with :func:`register_guide`.

A guide is an ``nn.Module`` built for one :class:`~monteclora_pyro.lora_sites.SiteGroup` (equally
shaped factor sites) that draws the group's latents with ``pyro.sample`` under ``group.plate()``,
with a leading layer dim on its parameters.  A new guide is a new file in this folder, picked up
automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["GUIDES", "build_group_guide", "check_guide", "register_guide"]

GUIDES: dict[str, type[nn.Module]] = {}


def register_guide(name: str, families: tuple[str, ...], point_mass: bool | None = False
                   ) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a guide available by ``name`` for priors of the given ``families``.

    point_mass: every draw of the guide is the same (a point estimate), so a predictive needs one draw;
    None: the guide says so itself (a ``point_mass`` property, e.g. until a post-hoc fit).
    A guide may list ``fitted_buffers``: buffers set after training, saved with the posterior.
    """

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        cls.guide_name, cls.families = name, families  # type: ignore[attr-defined]
        if point_mass is not None:
            cls.point_mass = point_mass  # type: ignore[attr-defined]
        GUIDES[name] = cls
        return cls

    return decorate


def check_guide(name: str, spec: Any) -> type[nn.Module]:
    """The guide class ``name``, after checking that it fits the prior's family; ValueError names what does."""
    if name not in GUIDES:
        raise ValueError(f"guide = {name!r} is unknown; available: {', '.join(sorted(GUIDES))}")
    cls = GUIDES[name]
    if spec.family not in cls.families:  # type: ignore[attr-defined]
        raise ValueError(f"guide = {name!r} fits priors of family {' or '.join(cls.families)}, "  # type: ignore
                         f"not {spec.family!r} (prior {spec.name or spec.family!r}); use {spec.default_guide!r}")
    return cls


def build_group_guide(name: str, group: Any, spec: Any, **options: Any) -> nn.Module:
    """The guide ``name`` for one group of factor sites."""
    return check_guide(name, spec)(group, spec, **options)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
