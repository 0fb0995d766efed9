#!/usr/bin/env bash
# The main job on a fresh machine, end to end:
#   set up .venv -> build the embedded default dataset (simulated patterns of 12,000 structures)
#   -> train the "small" preset -> choose the checkpoint on validation, calibrate, test
#   -> save model + card + plots to outputs/quickstart -> reload it and predict example CIFs.
#   bash scripts/quickstart.sh [extra `physmoe train` overrides, e.g. --num_train_epochs 5]
# Environment: PHYSMOE_VENV (default .venv), PHYSMOE_OUTPUT (default outputs/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${PHYSMOE_OUTPUT:-outputs/quickstart}"
PHYSMOE_EXTRAS=plot
source scripts/setup_env.sh
GPU_ARGS=()
if [ "$HAVE_GPU" = 1 ]; then GPU_ARGS=(--use_cpu false); fi

# glibc's allocator maps/unmaps every large activation on each use; keep freed memory instead.
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"

echo "== train, calibrate and test (outputs in $OUT)"
"$PY" -m physmoe.cli train configs/quickstart.yaml --output_dir "$OUT" --overwrite_output true "${GPU_ARGS[@]}" "$@"
echo "== reload $OUT with from_pretrained and predict the example CIFs"
"$PY" -m physmoe.cli predict "$OUT" examples/*.cif
