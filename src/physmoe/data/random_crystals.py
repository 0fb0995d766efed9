"""Fast random crystals from Wyckoff positions, without pyxtal at run time.

Crystal ``i`` of a generator with seed ``s`` and split ``p`` depends only on ``(s, p, i)``
(``numpy.random.default_rng(SeedSequence([s, SPLITS[p], i]))`` draws everything), so a stream
gives the same crystals for any number of worker processes, in any order, and the ``"train"``,
``"validation"`` and ``"test"`` splits never share a crystal. Building crystal ``i``:

1. **Group**: drawn from the prior (ICSD frequencies by default; ``prior_floor`` mixes in the
   uniform prior so that rare groups appear at all).
2. **Orbits and elements**: a Wyckoff combination drawn from the Materials Project statistics and
   elements for its orbits (:func:`.wyckoff.sample_orbits`).
3. **Cell**: the crystal system's constraints (a = b for tetragonal, trigonal and hexagonal cells,
   gamma = 120 deg for the last two, ...), log-normal axis ratios (c/a around 1.63 in hexagonal
   axes, 2.45 for rhombohedral groups), monoclinic beta in 90-130 deg, triclinic angles in
   60-120 deg (both drawn as reduced cells), and the volume of a solid: every atom a sphere whose
   diameter is its shortest contact distance, filling 30-70% of the cell (close-packed metals
   74%, rock salt 52%, quartz 23%).
4. **Placement**: orbits are placed one by one, fixed points first, then the others from the
   largest; for each, 16 sets of random free coordinates are tried at once and the first whose
   atoms keep ``min_distance_factor`` times the contact distance (sum of covalent radii; 0.9 of
   the van der Waals radii's sum between two anions) from each other, from their own periodic
   images and from the atoms already placed is kept. When none fits, the cell grows by up to 5%
   along the axes of the closest contact (atoms placed stay valid) and new coordinates are
   drawn. Then the cell shrinks back towards the drawn volume: it is scaled until the closest
   contact reaches the limit, an orbit of that contact moves to a random place where it fits,
   and so on (4 rounds). Cells looser than 150 A^3 per atom (caesium metal has 117) are
   rejected.
5. **Label**: moyo (``moyopy``, spglib's algorithm in Rust, ~5x faster than spglib on cubic
   cells) detects the space group (``symprec`` 1e-3 A). A structure in a supergroup (its atoms
   happen to have more symmetry) is rejected and the orbits are drawn again, up to
   ``max_attempts`` times (the second half of them from the sampler that favours free
   coordinates rather than from the MP statistics); after that the structure keeps the detected
   group as its label. Either way ``space_group`` is the structure's group (the tests check it
   with spglib); ``requested_space_group`` is the drawn one.

The cells are the conventional cells of pyxtal's settings (origin choice 2 for the 24 groups with
two; rhombohedral groups in hexagonal axes); powder patterns do not depend on the setting.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import gemmi
import moyopy
import numpy as np

from ..crystallography import NUM_SPACE_GROUPS, crystal_system_index
from ._placement import compact, place, shortest_translation
from .priors import resolve_prior, sample_space_groups
from .structures import Crystal, lattice_matrix
from .wyckoff import (
    ANION_WEIGHTS,
    check_max_atoms,
    sample_orbits,
    smallest_orbit,
    wyckoff_positions,
)

__all__ = ["SPLITS", "GeneratedCrystal", "RandomCrystalGenerator"]

#: Independent random streams of one seed.
SPLITS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}

_SYMPREC = 1e-3
_CANDIDATES = 16  # free-coordinate sets tried at once per orbit
_MAX_STEP = 1.5  # most growth of the cell's lengths at once when an orbit finds no place
_MAX_GROWTHS = 60  # growth steps per attempt before its orbits are drawn again
_MAX_VOLUME_PER_ATOM = 150.0  # A^3; caesium metal, the loosest element, has 117
_FILLING = (0.3, 0.7)
_COMPACTION_ROUNDS = 4  # moves of a contact's orbit while the cell shrinks
_RATIO_SIGMA = 0.3
_RHOMBOHEDRAL = frozenset((146, 148, 155, 160, 161, 166, 167))
# Crystal systems (0-6: triclinic ... cubic).
_TRICLINIC, _MONOCLINIC, _ORTHORHOMBIC, _TETRAGONAL, _TRIGONAL, _HEXAGONAL, _CUBIC = range(7)


@dataclass(eq=False)
class GeneratedCrystal(Crystal):
    """A generated crystal: a :class:`~physmoe.data.Crystal` (so :func:`simulate_peaks` and the
    dataset code take it as it is) with how it was made.

    Attributes (besides :class:`~physmoe.data.Crystal`'s ``lattice [3, 3]``, ``species``,
    ``frac_coords [N, 3]``, ``occupancies [N]``, ``b_iso [N]``):
        space_group: The structure's space group (1..230) as moyo detects it (spglib agrees):
            the label.
        requested_space_group: The group drawn from the prior (equal for ~all crystals).
        index: Index of the crystal in its split's stream.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        seed: The generator's seed.
        wyckoff: Wyckoff label of every orbit (``("4c", "8d")``).
        attempts: Attempts made (> 1 when a supergroup was rejected).
    """

    requested_space_group: int = 0
    index: int = 0
    split: str = "train"
    seed: int = 0
    wyckoff: tuple[str, ...] = ()
    attempts: int = 1

    @classmethod
    def _built(cls, **fields) -> GeneratedCrystal:
        """A crystal the generator made: float64 arrays of the right shapes and canonical element
        symbols by construction, so ``Crystal``'s input validation (a twentieth of the time to
        build a crystal) is skipped; the tests check such crystals pass it unchanged."""
        crystal = object.__new__(cls)
        size = len(fields["species"])
        crystal.__dict__.update(occupancies=np.ones(size), b_iso=np.zeros(size), **fields)
        return crystal

    @property
    def structure_id(self) -> str:
        """Unique id ``"{split}-{seed}-{index}"``."""
        return f"{self.split}-{self.seed}-{self.index}"

    def to_crystal(self) -> Crystal:
        """As a plain :class:`~physmoe.data.Crystal`."""
        return Crystal(
            self.lattice, list(self.species), self.frac_coords, self.occupancies, self.b_iso,
            self.space_group,
        )  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _contact_distance(first: str, second: str) -> float:
    """Typical closest distance (Angstrom) of two atoms in a solid: the sum of covalent radii
    (Si-O 1.77, Na-Cl 2.68), except between two anions, which repel in ionic solids far beyond
    their covalent radii (O-O 1.32): 0.9 of the sum of their van der Waals radii (O-O 2.74)."""
    if first in ANION_WEIGHTS and second in ANION_WEIGHTS:
        return 0.9 * (gemmi.Element(first).vdw_r + gemmi.Element(second).vdw_r)
    return float(gemmi.Element(first).covalent_r + gemmi.Element(second).covalent_r)


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class RandomCrystalGenerator:
    """Random crystals of the 230 space groups, built from Wyckoff orbits (see the module docs).

    Args:
        prior: ``"icsd"`` (default), ``"cod"``, ``"ccdc"``, ``"uniform"`` or 230 non-negative
            weights (space group 1 first).
        seed: Seed of the streams.
        max_atoms: Most atoms per conventional cell (>= the smallest orbit of every group the
            prior can draw; Wyckoff combinations above it are not drawn).
        prior_floor: Fraction of the uniform prior mixed in, in [0, 1]: every group then has
            probability >= ``prior_floor / 230``.
        split: Which independent stream :meth:`sample` and :meth:`generate` read.
        min_distance_factor: Interatomic distances are at least this times the two atoms'
            contact distance (sum of covalent radii; 0.9 of the van der Waals radii's sum for two
            anions).
        max_attempts: Draws of the orbits before a structure keeps a supergroup's label.

    Example::

        >>> generator = RandomCrystalGenerator(prior="icsd", seed=0)
        >>> crystals = generator.sample(1000)                 # the next 1000 of the stream
        >>> peaks = [simulate_peaks(c) for c in crystals]
        >>> generator.generate([5, 6])                        # crystals 5 and 6, any time
    """

    def __init__(
        self,
        prior: str | Sequence[float] | np.ndarray = "icsd",
        seed: int = 0,
        max_atoms: int = 64,
        *,
        prior_floor: float = 0.0,
        split: str = "train",
        min_distance_factor: float = 0.8,
        max_attempts: int = 16,
    ) -> None:
        self.seed = _check_int("seed", seed, minimum=0)
        self.max_atoms = _check_int("max_atoms", max_atoms)
        self.max_attempts = _check_int("max_attempts", max_attempts)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.split = split
        if not (isinstance(prior_floor, numbers.Real) and 0.0 <= prior_floor <= 1.0):
            raise ValueError(f"prior_floor must be a number in [0, 1], got {prior_floor!r}")
        if not (isinstance(min_distance_factor, numbers.Real) and 0 < min_distance_factor < 1.5):
            raise ValueError(
                f"min_distance_factor must be in (0, 1.5), got {min_distance_factor!r}"
            )
        self.min_distance_factor = float(min_distance_factor)
        base = resolve_prior(prior)
        self.prior = (1.0 - prior_floor) * base + prior_floor / NUM_SPACE_GROUPS
        smallest = {g: smallest_orbit(g) for g in np.flatnonzero(self.prior > 0) + 1}
        too_big = [f"{g}: {n}" for g, n in smallest.items() if n > self.max_atoms]
        if too_big:
            raise ValueError(
                f"max_atoms={self.max_atoms} is below the smallest orbit (atoms per conventional "
                f"cell) of space groups [{', '.join(too_big)}] that the prior can draw"
            )
        self.position = 0

    @property
    def label_prior(self) -> np.ndarray:
        """Expected distribution of the labels, float64 ``[230]`` (label = number - 1): the
        prior, since supergroups are drawn again (with the uniform prior ~2% of the crystals, in
        cubic groups that no orbit within ``max_atoms`` can build, keep a supergroup's label)."""
        return self.prior.copy()

    def sample(self, n: int, space_group: int | None = None) -> list[GeneratedCrystal]:
        """The next ``n`` crystals of the stream (advances :attr:`position`)."""
        n = _check_int("n", n, minimum=0)
        crystals = self.generate(range(self.position, self.position + n), space_group)
        self.position += n
        return crystals

    def generate(
        self, indices: Sequence[int], space_group: int | None = None
    ) -> list[GeneratedCrystal]:
        """Crystals ``indices`` of the stream (a pure function of seed, split and index).

        Args:
            indices: Non-negative stream indices.
            space_group: Build every crystal in this group (1..230) instead of drawing one.
        """
        if isinstance(indices, str | bytes | int | np.integer) or not isinstance(indices, Iterable):
            # generate(5) would fail with "'int' object is not iterable"
            raise TypeError(
                f"indices must be a sequence of ints (e.g. [5] or range(5)), got {indices!r}"
            )
        if space_group is not None:
            integral = isinstance(space_group, int | np.integer) and not isinstance(
                space_group, bool
            )
            if not (integral and 1 <= space_group <= NUM_SPACE_GROUPS):
                raise ValueError(
                    f"space_group must be an integer 1..230 or None, got {space_group!r}"
                )
            space_group = int(space_group)
            check_max_atoms(space_group, self.max_atoms)
        return [self._crystal(_check_int("index", i, 0), space_group) for i in indices]

    # ------------------------------------------------------------------------------ one crystal

    def _crystal(self, index: int, space_group: int | None) -> GeneratedCrystal:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], index]))
        requested = (
            int(sample_space_groups(self.prior, 1, rng)[0]) if space_group is None else space_group
        )
        built = detected = None
        for attempt in range(1, self.max_attempts + 1):  # noqa: B007 (used after the loop)
            # Some groups' real combinations mostly have a supergroup's symmetry within
            # max_atoms (F432: all on special positions of Fm-3m): later attempts use the sampler
            # that favours free coordinates.
            combination, element_of_orbit, elements = sample_orbits(
                requested, rng, self.max_atoms, statistics=attempt <= self.max_attempts // 2
            )
            built = _build(
                requested, combination, element_of_orbit, elements, rng, self.min_distance_factor
            )
            if built is None:
                continue
            (lattice, species, coords), kept = built, combination
            detected = _detect_space_group(lattice, species, coords)
            if detected == requested:
                break
        if built is None and detected is None:
            raise RuntimeError(
                f"crystal {index} of group {requested}: no placement in {self.max_attempts} "
                "attempts (impossible Wyckoff combinations within max_atoms?)"
            )
        positions = wyckoff_positions(requested)
        return GeneratedCrystal._built(
            lattice=lattice,
            species=species,
            frac_coords=coords,
            space_group=detected,
            requested_space_group=requested,
            index=index,
            split=self.split,
            seed=self.seed,
            wyckoff=tuple(positions.labels[w] for w in kept),
            attempts=attempt,
        )


