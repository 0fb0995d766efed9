"""Run a script in two CPU processes under torchrun, for the tests of distributed training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run_two_processes(script: str | Path, *args: str | Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 SCRIPT ARGS...``: one thread per process,
    ``tests/`` importable, the Hub offline; the finished process (output captured as text)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        *map(str, args),
    ]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
