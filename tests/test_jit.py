"""The compiled kernels' decorator: disk-cached where numba can, compiled per process otherwise."""

from __future__ import annotations

import numpy as np
from numba.core import caching

from physmoe._jit import jit


def _sum_of_squares(values):
    total = 0.0
    for value in values:
        total += value * value
    return total


def test_kernels_are_cached_on_disk_where_numba_can():
    compiled = jit(_sum_of_squares)
    assert isinstance(compiled._cache, caching.FunctionCache)
    assert compiled(np.array([1.0, 2.0, 3.0])) == 14.0


def test_without_a_writable_cache_location_kernels_still_compile(monkeypatch, caplog):
    # What a read-only install with a read-only home looks like to numba: no cache locator.
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    with caplog.at_level("INFO", logger="physmoe._jit"):
        compiled = jit(_sum_of_squares)
    assert "without a disk cache" in caplog.text
    assert isinstance(compiled._cache, caching.NullCache)
    assert compiled(np.array([1.0, 2.0, 3.0])) == 14.0
