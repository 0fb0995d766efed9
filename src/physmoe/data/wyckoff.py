"""Wyckoff positions of the 230 space groups and random compositions drawn from real statistics.

The shipped table ``physmoe/resources/wyckoff_table.npz`` (built by
``scripts/build_wyckoff_table.py`` from pyxtal, which holds the orbits that neither gemmi nor
spglib exposes) gives, for every group in pyxtal's setting and order (index 0 = general position):
each Wyckoff position's letter, multiplicity (conventional cell), number of free coordinates and
its orbit operators, 4x4 affine matrices without the last row (``[m, 3, 4]``). An orbit is the
operators applied to one point ``(x, y, z)``, reduced mod 1; for a special position the operators
already pin the fixed coordinates (62 ``4c``: ``(x, 1/4, z)``, ``(-x + 1/2, 3/4, z + 1/2)``, ...).

It also ships the Materials Project Wyckoff-occupation statistics that pyxtal distributes
(``spg_num_wps_mp.csv``: space group, atoms per conventional cell, Wyckoff indices, number of MP
structures). Drawing Wyckoff combinations from them rather than at random makes the structure keep
the requested group far more often (few real structures put every atom on a fixed position).

Compositions (:func:`sample_orbits`): a structure has 1-5 distinct elements (probabilities
0.05/0.35/0.40/0.15/0.05, at most one per Wyckoff orbit). With two or more, 80% of structures are
ionic: the element with the most atoms is an anion (O 45%, S, F, Cl, N, Se, Br, P, I, C, Te) and
the others are cations drawn uniformly from 43 common metals and metalloids; 20% are intermetallic
(all from that cation palette). Single-element structures use the cation palette.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..crystallography import NUM_SPACE_GROUPS

__all__ = [
    "ANION_WEIGHTS",
    "CATIONS",
    "WyckoffPositions",
    "sample_composition",
    "sample_orbits",
    "smallest_orbit",
    "wyckoff_positions",
    "wyckoff_statistics",
]

#: Anion palette with relative weights (oxides dominate inorganic databases).
ANION_WEIGHTS: dict[str, float] = {
    "O": 0.45, "S": 0.10, "F": 0.08, "Cl": 0.08, "N": 0.07, "Se": 0.05,
    "Br": 0.04, "P": 0.04, "I": 0.03, "C": 0.03, "Te": 0.03,
}  # fmt: skip
#: Cation / metal palette (drawn uniformly, without replacement within a structure).
CATIONS: tuple[str, ...] = tuple(
    "Li Na K Rb Cs Be Mg Ca Sr Ba Sc Y La Ce Nd Ti Zr Hf V Nb Ta Cr Mo W Mn Fe Co Ni Cu Ag Zn Cd "
    "Hg B Al Ga In Tl Si Ge Sn Pb Sb Bi".split()
)
_NUM_ELEMENTS_PROBABILITIES = np.array([0.05, 0.35, 0.40, 0.15, 0.05])
_IONIC_PROBABILITY = 0.8
_FALLBACK_MAX_ORBITS = 4
_TABLE_FILE = "wyckoff_table.npz"
_OPS_DENOMINATOR = 24.0


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, np.ndarray]:
    with resources.files("physmoe.resources").joinpath(_TABLE_FILE).open("rb") as handle:
        with np.load(handle, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}


@dataclass(frozen=True)
class WyckoffPositions:
    """The Wyckoff positions of one space group (pyxtal's setting and order).

    Attributes:
        space_group: International number 1..230.
        labels: ``"4c"``-style labels (multiplicity + letter), ``W`` long.
        multiplicities: Sites per conventional cell, int64 ``[W]``.
        degrees_of_freedom: Free coordinates (0 = fixed point), int64 ``[W]``.
        ops: Orbit operators of every position, float64 ``[sum(multiplicities), 3, 4]``: rotation
            ``[..., :3]`` and translation ``[..., 3]``; position ``w`` owns rows
            ``op_offsets[w]:op_offsets[w + 1]``.
        op_offsets: int64 ``[W + 1]``.
    """

    space_group: int
    labels: tuple[str, ...]
    multiplicities: np.ndarray
    degrees_of_freedom: np.ndarray
    ops: np.ndarray
    op_offsets: np.ndarray


def _check_space_group(space_group: int) -> int:
    if isinstance(space_group, bool) or int(space_group) != space_group:
        raise ValueError(f"space group must be an integer 1..230, got {space_group!r}")
    if not 1 <= int(space_group) <= NUM_SPACE_GROUPS:
        raise ValueError(f"space group must be in 1..230, got {space_group}")
    return int(space_group)


def wyckoff_positions(space_group: int) -> WyckoffPositions:
    """The Wyckoff positions of ``space_group`` (1..230) from the shipped table."""
    # Checked outside the cache: True == 1 would hit group 1's entry.
    return _wyckoff_positions(_check_space_group(space_group))


@functools.lru_cache(maxsize=NUM_SPACE_GROUPS)
def _wyckoff_positions(space_group: int) -> WyckoffPositions:
    table = _table()
    first, last = table["group_offsets"][space_group - 1 : space_group + 1]
    op_offsets = table["op_offsets"][first : last + 1].astype(np.int64)
    ops = table["ops_numerators"][op_offsets[0] : op_offsets[-1]] / _OPS_DENOMINATOR
    multiplicities = table["multiplicities"][first:last].astype(np.int64)
    letters = table["letters"][first:last]
    for array in (multiplicities, ops, op_offsets):
        array.setflags(write=False)
    return WyckoffPositions(
        space_group=space_group,
        labels=tuple(f"{m}{letter}" for m, letter in zip(multiplicities, letters, strict=True)),
        multiplicities=multiplicities,
        degrees_of_freedom=table["degrees_of_freedom"][first:last].astype(np.int64),
        ops=ops,
        op_offsets=op_offsets - op_offsets[0],
    )


@functools.lru_cache(maxsize=1)
def wyckoff_statistics() -> dict[int, tuple[np.ndarray, tuple[tuple[int, ...], ...], np.ndarray]]:
    """Materials Project Wyckoff statistics (as pyxtal ships them), per space-group number.

    Returns:
        ``{space_group: (n_atoms int64 [K], wyckoff index tuples (K), counts int64 [K])}``: ``K``
        observed combinations; Wyckoff indices refer to :func:`wyckoff_positions` (0 = general
        position), ``n_atoms`` counts the conventional cell. Groups 1, 168, 184, 207 and 222 have
        no entry.
    """
    table = _table()
    offsets = table["mp_offsets"]
    indices = table["mp_wyckoff_indices"].tolist()
    combinations = [tuple(indices[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    groups = table["mp_space_group"]
    statistics = {}
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        statistics[int(group)] = (
            table["mp_num_atoms"][rows].astype(np.int64),
            tuple(combinations[r] for r in rows),
            table["mp_count"][rows].astype(np.int64),
        )
    return statistics


def _valid_combination(
    combination: Sequence[int], multiplicities: np.ndarray, degrees_of_freedom: np.ndarray
) -> bool:
    if max(combination) >= len(multiplicities):
        return False
    fixed = [w for w in combination if degrees_of_freedom[w] == 0]
    return len(fixed) == len(set(fixed))  # a fixed position holds one orbit only


def _random_combination(
    space_group: int, rng: np.random.Generator, max_atoms: int
) -> tuple[int, ...]:
    """Random Wyckoff orbits for groups without usable MP statistics.

    Half of the structures start with the general position (when it fits); further orbits are
    drawn with weight ``1 + degrees of freedom``. Orbits on fixed special positions alone often
    have the symmetry of a supergroup, so this keeps the requested group more often.
    """
    positions = wyckoff_positions(space_group)
    multiplicities, degrees_of_freedom = positions.multiplicities, positions.degrees_of_freedom
    # Low-multiplicity groups (P1, P2, ...) need more orbits for a non-trivial structure.
    max_orbits = max(_FALLBACK_MAX_ORBITS, min(12, max_atoms // int(multiplicities[0])))
    target = int(rng.integers(1, max_orbits + 1))
    combination: list[int] = []
    if multiplicities[0] <= max_atoms and rng.random() < 0.5:
        combination.append(0)
    atoms = int(multiplicities[combination].sum())
    weights = 1.0 + degrees_of_freedom
    while len(combination) < target:
        taken = np.isin(np.arange(len(weights)), combination)
        fits = (multiplicities <= max_atoms - atoms) & ((degrees_of_freedom > 0) | ~taken)
        if not fits.any():
            break
        p = np.where(fits, weights, 0.0)
        choice = int(rng.choice(len(p), p=p / p.sum()))
        combination.append(choice)
        atoms += int(multiplicities[choice])
    return tuple(combination)


@functools.lru_cache(maxsize=4 * NUM_SPACE_GROUPS)
def _combination_cdf(space_group: int, max_atoms: int) -> np.ndarray | None:
    """Cumulative probability of each MP combination of the group within ``max_atoms``, weighted
    by its number of MP structures (None if none fits)."""
    statistics = wyckoff_statistics().get(space_group)
    if statistics is None:
        return None
    positions = wyckoff_positions(space_group)
    n_atoms, combinations, counts = statistics
    usable = np.array(
        [
            n <= max_atoms
            and _valid_combination(c, positions.multiplicities, positions.degrees_of_freedom)
            for n, c in zip(n_atoms, combinations, strict=True)
        ]
    )
    if not usable.any():
        return None
    cdf = np.cumsum(np.where(usable, counts, 0).astype(np.float64))
    return cdf / cdf[-1]


def _draw(cdf: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn from a cumulative distribution (never one of probability 0)."""
    return int(np.searchsorted(cdf, rng.random(), side="right"))


def smallest_orbit(space_group: int) -> int:
    """Atoms per conventional cell of the group's smallest orbit."""
    return int(wyckoff_positions(space_group).multiplicities.min())


def check_max_atoms(space_group: int, max_atoms: int) -> None:
    """Raise ``ValueError`` when ``max_atoms`` is below the group's smallest orbit."""
    smallest = smallest_orbit(space_group)
    if smallest > max_atoms:
        raise ValueError(
            f"space group {space_group} needs at least {smallest} atoms per "
            f"conventional cell, more than max_atoms={max_atoms}"
        )


_NUM_ELEMENTS_CDF = [
    np.cumsum(_NUM_ELEMENTS_PROBABILITIES[:k]) / _NUM_ELEMENTS_PROBABILITIES[:k].sum()
    for k in range(1, len(_NUM_ELEMENTS_PROBABILITIES) + 1)
]
_ANIONS = list(ANION_WEIGHTS)
_ANION_CDF = np.cumsum(list(ANION_WEIGHTS.values())) / sum(ANION_WEIGHTS.values())


def sample_orbits(
    space_group: int, rng: np.random.Generator, max_atoms: int = 64, statistics: bool = True
) -> tuple[tuple[int, ...], np.ndarray, list[str]]:
    """Wyckoff orbits and their elements for one random structure of ``space_group``.

    The orbits come from the Materials Project statistics where the group has combinations
    within ``max_atoms`` (and ``statistics`` is True), otherwise from the random sampler that
    favours positions with free coordinates.

    Returns:
        ``(combination, element_of_orbit, species)``: the Wyckoff index of every orbit
        (:func:`wyckoff_positions` order), the element index of every orbit (int64, into
        ``species``) and the distinct element symbols.
    """
    space_group = _check_space_group(space_group)
    cdf = _combination_cdf(space_group, max_atoms) if statistics else None
    if cdf is None:
        check_max_atoms(space_group, max_atoms)
        combination = _random_combination(space_group, rng, max_atoms)
    else:
        combination = wyckoff_statistics()[space_group][1][_draw(cdf, rng)]
    num_orbits = len(combination)
    num_elements = _draw(_NUM_ELEMENTS_CDF[min(num_orbits, len(_NUM_ELEMENTS_CDF)) - 1], rng) + 1
    # Every element gets at least one orbit; the remaining orbits go to random elements.
    element_of_orbit = np.concatenate(
        [np.arange(num_elements), rng.integers(0, num_elements, num_orbits - num_elements)]
    )[rng.permutation(num_orbits)]
    elements = [CATIONS[i] for i in rng.choice(len(CATIONS), num_elements, replace=False)]
    if num_elements >= 2 and rng.random() < _IONIC_PROBABILITY:
        orbit_multiplicities = wyckoff_positions(space_group).multiplicities[list(combination)]
        atoms_per_element = np.bincount(element_of_orbit, orbit_multiplicities, num_elements)
        elements[int(np.argmax(atoms_per_element))] = _ANIONS[_draw(_ANION_CDF, rng)]
    return combination, element_of_orbit, elements


def sample_composition(
    space_group: int, rng: np.random.Generator, max_atoms: int = 64
) -> tuple[list[str], list[int], list[list[str]]]:
    """Elements, atoms per element and Wyckoff sites for one structure of ``space_group``.

    Returns:
        ``(species, num_ions, sites)`` as ``pyxtal.from_random`` takes them, e.g.
        ``(["Fe", "O"], [4, 12], [["4c"], ["8d", "4c"]])`` (conventional-cell counts).
    """
    combination, element_of_orbit, species = sample_orbits(space_group, rng, max_atoms)
    positions = wyckoff_positions(space_group)
    atoms_per_element = np.bincount(
        element_of_orbit,
        weights=positions.multiplicities[list(combination)],
        minlength=len(species),
    )
    sites = [
        [positions.labels[combination[o]] for o in np.flatnonzero(element_of_orbit == e)]
        for e in range(len(species))
    ]
    return species, [int(n) for n in atoms_per_element], sites
