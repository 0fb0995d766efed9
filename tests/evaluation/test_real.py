"""The real-structure benchmark: its numbers against direct computations, the CLI end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tiny model helper

from physmoe import ResNet1D_MoE, XRDFeatureExtractor  # noqa: E402
from physmoe.cli import main  # noqa: E402
from physmoe.crystallography import (  # noqa: E402
    CRYSTAL_SYSTEMS,
    crystal_system_index,
    indistinguishable_groups,
)
from physmoe.data import MeasurementConditions, PXRDCollator, TwoThetaGrid, space_group_prior  # noqa: E402
from physmoe.data.embedded import read_structure_archive  # noqa: E402
from physmoe.evaluation.real import (  # noqa: E402
    format_real_benchmark,
    load_real_structures,
    real_benchmark_inputs,
    real_benchmark_metrics,
    risk_coverage,
    run_real_benchmark,
)
from tiny_models import tiny_config  # noqa: E402

RESOURCES = Path(__file__).resolve().parents[2] / "src" / "physmoe" / "resources"


def direct_metrics(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """The benchmark's numbers with plain numpy and Python, one sample at a time."""
    z = logits / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = {"top1": [], "top5": [], "system": [], "set": [], "confidence": []}
    for row, label in zip(p, labels, strict=True):
        ranking = sorted(range(230), key=lambda c: (-row[c], c))
        out["top1"].append(ranking[0] == label)
        out["top5"].append(label in ranking[:5])
        out["system"].append(
            crystal_system_index(ranking[0] + 1) == crystal_system_index(label + 1)
        )
        out["set"].append(label + 1 in indistinguishable_groups(ranking[0] + 1))
        out["confidence"].append(row[ranking[0]])
    return {key: np.array(value) for key, value in out.items()}


def direct_risk_coverage(confidence, correct, percent):
    order = sorted(range(len(confidence)), key=lambda i: (-confidence[i], i))
    k = max(1, math.ceil(percent * len(confidence) / 100 - 1e-9))
    return float(np.mean([correct[i] for i in order[:k]]))


