"""The PhysMoE loss: physics-rule contrastive loss, ICL expert losses, hierarchical loss, centres.

``L_total = λ_scl L_scl + λ_dol L_dol + λ_col L_col + λ_hier (L_sys + L_sg) + λ_reg L_reg
+ λ_hnm L_hnm`` (defaults 0.1, 1, 1, 1, 0.001, 0), assembled by :class:`PhysMoELossWrapper`.

Every loss L2-normalises the features it treats as unit vectors (the spec: all features are
normalised before use), works in float32 with autocast disabled (float64 inputs stay float64),
and is finite, with finite gradients, on degenerate batches (batch size 1, one class, anchors
without positives or negatives). Class-shaped constants are non-persistent buffers, so
``.to(device)`` moves them; :meth:`PhysMoELossWrapper.reset_buffers` rebuilds them from host
copies (needed after transformers materialises a model built on the meta device).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from physmoe.crystallography import NUM_CRYSTAL_SYSTEMS
from physmoe.loss.hnm import HardNegativeMining_Proto
from physmoe.loss.moe_loss import (
    check_labels,
    check_tensor,
    compute_dtype,
    ensemble_logits_from_outputs,
    expert_logits_from_outputs,
    full_precision,
    gated_ensemble_logits,
    labels_from_targets,
    log_class_prior,
    output_tensor,
    stack_expert_logits,
    upcast,
)

__all__ = [
    "CenterRegularizationLoss",
    "HierarchicalLoss",
    "ICLMoELoss",
    "PhysMoELossWrapper",
    "PhysMoELossWrapperNoContrast",
    "PhysicsContrastiveLoss",
]


# ----------------------------------------------------------------------------------------------
# Host-side validation of the class-shaped constants (run once, at construction)
# ----------------------------------------------------------------------------------------------


def _host_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            raise ValueError(
                f"{name} is a meta tensor (no values); build it outside the meta-device context, "
                f"e.g. with numpy or torch.from_numpy"
            )
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _validate_rule_matrix(rule_matrix: Any) -> np.ndarray:
    """Return the rule matrix as float32 numpy ``[C, C]``; values must be finite and in [0, 1]
    (up to 1e-5 of rounding, e.g. a cosine of 1.0000001, which is clipped)."""
    matrix = _host_array(rule_matrix, "rule_matrix")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(
            f"rule_matrix must be square [num_classes, num_classes], got shape {matrix.shape}"
        )
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(
        matrix.dtype, np.complexfloating
    ):
        raise TypeError(f"rule_matrix must be real-valued, got dtype {matrix.dtype}")
    matrix = matrix.astype(np.float32)
    if not np.isfinite(matrix).all():
        raise ValueError("rule_matrix holds non-finite values (NaN or inf)")
    if matrix.min() < -1e-5 or matrix.max() > 1 + 1e-5:
        raise ValueError(
            f"rule_matrix values must lie in [0, 1] (they weight negatives by 1 - similarity), "
            f"got range [{matrix.min()}, {matrix.max()}]"
        )
    return np.clip(matrix, 0.0, 1.0)


def _validate_sg_to_sys(sg_to_sys_map: Any, num_classes: int, num_systems: int) -> np.ndarray:
    """Return the class -> crystal-system map as int64 numpy ``[C]`` with values
    0..num_systems-1."""
    mapping = _host_array(sg_to_sys_map, "sg_to_sys_map")
    if mapping.shape != (num_classes,):
        raise ValueError(f"sg_to_sys_map must have shape [{num_classes}], got {mapping.shape}")
    if not np.issubdtype(mapping.dtype, np.integer):
        raise TypeError(
            f"sg_to_sys_map must hold integer crystal-system indices, got dtype {mapping.dtype}"
        )
    if mapping.min() < 0 or mapping.max() >= num_systems:
        raise ValueError(
            f"sg_to_sys_map values must lie in 0..{num_systems - 1}, "
            f"got range [{mapping.min()}, {mapping.max()}]"
        )
    return mapping.astype(np.int64)


def _config_value(cfg: Any, *names: str) -> Any:
    for name in names:
        if hasattr(cfg, name):
            return getattr(cfg, name)
    raise ValueError(
        f"loss config {type(cfg).__name__} has no attribute {' or '.join(repr(n) for n in names)}"
    )


def _pair_gather(matrix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``matrix[labels[i], labels[j]]`` -> ``[batch, batch]`` in one gather."""
    return matrix[labels[:, None], labels[None, :]]


# ----------------------------------------------------------------------------------------------
# 2.1 Physics-rule contrastive loss
# ----------------------------------------------------------------------------------------------


