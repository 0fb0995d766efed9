"""Regenerate the shipped rule-similarity matrix (src/physmoe/resources/rule_similarity_matrix.npy).

    python scripts/build_rule_matrix.py [--check]

With --check, compares the computed matrix with the shipped file and exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from physmoe.crystallography import compute_rule_similarity_matrix

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "physmoe" / "resources"
TARGET = RESOURCES / "rule_similarity_matrix.npy"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only compare with the shipped file")
    args = parser.parse_args()
    matrix = compute_rule_similarity_matrix().astype(np.float32)
    if args.check:
        shipped = np.load(TARGET)
        diff = float(np.abs(shipped - matrix).max())
        print(f"max |shipped - computed| = {diff:.3g}")
        return 0 if diff <= 1e-6 else 1
    # Write next to the target and rename, so an interrupted run never leaves a torn file.
    fd, tmp = tempfile.mkstemp(dir=TARGET.parent, suffix=".npy.tmp")
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "wb") as handle:
        np.save(handle, matrix)
    os.replace(tmp, TARGET)
    print(
        f"wrote {TARGET} ({matrix.shape[0]}x{matrix.shape[1]}, "
        f"{int((np.triu(matrix, 1) > 0.8).sum())} pairs above 0.8)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
