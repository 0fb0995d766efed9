"""The two-theta grid a model reads its input on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TwoThetaGrid",
    "CU_KA1",
    "CU_KA2",
    "bragg_d_spacing",
    "bragg_two_theta",
    "check_pattern_arrays",
]

#: Cu K-alpha1 and K-alpha2 wavelengths in Angstrom (Hoelzer et al. 1997, as in pymatgen).
CU_KA1 = 1.54056
CU_KA2 = 1.54439


def bragg_d_spacing(two_theta: np.ndarray, wavelength: float) -> np.ndarray:
    """Bragg's law: d-spacing (Angstrom) of 2θ (degrees) at ``wavelength`` (Angstrom)."""
    return wavelength / (2 * np.sin(np.radians(np.asarray(two_theta, dtype=np.float64)) / 2))


def bragg_two_theta(d_spacing: np.ndarray, wavelength: float) -> np.ndarray:
    """Bragg's law: 2θ (degrees) of a d-spacing at ``wavelength``; NaN where ``λ / 2d > 1`` (the
    reflection cannot be observed at that wavelength)."""
    sin_theta = wavelength / (2 * np.asarray(d_spacing, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        return np.where(
            sin_theta <= 1.0, np.degrees(2 * np.arcsin(np.minimum(sin_theta, 1.0))), np.nan
        )


def check_pattern_arrays(two_theta, intensity) -> tuple[np.ndarray, np.ndarray]:
    """``two_theta`` and ``intensity`` as float64 1-D arrays of equal length, or a ValueError."""
    two_theta = np.asarray(two_theta, dtype=np.float64)
    intensity = np.asarray(intensity, dtype=np.float64)
    if two_theta.ndim != 1 or intensity.shape != two_theta.shape:
        raise ValueError(
            f"two_theta and intensity must be 1-D of equal length, got shapes {two_theta.shape} "
            f"and {intensity.shape}"
        )
    return two_theta, intensity


@dataclass(frozen=True)
class TwoThetaGrid:
    """A uniform 2θ grid: ``num_points`` bins of width ``step`` starting at ``two_theta_min``.

    Point ``i`` is ``two_theta_min + i * step`` with ``step = (two_theta_max - two_theta_min) /
    num_points``, so the grid covers the half-open interval ``[two_theta_min, two_theta_max)``.
    The default (5-90 deg, 8500 points, step 0.01 deg, Cu K-alpha1) is the public reference's grid,
    ``numpy.arange(5, 90, 0.01)``.

    Args:
        two_theta_min: First grid point in degrees (default 5.0).
        two_theta_max: End of the grid in degrees, exclusive (default 90.0).
        num_points: Number of grid points (default 8500).
        wavelength: X-ray wavelength in Angstrom that the 2θ axis refers to (default Cu K-alpha1,
            1.54056).
    """

    two_theta_min: float = 5.0
    two_theta_max: float = 90.0
    num_points: int = 8500
    wavelength: float = CU_KA1

    def __post_init__(self) -> None:
        if not 0.0 <= self.two_theta_min < self.two_theta_max < 180.0:
            raise ValueError(
                f"need 0 <= two_theta_min < two_theta_max < 180 degrees, got "
                f"{self.two_theta_min} and {self.two_theta_max}"
            )
        if int(self.num_points) != self.num_points or self.num_points < 2:
            raise ValueError(f"num_points must be an integer >= 2, got {self.num_points}")
        if not (math.isfinite(self.wavelength) and self.wavelength > 0):
            raise ValueError(
                f"wavelength must be a positive number of Angstrom, got {self.wavelength}"
            )

    @property
    def step(self) -> float:
        """Grid spacing in degrees."""
        return (self.two_theta_max - self.two_theta_min) / self.num_points

    def values(self) -> np.ndarray:
        """Grid points in degrees, float64 ``[num_points]``."""
        return self.two_theta_min + self.step * np.arange(self.num_points, dtype=np.float64)

    @property
    def d_spacing_range(self) -> tuple[float, float]:
        """Smallest and largest d-spacing (Angstrom) the grid covers."""
        d = bragg_d_spacing([self.two_theta_max, max(self.two_theta_min, 1e-6)], self.wavelength)
        return float(d[0]), float(d[1])

    @classmethod
    def from_config(cls, config) -> TwoThetaGrid:
        """The grid of a model configuration (any object with the four grid attributes)."""
        return cls(
            two_theta_min=float(config.two_theta_min),
            two_theta_max=float(config.two_theta_max),
            num_points=int(config.num_points),
            wavelength=float(config.wavelength),
        )
