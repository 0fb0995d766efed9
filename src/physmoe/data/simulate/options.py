"""The simulator's result type (:class:`PeakList`) and its checked options."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..grid import CU_KA1, bragg_d_spacing, check_pattern_arrays
from ..structures import Crystal, element_symbol

#: Form-factor tables :func:`simulate_peaks` can use.
FORM_FACTOR_TABLES = ("it92", "pymatgen")


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
