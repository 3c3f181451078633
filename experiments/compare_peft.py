"""``monteclora compare-peft`` from a checkout:
:mod:`monteclora_pyro.commands.compare_peft`
(``--help`` for what it does)."""

from monteclora_pyro.commands.compare_peft import main  # noqa: F401

if __name__ == "__main__":
    main()
