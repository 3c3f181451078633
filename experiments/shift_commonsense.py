"""``monteclora shift-commonsense`` from a checkout:
:mod:`monteclora_pyro.commands.shift_commonsense`
(``--help`` for what it does)."""

from monteclora_pyro.commands.shift_commonsense import main  # noqa: F401

if __name__ == "__main__":
    main()
