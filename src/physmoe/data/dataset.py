"""The physmoe structure dataset: schema, rows, structure-disjoint splits, storage (the embedded
set is :mod:`.embedded`, space-group detection :mod:`.symmetry`).

A dataset is a ``datasets.DatasetDict`` with splits ``train`` / ``validation`` / ``test`` and one
row per crystal structure (:data:`FEATURES`). Rows hold the structure itself (cell, sites) and its
stick pattern (peak positions and intensities); models render profiles from the peaks on the fly,
so one structure can yield many augmented patterns and every pattern of a structure stays in that
structure's split.

Columns:

- ``structure_id`` (string): unique within a dataset; ``"{seed}-{index}"`` for generated runs.
- ``space_group`` (``ClassLabel``, 230 names = ``ID2LABEL`` in label order): the group spglib
  detects (label = number - 1). This is the training label.
- ``requested_space_group`` (``ClassLabel``, 230): the group pyxtal was asked for, or the group a
  structure was declared with (``Crystal.space_group``, e.g. from a CIF); -1 when unknown.
- ``crystal_system`` (``ClassLabel``, 7 names = ``CRYSTAL_SYSTEMS``) of ``space_group``.
- ``formula`` (string): cell composition, ``Crystal.formula``.
- ``lattice_parameters`` (6 float32): a, b, c (Angstrom), alpha, beta, gamma (degrees).
- ``species`` (list of element symbols), ``frac_coords`` (list of 3-float32 lists, one per site),
  ``occupancies`` (list of float32): all sites of the stored cell, no symmetry expansion needed.
- ``peak_two_theta`` / ``peak_intensity`` (float32 lists): stick pattern at Cu K-alpha1
  (1.54056 A) over 2θ 2-100 deg (max intensity 100). The range has a margin around the default
  5-90 deg model grid so that zero-shift and cell-strain augmentation can move peaks in and out.
  Wavelength and range are recorded in ``info.description`` and in ``physmoe_dataset.json``.
- ``source`` (string): ``"pyxtal"``, ``"embedded"``, ``"cif"``, ...

Splits (:func:`split_indices`) are by structure and stratified by ``space_group``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    List,
    Value,
    load_from_disk,
)
from tqdm.auto import tqdm

from .. import __version__
from ..crystallography import CRYSTAL_SYSTEMS, ID2LABEL, NUM_SPACE_GROUPS, crystal_system_index
from .grid import CU_KA1
from .simulate import simulate_peaks
from .structures import Crystal, as_crystal
from .symmetry import DEFAULT_SYMPREC, detect_space_group

logger = logging.getLogger(__name__)

__all__ = [
    "FEATURES",
    "PEAK_TWO_THETA_RANGE",
    "PEAK_WAVELENGTH",
    "SPLITS",
    "crystal_from_row",
    "dataset_metadata",
    "load_dataset_dict",
    "rows_from_crystals",
    "save_dataset_dict",
    "split_dataset",
    "split_indices",
    "structure_row",
]

#: Wavelength (Angstrom) and 2θ range (degrees) of the stored stick patterns.
PEAK_WAVELENGTH = CU_KA1
PEAK_TWO_THETA_RANGE = (2.0, 100.0)
SPLITS = ("train", "validation", "test")

_SPACE_GROUP_NAMES = [ID2LABEL[label] for label in range(NUM_SPACE_GROUPS)]
FEATURES = Features(
    {
        "structure_id": Value("string"),
        "space_group": ClassLabel(names=_SPACE_GROUP_NAMES),
        "requested_space_group": ClassLabel(names=_SPACE_GROUP_NAMES),
        "crystal_system": ClassLabel(names=list(CRYSTAL_SYSTEMS)),
        "formula": Value("string"),
        "lattice_parameters": List(Value("float32"), length=6),
        "species": List(Value("string")),
        "frac_coords": List(List(Value("float32"), length=3)),
        "occupancies": List(Value("float32")),
        "peak_two_theta": List(Value("float32")),
        "peak_intensity": List(Value("float32")),
        "source": Value("string"),
    }
)

_METADATA_FILE = "physmoe_dataset.json"
_DATASET_FORMAT = "physmoe-structures"
_DATASET_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- rows


def structure_row(
    structure_id: str,
    crystal: Crystal,
    space_group: int,
    *,
    requested_space_group: int | None = None,
    source: str,
    wavelength: float = PEAK_WAVELENGTH,
    two_theta_range: tuple[float, float] = PEAK_TWO_THETA_RANGE,
) -> dict:
    """One dataset row (see :data:`FEATURES`): simulates the crystal's stick pattern.

    Args:
        structure_id: Unique id of the structure.
        crystal: The structure.
        space_group: Label group as an International number 1..230 (normally spglib's).
        requested_space_group: Number the structure was generated in or declared with, or None.
        source: Where the structure comes from (``"pyxtal"``, ``"cif"``, ...).
        wavelength: X-ray wavelength in Angstrom for the peaks.
        two_theta_range: 2θ window in degrees for the peaks.
    """
    if not 1 <= int(space_group) <= NUM_SPACE_GROUPS:
        raise ValueError(f"{structure_id}: space_group must be 1..230, got {space_group}")
    if (
        requested_space_group is not None
        and not 1 <= int(requested_space_group) <= NUM_SPACE_GROUPS
    ):
        raise ValueError(f"{structure_id}: requested_space_group must be 1..230 or None")
    peaks = simulate_peaks(crystal, wavelength=wavelength, two_theta_range=tuple(two_theta_range))
    return {
        "structure_id": str(structure_id),
        "space_group": int(space_group) - 1,
        "requested_space_group": -1
        if requested_space_group is None
        else int(requested_space_group) - 1,
        "crystal_system": crystal_system_index(int(space_group)),
        "formula": crystal.formula,
        "lattice_parameters": np.asarray(crystal.lattice_parameters, dtype=np.float32),
        "species": list(crystal.species),
        "frac_coords": np.asarray(crystal.frac_coords, dtype=np.float32),
        "occupancies": np.asarray(crystal.occupancies, dtype=np.float32),
        "peak_two_theta": np.asarray(peaks.two_theta, dtype=np.float32),
        "peak_intensity": np.asarray(peaks.intensity, dtype=np.float32),
        "source": str(source),
    }


def rows_from_crystals(
    crystals: Iterable,
    *,
    structure_ids: Sequence[str] | None = None,
    source: str = "cif",
    symprec: float = DEFAULT_SYMPREC,
    wavelength: float = PEAK_WAVELENGTH,
    two_theta_range: tuple[float, float] = PEAK_TWO_THETA_RANGE,
    progress: bool = True,
) -> list[dict]:
    """Dataset rows for user structures, labelled by the space group spglib detects.

    The cell is kept as given (not standardised). A group the input declares
    (``Crystal.space_group``, e.g. from a CIF) becomes ``requested_space_group``, so a wrong
    declaration shows up as a disagreement instead of a wrong label.

    Args:
        crystals: :class:`Crystal` objects or anything ``structures.as_crystal`` accepts
            (pymatgen ``Structure``, ASE ``Atoms``, a CIF path).
        structure_ids: One unique id per crystal (default ``"{source}-{i}"``).
        source: Value of the ``source`` column.
        symprec: spglib tolerance in Angstrom.
        wavelength, two_theta_range: Peak simulation settings (default Cu K-alpha1, 2-100 deg).
        progress: Show a progress bar (on a terminal; in a log file none is drawn).

    Returns:
        One dict per structure with the columns of :data:`FEATURES`.
    """
    crystals = list(crystals)
    if structure_ids is None:
        structure_ids = [f"{source}-{i}" for i in range(len(crystals))]
    structure_ids = [str(i) for i in structure_ids]
    if len(structure_ids) != len(crystals):
        raise ValueError(f"{len(structure_ids)} structure_ids for {len(crystals)} crystals")
    if len(set(structure_ids)) != len(structure_ids):
        raise ValueError("structure_ids must be unique")
    rows = []
    for structure_id, item in tqdm(
        zip(structure_ids, crystals, strict=True),
        total=len(crystals),
        disable=None if progress else True,
        desc="rows",
    ):
        crystal = item if isinstance(item, Crystal) else as_crystal(item)
        rows.append(
            structure_row(
                structure_id,
                crystal,
                detect_space_group(crystal, symprec),
                requested_space_group=crystal.space_group,
                source=source,
                wavelength=wavelength,
                two_theta_range=two_theta_range,
            )
        )
    return rows


def crystal_from_row(row: dict) -> Crystal:
    """The :class:`Crystal` a row stores (cell rebuilt from its lattice parameters in the
    standard orientation; ``space_group`` = the row's label group)."""
    missing = {"lattice_parameters", "species", "frac_coords", "occupancies", "space_group"} - set(
        row
    )
    if missing:
        raise ValueError(f"row lacks columns {sorted(missing)}")
    return Crystal.from_parameters(
        [float(x) for x in row["lattice_parameters"]],
        row["species"],
        np.asarray(row["frac_coords"], dtype=np.float64),
        occupancies=np.asarray(row["occupancies"], dtype=np.float64),
        space_group=int(row["space_group"]) + 1,
    )


# --------------------------------------------------------------------------- splits


def split_indices(
    labels: Sequence[int] | np.ndarray,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Structure-level split stratified by label.

    Within each label the rows are shuffled (seeded). A label with ``n >= 3`` rows sends
    ``max(1, round(n * test_fraction))`` of them to test and ``max(1, round(n *
    validation_fraction))`` to validation (capped so that at least one stays in train), the rest
    to train. Labels with 1 or 2 rows go entirely to train: a class seen only at evaluation
    cannot be learned, and one row cannot be split.

    Args:
        labels: One label per row (any integers, e.g. space-group labels 0..229), ``[N]``.
        validation_fraction, test_fraction: Fractions in (0, 1) with sum < 1.
        seed: Shuffle seed.

    Returns:
        ``{"train", "validation", "test"}`` -> sorted int64 row indices; together a partition of
        ``range(N)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    for name, value in (
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0 < value < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {value}")
    if validation_fraction + test_fraction >= 1:
        raise ValueError("validation_fraction + test_fraction must be < 1")
    _, dense = np.unique(labels, return_inverse=True)
    keys = np.random.default_rng(seed).random(labels.size)
    order = np.lexsort((keys, dense))  # grouped by label, shuffled inside each label
    counts = np.bincount(dense)
    size = counts[dense[order]]
    rank = np.arange(labels.size) - (np.cumsum(counts) - counts)[dense[order]]

    def quota(fraction: float) -> np.ndarray:
        return np.maximum(1, np.floor(size * fraction + 0.5).astype(np.int64))

    splittable = size >= 3
    num_test = np.where(splittable, np.minimum(quota(test_fraction), size - 2), 0)
    num_validation = np.where(
        splittable, np.minimum(quota(validation_fraction), size - 1 - num_test), 0
    )
    assignment = np.where(rank < num_test, 2, np.where(rank < num_test + num_validation, 1, 0))
    return {name: np.sort(order[assignment == k]) for k, name in enumerate(SPLITS)}


def split_dataset(
    dataset: Dataset, validation_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> DatasetDict:
    """Split a dataset of structures into train / validation / test (see :func:`split_indices`),
    stratified by ``space_group``; refuses duplicate ``structure_id`` values."""
    structure_ids = dataset["structure_id"]
    if len(set(structure_ids)) != len(structure_ids):
        raise ValueError("structure_id values repeat: a structure-disjoint split needs unique ids")
    indices = split_indices(
        np.asarray(dataset["space_group"], dtype=np.int64), validation_fraction, test_fraction, seed
    )
    return DatasetDict({name: dataset.select(indices[name]) for name in SPLITS})


def _description(metadata: dict) -> str:
    low, high = metadata["two_theta_range"]
    return (
        f"physmoe structure dataset ({metadata.get('source', 'mixed')}): one row per structure, "
        f"stick patterns at wavelength {metadata['wavelength']} A over 2theta {low}-{high} deg, "
        "labels = space group detected by spglib."
    )


def save_dataset_dict(dataset_dict: DatasetDict, path: str | os.PathLike, metadata: dict) -> Path:
    """Write a DatasetDict plus ``physmoe_dataset.json`` atomically (temp dir, then rename).

    ``metadata`` must contain ``wavelength`` and ``two_theta_range``; the split sizes, format
    name and version are added. Refuses an existing ``path``.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; remove it or choose another path")
    for key in ("wavelength", "two_theta_range"):
        if key not in metadata:
            raise ValueError(f"metadata lacks {key!r}")
    metadata = {
        "format": _DATASET_FORMAT,
        "format_version": _DATASET_FORMAT_VERSION,
        "physmoe_version": __version__,
        **metadata,
        "split_sizes": {name: len(split) for name, split in dataset_dict.items()},
    }
    description = _description(metadata)
    for split in dataset_dict.values():
        split.info.description = description
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    temp_dir.mkdir()
    try:
        # An empty split needs one (empty) shard file, or datasets cannot load it back.
        num_shards = {name: 1 for name, split in dataset_dict.items() if len(split) == 0}
        dataset_dict.save_to_disk(str(temp_dir), num_shards=num_shards or None)
        (temp_dir / _METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        os.replace(temp_dir, path)
    except BaseException as error:
        shutil.rmtree(temp_dir, ignore_errors=True)
        if isinstance(error, OSError) and path.exists():  # another writer finished first
            raise FileExistsError(
                f"{path} was created while this dataset was being written"
            ) from error
        raise
    return path


def _dataset_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    # A generation run directory holds the dataset in ``dataset/``.
    if not (path / _METADATA_FILE).is_file() and (path / "dataset" / _METADATA_FILE).is_file():
        path = path / "dataset"
    if not (path / _METADATA_FILE).is_file():
        raise ValueError(
            f"{path} is not a physmoe dataset: no {_METADATA_FILE} (build one with "
            "physmoe.data.generate.generate_dataset or physmoe.data.dataset.save_dataset_dict)"
        )
    return path


def dataset_metadata(path: str | os.PathLike) -> dict:
    """The ``physmoe_dataset.json`` of a saved dataset (or of a generation run directory)."""
    return json.loads((_dataset_dir(path) / _METADATA_FILE).read_text())


def load_dataset_dict(path: str | os.PathLike) -> DatasetDict:
    """Load a physmoe dataset saved by :func:`save_dataset_dict` (memory-mapped).

    ``path`` is the dataset directory or a generation run directory containing ``dataset/``.
    Raises ``ValueError`` for anything else, or when the columns are not :data:`FEATURES`.
    """
    path = _dataset_dir(path)
    metadata = dataset_metadata(path)
    if (
        metadata.get("format") != _DATASET_FORMAT
        or metadata.get("format_version") != _DATASET_FORMAT_VERSION
    ):
        raise ValueError(
            f"{path}: unsupported dataset format {metadata.get('format')!r} "
            f"version {metadata.get('format_version')!r}"
        )
    dataset_dict = load_from_disk(str(path))
    if not isinstance(dataset_dict, DatasetDict) or set(dataset_dict) != set(SPLITS):
        raise ValueError(f"{path}: expected a DatasetDict with splits {SPLITS}")
    for name, split in dataset_dict.items():
        if split.features != FEATURES:
            raise ValueError(
                f"{path}: split {name!r} has columns {list(split.features)}, not physmoe's schema"
            )
    return dataset_dict
