"""Mixture-of-experts losses: soft-target cross-entropy, multi-expert mixing, feature diversity.

Also holds the small helpers every loss in :mod:`physmoe.loss` shares: stacking expert logits into
one ``[batch, num_experts, num_classes]`` tensor, the gated ensemble, the log class prior used for
logit adjustment / class balancing, fp32 upcasting and input validation.

Conventions: labels are 0-based class indices (space-group number - 1); losses are computed in
float32 (float64 inputs stay float64, so ``torch.autograd.gradcheck`` works); means are over the
batch unless a docstring says otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_PRIOR_FLOOR",
    "feature_diversity_loss",
    "gated_ensemble_logits",
    "log_class_prior",
    "mix_outputs",
    "soft_entropy",
    "stack_expert_logits",
]

#: Smallest class probability used when taking ``log(prior)``: classes with zero count are clamped
#: to this value (after normalising the prior to sum to 1), so ``log`` stays finite (-13.8).
DEFAULT_PRIOR_FLOOR = 1e-6


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` in at least float32 (fp16/bf16 -> fp32; fp32/fp64 unchanged)."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any floating input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that disables autocast on ``device`` so the losses run in the inputs' dtype.

    Under ``torch.autocast`` matmuls would otherwise run in bf16/fp16; the losses' similarity
    matrices, softmaxes and reductions are cheap and need full precision.
    """
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def check_tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_labels(
    labels: object, num_classes: int, *, check_range: bool = True, name: str = "labels"
) -> torch.Tensor:
    """Validate class labels ``[batch]`` (integer dtype; values in 0..num_classes-1) -> int64.

    The range check reads the tensor on the host (one device sync); pass ``check_range=False``
    in training loops whose data were validated once.
    """
    labels = check_tensor(labels, name)
    if labels.dim() != 1:
        raise ValueError(f"{name} must have shape [batch], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got {labels.dtype}")
    if labels.numel() == 0:
        raise ValueError(f"{name} is empty: the loss needs at least one sample")
    if check_range:
        bad = (labels < 0) | (labels >= num_classes)
        if bool(bad.any()):
            value = int(labels[bad][0])
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}, found {value}")
    return labels.long()


def stack_expert_logits(
    expert_logits: torch.Tensor | Sequence[torch.Tensor],
    num_experts: int | None = None,
    name: str = "expert_logits",
) -> torch.Tensor:
    """Expert logits as one tensor ``[batch, num_experts, num_classes]``.

    Accepts a list of ``num_experts`` tensors ``[batch, num_classes]`` (stacked once) or an
    already stacked ``[batch, num_experts, num_classes]`` tensor (returned as is). ``name``
    is used in error messages (the same helper stacks per-expert features).
    """
    if isinstance(expert_logits, torch.Tensor):
        stacked = expert_logits
        if stacked.dim() != 3:
            raise ValueError(
                f"{name} must be [batch, num_experts, dim] or a list of [batch, dim] tensors, "
                f"got a tensor of shape {tuple(stacked.shape)}"
            )
    elif isinstance(expert_logits, Sequence) and len(expert_logits) > 0:
        for index, logits in enumerate(expert_logits):
            check_tensor(logits, f"{name}[{index}]")
            if logits.shape != expert_logits[0].shape or logits.dim() != 2:
                raise ValueError(
                    f"{name}[{index}] has shape {tuple(logits.shape)}; every expert needs the "
                    f"same [batch, dim] shape as {name}[0] {tuple(expert_logits[0].shape)}"
                )
        stacked = torch.stack(list(expert_logits), dim=1)
    else:
        raise TypeError(
            f"{name} must be a [batch, num_experts, dim] tensor or a non-empty list of tensors"
        )
    if num_experts is not None and stacked.shape[1] != num_experts:
        raise ValueError(f"{name}: expected {num_experts} experts, got {stacked.shape[1]}")
    return stacked


def gated_ensemble_logits(
    expert_logits: torch.Tensor, gating_weights: torch.Tensor
) -> torch.Tensor:
    """Gated ensemble ``sum_k g[b, k] * logits[b, k, :]`` -> ``[batch, num_classes]``.

    ``expert_logits`` ``[batch, num_experts, num_classes]``, ``gating_weights``
    ``[batch, num_experts]``.
    """
    if gating_weights.shape != expert_logits.shape[:2]:
        raise ValueError(
            "gating_weights must have shape [batch, num_experts] = "
            f"{tuple(expert_logits.shape[:2])}, "
            f"got {tuple(gating_weights.shape)}"
        )
    return torch.einsum("bk,bkc->bc", gating_weights.to(expert_logits.dtype), expert_logits)


