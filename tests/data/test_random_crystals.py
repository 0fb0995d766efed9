"""The fast random-crystal generator: true labels (spglib as the oracle), determinism, geometry."""

from __future__ import annotations

import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import pytest
import spglib

from physmoe.crystallography import crystal_system_index
from physmoe.data import Crystal, GeneratedCrystal, RandomCrystalGenerator, simulate_peaks
from physmoe.data.random_crystals import _contact_distance


def _spglib_number(crystal: Crystal) -> int:
    kinds = {element: k for k, element in enumerate(sorted(set(crystal.species)))}
    cell = (crystal.lattice, crystal.frac_coords, [kinds[s] for s in crystal.species])
    return int(spglib.get_symmetry_dataset(cell, symprec=1e-3).number)


def _same(first: GeneratedCrystal, second: GeneratedCrystal) -> bool:
    return (
        first.species == second.species
        and np.array_equal(first.lattice, second.lattice)
        and np.array_equal(first.frac_coords, second.frac_coords)
        and first.space_group == second.space_group
    )


@pytest.mark.slow
def test_labels_are_the_groups_spglib_detects_on_5000_uniform_crystals():
    """The issue's check: 5,000 crystals drawn uniformly over the 230 groups; spglib (independent
    of the moyo labeller) must find the labelled group for every one, and the drawn group must be
    kept for >= 98%."""
    crystals = RandomCrystalGenerator(prior="uniform", seed=2024).sample(5000)
    labels = np.array([c.space_group for c in crystals])
    detected = np.array([_spglib_number(c) for c in crystals])
    requested = np.array([c.requested_space_group for c in crystals])
    np.testing.assert_array_equal(detected, labels)
    assert (labels == requested).mean() >= 0.98
    systems = np.array([crystal_system_index(g) for g in requested])
    kept = [(labels == requested)[systems == system].mean() for system in range(7)]
    # Cubic groups keep the fewest (F432, F-43c, Fm-3c, ... have no orbit within 64 atoms that
    # lacks a supergroup's symmetry); measured 1.00/0.999/0.998/0.999/1.00/1.00/0.87.
    assert min(kept[:6]) >= 0.98 and kept[6] >= 0.8, kept
    assert len(np.unique(requested)) == 230


def test_same_seed_same_crystals_in_any_order_and_any_number_of_processes():
    generator = RandomCrystalGenerator(seed=7)
    stream = generator.sample(12)
    assert [c.index for c in stream] == list(range(12))
    assert generator.position == 12
    shuffled = RandomCrystalGenerator(seed=7).generate([11, 3, 0])
    assert all(
        _same(a, b) for a, b in zip(shuffled, [stream[11], stream[3], stream[0]], strict=True)
    )
    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as pool:
        halves = list(pool.map(_generate_in_worker, [range(0, 12, 2), range(1, 12, 2)]))
    from_workers = sorted(halves[0] + halves[1], key=lambda c: c.index)
    assert all(_same(a, b) for a, b in zip(from_workers, stream, strict=True))
    other_seed = RandomCrystalGenerator(seed=8).generate(range(12))
    assert not any(_same(a, b) for a, b in zip(other_seed, stream, strict=True))


def _generate_in_worker(indices):
    return RandomCrystalGenerator(seed=7).generate(list(indices))


def test_splits_are_disjoint_streams_with_their_own_ids():
    train = RandomCrystalGenerator(seed=3, split="train").generate(range(20))
    test = RandomCrystalGenerator(seed=3, split="test").generate(range(20))
    assert not any(_same(a, b) for a in train for b in test)
    assert train[4].structure_id == "train-3-4" and test[4].structure_id == "test-3-4"


def test_crystals_obey_their_crystal_system_and_keep_atoms_apart():
    """Cell constraints per system, and every pair of atoms (periodic images included, measured
    by pymatgen) at least min_distance_factor x the contact distance apart."""
    pymatgen = pytest.importorskip("pymatgen.core")
    generator = RandomCrystalGenerator(prior="uniform", seed=11, max_atoms=32)
    for crystal in generator.sample(60):
        a, b, c, alpha, beta, gamma = crystal.lattice_parameters
        system = crystal_system_index(crystal.requested_space_group)
        if system >= 2:
            assert np.allclose([alpha, beta], 90.0)
        if system in (2, 3, 6):
            assert np.isclose(gamma, 90.0)
        if system in (4, 5):
            assert np.isclose(gamma, 120.0) and np.isclose(a, b)
        if system == 3:
            assert np.isclose(a, b)
        if system == 6:
            assert np.allclose([a, b], c)
        structure = pymatgen.Structure(crystal.lattice, crystal.species, crystal.frac_coords)
        distances = structure.distance_matrix
        limits = np.array(
            [[_contact_distance(p, q) for q in crystal.species] for p in crystal.species]
        )
        np.fill_diagonal(distances, np.inf)
        assert (distances >= 0.8 * limits - 1e-9).all()
        shortest = _shortest_translation(crystal.lattice)
        assert shortest >= 0.8 * max(_contact_distance(s, s) for s in crystal.species) - 1e-9
        assert len(crystal) <= 32
        # Built without Crystal's validation: it must pass it unchanged.
        checked = Crystal(crystal.lattice, crystal.species, crystal.frac_coords)
        assert checked.species == crystal.species
        for name in ("lattice", "frac_coords", "occupancies", "b_iso"):
            assert getattr(crystal, name).dtype == np.float64
            np.testing.assert_array_equal(getattr(checked, name), getattr(crystal, name))


