"""The simulator's compiled kernels against direct numpy formulas."""

from __future__ import annotations

import numpy as np

from physmoe.data.simulate.compiled import lines_of_one, pair_squared, reflections_in_range


def test_pair_squared_is_the_structure_factor_sum():
    """|sum_n occ_n f_e(n) exp(-B_n s^2) exp(2 pi i hkl . x_n)|^2, negative and large indices."""
    rng = np.random.default_rng(0)
    hkl = rng.integers(-13, 14, (200, 3)).astype(np.float64)
    coords = rng.random((7, 3))
    site_element = rng.integers(0, 3, 7)
    occupancy = rng.uniform(0.3, 1.0, 7)
    s2 = rng.uniform(0.0, 0.6, 200)
    form = rng.uniform(1.0, 30.0, (3, 200))
    for b_site in (np.zeros(7), rng.uniform(0.0, 2.0, 7)):
        phases = np.exp(2j * np.pi * (hkl @ coords.T))  # [M, N]
        weights = occupancy * form[site_element].T * np.exp(-np.outer(s2, b_site))  # [M, N]
        expected = np.abs((weights * phases).sum(axis=1)) ** 2
        got = pair_squared(hkl, s2, form, coords, site_element, occupancy, b_site)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-9)


def test_reflections_in_range_selects_the_shell():
    rng = np.random.default_rng(1)
    hkl = rng.integers(-5, 6, (300, 3)).astype(np.float64)
    h, k, ell = hkl.T
    quad = np.stack([h * h, k * k, ell * ell, 2 * h * k, 2 * h * ell, 2 * k * ell], axis=1)
    terms = np.array([0.05, 0.04, 0.03, 0.002, -0.001, 0.003])
    g2 = quad @ terms
    kept, kept_g2 = reflections_in_range(hkl, quad, terms, 0.2, 0.8)
    inside = (g2 >= 0.2) & (g2 <= 0.8)
    np.testing.assert_array_equal(kept, hkl[inside])
    np.testing.assert_allclose(kept_g2, g2[inside], rtol=1e-14)


def test_lines_of_one_merges_sorts_scales_and_keeps_both_wavelengths():
    g2 = np.array([0.30, 0.10, 0.10 + 1e-13, 0.20, 0.25])
    squared = np.array([4.0, 1.0, 2.0, 0.0, 8.0])  # the 0.20 reflection is absent
    bragg = np.array([0.6, 0.61])
    ratios = np.array([1.0, 0.5])
    which, starts, two_theta, intensity = lines_of_one(
        g2, squared, 1e-9, bragg, ratios, 0.0, 1.0, 1e-5
    )
    sin2 = np.concatenate([bragg[0] * g2, bragg[1] * g2])
    weight = np.concatenate([squared, squared * 0.5])
    present = np.concatenate([squared, squared]) >= 1e-9
    order = np.argsort(sin2[present], kind="stable")
    angles = np.degrees(np.arccos(1 - 2 * sin2[present][order]))
    lp = (1 + np.cos(np.radians(angles)) ** 2) / (
        sin2[present][order] * np.sqrt(1 - sin2[present][order])
    )
    values = weight[present][order] * lp
    # The two near-identical reflections merge at each wavelength: 8 pairs, 6 lines.
    assert len(which) == 8 and len(starts) == 6
    merged = np.add.reduceat(values, starts)
    np.testing.assert_allclose(two_theta, angles[starts], rtol=1e-14)
    np.testing.assert_allclose(intensity, 100 * merged / merged.max(), rtol=1e-12)
    np.testing.assert_array_equal(
        which, np.concatenate([np.arange(5), np.arange(5)])[present][order]
    )
