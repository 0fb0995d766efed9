#!/usr/bin/env bash
# Set up (or reuse) the virtual environment and run the test suite.
#   bash scripts/test.sh [extra pytest arguments]
# Environment: PHYSMOE_VENV (default .venv), PYTHON (default python3), PYTEST_WORKERS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PHYSMOE_EXTRAS=dev
source scripts/setup_env.sh

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
