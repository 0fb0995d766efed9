"""The PXRD simulator against independent oracles: pymatgen's XRDCalculator on 56 structures of
all seven crystal systems, a straightforward loop implementation written here, NIST SRM 640e
silicon, and hand-derived Bragg / Lorentz-polarisation / Debye-Waller numbers."""

from __future__ import annotations

import math
import warnings

import gemmi
import numpy as np
import pytest

from physmoe.data import simulate as simulate_module
from physmoe.data.grid import CU_KA1, CU_KA2
from physmoe.data.simulate import PeakList, simulate_peaks, simulate_peaks_batch
from physmoe.data.simulate import reflections as simulate_reflections
from physmoe.data.structures import Crystal, lattice_matrix

from .conftest import SI_640E_B, SI_640E_HKL, SI_640E_INTENSITY, SI_640E_LATTICE

RANGE = (5.0, 90.0)


def gaussian_profile(two_theta: np.ndarray, intensity: np.ndarray, fwhm: float = 0.1) -> np.ndarray:
    """Sticks broadened by a Gaussian of the given FWHM on the 5-90 deg, 0.01 deg grid."""
    grid = np.arange(5.0, 90.0, 0.01)
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    profile = np.zeros_like(grid)
    for position, height in zip(two_theta, intensity, strict=True):
        window = np.abs(grid - position) < 6 * sigma
        profile[window] += height * np.exp(-0.5 * ((grid[window] - position) / sigma) ** 2)
    return profile


def pymatgen_pattern(structure, b_iso: dict[str, float], two_theta_range=RANGE):
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    calculator = XRDCalculator(wavelength=CU_KA1, debye_waller_factors=b_iso)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pattern = calculator.get_pattern(structure, two_theta_range=two_theta_range)
    return np.asarray(pattern.x), np.asarray(pattern.y)


def loop_oracle(crystal: Crystal, wavelength: float, two_theta_range, b_iso: np.ndarray):
    """Textbook powder pattern with explicit loops over hkl and atoms (complex128, full sphere,
    IT92 form factors read from gemmi here), lines grouped by 2θ rounded to 1e-6 deg."""
    lattice = crystal.lattice
    reciprocal = np.linalg.inv(lattice).T  # rows a*, b*, c*
    theta_max = math.radians(two_theta_range[1]) / 2
    g_max = 2 * math.sin(theta_max) / wavelength
    limits = [int(g_max * np.linalg.norm(v)) + 1 for v in lattice]
    lines: dict[float, list] = {}
    for h in range(-limits[0], limits[0] + 1):
        for k in range(-limits[1], limits[1] + 1):
            for ell in range(-limits[2], limits[2] + 1):
                if h == k == ell == 0:
                    continue
                g = np.linalg.norm(h * reciprocal[0] + k * reciprocal[1] + ell * reciprocal[2])
                if g > g_max:
                    continue
                theta = math.asin(wavelength * g / 2)
                two_theta = math.degrees(2 * theta)
                if not two_theta_range[0] <= two_theta <= two_theta_range[1]:
                    continue
                s2 = (g / 2) ** 2
                structure_factor = 0j
                for element, xyz, occ, b in zip(
                    crystal.species, crystal.frac_coords, crystal.occupancies, b_iso, strict=True
                ):
                    coef = gemmi.Element(element).it92
                    form = (
                        sum(a * math.exp(-bb * s2) for a, bb in zip(coef.a, coef.b, strict=True))
                        + coef.c
                    )
                    phase = 2 * math.pi * (h * xyz[0] + k * xyz[1] + ell * xyz[2])
                    structure_factor += (
                        occ * form * math.exp(-b * s2) * complex(math.cos(phase), math.sin(phase))
                    )
                lp = (1 + math.cos(2 * theta) ** 2) / (math.sin(theta) ** 2 * math.cos(theta))
                key = round(two_theta, 6)
                entry = lines.setdefault(key, [two_theta, 0.0])
                entry[1] += abs(structure_factor) ** 2 * lp
    positions = np.array([lines[key][0] for key in sorted(lines)])
    intensities = np.array([lines[key][1] for key in sorted(lines)])
    intensities *= 100 / intensities.max()
    keep = intensities > 1e-3
    return positions[keep], intensities[keep]


