"""Space-group detection and standardisation against spglib."""

from __future__ import annotations

from collections import Counter

import numpy as np
import spglib

from physmoe.data.structures import Crystal
from physmoe.data.symmetry import detect_space_group, standardize_crystal


def test_detection_and_standardisation_against_spglib():
    # Rock salt given in its primitive rhombohedral cell (2 atoms).
    a = 5.64
    lattice = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    primitive = Crystal(lattice, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    number, conventional = standardize_crystal(primitive)
    assert number == 225 == detect_space_group(primitive)
    assert conventional.space_group == 225 and len(conventional.species) == 8
    np.testing.assert_allclose(conventional.lattice_parameters, (a, a, a, 90, 90, 90), atol=1e-9)
    assert Counter(conventional.species) == {"Na": 4, "Cl": 4}
    # Occupancy is part of the site type: half-occupied Cl breaks the Na/Cl equivalence the same
    # way a different element would.
    mixed = Crystal(lattice, ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]], occupancies=[1.0, 0.5])
    spglib_number = spglib.get_symmetry_dataset(
        (lattice, [[0, 0, 0], [0.5, 0.5, 0.5]], [1, 2]), symprec=1e-3
    ).number
    assert detect_space_group(mixed) == spglib_number == 225
    assert detect_space_group(Crystal(lattice, ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])) == 221
