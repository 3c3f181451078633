"""Settings declared once: a dataclass field carries its help, value kind and choices (:func:`option`).

The same declaration checks a value given in Python (:func:`check_options`, from a settings class's
``__post_init__``) and parses it from a command line (:func:`add_config_arguments`), so a bad value
fails the same way from either, naming the value and what is allowed.  Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from ..kinds import InvalidValue, Kind

__all__ = ["add_config_arguments", "check_options", "config_values", "option", "redefault", "resolve_or_exit"]


def option(default: Any, help: str, kind: Kind | None = None, choices: Iterable[str] | None = None) -> Any:
    """A dataclass field that carries its command-line help, value kind and choices."""
    metadata = {"help": help, "kind": kind, "choices": tuple(choices) if choices else None}
    return dataclasses.field(default=default, metadata=metadata)


def redefault(cls: type, name: str, default: Any) -> Any:
    """The option ``name`` of settings class ``cls`` with another default (its help, kind and choices as declared)."""
    return dataclasses.field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def check_options(settings: Any) -> None:
    """Check every declared option of a settings instance; raises ValueError naming the first bad value."""
    for field in dataclasses.fields(settings):
        value, kind, choices = getattr(settings, field.name), field.metadata.get("kind"), field.metadata.get("choices")
        if kind is not None:
            kind.check(field.name, value)
        elif choices and value is not None and value not in choices:
            raise InvalidValue(f"{field.name} = {value!r} is unknown; allowed: {', '.join(choices)}")
        elif str(field.type) == "bool" and not isinstance(value, bool):
            raise InvalidValue(f"{field.name} = {value!r} must be true or false")


def _argument_type(field: dataclasses.Field) -> Callable[[str], Any]:
    if field.metadata.get("kind") is not None:
        return field.metadata["kind"]
    return {"int": int, "float": float}.get(str(field.type).replace(" | None", "").strip(), str)


def add_config_arguments(parser: argparse.ArgumentParser, settings_cls: type, skip: Iterable[str] = (),
                         only: Iterable[str] | None = None) -> None:
    """Add one option per field of ``settings_cls`` (those in ``only`` when given, except ``skip``) to ``parser``."""
    skipped, wanted = set(skip), None if only is None else set(only)
    for field in dataclasses.fields(settings_cls):
        if field.name in skipped or (wanted is not None and field.name not in wanted) or "help" not in field.metadata:
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata["help"]
        if str(field.type) == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
            continue
        shown = "" if field.default is None else f" (default: {field.default})"
        parser.add_argument(flag, type=_argument_type(field), default=field.default,
                            choices=field.metadata.get("choices"), help=help_text + shown)


def config_values(args: argparse.Namespace, settings_cls: type) -> dict[str, Any]:
    """The parsed values that are fields of ``settings_cls``."""
    names = {f.name for f in dataclasses.fields(settings_cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def resolve_or_exit(parser: argparse.ArgumentParser, settings_cls: type, values: dict[str, Any]) -> Any:
    """``settings_cls(**values).resolved()``, or the parser's usage error naming the bad value."""
    try:
        return settings_cls(**values).resolved()
    except ValueError as error:
        parser.error(str(error))
