"""Runs :mod:`monteclora_pyro.benchmarks.scaling` (``--help`` for its options)."""

from monteclora_pyro.benchmarks.scaling import main

if __name__ == "__main__":
    main()
