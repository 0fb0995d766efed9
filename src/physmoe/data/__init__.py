"""PXRD data: structures, simulation, rendering, datasets and readers."""

from .grid import CU_KA1, CU_KA2, TwoThetaGrid
from .structures import Crystal, lattice_matrix

__all__ = ["CU_KA1", "CU_KA2", "Crystal", "TwoThetaGrid", "lattice_matrix"]
