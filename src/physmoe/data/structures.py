"""A minimal crystal-structure record that the simulator and the datasets share.

:class:`Crystal` holds exactly what a powder pattern needs (cell, sites, occupancies,
isotropic displacement) and nothing else, so datasets can store structures as plain columns and
the simulator needs no optional dependency. :func:`as_crystal` converts the structure types users
have (pymatgen ``Structure``, ASE ``Atoms``, gemmi ``SmallStructure``, a CIF path).

Conventions shared by all conversions:

* Every site of the unit cell is listed (no symmetry expansion is left to do). A disordered
  site becomes one :class:`Crystal` site per species, each with its own occupancy.
* Ions are stored as their neutral element (``"Fe3+"`` -> ``"Fe"``): the simulator uses neutral
  atom form factors.
* ``b_iso`` is the isotropic Debye-Waller factor B = 8 pi^2 U_iso in Angstrom^2.
"""

from __future__ import annotations

import codecs
import functools
import io
import logging
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

__all__ = ["Crystal", "as_crystal", "element_symbol", "lattice_matrix"]

logger = logging.getLogger(__name__)

_ELEMENT_PREFIX = re.compile(r"^\s*([A-Za-z]{1,2})")


@functools.lru_cache(maxsize=512)
def element_symbol(name: str) -> str:
    """Canonical element symbol of a species name: ``"Fe3+"``, ``"FE"``, ``"O2-"`` -> ``"Fe"``,
    ``"Fe"``, ``"O"``.

    Charges, oxidation states and trailing digits are dropped (ions are treated as neutral atoms).
    Deuterium stays ``"D"`` (gemmi knows it, with hydrogen's form factor).

    Raises:
        ValueError: ``name`` does not start with a known element symbol (``"X"``, ``"Va"``, ...).
    """
    match = _ELEMENT_PREFIX.match(str(name))
    if match is not None:
        letters = match.group(1)
        # "Os" vs "O" + "s...": try the two-letter symbol first, then the one-letter one only when
        # the second letter is not part of the symbol by case ("Ow" is unusual; "OW" is not).
        candidates = [letters[0].upper() + letters[1:].lower()]
        if len(letters) == 2 and not letters[1].islower():
            candidates.append(letters[0].upper())
        for candidate in candidates:
            element = gemmi.Element(candidate)
            if element.atomic_number > 0 and element.name == candidate:
                return candidate
    raise ValueError(f"unknown chemical element in species name {name!r}")


def lattice_matrix(
    a: float, b: float, c: float, alpha: float, beta: float, gamma: float
) -> np.ndarray:
    """Lattice vectors as rows ``[3, 3]`` (Angstrom) from cell lengths and angles (degrees).

    Convention (as pymatgen's ``Lattice.from_parameters``): ``c`` along z, ``a`` in the xz plane.
    """
    for name, value in zip("abc", (a, b, c), strict=True):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"cell length {name} must be positive, got {value}")
    al, be, ga = np.radians([alpha, beta, gamma])
    cos_al, cos_be, cos_ga = np.cos([al, be, ga])
    sin_al, sin_be = np.sin([al, be])
    val = (cos_al * cos_be - cos_ga) / (sin_al * sin_be)
    if not -1.0 <= val <= 1.0:
        raise ValueError(f"cell angles ({alpha}, {beta}, {gamma}) do not form a valid cell")
    gamma_star = math.acos(val)
    vector_a = [a * sin_be, 0.0, a * cos_be]
    vector_b = [-b * sin_al * math.cos(gamma_star), b * sin_al * math.sin(gamma_star), b * cos_al]
    vector_c = [0.0, 0.0, float(c)]
    return np.array([vector_a, vector_b, vector_c], dtype=np.float64)


