"""Models: ResNet1D_MoE (``physmoe.models.resnet1d_moe``)."""

from .resnet1d_moe import (
    ResNet1D_MoE,
    ResNet1DMoEConfig,
    ResNet1DMoEForSpaceGroupClassification,
    ResNet1DMoEModel,
)

__all__ = [
    "ResNet1D_MoE",
    "ResNet1DMoEConfig",
    "ResNet1DMoEForSpaceGroupClassification",
    "ResNet1DMoEModel",
]
