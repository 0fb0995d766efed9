"""Expected calibration error and temperature scaling against loop and scipy oracles."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import optimize
from scipy.special import logsumexp

from physmoe.evaluation import TemperatureScaler, compute_metrics, expected_calibration_error


def synthetic(num_samples=20_000, num_classes=10, sharpen=1.0, seed=0):
    """Labels drawn from softmax(z): ``z`` is calibrated, ``sharpen * z`` over- or
    under-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(num_samples, num_classes))
    p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    labels = (rng.random((num_samples, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return (sharpen * z).astype(np.float32), labels


def nll(logits, labels, temperature):
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]))


def loop_ece(probabilities, labels, num_bins):
    """Guo et al. 2017, one sample at a time: bins (m/M, (m+1)/M]."""
    members = [[] for _ in range(num_bins)]
    for row, label in zip(probabilities, labels, strict=True):
        prediction = int(np.argmax(row))
        confidence = float(row[prediction])
        for m in range(num_bins):
            if m / num_bins < confidence <= (m + 1) / num_bins:
                members[m].append((confidence, prediction == label))
    total = sum(len(b) for b in members)
    return sum(
        len(b) / total * abs(np.mean([c for _, c in b]) - np.mean([q for q, _ in b]))
        for b in members
        if b
    )


def test_ece_against_loop_and_bin_edges():
    logits, labels = synthetic(num_samples=2000, sharpen=2.0, seed=1)
    z = logits.astype(np.float64)
    probs = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    for num_bins in (1, 5, 15):
        expected = loop_ece(probs, labels, num_bins)
        assert expected_calibration_error(logits, labels, num_bins) == pytest.approx(
            expected, abs=1e-9
        )
        assert expected_calibration_error(probs, labels, num_bins) == pytest.approx(
            expected, abs=1e-9
        )
    # A confidence on an edge belongs to the lower bin (0, 0.5]: rows [.5, .5] (right) and
    # [.75, .25] (wrong) fall in different bins: (|1 - .5| + |0 - .75|) / 2 = 0.625
    # (one shared bin would give |1 - 1.25| / 2 = 0.125).
    edge = np.array([[0.5, 0.5], [0.75, 0.25]])
    assert expected_calibration_error(edge, np.array([0, 1]), num_bins=2) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error(edge, np.array([0, 1]), num_bins=0)


def test_calibrated_data_gives_temperature_near_one():
    logits, labels = synthetic(seed=2)
    temperature = TemperatureScaler().fit(logits, labels)
    assert temperature == pytest.approx(1.0, abs=0.04)


@pytest.mark.parametrize("sharpen", [3.0, 0.4])
def test_fit_matches_scipy_and_fixes_confidence(sharpen):
    logits, labels = synthetic(sharpen=sharpen, seed=3)
    scaler = TemperatureScaler()
    temperature = scaler.fit(logits, labels)
    # Independent oracle: scipy's bounded scalar search over log T on the same NLL.
    result = optimize.minimize_scalar(
        lambda log_t: nll(logits, labels, np.exp(log_t)),
        bounds=(-3, 3),
        method="bounded",
        options={"xatol": 1e-8},
    )
    assert temperature == pytest.approx(np.exp(result.x), rel=1e-4)
    assert nll(logits, labels, temperature) <= result.fun + 1e-10
    assert temperature == pytest.approx(sharpen, rel=0.05)  # it undoes the sharpening
    assert isinstance(temperature, float) and scaler.temperature == temperature

    before = compute_metrics(logits, labels)
    after = compute_metrics(scaler.transform(logits), labels)
    assert after["top1_accuracy"] == before["top1_accuracy"]  # the arg-max is untouched
    assert after["nll"] < before["nll"]
    assert after["ece"] < 0.02 < before["ece"]
    # Deterministic: a second fit gives the same float.
    assert TemperatureScaler().fit(logits, labels) == temperature


def test_transform_keeps_type_and_dtype():
    scaler = TemperatureScaler(temperature=2.0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        logits = torch.tensor([[2.0, -4.0]], dtype=dtype)
        out = scaler.transform(logits)
        assert out.dtype == dtype and torch.equal(out, torch.tensor([[1.0, -2.0]], dtype=dtype))
    out = scaler(np.array([[2.0, -4.0]], dtype=np.float32))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1.0, -2.0]])
    assert TemperatureScaler().transform(torch.ones(2, 3)).equal(torch.ones(2, 3))
    # Low-precision logits can be fitted directly.
    logits, labels = synthetic(num_samples=4000, sharpen=2.0, seed=4)
    t16 = TemperatureScaler().fit(
        torch.from_numpy(logits).to(torch.bfloat16), torch.from_numpy(labels)
    )
    assert t16 == pytest.approx(2.0, rel=0.1)


