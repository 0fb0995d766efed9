"""The shipped Wyckoff table: equal to a fresh build from pyxtal, and orbits that are orbits."""

from __future__ import annotations

import numpy as np
import pytest

from physmoe.data.wyckoff import (
    _table,
    check_max_atoms,
    sample_orbits,
    wyckoff_positions,
    wyckoff_statistics,
)
from scripts_under_test import load_script


def _build_script():
    return load_script("build_wyckoff_table")


def test_shipped_table_equals_a_fresh_build_from_pyxtal():
    pytest.importorskip("pyxtal")
    fresh = _build_script().build_table()
    shipped = _table()
    assert sorted(fresh) == sorted(shipped)
    for name, array in fresh.items():
        np.testing.assert_array_equal(shipped[name], array, err_msg=name)
        assert shipped[name].dtype == array.dtype, name


def test_positions_match_pyxtal_objects():
    pyxtal_symmetry = pytest.importorskip("pyxtal.symmetry")
    for number in (1, 2, 14, 62, 148, 166, 194, 227, 230):
        positions = wyckoff_positions(number)
        reference = pyxtal_symmetry.Group(number).Wyckoff_positions
        assert positions.labels == tuple(wp.get_label() for wp in reference)
        np.testing.assert_array_equal(
            positions.degrees_of_freedom, [wp.get_dof() for wp in reference]
        )
        for w, wp in enumerate(reference):
            ops = positions.ops[positions.op_offsets[w] : positions.op_offsets[w + 1]]
            np.testing.assert_allclose(ops, [op.affine_matrix[:3] for op in wp.ops], atol=1e-12)


@pytest.mark.parametrize("number", [14, 62, 141, 166, 194, 225, 227])
def test_orbits_are_closed_under_the_group_operations(number):
    """Every operation of the group (gemmi, in pyxtal's setting: origin 2 where there are two)
    maps an orbit of a random point onto itself."""
    import gemmi

    positions = wyckoff_positions(number)
    group = gemmi.find_spacegroup_by_number(number)
    hall = group.hall
    if any(g.number == number and g.ext == "2" for g in gemmi.spacegroup_table()):
        hall = next(g.hall for g in gemmi.spacegroup_table() if g.number == number and g.ext == "2")
    if number in (146, 148, 155, 160, 161, 166, 167):
        hall = next(g.hall for g in gemmi.spacegroup_table() if g.number == number and g.ext == "H")
    operations = [
        (np.array(op.rot) / op.DEN, np.array(op.tran) / op.DEN)
        for op in gemmi.symops_from_hall(hall)
    ]
    rng = np.random.default_rng(number)
    for w in range(len(positions.labels)):
        ops = positions.ops[positions.op_offsets[w] : positions.op_offsets[w + 1]]
        orbit = np.mod(ops[:, :, :3] @ rng.random(3) + ops[:, :, 3], 1.0)
        assert len(orbit) == positions.multiplicities[w]
        for rotation, translation in operations:
            image = np.mod(orbit @ rotation.T + translation, 1.0)
            delta = image[:, None, :] - orbit[None, :, :]
            delta -= np.rint(delta)
            assert np.abs(delta).max(axis=2).min(axis=1).max() < 1e-9, (number, positions.labels[w])


def test_statistics_refer_to_the_table():
    statistics = wyckoff_statistics()
    assert set(range(1, 231)) - set(statistics) == {1, 168, 184, 207, 222}
    for group, (n_atoms, combinations, counts) in statistics.items():
        multiplicities = wyckoff_positions(group).multiplicities
        assert (counts > 0).all()
        for n, combination in zip(n_atoms, combinations, strict=True):
            assert multiplicities[list(combination)].sum() == n


def test_sample_orbits_respects_max_atoms_and_fixed_positions():
    for number in (2, 15, 62, 139, 191, 225, 230):
        positions = wyckoff_positions(number)
        for statistics in (True, False):
            rng = np.random.default_rng(number)
            for _ in range(20):
                combination, element_of_orbit, species = sample_orbits(number, rng, 48, statistics)
                assert positions.multiplicities[list(combination)].sum() <= 48
                fixed = [w for w in combination if positions.degrees_of_freedom[w] == 0]
                assert len(fixed) == len(set(fixed))
                assert sorted(set(element_of_orbit.tolist())) == list(range(len(species)))


def test_bad_groups_and_budgets_are_refused():
    for bad in (0, 231, -3, 2.5, True):
        with pytest.raises(ValueError, match="space group"):
            wyckoff_positions(bad)
    with pytest.raises(ValueError, match="needs at least 16 atoms.*max_atoms=8"):
        check_max_atoms(230, 8)
