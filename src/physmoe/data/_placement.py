"""Compiled distance checks of the random-crystal generator (numba).

Placing an orbit asks, for a handful of candidate positions, how close the candidate's first atom
comes to the atoms of its own orbit and to those already placed, each pair measured against its
own contact distance. In numpy that is a dozen calls on arrays of a few hundred entries, so call
overhead, not arithmetic, set the generator's speed; one compiled loop does the same work in a
single call (``scripts/benchmark_data.py`` measures the generator).

Distances are to the nearest periodic image: the fractional difference is rounded to the nearest
integer, and where the cell is oblique the images in ``images`` (Cartesian lattice translations,
``[S, 3]``, the zero translation among them; ``[0, 3]`` for orthogonal cells, where rounding is
exact) are searched too.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["closest_ratios", "contact_ratios"]


@numba.njit(cache=True)
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


@numba.njit(cache=True)
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


@numba.njit(cache=True)
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