class PhysicsContrastiveLoss(nn.Module):
    """Supervised contrastive loss whose positives and negatives are weighted by a rule matrix.

    For L2-normalised features ``f`` and ``s_ij = f_i . f_j / temperature``, with
    ``r_ij = rule_matrix[y_i, y_j]``:

    * positives ``P(i) = {j != i : y_j = y_i or r_ij > rule_threshold}``;
    * negatives are weighted by ``w_ij = 1 - r_ij`` (with a unit-diagonal rule matrix the anchor
      itself and same-class samples get weight 0, rule-similar classes a small weight);
    * ``log_prob_ij = s_ij - log(sum_k w_ik exp(s_ik))``;
    * ``loss = -mean_i (sum_{j in P(i)} log_prob_ij / |P(i)|)``.

    The denominator is evaluated as a ``logsumexp`` over the pairs with ``w > 0`` (equal to the
    spec's row-max-shifted form, without underflow). Anchors without positives, or without any
    pair of positive weight (e.g. a one-class batch), contribute nothing and are left out of the
    mean; a batch without any valid anchor gives an exact 0. The loss is not bounded below by 0:
    positives with weight 0 are not in the denominator.

    ``validate`` (default True) range-checks the labels on every call (one host sync; an
    out-of-range label would otherwise raise an IndexError or, if negative, wrap around silently);
    :meth:`~physmoe.ResNet1D_MoE.value_checks_disabled` switches it off with the other checks.
    """

    def __init__(
        self, temperature: float = 0.07, rule_threshold: float = 0.8, validate: bool = True
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.rule_threshold = float(rule_threshold)
        self.validate = bool(validate)

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        rule_matrix: torch.Tensor,
        positive_class_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            features: ``[batch, feature_dim]`` (normalised here).
            labels: ``[batch]`` class indices.
            rule_matrix: ``[num_classes, num_classes]`` similarities in [0, 1].
            positive_class_mask: optional precomputed bool ``[num_classes, num_classes]``
                ``(rule_matrix > rule_threshold) | eye``: exact even if ``rule_matrix`` was
                rounded to a low-precision dtype.

        Returns the scalar loss.
        """
        features = upcast(check_tensor(features, "features"))
        if not features.dtype.is_floating_point:
            raise TypeError(f"features must be floating point, got {features.dtype}")
        check_tensor(rule_matrix, "rule_matrix")
        labels = check_labels(labels, rule_matrix.shape[0], check_range=self.validate)
        if features.dim() != 2 or labels.shape != features.shape[:1]:
            raise ValueError(
                "features must be [batch, feature_dim] and labels [batch]; "
                f"got {list(features.shape)} "
                f"and {list(labels.shape)}"
            )
        if rule_matrix.dim() != 2 or rule_matrix.shape[0] != rule_matrix.shape[1]:
            raise ValueError(
                f"rule_matrix must be [num_classes, num_classes], got {list(rule_matrix.shape)}"
            )
        with full_precision(features.device):
            return self._loss(features, labels, rule_matrix, positive_class_mask)

    def _loss(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        rule_matrix: torch.Tensor,
        positive_class_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        features = F.normalize(features, dim=1)
        dtype = features.dtype
        batch = features.shape[0]
        logits = features @ features.T / self.temperature
        batch_rule = _pair_gather(
            rule_matrix.detach().to(device=features.device, dtype=dtype), labels
        )
        if positive_class_mask is None:
            positive = (labels[:, None] == labels[None, :]) | (batch_rule > self.rule_threshold)
        else:
            positive = _pair_gather(positive_class_mask, labels)
        positive = positive & ~torch.eye(batch, dtype=torch.bool, device=features.device)

        negative_weights = 1.0 - batch_rule
        negative = negative_weights > 0
        has_negative = negative.any(dim=1)
        # log(sum_k w_ik exp(s_ik)): pairs with w = 0 are -inf (exact exclusion); rows with no
        # pair of positive weight get zeros (finite) and are dropped from the mean below.
        weighted_scores = torch.where(
            negative,
            logits + torch.log(negative_weights.clamp_min(torch.finfo(dtype).tiny)),
            -torch.inf,
        )
        weighted_scores = torch.where(
            has_negative[:, None], weighted_scores, torch.zeros_like(weighted_scores)
        )
        log_denominator = torch.logsumexp(weighted_scores, dim=1, keepdim=True)
        log_prob = logits - log_denominator

        num_positives = positive.sum(dim=1)
        mean_log_prob = torch.where(positive, log_prob, 0.0).sum(dim=1) / num_positives.clamp_min(1)
        valid = (num_positives > 0) & has_negative
        return -(mean_log_prob * valid).sum() / valid.sum().clamp_min(1)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, rule_threshold={self.rule_threshold}"


# ----------------------------------------------------------------------------------------------
# 2.2 Independent and collaborative expert losses
# ----------------------------------------------------------------------------------------------


class ICLMoELoss(nn.Module):
    """Independent + collaborative learning of the experts: ``L_moe = L_dol + L_col``.

    * ``L_dol`` (division of labour): head experts use cross-entropy, tail experts
      (``tail_expert_ids``) focal loss ``(1 - p_t)^gamma * CE`` with ``p_t = exp(-CE)``; each is a
      batch mean, and ``L_dol`` is their **mean over experts**.
    * ``L_col`` (collaboration): ``KL(softmax(ensemble) || softmax(expert_k))`` per sample,
      averaged over the batch ("batchmean"), then **mean over experts**. The ensemble is the
      gated sum ``sum_k g_k logits_k`` and is **detached** by default (``detach_ensemble``): it
      is a distillation target the experts move towards, as the spec describes; the gate is
      trained by the hierarchical space-group loss on the same ensemble.

    Both are computed for all experts at once on ``[batch, num_experts, num_classes]``.
    ``logit_adjustment`` ``[num_classes]`` (``tau * log(prior)``) is added to every expert's
    logits and to the ensemble before the softmaxes (logit-adjusted training).
    """

    def __init__(
        self,
        num_experts: int,
        tail_expert_ids: Sequence[int] = (),
        gamma: float = 2.0,
        detach_ensemble: bool = True,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        tail = tuple(int(k) for k in tail_expert_ids)
        if len(set(tail)) != len(tail) or any(not 0 <= k < num_experts for k in tail):
            raise ValueError(
                f"tail_expert_ids must be distinct indices in 0..{num_experts - 1}, "
                f"got {list(tail_expert_ids)}"
            )
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.num_experts = int(num_experts)
        self.tail_expert_ids = tail
        self.gamma = float(gamma)
        self.detach_ensemble = bool(detach_ensemble)
        self.register_buffer(
            "tail_expert_mask", torch.from_numpy(self._tail_mask()), persistent=False
        )

    def _tail_mask(self) -> np.ndarray:
        mask = np.zeros(self.num_experts, dtype=bool)
        mask[list(self.tail_expert_ids)] = True
        return mask

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Rebuild the non-persistent ``tail_expert_mask`` in place (device kept)."""
        self.tail_expert_mask.copy_(torch.from_numpy(self._tail_mask()))

    def division_of_labor_loss(
        self,
        expert_logits: torch.Tensor,
        labels: torch.Tensor,
        logit_adjustment: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``L_dol`` from ``expert_logits`` ``[batch, num_experts, num_classes]`` and
        ``labels`` ``[batch]``."""
        logits = upcast(expert_logits)
        if logit_adjustment is not None:
            logits = logits + logit_adjustment.to(logits.dtype)
        log_probs = F.log_softmax(logits, dim=2)
        ce = -log_probs.gather(2, labels[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(
            2
        )  # [B, K]
        # (1 - p_t) = -expm1(-CE): exact for small CE where 1 - exp(-CE) would cancel.
        focal = (-torch.expm1(-ce)).pow(self.gamma) * ce
        per_expert = torch.where(self.tail_expert_mask.to(ce.device), focal, ce)
        return per_expert.mean()

    def collaboration_loss(
        self,
        expert_logits: torch.Tensor,
        ensemble_logits: torch.Tensor,
        logit_adjustment: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``L_col`` from ``expert_logits`` ``[batch, K, C]`` and ``ensemble_logits``
        ``[batch, C]``."""
        logits = upcast(expert_logits)
        ensemble = upcast(ensemble_logits)
        if self.detach_ensemble:
            ensemble = ensemble.detach()
        if logit_adjustment is not None:
            logits = logits + logit_adjustment.to(logits.dtype)
            ensemble = ensemble + logit_adjustment.to(ensemble.dtype)
        ensemble_log_probs = F.log_softmax(ensemble, dim=1)[:, None, :]  # [B, 1, C]
        expert_log_probs = F.log_softmax(logits, dim=2)  # [B, K, C]
        kl = (ensemble_log_probs.exp() * (ensemble_log_probs - expert_log_probs)).sum(
            dim=2
        )  # [B, K]
        return kl.mean()

    def forward(
        self,
        expert_logits: torch.Tensor | Sequence[torch.Tensor],
        gating_weights: torch.Tensor,
        labels: torch.Tensor,
        logit_adjustment: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss_dol, loss_col)``; ``expert_logits`` a list of K ``[B, C]`` or
        ``[B, K, C]``, ``gating_weights`` ``[B, K]``, ``labels`` ``[B]``."""
        logits = upcast(stack_expert_logits(expert_logits, self.num_experts))
        labels = check_labels(labels, logits.shape[2])
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels have batch size {labels.shape[0]}, expert_logits {logits.shape[0]}"
            )
        with full_precision(logits.device):
            ensemble = gated_ensemble_logits(logits, upcast(gating_weights))
            return (
                self.division_of_labor_loss(logits, labels, logit_adjustment),
                self.collaboration_loss(logits, ensemble, logit_adjustment),
            )

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, tail_expert_ids={list(self.tail_expert_ids)}, "
            f"gamma={self.gamma}, detach_ensemble={self.detach_ensemble}"
        )


# ----------------------------------------------------------------------------------------------
# 2.3 Hierarchical crystal-system -> space-group loss
# ----------------------------------------------------------------------------------------------


class HierarchicalLoss(nn.Module):
    """``L_hier = L_sys + L_sg``.

    * ``L_sys = CE(sys_logits, sg_to_sys_map[labels])``;
    * ``L_sg = CE`` over only the space groups of the sample's *true* crystal system: the other
      classes are masked with ``torch.finfo(dtype).min`` (no fixed constant that would overflow
      in half precision), i.e. a masked log-softmax.
      ``L_sg <= CE(sg_logits, labels)`` always.

    Both are batch means. The per-system class masks ``[num_systems, num_classes]`` are built once
    (non-persistent buffer ``system_class_mask``).

    ``validate`` (default True) range-checks the labels on every call (one host sync; an
    out-of-range label would otherwise raise an IndexError or, if negative, wrap around).
    """

    def __init__(
        self,
        sg_to_sys_map: torch.Tensor | Sequence[int],
        num_systems: int = NUM_CRYSTAL_SYSTEMS,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.validate = bool(validate)
        mapping = _host_array(sg_to_sys_map, "sg_to_sys_map")
        if mapping.ndim != 1 or mapping.shape[0] < 1:
            raise ValueError(
                f"sg_to_sys_map must be a vector [num_classes], got shape {mapping.shape}"
            )
        self.num_systems = int(num_systems)
        self._sg_to_sys = _validate_sg_to_sys(mapping, mapping.shape[0], self.num_systems)
        self.num_classes = self._sg_to_sys.shape[0]
        sg_to_sys, system_mask = self._buffers_from_host()
        self.register_buffer("sg_to_sys_map", sg_to_sys, persistent=False)
        self.register_buffer("system_class_mask", system_mask, persistent=False)

    def _buffers_from_host(self) -> tuple[torch.Tensor, torch.Tensor]:
        system_mask = self._sg_to_sys[None, :] == np.arange(self.num_systems)[:, None]
        return torch.from_numpy(self._sg_to_sys.copy()), torch.from_numpy(system_mask)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Rebuild ``sg_to_sys_map`` and ``system_class_mask`` in place (device kept)."""
        sg_to_sys, system_mask = self._buffers_from_host()
        self.sg_to_sys_map.copy_(sg_to_sys)
        self.system_class_mask.copy_(system_mask)

    def forward(
        self, sys_logits: torch.Tensor, sg_logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sys_logits`` ``[B, num_systems]``, ``sg_logits`` ``[B, C]``, ``labels`` ``[B]`` ->
        ``(loss_sys, loss_sg)``."""
        labels = check_labels(labels, self.num_classes, check_range=self.validate)
        batch = labels.shape[0]
        if sys_logits.shape != (batch, self.num_systems) or sg_logits.shape != (
            batch,
            self.num_classes,
        ):
            raise ValueError(
                f"expected sys_logits [{batch}, {self.num_systems}] and sg_logits [{batch}, "
                f"{self.num_classes}], got {list(sys_logits.shape)} and {list(sg_logits.shape)}"
            )
        sys_logits, sg_logits = upcast(sys_logits), upcast(sg_logits)
        with full_precision(sg_logits.device):
            sys_labels = self.sg_to_sys_map[labels]
            loss_sys = F.cross_entropy(sys_logits, sys_labels)
            valid = self.system_class_mask[sys_labels]  # [B, C]
            masked_logits = sg_logits.masked_fill(~valid, torch.finfo(sg_logits.dtype).min)
            loss_sg = F.cross_entropy(masked_logits, labels)
        return loss_sys, loss_sg

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_systems={self.num_systems}"


# ----------------------------------------------------------------------------------------------
# 2.4 Centre regularisation
# ----------------------------------------------------------------------------------------------


class _CenterRegularization(torch.autograd.Function):
    """``(L_center, L_prototype)`` of :class:`CenterRegularizationLoss` with analytic gradients.

    Inputs: unit features ``[B, D]``, labels ``[B]``, raw centres ``[C, D]`` and the constant
    symmetric ``S = (W + W^T) / 2`` ``[C, C]``, so that ``L_prototype = 1 - sum_ij S_ij (u_i .
    u_j) / C`` for unit centres ``u``. The gradient of the quadratic form, ``2 S u``, is the
    product the forward pass already has, and the backward pass writes the centres' gradient
    into one ``[C, D]`` buffer: one matmul and three ``[C, D]`` temporaries per step instead of
    autograd's two matmuls and about ten (this term dominates the loss's cost at C=230, D=1024).
    """

    @staticmethod
    def forward(
        ctx: Any,
        features: torch.Tensor,
        labels: torch.Tensor,
        centers: torch.Tensor,
        symmetric: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        eps = 1e-12  # as F.normalize: u = c / max(||c||, eps)
        norms = torch.linalg.vector_norm(centers, dim=1)
        inv_norms = norms.clamp_min(eps).reciprocal()
        unit = centers * inv_norms[:, None]
        product = symmetric @ unit
        batch_centers = unit[labels]
        loss_center = 1.0 - (features * batch_centers).sum(dim=1).mean()
        loss_prototype = 1.0 - torch.dot(unit.view(-1), product.view(-1)) / centers.shape[0]
        ctx.save_for_backward(
            features, labels, unit, product, inv_norms, norms > eps, batch_centers
        )
        return loss_center, loss_prototype

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_center: torch.Tensor, grad_prototype: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None, None]:
        features, labels, unit, product, inv_norms, not_clamped, batch_centers = ctx.saved_tensors
        batch, num_classes = features.shape[0], unit.shape[0]
        grad_features = batch_centers * (-grad_center / batch) if ctx.needs_input_grad[0] else None
        grad_centers = None
        if ctx.needs_input_grad[2]:
            # dL/du: -2 g_p S u / C, plus -g_c f_b / B on the rows of the batch labels.
            grad_centers = product * (-2.0 * grad_prototype / num_classes)
            grad_centers.index_add_(0, labels, features * (-grad_center / batch))
            # Through u = c / ||c||: (g - u (u . g)) / ||c|| (only g / eps where the norm was
            # clamped).
            radial = torch.bmm(grad_centers[:, None, :], unit[:, :, None]).view(num_classes, 1)
            grad_centers.addcmul_(unit, radial * not_clamped[:, None], value=-1.0)
            grad_centers.mul_(inv_norms[:, None])
        return grad_features, None, grad_centers, None


class CenterRegularizationLoss(nn.Module):
    """``L_reg = L_center + prototype_weight * L_prototype`` (``prototype_weight`` = 0.5).

    With unit features ``f``, unit centres ``c`` (trained parameter ``centers`` ``[C, D]``,
    initialised ``randn * 0.1``) and ``W`` = the rule matrix with a zero diagonal, each row
    divided by its sum (the spec's ``sim_weights / sum(sim_weights)`` read per row; a class with
    no similar class keeps an all-zero row):

    * ``L_center = mean_b (1 - f_b . c_{y_b})`` (cosine distance to the own class centre);
    * ``L_prototype = mean_c (1 - c_c . (W c)_c)``: each centre is pulled towards the
      rule-weighted mean of the other centres. As in the spec, that mean is *not* renormalised,
      so the term also rewards rule-similar centres agreeing with each other; it lies in [0, 2].

    Pass ``rule_matrix`` ``[C, C]`` here to precompute ``W`` once (non-persistent buffer; then
    ``forward`` needs no matrix), or give it to every ``forward`` call.

    ``validate`` (default True) range-checks the labels on every call (one host sync; a label of
    -1 would otherwise silently pick the last class's centre).
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        prototype_weight: float = 0.5,
        rule_matrix: torch.Tensor | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.validate = bool(validate)
        if num_classes < 1 or feat_dim < 1:
            raise ValueError(
                f"num_classes and feat_dim must be >= 1, got {num_classes}, {feat_dim}"
            )
        self.num_classes = int(num_classes)
        self.feat_dim = int(feat_dim)
        self.prototype_weight = float(prototype_weight)
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim) * 0.1)
        self._rule_matrix = None
        if rule_matrix is not None:
            self._rule_matrix = _validate_rule_matrix(rule_matrix)
            if self._rule_matrix.shape[0] != self.num_classes:
                raise ValueError(
                    f"rule_matrix must be [{num_classes}, {num_classes}], "
                    f"got {self._rule_matrix.shape}"
                )
            self.register_buffer(
                "symmetric_weights", self._symmetric_weights_from_host(), persistent=False
            )

    def _symmetric_weights_from_host(self) -> torch.Tensor:
        return self.symmetric_prototype_weights(
            torch.from_numpy(self._rule_matrix.astype(np.float64))
        ).float()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the centres as ``randn * 0.1``."""
        nn.init.normal_(self.centers, mean=0.0, std=0.1)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Rebuild the non-persistent ``symmetric_weights`` in place (if built with a rule
        matrix)."""
        if self._rule_matrix is not None:
            self.symmetric_weights.copy_(self._symmetric_weights_from_host())

    @staticmethod
    def prototype_weights(rule_matrix: torch.Tensor) -> torch.Tensor:
        """``W``: the rule matrix with a zero diagonal, rows divided by their sums ``[C, C]``."""
        weights = rule_matrix * ~torch.eye(
            rule_matrix.shape[0], dtype=torch.bool, device=rule_matrix.device
        )
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)

    @classmethod
    def symmetric_prototype_weights(cls, rule_matrix: torch.Tensor) -> torch.Tensor:
        """``S = (W + W^T) / 2``: ``mean_c c_c . (W c)_c = sum_ij S_ij (c_i . c_j) / C``."""
        weights = cls.prototype_weights(rule_matrix)
        return 0.5 * (weights + weights.T)

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, rule_matrix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``features`` ``[B, D]`` (normalised here), ``labels`` ``[B]``, optional ``rule_matrix``
        ``[C, C]`` (default: the one given at construction) -> scalar."""
        features = upcast(check_tensor(features, "features"))
        labels = check_labels(labels, self.num_classes, check_range=self.validate)
        if (
            features.dim() != 2
            or features.shape[1] != self.feat_dim
            or labels.shape != features.shape[:1]
        ):
            raise ValueError(
                f"features must be [batch, {self.feat_dim}] and labels [batch]; got "
                f"{list(features.shape)} and {list(labels.shape)}"
            )
        dtype = compute_dtype(features, self.centers)
        with full_precision(features.device):
            if rule_matrix is not None:
                symmetric = self.symmetric_prototype_weights(
                    rule_matrix.detach().to(device=features.device, dtype=dtype)
                )
            elif self._rule_matrix is not None:
                symmetric = self.symmetric_weights.to(dtype)
            else:
                raise ValueError(
                    "CenterRegularizationLoss needs a rule_matrix (at construction or in forward)"
                )
            features = F.normalize(features.to(dtype), dim=1)
            loss_center, loss_prototype = _CenterRegularization.apply(
                features, labels, self.centers.to(dtype), symmetric
            )
        return loss_center + self.prototype_weight * loss_prototype

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, "
            f"prototype_weight={self.prototype_weight}"
        )


# ----------------------------------------------------------------------------------------------
# 2.5 / 2.6 Wrappers
# ----------------------------------------------------------------------------------------------


def check_loss_weights(weights: Mapping[str, float]) -> None:
    """Raise ``ValueError`` naming the first weight that is not a finite number >= 0."""
    for name, value in weights.items():
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def physics_terms(
    rule_matrix: Any,
    sg_to_sys_map: Any,
    feat_dim: int,
    *,
    lambda_scl: float,
    lambda_reg: float,
    temperature: float,
    rule_threshold: float,
    validate: bool,
) -> tuple[
    np.ndarray,
    np.ndarray,
    PhysicsContrastiveLoss | None,
    HierarchicalLoss,
    CenterRegularizationLoss | None,
]:
    """The PhysMoE terms the loss wrappers share: the checked rule matrix ``[C, C]`` and
    space-group -> crystal-system map ``[C]`` (host copies), the physics contrastive loss (None
    when ``lambda_scl`` is 0), the hierarchical loss and the centre regularisation (None when
    ``lambda_reg`` is 0)."""
    rule = _validate_rule_matrix(rule_matrix)
    sg_to_sys = _validate_sg_to_sys(sg_to_sys_map, rule.shape[0], NUM_CRYSTAL_SYSTEMS)
    contrastive = (
        PhysicsContrastiveLoss(temperature, rule_threshold, validate=validate)
        if lambda_scl > 0
        else None
    )
    # The wrappers range-check the labels once per call (their ``validate``), so these two
    # sub-losses skip the check: no second host sync per step.
    center = (
        CenterRegularizationLoss(rule.shape[0], feat_dim, rule_matrix=rule, validate=False)
        if lambda_reg > 0
        else None
    )
    hierarchical = HierarchicalLoss(sg_to_sys, NUM_CRYSTAL_SYSTEMS, validate=False)
    return rule, sg_to_sys, contrastive, hierarchical, center


def positive_class_mask(rule_matrix: np.ndarray, rule_threshold: float) -> torch.Tensor:
    """``(rule_matrix > rule_threshold) | eye``, bool ``[C, C]``: the contrastive positives."""
    positive = (rule_matrix > rule_threshold) | np.eye(len(rule_matrix), dtype=bool)
    return torch.from_numpy(positive)


class PhysMoELossWrapper(nn.Module):
    """The full PhysMoE training loss.

    ``L_total = λ_scl L_scl + λ_dol L_dol + λ_col L_col + λ_hier (L_sys + L_sg) + λ_reg L_reg
    + λ_hnm L_hnm``.

    Args:
        cfg: any object with ``num_experts``, ``tail_expert_ids`` and ``feat_dim`` (or
            ``feature_dim``), e.g. a ``SimpleNamespace`` or the model's transformers config.
        rule_matrix: ``[C, C]`` rule similarities in [0, 1]
            (``physmoe.crystallography.rule_similarity_matrix()``); ``C`` sets ``num_classes``.
        sg_to_sys_map: ``[C]`` crystal-system index 0..6 of every class
            (``physmoe.crystallography.sg_to_sys_map()``).
        lambda_scl, lambda_dol, lambda_col, lambda_hier, lambda_reg, lambda_hnm: weights
            (defaults 0.1, 1, 1, 1, 0.001, 0). They are fixed at construction: a component whose
            weight is 0 is **neither computed nor reported** (its key is absent from
            ``loss_dict``), and with ``lambda_reg = 0`` no centre parameter is created (nothing
            unused for DDP).
        tau: logit-adjustment strength (default 0). With ``tau > 0``, ``tau * log(prior)`` is
            added to the space-group logits used by ``L_dol``, ``L_col`` and ``L_sg`` (the
            logit-adjusted loss of Menon et al. 2021; ``tau = 1`` is Balanced Softmax).
            Inference logits are untouched.
        class_prior: ``[C]`` class probabilities or counts, required when ``tau > 0``; it is
            normalised, and zero-count classes are clamped to ``prior_floor`` (1e-6) before the log.
        temperature, rule_threshold: of :class:`PhysicsContrastiveLoss` (0.07, 0.8).
        gamma: focal-loss exponent of the tail experts (2.0).
        detach_ensemble: detach the ensemble target of ``L_col`` (default True, see
            :class:`ICLMoELoss`).
        validate: check label ranges on every call (one host sync per call). Shapes are always
            checked (no sync). Pass ``False`` in training loops whose labels were validated once.

    ``forward(outputs, targets, hard_negative_miner=None)`` takes ``outputs`` with
    ``features`` ``[B, D]``, ``sys_logits`` ``[B, 7]``, ``expert_logits`` (list of K ``[B, C]`` or
    ``[B, K, C]``) and ``gating_weights`` ``[B, K]`` (optional ``ensemble_logits`` ``[B, C]``
    replaces the gated sum ``sum_k g_k logits_k`` used by ``L_col`` and ``L_sg``), and
    ``targets = {"labels": [B]}``. Only the entries the active components need are required.
    It returns ``(total_loss, loss_dict)``; ``loss_dict`` holds the *unweighted* components as
    detached tensors (no host sync) under ``loss_scl``, ``loss_dol``, ``loss_col``, ``loss_sys``,
    ``loss_sg``, ``loss_reg`` and ``loss_hnm``.

    HNM: with ``lambda_hnm > 0`` the caller passes the model's ``hard_negative_miner``
    (:class:`~physmoe.loss.hnm.HardNegativeMining_Proto`) and ``lambda_hnm *
    miner.compute_contrastive_loss(features, labels)`` is added. The wrapper **never updates the
    miner**: the training loop applies ``update_prototypes`` / ``update_confusion_matrix`` from the
    global batch (all processes under DDP) and ``apply_epoch_momentum`` once per epoch.

    The centre parameter lives inside the wrapper: optimise ``wrapper.parameters()`` (or make
    the wrapper a submodule of the model). Internally everything runs in float32 with autocast
    disabled; the wrapper may be moved with ``.to(device)``. Casting it to a low-precision dtype
    rounds its float buffers (rule matrix, log prior); the positive mask is boolean and stays exact.
    """

    def __init__(
        self,
        cfg: Any,
        rule_matrix: torch.Tensor,
        sg_to_sys_map: torch.Tensor,
        *,
        lambda_scl: float = 0.1,
        lambda_dol: float = 1.0,
        lambda_col: float = 1.0,
        lambda_hier: float = 1.0,
        lambda_reg: float = 0.001,
        lambda_hnm: float = 0.0,
        tau: float = 0.0,
        class_prior: torch.Tensor | Sequence[float] | None = None,
        prior_floor: float = 1e-6,
        temperature: float = 0.07,
        rule_threshold: float = 0.8,
        gamma: float = 2.0,
        detach_ensemble: bool = True,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.num_experts = int(_config_value(cfg, "num_experts"))
        tail_expert_ids = list(_config_value(cfg, "tail_expert_ids"))
        self.feat_dim = int(_config_value(cfg, "feat_dim", "feature_dim"))
        self._set_loss_weights(
            lambda_scl=lambda_scl,
            lambda_dol=lambda_dol,
            lambda_col=lambda_col,
            lambda_hier=lambda_hier,
            lambda_reg=lambda_reg,
            lambda_hnm=lambda_hnm,
            tau=tau,
        )
        self.rule_threshold = float(rule_threshold)
        self.validate = bool(validate)

        # Host copies of the class-shaped constants, so reset_buffers() can rebuild the buffers.
        (
            self._rule_matrix, self._sg_to_sys, self.contrastive, self.hierarchical,
            self.center_loss,
        ) = physics_terms(
            rule_matrix, sg_to_sys_map, self.feat_dim, lambda_scl=self.lambda_scl,
            lambda_reg=self.lambda_reg, temperature=temperature,
            rule_threshold=rule_threshold, validate=self.validate,
        )  # fmt: skip
        self.num_classes = self._rule_matrix.shape[0]
        self._set_log_prior(class_prior, prior_floor)

        self.icl = ICLMoELoss(
            self.num_experts, tail_expert_ids, gamma=gamma, detach_ensemble=detach_ensemble
        )
        self._register_host_buffers()

    def _set_loss_weights(self, **weights: float) -> None:
        """Keep the loss weights as floats, after refusing any that is not a finite number >= 0
        (``ValueError`` naming it)."""
        check_loss_weights(weights)
        self.lambda_scl = float(weights["lambda_scl"])
        self.lambda_dol = float(weights["lambda_dol"])
        self.lambda_col = float(weights["lambda_col"])
        self.lambda_hier = float(weights["lambda_hier"])
        self.lambda_reg = float(weights["lambda_reg"])
        self.lambda_hnm = float(weights["lambda_hnm"])
        self.tau = float(weights["tau"])

    def _set_log_prior(
        self, class_prior: torch.Tensor | Sequence[float] | None, prior_floor: float
    ) -> None:
        """Keep ``log(class_prior)`` on the host (the ``log_prior`` buffer's source; None without a
        prior), which logit adjustment (``tau > 0``) needs."""
        self._log_prior = None
        if class_prior is not None:
            self._log_prior = log_class_prior(
                class_prior, self.num_classes, floor=prior_floor
            ).numpy()
        if self.tau > 0 and self._log_prior is None:
            raise ValueError(
                f"tau={self.tau} > 0 (logit adjustment) needs class_prior, "
                "[num_classes] probabilities or counts"
            )

    def _register_host_buffers(self) -> None:
        """Register the class-shaped constants as non-persistent buffers: :meth:`reset_buffers`
        rebuilds them from the host copies, so checkpoints need not hold them."""
        for name, value in self._buffers_from_host().items():
            self.register_buffer(name, value, persistent=False)

    def _buffers_from_host(self) -> dict[str, torch.Tensor]:
        buffers = {"rule_matrix": torch.from_numpy(self._rule_matrix.copy())}
        if self.lambda_scl > 0:
            buffers["positive_class_mask"] = positive_class_mask(
                self._rule_matrix, self.rule_threshold
            )
        if self._log_prior is not None:
            buffers["log_prior"] = torch.from_numpy(self._log_prior.copy())
        return buffers

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Rebuild every non-persistent buffer (here and in the sub-losses) from the host copies
        taken at construction, in place (device and dtype kept). Call it after materialising a
        model that was built on the meta device (e.g. from a model's ``_init_weights``)."""
        for name, value in self._buffers_from_host().items():
            getattr(self, name).copy_(value)
        self.icl.reset_buffers()
        self.hierarchical.reset_buffers()
        if self.center_loss is not None:
            self.center_loss.reset_buffers()

    # -- forward ---------------------------------------------------------------------------

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Mapping[str, torch.Tensor] | torch.Tensor,
        hard_negative_miner: HardNegativeMining_Proto | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = labels_from_targets(targets, self.num_classes, check_range=self.validate)
        batch = labels.shape[0]
        needs_features = self.lambda_scl > 0 or self.lambda_reg > 0 or self.lambda_hnm > 0
        features = (
            output_tensor(outputs, "features", (batch, self.feat_dim)) if needs_features else None
        )
        if self.lambda_hnm > 0 and hard_negative_miner is None:
            raise ValueError(
                "lambda_hnm > 0 needs the model's hard_negative_miner passed to forward()"
            )
        needs_logits = self.lambda_dol > 0 or self.lambda_col > 0 or self.lambda_hier > 0
        expert_logits = (
            expert_logits_from_outputs(outputs, batch, self.num_experts, self.num_classes)
            if needs_logits
            else None
        )

        losses: dict[str, torch.Tensor] = {}
        weighted: list[torch.Tensor] = []
        device = labels.device
        with full_precision(device):
            adjustment = self.tau * self.log_prior.float() if self.tau > 0 else None
            if self.lambda_scl > 0:
                losses["loss_scl"] = self.contrastive(
                    features, labels, self.rule_matrix, self.positive_class_mask
                )
                weighted.append(self.lambda_scl * losses["loss_scl"])
            if self.lambda_dol > 0:
                losses["loss_dol"] = self.icl.division_of_labor_loss(
                    expert_logits, labels, adjustment
                )
                weighted.append(self.lambda_dol * losses["loss_dol"])
            ensemble = None
            if self.lambda_col > 0 or self.lambda_hier > 0:
                ensemble = ensemble_logits_from_outputs(outputs, expert_logits)
            if self.lambda_col > 0:
                losses["loss_col"] = self.icl.collaboration_loss(
                    expert_logits, ensemble, adjustment
                )
                weighted.append(self.lambda_col * losses["loss_col"])
            if self.lambda_hier > 0:
                sys_logits = output_tensor(outputs, "sys_logits", (batch, NUM_CRYSTAL_SYSTEMS))
                sg_logits = (
                    ensemble if adjustment is None else ensemble + adjustment.to(ensemble.dtype)
                )
                losses["loss_sys"], losses["loss_sg"] = self.hierarchical(
                    sys_logits, sg_logits, labels
                )
                weighted.append(self.lambda_hier * (losses["loss_sys"] + losses["loss_sg"]))
            if self.lambda_reg > 0:
                losses["loss_reg"] = self.center_loss(features, labels)
                weighted.append(self.lambda_reg * losses["loss_reg"])
            if self.lambda_hnm > 0:
                losses["loss_hnm"] = hard_negative_miner.compute_contrastive_loss(features, labels)
                weighted.append(self.lambda_hnm * losses["loss_hnm"])
        if not weighted:
            raise ValueError("every loss weight is 0: nothing to optimise")
        total = sum(weighted[1:], weighted[0])
        return total, {name: value.detach() for name, value in losses.items()}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_experts={self.num_experts}, "
            f"feat_dim={self.feat_dim}, lambda_scl={self.lambda_scl}, "
            f"lambda_dol={self.lambda_dol}, lambda_col={self.lambda_col}, "
            f"lambda_hier={self.lambda_hier}, lambda_reg={self.lambda_reg}, "
            f"lambda_hnm={self.lambda_hnm}, tau={self.tau}, validate={self.validate}"
        )


class PhysMoELossWrapperNoContrast(PhysMoELossWrapper):
    """:class:`PhysMoELossWrapper` without the physics contrastive term (``lambda_scl = 0``).

    ``L_total = λ_dol L_dol + λ_col L_col + λ_hier (L_sys + L_sg) + λ_reg L_reg + λ_hnm L_hnm``;
    every other argument and component is the same. Passing a non-zero ``lambda_scl`` is an error.
    """

    def __init__(
        self, cfg: Any, rule_matrix: torch.Tensor, sg_to_sys_map: torch.Tensor, **kwargs: Any
    ) -> None:
        lambda_scl = kwargs.pop("lambda_scl", 0.0)
        if lambda_scl != 0:
            raise ValueError(
                f"PhysMoELossWrapperNoContrast has no contrastive term; got lambda_scl={lambda_scl}"
            )
        super().__init__(cfg, rule_matrix, sg_to_sys_map, lambda_scl=0.0, **kwargs)
