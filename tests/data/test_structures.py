"""Structure conversion: pymatgen, ASE, gemmi and CIF files to Crystal and back, checked against
hand-written expectations (site lists, occupancies, B = 8 pi^2 U) and pymatgen's own parser."""

from __future__ import annotations

import math
import re
import sys

import gemmi
import numpy as np
import pytest

from physmoe.data.structures import Crystal, as_crystal, element_symbol, lattice_matrix

CELL = (
    "_cell_length_a {a}\n_cell_length_b {b}\n_cell_length_c {c}\n_cell_angle_alpha 90\n"
    "_cell_angle_beta 90\n_cell_angle_gamma 90\n"
)
# The atom-site loop's header up to the fractional coordinates (more columns may follow).
FRACTIONAL_SITES = (
    "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
    "_atom_site_fract_z\n"
)

NACL_CIF = (
    "data_NaCl\n"
    + CELL.format(a=5.64, b=5.64, c=5.64)
    + "_symmetry_space_group_name_H-M 'F m -3 m'\n"
    + FRACTIONAL_SITES
    + "_atom_site_occupancy\n_atom_site_U_iso_or_equiv\n"
    "Na1 Na+ 0 0 0 1 0.010\nCl1 Cl- 0.5 0.5 0.5 1 0.020\n"
)

DISORDERED_CIF = (
    "data_FeNiO\n"
    + CELL.format(a=4.0, b=4.0, c=4.0)
    + "_symmetry_space_group_name_H-M 'P m -3 m'\n"
    + FRACTIONAL_SITES
    + "_atom_site_occupancy\n"
    "Fe1 Fe 0 0 0 0.5\nNi1 Ni 0 0 0 0.5\nO1 O 0.5 0.5 0.5 0.8\n"
)


def sorted_sites(crystal: Crystal) -> list[tuple]:
    """Sites as sortable tuples (element, rounded wrapped coordinates, occupancy, B)."""
    return sorted(
        (s, *np.round(np.mod(x, 1.0) % 1.0, 6), round(float(o), 6), round(float(b), 6))
        for s, x, o, b in zip(
            crystal.species, crystal.frac_coords, crystal.occupancies, crystal.b_iso, strict=True
        )
    )


@pytest.fixture
def nacl_cif(tmp_path):
    path = tmp_path / "nacl.cif"
    path.write_text(NACL_CIF)
    return path


# ----------------------------------------------------------------------------------- basics


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("Fe3+", "Fe"),
        ("O2-", "O"),
        ("FE", "Fe"),
        ("Cl1-", "Cl"),
        ("OW", "O"),
        ("CO", "Co"),
        ("D", "D"),
        ("si", "Si"),
    ],
)
def test_element_symbol(name, symbol):
    assert element_symbol(name) == symbol


@pytest.mark.parametrize("name", ["X", "Va", "Ow", "", "12"])
def test_element_symbol_rejects_non_elements(name):
    with pytest.raises(ValueError, match="unknown chemical element"):
        element_symbol(name)


