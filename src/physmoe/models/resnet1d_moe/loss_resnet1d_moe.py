"""The PhysMoE loss and the hard-negative miner of ResNet1DMoEForSpaceGroupClassification.

The classifier computes its loss in ``forward`` and owns the hard-negative miner, whose class
prototypes and confusion counts the loss reads and the training loop updates through the model.
This module holds what the classifier needs around ``physmoe.loss``: building the configured
wrapper and the miner from the config, checking ``labels``, handing the heads' outputs to the
loss under its names, updating the miner, and the ``"balanced_experts"`` constants that inference
uses too.

Like the modeling file it must import without physmoe (remote code carries a copy of both):
physmoe is imported only through :func:`import_physmoe`. Without it the classifier keeps
:class:`ResNet1DMoEHardNegativeMinerState`, the miner's buffers without its updates, so
checkpoints load and save the same, and has no loss.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import torch
from torch import nn
from transformers.utils import logging

from .configuration_resnet1d_moe import ResNet1DMoEConfig

logger = logging.get_logger(__name__)

#: Loss presets that need the rule matrix and the label -> crystal-system map.
RULE_LOSS_PRESETS = ("physmoe", "physmoe_no_contrast", "scheme2", "balanced_experts")
#: Default floor of zero-count class priors (``physmoe.loss.moe_loss.DEFAULT_PRIOR_FLOOR``).
DEFAULT_PRIOR_FLOOR = 1e-6


def import_physmoe(name: str) -> ModuleType | None:
    """Import ``physmoe.<...>``, or ``None`` when physmoe is not installed (remote-code use)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == "physmoe":
            return None
        raise


