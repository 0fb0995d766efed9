"""Readers of published simulated datasets: SimXRD-4M databases and the public reference's
``.npy`` dicts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from physmoe.data.grid import TwoThetaGrid
from physmoe.data.reference_data import (
    SIMXRD_WAVELENGTH,
    iter_simxrd,
    read_reference_npy,
    read_simxrd,
)

from .test_readers import write

# ------------------------------------------------------------------------------- SimXRD-4M

SIMXRD_GRID = np.arange(10.0, 80.0 + 1e-9, 0.02)  # 3501 points


def simxrd_d_spacing() -> np.ndarray:
    return SIMXRD_WAVELENGTH / (2 * np.sin(np.radians(SIMXRD_GRID) / 2))


@pytest.fixture
def simxrd_db(tmp_path):
    """A database written the way SimXRD-4M's do: Atoms with only symbols (no cell), every
    value a string."""
    ase_db = pytest.importorskip("ase.db")
    from ase import Atoms

    rng = np.random.default_rng(0)
    path = tmp_path / "simxrd.db"
    d = simxrd_d_spacing()
    rows = [
        ("[225, 1, 'F']", "NaCl", ["Na", "Cl"]),
        ("[2, 7, 'P']", "CuSO4H10O5", ["Cu", "S", "O"]),
        ("[194, 2, 'P']", "Mg", ["Mg"]),
    ]
    with ase_db.connect(str(path)) as database:
        for tager, formula, symbols in rows:
            intensity = rng.uniform(0, 100, size=d.size)
            intensity *= 100 / intensity.max()
            database.write(
                Atoms(symbols),
                latt_dis=str(d.tolist()),
                intensity=str(intensity.tolist()),
                tager=tager,
                chem_form=formula,
                simulation_param=str((20, 0.1, 0.3, 1.5)),
            )
    return path


def test_simxrd_records(simxrd_db):
    records = read_simxrd(simxrd_db)
    assert [r.space_group for r in records] == [225, 2, 194]
    assert [r.label for r in records] == [224, 1, 193]
    # SimXRD's 1 = cubic ... 7 = triclinic -> ours 6 = cubic ... 0 = triclinic.
    assert [r.crystal_system for r in records] == [6, 0, 5]
    assert [r.lattice_letter for r in records] == ["F", "P", "P"]
    assert [r.formula for r in records] == ["NaCl", "CuSO4H10O5", "Mg"]
    assert records[0].simulation_param == (20, 0.1, 0.3, 1.5)
    first = records[0]
    assert first.two_theta.shape == first.intensity.shape == (3501,)
    np.testing.assert_allclose(first.two_theta, SIMXRD_GRID, atol=1e-9)
    assert first.intensity.max() == pytest.approx(100.0)
    assert first.to_pattern().wavelength == SIMXRD_WAVELENGTH


def test_simxrd_other_wavelength_selection_and_limit(simxrd_db):
    (record,) = list(iter_simxrd(simxrd_db, wavelength=0.7093, limit=1))
    expected = np.degrees(2 * np.arcsin(0.7093 / (2 * simxrd_d_spacing())))
    np.testing.assert_allclose(record.two_theta, expected, atol=1e-9)
    assert [r.row_id for r in iter_simxrd(simxrd_db, selection="id>=2")] == [2, 3]
    # A longer wavelength cannot reach the smallest d-spacings: those points are dropped.
    long = next(iter_simxrd(simxrd_db, wavelength=3.0))
    assert len(long.two_theta) < 3501 and np.all(np.diff(long.two_theta) > 0)


def _write_row(path, **values):
    import ase.db
    from ase import Atoms

    defaults = {
        "latt_dis": "[3.0, 2.0, 1.5]",
        "intensity": "[10, 100, 50]",
        "tager": "[225, 1, 'F']",
        "chem_form": "X",
    }
    defaults.update(values)
    with ase.db.connect(str(path)) as database:
        database.write(Atoms("Na"), **defaults)


def test_simxrd_numpy_printed_lists_are_parsed(tmp_path):
    pytest.importorskip("ase.db")
    path = tmp_path / "np.db"
    _write_row(path, latt_dis="[3. 2. 1.5]", intensity="[ 10. 100.  50.]", tager="[221, 1]")
    _write_row(
        path, latt_dis=str(list(np.array([3.0, 2.0, 1.5]))), tager="[221, 1]"
    )  # "np.float64(3.0)"
    for record in read_simxrd(path):
        np.testing.assert_allclose(record.d_spacing, [3.0, 2.0, 1.5])  # 2θ ascending, d descending
        np.testing.assert_allclose(record.intensity, [10.0, 100.0, 50.0])
        assert np.all(np.diff(record.two_theta) > 0)
        assert record.lattice_letter is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"tager": "[225, 3, 'F']"},
            r"row 1: tager says crystal system 3 \(trigonal\) but space group 225 is cubic",
        ),
        ({"tager": "[231, 1, 'F']"}, r"row 1: space group 231 is outside 1..230"),
        ({"tager": "[225]"}, r"row 1: 'tager' must be"),
        ({"latt_dis": "[3.0, oops, 1.5]"}, r"row 1: cannot parse 'latt_dis'"),
        ({"latt_dis": "[3.0 2.0 ... 1.5]"}, r"row 1: 'latt_dis' is a truncated numpy print-out"),
        ({"latt_dis": "[3.0, 2.0]"}, r"row 1: latt_dis has 2 values but intensity has 3"),
        ({"latt_dis": "[3.0, -2.0, 1.0]"}, r"row 1: latt_dis has non-positive"),
    ],
)
def test_simxrd_malformed_rows_name_the_row(tmp_path, values, message):
    pytest.importorskip("ase.db")
    path = tmp_path / "bad.db"
    _write_row(path, **values)
    with pytest.raises(ValueError, match=message):
        read_simxrd(path)


def test_simxrd_missing_file_is_not_created(tmp_path):
    pytest.importorskip("ase.db")
    path = tmp_path / "absent.db"
    with pytest.raises(FileNotFoundError, match="absent.db"):
        read_simxrd(path)
    assert not path.exists()


def test_simxrd_files_are_read_without_being_written(simxrd_db):
    before = simxrd_db.read_bytes()
    assert len(read_simxrd(simxrd_db)) == 3
    assert simxrd_db.read_bytes() == before
    assert sorted(path.name for path in simxrd_db.parent.iterdir()) == ["simxrd.db"]  # no journal


@pytest.mark.parametrize("content", ["foreign", "empty", "text"])
def test_simxrd_refuses_files_that_are_no_ase_database_and_leaves_them_alone(tmp_path, content):
    import sqlite3

    pytest.importorskip("ase.db")
    path = tmp_path / "data.db"
    if content == "foreign":
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE measurements (angle REAL, counts REAL)")
            connection.execute("INSERT INTO measurements VALUES (10.0, 5.0)")
        connection.close()
        message = r"no table 'information', 'keys', 'systems' \(its tables are \['measurements'\]\)"
    elif content == "empty":
        path.write_bytes(b"")
        message = r"\(it is empty\)"
    else:
        path.write_text("10 1\n11 2\n")
        message = "file is not a database"
    before = path.read_bytes()
    expected = rf"data\.db is not a SimXRD-4M \(ASE SQLite\) database.*{message}"
    with pytest.raises(ValueError, match=expected):
        read_simxrd(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.db"]


# ----------------------------------------------------------------------- reference .npy dicts


def reference_arrays(n: int = 5, width: int = 8500):
    rng = np.random.default_rng(1)
    return rng.uniform(0, 100, size=(n, width)).astype(np.float32), rng.integers(0, 230, size=n)


def test_reference_pickled_dict_needs_opt_in(tmp_path):
    intensity, labels = reference_arrays()
    path = tmp_path / "train.npy"
    np.save(path, {"intensitys": intensity, "labels230": labels, "labels7": labels % 7})
    with pytest.raises(
        ValueError, match=r"train\.npy holds pickled Python objects.*allow_pickle=True"
    ):
        read_reference_npy(path)
    data = read_reference_npy(path, allow_pickle=True)
    np.testing.assert_array_equal(data.intensity, intensity)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.labels.dtype == np.int64 and len(data) == 5
    assert data.grid == TwoThetaGrid()


def test_reference_features_key_and_npz(tmp_path):
    intensity, labels = reference_arrays()
    path = tmp_path / "features.npy"
    np.save(path, {"features": intensity, "labels230": labels.astype(np.float64)})
    np.testing.assert_array_equal(read_reference_npy(path, allow_pickle=True).labels, labels)
    npz = tmp_path / "data.npz"
    np.savez(npz, intensitys=intensity, labels230=labels)
    data = read_reference_npy(npz)  # plain arrays: no pickle needed
    np.testing.assert_array_equal(data.intensity, intensity)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"intensitys": np.zeros((2, 8500)), "labels230": np.array([0, 230])},
            r"labels in 0..229, got range 0..230",
        ),
        ({"intensitys": np.zeros((2, 8500)), "labels230": np.array([0.5, 3])}, "must be integers"),
        ({"intensitys": np.zeros((2, 100)), "labels230": np.array([0, 1])}, r"must be \[N, 8500\]"),
        (
            {"intensitys": np.zeros((2, 8500)), "labels230": np.array([0, 1, 2])},
            "3 labels for 2 patterns",
        ),
        (
            {"patterns": np.zeros((2, 8500)), "labels": np.array([0, 1])},
            r"found \['labels', 'patterns'\]",
        ),
    ],
)
def test_reference_bad_content(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(ValueError, match=message):
        read_reference_npy(path, allow_pickle=True)


def test_reference_plain_array_is_not_a_dict(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros((2, 8500)))
    with pytest.raises(ValueError, match="expected a dict"):
        read_reference_npy(path)


def test_simxrd_limit_and_selection_are_checked(simxrd_db):
    assert read_simxrd(simxrd_db, limit=0) == []
    assert len(read_simxrd(simxrd_db, limit=2)) == 2
    with pytest.raises(ValueError, match=r"limit must be None or an integer >= 0, got -1"):
        read_simxrd(simxrd_db, limit=-1)
    with pytest.raises(ValueError, match=r"cannot parse the selection 'id>>2'"):
        read_simxrd(simxrd_db, selection="id>>2")


def test_reference_files_that_are_not_npy_name_the_file(tmp_path):
    text = write(tmp_path, "text.npy", "10 1\n11 2\n")
    with pytest.raises(
        ValueError, match=r"text\.npy is not a \.npy or \.npz file \(it starts with b'10 1"
    ):
        read_reference_npy(text, allow_pickle=True)
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"empty\.npy is not a \.npy or \.npz file \(it is empty\)"
    ):
        read_reference_npy(empty)
    intensity, labels = reference_arrays()
    npz = tmp_path / "broken.npz"
    np.savez(npz, intensitys=intensity, labels230=labels)
    npz.write_bytes(npz.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"broken\.npz: cannot read the file .*truncated"):
        read_reference_npy(npz)
    npy = tmp_path / "cut.npy"
    np.save(npy, intensity)
    npy.write_bytes(npy.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.npy: cannot read the file .*truncated"):
        read_reference_npy(npy)


@pytest.mark.parametrize("value", [True, "1.54", 1 + 2j, [1.54]])
def test_simxrd_wavelength_argument_must_be_a_number(simxrd_db, value):
    with pytest.raises(
        TypeError, match=rf"wavelength must be a number in Angstrom, got {re.escape(repr(value))}"
    ):
        read_simxrd(simxrd_db, wavelength=value)