def match_lines(reference_x, reference_y, x, min_intensity):
    """Largest distance from every reference line stronger than ``min_intensity`` to the nearest
    line in ``x``."""
    strong = reference_x[reference_y > min_intensity]
    index = np.clip(np.searchsorted(x, strong), 1, len(x) - 1)
    nearest = np.minimum(np.abs(x[index] - strong), np.abs(x[index - 1] - strong))
    return nearest.max() if len(nearest) else 0.0


# ----------------------------------------------------------------------------- vs pymatgen


def test_structure_set_covers_all_systems(test_structures):
    assert len(test_structures) >= 50
    assert sorted({s.crystal_system for s in test_structures}) == list(range(7))
    assert any(not s.structure.is_ordered for s in test_structures)


def test_positions_and_profiles_match_pymatgen(test_structures):
    """Issue requirement: positions within 1e-4 deg and profile cosine >= 0.999 on >= 50
    structures of all seven systems, both simulators with the same B per element. What remains
    different is the form-factor table: IT92 (ours) vs pymatgen's atomic_scattering_params.json."""
    worst_position, worst_cosine = 0.0, 1.0
    for item in test_structures:
        ours = simulate_peaks(item.structure, CU_KA1, RANGE, b_iso=item.b_iso)
        every_line = simulate_peaks(
            item.structure, CU_KA1, RANGE, b_iso=item.b_iso, min_intensity=0.0
        )
        x, y = pymatgen_pattern(item.structure, item.b_iso)
        assert len(ours) > 0, item.name
        # Every pymatgen line (its cut-off is 1e-3) is one of our reflections, and every line of
        # ours above 0.1 is one of pymatgen's. The form-factor tables differ, so an accidentally
        # weak line can sit above the 1e-3 cut-off in one simulator and below it in the other.
        shift = max(
            match_lines(x, y, every_line.two_theta, 0.0),
            match_lines(ours.two_theta, ours.intensity, x, 0.1),
        )
        cosine = np.dot(
            p := gaussian_profile(ours.two_theta, ours.intensity), q := gaussian_profile(x, y)
        ) / (np.linalg.norm(p) * np.linalg.norm(q))
        assert shift < 1e-4, (item.name, shift)
        assert cosine >= 0.999, (item.name, cosine)
        worst_position, worst_cosine = max(worst_position, shift), min(worst_cosine, cosine)
    print(
        f"worst position difference {worst_position:.2e} deg, "
        f"worst profile cosine {worst_cosine:.6f}"
    )


def test_pymatgen_form_factors_reproduce_xrdcalculator(test_structures):
    """With pymatgen's own form-factor table the two simulators agree line by line."""
    for item in test_structures[::3]:
        ours = simulate_peaks(
            item.structure, CU_KA1, RANGE, b_iso=item.b_iso, form_factors="pymatgen"
        )
        x, y = pymatgen_pattern(item.structure, item.b_iso)
        strong_x = x[y > 0.01]
        index = np.searchsorted(ours.two_theta, strong_x - 1e-6)
        np.testing.assert_allclose(ours.two_theta[index], strong_x, atol=1e-6, err_msg=item.name)
        np.testing.assert_allclose(ours.intensity[index], y[y > 0.01], atol=2e-3, err_msg=item.name)


# ------------------------------------------------------------------------------ vs loop oracle