def _detect_space_group(lattice: np.ndarray, species: list[str], coords: np.ndarray) -> int:
    """The space group moyo detects (moyopy: spglib's algorithm, ~5x faster on cubic cells; the
    tests check its labels against spglib)."""
    kinds = {element: k for k, element in enumerate(dict.fromkeys(species))}
    cell = moyopy.Cell(lattice.tolist(), coords.tolist(), [kinds[s] for s in species])
    return int(moyopy.MoyoDataset(cell, symprec=_SYMPREC).number)


def _random_lattice(space_group: int, volume: float, rng: np.random.Generator) -> np.ndarray:
    """Lattice vectors as rows ``[3, 3]`` of the group's conventional cell with ``volume``.

    Axis ratios are log-normal around 1, except c/a of hexagonal axes: around 1.63 (ideal hcp)
    and, for rhombohedral groups, whose hexagonal cell stacks three primitive cells, 2.45 (ideal
    ccp in hexagonal axes). Monoclinic and triclinic cells are drawn reduced
    (``|v_i . v_j| <= min(|v_i|, |v_j|)^2 / 2`` for every pair), as real cells are reported, so
    that the nearest image of any atom lies within one cell (what :data:`_SYSTEM_SHIFTS` relies
    on).
    """
    system = crystal_system_index(space_group)
    while True:
        lengths = np.exp(rng.normal(0.0, _RATIO_SIGMA, 3))
        alpha = beta = gamma = 90.0
        if system == _TRICLINIC:
            alpha, beta, gamma = rng.uniform(60.0, 120.0, 3)
        elif system == _MONOCLINIC:
            beta = rng.uniform(90.0, 130.0)
        elif system in (_TETRAGONAL, _TRIGONAL, _HEXAGONAL):
            lengths[1] = lengths[0]
            if system != _TETRAGONAL:
                gamma = 120.0
                lengths[2] *= 2.45 if space_group in _RHOMBOHEDRAL else 1.63
        elif system == _CUBIC:
            lengths[:] = 1.0
        cos_a, cos_b, cos_g = (math.cos(math.radians(angle)) for angle in (alpha, beta, gamma))
        if 1 - cos_a**2 - cos_b**2 - cos_g**2 + 2 * cos_a * cos_b * cos_g < 0.05:  # (nearly) flat
            continue
        unit = lattice_matrix(*lengths, alpha, beta, gamma)
        gram = unit @ unit.T
        if all(
            abs(gram[i, j]) <= min(gram[i, i], gram[j, j]) / 2 + 1e-9
            for i, j in ((0, 1), (0, 2), (1, 2))
        ):
            return unit * (volume / abs(np.linalg.det(unit))) ** (1 / 3)


