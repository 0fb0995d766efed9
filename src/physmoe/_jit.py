"""``jit``: numba's ``njit`` for the package's compiled kernels, cached on disk where possible.

numba keeps compiled code beside the module (``__pycache__``) or in the user's cache directory.
Where neither is writable (a read-only install and home, as in some containers), ``cache=True``
would fail at import; the kernels are then compiled in each process instead (a few seconds).
"""

from __future__ import annotations

import logging

import numba

logger = logging.getLogger(__name__)

__all__ = ["jit"]


def jit(function):
    """``numba.njit(cache=True)(function)``, or uncached where numba finds no cache location."""
    try:
        return numba.njit(cache=True)(function)
    except RuntimeError as error:  # numba: "cannot cache function ...: no locator available"
        logger.info("compiling %s without a disk cache: %s", function.__qualname__, error)
        return numba.njit(function)
