"""Bruker ``.brml`` files (the format is described in :mod:`physmoe.data.instruments`)."""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..readers import Pattern
from ._common import (
    _MAX_ZIP_MEMBER,
    _TWO_THETA_AXES,
    _XSI_TYPE,
    _anode,
    _Candidate,
    _child,
    _children,
    _descendants,
    _existing,
    _is_number,
    _local,
    _parse_xml,
    _pattern,
    _plausible,
    _warn_ignored,
)

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ BRML


def read_brml(path: str | os.PathLike, *, wavelength: float | None = None) -> Pattern:
    """Read the first scan of a Bruker ``.brml`` archive (see the module docstring).

    Intensities are the recorded counts divided by the per-point ``MeasuredTime`` (counts per
    second) when the rows have that column, else as stored.

    Raises:
        ValueError: not a zip, a damaged member, no ``RawData*.xml``, XML errors, no ``Datum``
            rows, rows of different lengths or with non-numbers, no 2θ axis, a row count that
            differs from the measured steps, non-finite values.
    """
    path = _existing(path)
    try:
        with zipfile.ZipFile(path) as archive:  # read-only; members are read into memory
            members = _brml_raw_members(path, archive)
            _warn_ignored(path, len(members), "RawData files (scans)")
            root = _parse_xml(path, _zip_member(path, archive, members[0]), members[0])
            two_theta, intensity = _brml_scan(path, root, members[0])
            candidates = _brml_wavelengths(root)
            if not any(_plausible(value) for value, _ in candidates):
                candidates += _brml_container_wavelengths(path, archive, members[0])
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"{path} is not a readable zip archive (a .brml file is one): {error}"
        ) from None
    return _pattern(path, two_theta, intensity, candidates, wavelength)


def _zip_member(path: Path, archive: zipfile.ZipFile, name: str) -> bytes:
    """The bytes of one member, or a ValueError naming the archive and member."""
    info = archive.getinfo(name)
    if info.file_size > _MAX_ZIP_MEMBER:
        raise ValueError(f"{path}: member {name} unpacks to {info.file_size} bytes: too large")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as error:
        raise ValueError(f"{path}: cannot read member {name} (damaged archive?): {error}") from None


def _brml_raw_members(path: Path, archive: zipfile.ZipFile) -> list[str]:
    """The raw-data members: as ``Experiment*/DataContainer.xml`` lists them, else every
    ``RawData<n>.xml`` by folder and number."""
    names = archive.namelist()
    pattern = re.compile(r"(?:^|[/\\])RawData(\d+)\.xml$", re.IGNORECASE)
    found = sorted(
        (n for n in names if pattern.search(n)),
        key=lambda n: (n.rsplit("/", 1)[0], int(pattern.search(n).group(1))),
    )
    container = next((n for n in names if n.lower().endswith("datacontainer.xml")), None)
    if container is not None:
        try:
            listed = ET.fromstring(_zip_member(path, archive, container))
            referenced = [(s.text or "").strip() for s in _descendants(listed, "string")]
            in_order = [name for name in referenced if name in names]
            if in_order:
                return in_order + [name for name in found if name not in in_order]
        except ET.ParseError:
            logger.info(
                "%s: %s is not well-formed XML; finding RawData files by name", path, container
            )
    if not found:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") or "none"
        raise ValueError(
            f"{path}: no Experiment*/RawData*.xml in the archive (members: "
            f"{shown}): not a Bruker BRML file"
        )
    return found


def _brml_scan(path: Path, root: ET.Element, member: str) -> tuple[np.ndarray, np.ndarray]:
    """2θ and intensity of the first data route with ``<Datum>`` rows."""
    where = f"{path} ({member})"
    routes = [route for route in _descendants(root, "DataRoute") if _children(route, "Datum")]
    if not routes:
        raise ValueError(f"{where}: no <Datum> rows: no measured data")
    route = routes[0]
    rows = _brml_rows(where, [datum.text or "" for datum in _children(route, "Datum")])
    _brml_check_steps(where, route, len(rows))
    two_theta_column, counts_column, time_column = _brml_columns(route)
    if two_theta_column is None:
        two_theta = _brml_scan_axis(where, route, len(rows))
    elif two_theta_column >= rows.shape[1]:
        raise ValueError(
            f"{where}: DataViews put 2theta in column {two_theta_column + 1} but "
            f"the rows have {rows.shape[1]} columns"
        )
    else:
        two_theta = rows[:, two_theta_column]
    if counts_column is None or counts_column >= rows.shape[1]:
        logger.info("%s: no recorded counts column in DataViews: using the last column", where)
        counts_column = rows.shape[1] - 1
    intensity = rows[:, counts_column]
    if time_column is not None and time_column < rows.shape[1]:
        times = rows[:, time_column]
        if np.all(times > 0):
            intensity = intensity / times
    return two_theta, intensity


