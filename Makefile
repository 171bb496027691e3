# Vigil: two commands set up a fresh machine.
#   make demo   - install everything, then run the embedded stack with demo traffic
#   make test   - install everything, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0
STAMP := $(VENV)/.vigil-installed
NODE_STAMP := node_modules/.vigil-installed

.PHONY: setup demo test lint typecheck bench clean

setup: $(STAMP) $(NODE_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Torch first: the pinned CPU wheel where no GPU is present, so that the
# dependency resolver never pulls a multi-GB CUDA build on CPU machines.
$(STAMP): $(BIN)/python pyproject.toml
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  echo "GPU found: installing torch with CUDA"; $(BIN)/pip install -q "torch>=2.13,<2.15"; \
	else \
	  echo "no GPU: installing the CPU wheel $(TORCH_CPU)"; $(BIN)/pip install -q "$(TORCH_CPU)"; \
	fi
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

demo: setup
	$(BIN)/vigil demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/vigil bench scoring

clean:
	rm -rf .vigil build *.egg-info
