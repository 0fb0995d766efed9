#!/usr/bin/env bash
# The main job on a fresh machine, end to end:
#   set up .venv -> build the embedded default dataset (simulated patterns of 12,000 structures)
#   -> train the "small" preset -> choose the checkpoint on validation, calibrate, test
#   -> save model + card + plots to outputs/quickstart -> reload it and predict example CIFs.
#   bash scripts/quickstart.sh [extra `physmoe train` overrides, e.g. --num_train_epochs 5]
# Environment: PHYSMOE_VENV (default .venv), PHYSMOE_OUTPUT (default outputs/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PHYSMOE_VENV:-.venv}"
OUT="${PHYSMOE_OUTPUT:-outputs/quickstart}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
GPU_ARGS=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    HAVE_GPU=1
    GPU_ARGS=(--use_cpu false)
else
    HAVE_GPU=0
fi
# A plain `pip install torch` pulls a multi-GB CUDA build; without an NVIDIA GPU take the CPU wheel.
if ! "$PY" -c "import torch" 2>/dev/null; then
    if [ "$HAVE_GPU" = 1 ]; then "$PY" -m pip install -q "torch>=2.4,<2.15"; else "$PY" -m pip install -q "torch==2.13.0"; fi
fi
"$PY" -m pip install -q -e ".[plot]"

# glibc's allocator maps/unmaps every large activation on each use; keep freed memory instead.
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"

echo "== train, calibrate and test (outputs in $OUT)"
"$VENV/bin/physmoe" train configs/quickstart.yaml --output_dir "$OUT" --overwrite_output true "${GPU_ARGS[@]}" "$@"
echo "== reload $OUT with from_pretrained and predict the example CIFs"
"$VENV/bin/physmoe" predict "$OUT" examples/*.cif