def balanced_experts_constants(config: ResNet1DMoEConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(taus [K], log_prior [C])`` float32 of the ``"balanced_experts"`` preset, computed in
    numpy (this may run inside transformers' meta-device context) exactly as ``physmoe.loss``
    does: the prior normalised, clamped at ``prior_floor``, then the log."""
    if config.class_prior is None:
        raise ValueError(
            "loss_preset='balanced_experts' needs config.class_prior, the training class "
            "frequencies (counts or probabilities, one per label): its ensemble is balanced "
            "against that prior"
        )
    prior = np.asarray(config.class_prior, dtype=np.float64)
    if prior.shape != (config.num_labels,):
        raise ValueError(
            f"class_prior has {prior.shape[0]} entries, num_labels is {config.num_labels}"
        )
    floor = DEFAULT_PRIOR_FLOOR if config.prior_floor is None else float(config.prior_floor)
    log_prior = np.log(np.maximum(prior / prior.sum(), floor)).astype(np.float32)
    taus = np.asarray(config.balanced_expert_taus(), dtype=np.float64).astype(np.float32)
    return taus, log_prior


# ------------------------------------------------------------------------------------------------
# Building the miner and the loss
# ------------------------------------------------------------------------------------------------


class ResNet1DMoEHardNegativeMinerState(nn.Module):
    """Inference-only stand-in for ``physmoe.loss.HardNegativeMining_Proto`` when physmoe is not
    installed: the same persistent float32 buffers ``prototypes`` ``[C, D]`` and
    ``confusion_matrix`` ``[C, C]``, so checkpoints load and save identically."""

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(num_classes, feat_dim, dtype=torch.float32))
        self.register_buffer(
            "confusion_matrix", torch.zeros(num_classes, num_classes, dtype=torch.float32)
        )


def is_physmoe_miner(module: nn.Module) -> bool:
    hnm = import_physmoe("physmoe.loss.hnm")
    return hnm is not None and isinstance(module, hnm.HardNegativeMining_Proto)


def build_miner_and_loss(config: ResNet1DMoEConfig) -> tuple[nn.Module, nn.Module | None]:
    """``(hard_negative_miner, physmoe_loss)`` of the classifier; without physmoe the stand-in
    miner and no loss."""
    dim = config.feature_dim
    loss_module = import_physmoe("physmoe.loss")
    if loss_module is None:
        logger.info("physmoe is not installed: ResNet1D_MoE runs inference only (no loss)")
        return ResNet1DMoEHardNegativeMinerState(config.num_labels, dim), None
    miner = loss_module.HardNegativeMining_Proto(
        config.num_labels,
        dim,
        momentum=config.hnm_momentum,
        temperature=config.hnm_temperature,
        k=min(config.hnm_k, config.num_labels - 1),
        validate=config.validate_inputs,
    )
    return miner, build_physmoe_loss(config, loss_module)


def build_physmoe_loss(config: ResNet1DMoEConfig, loss_module: ModuleType) -> nn.Module:
    """The ``physmoe.loss`` wrapper of ``config.loss_preset`` with the config's overrides."""
    numbers = config.space_group_numbers
    rule_matrix = sg_to_sys = None
    if numbers is not None:
        crystallography = importlib.import_module("physmoe.crystallography")
        full = (
            crystallography.rule_similarity_matrix()
            if config.rule_matrix == "physmoe"
            else crystallography.operator_cosine_matrix()
        ).numpy()
        index = np.asarray(numbers) - 1
        # numpy, not torch: this may run inside transformers' meta-device context.
        rule_matrix = torch.from_numpy(np.ascontiguousarray(full[np.ix_(index, index)]))
        sg_to_sys = torch.from_numpy(np.asarray(config.label_crystal_systems, dtype=np.int64))
    elif config.loss_preset in RULE_LOSS_PRESETS:
        raise ValueError(
            f"loss_preset={config.loss_preset!r} needs the space group of every label "
            "(rule matrix, "
            f"crystal systems): set config.label_space_groups or id2label names ending in '(n)'"
        )
    class_prior = None
    if config.class_prior is not None:
        if len(config.class_prior) != config.num_labels:
            raise ValueError(
                f"class_prior has {len(config.class_prior)} entries, "
                f"num_labels is {config.num_labels}"
            )
        class_prior = torch.from_numpy(np.asarray(config.class_prior, dtype=np.float64))
    overrides = config.loss_overrides()
    try:
        return loss_module.build_loss(
            config.loss_preset,
            config,
            rule_matrix,
            sg_to_sys,
            class_prior=class_prior,
            validate=False,
            **overrides,
        )
    except TypeError as error:
        raise ValueError(
            f"loss_preset={config.loss_preset!r} does not accept the loss settings "
            f"{sorted(overrides)} "
            f"set in the config ({error})"
        ) from error


# ------------------------------------------------------------------------------------------------
# Computing the loss
# ------------------------------------------------------------------------------------------------


def check_labels(
    labels: torch.Tensor,
    input_values: torch.Tensor,
    num_labels: int,
    *,
    has_loss: bool,
    check_values: bool,
) -> torch.Tensor:
    """Validate ``labels`` ``[B]`` against the batch of ``input_values``; return them as long.

    ``has_loss``: the model has a loss (physmoe is installed); ``check_values``: also check the
    label range (a host sync, see ``ResNet1DMoEPreTrainedModel.value_checks_disabled``).
    """
    if not has_loss:
        raise ImportError(
            "training ResNet1D_MoE (labels given) needs the physmoe package for its loss "
            "(pip install physmoe); inference without labels works without it"
        )
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    batch = input_values.shape[0] if isinstance(input_values, torch.Tensor) else None
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"labels must be [batch] = [{batch}], got {list(labels.shape)}")
    if check_values:
        if bool(((labels < 0) | (labels >= num_labels)).any()):
            bad = labels[(labels < 0) | (labels >= num_labels)]
            raise ValueError(
                f"labels must lie in 0..{num_labels - 1} (space-group number - 1), "
                f"got {bad[:5].tolist()}"
            )
    return labels.long()


def compute_loss(
    physmoe_loss: nn.Module,
    features: torch.Tensor,
    head: dict[str, torch.Tensor],
    labels: torch.Tensor,
    hard_negative_miner: nn.Module,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss [], components)`` of the wrapper on the pooled ``features`` ``[B, D]`` and the
    heads' outputs (``ResNet1DMoEForSpaceGroupClassification.forward_head``), passed under the
    loss's spec names."""
    return physmoe_loss(
        {
            "features": features,
            "sys_logits": head["crystal_system_logits"],
            "expert_logits": head["expert_logits"],
            "gating_weights": head["gating_weights"],
            "ensemble_logits": head["ensemble_logits"],
        },
        {"labels": labels},
        hard_negative_miner=hard_negative_miner,
    )


# ------------------------------------------------------------------------------------------------
# Updating the miner
# ------------------------------------------------------------------------------------------------


def update_miner(
    miner: nn.Module,
    features: torch.Tensor,
    logits_or_predictions: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    """One step's miner update from ``features`` ``[N, D]``, ``logits_or_predictions`` ``[N, C]``
    or ``[N]`` and ``labels`` ``[N]`` (see ``update_hard_negative_miner`` of the classifier)."""
    if not hasattr(miner, "update_prototypes"):
        raise ImportError(
            "updating the hard-negative miner needs the physmoe package (pip install physmoe)"
        )
    labels = labels.detach().long()
    miner.update_prototypes(features.detach().float(), labels)
    # Keywords: the miner's positional order is the seed's (predicted, labels); these names
    # also work with physmoe releases whose order was (labels, predictions).
    miner.update_confusion_matrix(labels=labels, predictions=logits_or_predictions.detach())


def apply_miner_epoch_momentum(miner: nn.Module) -> None:
    """Decay the miner's confusion counts once per epoch (``*= 1 - momentum``)."""
    if not hasattr(miner, "apply_epoch_momentum"):
        raise ImportError(
            "updating the hard-negative miner needs the physmoe package (pip install physmoe)"
        )
    miner.apply_epoch_momentum()
