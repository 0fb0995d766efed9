"""The small ResNet1D_MoE that the Hub and model-card tests save, push and describe."""

from __future__ import annotations

import torch

from physmoe.models.resnet1d_moe import ResNet1D_MoE, ResNet1DMoEConfig

NUM_POINTS = 128


def tiny_model(seed: int = 0) -> ResNet1D_MoE:
    """A ResNet1D_MoE small enough for milliseconds, with non-trivial miner state."""
    torch.manual_seed(seed)
    config = ResNet1DMoEConfig.from_preset(
        "small",
        num_points=NUM_POINTS,
        stem_channels=8,
        stem_kernel_size=5,
        stem_stride=4,
        hidden_sizes=(8, 16),
        pool_types=("max", "avg"),
        pool_paddings=(0, 0),
        dropout_blocks=(),
        feature_dim=16,
        num_experts=4,
        tail_expert_ids=(2, 3),
        projection_dim=8,
    )
    model = ResNet1D_MoE(config).eval()
    miner = model.hard_negative_miner
    with torch.no_grad():  # the HNM state must travel in model.safetensors
        miner.prototypes.copy_(torch.randn_like(miner.prototypes))
        miner.confusion_matrix.copy_(torch.randint_like(miner.confusion_matrix, 0, 5))
    return model
