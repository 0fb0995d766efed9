"""Baseline losses for the long-tail comparison, with the PhysMoE wrappers' interface.

Both take ``(outputs, targets)`` like :class:`~physmoe.loss.PhysMoELossWrapper` and return
``(total_loss, loss_dict)`` with ``loss_dict = {"loss_ce": <detached total>}``. The logits are
the gated ensemble ``sum_k g_k * expert_logits_k`` (``outputs["ensemble_logits"]`` when given;
with one expert and no ``gating_weights`` the single head). Their constructors accept the same
positional arguments as the PhysMoE wrappers so :func:`physmoe.loss.build_loss` can build any
preset; arguments a baseline does not use are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from physmoe.loss.moe_loss import (
    DEFAULT_PRIOR_FLOOR,
    ensemble_logits_from_outputs,
    expert_logits_from_outputs,
    full_precision,
    labels_from_targets,
    log_class_prior,
)

__all__ = ["BalancedSoftmaxLossWrapper", "CrossEntropyLossWrapper"]


def _num_classes(rule_matrix: Any, class_prior: Any) -> int | None:
    if rule_matrix is not None:
        return int(np.shape(rule_matrix)[0])
    if class_prior is not None:
        return int(np.shape(class_prior)[0])
    return None


class CrossEntropyLossWrapper(nn.Module):
    """Plain cross-entropy on the gated ensemble logits.

    Args:
        cfg: optional; if it has ``num_experts`` the expert count is checked.
        rule_matrix: optional; only its size is used (to check ``num_classes``).
        sg_to_sys_map: ignored.
        class_prior: ignored by plain CE (accepted for a uniform factory signature).
        validate: check label ranges on every call (one host sync).

    ``forward(outputs, targets, hard_negative_miner=None)``; the miner is ignored.
    """

    def __init__(
        self,
        cfg: Any = None,
        rule_matrix: Any = None,
        sg_to_sys_map: Any = None,
        *,
        class_prior: torch.Tensor | Sequence[float] | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.num_experts = (
            int(cfg.num_experts) if cfg is not None and hasattr(cfg, "num_experts") else None
        )
        self.num_classes = _num_classes(rule_matrix, class_prior)
        self.validate = bool(validate)

    def adjusted_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the cross-entropy sees (unchanged here)."""
        return logits

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Mapping[str, torch.Tensor] | torch.Tensor,
        hard_negative_miner: nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        expert_logits = outputs.get("expert_logits") if isinstance(outputs, Mapping) else None
        num_classes = self.num_classes
        if (
            num_classes is None
            and isinstance(expert_logits, torch.Tensor)
            and expert_logits.dim() == 3
        ):
            num_classes = expert_logits.shape[2]
        elif num_classes is None and isinstance(expert_logits, Sequence) and expert_logits:
            num_classes = expert_logits[0].shape[-1]
        if num_classes is None:
            raise ValueError("outputs has no usable 'expert_logits' entry")
        labels = labels_from_targets(targets, num_classes, check_range=self.validate)
        logits = expert_logits_from_outputs(outputs, labels.shape[0], self.num_experts, num_classes)
        with full_precision(logits.device):
            ensemble = ensemble_logits_from_outputs(outputs, logits)
            loss = F.cross_entropy(self.adjusted_logits(ensemble), labels)
        return loss, {"loss_ce": loss.detach()}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_experts={self.num_experts}"


class BalancedSoftmaxLossWrapper(CrossEntropyLossWrapper):
    """Balanced Softmax / logit-adjusted cross-entropy: ``CE(logits + tau * log(prior), labels)``.

    ``tau = 1`` (default) is Balanced Softmax (Ren et al. 2020), general ``tau`` the logit-adjusted
    loss (Menon et al. 2021). ``class_prior`` ``[C]`` (probabilities or counts) is required; it is
    normalised and zero-count classes are clamped to ``prior_floor`` (1e-6) before the log. Only
    the training loss is adjusted: the model's inference logits are not.
    """

    def __init__(
        self,
        cfg: Any = None,
        rule_matrix: Any = None,
        sg_to_sys_map: Any = None,
        *,
        class_prior: torch.Tensor | Sequence[float] | None = None,
        tau: float = 1.0,
        prior_floor: float = DEFAULT_PRIOR_FLOOR,
        validate: bool = True,
    ) -> None:
        if class_prior is None:
            raise ValueError(
                "BalancedSoftmaxLossWrapper needs class_prior, "
                "[num_classes] probabilities or counts"
            )
        super().__init__(
            cfg, rule_matrix, sg_to_sys_map, class_prior=class_prior, validate=validate
        )
        if not (np.isfinite(tau) and tau >= 0):
            raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
        self.tau = float(tau)
        self._log_prior = log_class_prior(class_prior, self.num_classes, floor=prior_floor)
        self.register_buffer("log_prior", self._log_prior.clone(), persistent=False)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Rebuild the non-persistent ``log_prior`` buffer in place (device and dtype kept)."""
        self.log_prior.copy_(self._log_prior)

    def adjusted_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + self.tau * self.log_prior.to(logits.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.tau}"
