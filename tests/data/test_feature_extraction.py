"""Tests of XRDFeatureExtractor: wavelength conversion through d-spacing (peaks of a Co K-alpha
pattern land at the Cu 2θ computed by hand), agreement with a numpy interpolation oracle,
coverage refusal, input validation and the save/load round trip."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from physmoe.data.feature_extraction import XRDFeatureExtractor
from physmoe.data.grid import CU_KA1

CO_KA1 = 1.78897
SILICON_D = 5.431144 / np.sqrt([3, 8, 11, 16, 19, 24])  # d of Si 111, 220, 311, 400, 331, 422


def two_theta_of(d, wavelength):
    return np.degrees(2 * np.arcsin(wavelength / (2 * d)))


def measured_pattern(wavelength, start=10.0, stop=110.0, step=0.02, fwhm=0.12):
    """Gaussian peaks at the silicon d-spacings, sampled like a diffractometer at ``wavelength``."""
    x = np.arange(start, stop, step)
    y = np.full_like(x, 3.0)  # flat background
    for height, position in zip(
        (100, 64, 37, 10, 14, 19), two_theta_of(SILICON_D, wavelength), strict=True
    ):
        y += height * np.exp(-4 * math.log(2) * ((x - position) / fwhm) ** 2)
    return x, y


def oracle(x, y, wavelength, extractor):
    """Straightforward numpy: d-spacing, 2θ at the model wavelength, np.interp, clip, scale."""
    d = wavelength / (2 * np.sin(np.radians(x) / 2))
    sin_model = extractor.wavelength / (2 * d)
    keep = sin_model <= 1
    converted = np.degrees(2 * np.arcsin(sin_model[keep]))
    out = np.interp(extractor.grid.values(), converted, y[keep], left=0.0, right=0.0)
    out = np.clip(out, 0, None)
    return out / out.max()


def refined_peak(pattern, grid_values, around, half_width=0.3):
    """Peak position from a parabola through the maximum and its neighbours."""
    window = np.flatnonzero(np.abs(grid_values - around) < half_width)
    i = window[np.argmax(pattern[window])]
    a, b, c = pattern[i - 1], pattern[i], pattern[i + 1]
    step = grid_values[1] - grid_values[0]
    return grid_values[i] + 0.5 * (a - c) / (a - 2 * b + c) * step


def test_cobalt_pattern_lands_at_copper_positions():
    extractor = XRDFeatureExtractor()
    x, y = measured_pattern(CO_KA1)
    values = extractor(x, y, wavelength=CO_KA1)["input_values"]
    assert values.shape == (1, 8500) and values.dtype == np.float32
    grid_values = extractor.grid.values()
    expected = two_theta_of(SILICON_D, CU_KA1)  # 28.44, 47.30, 56.12, 69.13, 76.38, 88.03 deg
    assert expected[0] == pytest.approx(28.441, abs=1e-3)  # NIST SRM 640e: 28.441 deg
    for position in expected:
        assert refined_peak(values[0], grid_values, position) == pytest.approx(position, abs=3e-3)
    np.testing.assert_allclose(values[0], oracle(x, y, CO_KA1, extractor), atol=1e-6)
    assert values.max() == 1.0 and values.min() >= 0.0


def test_batches_of_different_lengths_and_wavelengths_match_single_calls():
    extractor = XRDFeatureExtractor()
    patterns = [
        measured_pattern(CO_KA1),
        measured_pattern(CU_KA1, 5.0, 95.0, 0.01),
        measured_pattern(1.5406, 8.0, 80.0, 0.05),
    ]
    wavelengths = [CO_KA1, CU_KA1, 1.5406]
    batch = extractor(
        [p[0] for p in patterns],
        [p[1] for p in patterns],
        wavelength=wavelengths,
        return_tensors="pt",
    )
    values = batch["input_values"]
    assert (
        isinstance(values, torch.Tensor)
        and values.dtype == torch.float32
        and values.shape == (3, 8500)
    )
    for row, (x, y), wavelength in zip(values, patterns, wavelengths, strict=True):
        single = extractor(x, y, wavelength=wavelength)["input_values"][0]
        np.testing.assert_array_equal(row.numpy(), single)
        np.testing.assert_allclose(single, oracle(x, y, wavelength, extractor), atol=1e-6)
    # Equal lengths as a 2-D array and as tensors.
    x, y = measured_pattern(CU_KA1)
    stacked = extractor(np.stack([x, x]), torch.from_numpy(np.stack([y, 2 * y])))["input_values"]
    np.testing.assert_allclose(stacked[0], stacked[1], atol=1e-7)


def test_refuses_patterns_covering_too_little_of_the_grid():
    extractor = XRDFeatureExtractor()
    good = measured_pattern(CU_KA1)
    narrow = measured_pattern(CU_KA1, 60.0, 80.0)
    with pytest.raises(ValueError) as error:
        extractor([good[0], narrow[0]], [good[1], narrow[1]])
    message = str(error.value)
    assert (
        "pattern 1" in message
        and "60.00-79.98 deg" in message
        and "23.5%" in message
        and "50%" in message
    )
    # A Co K-alpha scan of 40-69.98 deg covers 34.26-59.18 deg at Cu: 29 % of 5-90 deg.
    x = np.arange(40.0, 70.0, 0.02)
    with pytest.raises(
        ValueError, match=r"pattern 0 \(measured at 1.78897 A\) covers 2θ 34\.26-59\.18 deg"
    ):
        extractor(x, np.ones_like(x), wavelength=CO_KA1)
    lenient = XRDFeatureExtractor(min_coverage=0.2)
    assert lenient(x, np.ones_like(x), wavelength=CO_KA1)["input_values"].shape == (1, 8500)
    # Beyond what the model wavelength can observe.
    with pytest.raises(ValueError, match="pattern 0"):
        extractor(np.linspace(120, 170, 100), np.ones(100), wavelength=0.7093)


def test_input_validation():
    extractor = XRDFeatureExtractor()
    x, y = measured_pattern(CU_KA1)
    with pytest.raises(ValueError, match="pattern 1: intensity has NaN or inf at point 3"):
        y_bad = y.copy()
        y_bad[3] = np.nan
        extractor([x, x], [y, y_bad])
    with pytest.raises(
        ValueError, match="pattern 0: two_theta has 5000 points but intensity has 4999"
    ):
        extractor(x, y[:-1])
    with pytest.raises(ValueError, match="at least 2 points"):
        extractor([20.0], [1.0])
    shuffled = x.copy()
    shuffled[[10, 11]] = shuffled[[11, 10]]
    with pytest.raises(ValueError, match="strictly increasing"):
        extractor(shuffled, y)
    with pytest.raises(ValueError, match="strictly increasing"):
        extractor(np.concatenate([x[:5], x[4:]]), np.concatenate([y[:5], y[4:]]))
    with pytest.raises(ValueError, match=r"\(0, 180\)"):
        extractor(x - 20, y)
    with pytest.raises(ValueError, match="no positive intensity"):
        extractor(x, -y)
    with pytest.raises(ValueError, match="got 2 wavelengths for 1 patterns"):
        extractor(x, y, wavelength=[CU_KA1, CO_KA1])
    with pytest.raises(ValueError, match="equal size"):
        extractor([x, x], [y])
    with pytest.raises(ValueError, match="min_coverage"):
        XRDFeatureExtractor(min_coverage=0.0)
    # Strictly descending 2θ is reversed; negative intensities are clipped to 0.
    np.testing.assert_array_equal(
        extractor(x[::-1], y[::-1])["input_values"], extractor(x, y)["input_values"]
    )
    shifted = extractor(x, y - 50)["input_values"][0]
    assert shifted.min() == 0.0 and (shifted == 0).mean() > 0.5 and shifted.max() == 1.0


def test_save_and_load_round_trip(tmp_path):
    extractor = XRDFeatureExtractor(10.0, 80.0, 3500, CO_KA1, min_coverage=0.3)
    files = extractor.save_pretrained(tmp_path)
    assert [os.path.basename(f) for f in files] == ["preprocessor_config.json"]
    assert sorted(os.listdir(tmp_path)) == ["preprocessor_config.json"]  # no temporary file left
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["feature_extractor_type"] == "XRDFeatureExtractor"
    assert (
        saved["two_theta_min"],
        saved["two_theta_max"],
        saved["num_points"],
        saved["wavelength"],
    ) == (10.0, 80.0, 3500, CO_KA1)
    assert (
        saved["feature_size"] == 1
        and saved["padding_value"] == 0.0
        and saved["sampling_rate"] == 3500
    )
    loaded = XRDFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == extractor.to_dict()
    assert loaded.grid == extractor.grid and loaded.min_coverage == 0.3
    x, y = measured_pattern(CU_KA1)
    np.testing.assert_array_equal(
        loaded(x, y, wavelength=CU_KA1)["input_values"],
        extractor(x, y, wavelength=CU_KA1)["input_values"],
    )
    # Overrides at load time, as for any transformers feature extractor.
    assert XRDFeatureExtractor.from_pretrained(tmp_path, min_coverage=0.9).min_coverage == 0.9


def test_from_config():
    config = SimpleNamespace(
        two_theta_min=10.0, two_theta_max=80.0, num_points=3500, wavelength=1.54184
    )
    extractor = XRDFeatureExtractor.from_config(config, min_coverage=0.4)
    assert (
        extractor.two_theta_min,
        extractor.two_theta_max,
        extractor.num_points,
        extractor.wavelength,
    ) == (10.0, 80.0, 3500, 1.54184)
    assert extractor.min_coverage == 0.4
    assert extractor.grid.step == pytest.approx(0.02)


def test_auto_feature_extractor_registration(tmp_path):
    """The way the lead wires it
    (``AutoFeatureExtractor.register(ConfigClass, XRDFeatureExtractor)``) loads our saved
    preprocessor_config.json; here with a throwaway config class."""
    from transformers import AutoConfig, AutoFeatureExtractor, PretrainedConfig

    class _XRDTestConfig(PretrainedConfig):
        model_type = "physmoe_feature_extraction_test"

    try:
        AutoConfig.register(_XRDTestConfig.model_type, _XRDTestConfig)
    except ValueError:  # already registered in this process
        pass
    AutoFeatureExtractor.register(_XRDTestConfig, XRDFeatureExtractor, exist_ok=True)
    _XRDTestConfig().save_pretrained(tmp_path)
    XRDFeatureExtractor(num_points=4250).save_pretrained(tmp_path)
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(loaded) is XRDFeatureExtractor and loaded.num_points == 4250