class _Orbit(NamedTuple):
    """The orbit operators of one Wyckoff position, arranged for one matrix product."""

    rotation: np.ndarray  # [3, 3 m]: a free point (row) times it is its m images, flattened
    translation: np.ndarray  # [m, 3]
    size: int  # m


@functools.lru_cache(maxsize=4096)
def _orbit(space_group: int, position: int) -> _Orbit:
    """Operators of Wyckoff position ``position`` (index into the group's table)."""
    positions = wyckoff_positions(space_group)
    ops = positions.ops[positions.op_offsets[position] : positions.op_offsets[position + 1]]
    rotation = np.ascontiguousarray(ops[:, :, :3].transpose(2, 0, 1).reshape(3, -1))
    return _Orbit(rotation, np.ascontiguousarray(ops[:, :, 3]), len(ops))


def _orbit_positions(orbit: _Orbit, free: np.ndarray) -> np.ndarray:
    """Orbit of each free point ``free [T, 3]`` -> ``[T, m, 3]`` in [0, 1)."""
    images = (free @ orbit.rotation).reshape(len(free), orbit.size, 3)
    return np.mod(images + orbit.translation, 1.0, out=images)


# Images to search beyond rounding, per crystal system: none where the axes are orthogonal, the
# 3 x 3 block of the oblique plane (ab for gamma = 120 deg, ac for monoclinic beta) and all 27
# cells for triclinic cells; exact for the reduced cells that _random_lattice draws.
def _shift_block(axes: tuple[int, ...]) -> np.ndarray:
    grid = np.zeros((3 ** len(axes), 3))
    grid[:, list(axes)] = np.array(np.meshgrid(*[[-1, 0, 1]] * len(axes))).reshape(len(axes), -1).T
    return grid


