"""Readers for the diffraction data users have: measured patterns, CIFs, SimXRD-4M databases and
the public reference implementation's ``.npy`` files.

* :func:`read_pattern` -- two- or three-column text (``.xy``, ``.xye``, ``.csv``, ``.txt``,
  ``.dat``): 2θ, intensity and an optional standard deviation, with comments, a header and any of
  the usual delimiters. The wavelength is never assumed: it is ``None`` unless given or stated
  unambiguously in the file's comments/header (``# Wavelength: 1.5406 A``, ``0.154056 nm``,
  ``lambda = 0.7093``, ``Kα1 = 1.54056 Å, Kα2 = ...``, ``# Anode Cu``); ambiguous headers are
  refused unless the wavelength is given. Instrument files go to :mod:`physmoe.data.instruments`
  by suffix (case-insensitive): PANalytical ``.xrdml``, Bruker ``.brml`` and ``.raw``
  (RAW1.01/RAW4.00), Rigaku ``.ras``, with the wavelength the file states.
* :func:`read_cif` -- a CIF file to a :class:`~physmoe.data.structures.Crystal` (gemmi, with
  pymatgen's lenient parser as a fallback).
* :func:`iter_simxrd` / :func:`read_simxrd` -- SimXRD-4M ASE SQLite databases, whose per-row
  key-value pairs are strings: ``latt_dis`` (d-spacings, Angstrom), ``intensity``, ``tager`` =
  ``"[space_group, crystal_system, lattice_letter]"`` with crystal systems numbered in reverse
  (1 = cubic ... 7 = triclinic), ``chem_form`` and ``simulation_param``.
* :func:`read_reference_npy` -- the public Phys-MoE implementation's pickled dicts with
  ``intensitys`` (or ``features``) ``[N, 8500]`` on 2θ 5-90 deg (step 0.01) and ``labels230``
  (0-based). Pickles can run arbitrary code, so they load only with ``allow_pickle=True``.
"""

from __future__ import annotations

import bz2
import codecs
import dataclasses
import gzip
import io
import logging
import lzma
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .grid import bragg_d_spacing, bragg_two_theta, check_pattern_arrays
from .structures import Crystal
from .wavelength_header import (
    ANODE_KALPHA1,
    _header_wavelengths,
    _resolve_header_wavelength,
    _Stated,
)

__all__ = ["ANODE_KALPHA1", "Pattern", "read_cif", "read_pattern"]

logger = logging.getLogger(__name__)

_COMMENT_PREFIXES = ("#", "!", ";", "%", "//", "*")
_NUMPY_SCALAR_REPR = re.compile(r"np\.\w+\(([^()]*)\)")


# ---------------------------------------------------------------------------------- patterns


@dataclass
class Pattern:
    """A measured or simulated powder pattern on its own 2θ axis.

    Attributes:
        two_theta: 2θ in degrees, float64 ``[L]``, strictly increasing.
        intensity: Intensities, float64 ``[L]`` (as stored; may be negative after background
            subtraction).
        sigma: Standard deviations of the intensities, float64 ``[L]``, or None.
        wavelength: Wavelength in Angstrom the 2θ axis refers to, or None if unknown.
        source: Where the pattern came from (file name), for messages.
    """

    two_theta: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None = None
    wavelength: float | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        self.two_theta, self.intensity = check_pattern_arrays(self.two_theta, self.intensity)
        if self.sigma is not None:
            self.sigma = np.asarray(self.sigma, dtype=np.float64)
            if self.sigma.shape != self.two_theta.shape:
                raise ValueError(
                    f"sigma has shape {self.sigma.shape}, expected {self.two_theta.shape}"
                )

    def __len__(self) -> int:
        return len(self.two_theta)

    def d_spacing(self) -> np.ndarray:
        """Bragg d-spacing of every point in Angstrom, ``[L]`` (needs the wavelength)."""
        if self.wavelength is None:
            raise ValueError(
                f"{self.source or 'pattern'}: the wavelength is unknown; "
                "pass wavelength= when reading"
            )
        return bragg_d_spacing(self.two_theta, self.wavelength)

    def to_wavelength(self, wavelength: float) -> Pattern:
        """The same pattern with its 2θ axis recomputed for another wavelength (through d).

        Points whose d-spacing cannot diffract at the new wavelength (``sin(theta) > 1``) are
        dropped.
        """
        if not (math.isfinite(wavelength) and wavelength > 0):
            raise ValueError(f"wavelength must be a positive number of Angstrom, got {wavelength}")
        two_theta = bragg_two_theta(self.d_spacing(), wavelength)
        keep = np.isfinite(two_theta)
        return Pattern(
            two_theta=two_theta[keep],
            intensity=self.intensity[keep],
            sigma=None if self.sigma is None else self.sigma[keep],
            wavelength=float(wavelength),
            source=self.source,
        )


