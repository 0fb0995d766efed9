"""Readers of published simulated datasets: SimXRD-4M's ASE SQLite databases
(:func:`iter_simxrd`, :func:`read_simxrd`) and the public Phys-MoE implementation's pickled
``.npy`` dicts (:func:`read_reference_npy`); see :mod:`physmoe.data.readers` for the formats."""

from __future__ import annotations

import ast
import contextlib
import logging
import numbers
import os
import pickle
import re
import sqlite3
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..crystallography import CRYSTAL_SYSTEMS, NUM_SPACE_GROUPS, crystal_system_index
from .grid import TwoThetaGrid, bragg_two_theta
from .readers import Pattern, _check_wavelength

logger = logging.getLogger(__name__)

__all__ = [
    "SIMXRD_WAVELENGTH",
    "ReferenceArrays",
    "SimXRDRecord",
    "iter_simxrd",
    "read_reference_npy",
    "read_simxrd",
]

#: Wavelength SimXRD-4M was simulated with (Cu K-alpha, weighted mean of the doublet), Angstrom.
SIMXRD_WAVELENGTH = 1.54184

_COMMENT_PREFIXES = ("#", "!", ";", "%", "//", "*")
_NUMPY_SCALAR_REPR = re.compile(r"np\.\w+\(([^()]*)\)")


# ---------------------------------------------------------------------------------- SimXRD-4M


@dataclass
class SimXRDRecord:
    """One row of a SimXRD-4M database.

    Attributes:
        row_id: The database row id.
        space_group: International number, 1..230.
        crystal_system: Index into :data:`physmoe.crystallography.CRYSTAL_SYSTEMS` (0 = triclinic
            ... 6 = cubic; SimXRD's reversed numbering already converted).
        lattice_letter: Bravais centring letter from ``tager`` (``"P"``, ``"F"``, ...), or None.
        two_theta: 2θ in degrees at ``wavelength``, float64 ``[L]``, ascending.
        intensity: Intensities (0-100), float64 ``[L]``, aligned with ``two_theta``.
        d_spacing: The stored d-spacings in Angstrom, float64 ``[L]``, aligned with ``two_theta``.
        wavelength: Wavelength of ``two_theta`` in Angstrom.
        formula: Chemical formula (``chem_form``).
        simulation_param: ``simulation_param`` parsed as a Python literal when possible, else the
            raw string (SimXRD's own documentation gives its meaning).
    """

    row_id: int
    space_group: int
    crystal_system: int
    lattice_letter: str | None
    two_theta: np.ndarray
    intensity: np.ndarray
    d_spacing: np.ndarray
    wavelength: float
    formula: str
    simulation_param: Any = None

    @property
    def label(self) -> int:
        """0-based class label (``space_group - 1``)."""
        return self.space_group - 1

    def to_pattern(self) -> Pattern:
        """As a :class:`Pattern` (for the feature extractor and plotting)."""
        return Pattern(
            self.two_theta, self.intensity, None, self.wavelength, f"SimXRD row {self.row_id}"
        )


def _row_value(row: Any, key: str) -> Any:
    value = row.get(key)
    if value is None and getattr(row, "data", None):
        value = row.data.get(key)
    return value


def _parse_number_list(text: Any, key: str, where: str) -> np.ndarray:
    """A string such as ``"[1.0, 2.5, ...]"`` or ``"[1. 2.5 ...]"`` (or an array) -> float64
    ``[n]``."""
    if text is None:
        raise ValueError(f"{where}: missing key {key!r}")
    if not isinstance(text, str):
        values = np.asarray(text, dtype=np.float64).reshape(-1)
    else:
        # str(list(array)) under numpy >= 2 writes "np.float64(1.5)": keep the number.
        text = _NUMPY_SCALAR_REPR.sub(r"\1", text)
        tokens = text.strip().strip("[]()").replace(",", " ").split()
        if "..." in tokens:
            raise ValueError(
                f"{where}: {key!r} is a truncated numpy print-out ('...'), not the full list"
            )
        try:
            values = np.asarray(tokens, dtype=np.float64)
        except ValueError as error:
            raise ValueError(
                f"{where}: cannot parse {key!r} as a list of numbers ({error})"
            ) from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"{where}: {key!r} is empty or has non-finite values")
    return values


