"""Dataset schema, rows, splits, storage and the embedded default set.

Oracles: Bragg's law for rock-salt peak positions, hand-built cells, spglib run directly, a plain
per-group loop for the split sizes, datasets.load_from_disk.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest

from physmoe.crystallography import CRYSTAL_SYSTEMS, ID2LABEL
from physmoe.data.dataset import (
    FEATURES,
    crystal_from_row,
    load_dataset_dict,
    rows_from_crystals,
    save_dataset_dict,
    split_dataset,
    split_indices,
    structure_row,
)
from physmoe.data.simulate import simulate_peaks
from physmoe.data.structures import Crystal

FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
EMBEDDED = (
    Path(__file__).resolve().parents[2] / "src" / "physmoe" / "resources" / "default_structures.npz"
)


def rock_salt(a: float = 5.64, space_group: int | None = None) -> Crystal:
    coords = np.concatenate([FCC, (FCC + [0.5, 0, 0]) % 1])
    return Crystal.from_parameters(
        (a, a, a, 90, 90, 90), ["Na"] * 4 + ["Cl"] * 4, coords, space_group=space_group
    )


def _metadata():
    return {"wavelength": 1.54056, "two_theta_range": [2.0, 100.0]}


# --------------------------------------------------------------------------- schema and rows


def test_features_names():
    assert FEATURES["space_group"].names == [ID2LABEL[i] for i in range(230)]
    assert FEATURES["requested_space_group"].names == FEATURES["space_group"].names
    assert FEATURES["space_group"].names[13] == "P2_1/c (14)"
    assert FEATURES["crystal_system"].names == list(CRYSTAL_SYSTEMS)
    for column in (
        "lattice_parameters",
        "frac_coords",
        "occupancies",
        "peak_two_theta",
        "peak_intensity",
    ):
        assert "float32" in str(FEATURES[column])


def test_rock_salt_row_against_bragg_law():
    a, wavelength = 5.64, 1.54056
    row = structure_row("nacl", rock_salt(a), 225, requested_space_group=225, source="test")
    assert row["space_group"] == 224 and row["requested_space_group"] == 224
    assert row["crystal_system"] == CRYSTAL_SYSTEMS.index("cubic")
    assert row["formula"] == "Cl4Na4"
    # Face-centred cubic: hkl all even or all odd; one line per distinct h^2 + k^2 + l^2.
    d_min = wavelength / (2 * math.sin(math.radians(50.0)))
    lines = sorted(
        {
            h * h + k * k + m * m
            for h in range(12) for k in range(12) for m in range(12)
            if (h % 2 == k % 2 == m % 2)
            and 0 < h * h + k * k + m * m
            and a / math.sqrt(h * h + k * k + m * m) >= d_min
        }
    )  # fmt: skip
    expected = [2 * math.degrees(math.asin(wavelength * math.sqrt(n) / (2 * a))) for n in lines]
    assert row["peak_two_theta"].dtype == np.float32
    np.testing.assert_allclose(row["peak_two_theta"], expected, atol=2e-5)
    assert row["peak_intensity"].max() == 100.0
    # The stored peaks are the simulator's output at Cu K-alpha1 over 2-100 deg.
    peaks = simulate_peaks(rock_salt(a), wavelength=wavelength, two_theta_range=(2.0, 100.0))
    np.testing.assert_array_equal(row["peak_intensity"], peaks.intensity.astype(np.float32))


def test_crystal_from_row_round_trip():
    crystal = Crystal.from_parameters(
        (4.1, 5.2, 6.3, 80.0, 95.0, 101.0), ["Si", "O", "O"],
        [[0.1, 0.2, 0.3], [0.7, 0.1, 0.45], [0.3, 0.8, 0.9]],
        occupancies=[1.0, 0.5, 1.0],
    )  # fmt: skip
    row = structure_row("tri", crystal, 1, source="test")
    assert row["requested_space_group"] == -1
    back = crystal_from_row(row)
    np.testing.assert_allclose(back.lattice_parameters, crystal.lattice_parameters, rtol=1e-6)
    np.testing.assert_allclose(back.frac_coords, crystal.frac_coords, atol=1e-7)
    np.testing.assert_allclose(back.occupancies, [1.0, 0.5, 1.0])
    assert back.species == ["Si", "O", "O"] and back.space_group == 1
    with pytest.raises(ValueError, match="lacks columns"):
        crystal_from_row({"species": ["Si"]})
    with pytest.raises(ValueError, match="space_group must be 1..230"):
        structure_row("x", crystal, 0, source="test")


def test_rows_from_crystals_labels_by_spglib_and_keeps_declared_group():
    # Declared Pm-3m (a wrong CIF header, say); the structure is rock salt, Fm-3m.
    rows = rows_from_crystals(
        [rock_salt(space_group=221), rock_salt(5.0)], structure_ids=["a", "b"], progress=False
    )
    assert [r["space_group"] for r in rows] == [224, 224]
    assert [r["requested_space_group"] for r in rows] == [220, -1]
    assert [r["source"] for r in rows] == ["cif", "cif"]
    with pytest.raises(ValueError, match="unique"):
        rows_from_crystals([rock_salt(), rock_salt()], structure_ids=["a", "a"], progress=False)
    with pytest.raises(ValueError, match="2 structure_ids for 1 crystals"):
        rows_from_crystals([rock_salt()], structure_ids=["a", "b"], progress=False)


# --------------------------------------------------------------------------- splits


def _expected_split_sizes(
    n: int, validation_fraction: float, test_fraction: float
) -> tuple[int, int, int]:
    """Straightforward per-group rule (the oracle): train, validation, test sizes."""
    if n < 3:
        return n, 0, 0
    test = max(1, math.floor(n * test_fraction + 0.5))
    test = min(test, n - 2)
    validation = max(1, math.floor(n * validation_fraction + 0.5))
    validation = min(validation, n - 1 - test)
    return n - test - validation, validation, test


@pytest.mark.parametrize("fractions", [(0.1, 0.1), (0.2, 0.15), (0.45, 0.45), (0.1, 0.7)])
def test_split_indices_stratified_against_loop(fractions):
    rng = np.random.default_rng(3)
    sizes = {0: 1, 5: 2, 7: 3, 9: 4, 11: 5, 13: 10, 17: 37, 19: 100, 229: 1000}
    labels = rng.permutation(np.concatenate([np.full(n, k) for k, n in sizes.items()]))
    split = split_indices(labels, *fractions, seed=5)
    everything = np.concatenate(list(split.values()))
    assert np.array_equal(np.sort(everything), np.arange(labels.size))  # a partition
    for name, indices in split.items():
        assert np.all(np.diff(indices) > 0), name
    for label, n in sizes.items():
        got = tuple(
            int((labels[split[name]] == label).sum()) for name in ("train", "validation", "test")
        )
        assert got == _expected_split_sizes(n, *fractions), (label, n)
        if n >= 3:
            assert got[1] >= 1 and got[2] >= 1 and got[0] >= 1


def test_split_indices_deterministic_and_seeded():
    labels = np.random.default_rng(0).integers(0, 50, 2000)
    a, b = split_indices(labels, seed=1), split_indices(labels, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = split_indices(labels, seed=2)
    assert not np.array_equal(a["test"], c["test"])
    with pytest.raises(ValueError, match="validation_fraction"):
        split_indices(labels, validation_fraction=0.0)
    with pytest.raises(ValueError, match="sum|< 1"):
        split_indices(labels, validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="integer"):
        split_indices(labels.astype(float))


def _tiny_dataset(num: int = 30) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(num):
        a = float(rng.uniform(4, 7))
        group = 225 if i % 3 else 221
        crystal = (
            rock_salt(a)
            if group == 225
            else Crystal.from_parameters(
                (a,) * 3 + (90.0,) * 3, ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
            )
        )
        rows.append(structure_row(f"s{i}", crystal, group, source="test"))
    return datasets.Dataset.from_list(rows, features=FEATURES)


def test_split_dataset_is_structure_disjoint_and_refuses_duplicate_ids():
    dataset = _tiny_dataset()
    parts = split_dataset(dataset, seed=0)
    ids = [set(parts[name]["structure_id"]) for name in ("train", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set.union(*ids) == set(dataset["structure_id"])
    for name in ("validation", "test"):
        assert set(parts[name]["space_group"]) == {220, 224}
    duplicated = datasets.concatenate_datasets([dataset, dataset.select([0])])
    with pytest.raises(ValueError, match="structure_id"):
        split_dataset(duplicated)


# --------------------------------------------------------------------------- storage


def test_save_and_load(tmp_path):
    parts = split_dataset(_tiny_dataset(), seed=0)
    path = save_dataset_dict(parts, tmp_path / "data", {**_metadata(), "source": "test"})
    loaded = load_dataset_dict(path)
    plain = datasets.load_from_disk(str(path))
    for name in parts:
        assert loaded[name].features == FEATURES
        assert (
            loaded[name]["structure_id"]
            == parts[name]["structure_id"]
            == plain[name]["structure_id"]
        )
    assert (
        "1.54056" in loaded["train"].info.description
        and "2.0-100.0" in loaded["train"].info.description
    )
    metadata = json.loads((path / "physmoe_dataset.json").read_text())
    assert metadata["split_sizes"] == {name: len(parts[name]) for name in parts}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    with pytest.raises(FileExistsError):
        save_dataset_dict(parts, path, _metadata())


def test_load_refuses_foreign_directories(tmp_path):
    with pytest.raises(ValueError, match="not a physmoe dataset"):
        load_dataset_dict(tmp_path)
    split_dataset(_tiny_dataset(), seed=0).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="not a physmoe dataset"):
        load_dataset_dict(tmp_path / "plain")


def test_empty_splits_round_trip(tmp_path):
    dataset = _tiny_dataset(2)  # two groups with one structure each: everything goes to train
    parts = split_dataset(dataset)
    assert [len(parts[n]) for n in ("train", "validation", "test")] == [2, 0, 0]
    loaded = load_dataset_dict(save_dataset_dict(parts, tmp_path / "d", _metadata()))
    assert len(loaded["test"]) == 0 and loaded["test"].features == FEATURES


def test_rows_from_pymatgen_structure_and_cif(tmp_path):
    pymatgen_core = pytest.importorskip("pymatgen.core")
    from pymatgen.io.cif import CifWriter

    structure = pymatgen_core.Structure.from_spacegroup(
        "Fm-3m", pymatgen_core.Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    CifWriter(structure).write_file(tmp_path / "nacl.cif")
    rows = rows_from_crystals([structure, tmp_path / "nacl.cif"], progress=False)
    reference = structure_row("ref", rock_salt(5.64), 225, source="cif")
    for row in rows:
        assert row["space_group"] == 224 and row["formula"] == "Cl4Na4"
        np.testing.assert_allclose(row["peak_two_theta"], reference["peak_two_theta"], atol=1e-4)
        np.testing.assert_allclose(row["peak_intensity"], reference["peak_intensity"], atol=1e-2)
