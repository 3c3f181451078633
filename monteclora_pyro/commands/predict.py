"""Predict with a saved posterior: a GLUE classifier's (``predict_glue``) or a causal LM's
(``predict_commonsense``), as ``posterior.json`` in the adapter folder says; the options are that command's.

    monteclora predict --adapter runs/sst2-monteclora_wide_prior/adapter --task sst2 --num-samples 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import command_parser


def main(argv: list[str] | None = None, prog: str | None = None) -> Any:
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--adapter")
    known, _ = pre.parse_known_args(argv)
    if known.adapter is None:
        if {"-h", "--help"} & set(argv):
            from .predict_glue import main as predict_glue

            return predict_glue(argv, prog=prog)
        command_parser(__doc__, prog).error("--adapter DIR is required (a run's OUT/adapter folder)")
    meta = Path(known.adapter.split(",")[0].strip()) / "posterior.json"  # an ensemble's members are of one kind
    try:
        kind = json.loads(meta.read_text()).get("kind", "classifier")
    except (OSError, json.JSONDecodeError) as error:
        command_parser(__doc__, prog).error(f"{known.adapter} is not a saved posterior: {meta} cannot be read "
                                            f"({error.__class__.__name__})")
    if kind == "causal_lm":
        from .predict_commonsense import main as predict
    else:
        from .predict_glue import main as predict
    return predict(argv, prog=prog)