_NONZERO_SHIFTS = np.delete(_shift_block((0, 1, 2)), 13, axis=0)
_NO_SHIFTS = np.zeros((0, 3))
_SYSTEM_SHIFTS = {
    _TRICLINIC: _shift_block((0, 1, 2)),
    _MONOCLINIC: _shift_block((0, 2)),
    _TRIGONAL: _shift_block((0, 1)),
    _HEXAGONAL: _shift_block((0, 1)),
}


def _place(
    operators: list[_Orbit],
    dof: np.ndarray,
    contacts: np.ndarray,
    lattice: np.ndarray,
    shifts: np.ndarray,
    factor: float,
    system: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Positions ``[N, 3]`` of every orbit's atoms (orbit after orbit) and the lattice, grown
    where an orbit found no place (fractional positions keep their distances when the cell
    grows), or None.

    Fixed points go first, then the others from the largest; each tries ``_CANDIDATES`` random
    free points at once (:func:`._placement.place`). Symmetry makes the checks cheap: every atom
    of an orbit sees the orbit and the atoms placed before (themselves whole orbits) as its first
    atom does, so only the first atom's distances are checked.
    """
    order = sorted(range(len(operators)), key=lambda o: (dof[o] > 0, -operators[o].size))
    counts = np.where(dof > 0, _CANDIDATES, 1)
    drawn = {o: _orbit_positions(operators[o], rng.random((counts[o], 3))) for o in order}
    blocks = [drawn[o] for o in range(len(operators))]  # [counts[o], m_o, 3], drawn in order
    sizes = np.array([orbit.size for orbit in operators])
    offsets = np.cumsum([0, *(counts * sizes)[:-1]])
    chosen, lattice, placed = place(
        np.concatenate([block.reshape(-1, 3) for block in blocks]), offsets, counts, sizes,
        np.array(order), contacts, lattice, shifts, factor, system, _MAX_GROWTHS, _MAX_STEP,
    )  # fmt: skip
    if not placed:
        return None
    return np.concatenate([block[t] for block, t in zip(blocks, chosen, strict=True)]), lattice


def _build(
    space_group: int,
    combination: tuple[int, ...],
    element_of_orbit: np.ndarray,
    elements: list[str],
    rng: np.random.Generator,
    factor: float,
) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """Lattice ``[3, 3]``, species and fractional coordinates ``[N, 3]`` of one structure, or
    None when its atoms found no place or only an unphysically loose cell holds them."""
    operators = [_orbit(space_group, w) for w in combination]
    dof = wyckoff_positions(space_group).degrees_of_freedom[list(combination)]
    orbit_elements = [elements[e] for e in element_of_orbit]
    contacts = np.array([[_contact_distance(a, b) for b in orbit_elements] for a in orbit_elements])
    multiplicities = np.array([orbit.size for orbit in operators])
    system = crystal_system_index(space_group)
    shifts = _SYSTEM_SHIFTS.get(system, _NO_SHIFTS)
    # The volume of a solid: atoms as spheres of their shortest contact distance filling a
    # fraction of it (0.74 for close-packed metals, 0.5 for rock salt, 0.25 for quartz). The
    # cell grows where the atoms do not fit.
    nearest = contacts.min(axis=1)
    volume = float((math.pi / 6 * nearest**3 * multiplicities).sum()) / rng.uniform(*_FILLING)
    lattice = _random_lattice(space_group, volume, rng)
    # An atom's own images: the shortest lattice vector must keep the largest atom apart.
    shortest = shortest_translation(lattice, _NONZERO_SHIFTS)
    lattice = lattice * max(1.0, factor * float(np.diag(contacts).max()) / shortest)
    placement = _place(operators, dof, contacts, lattice, shifts, factor, system, rng)
    if placement is None:
        return None
    positions, lattice = placement
    positions, lattice = compact(
        positions, multiplicities, dof, contacts, lattice, shifts, _NONZERO_SHIFTS, factor,
        volume, np.concatenate([orbit.rotation for orbit in operators], axis=1),
        np.concatenate([orbit.translation for orbit in operators]),
        rng.random((_COMPACTION_ROUNDS, 1 + 3 * _CANDIDATES)),
    )  # fmt: skip
    if abs(np.linalg.det(lattice)) > _MAX_VOLUME_PER_ATOM * multiplicities.sum():
        return None
    species = [
        element
        for element, orbit in zip(orbit_elements, operators, strict=True)
        for _ in range(orbit.size)
    ]
    return lattice, species, positions
