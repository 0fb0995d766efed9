"""A minimal crystal-structure record that the simulator and the datasets share.

:class:`Crystal` holds exactly what a powder pattern needs (cell, sites, occupancies,
isotropic displacement) and nothing else, so datasets can store structures as plain columns and
the simulator needs no optional dependency. :func:`as_crystal` converts the structure types users
have (pymatgen ``Structure``, ASE ``Atoms``, gemmi ``SmallStructure``, a CIF path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Crystal", "lattice_matrix"]


def lattice_matrix(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Lattice vectors as rows ``[3, 3]`` (Angstrom) from cell lengths and angles (degrees).

    Convention (as pymatgen's ``Lattice.from_parameters``): ``c`` along z, ``a`` in the xz plane.
    """
    for name, value in zip("abc", (a, b, c), strict=True):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"cell length {name} must be positive, got {value}")
    al, be, ga = np.radians([alpha, beta, gamma])
    cos_al, cos_be, cos_ga = np.cos([al, be, ga])
    sin_al, sin_be = np.sin([al, be])
    val = (cos_al * cos_be - cos_ga) / (sin_al * sin_be)
    if not -1.0 <= val <= 1.0:
        raise ValueError(f"cell angles ({alpha}, {beta}, {gamma}) do not form a valid cell")
    gamma_star = math.acos(val)
    vector_a = [a * sin_be, 0.0, a * cos_be]
    vector_b = [-b * sin_al * math.cos(gamma_star), b * sin_al * math.sin(gamma_star), b * cos_al]
    vector_c = [0.0, 0.0, float(c)]
    return np.array([vector_a, vector_b, vector_c], dtype=np.float64)


@dataclass
class Crystal:
    """A crystal structure: cell and the full list of sites in it (no symmetry expansion needed).

    Attributes:
        lattice: Lattice vectors as rows, float64 ``[3, 3]``, Angstrom.
        species: Element symbol of every site (``"Si"``, ``"O"``; charges are ignored), ``N`` long.
        frac_coords: Fractional coordinates, float64 ``[N, 3]``.
        occupancies: Site occupancies in (0, 1], float64 ``[N]`` (default 1).
        b_iso: Isotropic Debye-Waller factors B in Angstrom^2, float64 ``[N]`` (default 0).
        space_group: International number 1..230 if known (not needed for simulation).
    """

    lattice: np.ndarray
    species: Sequence[str]
    frac_coords: np.ndarray
    occupancies: np.ndarray | None = None
    b_iso: np.ndarray | None = None
    space_group: int | None = None

    def __post_init__(self) -> None:
        self.lattice = np.asarray(self.lattice, dtype=np.float64)
        self.frac_coords = np.asarray(self.frac_coords, dtype=np.float64).reshape(-1, 3)
        self.species = [str(s) for s in self.species]
        n = len(self.species)
        self.occupancies = (
            np.ones(n) if self.occupancies is None else np.asarray(self.occupancies, dtype=np.float64)
        )
        self.b_iso = np.zeros(n) if self.b_iso is None else np.asarray(self.b_iso, dtype=np.float64)
        if self.lattice.shape != (3, 3):
            raise ValueError(f"lattice must be [3, 3], got shape {self.lattice.shape}")
        if abs(np.linalg.det(self.lattice)) < 1e-6:
            raise ValueError("lattice vectors are linearly dependent (cell volume ~ 0)")
        if n == 0:
            raise ValueError("a crystal needs at least one site")
        for name, arr in (("frac_coords", self.frac_coords), ("occupancies", self.occupancies), ("b_iso", self.b_iso)):
            if arr.shape[0] != n:
                raise ValueError(f"{name} has {arr.shape[0]} rows but there are {n} species")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains NaN or inf")
        if np.any(self.occupancies <= 0) or np.any(self.occupancies > 1 + 1e-6):
            raise ValueError("occupancies must lie in (0, 1]")
        if self.space_group is not None and not 1 <= int(self.space_group) <= 230:
            raise ValueError(f"space_group must be in 1..230, got {self.space_group}")

    @classmethod
    def from_parameters(
        cls,
        lattice_parameters: Sequence[float],
        species: Sequence[str],
        frac_coords: np.ndarray,
        **kwargs,
    ) -> Crystal:
        """Build from ``(a, b, c, alpha, beta, gamma)`` (Angstrom, degrees)."""
        if len(lattice_parameters) != 6:
            raise ValueError(f"need 6 lattice parameters (a, b, c, alpha, beta, gamma), got {len(lattice_parameters)}")
        return cls(lattice_matrix(*lattice_parameters), species, frac_coords, **kwargs)

    @property
    def lattice_parameters(self) -> tuple[float, float, float, float, float, float]:
        """``(a, b, c, alpha, beta, gamma)`` in Angstrom and degrees."""
        a, b, c = np.linalg.norm(self.lattice, axis=1)
        alpha = np.degrees(np.arccos(np.dot(self.lattice[1], self.lattice[2]) / (b * c)))
        beta = np.degrees(np.arccos(np.dot(self.lattice[0], self.lattice[2]) / (a * c)))
        gamma = np.degrees(np.arccos(np.dot(self.lattice[0], self.lattice[1]) / (a * b)))
        return (float(a), float(b), float(c), float(alpha), float(beta), float(gamma))

    @property
    def volume(self) -> float:
        """Cell volume in Angstrom^3."""
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def formula(self) -> str:
        """Cell composition: elements in alphabetical order with occupancy-weighted site counts,
        e.g. ``"O4Si2"`` for a cell holding two SiO2 units (not reduced)."""
        counts: dict[str, float] = {}
        for element, occ in zip(self.species, self.occupancies, strict=True):
            counts[element] = counts.get(element, 0.0) + float(occ)
        parts = []
        for element in sorted(counts):
            n = counts[element]
            parts.append(element if abs(n - 1) < 1e-6 else f"{element}{n:g}")
        return "".join(parts)
