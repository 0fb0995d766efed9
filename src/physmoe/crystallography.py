"""Crystallographic tables for the 230 space groups.

Everything here is computed from gemmi's and spglib's space-group tables (standard settings,
origin choice 1, hexagonal axes for the rhombohedral groups); nothing is typed by hand. Class
labels are 0-based: ``label = space_group_number - 1``.

Crystal systems are indexed 0..6 in the order of :data:`CRYSTAL_SYSTEMS`
(triclinic, monoclinic, orthorhombic, tetragonal, trigonal, hexagonal, cubic).

The rule-similarity matrix used by the PhysMoE loss is documented in
:func:`rule_similarity_matrix`; it is shipped precomputed in ``physmoe/resources`` and rebuilt
by ``scripts/build_rule_matrix.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import gemmi
import numpy as np
import torch

__all__ = [
    "CRYSTAL_SYSTEMS",
    "NUM_CRYSTAL_SYSTEMS",
    "NUM_SPACE_GROUPS",
    "ID2LABEL",
    "LABEL2ID",
    "SpaceGroupInfo",
    "space_group_info",
    "space_group_table",
    "space_group_symbol",
    "crystal_system_index",
    "sg_to_sys_map",
    "rule_similarity_matrix",
    "compute_rule_similarity_matrix",
    "operator_cosine_matrix",
    "systematic_absence_table",
    "RULE_MATRIX_WEIGHTS",
    "powder_equivalence_classes",
    "powder_equivalence_index",
    "indistinguishable_groups",
]

NUM_SPACE_GROUPS = 230
CRYSTAL_SYSTEMS: tuple[str, ...] = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "trigonal",
    "hexagonal",
    "cubic",
)
NUM_CRYSTAL_SYSTEMS = len(CRYSTAL_SYSTEMS)

# Crystal families: trigonal and hexagonal groups share the hexagonal lattice metric.
_CRYSTAL_FAMILY = (0, 1, 2, 3, 4, 4, 5)


@dataclass(frozen=True)
class SpaceGroupInfo:
    """One space group in its standard setting.

    Attributes:
        number: International Tables number, 1..230.
        label: 0-based class label (``number - 1``).
        symbol: Short Hermann-Mauguin symbol in the current ITA spelling with screw axes written
            ``2_1`` (``"P2_1/c"``, ``"Cmce"``), from spglib.
        full_symbol: Full Hermann-Mauguin symbol (``"P 1 2_1/c 1"``), from spglib.
        crystal_system: Name of the crystal system.
        crystal_system_index: Index into :data:`CRYSTAL_SYSTEMS`.
        point_group: Hermann-Mauguin symbol of the point group (``"2/m"``).
        laue_class: Laue class (``"2/m"``).
        centring: Lattice centring letter (P, A, C, I, F or R).
        num_operations: Number of symmetry operations in the conventional cell
            (rotation parts times centring vectors).
        centrosymmetric: Whether the group contains the inversion.
    """

    number: int
    label: int
    symbol: str
    full_symbol: str
    crystal_system: str
    crystal_system_index: int
    point_group: str
    laue_class: str
    centring: str
    num_operations: int
    centrosymmetric: bool


@functools.cache
def _spglib_standard_types() -> dict[int, object]:
    """spglib's space-group type of the first (standard) Hall setting of every group."""
    import spglib

    types: dict[int, object] = {}
    for hall_number in range(1, 531):
        sgt = spglib.get_spacegroup_type(hall_number)
        types.setdefault(sgt.number, sgt)
    return types


@functools.cache
def space_group_table() -> tuple[SpaceGroupInfo, ...]:
    """All 230 space groups, ordered by label (index ``i`` is space group ``i + 1``)."""
    table = []
    for number in range(1, NUM_SPACE_GROUPS + 1):
        sg = gemmi.find_spacegroup_by_number(number)
        ops = sg.operations()
        system = sg.crystal_system_str()
        # Symbols from spglib: current ITA spelling (Cmce, not Cmca) with screw axes as 2_1.
        sgt = _spglib_standard_types()[number]
        table.append(
            SpaceGroupInfo(
                number=number,
                label=number - 1,
                symbol=sgt.international_short,
                full_symbol=sgt.international_full,
                crystal_system=system,
                crystal_system_index=CRYSTAL_SYSTEMS.index(system),
                point_group=sg.point_group_hm(),
                laue_class=sg.laue_str(),
                centring=sg.centring_type(),
                num_operations=len(ops.sym_ops) * len(ops.cen_ops),
                centrosymmetric=bool(sg.is_centrosymmetric()),
            )
        )
    return tuple(table)


