"""Runs :mod:`monteclora_pyro.benchmarks.laplace_cost` (``--help`` for its options)."""

from monteclora_pyro.benchmarks.laplace_cost import main

if __name__ == "__main__":
    main()
