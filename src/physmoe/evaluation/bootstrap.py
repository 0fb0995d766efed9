"""Bootstrap confidence intervals of the split-level metrics of :mod:`.metrics`.

A few-shot bucket's accuracy rests on few classes with few test samples each, so it is noisy; an
interval says how much of a difference between two models that noise could explain. Two
resampling schemes:

* :func:`bootstrap_ci`: resamples test samples (by default within each true class), for any
  metric of :data:`BOOTSTRAP_METRICS` or a callable; the set of present classes stays fixed.
* :func:`two_stage_bootstrap` and :func:`bucket_accuracy_ci`: resample the bucket's classes,
  then each drawn class's samples, so the interval also covers which classes a split holds.

Intervals are percentile intervals; equal seeds give equal intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ._inputs import as_counts, as_labels, as_scores, ranks_of_labels
from .metrics import (
    _BUCKETS,
    _bucket_masks,
    _class_mean,
    _given_system_correct,
    _macro_f1,
    _resolve_sg_to_sys,
    class_buckets,
    per_class_accuracy,
)

__all__ = [
    "BOOTSTRAP_METRICS",
    "ConfidenceInterval",
    "bootstrap_ci",
    "bucket_accuracy_ci",
    "two_stage_bootstrap",
]


class ConfidenceInterval(NamedTuple):
    """A metric on the full split and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float


#: Metrics :func:`bootstrap_ci` accepts by name. All but ``macro_f1`` are weighted means of a
#: per-sample correctness indicator, which the stratified bootstrap resamples exactly and without
#: a loop (see :func:`bootstrap_ci`).
BOOTSTRAP_METRICS = (
    "top1_accuracy",
    "top5_accuracy",
    "balanced_accuracy",
    "macro_f1",
    "crystal_system_accuracy_from_sg",
    "sg_accuracy_given_correct_system",
    *(f"{bucket}_accuracy" for bucket in _BUCKETS),
)


def _percentile_interval(
    estimate: float, replicates: np.ndarray, alpha: float
) -> ConfidenceInterval:
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return ConfidenceInterval(float(estimate), float(low), float(high))


class _Resampler:
    """Draws bootstrap samples of row indices ``[N]``; stratified keeps every class's count."""

    def __init__(self, labels: np.ndarray, stratified: bool) -> None:
        self.num_samples = labels.shape[0]
        self.stratified = stratified
        if stratified:
            # Rows sorted by class; position i of the sample draws among the rows of its class.
            self.order = np.argsort(labels, kind="stable")
            sorted_labels = labels[self.order]
            self.starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
            self.sizes = np.searchsorted(sorted_labels, sorted_labels, side="right") - self.starts

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        if not self.stratified:
            return rng.integers(0, self.num_samples, size=self.num_samples)
        offsets = np.floor(rng.random(self.num_samples) * self.sizes).astype(np.int64)
        return self.order[self.starts + np.minimum(offsets, self.sizes - 1)]


def _check_n_boot(n_boot) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")


