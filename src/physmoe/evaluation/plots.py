"""Evaluation plots (matplotlib, from the ``physmoe[plot]`` extra).

matplotlib is imported only when a plot is drawn. Figures are built with
``matplotlib.figure.Figure`` (no pyplot), so drawing is headless and never changes the caller's
backend. Files are written atomically (temporary file, then ``os.replace``) and an existing file
is replaced only with ``overwrite=True``. The format follows the file suffix (PNG by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..crystallography import CRYSTAL_SYSTEMS, ID2LABEL
from ..utils import atomic_open
from ._inputs import to_tensor
from .metrics import SHOT_THRESHOLDS

__all__ = ["plot_crystal_system_confusion", "plot_pattern_top5", "plot_per_class_accuracy"]


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("physmoe's plots need matplotlib: pip install 'physmoe[plot]'") from error
    return Figure(**kwargs)


def _save(figure, path, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {path.parent} does not exist")
    file_format = path.suffix.lstrip(".").lower() or "png"
    supported = figure.canvas.get_supported_filetypes()
    if file_format not in supported:
        raise ValueError(
            f"cannot write {path}: format {file_format!r} is not one of {sorted(supported)}"
        )
    with atomic_open(path, "wb") as stream:
        figure.savefig(stream, format=file_format, dpi=120, bbox_inches="tight")
    return path


def _vector(values, name: str) -> np.ndarray:
    array = to_tensor(values, name).to(torch.float64).numpy()
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    return array


def plot_per_class_accuracy(
    per_class_acc,
    train_counts,
    path,
    test_counts=None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Scatter of per-class test accuracy against training samples per class (symlog x axis).

    Args:
        per_class_acc: ``[C]`` accuracies in [0, 1]
            (:func:`~physmoe.evaluation.per_class_accuracy`); NaN entries are skipped.
        train_counts: ``[C]`` training samples per class.
        path: Output file; the suffix picks the format.
        test_counts: ``[C]`` test samples per class; classes with none are skipped (their
            accuracy is undefined), and marker areas grow with the count.
        title: Figure title.
        overwrite: Replace an existing file.

    Dashed lines mark the few/medium/many-shot boundaries (20 and 100 training samples).
    """
    accuracy = _vector(per_class_acc, "per_class_acc")
    train = _vector(train_counts, "train_counts")
    if train.shape != accuracy.shape:
        raise ValueError(f"train_counts has shape {train.shape}, per_class_acc {accuracy.shape}")
    keep = ~np.isnan(accuracy)
    sizes = np.full(accuracy.shape, 16.0)
    if test_counts is not None:
        test = _vector(test_counts, "test_counts")
        if test.shape != accuracy.shape:
            raise ValueError(f"test_counts has shape {test.shape}, per_class_acc {accuracy.shape}")
        keep &= test > 0
        sizes = 8.0 + 4.0 * np.sqrt(test)
    figure = _figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    axes.scatter(train[keep], accuracy[keep], s=sizes[keep], alpha=0.6, edgecolors="none")
    for threshold in (SHOT_THRESHOLDS["few"], SHOT_THRESHOLDS["many"]):
        axes.axvline(threshold, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xscale(
        "symlog", linthresh=1.0
    )  # linear near 0 so classes with no training sample show
    axes.set_xlim(-0.4, max(float(train.max()), float(SHOT_THRESHOLDS["many"])) * 1.5)
    transform = axes.get_xaxis_transform()  # x in data units, y in axes units
    for x, name in (
        (SHOT_THRESHOLDS["few"] / 2.2, "few"),
        (44.0, "medium"),
        (SHOT_THRESHOLDS["many"] * 2.2, "many"),
    ):
        axes.text(
            x, 1.01, name, transform=transform, ha="center", va="bottom", fontsize=8, color="grey"
        )
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlabel("training samples of the class")
    axes.set_ylabel("test top-1 accuracy of the class")
    axes.set_title(title or f"Per-class accuracy ({int(keep.sum())} classes)", pad=14)
    axes.grid(alpha=0.3)
    return _save(figure, path, overwrite)


def plot_crystal_system_confusion(
    true_sys, pred_sys, path, title: str | None = None, overwrite: bool = False
) -> Path:
    """7 x 7 crystal-system confusion matrix: colour = row-normalised recall, text = counts.

    Args:
        true_sys: ``[N]`` true crystal-system indices (0 = triclinic ... 6 = cubic).
        pred_sys: ``[N]`` predicted crystal-system indices.
        path: Output file; the suffix picks the format.
    """
    from .metrics import confusion_matrix

    num_systems = len(CRYSTAL_SYSTEMS)
    counts = confusion_matrix(true_sys, pred_sys, num_systems)
    recall = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = _figure(figsize=(6.5, 5.5))
    axes = figure.add_subplot()
    image = axes.imshow(recall, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="fraction of the true system")
    rows, columns = np.nonzero(counts)
    for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
        colour = "white" if recall[row, column] > 0.5 else "black"
        axes.text(
            column,
            row,
            str(counts[row, column]),
            ha="center",
            va="center",
            color=colour,
            fontsize=8,
        )
    axes.set_xticks(range(num_systems), CRYSTAL_SYSTEMS, rotation=45, ha="right")
    axes.set_yticks(range(num_systems), CRYSTAL_SYSTEMS)
    axes.set_xlabel("predicted crystal system")
    axes.set_ylabel("true crystal system")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    axes.set_title(title or f"Crystal-system confusion (accuracy {accuracy:.3f})")
    return _save(figure, path, overwrite)


def plot_pattern_top5(
    two_theta,
    intensity,
    top_labels: Sequence[int | str],
    top_probabilities: Sequence[float],
    path,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """A PXRD pattern (left) next to its top-5 space-group probabilities (right).

    Args:
        two_theta: ``[L]`` 2-theta values in degrees.
        intensity: ``[L]`` intensities.
        top_labels: Up to 5 predicted classes, most probable first: 0-based labels (shown via
            ``ID2LABEL``, e.g. ``"P2_1/c (14)"``) or ready-made names.
        top_probabilities: Their probabilities in [0, 1].
        path: Output file; the suffix picks the format.
    """
    angles = _vector(two_theta, "two_theta")
    values = _vector(intensity, "intensity")
    if angles.shape != values.shape:
        raise ValueError(f"two_theta has shape {angles.shape}, intensity {values.shape}")
    probabilities = _vector(top_probabilities, "top_probabilities")
    labels = list(top_labels)
    if len(labels) != probabilities.size:
        raise ValueError(f"{len(labels)} top_labels but {probabilities.size} top_probabilities")
    if np.any((probabilities < 0) | (probabilities > 1)):
        raise ValueError(f"top_probabilities must lie in [0, 1], got {probabilities.tolist()}")
    names = [
        ID2LABEL[int(label)] if isinstance(label, (int, np.integer)) else str(label)
        for label in labels
    ]

    figure = _figure(figsize=(11, 3.8))
    pattern_axes, bar_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.4]})
    pattern_axes.plot(angles, values, linewidth=0.8, color="black")
    pattern_axes.set_xlabel("2θ (degrees)")
    pattern_axes.set_ylabel("intensity")
    pattern_axes.set_xlim(angles.min(), angles.max())
    positions = np.arange(len(names))
    bar_axes.barh(positions, probabilities, color="tab:blue")
    bar_axes.set_yticks(positions, names)
    bar_axes.invert_yaxis()  # most probable on top
    bar_axes.set_xlim(0.0, 1.0)
    bar_axes.set_xlabel("probability")
    for position, probability in zip(positions.tolist(), probabilities.tolist(), strict=True):
        bar_axes.text(
            min(probability + 0.02, 0.8), position, f"{probability:.2f}", va="center", fontsize=8
        )
    bar_axes.set_title("top-5 space groups")
    if title:
        figure.suptitle(title)
    return _save(figure, path, overwrite)
