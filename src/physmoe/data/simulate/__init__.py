"""Powder X-ray diffraction stick patterns (peak lists) from crystal structures.

:func:`simulate_peaks` enumerates every reciprocal-lattice point ``hkl`` inside the limiting
sphere ``|g| <= 2 sin(theta_max) / lambda`` (all of them, no symmetry reduction, so no multiplicity
bookkeeping is needed) and computes for each

* the structure factor ``F(hkl) = sum_j occ_j f_j(s) exp(-B_j s^2) exp(2 pi i hkl . x_j)`` with
  ``s = sin(theta) / lambda = 1 / (2 d)``, neutral-atom IT92 four-Gaussian form factors
  ``f(s) = sum_i a_i exp(-b_i s^2) + c`` (International Tables Vol. C, 1992; coefficients from
  gemmi; ions are treated as the neutral element) and isotropic Debye-Waller factors B;
* the Lorentz-polarisation factor ``LP = (1 + cos^2 2theta) / (sin^2 theta cos theta)`` for an
  unpolarised beam without a monochromator (the factor pymatgen's ``XRDCalculator`` uses);

then merges lines whose 2θ agree within ``merge_tol`` (summing intensities) and scales the
strongest line to 100. Friedel's law holds (form factors are real; no anomalous dispersion), so
only the half of the sphere with ``hkl`` lexicographically positive is computed.
:func:`simulate_peaks_batch` does the same for many structures at once and returns the same
lists.

Speed. Two kernels compute ``|F|^2``:

* small problems (``hkl`` box points times sites up to ~500,000, i.e. cells up to ~60-100 atoms
  at Cu K-alpha) run compiled loops (numba, :mod:`.compiled`): the reflections in range are picked
  from a cached ``hkl`` box, each site's phases come from three small tables (the separability
  ``exp(2 pi i (hx + ky + lz)) = e_h(x) e_k(y) e_l(z)``) in float64, and one structure's lines
  are sorted, merged and scaled in one call. A cell of a few atoms then takes ~20 us instead of
  the ~60 us that a dozen small numpy calls cost, and :func:`simulate_peaks_batch` merges the
  lines of groups of small structures together;
* large cells use the same separability over the whole box: sines and cosines of three small
  tables in float32 (the phase reduced mod 1 in float64 first), and one complex matrix product.

``scripts/benchmark_data.py`` measures both functions against pymatgen's ``XRDCalculator`` per
cell-size bucket (speed-up and agreement) in one run. Intensities agree with a float64 loop
implementation to ~1e-4 on the 0-100 scale (the box kernel's float32 phases; the compiled
kernel is float64 throughout).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..grid import CU_KA1, CU_KA2
from ..structures import as_crystal
from .lines import _simulate_group
from .options import FORM_FACTOR_TABLES, PeakList, _check_options, _site_b_iso

__all__ = [
    "PeakList",
    "simulate_peaks",
    "simulate_peaks_batch",
    "FORM_FACTOR_TABLES",
    "KALPHA2_RATIO",
]

#: Intensity ratio of the K-alpha2 to the K-alpha1 line (Cu: 0.5 to within a few percent).
KALPHA2_RATIO = 0.5
# simulate_peaks_batch works on groups of structures of about this many (reflection, site) pairs
# (estimated from the cell volume): enough to amortise per-call costs over small cells, small
# enough for the temporaries (~40 bytes a pair) to stay in cache (2^20 was slower, measured).
_GROUP_PAIRS = 1 << 16
# Structures below this many (reflection, site) pairs are grouped by simulate_peaks_batch.
_SMALL_PAIRS = 1 << 12


# ------------------------------------------------------------------------------- public entries


def simulate_peaks(
    structure: Any,
    wavelength: float = CU_KA1,
    two_theta_range: tuple[float, float] = (5.0, 90.0),
    *,
    kalpha2: bool = False,
    kalpha2_wavelength: float = CU_KA2,
    kalpha2_ratio: float = KALPHA2_RATIO,
    b_iso: float | Mapping[str, float] | None = None,
    merge_tol: float = 1e-5,
    min_intensity: float = 1e-3,
    form_factors: str = "it92",
    return_hkl: bool = False,
) -> PeakList:
    """Simulate the powder diffraction stick pattern of a crystal.

    Args:
        structure: A :class:`~physmoe.data.structures.Crystal`, pymatgen ``Structure``, ASE
            ``Atoms``, gemmi ``SmallStructure`` or CIF path (see
            :func:`~physmoe.data.structures.as_crystal`).
        wavelength: X-ray wavelength in Angstrom (default Cu K-alpha1, 1.54056).
        two_theta_range: ``(min, max)`` 2θ in degrees, inclusive, ``0 <= min < max <= 180``.
        kalpha2: Also add the K-alpha2 line of every reflection, at ``kalpha2_wavelength`` with
            ``kalpha2_ratio`` (0.5) times the intensity it would have at K-alpha1's wavelength
            (same ``|F|^2``, its own Lorentz-polarisation factor).
        kalpha2_wavelength: K-alpha2 wavelength in Angstrom (default Cu, 1.54439).
        kalpha2_ratio: K-alpha2 / K-alpha1 intensity ratio.
        b_iso: Debye-Waller factors B in Angstrom^2 overriding the structure's own: one value for
            every site, or ``{element: B}`` (elements not listed keep theirs). Default: the
            structure's ``b_iso`` (0 unless it was read from a CIF with U_iso/B_iso).
        merge_tol: Lines whose 2θ differ by at most this many degrees from their neighbour are
            merged into one line at the position of its first (lowest-angle) member, intensities
            summed (symmetry-equivalent reflections coincide to ~1e-12 deg). Same default as
            pymatgen.
        min_intensity: Lines at or below this on the 0-100 scale are dropped. Same default as
            pymatgen. Systematically absent reflections (amplitude below 1e-5 of F(000), i.e.
            rounding residue) are always dropped, before merging.
        form_factors: ``"it92"`` (default; gemmi's IT92 coefficients, Z 1-98) or ``"pymatgen"``
            (pymatgen's ``atomic_scattering_params.json``, to reproduce datasets made with
            ``XRDCalculator``; needs pymatgen installed). The two differ by up to ~2 on the 0-100
            scale.
        return_hkl: Fill ``PeakList.hkl`` with one representative index per line (Miller indices
            in the structure's own cell setting).

    Returns:
        A :class:`PeakList` (``two_theta`` ascending, strongest line 100). Empty if no reflection
        falls in the range.
    """
    crystal = as_crystal(structure)
    options = _check_options(
        wavelength, two_theta_range, kalpha2, kalpha2_wavelength, kalpha2_ratio, merge_tol,
        min_intensity, form_factors, return_hkl,
    )  # fmt: skip
    return _simulate_group([crystal], [_site_b_iso(crystal, b_iso)], options)[0]


def simulate_peaks_batch(
    crystals: Iterable[Any],
    *,
    wavelength: float = CU_KA1,
    two_theta_range: tuple[float, float] = (5.0, 90.0),
    kalpha2: bool = False,
    kalpha2_wavelength: float = CU_KA2,
    kalpha2_ratio: float = KALPHA2_RATIO,
    b_iso: float | Mapping[str, float] | None = None,
    merge_tol: float = 1e-5,
    min_intensity: float = 1e-3,
    form_factors: str = "it92",
    return_hkl: bool = False,
) -> list[PeakList]:
    """:func:`simulate_peaks` of many structures at once: the same lists, faster per structure.

    Small structures (under ~4,000 reflection-site pairs: cells of a few atoms) are processed in
    groups of about 65,000 pairs: the merging, scaling and cutting of all their lines go through
    one set of sorts and reductions. Larger structures are simulated one by one, which measured
    faster.

    Args:
        crystals: Structures of any type :func:`simulate_peaks` takes.
        wavelength, two_theta_range, kalpha2, kalpha2_wavelength, kalpha2_ratio, b_iso,
        merge_tol, min_intensity, form_factors, return_hkl: As for :func:`simulate_peaks`, the
            same for every structure.

    Returns:
        One :class:`PeakList` per structure, in order.
    """
    options = _check_options(
        wavelength, two_theta_range, kalpha2, kalpha2_wavelength, kalpha2_ratio, merge_tol,
        min_intensity, form_factors, return_hkl,
    )  # fmt: skip
    crystals = [as_crystal(structure) for structure in crystals]
    if not crystals:
        return []
    b_sites = [_site_b_iso(crystal, b_iso) for crystal in crystals]
    # Expected (reflection, site) pairs: half the reflections in the sphere of radius g_max.
    volumes = np.abs(np.linalg.det(np.stack([crystal.lattice for crystal in crystals])))
    sites = np.array([len(crystal.species) for crystal in crystals])
    pairs = (2 * np.pi / 3) * options.g_max**3 * volumes * sites
    # Only small structures gain from sharing calls; larger ones run alone (grouping them was
    # measured slower than a loop: their arrays no longer fit in cache).
    small = pairs < _SMALL_PAIRS
    peaks: list[PeakList | None] = [None] * len(crystals)
    for index in np.flatnonzero(~small).tolist():
        peaks[index] = _simulate_group([crystals[index]], [b_sites[index]], options)[0]
    small_indices = np.flatnonzero(small)
    group = np.cumsum(pairs[small_indices]) // _GROUP_PAIRS
    for members in np.split(small_indices, np.flatnonzero(np.diff(group)) + 1):
        if len(members):
            chosen = members.tolist()
            found = _simulate_group(
                [crystals[i] for i in chosen], [b_sites[i] for i in chosen], options
            )
            for i, peak_list in zip(chosen, found, strict=True):
                peaks[i] = peak_list
    return peaks
