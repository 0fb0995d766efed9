"""What the instrument readers share: wavelength choice, 2θ checks, numbers, XML helpers."""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..readers import Pattern
from ..wavelength_header import _ANODE_NAMES, _PLAUSIBLE_WAVELENGTH, ANODE_KALPHA1

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
