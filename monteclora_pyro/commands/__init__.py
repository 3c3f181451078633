"""The command lines, installed by pip as ``monteclora <command>`` (and ``monteclora-glue``,
``monteclora-commonsense``, ``monteclora-predict``); ``experiments/*.py`` run the same code from a checkout.

Every command takes ``--help``, ``--config FILE`` (a TOML or YAML file of its settings) and each setting
under the Hugging Face examples' name too (``--learning_rate``, ``--output_dir``, ...).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

__all__ = ["COMMANDS", "command_parser", "main", "run"]

COMMANDS = {  # name: (module, what it does)
    "glue": ("glue", "fine-tune on a GLUE task or your own CSV / JSON data, evaluate on dev"),
    "commonsense": ("commonsense", "fine-tune a causal LM on commonsense reasoning, score the eight tasks"),
    "predict": ("predict", "predict with a saved posterior (GLUE or commonsense, as it was trained), export it"),
    "sweep-glue": ("sweep_glue", "learning rates x batch sizes x seeds x methods on a GLUE task"),
    "sweep-commonsense": ("sweep_commonsense", "the same sweep on commonsense reasoning"),
    "overfit-glue": ("overfit_glue", "the overfitting benchmark: calibration of every method on small training sets"),
    "shift-commonsense": ("shift_commonsense", "calibration under shift: train on OpenBookQA, score it and ARC"),
    "data-size-glue": ("data_size_glue", "the posterior's spread against the number of training rows"),
    "compare-peft": ("compare_peft", "ours and PEFT's peers side by side with identical settings"),
}


def command_parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A command's parser: its module docstring as the description, ``prog`` as its name in messages."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def run(name: str, argv: list[str], prog: str | None = None) -> Any:
    """Run the command ``name`` on ``argv``; what its ``main`` returns (e.g. the run's metrics)."""
    module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    return module.main(argv, prog=prog)


def main(argv: list[str] | None = None) -> None:
    """``monteclora <command> [options]`` (a console script: it returns nothing, so its exit status is 0)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    listing = "\n".join(f"  {name:<18} {what}" for name, (_, what) in COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: monteclora <command> [options]   (monteclora <command> --help for its options)\n\n"
              f"commands:\n{listing}")
        return
    name = argv[0]
    if name not in COMMANDS:
        sys.exit(f"monteclora: error: {name!r} is not a command; commands: {', '.join(COMMANDS)}")
    run(name, argv[1:], prog=f"monteclora {name}")


def glue_main() -> None:
    """``monteclora-glue``: ``monteclora glue``."""
    run("glue", sys.argv[1:])


def commonsense_main() -> None:
    """``monteclora-commonsense``: ``monteclora commonsense``."""
    run("commonsense", sys.argv[1:])


def predict_main() -> None:
    """``monteclora-predict``: ``monteclora predict``."""
    run("predict", sys.argv[1:])
