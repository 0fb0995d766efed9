"""The real-structure benchmark: a trained model on the 419 real crystal structures.

The structures ship in ``physmoe/resources/real_structures.npz`` (ordered structures from pip
packages: AFLOW prototypes and Materials Project structures from pymatgen, COD and element
structures from ase, JARVIS and literature structures from pyxtal; spglib labels and
conventional cells; sources and licences in ``real_structures_sources.csv``, made by
``scripts/collect_real_structures.py``). **They are a test set only: never train on them or
choose hyper-parameters with them.**

Each structure's peaks are simulated at Cu Kα1 over the datasets' 2θ range and rendered on the
model's grid, either clean (``conditions="clean"``, as the test split is evaluated) or with
laboratory realism (``"lab"``: the training ranges of
:meth:`~physmoe.data.MeasurementConditions.default` — instrument and size broadening, zero shift,
sample displacement, Kα2, texture, background, counting noise — drawn once with a fixed seed, so
the patterns are the same on every run). Probabilities are ``softmax(logits / T)`` at the
checkpoint's calibration temperature (fitted on generated validation crystals).

:func:`real_benchmark_metrics` reports, over the whole set (see :func:`format_real_benchmark`):

* ``top1_accuracy``, ``top5_accuracy``, balanced accuracy, macro-F1, ECE and NLL
  (:func:`~physmoe.evaluation.compute_metrics`);
* ``crystal_system_accuracy_from_sg`` (system of the predicted group) and, with a system head,
  ``crystal_system_accuracy_head``;
* ``{system}_top1_accuracy`` and ``{system}_num_samples`` for the seven crystal systems;
* ``powder_set_accuracy``: the true group lies in the predicted group's powder-equivalence set
  (:func:`~physmoe.crystallography.indistinguishable_groups`: same Laue class and systematic
  absences), the best a pattern's line positions allow;
* risk-coverage: ``coverage_{c}_accuracy`` over the ``ceil(c N / 100)`` most confident
  predictions for c = 100, 80, 60, 40, 20 (%), ``confidence_{t}_coverage`` and
  ``confidence_{t}_accuracy`` for predictions with probability >= t (t = 0.3, 0.5, 0.7, 0.9;
  what ``--min-confidence t`` keeps), and ``aurc``, the mean risk (1 - accuracy) over all
  coverages k / N;
* baselines that never look at the pattern: ``baseline_prior_top1_accuracy`` /
  ``baseline_prior_top5_accuracy`` (always the 1 / 5 most frequent groups of the ICSD prior),
  ``baseline_prior_powder_set_accuracy`` and ``baseline_prior_crystal_system_accuracy`` (of the
  most frequent group), and ``baseline_majority_system_accuracy`` (always the crystal system
  most frequent in the ICSD prior).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from ..crystallography import (
    CRYSTAL_SYSTEMS,
    NUM_CRYSTAL_SYSTEMS,
    NUM_SPACE_GROUPS,
    powder_equivalence_index,
    sg_to_sys_map,
)
from ._inputs import as_labels, as_scores, to_tensor
from .calibration import apply_temperature
from .metrics import compute_metrics

logger = logging.getLogger(__name__)

__all__ = [
    "REAL_CONDITIONS",
    "RISK_COVERAGES",
    "CONFIDENCE_THRESHOLDS",
    "load_real_structures",
    "real_benchmark_inputs",
    "risk_coverage",
    "real_benchmark_metrics",
    "run_real_benchmark",
    "evaluate_real_checkpoint",
    "format_real_benchmark",
]

#: Rendering choices: clean patterns, or fixed-seed laboratory realism.
REAL_CONDITIONS: tuple[str, ...] = ("clean", "lab")
#: Coverages (percent of the structures, most confident first) of the risk-coverage table.
RISK_COVERAGES: tuple[int, ...] = (100, 80, 60, 40, 20)
#: Confidence thresholds of the risk-coverage table (what ``--min-confidence`` keeps).
CONFIDENCE_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)

_REAL_FILE = "real_structures.npz"
# Patterns are rendered in fixed chunks, so "lab" patterns do not depend on the model batch size.
_RENDER_CHUNK = 64


def _check_max_samples(max_samples: int | None, available: int) -> int:
    if max_samples is None:
        return available
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)):
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    return min(int(max_samples), available)


def load_real_structures(max_samples: int | None = None):
    """The benchmark's structures: ``(crystals, labels, structure_ids)``.

    Args:
        max_samples: Keep this many, evenly spaced through the archive (its order mixes sources
            and systems); default all 419.

    Returns:
        A list of :class:`~physmoe.data.structures.Crystal`, int64 0-based labels ``[N]``
        (spglib's space group - 1) and the structure ids ``[N]`` (strings, as in
        ``real_structures_sources.csv``).
    """
    from importlib import resources

    from ..data.embedded import read_structure_archive

    with resources.as_file(resources.files("physmoe.resources").joinpath(_REAL_FILE)) as path:
        archive = read_structure_archive(path)
    count = _check_max_samples(max_samples, len(archive))
    keep = np.unique(np.linspace(0, len(archive) - 1, count).round().astype(np.int64))
    crystals = [archive.crystal(int(i)) for i in keep]
    labels = archive.space_groups[keep].astype(np.int64) - 1
    return crystals, labels, archive.structure_ids[keep].astype(str)


def real_benchmark_inputs(
    grid, conditions: str = "clean", *, seed: int = 0, max_samples: int | None = None
) -> dict:
    """The benchmark's patterns on ``grid`` (a :class:`~physmoe.data.TwoThetaGrid`).

    Peaks at Cu Kα1 over :data:`~physmoe.data.dataset.PEAK_TWO_THETA_RANGE` (as the datasets
    store them), rendered by :class:`~physmoe.data.PXRDCollator`: ``"clean"`` as for the test
    split, ``"lab"`` with the training realism drawn from ``seed`` and each chunk of 64
    structure ids (deterministic).

    Returns:
        ``{"input_values": FloatTensor [N, L], "labels": LongTensor [N],
        "structure_ids": list[str]}``.
    """
    from ..data import MeasurementConditions, PXRDCollator, simulate_peaks_batch
    from ..data.dataset import PEAK_TWO_THETA_RANGE, PEAK_WAVELENGTH

    if conditions not in REAL_CONDITIONS:
        raise ValueError(f"conditions must be one of {REAL_CONDITIONS}, got {conditions!r}")
    crystals, labels, ids = load_real_structures(max_samples)
    peaks = simulate_peaks_batch(
        crystals, wavelength=PEAK_WAVELENGTH, two_theta_range=PEAK_TWO_THETA_RANGE
    )
    collator = PXRDCollator(
        grid,
        conditions=MeasurementConditions.default() if conditions == "lab" else None,
        train=conditions == "lab",
        peaks_wavelength=PEAK_WAVELENGTH,
        seed=int(seed),
    )
    rows = [
        {"structure_id": sid, "peak_two_theta": p.two_theta, "peak_intensity": p.intensity}
        for sid, p in zip(ids, peaks, strict=True)
    ]
    patterns = [
        collator(rows[start : start + _RENDER_CHUNK])["input_values"]
        for start in range(0, len(rows), _RENDER_CHUNK)
    ]
    return {
        "input_values": torch.cat(patterns),
        "labels": torch.from_numpy(labels),
        "structure_ids": list(ids),
    }


def risk_coverage(
    confidence,
    correct,
    coverages: Sequence[int] = RISK_COVERAGES,
    thresholds: Sequence[float] = CONFIDENCE_THRESHOLDS,
) -> dict[str, float]:
    """Accuracy of the predictions kept when abstaining on the least confident ones.

    Args:
        confidence: ``[N]`` probability of each predicted class.
        correct: ``[N]`` whether each prediction is right (bool or 0/1).
        coverages: Percentages: keep the ``ceil(c N / 100)`` most confident predictions
            (ties in confidence kept in sample order).
        thresholds: Keep the predictions with ``confidence >= t``.

    Returns:
        ``coverage_{c}_accuracy`` and ``coverage_{c}_min_confidence`` (the confidence of the
        least confident kept prediction); ``confidence_{t}_coverage`` (fraction kept) and
        ``confidence_{t}_accuracy`` (omitted when nothing is kept); ``aurc``, the mean of
        ``1 - accuracy`` over the N coverages ``k / N`` (lower is better).
    """
    confidence = to_tensor(confidence, "confidence").to(torch.float64)
    correct = to_tensor(correct, "correct")
    if confidence.ndim != 1 or confidence.shape != correct.shape or confidence.numel() == 0:
        raise ValueError(
            f"confidence and correct must be non-empty [N] arrays of one length, got "
            f"{tuple(confidence.shape)} and {tuple(correct.shape)}"
        )
    if not bool(torch.isfinite(confidence).all()):
        raise ValueError("confidence contains a non-finite value")
    correct = correct.to(torch.float64)
    num = confidence.numel()
    order = torch.sort(confidence, descending=True, stable=True).indices
    kept = torch.arange(1, num + 1, dtype=torch.float64)
    accuracy_at = correct[order].cumsum(0) / kept  # accuracy of the k most confident, k = 1..N
    result: dict[str, float] = {}
    for percent in coverages:
        if not 0 < percent <= 100:
            raise ValueError(f"coverages are percentages in (0, 100], got {percent!r}")
        k = max(1, math.ceil(percent * num / 100 - 1e-9))
        result[f"coverage_{percent:g}_accuracy"] = float(accuracy_at[k - 1])
        result[f"coverage_{percent:g}_min_confidence"] = float(confidence[order[k - 1]])
    for threshold in thresholds:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"confidence thresholds lie in [0, 1], got {threshold!r}")
        keep = confidence >= threshold
        result[f"confidence_{threshold:g}_coverage"] = float(keep.to(torch.float64).mean())
        if bool(keep.any()):
            result[f"confidence_{threshold:g}_accuracy"] = float(correct[keep].mean())
    result["aurc"] = float((1.0 - accuracy_at).mean())
    return result


def real_benchmark_metrics(
    logits,
    labels,
    crystal_system_logits=None,
    temperature: float = 1.0,
    prior: str = "icsd",
) -> dict[str, float | int]:
    """Every number of the benchmark (see the module docstring) from the model's outputs.

    Args:
        logits: ``[N, 230]`` space-group logits (label = space-group number - 1).
        labels: ``[N]`` true 0-based labels.
        crystal_system_logits: ``[N, 7]`` logits of the crystal-system head, if any.
        temperature: Calibration temperature: probabilities are ``softmax(logits / T)``.
        prior: Source of the frequency baselines (:func:`~physmoe.data.space_group_prior`).
    """
    from ..data import space_group_prior

    valid = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not (valid and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    scores = as_scores(logits, "logits", dtype=torch.float64)
    if scores.shape[1] != NUM_SPACE_GROUPS:
        raise ValueError(f"logits must have {NUM_SPACE_GROUPS} columns, got {scores.shape[1]}")
    labels = as_labels(labels, scores.shape[0], NUM_SPACE_GROUPS)
    scaled = apply_temperature(scores, float(temperature))
    metrics: dict[str, float | int] = {"temperature": float(temperature)}
    metrics.update(
        compute_metrics(
            scaled, labels, crystal_system_logits=crystal_system_logits, input_type="logits"
        )
    )

    probabilities = torch.softmax(scaled, dim=1)
    confidence, predictions = probabilities.max(dim=1)
    correct = predictions == labels
    sg_to_sys = sg_to_sys_map()
    true_system = sg_to_sys[labels]
    support = torch.bincount(true_system, minlength=NUM_CRYSTAL_SYSTEMS)
    hits = torch.bincount(
        true_system, weights=correct.to(torch.float64), minlength=NUM_CRYSTAL_SYSTEMS
    )
    for index, name in enumerate(CRYSTAL_SYSTEMS):
        metrics[f"{name}_num_samples"] = int(support[index])
        if int(support[index]) > 0:
            metrics[f"{name}_top1_accuracy"] = float(hits[index] / support[index])
    powder_set = torch.from_numpy(powder_equivalence_index())
    same_set = powder_set[predictions] == powder_set[labels]
    metrics["powder_set_accuracy"] = float(same_set.to(torch.float64).mean())
    metrics.update(risk_coverage(confidence, correct))

    # Baselines that ignore the pattern: the prior's ranking for every structure.
    frequencies = torch.from_numpy(space_group_prior(prior))
    baseline = compute_metrics(
        frequencies.expand(len(labels), -1), labels, input_type="probabilities"
    )
    most_frequent = int(frequencies.argmax())
    metrics["baseline_prior_top1_accuracy"] = baseline["top1_accuracy"]
    metrics["baseline_prior_top5_accuracy"] = baseline["top5_accuracy"]
    metrics["baseline_prior_crystal_system_accuracy"] = baseline["crystal_system_accuracy"]
    metrics["baseline_prior_powder_set_accuracy"] = float(
        (powder_set[labels] == powder_set[most_frequent]).to(torch.float64).mean()
    )
    system_prior = torch.bincount(sg_to_sys, weights=frequencies, minlength=NUM_CRYSTAL_SYSTEMS)
    metrics["baseline_majority_system"] = CRYSTAL_SYSTEMS[int(system_prior.argmax())]
    metrics["baseline_majority_system_accuracy"] = float(
        (true_system == system_prior.argmax()).to(torch.float64).mean()
    )
    return metrics


@torch.no_grad()
def run_real_benchmark(
    model,
    conditions: str = "clean",
    *,
    batch_size: int = 64,
    max_samples: int | None = None,
    seed: int = 0,
    temperature: float | None = None,
    autocast_dtype: torch.dtype | str | None = "auto",
) -> dict:
    """Run ``model`` (a :class:`~physmoe.ResNet1D_MoE` over the 230 groups) on the benchmark.

    Args:
        model: The model, on its device; put in eval mode.
        conditions: ``"clean"`` or ``"lab"`` (see :func:`real_benchmark_inputs`).
        batch_size: Patterns per forward pass (the numbers do not depend on it).
        max_samples: Use this many structures, evenly spaced (default all).
        seed: Seed of the ``"lab"`` conditions.
        temperature: Calibration temperature (default ``config.calibration_temperature`` or 1).
        autocast_dtype: As for :func:`~physmoe.runtime.recommended_autocast`.

    Returns:
        :func:`real_benchmark_metrics`'s dict plus ``conditions`` and ``seed``.
    """
    from ..data import TwoThetaGrid
    from ..runtime import recommended_autocast

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    numbers = model.config.space_group_numbers
    if numbers is None or list(numbers) != list(range(1, NUM_SPACE_GROUPS + 1)):
        raise ValueError(
            "the real-structure benchmark needs a model over the 230 space groups in label order "
            f"(label = number - 1); this one has {model.config.num_labels} labels"
        )
    if temperature is None:
        temperature = float(getattr(model.config, "calibration_temperature", 1.0) or 1.0)
    inputs = real_benchmark_inputs(
        TwoThetaGrid.from_config(model.config), conditions, seed=seed, max_samples=max_samples
    )
    model.eval()
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    logits, system_logits = [], []
    patterns = inputs["input_values"]
    for start in range(0, len(patterns), batch_size):
        with recommended_autocast(device, autocast_dtype):
            output = model(patterns[start : start + batch_size].to(device))
        logits.append(output.logits.float().cpu())
        head = getattr(output, "crystal_system_logits", None)
        system_logits.append(None if head is None else head.float().cpu())
    heads = None if any(h is None for h in system_logits) else torch.cat(system_logits)
    logger.info("real-structure benchmark: %d structures, %s conditions", len(patterns), conditions)
    metrics = real_benchmark_metrics(torch.cat(logits), inputs["labels"], heads, temperature)
    return {"conditions": conditions, "seed": int(seed), **metrics}


def evaluate_real_checkpoint(
    checkpoint: str | os.PathLike, device: torch.device | str | None = None, **kwargs
) -> dict:
    """:func:`run_real_benchmark` for a saved model (folder or Hub id) on ``device`` (default:
    CUDA when available, else the CPU); ``kwargs`` go to :func:`run_real_benchmark`."""
    from ..hub import check_checkpoint_location
    from ..models.resnet1d_moe import ResNet1D_MoE

    checkpoint = check_checkpoint_location(checkpoint)  # "no such folder", not a Hub-id message
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ResNet1D_MoE.from_pretrained(checkpoint).to(device)
    return run_real_benchmark(model, **kwargs)


def _value(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else f"{value:.3f}"


def format_real_benchmark(metrics: dict, title: str | None = None) -> str:
    """A readable table of :func:`run_real_benchmark`'s metrics (what ``physmoe evaluate --real``
    prints): model against the frequency baselines, per crystal system, risk-coverage."""
    width = 50
    lines = [] if title is None else [title]
    lines.append(
        f"{metrics.get('num_samples', '?')} real structures, {metrics.get('conditions', '?')} "
        f"patterns, temperature {metrics.get('temperature', float('nan')):.3f} (test set only)"
    )
    lines.append(f"{'':<{width}}{'model':>8}{'ICSD-frequency baseline':>26}")
    rows = [
        ("top-1 accuracy", "top1_accuracy", "baseline_prior_top1_accuracy"),
        ("top-5 accuracy", "top5_accuracy", "baseline_prior_top5_accuracy"),
        (
            "powder-set accuracy (indistinguishable groups)",
            "powder_set_accuracy",
            "baseline_prior_powder_set_accuracy",
        ),
        (
            "crystal-system accuracy (predicted group)",
            "crystal_system_accuracy_from_sg",
            "baseline_prior_crystal_system_accuracy",
        ),
        ("crystal-system accuracy (system head)", "crystal_system_accuracy_head", None),
        (
            "crystal-system accuracy (most frequent system)",
            None,
            "baseline_majority_system_accuracy",
        ),
        ("balanced accuracy", "balanced_accuracy", None),
        ("expected calibration error", "ece", None),
        ("risk-coverage AURC (lower is better)", "aurc", None),
    ]
    for name, key, baseline in rows:
        model_value = "" if key is None else _value(metrics, key)
        base_value = "" if baseline is None else _value(metrics, baseline)
        lines.append(f"{name[: width - 1]:<{width}}{model_value:>8}{base_value:>26}")
    lines.append("")
    lines.append(f"{'crystal system':<16}{'structures':>11}{'top-1':>8}")
    for name in CRYSTAL_SYSTEMS:
        lines.append(
            f"{name:<16}{metrics.get(f'{name}_num_samples', 0):>11}"
            f"{_value(metrics, f'{name}_top1_accuracy'):>8}"
        )
    lines.append("")
    lines.append(f"{'keep':<28}{'coverage':>9}{'accuracy':>10}")
    for percent in RISK_COVERAGES:
        lines.append(
            f"{f'{percent}% most confident':<28}{percent / 100:>9.3f}"
            f"{_value(metrics, f'coverage_{percent}_accuracy'):>10}"
        )
    for threshold in CONFIDENCE_THRESHOLDS:
        lines.append(
            f"{f'probability >= {threshold:g}':<28}"
            f"{_value(metrics, f'confidence_{threshold:g}_coverage'):>9}"
            f"{_value(metrics, f'confidence_{threshold:g}_accuracy'):>10}"
        )
    return "\n".join(lines) + "\n"
