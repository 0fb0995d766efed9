"""Space-group classification metrics over a whole split, as in docs/evaluation-protocol.md.

Every metric is computed once from the predictions of the *whole* split, never averaged over
batches: a per-batch macro-F1 (or a per-batch class-mean accuracy) weights classes by how often
they share a batch and sits several points above the split-level value on long-tailed data.

Conventions used throughout:

* Labels are 0-based (``label = space-group number - 1``); scores are ``[N, C]`` logits or
  probabilities (numpy or torch, any float dtype), evaluated on the CPU (likelihoods and sums in
  float64).
* The prediction is the arg-max with ties broken towards the lower class index, exactly as
  ``torch.argmax``; top-k uses the same order (see :func:`ranks_of_labels`).
* Accuracies, F1 and ECE are fractions in [0, 1], not percent.
* A class "present" in the split has at least one sample with that true label. Class means
  (balanced accuracy, macro-F1, bucket accuracies) average over present classes only.
* A bucket with no present class has no accuracy: its ``*_accuracy`` key is omitted (never NaN);
  its ``*_num_classes`` key is reported as 0.

Class buckets from training counts ``n_c`` (classes with no training sample fall in the lowest
bucket):

* long-tail convention (absolute, not scaled): many-shot ``n_c >= 100``, medium-shot
  ``20 <= n_c < 100``, few-shot ``n_c < 20``;
* the public reference's buckets, for comparison: head ``n_c > 1000 s``, medium
  ``100 s <= n_c <= 1000 s``, tail ``n_c < 100 s`` and extreme tail ``n_c < 20 s`` (a subset of
  tail). The reference defined them on a training set of about 120,000 patterns
  (:data:`REFERENCE_TRAIN_SIZE`); the scale ``s = sum(n_c) / 120_000`` carries them to a training
  set of another size (``s = 1`` reproduces the reference's thresholds). The reference counted
  the whole data set; we count the training split only.

Bootstrap confidence intervals of these metrics are in :mod:`.bootstrap`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch

from ..crystallography import NUM_SPACE_GROUPS, sg_to_sys_map
from ._inputs import (
    ScoreKind,
    as_counts,
    as_labels,
    as_scores,
    log_probabilities,
    ranks_of_labels,
    to_tensor,
)
from .calibration import _ece

logger = logging.getLogger(__name__)

__all__ = [
    "REFERENCE_TRAIN_SIZE",
    "SHOT_THRESHOLDS",
    "REFERENCE_THRESHOLDS",
    "ConfusedPair",
    "class_buckets",
    "compute_metrics",
    "confusion_matrix",
    "hnm_most_confused_pairs",
    "per_class_accuracy",
]

#: Training-set size (patterns) on which the reference's head/medium/tail thresholds were set.
REFERENCE_TRAIN_SIZE = 120_000
#: Many-shot lower bound and few-shot upper bound (exclusive) in training samples per class.
SHOT_THRESHOLDS = {"many": 100, "few": 20}
#: Reference thresholds at scale 1: head above 1000, tail below 100, extreme tail below 20.
REFERENCE_THRESHOLDS = {"head": 1000, "tail": 100, "extreme_tail": 20}

_BUCKETS = ("many_shot", "medium_shot", "few_shot", "head", "medium", "tail", "extreme_tail")


class ConfusedPair(NamedTuple):
    """One off-diagonal confusion-matrix entry: ``true`` predicted as ``predicted``, ``count``
    times."""

    true: int | str
    predicted: int | str
    count: float | int


# ----------------------------------------------------------------------------------------------
# Per-class building blocks
# ----------------------------------------------------------------------------------------------


def _predictions_and_labels(
    logits, labels, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Arg-max predictions ``[N]`` (from ``[N, C]`` scores, or given as ``[N]`` ints) and labels."""
    tensor = to_tensor(logits, "logits")
    if tensor.ndim == 1 and not tensor.is_floating_point():
        if num_classes is None:
            raise ValueError("num_classes is required when predictions are given as labels")
        predictions = as_labels(tensor, tensor.shape[0], num_classes, "predictions")
    else:
        scores = as_scores(tensor, "logits", dtype=None)
        if num_classes is not None and scores.shape[1] != num_classes:
            raise ValueError(
                f"logits have {scores.shape[1]} classes, expected num_classes={num_classes}"
            )
        num_classes = scores.shape[1]
        predictions = scores.argmax(dim=1)
    return predictions, as_labels(labels, predictions.shape[0], num_classes), num_classes


