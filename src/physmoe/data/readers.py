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

import ast
import bz2
import codecs
import contextlib
import dataclasses
import gzip
import io
import logging
import lzma
import math
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
from .grid import CU_KA1, TwoThetaGrid, bragg_d_spacing, bragg_two_theta, check_pattern_arrays
from .structures import Crystal

__all__ = [
    "ANODE_KALPHA1",
    "Pattern",
    "ReferenceArrays",
    "SIMXRD_WAVELENGTH",
    "SimXRDRecord",
    "iter_simxrd",
    "read_cif",
    "read_pattern",
    "read_reference_npy",
    "read_simxrd",
]

logger = logging.getLogger(__name__)

#: Wavelength SimXRD-4M was simulated with (Cu K-alpha, weighted mean of the doublet), Angstrom.
SIMXRD_WAVELENGTH = 1.54184

_COMMENT_PREFIXES = ("#", "!", ";", "%", "//", "*")
_NUMPY_SCALAR_REPR = re.compile(r"np\.\w+\(([^()]*)\)")
# Stated values outside this range (Angstrom) are not wavelengths of a diffraction experiment.
_PLAUSIBLE_WAVELENGTH = (0.01, 10.0)
# A value stated without a unit is taken as Angstrom only inside this range (all laboratory
# anodes, most synchrotron work); outside it (e.g. 0.154: nm or Angstrom?) it is ambiguous.
_UNITLESS_ANGSTROM = (0.3, 3.0)

#: K-alpha1 wavelengths in Angstrom of the usual anodes (Cu from physmoe.data.grid; the others
#: Hoelzer et al. 1997, as in pymatgen). Headers that only name the anode get these.
ANODE_KALPHA1 = {
    "Cu": CU_KA1,
    "Co": 1.78897,
    "Mo": 0.70930,
    "Fe": 1.93604,
    "Cr": 2.28970,
    "Ag": 0.559421,
}
_ANODE_NAMES = {
    "copper": "Cu",
    "cobalt": "Co",
    "molybdenum": "Mo",
    "iron": "Fe",
    "chromium": "Cr",
    "silver": "Ag",
}
_ANODE_NAME = r"(Cu|Co|Mo|Fe|Cr|Ag|copper|cobalt|molybdenum|iron|chromium|silver)"
_ANODE = _ANODE_NAME + r"(?![A-Za-z0-9])"
_UNIT = r"(Å|Å|ångströms?|angstr[öo]ms?|A|nm|pm)(?![A-Za-z])"
_TO_ANGSTROM = {"nm": 10.0, "pm": 0.01}
# "wavelength", "lambda", "λ" (optionally numbered: "lambda1 =" is K-alpha1).
_KEYWORD = re.compile(r"(?:wave[ -]?length|lambda|λ)(?:[ _-]?([12])(?![\d.]))?", re.IGNORECASE)
# An emission line: "Kα1", "K-Alpha1", "Ka1", "K alpha 2", "Kα", "Kβ", optionally after the anode
# ("CuKa1", "Cu K-Alpha1").
_LINE = re.compile(
    r"(?<![A-Za-z])(?:" + _ANODE_NAME + r"[ _-]?)?K[ _-]?(α|alpha|a|β|beta|b)"
    r"(?:[ _-]?([123])(?![\d.]))?(?![A-Za-z])",
    re.IGNORECASE,
)
_ANODE_WORD = r"(?:anode|target|tube|radiation|source)\b"
# "Anode: Cu", "Target Mo", and the other order, "Co anode", "Cu tube" (group 1 or 2).
_ANODE_KEYWORD = re.compile(
    _ANODE_WORD
    + r"[^,;|]*?(?<![A-Za-z])"
    + _ANODE
    + r"|(?<![A-Za-z])"
    + _ANODE_NAME
    + r"[ _-]?"
    + _ANODE_WORD,
    re.IGNORECASE,
)
# A ratio ("Ratio K-Alpha2/K-Alpha1 0.5"): the numbers after the word are no wavelengths.
_RATIO = re.compile(r"\bratio\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d*|\.\d+|\d+)")
_UNIT_AFTER = re.compile(r"\s*" + _UNIT, re.IGNORECASE)
_BRACKETED_UNIT = re.compile(r"[(\[]\s*" + _UNIT + r"\s*[)\]]", re.IGNORECASE)


