"""The wavelength a pattern file's header or comments state: statements with units, unitless
values after a keyword, K-alpha lines and named anodes, resolved to one value or refused as
ambiguous (see :func:`~physmoe.data.readers.read_pattern`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .grid import CU_KA1

logger = logging.getLogger(__name__)

__all__ = ["ANODE_KALPHA1"]

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
        readings, problems = _clause_wavelengths(clause, labels, keywords, line_unit)
        stated += [_Stated(value, label, line_number, line, how) for value, label, how in readings]
        if not readings and keywords and not anode_names:
            unclear += problems or [f"{clause.strip()!r} gives no value with a unit"]
    return stated, anodes, unclear


def _clause_wavelengths(
    clause: str, labels: list[tuple], keywords: list[tuple], line_unit: str | None
) -> tuple[list[tuple[float, str | None, str]], list[str]]:
    """The wavelengths one clause states, as ``(Angstrom, line label, how it was read)``, and
    why its other tagged numbers are no wavelengths; ``labels`` and ``keywords`` are the spans
    (first item) of its line names and wavelength keywords, ``line_unit`` the unit the line
    declares for all its values."""
    masked = _masked_clause(clause, labels + keywords)
    readings, problems, previous_end = [], [], 0
    for number in _NUMBER.finditer(masked):
        unit_match = _UNIT_AFTER.match(masked, number.end())
        first, last = previous_end, number.start()
        previous_end = unit_match.end() if unit_match else number.end()
        before = [item for item in labels if first <= item[0][0] < last]
        named = [item for item in keywords if first <= item[0][0] < last]
        label = _number_label(clause, before, named, previous_end)
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
        angstrom, how = _in_angstrom(clause, value, unit, tagged)
        if angstrom is not None:
            readings.append((angstrom, label, how))
        elif how:
            problems.append(how)
    return readings, problems


def _masked_clause(clause: str, names: list[tuple]) -> str:
    """``clause`` with the keywords and line names (``"Ka1"``, ``"lambda1"``: spans first in
    ``names``) hidden from the number search, and everything from a ratio on blanked."""
    masked = list(clause)
    for (start, end), *_ in names:
        masked[start:end] = "\0" * (end - start)
    ratio = _RATIO.search(clause)
    if ratio:
        masked[ratio.start() :] = " " * (len(clause) - ratio.start())
    return "".join(masked)


def _number_label(clause: str, before: list[tuple], named: list[tuple], end: int) -> str | None:
    """The emission line of the number ending (with its unit) at ``end``: the last line name
    before it, else a numbered keyword's (lambda1 / lambda2), else a line name right after it."""
    if before:
        return before[-1][1]
    if named and named[-1][1]:
        return "a" + named[-1][1]
    # "1.54056 Å (Kα1)": a line name right after the value
    after = _LINE.search(clause, end)
    gap = clause[end : after.start()] if after else ""
    if after and not gap.strip(" ()[]:="):
        return _line_label(after)
    return None


def _in_angstrom(
    clause: str, value: float, unit: str | None, tagged: bool
) -> tuple[float | None, str]:
    """A number of ``clause`` in Angstrom and how it was read; or None and why it is no
    wavelength (empty when the number is not about the wavelength at all)."""
    if unit is not None:
        angstrom = value * _TO_ANGSTROM.get(unit.lower(), 1.0)
        converted = " converted to Angstrom" if unit.lower() in _TO_ANGSTROM else ""
        how = f"{value:g} {unit}{converted}"
    elif tagged and _UNITLESS_ANGSTROM[0] <= value <= _UNITLESS_ANGSTROM[1]:
        angstrom, how = value, f"{value:g} without a unit, taken as Angstrom"
    elif tagged:
        return None, f"{clause.strip()!r}: {value:g} without a unit (Angstrom or nm?)"
    else:
        return None, ""
    if not _PLAUSIBLE_WAVELENGTH[0] <= angstrom <= _PLAUSIBLE_WAVELENGTH[1]:
        return None, f"{clause.strip()!r}: {how} is no X-ray wavelength"
    return angstrom, how


_ADVICE = (
    "pass the wavelength explicitly (physmoe predict --wavelength, read_pattern(wavelength=...))"
)


def _ambiguous(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path}: ambiguous wavelength in the header: {reason}; {_ADVICE}")


def _distinct(values: list[_Stated]) -> list[_Stated]:
    """``values`` without those within 1e-4 A of an earlier one."""
    kept: list[_Stated] = []
    for item in values:
        if not any(abs(item.value - other.value) <= 1e-4 for other in kept):
            kept.append(item)
    return kept


def _resolve_header_wavelength(
    path: Path,
    stated: list[_Stated],
    anodes: list[tuple[str, int, str]],
    unclear: list[tuple[str, int]],
) -> float | None:
    """The wavelength a file's header states, following :func:`read_pattern`'s rules (warns
    which value it used), None when the header says nothing about it, ValueError if ambiguous."""
    chosen, note = _chosen_statement(path, stated)
    symbols = sorted({symbol for symbol, _, _ in anodes})
    if len(symbols) > 1:
        raise _ambiguous(path, f"it names the anodes {', '.join(symbols)}")
    if chosen is not None:
        return _stated_wavelength(path, chosen, note, symbols[0] if symbols else None)
    if symbols:
        return _anode_wavelength(path, anodes, symbols[0])
    if unclear:
        clause, line_number = unclear[0]
        raise _ambiguous(path, f"line {line_number}: {clause}")
    return None


def _chosen_statement(path: Path, stated: list[_Stated]) -> tuple[_Stated | None, str]:
    """The one wavelength statement to use (a K-alpha1 value before a plain one) and a note on
    its line for the log, or None when there is none; ValueError when it is ambiguous or the
    header gives only a K-alpha2 or K-beta value."""
    kalpha1 = _distinct([item for item in stated if item.line == "a1"])
    plain = _distinct([item for item in stated if item.line in (None, "a")])
    others = [item for item in stated if item.line not in ("a1", None, "a")]
    if kalpha1:
        if len(kalpha1) > 1:
            values = (f"K-alpha1 {i.value:g} A (line {i.line_number})" for i in kalpha1)
            raise _ambiguous(path, " and ".join(values))
        both = any(i.line == "a2" for i in stated)
        return kalpha1[0], " (K-alpha1; K-alpha2 also listed)" if both else " (K-alpha1)"
    if plain:
        if len(plain) > 1:
            values = (f"{i.value:g} A (line {i.line_number})" for i in plain)
            raise _ambiguous(path, " and ".join(values))
        return plain[0], ""
    if others:
        item = others[0]
        kind = {"a2": "K-alpha2", "b": "K-beta"}.get(item.line or "", item.line)
        raise _ambiguous(
            path, f"line {item.line_number} gives only a {kind} wavelength ({item.value:g} A)"
        )
    return None, ""


def _stated_wavelength(path: Path, chosen: _Stated, note: str, anode: str | None) -> float:
    """The stated value, after checking it against the anode's K-alpha1 when one is named."""
    if anode is not None:
        reference = ANODE_KALPHA1[anode]
        if abs(chosen.value - reference) > 0.02:
            raise _ambiguous(
                path,
                f"line {chosen.line_number} states {chosen.value:g} A but the anode is "
                f"{anode} (K-alpha1 {reference:g} A)",
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


def _anode_wavelength(path: Path, anodes: list[tuple[str, int, str]], symbol: str) -> float:
    """The K-alpha1 wavelength of the only anode the header names."""
    _, line_number, text = next(item for item in anodes if item[0] == symbol)
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
