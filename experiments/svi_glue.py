"""``monteclora glue`` from a checkout:
:mod:`monteclora_pyro.commands.glue`
(``--help`` for what it does)."""

from monteclora_pyro.commands.glue import main, parse_args  # noqa: F401

if __name__ == "__main__":
    main()
