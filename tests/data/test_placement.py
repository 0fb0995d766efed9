"""The generator's compiled distance checks against brute force over 125 periodic images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from physmoe.crystallography import crystal_system_index
from physmoe.data._placement import _images, closest_ratios, contact_ratios
from physmoe.data.random_crystals import _NO_SHIFTS, _SYSTEM_SHIFTS, _random_lattice

# A group of every crystal system: triclinic, monoclinic, orthorhombic, tetragonal, trigonal,
# hexagonal, cubic.
GROUPS = (2, 14, 62, 139, 166, 194, 225)
TRANSLATIONS = np.array(list(itertools.product(range(-2, 3), repeat=3)), dtype=float)


def _nearest_squared(first: np.ndarray, others: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Squared distance ``[K]`` from ``first [3]`` to the nearest image of each of ``others``."""
    delta = others[:, None, :] - first + TRANSLATIONS  # [K, 125, 3]
    cartesian = delta @ lattice
    return (cartesian**2).sum(-1).min(-1)


@pytest.mark.parametrize("space_group", GROUPS)
def test_closest_ratios_match_brute_force(space_group):
    rng = np.random.default_rng(space_group)
    lattice = _random_lattice(space_group, volume=300.0, rng=rng)
    images = _images(_SYSTEM_SHIFTS.get(crystal_system_index(space_group), _NO_SHIFTS), lattice)
    candidates = rng.random((16, 4, 3))
    placed = rng.random((9, 3))
    limits = rng.uniform(1.0, 9.0, 3 + 9)
    closest, worst = closest_ratios(candidates, placed, limits, lattice, images)
    for t in range(16):
        others = np.concatenate([candidates[t, 1:], placed])
        ratio = _nearest_squared(candidates[t, 0], others, lattice) / limits
        np.testing.assert_allclose(closest[t], ratio.min(), rtol=1e-12)
        assert worst[t] == np.argmin(ratio)


@pytest.mark.parametrize("space_group", GROUPS)
def test_contact_ratios_match_brute_force(space_group):
    rng = np.random.default_rng(100 + space_group)
    lattice = _random_lattice(space_group, volume=200.0, rng=rng)
    images = _images(_SYSTEM_SHIFTS.get(crystal_system_index(space_group), _NO_SHIFTS), lattice)
    sizes = np.array([2, 4, 1, 3])
    coords = rng.random((sizes.sum(), 3))
    firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    orbit_of_atom = np.repeat(np.arange(4), sizes)
    contacts = rng.uniform(1.5, 3.5, (4, 4))
    contacts = (contacts + contacts.T) / 2
    ratios = contact_ratios(coords, firsts, orbit_of_atom, contacts, lattice, images)
    for o, a in enumerate(firsts):
        others = np.delete(np.arange(len(coords)), a)
        distance = np.sqrt(_nearest_squared(coords[a], coords[others], lattice))
        expected = (distance / contacts[o, orbit_of_atom[others]]).min()
        np.testing.assert_allclose(ratios[o], expected, rtol=1e-12)


def test_an_empty_neighbourhood_is_infinitely_far():
    lattice = np.eye(3) * 4.0
    closest, worst = closest_ratios(
        np.zeros((3, 1, 3)), np.empty((0, 3)), np.empty(0), lattice, _images(_NO_SHIFTS, lattice)
    )
    assert np.isinf(closest).all() and (worst == 0).all()
