"""Collect real crystal structures that ship inside installed pip packages (no download).

Writes a compact structure archive (``physmoe.data.embedded.write_structure_archive`` format,
spglib's standardised conventional cells) and a sources table:

* ``src/physmoe/resources/real_structures.npz``: read with
  ``physmoe.data.embedded.read_structure_archive(path)``; ``space_groups`` = spglib's group at
  ``DEFAULT_SYMPREC``, ``requested_space_groups`` = the group declared in the file (0 = unknown).
* ``src/physmoe/resources/real_structures_sources.csv``: one row per structure, same order:
  ``id, formula, space_group, crystal_system, num_sites, category, source_package,
  package_version, package_licence, path, origin``.

These structures are for testing and comparison only, never for training.

Sources (in priority order for deduplication; experimental data first):

* ``ase``: ``ase/test/testdata/minerals/cod_*.cif`` (COD, CC0), ``ase.collections.dcdft``
  (elemental crystals of the Delta test), ``ase.data.reference_states`` (elements, via
  ``ase.build.bulk``).
* ``pyxtal``: ``pyxtal/database/cifs`` (AMCSD, COD, Materials Project, JARVIS, CSD files; pyxtal's
  own random test crystals are excluded), and the CSD molecular crystals in
  ``pyxtal/database/test.db`` / ``mech.db`` (ASE databases).
* ``pyocse``: ``pyocse/data/*.cif`` (CSD molecular crystals).
* ``pymatgen``: ``pymatgen/analysis/prototypes/aflow_prototypes.json.gz`` (the 288 structures
  of the AFLOW Library of Crystallographic Prototypes) and ``pymatgen/util/structures/*.json``.
* ``--extra DIR PACKAGE LICENCE``: any folder of CIFs (e.g. an unpacked wheel).

Kept: ordered structures (all occupancies 1) that ``physmoe.data.structures.as_crystal`` reads,
with no two sites closer than 0.5 A and at most ``--max-sites`` sites in the conventional cell.
Deduplicated on (reduced formula, spglib space group, volume per atom within 10%).

Excluded by default (``--exclude-origin``): structures from the CSD (its terms restrict
redistribution, whatever the licence of the package that carries them) and from the AMCSD (no
explicit licence).

Usage::

    .venv/bin/python scripts/collect_real_structures.py            # writes the two files
    .venv/bin/python scripts/collect_real_structures.py --exclude-origin CSD --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.metadata
import importlib.util
import json
import logging
import math
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_realism import pair_distances  # noqa: E402  (helper shared with the comparison)
from physmoe.crystallography import CRYSTAL_SYSTEMS, crystal_system_index
from physmoe.data.embedded import read_structure_archive, write_structure_archive
from physmoe.data.structures import Crystal, as_crystal
from physmoe.data.symmetry import DEFAULT_SYMPREC, standardize_crystal

logger = logging.getLogger("collect_real_structures")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = ROOT / "src" / "physmoe" / "resources"
ARCHIVE_NAME = "real_structures.npz"
SOURCES_NAME = "real_structures_sources.csv"
CSV_FIELDS = (
    "id",
    "formula",
    "space_group",
    "crystal_system",
    "num_sites",
    "category",
    "source_package",
    "package_version",
    "package_licence",
    "path",
    "origin",
)
MIN_SITE_DISTANCE = 0.5  # Angstrom; closer sites mean split (disordered) positions or errors
VOLUME_TOLERANCE = 0.10  # relative volume-per-atom tolerance of the duplicate test

# Files in pyxtal/database/cifs and where their data come from. Files not listed are skipped
# (pyxtal's own random test crystals: 0-G62, dist_6_*, sim-*, bug*, LiCs, aspirin-c, ...).
_PYXTAL_CIF_ORIGIN = {
    **{
        name: "AMCSD (American Mineralogist Crystal Structure Database)"
        for name in (
            "Fd3.cif",
            "Fd3m.cif",
            "I4_132.cif",
            "P3_112.cif",
            "P4_332.cif",
            "P6_422.cif",
            "Pm3.cif",
            "R-3.cif",
            "R-3c.cif",
            "R32.cif",
            "ht_quartz.cif",
        )
    },
    "NaCl.cif": "COD 1000041 (CC0)",
    **{
        name: "Materials Project / literature (pymatgen-written CIF)"
        for name in (
            "Al2SiO5_mp-4753_symmetrized.cif",
            "BTO-Amm2.cif",
            "GeF2.cif",
            "MPWO.cif",
            "NbO2.cif",
            "PPO.cif",
            "PVO.cif",
            "ht_cristobalite.cif",
            "lt_cristobalite.cif",
            "lt_quartz.cif",
            "ice.cif",
        )
    },
    **{
        f"JVASP-{n}.cif": "JARVIS-DFT (NIST), DFT-relaxed"
        for n in (
            119184,
            119739,
            141590,
            25063,
            28565,
            28634,
            36885,
            37583,
            42300,
            43424,
            45907,
            47532,
            50935,
            59313,
            62168,
            85365,
            86205,
            97915,
            98225,
        )
    },
    **{
        name: "literature (VESTA/IZA export)"
        for name in ("BTO.cif", "FAU.cif", "NaSb3F10.cif", "ht_KNbBO.cif", "lt_KNbBO.cif")
    },
    **{
        name: "unspecified, known phase (VASP POSCAR)"
        for name in ("Fd3.vasp", "I41amd.vasp", "P4nmm.vasp", "Pmmn.vasp", "Pn3.vasp", "Pn3m.vasp")
    },
    **{
        name: "CSD (CCDC)"
        for name in (
            "ACBNZA01.cif",
            "AXOSOW01.cif",
            "GUMMUW.cif",
            "HAHCOI.cif",
            "JAPWIH.cif",
            "LAGNAL.cif",
            "LUFHAW.cif",
            "MERQIM.cif",
            "PAHYON01.cif",
            "TMPPIO03.cif",
            "WEXBOS.cif",
            "YICMOP.cif",
            "anthracene.cif",
            "aspirin.cif",
            "benzene.cif",
            "coumarin.cif",
            "naphthalene.cif",
            "resorcinol.cif",
            "gdh.cif",
            "xxvi.cif",
        )
    },
}
# pymatgen/util/structures: test structures that are not real bulk crystals.
_PYMATGEN_SKIP = {"Si_SiO2_Interface.json", "He_BCC.json"}


@dataclass
class Candidate:
    """One structure as found in a package, before checks."""

    name: str
    load: Callable[[], Crystal]
    source_package: str
    path: str
    origin: str
    declared_space_group: int | None = None


@dataclass
class Kept:
    id: str
    crystal: Crystal  # standardised conventional cell
    space_group: int
    declared_space_group: int | None
    formula: str
    category: str
    candidate: Candidate


# --------------------------------------------------------------------------- packages


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        logger.warning("package %s is not installed: skipped", name)
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _package_info(name: str) -> tuple[str, str]:
    """(version, licence expression) of an installed distribution."""
    try:
        meta = importlib.metadata.metadata(name)
    except importlib.metadata.PackageNotFoundError:
        return "", ""
    licence = meta.get("License-Expression") or meta.get("License") or ""
    if not licence or len(licence) > 40:
        classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
        licence = classifiers[0].split("::")[-1].strip() if classifiers else licence[:40]
    return meta.get("Version", ""), licence


def _site_relpath(path: Path) -> str:
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return str(path)


def _from_pymatgen_dict(data: dict) -> Crystal:
    from pymatgen.core import Structure

    return as_crystal(Structure.from_dict(data))


def _cif_candidate(path: Path, package: str, origin: str) -> Candidate:
    return Candidate(path.stem, lambda: as_crystal(path), package, _site_relpath(path), origin)


def _ase_candidates() -> Iterator[Candidate]:
    base = _package_dir("ase")
    if base is None:
        return
    for path in sorted((base / "test" / "testdata" / "minerals").glob("*.cif")):
        code = path.stem.split("_")[-1]
        yield _cif_candidate(path, "ase", f"COD {code} (CC0)")
    dcdft = base / "collections" / "dcdft.json"
    if dcdft.exists():
        from ase.db import connect

        for row in connect(str(dcdft)).select():
            yield Candidate(
                f"dcdft-{row.formula}",
                lambda row=row: as_crystal(row.toatoms()),
                "ase",
                f"{_site_relpath(dcdft)}#id={row.id}",
                "Delta test elemental crystals (Lejaeghere et al. 2016), DFT-relaxed",
            )
    from ase.build import bulk
    from ase.data import chemical_symbols, reference_states

    for z, state in enumerate(reference_states):
        if not state or state.get("symmetry") not in {"fcc", "bcc", "hcp", "diamond", "sc"}:
            continue
        symbol = chemical_symbols[z]
        yield Candidate(
            f"refstate-{symbol}",
            lambda symbol=symbol: as_crystal(bulk(symbol, cubic=False)),
            "ase",
            f"ase/data/__init__.py#reference_states[{z}]",
            f"ase reference state ({state['symmetry']}, Kittel lattice constant)",
        )


def _pyxtal_candidates() -> Iterator[Candidate]:
    base = _package_dir("pyxtal")
    if base is None:
        return
    folder = base / "database" / "cifs"
    for path in sorted(folder.iterdir()):
        origin = _PYXTAL_CIF_ORIGIN.get(path.name)
        if origin is None:
            continue
        if path.suffix == ".vasp":

            def load(path=path) -> Crystal:
                from ase.io import read

                return as_crystal(read(str(path), format="vasp"))

            yield Candidate(path.stem, load, "pyxtal", _site_relpath(path), origin)
        else:
            yield _cif_candidate(path, "pyxtal", origin)
    from ase.db import connect

    for db_name in ("test.db", "mech.db"):
        db_path = base / "database" / db_name
        if not db_path.exists():
            continue
        for row in connect(str(db_path)).select():
            code = row.key_value_pairs.get("csd_code", str(row.id))
            yield Candidate(
                code,
                lambda row=row: as_crystal(row.toatoms()),
                "pyxtal",
                f"{_site_relpath(db_path)}#csd_code={code}",
                "CSD (CCDC)",
                row.key_value_pairs.get("spg_num"),
            )


def _pyocse_candidates() -> Iterator[Candidate]:
    base = _package_dir("pyocse")
    if base is None:
        return
    for path in sorted((base / "data").glob("*.cif")):
        yield _cif_candidate(path, "pyocse", "CSD (CCDC)")


def _pymatgen_candidates() -> Iterator[Candidate]:
    base = _package_dir("pymatgen")
    if base is None:
        return
    aflow = base / "analysis" / "prototypes" / "aflow_prototypes.json.gz"
    if aflow.exists():
        with gzip.open(aflow, "rt") as handle:
            entries = json.load(handle)
        for entry in entries:
            tags = entry["tags"]
            label = tags.get("aflow", "")
            match = re.match(r"^[^_]+_[a-zA-Z]+\d+_(\d+)_", label)
            yield Candidate(
                f"aflow-{label}",
                lambda snl=entry["snl"]: _from_pymatgen_dict(snl),
                "pymatgen",
                f"{_site_relpath(aflow)}#aflow={label}",
                "AFLOW Library of Crystallographic Prototypes"
                + (f" ({tags['mineral']})" if tags.get("mineral") else ""),
                int(match.group(1)) if match else None,
            )
    for path in sorted((base / "util" / "structures").glob("*.json")):
        if path.name in _PYMATGEN_SKIP:
            continue
        yield Candidate(
            path.stem,
            lambda path=path: _from_pymatgen_dict(json.loads(path.read_text())),
            "pymatgen",
            _site_relpath(path),
            "Materials Project (pymatgen test structure)",
        )


def _extra_candidates(folder: Path, package: str) -> Iterator[Candidate]:
    for path in sorted(folder.glob("*.cif")):
        yield _cif_candidate(path, package, f"CIF shipped in {package}")


# --------------------------------------------------------------------------- checks


def reduced_formula(species: list[str]) -> str:
    """Alphabetical reduced formula, e.g. ``["O", "Si", "O"]`` -> ``"O2Si"``."""
    counts = Counter(species)
    divisor = reduce(math.gcd, counts.values())
    return "".join(
        f"{el}{counts[el] // divisor if counts[el] // divisor > 1 else ''}" for el in sorted(counts)
    )


def min_site_distance(crystal: Crystal) -> float:
    """Smallest distance (A) between two sites (or a site and its own image), periodic images
    included."""
    return float(pair_distances(crystal.lattice, crystal.frac_coords).min())


def _category(species: list[str]) -> str:
    elements = set(species)
    return "molecular" if {"C", "H"} <= elements else "inorganic"


def check_candidate(candidate: Candidate, max_sites: int) -> tuple[Kept | None, str]:
    """Kept structure, or None and the reason it was dropped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crystal = candidate.load()
    except Exception as error:  # noqa: BLE001 - any reader failure drops the file
        return None, f"unreadable ({type(error).__name__}: {str(error)[:80]})"
    if np.any(np.abs(crystal.occupancies - 1.0) > 1e-4):
        return None, "partial occupancies"
    try:
        space_group, standard = standardize_crystal(crystal, symprec=DEFAULT_SYMPREC)
    except ValueError as error:
        return None, f"spglib failed ({error})"
    if len(standard) > max_sites:
        return None, f"{len(standard)} sites > {max_sites}"
    distance = min_site_distance(standard)
    if distance < MIN_SITE_DISTANCE:
        return None, f"sites {distance:.2f} A apart (disorder or error)"
    species = list(standard.species)
    kept = Kept(
        id=f"{candidate.source_package}:{candidate.name}",
        crystal=standard,
        space_group=space_group,
        declared_space_group=candidate.declared_space_group or crystal.space_group,
        formula=reduced_formula(species),
        category=_category(species),
        candidate=candidate,
    )
    return kept, "ok"


