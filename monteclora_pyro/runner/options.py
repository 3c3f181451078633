"""Settings declared once: a dataclass field carries its help, value kind and choices (:func:`option`).

The same declaration checks a value given in Python (:func:`check_options`, from a settings class's
``__post_init__``) and parses it from a command line (:func:`add_config_arguments`), so a bad value
fails the same way from either, naming the value and what is allowed.  Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["InvalidValue", "Kind", "add_config_arguments", "check_options", "config_values", "device", "fraction",
           "integer", "nonnegative_float", "nonnegative_int", "number_list", "option", "optional", "positive_float",
           "positive_int", "real", "redefault", "resolve_or_exit", "text"]


class InvalidValue(argparse.ArgumentTypeError, ValueError):
    """A value outside its kind: argparse reports it for its argument, Python callers catch a ValueError."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Kind:
    """What values a setting takes: how text becomes one, which Python values are of the kind, which are allowed."""

    convert: Callable[[str], Any]
    accepts: Callable[[Any], bool]
    test: Callable[[Any], bool]
    allowed: str

    def __call__(self, text: str) -> Any:
        """The value of ``text`` (argparse's ``type``)."""
        try:
            value = self.convert(text)
        except ValueError:
            raise InvalidValue(f"{text!r} is not {self.allowed}") from None
        if not self.test(value):
            raise InvalidValue(f"{value} must be {self.allowed}")
        return value

    def check(self, name: str, value: Any) -> None:
        if not (self.accepts(value) and self.test(value)):
            raise InvalidValue(f"{name} = {value!r} must be {self.allowed}")


positive_int = Kind(int, _is_int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = Kind(int, _is_int, lambda v: v >= 0, "an integer >= 0")
integer = Kind(int, _is_int, lambda v: True, "an integer")
positive_float = Kind(float, _is_number, lambda v: v > 0, "> 0")
nonnegative_float = Kind(float, _is_number, lambda v: v >= 0, ">= 0")
fraction = Kind(float, _is_number, lambda v: 0 <= v < 1, "in [0, 1)")
real = Kind(float, _is_number, lambda v: True, "a number")
text = Kind(str, lambda v: isinstance(v, str), lambda v: bool(v.strip()), "non-empty text")
_DEVICE = re.compile(r"auto|(cpu|cuda|mps|xpu|hpu|npu)(:\d+)?")
device = Kind(str, lambda v: isinstance(v, str), lambda v: bool(_DEVICE.fullmatch(v)),
              "a device: auto, cpu, cuda, cuda:0, mps, ...")
_NONE_WORDS = ("all", "same", "none")


def optional(kind: Kind) -> Kind:
    """``kind``, or None (also from the words ``all``, ``same`` and ``none``)."""
    return Kind(lambda text: None if text.strip().lower() in _NONE_WORDS else kind.convert(text),
                lambda v: v is None or kind.accepts(v), lambda v: v is None or kind.test(v),
                f"{kind.allowed} or None")


def number_list(kind: Kind) -> Callable[[str], list]:
    """A comma-separated list of values, each of ``kind`` (e.g. ``positive_float``)."""

    def parse(text: str) -> list:
        values = [kind(v) for v in text.split(",") if v.strip()]
        if not values:
            raise InvalidValue("the list is empty")
        return values

    return parse


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