def per_class_accuracy(
    logits, labels, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 accuracy of every class and its number of samples in the split.

    Args:
        logits: ``[N, C]`` scores, or ``[N]`` integer predictions (then ``num_classes`` is needed).
        labels: ``[N]`` integer labels.
        num_classes: ``C``; defaults to the width of ``logits``.

    Returns:
        ``(accuracy, counts)``: float64 ``[C]`` and int64 ``[C]``. A class absent from the split
        has accuracy 0 and count 0: use ``counts > 0`` as the mask (no NaN is produced).
    """
    predictions, labels, num_classes = _predictions_and_labels(logits, labels, num_classes)
    counts = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(
        labels, weights=(predictions == labels).to(torch.float64), minlength=num_classes
    )
    accuracy = correct / counts.clamp_min(1)
    return accuracy.numpy(), counts.numpy()


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Int64 ``[C, C]`` confusion matrix: entry ``[t, p]`` counts samples of class ``t``
    predicted ``p``.

    ``predictions`` may be ``[N]`` integer labels or ``[N, C]`` scores (arg-max is taken).
    """
    predictions, labels, num_classes = _predictions_and_labels(predictions, labels, num_classes)
    flat = torch.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).numpy()


def class_buckets(
    train_class_counts, reference_scale: float | None = None
) -> dict[str, np.ndarray]:
    """Boolean ``[C]`` masks of the training-frequency buckets (see the module docstring).

    Args:
        train_class_counts: ``[C]`` number of *training* samples of each class.
        reference_scale: Factor on the reference thresholds; default
            ``sum(train_class_counts) / REFERENCE_TRAIN_SIZE``.

    Returns:
        Masks keyed ``many_shot``, ``medium_shot``, ``few_shot``, ``head``, ``medium``, ``tail``,
        ``extreme_tail``.
    """
    counts = to_tensor(train_class_counts, "train_class_counts")
    if counts.ndim != 1:
        raise ValueError(f"train_class_counts must have shape [C], got {tuple(counts.shape)}")
    counts = as_counts(counts, counts.shape[0])
    return {name: mask.numpy() for name, mask in _bucket_masks(counts, reference_scale).items()}


def _reference_scale(train_counts: torch.Tensor, reference_scale: float | None) -> float:
    if reference_scale is None:
        total = float(train_counts.sum())
        if total <= 0:
            raise ValueError("train_class_counts sum to 0: cannot scale the reference buckets")
        return total / REFERENCE_TRAIN_SIZE
    if isinstance(reference_scale, bool) or not isinstance(
        reference_scale, (int, float, np.floating)
    ):
        raise TypeError(f"reference_scale must be a number, got {type(reference_scale).__name__}")
    if not np.isfinite(reference_scale) or reference_scale <= 0:
        raise ValueError(
            f"reference_scale must be a positive finite number, got {reference_scale!r}"
        )
    return float(reference_scale)


def _bucket_masks(
    train_counts: torch.Tensor, reference_scale: float | None
) -> dict[str, torch.Tensor]:
    scale = _reference_scale(train_counts, reference_scale)
    many, few = SHOT_THRESHOLDS["many"], SHOT_THRESHOLDS["few"]
    head = REFERENCE_THRESHOLDS["head"] * scale
    tail = REFERENCE_THRESHOLDS["tail"] * scale
    extreme = REFERENCE_THRESHOLDS["extreme_tail"] * scale
    return {
        "many_shot": train_counts >= many,
        "medium_shot": (train_counts >= few) & (train_counts < many),
        "few_shot": train_counts < few,
        "head": train_counts > head,
        "medium": (train_counts >= tail) & (train_counts <= head),
        "tail": train_counts < tail,
        "extreme_tail": train_counts < extreme,
    }


