"""The embedded default dataset: a compact structure archive shipped with the package
(:class:`StructureArchive`), its reader and writer, and :func:`default_dataset`, which simulates
its peaks on first use and caches the result."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources
from multiprocessing import get_context
from pathlib import Path

import gemmi
import numpy as np
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from .. import __version__
from ..utils import atomic_open
from .dataset import (
    _METADATA_FILE,
    FEATURES,
    PEAK_TWO_THETA_RANGE,
    PEAK_WAVELENGTH,
    load_dataset_dict,
    save_dataset_dict,
    split_dataset,
    structure_row,
)
from .structures import Crystal

logger = logging.getLogger(__name__)

__all__ = [
    "StructureArchive",
    "default_dataset",
    "read_structure_archive",
    "write_structure_archive",
]

_EMBEDDED_FILE = "default_structures.npz"


@dataclass(frozen=True)
class StructureArchive:
    """Structures stored compactly (the embedded default set's format).

    Attributes:
        structure_ids: ``[N]`` strings.
        lattice_parameters: float32 ``[N, 6]``.
        atomic_numbers: uint8 ``[S]`` for all sites of all structures, concatenated.
        frac_coords: float32 ``[S, 3]``.
        occupancies: float32 ``[S]``.
        site_offsets: int64 ``[N + 1]``: structure ``i`` owns sites ``offsets[i]:offsets[i+1]``.
        requested_space_groups: int16 ``[N]`` numbers 1..230, 0 when unknown.
        space_groups: int16 ``[N]`` detected numbers 1..230.
    """

    structure_ids: np.ndarray
    lattice_parameters: np.ndarray
    atomic_numbers: np.ndarray
    frac_coords: np.ndarray
    occupancies: np.ndarray
    site_offsets: np.ndarray
    requested_space_groups: np.ndarray
    space_groups: np.ndarray

    def __len__(self) -> int:
        return len(self.structure_ids)

    def crystal(self, index: int) -> Crystal:
        """Structure ``index`` as a :class:`Crystal` (``space_group`` = the detected group)."""
        sites = slice(self.site_offsets[index], self.site_offsets[index + 1])
        return Crystal.from_parameters(
            self.lattice_parameters[index].astype(np.float64),
            [gemmi.Element(int(z)).name for z in self.atomic_numbers[sites]],
            self.frac_coords[sites].astype(np.float64),
            occupancies=self.occupancies[sites].astype(np.float64),
            space_group=int(self.space_groups[index]),
        )


def write_structure_archive(
    path: str | os.PathLike,
    structure_ids: Sequence[str],
    crystals: Sequence[Crystal],
    requested_space_groups: Sequence[int | None],
    space_groups: Sequence[int],
) -> Path:
    """Store structures as a compressed ``.npz`` (float32; see :class:`StructureArchive`),
    atomically. Space groups are International numbers; None = unknown requested group."""
    path = Path(path)
    n = len(crystals)
    if not len(structure_ids) == len(requested_space_groups) == len(space_groups) == n:
        raise ValueError(
            "structure_ids, crystals and both space-group lists must have equal length"
        )
    atomic_numbers = np.array(
        [gemmi.Element(s).atomic_number for c in crystals for s in c.species], dtype=np.int64
    )
    if np.any(atomic_numbers <= 0) or np.any(atomic_numbers > 118):
        raise ValueError("unknown element symbol among the species")
    arrays = {
        "structure_ids": np.asarray(structure_ids, dtype=np.str_),
        "lattice_parameters": np.array(
            [c.lattice_parameters for c in crystals], dtype=np.float32
        ).reshape(n, 6),
        "atomic_numbers": atomic_numbers.astype(np.uint8),
        "frac_coords": np.concatenate([c.frac_coords for c in crystals]).astype(np.float32),
        "occupancies": np.concatenate([c.occupancies for c in crystals]).astype(np.float32),
        "site_offsets": np.concatenate([[0], np.cumsum([len(c.species) for c in crystals])]).astype(
            np.int64
        ),
        "requested_space_groups": np.array(
            [0 if g is None else g for g in requested_space_groups], dtype=np.int16
        ),
        "space_groups": np.asarray(space_groups, dtype=np.int16),
    }
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def read_structure_archive(path: str | os.PathLike | None = None) -> StructureArchive:
    """Read a structure archive; default: the embedded set shipped in ``physmoe/resources``."""
    if path is None:
        with resources.as_file(
            resources.files("physmoe.resources").joinpath(_EMBEDDED_FILE)
        ) as file:
            return read_structure_archive(file)
    path = Path(path)
    fields = list(StructureArchive.__dataclass_fields__)
    with np.load(path, allow_pickle=False) as data:
        missing = set(fields) - set(data.files)
        if missing:
            raise ValueError(f"{path}: not a structure archive (missing {sorted(missing)})")
        archive = StructureArchive(**{name: data[name] for name in fields})
    n, num_sites = len(archive.structure_ids), len(archive.atomic_numbers)
    if (
        archive.lattice_parameters.shape != (n, 6)
        or archive.site_offsets.shape != (n + 1,)
        or archive.site_offsets[-1] != num_sites
        or archive.frac_coords.shape != (num_sites, 3)
        or archive.occupancies.shape != (num_sites,)
        or archive.space_groups.shape != (n,)
        or archive.requested_space_groups.shape != (n,)
    ):
        raise ValueError(f"{path}: inconsistent array shapes in structure archive")
    return archive


def _embedded_rows(archive_path: str, indices: np.ndarray) -> list[dict]:
    archive = read_structure_archive(archive_path)
    return [
        structure_row(
            str(archive.structure_ids[i]),
            archive.crystal(int(i)),
            int(archive.space_groups[i]),
            requested_space_group=int(archive.requested_space_groups[i]) or None,
            source="embedded",
        )
        for i in indices
    ]


def _default_cache_dir() -> Path:
    return Path(os.environ.get("PHYSMOE_CACHE", Path.home() / ".cache" / "physmoe"))


def default_dataset(
    cache_dir: str | os.PathLike | None = None,
    num_proc: int = 1,
    archive: str | os.PathLike | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> DatasetDict:
    """The embedded default dataset: ships as structures, peaks simulated on first use.

    The structure set (``physmoe/resources/default_structures.npz``, 2.3 MB, built by
    ``scripts/build_default_structures.py --num-structures 12000 --min-per-group 15`` with pyxtal,
    seed 2026) holds 12,000 structures. Every one of the 230 space groups has at least 15 (so
    each appears in train, validation and test); the rest follow the ICSD prior, leaving a long
    tail: 23 groups with >= 100 structures (6,056 in all), 110 with 20-99 (4,346), 97 with 15-19
    (1,598). spglib's group equals the requested one for 95.3%. Building needs no optional
    dependency and no download (~15 s on one core). The result is cached in
    ``cache_dir/default-<hash>`` (default ``$PHYSMOE_CACHE`` or ``~/.cache/physmoe``); the hash
    covers the archive, physmoe's version and the split settings, so a changed archive or
    simulator rebuilds.

    Args:
        cache_dir: Where to keep the built dataset.
        num_proc: Worker processes for peak simulation (1 = in this process).
        archive: Build from this structure archive (:func:`write_structure_archive`) instead of
            the embedded one.
        validation_fraction, test_fraction, seed: Split settings (see :func:`split_indices`).
        progress: Show a progress bar (on a terminal; in a log file none is drawn).
    """
    source = (
        resources.files("physmoe.resources").joinpath(_EMBEDDED_FILE)
        if archive is None
        else Path(archive)
    )
    with resources.as_file(source) as archive_path:
        archive_sha256 = hashlib.sha256(Path(archive_path).read_bytes()).hexdigest()
        settings = [archive_sha256, __version__, validation_fraction, test_fraction, seed]
        cache_key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
        target = Path(cache_dir or _default_cache_dir()) / f"default-{cache_key}"
        if (target / _METADATA_FILE).is_file():
            return load_dataset_dict(target)
        num_structures = len(read_structure_archive(archive_path))
        chunks = np.array_split(np.arange(num_structures), max(1, num_structures // 50))
        rows: list[dict] = []
        with tqdm(
            total=num_structures, desc="simulating embedded set", disable=None if progress else True
        ) as bar:
            if num_proc <= 1:
                for chunk in chunks:
                    rows.extend(_embedded_rows(str(archive_path), chunk))
                    bar.update(len(chunk))
            else:
                with ProcessPoolExecutor(num_proc, mp_context=get_context("spawn")) as pool:
                    paths = [str(archive_path)] * len(chunks)
                    for chunk, chunk_rows in zip(
                        chunks, pool.map(_embedded_rows, paths, chunks), strict=True
                    ):
                        rows.extend(chunk_rows)
                        bar.update(len(chunk))
    dataset_dict = split_dataset(
        Dataset.from_list(rows, features=FEATURES), validation_fraction, test_fraction, seed
    )
    metadata = {
        "source": "embedded" if archive is None else str(archive),
        "wavelength": PEAK_WAVELENGTH,
        "two_theta_range": list(PEAK_TWO_THETA_RANGE),
        "split": {
            "validation_fraction": validation_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
        },
        "archive_sha256": archive_sha256,
    }
    try:
        save_dataset_dict(dataset_dict, target, metadata)
    except FileExistsError:  # another process built it meanwhile: same inputs, same content
        logger.info("default dataset was built concurrently at %s; using that copy", target)
    return load_dataset_dict(target)
