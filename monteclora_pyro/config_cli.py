"""Command lines generated from a run configuration dataclass, so each setting is declared once.

Every field becomes ``--field-name`` with the field's default and its ``help`` metadata; the value
type comes from the field's ``type`` metadata (e.g. :func:`~monteclora_pyro.cli_types.positive_float`,
so a bad value fails at parse time naming the argument) or else from its annotation.  Booleans get
``--name / --no-name``.  Values are validated again when the configuration is resolved.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["add_config_arguments", "config_values", "option"]

_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def option(default: Any, help: str, type: Callable[[str], Any] | None = None,
           choices: Iterable[str] | None = None) -> Any:
    """A dataclass field that carries its command-line help, value type and choices."""
    metadata = {"help": help, "type": type, "choices": tuple(choices) if choices else None}
    return dataclasses.field(default=default, metadata=metadata)


def _value_type(field: dataclasses.Field) -> Callable[[str], Any]:
    if field.metadata.get("type") is not None:
        return field.metadata["type"]
    base = str(field.type).replace(" | None", "").strip()
    return _TYPES.get(base, str)


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, skip: Iterable[str] = ()) -> None:
    """Add one option per field of ``config_cls`` (except ``skip``) to ``parser``."""
    skipped = set(skip)
    for field in dataclasses.fields(config_cls):
        if field.name in skipped:
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        if str(field.type) == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
            continue
        shown = "" if field.default is None else f" (default: {field.default})"
        parser.add_argument(flag, type=_value_type(field), default=field.default,
                            choices=field.metadata.get("choices"), help=help_text + shown)


def config_values(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The parsed values that are fields of ``config_cls``."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return {k: v for k, v in vars(args).items() if k in names}