def _reason_key(reason: str) -> str:
    if "sites >" in reason:
        return "too many sites"
    if " A apart" in reason:
        return "sites too close"
    return reason.split(" (")[0]


def is_duplicate(kept: Kept, others: list[Kept]) -> Kept | None:
    volume = kept.crystal.volume / len(kept.crystal)
    for other in others:
        if other.formula != kept.formula or other.space_group != kept.space_group:
            continue
        other_volume = other.crystal.volume / len(other.crystal)
        if abs(volume - other_volume) <= VOLUME_TOLERANCE * other_volume:
            return other
    return None


def collect(
    max_sites: int = 400,
    exclude_origins: tuple[str, ...] = (),
    extra: list[tuple[Path, str, str]] | None = None,
) -> tuple[list[Kept], dict[str, tuple[str, str]], Counter]:
    """All kept, deduplicated structures; package -> (version, licence); drop reasons."""
    generators = [_ase_candidates(), _pyxtal_candidates(), _pyocse_candidates()]
    generators.append(_pymatgen_candidates())
    packages = {name: _package_info(name) for name in ("ase", "pyxtal", "pyocse", "pymatgen")}
    for folder, package, licence in extra or []:
        generators.append(_extra_candidates(folder, package))
        packages[package] = (_package_info(package)[0], licence)
    kept: list[Kept] = []
    reasons: Counter = Counter()
    seen_ids: set[str] = set()
    for generator in generators:
        for candidate in generator:
            if any(token in candidate.origin for token in exclude_origins):
                reasons["excluded origin"] += 1
                continue
            result, reason = check_candidate(candidate, max_sites)
            if result is None:
                logger.info("drop %s:%s: %s", candidate.source_package, candidate.name, reason)
                reasons[_reason_key(reason)] += 1
                continue
            duplicate = is_duplicate(result, kept)
            if duplicate is not None:
                logger.info("duplicate %s of %s", result.id, duplicate.id)
                reasons["duplicate"] += 1
                continue
            while result.id in seen_ids:
                result.id += "+"
            seen_ids.add(result.id)
            kept.append(result)
    return kept, packages, reasons


