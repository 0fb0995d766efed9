"""Crystallographic tables against spglib, pymatgen and textbook facts."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import gemmi
import numpy as np
import pytest
import spglib
import torch

from physmoe import crystallography as cryst

REPO = Path(__file__).resolve().parents[1]


def test_groups_per_crystal_system():
    counts = Counter(info.crystal_system for info in cryst.space_group_table())
    assert [counts[name] for name in cryst.CRYSTAL_SYSTEMS] == [2, 13, 59, 68, 25, 27, 36]


def test_crystal_system_boundaries_by_number():
    # International Tables: 1-2, 3-15, 16-74, 75-142, 143-167, 168-194, 195-230.
    edges = [1, 3, 16, 75, 143, 168, 195, 231]
    expected = np.repeat(np.arange(7), np.diff(edges))
    assert torch.equal(cryst.sg_to_sys_map(), torch.from_numpy(expected))
    assert cryst.sg_to_sys_map().dtype == torch.long


def test_point_groups_laue_classes_and_centrings():
    table = cryst.space_group_table()
    assert len({info.point_group for info in table}) == 32
    assert len({info.laue_class for info in table}) == 11
    assert Counter(info.centring for info in table) == {
        "P": 149,
        "I": 38,
        "C": 16,
        "F": 16,
        "A": 4,
        "R": 7,
    }


@pytest.mark.parametrize(
    ("number", "symbol"),
    [
        (1, "P1"),
        (2, "P-1"),
        (14, "P2_1/c"),
        (19, "P2_12_12_1"),
        (62, "Pnma"),
        (113, "P-42_1m"),
        (166, "R-3m"),
        (178, "P6_122"),
        (225, "Fm-3m"),
        (227, "Fd-3m"),
        (230, "Ia-3d"),
    ],
)
def test_symbols(number, symbol):
    assert cryst.space_group_symbol(number) == symbol
    assert cryst.ID2LABEL[number - 1] == f"{symbol} ({number})"
    assert cryst.LABEL2ID[f"{symbol} ({number})"] == number - 1


def test_symbols_agree_with_pymatgen_and_gemmi_for_all_groups():
    from pymatgen.symmetry.groups import SpaceGroup

    old_e_glide = {39: "Abm2", 41: "Aba2", 64: "Cmca", 67: "Cmma", 68: "Ccca"}
    for info in cryst.space_group_table():
        reference = SpaceGroup.from_int_number(info.number).symbol
        if info.crystal_system == "monoclinic":  # pymatgen spells the full symbol P12_1/c1
            reference = reference[0] + re.sub(r"(?<!_)1$", "", reference[1:].removeprefix("1"))
        assert info.symbol == reference, info.number
        gemmi_short = gemmi.find_spacegroup_by_number(info.number).short_name()
        gemmi_short = gemmi_short.replace("H", "R", 1) if info.centring == "R" else gemmi_short
        assert old_e_glide.get(info.number, info.symbol).replace("_", "") == gemmi_short, (
            info.number
        )


def _point_group_spellings(symbol: str) -> set[str]:
    # gemmi writes -62m / -42m where spglib may write -6m2 / -4m2 depending on setting.
    return {symbol, symbol.replace("m2", "2m"), symbol.replace("2m", "m2")}


def test_point_groups_agree_with_spglib():
    for info in cryst.space_group_table():
        sgt = cryst._spglib_standard_types()[info.number]
        assert info.point_group in _point_group_spellings(sgt.pointgroup_international), info.number


def test_operation_counts_match_spglib():
    first_hall = {}
    for hall in range(1, 531):
        first_hall.setdefault(spglib.get_spacegroup_type(hall).number, hall)
    for info in cryst.space_group_table():
        ops = spglib.get_symmetry_from_database(first_hall[info.number])
        assert len(ops["rotations"]) == info.num_operations, info.number


def test_bad_numbers_are_rejected():
    with pytest.raises(ValueError, match="1..230"):
        cryst.space_group_symbol(231)
    with pytest.raises(ValueError, match="1..230"):
        cryst.space_group_info(0)
    with pytest.raises(TypeError):
        cryst.space_group_symbol("14")


# --- rule-similarity matrix ------------------------------------------------------------------


def test_rule_matrix_properties():
    matrix = cryst.rule_similarity_matrix()
    assert matrix.shape == (230, 230) and matrix.dtype == torch.float32
    assert torch.allclose(matrix, matrix.T)
    assert float(matrix.min()) >= 0.0 and float(matrix.max()) <= 1.0
    assert torch.all(torch.diagonal(matrix) == 1.0)


@pytest.mark.parametrize(
    "pair",
    [
        (3, 5),
        (16, 21),
        (16, 22),
        (16, 23),
        (21, 22),
        (22, 23),
        (221, 225),
        (221, 229),
        (225, 229),
        (75, 79),
    ],
)
def test_centring_variants_stay_below_the_positive_threshold(pair):
    a, b = pair
    assert float(cryst.rule_similarity_matrix()[a - 1, b - 1]) <= 0.8


@pytest.mark.parametrize("pair", [(166, 167), (139, 140), (225, 227)])
def test_physically_close_groups_score_high(pair):
    a, b = pair
    assert float(cryst.rule_similarity_matrix()[a - 1, b - 1]) > 0.9


def test_reference_operator_cosine_makes_centring_variants_perfect_positives():
    # The defect the rule matrix fixes: with translations stripped, P2 and C2 look identical.
    reference = cryst.operator_cosine_matrix()
    for a, b in [(3, 5), (16, 22), (221, 225), (75, 79)]:
        assert float(reference[a - 1, b - 1]) == pytest.approx(1.0, abs=1e-6)


def test_extinction_term_against_hand_counted_absences():
    # Over |h|,|k|,|l| <= 8, a C-centred cell keeps reflections with h + k even: the Jaccard
    # overlap with P of the allowed sets is that fraction; absent sets share nothing (0).
    hkl = cryst._hkl_grid()
    allowed_c = np.sum((hkl[:, 0] + hkl[:, 1]) % 2 == 0)
    expected_ext = 0.5 * (allowed_c / len(hkl) + 0.0)
    expected = 0.2 * 1.0 + 0.3 * 1.0 + 0.5 * expected_ext  # same system, same point group
    assert float(cryst.rule_similarity_matrix()[2, 4]) == pytest.approx(expected, abs=1e-5)


def test_absence_table_matches_textbook_conditions():
    hkl = np.array(
        [[1, 0, 0], [2, 0, 0], [1, 1, 0], [1, 1, 1], [2, 0, 1], [0, 1, 0], [0, 2, 0]],
        dtype=np.int32,
    )
    absent = cryst.systematic_absence_table(hkl)
    # Fm-3m: h, k, l all even or all odd.
    assert absent[224].tolist() == [True, False, True, False, True, True, False]
    # P2_1/c (unique axis b): 0k0 with k odd and h0l with l odd are absent.
    assert absent[13].tolist() == [False, False, False, False, True, True, False]


def test_shipped_matrix_matches_the_generator_script():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_rule_matrix.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    computed = cryst.compute_rule_similarity_matrix()
    assert np.allclose(cryst.rule_similarity_matrix().numpy(), computed, atol=1e-6)


# -- groups a powder pattern cannot tell apart --------------------------------------------------

ENANTIOMORPHIC_PAIRS = [
    (76, 78),
    (91, 95),
    (92, 96),
    (144, 145),
    (151, 153),
    (152, 154),
    (169, 170),
    (171, 172),
    (178, 179),
    (180, 181),
    (212, 213),
]


def test_powder_classes_partition_the_230_groups():
    for merge in (False, True):
        classes = cryst.powder_equivalence_classes(merge)
        members = [n for members in classes for n in members]
        assert sorted(members) == list(range(1, 231))
        assert all(list(c) == sorted(c) for c in classes)
        assert [c[0] for c in classes] == sorted(c[0] for c in classes)
        index = cryst.powder_equivalence_index(merge)
        for position, c in enumerate(classes):
            assert set(index[np.asarray(c) - 1]) == {position}
            for n in c:
                assert cryst.indistinguishable_groups(n, merge_laue_classes=merge) == c
    assert len(cryst.powder_equivalence_classes()) == 120
    assert sum(len(c) == 1 for c in cryst.powder_equivalence_classes()) == 50
    assert len(cryst.powder_equivalence_classes(merge_laue_classes=True)) == 97


@pytest.mark.parametrize("pair", ENANTIOMORPHIC_PAIRS)
def test_enantiomorphic_pairs_are_indistinguishable(pair):
    assert pair[1] in cryst.indistinguishable_groups(pair[0])


def test_powder_classes_against_textbook_extinction_symbols():
    same = cryst.indistinguishable_groups
    assert same(3) == (3, 6, 10)  # P2, Pm, P2/m
    assert same(1) == (1, 2)
    assert same(14) == (14,)  # P2_1/c
    assert same(62) == (33, 62)  # Pnma and Pn2_1a (= Pna2_1): extinction symbol Pn-a
    assert 19 not in same(62)
    assert same(21) == (21, 35, 38, 65)  # C---: C222, Cmm2, C2mm (= Amm2), Cmmm
    assert same(23) == (23, 24, 44, 71)  # I---: I222, I2_12_12_1, Imm2, Immm
    assert same(197) == (197, 199, 204)  # I23, I2_13, Im-3
    assert same(151) == (151, 152, 153, 154)  # 00l: l = 3n, Laue -3m (either orientation)
    assert same(230) == (230,) and same(205) == (205,)  # Ia-3d, Pa-3
    assert same(161) == (161, 167)  # R3c, R-3c
    # The data notes' "225 = {196, 202, 209, 216}" holds only when Laue classes are merged:
    # F23 and Fm-3 are Laue m-3, the others m-3m.
    assert same(225) == (209, 216, 225) and same(196) == (196, 202)
    assert same(225, merge_laue_classes=True) == (196, 202, 209, 216, 225)
    assert same(198, merge_laue_classes=True) == (198, 208)  # P2_13 and P4_232: h00, h = 2n
    assert same(152, merge_laue_classes=True) == (144, 145, 151, 152, 153, 154, 171, 172, 180, 181)


def test_members_share_family_and_laue_class():
    table = cryst.space_group_table()
    family = {
        name: i for i, name in enumerate(("triclinic", "monoclinic", "orthorhombic", "tetragonal"))
    }
    family.update(trigonal=4, hexagonal=4, cubic=5)
    for merge in (False, True):
        for c in cryst.powder_equivalence_classes(merge):
            assert len({family[table[n - 1].crystal_system] for n in c}) == 1
            if not merge:
                assert len({table[n - 1].laue_class for n in c}) == 1


def test_powder_classes_match_a_recomputation_from_raw_absences():
    """Independent route: raw gemmi absences on a smaller hkl cube (no powder-line orbits),
    orthorhombic groups under the 6 axis permutations; same family and Laue class."""
    import itertools

    axis = np.arange(-5, 6)
    hkl = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    hkl = hkl[np.any(hkl != 0, axis=1)]
    keys: dict[tuple, list[int]] = {}
    for info in cryst.space_group_table():
        ops = gemmi.find_spacegroup_by_number(info.number).operations()
        perms = (
            itertools.permutations(range(3))
            if info.crystal_system == "orthorhombic"
            else [(0, 1, 2)]
        )
        fingerprint = min(
            tuple(
                np.flatnonzero(
                    ops.systematic_absences(np.ascontiguousarray(hkl[:, list(p)], dtype=np.int32))
                )
            )
            for p in perms
        )
        family = {"trigonal": "hexagonal"}.get(info.crystal_system, info.crystal_system)
        keys.setdefault((family, info.laue_class, fingerprint), []).append(info.number)
    assert tuple(sorted(tuple(v) for v in keys.values())) == cryst.powder_equivalence_classes()


def test_powder_lines_of_pa3_need_the_whole_orbit_absent():
    # Pa-3: 0kl absent for odd k, but 0lk lies at the same angle; the line goes only when both do.
    hkl = np.array([[0, 1, 2], [0, 2, 1], [0, 1, 3], [0, 2, 2]], dtype=np.int32)
    ops = gemmi.find_spacegroup_by_number(205).operations()
    assert list(ops.systematic_absences(hkl)) == [True, False, True, False]
    assert cryst._powder_absences(205, hkl).tolist() == [False, False, True, False]


@pytest.mark.parametrize("bad", [0, 231])
def test_indistinguishable_groups_rejects_bad_numbers(bad):
    with pytest.raises(ValueError, match=str(bad)):
        cryst.indistinguishable_groups(bad)
