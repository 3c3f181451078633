"""Prior declarations (TOML data, no code). Installed as ``monteclora_pyro.models``; add a file to add a prior."""