def _parse_tager(text: Any, where: str) -> tuple[int, int, str | None]:
    """``"[225, 1, 'F']"`` -> (space group, SimXRD crystal-system number, lattice letter)."""
    if isinstance(text, str):
        try:
            items = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            items = [item.strip().strip("'\"") for item in text.strip().strip("[]()").split(",")]
    else:
        items = text
    if not isinstance(items, list | tuple) or len(items) < 2:
        raise ValueError(
            f"{where}: 'tager' must be '[space_group, crystal_system, lattice_letter]', "
            f"got {text!r}"
        )
    try:
        space_group, system = int(items[0]), int(items[1])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'tager' {text!r} does not start with two integers") from None
    letter = str(items[2]).strip() if len(items) > 2 else None
    return space_group, system, letter


def _parse_literal(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text


def _check_ase_database(path: Path, uri: str) -> None:
    """Refuse, with a ValueError naming ``path``, a file that is not an ASE SQLite database
    (opened read-only: nothing is written)."""
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            tables = {name for (name,) in rows}
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{path} is not a SimXRD-4M (ASE SQLite) database: {error}") from None
    missing = sorted({"systems", "keys", "information"} - tables)
    if missing:
        found = f"its tables are {sorted(tables)}" if tables else "it is empty"
        raise ValueError(
            f"{path} is not a SimXRD-4M (ASE SQLite) database: no table "
            f"{', '.join(map(repr, missing))} ({found})"
        )


def iter_simxrd(
    path: str | os.PathLike,
    *,
    wavelength: float = SIMXRD_WAVELENGTH,
    selection: Any = None,
    limit: int | None = None,
) -> Iterator[SimXRDRecord]:
    """Iterate over the rows of a SimXRD-4M ASE database.

    Args:
        path: The ``.db`` file (opened read-only: it must exist and be an ASE database; nothing
            is written to it).
        wavelength: Wavelength in Angstrom at which 2θ is computed from the stored d-spacings,
            ``2θ = 2 asin(wavelength / (2 d))`` (default: SimXRD's own, Cu K-alpha 1.54184).
            Points whose d cannot diffract at this wavelength are dropped.
        selection: An ``ase.db`` selection (e.g. ``"id<100"``), passed to ``db.select``.
        limit: At most this many rows (None: all; 0: none).

    Yields:
        :class:`SimXRDRecord` per row.

    Raises:
        ValueError: naming the file when it is not an ASE SQLite database (another SQLite file,
            an empty file); naming the row for missing or malformed fields, or a crystal system
            that contradicts the space group.
    """
    try:
        from ase.db import connect
    except ImportError as error:
        raise ImportError(
            "reading SimXRD-4M databases needs ASE: pip install ase (or physmoe[sim])"
        ) from error

    path = Path(path)
    if not path.is_file():  # ase.db.connect would silently create an empty database
        raise FileNotFoundError(f"SimXRD database not found: {path}")
    _check_wavelength(wavelength)
    _check_limit(limit)
    if limit == 0:
        return
    database = _open_read_only(connect, path, selection)
    select_kwargs = {} if limit is None else {"limit": int(limit)}
    for row in database.select(selection, **select_kwargs):
        yield _simxrd_record(row, f"{path}: row {row.id}", wavelength)


def _check_limit(limit: Any) -> None:
    """Refuse a ``limit`` that is neither None nor an integer >= 0."""
    # ase reads a limit of 0 or below as "no limit": that would return every row.
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0
    ):
        raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}")


def _open_read_only(connect: Any, path: Path, selection: Any) -> Any:
    """The ASE database at ``path``, opened read-only, after checking ``selection`` and that the
    file is an ASE SQLite database (``connect`` is ``ase.db.connect``)."""
    from ase.db.core import parse_selection

    try:  # ase's own errors ("too many values to unpack") do not say what was wrong
        parse_selection(selection)
    except (ValueError, TypeError, KeyError, SyntaxError) as error:
        raise ValueError(f"cannot parse the selection {selection!r}: {error}") from None
    uri = f"{path.resolve().as_uri()}?mode=ro"
    _check_ase_database(path, uri)
    database = connect(str(path), type="db")
    # Read-only for ASE too: ase.db creates its tables in any file it opens that lacks them.
    database._connect = lambda: sqlite3.connect(uri, uri=True, timeout=20)
    return database


