"""The embedded default set: structure archives, the shipped set, default_dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import spglib

from physmoe.crystallography import ID2LABEL
from physmoe.data import embedded
from physmoe.data.dataset import split_indices
from physmoe.data.embedded import default_dataset, read_structure_archive, write_structure_archive
from physmoe.data.simulate import simulate_peaks
from physmoe.data.structures import Crystal
from physmoe.data.symmetry import detect_space_group

from .test_dataset import rock_salt

EMBEDDED = (
    Path(__file__).resolve().parents[2] / "src" / "physmoe" / "resources" / "default_structures.npz"
)


def test_structure_archive_round_trip(tmp_path):
    crystals = [
        rock_salt(5.64),
        Crystal.from_parameters(
            (3, 4, 5, 90, 100, 90),
            ["Fe", "O"],
            [[0, 0, 0], [0.3, 0.25, 0.1]],
            occupancies=[0.75, 1],
        ),
    ]
    path = write_structure_archive(tmp_path / "a.npz", ["x", "y"], crystals, [225, None], [225, 10])
    archive = read_structure_archive(path)
    assert len(archive) == 2 and archive.structure_ids.tolist() == ["x", "y"]
    assert archive.requested_space_groups.tolist() == [
        225,
        0,
    ] and archive.space_groups.tolist() == [225, 10]
    for original, index in zip(crystals, range(2), strict=True):
        restored = archive.crystal(index)
        assert restored.species == original.species
        np.testing.assert_allclose(
            restored.lattice_parameters, original.lattice_parameters, rtol=1e-6
        )
        np.testing.assert_allclose(restored.frac_coords, original.frac_coords, atol=1e-7)
        np.testing.assert_allclose(restored.occupancies, original.occupancies)
    assert detect_space_group(archive.crystal(0)) == 225
    np.savez(tmp_path / "bad.npz", structure_ids=np.array(["x"]))
    with pytest.raises(ValueError, match="not a structure archive"):
        read_structure_archive(tmp_path / "bad.npz")


# --------------------------------------------------------------------------- embedded set


def test_embedded_set_covers_all_groups_with_a_long_tail():
    assert EMBEDDED.stat().st_size < 4_000_000
    archive = read_structure_archive()
    assert len(archive) == 12_000
    assert len(set(archive.structure_ids.tolist())) == len(archive)
    counts = np.bincount(archive.space_groups.astype(np.int64) - 1, minlength=230)
    assert counts.min() >= 15  # every group reaches train, validation and test
    assert counts.max() >= 500 and (counts < 20).sum() > 80  # long-tailed, not balanced
    assert np.mean(archive.requested_space_groups == archive.space_groups) > 0.9
    split = split_indices(archive.space_groups.astype(np.int64))
    for name in ("train", "validation", "test"):
        assert len(np.unique(archive.space_groups[split[name]])) == 230, name


def test_embedded_labels_match_spglib_on_stored_coordinates():
    archive = read_structure_archive()
    for index in np.random.default_rng(0).choice(len(archive), 300, replace=False):
        crystal = archive.crystal(int(index))
        kinds = {s: i + 1 for i, s in enumerate(sorted(set(crystal.species)))}
        cell = (crystal.lattice, crystal.frac_coords, [kinds[s] for s in crystal.species])
        assert (
            spglib.get_symmetry_dataset(cell, symprec=1e-3).number == archive.space_groups[index]
        ), index


def test_default_dataset_builds_and_caches(tmp_path, monkeypatch):
    # A 40-structure slice of the embedded set keeps the test fast; the full set takes ~40 s.
    full = read_structure_archive()
    keep = np.flatnonzero(np.isin(full.space_groups, [14, 62, 225]))[:40]
    path = write_structure_archive(
        tmp_path / "small.npz",
        full.structure_ids[keep].tolist(),
        [full.crystal(int(i)) for i in keep],
        [int(g) or None for g in full.requested_space_groups[keep]],
        full.space_groups[keep].tolist(),
    )
    built = default_dataset(cache_dir=tmp_path / "cache", archive=path, progress=False)
    assert sum(len(built[n]) for n in built) == len(keep)
    for name in ("validation", "test"):
        assert {ID2LABEL[g] for g in built[name]["space_group"]} == {
            "P2_1/c (14)",
            "Pnma (62)",
            "Fm-3m (225)",
        }
    row = built["train"][0]
    index = full.structure_ids.tolist().index(row["structure_id"])
    assert row["source"] == "embedded" and row["space_group"] == full.space_groups[index] - 1
    peaks = simulate_peaks(full.crystal(index), two_theta_range=(2.0, 100.0))
    np.testing.assert_allclose(row["peak_two_theta"], peaks.two_theta, atol=1e-4)

    def fail(*args, **kwargs):
        raise AssertionError("the cached dataset should have been reused")

    # Worker processes give the same dataset.
    parallel = default_dataset(
        cache_dir=tmp_path / "cache2", archive=path, num_proc=2, progress=False
    )
    for name in built:
        assert parallel[name].data.table.equals(built[name].data.table), name

    monkeypatch.setattr(embedded, "structure_row", fail)
    again = default_dataset(cache_dir=tmp_path / "cache", archive=path, progress=False)
    assert again["test"]["structure_id"] == built["test"]["structure_id"]
    assert len(list((tmp_path / "cache").iterdir())) == 1
