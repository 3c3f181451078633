"""argparse value types shared by the experiment and benchmark scripts: bad values fail at parse time."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["positive_int", "nonnegative_int", "positive_float", "nonnegative_float", "optional", "number_list"]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be an integer >= 1")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be an integer >= 0")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return value


def nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """``kind``, or None for the words ``all``, ``same`` and ``none``."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("all", "same", "none") else kind(text)

    return parse


def number_list(kind: Callable[[str], float | int]) -> Callable[[str], list]:
    """A comma-separated list of values, each parsed by ``kind`` (e.g. ``positive_float``)."""

    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list: {error}") from error
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return values

    return parse