@dataclass
class Crystal:
    """A crystal structure: cell and the full list of sites in it (no symmetry expansion needed).

    Attributes:
        lattice: Lattice vectors as rows, float64 ``[3, 3]``, Angstrom.
        species: Element symbol of every site (``"Si"``, ``"O"``; charges are ignored), ``N`` long.
        frac_coords: Fractional coordinates, float64 ``[N, 3]``.
        occupancies: Site occupancies in (0, 1], float64 ``[N]`` (default 1).
        b_iso: Isotropic Debye-Waller factors B in Angstrom^2, float64 ``[N]`` (default 0).
        space_group: International number 1..230 if known (not needed for simulation).
    """

    lattice: np.ndarray
    species: Sequence[str]
    frac_coords: np.ndarray
    occupancies: np.ndarray | None = None
    b_iso: np.ndarray | None = None
    space_group: int | None = None

    def __post_init__(self) -> None:
        self.lattice = np.asarray(self.lattice, dtype=np.float64)
        self.frac_coords = np.asarray(self.frac_coords, dtype=np.float64).reshape(-1, 3)
        self.species = [element_symbol(s) for s in self.species]
        n = len(self.species)
        self.occupancies = (
            np.ones(n)
            if self.occupancies is None
            else np.asarray(self.occupancies, dtype=np.float64)
        )
        self.b_iso = np.zeros(n) if self.b_iso is None else np.asarray(self.b_iso, dtype=np.float64)
        if self.lattice.shape != (3, 3):
            raise ValueError(f"lattice must be [3, 3], got shape {self.lattice.shape}")
        if not np.all(np.isfinite(self.lattice)):
            raise ValueError("lattice contains NaN or inf")
        if abs(np.linalg.det(self.lattice)) < 1e-6:
            raise ValueError("lattice vectors are linearly dependent (cell volume ~ 0)")
        if n == 0:
            raise ValueError("a crystal needs at least one site")
        for name, arr in (
            ("frac_coords", self.frac_coords),
            ("occupancies", self.occupancies),
            ("b_iso", self.b_iso),
        ):
            if arr.shape[0] != n:
                raise ValueError(f"{name} has {arr.shape[0]} rows but there are {n} species")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains NaN or inf")
        if np.any(self.occupancies <= 0) or np.any(self.occupancies > 1 + 1e-6):
            raise ValueError("occupancies must lie in (0, 1]")
        if np.any(self.b_iso < 0):
            raise ValueError(f"b_iso must be >= 0 Angstrom^2, got min {self.b_iso.min()}")
        if self.space_group is not None:
            if not 1 <= int(self.space_group) <= 230:
                raise ValueError(f"space_group must be in 1..230, got {self.space_group}")
            self.space_group = int(self.space_group)

    @classmethod
    def from_parameters(
        cls,
        lattice_parameters: Sequence[float],
        species: Sequence[str],
        frac_coords: np.ndarray,
        **kwargs,
    ) -> Crystal:
        """Build from ``(a, b, c, alpha, beta, gamma)`` (Angstrom, degrees)."""
        if len(lattice_parameters) != 6:
            raise ValueError(
                "need 6 lattice parameters (a, b, c, alpha, beta, gamma), "
                f"got {len(lattice_parameters)}"
            )
        return cls(lattice_matrix(*lattice_parameters), species, frac_coords, **kwargs)

    @property
    def lattice_parameters(self) -> tuple[float, float, float, float, float, float]:
        """``(a, b, c, alpha, beta, gamma)`` in Angstrom and degrees."""
        a, b, c = np.linalg.norm(self.lattice, axis=1)
        alpha = np.degrees(np.arccos(np.dot(self.lattice[1], self.lattice[2]) / (b * c)))
        beta = np.degrees(np.arccos(np.dot(self.lattice[0], self.lattice[2]) / (a * c)))
        gamma = np.degrees(np.arccos(np.dot(self.lattice[0], self.lattice[1]) / (a * b)))
        return (float(a), float(b), float(c), float(alpha), float(beta), float(gamma))

    @property
    def volume(self) -> float:
        """Cell volume in Angstrom^3."""
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def formula(self) -> str:
        """Cell composition: elements in alphabetical order with occupancy-weighted site counts,
        e.g. ``"O4Si2"`` for a cell holding two SiO2 units (not reduced)."""
        counts: dict[str, float] = {}
        for element, occ in zip(self.species, self.occupancies, strict=True):
            counts[element] = counts.get(element, 0.0) + float(occ)
        parts = []
        for element in sorted(counts):
            n = counts[element]
            parts.append(element if abs(n - 1) < 1e-6 else f"{element}{n:g}")
        return "".join(parts)

    def __len__(self) -> int:
        """Number of sites ``N``."""
        return len(self.species)

    # ----------------------------------------------------------------------------- conversions

    @classmethod
    def from_pymatgen(cls, structure: Any) -> Crystal:
        """From a pymatgen ``Structure`` / ``IStructure``.

        A disordered site (``{"Fe": 0.5, "Ni": 0.5}``) becomes one site per species with its
        occupancy. A site property ``"b_iso"`` (Angstrom^2), if present, gives the Debye-Waller
        factors. The space group is not detected (``space_group=None``).
        """
        species, coords, occupancies, b_iso = [], [], [], []
        for index, site in enumerate(structure):
            site_b = float(site.properties.get("b_iso", 0.0) or 0.0)
            for specie, amount in site.species.items():
                name = getattr(specie, "symbol", str(specie))
                try:
                    species.append(element_symbol(name))
                except ValueError as error:
                    raise ValueError(f"site {index} of the pymatgen structure: {error}") from None
                coords.append(site.frac_coords)
                occupancies.append(float(amount))
                b_iso.append(site_b)
        if not species:
            raise ValueError("the pymatgen structure has no sites")
        return cls(
            np.asarray(structure.lattice.matrix),
            species,
            np.asarray(coords),
            np.asarray(occupancies),
            np.asarray(b_iso),
        )

    def to_pymatgen(self) -> Any:
        """As a pymatgen ``Structure`` (pymatgen is imported lazily; it is an optional extra).

        Sites of different elements at the same position (within 1e-4 in fractional
        coordinates) with equal ``b_iso`` and total occupancy <= 1 are joined into one disordered
        site. ``b_iso`` is stored as the site property ``"b_iso"`` when any is non-zero.
        """
        from pymatgen.core import Lattice, Structure

        # Small O(N^2) grouping loop: conversions are for tests and oracles, not hot paths.
        groups: list[dict[str, Any]] = []
        for element, xyz, occ, b in zip(
            self.species, self.frac_coords, self.occupancies, self.b_iso, strict=True
        ):
            for group in groups:
                delta = xyz - group["xyz"]
                same_place = np.all(np.abs(delta - np.round(delta)) < 1e-4)
                if (
                    same_place
                    and group["b"] == b
                    and element not in group["composition"]
                    and group["total"] + occ <= 1 + 1e-6
                ):
                    group["composition"][element] = float(occ)
                    group["total"] += occ
                    break
            else:
                groups.append(
                    {
                        "xyz": xyz,
                        "b": float(b),
                        "composition": {element: float(occ)},
                        "total": float(occ),
                    }
                )
        site_properties = {"b_iso": [g["b"] for g in groups]} if np.any(self.b_iso > 0) else None
        return Structure(
            Lattice(self.lattice),
            [g["composition"] for g in groups],
            [g["xyz"] for g in groups],
            site_properties=site_properties,
        )

    def to_ase(self) -> Any:
        """As an ASE ``Atoms`` (ase is imported lazily; it is an optional extra), periodic, with
        per-atom arrays ``"occupancy"`` and ``"b_iso"`` (read back by :meth:`from_ase`) and the
        space group, if known, in ``atoms.info["spacegroup"]``."""
        from ase import Atoms

        atoms = Atoms(
            symbols=list(self.species),
            scaled_positions=self.frac_coords,
            cell=self.lattice,
            pbc=True,
        )
        atoms.set_array("occupancy", np.asarray(self.occupancies, dtype=np.float64))
        atoms.set_array("b_iso", np.asarray(self.b_iso, dtype=np.float64))
        if self.space_group is not None:
            atoms.info["spacegroup"] = int(self.space_group)
        return atoms

    @classmethod
    def from_ase(cls, atoms: Any) -> Crystal:
        """From an ASE ``Atoms`` with a three-dimensional cell.

        Occupancies come from a per-atom array ``atoms.arrays["occupancy"]`` if present, else
        from ASE's CIF convention ``atoms.info["occupancy"] = {str(kind): {symbol: occupancy}}``
        keyed by ``atoms.arrays["spacegroup_kinds"]`` (or the tags), where other species listed for
        the same kind become extra sites at the same position; otherwise 1. ``b_iso`` comes from
        ``atoms.arrays["b_iso"]`` if present. ``atoms.info["spacegroup"]`` (an ASE ``Spacegroup``
        or an int) gives the space group.
        """
        lattice = np.asarray(atoms.cell[:], dtype=np.float64)
        if lattice.shape != (3, 3) or abs(np.linalg.det(lattice)) < 1e-6:
            raise ValueError(
                "the ASE Atoms has no three-dimensional cell (set atoms.cell and pbc=True)"
            )
        if len(atoms) == 0:
            raise ValueError("the ASE Atoms has no atoms")
        symbols = list(atoms.get_chemical_symbols())
        coords = list(atoms.get_scaled_positions(wrap=True))
        b_iso = list(np.asarray(atoms.arrays.get("b_iso", np.zeros(len(atoms))), dtype=np.float64))
        if "occupancy" in atoms.arrays:
            occupancies = list(np.asarray(atoms.arrays["occupancy"], dtype=np.float64))
        else:
            occupancies = [1.0] * len(symbols)
            occupancy_info = atoms.info.get("occupancy")
            kinds = atoms.arrays.get("spacegroup_kinds", atoms.get_tags())
            if occupancy_info:
                for i in range(len(atoms)):
                    per_kind = occupancy_info.get(str(kinds[i]))
                    if per_kind is None or symbols[i] not in per_kind:
                        raise ValueError(
                            f"atoms.info['occupancy'] has no entry for atom {i} "
                            f"({symbols[i]}, kind {kinds[i]})"
                        )
                    occupancies[i] = float(per_kind[symbols[i]])
                    for other, occ in per_kind.items():
                        if other != symbols[i]:
                            symbols.append(other)
                            coords.append(coords[i])
                            occupancies.append(float(occ))
                            b_iso.append(b_iso[i])
        spacegroup = atoms.info.get("spacegroup")
        number = getattr(spacegroup, "no", spacegroup)
        number = (
            int(number) if isinstance(number, int | np.integer) and 1 <= number <= 230 else None
        )
        return cls(
            lattice,
            symbols,
            np.asarray(coords),
            np.asarray(occupancies),
            np.asarray(b_iso),
            space_group=number,
        )

    @classmethod
    def from_gemmi(cls, small: gemmi.SmallStructure, source: str | None = None) -> Crystal:
        """From a gemmi ``SmallStructure`` (as read from a CIF): the asymmetric unit is expanded
        with the space-group operations (``get_all_unit_cell_sites``, which also removes the
        duplicates on special positions).

        B = 8 pi^2 U_iso; sites with only anisotropic U get U_eq (a third of the trace of the
        Cartesian U). Sites with zero occupancy are skipped; negative occupancies and a missing
        unit cell are refused. Given only the space-group number, its standard setting is used.
        ``source`` names the file in errors.
        """
        where = f"{source}: " if source else ""
        _set_gemmi_space_group(small, where)
        lattice = _gemmi_lattice(small.cell, where)
        species, coords, occupancies, b_iso = _gemmi_unit_cell_sites(small, lattice, where)
        if not species:
            raise ValueError(f"{where}no atom sites with non-zero occupancy")
        number = small.spacegroup.number if small.spacegroup is not None else None
        return cls(
            lattice,
            species,
            np.mod(coords, 1.0),
            np.asarray(occupancies),
            np.asarray(b_iso),
            space_group=number,
        )

    @classmethod
    def from_cif(cls, path: str | os.PathLike) -> Crystal:
        """Read a CIF file with gemmi; if gemmi rejects the syntax (duplicate tags, unquoted
        strings, ...) fall back to pymatgen's lenient ``CifParser`` when pymatgen is installed.

        Only the first data block with atom sites is read. A UTF-8 byte-order mark is ignored.
        Sites given only as Cartesian coordinates (``_atom_site_Cartn_x/y/z``) are converted with
        ``_atom_sites_Cartn_tran_matrix_*`` if the file gives it, else with the cell in the
        mmCIF convention (a along x, b in the xy plane). A space-group number
        (``_space_group_IT_number``, ``_symmetry_Int_Tables_number``) that is not an integer
        1..230 is refused.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CIF file not found: {path}")
        data = path.read_bytes()
        try:
            block = _cif_block(data, path)
        except IndexError:  # no data block at all
            empty = not data.strip()
            raise ValueError(
                f"{path}: no data block (data_...) in the CIF" + (": the file is empty" * empty)
            ) from None
        except (RuntimeError, ValueError) as gemmi_error:
            return cls._from_cif_with_pymatgen(path, data, gemmi_error)
        _check_space_group_number(block, path)
        try:
            small = gemmi.make_small_structure_from_block(block)
        except (RuntimeError, ValueError) as gemmi_error:
            return cls._from_cif_with_pymatgen(path, data, gemmi_error)
        if len(small.sites) == 0:
            raise ValueError(f"{path}: no atom sites (_atom_site_fract_x/y/z loop) in the CIF")
        if not len(block.find_values("_atom_site_fract_x")):
            _set_fractional_from_cartesian(small, block, path)
        return cls.from_gemmi(small, source=str(path))

    @classmethod
    def _from_cif_with_pymatgen(cls, path: Path, data: bytes, gemmi_error: Exception) -> Crystal:
        """The fallback of :meth:`from_cif` for CIFs whose syntax gemmi rejects."""
        try:
            from pymatgen.io.cif import CifParser
        except ImportError:
            raise ValueError(
                f"{path}: gemmi could not parse the CIF ({gemmi_error}); install pymatgen for a "
                "lenient fallback parser"
            ) from gemmi_error
        logger.warning(
            "%s: gemmi could not parse the CIF (%s); using pymatgen's CifParser", path, gemmi_error
        )
        # pymatgen, too, stumbles over a byte-order mark: give it the text without one.
        source = (
            io.StringIO(data[3:].decode("utf-8", "replace"))
            if data.startswith(codecs.BOM_UTF8)
            else str(path)
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structures = CifParser(source).parse_structures(primitive=False)
        except Exception as pymatgen_error:
            raise ValueError(
                f"{path}: neither gemmi ({gemmi_error}) nor pymatgen ({pymatgen_error}) "
                "could parse the CIF"
            ) from pymatgen_error
        if not structures:
            raise ValueError(f"{path}: pymatgen found no structure in the CIF") from gemmi_error
        return cls.from_pymatgen(structures[0])


_SPACE_GROUP_NUMBER_TAGS = ("_space_group_IT_number", "_symmetry_Int_Tables_number")
_CARTESIAN_TAGS = ("_atom_site_Cartn_x", "_atom_site_Cartn_y", "_atom_site_Cartn_z")


def _cif_block(data: bytes, path: Path) -> gemmi.cif.Block:
    """The block of a CIF that gemmi.read_small_structure would read: the first with fractional
    sites, else the first with Cartesian sites, else the first (IndexError if there is none)."""
    if data.startswith(codecs.BOM_UTF8):  # gemmi refuses a byte-order mark
        document = gemmi.cif.read_string(data[len(codecs.BOM_UTF8) :])
    else:
        document = gemmi.cif.read(str(path))  # also reads .gz
    for tag in ("_atom_site_fract_x", "_atom_site_Cartn_x"):
        block = next((b for b in document if len(b.find_values(tag))), None)
        if block is not None:
            return block
    return document[0]


def _check_space_group_number(block: gemmi.cif.Block, path: Path) -> None:
    """Refuse a stated space-group number outside 1..230: gemmi would take it as 'none given'
    and the structure would silently become P1."""
    for tag in _SPACE_GROUP_NUMBER_TAGS:
        value = block.find_value(tag)
        if value is None or value in ("?", "."):
            continue
        text = gemmi.cif.as_string(value)
        if not (re.fullmatch(r"\+?\d+", text.strip()) and 1 <= int(text) <= 230):
            raise ValueError(
                f"{path}: {tag} is {text!r}; a space-group number must be an integer 1..230"
            )


def _set_fractional_from_cartesian(
    small: gemmi.SmallStructure, block: gemmi.cif.Block, path: Path
) -> None:
    """Fill the fractional coordinates of sites the CIF gives only in Cartesian coordinates
    (gemmi leaves them at 0, which would put every atom at the origin)."""
    columns = [block.find_values(tag) for tag in _CARTESIAN_TAGS]
    if any(len(column) != len(small.sites) for column in columns):
        raise ValueError(
            f"{path}: the atom sites have neither _atom_site_fract_x/y/z nor a complete "
            "_atom_site_Cartn_x/y/z loop"
        )
    cartesian = np.array([[gemmi.cif.as_number(v) for v in column] for column in columns]).T
    matrix = [
        block.find_value(f"_atom_sites_Cartn_tran_matrix_{i}{j}") for i in "123" for j in "123"
    ]
    if all(value is not None for value in matrix):  # Cartesian = M @ fractional (core CIF)
        to_cartesian = np.array([gemmi.cif.as_number(v) for v in matrix]).reshape(3, 3)
    else:  # no matrix: gemmi's orthogonalisation, the mmCIF default (a along x)
        to_cartesian = np.array(small.cell.orth.mat.tolist())
    fractional = cartesian @ np.linalg.inv(to_cartesian).T
    logger.warning("%s: sites given only in Cartesian coordinates; converted to fractional", path)
    for site, xyz in zip(small.sites, fractional, strict=True):
        site.fract = gemmi.Fractional(*xyz)


def _set_gemmi_space_group(small: gemmi.SmallStructure, where: str) -> None:
    """Give ``small`` the standard setting of its space-group number when that is all the file
    states; refuse a number outside 1..230 and an unknown symbol without symmetry operations."""
    number_only = getattr(small, "spacegroup_number", 0)
    if not 0 <= number_only <= 230:  # 0: not given; others would silently become P1
        raise ValueError(f"{where}space-group number {number_only} is not in 1..230")
    if small.spacegroup is None and not small.symops and 1 <= number_only <= 230:
        # Only _space_group_IT_number / _symmetry_Int_Tables_number: its standard setting.
        small.determine_and_set_spacegroup("N")
        logger.warning(
            "%sonly the space-group number %d is given: using its standard setting %s",
            where,
            number_only,
            small.spacegroup.xhm() if small.spacegroup else "?",
        )
    if small.spacegroup is None and not small.symops and small.spacegroup_hm.strip():
        raise ValueError(
            f"{where}space group {small.spacegroup_hm!r} is not recognised "
            "and the file lists no "
            "symmetry operations, so the unit cell cannot be filled"
        )
    if small.spacegroup is None and not small.symops:
        logger.warning("%sno space group or symmetry operations given; assuming P1", where)


def _gemmi_lattice(cell: gemmi.UnitCell, where: str) -> np.ndarray:
    """The lattice matrix of a gemmi cell; ValueError when the CIF gave none."""
    if (cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma) == (1, 1, 1, 90, 90, 90):
        # gemmi's default when _cell_length_a/b/c or _cell_angle_alpha/beta/gamma are missing
        raise ValueError(
            f"{where}no unit cell: _cell_length_a/b/c and _cell_angle_alpha/beta/gamma are "
            "missing or incomplete"
        )
    return lattice_matrix(cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma)


def _gemmi_unit_cell_sites(
    small: gemmi.SmallStructure, lattice: np.ndarray, where: str
) -> tuple[list[str], list[list[float]], list[float], list[float]]:
    """Species, fractional coordinates, occupancies and B of every unit-cell site with non-zero
    occupancy (occupancies above 1 by rounding are clipped; larger or negative ones refused)."""
    # U_eq = 1/3 sum_ij U^ij a*_i a*_j (a_i . a_j) for sites with only anisotropic U.
    reciprocal_lengths = np.linalg.norm(np.linalg.inv(lattice), axis=0)
    metric = lattice @ lattice.T
    for site in small.sites:
        if not site.occ >= 0:  # negative or NaN
            raise ValueError(f"{where}site {site.label!r} has occupancy {site.occ} < 0")
    species, coords, occupancies, b_iso = [], [], [], []
    for site in small.get_all_unit_cell_sites():
        if site.occ <= 0:
            continue
        if site.occ > 1 + 1e-3:
            raise ValueError(f"{where}site {site.label!r} has occupancy {site.occ} > 1")
        name = (
            site.element.name if site.element.atomic_number > 0 else site.type_symbol or site.label
        )
        try:
            species.append(element_symbol(name))
        except ValueError as error:
            raise ValueError(f"{where}site {site.label!r}: {error}") from None
        u_iso = site.u_iso
        if u_iso <= 0 and site.aniso.nonzero():
            u = np.array(site.aniso.as_mat33().tolist())
            u_iso = float(np.sum(u * np.outer(reciprocal_lengths, reciprocal_lengths) * metric) / 3)
        coords.append(site.fract.tolist())
        occupancies.append(min(float(site.occ), 1.0))
        b_iso.append(8 * math.pi**2 * max(u_iso, 0.0))
    return species, coords, occupancies, b_iso


def _is_instance_of(obj: Any, module_prefix: str, class_names: tuple[str, ...]) -> bool:
    """Duck-typed isinstance that does not import the (slow, optional) library."""
    return any(
        cls.__module__.startswith(module_prefix) and cls.__name__ in class_names
        for cls in type(obj).__mro__
    )


def as_crystal(structure: Any) -> Crystal:
    """Convert any supported structure to a :class:`Crystal`.

    Accepts a :class:`Crystal` (returned as is), a pymatgen ``Structure``/``IStructure``, an ASE
    ``Atoms``, a gemmi ``SmallStructure``, or a CIF path (``str`` or ``os.PathLike``).

    Raises:
        TypeError: for any other type.
    """
    if isinstance(structure, Crystal):
        return structure
    if isinstance(structure, str | os.PathLike):
        return Crystal.from_cif(structure)
    if isinstance(structure, gemmi.SmallStructure):
        return Crystal.from_gemmi(structure)
    if _is_instance_of(structure, "pymatgen.core", ("IStructure", "Structure")):
        return Crystal.from_pymatgen(structure)
    if _is_instance_of(structure, "ase.atoms", ("Atoms",)):
        return Crystal.from_ase(structure)
    raise TypeError(
        "expected a Crystal, pymatgen Structure, ASE Atoms, gemmi SmallStructure or CIF path, got "
        f"{type(structure).__module__}.{type(structure).__qualname__}"
    )