def labels_from_targets(
    targets: Mapping[str, torch.Tensor] | torch.Tensor, num_classes: int, check_range: bool = True
) -> torch.Tensor:
    """The ``[batch]`` labels of ``targets = {"labels": ...}`` (or a bare tensor), validated."""
    if isinstance(targets, Mapping):
        if "labels" not in targets:
            raise ValueError(f"targets has no 'labels' entry (keys: {sorted(targets)})")
        targets = targets["labels"]
    return check_labels(targets, num_classes, check_range=check_range)


def output_tensor(outputs: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``outputs[key]`` checked to be a floating tensor of ``shape``, upcast to float32."""
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"outputs must be a mapping (dict or ModelOutput), got {type(outputs).__name__}"
        )
    value = outputs.get(key)
    if value is None:
        raise ValueError(f"outputs has no {key!r} entry, needed by the active loss components")
    check_tensor(value, f"outputs[{key!r}]")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"outputs[{key!r}] must have shape {list(shape)}, got {list(value.shape)}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"outputs[{key!r}] must be floating point, got {value.dtype}")
    return upcast(value)


def expert_logits_from_outputs(
    outputs: Mapping[str, Any], batch: int, num_experts: int | None, num_classes: int | None
) -> torch.Tensor:
    """``outputs["expert_logits"]`` as float32 ``[batch, num_experts, num_classes]``, checked."""
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"outputs must be a mapping (dict or ModelOutput), got {type(outputs).__name__}"
        )
    if outputs.get("expert_logits") is None:
        raise ValueError("outputs has no 'expert_logits' entry")
    logits = stack_expert_logits(outputs["expert_logits"], num_experts)
    if logits.shape[0] != batch or (num_classes is not None and logits.shape[2] != num_classes):
        expected = [batch, logits.shape[1], num_classes if num_classes is not None else "C"]
        raise ValueError(
            f"expert_logits must be {expected} (labels give the batch size), "
            f"got {list(logits.shape)}"
        )
    if not logits.dtype.is_floating_point:
        raise TypeError(f"expert_logits must be floating point, got {logits.dtype}")
    return upcast(logits)


def ensemble_logits_from_outputs(
    outputs: Mapping[str, Any], expert_logits: torch.Tensor
) -> torch.Tensor:
    """The ensemble ``[batch, num_classes]``: ``outputs["ensemble_logits"]`` if given, else
    the gated sum of ``expert_logits`` ``[batch, K, C]`` with ``outputs["gating_weights"]``
    ``[batch, K]`` (which may be omitted when ``K = 1``: a single head)."""
    batch, num_experts, num_classes = expert_logits.shape
    if outputs.get("ensemble_logits") is not None:
        return output_tensor(outputs, "ensemble_logits", (batch, num_classes))
    if num_experts == 1 and outputs.get("gating_weights") is None:
        return expert_logits[:, 0]
    gating_weights = output_tensor(outputs, "gating_weights", (batch, num_experts))
    return gated_ensemble_logits(expert_logits, gating_weights)


def log_class_prior(
    class_prior: torch.Tensor | Sequence[float],
    num_classes: int | None = None,
    floor: float = DEFAULT_PRIOR_FLOOR,
) -> torch.Tensor:
    """``log`` of a class prior given as probabilities or counts -> float32 ``[num_classes]``.

    The prior is normalised to sum to 1, then clamped below at ``floor`` (so zero-count classes
    get ``log(floor)``, finite) before the log. Raises ``ValueError`` for a wrong length,
    negative or non-finite entries or an all-zero prior.
    """
    if isinstance(class_prior, torch.Tensor):
        if class_prior.is_meta:
            raise ValueError(
                "class_prior is a meta tensor (no values); pass real counts or probabilities"
            )
        class_prior = class_prior.detach().cpu().numpy()
    prior = np.asarray(class_prior, dtype=np.float64)
    if prior.ndim != 1:
        raise ValueError(f"class_prior must be a vector [num_classes], got shape {prior.shape}")
    if num_classes is not None and prior.shape[0] != num_classes:
        raise ValueError(
            f"class_prior has {prior.shape[0]} entries, expected num_classes={num_classes}"
        )
    if not np.isfinite(prior).all() or (prior < 0).any():
        raise ValueError("class_prior must hold finite, non-negative probabilities or counts")
    total = prior.sum()
    if not total > 0:
        raise ValueError(
            "class_prior sums to 0: give counts or probabilities with a positive total"
        )
    if not 0 < floor < 1:
        raise ValueError(f"prior floor must lie in (0, 1), got {floor}")
    # Built on the host with numpy: never a meta tensor, whatever the default device.
    return torch.from_numpy(np.log(np.maximum(prior / total, floor)).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Spec functions
# ----------------------------------------------------------------------------------------------


def soft_entropy(
    input: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy with hard or soft targets: ``-sum_c target[b, c] * log_softmax(input)[b, c]``.

    Args:
        input: logits ``[batch, num_classes]``.
        target: class indices ``[batch]`` (integer) or probabilities ``[batch, num_classes]``
            (rows need not be normalised; they are used as given, e.g. for distillation).
        reduction: ``"mean"`` over the batch (default), ``"sum"``, or ``"none"`` (``[batch]``).

    Computed in float32 (float64 stays float64).
    """
    input = upcast(check_tensor(input, "input"))
    target = check_tensor(target, "target")
    if input.dim() != 2:
        raise ValueError(f"input must be logits [batch, num_classes], got {tuple(input.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    log_probs = F.log_softmax(input, dim=1)
    if target.dtype.is_floating_point:
        if target.shape != input.shape:
            raise ValueError(
                f"soft target shape {tuple(target.shape)} does not match input {tuple(input.shape)}"
            )
        per_sample = -(target.to(log_probs.dtype) * log_probs).sum(dim=1)
    else:
        if target.shape != input.shape[:1]:
            raise ValueError(
                f"hard target must be [batch] = [{input.shape[0]}], got {tuple(target.shape)}"
            )
        target = check_labels(target, input.shape[1], name="target")
        per_sample = -log_probs.gather(1, target[:, None]).squeeze(1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def mix_outputs(
    outputs: Sequence[torch.Tensor] | torch.Tensor,
    labels: torch.Tensor,
    balance: bool = False,
    label_dis: torch.Tensor | Sequence[float] | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-expert loss: per-expert cross-entropy, mutual distillation, parallel term.

    Args:
        outputs: list of ``K`` expert logits ``[batch, num_classes]`` or one tensor
            ``[batch, K, num_classes]``.
        labels: class indices ``[batch]`` or soft targets ``[batch, num_classes]``.
        balance: add ``log(label_dis)`` to every expert's logits in the cross-entropy terms
            (balanced softmax; ``label_dis`` are counts or probabilities, zeros clamped as in
            :func:`log_class_prior`).
        label_dis: class distribution ``[num_classes]``, required when ``balance=True``.
        eps: added to each expert's cross-entropy loss before taking its reciprocal.

    Returns the spec's tuple ``(loss, avg_output, loss_distillation, loss_parallel)``, with
    ``ce_k = soft_entropy(outputs[k], labels)`` the cross-entropy loss of expert ``k`` (a batch
    mean; with ``balance=True`` of the prior-adjusted logits ``outputs[k] + log(label_dis)``):

    * ``loss = sum_k ce_k`` (the spec's item 1; item 4 in balance mode): the experts'
      cross-entropies only. The two other terms are **not** added into it; they are returned
      separately, and a caller that wants them in its objective adds (and weights) them;
    * ``loss_distillation = sum_{i != j} KL(p_i || p_j)`` (item 2) with
      ``p_k = softmax(outputs[k])`` (raw logits, also in balance mode), per sample and averaged
      over the batch; summing over all ordered pairs makes it symmetric, so the KL direction
      does not matter; no target is detached (mutual learning);
    * ``loss_parallel = K / sum_k 1 / (ce_k + eps)`` (item 3): ``K`` times the "fused"
      reciprocal of the per-expert losses ``ce_k`` (their harmonic mean), dominated by the best
      expert; a scalar built from the batch means, not from per-sample values;
    * ``avg_output``: mean of the raw expert logits ``[batch, num_classes]``.

    Runs on the inputs' device (no device is hard-coded).
    """
    logits = upcast(stack_expert_logits(outputs))
    num_experts = logits.shape[1]
    labels = check_tensor(labels, "labels")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels have batch size {labels.shape[0]}, outputs {logits.shape[0]}")
    if not labels.dtype.is_floating_point:
        labels = check_labels(labels, logits.shape[2])

    ce_logits = logits
    if balance:
        if label_dis is None:
            raise ValueError("balance=True needs label_dis, the class distribution [num_classes]")
        ce_logits = logits + log_class_prior(label_dis, logits.shape[2]).to(
            logits.device, logits.dtype
        )

    # Per-expert, per-sample cross-entropy [batch, K] from one log-softmax over [batch, K, C].
    log_probs = F.log_softmax(ce_logits, dim=2)
    if labels.dtype.is_floating_point:
        if labels.shape != (logits.shape[0], logits.shape[2]):
            raise ValueError(
                f"soft targets must be [batch, num_classes], got {tuple(labels.shape)}"
            )
        ce = -(labels.to(log_probs.dtype)[:, None, :] * log_probs).sum(dim=2)
    else:
        ce = -log_probs.gather(2, labels[:, None, None].expand(-1, num_experts, 1)).squeeze(2)
    # Each expert's cross-entropy loss, a batch mean [K]; the spec's loss is their sum.
    expert_ce = ce.mean(dim=0)
    loss = expert_ce.sum()

    # KL(p_i || p_j) = sum_c p_i (log p_i - log p_j) for all pairs at once: [batch, K, K].
    raw_log_probs = F.log_softmax(logits, dim=2)
    probs = raw_log_probs.exp()
    neg_entropy = (probs * raw_log_probs).sum(dim=2)
    cross = torch.einsum("bic,bjc->bij", probs, raw_log_probs)
    kl = neg_entropy[:, :, None] - cross
    off_diagonal = ~torch.eye(num_experts, dtype=torch.bool, device=logits.device)
    loss_distillation = (kl * off_diagonal).sum(dim=(1, 2)).mean()

    # Spec: reciprocal_sum = sum_k 1 / (ce_k + eps); fused = 1 / reciprocal_sum; times K.
    fused = 1.0 / (1.0 / (expert_ce + eps)).sum()
    loss_parallel = fused * num_experts

    return loss, logits.mean(dim=1), loss_distillation, loss_parallel


def feature_diversity_loss(
    features: Sequence[torch.Tensor] | torch.Tensor,
    lambda_reg: float = 0.01,
    normalize: bool = True,
) -> torch.Tensor:
    """Diversity penalty: ``-lambda_reg * mean_{i != j} ||f_i - f_j||_2`` over experts, per sample.

    Args:
        features: list of ``K`` expert features ``[batch, feature_dim]`` or one tensor
            ``[batch, K, feature_dim]``.
        lambda_reg: weight (default 0.01).
        normalize: L2-normalise each expert feature first (default; the spec asks for normalised
            features everywhere). It bounds the distances (to [0, 2]) so the penalty cannot be
            lowered just by scaling features up.

    The spec writes ``lambda * mean(pairwise distances)``; minimising that *pulls experts
    together*, the opposite of its stated purpose (prevent expert collapse). We implement the
    purpose: the Euclidean distances between the ``K`` experts' features *of the same sample*
    (``K (K-1)`` ordered pairs, self-pairs excluded), averaged over pairs and batch, with a minus
    sign, so gradient descent increases the mean distance. With ``K = 1`` there are no pairs and
    the loss is an exact 0 (still attached to the graph).
    """
    stacked = upcast(stack_expert_logits(features, name="features"))
    if normalize:
        stacked = F.normalize(stacked, dim=2)
    num_experts = stacked.shape[1]
    if num_experts < 2:
        return stacked.sum() * 0.0
    # Unordered pairs i < j give the same mean as ordered pairs i != j (distances are symmetric);
    # vector_norm has a zero subgradient at 0, so identical features do not produce NaN.
    first, second = torch.triu_indices(num_experts, num_experts, offset=1, device=stacked.device)
    distances = torch.linalg.vector_norm(stacked[:, first] - stacked[:, second], dim=2)
    return -lambda_reg * distances.mean()