def write_outputs(
    kept: list[Kept], packages: dict[str, tuple[str, str]], out_dir: Path
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = write_structure_archive(
        out_dir / ARCHIVE_NAME,
        [k.id for k in kept],
        [k.crystal for k in kept],
        [k.declared_space_group for k in kept],
        [k.space_group for k in kept],
    )
    sources = out_dir / SOURCES_NAME
    with sources.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for k in kept:
            version, licence = packages.get(k.candidate.source_package, ("", ""))
            writer.writerow(
                {
                    "id": k.id,
                    "formula": k.formula,
                    "space_group": k.space_group,
                    "crystal_system": CRYSTAL_SYSTEMS[crystal_system_index(k.space_group)],
                    "num_sites": len(k.crystal),
                    "category": k.category,
                    "source_package": k.candidate.source_package,
                    "package_version": version,
                    "package_licence": licence,
                    "path": k.candidate.path,
                    "origin": k.candidate.origin,
                }
            )
    return archive, sources


def summary_table(kept: list[Kept]) -> str:
    """Counts per crystal system (rows) and category / source package (columns)."""
    packages = sorted({k.candidate.source_package for k in kept})
    header = ["crystal system", "inorganic", "molecular", *packages, "total"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for index, system in enumerate(CRYSTAL_SYSTEMS):
        rows = [k for k in kept if crystal_system_index(k.space_group) == index]
        cells = [
            system,
            sum(k.category == "inorganic" for k in rows),
            sum(k.category == "molecular" for k in rows),
            *[sum(k.candidate.source_package == p for k in rows) for p in packages],
            len(rows),
        ]
        lines.append(" | ".join(str(c) for c in cells))
    lines.append(
        f"total | {sum(k.category == 'inorganic' for k in kept)} | "
        f"{sum(k.category == 'molecular' for k in kept)} | "
        + " | ".join(str(sum(k.candidate.source_package == p for k in kept)) for p in packages)
        + f" | {len(kept)}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument(
        "--max-sites", type=int, default=400, help="largest conventional cell kept (sites)"
    )
    parser.add_argument(
        "--exclude-origin",
        action="append",
        default=None,
        help="drop structures whose origin contains this text (repeatable; "
        "default: CSD and AMCSD, whose terms do not clearly allow "
        "redistribution)",
    )
    parser.add_argument(
        "--extra",
        nargs=3,
        action="append",
        default=[],
        metavar=("DIR", "PACKAGE", "LICENCE"),
        help="also read the CIFs in DIR, recorded as PACKAGE with LICENCE",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every dropped file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    logging.getLogger("physmoe").setLevel(logging.ERROR)
    extra = [(Path(d), p, lic) for d, p, lic in args.extra]
    excluded = ("CSD", "AMCSD") if args.exclude_origin is None else tuple(args.exclude_origin)
    kept, packages, reasons = collect(args.max_sites, excluded, extra)
    archive, sources = write_outputs(kept, packages, args.out_dir)
    read_structure_archive(archive)  # round-trip check
    print(summary_table(kept))
    print("dropped:", dict(reasons))
    print("packages:", {p: f"{v} ({lic})" for p, (v, lic) in packages.items()})
    print(f"wrote {archive} ({archive.stat().st_size / 1e3:.0f} kB) and {sources}")


if __name__ == "__main__":
    main()
