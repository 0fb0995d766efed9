"""A tiny ResNet1D_MoE configuration shared by the tests.

64 grid points pool to exactly 1 (as the published 8500 do), so the expert stage sees a length-1
sequence; widths of 4-8 channels keep every forward and backward in the milliseconds.
"""

from __future__ import annotations

import torch

from physmoe import ResNet1D_MoE, ResNet1DMoEConfig

TINY = dict(
    num_points=64,
    hidden_sizes=[4, 8, 8, 8, 8, 8],
    pool_types=["max", "max", "avg", "avg", "avg", "avg"],
    pool_paddings=[0, 0, 1, 0, 0, 0],
    dropout_blocks=[3],
    hidden_dropout_prob=0.0,
    num_experts=4,
    tail_expert_ids=[2, 3],
    projection_dim=6,
)


# With a stride-2 stem: the first block runs oneDNN's convolution, the shorter ones the matmul path.
TINY_STEM = dict(
    TINY,
    stem_channels=4,
    stem_kernel_size=5,
    stem_stride=2,
    hidden_sizes=[8, 8, 8, 8, 8],
    pool_types=["max", "avg", "avg", "avg", "avg"],
    pool_paddings=[0, 1, 0, 0, 0],
)


def tiny_config(**overrides) -> ResNet1DMoEConfig:
    return ResNet1DMoEConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides) -> ResNet1D_MoE:
    torch.manual_seed(seed)
    return ResNet1D_MoE(tiny_config(**overrides))


def save_tiny_model(folder, seed: int = 0, calibration_temperature: float = 2.5):
    """A tiny model with non-trivial BatchNorm statistics (as after training) and its feature
    extractor, saved in ``folder`` (returned)."""
    from physmoe.data.feature_extraction import XRDFeatureExtractor

    torch.manual_seed(seed)
    model = ResNet1D_MoE(tiny_config(calibration_temperature=calibration_temperature))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 64))
    model.save_pretrained(folder)
    XRDFeatureExtractor.from_config(model.config).save_pretrained(folder)
    return folder
