"""Scattering: atomic form factors (IT92 or pymatgen's table) and structure factors ``|F|^2``
(the compiled pair kernel of :mod:`.compiled` for a list of reflections, the separable box
kernel here for large cells)."""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from ..structures import Crystal
from .compiled import pair_squared
from .reflections import _Reflections

# Entries of the complex64 blocks held at once by the box kernel (8 MB and 0.5 MB).
_PHASE_BLOCK_ENTRIES = 1 << 20
_GATHER_BLOCK_ENTRIES = 1 << 16
# Site types (distinct element and B) up to which the box-wide matrix product beats weighting each
# site directly (measured: the crossover is ~32 types up to 200 sites, ~64 at 400 sites).
_MIN_MATMUL_TYPES = 32
# Amplitudes below this fraction of F(000) are rounding residue (the box kernel's float32 phases
# give ~1e-7).
_ABSENT_AMPLITUDE = 1e-5


# --------------------------------------------------------------------------------- form factors


@functools.lru_cache(maxsize=1)
def _pymatgen_table() -> dict[str, list[list[float]]]:
    """pymatgen's ``atomic_scattering_params.json``, read without importing pymatgen."""
    spec = importlib.util.find_spec("pymatgen")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("form_factors='pymatgen' needs pymatgen installed (pip install pymatgen)")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "analysis" / "diffraction" / "atomic_scattering_params.json"
    return json.loads(path.read_text())