def test_crystal_validates_and_normalises():
    crystal = Crystal.from_parameters(
        (3, 4, 5, 90, 90, 90), ["Fe2+", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    assert crystal.species == ["Fe", "O"] and len(crystal) == 2
    assert crystal.volume == pytest.approx(60.0)
    with pytest.raises(ValueError, match="b_iso must be >= 0"):
        Crystal(np.eye(3) * 4, ["Fe"], [[0, 0, 0]], b_iso=[-1.0])
    with pytest.raises(ValueError, match="occupancies must lie in"):
        Crystal(np.eye(3) * 4, ["Fe"], [[0, 0, 0]], occupancies=[1.2])
    with pytest.raises(ValueError, match="frac_coords has 1 rows but there are 2 species"):
        Crystal(np.eye(3) * 4, ["Fe", "O"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="NaN"):
        Crystal(np.eye(3) * np.nan, ["Fe"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="space_group must be in 1..230"):
        Crystal(np.eye(3) * 4, ["Fe"], [[0, 0, 0]], space_group=231)


# --------------------------------------------------------------------------------- pymatgen


def test_pymatgen_round_trip_with_disorder():
    pytest.importorskip("pymatgen")
    from pymatgen.core import Lattice, Structure

    structure = Structure(
        Lattice.from_parameters(4.1, 5.2, 6.3, 85, 95, 101),
        [{"Fe": 0.5, "Ni": 0.5}, "O", {"S": 0.7}],
        [[0, 0, 0], [0.25, 0.5, 0.1], [0.6, 0.3, 0.9]],
    )
    crystal = Crystal.from_pymatgen(structure)
    assert sorted_sites(crystal) == sorted(
        [
            ("Fe", 0, 0, 0, 0.5, 0),
            ("Ni", 0, 0, 0, 0.5, 0),
            ("O", 0.25, 0.5, 0.1, 1, 0),
            ("S", 0.6, 0.3, 0.9, 0.7, 0),
        ]
    )
    np.testing.assert_allclose(crystal.lattice, structure.lattice.matrix)
    back = crystal.to_pymatgen()
    assert len(back) == 3  # Fe/Ni joined into one disordered site again
    assert back.composition == structure.composition
    np.testing.assert_allclose(back.lattice.abc, structure.lattice.abc)


def test_pymatgen_b_iso_site_property_round_trip():
    pytest.importorskip("pymatgen")
    crystal = Crystal.from_parameters(
        (4, 4, 4, 90, 90, 90), ["Cu", "Zn"], [[0, 0, 0], [0.5, 0.5, 0.5]], b_iso=[0.3, 0.9]
    )
    structure = crystal.to_pymatgen()
    assert structure.site_properties["b_iso"] == [0.3, 0.9]
    np.testing.assert_allclose(Crystal.from_pymatgen(structure).b_iso, [0.3, 0.9])


def test_pymatgen_dummy_species_is_rejected():
    pytest.importorskip("pymatgen")
    from pymatgen.core import DummySpecies, Lattice, Structure

    structure = Structure(Lattice.cubic(4), [DummySpecies("X")], [[0, 0, 0]])
    with pytest.raises(ValueError, match="site 0 of the pymatgen structure"):
        as_crystal(structure)


# ------------------------------------------------------------------------------- gemmi / CIF


def test_cif_via_gemmi_expands_symmetry_and_converts_u_to_b(nacl_cif):
    crystal = Crystal.from_cif(nacl_cif)
    assert crystal.space_group == 225
    b_na, b_cl = 8 * math.pi**2 * 0.010, 8 * math.pi**2 * 0.020
    fcc = [(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)]
    expected = [("Na", *p, 1.0, round(b_na, 6)) for p in fcc]
    expected += [
        ("Cl", *np.round(np.mod(np.add(p, 0.5), 1.0), 6), 1.0, round(b_cl, 6)) for p in fcc
    ]
    assert sorted_sites(crystal) == sorted(expected)
    np.testing.assert_allclose(crystal.lattice_parameters, (5.64, 5.64, 5.64, 90, 90, 90))
    # A gemmi SmallStructure and a str path give the same crystal.
    assert sorted_sites(as_crystal(gemmi.read_small_structure(str(nacl_cif)))) == sorted_sites(
        crystal
    )
    assert sorted_sites(as_crystal(str(nacl_cif))) == sorted_sites(crystal)


def test_cif_with_disorder_and_symmetry_operations_only(tmp_path):
    path = tmp_path / "disordered.cif"
    path.write_text(DISORDERED_CIF)
    crystal = Crystal.from_cif(path)
    assert sorted_sites(crystal) == [
        ("Fe", 0, 0, 0, 0.5, 0),
        ("Ni", 0, 0, 0, 0.5, 0),
        ("O", 0.5, 0.5, 0.5, 0.8, 0),
    ]
    ops = tmp_path / "ops.cif"
    ops.write_text(
        "data_x\n"
        + CELL.format(a=5, b=6, c=7)
        + "loop_\n_symmetry_equiv_pos_as_xyz\nx,y,z\n-x,-y,-z\n"
        "loop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
        "_atom_site_B_iso_or_equiv\nNa1 0.1 0.2 0.3 1.5\n"
    )
    crystal = Crystal.from_cif(ops)
    assert crystal.space_group == 2
    assert sorted_sites(crystal) == [("Na", 0.1, 0.2, 0.3, 1, 1.5), ("Na", 0.9, 0.8, 0.7, 1, 1.5)]


def test_cif_with_only_anisotropic_u_gets_u_equivalent(tmp_path):
    path = tmp_path / "aniso.cif"
    path.write_text(
        "data_x\n"
        + CELL.format(a=4, b=5, c=6)
        + "_symmetry_space_group_name_H-M 'P 1'\n"
        + FRACTIONAL_SITES
        + "Fe1 Fe 0.1 0.2 0.3\n"
        "loop_\n_atom_site_aniso_label\n_atom_site_aniso_U_11\n_atom_site_aniso_U_22\n"
        "_atom_site_aniso_U_33\n_atom_site_aniso_U_12\n_atom_site_aniso_U_13\n_atom_site_aniso_U_23\n"
        "Fe1 0.01 0.02 0.03 0 0 0\n"
    )
    # Orthogonal cell: U_eq = (U11 + U22 + U33) / 3.
    assert Crystal.from_cif(path).b_iso[0] == pytest.approx(8 * math.pi**2 * 0.02)


def test_malformed_cif_falls_back_to_pymatgen(tmp_path, nacl_cif):
    pytest.importorskip("pymatgen")
    path = tmp_path / "duplicate_tag.cif"
    path.write_text(
        NACL_CIF.replace("_cell_angle_gamma 90\n", "_cell_angle_gamma 90\n_cell_angle_gamma 90\n")
    )
    with pytest.raises(RuntimeError, match="duplicate tag"):
        gemmi.read_small_structure(str(path))
    crystal = Crystal.from_cif(path)
    reference = Crystal.from_cif(nacl_cif)
    # pymatgen drops U_iso, so compare positions and species only.
    assert [s[:4] for s in sorted_sites(crystal)] == [s[:4] for s in sorted_sites(reference)]


def test_malformed_cif_without_pymatgen_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "broken.cif"
    path.write_text(
        NACL_CIF.replace("_chemical", "").replace("data_NaCl\n", "data_NaCl\n_name two words 'x\n")
    )
    with pytest.raises((RuntimeError, ValueError)):
        gemmi.read_small_structure(str(path))
    monkeypatch.setitem(sys.modules, "pymatgen.io.cif", None)  # makes the import fail
    with pytest.raises(
        ValueError, match=r"broken\.cif: gemmi could not parse the CIF .*install pymatgen"
    ):
        Crystal.from_cif(path)


def test_cif_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.cif"):
        Crystal.from_cif(tmp_path / "missing.cif")
    unknown = tmp_path / "unknown_group.cif"
    unknown.write_text(
        "data_x\n" + CELL.format(a=5, b=5, c=5) + "_symmetry_space_group_name_H-M 'Q 9 z'\n"
        "loop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n"
        "_atom_site_fract_z\nNa1 0.1 0.2 0.3\n"
    )
    with pytest.raises(
        ValueError, match=r"unknown_group\.cif: space group 'Q 9 z' is not recognised"
    ):
        Crystal.from_cif(unknown)
    empty = tmp_path / "no_atoms.cif"
    empty.write_text("data_x\n" + CELL.format(a=5, b=5, c=5))
    with pytest.raises(ValueError, match="no atom sites"):
        Crystal.from_cif(empty)


SITES = FRACTIONAL_SITES + "_atom_site_occupancy\nNa1 Na 0 0 0 {na}\nCl1 Cl 0.5 0.5 0.5 1\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"empty\.cif: no data block \(data_...\) in the CIF: the file is empty"),
        ("# only a comment\n", r"empty\.cif: no data block"),
        (
            "data_x\n"
            + CELL.format(a=5.64, b=5.64, c=5.64)
            + "_symmetry_Int_Tables_number 225\n"
            + SITES.format(na=-0.5),
            r"empty\.cif: site 'Na1' has occupancy -0\.5 < 0",
        ),
        (
            "data_x\n_symmetry_Int_Tables_number 225\n" + SITES.format(na=1),
            r"empty\.cif: no unit cell: _cell_length_a/b/c",
        ),
        (
            "data_x\n_cell_length_a 5.64\n_symmetry_Int_Tables_number 225\n" + SITES.format(na=1),
            r"empty\.cif: no unit cell: .* missing or incomplete",
        ),
    ],
)
def test_cifs_that_cannot_be_read_faithfully_are_refused(tmp_path, text, message):
    path = tmp_path / "empty.cif"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Crystal.from_cif(path)


def test_cif_with_only_the_space_group_number_uses_it(tmp_path, nacl_cif):
    path = tmp_path / "number_only.cif"
    path.write_text(
        "data_x\n"
        + CELL.format(a=5.64, b=5.64, c=5.64)
        + "_symmetry_Int_Tables_number 225\n"
        + SITES.format(na=1)
    )
    crystal = Crystal.from_cif(path)
    assert crystal.space_group == 225 and len(crystal) == 8  # Fm-3m, not P1's 2 atoms
    reference = Crystal.from_cif(nacl_cif)
    positions = [site[:4] for site in sorted_sites(crystal)]
    assert positions == [site[:4] for site in sorted_sites(reference)]


# -------------------------------------------------------------------------------------- ASE


def test_ase_atoms_plain_and_with_cif_occupancies(tmp_path, nacl_cif):
    ase_io = pytest.importorskip("ase.io")
    from ase import Atoms

    atoms = Atoms(
        "NaCl", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 4.0, pbc=True
    )
    atoms.new_array("b_iso", np.array([0.5, 0.7]))
    crystal = as_crystal(atoms)
    assert sorted_sites(crystal) == [("Cl", 0.5, 0.5, 0.5, 1, 0.7), ("Na", 0, 0, 0, 1, 0.5)]

    # ASE's CIF reader stores disorder in info["occupancy"] keyed by spacegroup_kinds.
    path = tmp_path / "disordered.cif"
    path.write_text(DISORDERED_CIF)
    from_ase = as_crystal(ase_io.read(path))
    assert sorted_sites(from_ase) == sorted_sites(Crystal.from_cif(path))
    assert from_ase.space_group == 221
    assert (
        sorted_sites(as_crystal(ase_io.read(nacl_cif)))[0][:4]
        == sorted_sites(Crystal.from_cif(nacl_cif))[0][:4]
    )


def test_ase_atoms_without_cell_is_rejected():
    pytest.importorskip("ase")
    from ase import Atoms

    with pytest.raises(ValueError, match="no three-dimensional cell"):
        as_crystal(Atoms("CHO"))  # how SimXRD-4M stores its rows


def test_as_crystal_passthrough_and_type_error():
    crystal = Crystal(lattice_matrix(3, 3, 3, 90, 90, 90), ["Cu"], [[0, 0, 0]])
    assert as_crystal(crystal) is crystal
    with pytest.raises(TypeError, match="builtins.list"):
        as_crystal([1, 2, 3])


# ------------------------------------------------------------------------- survey regressions

CARTESIAN_SITES = (
    "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_Cartn_x\n_atom_site_Cartn_y\n"
    "_atom_site_Cartn_z\n"
)


def test_cif_with_cartesian_sites_only_is_converted(tmp_path, nacl_cif):
    cubic = tmp_path / "cartesian.cif"
    cubic.write_text(
        "data_x\n"
        + CELL.format(a=5.64, b=5.64, c=5.64)
        + "_symmetry_space_group_name_H-M 'F m -3 m'\n"
        + CARTESIAN_SITES
        + "Na1 Na 0 0 0\nCl1 Cl 2.82 2.82 2.82\n"
    )
    reference = Crystal.from_cif(nacl_cif)
    assert [s[:4] for s in sorted_sites(Crystal.from_cif(cubic))] == [
        s[:4] for s in sorted_sites(reference)
    ]
    # Monoclinic, mmCIF convention (a along x, b along y): fractional (0.1, 0.2, 0.3) is
    # x = 0.1 a + 0.3 c cos(beta), y = 0.2 b, z = 0.3 c sin(beta).
    beta = math.radians(100)
    x, y, z = 0.1 * 5 + 0.3 * 7 * math.cos(beta), 0.2 * 6, 0.3 * 7 * math.sin(beta)
    oblique = tmp_path / "monoclinic.cif"
    oblique.write_text(
        "data_x\n"
        + CELL.format(a=5, b=6, c=7).replace("beta 90", "beta 100")
        + CARTESIAN_SITES
        + f"Fe1 Fe {x} {y} {z}\n"
    )
    np.testing.assert_allclose(Crystal.from_cif(oblique).frac_coords, [[0.1, 0.2, 0.3]], atol=1e-9)
    # A stated transformation matrix (Cartesian = M @ fractional) wins over the default.
    to_cartesian = lattice_matrix(5, 6, 7, 90, 100, 90).T
    x, y, z = to_cartesian @ [0.1, 0.2, 0.3]
    matrix = "".join(
        f"_atom_sites_Cartn_tran_matrix_{i + 1}{j + 1} {to_cartesian[i, j]}\n"
        for i in range(3)
        for j in range(3)
    )
    oblique.write_text(
        "data_x\n"
        + CELL.format(a=5, b=6, c=7).replace("beta 90", "beta 100")
        + matrix
        + CARTESIAN_SITES
        + f"Fe1 Fe {x} {y} {z}\n"
    )
    np.testing.assert_allclose(Crystal.from_cif(oblique).frac_coords, [[0.1, 0.2, 0.3]], atol=1e-9)


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        ("_symmetry_Int_Tables_number", "231"),
        ("_space_group_IT_number", "0"),
        ("_space_group_IT_number", "12.5"),
        ("_symmetry_Int_Tables_number", "abc"),
    ],
)
def test_cif_with_an_impossible_space_group_number_is_refused(tmp_path, tag, value):
    path = tmp_path / "bad_number.cif"
    path.write_text(
        "data_x\n" + CELL.format(a=5.64, b=5.64, c=5.64) + f"{tag} {value}\n" + SITES.format(na=1)
    )
    with pytest.raises(ValueError, match=rf"bad_number\.cif: {tag} is '{re.escape(value)}'"):
        Crystal.from_cif(path)


def test_cif_with_a_utf8_byte_order_mark_is_read(tmp_path, nacl_cif):
    path = tmp_path / "bom.cif"
    path.write_bytes(b"\xef\xbb\xbf" + NACL_CIF.encode())
    assert sorted_sites(Crystal.from_cif(path)) == sorted_sites(Crystal.from_cif(nacl_cif))
