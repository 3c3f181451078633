"""``monteclora commonsense`` from a checkout:
:mod:`monteclora_pyro.commands.commonsense`
(``--help`` for what it does)."""

from monteclora_pyro.commands.commonsense import main, parse_args  # noqa: F401

if __name__ == "__main__":
    main()