def _check_number(number: int) -> int:
    if isinstance(number, bool) or not isinstance(number, (int, np.integer)):
        raise TypeError(f"space-group number must be an int, got {type(number).__name__}")
    if not 1 <= int(number) <= NUM_SPACE_GROUPS:
        raise ValueError(f"space-group number must be in 1..230, got {number}")
    return int(number)


def space_group_info(number: int) -> SpaceGroupInfo:
    """Table row of space group ``number`` (1..230)."""
    return space_group_table()[_check_number(number) - 1]


def space_group_symbol(number: int) -> str:
    """Short Hermann-Mauguin symbol of space group ``number`` (1..230), e.g. 14 -> ``"P2_1/c"``."""
    return space_group_info(number).symbol


def crystal_system_index(number: int) -> int:
    """Crystal-system index 0..6 of space group ``number`` (1..230)."""
    return space_group_info(number).crystal_system_index


ID2LABEL: dict[int, str] = {
    info.label: f"{info.symbol} ({info.number})" for info in space_group_table()
}
LABEL2ID: dict[str, int] = {name: label for label, name in ID2LABEL.items()}


def sg_to_sys_map() -> torch.Tensor:
    """Crystal-system index of every class label, LongTensor ``[230]`` (a fresh copy each call)."""
    return torch.tensor(
        [info.crystal_system_index for info in space_group_table()], dtype=torch.long
    )


# ----------------------------------------------------------------------------------------------
# Rule-similarity matrix
# ----------------------------------------------------------------------------------------------

#: Weights of the three terms of :func:`compute_rule_similarity_matrix`; they sum to 1.
RULE_MATRIX_WEIGHTS = {"crystal_system": 0.2, "point_group": 0.3, "extinction": 0.5}

#: Miller indices used to compare extinction rules: every (h, k, l) with |h|, |k|, |l| <= 8,
#: except (0, 0, 0). The range holds each group's zone and serial conditions many times over.
_HKL_RANGE = 8


def _hkl_grid(limit: int = _HKL_RANGE) -> np.ndarray:
    axis = np.arange(-limit, limit + 1, dtype=np.int32)
    hkl = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return hkl[np.any(hkl != 0, axis=1)]