def _brml_rows(where: str, texts: list[str]) -> np.ndarray:
    """The comma-separated ``<Datum>`` rows as a float64 ``[rows, columns]`` array."""
    rows = [text.split(",") for text in texts]
    width = len(rows[0])
    uneven = next((i for i, row in enumerate(rows) if len(row) != width), None)
    if uneven is not None:
        raise ValueError(
            f"{where}: <Datum> row {uneven + 1} has {len(rows[uneven])} values, row 1 has {width}"
        )
    try:
        return np.asarray(rows, dtype=np.float64)
    except ValueError:
        bad = next((i for i, row in enumerate(rows) if not all(map(_is_number, row))), 0)
        raise ValueError(
            f"{where}: <Datum> row {bad + 1} ({texts[bad].strip()[:60]!r}) is not numbers"
        ) from None


def _brml_check_steps(where: str, route: ET.Element, rows: int) -> None:
    """Refuse a row count that differs from the measured steps the sub-scans announce."""
    steps = [item.get("MeasuredSteps") for item in _descendants(route, "SubScanInfo")]
    if steps and all(step is not None and step.isdigit() for step in steps):
        expected = sum(int(step) for step in steps)
        if expected != rows:
            raise ValueError(
                f"{where}: {rows} <Datum> rows but the scan announces {expected} measured steps"
            )


def _brml_columns(route: ET.Element) -> tuple[int | None, int | None, int | None]:
    """Columns (0-based) of 2θ, recorded counts and measuring time that ``DataViews`` name."""
    two_theta = counts = time = None
    for view in _descendants(route, "RawDataView"):
        start = int(view.get("Start", "0")) if view.get("Start", "0").isdigit() else 0
        kind = view.get(_XSI_TYPE, "").rsplit(":", 1)[-1]
        if view.get("LogicName") == "MeasuredTime":
            time = start
        elif kind == "VaryingRawDataView" and two_theta is None:
            fields = list(_descendants(view, "FieldDefinitions"))
            for offset, field in enumerate(fields):
                names = (field.get("FieldName", ""), field.get("AxisId", ""))
                if any(name.lower() in _TWO_THETA_AXES for name in names):
                    two_theta = start + offset
                    break
        elif kind == "RecordedRawDataView" and counts is None:
            counts = start
    return two_theta, counts, time


def _brml_scan_axis(where: str, route: ET.Element, rows: int) -> np.ndarray:
    """2θ as ``Start + i * Increment`` of the route's ``TwoTheta`` ``ScanAxisInfo``."""
    axes = list(_descendants(route, "ScanAxisInfo"))
    axis = next((a for a in axes if a.get("AxisId", "").lower() in _TWO_THETA_AXES), None)
    if axis is None:
        named = ", ".join(a.get("AxisId", "?") for a in axes) or "none"
        raise ValueError(
            f"{where}: no 2theta axis: no TwoTheta column in DataViews and no "
            f"TwoTheta ScanAxisInfo (scan axes: {named})"
        )
    values = {}
    for name in ("Start", "Increment"):
        element = _child(axis, name)
        text = (element.text or "").strip() if element is not None else ""
        if not _is_number(text):
            raise ValueError(f"{where}: the TwoTheta ScanAxisInfo has no numeric <{name}>")
        values[name] = float(text)
    return values["Start"] + values["Increment"] * np.arange(rows)


def _brml_wavelengths(root: ET.Element) -> list[_Candidate]:
    """Wavelength candidates of a BRML XML document, best first."""
    candidates: list[_Candidate] = []
    for element in _descendants(root, "WaveLengthAlpha1", "Alpha1"):
        text = (element.get("Value") or element.text or "").strip()
        if _is_number(text):
            scale = 10.0 if element.get("Unit", "").lower() == "nm" else 1.0
            candidates.append((float(text) * scale, _local(element.tag)))
            break
    for element in _descendants(root, "TubeMaterial"):
        candidates.append(_anode(element.get("Value") or element.text, "TubeMaterial"))
        break
    return candidates


def _brml_container_wavelengths(
    path: Path, archive: zipfile.ZipFile, member: str
) -> list[_Candidate]:
    """Wavelength candidates of the ``MeasurementContainer.xml`` beside the raw data."""
    folder = member.rsplit("/", 1)[0] + "/" if "/" in member else ""
    name = folder + "MeasurementContainer.xml"
    if name not in archive.namelist():
        return []
    try:
        root = ET.fromstring(_zip_member(path, archive, name))
    except ET.ParseError:
        logger.info("%s: %s is not well-formed XML: no wavelength from it", path, name)
        return []
    return [(value, f"{name}: {where}") for value, where in _brml_wavelengths(root)]
