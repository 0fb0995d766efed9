#!/usr/bin/env bash
# Set up (or reuse) the virtual environment and run the test suite.
#   bash scripts/test.sh [extra pytest arguments]
# Environment: PHYSMOE_VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PHYSMOE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"

# A plain `pip install torch` pulls a multi-GB CUDA build; without an NVIDIA GPU take the CPU wheel.
if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "$PY" -m pip install -q "torch>=2.4,<2.15"
    else
        "$PY" -m pip install -q "torch==2.13.0"
    fi
fi
"$PY" -m pip install -q -e ".[dev]"

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
