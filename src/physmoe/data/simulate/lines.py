"""Peak lists from reflections and ``|F|^2``: Lorentz-polarisation, merging of coincident
lines, scaling to 100 and the intensity cut, for many structures at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..structures import Crystal
from .compiled import lines_of_one
from .options import PeakList, _Options
from .reflections import _Reflections, _reflections
from .scattering import _concatenate, _structure_factors

# ---------------------------------------------------------------------------------------- lines


def _lines_in_range(
    g2: np.ndarray, squared: np.ndarray, absent: float | np.ndarray, options: _Options
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Every (wavelength, reflection) pair that gives a line in range: the wavelength index
    (None for one wavelength), the reflection index and ``sin^2(theta)`` of each."""
    if len(options.ratios) == 1:
        # The |g| range of the enumeration is the 2θ range.
        which = (squared >= absent).nonzero()[0]
        return None, which, g2[which] * options.bragg[0, 0]
    sin2 = options.bragg * g2  # [W, R]
    valid = (sin2 >= options.sin2_low) & (sin2 <= options.sin2_high) & (squared >= absent)
    which_wavelength, which = valid.nonzero()
    return which_wavelength, which, sin2[valid]


def _empty(options: _Options) -> PeakList:
    hkl = np.zeros((0, 3), dtype=np.int64) if options.return_hkl else None
    return PeakList._trusted(np.zeros(0), np.zeros(0), hkl, np.zeros(0), options.wavelength)


def _lines(reflections: list[_Reflections], options: _Options) -> list[PeakList]:
    """The peak list of every structure from its reflections and ``|F|^2``.

    One structure takes one compiled call (:func:`.compiled.lines_of_one`). For a group, the
    reflections of all structures are concatenated and the lines sorted by (structure, 2θ), so
    merging, scaling and the intensity cut are a few numpy calls for the whole group.
    """
    num_structures = len(reflections)
    if num_structures == 1:
        return [_lines_of_one(reflections[0], options)]
    g2 = _concatenate([found.g2 for found in reflections])
    squared = _concatenate([found.squared for found in reflections])
    counts = [len(found.g2) for found in reflections]
    absent = np.repeat([found.absent for found in reflections], counts)
    which_wavelength, which, sin2 = _lines_in_range(g2, squared, absent, options)
    if len(which) == 0:
        return [_empty(options) for _ in reflections]
    # Sort by (structure, sin^2 θ), i.e. by (structure, 2θ), before computing anything per line.
    structure = np.repeat(np.arange(num_structures), counts)[which]
    order = np.lexsort((sin2, structure))
    structure = structure[order]
    which, sin2 = which[order], sin2[order]
    # In sin^2 θ alone: cos 2θ = 1 - 2 sin^2 θ, so 2θ = arccos(1 - 2 sin^2 θ) and
    # LP = (1 + cos^2 2θ) / (sin^2 θ cos θ).
    cos_2theta = 1.0 - 2.0 * sin2
    two_theta = np.arccos(cos_2theta) * (180.0 / np.pi)
    lorentz_polarisation = (1.0 + cos_2theta * cos_2theta) / (sin2 * np.sqrt(1.0 - sin2))
    intensity = squared[which] * lorentz_polarisation
    if which_wavelength is not None:
        intensity *= options.ratios[which_wavelength[order]]

    starts = _line_starts(two_theta, structure, options.merge_tol)
    line_intensity = np.add.reduceat(intensity, starts)
    line_structure = structure[starts]
    _scale_to_100(line_intensity, line_structure, num_structures)

    line_hkl = None
    if options.return_hkl:
        hkl = _concatenate([found.hkl for found in reflections])
        line_hkl = _representative_hkl(hkl, which, starts)
    keep = line_intensity > options.min_intensity
    if not keep.all():
        starts, line_intensity = starts[keep], line_intensity[keep]
        line_structure = line_structure[keep]
        line_hkl = None if line_hkl is None else line_hkl[keep]
    line_two_theta, line_d = two_theta[starts], 1.0 / np.sqrt(g2[which[starts]])
    return _split_by_structure(
        line_two_theta, line_intensity, line_hkl, line_d, line_structure, num_structures, options
    )


