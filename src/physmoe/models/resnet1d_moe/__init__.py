"""ResNet1D_MoE as a transformers model: configuration, modeling, Auto-class registration.

Importing this package registers ``"resnet1d_moe"`` with ``AutoConfig``, ``AutoModel`` (the trunk)
and ``AutoModelForSequenceClassification`` (the classifier), and marks the classes for remote
code, so saved folders also load with ``trust_remote_code=True`` where physmoe is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from physmoe.runtime import recommended_autocast, recommended_autocast_dtype

from .configuration_resnet1d_moe import RESNET1D_MOE_PRESETS, ResNet1DMoEConfig
from .modeling_resnet1d_moe import (
    ResNet1DMoEForSpaceGroupClassification,
    ResNet1DMoEModel,
    ResNet1DMoEModelOutput,
    ResNet1DMoEPreTrainedModel,
    SpaceGroupClassifierOutput,
    hierarchical_space_group_logits,
)

#: The classifier under the published model's name.
ResNet1D_MoE = ResNet1DMoEForSpaceGroupClassification

AutoConfig.register(ResNet1DMoEConfig.model_type, ResNet1DMoEConfig, exist_ok=True)
AutoModel.register(ResNet1DMoEConfig, ResNet1DMoEModel, exist_ok=True)
AutoModelForSequenceClassification.register(
    ResNet1DMoEConfig, ResNet1DMoEForSpaceGroupClassification, exist_ok=True
)
ResNet1DMoEConfig.register_for_auto_class()
ResNet1DMoEModel.register_for_auto_class("AutoModel")
ResNet1DMoEForSpaceGroupClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "RESNET1D_MOE_PRESETS",
    "ResNet1DMoEConfig",
    "ResNet1DMoEForSpaceGroupClassification",
    "ResNet1DMoEModel",
    "ResNet1DMoEModelOutput",
    "ResNet1DMoEPreTrainedModel",
    "ResNet1D_MoE",
    "SpaceGroupClassifierOutput",
    "hierarchical_space_group_logits",
    "recommended_autocast",
    "recommended_autocast_dtype",
]
