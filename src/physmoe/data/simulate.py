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

Speed. Phases are reduced mod 1 in float64, then sines and cosines are taken in float32 (complex
exponentials are ~5x slower), and the occupancy-weighted phase sums per element are matrix
products. Two kernels share this:

* small problems (``hkl`` box points times sites up to ~500,000, i.e. cells up to ~60-100 atoms
  at Cu K-alpha) take the sine and cosine of every (reflection, site) pair directly. Small ``hkl``
  boxes are cached by size, and :func:`simulate_peaks_batch` takes the trigonometry of a group of
  structures in one call and merges all their lines together, so little fixed cost remains;
* large cells use the separability ``exp(2 pi i (hx + ky + lz)) = e_h(x) e_k(y) e_l(z)``: sines
  and cosines of three small tables, and one complex matrix product over the whole box.

``scripts/benchmark_data.py`` measures both functions against pymatgen's ``XRDCalculator`` per
cell-size bucket (speed-up and agreement) in one run. Intensities agree with a float64 loop
implementation to ~1e-4 on the 0-100 scale.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from .grid import CU_KA1, CU_KA2, bragg_d_spacing, check_pattern_arrays
from .structures import Crystal, as_crystal, element_symbol

__all__ = [
    "PeakList",
    "simulate_peaks",
    "simulate_peaks_batch",
    "FORM_FACTOR_TABLES",
    "KALPHA2_RATIO",
]

logger = logging.getLogger(__name__)

#: Intensity ratio of the K-alpha2 to the K-alpha1 line (Cu: 0.5 to within a few percent).
KALPHA2_RATIO = 0.5

#: Form-factor tables :func:`simulate_peaks` can use.
FORM_FACTOR_TABLES = ("it92", "pymatgen")

# Direct (reflection, site) phases while box points x sites stay below this (float64 phases of
# ~4 MB); beyond it the separable box kernel is faster (measured crossover: see the benchmark).
_MAX_PAIRS = 1 << 19
# hkl boxes up to this many points are cached (72 bytes a point; 128 boxes <= 38 MB).
_CACHED_BOX_POINTS = 4096
# Most (h, k, l) box points one structure may need (~120 bytes each while enumerating: ~2.4 GB).
# The bundled structures need at most ~3e6 even at Ag K-alpha up to 2θ = 180 deg; a 150 Angstrom
# cubic cell at Cu K-alpha to 90 deg needs 1.1e7. Cells in pm or a wavelength in nm go far beyond.
_MAX_BOX_POINTS = 20_000_000
# simulate_peaks_batch works on groups of structures of about this many (reflection, site) pairs
# (estimated from the cell volume): enough to amortise per-call costs over small cells, small
# enough for the temporaries (~40 bytes a pair) to stay in cache (2^20 was slower, measured).
_GROUP_PAIRS = 1 << 16
# Structures below this many (reflection, site) pairs are grouped by simulate_peaks_batch.
_SMALL_PAIRS = 1 << 12
# Entries of the complex64 blocks held at once by the box kernel (8 MB and 0.5 MB).
_PHASE_BLOCK_ENTRIES = 1 << 20
_GATHER_BLOCK_ENTRIES = 1 << 16
# Site types (distinct element and B) up to which the box-wide matrix product beats weighting each
# site directly (measured: the crossover is ~32 types up to 200 sites, ~64 at 400 sites).
_MIN_MATMUL_TYPES = 32
# Amplitudes below this fraction of F(000) are rounding residue (float32 phases give ~1e-7).
_ABSENT_AMPLITUDE = 1e-5


