"""The 2θ grid and Bragg's law, against the public reference's grid and NIST silicon."""

from __future__ import annotations

import numpy as np
import pytest

from physmoe.data.grid import (
    CU_KA1,
    TwoThetaGrid,
    bragg_d_spacing,
    bragg_two_theta,
    check_pattern_arrays,
)
from physmoe.models.resnet1d_moe import ResNet1DMoEConfig


def test_default_grid_is_the_reference_arange():
    grid = TwoThetaGrid()
    reference = np.arange(5, 90, 0.01)
    assert grid.num_points == len(reference) == 8500 and grid.step == pytest.approx(0.01)
    np.testing.assert_allclose(grid.values(), reference, atol=1e-9)
    assert grid.values()[-1] < grid.two_theta_max


def test_bragg_law_against_silicon_and_round_trip():
    # NIST SRM 640e silicon, a = 5.431144 A: Si(111) at d = a / sqrt(3) = 3.13567 A lies at
    # 2θ = 28.442 deg with Cu K-alpha1 (the certificate's line position).
    d_111 = 5.431144 / np.sqrt(3)
    assert bragg_two_theta(d_111, CU_KA1) == pytest.approx(28.442, abs=2e-3)
    angles = np.linspace(1.0, 179.0, 50)
    np.testing.assert_allclose(
        bragg_two_theta(bragg_d_spacing(angles, CU_KA1), CU_KA1), angles, atol=1e-9
    )
    # d < λ/2 cannot diffract: NaN, not an error.
    assert np.isnan(bragg_two_theta(CU_KA1 / 2.5, CU_KA1))


def test_d_spacing_range_and_config_grid():
    grid = TwoThetaGrid(10.0, 80.0, 700, wavelength=1.0)
    low, high = grid.d_spacing_range
    assert low == pytest.approx(1.0 / (2 * np.sin(np.radians(40.0))))
    assert high == pytest.approx(1.0 / (2 * np.sin(np.radians(5.0))))
    config = ResNet1DMoEConfig.from_preset("small")
    assert TwoThetaGrid.from_config(config) == TwoThetaGrid(
        config.two_theta_min, config.two_theta_max, config.num_points, config.wavelength
    )
    assert TwoThetaGrid.from_config(config).num_points == 4250


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"two_theta_min": 90.0, "two_theta_max": 5.0}, "two_theta_min < two_theta_max"),
        ({"two_theta_max": 180.0}, "< 180"),
        ({"num_points": 1}, "num_points must be an integer >= 2"),
        ({"num_points": 10.5}, "num_points"),
        ({"wavelength": 0.0}, "wavelength must be a positive"),
        ({"wavelength": float("nan")}, "wavelength"),
    ],
)
def test_bad_grids_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoThetaGrid(**kwargs)


def test_pattern_arrays_must_match():
    two_theta, intensity = check_pattern_arrays([1, 2, 3], [4, 5, 6])
    assert two_theta.dtype == intensity.dtype == np.float64
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(2,\)"):
        check_pattern_arrays([1, 2, 3], [4, 5])