def _shortest_translation(lattice: np.ndarray) -> float:
    shifts = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3)).reshape(3, -1).T
    lengths = np.linalg.norm(shifts @ lattice, axis=1)
    return float(lengths[lengths > 1e-9].min())


def test_simulate_peaks_takes_generated_crystals_and_ase_round_trip():
    pytest.importorskip("ase")
    crystal = RandomCrystalGenerator(seed=5).sample(1)[0]
    assert isinstance(crystal, Crystal)
    peaks = simulate_peaks(crystal)
    plain = simulate_peaks(crystal.to_crystal())
    np.testing.assert_array_equal(peaks.two_theta, plain.two_theta)
    np.testing.assert_array_equal(peaks.intensity, plain.intensity)
    back = Crystal.from_ase(crystal.to_ase())
    assert back.species == crystal.species and back.space_group == crystal.space_group
    np.testing.assert_allclose(back.lattice, crystal.lattice)
    np.testing.assert_allclose(back.frac_coords, crystal.frac_coords, atol=1e-12)


def test_priors_floor_and_requested_group():
    one_hot = np.zeros(230)
    one_hot[61] = 1.0
    crystals = RandomCrystalGenerator(prior=one_hot, seed=0).sample(20)
    assert {c.requested_space_group for c in crystals} == {62}
    floored = RandomCrystalGenerator(prior=one_hot, seed=0, prior_floor=1.0)
    np.testing.assert_allclose(floored.label_prior, np.full(230, 1 / 230))
    half = RandomCrystalGenerator(prior="icsd", prior_floor=0.5).label_prior
    assert half.min() >= 0.5 / 230 and np.isclose(half.sum(), 1.0)
    forced = RandomCrystalGenerator(seed=0).sample(5, space_group=225)
    assert {c.requested_space_group for c in forced} == {225}
    # ICSD prior: the commonest groups come first in a large enough sample.
    icsd = RandomCrystalGenerator(prior="icsd", seed=1, max_atoms=24).sample(400)
    counts = np.bincount([c.requested_space_group for c in icsd], minlength=231)
    assert counts.argmax() in (62, 225, 14, 194, 12, 139, 227, 166, 221)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prior": np.ones(229)}, "230 weights"),
        ({"prior": np.r_[np.ones(229), -1.0]}, "non-negative"),
        ({"prior": np.r_[np.ones(229), np.nan]}, "finite"),
        ({"prior": "martian"}, "unknown prior"),
        (
            {"max_atoms": 8, "prior": "uniform"},
            r"max_atoms=8 .* space groups \[.*220: 12.*230: 16\]",
        ),
        ({"max_atoms": 0}, "max_atoms"),
        ({"seed": -1}, "seed"),
        ({"prior_floor": 1.5}, "prior_floor"),
        ({"split": "dev"}, "split"),
        ({"min_distance_factor": 0.0}, "min_distance_factor"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomCrystalGenerator(**kwargs)


def test_bad_requests_are_refused_by_name():
    generator = RandomCrystalGenerator(max_atoms=8, prior=np.r_[1.0, np.zeros(229)])
    for bad in (0, 231, 2.5, True):
        with pytest.raises(ValueError, match="space_group"):
            generator.sample(1, space_group=bad)
    with pytest.raises(ValueError, match="space group 230 needs at least 16 atoms"):
        generator.sample(1, space_group=230)
    with pytest.raises(ValueError, match="n must be an integer >= 0, got -1"):
        generator.sample(-1)
    with pytest.raises(ValueError, match="index"):
        generator.generate([-2])
    assert generator.sample(0) == []


@pytest.mark.parametrize("indices", [5, np.int64(5), "5"])
def test_generate_needs_a_sequence_of_indices(indices):
    generator = RandomCrystalGenerator(max_atoms=8, prior=np.r_[1.0, np.zeros(229)])
    message = (
        r"indices must be a sequence of ints \(e\.g\. \[5\] or range\(5\)\), got "
        + re.escape(repr(indices))
    )
    with pytest.raises(TypeError, match=message):
        generator.generate(indices)
    assert len(generator.generate(np.array([5]))) == 1
