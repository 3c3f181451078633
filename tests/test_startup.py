"""The command line answers --help and every argument or declaration error before the heavy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

HEAVY = ("torch", "pyro", "peft", "transformers", "datasets")
PROBE = """
import runpy, sys
sys.argv = ["svi_glue.py", *sys.argv[1:]]
try:
    runpy.run_path("experiments/svi_glue.py", run_name="__main__")
except SystemExit as stop:
    code = stop.code
print("EXIT", code, "HEAVY", sorted(m for m in {heavy} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--help"], "usage: svi_glue.py"),
        (["--rank", "0"], "argument --rank: 0 must be an integer >= 1"),
        (["--task", "squad"], "task 'squad' is unknown"),
        (["--prior", "nonexistent"], "prior 'nonexistent' is neither a bundled prior"),
        (["--prior", "/nonexistent.toml"], "prior file '/nonexistent.toml' does not exist"),
        (["--device", "gpu7"], "argument --device: gpu7 must be a device"),
        (["--holdout-fraction", "1.5"], "argument --holdout-fraction: 1.5 must be in [0, 1)"),
        (["--seed", "x"], "argument --seed: 'x' is not an integer"),
    ],
)
def test_help_and_bad_arguments_answer_before_torch_is_imported(argv, message):
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert message in result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"EXIT {0 if argv == ['--help'] else 2} HEAVY []", result.stdout + result.stderr