def test_risk_coverage_against_hand_values():
    confidence = [0.95, 0.2, 0.6, 0.8, 0.4, 0.55, 0.35, 0.9, 0.1, 0.7]
    correct = [1, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    # Most confident first: 0.95 1, 0.9 1, 0.8 1, 0.7 0, 0.6 1, 0.55 0, 0.4 0, 0.35 1, 0.2 0, 0.1 0
    result = risk_coverage(np.array(confidence), np.array(correct, dtype=bool))
    assert result["coverage_100_accuracy"] == pytest.approx(5 / 10)
    assert result["coverage_80_accuracy"] == pytest.approx(5 / 8)
    assert result["coverage_60_accuracy"] == pytest.approx(4 / 6)
    assert result["coverage_40_accuracy"] == pytest.approx(3 / 4)
    assert result["coverage_20_accuracy"] == pytest.approx(2 / 2)
    assert result["coverage_60_min_confidence"] == pytest.approx(0.55)
    assert result["confidence_0.3_coverage"] == pytest.approx(0.8)
    assert result["confidence_0.3_accuracy"] == pytest.approx(5 / 8)
    assert result["confidence_0.5_coverage"] == pytest.approx(0.6)
    assert result["confidence_0.5_accuracy"] == pytest.approx(4 / 6)
    assert result["confidence_0.7_coverage"] == pytest.approx(0.4)  # 0.7 itself is kept
    assert result["confidence_0.7_accuracy"] == pytest.approx(3 / 4)
    assert result["confidence_0.9_accuracy"] == pytest.approx(1.0)
    hits = np.cumsum([1, 1, 1, 0, 1, 0, 0, 1, 0, 0])
    assert result["aurc"] == pytest.approx(np.mean(1 - hits / np.arange(1, 11)))
    # Nothing above the threshold: coverage 0, no accuracy (never NaN).
    low = risk_coverage(np.array([0.2, 0.25]), np.array([True, False]))
    assert low["confidence_0.9_coverage"] == 0.0 and "confidence_0.9_accuracy" not in low
    with pytest.raises(ValueError, match="one length"):
        risk_coverage(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="percentages"):
        risk_coverage(np.ones(3), np.ones(3), coverages=(0,))


def test_benchmark_metrics_against_a_direct_computation():
    rng = np.random.default_rng(0)
    n = 60
    labels = rng.choice([0, 1, 2, 5, 9, 13, 61, 32, 150, 151, 153, 224, 215, 228], size=n)
    logits = rng.normal(0.0, 1.0, size=(n, 230))
    # Some rows sure of the true group, some of an indistinguishable one, some of another system.
    logits[np.arange(0, n, 3), labels[::3]] += 8.0
    logits[1::6, 5] += 6.0  # Pm: right set when the truth is P2 (label 2)
    logits[2::6, 224] += rng.uniform(1, 6, size=len(range(2, n, 6)))
    systems = rng.normal(size=(n, 7))
    temperature = 1.7
    metrics = real_benchmark_metrics(logits, labels, systems, temperature=temperature)
    direct = direct_metrics(logits, labels, temperature)
    assert metrics["num_samples"] == n
    assert metrics["top1_accuracy"] == pytest.approx(direct["top1"].mean())
    assert metrics["top5_accuracy"] == pytest.approx(direct["top5"].mean())
    assert metrics["crystal_system_accuracy_from_sg"] == pytest.approx(direct["system"].mean())
    true_system = np.array([crystal_system_index(int(g) + 1) for g in labels])
    assert metrics["crystal_system_accuracy_head"] == pytest.approx(
        (systems.argmax(1) == true_system).mean()
    )
    assert metrics["powder_set_accuracy"] == pytest.approx(direct["set"].mean())
    assert metrics["powder_set_accuracy"] > metrics["top1_accuracy"]
    for index, name in enumerate(CRYSTAL_SYSTEMS):
        mask = true_system == index
        assert metrics[f"{name}_num_samples"] == int(mask.sum())
        if mask.any():
            assert metrics[f"{name}_top1_accuracy"] == pytest.approx(direct["top1"][mask].mean())
        else:
            assert f"{name}_top1_accuracy" not in metrics
    for percent in (100, 80, 60, 40, 20):
        expected = direct_risk_coverage(direct["confidence"], direct["top1"], percent)
        assert metrics[f"coverage_{percent}_accuracy"] == pytest.approx(expected)
    for t in (0.3, 0.5, 0.7, 0.9):
        kept = direct["confidence"] >= t
        assert metrics[f"confidence_{t:g}_coverage"] == pytest.approx(kept.mean())
        if kept.any():
            assert metrics[f"confidence_{t:g}_accuracy"] == pytest.approx(
                direct["top1"][kept].mean()
            )
    # Frequency baselines straight from the prior.
    prior = space_group_prior("icsd")
    ranking = np.argsort(-prior, kind="stable")
    assert metrics["baseline_prior_top1_accuracy"] == pytest.approx(np.mean(labels == ranking[0]))
    assert metrics["baseline_prior_top5_accuracy"] == pytest.approx(
        np.isin(labels, ranking[:5]).mean()
    )
    best_set = indistinguishable_groups(int(ranking[0]) + 1)
    assert metrics["baseline_prior_powder_set_accuracy"] == pytest.approx(
        np.isin(labels + 1, best_set).mean()
    )
    system_mass = np.zeros(7)
    for group in range(230):
        system_mass[crystal_system_index(group + 1)] += prior[group]
    majority = int(system_mass.argmax())
    assert metrics["baseline_majority_system"] == CRYSTAL_SYSTEMS[majority]
    assert metrics["baseline_majority_system_accuracy"] == pytest.approx(
        np.mean(true_system == majority)
    )
    json.dumps(metrics, allow_nan=False)


def test_benchmark_metrics_by_hand():
    # Three structures: P2 (label 2), Fm-3m (224), P2_1/c (13); the model says P2, F-43m, Pnma.
    labels = np.array([2, 224, 13])
    logits = np.zeros((3, 230))
    logits[0, 2], logits[1, 215], logits[2, 61] = 10.0, 10.0, 10.0
    logits[1, 224] = 9.0  # Fm-3m second: in the top 5
    metrics = real_benchmark_metrics(logits, labels)
    assert metrics["top1_accuracy"] == pytest.approx(1 / 3)
    assert metrics["top5_accuracy"] == pytest.approx(2 / 3)
    assert metrics["powder_set_accuracy"] == pytest.approx(2 / 3)  # F-43m and Fm-3m: one set
    assert metrics["crystal_system_accuracy_from_sg"] == pytest.approx(2 / 3)
    assert metrics["monoclinic_top1_accuracy"] == pytest.approx(1 / 2)
    assert metrics["cubic_top1_accuracy"] == 0.0 and metrics["cubic_num_samples"] == 1
    assert "triclinic_top1_accuracy" not in metrics and metrics["triclinic_num_samples"] == 0
    assert "crystal_system_accuracy_head" not in metrics
    with pytest.raises(ValueError, match="230 columns"):
        real_benchmark_metrics(logits[:, :10], labels % 10)
    with pytest.raises(ValueError, match="temperature"):
        real_benchmark_metrics(logits, labels, temperature=0.0)


def test_real_structures_and_patterns():
    crystals, labels, ids = load_real_structures()
    archive = read_structure_archive(RESOURCES / "real_structures.npz")
    assert len(crystals) == len(archive) >= 300
    assert {crystal_system_index(int(g) + 1) for g in labels} == set(range(7))
    np.testing.assert_array_equal(labels, archive.space_groups.astype(np.int64) - 1)
    _, some, some_ids = load_real_structures(max_samples=10)
    assert len(some) == 10 and some_ids[0] == ids[0] and some_ids[-1] == ids[-1]
    with pytest.raises(ValueError, match="max_samples"):
        load_real_structures(max_samples=0)

    grid = TwoThetaGrid(num_points=500)
    clean = real_benchmark_inputs(grid, "clean", max_samples=70)
    lab = real_benchmark_inputs(grid, "lab", seed=3, max_samples=70)
    again = real_benchmark_inputs(grid, "lab", seed=3, max_samples=70)
    assert clean["input_values"].shape == (70, 500)
    torch.testing.assert_close(lab["input_values"], again["input_values"], rtol=0, atol=0)
    assert not torch.allclose(lab["input_values"], clean["input_values"], atol=1e-3)
    assert torch.equal(clean["labels"], lab["labels"])
    # Clean patterns are the test split's rendering of the same peaks.
    from physmoe.data import simulate_peaks

    crystals, _, _ = load_real_structures(max_samples=70)
    peaks = simulate_peaks(crystals[5], two_theta_range=(2.0, 100.0))
    expected = PXRDCollator(grid, train=False)(
        [{"peak_two_theta": peaks.two_theta, "peak_intensity": peaks.intensity}]
    )
    torch.testing.assert_close(
        clean["input_values"][5], expected["input_values"][0], rtol=1e-5, atol=1e-6
    )
    # "lab" uses the training realism ranges: not clean, but max-normalised as every pattern.
    assert MeasurementConditions.default() != MeasurementConditions.clean()
    assert torch.allclose(lab["input_values"].amax(1), torch.ones(70))
    with pytest.raises(ValueError, match="conditions"):
        real_benchmark_inputs(grid, "noisy")


class FixedLogitsModel(torch.nn.Module):
    """Returns the rows of a fixed logits table in call order, whatever the input."""

    def __init__(self, logits: torch.Tensor, system_logits: torch.Tensor, temperature: float):
        super().__init__()
        self.config = tiny_config(calibration_temperature=temperature)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.table, self.systems, self.cursor = logits, system_logits, 0
        self.batch_sizes: list[int] = []

    def forward(self, input_values):
        assert input_values.shape[1] == self.config.num_points
        rows = slice(self.cursor, self.cursor + len(input_values))
        self.cursor += len(input_values)
        self.batch_sizes.append(len(input_values))
        return SimpleNamespace(logits=self.table[rows], crystal_system_logits=self.systems[rows])


def test_run_real_benchmark_uses_the_model_outputs_in_order():
    n = 40
    _, labels, _ = load_real_structures(max_samples=n)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, 230, generator=generator)
    logits[torch.arange(0, n, 2), torch.from_numpy(labels[::2])] += 10.0  # every other one right
    systems = torch.randn(n, 7, generator=generator)
    model = FixedLogitsModel(logits, systems, temperature=0.8)
    result = run_real_benchmark(model, "clean", batch_size=7, max_samples=n, autocast_dtype=None)
    assert model.batch_sizes == [7, 7, 7, 7, 7, 5]
    expected = real_benchmark_metrics(logits, labels, systems, temperature=0.8)
    assert result == {"conditions": "clean", "seed": 0, **expected}
    assert result["top1_accuracy"] >= 0.5
    table = format_real_benchmark(result)
    assert f"{n} real structures, clean patterns, temperature 0.800" in table
    assert (
        f"{result['top1_accuracy']:.3f}" in table
        and f"{result['baseline_prior_top5_accuracy']:.3f}" in table
    )
    assert "probability >= 0.9" in table and "80% most confident" in table
    other = ResNet1D_MoE(
        tiny_config(num_labels=3, label_space_groups=[1, 2, 3], loss_preset="cross_entropy")
    )
    with pytest.raises(ValueError, match="230 space groups"):
        run_real_benchmark(other)
    with pytest.raises(ValueError, match="batch_size"):
        run_real_benchmark(model, batch_size=0)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for a few steps on generated crystals (never on the real set)."""
    torch.manual_seed(0)
    model = ResNet1D_MoE(tiny_config(calibration_temperature=1.3))
    archive = read_structure_archive()  # the embedded generated structures
    from physmoe.data import simulate_peaks_batch

    keep = np.arange(0, 64)
    peaks = simulate_peaks_batch(
        [archive.crystal(int(i)) for i in keep], two_theta_range=(2.0, 100.0)
    )
    grid = TwoThetaGrid.from_config(model.config)
    rows = [
        {
            "peak_two_theta": p.two_theta,
            "peak_intensity": p.intensity,
            "labels": int(archive.space_groups[i]) - 1,
        }
        for p, i in zip(peaks, keep, strict=True)
    ]
    batch = PXRDCollator(grid, train=False)(rows)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(
            model(batch["input_values"]).logits, batch["labels"]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    XRDFeatureExtractor.from_config(model.config).save_pretrained(folder)
    return folder


def test_cli_evaluate_real_end_to_end(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "real.json"
    argv = ["evaluate", str(tiny_checkpoint), "--real", "--max-samples", "50", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["num_samples"] == 50 and metrics["conditions"] == "clean"
    assert metrics["temperature"] == pytest.approx(1.3)
    model = ResNet1D_MoE.from_pretrained(tiny_checkpoint)
    direct = run_real_benchmark(model, max_samples=50)
    for key in (
        "top1_accuracy",
        "top5_accuracy",
        "powder_set_accuracy",
        "coverage_60_accuracy",
        "crystal_system_accuracy_head",
        "baseline_prior_top5_accuracy",
    ):
        assert metrics[key] == pytest.approx(direct[key], abs=1e-6), key
    assert "real-structure benchmark" in printed and "ICSD-frequency baseline" in printed
    assert f"{metrics['top5_accuracy']:.3f}" in printed

    assert main(argv[:-2] + ["--conditions", "lab", "--seed", "1", "--output", str(out)]) == 0
    lab = json.loads(out.read_text())
    assert lab["conditions"] == "lab" and lab["seed"] == 1 and lab["num_samples"] == 50
    capsys.readouterr()
    assert main(["evaluate", str(tiny_checkpoint), "--conditions", "lab"]) == 1
    assert "--real" in capsys.readouterr().err
