"""Rigaku ``.ras`` files (the format is described in :mod:`physmoe.data.instruments`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..readers import Pattern
from ._common import (
    _TWO_THETA_AXES,
    _anode,
    _Candidate,
    _existing,
    _is_number,
    _pattern,
    _warn_ignored,
)

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
