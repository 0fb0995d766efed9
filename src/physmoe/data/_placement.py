"""Compiled loops of the random-crystal generator (numba): placing the orbits, compacting the
cell, and the distance checks both use.

Placing an orbit asks, for a handful of candidate positions, how close the candidate's first atom
comes to the atoms of its own orbit and to those already placed, each pair measured against its
own contact distance. In numpy that is a dozen calls on arrays of a few hundred entries, so call
overhead, not arithmetic, set the generator's speed; the compiled loops do the same work with one
call per crystal for placement and one for compaction (``scripts/benchmark_data.py`` measures
the generator).

Distances are to the nearest periodic image: the fractional difference is rounded to the nearest
integer, and where the cell is oblique the images in ``images`` (Cartesian lattice translations,
``[S, 3]``, the zero translation among them; ``[0, 3]`` for orthogonal cells, where rounding is
exact) are searched too.
"""

from __future__ import annotations

import math

import numpy as np

from .._jit import jit

__all__ = ["closest_ratios", "compact", "contact_ratios", "grow", "place", "shortest_translation"]


@jit
def _image_squared(d0, d1, d2, lattice, images):
    """Squared Cartesian length of the fractional difference ``(d0, d1, d2)``, nearest image."""
    d0 -= np.rint(d0)
    d1 -= np.rint(d1)
    d2 -= np.rint(d2)
    x = d0 * lattice[0, 0] + d1 * lattice[1, 0] + d2 * lattice[2, 0]
    y = d0 * lattice[0, 1] + d1 * lattice[1, 1] + d2 * lattice[2, 1]
    z = d0 * lattice[0, 2] + d1 * lattice[1, 2] + d2 * lattice[2, 2]
    best = x * x + y * y + z * z
    for s in range(images.shape[0]):
        a, b, c = x + images[s, 0], y + images[s, 1], z + images[s, 2]
        best = min(best, a * a + b * b + c * c)
    return best


@jit
def closest_ratios(candidates, placed, limits, lattice, images):
    """How close each candidate orbit comes to a contact, and with which neighbour.

    Args:
        candidates: ``[T, m, 3]`` fractional positions of ``T`` candidate orbits of ``m`` atoms.
        placed: ``[P, 3]`` atoms already placed.
        limits: ``[m - 1 + P]`` squared least distance from a candidate's first atom to its own
            atoms ``1 .. m - 1``, then to the placed atoms.
        lattice: ``[3, 3]`` lattice vectors as rows; ``images``: ``[S, 3]`` (module docstring).

    Returns:
        ``closest [T]``, the least ``squared distance / limit`` (>= 1: the candidate fits), and
        ``worst [T]``, the neighbour that attains it (its index into ``limits``; the first on ties).
    """
    num_candidates, size = candidates.shape[0], candidates.shape[1]
    closest = np.full(num_candidates, np.inf)
    worst = np.zeros(num_candidates, np.int64)
    for t in range(num_candidates):
        first = candidates[t, 0]
        for j in range(limits.shape[0]):
            other = candidates[t, j + 1] if j < size - 1 else placed[j - size + 1]
            squared = _image_squared(
                other[0] - first[0], other[1] - first[1], other[2] - first[2], lattice, images
            )
            if squared / limits[j] < closest[t]:
                closest[t] = squared / limits[j]
                worst[t] = j
    return closest, worst


@jit
def contact_ratios(coords, firsts, orbit_of_atom, contacts, lattice, images):
    """Least ``distance / contact distance`` from each orbit's first atom to any other atom.

    ``coords [N, 3]`` (orbits one after another), ``firsts [O]`` the index of each orbit's first
    atom, ``orbit_of_atom [N]``, ``contacts [O, O]``; returns ``[O]``. By symmetry the first atom
    stands for its whole orbit.
    """
    ratios = np.full(firsts.shape[0], np.inf)
    for o in range(firsts.shape[0]):
        a = firsts[o]
        for n in range(coords.shape[0]):
            if n != a:
                squared = _image_squared(
                    coords[n, 0] - coords[a, 0],
                    coords[n, 1] - coords[a, 1],
                    coords[n, 2] - coords[a, 2],
                    lattice,
                    images,
                )
                ratios[o] = min(ratios[o], math.sqrt(squared) / contacts[o, orbit_of_atom[n]])
    return ratios