def _lines_of_one(found: _Reflections, options: _Options) -> PeakList:
    """One structure's peak list (the same lines as :func:`_lines` makes for a group)."""
    which, starts, two_theta, intensity = lines_of_one(
        found.g2, found.squared, found.absent, options.bragg[:, 0], options.ratios,
        options.sin2_low, options.sin2_high, options.merge_tol,
    )  # fmt: skip
    if len(which) == 0:
        return _empty(options)
    hkl = _representative_hkl(found.hkl, which, starts) if options.return_hkl else None
    keep = intensity > options.min_intensity
    if not keep.all():
        starts, two_theta, intensity = starts[keep], two_theta[keep], intensity[keep]
        hkl = None if hkl is None else hkl[keep]
    d_spacing = 1.0 / np.sqrt(found.g2[which[starts]])
    return PeakList._trusted(two_theta, intensity, hkl, d_spacing, options.wavelength)


def _line_starts(two_theta: np.ndarray, structure: np.ndarray, merge_tol: float) -> np.ndarray:
    """Where each merged line begins in the sorted reflections ``[R]``: where the structure
    changes or the gap to the previous reflection exceeds ``merge_tol``."""
    new_line = np.empty(len(two_theta), dtype=bool)
    new_line[0] = True
    np.greater(two_theta[1:] - two_theta[:-1], merge_tol, out=new_line[1:])
    new_line[1:] |= structure[1:] != structure[:-1]
    return new_line.nonzero()[0]


def _split_by_structure(
    two_theta: np.ndarray,
    intensity: np.ndarray,
    hkl: np.ndarray | None,
    d_spacing: np.ndarray,
    line_structure: np.ndarray,
    num_structures: int,
    options: _Options,
) -> list[PeakList]:
    """One peak list per structure from the lines of all, sorted by structure."""
    bounds = np.searchsorted(line_structure, np.arange(num_structures + 1)).tolist()
    return [
        PeakList._trusted(
            two_theta[lo:hi],
            intensity[lo:hi],
            None if hkl is None else hkl[lo:hi],
            d_spacing[lo:hi],
            options.wavelength,
        )
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _scale_to_100(
    line_intensity: np.ndarray, line_structure: np.ndarray, num_structures: int
) -> None:
    """Scale each structure's strongest line to 100, in place (lines sorted by structure). A
    structure whose lines are all 0 (a K-alpha2 ratio of 0) keeps them at 0: they are cut."""
    bounds = np.searchsorted(line_structure, np.arange(num_structures + 1))
    has_lines = bounds[1:] > bounds[:-1]
    strongest = np.zeros(num_structures)
    strongest[has_lines] = np.maximum.reduceat(line_intensity, bounds[:-1][has_lines])
    scale = np.divide(100.0, strongest, out=np.zeros(num_structures), where=strongest > 0)
    line_intensity *= scale[line_structure]


def _representative_hkl(hkl: np.ndarray, which: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Lexicographically largest ``hkl`` (int64 ``[P, 3]``) of the reflections ``which`` merged
    into each line (lines begin at ``starts``), through an order-preserving integer key."""
    merged = hkl[which].astype(np.int64)
    span = 2 * int(np.abs(merged).max()) + 1
    key = (merged[:, 0] * span + merged[:, 1]) * span + merged[:, 2]
    best = np.maximum.reduceat(key, starts)
    l_index = (best + span // 2) % span - span // 2
    rest = (best - l_index) // span
    k_index = (rest + span // 2) % span - span // 2
    return np.stack([(rest - k_index) // span, k_index, l_index], axis=1)


def _simulate_group(
    crystals: Sequence[Crystal], b_sites: Sequence[np.ndarray], options: _Options
) -> list[PeakList]:
    reflections = _reflections(crystals, options)
    _structure_factors(crystals, b_sites, reflections, options.table)
    return _lines(reflections, options)
