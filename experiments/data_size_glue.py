"""``monteclora data-size-glue`` from a checkout:
:mod:`monteclora_pyro.commands.data_size_glue`
(``--help`` for what it does)."""

from monteclora_pyro.commands.data_size_glue import main  # noqa: F401

if __name__ == "__main__":
    main()