# Crystal systems, as crystallography.crystal_system_index numbers them.
_TETRAGONAL, _TRIGONAL, _HEXAGONAL, _CUBIC = 3, 4, 5, 6


@jit
def _images(shifts, lattice):
    """Cartesian translations ``[S, 3]`` of the fractional ``shifts [S, 3]``."""
    images = np.empty((shifts.shape[0], 3))
    for s in range(shifts.shape[0]):
        for j in range(3):
            images[s, j] = (
                shifts[s, 0] * lattice[0, j]
                + shifts[s, 1] * lattice[1, j]
                + shifts[s, 2] * lattice[2, j]
            )
    return images


@jit
def grow(lattice, direction, system, step):
    """The lattice with its vectors lengthened by up to ``step`` (0.1 = 10%) along a fractional
    ``direction [3]`` (axes the crystal system ties together grow together; angles kept)."""
    weights = np.empty(3)
    for i in range(3):
        weights[i] = direction[i] * math.sqrt((lattice[i] * lattice[i]).sum())
    if system == _TETRAGONAL or system == _TRIGONAL or system == _HEXAGONAL:
        mean = (weights[0] + weights[1]) / 2
        weights[0] = mean
        weights[1] = mean
    if system == _CUBIC or not weights.sum() > 0:
        weights[:] = 1.0
    grown = lattice.copy()
    for i in range(3):
        grown[i] *= 1.0 + step * weights[i] / weights.max()
    return grown


@jit
def place(candidates, offsets, counts, sizes, order, contacts, lattice, shifts, factor, system,
          max_growths, max_step):  # fmt: skip
    """Place orbits one by one, growing the cell where an orbit finds no place.

    Args:
        candidates: Candidate positions of every orbit, ``counts[o]`` orbits of ``sizes[o]``
            atoms each from row ``offsets[o]`` (``[sum counts * sizes, 3]``).
        order: The orbits in the order they are placed.
        contacts: ``[O, O]`` contact distance of every pair of orbits' elements; atoms stay
            ``factor`` times that apart.
        lattice, shifts: The cell ``[3, 3]`` and the fractional images to search ``[S, 3]``.
        system: Crystal system (0 triclinic .. 6 cubic), for how the cell grows.

    Returns:
        The candidate each orbit took ``[O]`` (the first that fits), the lattice, and False when
        ``max_growths`` growth steps did not make room.
    """
    placed = np.empty((sizes.sum(), 3))
    placed_orbit = np.empty(sizes.sum(), np.int64)
    chosen = np.zeros(order.shape[0], np.int64)
    num_placed = 0
    growths = 0
    for o in order:
        size = sizes[o]
        block = candidates[offsets[o] : offsets[o] + counts[o] * size].reshape(counts[o], size, 3)
        limits = np.empty(size - 1 + num_placed)
        for j in range(size - 1):
            limits[j] = (factor * contacts[o, o]) ** 2
        for p in range(num_placed):
            limits[size - 1 + p] = (factor * contacts[o, placed_orbit[p]]) ** 2
        while True:
            closest, worst = closest_ratios(
                block, placed[:num_placed], limits, lattice, _images(shifts, lattice)
            )
            fits = np.flatnonzero(closest >= 1)
            if fits.shape[0] > 0:
                break
            growths += 1
            if growths > max_growths:
                return chosen, lattice, False
            # Grow just enough for the best candidate, along the axes its worst contact runs
            # along: atoms on a line (0, 0, z) need a long c, not a bigger cell.
            t = np.argmax(closest)
            j = worst[t]
            other = block[t, j + 1] if j < size - 1 else placed[j - size + 1]
            delta = other - block[t, 0]
            delta = np.abs(delta - np.rint(delta))
            needed = min(1.0 / math.sqrt(max(closest[t], 1e-12)), max_step) * 1.001
            lattice = grow(lattice, delta, system, needed - 1.0)
        chosen[o] = fits[0]
        placed[num_placed : num_placed + size] = block[fits[0]]
        placed_orbit[num_placed : num_placed + size] = o
        num_placed += size
    return chosen, lattice, True


