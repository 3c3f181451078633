"""Runs :mod:`monteclora_pyro.benchmarks.step_time` (``--help`` for its options)."""

from monteclora_pyro.benchmarks.step_time import main

if __name__ == "__main__":
    main()
