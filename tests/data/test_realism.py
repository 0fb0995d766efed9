"""The distance helper of scripts/compare_realism.py and the shipped real-structure set."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from physmoe.crystallography import CRYSTAL_SYSTEMS, crystal_system_index
from physmoe.data.embedded import read_structure_archive
from physmoe.data.structures import Crystal
from physmoe.data.symmetry import detect_space_group
from scripts_under_test import load_script

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "src" / "physmoe" / "resources"


@pytest.fixture(scope="module")
def realism():
    return load_script("compare_realism", "compare_realism_under_test")


@pytest.fixture(scope="module")
def collector():
    return load_script("collect_real_structures", "collect_real_structures_under_test")


def brute_force_distances(lattice: np.ndarray, frac: np.ndarray, reach: int = 3) -> np.ndarray:
    """Minimum-image distances over a (2 reach + 1)^3 block of images, no cell reduction."""
    r = np.arange(-reach, reach + 1)
    shifts = np.array(np.meshgrid(r, r, r, indexing="ij")).reshape(3, -1).T
    n = len(frac)
    out = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(n):
            vectors = (frac[j] - frac[i] + shifts) @ lattice
            d = np.linalg.norm(vectors, axis=1)
            if i == j:
                d = d[np.any(shifts != 0, axis=1)]
            out[i, j] = d.min()
    return out


def test_rock_salt_and_silicon_nearest_neighbours(realism):
    a = 5.64
    nacl = Crystal(
        np.eye(3) * a,
        ["Na"] * 4 + ["Cl"] * 4,
        [
            [0, 0, 0],
            [0, 0.5, 0.5],
            [0.5, 0, 0.5],
            [0.5, 0.5, 0],
            [0.5, 0, 0],
            [0, 0.5, 0],
            [0, 0, 0.5],
            [0.5, 0.5, 0.5],
        ],
    )
    stats = realism.nearest_neighbour_distances(nacl.lattice, nacl.frac_coords, nacl.species)
    assert stats["nn_distance"] == pytest.approx(a / 2, abs=1e-9)
    from ase.data import covalent_radii

    assert stats["nn_ratio"] == pytest.approx(a / 2 / (covalent_radii[11] + covalent_radii[17]))

    a = 5.431
    basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    si = Crystal(np.eye(3) * a, ["Si"] * 8, np.vstack([basis, basis + 0.25]))
    stats = realism.nearest_neighbour_distances(si.lattice, si.frac_coords, si.species)
    assert stats["nn_distance"] == pytest.approx(a * math.sqrt(3) / 4, abs=1e-9)
    # one-atom primitive fcc cell: the nearest neighbour is the atom's own image
    fcc = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]) * 3.61
    d = realism.pair_distances(fcc, np.zeros((1, 3)))
    assert d[0, 0] == pytest.approx(3.61 / math.sqrt(2), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_distances_match_brute_force_and_pymatgen(realism, seed):
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    # a strongly skewed triclinic cell: naive 3x3x3 images of the unreduced cell would miss
    # minimum images; the helper reduces the cell first.
    lattice = Lattice.from_parameters(4.0, 6.5, 9.0, 62.0, 117.0, 71.0).matrix
    lattice = np.array([[1, 2, 0], [0, 1, 0], [0, 1, 1]]) @ lattice  # same lattice, bad basis
    frac = rng.random((7, 3))
    got = realism.pair_distances(lattice, frac, chunk=3)
    np.testing.assert_allclose(got, brute_force_distances(lattice, frac), atol=1e-9)
    reference = Structure(lattice, ["Si"] * 7, frac).distance_matrix
    off_diagonal = ~np.eye(7, dtype=bool)
    np.testing.assert_allclose(got[off_diagonal], reference[off_diagonal], atol=1e-6)


def test_shipped_real_structures_load_with_documented_fields(collector):
    archive_path = RESOURCES / "real_structures.npz"
    sources_path = RESOURCES / "real_structures_sources.csv"
    assert archive_path.stat().st_size < 2_000_000
    archive = read_structure_archive(archive_path)
    with sources_path.open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == list(collector.CSV_FIELDS)  # as the script writes them
        rows = list(reader)
    assert len(rows) == len(archive) >= 300
    assert [r["id"] for r in rows] == [str(i) for i in archive.structure_ids]
    assert len({r["id"] for r in rows}) == len(rows)
    assert np.all(archive.occupancies == 1.0)  # ordered structures only
    groups = archive.space_groups.astype(int)
    assert [int(r["space_group"]) for r in rows] == groups.tolist()
    systems = {CRYSTAL_SYSTEMS[crystal_system_index(g)] for g in groups}
    assert systems == set(CRYSTAL_SYSTEMS)
    assert [r["crystal_system"] for r in rows] == [
        CRYSTAL_SYSTEMS[crystal_system_index(g)] for g in groups
    ]
    for row in rows:
        assert row["source_package"] and row["package_licence"] and row["path"] and row["origin"]
        assert row["category"] in {"inorganic", "molecular"}
    # the stored cells are spglib-standardised: relabelling a sample gives the stored group
    for index in range(0, len(archive), max(1, len(archive) // 25)):
        crystal = archive.crystal(index)
        assert int(rows[index]["num_sites"]) == len(crystal)
        assert detect_space_group(crystal) == groups[index]