@dataclass
class PeakList:
    """A stick pattern: one line per distinct 2θ.

    Attributes:
        two_theta: Line positions in degrees, float64 ``[P]``, ascending.
        intensity: Integrated intensities, float64 ``[P]``, the strongest scaled to 100.
        hkl: One representative Miller index per merged line (the lexicographically largest of the
            merged reflections, e.g. ``(1, 1, 1)`` for the {111} family), int64 ``[P, 3]``, or None.
        d_spacing: Interplanar spacing of each line in Angstrom, float64 ``[P]``. Computed from
            ``two_theta`` and ``wavelength`` when not given. (For K-alpha2 lines it is the
            reflection's d, which is not ``wavelength / (2 sin theta)``.)
        wavelength: Wavelength in Angstrom the positions refer to (K-alpha1 when a doublet was
            simulated).

    ``P = 0`` (no line in range) is allowed: all arrays are then empty.
    """

    two_theta: np.ndarray
    intensity: np.ndarray
    hkl: np.ndarray | None = None
    d_spacing: np.ndarray | None = None
    wavelength: float = CU_KA1

    def __post_init__(self) -> None:
        self.two_theta, self.intensity = check_pattern_arrays(self.two_theta, self.intensity)
        if not (math.isfinite(self.wavelength) and self.wavelength > 0):
            raise ValueError(
                f"wavelength must be a positive number of Angstrom, got {self.wavelength}"
            )
        self.wavelength = float(self.wavelength)
        if self.d_spacing is None:
            self.d_spacing = bragg_d_spacing(self.two_theta, self.wavelength)
        self.d_spacing = np.asarray(self.d_spacing, dtype=np.float64)
        if self.d_spacing.shape != self.two_theta.shape:
            raise ValueError(
                f"d_spacing has shape {self.d_spacing.shape}, expected {self.two_theta.shape}"
            )
        if self.hkl is not None:
            self.hkl = np.asarray(self.hkl, dtype=np.int64).reshape(-1, 3)
            if len(self.hkl) != len(self.two_theta):
                raise ValueError(f"hkl has {len(self.hkl)} rows, expected {len(self.two_theta)}")

    @classmethod
    def _trusted(
        cls,
        two_theta: np.ndarray,
        intensity: np.ndarray,
        hkl: np.ndarray | None,
        d_spacing: np.ndarray,
        wavelength: float,
    ) -> PeakList:
        """A list from arrays the simulator built (float64 ``[P]``, int64 ``[P, 3]``, checked
        wavelength). Skips ``__post_init__``, whose checks cost as much as simulating a small
        cell; everything built from outside goes through the validating constructor."""
        peaks = cls.__new__(cls)
        peaks.two_theta, peaks.intensity, peaks.hkl = two_theta, intensity, hkl
        peaks.d_spacing, peaks.wavelength = d_spacing, wavelength
        return peaks

    def __len__(self) -> int:
        return len(self.two_theta)


# ------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Options:
    """The checked keyword arguments of :func:`simulate_peaks`, in the form the kernels use."""

    wavelength: float  # K-alpha1, the wavelength the returned lists refer to
    bragg: np.ndarray  # [W, 1]: lambda^2 / 4 of every line, so sin^2(theta) = bragg |g|^2
    ratios: np.ndarray  # [W]: intensity ratio of every line (K-alpha1, K-alpha2)
    sin2_low: float  # sin^2(theta) range of the lines, from two_theta_range
    sin2_high: float
    g_min: float  # |g| range of the reflections to enumerate, Angstrom^-1
    g_max: float
    merge_tol: float
    min_intensity: float
    table: str
    return_hkl: bool


def _check_options(
    wavelength: float,
    two_theta_range: Sequence[float],
    kalpha2: bool,
    kalpha2_wavelength: float,
    kalpha2_ratio: float,
    merge_tol: float,
    min_intensity: float,
    form_factors: str,
    return_hkl: bool,
) -> _Options:
    """Checks the arguments of :func:`simulate_peaks` (ValueError / TypeError naming the value).

    The checked options are cached by value: callers repeat the same few, and building them costs
    as much as the rest of a small cell's pattern.
    """
    try:
        two_theta_range = tuple(two_theta_range)
    except TypeError:  # None, a single number
        raise ValueError(
            f"two_theta_range must be (min, max) in degrees, got {two_theta_range!r}"
        ) from None
    key = (
        wavelength, two_theta_range, kalpha2, kalpha2_wavelength, kalpha2_ratio, merge_tol,
        min_intensity, form_factors, return_hkl,
    )  # fmt: skip
    try:
        hash(key)
    except TypeError:  # unhashable values: check them uncached (and get the clear error)
        return _build_options(*key)
    return _cached_options(*key)


