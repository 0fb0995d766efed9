# Sourced by scripts/test.sh and scripts/quickstart.sh: create (or reuse) the virtual environment
# and install physmoe with the extras in $PHYSMOE_EXTRAS (e.g. "dev" or "plot").
# Sets PY (the environment's python) and HAVE_GPU (1 when an NVIDIA GPU answers).
VENV="${PHYSMOE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then HAVE_GPU=1; else HAVE_GPU=0; fi
# A plain `pip install torch` pulls a multi-GB CUDA build; without an NVIDIA GPU take the CPU wheel.
if ! "$PY" -c "import torch" 2>/dev/null; then
    if [ "$HAVE_GPU" = 1 ]; then "$PY" -m pip install -q "torch>=2.4,<2.15"; else "$PY" -m pip install -q "torch==2.13.0"; fi
fi
"$PY" -m pip install -q -e ".[${PHYSMOE_EXTRAS}]"
