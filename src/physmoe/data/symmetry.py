"""Space groups of structures with spglib: detection and the standardised conventional cell."""

from __future__ import annotations

import numpy as np
import spglib

from .structures import Crystal

__all__ = ["DEFAULT_SYMPREC", "detect_space_group", "standardize_crystal"]

#: spglib tolerance (Angstrom) for relabelling. Generated coordinates are exact to ~1e-12, so the
#: label does not depend on it over 1e-5..1e-2; 1e-3 also tolerates float32-stored coordinates.
DEFAULT_SYMPREC = 1e-3


def _spglib_cell(crystal: Crystal) -> tuple[tuple, list[tuple[str, float]]]:
    """spglib cell; sites of equal element and occupancy share a type."""
    kinds = [
        (s, round(float(o), 4)) for s, o in zip(crystal.species, crystal.occupancies, strict=True)
    ]
    kind_index: dict[tuple[str, float], int] = {}
    types = [kind_index.setdefault(kind, len(kind_index) + 1) for kind in kinds]
    return (crystal.lattice, crystal.frac_coords, types), list(kind_index)


def _symmetry_dataset(crystal: Crystal, symprec: float):
    cell, kinds = _spglib_cell(crystal)
    dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if dataset is None:
        raise ValueError(f"spglib found no symmetry for {crystal.formula} (symprec={symprec})")
    return dataset, kinds


def detect_space_group(crystal: Crystal, symprec: float = DEFAULT_SYMPREC) -> int:
    """Space-group number (1..230) that spglib detects at tolerance ``symprec`` (Angstrom)."""
    return int(_symmetry_dataset(crystal, symprec)[0].number)


def standardize_crystal(crystal: Crystal, symprec: float = DEFAULT_SYMPREC) -> tuple[int, Crystal]:
    """Detected space-group number and the structure in spglib's standardised conventional cell
    of that group (idealised metric, standard orientation; ``space_group`` set)."""
    dataset, kinds = _symmetry_dataset(crystal, symprec)
    site_kinds = [kinds[t - 1] for t in dataset.std_types]
    standardized = Crystal(
        lattice=dataset.std_lattice,
        species=[symbol for symbol, _ in site_kinds],
        frac_coords=np.mod(dataset.std_positions, 1.0),
        occupancies=np.array([occupancy for _, occupancy in site_kinds]),
        space_group=int(dataset.number),
    )
    return int(dataset.number), standardized