def _split_fields(line: str, delimiter: str | None) -> list[str]:
    if delimiter is not None:
        return [field.strip() for field in line.split(delimiter) if field.strip()]
    for candidate in (",", ";", "\t"):
        if candidate in line:
            return [field.strip() for field in line.split(candidate) if field.strip()]
    return line.split()


# Compressed files read transparently: magic bytes -> (name, decompress).
_COMPRESSED = (
    (b"\x1f\x8b", "gzip", gzip.decompress),
    (b"BZh", "bzip2", bz2.decompress),
    (b"\xfd7zXZ\x00", "xz", lzma.decompress),
)
_BOMS = (  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# A number with a Fortran double-precision exponent ("1.5D+02") and one with a decimal comma.
_FORTRAN_EXPONENT = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))[dD]([+-]?\d+)$")
_DECIMAL_COMMA = re.compile(r"^[+-]?\d*,\d+(?:[eEdD][+-]?\d+)?$|^[+-]?\d+,?$")


def _read_text(path: Path, encoding: str | None) -> str:
    """The text of a pattern file: gzip/bzip2/xz decompressed, a byte-order mark (UTF-8, UTF-16,
    UTF-32) honoured and removed, leading NUL bytes dropped. Without ``encoding``: UTF-8, else
    UTF-16 when every other byte is NUL, else Latin-1 (with a warning naming the file)."""
    data = _decompressed(path, path.read_bytes())
    if data.startswith(b"PK\x03\x04"):
        raise ValueError(f"{path} is a zip archive, not a text pattern: extract it first")
    bom_encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), None)
    if bom_encoding is not None:
        data = data[len(next(bom for bom, enc in _BOMS if enc == bom_encoding)) :]
        _warn_if_bom_overrides(path, bom_encoding, encoding)
        return _decode(path, data, bom_encoding)
    if encoding is None:
        return _decode_unlabelled(path, data)
    return _decode(path, data, encoding)


def _decompressed(path: Path, data: bytes) -> bytes:
    """``data`` decompressed when it starts with a gzip, bzip2 or xz magic, else unchanged."""
    for magic, name, decompress in _COMPRESSED:
        if data.startswith(magic):
            try:
                data = decompress(data)
            except (OSError, EOFError, ValueError, lzma.LZMAError) as error:
                raise ValueError(f"{path}: cannot decompress this {name} file: {error}") from None
            logger.info("%s: %s-compressed, read decompressed", path, name)
            break
    return data


def _warn_if_bom_overrides(path: Path, bom_encoding: str, encoding: str | None) -> None:
    """Warn when the caller's ``encoding`` disagrees with the file's byte-order mark, which is
    what the file is read as."""
    if encoding is not None and codecs.lookup(encoding).name.replace("_", "-") not in (
        codecs.lookup(bom_encoding).name,
        "utf-8-sig",
        "utf-16",
        "utf-32",
    ):
        logger.warning(
            "%s starts with a %s byte-order mark: reading it as %s, not %s",
            path,
            bom_encoding,
            bom_encoding,
            encoding,
        )


