"""physmoe: space-group classification from powder X-ray diffraction patterns.

Importing physmoe registers ResNet1D_MoE with transformers' Auto classes (``AutoConfig``,
``AutoModel``, ``AutoModelForSequenceClassification``, ``AutoFeatureExtractor``).
"""

__version__ = "0.1.0"

from transformers import AutoFeatureExtractor

from .data.feature_extraction import XRDFeatureExtractor
from .models.resnet1d_moe import (
    ResNet1D_MoE,
    ResNet1DMoEConfig,
    ResNet1DMoEForSpaceGroupClassification,
    ResNet1DMoEModel,
)

AutoFeatureExtractor.register(ResNet1DMoEConfig, XRDFeatureExtractor, exist_ok=True)

__all__ = [
    "ResNet1DMoEConfig",
    "ResNet1DMoEForSpaceGroupClassification",
    "ResNet1DMoEModel",
    "ResNet1D_MoE",
    "XRDFeatureExtractor",
    "__version__",
]
