"""PXRD data: structures, simulation, rendering, datasets and readers."""

from .collator import PXRDCollator
from .dataset import (
    FEATURES,
    crystal_from_row,
    load_dataset_dict,
    rows_from_crystals,
    split_dataset,
)
from .embedded import default_dataset
from .feature_extraction import XRDFeatureExtractor
from .generate import generate_dataset
from .grid import CU_KA1, CU_KA2, TwoThetaGrid
from .instruments import (
    INSTRUMENT_SUFFIXES,
    read_brml,
    read_bruker_raw,
    read_instrument_file,
    read_ras,
    read_xrdml,
)
from .priors import space_group_counts, space_group_prior
from .random_crystals import GeneratedCrystal, RandomCrystalGenerator
from .readers import Pattern, read_cif, read_pattern
from .reference_data import (
    ReferenceArrays,
    SimXRDRecord,
    iter_simxrd,
    read_reference_npy,
    read_simxrd,
)
from .render import (
    MeasurementConditions,
    PatternRenderer,
    SampledConditions,
    pad_peaks,
    render_padded,
    render_patterns,
)
from .simulate import PeakList, simulate_peaks, simulate_peaks_batch
from .streaming import StreamingCrystalDataset, held_out_dataset, structure_fingerprint
from .structures import Crystal, as_crystal, element_symbol, lattice_matrix

__all__ = [
    "CU_KA1",
    "CU_KA2",
    "FEATURES",
    "crystal_from_row",
    "default_dataset",
    "generate_dataset",
    "load_dataset_dict",
    "rows_from_crystals",
    "space_group_counts",
    "space_group_prior",
    "split_dataset",
    "Crystal",
    "MeasurementConditions",
    "PXRDCollator",
    "PatternRenderer",
    "SampledConditions",
    "XRDFeatureExtractor",
    "pad_peaks",
    "render_padded",
    "render_patterns",
    "PeakList",
    "Pattern",
    "ReferenceArrays",
    "SimXRDRecord",
    "TwoThetaGrid",
    "as_crystal",
    "element_symbol",
    "iter_simxrd",
    "lattice_matrix",
    "INSTRUMENT_SUFFIXES",
    "read_brml",
    "read_bruker_raw",
    "read_cif",
    "read_instrument_file",
    "read_pattern",
    "read_ras",
    "read_reference_npy",
    "read_simxrd",
    "read_xrdml",
    "simulate_peaks",
    "simulate_peaks_batch",
    "GeneratedCrystal",
    "RandomCrystalGenerator",
    "StreamingCrystalDataset",
    "held_out_dataset",
    "structure_fingerprint",
]