def test_separable_data_stops_at_the_bound_with_a_warning(caplog):
    logits = np.eye(5)[np.arange(50) % 5] * 4.0
    labels = np.arange(50) % 5
    with caplog.at_level(logging.WARNING, logger="physmoe.evaluation.calibration"):
        temperature = TemperatureScaler().fit(logits, labels, bounds=(0.1, 10.0))
    assert temperature == pytest.approx(0.1)
    assert "search bound" in caplog.text


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive finite"):
        TemperatureScaler(0.0)
    with pytest.raises(TypeError, match="float"):
        TemperatureScaler("1.5")
    with pytest.raises(ValueError, match="non-finite"):
        TemperatureScaler().fit(np.array([[0.0, np.inf]]), np.array([0]))
    with pytest.raises(ValueError, match="T_min < T_max"):
        TemperatureScaler().fit(np.zeros((2, 2)), np.array([0, 1]), bounds=(2.0, 1.0))
    with pytest.raises(TypeError, match="floating point"):
        TemperatureScaler().transform(torch.ones(2, dtype=torch.long))


def test_apply_temperature_keeps_hard_masked_logits_finite():
    from physmoe.evaluation import apply_temperature

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        lowest = torch.finfo(dtype).min
        logits = torch.tensor([[2.0, lowest, 0.5], [lowest, 1.0, lowest]], dtype=dtype)
        scaled = apply_temperature(logits, 0.5)
        assert scaled.dtype == dtype and torch.isfinite(scaled).all()
        assert scaled[0, 0] == 4.0 and scaled[0, 1] == lowest
        probabilities = torch.softmax(scaled.float(), dim=-1)
        assert probabilities[0, 1] == 0 and probabilities[1].tolist() == [0.0, 1.0, 0.0]
        # A plain division overflows: the defect apply_temperature prevents.
        assert torch.isinf(logits / 0.5).any()
    array = np.array([[3.0, np.finfo(np.float32).min]], dtype=np.float32)
    scaled = apply_temperature(array, 0.25)
    assert scaled.dtype == np.float32 and np.isfinite(scaled).all() and scaled[0, 0] == 12.0
    metrics = compute_metrics(scaled, np.array([0]))
    assert metrics["top1_accuracy"] == 1.0 and np.isfinite(metrics["nll"])


def test_hard_masked_true_classes_leave_the_fit_and_the_nll_bounded(caplog):
    # Hard hierarchical inference: a wrong crystal system masks the true class at the dtype's
    # lowest value. Those samples have probability 0 at every T and say nothing about T.
    logits, labels = synthetic(num_samples=4000, sharpen=1.7, seed=3)
    masked = logits.copy()
    wrong = np.arange(0, 4000, 10)  # 10% of the samples
    masked[wrong, labels[wrong]] = np.finfo(np.float32).min
    keep = np.setdiff1d(np.arange(4000), wrong)
    with caplog.at_level(logging.INFO, logger="physmoe.evaluation.calibration"):
        temperature = TemperatureScaler().fit(masked, labels)
    assert temperature == pytest.approx(
        TemperatureScaler().fit(logits[keep], labels[keep]), rel=1e-9
    )
    assert 1.2 < temperature < 2.5 and "leaves out 400 of 4000" in caplog.text
    with pytest.raises(ValueError, match="nothing to fit"):
        TemperatureScaler().fit(masked[wrong], labels[wrong])

    # NLL: each masked sample contributes the float64 floor (-log of the smallest normal), not 1e38.
    metrics = compute_metrics(masked, labels)
    clean = compute_metrics(logits[keep], labels[keep])
    floor = -np.log(np.finfo(np.float64).tiny)
    assert metrics["nll"] == pytest.approx(
        (clean["nll"] * len(keep) + floor * len(wrong)) / 4000, rel=1e-9
    )


def test_confidence_bins_are_float64_whatever_the_input_dtype():
    from physmoe.evaluation.calibration import top1_confidence_bins

    for dtype in (torch.float32, torch.bfloat16):
        bins = top1_confidence_bins(
            torch.tensor([0.3, 0.9], dtype=dtype), torch.tensor([True, False]), 2
        )
        assert [b.dtype for b in bins] == [torch.float64] * 3
        assert bins[0].tolist() == [1.0, 1.0] and bins[2].tolist() == [1.0, 0.0]