@functools.lru_cache(maxsize=1024)
def _coefficients(
    elements: tuple[str, ...], table: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Form-factor coefficients of ``elements``: ``a [E, 4]``, ``b [E, 4]``, ``c [E]``.

    IT92: ``f(s) = sum_i a_i exp(-b_i s^2) + c``. pymatgen's table: ``f(s) = Z - 41.78214 s^2 sum_i
    a_i exp(-b_i s^2)`` (Mott-Bethe form); stored here as ``a -> -41.78214 a`` and ``c = Z`` with
    the ``s^2`` prefactor applied by :func:`_form_factors`.
    """
    a, b, c = [], [], []
    for symbol in elements:
        element = gemmi.Element(symbol)
        if table == "it92":
            coef = element.it92
            if coef is None:
                raise ValueError(
                    f"no IT92 form factor for element {symbol} (Z = {element.atomic_number})"
                )
            a.append(coef.a)
            b.append(coef.b)
            c.append(coef.c)
        else:
            # pymatgen's table has no "D"; deuterium scatters X-rays as hydrogen does.
            params = _pymatgen_table().get("H" if symbol == "D" else symbol)
            if params is None:
                raise ValueError(f"pymatgen's form-factor table has no element {symbol}")
            a.append([-41.78214 * p[0] for p in params])
            b.append([p[1] for p in params])
            c.append(float(element.atomic_number))
    return tuple(np.asarray(v, dtype=np.float64) for v in (a, b, c))


@dataclass(frozen=True)
class _Elements:
    """The distinct elements of a site list, with what the kernels need of them."""

    site_element: np.ndarray  # [N] int: index of each site's element
    site_z: np.ndarray  # [N] float64: atomic number of each site, for F(000)
    neg_b: np.ndarray  # [E * 4 + 1, 1]: minus the Gaussian widths b, element by element, then 0
    # [E, E * 4 + 1]: the weights a, block-diagonal (sums each element's terms), then the constant
    # c in the column that meets exp(0 * s^2) = 1 (0 for pymatgen's table, which adds c after s^2)
    a_block: np.ndarray
    c: np.ndarray  # [E]
    mott_bethe: bool  # pymatgen's table: the Gaussian sum is multiplied by s^2


@functools.lru_cache(maxsize=1024)
def _elements(species: tuple[str, ...], table: str) -> _Elements:
    """Element bookkeeping of a site list, cached: a generated stream repeats compositions, and
    the lookups cost more than simulating a small cell."""
    symbols = tuple(sorted(set(species)))
    position = {symbol: i for i, symbol in enumerate(symbols)}
    site_element = np.array([position[s] for s in species], dtype=np.intp)
    a, b, c = _coefficients(symbols, table)
    num_elements = len(symbols)
    mott_bethe = table == "pymatgen"
    a_block = np.zeros((num_elements, num_elements, 4))
    a_block[np.arange(num_elements), np.arange(num_elements), :] = a
    constant = np.zeros((num_elements, 1)) if mott_bethe else c[:, None]
    z = np.array([gemmi.Element(s).atomic_number for s in symbols], dtype=np.float64)
    return _Elements(
        site_element=site_element,
        site_z=z[site_element],
        neg_b=np.append(-b.reshape(-1), 0.0)[:, None],
        a_block=np.concatenate([a_block.reshape(num_elements, -1), constant], axis=1),
        c=c,
        mott_bethe=mott_bethe,
    )


def _form_factors(elements: _Elements, s2: np.ndarray) -> np.ndarray:
    """Atomic form factors ``[E, M]`` at ``s^2 = (sin(theta) / lambda)^2`` ``[M]`` (Angstrom^-2).

    Computed in numpy even for the compiled pair kernel: its vectorised ``exp`` beats a loop.
    """
    form = elements.a_block @ np.exp(elements.neg_b * s2)
    if elements.mott_bethe:
        form *= s2
        form += elements.c[:, None]
    return form


def _absent_below(crystal: Crystal, elements: _Elements) -> float:
    """``|F|^2`` under which a reflection is systematically absent.

    Absences come out as float32 rounding residue, ~1e-7 of the largest possible amplitude F(000) ~
    sum_j occ_j Z_j; dropping them makes a range holding only absent reflections give an empty list
    instead of residue scaled to 100.
    """
    return (_ABSENT_AMPLITUDE * float(crystal.occupancies @ elements.site_z)) ** 2


# ---------------------------------------------------------------------------- structure factors


def _unit_phasors(turns: np.ndarray) -> np.ndarray:
    """``cos`` and ``sin`` of ``2 pi turns`` (float64 ``[P]``, overwritten) as float32 ``[2, P]``.

    The phase is reduced mod 1 in float64 first, so float32 trigonometry loses nothing at large
    ``hkl``; float32 sine and cosine are ~5x faster than a complex exponential.
    """
    turns -= np.floor(turns)
    angle = np.multiply(turns, 2 * np.pi, out=np.empty(len(turns), dtype=np.float32))
    phasors = np.empty((2, len(angle)), dtype=np.float32)
    np.cos(angle, out=phasors[0])
    np.sin(angle, out=phasors[1])
    return phasors


def _box_squared(
    reflections: _Reflections, crystal: Crystal, b_iso: np.ndarray, elements: _Elements
) -> np.ndarray:
    """``|F|^2`` float64 ``[M]`` of a large cell, whose reflections come with their box.

    The phase factor separates, ``exp(2 pi i hkl . x) = e_h(x) e_k(y) e_l(z)``, so only three small
    tables of sines and cosines are needed. Sites are grouped into types (distinct element and B,
    which share one scattering factor ``f_e(s) exp(-B s^2)``); the occupancy-weighted phase sum of
    every type over the whole box is then one complex matrix product per block of ``h``.
    """
    hkl, s2 = reflections.hkl, reflections.g2 / 4
    axes, mask = reflections.box
    element_index = elements.site_element
    form = _form_factors(elements, s2).T  # [M, E]
    # Site types: distinct (element, B) pairs share one scattering factor f_e(s) exp(-B s^2).
    b_values, b_index = np.unique(b_iso, return_inverse=True)
    type_codes, type_index = np.unique(
        element_index * len(b_values) + b_index.reshape(-1), return_inverse=True
    )
    type_index = type_index.reshape(-1)
    type_element, type_b = type_codes // len(b_values), b_values[type_codes % len(b_values)]
    type_factor = form[:, type_element] * np.exp(-s2[:, None] * type_b[None, :])  # [M, T]
    num_sites, num_types = len(crystal.species), len(type_codes)

    # [H|K|L, N] tables e_h(x), e_k(y), e_l(z)
    e_h, e_k, e_l = (_phase_table(axis, crystal.frac_coords[:, i]) for i, axis in enumerate(axes))
    occupancy = crystal.occupancies.astype(np.float32)
    if num_types <= max(_MIN_MATMUL_TYPES, num_sites // 6):
        weights = np.zeros((num_sites, num_types), dtype=np.complex64)  # [N, T]
        weights[np.arange(num_sites), type_index] = occupancy
        # [N, L * T]: e_l(z_j) * occupancy of site j in type t
        e_l_weighted = (e_l.T[:, :, None] * weights[:, None, :]).reshape(num_sites, -1)
        plane = mask[0].size  # K * L box points per h
        rows = max(1, _PHASE_BLOCK_ENTRIES // (plane * num_types))
        # Flat box indices of the kept points; a flat take is much faster than a 3-D boolean mask.
        keep = np.flatnonzero(mask)
        bounds = np.searchsorted(keep, np.arange(0, len(axes[0]) + rows, rows) * plane)
        sums = []
        for block_index, start in enumerate(range(0, len(axes[0]), rows)):
            block = slice(start, start + rows)
            e_hk = (e_h[block, None, :] * e_k[None, :, :]).reshape(-1, num_sites)  # [h * K, N]
            box_sums = (e_hk @ e_l_weighted).reshape(-1, num_types)  # [h * K * L, T]
            kept = keep[bounds[block_index] : bounds[block_index + 1]] - start * plane
            sums.append(box_sums[kept])
        type_sums = np.concatenate(sums)  # [M, T]
        structure_factor = np.einsum("mt,mt->m", type_factor, type_sums)
    else:
        # Many types (e.g. every site with its own B): weight each site directly, element by
        # element, with occupancy and Debye-Waller factor folded into one exponential.
        h_index, k_index, l_index = (
            np.searchsorted(axis, hkl[:, i]) for i, axis in enumerate(axes)
        )
        log_occupancy = np.log(crystal.occupancies)
        structure_factor = np.zeros(len(hkl), dtype=np.complex128)
        rows = max(1, _GATHER_BLOCK_ENTRIES // num_sites)
        for start in range(0, len(hkl), rows):
            block = slice(start, start + rows)
            phases = e_h[h_index[block]] * e_k[k_index[block]]
            phases *= e_l[l_index[block]]  # [m, N]
            site_weight = np.exp(log_occupancy[None, :] - s2[block, None] * b_iso[None, :])
            site_weight = site_weight.astype(np.float32)
            for e in range(form.shape[1]):
                sites = element_index == e
                per_element = np.einsum("mn,mn->m", phases[:, sites], site_weight[:, sites])
                structure_factor[block] += form[block, e] * per_element
    return (
        structure_factor.real.astype(np.float64) ** 2
        + structure_factor.imag.astype(np.float64) ** 2
    )


def _phase_table(indices: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``exp(2 pi i n x_j)`` complex64 ``[len(indices), N]`` for integer ``n`` and coordinates
    ``x [N]``: the phase is reduced mod 1 in float64 before the float32 sine and cosine."""
    phasors = _unit_phasors(np.multiply.outer(indices.astype(np.float64), coords).reshape(-1))
    table = np.empty(phasors.shape[1], dtype=np.complex64)
    table.real, table.imag = phasors
    return table.reshape(len(indices), len(coords))


def _structure_factors(
    crystals: Sequence[Crystal],
    b_sites: Sequence[np.ndarray],
    reflections: list[_Reflections],
    table: str,
) -> None:
    """Fill ``reflections[i].squared`` for every structure: the box kernel for the large cells
    that come with their box, the compiled pair kernel for the rest."""
    for crystal, b_site, found in zip(crystals, b_sites, reflections, strict=True):
        elements = _elements(tuple(crystal.species), table)
        found.absent = _absent_below(crystal, elements)
        if found.box is not None:
            found.squared = _box_squared(found, crystal, b_site, elements)
            continue
        s2 = found.g2 / 4
        found.squared = pair_squared(
            found.hkl, s2, _form_factors(elements, s2), crystal.frac_coords,
            elements.site_element, crystal.occupancies, b_site,
        )  # fmt: skip


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
