"""Command lines generated from a run configuration dataclass, so each setting is declared once.

Every field becomes ``--field-name`` with the field's default and its ``help`` metadata; the value
type comes from the field's ``type`` metadata (e.g. :func:`~monteclora_pyro.cli_types.positive_float`,
so a bad value fails at parse time naming the argument) or else from its annotation.  Booleans get
``--name / --no-name``.  Values are validated again when the configuration is resolved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["add_config_arguments", "config_values", "option", "resolve_or_exit", "run_or_exit"]

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


def resolve_or_exit(parser: argparse.ArgumentParser, config: Any) -> Any:
    """``config.resolved()``, or the parser's usage error naming the bad value."""
    try:
        return config.resolved()
    except ValueError as error:
        parser.error(str(error))


def run_or_exit(config: Any, script: str) -> dict[str, Any]:
    """Run a resolved configuration for a command line: an error found once the data or model is read
    exits with one line, Ctrl-C with how to resume.  Ranks other than 0 of a multi-process run get {}."""
    import datasets  # the heavy imports wait until the arguments are known to be good

    datasets.disable_progress_bars()
    print("config:", json.dumps(dataclasses.asdict(config), sort_keys=True), flush=True)
    try:
        return config.run()
    except (ValueError, FloatingPointError) as error:
        sys.exit(f"{script}: error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"{script}: interrupted; checkpoint in {config.checkpoint_path()}: run the same command "
                 "with --resume to continue")