def _class_mean(
    correct: torch.Tensor, support: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean per-class accuracy over the masked classes present in the split.

    Args:
        correct: ``[..., C]`` correct predictions per class.
        support: ``[..., C]`` samples per class.
        mask: ``[C]`` classes to average over.

    Returns:
        ``(mean [...], num_present [...])``; the mean is 0 where no masked class is present.
    """
    present = (support > 0) & mask
    num_present = present.sum(dim=-1)
    per_class = correct / support.clamp_min(1)
    total = (per_class * present).sum(dim=-1)
    return total / num_present.clamp_min(1), num_present


def _macro_f1(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Macro-F1 over the classes present in ``labels``:
    ``F1_c = 2 TP_c / (n_true_c + n_pred_c)``."""
    support = torch.bincount(labels, minlength=num_classes)
    predicted = torch.bincount(predictions, minlength=num_classes)
    true_positive = torch.bincount(labels[predictions == labels], minlength=num_classes)
    present = support > 0
    f1 = 2.0 * true_positive[present].double() / (support[present] + predicted[present]).double()
    return float(f1.mean())


# ----------------------------------------------------------------------------------------------
# compute_metrics
# ----------------------------------------------------------------------------------------------


def _resolve_sg_to_sys(
    sg_to_sys, num_classes: int, required_by: str | None = None
) -> torch.Tensor | None:
    """The ``[C]`` class -> crystal-system map; ``None`` if there is none and nothing needs it."""
    if sg_to_sys is None:
        if num_classes == NUM_SPACE_GROUPS:
            return sg_to_sys_map()
        if required_by is not None:
            raise ValueError(
                f"{required_by} with {num_classes} classes needs sg_to_sys "
                f"(the default map covers the {NUM_SPACE_GROUPS} space groups)"
            )
        return None
    return as_labels(sg_to_sys, num_classes, np.iinfo(np.int64).max, "sg_to_sys")


def _given_system_correct(
    scores: torch.Tensor, labels: torch.Tensor, sg_to_sys: torch.Tensor
) -> torch.Tensor:
    """Whether the true group scores strictly above every other group of the true crystal system,
    ``[N]``. Strictly: where hard hierarchical inference masked out the whole true system, its
    groups tie at the lowest value and none of them counts as chosen."""
    true_system = sg_to_sys[labels]
    rivals = (sg_to_sys[None, :] == true_system[:, None]) & (
        torch.arange(scores.shape[1]) != labels[:, None]
    )
    true_score = scores.gather(1, labels[:, None]).squeeze(1)
    return true_score > scores.masked_fill(~rivals, float("-inf")).amax(dim=1)


def compute_metrics(
    logits,
    labels,
    train_class_counts=None,
    crystal_system_logits=None,
    expert_logits=None,
    sg_to_sys=None,
    num_bins: int = 15,
    reference_scale: float | None = None,
    input_type: ScoreKind = "auto",
    expert_predictions=None,
) -> dict[str, float | int]:
    """All split-level metrics of a space-group classifier (see the module docstring).

    Args:
        logits: ``[N, C]`` space-group logits or probabilities of the *whole* split.
        labels: ``[N]`` integer labels in ``[0, C)``.
        train_class_counts: ``[C]`` training samples per class; enables the bucket metrics.
        crystal_system_logits: ``[N, S]`` logits of a crystal-system head (``S = 7``).
        expert_logits: ``[N, K, C]`` space-group logits of each expert.
        sg_to_sys: ``[C]`` crystal-system index of each class; defaults to
            :func:`physmoe.crystallography.sg_to_sys_map` when ``C = 230``. Without it (and
            ``C != 230``) the crystal-system metrics are omitted.
        num_bins: Equal-width bins of the expected calibration error.
        reference_scale: Scale of the reference buckets; default
            ``sum(train_class_counts) / 120_000``.
        input_type: ``"logits"``, ``"probabilities"`` or ``"auto"`` (probabilities when every row
            lies in [0, 1] and sums to 1).
        expert_predictions: ``[N, K]`` integer arg-max of each expert, instead of ``expert_logits``
            (what :class:`~physmoe.training.PhysMoETrainer` gathers: K integers per sample, not
            K x C floats).

    Returns:
        A JSON-ready dict of Python numbers (fractions in [0, 1] unless noted):

        * ``num_samples``, ``num_classes_present`` (ints);
        * ``top1_accuracy``, ``top5_accuracy``: micro accuracies (top-5 is 1 when ``C <= 5``);
        * ``balanced_accuracy``: mean recall over present classes;
        * ``macro_f1``: mean F1 over present classes (a class never predicted has F1 = 0);
        * ``nll``: mean negative log-likelihood of the true class (nats, >= 0);
        * ``ece``: expected calibration error of the top-1 probability, ``num_bins`` bins;
        * with a crystal-system map: ``crystal_system_accuracy_from_sg`` (system of the arg-max
          space group), ``sg_accuracy_given_correct_system`` (arg-max over the groups of the *true*
          system only: how well groups are told apart once the system is known);
        * with ``crystal_system_logits``: ``crystal_system_accuracy_head`` (arg-max of the head);
        * ``crystal_system_accuracy``: the head's when given, else the one from the space group;
        * with ``train_class_counts``: ``{many_shot, medium_shot, few_shot, head, medium, tail,
          extreme_tail}_accuracy`` (mean per-class top-1 accuracy over the bucket's present
          classes; omitted when there are none), ``{bucket}_num_classes`` (ints) and
          ``reference_bucket_scale``;
        * with ``expert_logits`` or ``expert_predictions``: ``expert_{k}_top1_accuracy`` for
          ``k = 0..K-1``.
    """
    scores, log_probs = log_probabilities(logits, input_type, "logits")
    num_samples, num_classes = scores.shape
    labels = as_labels(labels, num_samples, num_classes)
    sg_to_sys = _resolve_sg_to_sys(
        sg_to_sys,
        num_classes,
        "crystal_system_logits" if crystal_system_logits is not None else None,
    )
    predictions = scores.argmax(dim=1)
    ranks = ranks_of_labels(scores, labels)
    correct = ranks == 0

    support = torch.bincount(labels, minlength=num_classes)
    correct_per_class = torch.bincount(
        labels, weights=correct.to(torch.float64), minlength=num_classes
    )
    all_classes = torch.ones(num_classes, dtype=torch.bool)
    confidence = log_probs.gather(1, predictions[:, None]).squeeze(1).exp()

    metrics: dict[str, float | int] = {
        "num_samples": num_samples,
        "num_classes_present": int((support > 0).sum()),
        "top1_accuracy": float(correct.to(torch.float64).mean()),
        "top5_accuracy": float((ranks < 5).to(torch.float64).mean()),
        "balanced_accuracy": float(_class_mean(correct_per_class, support, all_classes)[0]),
        "macro_f1": _macro_f1(predictions, labels, num_classes),
        "nll": float(-log_probs.gather(1, labels[:, None]).mean()),
        "ece": _ece(confidence, correct, num_bins),
    }

    if sg_to_sys is not None:
        metrics.update(_system_metrics(scores, labels, sg_to_sys, crystal_system_logits))
    if train_class_counts is not None:
        metrics.update(
            _bucket_metrics(correct_per_class, support, train_class_counts, reference_scale)
        )
    if expert_logits is not None and expert_predictions is not None:
        raise ValueError("give expert_logits or expert_predictions, not both")
    if expert_logits is not None or expert_predictions is not None:
        metrics.update(_expert_metrics(labels, num_classes, expert_logits, expert_predictions))
    return metrics


def _system_metrics(scores, labels, sg_to_sys, crystal_system_logits) -> dict[str, float]:
    """Crystal-system accuracy (the head's when given, else of the arg-max space group) and
    space-group accuracy given the true system (see :func:`compute_metrics`)."""
    num_samples = scores.shape[0]
    true_system = sg_to_sys[labels]
    from_sg = float((sg_to_sys[scores.argmax(dim=1)] == true_system).to(torch.float64).mean())
    given_system = _given_system_correct(scores, labels, sg_to_sys).to(torch.float64).mean()
    metrics = {"crystal_system_accuracy": from_sg}
    if crystal_system_logits is not None:
        system_scores = as_scores(crystal_system_logits, "crystal_system_logits", dtype=None)
        if system_scores.shape[0] != num_samples or system_scores.shape[1] <= int(sg_to_sys.max()):
            raise ValueError(
                "crystal_system_logits must have shape "
                f"[{num_samples}, >{int(sg_to_sys.max())}], "
                f"got {tuple(system_scores.shape)}"
            )
        head_accuracy = (system_scores.argmax(dim=1) == true_system).to(torch.float64).mean()
        metrics["crystal_system_accuracy"] = float(head_accuracy)
        metrics["crystal_system_accuracy_head"] = float(head_accuracy)
    metrics["crystal_system_accuracy_from_sg"] = from_sg
    metrics["sg_accuracy_given_correct_system"] = float(given_system)
    return metrics


def _bucket_metrics(correct_per_class, support, train_class_counts, reference_scale) -> dict:
    """Mean per-class accuracy and class count of every shot and reference bucket."""
    train_counts = as_counts(train_class_counts, support.shape[0])
    metrics: dict[str, float | int] = {}
    for name, mask in _bucket_masks(train_counts, reference_scale).items():
        mean, num_present = _class_mean(correct_per_class, support, mask)
        if int(num_present) > 0:
            metrics[f"{name}_accuracy"] = float(mean)
        metrics[f"{name}_num_classes"] = int(num_present)
    metrics["reference_bucket_scale"] = _reference_scale(train_counts, reference_scale)
    return metrics


def _expert_metrics(labels, num_classes, expert_logits, expert_predictions) -> dict[str, float]:
    """``expert_{k}_top1_accuracy`` from ``[N, K, C]`` logits or ``[N, K]`` predictions."""
    num_samples = labels.shape[0]
    if expert_logits is not None:
        experts = as_scores(expert_logits, "expert_logits", ndim=3, dtype=None)
        if experts.shape[0] != num_samples or experts.shape[2] != num_classes:
            raise ValueError(
                f"expert_logits must have shape [{num_samples}, K, {num_classes}], "
                f"got {tuple(experts.shape)}"
            )
        expert_predictions = experts.argmax(dim=2)
    expert_predictions = to_tensor(expert_predictions, "expert_predictions")
    if expert_predictions.ndim != 2 or expert_predictions.shape[0] != num_samples:
        raise ValueError(
            f"expert_predictions must have shape [{num_samples}, K], "
            f"got {tuple(expert_predictions.shape)}"
        )
    # Flattened, the [N, K] predictions are N * K labels: one validation of dtype and range.
    flat = as_labels(
        expert_predictions.reshape(-1),
        expert_predictions.numel(),
        num_classes,
        "expert_predictions",
    )
    accuracy = (flat.view_as(expert_predictions) == labels[:, None]).to(torch.float64).mean(dim=0)
    return {f"expert_{k}_top1_accuracy": value for k, value in enumerate(accuracy.tolist())}


# ----------------------------------------------------------------------------------------------
# Most-confused pairs
# ----------------------------------------------------------------------------------------------


def hnm_most_confused_pairs(
    confusion_matrix, top: int = 10, id2label: Mapping[int, str] | None = None
) -> list[ConfusedPair]:
    """The ``top`` largest off-diagonal entries of a confusion matrix, largest first.

    Args:
        confusion_matrix: ``[C, C]`` counts, rows = true class, columns = predicted class; integer
            counts (:func:`confusion_matrix`) or the hard-negative miner's decayed float matrix.
        top: Maximum number of pairs; entries equal to 0 are never returned.
        id2label: When given, classes are reported by name (e.g. ``ID2LABEL``), else as ints.

    Returns:
        ``ConfusedPair(true, predicted, count)`` tuples; equal counts are ordered by ``(true,
        predicted)``. ``count`` is an int for an integer matrix, else a float.
    """
    matrix = to_tensor(confusion_matrix, "confusion_matrix")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"confusion_matrix must be square [C, C], got {tuple(matrix.shape)}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError(f"top must be a non-negative int, got {top!r}")
    integer = not matrix.is_floating_point()
    values = matrix.to(torch.float64)
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError("confusion_matrix must hold finite, non-negative counts")
    num_classes = values.shape[0]
    off_diagonal = values.masked_fill(torch.eye(num_classes, dtype=torch.bool), 0.0).flatten()
    # Stable sort of the negated counts: ties keep row-major (true, predicted) order.
    order = torch.sort(-off_diagonal, stable=True).indices[:top]
    order = order[off_diagonal[order] > 0].tolist()
    counts = off_diagonal[order].tolist()
    pairs = []
    for flat_index, count in zip(order, counts, strict=True):
        true, predicted = divmod(flat_index, num_classes)
        if id2label is not None:
            true, predicted = id2label[true], id2label[predicted]
        pairs.append(ConfusedPair(true, predicted, int(count) if integer else count))
    return pairs


# ----------------------------------------------------------------------------------------------
# Names that moved to .bootstrap
# ----------------------------------------------------------------------------------------------

# .bootstrap builds on the helpers above, so importing it here at load time would be circular;
# the old import path (star imports and pickles naming metrics.ConfidenceInterval included)
# resolves these names on first use instead.
_MOVED_TO_BOOTSTRAP = (
    "BOOTSTRAP_METRICS",
    "ConfidenceInterval",
    "bootstrap_ci",
    "bucket_accuracy_ci",
    "two_stage_bootstrap",
)
__all__ += list(_MOVED_TO_BOOTSTRAP)


def __getattr__(name: str):
    if name in _MOVED_TO_BOOTSTRAP:
        from . import bootstrap

        return getattr(bootstrap, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