def _disordered_triclinic(num_sites: int, distinct_b: bool, seed: int) -> Crystal:
    rng = np.random.default_rng(seed)
    species = [str(e) for e in rng.choice(["O", "Fe", "Ba", "Si", "D"], size=num_sites)]
    occupancies = rng.uniform(0.3, 1.0, size=num_sites)
    b_iso = (
        rng.uniform(0.1, 2.0, size=num_sites)
        if distinct_b
        else np.repeat([0.4, 1.1], [num_sites // 2, num_sites - num_sites // 2])
    )
    return Crystal.from_parameters(
        (4.1, 4.9, 5.3, 81.0, 97.0, 104.0),
        species,
        rng.uniform(0, 1, (num_sites, 3)),
        occupancies=occupancies,
        b_iso=b_iso,
    )


@pytest.mark.parametrize(
    ("num_sites", "distinct_b"), [(6, False), (40, True)], ids=["few-site-types", "per-site-B"]
)
def test_against_loop_oracle(num_sites, distinct_b):
    """Occupancies and per-site B against explicit loops. The second case has more site types
    than the matrix-product path takes, so it exercises the per-site weighting path."""
    crystal = _disordered_triclinic(num_sites, distinct_b, seed=num_sites)
    ours = simulate_peaks(crystal, CU_KA1, (10.0, 70.0))
    positions, intensities = loop_oracle(crystal, CU_KA1, (10.0, 70.0), crystal.b_iso)
    strong = intensities > 0.01
    index = np.searchsorted(ours.two_theta, positions[strong] - 1e-7)
    np.testing.assert_allclose(ours.two_theta[index], positions[strong], atol=1e-8)
    np.testing.assert_allclose(ours.intensity[index], intensities[strong], atol=2e-3)
    assert abs(len(ours) - len(positions)) <= 2  # only lines at the 1e-3 cut-off may differ


# ---------------------------------------------------------------------------- NIST SRM 640e


def test_silicon_srm_640e(silicon):
    peaks = simulate_peaks(silicon, CU_KA1, RANGE, b_iso=SI_640E_B, return_hkl=True)
    assert len(peaks) == 6
    hkl = np.array(SI_640E_HKL)
    d_exact = SI_640E_LATTICE / np.sqrt((hkl**2).sum(axis=1))
    np.testing.assert_array_equal(peaks.hkl, hkl)
    np.testing.assert_allclose(peaks.d_spacing, d_exact, rtol=1e-12)
    np.testing.assert_allclose(
        peaks.two_theta, np.degrees(2 * np.arcsin(CU_KA1 / (2 * d_exact))), atol=1e-9
    )
    np.testing.assert_allclose(peaks.intensity, SI_640E_INTENSITY, atol=1.0)


def test_debye_waller_factor_follows_exp_minus_2bs2(silicon):
    """For a one-element crystal, B multiplies each line by exp(-2 B s^2) (then rescaled)."""
    cold = simulate_peaks(silicon, CU_KA1, RANGE)
    warm = simulate_peaks(silicon, CU_KA1, RANGE, b_iso={"Si": 1.3})
    s2 = 1 / (4 * cold.d_spacing**2)
    expected = np.exp(-2 * 1.3 * (s2 - s2[0]))
    np.testing.assert_allclose(warm.intensity / cold.intensity, expected, rtol=1e-5)
    # A scalar override and the crystal's own b_iso are the same thing.
    own = Crystal(silicon.lattice, silicon.species, silicon.frac_coords, b_iso=np.full(8, 1.3))
    np.testing.assert_allclose(
        simulate_peaks(silicon, b_iso=1.3).intensity, warm.intensity, rtol=1e-12
    )
    np.testing.assert_allclose(simulate_peaks(own).intensity, warm.intensity, rtol=1e-12)


def test_kalpha2_lines(silicon):
    single = simulate_peaks(silicon, CU_KA1, (20.0, 80.0), return_hkl=True)
    doublet = simulate_peaks(silicon, CU_KA1, (20.0, 80.0), kalpha2=True, return_hkl=True)
    assert len(doublet) == 2 * len(single)
    # Alternating K-alpha1 / K-alpha2 lines, same hkl and d.
    np.testing.assert_array_equal(doublet.hkl[0::2], single.hkl)
    np.testing.assert_array_equal(doublet.hkl[1::2], single.hkl)
    np.testing.assert_allclose(doublet.two_theta[0::2], single.two_theta, atol=1e-12)
    d = single.d_spacing
    np.testing.assert_allclose(
        doublet.two_theta[1::2], np.degrees(2 * np.arcsin(CU_KA2 / (2 * d))), atol=1e-9
    )

    def lorentz_polarisation(two_theta):
        theta = np.radians(two_theta) / 2
        return (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))

    ratio = doublet.intensity[1::2] / doublet.intensity[0::2]
    expected = (
        0.5
        * lorentz_polarisation(doublet.two_theta[1::2])
        / lorentz_polarisation(doublet.two_theta[0::2])
    )
    np.testing.assert_allclose(ratio, expected, rtol=1e-9)
    assert doublet.intensity.max() == pytest.approx(100.0)


# ------------------------------------------------------------------------- merging, hkl, API


def test_merge_tolerance_sums_neighbouring_lines(test_structures):
    structure = test_structures[10].structure
    fine = simulate_peaks(structure, CU_KA1, RANGE, min_intensity=0.0)
    coarse = simulate_peaks(structure, CU_KA1, RANGE, merge_tol=0.3, min_intensity=0.0)
    # Merge the fine list by hand with the same rule (gap > 0.3 deg starts a new line).
    groups = np.concatenate([[0], np.cumsum(np.diff(fine.two_theta) > 0.3)])
    summed = np.bincount(groups, weights=fine.intensity)
    first = np.array([fine.two_theta[groups == g][0] for g in range(groups[-1] + 1)])
    np.testing.assert_allclose(coarse.two_theta, first, atol=1e-12)
    np.testing.assert_allclose(coarse.intensity, summed * 100 / summed.max(), rtol=1e-9)


def test_min_intensity_drops_weak_lines(test_structures):
    structure = test_structures[4].structure
    every_line = simulate_peaks(structure, CU_KA1, RANGE, min_intensity=0.0)
    assert every_line.intensity.min() < 1e-3  # the structure has lines below the default cut-off
    for cut in (1e-3, 5.0):
        peaks = simulate_peaks(structure, CU_KA1, RANGE, min_intensity=cut)
        strong = every_line.intensity > cut
        np.testing.assert_array_equal(peaks.two_theta, every_line.two_theta[strong])
        np.testing.assert_array_equal(peaks.intensity, every_line.intensity[strong])


def test_hkl_is_consistent_with_d_spacing(test_structures):
    for item in test_structures[::7]:
        peaks = simulate_peaks(item.structure, CU_KA1, RANGE, return_hkl=True)
        reciprocal = np.linalg.inv(item.structure.lattice.matrix).T
        d_from_hkl = 1 / np.linalg.norm(peaks.hkl @ reciprocal, axis=1)
        np.testing.assert_allclose(d_from_hkl, peaks.d_spacing, rtol=1e-10, err_msg=item.name)


def test_all_input_types_give_the_same_pattern(tmp_path):
    pytest.importorskip("pymatgen")
    ase_io = pytest.importorskip("ase.io")
    cif = tmp_path / "rutile.cif"
    cif.write_text(
        "data_TiO2\n_cell_length_a 4.5937\n_cell_length_b 4.5937\n_cell_length_c 2.9587\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
        "_symmetry_space_group_name_H-M 'P 42/m n m'\n"
        "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
        "_atom_site_fract_z\nTi1 Ti4+ 0 0 0\nO1 O2- 0.3048 0.3048 0\n"
    )
    reference = simulate_peaks(cif)
    assert len(Crystal.from_cif(cif)) == 6
    others = {
        "gemmi": gemmi.read_small_structure(str(cif)),
        "pymatgen": Crystal.from_cif(cif).to_pymatgen(),
        "ase": ase_io.read(cif),
        "path-str": str(cif),
        "crystal": Crystal.from_cif(cif),
    }
    for name, structure in others.items():
        peaks = simulate_peaks(structure)
        np.testing.assert_allclose(peaks.two_theta, reference.two_theta, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(peaks.intensity, reference.intensity, atol=1e-4, err_msg=name)


def test_empty_range_gives_empty_peak_list(silicon):
    peaks = simulate_peaks(silicon, CU_KA1, (5.0, 20.0), return_hkl=True)  # (111) is at 28.4 deg
    assert len(peaks) == 0
    assert peaks.two_theta.shape == peaks.intensity.shape == peaks.d_spacing.shape == (0,)
    assert peaks.hkl.shape == (0, 3)


def test_wavelength_moves_lines_through_bragg(silicon):
    mo = simulate_peaks(silicon, 0.7093, (5.0, 60.0))
    d = SI_640E_LATTICE / np.sqrt(3)
    assert mo.two_theta[0] == pytest.approx(
        math.degrees(2 * math.asin(0.7093 / (2 * d))), abs=1e-10
    )
    assert mo.wavelength == 0.7093


def test_peak_list_validation_and_defaults():
    peaks = PeakList(np.array([30.0, 40.0]), np.array([100.0, 50.0]))
    np.testing.assert_allclose(peaks.d_spacing, CU_KA1 / (2 * np.sin(np.radians([15.0, 20.0]))))
    with pytest.raises(ValueError, match="equal length"):
        PeakList(np.array([30.0, 40.0]), np.array([100.0]))
    with pytest.raises(ValueError, match="hkl has 1 rows"):
        PeakList(np.array([30.0, 40.0]), np.array([100.0, 50.0]), hkl=np.array([[1, 0, 0]]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wavelength": -1.0}, "wavelength"),
        ({"wavelength": float("nan")}, "wavelength"),
        ({"two_theta_range": (50.0, 10.0)}, "two_theta_range"),
        ({"two_theta_range": (5.0, 190.0)}, "two_theta_range"),
        ({"form_factors": "waasmaier"}, "form_factors"),
        ({"b_iso": -0.5}, "b_iso"),
        ({"merge_tol": -1.0}, "merge_tol"),
    ],
)
def test_bad_arguments_raise(silicon, kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate_peaks(silicon, **kwargs)


def test_element_without_form_factor_raises():
    crystal = Crystal.from_parameters((5, 5, 5, 90, 90, 90), ["Og"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="no IT92 form factor for element Og"):
        simulate_peaks(crystal)


def test_unsupported_type_raises():
    with pytest.raises(TypeError, match="expected a Crystal"):
        simulate_peaks({"lattice": np.eye(3)})


# ------------------------------------------------------------------------- small cells, batch


def _simple_structures() -> dict:
    """Real 1-8 atom cells: conventional and primitive rock salt, diamond and fcc Cu, CsCl, bcc
    Fe, primitive MgO."""
    from pymatgen.core import Lattice, Structure

    origin, centre = [0, 0, 0], [0.5, 0.5, 0.5]
    build = Structure.from_spacegroup
    rock_salt = build("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [origin, centre])
    diamond = build("Fd-3m", Lattice.cubic(SI_640E_LATTICE), ["Si"], [origin])
    copper = build("Fm-3m", Lattice.cubic(3.615), ["Cu"], [origin])
    magnesia = build("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [origin, centre])
    return {
        "NaCl": rock_salt,
        "NaCl-primitive": rock_salt.get_primitive_structure(),
        "Si": diamond,
        "Si-primitive": diamond.get_primitive_structure(),
        "CsCl": Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [origin, centre]),
        "Cu": copper,
        "Cu-primitive": copper.get_primitive_structure(),
        "Fe": build("Im-3m", Lattice.cubic(2.8665), ["Fe"], [origin]),
        "MgO-primitive": magnesia.get_primitive_structure(),
    }


def test_small_cells_match_xrdcalculator():
    """1-8 atom cells (the fast path's fixed-cost regime) line by line against pymatgen, with
    pymatgen's form-factor table; a primitive cell gives the pattern of its conventional cell."""
    pytest.importorskip("pymatgen")
    structures = _simple_structures()
    assert sorted(len(s) for s in structures.values()) == [1, 2, 2, 2, 2, 2, 4, 8, 8]
    for name, structure in structures.items():
        ours = simulate_peaks(structure, CU_KA1, RANGE, form_factors="pymatgen", return_hkl=True)
        x, y = pymatgen_pattern(structure, {})
        assert len(ours) == len(x), name
        np.testing.assert_allclose(ours.two_theta, x, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(ours.intensity, y, atol=2e-3, err_msg=name)
    for name in ("NaCl", "Si", "Cu"):
        conventional = simulate_peaks(structures[name], CU_KA1, RANGE)
        primitive = simulate_peaks(structures[f"{name}-primitive"], CU_KA1, RANGE)
        np.testing.assert_allclose(primitive.two_theta, conventional.two_theta, atol=1e-9)
        np.testing.assert_allclose(primitive.intensity, conventional.intensity, atol=1e-4)


def _mixed_batch(test_structures, silicon) -> list:
    """Different elements, occupancies and B factors, 1 to 128 sites (the last takes the box
    kernel), pymatgen and Crystal inputs, and silicon, which has no line below 28 deg."""
    rng = np.random.default_rng(7)
    large = Crystal.from_parameters(
        (13.0, 14.3, 11.7, 85.0, 95.0, 100.0), [str(e) for e in rng.choice(["O", "Si", "Ba"], 128)],
        rng.uniform(0, 1, (128, 3)), occupancies=rng.uniform(0.5, 1.0, 128),
    )  # fmt: skip
    uniform_b = Crystal(silicon.lattice, silicon.species, silicon.frac_coords, b_iso=[0.7] * 8)
    return [
        *[item.structure for item in test_structures[::6]],
        _disordered_triclinic(6, False, seed=1),
        _disordered_triclinic(40, True, seed=2),
        silicon,
        uniform_b,
        large,
        *_simple_structures().values(),
    ]


@pytest.mark.parametrize("group_pairs", [None, 2000], ids=["default-groups", "many-groups"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"two_theta_range": (5.0, 27.0)},  # silicon's first line is at 28.4 deg: an empty list
        {"two_theta_range": (2.0, 100.0), "return_hkl": True},
        {
            "two_theta_range": (10.0, 80.0),
            "kalpha2": True,
            "b_iso": {"O": 0.9},
            "min_intensity": 0.5,
        },  # fmt: skip
    ],
    ids=["with-empty", "hkl", "kalpha2-b-override"],
)
def test_batch_equals_single(test_structures, silicon, monkeypatch, kwargs, group_pairs):
    if group_pairs is not None:  # many small groups: group bounds fall between all structures
        monkeypatch.setattr(simulate_module, "_GROUP_PAIRS", group_pairs)
    structures = _mixed_batch(test_structures, silicon)
    batch = simulate_peaks_batch(structures, wavelength=CU_KA1, **kwargs)
    assert len(batch) == len(structures)
    empty = 0
    for index, (structure, peaks) in enumerate(zip(structures, batch, strict=True)):
        single = simulate_peaks(structure, CU_KA1, **kwargs)
        assert len(peaks) == len(single), index
        empty += len(single) == 0
        np.testing.assert_allclose(peaks.two_theta, single.two_theta, rtol=1e-6, err_msg=str(index))
        np.testing.assert_allclose(peaks.intensity, single.intensity, rtol=1e-6, err_msg=str(index))
        np.testing.assert_allclose(peaks.d_spacing, single.d_spacing, rtol=1e-6, err_msg=str(index))
        if kwargs.get("return_hkl"):
            np.testing.assert_array_equal(peaks.hkl, single.hkl)
        else:
            assert peaks.hkl is None
        assert peaks.wavelength == single.wavelength
    if kwargs["two_theta_range"] == (5.0, 27.0):
        assert empty >= 2  # silicon with its own and with a uniform B


def test_batch_against_loop_oracle():
    """The batch path checked directly against explicit loops (no detour through simulate_peaks)."""
    crystals = [_disordered_triclinic(6, False, seed=6), _disordered_triclinic(40, True, seed=40)]
    batch = simulate_peaks_batch(crystals, two_theta_range=(10.0, 70.0))
    for crystal, ours in zip(crystals, batch, strict=True):
        positions, intensities = loop_oracle(crystal, CU_KA1, (10.0, 70.0), crystal.b_iso)
        strong = intensities > 0.01
        index = np.searchsorted(ours.two_theta, positions[strong] - 1e-7)
        np.testing.assert_allclose(ours.two_theta[index], positions[strong], atol=1e-8)
        np.testing.assert_allclose(ours.intensity[index], intensities[strong], atol=2e-3)


def test_batch_edges_and_bad_arguments(silicon):
    from physmoe.data import simulate_peaks_batch as exported

    assert exported is simulate_peaks_batch
    assert simulate_peaks_batch([]) == []
    with pytest.raises(ValueError, match="two_theta_range"):
        simulate_peaks_batch([silicon], two_theta_range=(50.0, 10.0))
    with pytest.raises(ValueError, match="b_iso"):
        simulate_peaks_batch([silicon], b_iso=-1.0)
    with pytest.raises(TypeError, match="expected a Crystal"):
        simulate_peaks_batch([silicon, {"lattice": np.eye(3)}])


# ------------------------------------------------------------------------- survey regressions


@pytest.mark.parametrize(
    "value", [(5.0,), (5.0, 60.0, 90.0), ("a", "b"), ("5", "90"), None, 90, "5,90"]
)
def test_malformed_two_theta_range_is_named(silicon, value):
    with pytest.raises(ValueError, match=r"two_theta_range must be \(min, max\) in degrees, got "):
        simulate_peaks(silicon, two_theta_range=value)
    with pytest.raises(ValueError, match="two_theta_range"):
        simulate_peaks_batch([silicon], two_theta_range=value)


@pytest.mark.parametrize("value", ["abc", [1, 2], {"Si": "x"}, True])
def test_malformed_b_iso_is_named(silicon, value):
    with pytest.raises(
        ValueError, match=r"b_iso must be a number of Angstrom\^2, \{element: number\} or None, got"
    ):
        simulate_peaks(silicon, b_iso=value)


@pytest.mark.parametrize(
    ("a", "wavelength", "message"),
    [
        (564.0, CU_KA1, r"a, b, c = 564, 564, 564 Angstrom at wavelength 1\.54056"),
        (5.64, 1e-3, r"at wavelength 0\.001 Angstrom"),
    ],
)
def test_huge_reflection_boxes_are_refused_before_allocating(a, wavelength, message):
    nacl = Crystal.from_parameters(
        (a, a, a, 90, 90, 90), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    with pytest.raises(ValueError, match=message + r".*limit of 2e\+07"):
        simulate_peaks(nacl, wavelength=wavelength)


def test_bundled_structures_stay_below_the_reflection_box_limit():
    """The limit refuses no bundled structure, even at Ag K-alpha up to 2θ = 180 deg."""
    from importlib.resources import files

    g_max = 2 / 0.559421
    for name in ("default_structures.npz", "real_structures.npz"):
        with np.load(files("physmoe.resources") / name) as data:
            lengths = np.array(
                [np.linalg.norm(lattice_matrix(*p), axis=1) for p in data["lattice_parameters"]]
            )
        limits = np.floor(g_max * lengths + 1e-9)
        points = (limits[:, 0] + 1) * (2 * limits[:, 1] + 1) * (2 * limits[:, 2] + 1)
        assert points.max() < simulate_reflections._MAX_BOX_POINTS / 5
