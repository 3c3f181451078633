"""Kinds of values (an integer >= 1, a number in [0, 1), a device, ...): how text becomes a value and which
values are allowed, written once and used by the library's checks, the settings and the command lines.
A value outside its kind raises :class:`InvalidValue` (a ``ValueError``) naming it and what is allowed."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["InvalidValue", "Kind", "device", "fraction", "integer", "nonnegative_float", "nonnegative_int",
           "number_list", "optional", "positive_float", "positive_int", "real", "text"]


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


