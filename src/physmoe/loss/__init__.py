"""PhysMoE losses, hard-negative mining, baselines, named presets and a factory.

``build_loss("physmoe", cfg, rule_matrix, sg_to_sys_map)`` builds the spec's full loss;
``LOSS_PRESETS`` lists every named configuration (wrapper class plus keyword arguments).
``"balanced_experts"`` (:mod:`physmoe.loss.balanced_experts`) goes beyond the spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from physmoe.loss.balanced_experts import (
    DEFAULT_EXPERT_TAU_RANGE,
    BalancedExpertsLossWrapper,
    balanced_expert_ensemble,
    expert_taus,
)
from physmoe.loss.baselines import BalancedSoftmaxLossWrapper, CrossEntropyLossWrapper
from physmoe.loss.hnm import HardNegativeMining_Proto
from physmoe.loss.moe_loss import (
    feature_diversity_loss,
    gated_ensemble_logits,
    log_class_prior,
    mix_outputs,
    soft_entropy,
    stack_expert_logits,
)
from physmoe.loss.physics_contrast_loss import (
    CenterRegularizationLoss,
    HierarchicalLoss,
    ICLMoELoss,
    PhysicsContrastiveLoss,
    PhysMoELossWrapper,
    PhysMoELossWrapperNoContrast,
)

__all__ = [
    "DEFAULT_EXPERT_TAU_RANGE",
    "LOSS_PRESETS",
    "BalancedExpertsLossWrapper",
    "BalancedSoftmaxLossWrapper",
    "CenterRegularizationLoss",
    "CrossEntropyLossWrapper",
    "HardNegativeMining_Proto",
    "HierarchicalLoss",
    "ICLMoELoss",
    "LossPreset",
    "PhysMoELossWrapper",
    "PhysMoELossWrapperNoContrast",
    "PhysicsContrastiveLoss",
    "balanced_expert_ensemble",
    "build_loss",
    "expert_taus",
    "feature_diversity_loss",
    "gated_ensemble_logits",
    "log_class_prior",
    "mix_outputs",
    "soft_entropy",
    "stack_expert_logits",
]


@dataclass(frozen=True)
class LossPreset:
    """A named loss configuration: the wrapper class and its keyword arguments (read-only)."""

    wrapper_class: type[nn.Module]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))


_PHYSMOE_WEIGHTS = {
    "lambda_scl": 0.1,
    "lambda_dol": 1.0,
    "lambda_col": 1.0,
    "lambda_hier": 1.0,
    "lambda_reg": 0.001,
    "lambda_hnm": 0.0,
    "tau": 0.0,
}

#: Named loss configurations. ``"physmoe"``: the spec's full loss; ``"physmoe_no_contrast"``:
#: without the contrastive term; ``"scheme2"``: the public reference's recommended weights
#: (λ_scl 0.2, λ_dol 0.5, λ_col 0.3, λ_hier 1.5, no centre regularisation); ``"cross_entropy"``
#: and ``"balanced_softmax"`` (τ = 1, needs ``class_prior``): the long-tail baselines.
#: ``"balanced_experts"`` (beyond the spec, needs ``class_prior``): expert k trained with
#: ``CE(z_k + tau_k log prior, y)``, tau evenly spaced 0..2 (BalPoE), the ensemble evaluated
#: balanced, plus the hierarchical, contrastive and centre terms (λ_hier 1, λ_scl 0.1,
#: λ_reg 0.001, λ_hnm 0; untuned); see :class:`BalancedExpertsLossWrapper`.
LOSS_PRESETS: Mapping[str, LossPreset] = MappingProxyType(
    {
        "physmoe": LossPreset(PhysMoELossWrapper, _PHYSMOE_WEIGHTS),
        "physmoe_no_contrast": LossPreset(
            PhysMoELossWrapperNoContrast,
            {k: v for k, v in _PHYSMOE_WEIGHTS.items() if k != "lambda_scl"},
        ),
        "scheme2": LossPreset(
            PhysMoELossWrapper,
            {
                **_PHYSMOE_WEIGHTS,
                "lambda_scl": 0.2,
                "lambda_dol": 0.5,
                "lambda_col": 0.3,
                "lambda_hier": 1.5,
                "lambda_reg": 0.0,
            },
        ),
        "cross_entropy": LossPreset(CrossEntropyLossWrapper, {}),
        "balanced_softmax": LossPreset(BalancedSoftmaxLossWrapper, {"tau": 1.0}),
        "balanced_experts": LossPreset(
            BalancedExpertsLossWrapper,
            {
                "tau_min": DEFAULT_EXPERT_TAU_RANGE[0],
                "tau_max": DEFAULT_EXPERT_TAU_RANGE[1],
                "lambda_dol": 1.0,
                "lambda_hier": 1.0,
                "lambda_scl": 0.1,
                "lambda_reg": 0.001,
                "lambda_hnm": 0.0,
            },
        ),
    }
)


def build_loss(
    preset_or_name: str | LossPreset,
    cfg: Any,
    rule_matrix: torch.Tensor | None,
    sg_to_sys_map: torch.Tensor | None,
    class_prior: torch.Tensor | Sequence[float] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a loss wrapper from a preset name (a key of :data:`LOSS_PRESETS`) or a
    :class:`LossPreset`; ``overrides`` replace the preset's keyword arguments.

    Example: ``build_loss("scheme2", cfg, rule_similarity_matrix(), sg_to_sys_map(),
    lambda_hnm=0.1)``.
    """
    if isinstance(preset_or_name, LossPreset):
        preset = preset_or_name
    elif isinstance(preset_or_name, str):
        if preset_or_name not in LOSS_PRESETS:
            raise ValueError(
                f"unknown loss preset {preset_or_name!r}; choose one of {sorted(LOSS_PRESETS)}"
            )
        preset = LOSS_PRESETS[preset_or_name]
    else:
        raise TypeError(
            "preset_or_name must be a preset name or a LossPreset, "
            f"got {type(preset_or_name).__name__}"
        )
    kwargs = {**preset.kwargs, **overrides}
    return preset.wrapper_class(cfg, rule_matrix, sg_to_sys_map, class_prior=class_prior, **kwargs)
