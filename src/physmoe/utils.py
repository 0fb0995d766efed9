"""Small shared helpers: atomic file writes.

Everything physmoe writes (datasets, shards, model cards, plots, metrics, configs) goes to a
temporary file in the target's directory first and is renamed over the target only when
complete, so an interrupted run never leaves a torn file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_path", "write_json"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` (mode 0644),
    on error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


@contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """``open`` for writing, atomically (see :func:`atomic_path`)."""
    with (
        atomic_path(path) as temporary,
        open(temporary, mode, encoding=None if "b" in mode else encoding) as handle,
    ):
        yield handle


def write_json(path: str | os.PathLike, content: Any, indent: int = 2) -> Path:
    """Write ``content`` as JSON atomically; NaN and infinity are refused (they are not JSON)."""
    with atomic_open(path) as handle:
        json.dump(content, handle, indent=indent, allow_nan=False)
    return Path(path)