@dataclass
class _Stated:
    """One wavelength a header states: the value in Angstrom, its emission line ("a1", "a2",
    "a" for the K-alpha mean, "b", or None when not said), where, and how it was read."""

    value: float
    line: str | None
    line_number: int
    text: str
    how: str


def _anode_symbol(name: str) -> str:
    return _ANODE_NAMES.get(name.lower(), name[:1].upper() + name[1:].lower())


def _line_label(match: re.Match) -> str:
    kind, number = match.group(2).lower(), match.group(3)
    base = "a" if kind in ("α", "alpha", "a") else "b"
    return base + (number or "") if base == "a" else "b"


def _header_wavelengths(line: str, line_number: int) -> tuple[list[_Stated], list[str], list[str]]:
    """The wavelengths a comment/header line states unambiguously, the anodes it names (with the
    K-alpha line, not K-beta), and why clauses that mention a wavelength give no usable value.

    A number counts when its clause (the line split at ``,``, ``;`` and ``|``) names the
    wavelength or an emission line, and it carries a length unit (after it, or bracketed after
    the keyword: ``Wavelength (A): 0.7093``), or it is tagged without a unit (directly after the
    keyword or line name, ``lambda = 0.7093``, or followed by its line name, ``1.5406 (Ka1)``) and
    lies where only Angstrom makes sense (0.3-3)."""
    stated, anodes, unclear = [], [], []
    declared = re.search(_KEYWORD.pattern + r"\s*" + _BRACKETED_UNIT.pattern, line, re.IGNORECASE)
    line_unit = declared.group(2) if declared else None  # "Wavelength (A): ..., ..."
    for clause in re.split(r"[,;|]", line):
        labels = [(m.span(), _line_label(m), m.group(1)) for m in _LINE.finditer(clause)]
        keywords = [(m.span(), m.group(1)) for m in _KEYWORD.finditer(clause)]
        anode_names = [m.group(1) or m.group(2) for m in _ANODE_KEYWORD.finditer(clause)]
        anode_names += [name for _, label, name in labels if name and label.startswith("a")]
        if anode_names and any(label == "b" for _, label, _ in labels):
            unclear.append(f"{clause.strip()!r} names a K-beta line")  # not the anode's K-alpha1
            anode_names = []
        anodes += [_anode_symbol(name) for name in anode_names]
        if not (labels or keywords):
            continue  # numbers here are about something else ("scan time 1.2 s/step")
        # Hide the keywords and line names ("Ka1", "lambda1") from the number search.
        masked = list(clause)
        for (start, end), *_ in labels + keywords:
            masked[start:end] = "\0" * (end - start)
        ratio = _RATIO.search(clause)
        if ratio:
            masked[ratio.start() :] = " " * (len(clause) - ratio.start())
        masked = "".join(masked)
        found, problems, previous_end = False, [], 0
        for number in _NUMBER.finditer(masked):
            unit_match = _UNIT_AFTER.match(masked, number.end())
            first, last = previous_end, number.start()
            previous_end = unit_match.end() if unit_match else number.end()
            before = [item for item in labels if first <= item[0][0] < last]
            named = [item for item in keywords if first <= item[0][0] < last]
            label = before[-1][1] if before else None
            if label is None and named and named[-1][1]:
                label = "a" + named[-1][1]  # lambda1 / lambda2
            if label is None:  # "1.54056 Å (Kα1)": a line name right after the value
                after = _LINE.search(clause, previous_end)
                gap = clause[previous_end : after.start()] if after else ""
                if after and not gap.strip(" ()[]:="):
                    label = _line_label(after)
            prefix = masked[first:last]
            # Directly after the keyword / line name: only separators and a bracketed unit between.
            rest = _BRACKETED_UNIT.sub("", prefix.rsplit("\0", 1)[-1])
            direct = bool(before or named) and not re.sub(r"[\s:=_()\[\]-]", "", rest)
            tagged = direct or label is not None
            value = float(number.group(1))
            unit = unit_match.group(1) if unit_match else None
            if unit is None and tagged:
                bracketed = _BRACKETED_UNIT.search(prefix)
                unit = bracketed.group(1) if bracketed else line_unit
            if unit is not None:
                angstrom = value * _TO_ANGSTROM.get(unit.lower(), 1.0)
                converted = " converted to Angstrom" if unit.lower() in _TO_ANGSTROM else ""
                how = f"{value:g} {unit}{converted}"
            elif tagged and _UNITLESS_ANGSTROM[0] <= value <= _UNITLESS_ANGSTROM[1]:
                angstrom, how = value, f"{value:g} without a unit, taken as Angstrom"
            else:
                if tagged:
                    problems.append(
                        f"{clause.strip()!r}: {value:g} without a unit (Angstrom or nm?)"
                    )
                continue
            if not _PLAUSIBLE_WAVELENGTH[0] <= angstrom <= _PLAUSIBLE_WAVELENGTH[1]:
                problems.append(f"{clause.strip()!r}: {how} is no X-ray wavelength")
                continue
            stated.append(_Stated(angstrom, label, line_number, line, how))
            found = True
        if not found and keywords and not anode_names:
            unclear += problems or [f"{clause.strip()!r} gives no value with a unit"]
    return stated, anodes, unclear


