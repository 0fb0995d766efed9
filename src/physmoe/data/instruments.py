"""Readers for the files diffractometers write: PANalytical ``.xrdml``, Bruker ``.brml`` and
``.raw``, Rigaku ``.ras``. :func:`physmoe.data.readers.read_pattern` dispatches here by suffix
(case-insensitive), so ``physmoe predict`` and ``SpaceGroupPredictor.predict_file`` take them too.

Every reader returns a :class:`~physmoe.data.readers.Pattern` of the file's first 2θ scan (a
warning names how many further scans or ranges were ignored), with 2θ ascending, and never writes
anything (files and archives are opened read-only; nothing is extracted to disk).

* ``.xrdml`` (XML, schema 1.0-2.x; elements matched on local names, whatever the namespace):
  2θ from ``<positions axis="2Theta">`` (``listPositions``, or ``startPosition``/``endPosition``
  spread evenly over the points); intensities in counts per second: ``<counts>`` times
  ``beamAttenuationFactors`` (or ``commonBeamAttenuationFactor``), or ``<intensities>`` (which
  the schema defines as already multiplied by the attenuation factors), divided by
  ``commonCountingTime`` or the per-point ``countingTimes``. Wavelength: ``usedWavelength/kAlpha1``
  (``kBeta`` when ``intended`` names K-Beta), else the Kα1 of ``xRayTube/anodeMaterial``.
* ``.brml`` (zip of XML): the first ``Experiment*/RawData*.xml`` (in the order of
  ``DataContainer.xml``). Its ``<Datum>`` rows are comma-separated columns that ``DataViews``
  name: 2θ is the ``TwoTheta`` field of the varying view, counts the first recorded view, and
  counts are divided by the ``MeasuredTime`` column (seconds) when there is one. Without
  ``DataViews``, 2θ is ``Start + i * Increment`` of the ``TwoTheta`` ``ScanAxisInfo`` and the
  counts the last column. Wavelength: ``WaveLengthAlpha1`` (or ``Alpha1``), else the Kα1 of
  ``TubeMaterial``; looked up in ``MeasurementContainer.xml`` when the raw data lack them.
* ``.raw`` (Bruker DIFFRAC binary; layout as described by xylib's ``bruker_raw.cpp``, from the
  DIFFRAC\\ :sup:`plus` XCH manual, Appendix A): ``RAW1.01`` ("version 3": 712-byte file header
  with Kα1 at byte 624 and the anode at 608; per range a header with the step count at +4, the
  start 2θ at +16, the step at +176, the used wavelength at +240, the record size at +252 and
  the size of a supplementary header at +256) and ``RAW4.00`` ("version 4": a 61-byte header,
  segments of ``(uint32 type, uint32 length)``, type 30 holding Kα1 at +80 and the anode at
  +116; a range is a 160-byte header, type 0 or 160, with the scan type at +32, start at +72,
  step at +80, step count at +88, used wavelength at +112, record size at +136 and the size of
  the drive records that follow at +140). Each data record starts with the float32 intensity
  (counts per step, as stored). Versions 1 and 2 (``RAW ``, ``RAW2``) are refused.
* ``.ras`` (Rigaku text, often Shift-JIS or Latin-1 in comments): the first ``*RAS_HEADER_START``
  ... ``*RAS_INT_END`` block; rows ``2θ intensity [attenuation]``, intensity times the
  attenuation factor (counts per step or cps, as ``MEAS_SCAN_UNIT_Y`` says). Wavelength:
  ``HW_XG_WAVE_LENGTH_ALPHA1`` (unit ``HW_XG_WAVE_LENGTH_UNIT``), else the Kα1 of
  ``HW_XG_TARGET_NAME``. Only the ASCII key/number parts are interpreted, so any encoding of the
  comments reads.

Wavelengths follow :func:`~physmoe.data.readers.read_pattern`: a ``wavelength=`` from the
caller always wins; else the file's value is used with a warning naming where it came from;
``None`` when the file states none. Bad files raise ``ValueError`` naming the file and the
problem (truncated binary, a zip without raw data, XML without a 2θ axis, mismatched point
counts, non-finite values), never a bare XML/zip/struct error.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .readers import Pattern
from .wavelength_header import _ANODE_NAMES, _PLAUSIBLE_WAVELENGTH, ANODE_KALPHA1

__all__ = [
    "INSTRUMENT_SUFFIXES",
    "read_brml",
    "read_bruker_raw",
    "read_instrument_file",
    "read_ras",
    "read_xrdml",
]

logger = logging.getLogger(__name__)

#: A wavelength the file states, in Angstrom (None: not stated), and where it was read.
_Candidate = tuple[float | None, str]

_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_TWO_THETA_AXES = ("2theta", "twotheta")
# Members larger than this are refused (a zip bomb, or no raw data file of a diffractometer).
_MAX_ZIP_MEMBER = 1 << 30


# ------------------------------------------------------------------------------ shared


def _plausible(value: float | None) -> bool:
    return value is not None and _PLAUSIBLE_WAVELENGTH[0] <= value <= _PLAUSIBLE_WAVELENGTH[1]


def _anode(name: str | None, where: str) -> _Candidate:
    """The K-alpha1 of an anode named in the file (``Cu``, ``CU``, ``Copper``; None for other
    names) and where it was read."""
    text = (name or "").strip().strip("\0 ")
    symbol = _ANODE_NAMES.get(text.lower(), text[:1].upper() + text[1:].lower())
    if symbol not in ANODE_KALPHA1:
        return None, where
    return ANODE_KALPHA1[symbol], f"K-alpha1 of the {symbol} anode named by {where}"


def _choose_wavelength(
    path: Path, candidates: Sequence[_Candidate], wavelength: float | None
) -> float | None:
    """The caller's ``wavelength`` if given; else the first plausible value the file states
    (logged as a warning, as :func:`read_pattern` does for text headers); else None."""
    stated = next(((v, where) for v, where in candidates if _plausible(v)), None)
    if wavelength is not None:
        if not (math.isfinite(wavelength) and wavelength > 0):
            raise ValueError(
                f"{path}: wavelength must be a positive number of Angstrom, got {wavelength}"
            )
        if stated is not None and abs(stated[0] - wavelength) > 1e-4:
            logger.info(
                "%s: using the given wavelength %.6g A, not the file's %.6g A (%s)",
                path,
                wavelength,
                stated[0],
                stated[1],
            )
        return float(wavelength)
    for value, where in candidates:
        if value is not None and not _plausible(value):
            logger.warning(
                "%s: ignoring %s = %g: not an X-ray wavelength in Angstrom", path, where, value
            )
    if stated is None:
        return None
    logger.warning(
        "%s: using the wavelength %.6g A stated in the file (%s); pass wavelength= to override",
        path,
        stated[0],
        stated[1],
    )
    return float(stated[0])


def _check_two_theta(
    path: Path, two_theta: np.ndarray, intensity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Refuse non-finite values, 2θ outside (0, 180), constant or not strictly monotonic;
    return the arrays in ascending 2θ."""
    if two_theta.shape != intensity.shape:
        raise ValueError(f"{path}: {two_theta.size} 2theta values but {intensity.size} intensities")
    if two_theta.size == 0:
        raise ValueError(f"{path}: the scan has no data points")
    for name, values in (("2theta", two_theta), ("intensity", intensity)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"{path}: non-finite {name} {values[bad[0]]} at point {bad[0] + 1} of {values.size}"
            )
    bad = np.flatnonzero((two_theta <= 0) | (two_theta >= 180))
    if bad.size:
        raise ValueError(
            f"{path}: 2theta {two_theta[bad[0]]:g} at point {bad[0] + 1} is outside "
            "(0, 180) degrees"
        )
    if two_theta.size > 1 and np.ptp(two_theta) == 0:
        raise ValueError(f"{path}: 2theta is constant ({two_theta[0]:g} deg): not a 2theta scan")
    if two_theta.size > 1 and np.all(np.diff(two_theta) < 0):
        two_theta, intensity = two_theta[::-1], intensity[::-1]
    bad = np.flatnonzero(np.diff(two_theta) <= 0)
    if bad.size:
        raise ValueError(
            f"{path}: 2theta is not strictly monotonic: {two_theta[bad[0] + 1]:g} "
            f"follows {two_theta[bad[0]]:g} (point {bad[0] + 2})"
        )
    return two_theta, intensity


