"""Plots: valid PNG files, atomic and non-clobbering writes, checked inputs."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

from physmoe.crystallography import CRYSTAL_SYSTEMS
from physmoe.data.grid import TwoThetaGrid
from physmoe.evaluation import (
    per_class_accuracy,
    plot_crystal_system_confusion,
    plot_pattern_top5,
    plot_per_class_accuracy,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_write_valid_pngs_without_touching_the_backend(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 230, size=400)
    logits = rng.normal(size=(400, 230))
    logits[np.arange(400), labels] += 2.5
    accuracy, counts = per_class_accuracy(logits, labels)
    train = np.floor(np.exp(rng.uniform(0, 8, size=230)))

    path = plot_per_class_accuracy(accuracy, train, tmp_path / "per_class.png", test_counts=counts)
    assert path == tmp_path / "per_class.png"
    width, height = png_size(path)
    assert width > 300 and height > 200

    systems = rng.integers(0, 7, size=400)
    predicted = np.where(rng.random(400) < 0.7, systems, rng.integers(0, 7, size=400))
    width, height = png_size(
        plot_crystal_system_confusion(systems, predicted, tmp_path / "systems.png")
    )
    assert width > 300 and height > 300

    grid = TwoThetaGrid()
    angles = grid.values()
    pattern = 100 * np.exp(
        -0.5 * ((angles[:, None] - np.array([28.4, 47.3, 56.1])) / 0.05) ** 2
    ).sum(1)
    out = plot_pattern_top5(
        angles, pattern, [226, 13, "custom"], [0.7, 0.2, 0.05], tmp_path / "pattern.png", title="Si"
    )
    width, height = png_size(out)
    assert width > 600
    assert matplotlib.get_backend() == backend
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pattern.png",
        "per_class.png",
        "systems.png",
    ]  # no temporary files left


def test_plots_refuse_to_overwrite_and_check_inputs(tmp_path):
    target = tmp_path / "systems.png"
    target.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        plot_crystal_system_confusion([0, 1], [0, 1], target)
    assert target.read_bytes() == b"user data"
    plot_crystal_system_confusion([0, 1], [0, 1], target, overwrite=True)
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="format 'xyz'"):
        plot_crystal_system_confusion([0, 1], [0, 1], tmp_path / "bad.xyz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_crystal_system_confusion([0, 1], [0, 1], tmp_path / "missing" / "a.png")
    with pytest.raises(ValueError, match=r"predictions\[0\] = 7"):
        plot_crystal_system_confusion([0], [len(CRYSTAL_SYSTEMS)], tmp_path / "c.png")
    with pytest.raises(ValueError, match="train_counts has shape"):
        plot_per_class_accuracy(np.zeros(3), np.zeros(4), tmp_path / "p.png")
    with pytest.raises(ValueError, match="2 top_labels but 1 top_probabilities"):
        plot_pattern_top5(np.arange(3.0), np.ones(3), [1, 2], [0.5], tmp_path / "t.png")
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        plot_pattern_top5(np.arange(3.0), np.ones(3), [1], [1.5], tmp_path / "t.png")
    # An SVG goes through the same atomic path.
    svg = plot_crystal_system_confusion([0, 1, 6], [0, 2, 6], tmp_path / "c.svg")
    assert b"<svg" in svg.read_bytes()[:500]


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"physmoe\[plot\]"):
        plot_crystal_system_confusion([0], [0], tmp_path / "c.png")