def _resolve_header_wavelength(
    path: Path,
    stated: list[_Stated],
    anodes: list[tuple[str, int, str]],
    unclear: list[tuple[str, int]],
) -> float | None:
    """The wavelength a file's header states, following :func:`read_pattern`'s rules (warns
    which value it used), None when the header says nothing about it, ValueError if ambiguous."""
    advice = (
        "pass the wavelength explicitly (physmoe predict --wavelength, "
        "read_pattern(wavelength=...))"
    )

    def ambiguous(reason: str) -> ValueError:
        return ValueError(f"{path}: ambiguous wavelength in the header: {reason}; {advice}")

    def distinct(values: list[_Stated]) -> list[_Stated]:
        kept: list[_Stated] = []
        for item in values:
            if not any(abs(item.value - other.value) <= 1e-4 for other in kept):
                kept.append(item)
        return kept

    kalpha1 = distinct([item for item in stated if item.line == "a1"])
    plain = distinct([item for item in stated if item.line in (None, "a")])
    others = [item for item in stated if item.line not in ("a1", None, "a")]
    chosen: _Stated | None = None
    if kalpha1:
        if len(kalpha1) > 1:
            values = (f"K-alpha1 {i.value:g} A (line {i.line_number})" for i in kalpha1)
            raise ambiguous(" and ".join(values))
        chosen = kalpha1[0]
        both = any(i.line == "a2" for i in stated)
        note = " (K-alpha1; K-alpha2 also listed)" if both else " (K-alpha1)"
    elif plain:
        if len(plain) > 1:
            raise ambiguous(" and ".join(f"{i.value:g} A (line {i.line_number})" for i in plain))
        chosen, note = plain[0], ""
    elif others:
        item = others[0]
        kind = {"a2": "K-alpha2", "b": "K-beta"}.get(item.line or "", item.line)
        raise ambiguous(
            f"line {item.line_number} gives only a {kind} wavelength ({item.value:g} A)"
        )
    symbols = sorted({symbol for symbol, _, _ in anodes})
    if len(symbols) > 1:
        raise ambiguous(f"it names the anodes {', '.join(symbols)}")
    if chosen is not None:
        if symbols:
            reference = ANODE_KALPHA1[symbols[0]]
            if abs(chosen.value - reference) > 0.02:
                raise ambiguous(
                    f"line {chosen.line_number} states {chosen.value:g} A but the anode is "
                    f"{symbols[0]} (K-alpha1 {reference:g} A)"
                )
        logger.warning(
            "%s: using the wavelength %.6g A stated on line %d (%s%s): %r; "
            "pass wavelength= to override",
            path,
            chosen.value,
            chosen.line_number,
            chosen.how,
            note,
            chosen.text,
        )
        return chosen.value
    if symbols:
        symbol, line_number, text = next(item for item in anodes if item[0] == symbols[0])
        value = ANODE_KALPHA1[symbol]
        logger.warning(
            "%s: using the wavelength %.6g A, %s K-alpha1, for the anode named on line %d: %r; "
            "pass wavelength= to override",
            path,
            value,
            symbol,
            line_number,
            text,
        )
        return value
    if unclear:
        clause, line_number = unclear[0]
        raise ambiguous(f"line {line_number}: {clause}")
    return None


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
    data = path.read_bytes()
    for magic, name, decompress in _COMPRESSED:
        if data.startswith(magic):
            try:
                data = decompress(data)
            except (OSError, EOFError, ValueError, lzma.LZMAError) as error:
                raise ValueError(f"{path}: cannot decompress this {name} file: {error}") from None
            logger.info("%s: %s-compressed, read decompressed", path, name)
            break
    if data.startswith(b"PK\x03\x04"):
        raise ValueError(f"{path} is a zip archive, not a text pattern: extract it first")
    bom_encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), None)
    if bom_encoding is not None:
        data = data[len(next(bom for bom, enc in _BOMS if enc == bom_encoding)) :]
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
        encoding = bom_encoding
    elif encoding is None:
        # Drop leading NULs in pairs: an odd one may be the high byte of big-endian UTF-16 text.
        padding = len(data) - len(data.lstrip(b"\x00"))
        body = data[padding // 2 * 2 :]
        sample = body[:4096]
        if len(sample) >= 4 and sample.count(b"\x00") * 3 >= len(sample):
            odd = sample[1::2].count(b"\x00")
            even = sample[0::2].count(b"\x00")
            encoding = "utf-16-le" if odd > even else "utf-16-be"
            data = body
            logger.warning("%s: no byte-order mark but NUL bytes: reading it as %s", path, encoding)
        else:
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
                encoding = "latin-1"
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
    # ase reads a limit of 0 or below as "no limit": that would return every row.
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0
    ):
        raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}")
    if limit == 0:
        return
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
    select_kwargs = {} if limit is None else {"limit": int(limit)}
    for row in database.select(selection, **select_kwargs):
        where = f"{path}: row {row.id}"
        d_spacing = _parse_number_list(_row_value(row, "latt_dis"), "latt_dis", where)
        intensity = _parse_number_list(_row_value(row, "intensity"), "intensity", where)
        if d_spacing.shape != intensity.shape:
            raise ValueError(
                f"{where}: latt_dis has {d_spacing.size} values but intensity has {intensity.size}"
            )
        if np.any(d_spacing <= 0):
            raise ValueError(f"{where}: latt_dis has non-positive d-spacings")
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
        two_theta = bragg_two_theta(d_spacing, wavelength)
        keep = np.isfinite(two_theta)
        two_theta = two_theta[keep]
        order = np.argsort(two_theta, kind="stable")
        formula = _row_value(row, "chem_form")
        yield SimXRDRecord(
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
    with path.open("rb") as file:
        head = file.read(6)
    # Check the magic first: np.load reads anything else as a pickle ("holds pickled objects").
    if not head.startswith((b"\x93NUMPY", b"PK")):
        what = "it is empty" if not head else f"it starts with {head!r}"
        raise ValueError(f"{path} is not a .npy or .npz file ({what})")
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
    content: Any = loaded
    if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ():
        content = loaded.item()
    if not isinstance(content, dict):
        raise ValueError(
            f"{path}: expected a dict with {_INTENSITY_KEYS[0]!r} (or {_INTENSITY_KEYS[1]!r}) and "
            f"'labels230', got {type(content).__name__}"
        )
    intensity_key = next((k for k in _INTENSITY_KEYS if k in content), None)
    label_key = next((k for k in _LABEL_KEYS if k in content), None)
    if intensity_key is None or label_key is None:
        raise ValueError(
            f"{path}: need keys {' or '.join(map(repr, _INTENSITY_KEYS))} and 'labels230'; "
            f"found {sorted(map(str, content))}"
        )
    intensity = np.asarray(content[intensity_key])
    if not np.issubdtype(intensity.dtype, np.floating):
        intensity = intensity.astype(np.float32)
    if intensity.ndim != 2 or intensity.shape[1] != grid.num_points:
        raise ValueError(
            f"{path}: {intensity_key!r} must be [N, {grid.num_points}] (the grid's points), "
            f"got shape {intensity.shape}"
        )
    raw_labels = np.asarray(content[label_key]).reshape(-1)
    if raw_labels.shape[0] != intensity.shape[0]:
        raise ValueError(f"{path}: {raw_labels.shape[0]} labels for {intensity.shape[0]} patterns")
    if not np.issubdtype(raw_labels.dtype, np.number) or np.any(raw_labels != np.round(raw_labels)):
        raise ValueError(f"{path}: 'labels230' must be integers, got dtype {raw_labels.dtype}")
    labels = raw_labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_SPACE_GROUPS):
        raise ValueError(
            f"{path}: 'labels230' must be 0-based labels in 0..229, "
            f"got range {labels.min()}..{labels.max()}"
        )
    return ReferenceArrays(intensity=intensity, labels=labels, grid=grid, source=str(path))