def _decode_unlabelled(path: Path, data: bytes) -> str:
    """The text of a file with neither a byte-order mark nor a given encoding: UTF-16 when NUL
    bytes say so, else UTF-8, else Latin-1 (with a warning naming the file)."""
    # Drop leading NULs in pairs: an odd one may be the high byte of big-endian UTF-16 text.
    padding = len(data) - len(data.lstrip(b"\x00"))
    body = data[padding // 2 * 2 :]
    sample = body[:4096]
    if len(sample) >= 4 and sample.count(b"\x00") * 3 >= len(sample):
        odd = sample[1::2].count(b"\x00")
        even = sample[0::2].count(b"\x00")
        encoding = "utf-16-le" if odd > even else "utf-16-be"
        logger.warning("%s: no byte-order mark but NUL bytes: reading it as %s", path, encoding)
        return _decode(path, body, encoding)
    data = data[padding:]
    try:
        return data.decode("utf-8").lstrip("\ufeff\x00")
    except UnicodeDecodeError as error:
        logger.warning(
            "%s is not UTF-8 (byte %#x at offset %d): reading it as Latin-1; pass "
            "encoding= if that is wrong",
            path,
            data[error.start],
            error.start,
        )
    return _decode(path, data, "latin-1")


def _decode(path: Path, data: bytes, encoding: str) -> str:
    """``data`` decoded as ``encoding``, leading BOM characters and NULs stripped; a ValueError
    naming the file when it does not decode or holds NUL characters (binary, or mislabelled)."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: cannot decode the file as {encoding} (byte {data[error.start]:#x} at "
            f"offset {error.start}); pass the file's encoding (read_pattern(encoding=...))"
        ) from None
    except LookupError:
        raise ValueError(f"{path}: unknown encoding {encoding!r}") from None
    if "\x00" in text.lstrip("\ufeff\x00"):
        raise ValueError(
            f"{path}: NUL characters in the text read as {encoding}: a binary file, or another "
            "encoding (pass encoding=)"
        )
    return text.lstrip("\ufeff\x00")


def _check_wavelength(wavelength: Any, where: str = "") -> None:
    """Refuse a wavelength that is not a positive finite real number (a bool, a string)."""
    if isinstance(wavelength, bool) or not isinstance(wavelength, numbers.Real):
        raise TypeError(f"{where}wavelength must be a number in Angstrom, got {wavelength!r}")
    if not (math.isfinite(wavelength) and wavelength > 0):
        raise ValueError(
            f"{where}wavelength must be a positive number of Angstrom, got {wavelength}"
        )


# A line before the data that starts like a number ("12.3x 100", "1,234.5 100"; not "2theta" or
# a date "2024-05-01") and has more digits is a broken data line, not a header.
_NUMBER_LED = re.compile(r"^[+-]?(?:\d+[.,]\d*|\.\d+|\d+(?![^\W\d_]))(?![-/:\d])\D*\d")


def _parse_number(field: str) -> float:
    """``float`` that also takes Fortran's ``D`` exponent (``1.5D+02``)."""
    try:
        return float(field)
    except ValueError:
        match = _FORTRAN_EXPONENT.match(field)
        if match is None:
            raise
        return float(f"{match.group(1)}e{match.group(2)}")


def _parse_values(line: str, delimiter: str | None) -> tuple[list[float], bool]:
    """The numbers of a data line and whether they were written with decimal commas
    (``10,5 123,4`` or ``10,5;123,4``: columns split on ``;``, tab or whitespace). ValueError if
    the line is not numbers either way."""
    try:
        return [_parse_number(field) for field in _split_fields(line, delimiter)], False
    except ValueError:
        if "," not in line or delimiter == ",":
            raise
    if delimiter is not None:
        fields = [field.strip() for field in line.split(delimiter) if field.strip()]
    else:
        separator = next((c for c in (";", "\t") if c in line), None)
        fields = line.split(separator) if separator else line.split()
        fields = [field.strip() for field in fields if field.strip()]
    if not fields or not all(_DECIMAL_COMMA.match(field) for field in fields):
        raise ValueError(line)
    return [_parse_number(field.replace(",", ".")) for field in fields], True


def read_pattern(
    path: str | os.PathLike,
    *,
    wavelength: float | None = None,
    delimiter: str | None = None,
    encoding: str | None = None,
) -> Pattern:
    """Read a two-column (2θ, intensity) or three-column (2θ, intensity, sigma) text pattern,
    or an instrument file.

    Files ending in ``.xrdml``, ``.brml``, ``.raw`` or ``.ras`` (any case) are read by
    :func:`physmoe.data.instruments.read_instrument_file` (its first 2θ scan, the wavelength the
    file states, the same precedence of ``wavelength``; ``delimiter`` does not apply and
    ``encoding`` only to ``.ras`` header text). The rest of this docstring is about text files.

    Lines starting with ``#``, ``!``, ``;``, ``%``, ``//`` or ``*`` are comments, as is anything
    after ``#`` on a data line; blank lines are skipped; non-numeric lines before the first data
    line are a header. Columns are split on ``delimiter`` if given, else on the first of comma,
    semicolon or tab found in the line, else on whitespace. All data lines must have the same
    number of columns (2 or 3). 2θ must be strictly monotonic; a descending file is reversed.

    Args:
        path: The file.
        wavelength: Wavelength in Angstrom of the 2θ axis; it always wins over the header. If
            None, the wavelength the comment/header lines state unambiguously is used, with a
            warning that says which value and line: a number with a length unit in a clause
            about the wavelength or an emission line (``Wavelength = 1.5406 Å``, ``0.154056 nm``
            converted, ``Wavelength (A): 0.7093``, ``1.5406 A (Kα1)``); a unitless number right
            after ``wavelength``/``lambda``/``λ``/a line name between 0.3 and 3 (Angstrom); the
            Kα1 value when Kα1 and Kα2 are listed; else the Kα1 of an anode the header names
            (``Anode Cu``, ``Radiation: Co``, ``CuKa1``; Cu, Co, Mo, Fe, Cr, Ag:
            :data:`ANODE_KALPHA1`). A header that says nothing about it leaves the wavelength
            None (never silently Cu K-alpha).
        delimiter: Column delimiter; None guesses per line as described. Numbers may use
            Fortran's ``D`` exponent (``1.5D+02``) and decimal commas (``10,5 123,4``,
            ``10,5;123,4``; a comma then does not separate columns).
        encoding: Text encoding; None: UTF-8, or what a byte-order mark says (UTF-8 BOM,
            UTF-16, UTF-32), UTF-16 when every other byte is NUL, else Latin-1 (with a
            warning). gzip, bzip2 and xz files are decompressed transparently; leading NUL
            bytes are ignored.

    Raises:
        ValueError: naming the file and line for unparsable lines, a wrong column count,
            non-finite values, 2θ outside (0, 180) or not monotonic, negative sigma; an empty
            file; without ``wavelength``, a header whose wavelength is ambiguous (different
            values, only Kα2 or Kβ, a unitless value that may be nm, a value contradicting the
            named anode, several anodes, a mention without a value).
    """
    path = Path(path)
    if wavelength is not None:
        _check_wavelength(wavelength, f"{path}: ")
    if not path.is_file():
        raise FileNotFoundError(f"pattern file not found: {path}")
    from .instruments import INSTRUMENT_SUFFIXES, read_instrument_file  # imports this module

    if path.suffix.lower() in INSTRUMENT_SUFFIXES:
        return read_instrument_file(path, wavelength=wavelength, encoding=encoding)
    scan = _scan_text(path, _read_text(path, encoding), delimiter, header=wavelength is None)
    data, numbers = _checked_columns(path, scan.rows, scan.line_numbers)
    sigma = None
    if data.shape[1] == 3:
        sigma = data[:, 2].copy()
        bad = np.flatnonzero(sigma < 0)
        if bad.size:
            raise ValueError(f"{path}:{numbers[bad[0]]}: negative sigma {sigma[bad[0]]}")
    if wavelength is None:
        wavelength = _resolve_header_wavelength(path, scan.stated, scan.anodes, scan.unclear)
    return Pattern(
        two_theta=data[:, 0].copy(),
        intensity=data[:, 1].copy(),
        sigma=sigma,
        wavelength=None if wavelength is None else float(wavelength),
        source=str(path),
    )


@dataclass
class _TextScan:
    """What one pass over a text pattern found: the data rows and their line numbers, and the
    wavelength statements, anodes and unclear mentions of its header and comment lines."""

    rows: list[list[float]] = dataclasses.field(default_factory=list)
    line_numbers: list[int] = dataclasses.field(default_factory=list)
    stated: list[_Stated] = dataclasses.field(default_factory=list)
    anodes: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    unclear: list[tuple[str, int]] = dataclasses.field(default_factory=list)


def _scan_text(path: Path, text: str, delimiter: str | None, header: bool) -> _TextScan:
    """Parse every line (comments, header, data; see :func:`read_pattern`), reading wavelength
    statements from header and comment lines when ``header``. Raises on the first bad line."""
    scan = _TextScan()
    decimal_comma_line: int | None = None
    first_unparsed: tuple[int, str] | None = None
    for line_number, raw_line in enumerate(io.StringIO(text, newline=None), start=1):
        line = raw_line.strip()
        if not line:
            continue
        is_comment = line.startswith(_COMMENT_PREFIXES)
        if (is_comment or not scan.rows) and header:
            found, named, unclear = _header_wavelengths(line, line_number)
            scan.stated += found
            scan.anodes += [(symbol, line_number, line) for symbol in named]
            scan.unclear += [(clause, line_number) for clause in unclear]
        if is_comment:
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            values, decimal_comma = _parse_values(line, delimiter)
        except ValueError:
            if not scan.rows and not _NUMBER_LED.match(line):  # a header before the data
                first_unparsed = first_unparsed or (line_number, raw_line.strip())
                continue
            # Before any data: say why the line was not skipped as a header.
            why = (
                ""
                if scan.rows
                else " (no data lines before it; a line that starts with a number is no header)"
            )
            raise ValueError(
                f"{path}:{line_number}: cannot parse {raw_line.strip()!r} as numbers{why}"
            ) from None
        if decimal_comma and decimal_comma_line is None:
            decimal_comma_line = line_number
        _check_row(path, line_number, raw_line, values, scan)
        scan.rows.append(values)
        scan.line_numbers.append(line_number)
    if not scan.rows:
        detail = ""
        if first_unparsed is not None:
            number, first = first_unparsed
            detail = f"; the first non-comment line, line {number} ({first[:60]!r}), is not numbers"
        raise ValueError(f"{path}: no data lines (2theta, intensity) found{detail}")
    if decimal_comma_line is not None:
        logger.info("%s: decimal commas from line %d on", path, decimal_comma_line)
    return scan


def _check_row(path: Path, line_number: int, raw_line: str, values: list, scan: _TextScan) -> None:
    if len(values) not in (2, 3):
        raise ValueError(
            f"{path}:{line_number}: expected 2 columns (2theta, intensity) or 3 (with sigma), "
            f"got {len(values)}"
        )
    if scan.rows and len(values) != len(scan.rows[0]):
        raise ValueError(
            f"{path}:{line_number}: {len(values)} columns, but the first data line "
            f"(line {scan.line_numbers[0]}) has {len(scan.rows[0])}"
        )
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{path}:{line_number}: non-finite value in {raw_line.strip()!r}")


def _checked_columns(path: Path, rows: list, line_numbers: list) -> tuple[np.ndarray, np.ndarray]:
    """The rows as ``[N, 2 | 3]`` float64 with ascending 2θ (a descending file reversed) and
    their line numbers; 2θ must lie in (0, 180) and be strictly monotonic."""
    data = np.asarray(rows, dtype=np.float64)
    numbers = np.asarray(line_numbers)
    two_theta = data[:, 0]
    bad = np.flatnonzero((two_theta <= 0) | (two_theta >= 180))
    if bad.size:
        raise ValueError(
            f"{path}:{numbers[bad[0]]}: 2theta {two_theta[bad[0]]} is outside (0, 180) degrees"
        )
    if len(data) > 1:
        step = np.diff(two_theta)
        if np.all(step < 0):
            data, numbers, step = data[::-1], numbers[::-1], -step[::-1]
        bad = np.flatnonzero(step <= 0)
        if bad.size:
            raise ValueError(
                f"{path}:{numbers[bad[0] + 1]}: 2theta {data[bad[0] + 1, 0]} does not increase "
                f"(previous {data[bad[0], 0]}); 2theta must be strictly monotonic"
            )
    return data, numbers


def read_cif(path: str | os.PathLike) -> Crystal:
    """Read a CIF file into a :class:`~physmoe.data.structures.Crystal` (see
    :meth:`Crystal.from_cif <physmoe.data.structures.Crystal.from_cif>`)."""
    return Crystal.from_cif(path)
