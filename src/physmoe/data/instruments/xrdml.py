"""PANalytical ``.xrdml`` files (the format is described in :mod:`physmoe.data.instruments`)."""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..readers import Pattern
from ._common import (
    _anode,
    _Candidate,
    _child,
    _children,
    _descendants,
    _existing,
    _is_number,
    _local,
    _numbers,
    _parse_xml,
    _pattern,
    _warn_ignored,
)

logger = logging.getLogger(__name__)


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