def systematic_absence_table(hkl: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``[230, N]``: whether reflection ``hkl[n]`` is systematically absent in each group.

    Uses gemmi's vectorised ``GroupOps.systematic_absences`` (lattice centring, screw axes and
    glide planes of the standard setting; the rhombohedral groups on hexagonal axes).
    """
    hkl = _hkl_grid() if hkl is None else np.ascontiguousarray(hkl, dtype=np.int32)
    return np.stack(
        [
            np.asarray(
                gemmi.find_spacegroup_by_number(n).operations().systematic_absences(hkl), dtype=bool
            )
            for n in range(1, NUM_SPACE_GROUPS + 1)
        ]
    )


def _rotation_type(rot: np.ndarray) -> int:
    """Index 0..9 of a proper or improper rotation: 1, 2, 3, 4, 6, -1, m, -3, -4, -6."""
    det = round(np.linalg.det(rot))
    trace = int(round(np.trace(rot)))
    proper = {3: 0, -1: 1, 0: 2, 1: 3, 2: 4}  # trace of a proper rotation of order 1, 2, 3, 4, 6
    improper = {-3: 5, 1: 6, 0: 7, -1: 8, -2: 9}  # trace of -1, m, -3, -4, -6
    return proper[trace] if det > 0 else improper[trace]


def _point_group_type_counts() -> np.ndarray:
    """``[230, 10]`` counts of each rotation type among the point-group operations."""
    counts = np.zeros((NUM_SPACE_GROUPS, 10))
    for n in range(1, NUM_SPACE_GROUPS + 1):
        ops = gemmi.find_spacegroup_by_number(n).operations()
        for op in ops.sym_ops:
            rot = np.array(op.rot, dtype=float) / op.DEN
            counts[n - 1, _rotation_type(rot)] += 1
    return counts


def _cosine(x: np.ndarray) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit @ unit.T


def _jaccard(sets: np.ndarray) -> np.ndarray:
    """Pairwise Jaccard overlap of the rows of a 0/1 matrix; two empty sets overlap fully."""
    intersection = sets @ sets.T
    union = sets.sum(1)[:, None] + sets.sum(1)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1.0), 1.0)


def compute_rule_similarity_matrix() -> np.ndarray:
    """Compute the ``[230, 230]`` rule-similarity matrix from gemmi's tables (float64).

    ``S[i, j] = 0.2 * S_sys + 0.3 * S_pg + 0.5 * S_ext`` with

    * ``S_sys``: 1 for the same crystal system, 0.5 for the same crystal family (trigonal and
      hexagonal, which share the hexagonal lattice), else 0;
    * ``S_pg``: cosine similarity of the point groups' rotation-type histograms (counts of
      1, 2, 3, 4, 6, -1, m, -3, -4, -6 among the point-group operations): 1 for the same point
      group, high for point groups of similar symmetry content, independent of setting;
    * ``S_ext``: agreement of the extinction rules, the mean of two Jaccard overlaps over every
      hkl with |h|, |k|, |l| <= 8: of the sets of *allowed* reflections and of the sets of
      *systematically absent* ones (1 when both groups have none). The allowed-set overlap alone
      is dominated by general reflections and barely sees zone conditions (Pnma vs P2_12_12_1
      would score 0.95); the absent-set overlap weighs every glide and screw condition.

    The extinction term is what powder diffraction sees. Centring variants fall below the
    PhysMoE positive threshold 0.8: P2/C2, P222/C222, P222/I222, P4/I4 and Pm-3m/Im-3m score
    0.625, P222/F222 and Pm-3m/Fm-3m 0.563; so do groups told apart by zone conditions
    (P2_1/c vs P2_1 0.67, Pnma vs P2_12_12_1 0.67). Groups that differ by a glide plane in one
    zone only stay high: R-3m/R-3c 0.97, I4/mmm/I4/mcm 0.975, Fm-3m/Fd-3m 0.97. About 950 of the
    26,335 off-diagonal pairs exceed 0.8 (8 per class in the median). The matrix is symmetric,
    lies in [0, 1] and has a unit diagonal.
    """
    info = space_group_table()
    system = np.array([g.crystal_system_index for g in info])
    family = np.array([_CRYSTAL_FAMILY[s] for s in system])
    s_sys = np.where(
        system[:, None] == system[None, :],
        1.0,
        np.where(family[:, None] == family[None, :], 0.5, 0.0),
    )

    s_pg = _cosine(_point_group_type_counts())

    absent = systematic_absence_table().astype(np.float64)
    s_ext = 0.5 * (_jaccard(1.0 - absent) + _jaccard(absent))

    w = RULE_MATRIX_WEIGHTS
    matrix = w["crystal_system"] * s_sys + w["point_group"] * s_pg + w["extinction"] * s_ext
    matrix = np.clip((matrix + matrix.T) / 2, 0.0, 1.0)
    np.fill_diagonal(matrix, 1.0)
    return matrix


_RULE_MATRIX_FILE = "rule_similarity_matrix.npy"


@functools.cache
def _shipped_rule_matrix() -> np.ndarray:
    with resources.files("physmoe.resources").joinpath(_RULE_MATRIX_FILE).open("rb") as handle:
        matrix = np.load(handle)
    if matrix.shape != (NUM_SPACE_GROUPS, NUM_SPACE_GROUPS):
        raise ValueError(f"{_RULE_MATRIX_FILE} has shape {matrix.shape}, expected (230, 230)")
    return matrix


def rule_similarity_matrix() -> torch.Tensor:
    """The shipped rule-similarity matrix, FloatTensor ``[230, 230]`` (a fresh copy each call).

    See :func:`compute_rule_similarity_matrix` for the formula;
    ``scripts/build_rule_matrix.py`` regenerates the shipped file.
    """
    return torch.from_numpy(_shipped_rule_matrix().astype(np.float32))


def operator_cosine_matrix() -> torch.Tensor:
    """The public reference's rule matrix, for comparison only: cosine of operator-type counts.

    Each group is described by the counts of its rotation types (as in ``S_pg``) over all
    operations of the conventional cell, translations stripped, so centring only multiplies the
    counts and every centring variant (P2/C2, P222/C222/F222/I222, ...) scores exactly 1.
    FloatTensor ``[230, 230]``.
    """
    # Centring multiplies every count by the same factor, so the cosine ignores it.
    return torch.from_numpy(_cosine(_point_group_type_counts()).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Groups a powder pattern cannot tell apart
# ----------------------------------------------------------------------------------------------

#: A group of each crystal family whose point group is the family's lattice holohedry
#: (-1, 2/m, mmm, 4/mmm, 6/mmm, m-3m), indexed by crystal system; the rhombohedral lattice is
#: described on hexagonal axes, whose metric has the hexagonal holohedry.
_HOLOHEDRY_GROUP = (2, 10, 47, 123, 191, 191, 221)
_ORTHORHOMBIC = CRYSTAL_SYSTEMS.index("orthorhombic")
_AXIS_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def _holohedry_rotations(number: int) -> np.ndarray:
    """Integer rotation parts ``[n_ops, 3, 3]`` of space group ``number``'s point group."""
    ops = gemmi.find_spacegroup_by_number(number).operations().sym_ops
    return np.stack([np.array(op.rot, dtype=np.int32) // op.DEN for op in ops])


def _powder_absences(number: int, hkl: np.ndarray) -> np.ndarray:
    """Boolean ``[N]``: whether the powder line at ``hkl[n]`` is systematically extinct.

    Reflections related by the holohedry of the lattice metric lie at the same 2θ for every
    cell of the crystal family, so a powder line is extinct only when every one of them is
    systematically absent (e.g. in Pa-3, 012 is absent but 021, at the same angle, is not).
    """
    info = space_group_info(number)
    holohedry = _HOLOHEDRY_GROUP[info.crystal_system_index]
    if info.laue_class == space_group_info(holohedry).laue_class:
        # Absences are invariant under the Laue group, here the whole holohedry: no orbit needed.
        rotations = np.eye(3, dtype=np.int32)[None]
    else:
        rotations = _holohedry_rotations(holohedry)
    # Reciprocal indices transform as row vectors: h' = h R. One gemmi call for the whole orbit.
    orbit = np.einsum("ni,rij->rnj", hkl, rotations).reshape(-1, 3)
    orbit = np.ascontiguousarray(orbit, dtype=np.int32)
    ops = gemmi.find_spacegroup_by_number(number).operations()
    absent = np.asarray(ops.systematic_absences(orbit), dtype=bool).reshape(len(rotations), -1)
    return absent.all(axis=0)


def _absence_signature(number: int, hkl: np.ndarray, index: np.ndarray) -> bytes:
    """Setting-independent fingerprint of a group's powder extinctions on the cube ``hkl``.

    Orthorhombic axes can be labelled in any order (a powder pattern fixes only the three cell
    lengths), so an orthorhombic group's fingerprint is the smallest of its six axis
    permutations: Pna2_1 (standard setting) and Pnma then agree, as Pn2_1a and Pnma do in
    International Tables' extinction symbol Pn-a. Every other family has one conventional
    orientation of its symmetry directions, and gemmi's standard settings all use it
    (monoclinic unique axis b, cell choice 1; rhombohedral groups on obverse hexagonal axes).
    """
    absent = _powder_absences(number, hkl)
    if space_group_info(number).crystal_system_index != _ORTHORHOMBIC:
        return np.packbits(absent).tobytes()
    limit = int(np.abs(hkl).max())
    return min(
        np.packbits(absent[index[tuple((hkl[:, perm] + limit).T)]]).tobytes()
        for perm in _AXIS_PERMUTATIONS
    )


@functools.cache
def _absence_signatures() -> tuple[bytes, ...]:
    hkl = _hkl_grid()
    limit = _HKL_RANGE
    # index[h + L, k + L, l + L] = row of (h, k, l) in hkl (the origin is not a row).
    index = np.full((2 * limit + 1,) * 3, -1, dtype=np.int64)
    index[tuple((hkl + limit).T)] = np.arange(len(hkl))
    return tuple(_absence_signature(n, hkl, index) for n in range(1, NUM_SPACE_GROUPS + 1))


@functools.cache
def _powder_classes(merge_laue_classes: bool) -> tuple[tuple[int, ...], ...]:
    signatures = _absence_signatures()
    classes: dict[tuple, list[int]] = {}
    for info in space_group_table():
        family = _CRYSTAL_FAMILY[info.crystal_system_index]
        laue = "" if merge_laue_classes else info.laue_class
        key = (family, laue, signatures[info.label])
        classes.setdefault(key, []).append(info.number)
    return tuple(sorted(tuple(members) for members in classes.values()))


def powder_equivalence_classes(merge_laue_classes: bool = False) -> tuple[tuple[int, ...], ...]:
    """Partition of the 230 space groups into sets a powder pattern cannot tell apart.

    Two groups are equivalent when they belong to the same crystal family (same lattice
    metric: trigonal and hexagonal share one), the same Laue class (gemmi's, so -3m1 and -31m
    are one class) and have the same powder extinctions: the same powder lines are
    systematically absent, compared in a common setting (see below). Such groups give patterns
    with identical line positions for every cell; only the intensities of a particular
    structure can separate them, and a classifier reading patterns can at best rank them.
    Examples: P2, Pm and P2/m; the enantiomorphic pairs (P3_121/P3_221, P4_122/P4_322,
    P6_122/P6_522, P4_132/P4_332, ...); P1 and P-1; Pna2_1 and Pnma (extinction symbol Pn-a).
    Pnma and P2_12_12_1 are not equivalent (the n- and a-glides extinguish zone reflections).

    Extinctions are gemmi's ``GroupOps.systematic_absences`` over every hkl with
    ``|h|, |k|, |l| <= 8`` in the standard setting (as for :func:`systematic_absence_table`).
    A powder line is extinct when every reflection related to it by the holohedry of the
    lattice metric is absent (those coincide in 2θ). Orthorhombic groups are compared under all
    six permutations of the axes, since a powder pattern fixes only the three cell lengths: the
    C-centred C222, Cmm2, Amm2 (as C2mm) and Cmmm form one set.

    With the default, the partition has 120 sets (50 of a single group). F23 and Fm-3 (Laue
    m-3) are then apart from F432, F-43m and Fm-3m (Laue m-3m).

    Args:
        merge_laue_classes: Also merge groups of different Laue classes of the same crystal
            family (4/m and 4/mmm, -3 to 6/mmm, m-3 and m-3m). A powder pattern cannot show the
            Laue class either: in a cubic cell hkl and khl lie at the same angle, so their
            intensities, different in Laue class m-3, only appear summed. This is the
            "absences and cell metric" partition of the data notes: 97 sets, with
            {196, 202, 209, 216, 225} one of them and P3_1, P3_121, P6_2 and P6_222 (all 00l:
            l = 3n) in another. (Without the orthorhombic axis permutations it would have 108
            sets, the count the notes quote.)

    Returns:
        The sets as sorted tuples of space-group numbers, ordered by their smallest member.
    """
    return _powder_classes(bool(merge_laue_classes))


@functools.cache
def _powder_index(merge_laue_classes: bool) -> np.ndarray:
    index = np.empty(NUM_SPACE_GROUPS, dtype=np.int64)
    for position, members in enumerate(_powder_classes(merge_laue_classes)):
        index[np.asarray(members) - 1] = position
    index.setflags(write=False)
    return index


def powder_equivalence_index(merge_laue_classes: bool = False) -> np.ndarray:
    """Int64 ``[230]``: position in :func:`powder_equivalence_classes` of each label's set.

    Two labels ``i`` and ``j`` are indistinguishable by powder diffraction exactly when
    ``index[i] == index[j]`` (a fresh copy each call).
    """
    return _powder_index(bool(merge_laue_classes)).copy()


def indistinguishable_groups(number: int, merge_laue_classes: bool = False) -> tuple[int, ...]:
    """The space groups a powder pattern cannot tell apart from group ``number`` (1..230),
    ``number`` included, sorted; see :func:`powder_equivalence_classes`.

    >>> indistinguishable_groups(3)
    (3, 6, 10)
    """
    number, merge = _check_number(number), bool(merge_laue_classes)
    return _powder_classes(merge)[int(_powder_index(merge)[number - 1])]