def _simxrd_record(row: Any, where: str, wavelength: float) -> SimXRDRecord:
    """One database row as a record, its 2θ computed at ``wavelength``; ``where`` names the row
    in errors."""
    d_spacing, intensity = _simxrd_peaks(row, where)
    space_group, system, letter = _simxrd_labels(row, where)
    two_theta = bragg_two_theta(d_spacing, wavelength)
    keep = np.isfinite(two_theta)
    two_theta = two_theta[keep]
    order = np.argsort(two_theta, kind="stable")
    formula = _row_value(row, "chem_form")
    return SimXRDRecord(
        row_id=int(row.id),
        space_group=space_group,
        crystal_system=system,
        lattice_letter=letter,
        two_theta=two_theta[order],
        intensity=intensity[keep][order],
        d_spacing=d_spacing[keep][order],
        wavelength=float(wavelength),
        formula=str(formula) if formula is not None else str(row.formula),
        simulation_param=_parse_literal(_row_value(row, "simulation_param")),
    )


def _simxrd_peaks(row: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The row's checked d-spacings and intensities."""
    d_spacing = _parse_number_list(_row_value(row, "latt_dis"), "latt_dis", where)
    intensity = _parse_number_list(_row_value(row, "intensity"), "intensity", where)
    if d_spacing.shape != intensity.shape:
        raise ValueError(
            f"{where}: latt_dis has {d_spacing.size} values but intensity has {intensity.size}"
        )
    if np.any(d_spacing <= 0):
        raise ValueError(f"{where}: latt_dis has non-positive d-spacings")
    return d_spacing, intensity


def _simxrd_labels(row: Any, where: str) -> tuple[int, int, str | None]:
    """The row's space group, crystal-system index (physmoe's numbering) and lattice letter,
    checked against each other."""
    space_group, simxrd_system, letter = _parse_tager(_row_value(row, "tager"), where)
    if not 1 <= space_group <= NUM_SPACE_GROUPS:
        raise ValueError(f"{where}: space group {space_group} is outside 1..230")
    if not 1 <= simxrd_system <= 7:
        raise ValueError(f"{where}: crystal system {simxrd_system} is outside SimXRD's 1..7")
    # SimXRD numbers crystal systems in reverse (1 = cubic ... 7 = triclinic).
    system = 7 - simxrd_system
    if system != crystal_system_index(space_group):
        raise ValueError(
            f"{where}: tager says crystal system {simxrd_system} "
            f"({CRYSTAL_SYSTEMS[system]}) but space "
            f"group {space_group} is {CRYSTAL_SYSTEMS[crystal_system_index(space_group)]}"
        )
    return space_group, system, letter


def read_simxrd(path: str | os.PathLike, **kwargs: Any) -> list[SimXRDRecord]:
    """All (selected) rows of a SimXRD-4M database as a list; see :func:`iter_simxrd`."""
    return list(iter_simxrd(path, **kwargs))


# ---------------------------------------------------------------------- reference .npy files


@dataclass
class ReferenceArrays:
    """Patterns and labels from the public reference implementation's files.

    Attributes:
        intensity: Patterns ``[N, 8500]`` on :attr:`grid` (intensities 0-100, binned sticks), in
            the stored floating dtype (not copied).
        labels: 0-based space-group labels, int64 ``[N]``.
        grid: The 2θ grid of the patterns (5-90 deg, step 0.01, Cu K-alpha1).
        source: The file read.
    """

    intensity: np.ndarray
    labels: np.ndarray
    grid: TwoThetaGrid
    source: str

    def __len__(self) -> int:
        return len(self.labels)


_INTENSITY_KEYS = ("intensitys", "features", "intensities")
_LABEL_KEYS = ("labels230",)


def read_reference_npy(
    path: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    grid: TwoThetaGrid | None = None,
) -> ReferenceArrays:
    """Read the reference implementation's ``.npy`` dict (or an ``.npz`` with the same keys).

    The reference saved ``{"intensitys" (or "features"): [N, 8500], "labels230": [N], ...}`` with
    ``np.save``, i.e. as a pickle. Unpickling can execute arbitrary code, so a pickled file is
    refused unless ``allow_pickle=True`` (only for files you trust). ``.npz`` archives of plain
    arrays need no pickle.

    Args:
        path: ``.npy`` or ``.npz`` file.
        allow_pickle: Allow unpickling a ``.npy`` dict.
        grid: The patterns' grid (default: the reference's, ``TwoThetaGrid()``); its number of
            points must match the patterns' width.

    Raises:
        ValueError: a pickled file without ``allow_pickle=True``; missing keys (lists those
            present); wrong shapes; labels outside 0..229 or not integers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    grid = TwoThetaGrid() if grid is None else grid
    _check_npy_magic(path)
    content = _reference_dict(_load_npy(path, allow_pickle), path)
    intensity_key = next((k for k in _INTENSITY_KEYS if k in content), None)
    label_key = next((k for k in _LABEL_KEYS if k in content), None)
    if intensity_key is None or label_key is None:
        raise ValueError(
            f"{path}: need keys {' or '.join(map(repr, _INTENSITY_KEYS))} and 'labels230'; "
            f"found {sorted(map(str, content))}"
        )
    intensity = _reference_intensity(content[intensity_key], intensity_key, grid, path)
    labels = _reference_labels(content[label_key], len(intensity), path)
    return ReferenceArrays(intensity=intensity, labels=labels, grid=grid, source=str(path))


def _check_npy_magic(path: Path) -> None:
    """Refuse a file that is neither a ``.npy`` nor a ``.npz`` (a zip) by its first bytes."""
    with path.open("rb") as file:
        head = file.read(6)
    # Check the magic first: np.load reads anything else as a pickle ("holds pickled objects").
    if not head.startswith((b"\x93NUMPY", b"PK")):
        what = "it is empty" if not head else f"it starts with {head!r}"
        raise ValueError(f"{path} is not a .npy or .npz file ({what})")


def _load_npy(path: Path, allow_pickle: bool) -> Any:
    """``np.load`` of ``path``, an ``.npz`` read into a dict; a pickle refused unless
    ``allow_pickle``, a damaged file reported as a ValueError naming it."""
    try:
        loaded = np.load(path, allow_pickle=allow_pickle)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:  # read inside the try: a damaged member fails here, not in np.load
                loaded = {key: loaded[key] for key in loaded.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"{path} holds pickled Python objects (the reference saved a dict with np.save). "
                "Unpickling can execute arbitrary code, so it is refused by default; pass "
                "allow_pickle=True only if you trust where the file came from."
            ) from None
        raise ValueError(f"{path}: cannot read the file ({error}); is it truncated?") from None
    except (EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        raise ValueError(
            f"{path}: cannot read the file ({type(error).__name__}: {error}); is it truncated?"
        ) from None
    return loaded


def _reference_dict(loaded: Any, path: Path) -> dict:
    """The dict a loaded file holds (``np.save`` of a dict stores it as a 0-d object array)."""
    content: Any = loaded
    if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ():
        content = loaded.item()
    if not isinstance(content, dict):
        raise ValueError(
            f"{path}: expected a dict with {_INTENSITY_KEYS[0]!r} (or {_INTENSITY_KEYS[1]!r}) and "
            f"'labels230', got {type(content).__name__}"
        )
    return content


def _reference_intensity(value: Any, key: str, grid: TwoThetaGrid, path: Path) -> np.ndarray:
    """The stored patterns as a floating ``[N, grid.num_points]`` array (floats not copied)."""
    intensity = np.asarray(value)
    if not np.issubdtype(intensity.dtype, np.floating):
        intensity = intensity.astype(np.float32)
    if intensity.ndim != 2 or intensity.shape[1] != grid.num_points:
        raise ValueError(
            f"{path}: {key!r} must be [N, {grid.num_points}] (the grid's points), "
            f"got shape {intensity.shape}"
        )
    return intensity


def _reference_labels(value: Any, num_patterns: int, path: Path) -> np.ndarray:
    """The stored labels as int64 ``[num_patterns]``, checked to be integers in 0..229."""
    raw_labels = np.asarray(value).reshape(-1)
    if raw_labels.shape[0] != num_patterns:
        raise ValueError(f"{path}: {raw_labels.shape[0]} labels for {num_patterns} patterns")
    if not np.issubdtype(raw_labels.dtype, np.number) or np.any(raw_labels != np.round(raw_labels)):
        raise ValueError(f"{path}: 'labels230' must be integers, got dtype {raw_labels.dtype}")
    labels = raw_labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_SPACE_GROUPS):
        raise ValueError(
            f"{path}: 'labels230' must be 0-based labels in 0..229, "
            f"got range {labels.min()}..{labels.max()}"
        )
    return labels
