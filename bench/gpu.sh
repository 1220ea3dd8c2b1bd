#!/usr/bin/env bash
# The GPU check in one go on a bare GPU machine (one that has Python with torch, transformers and accelerate,
# no network, no TokenLens dependencies): installs TokenLens and Inseq from carried wheels, then runs
# bench/gpu_check.py (exactness in float32 and bfloat16, batching, native vs Inseq timings, a 2,000 + 512-token
# prompt on the Llama-3-8B shape, a forced out-of-memory), writing each result to $OUT as it is measured.
# Finishes in under 8 minutes: the check has a 400 s budget (steps that would overrun are skipped and say so)
# and is killed at 440 s; installing takes about 20 s.
#
#   make gpu-wheels             # here, once: bench/gpu_assets/ (wheels for Python 3.12 and SmolLM2's files)
#   bash bench/gpu.sh           # there, from the repository root, with bench/gpu_assets carried
#   bash bench/gpu.sh --cpu-smoke   # anywhere: the same steps on tiny shapes, on the CPU
#
# Results: $OUT (default bench/gpu-out)/gpu_results.jsonl (one line per result, as measured), gpu_results.md,
# gpu_results.json (at the end) and gpu.log. Extra arguments go to bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ASSETS=${TOKENLENS_GPU_ASSETS:-bench/gpu_assets}
OUT=${OUT:-bench/gpu-out}
PY=${PYTHON:-python3}
SITE=$(mktemp -d "${TMPDIR:-/tmp}/tokenlens-gpu-site.XXXXXX")
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1

shopt -s nullglob
wheels=("$ASSETS"/wheels/*.whl)
if ((${#wheels[@]} == 0)); then
    echo "no wheels in $ASSETS/wheels: run 'make gpu-wheels' where pip works, and carry $ASSETS" >&2
    exit 2
fi
# --no-deps: every package needed beyond torch, transformers and accelerate is a carried wheel (see
# bench/gpu-requirements.txt); Inseq's own declared CUDA 11 packages are not wanted (torch has its CUDA).
# --target keeps the machine's site-packages as they are.
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
"$PY" -c "import importlib.metadata as m, torch; print({p: m.version(p) for p in ('torch', 'transformers', \
'accelerate', 'tokenlens', 'inseq')}, 'cuda', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
status=0
timeout 440 "$PY" bench/gpu_check.py --assets "$ASSETS" --out "$OUT" --budget-s 400 "$@" || status=$?
rm -rf "$SITE"
exit "$status"