def _pattern(
    path: Path,
    two_theta: np.ndarray,
    intensity: np.ndarray,
    candidates: Sequence[_Candidate],
    wavelength: float | None,
) -> Pattern:
    """Check the arrays and choose the wavelength: the :class:`Pattern` a reader returns."""
    two_theta, intensity = _check_two_theta(
        path, np.asarray(two_theta, dtype=np.float64), np.asarray(intensity, dtype=np.float64)
    )
    chosen = _choose_wavelength(path, candidates, wavelength)
    return Pattern(two_theta.copy(), intensity.copy(), None, chosen, str(path))


def _numbers(path: Path, text: str | None, what: str) -> np.ndarray:
    """Whitespace-separated numbers (an XML list) as float64, or a ValueError naming ``what``."""
    tokens = (text or "").split()
    try:
        return np.asarray(tokens, dtype=np.float64)
    except ValueError:
        bad = next((token for token in tokens if not _is_number(token)), " ".join(tokens))
        raise ValueError(f"{path}: {what} holds {bad[:40]!r}, not a number") from None


def _is_number(token: str | bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _warn_ignored(path: Path, count: int, kind: str) -> None:
    if count > 1:
        logger.warning(
            "%s: %d %s; reading the first, ignoring the other %d", path, count, kind, count - 1
        )


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pattern file not found: {path}")
    return path


# ------------------------------------------------------------------------------- XML


def _local(tag: str) -> str:
    """An element's tag without its namespace (``{ns}counts`` -> ``counts``)."""
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child(element: ET.Element | None, name: str) -> ET.Element | None:
    return None if element is None else next(iter(_children(element, name)), None)


def _descendants(element: ET.Element, *names: str) -> Iterator[ET.Element]:
    return (item for item in element.iter() if _local(item.tag) in names)


def _parse_xml(path: Path, data: bytes, member: str | None = None) -> ET.Element:
    """The root element, or a ValueError naming the file (and archive member)."""
    where = f"{path}" if member is None else f"{path} ({member})"
    try:
        return ET.fromstring(data)
    except ET.ParseError as error:
        raise ValueError(f"{where}: not well-formed XML: {error}") from None


# ----------------------------------------------------------------------------- XRDML


def read_xrdml(path: str | os.PathLike, *, wavelength: float | None = None) -> Pattern:
    """Read the first scan of a PANalytical ``.xrdml`` file (see the module docstring).

    Intensities are counts per second: counts times the beam attenuation factors, divided by
    the counting time (common or per point); ``<intensities>`` (already attenuation-corrected)
    divided by the counting time.

    Raises:
        ValueError: not XML or not XRDML, no scan, no 2θ axis or a fixed one, list lengths that
            differ from the number of intensities, non-numbers, non-finite values,
            non-positive counting times.
    """
    path = _existing(path)
    root = _parse_xml(path, path.read_bytes())
    if _local(root.tag) != "xrdMeasurements":
        raise ValueError(
            f"{path} is not an XRDML file: its root element is "
            f"<{_local(root.tag)}>, not <xrdMeasurements>"
        )
    scans = [
        (measurement, scan)
        for measurement in _children(root, "xrdMeasurement")
        for scan in _children(measurement, "scan")
    ]
    if not scans:
        raise ValueError(f"{path}: no <xrdMeasurement>/<scan> in the file")
    _warn_ignored(path, len(scans), "scans")
    measurement, scan = scans[0]
    points = _child(scan, "dataPoints")
    if points is None:
        raise ValueError(f"{path}: the first scan has no <dataPoints>")
    intensity = _xrdml_rates(path, points)
    two_theta = _xrdml_two_theta(path, points, intensity.size)
    return _pattern(path, two_theta, intensity, _xrdml_wavelengths(measurement), wavelength)


def _xrdml_rates(path: Path, points: ET.Element) -> np.ndarray:
    """Counts per second of a ``<dataPoints>``: counts x attenuation / counting time."""
    counts, intensities = _child(points, "counts"), _child(points, "intensities")
    if counts is None and intensities is None:
        raise ValueError(f"{path}: the first scan has neither <counts> nor <intensities>")
    element = counts if counts is not None else intensities
    values = _numbers(path, element.text, f"<{_local(element.tag)}>")
    if values.size == 0:
        raise ValueError(f"{path}: <{_local(element.tag)}> of the first scan is empty")
    if counts is not None:  # raw counts: the attenuation is not applied yet
        values = values * _xrdml_per_point(path, points, "BeamAttenuationFactor", values.size)
    unit = (element.get("unit") or "counts").lower().replace(" ", "")
    if unit in ("cps", "counts/s", "counts/second"):
        return values  # already a rate
    times = _xrdml_per_point(path, points, "CountingTime", values.size, default=None)
    if times is None:
        logger.info("%s: no counting time stated: intensities as stored", path)
        return values
    if np.any(times <= 0):
        raise ValueError(f"{path}: non-positive counting time {times[times <= 0][0]:g} s")
    return values / times


def _xrdml_per_point(
    path: Path, points: ET.Element, name: str, size: int, default: float | None = 1.0
) -> np.ndarray | None:
    """``common<Name>`` (one value) or ``<name>s`` (one per point) as ``[size]``."""
    common = _child(points, "common" + name)
    plural = _child(points, name[0].lower() + name[1:] + "s")
    if common is not None:
        value = _numbers(path, common.text, f"<{_local(common.tag)}>")
        if value.size != 1:
            raise ValueError(f"{path}: <{_local(common.tag)}> must hold one number")
        return np.full(size, value[0])
    if plural is not None:
        values = _numbers(path, plural.text, f"<{_local(plural.tag)}>")
        if values.size != size:
            raise ValueError(
                f"{path}: <{_local(plural.tag)}> has {values.size} values for {size} intensities"
            )
        return values
    return None if default is None else np.full(size, default)


def _xrdml_two_theta(path: Path, points: ET.Element, size: int) -> np.ndarray:
    """2θ of every point from ``<positions axis="2Theta">``."""
    axes = {item.get("axis"): item for item in _children(points, "positions")}
    positions = axes.get("2Theta")
    if positions is None:
        named = ", ".join(str(axis) for axis in axes) or "none"
        raise ValueError(
            f'{path}: the first scan has no 2theta axis (<positions axis="2Theta">);'
            f" its axes: {named}"
        )
    unit = positions.get("unit", "deg")
    if unit not in ("deg", "degree", "degrees"):
        raise ValueError(f"{path}: the 2Theta positions are in {unit!r}, not degrees")
    listed, start = _child(positions, "listPositions"), _child(positions, "startPosition")
    if listed is not None:
        values = _numbers(path, listed.text, "2Theta <listPositions>")
        if values.size != size:
            raise ValueError(
                f"{path}: 2Theta <listPositions> has {values.size} values for {size} intensities"
            )
        return values
    end = _child(positions, "endPosition")
    if start is not None and end is not None:
        first = _numbers(path, start.text, "2Theta <startPosition>")
        last = _numbers(path, end.text, "2Theta <endPosition>")
        if first.size != 1 or last.size != 1:
            raise ValueError(f"{path}: 2Theta start/endPosition must hold one number each")
        return np.linspace(first[0], last[0], size)
    fixed = _child(positions, "commonPosition")
    if fixed is not None:
        raise ValueError(
            f"{path}: 2Theta is fixed at {(fixed.text or '').strip()} deg "
            "(commonPosition): the first scan is not a 2theta scan"
        )
    raise ValueError(
        f"{path}: the 2Theta positions give neither listPositions nor startPosition/endPosition"
    )


def _xrdml_wavelengths(measurement: ET.Element) -> list[_Candidate]:
    """Wavelength candidates of an ``<xrdMeasurement>``, best first."""
    used = _child(measurement, "usedWavelength")
    candidates: list[_Candidate] = []
    if used is not None:
        order = ["kAlpha1", "kBeta"]
        if "beta" in (used.get("intended") or "").lower():
            order.reverse()
        for name in order:
            element = _child(used, name)
            if element is not None and _is_number((element.text or "").strip()):
                scale = 10.0 if element.get("unit", "").lower() == "nm" else 1.0
                candidates.append((float(element.text) * scale, f"usedWavelength/{name}"))
    tube = next(_descendants(measurement, "xRayTube"), None)
    anode = _child(tube, "anodeMaterial")
    if anode is not None:
        candidates.append(_anode(anode.text, "xRayTube/anodeMaterial"))
    return candidates


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


# ---------------------------------------------------------------------------- Bruker RAW


@dataclass
class _RawRange:
    """One range of a Bruker RAW file: a 2θ scan or not, its axis and intensities."""

    two_theta_scan: bool
    scan_type: str
    start: float
    step: float
    intensity: np.ndarray
    used_wavelength: float


_RAW_TWO_THETA_SCANS = (
    "locked coupled",
    "unlocked coupled",
    "detector scan",
    "2theta",
    "twotheta",
    "coupled twotheta/theta",
)


def read_bruker_raw(path: str | os.PathLike, *, wavelength: float | None = None) -> Pattern:
    """Read the first 2θ range of a Bruker ``.raw`` file, ``RAW1.01`` or ``RAW4.00`` (see the
    module docstring). Intensities are the stored counts per step.

    Raises:
        ValueError: another file type, RAW versions 1 and 2, a truncated file (a header, segment
            or range past the end of the file), corrupt sizes, no 2θ range, non-finite values.
    """
    path = _existing(path)
    data = path.read_bytes()
    if data.startswith(b"RAW1.01"):
        ranges, candidates = _raw_v3(path, data)
    elif data.startswith(b"RAW4.00"):
        ranges, candidates = _raw_v4(path, data)
    elif data.startswith((b"RAW ", b"RAW2")):
        version = 1 if data.startswith(b"RAW ") else 2
        raise ValueError(
            f"{path}: Bruker RAW version {version} (DIFFRAC-AT) is not supported; "
            "convert it to RAW1.01/RAW4.00 or export the scan as .xy"
        )
    else:
        raise ValueError(
            f"{path} is not a Bruker RAW file: it starts with {data[:8]!r}, not "
            "'RAW1.01' or 'RAW4.00'"
        )
    scans = [item for item in ranges if item.two_theta_scan]
    if not scans:
        kinds = ", ".join(repr(item.scan_type) for item in ranges) or "none"
        raise ValueError(f"{path}: no 2theta range (ranges: {kinds})")
    if len(ranges) > 1:
        logger.warning(
            "%s: %d ranges; reading the first 2theta range (%s), ignoring the other %d",
            path,
            len(ranges),
            scans[0].scan_type,
            len(ranges) - 1,
        )
    first = scans[0]
    two_theta = first.start + first.step * np.arange(first.intensity.size)
    used = (first.used_wavelength, "the range's used wavelength")
    candidates = [*candidates[:1], used, *candidates[1:]]
    return _pattern(path, two_theta, first.intensity, candidates, wavelength)


def _unpack(path: Path, fmt: str, data: bytes, offset: int, what: str) -> tuple:
    """``struct.unpack_from`` that names the field and file when the file is too short."""
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise ValueError(
            f"{path}: truncated: {what} at byte {offset} needs {size} bytes but the "
            f"file has {len(data)}"
        )
    return struct.unpack_from(fmt, data, offset)


def _text(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("latin-1").strip()


def _raw_records(
    path: Path, data: bytes, offset: int, steps: int, size: int, what: str
) -> np.ndarray:
    """The leading float32 of ``steps`` records of ``size`` bytes from ``offset``, as float64."""
    if size < 4:
        raise ValueError(f"{path}: {what}: data records of {size} bytes cannot hold a float32")
    end = offset + steps * size
    if end > len(data):
        raise ValueError(
            f"{path}: truncated: {what} announces {steps} points of {size} bytes "
            f"from byte {offset} (to byte {end}), but the file has {len(data)}"
        )
    view = np.ndarray((steps,), dtype="<f4", buffer=data, offset=offset, strides=(size,))
    return view.astype(np.float64)


def _raw_v3(path: Path, data: bytes) -> tuple[list[_RawRange], list[_Candidate]]:
    """Ranges and wavelength candidates of a ``RAW1.01`` file."""
    _unpack(path, "712s", data, 0, "the RAW1.01 file header")
    (count,) = _unpack(path, "<I", data, 12, "the range count")
    (alpha1,) = _unpack(path, "<d", data, 624, "K-alpha1")
    candidates = [(alpha1, "file header K-alpha1"), _anode(_text(data[608:612]), "the header")]
    ranges, offset = [], 712
    for index in range(count):
        what = f"range {index + 1} of {count}"
        header, steps = _unpack(path, "<2I", data, offset, f"{what} header")
        if header < 260:
            raise ValueError(
                f"{path}: {what} header is {header} bytes, less than the 260 of a "
                "RAW1.01 range header: corrupt file"
            )
        (start,) = _unpack(path, "<d", data, offset + 16, f"{what} start 2theta")
        (step,) = _unpack(path, "<d", data, offset + 176, f"{what} step")
        (used,) = _unpack(path, "<d", data, offset + 240, f"{what} wavelength")
        mask, record, extra = _unpack(path, "<3I", data, offset + 248, f"{what} record sizes")
        record = record or 4 + 8 * bin(mask).count("1")  # a float32 count, a float64 per bit
        begin = offset + header + extra
        intensity = _raw_records(path, data, begin, steps, record, what)
        ranges.append(_RawRange(True, "RAW1.01 range", start, step, intensity, used))
        offset = begin + steps * record
    return ranges, candidates


def _raw_v4(path: Path, data: bytes) -> tuple[list[_RawRange], list[_Candidate]]:
    """Ranges and wavelength candidates of a ``RAW4.00`` file."""
    _unpack(path, "61s", data, 0, "the RAW4.00 file header")
    offset, candidates = 61, []
    for kind, length, start in _raw_segments(path, data, offset, len(data), stop_at_range=True):
        offset = start + length
        if kind == 30 and length >= 120:  # hardware configuration
            (alpha1,) = _unpack(path, "<d", data, start + 80, "K-alpha1")
            candidates = [
                (alpha1, "hardware configuration K-alpha1"),
                _anode(_text(data[start + 116 : start + 120]), "the header"),
            ]
    ranges = []
    while offset + 4 <= len(data):
        (kind,) = _unpack(path, "<I", data, offset, "a range marker")
        if kind not in (0, 160):
            logger.info(
                "%s: %d bytes after the last range (segment type %d) ignored",
                path,
                len(data) - offset,
                kind,
            )
            break
        item, offset = _raw_v4_range(path, data, offset, len(ranges) + 1)
        ranges.append(item)
    if not ranges:
        raise ValueError(f"{path}: truncated: the RAW4.00 file has no range")
    return ranges, candidates


def _raw_segments(
    path: Path, data: bytes, offset: int, end: int, stop_at_range: bool = False
) -> Iterator[tuple[int, int, int]]:
    """``(type, length, offset)`` of the segments from ``offset`` to ``end``; with
    ``stop_at_range``, up to the first range marker (type 0 or 160)."""
    while offset < end:
        (kind,) = _unpack(path, "<I", data, offset, "a segment type")
        if stop_at_range and kind in (0, 160):
            return
        (length,) = _unpack(path, "<I", data, offset + 4, "a segment length")
        if length < 8:
            raise ValueError(
                f"{path}: segment of type {kind} at byte {offset} has length "
                f"{length} < 8: corrupt file"
            )
        if offset + length > min(end, len(data)):
            raise ValueError(
                f"{path}: truncated: segment of type {kind} at byte {offset} has "
                f"{length} bytes but only {min(end, len(data)) - offset} are left"
            )
        yield kind, length, offset
        offset += length


def _raw_v4_range(path: Path, data: bytes, offset: int, number: int) -> tuple[_RawRange, int]:
    """The range whose 160-byte header starts at ``offset``, and the offset after its data."""
    what = f"range {number}"
    _unpack(path, "160s", data, offset, f"{what} header")
    scan_type = _text(data[offset + 32 : offset + 56])
    start, step = struct.unpack_from("<2d", data, offset + 72)
    (steps,) = struct.unpack_from("<I", data, offset + 88)
    (used,) = struct.unpack_from("<d", data, offset + 112)
    record, extra = struct.unpack_from("<2I", data, offset + 136)
    drives = {}
    for kind, length, at in _raw_segments(path, data, offset + 160, offset + 160 + extra):
        if kind == 50 and length >= 64:  # a drive and its start position
            drives[_text(data[at + 12 : at + 36])] = struct.unpack_from("<d", data, at + 56)[0]
    begin = offset + 160 + extra
    intensity = _raw_records(path, data, begin, steps, record, what)
    two_theta = scan_type.lower() in _RAW_TWO_THETA_SCANS or (
        "2Theta" in drives and abs(drives["2Theta"] - start) < 1e-6
    )
    return _RawRange(two_theta, scan_type, start, step, intensity, used), begin + steps * record


# ------------------------------------------------------------------------------- RAS


@dataclass
class _RasScan:
    """One ``*RAS_HEADER_START`` ... ``*RAS_INT_END`` block: header values (bytes) and the
    data rows with their 1-based line numbers."""

    header: dict[str, bytes]
    rows: list[tuple[int, bytes]]
    complete: bool = False


_RAS_KEY = re.compile(rb"^\*([A-Za-z0-9_\-]+)\s*(.*)$")


def read_ras(
    path: str | os.PathLike, *, wavelength: float | None = None, encoding: str | None = None
) -> Pattern:
    """Read the first scan of a Rigaku ``.ras`` file (see the module docstring): intensity
    times the attenuation factor of the third column when there is one.

    Args:
        encoding: Encoding of the header's text values (only used in messages); None tries
            UTF-8, then Shift-JIS (cp932), then Latin-1. Keys and numbers are ASCII.

    Raises:
        ValueError: no RAS markers, a block without ``*RAS_INT_END`` (truncated), rows that are
            not 2 or 3 numbers, a row count that differs from ``MEAS_DATA_COUNT``, a scan axis
            that is not 2θ or not in degrees, non-finite values.
    """
    path = _existing(path)
    scans = _ras_scans(path, path.read_bytes())
    _warn_ignored(path, len(scans), "scans")
    scan = scans[0]
    if not scan.complete:
        raise ValueError(
            f"{path}: the first scan has *RAS_INT_START but no *RAS_INT_END: truncated file?"
        )
    values = _ras_values(path, scan.rows)
    _ras_check_header(path, scan.header, len(values), encoding)
    intensity = values[:, 1] * values[:, 2] if values.shape[1] == 3 else values[:, 1]
    return _pattern(path, values[:, 0], intensity, _ras_wavelengths(scan.header), wavelength)


def _ras_scans(path: Path, data: bytes) -> list[_RasScan]:
    """The scans of a RAS file (bytes split into lines; nothing decoded yet)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    if b"*RAS_HEADER_START" not in data and b"*RAS_INT_START" not in data:
        raise ValueError(
            f"{path} is not a Rigaku RAS file: no *RAS_HEADER_START or *RAS_INT_START marker"
        )
    scans: list[_RasScan] = []
    state = None
    for number, raw in enumerate(data.splitlines(), start=1):
        line = raw.strip()
        if line == b"*RAS_HEADER_START":
            scans.append(_RasScan({}, []))
            state = "header"
        elif line in (b"*RAS_HEADER_END", b"*RAS_INT_END"):
            if line == b"*RAS_INT_END" and state == "data":
                scans[-1].complete = True
            state = None
        elif line == b"*RAS_INT_START":
            if not scans or scans[-1].rows or scans[-1].complete:
                scans.append(_RasScan({}, []))
            state = "data"
        elif state == "header" and (match := _RAS_KEY.match(line)):
            scans[-1].header[match.group(1).decode("ascii")] = match.group(2).strip().strip(b'"')
        elif state == "data" and line and not line.startswith(b"*"):
            scans[-1].rows.append((number, line))
    scans = [scan for scan in scans if scan.rows]
    if not scans:
        raise ValueError(f"{path}: no *RAS_INT_START data block with rows")
    return scans


def _ras_values(path: Path, rows: list[tuple[int, bytes]]) -> np.ndarray:
    """The data rows as float64 ``[rows, 2 or 3]``; errors name the file's line."""
    width = len(rows[0][1].split())
    tokens = b" ".join(line for _, line in rows).split()
    if width not in (2, 3) or len(tokens) != width * len(rows):
        number, line = next(((n, text) for n, text in rows if len(text.split()) != width), rows[0])
        raise ValueError(
            f"{path}:{number}: expected 2 or 3 columns (2theta intensity "
            f"[attenuation]) like the first data row, got "
            f"{line[:60].decode('latin-1')!r}"
        )
    try:
        return np.asarray(tokens, dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        number, line = next(
            ((n, t) for n, t in rows if not all(map(_is_number, t.split()))), rows[0]
        )
        text = line[:60].decode("latin-1")
        raise ValueError(f"{path}:{number}: cannot parse {text!r} as numbers") from None


def _decode(value: bytes, encoding: str | None) -> str:
    """A header value as text: ``encoding``, else UTF-8, Shift-JIS (cp932), Latin-1."""
    for name in (encoding,) if encoding else ("utf-8", "cp932", "latin-1"):
        try:
            return value.decode(name)
        except (UnicodeDecodeError, LookupError):
            continue
    return value.decode("latin-1")


def _ras_check_header(
    path: Path, header: dict[str, bytes], rows: int, encoding: str | None
) -> None:
    """Refuse a point count that differs from ``MEAS_DATA_COUNT`` and non-2θ or non-degree
    scan axes."""
    count = header.get("MEAS_DATA_COUNT", b"").strip()
    if count and _is_number(count) and float(count) != rows:
        raise ValueError(f"{path}: {rows} data rows but MEAS_DATA_COUNT says {float(count):g}")
    axis = _decode(header.get("MEAS_SCAN_AXIS_X", b""), encoding)
    normalized = re.sub(r"[^a-z0-9]", "", axis.lower())
    if axis and not any(name in normalized for name in _TWO_THETA_AXES):
        raise ValueError(
            f"{path}: the first scan's axis is {axis!r} (MEAS_SCAN_AXIS_X), not 2theta"
        )
    unit = _decode(header.get("MEAS_SCAN_UNIT_X", b""), encoding).strip().lower()
    if unit and unit not in ("deg", "degree", "degrees", "°"):
        raise ValueError(f"{path}: the scan axis is in {unit!r} (MEAS_SCAN_UNIT_X), not degrees")


def _ras_wavelengths(header: dict[str, bytes]) -> list[_Candidate]:
    """Wavelength candidates of a RAS header, best first."""
    candidates: list[_Candidate] = []
    value = header.get("HW_XG_WAVE_LENGTH_ALPHA1", b"").strip()
    if value and _is_number(value):
        unit = header.get("HW_XG_WAVE_LENGTH_UNIT", b"").strip().lower()
        scale = 10.0 if unit == b"nm" else 1.0
        candidates.append((float(value) * scale, "HW_XG_WAVE_LENGTH_ALPHA1"))
    target = header.get("HW_XG_TARGET_NAME", b"").decode("ascii", "ignore")
    candidates.append(_anode(target, "HW_XG_TARGET_NAME"))
    return candidates


# ---------------------------------------------------------------------------- dispatch

_READERS: dict[str, Callable[..., Pattern]] = {
    ".xrdml": read_xrdml,
    ".brml": read_brml,
    ".raw": read_bruker_raw,
    ".ras": read_ras,
}
#: File suffixes (lower case) read by :func:`read_instrument_file`.
INSTRUMENT_SUFFIXES = tuple(_READERS)


def read_instrument_file(
    path: str | os.PathLike, *, wavelength: float | None = None, encoding: str | None = None
) -> Pattern:
    """Read a diffractometer file by its suffix (case-insensitive): ``.xrdml``, ``.brml``,
    ``.raw`` (Bruker) or ``.ras``. ``encoding`` applies to ``.ras`` header text only."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(
            f"{path}: not an instrument file suffix (expected one of "
            f"{', '.join(INSTRUMENT_SUFFIXES)})"
        )
    if reader is read_ras:
        return read_ras(path, wavelength=wavelength, encoding=encoding)
    return reader(path, wavelength=wavelength)