@jit
def _determinant(m):
    return (
        m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
        - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
        + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0])
    )


@jit
def shortest_translation(lattice, nonzero_shifts):
    """Length of the shortest of the lattice translations ``nonzero_shifts [S, 3]`` (fractional)."""
    images = _images(nonzero_shifts, lattice)
    return math.sqrt((images * images).sum(axis=1).min())


@jit
def compact(positions, sizes, dof, contacts, lattice, shifts, nonzero_shifts, factor, volume,
            rotations, translations, draws):  # fmt: skip
    """Shrink the cell towards ``volume``: scale it until the closest contact reaches
    ``factor``, move an orbit of that contact to a random place where it fits, repeat.

    Args:
        positions: ``[N, 3]`` the orbits' atoms, orbit after orbit (``sizes [O]`` atoms each).
        dof: ``[O]`` free coordinates of each orbit (0: it cannot move).
        rotations, translations: Orbit operators: a free point (row) times ``rotations[:, 3 *
            a : 3 * (a + m)]`` plus ``translations[a : a + m]`` are the ``m`` atoms of the
            orbit whose first atom is atom ``a``.
        draws: ``[rounds, 1 + 3 T]`` uniform numbers of each round: which orbit moves, and ``T``
            candidate free points for it.

    Returns:
        The positions and the lattice.
    """
    num_orbits = sizes.shape[0]
    firsts = np.zeros(num_orbits, np.int64)
    for o in range(1, num_orbits):
        firsts[o] = firsts[o - 1] + sizes[o - 1]
    orbit_of_atom = np.empty(positions.shape[0], np.int64)
    for o in range(num_orbits):
        orbit_of_atom[firsts[o] : firsts[o] + sizes[o]] = o
    self_contact = 0.0
    for o in range(num_orbits):
        self_contact = max(self_contact, contacts[o, o])
    num_candidates = (draws.shape[1] - 1) // 3
    for r in range(draws.shape[0]):
        images = _images(shifts, lattice)
        ratios = contact_ratios(positions, firsts, orbit_of_atom, contacts, lattice, images)
        least = ratios.min()
        floor = max(
            factor / least, factor * self_contact / shortest_translation(lattice, nonzero_shifts)
        )
        target = (volume / abs(_determinant(lattice))) ** (1 / 3)
        lattice = lattice * min(max(target, floor), 1.0)
        if target >= floor:  # the drawn volume is reached
            break
        movable = np.flatnonzero((ratios <= least * (1 + 1e-9)) & (dof > 0))
        if movable.shape[0] == 0:
            break
        o = movable[int(draws[r, 0] * movable.shape[0])]
        size, first = sizes[o], firsts[o]
        candidates = np.empty((num_candidates, size, 3))
        for t in range(num_candidates):
            for i in range(size):
                for j in range(3):
                    value = translations[first + i, j]
                    for axis in range(3):
                        value += draws[r, 1 + 3 * t + axis] * rotations[axis, 3 * (first + i) + j]
                    candidates[t, i, j] = value - math.floor(value)
        others = np.empty((positions.shape[0] - size, 3))
        limits = np.empty(positions.shape[0] - 1)
        for j in range(size - 1):
            limits[j] = (factor * contacts[o, o]) ** 2
        k = 0
        for n in range(positions.shape[0]):
            if orbit_of_atom[n] != o:
                others[k] = positions[n]
                limits[size - 1 + k] = (factor * contacts[o, orbit_of_atom[n]]) ** 2
                k += 1
        closest, _ = closest_ratios(candidates, others, limits, lattice, _images(shifts, lattice))
        if (closest >= 1).any():
            positions[first : first + size] = candidates[np.argmax(closest)]
    return positions, lattice
