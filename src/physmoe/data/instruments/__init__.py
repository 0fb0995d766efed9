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

import os
from collections.abc import Callable
from pathlib import Path

from ..readers import Pattern
from .brml import read_brml
from .bruker_raw import read_bruker_raw
from .ras import read_ras
from .xrdml import read_xrdml

__all__ = [
    "INSTRUMENT_SUFFIXES",
    "read_brml",
    "read_bruker_raw",
    "read_instrument_file",
    "read_ras",
    "read_xrdml",
]

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
