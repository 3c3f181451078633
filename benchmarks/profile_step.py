"""Runs :mod:`monteclora_pyro.benchmarks.profile_step` (``--help`` for its options)."""

from monteclora_pyro.benchmarks.profile_step import main

if __name__ == "__main__":
    main()
