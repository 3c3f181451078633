"""Settings declared once: a dataclass field carries its help, value kind, choices and the other names it
answers to (:func:`option`).

The same declaration checks a value given in Python (:func:`check_options`, from a settings class's
``__post_init__``), parses it from a command line (:func:`add_config_arguments`: ``--lr``, also
``--learning_rate`` as in the Hugging Face examples) and reads it from a TOML or YAML file
(:func:`parse_arguments` with ``--config``), so a bad value fails the same way from each, naming the value
and what is allowed.  Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..kinds import InvalidValue, Kind

__all__ = ["add_config_arguments", "check_options", "config_values", "option", "parse_arguments", "read_config_file",
           "redefault", "resolve_or_exit"]


def option(default: Any, help: str, kind: Kind | None = None, choices: Iterable[str] | None = None,
           aliases: Iterable[str] = ()) -> Any:
    """A dataclass field that carries its command-line help, value kind, choices and ``aliases`` (other flags it
    answers to, e.g. the Hugging Face examples' ``--learning_rate``)."""
    metadata = {"help": help, "kind": kind, "choices": tuple(choices) if choices else None,
                "aliases": tuple(aliases)}
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
        aliases = [f for f in dict.fromkeys(["--" + field.name, *field.metadata.get("aliases", ())]) if f != flag]
        declared = [f for f in field.metadata.get("aliases", ()) if "_" in f]
        help_text = field.metadata["help"] + (f" (also {', '.join(declared)})" if declared else "")
        if str(field.type) == "bool":
            options = {"dest": field.name, "action": argparse.BooleanOptionalAction}
        else:
            shown = "" if field.default is None else " (default: %(default)s)"  # a command's set_defaults shows
            help_text += shown
            options = {"dest": field.name, "type": _argument_type(field), "choices": field.metadata.get("choices")}
        parser.add_argument(flag, default=field.default, help=help_text, **options)
        for alias in aliases:  # the same setting under another name: errors name the flag given, --help one
            parser.add_argument(alias, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **options)


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


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML (``.toml``) or YAML (``.yaml``, ``.yml``) file: a flat table of names to values."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        if path.suffix == ".toml":
            with path.open("rb") as handle:
                values = tomllib.load(handle)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(path.read_text()) or {}
        else:
            raise ValueError(f"config file {str(path)!r}: give a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    except ImportError:
        raise ValueError("a YAML config file needs PyYAML (pip install pyyaml)") from None
    except Exception as error:  # yaml.YAMLError, imported lazily
        if type(error).__module__.startswith("yaml"):
            raise ValueError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        raise
    if not isinstance(values, dict):
        raise ValueError(f"config file {str(path)!r} must hold a table of settings (name = value)")
    return values


def _config_defaults(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The file's settings as the parser's defaults, each name as any of its flags (``lr``, ``learning_rate``,
    ``learning-rate``) and each value checked as the command line checks it."""
    by_name = {flag.lstrip("-").replace("-", "_"): action for action in parser._actions
               for flag in action.option_strings if flag.startswith("--") and not flag.startswith(("--no-", "--no_"))
               and action.dest not in ("help", "config")}  # a switch by its own name: progress = false
    defaults = {}
    for name, value in read_config_file(path).items():
        action = by_name.get(str(name).replace("-", "_"))
        if action is None:
            raise ValueError(f"config file {path!r}: {name!r} is not a setting of this command (see --help)")
        if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
            if not isinstance(value, bool):
                raise ValueError(f"config file {path!r}: {name} = {value!r} must be true or false")
        elif value is not None:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            try:
                value = action.type(text) if action.type else text
            except argparse.ArgumentTypeError as error:
                raise ValueError(f"config file {path!r}: {name}: {error}") from None
            if action.choices and value not in action.choices:
                raise ValueError(f"config file {path!r}: {name} = {value!r}; allowed: {', '.join(action.choices)}")
        defaults[action.dest] = value
    return defaults


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--config FILE``: a TOML or YAML file of settings, read first, so a flag
    given on the command line wins over the file's value."""
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a TOML or YAML file of settings (any flag's name = value); flags given win")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        try:
            parser.set_defaults(**_config_defaults(parser, known.config))
        except ValueError as error:
            parser.error(str(error))
    return parser.parse_args(argv)