def two_stage_bootstrap(correct, labels, classes, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of a class-mean accuracy that resample classes, then samples.

    A benchmark's test split is random in two ways: which classes of a bucket it holds and
    which samples represent each class. Each replicate draws the bucket's classes with
    replacement and, for every drawn class, its samples with replacement. (Resampling only within
    classes, as :func:`bootstrap_ci` does, gives a zero-width interval when most classes have a
    single test sample, as few-shot classes do.)

    Args:
        correct: ``[..., N]`` 0/1 correctness of every sample, e.g. ``[methods, seeds, N]``; all
            leading entries see the same draws, so differences between them are paired.
        labels: ``[N]`` true classes.
        classes: The classes of the bucket that are present in ``labels``.
        n_boot: Number of replicates.
        seed: Seed of the numpy generator.

    Returns:
        ``[n_boot, ...]`` replicates of the mean over classes of the per-class accuracy.
    """
    correct = np.asarray(correct, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.asarray(classes)
    _check_n_boot(n_boot)
    if classes.size == 0:
        raise ValueError("two_stage_bootstrap needs at least one class")
    members = [np.flatnonzero(labels == c) for c in classes]
    if any(len(m) == 0 for m in members):
        missing = [int(c) for c, m in zip(classes, members, strict=True) if len(m) == 0]
        raise ValueError(f"classes {missing[:5]} have no sample in labels")
    rng = np.random.default_rng(seed)
    replicates = np.empty((n_boot, *correct.shape[:-1]))
    # A loop over replicates and drawn classes: a summary statistic, not a training hot path.
    for r in range(n_boot):
        total = np.zeros(correct.shape[:-1])
        for j in rng.integers(0, len(classes), len(classes)):
            rows = members[j][rng.integers(0, len(members[j]), len(members[j]))]
            total += correct[..., rows].mean(-1)
        replicates[r] = total / len(classes)
    return replicates


def bucket_accuracy_ci(
    logits,
    labels,
    train_class_counts,
    bucket: str = "few_shot",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> ConfidenceInterval | None:
    """Class-mean accuracy of a training-frequency bucket (e.g. ``"few_shot"``) with a
    :func:`two_stage_bootstrap` percentile interval; None when no class of the bucket is present."""
    if bucket not in _BUCKETS:
        raise ValueError(f"bucket must be one of {_BUCKETS}, got {bucket!r}")
    _check_n_boot(n_boot)
    scores = as_scores(logits, "logits", dtype=None)
    num_classes = scores.shape[1]
    labels_t = as_labels(labels, scores.shape[0], num_classes)
    mask = class_buckets(as_counts(train_class_counts, num_classes))[bucket]
    predictions = scores.argmax(dim=1)
    accuracy, support = per_class_accuracy(predictions, labels_t, num_classes)
    classes = np.flatnonzero(mask & (support > 0))
    if classes.size == 0:
        return None
    correct = (predictions == labels_t).numpy()
    replicates = two_stage_bootstrap(correct, labels_t.numpy(), classes, n_boot, seed)
    return _percentile_interval(float(accuracy[classes].mean()), replicates, alpha)


def bootstrap_ci(
    metric: str | Callable,
    logits,
    labels,
    train_class_counts=None,
    sg_to_sys=None,
    reference_scale: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
) -> ConfidenceInterval | None:
    """Bootstrap percentile interval of a split-level metric, by resampling test samples.

    Args:
        metric: A name from :data:`BOOTSTRAP_METRICS`, or a callable
            ``metric(logits [n, C], labels [n]) -> float`` (called on numpy/torch slices of the
            inputs, once per replicate).
        logits: ``[N, C]`` scores of the whole split.
        labels: ``[N]`` integer labels.
        train_class_counts: ``[C]`` training counts, needed for the bucket metrics.
        sg_to_sys: ``[C]`` crystal-system map (default as in :func:`compute_metrics`).
        reference_scale: As in :func:`compute_metrics`.
        n_boot: Number of bootstrap replicates.
        seed: Seed of the numpy generator; equal seeds give equal intervals.
        alpha: ``1 - alpha`` is the coverage of the percentile interval.
        stratified: Resample within each true class, keeping every class's test count fixed
            (default). The set of present classes, and with it every class mean's definition, stays
            that of the split; the interval reflects the sampling noise of the per-class
            accuracies, which dominates for few-shot classes with a handful of test samples. With
            ``stratified=False`` whole-split resampling also varies which classes are present.

    Returns:
        ``ConfidenceInterval(estimate, low, high)`` where ``estimate`` is the metric on the full
        split; ``None`` when the metric is undefined on the split (a bucket with no class present).

    For the named correctness-based metrics under stratification the replicate of a class with
    ``n_c`` test samples and ``k_c`` correct ones is exactly ``Binomial(n_c, k_c / n_c)``, so all
    replicates are drawn at once. ``macro_f1``, callables and ``stratified=False`` resample row
    indices, one vectorised replicate at a time.
    """
    _check_n_boot(n_boot)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    rng = np.random.default_rng(seed)
    if callable(metric):
        return _bootstrap_callable(metric, logits, labels, n_boot, rng, alpha, stratified)
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"unknown bootstrap metric {metric!r}; choose from {BOOTSTRAP_METRICS}")
    scores = as_scores(logits, "logits", dtype=None)
    num_samples, num_classes = scores.shape
    labels_t = as_labels(labels, num_samples, num_classes)
    if metric == "macro_f1":
        predictions = scores.argmax(dim=1)
        estimate = _macro_f1(predictions, labels_t, num_classes)
        resample = _Resampler(labels_t.numpy(), stratified)
        replicates = np.empty(n_boot)
        for b in range(n_boot):
            index = torch.from_numpy(resample(rng))
            replicates[b] = _macro_f1(predictions[index], labels_t[index], num_classes)
        return _percentile_interval(estimate, replicates, alpha)
    correct, mask = _correctness(
        metric, scores, labels_t, train_class_counts, sg_to_sys, reference_scale
    )
    return _bootstrap_class_counts(
        correct, labels_t, num_classes, mask, n_boot, rng, alpha, stratified
    )


def _bootstrap_callable(metric, logits, labels, n_boot, rng, alpha, stratified):
    """:func:`bootstrap_ci` of a callable: row indices resampled, one replicate at a time."""
    label_array = as_labels(labels, len(labels), np.iinfo(np.int64).max).numpy()
    estimate = metric(logits, labels)
    if estimate is None:
        return None

    def take(values, index: np.ndarray):
        if isinstance(values, torch.Tensor):
            return values[torch.from_numpy(index).to(values.device)]
        return np.asarray(values)[index]

    resample = _Resampler(label_array, stratified)
    replicates = []
    for _ in range(n_boot):
        index = resample(rng)
        value = metric(take(logits, index), take(labels, index))
        if value is not None:
            replicates.append(float(value))
    if not replicates:
        return None
    return _percentile_interval(float(estimate), np.asarray(replicates), alpha)


def _correctness(metric, scores, labels_t, train_class_counts, sg_to_sys, reference_scale):
    """A named metric as ``(correct [N] bool, mask [C] or None)``: the per-sample indicator it
    averages and the classes of its class mean (None: a micro mean, weights ``n_c / N``)."""
    num_classes = scores.shape[1]
    if metric in ("top1_accuracy", "top5_accuracy"):
        ranks = ranks_of_labels(scores, labels_t)
        return (ranks == 0 if metric == "top1_accuracy" else ranks < 5), None
    if metric in ("crystal_system_accuracy_from_sg", "sg_accuracy_given_correct_system"):
        map_ = _resolve_sg_to_sys(sg_to_sys, num_classes, metric)
        if metric == "crystal_system_accuracy_from_sg":
            return map_[scores.argmax(dim=1)] == map_[labels_t], None
        return _given_system_correct(scores, labels_t, map_), None
    if metric == "balanced_accuracy":
        return ranks_of_labels(scores, labels_t) == 0, torch.ones(num_classes, dtype=torch.bool)
    if train_class_counts is None:
        raise ValueError(f"{metric} needs train_class_counts")
    masks = _bucket_masks(as_counts(train_class_counts, num_classes), reference_scale)
    return ranks_of_labels(scores, labels_t) == 0, masks[metric.removesuffix("_accuracy")]


def _bootstrap_class_counts(correct, labels_t, num_classes, mask, n_boot, rng, alpha, stratified):
    """:func:`bootstrap_ci` of a mean of ``correct``: per-class binomial draws when stratified,
    else resampled rows."""
    num_samples = len(labels_t)
    support = torch.bincount(labels_t, minlength=num_classes)

    def statistic(correct_per_class: torch.Tensor, class_support: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` per-class counts -> ``[...]`` metric (NaN where undefined)."""
        if mask is None:
            return correct_per_class.sum(-1) / class_support.sum(-1)
        mean, num_present = _class_mean(correct_per_class, class_support, mask)
        return torch.where(num_present > 0, mean, torch.nan)

    correct_per_class = torch.bincount(
        labels_t, weights=correct.to(torch.float64), minlength=num_classes
    )
    estimate = float(statistic(correct_per_class, support))
    if np.isnan(estimate):
        return None
    if stratified:
        support_np = support.numpy()
        rate = correct_per_class.numpy() / np.maximum(support_np, 1)
        draws = rng.binomial(support_np[None, :], rate[None, :], size=(n_boot, num_classes))
        replicates = statistic(
            torch.from_numpy(draws).to(torch.float64), support.to(torch.float64)
        ).numpy()
        return _percentile_interval(estimate, replicates, alpha)
    label_array = labels_t.numpy()
    correct_np = correct.numpy().astype(np.float64)
    replicates = np.empty(n_boot)
    for b in range(n_boot):
        index = rng.integers(0, num_samples, size=num_samples)
        class_support = np.bincount(label_array[index], minlength=num_classes)
        class_correct = np.bincount(
            label_array[index], weights=correct_np[index], minlength=num_classes
        )
        replicates[b] = float(
            statistic(torch.from_numpy(class_correct), torch.from_numpy(class_support))
        )
    replicates = replicates[~np.isnan(replicates)]
    if replicates.size == 0:
        return None
    return _percentile_interval(estimate, replicates, alpha)
