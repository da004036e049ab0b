# The README's two commands are `make repro` and `make test`. Both create (or reuse) the
# virtualenv in .venv and install the project from its own files; both are idempotent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: repro test lint format bench clean-outputs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependency list changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

## Set up and run the whole pipeline on the demo data (or on the data params.yaml points to).
repro: $(VENV)/.installed-run
	test -d .dvc || $(BIN)/dvc init --quiet $$(test -d .git || echo --no-scm)
	$(BIN)/dvc repro

## Set up (with dev extras) and run the test suite.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Benchmarks (print tables; need `pip install -e '.[bench]'` for the CleanVision comparison).
bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	for b in bench/[!_]*.py; do $(BIN)/python $$b || exit 1; done