def _build_options(
    wavelength: float,
    two_theta_range: Sequence[float],
    kalpha2: bool,
    kalpha2_wavelength: float,
    kalpha2_ratio: float,
    merge_tol: float,
    min_intensity: float,
    form_factors: str,
    return_hkl: bool,
) -> _Options:
    if len(two_theta_range) != 2 or not all(_is_real(v) for v in two_theta_range):
        raise ValueError(f"two_theta_range must be (min, max) in degrees, got {two_theta_range!r}")
    low, high = (float(v) for v in two_theta_range)
    if not 0.0 <= low < high <= 180.0:
        raise ValueError(
            f"two_theta_range must satisfy 0 <= min < max <= 180 degrees, got {two_theta_range}"
        )
    for name, value in (("wavelength", wavelength), ("kalpha2_wavelength", kalpha2_wavelength)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
            raise TypeError(f"{name} must be a number of Angstrom, got {type(value).__name__}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of Angstrom, got {value!r}")
    if not (merge_tol >= 0 and min_intensity >= 0 and kalpha2_ratio >= 0):
        raise ValueError(
            f"merge_tol, min_intensity and kalpha2_ratio must be >= 0, got {merge_tol!r}, "
            f"{min_intensity!r} and {kalpha2_ratio!r}"
        )
    if form_factors not in FORM_FACTOR_TABLES:
        raise ValueError(f"form_factors must be one of {FORM_FACTOR_TABLES}, got {form_factors!r}")
    wavelengths = [float(wavelength), float(kalpha2_wavelength)] if kalpha2 else [float(wavelength)]
    # 2θ = 180 deg exactly is a singular Lorentz factor: stop 1e-12 short of it in sin(theta).
    sin_low = math.sin(math.radians(low / 2))
    sin_high = min(math.sin(math.radians(high / 2)), 1.0 - 1e-12)
    return _Options(
        wavelength=float(wavelength),
        bragg=np.square(wavelengths)[:, None] / 4,
        ratios=np.array([1.0, float(kalpha2_ratio)] if kalpha2 else [1.0]),
        sin2_low=sin_low**2,
        sin2_high=sin_high**2,
        g_min=2 * sin_low / max(wavelengths),
        g_max=2 * sin_high / min(wavelengths),
        merge_tol=float(merge_tol),
        min_intensity=float(min_intensity),
        table=form_factors,
        return_hkl=bool(return_hkl),
    )


_cached_options = functools.lru_cache(maxsize=64, typed=True)(_build_options)


def _is_real(value: Any) -> bool:
    """A real number, not a bool or a string (which ``float`` would also take)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _site_b_iso(crystal: Crystal, b_iso: float | Mapping[str, float] | None) -> np.ndarray:
    """Per-site B ``[N]`` from the ``b_iso`` argument of :func:`simulate_peaks`."""
    if b_iso is None:
        return crystal.b_iso
    if not (_is_real(b_iso) or (isinstance(b_iso, Mapping) and all(map(_is_real, b_iso.values())))):
        raise ValueError(
            f"b_iso must be a number of Angstrom^2, {{element: number}} or None, got {b_iso!r}"
        )
    if isinstance(b_iso, Mapping):
        per_element = {element_symbol(k): float(v) for k, v in b_iso.items()}
        values = np.array(
            [per_element.get(s, b) for s, b in zip(crystal.species, crystal.b_iso, strict=True)]
        )
    else:
        values = np.full(len(crystal.species), float(b_iso))
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"b_iso must be finite and >= 0 Angstrom^2, got {b_iso}")
    return values


# --------------------------------------------------------------------------------- form factors


@functools.lru_cache(maxsize=1)
def _pymatgen_table() -> dict[str, list[list[float]]]:
    """pymatgen's ``atomic_scattering_params.json``, read without importing pymatgen."""
    spec = importlib.util.find_spec("pymatgen")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("form_factors='pymatgen' needs pymatgen installed (pip install pymatgen)")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "analysis" / "diffraction" / "atomic_scattering_params.json"
    return json.loads(path.read_text())


@functools.lru_cache(maxsize=1024)
def _coefficients(
    elements: tuple[str, ...], table: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Form-factor coefficients of ``elements``: ``a [E, 4]``, ``b [E, 4]``, ``c [E]``.

    IT92: ``f(s) = sum_i a_i exp(-b_i s^2) + c``. pymatgen's table: ``f(s) = Z - 41.78214 s^2 sum_i
    a_i exp(-b_i s^2)`` (Mott-Bethe form); stored here as ``a -> -41.78214 a`` and ``c = Z`` with
    the ``s^2`` prefactor applied by :func:`_form_factors`.
    """
    a, b, c = [], [], []
    for symbol in elements:
        element = gemmi.Element(symbol)
        if table == "it92":
            coef = element.it92
            if coef is None:
                raise ValueError(
                    f"no IT92 form factor for element {symbol} (Z = {element.atomic_number})"
                )
            a.append(coef.a)
            b.append(coef.b)
            c.append(coef.c)
        else:
            # pymatgen's table has no "D"; deuterium scatters X-rays as hydrogen does.
            params = _pymatgen_table().get("H" if symbol == "D" else symbol)
            if params is None:
                raise ValueError(f"pymatgen's form-factor table has no element {symbol}")
            a.append([-41.78214 * p[0] for p in params])
            b.append([p[1] for p in params])
            c.append(float(element.atomic_number))
    return tuple(np.asarray(v, dtype=np.float64) for v in (a, b, c))


@dataclass(frozen=True)
class _Elements:
    """The distinct elements of a site list, with what the kernels need of them."""

    site_element: np.ndarray  # [N] int: index of each site's element
    onehot: np.ndarray  # [E, N] float32: 1 where site n holds element e
    site_z: np.ndarray  # [N] float64: atomic number of each site, for F(000)
    neg_b: np.ndarray  # [E * 4 + 1, 1]: minus the Gaussian widths b, element by element, then 0
    # [E, E * 4 + 1]: the weights a, block-diagonal (sums each element's terms), then the constant
    # c in the column that meets exp(0 * s^2) = 1 (0 for pymatgen's table, which adds c after s^2)
    a_block: np.ndarray
    c: np.ndarray  # [E]
    mott_bethe: bool  # pymatgen's table: the Gaussian sum is multiplied by s^2


@functools.lru_cache(maxsize=1024)
def _elements(species: tuple[str, ...], table: str) -> _Elements:
    """Element bookkeeping of a site list, cached: a generated stream repeats compositions, and
    the lookups cost more than simulating a small cell."""
    symbols = tuple(sorted(set(species)))
    position = {symbol: i for i, symbol in enumerate(symbols)}
    site_element = np.array([position[s] for s in species], dtype=np.intp)
    a, b, c = _coefficients(symbols, table)
    num_elements = len(symbols)
    mott_bethe = table == "pymatgen"
    a_block = np.zeros((num_elements, num_elements, 4))
    a_block[np.arange(num_elements), np.arange(num_elements), :] = a
    constant = np.zeros((num_elements, 1)) if mott_bethe else c[:, None]
    z = np.array([gemmi.Element(s).atomic_number for s in symbols], dtype=np.float64)
    return _Elements(
        site_element=site_element,
        onehot=np.eye(num_elements, dtype=np.float32)[:, site_element],
        site_z=z[site_element],
        neg_b=np.append(-b.reshape(-1), 0.0)[:, None],
        a_block=np.concatenate([a_block.reshape(num_elements, -1), constant], axis=1),
        c=c,
        mott_bethe=mott_bethe,
    )


def _form_factors(elements: _Elements, s2: np.ndarray) -> np.ndarray:
    """Atomic form factors ``[E, M]`` at ``s^2 = (sin(theta) / lambda)^2`` ``[M]`` (Angstrom^-2).

    Reflections run along the last axis: numpy reduces and multiplies contiguous rows much faster
    than short last axes (measured 4x on the pair kernel's sums).
    """
    form = elements.a_block @ np.exp(elements.neg_b * s2)
    if elements.mott_bethe:
        form *= s2
        form += elements.c[:, None]
    return form


def _absent_below(crystal: Crystal, elements: _Elements) -> float:
    """``|F|^2`` under which a reflection is systematically absent.

    Absences come out as float32 rounding residue, ~1e-7 of the largest possible amplitude F(000) ~
    sum_j occ_j Z_j; dropping them makes a range holding only absent reflections give an empty list
    instead of residue scaled to 100.
    """
    return (_ABSENT_AMPLITUDE * float(crystal.occupancies @ elements.site_z)) ** 2


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
        g2 = box.quad @ coefficients
        keep = ((g2 >= g2_low) & (g2 <= g2_high)).nonzero()[0]
        found.append(_Reflections(box.hkl[keep], g2[keep]))
    return found


# ---------------------------------------------------------------------------- structure factors


def _unit_phasors(turns: np.ndarray) -> np.ndarray:
    """``cos`` and ``sin`` of ``2 pi turns`` (float64 ``[P]``, overwritten) as float32 ``[2, P]``.

    The phase is reduced mod 1 in float64 first, so float32 trigonometry loses nothing at large
    ``hkl``; float32 sine and cosine are ~5x faster than a complex exponential.
    """
    turns -= np.floor(turns)
    angle = np.multiply(turns, 2 * np.pi, out=np.empty(len(turns), dtype=np.float32))
    phasors = np.empty((2, len(angle)), dtype=np.float32)
    np.cos(angle, out=phasors[0])
    np.sin(angle, out=phasors[1])
    return phasors


def _pair_squared(
    phasors: np.ndarray, s2: np.ndarray, crystal: Crystal, b_site: np.ndarray, elements: _Elements
) -> np.ndarray:
    """``|F|^2`` float64 ``[M]`` of one structure from its unit phasors ``[2, M, N]`` (cos, sin of
    ``2 pi hkl . x_j``) at ``s^2 [M]``: the occupancy-weighted phasor sum of every element is one
    float32 matrix product, then weighted by the element's form factor."""
    form = _form_factors(elements, s2)  # [E, M]
    if b_site.any():  # Debye-Waller factors (usually all 0)
        first_b = float(b_site[0])
        if (b_site == first_b).all():  # one B for every site: a factor per reflection
            form *= np.exp(-first_b * s2)
        else:
            phasors = phasors * np.exp(np.multiply.outer(s2, -b_site)).astype(np.float32)
    weights = np.multiply(elements.onehot, crystal.occupancies, dtype=np.float32)  # [E, N]
    sums = weights @ phasors.transpose(0, 2, 1)  # [2, E, M]
    amplitude = np.add.reduce(sums * form, axis=1)  # real and imaginary part of F, [2, M]
    return np.add.reduce(amplitude * amplitude)


def _box_squared(
    reflections: _Reflections, crystal: Crystal, b_iso: np.ndarray, elements: _Elements
) -> np.ndarray:
    """``|F|^2`` float64 ``[M]`` of a large cell, whose reflections come with their box.

    The phase factor separates, ``exp(2 pi i hkl . x) = e_h(x) e_k(y) e_l(z)``, so only three small
    tables of sines and cosines are needed. Sites are grouped into types (distinct element and B,
    which share one scattering factor ``f_e(s) exp(-B s^2)``); the occupancy-weighted phase sum of
    every type over the whole box is then one complex matrix product per block of ``h``.
    """
    hkl, s2 = reflections.hkl, reflections.g2 / 4
    axes, mask = reflections.box
    element_index = elements.site_element
    form = _form_factors(elements, s2).T  # [M, E]
    # Site types: distinct (element, B) pairs share one scattering factor f_e(s) exp(-B s^2).
    b_values, b_index = np.unique(b_iso, return_inverse=True)
    type_codes, type_index = np.unique(
        element_index * len(b_values) + b_index.reshape(-1), return_inverse=True
    )
    type_index = type_index.reshape(-1)
    type_element, type_b = type_codes // len(b_values), b_values[type_codes % len(b_values)]
    type_factor = form[:, type_element] * np.exp(-s2[:, None] * type_b[None, :])  # [M, T]
    num_sites, num_types = len(crystal.species), len(type_codes)

    # [H|K|L, N] tables e_h(x), e_k(y), e_l(z)
    e_h, e_k, e_l = (_phase_table(axis, crystal.frac_coords[:, i]) for i, axis in enumerate(axes))
    occupancy = crystal.occupancies.astype(np.float32)
    if num_types <= max(_MIN_MATMUL_TYPES, num_sites // 6):
        weights = np.zeros((num_sites, num_types), dtype=np.complex64)  # [N, T]
        weights[np.arange(num_sites), type_index] = occupancy
        # [N, L * T]: e_l(z_j) * occupancy of site j in type t
        e_l_weighted = (e_l.T[:, :, None] * weights[:, None, :]).reshape(num_sites, -1)
        plane = mask[0].size  # K * L box points per h
        rows = max(1, _PHASE_BLOCK_ENTRIES // (plane * num_types))
        # Flat box indices of the kept points; a flat take is much faster than a 3-D boolean mask.
        keep = np.flatnonzero(mask)
        bounds = np.searchsorted(keep, np.arange(0, len(axes[0]) + rows, rows) * plane)
        sums = []
        for block_index, start in enumerate(range(0, len(axes[0]), rows)):
            block = slice(start, start + rows)
            e_hk = (e_h[block, None, :] * e_k[None, :, :]).reshape(-1, num_sites)  # [h * K, N]
            box_sums = (e_hk @ e_l_weighted).reshape(-1, num_types)  # [h * K * L, T]
            kept = keep[bounds[block_index] : bounds[block_index + 1]] - start * plane
            sums.append(box_sums[kept])
        type_sums = np.concatenate(sums)  # [M, T]
        structure_factor = np.einsum("mt,mt->m", type_factor, type_sums)
    else:
        # Many types (e.g. every site with its own B): weight each site directly, element by
        # element, with occupancy and Debye-Waller factor folded into one exponential.
        h_index, k_index, l_index = (
            np.searchsorted(axis, hkl[:, i]) for i, axis in enumerate(axes)
        )
        log_occupancy = np.log(crystal.occupancies)
        structure_factor = np.zeros(len(hkl), dtype=np.complex128)
        rows = max(1, _GATHER_BLOCK_ENTRIES // num_sites)
        for start in range(0, len(hkl), rows):
            block = slice(start, start + rows)
            phases = e_h[h_index[block]] * e_k[k_index[block]]
            phases *= e_l[l_index[block]]  # [m, N]
            site_weight = np.exp(log_occupancy[None, :] - s2[block, None] * b_iso[None, :])
            site_weight = site_weight.astype(np.float32)
            for e in range(form.shape[1]):
                sites = element_index == e
                per_element = np.einsum("mn,mn->m", phases[:, sites], site_weight[:, sites])
                structure_factor[block] += form[block, e] * per_element
    return (
        structure_factor.real.astype(np.float64) ** 2
        + structure_factor.imag.astype(np.float64) ** 2
    )


def _phase_table(indices: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``exp(2 pi i n x_j)`` complex64 ``[len(indices), N]`` for integer ``n`` and coordinates
    ``x [N]``: the phase is reduced mod 1 in float64 before the float32 sine and cosine."""
    phasors = _unit_phasors(np.multiply.outer(indices.astype(np.float64), coords).reshape(-1))
    table = np.empty(phasors.shape[1], dtype=np.complex64)
    table.real, table.imag = phasors
    return table.reshape(len(indices), len(coords))


def _structure_factors(
    crystals: Sequence[Crystal],
    b_sites: Sequence[np.ndarray],
    reflections: list[_Reflections],
    table: str,
) -> None:
    """Fill ``reflections[i].squared`` for every structure. The phases of all pair-kernel
    structures are concatenated, so their trigonometry is a few large numpy calls."""
    blocks = [
        (found.hkl @ crystal.frac_coords.T).reshape(-1)
        for crystal, found in zip(crystals, reflections, strict=True)
        if found.box is None
    ]
    if blocks:
        phasors = _unit_phasors(_concatenate(blocks))
    start = 0
    for crystal, b_site, found in zip(crystals, b_sites, reflections, strict=True):
        elements = _elements(tuple(crystal.species), table)
        found.absent = _absent_below(crystal, elements)
        if found.box is not None:
            found.squared = _box_squared(found, crystal, b_site, elements)
            continue
        shape = (2, len(found.g2), len(crystal.species))
        block = phasors[:, start : start + shape[1] * shape[2]].reshape(shape)
        start += shape[1] * shape[2]
        found.squared = _pair_squared(block, found.g2 / 4, crystal, b_site, elements)


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


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _lines(reflections: list[_Reflections], options: _Options) -> list[PeakList]:
    """The peak list of every structure from its reflections and ``|F|^2``.

    The reflections of all structures are concatenated; lines are sorted by (structure, 2θ), so
    merging, scaling and the intensity cut are a few numpy calls for the whole group.
    """
    num_structures = len(reflections)
    g2 = _concatenate([found.g2 for found in reflections])
    squared = _concatenate([found.squared for found in reflections])
    counts = [len(found.g2) for found in reflections]
    if num_structures == 1:
        absent = reflections[0].absent
    else:
        absent = np.repeat([found.absent for found in reflections], counts)
    which_wavelength, which, sin2 = _lines_in_range(g2, squared, absent, options)
    if len(which) == 0:
        return [_empty(options) for _ in reflections]
    # Sort by (structure, sin^2 θ), i.e. by (structure, 2θ), before computing anything per line.
    if num_structures == 1:
        structure = None
        order = sin2.argsort(kind="stable")
    else:
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

    # Merge coincident lines: a line starts where the structure changes or the gap exceeds
    # merge_tol.
    new_line = np.empty(len(two_theta), dtype=bool)
    new_line[0] = True
    np.greater(two_theta[1:] - two_theta[:-1], options.merge_tol, out=new_line[1:])
    if structure is not None:
        new_line[1:] |= structure[1:] != structure[:-1]
    starts = new_line.nonzero()[0]
    line_intensity = np.add.reduceat(intensity, starts)
    line_structure = None if structure is None else structure[starts]
    _scale_to_100(line_intensity, line_structure, num_structures)

    line_hkl = None
    if options.return_hkl:
        hkl = _concatenate([found.hkl for found in reflections])
        line_hkl = _representative_hkl(hkl, which, starts)
    keep = line_intensity > options.min_intensity
    if not keep.all():
        starts, line_intensity = starts[keep], line_intensity[keep]
        line_structure = None if structure is None else line_structure[keep]
        line_hkl = None if line_hkl is None else line_hkl[keep]
    line_two_theta, line_d = two_theta[starts], 1.0 / np.sqrt(g2[which[starts]])
    if structure is None:
        return [
            PeakList._trusted(line_two_theta, line_intensity, line_hkl, line_d, options.wavelength)
        ]
    bounds = np.searchsorted(line_structure, np.arange(num_structures + 1)).tolist()
    return [
        PeakList._trusted(
            line_two_theta[lo:hi],
            line_intensity[lo:hi],
            None if line_hkl is None else line_hkl[lo:hi],
            line_d[lo:hi],
            options.wavelength,
        )
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _scale_to_100(
    line_intensity: np.ndarray, line_structure: np.ndarray | None, num_structures: int
) -> None:
    """Scale each structure's strongest line to 100, in place (lines sorted by structure). A
    structure whose lines are all 0 (a K-alpha2 ratio of 0) keeps them at 0: they are cut."""
    if line_structure is None:
        strongest = line_intensity.max()
        line_intensity *= 100.0 / strongest if strongest > 0 else 0.0
        return
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
    groups of about 65,000 pairs (small enough to stay in cache): the phases of a whole group go
    through one set of trigonometric calls, and the merging, scaling and cutting of all its lines
    through one set of sorts and reductions, so the fixed per-call cost of :func:`simulate_peaks`
    is paid once per group. Larger structures are simulated one by one, which measured faster.

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
