"""Tests of physmoe.data.render against independent oracles: a direct numpy pseudo-Voigt sum over
the whole grid, a loop implementation of the reference binning, hand-computed peak positions and
widths, the March-Dollase formula with a numpy reciprocal lattice, and noise moments."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from physmoe.data.grid import CU_KA1, CU_KA2, TwoThetaGrid
from physmoe.data.render import (
    MeasurementConditions,
    PatternRenderer,
    SampledConditions,
    add_counting_noise,
    convert_two_theta,
    engine,
    march_dollase_factor,
    pad_peaks,
    render_padded,
    render_patterns,
)
from physmoe.data.structures import lattice_matrix

GRID = TwoThetaGrid()
CO_KA1 = 1.78897


@dataclass
class Peaks:
    """A PeakList-like object (the simulator's PeakList has the same attributes)."""

    two_theta: np.ndarray
    intensity: np.ndarray
    hkl: np.ndarray | None = None
    wavelength: float = CU_KA1


def fixed(**values) -> MeasurementConditions:
    """Clean conditions with some values fixed (``name=value`` -> range ``(value, value)``)."""
    ranges = {
        k: (v, v) if isinstance(v, float | int) and k != "ka2_probability" else v
        for k, v in values.items()
    }
    return replace(MeasurementConditions.clean(), **ranges)


def oracle_profile(two_theta, intensity, grid, size_nm, strain, u, v, w, eta, k=0.9):
    """Straightforward per-peak pseudo-Voigt sum over the full grid (no window), max-scaled."""
    x = grid.values()
    out = np.zeros_like(x)
    for position, height in zip(two_theta, intensity, strict=True):
        theta = math.radians(position) / 2
        h_size = math.degrees(k * grid.wavelength / 10 / (size_nm * math.cos(theta)))
        h_strain = math.degrees(4 * strain * math.tan(theta))
        h_inst2 = max(u * math.tan(theta) ** 2 + v * math.tan(theta) + w, 0.0)
        fwhm = max(math.sqrt(h_inst2 + h_size**2 + h_strain**2), grid.step)
        dx = x - position
        gauss = (
            2 / fwhm * math.sqrt(math.log(2) / math.pi) * np.exp(-4 * math.log(2) * dx**2 / fwhm**2)
        )
        lorentz = 2 / (math.pi * fwhm) / (1 + 4 * dx**2 / fwhm**2)
        out += height * (eta * lorentz + (1 - eta) * gauss)
    return out / out.max()


def random_peaks(rng, count, low=2.0, high=100.0):
    return np.sort(rng.uniform(low, high, count)), rng.exponential(10.0, count)


def single_peak(position, conditions, grid=GRID, **kwargs):
    pattern = render_patterns([(np.array([position]), np.array([1.0]))], grid, conditions, **kwargs)
    return pattern[0].double().numpy()


def centroid(pattern, grid, around, half_width):
    x = grid.values()
    window = np.abs(x - around) <= half_width
    return float((x[window] * pattern[window]).sum() / pattern[window].sum())


def measured_fwhm(pattern, grid):
    """FWHM of the single peak in ``pattern`` from linear interpolation of the half-maximum
    crossings."""
    x = grid.values()
    top = int(pattern.argmax())
    half = pattern[top] / 2
    left = top
    while pattern[left] > half:
        left -= 1
    right = top
    while pattern[right] > half:
        right += 1
    x_left = x[left] + (half - pattern[left]) / (pattern[left + 1] - pattern[left]) * grid.step
    x_right = (
        x[right - 1]
        + (pattern[right - 1] - half) / (pattern[right - 1] - pattern[right]) * grid.step
    )
    return x_right - x_left


# ------------------------------------------------------------------------------------------------
# Profiles against the direct sum
# ------------------------------------------------------------------------------------------------

# Tolerance: 3e-3 of the pattern maximum. Measured: 0.8-1.3e-3 (clean), from the finite FFT
# sampling (8 points per FWHM) and the slow change of the width across one profile; the oracle has
# no window, so this also bounds any tail truncation.
PROFILE_TOLERANCE = 3e-3


@pytest.mark.parametrize(
    "params",
    [
        dict(size_nm=50.0, strain=0.0, u=0.004, v=-0.002, w=0.003, eta=0.5),  # = clean()
        dict(size_nm=200.0, strain=0.0, u=0.0, v=0.0, w=0.0015, eta=0.3),  # sharp
        dict(size_nm=8.0, strain=2e-3, u=0.01, v=-0.003, w=0.005, eta=0.9),  # broad, Lorentzian
    ],
    ids=["clean", "sharp", "broad"],
)
def test_profile_matches_direct_pseudo_voigt_sum(params):
    rng = np.random.default_rng(0)
    peaks = [random_peaks(rng, n) for n in (1, 40, 300)]
    conditions = fixed(
        crystallite_size_nm=params["size_nm"],
        microstrain=params["strain"],
        caglioti_u=params["u"],
        caglioti_v=params["v"],
        caglioti_w=params["w"],
        eta=params["eta"],
    )
    if params == dict(size_nm=50.0, strain=0.0, u=0.004, v=-0.002, w=0.003, eta=0.5):
        conditions = None  # the default of render_patterns is MeasurementConditions.clean()
    patterns = render_patterns(peaks, GRID, conditions)
    assert patterns.dtype == torch.float32 and patterns.shape == (3, GRID.num_points)
    for (two_theta, intensity), pattern in zip(peaks, patterns, strict=True):
        expected = oracle_profile(two_theta, intensity, GRID, **params)
        np.testing.assert_allclose(pattern.numpy(), expected, atol=PROFILE_TOLERANCE, rtol=0)


def test_profile_on_another_grid_and_wavelength():
    """A Co K-alpha grid (2θ 10-100, 0.02 deg): peaks given at Cu are moved through d."""
    grid = TwoThetaGrid(10.0, 100.0, 4500, wavelength=CO_KA1)
    rng = np.random.default_rng(1)
    two_theta, intensity = random_peaks(rng, 60, 5.0, 85.0)
    pattern = render_patterns([(two_theta, intensity)], grid, fixed(caglioti_w=0.01))[0].numpy()
    sin_theta = np.sin(np.radians(two_theta) / 2) * CO_KA1 / CU_KA1
    keep = sin_theta < 1
    moved = np.degrees(2 * np.arcsin(sin_theta[keep]))
    expected = oracle_profile(moved, intensity[keep], grid, 50.0, 0.0, 0.004, -0.002, 0.01, 0.5)
    np.testing.assert_allclose(pattern, expected, atol=PROFILE_TOLERANCE, rtol=0)


# ------------------------------------------------------------------------------------------------
# Sticks mode against a loop implementation of the reference binning
# ------------------------------------------------------------------------------------------------


def reference_binning(two_theta, intensity, grid):
    out = np.zeros(grid.num_points)
    for position, height in zip(two_theta, intensity, strict=True):
        index = math.floor((position - grid.two_theta_min) / grid.step)
        if 0 <= index < grid.num_points:
            out[index] = max(out[index], height)
    return out / out.max() if out.max() > 0 else out


def test_sticks_mode_matches_reference_loop():
    rng = np.random.default_rng(2)
    peaks = []
    for n in (5, 200, 500):
        two_theta, intensity = random_peaks(rng, n, 1.0, 95.0)
        two_theta[: n // 4] = np.round(two_theta[: n // 4], 2) + 0.004  # several peaks share bins
        peaks.append((two_theta, intensity))
    peaks.append((np.array([2.0, 91.0]), np.array([3.0, 4.0])))  # nothing on the grid
    patterns = render_patterns(peaks, GRID, mode="sticks").numpy()
    for (two_theta, intensity), pattern in zip(peaks, patterns, strict=True):
        expected = reference_binning(two_theta, intensity, GRID)
        np.testing.assert_allclose(pattern, expected, rtol=1e-6, atol=1e-7)
    assert not patterns[-1].any()


def test_sticks_mode_converts_wavelength():
    rng = np.random.default_rng(3)
    two_theta, intensity = random_peaks(rng, 100, 5.0, 170.0)
    pattern = render_patterns(
        [(two_theta, intensity)], GRID, mode="sticks", peaks_wavelength=CO_KA1
    )[0]
    sin_theta = np.sin(np.radians(two_theta) / 2) * CU_KA1 / CO_KA1
    moved = np.degrees(2 * np.arcsin(sin_theta))
    np.testing.assert_allclose(
        pattern.numpy(), reference_binning(moved, intensity, GRID), rtol=1e-6, atol=1e-7
    )


# ------------------------------------------------------------------------------------------------
# Positions, widths, doublet
# ------------------------------------------------------------------------------------------------

SHARP_GAUSSIAN = dict(
    crystallite_size_nm=500.0, caglioti_u=0.0, caglioti_v=0.0, caglioti_w=0.004, eta=0.0
)


def test_zero_shift_displacement_and_cell_strain_move_peaks_as_computed_by_hand():
    two_theta = 40.0
    theta = math.radians(two_theta / 2)
    cases = {
        "zero_shift": (dict(zero_shift_deg=0.05), two_theta + 0.05),
        "displacement": (
            dict(displacement_mm=0.2),
            two_theta - math.degrees(2 * 0.2 * math.cos(theta) / 240.0),
        ),
        "cell_strain": (
            dict(cell_strain=0.01),
            2 * math.degrees(math.asin(math.sin(theta) / 1.01)),
        ),
        "all": (
            dict(zero_shift_deg=-0.03, displacement_mm=-0.1, cell_strain=-0.005),
            None,
        ),
    }
    theta_strained = math.asin(math.sin(theta) / 0.995)
    cases["all"] = (
        cases["all"][0],
        math.degrees(2 * theta_strained + 2 * 0.1 * math.cos(theta_strained) / 240.0) - 0.03,
    )
    for name, (values, expected) in cases.items():
        pattern = single_peak(two_theta, fixed(**SHARP_GAUSSIAN, **values))
        assert centroid(pattern, GRID, expected, 0.25) == pytest.approx(expected, abs=1e-3), name


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("two_theta", [40.0, 75.0])
def test_scherrer_width(two_theta, eta):
    size = 20.0
    conditions = fixed(
        crystallite_size_nm=size, caglioti_u=0.0, caglioti_v=0.0, caglioti_w=0.0, eta=eta
    )
    expected = math.degrees(0.9 * CU_KA1 / 10 / (size * math.cos(math.radians(two_theta / 2))))
    assert measured_fwhm(single_peak(two_theta, conditions), GRID) == pytest.approx(
        expected, rel=0.01
    )


def test_microstrain_and_caglioti_widths():
    two_theta = 60.0
    tan_theta = math.tan(math.radians(30.0))
    strain_only = fixed(
        crystallite_size_nm=1e7,
        microstrain=2e-3,
        caglioti_u=0.0,
        caglioti_v=0.0,
        caglioti_w=0.0,
        eta=0.0,
    )
    expected = math.degrees(4 * 2e-3 * tan_theta)
    assert measured_fwhm(single_peak(two_theta, strain_only), GRID) == pytest.approx(
        expected, rel=0.01
    )
    instrument_only = fixed(
        crystallite_size_nm=1e7, caglioti_u=0.02, caglioti_v=-0.01, caglioti_w=0.01, eta=0.0
    )
    expected = math.sqrt(0.02 * tan_theta**2 - 0.01 * tan_theta + 0.01)
    assert measured_fwhm(single_peak(two_theta, instrument_only), GRID) == pytest.approx(
        expected, rel=0.01
    )


def test_kalpha2_doublet_positions_and_ratio():
    two_theta = 80.0
    conditions = replace(fixed(**SHARP_GAUSSIAN), ka2_probability=1.0)
    pattern = single_peak(two_theta, conditions)
    expected_ka2 = math.degrees(
        2 * math.asin(math.sin(math.radians(two_theta / 2)) * CU_KA2 / CU_KA1)
    )
    assert expected_ka2 - two_theta == pytest.approx(
        0.2395, abs=1e-3
    )  # the textbook Cu doublet at 80 deg
    assert centroid(pattern, GRID, two_theta, 0.08) == pytest.approx(two_theta, abs=2e-3)
    assert centroid(pattern, GRID, expected_ka2, 0.08) == pytest.approx(expected_ka2, abs=2e-3)
    x = GRID.values()
    height_1 = pattern[np.abs(x - two_theta) < 0.05].max()
    height_2 = pattern[np.abs(x - expected_ka2) < 0.05].max()
    assert height_1 == pytest.approx(1.0)
    assert height_2 / height_1 == pytest.approx(0.5, rel=0.03)  # same area, widths differ by <1 %
    without = single_peak(two_theta, fixed(**SHARP_GAUSSIAN))
    assert without[np.abs(x - expected_ka2) < 0.05].max() < 1e-3


# ------------------------------------------------------------------------------------------------
# Intensity corrections
# ------------------------------------------------------------------------------------------------


def test_march_dollase_formula():
    cos_alpha = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    r = 0.7
    expected = [r**-3, r**1.5, (r**2 * 0.25 + 0.75 / r) ** -1.5]
    np.testing.assert_allclose(march_dollase_factor(cos_alpha, r).numpy(), expected, rtol=1e-12)
    # Normalised over the sphere: the mean over uniformly distributed cos(alpha) is 1.
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)
    for r in (0.5, 0.8, 1.0, 1.6):
        assert torch.trapezoid(march_dollase_factor(grid, r), grid).item() == pytest.approx(
            1.0, abs=1e-6
        )


def triclinic_reflections():
    """Well separated low-index reflections of a triclinic cell, with numpy reciprocal vectors."""
    lattice = lattice_matrix(4.1, 5.3, 6.2, 80.0, 95.0, 105.0)
    reciprocal = np.linalg.inv(lattice).T  # rows a*, b*, c* (no 2 pi)
    candidates = [
        (h, k, ell)
        for h in range(-2, 3)
        for k in range(-2, 3)
        for ell in range(0, 3)
        if (h, k, ell) != (0, 0, 0) and (ell > 0 or k > 0 or (k == 0 and h > 0))
    ]
    g = np.array(candidates) @ reciprocal
    d = 1 / np.linalg.norm(g, axis=1)
    two_theta = np.degrees(2 * np.arcsin(CU_KA1 / (2 * d)))
    order = np.argsort(two_theta)
    chosen = []
    for i in order:
        if 10 < two_theta[i] < 85 and all(abs(two_theta[i] - two_theta[j]) > 1.0 for j in chosen):
            chosen.append(i)
    others = [i for i in order if i not in chosen and 5 < two_theta[i] < 90]
    chosen = [i for i in chosen if all(abs(two_theta[i] - two_theta[j]) > 1.0 for j in others)]
    chosen = np.array(sorted(chosen, key=lambda i: two_theta[i]))
    return np.array(candidates)[chosen], two_theta[chosen], g[chosen]


def test_march_dollase_with_miller_indices_matches_formula():
    hkl, two_theta, g = triclinic_reflections()
    assert len(hkl) >= 8
    intensity = np.full(len(hkl), 10.0)
    base = fixed(**SHARP_GAUSSIAN)
    textured = replace(base, march_dollase_r=(0.6, 0.6), preferred_directions=((0, 0, 1),))
    peaks = [Peaks(two_theta, intensity, hkl)]
    plain = render_patterns(peaks, GRID, base)[0].double().numpy()
    with_po = render_patterns(peaks, GRID, textured)[0].double().numpy()
    x = GRID.values()
    index = [int(np.argmin(np.abs(x - t))) for t in two_theta]
    ratio = with_po[index] / plain[index]
    direction = (
        np.array([0, 0, 1]) @ np.linalg.inv(lattice_matrix(4.1, 5.3, 6.2, 80.0, 95.0, 105.0)).T
    )
    cos_alpha = np.abs(g @ direction) / (np.linalg.norm(g, axis=1) * np.linalg.norm(direction))
    expected = (0.36 * cos_alpha**2 + (1 - cos_alpha**2) / 0.6) ** -1.5
    np.testing.assert_allclose(ratio / ratio[0], expected / expected[0], rtol=0.01)
    assert expected.max() / expected.min() > 2  # the test has teeth


def test_preferred_orientation_without_miller_indices_is_random_per_peak():
    rng = np.random.default_rng(4)
    two_theta = np.linspace(12, 85, 25)
    intensity = np.full(25, 10.0)
    textured = replace(fixed(**SHARP_GAUSSIAN), march_dollase_r=(0.6, 0.6))
    plain = (
        render_patterns([(two_theta, intensity)], GRID, fixed(**SHARP_GAUSSIAN))[0].double().numpy()
    )
    gen = torch.Generator().manual_seed(int(rng.integers(1000)))
    with_po = (
        render_patterns([(two_theta, intensity)], GRID, textured, generator=gen)[0].double().numpy()
    )
    index = [int(np.argmin(np.abs(GRID.values() - t))) for t in two_theta]
    ratio = with_po[index] / plain[index]
    ratio = ratio / ratio.max() * 0.6**-3  # the largest possible factor is r^-3 (cos alpha = 1)
    assert np.all(ratio <= 0.6**-3 + 1e-6) and np.all(ratio >= 0.6**1.5 * 0.99)
    assert ratio.std() > 0.1  # factors differ between peaks


def test_debye_waller_factor():
    two_theta = np.array([20.0, 70.0])
    d = CU_KA1 / (2 * np.sin(np.radians(two_theta) / 2))
    plain = render_patterns([(two_theta, np.ones(2))], GRID, fixed(**SHARP_GAUSSIAN))[0].numpy()
    damped = render_patterns(
        [(two_theta, np.ones(2))], GRID, fixed(**SHARP_GAUSSIAN, debye_waller_b=2.0)
    )[0].numpy()
    index = [int(np.argmin(np.abs(GRID.values() - t))) for t in two_theta]
    expected = np.exp(-2.0 / (2 * d**2))
    assert (damped[index[1]] / damped[index[0]]) / (
        plain[index[1]] / plain[index[0]]
    ) == pytest.approx(expected[1] / expected[0], rel=1e-3)
    assert plain.max() == damped.max() == 1.0


# ------------------------------------------------------------------------------------------------
# Background and noise
# ------------------------------------------------------------------------------------------------


def test_background_ramp_and_amorphous_hump():
    rng = np.random.default_rng(5)
    two_theta, intensity = random_peaks(rng, 30, 10, 85)
    clean = render_patterns([(two_theta, intensity)], GRID)[0].double().numpy()
    sampled = MeasurementConditions.clean().sample(1)
    sampled = replace(
        sampled,
        background_amplitude=torch.tensor([0.05], dtype=torch.float64),
        background_coefficients=torch.tensor(
            [[0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64
        ),  # T1 = x
        amorphous_height=torch.tensor([0.04], dtype=torch.float64),
        amorphous_center_deg=torch.tensor([25.0], dtype=torch.float64),
        amorphous_fwhm_deg=torch.tensor([8.0], dtype=torch.float64),
        has_background=None,
    )
    pattern = render_patterns([(two_theta, intensity)], GRID, sampled)[0].double().numpy()
    x = GRID.values()
    ramp = 0.05 * (x - x[0]) / (x[-1] - x[0])
    hump = 0.04 * np.exp(-4 * math.log(2) * ((x - 25.0) / 8.0) ** 2)
    expected = clean + ramp + hump
    np.testing.assert_allclose(pattern, expected / expected.max(), atol=2e-4)


@pytest.mark.parametrize("exact", [False, True])
def test_counting_noise_moments(exact):
    generator = torch.Generator().manual_seed(6)
    level, counts, read = 0.3, 1000.0, 0.01
    pattern = torch.full((4, 20000), level)
    noisy = add_counting_noise(
        pattern,
        torch.full((4,), counts),
        torch.full((4,), read),
        generator=generator,
        exact_poisson=exact,
    ).double()
    expected_variance = level / counts + read**2  # Poisson: variance = mean (in counts)
    assert noisy.mean().item() == pytest.approx(
        level, abs=4 * math.sqrt(expected_variance / noisy.numel())
    )  # 4 sigma
    assert noisy.var().item() == pytest.approx(expected_variance, rel=0.03)
    # No counting noise where counts is inf; read noise only.
    quiet = add_counting_noise(
        pattern, torch.full((4,), math.inf), torch.full((4,), read), generator=generator
    )
    assert quiet.double().var().item() == pytest.approx(read**2, rel=0.03)


def test_exact_poisson_gives_integer_counts():
    generator = torch.Generator().manual_seed(7)
    pattern = torch.rand(2, 5000, generator=generator)
    counts = torch.tensor([50.0, 400.0])
    noisy = add_counting_noise(
        pattern, counts, torch.zeros(2), generator=generator, exact_poisson=True
    )
    scaled = (noisy * counts[:, None]).double()
    assert torch.allclose(scaled, scaled.round(), atol=1e-3)
    # Low counts: variance equals the mean (a property the normal approximation also keeps).
    low = add_counting_noise(
        torch.full((1, 40000), 0.01), torch.tensor([300.0]), torch.zeros(1), generator, True
    )
    counts_drawn = (low * 300).double()
    assert counts_drawn.mean().item() == pytest.approx(3.0, rel=0.03)
    assert counts_drawn.var().item() == pytest.approx(3.0, rel=0.05)
    assert (counts_drawn.round() == 0).double().mean().item() == pytest.approx(
        math.exp(-3), rel=0.05
    )


# ------------------------------------------------------------------------------------------------
# Full realism, scaling, determinism, edge cases
# ------------------------------------------------------------------------------------------------


def test_default_realism_scaled_finite_and_deterministic():
    rng = np.random.default_rng(8)
    peaks = [random_peaks(rng, n) for n in (0, 3, 150, 400)]
    conditions = MeasurementConditions.default()
    first = render_patterns(peaks, GRID, conditions, generator=torch.Generator().manual_seed(1))
    again = render_patterns(peaks, GRID, conditions, generator=torch.Generator().manual_seed(1))
    other = render_patterns(peaks, GRID, conditions, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert not torch.allclose(first[1:], other[1:], atol=1e-3)
    assert torch.isfinite(first).all() and (first >= 0).all()
    assert not first[0].any()  # no peaks: all zero, no NaN
    torch.testing.assert_close(first[1:].amax(dim=1), torch.ones(3))
    # Noise is present: the pattern is not smooth between peaks.
    clean = render_patterns(peaks, GRID)
    assert (first[3] - clean[3]).abs().mean() > 1e-3


def test_conditions_vary_per_pattern_and_clean_is_fixed():
    sampled = MeasurementConditions.default().sample(64, torch.Generator().manual_seed(0))
    assert sampled.crystallite_size_nm.min() >= 10 and sampled.crystallite_size_nm.max() <= 100
    assert sampled.crystallite_size_nm.std() > 5
    assert 0.2 < sampled.ka2.mean() < 0.8
    assert torch.isfinite(sampled.counts).all()
    assert set(map(tuple, sampled.preferred_direction.long().tolist())) <= set(
        MeasurementConditions().preferred_directions
    )
    clean = MeasurementConditions.clean().sample(8, torch.Generator().manual_seed(0))
    assert (
        (clean.crystallite_size_nm == 50).all()
        and (clean.ka2 == 0).all()
        and torch.isinf(clean.counts).all()
    )
    assert not (
        clean.has_noise or clean.has_background or clean.has_ka2 or clean.has_preferred_orientation
    )


def test_identical_rows_render_identically_with_fixed_conditions():
    """Each row is rendered alone: results do not depend on the other patterns in the batch."""
    rng = np.random.default_rng(9)
    peak = random_peaks(rng, 120)
    many = render_patterns([peak] * 40 + [random_peaks(rng, 500, 1.0, 120.0)], GRID)
    torch.testing.assert_close(many[:40], many[:1].expand(40, -1), atol=1e-6, rtol=0)


def test_unobservable_peaks_are_dropped():
    # Peaks recorded with Mo K-alpha at high angle cannot be observed with Cu: sin(theta) > 1.
    two_theta = np.array([20.0, 60.0])
    mo = 0.7093
    pattern = render_patterns([(two_theta, np.array([1.0, 100.0]))], GRID, peaks_wavelength=mo)[0]
    expected_position = math.degrees(2 * math.asin(math.sin(math.radians(10.0)) * CU_KA1 / mo))
    assert expected_position == pytest.approx(44.315, abs=1e-3)
    assert abs(GRID.values()[int(pattern.argmax())] - expected_position) < 0.02
    for mode in ("profile", "sticks"):
        only_unobservable = render_patterns(
            [(np.array([60.0]), np.array([5.0]))], GRID, mode=mode, peaks_wavelength=mo
        )
        assert not only_unobservable.any() and torch.isfinite(only_unobservable).all()
    assert torch.isnan(convert_two_theta(torch.tensor([60.0]), mo, CU_KA1)).all()


def test_input_dtypes_and_pad_peaks():
    rng = np.random.default_rng(10)
    a, b = random_peaks(rng, 5), random_peaks(rng, 2)
    two_theta, intensity, mask = pad_peaks([a, (torch.tensor(b[0]), list(b[1]))])
    assert two_theta.dtype == torch.float64 and mask.tolist() == [
        [True] * 5,
        [True, True, False, False, False],
    ]
    np.testing.assert_array_equal(two_theta[1, :2].numpy(), b[0])
    assert (two_theta[1, 2:] == 0).all() and (intensity[1, 2:] == 0).all()
    from_64 = render_padded(two_theta, intensity, mask, GRID)
    from_32 = render_padded(two_theta.float(), intensity.float(), mask, GRID)
    torch.testing.assert_close(from_32, from_64, atol=2e-3, rtol=0)  # float32 positions: ~1e-6 deg
    assert render_patterns([], GRID).shape == (0, GRID.num_points)
    renderer = PatternRenderer(GRID, mode="sticks")
    torch.testing.assert_close(renderer([a]), render_patterns([a], GRID, mode="sticks"))


def test_bad_input_raises_clear_errors():
    good = (np.array([20.0, 30.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"peak list 1, peak 1: two_theta"):
        render_patterns([good, (np.array([20.0, np.nan]), np.ones(2))], GRID)
    with pytest.raises(ValueError, match=r"peak list 0, peak 0: intensity"):
        render_patterns([(np.array([20.0]), np.array([-1.0]))], GRID)
    with pytest.raises(ValueError, match="two_theta has 2 values but intensity has 3"):
        render_patterns([(np.array([20.0, 30.0]), np.ones(3))], GRID)
    with pytest.raises(ValueError, match="wavelength 1.78897"):
        render_patterns([Peaks(*good, wavelength=CO_KA1)], GRID)
    with pytest.raises(ValueError, match="mode"):
        render_patterns([good], GRID, mode="gaussian")
    with pytest.raises(TypeError, match="peak list 0"):
        render_patterns([np.ones(3)], GRID)
    with pytest.raises(ValueError, match="pattern 0, peak 1"):
        render_padded(torch.tensor([[20.0, 200.0]]), torch.ones(1, 2), None, GRID)
    with pytest.raises(ValueError, match="sampled for 2 patterns"):
        render_patterns([good], GRID, MeasurementConditions().sample(2))
    with pytest.raises(ValueError, match="eta"):
        MeasurementConditions(eta=(0.5, 1.5))
    with pytest.raises(ValueError, match="crystallite_size_nm must be finite with min <= max"):
        MeasurementConditions(crystallite_size_nm=(50.0, 10.0))
    with pytest.raises(ValueError, match="counts must be positive"):
        MeasurementConditions(counts=(0.0, 10.0))
    with pytest.raises(ValueError, match="preferred_directions"):
        MeasurementConditions(preferred_directions=((0, 0, 0),))
    with pytest.raises(ValueError, match=r"cell_strain must lie in \(-0.5, 0.5\)"):
        MeasurementConditions(cell_strain=(-1.01, 0.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(monkeypatch):
    # CUDA runs the torch steps: compare them with the same steps on the CPU (the CPU's compiled
    # kernels are compared with those steps in test_render_compiled.py).
    monkeypatch.setattr(engine, "_COMPILED_ON_CPU", False)
    rng = np.random.default_rng(11)
    peaks = [random_peaks(rng, n) for n in (50, 300)]
    cpu = render_patterns(peaks, GRID)
    cuda = render_patterns(peaks, GRID, device="cuda")
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=0)
    noisy = render_patterns(
        peaks,
        GRID,
        MeasurementConditions.default(),
        generator=torch.Generator().manual_seed(0),
        device="cuda",
    )
    assert torch.isfinite(noisy).all() and torch.allclose(
        noisy.amax(1), torch.ones(2, device="cuda")
    )


def test_sampled_conditions_validation():
    sampled = MeasurementConditions().sample(3)
    with pytest.raises(ValueError, match="eta has shape"):
        replace(sampled, eta=torch.zeros(2, dtype=torch.float64))
    assert isinstance(sampled.select(slice(1, 3)), SampledConditions)
    assert sampled.select(slice(1, 3)).batch_size == 2


def test_no_wrap_around_at_the_grid_ends():
    """Broad Lorentzian peaks at both ends of the grid: the FFT's periodic wrap must not bring one
    end's tail to the other end (compared with the direct sum)."""
    params = dict(size_nm=8.0, strain=0.0, u=0.0, v=0.0, w=0.0, eta=1.0)
    conditions = fixed(
        crystallite_size_nm=8.0, caglioti_u=0.0, caglioti_v=0.0, caglioti_w=0.0, eta=1.0
    )
    two_theta, intensity = np.array([5.3, 89.7]), np.array([1.0, 1.0])
    pattern = render_patterns([(two_theta, intensity)], GRID, conditions)[0].numpy()
    expected = oracle_profile(two_theta, intensity, GRID, **params)
    np.testing.assert_allclose(pattern, expected, atol=PROFILE_TOLERANCE, rtol=0)


def test_reflections_far_outside_the_grid_are_dropped():
    conditions = fixed(**{**SHARP_GAUSSIAN, "eta": 1.0})
    inside = (np.array([45.0]), np.array([1.0]))
    with_far = (
        np.array([0.5, 1.0, 45.0, 150.0, 170.0]),
        np.array([100.0, 100.0, 1.0, 100.0, 100.0]),
    )
    alone, crowded = render_patterns([inside, with_far], GRID, conditions)
    np.testing.assert_allclose(crowded.numpy(), alone.numpy(), atol=1e-4)


def test_simulated_silicon_renders_at_its_bragg_positions(silicon):
    """End to end with the simulator's PeakList (hkl, d_spacing, wavelength attributes)."""
    from physmoe.data.simulate import simulate_peaks

    peaks = simulate_peaks(silicon, CU_KA1, (2.0, 100.0), return_hkl=True)
    assert peaks.hkl is not None
    pattern = render_patterns([peaks], GRID)[0].double().numpy()
    a = 5.431144
    for hkl in ((1, 1, 1), (2, 2, 0), (3, 1, 1), (4, 0, 0), (3, 3, 1), (4, 2, 2)):
        d = a / math.sqrt(sum(i * i for i in hkl))
        expected = math.degrees(2 * math.asin(CU_KA1 / (2 * d)))
        assert centroid(pattern, GRID, expected, 0.3) == pytest.approx(expected, abs=2e-3), hkl
    # Texture along (1 1 1), r < 1 (plates).
    textured = replace(
        MeasurementConditions.clean(), march_dollase_r=(0.7, 0.7), preferred_directions=((1, 1, 1),)
    )
    with_po = render_patterns([peaks], GRID, textured)[0].double().numpy()
    x = GRID.values()
    i111, i220 = (int(np.argmin(np.abs(x - t))) for t in (28.441, 47.300))

    def md(cos):
        return (0.49 * cos**2 + (1 - cos**2) / 0.7) ** -1.5

    # A powder line is the whole family: {111} = 2 members with cos(alpha) = 1 and 6 with 1/3;
    # {220} = 6 members with cos(alpha) = sqrt(2/3) and 6 with 0.
    factor_111 = (2 * md(1.0) + 6 * md(1 / 3)) / 8
    factor_220 = (6 * md(math.sqrt(2 / 3)) + 6 * md(0.0)) / 12
    ratio = (with_po[i111] / with_po[i220]) / (pattern[i111] / pattern[i220])
    assert ratio == pytest.approx(factor_111 / factor_220, rel=0.01)
    assert abs(factor_111 / factor_220 - 1) > 0.1  # the test has teeth


@pytest.mark.parametrize(
    "cell",
    [
        (5.431144, 5.431144, 5.431144, 90, 90, 90),  # cubic (silicon-like: few lines)
        (3.2, 3.2, 5.1, 90, 90, 120),  # hexagonal
        (5.0, 5.0, 5.0, 75, 75, 75),  # rhombohedral axes
        (4.0, 4.0, 6.5, 90, 90, 90),  # tetragonal
        (4.1, 5.3, 6.2, 90, 90, 90),  # orthorhombic
        (4.1, 5.3, 6.2, 90, 104, 90),  # monoclinic, b unique
        (4.1, 5.3, 6.2, 80, 95, 105),  # triclinic
    ],
)
def test_reciprocal_metric_from_simulated_lines(cell):
    """The metric behind the preferred-orientation angles, recovered from the simulator's merged
    lines (one representative hkl each) and compared with numpy's inverse of the cell."""
    from physmoe.data.render.physics import _fit_reciprocal_metric
    from physmoe.data.simulate import simulate_peaks
    from physmoe.data.structures import Crystal

    crystal = Crystal.from_parameters(cell, ["Si", "O"], [[0.1, 0.2, 0.3], [0.6, 0.7, 0.35]])
    peaks = simulate_peaks(crystal, CU_KA1, (2.0, 100.0), return_hkl=True)
    hkl = torch.as_tensor(peaks.hkl, dtype=torch.float64)[None]
    d = torch.as_tensor(peaks.d_spacing)[None]
    fitted = _fit_reciprocal_metric(hkl, d, torch.ones_like(d, dtype=torch.bool))[0].numpy()
    reciprocal = np.linalg.inv(lattice_matrix(*cell)).T
    np.testing.assert_allclose(fitted, reciprocal @ reciprocal.T, atol=1e-9)


def test_march_dollase_averages_over_hexagonal_families():
    """Hexagonal lattice, texture along a*: a powder line's factor is the mean over its 6/mmm
    family ({100}: cos alpha = 1, 1/2, 1/2; {110}: sqrt(3)/2, sqrt(3)/2, 0; {001}: 0)."""
    a, c = 3.2, 5.1
    hkl = np.array([(0, 0, 1), (1, 0, 0), (1, 1, 0)])
    d = np.array([c, a * math.sqrt(3) / 2, a / 2])
    two_theta = np.degrees(2 * np.arcsin(CU_KA1 / (2 * d)))
    peaks = [Peaks(two_theta, np.full(3, 10.0), hkl)]
    base = fixed(**SHARP_GAUSSIAN)
    textured = replace(base, march_dollase_r=(0.6, 0.6), preferred_directions=((1, 0, 0),))
    plain = render_patterns(peaks, GRID, base)[0].double().numpy()
    with_po = render_patterns(peaks, GRID, textured)[0].double().numpy()
    index = [int(np.argmin(np.abs(GRID.values() - t))) for t in two_theta]
    ratio = with_po[index] / plain[index]

    def md(cos):
        return (0.36 * cos**2 + (1 - cos**2) / 0.6) ** -1.5

    s = math.sqrt(3) / 2
    expected = np.array([md(0.0), (md(1.0) + 2 * md(0.5)) / 3, (2 * md(s) + md(0.0)) / 3])
    np.testing.assert_allclose(ratio / ratio[0], expected / expected[0], rtol=0.01)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (("10 20", [1.0, 2.0]), r"peak list 0: two_theta must be numbers, got the string '10 20'"),
        (([20.0, 30.0], ["a", "b"]), r"peak list 0: intensity must be numbers, got \['a', 'b'\]"),
    ],
)
def test_peaks_that_are_not_numbers_name_the_array(pair, message):
    with pytest.raises(ValueError, match=message):
        render_patterns([pair], GRID)


def test_rows_are_rendered_independently_of_their_batch_and_padding():
    # render_padded groups rows by peak count and cuts each group to its longest list: a batch
    # mixing one very long list (as large low-symmetry cells have) with short ones must give each
    # row the pattern it gets alone (clean), and extra padding must change nothing (any seed).
    rng = np.random.default_rng(0)
    lists = [
        Peaks(np.sort(rng.uniform(10, 80, n)), rng.uniform(0.1, 100, n))
        for n in (3, 2000, 40, 7, 300)
    ] * 8
    clean = render_patterns(lists, GRID)
    for i in (0, 1, 2, 3):
        torch.testing.assert_close(
            clean[i], render_patterns([lists[i]], GRID)[0], rtol=0, atol=1e-6
        )
    two_theta, intensity, mask = pad_peaks(lists)
    wider = [torch.nn.functional.pad(t, (0, 500)) for t in (two_theta, intensity, mask)]
    wider[0][:, -500:] = 45.0  # masked columns, whatever their values
    for conditions in (None, MeasurementConditions.default()):
        expected = render_padded(
            two_theta, intensity, mask, GRID, conditions, generator=torch.Generator().manual_seed(3)
        )
        got = render_padded(*wider, GRID, conditions, generator=torch.Generator().manual_seed(3))
        assert torch.equal(got, expected)
