"""Validation and conversion of evaluation inputs (numpy arrays, torch tensors or lists).

Everything is evaluated on the CPU. Rankings and arg-maxes use the scores in their own float dtype
(exact: up-casting preserves order and ties); log-probabilities and all sums are float64, so a
metric over a whole test set does not depend on the order of its samples.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

ScoreKind = Literal["auto", "logits", "probabilities"]


def to_tensor(values, name: str) -> torch.Tensor:
    """A CPU tensor view or copy of ``values`` (torch tensor, numpy array, list or tuple)."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu")
    if isinstance(values, (np.ndarray, list, tuple)):
        array = np.asarray(values)
        if array.dtype == object:
            raise TypeError(f"{name} must be numeric, got a ragged or object array")
        return torch.from_numpy(np.ascontiguousarray(array))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(values).__name__}")


def _check_finite(values: torch.Tensor, name: str) -> None:
    # NaN and inf propagate through a sum, so a finite float64 sum proves every entry finite with
    # one cheap reduction; only a non-finite sum (or an overflow) needs the element-wise search.
    if bool(torch.isfinite(values.sum(dtype=torch.float64))):
        return
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite)[0].tolist()
        raise ValueError(f"{name} contains a non-finite value at index {tuple(bad)}")


def as_scores(
    values, name: str = "logits", ndim: int = 2, dtype: torch.dtype | None = torch.float64
) -> torch.Tensor:
    """CPU tensor ``[N, C]`` (or ``[N, K, C]`` with ``ndim=3``) of finite class scores.

    ``dtype=None`` keeps the input's float dtype: comparisons and arg-max give the same answer in
    any float dtype (up-casting is exact and monotone), so they need no float64 copy.
    """
    tensor = to_tensor(values, name)
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point array, got dtype {tensor.dtype}")
    if tensor.ndim != ndim:
        expected = "[N, C]" if ndim == 2 else "[N, K, C]"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[-1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(tensor.shape)}")
    _check_finite(tensor, name)
    return tensor if dtype is None else tensor.to(dtype)


def as_labels(values, num_samples: int, num_classes: int, name: str = "labels") -> torch.Tensor:
    """Int64 CPU tensor ``[N]`` of class labels in ``[0, num_classes)``."""
    tensor = to_tensor(values, name)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class indices, got dtype {tensor.dtype}")
    if tensor.ndim != 1 or tensor.shape[0] != num_samples:
        raise ValueError(f"{name} must have shape [{num_samples}], got {tuple(tensor.shape)}")
    tensor = tensor.to(torch.int64)
    out_of_range = (tensor < 0) | (tensor >= num_classes)
    if bool(out_of_range.any()):
        index = int(torch.nonzero(out_of_range)[0])
        raise ValueError(f"{name}[{index}] = {int(tensor[index])} is outside [0, {num_classes})")
    return tensor


def as_counts(values, num_classes: int, name: str = "train_class_counts") -> torch.Tensor:
    """Float64 CPU tensor ``[C]`` of non-negative, finite counts."""
    tensor = to_tensor(values, name)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"{name} must be numeric counts, got dtype {tensor.dtype}")
    if tensor.ndim != 1 or tensor.shape[0] != num_classes:
        raise ValueError(f"{name} must have shape [{num_classes}], got {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float64)
    _check_finite(tensor, name)
    if bool((tensor < 0).any()):
        index = int(torch.nonzero(tensor < 0)[0])
        raise ValueError(f"{name}[{index}] = {float(tensor[index])} is negative")
    return tensor


def score_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 a row of probabilities stored in ``dtype`` may sum.

    Rounding each probability to ``dtype`` moves the row sum by at most ``eps / 2`` (the errors
    are relative to values that sum to 1); 4 eps leaves room for a low-precision softmax.
    """
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(1e-3, 4.0 * eps)


def looks_like_probabilities(scores: torch.Tensor, tolerance: float) -> bool:
    """Whether every row of ``scores [N, C]`` is a probability vector (within ``tolerance``)."""
    if float(scores.min()) < 0.0 or float(scores.max()) > 1.0:
        return False
    return float((scores.sum(dim=1, dtype=torch.float64) - 1.0).abs().max()) <= tolerance


def log_probabilities(
    values, input_type: ScoreKind = "auto", name: str = "logits"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, log_probs)``: the scores as given (input float dtype) and float64
    log-probabilities.

    Both are ``[N, C]``. Compare and arg-max ``scores``; take likelihoods from ``log_probs``.

    ``input_type="auto"`` treats ``values`` as probabilities when every entry lies in [0, 1] and
    every row sums to 1 within :func:`score_tolerance` of the input dtype, and as logits otherwise.
    Log-probabilities are clamped at the log of the smallest positive float64 (zero probabilities,
    classes masked out by hard hierarchical inference), so the negative log-likelihood stays
    finite: at most ~708 per sample.
    """
    if input_type not in ("auto", "logits", "probabilities"):
        raise ValueError(
            f"input_type must be 'auto', 'logits' or 'probabilities', got {input_type!r}"
        )
    raw = to_tensor(values, name)
    tolerance = score_tolerance(raw.dtype)
    scores = as_scores(raw, name, dtype=None)
    is_probability = input_type == "probabilities" or (
        input_type == "auto" and looks_like_probabilities(scores, tolerance)
    )
    if input_type == "probabilities" and not looks_like_probabilities(scores, tolerance):
        worst = int((scores.sum(dim=1, dtype=torch.float64) - 1.0).abs().argmax())
        raise ValueError(
            f"{name} declared as probabilities, but row {worst} has entries outside [0, 1] or sums "
            f"to {float(scores[worst].sum(dtype=torch.float64)):.6g}"
        )
    if is_probability:
        log_probs = scores.to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny).log()
    else:
        log_probs = torch.log_softmax(scores.to(torch.float64), dim=1)
        log_probs = log_probs.clamp_min(math.log(torch.finfo(torch.float64).tiny))
    return scores, log_probs


def ranks_of_labels(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rank of the true class in each row of ``scores [N, C]`` (0 = predicted), int64 ``[N]``.

    Ties are broken by class index, as ``torch.argmax`` does (the first maximal index wins): the
    rank counts the classes with a strictly higher score plus the tied classes with a lower
    index. Top-k is correct exactly when the rank is below k; no sort is needed.
    """
    true_score = scores.gather(1, labels[:, None])
    higher = (scores > true_score).sum(dim=1)
    class_index = torch.arange(scores.shape[1])
    tied_before = ((scores == true_score) & (class_index[None, :] < labels[:, None])).sum(dim=1)
    return higher + tied_before
