"""Bruker ``.raw`` files, RAW1.01 and RAW4.00 (the format is described in
:mod:`physmoe.data.instruments`)."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..readers import Pattern
from ._common import _anode, _Candidate, _existing, _pattern

logger = logging.getLogger(__name__)


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
