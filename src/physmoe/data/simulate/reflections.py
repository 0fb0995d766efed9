"""Reflections in a 2θ range: the hkl box that holds the |g| sphere, by cell metric."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..structures import Crystal
from .compiled import reflections_in_range
from .options import _Options

# Direct (reflection, site) phases while box points x sites stay below this (float64 phases of
# ~4 MB); beyond it the separable box kernel is faster (measured crossover: see the benchmark).
_MAX_PAIRS = 1 << 19
# hkl boxes up to this many points are cached (72 bytes a point; 128 boxes <= 38 MB).
_CACHED_BOX_POINTS = 4096
# Most (h, k, l) box points one structure may need (~120 bytes each while enumerating: ~2.4 GB).
# The bundled structures need at most ~3e6 even at Ag K-alpha up to 2θ = 180 deg; a 150 Angstrom
# cubic cell at Cu K-alpha to 90 deg needs 1.1e7. Cells in pm or a wavelength in nm go far beyond.
_MAX_BOX_POINTS = 20_000_000


# ------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class _HalfBox:
    """The Friedel half (``h > 0``, or ``h = 0, k > 0``, or ``h = k = 0, l > 0``) of the box
    ``0 <= h <= H, |k| <= K, |l| <= L``, in C order."""

    hkl: np.ndarray  # [M0, 3] float64
    quad: np.ndarray  # [M0, 6] float64: h^2, k^2, l^2, 2hk, 2hl, 2kl (|g|^2 = quad @ metric terms)


def _build_half_box(h_max: int, k_max: int, l_max: int) -> _HalfBox:
    h, k, ell = np.meshgrid(
        np.arange(0.0, h_max + 1), np.arange(-k_max, k_max + 1.0), np.arange(-l_max, l_max + 1.0),
        indexing="ij",
    )  # fmt: skip
    # In C order (0, 0, 0) comes after every (0, k < 0, l) and (0, 0, l < 0) and before the rest
    # of h = 0, so the points after it are exactly the Friedel half.
    origin = k_max * (2 * l_max + 1) + l_max
    h, k, ell = (v.reshape(-1)[origin + 1 :] for v in (h, k, ell))
    quad = np.stack([h * h, k * k, ell * ell, 2 * h * k, 2 * h * ell, 2 * k * ell], axis=1)
    return _HalfBox(np.stack([h, k, ell], axis=1), quad)


_cached_half_box = functools.lru_cache(maxsize=128)(_build_half_box)


def _half_box(h_max: int, k_max: int, l_max: int) -> _HalfBox:
    """The half box, cached when small (building it costs as much as a small cell's pattern)."""
    if (h_max + 1) * (2 * k_max + 1) * (2 * l_max + 1) <= _CACHED_BOX_POINTS:
        return _cached_half_box(h_max, k_max, l_max)
    return _build_half_box(h_max, k_max, l_max)


def _reciprocal_points(
    lattice: np.ndarray, g_min: float, g_max: float
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """All ``hkl`` with ``g_min <= |g| <= g_max`` in the Friedel half-space, for the box kernel.

    Returns:
        ``hkl`` int64 ``[M, 3]``; ``|g|^2 = 1 / d^2`` float64 ``[M]`` (Angstrom^-2); the box axes
        ``(h [H], k [K], l [L])`` that contain them; and the mask ``[H, K, L]`` selecting them
        (C order, so ``hkl`` lists the box points in the same order).
    """
    # |h| = |g . a| <= |g| |a|: a box that contains the sphere.
    limits = np.floor(g_max * np.linalg.norm(lattice, axis=1) + 1e-9).astype(np.int64)
    h_max, k_max, l_max = limits
    axes = (np.arange(0, h_max + 1), np.arange(-k_max, k_max + 1), np.arange(-l_max, l_max + 1))
    h, k, ell = np.meshgrid(*axes, indexing="ij")
    half = (h > 0) | ((h == 0) & ((k > 0) | ((k == 0) & (ell > 0))))
    recip = np.linalg.inv(lattice)  # columns are a*, b*, c* (crystallographic, no 2 pi)
    metric = recip.T @ recip
    g2 = (
        metric[0, 0] * h * h + metric[1, 1] * k * k + metric[2, 2] * ell * ell
        + 2 * (metric[0, 1] * h * k + metric[0, 2] * h * ell + metric[1, 2] * k * ell)
    )  # fmt: skip
    mask = half & (g2 <= g_max**2 * (1 + 1e-12)) & (g2 >= g_min**2 * (1 - 1e-12))
    hkl = np.stack([h[mask], k[mask], ell[mask]], axis=1)
    return hkl, g2[mask], axes, mask


@dataclass
class _Reflections:
    """The reflections of one structure in the |g| range: ``hkl`` float64 ``[M, 3]``, ``g2 =
    |g|^2 [M]``; ``box`` (axes and mask, see :func:`_reciprocal_points`) for the box kernel, None
    for the pair kernel; once computed ``squared = |F|^2 [M]`` and the ``absent`` level below
    which ``|F|^2`` is rounding residue."""

    hkl: np.ndarray
    g2: np.ndarray
    box: tuple | None = None
    squared: np.ndarray | None = None
    absent: float = 0.0


def _cell_metrics(lattices: Sequence[np.ndarray], g_max: float) -> tuple[list, np.ndarray]:
    """Box limits ``(H, K, L)`` of the |g| <= ``g_max`` sphere and the |g|^2 coefficients ``[S,
    6]`` of ``(h^2, k^2, l^2, 2hk, 2hl, 2kl)`` (the inverse metric, by cofactors) of every cell.
    One cell is done in Python floats, many in arrays over all cells: either is several times
    faster than ``numpy.linalg.inv`` calls."""
    if len(lattices) == 1:
        metric = (lattices[0] @ lattices[0].T).tolist()
    else:
        stacked = np.stack(lattices)
        metric = np.einsum("sik,sjk->ijs", stacked, stacked)
    (g00, g01, g02), (_, g11, g12), (_, _, g22) = metric
    c00, c11, c22 = g11 * g22 - g12 * g12, g00 * g22 - g02 * g02, g00 * g11 - g01 * g01
    c01, c02, c12 = g02 * g12 - g01 * g22, g01 * g12 - g11 * g02, g01 * g02 - g00 * g12
    determinant = g00 * c00 + g01 * c01 + g02 * c02
    terms = (np.array([c00, c11, c22, c01, c02, c12]) / determinant).T.reshape(-1, 6)
    # |h| = |g . a| <= |g| |a|: a box that contains the sphere.
    if len(lattices) == 1:
        limits = [[math.floor(g_max * math.sqrt(g) + 1e-9) for g in (g00, g11, g22)]]
    else:
        edges = np.sqrt(np.stack([g00, g11, g22], axis=1))
        limits = np.floor(g_max * edges + 1e-9).astype(np.int64).tolist()
    return limits, terms


def _reflections(crystals: Sequence[Crystal], options: _Options) -> list[_Reflections]:
    """The reflections of every structure; the cell metrics of all of them in a few numpy calls."""
    limits, terms = _cell_metrics([crystal.lattice for crystal in crystals], options.g_max)
    g2_low, g2_high = options.g_min**2 * (1 - 1e-12), options.g_max**2 * (1 + 1e-12)
    found = []
    for crystal, coefficients, (h_max, k_max, l_max) in zip(crystals, terms, limits, strict=True):
        points = (h_max + 1) * (2 * k_max + 1) * (2 * l_max + 1)
        if points > _MAX_BOX_POINTS:  # the arrays would take GiB to TiB
            lengths = ", ".join(f"{v:.4g}" for v in np.linalg.norm(crystal.lattice, axis=1))
            raise ValueError(
                f"the cell lengths a, b, c = {lengths} Angstrom at wavelength "
                f"{options.wavelength:g} Angstrom need {points:.3g} (h, k, l) points, "
                f"more than the limit of {_MAX_BOX_POINTS:.0e}: "
                "are the cell (not pm) and the wavelength (not nm) "
                "in Angstrom? Otherwise narrow two_theta_range"
            )
        if points * len(crystal.species) > _MAX_PAIRS:
            hkl, g2, axes, mask = _reciprocal_points(crystal.lattice, options.g_min, options.g_max)
            found.append(_Reflections(hkl.astype(np.float64), g2, (axes, mask)))
            continue
        box = _half_box(h_max, k_max, l_max)
        found.append(
            _Reflections(*reflections_in_range(box.hkl, box.quad, coefficients, g2_low, g2_high))
        )
    return found
