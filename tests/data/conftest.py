"""Shared fixtures for the data tests: a deterministic set of test structures from all seven
crystal systems (built with pymatgen's ``Structure.from_spacegroup``, no pyxtal, no downloads)
and NIST SRM 640e silicon."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest

from physmoe.crystallography import crystal_system_index

# Eight space groups per crystal system, covering P, A/C, I, F and R centring and glide/screw
# absences (triclinic has only two groups, so they repeat with other cells and sites).
SPACE_GROUPS_BY_SYSTEM = {
    "triclinic": (1, 2, 1, 2, 2, 1, 2, 1),
    "monoclinic": (3, 4, 5, 9, 11, 12, 14, 15),
    "orthorhombic": (19, 20, 22, 23, 43, 62, 70, 74),
    "tetragonal": (75, 79, 88, 92, 122, 129, 136, 141),
    "trigonal": (143, 146, 148, 152, 155, 160, 164, 167),
    "hexagonal": (168, 173, 176, 182, 186, 187, 191, 194),
    "cubic": (195, 198, 205, 216, 221, 225, 227, 230),
}

ELEMENTS = (
    "Li",
    "C",
    "N",
    "O",
    "F",
    "Na",
    "Mg",
    "Al",
    "Si",
    "P",
    "S",
    "Cl",
    "K",
    "Ca",
    "Ti",
    "Mn",
    "Fe",
    "Ni",
    "Cu",
    "Zn",
    "Se",
    "Sr",
    "Zr",
    "Ag",
    "Sn",
    "Ba",
    "La",
    "W",
    "Pb",
    "Bi",
)

# NIST SRM 640e silicon: certified lattice parameter (Angstrom) and relative intensities of the
# first six lines (111, 220, 311, 400, 331, 422) for Cu K-alpha1 with B = 0.47 Angstrom^2.
SI_640E_LATTICE = 5.431144
SI_640E_B = 0.47
SI_640E_HKL = ((1, 1, 1), (2, 2, 0), (3, 1, 1), (4, 0, 0), (3, 3, 1), (4, 2, 2))
SI_640E_INTENSITY = (100.0, 64.31, 37.32, 9.58, 14.14, 19.38)


@dataclass
class ReferenceStructure:
    """A test structure with the per-element Debye-Waller factors both simulators get."""

    name: str
    structure: object  # pymatgen Structure
    space_group: int
    crystal_system: int
    b_iso: dict[str, float]


def _lattice(system: str, rng: np.random.Generator):
    from pymatgen.core import Lattice

    a, b, c = rng.uniform(3.5, 8.0, size=3)
    if system == "triclinic":
        alpha, beta, gamma = rng.uniform(75, 105, size=3)
        return Lattice.from_parameters(a, b, c, alpha, beta, gamma)
    if system == "monoclinic":
        return Lattice.monoclinic(a, b, c, rng.uniform(95, 120))
    if system == "orthorhombic":
        return Lattice.orthorhombic(a, b, c)
    if system == "tetragonal":
        return Lattice.tetragonal(a, c)
    if system in ("trigonal", "hexagonal"):
        return Lattice.hexagonal(a, c)
    return Lattice.cubic(rng.uniform(4.0, 7.0))


def build_test_structures(seed: int = 640) -> list[ReferenceStructure]:
    """56 structures, 8 per crystal system, with 1-3 sites (general positions; on the 3-fold
    axis x,x,x in cubic groups of order >= 48, which keeps cells <= ~100 atoms), one disordered
    site in every fourth structure, and a Debye-Waller factor B in [0.2, 1.5] Angstrom^2 per
    element."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.groups import SpaceGroup

    rng = np.random.default_rng(seed)
    structures = []
    for system, numbers in SPACE_GROUPS_BY_SYSTEM.items():
        for i, number in enumerate(numbers):
            order = SpaceGroup.from_int_number(number).order
            num_sites = 1 if order >= 96 else int(rng.integers(1, 4))
            elements = [str(e) for e in rng.choice(ELEMENTS, size=num_sites + 1, replace=False)]
            coords = rng.uniform(0, 1, size=(num_sites, 3))
            if system == "cubic" and order >= 48:
                coords[:, 1] = coords[:, 0]
                coords[:, 2] = coords[:, 0]
            species: list = list(elements[:num_sites])
            if i % 4 == 3:  # a substitutionally disordered site
                species[0] = {elements[0]: 0.6, elements[-1]: 0.4}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Structure.from_spacegroup(
                    number, _lattice(system, rng), species, coords
                )
            b_iso = {e: float(rng.uniform(0.2, 1.5)) for e in elements}
            structures.append(
                ReferenceStructure(
                    f"{system}-{number}-{i}", structure, number, crystal_system_index(number), b_iso
                )
            )
    return structures


@pytest.fixture(scope="session")
def test_structures() -> list[ReferenceStructure]:
    pytest.importorskip("pymatgen")
    return build_test_structures()


@pytest.fixture(scope="session")
def silicon():
    """Diamond-structure silicon (Fd-3m, origin choice 1) as a :class:`Crystal`, 8 atoms."""
    from physmoe.data.structures import Crystal

    base = np.array([[0, 0, 0], [0.25, 0.25, 0.25]])
    centring = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    coords = (base[:, None, :] + centring[None, :, :]).reshape(-1, 3) % 1.0
    return Crystal.from_parameters(
        (SI_640E_LATTICE,) * 3 + (90.0,) * 3, ["Si"] * 8, coords, space_group=227
    )
