"""ResNet1D_MoE: a 1D ResNet with a crystal-system head and a rule-guided mixture of experts.

Architecture (``config`` is a :class:`ResNet1DMoEConfig`)::

    input_values [B, L] ──> (BatchNorm) ──> (stem) ──> residual blocks + pooling ──> features [B, D]
    features ──> crystal-system projection [B, P]
                 ├─> cosine classifier ──> crystal_system_logits [B, 7]
                 └─> gate + softmax(crystal_system_logits) @ rule_bias ──> gating_weights [B, K]
    features ──> expert stages ──> projections ──> K cosine classifiers ──> expert_logits [B, K, C]
    ensemble_logits = sum_k gating_weights[:, k] * expert_logits[:, k]      [B, C]
        (loss preset "balanced_experts": + (sum_k gating_weights[:, k] tau_k - 1 + w) log(prior),
         w = config.inference_prior_weight)
    logits = hierarchical_space_group_logits(ensemble_logits, crystal_system_logits)

Every block has one plain ``forward`` on ``[B, C, L]`` tensors. On the CPU the trunk and the
expert stages run through :mod:`.fast_path_resnet1d_moe` instead (channels-last 2D convolutions,
im2col for short sequences, BatchNorms folded in inference): the same function, faster, tested
against the plain path. The expert stages see the pooled features (length 1), where the
published model's 3-tap convolutions only use their centre tap: each stage is a pair of linear
maps with BatchNorm, and all experts run as one matmul and one batched matmul. Heads
(projections, cosine classifiers, gate, hierarchy) run in fp32 with autocast off: they are cheap
and the cosine logits are scaled by 30.

The classifier's loss and hard-negative miner (building them from the config, checking labels,
computing the loss, updating the miner) live in :mod:`.loss_resnet1d_moe`.

This file must stay importable without physmoe (``trust_remote_code=True`` checkpoints carry a
copy of it, of the fast path and of the loss module): physmoe is imported only through
:func:`.loss_resnet1d_moe.import_physmoe`. Inference works without it; training (``labels``
given) needs ``physmoe.loss``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_resnet1d_moe import NUM_CRYSTAL_SYSTEMS, ResNet1DMoEConfig
from .fast_path_resnet1d_moe import applies as _fast_path_applies
from .fast_path_resnet1d_moe import clear_caches as _clear_fast_path_caches
from .fast_path_resnet1d_moe import encode as _fast_path_encode
from .fast_path_resnet1d_moe import expert_stages as _fast_path_expert_stages
from .loss_resnet1d_moe import DEFAULT_PRIOR_FLOOR as _DEFAULT_PRIOR_FLOOR  # noqa: F401 (re-export)
from .loss_resnet1d_moe import RULE_LOSS_PRESETS as _RULE_LOSS_PRESETS  # noqa: F401 (re-export)
from .loss_resnet1d_moe import ResNet1DMoEHardNegativeMinerState
from .loss_resnet1d_moe import apply_miner_epoch_momentum as _apply_miner_epoch_momentum
from .loss_resnet1d_moe import balanced_experts_constants as _balanced_experts_constants
from .loss_resnet1d_moe import build_miner_and_loss as _build_miner_and_loss
from .loss_resnet1d_moe import check_labels as _check_labels
from .loss_resnet1d_moe import compute_loss as _compute_loss
from .loss_resnet1d_moe import import_physmoe as _import_physmoe
from .loss_resnet1d_moe import is_physmoe_miner as _is_physmoe_miner
from .loss_resnet1d_moe import update_miner as _update_miner

logger = logging.get_logger(__name__)

__all__ = [
    "ResNet1DMoEForSpaceGroupClassification",
    "ResNet1DMoEModel",
    "ResNet1DMoEModelOutput",
    "ResNet1DMoEPreTrainedModel",
    "SpaceGroupClassifierOutput",
    "hierarchical_space_group_logits",
]


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------


@dataclass
class ResNet1DMoEModelOutput(ModelOutput):
    """Output of the trunk :class:`ResNet1DMoEModel`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `[batch, feature_dim, length]`): the last
            residual block's output after its pooling (``length`` is 1 for the published grid).
        pooler_output (`torch.FloatTensor` of shape `[batch, feature_dim]`): its average over the
            length, the features the heads and the loss use.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): with ``output_hidden_states``, the
            input of every residual block (after the stem) and the last output, each
            `[batch, channels, length]`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SpaceGroupClassifierOutput(ModelOutput):
    """Output of :class:`ResNet1DMoEForSpaceGroupClassification`.

    ``B`` is the batch size, ``K`` the number of experts, ``C`` the number of labels (230 space
    groups), ``D`` the feature size.

    Args:
        loss (`torch.FloatTensor` of shape `[]`, *optional*): the configured ``physmoe.loss``
            total, when ``labels`` were given.
        logits (`torch.FloatTensor` of shape `[B, C]`): final space-group scores after
            hierarchical inference (``config.hierarchical_inference``): log-probabilities in
            ``"soft"`` mode, ensemble logits with the groups outside the predicted crystal system
            at the dtype's lowest value in ``"hard"`` mode, the ensemble logits in ``"none"``
            mode. ``softmax(logits)`` is the predicted distribution in every mode.
        ensemble_logits (`torch.FloatTensor` of shape `[B, C]`): the gated sum of the experts'
            logits; with ``loss_preset="balanced_experts"`` the balanced ensemble
            ``sum_k g_k z_k + (sum_k g_k tau_k - 1 + w) log(prior)``, ``w`` the config's
            ``inference_prior_weight`` (0, balanced, by default).
        crystal_system_logits (`torch.FloatTensor` of shape `[B, 7]`): crystal-system head
            (triclinic .. cubic).
        expert_logits (`torch.FloatTensor` of shape `[B, K, C]`): every expert's logits.
        gating_weights (`torch.FloatTensor` of shape `[B, K]`): softmax gate (rows sum to 1).
        features (`torch.FloatTensor` of shape `[B, D]`): pooled trunk features (what the loss's
            contrastive, centre and HNM terms see).
        loss_components (`dict[str, torch.FloatTensor]`, *optional*): the loss's unweighted
            components (detached scalars, e.g. ``loss_dol``, ``loss_sg``).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    ensemble_logits: torch.FloatTensor | None = None
    crystal_system_logits: torch.FloatTensor | None = None
    expert_logits: torch.FloatTensor | None = None
    gating_weights: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None
    loss_components: dict[str, torch.Tensor] | None = None


# ------------------------------------------------------------------------------------------------
# Trunk
# ------------------------------------------------------------------------------------------------


class ResNet1DMoEBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` that also takes the fast path's ``[B, C, 1, L]`` layout (same state and
    math: statistics over every dimension but the channels)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected a 2D, 3D or 4D input, got {input.dim()}D")


class ResNet1DMoEStem(nn.Module):
    """Strided ``conv-BN-LeakyReLU`` from 1 channel: cheap early downsampling (non-reference
    presets). ``[B, 1, L] -> [B, stem_channels, ceil(L / stride)]``."""

    def __init__(self, config: ResNet1DMoEConfig) -> None:
        super().__init__()
        kernel = config.stem_kernel_size
        self.conv = nn.Conv1d(
            1,
            config.stem_channels,
            kernel,
            stride=config.stem_stride,
            padding=kernel // 2,
            bias=False,
        )
        self.norm = ResNet1DMoEBatchNorm(config.stem_channels)
        self.negative_slope = float(config.negative_slope)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(hidden)), self.negative_slope)


class ResNet1DMoEResidualBlock(nn.Module):
    """``1x1 conv (if the width changes) -> conv3-BN-LeakyReLU-conv3-BN -> + residual ->
    LeakyReLU``. ``[B, in_channels, L] -> [B, out_channels, L]``."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float) -> None:
        super().__init__()
        self.shortcut = (
            nn.Conv1d(in_channels, out_channels, 1, bias=False)
            if in_channels != out_channels
            else None
        )
        self.conv1 = nn.Conv1d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = ResNet1DMoEBatchNorm(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = ResNet1DMoEBatchNorm(out_channels)
        self.negative_slope = float(negative_slope)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            hidden = self.shortcut(hidden)
        out = F.leaky_relu(self.norm1(self.conv1(hidden)), self.negative_slope)
        out = self.norm2(self.conv2(out))
        return F.leaky_relu(out + hidden, self.negative_slope)


def _pooling(pool_type: str, padding: int) -> nn.Module:
    """Kernel-2 stride-2 pooling along the length (``"max"``, ``"avg"``) or none."""
    if pool_type == "max":
        return nn.MaxPool1d(2, 2, padding)
    if pool_type == "avg":
        return nn.AvgPool1d(2, 2, padding)
    return nn.Identity()


class ResNet1DMoEPreTrainedModel(PreTrainedModel):
    """Weight initialisation, loading rules and the shared input checks."""

    config: ResNet1DMoEConfig
    config_class = ResNet1DMoEConfig
    base_model_prefix = "resnet1d_moe"
    main_input_name = "input_values"
    input_modalities = ("time",)
    _no_split_modules = ["ResNet1DMoEResidualBlock"]
    # The miner's counts and prototypes and the loss's centres stay fp32 when loading in bf16/fp16.
    _keep_in_fp32_modules_strict = ["hard_negative_miner", "physmoe_loss"]
    # Checkpoints trained with a loss that has parameters load into models without it (another
    # preset, or remote code without physmoe) silently.
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)physmoe_loss\."]
    # BatchNorm running statistics would be updated twice when a checkpointed block is recomputed.
    supports_gradient_checkpointing = False
    # Set per instance, for a while, by value_checks_disabled().
    _skip_value_checks = False
    #: CPU inputs run through the fast path (see :meth:`set_cpu_fast_path`).
    cpu_fast_path = True

    def __init__(self, config: ResNet1DMoEConfig, *args: Any, **kwargs: Any) -> None:
        # Values set after the config was built (from_pretrained(path, key=value), user code)
        # skipped its __post_init__ checks.
        config._validate()
        super().__init__(config, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained`` with clear errors: with physmoe installed a local
        folder is checked first (``physmoe.hub.check_checkpoint_location``: config.json present
        and a JSON object, weights readable), and weights whose shapes do not fit the config
        raise a ValueError naming the tensors (transformers raises a bare RuntimeError)."""
        location = pretrained_model_name_or_path
        hub = _import_physmoe("physmoe.hub")
        if (
            hub is not None
            and isinstance(location, (str, os.PathLike))
            and kwargs.get("config") is None
        ):
            # Offline, a Hub id that is no local path may still be in the cache: transformers
            # decides.
            from huggingface_hub import constants

            if not constants.is_offline_mode() or os.path.exists(
                os.path.expanduser(os.fspath(location))
            ):
                location = hub.check_checkpoint_location(location)
        try:
            return super().from_pretrained(location, *args, **kwargs)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise ValueError(cls._shape_mismatch_message(location, kwargs)) from error

    @classmethod
    def _shape_mismatch_message(cls, location: Any, kwargs: dict[str, Any]) -> str:
        """Which checkpoint tensors have other shapes than the config's model (a few of them)."""
        from safetensors import safe_open
        from transformers.utils import SAFE_WEIGHTS_NAME, cached_file

        intro = f"the weights in {location} do not fit its config (config.json)"
        try:
            config = kwargs.get("config") or cls.config_class.from_pretrained(location)
            weights = cached_file(
                os.fspath(location), SAFE_WEIGHTS_NAME, subfolder=kwargs.get("subfolder", "")
            )
            with torch.device("meta"):
                expected = {name: tuple(t.shape) for name, t in cls(config).state_dict().items()}
            with safe_open(weights, framework="pt") as tensors:
                stored = {
                    name: tuple(tensors.get_slice(name).get_shape()) for name in tensors.keys()
                }
        except Exception:  # noqa: BLE001 - only the details of an error that is raised anyway
            return (
                f"{intro}; pass ignore_mismatched_sizes=True "
                "to re-initialise the layers that differ"
            )
        mismatched = [
            name for name in expected if name in stored and stored[name] != expected[name]
        ]
        listed = "; ".join(
            f"{name}: checkpoint {list(stored[name])}, config {list(expected[name])}"
            for name in mismatched[:5]
        )
        more = f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
        return (
            f"{intro}: {len(mismatched)} tensors have other shapes ({listed}{more}); "
            "was config.json edited after saving? "
            "pass ignore_mismatched_sizes=True to re-initialise them"
        )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        slope = float(self.config.negative_slope)
        if isinstance(module, nn.Conv1d):
            init.kaiming_normal_(module.weight, a=slope, mode="fan_out", nonlinearity="leaky_relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)  # torch's default Linear initialisation
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, ResNet1DMoEExpertStages):
            std = math.sqrt(2.0 / (1.0 + slope**2) / module.dim)  # Kaiming normal, fan-in D
            init.normal_(module.weight1, std=std)
            init.normal_(module.weight2, std=std)
        elif isinstance(module, ResNet1DMoEBatchedLinear):
            bound = 1.0 / math.sqrt(module.in_features)
            init.uniform_(module.weight, -bound, bound)
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, ResNet1DMoECosineClassifier):
            init.uniform_(module.weight, -1.0, 1.0)  # only directions matter
        elif isinstance(module, ResNet1DMoEHardNegativeMinerState) or _is_physmoe_miner(module):
            init.zeros_(module.prototypes)
            init.zeros_(module.confusion_matrix)
        elif isinstance(module, ResNet1DMoEForSpaceGroupClassification):
            module._init_own_state()
        if module is getattr(self, "physmoe_loss", None):
            # The loss module belongs to physmoe.loss: use its own initialisation. Inside
            # `initialize_weights` torch.nn.init is guarded, so loaded centres are kept;
            # its non-persistent buffers (rule matrix, masks) are always rebuilt.
            for submodule in module.modules():
                if hasattr(submodule, "reset_parameters"):
                    submodule.reset_parameters()
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()

    def train(self, mode: bool = True) -> ResNet1DMoEPreTrainedModel:
        """``nn.Module.train``; also drops the fast path's cached inference weights (memory) in
        training mode."""
        if mode:
            _clear_fast_path_caches(self)
        return super().train(mode)

    def set_cpu_fast_path(self, enabled: bool) -> None:
        """Run CPU inputs through :mod:`.fast_path_resnet1d_moe` (default) or, with ``False``,
        the blocks' plain ``forward`` (the same function, slower on CPU)."""
        for module in self.modules():
            if isinstance(module, ResNet1DMoEPreTrainedModel):
                module.cpu_fast_path = bool(enabled)

    def _checks_values(self) -> bool:
        """Whether a forward checks values (NaN/inf inputs, label ranges): each check is a host
        sync."""
        return self.config.validate_inputs and not self._skip_value_checks and not _is_compiling()

    @contextlib.contextmanager
    def value_checks_disabled(self) -> Iterator[None]:
        """Within this context the forward, the loss and the miner skip their value checks (NaN/inf
        inputs, label ranges), each a host sync that stalls a GPU's queue; shapes and dtypes are
        still checked. For training loops whose batches were validated on the host as they were
        collated: :class:`~physmoe.training.PhysMoETrainer` uses it with
        :class:`~physmoe.data.PXRDCollator`. ``config.validate_inputs`` is left as it is."""
        models = [m for m in self.modules() if isinstance(m, ResNet1DMoEPreTrainedModel)]
        # The loss and miner modules take a ``validate`` flag at construction.
        checkers = [m for m in self.modules() if isinstance(getattr(m, "validate", None), bool)]
        skipped = [(m, m._skip_value_checks) for m in models]
        validated = [(m, m.validate) for m in checkers]
        for module in models:
            module._skip_value_checks = True
        for module in checkers:
            module.validate = False
        try:
            yield
        finally:
            for module, value in skipped:
                module._skip_value_checks = value
            for module, value in validated:
                module.validate = value

    def _check_input_values(self, input_values: torch.Tensor) -> torch.Tensor:
        """Validate ``[B, L]`` / ``[B, 1, L]`` inputs; return ``[B, 1, L]`` in the parameters'
        dtype."""
        num_points = self.config.num_points
        if not isinstance(input_values, torch.Tensor):
            raise TypeError(
                f"input_values must be a torch.Tensor, got {type(input_values).__name__}"
            )
        shape = tuple(input_values.shape)
        if input_values.dim() == 3 and shape[1] == 1:
            input_values = input_values[:, 0]
        if input_values.dim() != 2:
            raise ValueError(
                f"input_values must be [batch, {num_points}] or [batch, 1, {num_points}], "
                f"got {list(shape)}"
            )
        if input_values.shape[1] != num_points:
            raise ValueError(
                f"input_values has {input_values.shape[1]} points, the model expects num_points="
                f"{num_points} (2θ {self.config.two_theta_min}-{self.config.two_theta_max} deg); "
                f"resample the pattern onto the model's grid (got shape {list(shape)})"
            )
        if input_values.shape[0] == 0:
            raise ValueError("input_values is an empty batch")
        if input_values.is_complex() or input_values.dtype == torch.bool:
            raise TypeError(
                f"input_values must be real intensities, got dtype {input_values.dtype}"
            )
        if self.training and input_values.shape[0] == 1:
            raise ValueError(
                "a batch of 1 in training mode: BatchNorm needs more than one sample per batch "
                "(the expert stages see one value per channel). Use model.eval() for single "
                "patterns, or drop_last=True / a batch size that leaves no final batch of 1."
            )
        if self._checks_values() and input_values.is_floating_point():
            # A sum is ~30x cheaper than isfinite() on CPU and is NaN/inf whenever an entry is;
            # the exact check runs only if the sum is not finite (or overflowed).
            if not bool(torch.isfinite(input_values.sum())) and not bool(
                torch.isfinite(input_values).all()
            ):
                raise ValueError("input_values contain NaN or inf")
        dtype = self._parameter_dtype()
        return input_values.to(dtype)[:, None, :]

    def _parameter_dtype(self) -> torch.dtype:
        for parameter in self.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return torch.float32


class ResNet1DMoEModel(ResNet1DMoEPreTrainedModel):
    """The trunk: ``input_values [B, L]`` -> pooled features ``[B, D]``."""

    # A classifier checkpoint loads into the trunk without reporting its heads.
    _keys_to_ignore_on_load_unexpected = [
        r"(^|\.)physmoe_loss\.",
        r"^(crystal_system_projection|crystal_system_classifier|gate|rule_bias|expert_stages|"
        r"expert_projection|expert_classifier|hard_negative_miner)\b",
    ]

    def __init__(self, config: ResNet1DMoEConfig) -> None:
        super().__init__(config)
        self.input_norm = ResNet1DMoEBatchNorm(1) if config.input_batch_norm else None
        self.stem = ResNet1DMoEStem(config) if config.stem_channels else None
        widths = [config.stem_channels or 1, *config.hidden_sizes]
        self.blocks = nn.ModuleList(
            ResNet1DMoEResidualBlock(widths[i], widths[i + 1], config.negative_slope)
            for i in range(len(config.hidden_sizes))
        )
        pools = zip(config.pool_types, config.pool_paddings, strict=True)
        self.poolings = nn.ModuleList(_pooling(pool_type, padding) for pool_type, padding in pools)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.post_init()

    def _encode(
        self, hidden: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """``[B, 1, L]`` (checked) -> last block output ``[B, D, L']`` (+ hidden states)."""
        if _fast_path_applies(self, hidden):
            return _fast_path_encode(self, hidden, output_hidden_states)
        if self.input_norm is not None:
            hidden = self.input_norm(hidden)
        if self.stem is not None:
            hidden = self.stem(hidden)
        hidden_states = [] if output_hidden_states else None
        for index, (block, pooling) in enumerate(zip(self.blocks, self.poolings, strict=True)):
            if hidden_states is not None:
                hidden_states.append(hidden)
            hidden = pooling(block(hidden))
            if index in self.config.dropout_blocks:
                hidden = self.dropout(hidden)
        if hidden_states is not None:
            hidden_states.append(hidden)
        return hidden, None if hidden_states is None else tuple(hidden_states)

    def forward_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """``input_values`` ``[B, L]`` or ``[B, 1, L]`` -> pooled features ``[B, D]`` (fp32)."""
        hidden, _ = self._encode(self._check_input_values(input_values))
        return hidden.mean(dim=2).float()

    def forward(
        self,
        input_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ResNet1DMoEModelOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `[batch, num_points]` or
                `[batch, 1, num_points]`):
                intensities on the config's 2θ grid, scaled to a maximum of 1.
            output_hidden_states (`bool`, *optional*): also return every block's input.
            return_dict (`bool`, *optional*): return a :class:`ResNet1DMoEModelOutput` (default).
        """
        output_hidden_states = (
            self.config.output_hidden_states
            if output_hidden_states is None
            else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        hidden, hidden_states = self._encode(
            self._check_input_values(input_values), output_hidden_states
        )
        output = ResNet1DMoEModelOutput(
            last_hidden_state=hidden,
            pooler_output=hidden.mean(dim=2).float(),
            hidden_states=hidden_states,
        )
        return output if return_dict else output.to_tuple()


# ------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------


class ResNet1DMoEExpertStages(nn.Module):
    """``num_stages`` residual stages on pooled features, computed together.

    Each stage is the published per-expert ``ResBlock1D(D, D)`` on a length-1 sequence, where a
    3-tap convolution with zero padding only uses its centre tap: ``y = LeakyReLU(x +
    BN2(W2 LeakyReLU(BN1(W1 x))))``. The first layer of all stages is one matmul (they share
    their input), the second one batched matmul; each BatchNorm normalises ``num_stages * D``
    features (per stage and channel, as the per-expert BatchNorms did).

    Parameters: ``weight1``, ``weight2`` ``[num_stages, D_out, D_in]``; ``norm1``, ``norm2``
    ``BatchNorm1d(num_stages * D)``. ``[B, D] -> [B, num_stages, D]``.
    """

    def __init__(self, num_stages: int, dim: int, negative_slope: float) -> None:
        super().__init__()
        self.num_stages = int(num_stages)
        self.dim = int(dim)
        self.negative_slope = float(negative_slope)
        self.weight1 = nn.Parameter(torch.empty(num_stages, dim, dim))
        self.norm1 = nn.BatchNorm1d(num_stages * dim)
        self.weight2 = nn.Parameter(torch.empty(num_stages, dim, dim))
        self.norm2 = nn.BatchNorm1d(num_stages * dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, stages, dim = features.shape[0], self.num_stages, self.dim
        hidden = F.linear(features, self.weight1.reshape(stages * dim, dim))  # [B, K*D]
        hidden = F.leaky_relu(self.norm1(hidden), self.negative_slope)
        hidden = torch.bmm(
            hidden.view(batch, stages, dim).transpose(0, 1), self.weight2.transpose(1, 2)
        )
        hidden = self.norm2(hidden.transpose(0, 1).reshape(batch, stages * dim)).view(
            batch, stages, dim
        )
        return F.leaky_relu(hidden + features.unsqueeze(1), self.negative_slope)

    def extra_repr(self) -> str:
        return f"num_stages={self.num_stages}, dim={self.dim}"


def _linear_fp32(linear: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    """``linear(inputs)`` in fp32 (parameters cast if stored in another dtype)."""
    bias = None if linear.bias is None else linear.bias.float()
    return F.linear(inputs.float(), linear.weight.float(), bias)


class ResNet1DMoEBatchedLinear(nn.Module):
    """``num_heads`` independent linear maps: ``[B, H, in] -> [B, H, out]``
    (``weight`` ``[H, out, in]``, ``bias`` ``[H, out]``)."""

    def __init__(self, num_heads: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(num_heads, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_heads, out_features))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.to(inputs.dtype), self.bias.to(inputs.dtype)
        outputs = torch.baddbmm(bias.unsqueeze(1), inputs.transpose(0, 1), weight.transpose(1, 2))
        return outputs.transpose(0, 1)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.weight.shape[0]}, in_features={self.in_features}, "
            f"out_features={self.out_features}"
        )


class ResNet1DMoECosineClassifier(nn.Module):
    """``num_heads`` cosine classifiers: ``scale * cos(input, class weight)``.

    ``weight`` ``[H, C, in]``. ``[B, in]`` (one input for every head) or ``[B, H, in]`` ->
    ``[B, H, C]``.
    """

    def __init__(self, num_heads: int, in_features: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_heads, num_classes, in_features))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        heads, num_classes, in_features = self.weight.shape
        weight = F.normalize(self.weight.to(inputs.dtype), dim=2)
        inputs = F.normalize(inputs, dim=-1)
        if inputs.dim() == 2:
            logits = (inputs @ weight.reshape(heads * num_classes, in_features).T).view(
                -1, heads, num_classes
            )
        else:
            logits = torch.einsum("bhi,hci->bhc", inputs, weight)
        return self.scale * logits

    def extra_repr(self) -> str:
        heads, num_classes, in_features = self.weight.shape
        return (
            f"num_heads={heads}, in_features={in_features}, num_classes={num_classes}, "
            f"scale={self.scale}"
        )


def hierarchical_space_group_logits(
    ensemble_logits: torch.Tensor,
    crystal_system_logits: torch.Tensor,
    label_crystal_systems: torch.Tensor,
    mode: str,
) -> torch.Tensor:
    """Combine the crystal-system head with the space-group ensemble.

    Args:
        ensemble_logits: ``[B, C]``.
        crystal_system_logits: ``[B, 7]``.
        label_crystal_systems: ``[C]`` crystal-system index of every label (long).
        mode: ``"soft"``: ``log p(sg) = log p(sys(sg)) + log softmax_{sg' in sys(sg)} ensemble``
            (log-probabilities that sum to 1); ``"hard"``: the ensemble logits with every label
            outside the argmax crystal system set to the dtype's lowest value (never ``-inf`` or a
            fixed large negative constant: softmax gives those labels exactly 0); ``"none"``: the
            ensemble logits. Crystal systems without any label are ignored in both.

    Returns ``[B, C]`` in the dtype of ``ensemble_logits``.
    """
    if mode == "none":
        return ensemble_logits
    systems = torch.arange(NUM_CRYSTAL_SYSTEMS, device=label_crystal_systems.device)
    members = systems[:, None] == label_crystal_systems[None, :]  # [7, C]
    present = members.any(dim=1)  # [7]
    system_logits = crystal_system_logits.masked_fill(
        ~present, torch.finfo(crystal_system_logits.dtype).min
    )
    if mode == "hard":
        predicted = system_logits.argmax(dim=1)  # [B]
        allowed = label_crystal_systems[None, :] == predicted[:, None]  # [B, C]
        return ensemble_logits.masked_fill(~allowed, torch.finfo(ensemble_logits.dtype).min)
    if mode != "soft":
        raise ValueError(
            f"hierarchical inference mode must be 'soft', 'hard' or 'none', got {mode!r}"
        )
    log_p_system = torch.log_softmax(system_logits, dim=1)  # [B, 7]
    per_system = ensemble_logits.unsqueeze(1).masked_fill(
        ~members, torch.finfo(ensemble_logits.dtype).min
    )
    log_normaliser = torch.logsumexp(per_system, dim=2)  # [B, 7]
    return (
        log_p_system.index_select(1, label_crystal_systems)
        + ensemble_logits
        - log_normaliser.index_select(1, label_crystal_systems)
    )


class ResNet1DMoEForSpaceGroupClassification(ResNet1DMoEPreTrainedModel):
    """ResNet1D_MoE for space-group classification (also ``physmoe.ResNet1D_MoE``).

    ``forward(input_values [B, L] or [B, 1, L], labels [B] optional)`` returns a
    :class:`SpaceGroupClassifierOutput`. With ``labels`` the loss is the configured
    ``physmoe.loss`` wrapper (``self.physmoe_loss``, preset ``config.loss_preset``); the model's
    hard-negative miner (``self.hard_negative_miner``) is passed to it and updated only through
    :meth:`update_hard_negative_miner` / :meth:`apply_epoch_momentum`.
    """

    # The loss is a per-batch mean: Trainer must keep dividing it by the accumulation steps.
    accepts_loss_kwargs = False

    def __init__(self, config: ResNet1DMoEConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        num_experts, dim, proj = config.num_experts, config.feature_dim, config.projection_dim
        self.resnet1d_moe = ResNet1DMoEModel(config)

        self.crystal_system_projection = nn.Linear(dim, proj)
        self.crystal_system_classifier = ResNet1DMoECosineClassifier(
            1, proj, NUM_CRYSTAL_SYSTEMS, config.logit_scale
        )
        self.gate = nn.Linear(proj, num_experts)
        self.rule_bias = nn.Parameter(torch.empty(NUM_CRYSTAL_SYSTEMS, num_experts))

        independent = config.expert_mode == "independent"
        self.expert_stages = ResNet1DMoEExpertStages(
            num_experts if independent else 1, dim, config.negative_slope
        )
        # Shared mode projects the shared stage with the crystal-system projection (as published).
        self.expert_projection = (
            ResNet1DMoEBatchedLinear(num_experts, dim, proj) if independent else None
        )
        self.expert_classifier = ResNet1DMoECosineClassifier(
            num_experts, proj, config.num_labels, config.logit_scale
        )

        label_systems = config.label_crystal_systems
        if label_systems is None and config.hierarchical_inference != "none":
            raise ValueError(
                f"hierarchical_inference={config.hierarchical_inference!r} "
                "needs the crystal system of "
                f"every label: set config.label_space_groups (one space-group number per label) or "
                f"id2label names ending in '(n)', or use hierarchical_inference='none'"
            )
        self._label_crystal_systems = label_systems or [0] * config.num_labels
        self.register_buffer(
            "label_crystal_systems",
            torch.tensor(self._label_crystal_systems, dtype=torch.long),
            persistent=False,
        )
        # "balanced_experts": the experts' logit adjustments and the training log prior, for the
        # balanced ensemble (from the config, so inference needs no physmoe).
        self._balanced_experts = None
        if config.loss_preset == "balanced_experts":
            self._balanced_experts = _balanced_experts_constants(config)
            taus, log_prior = (torch.from_numpy(value) for value in self._balanced_experts)
            self.register_buffer("expert_taus", taus, persistent=False)
            self.register_buffer("log_class_prior", log_prior, persistent=False)

        self.hard_negative_miner, self.physmoe_loss = _build_miner_and_loss(config)
        self.post_init()

    # -- construction helpers -------------------------------------------------------------------

    def _init_own_state(self) -> None:
        if self.config.rule_bias_init is None:
            init.zeros_(self.rule_bias)
        else:
            init.copy_(
                self.rule_bias, torch.tensor(self.config.rule_bias_init, dtype=self.rule_bias.dtype)
            )
        init.copy_(
            self.label_crystal_systems, torch.tensor(self._label_crystal_systems, dtype=torch.long)
        )
        if self._balanced_experts is not None:
            init.copy_(self.expert_taus, torch.from_numpy(self._balanced_experts[0]))
            init.copy_(self.log_class_prior, torch.from_numpy(self._balanced_experts[1]))

    # -- forward --------------------------------------------------------------------------------

    def forward_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """``input_values`` ``[B, L]`` or ``[B, 1, L]`` -> pooled trunk features ``[B, D]``
        (fp32)."""
        return self.resnet1d_moe.forward_features(input_values)

    def forward_head(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Heads on pooled features ``[B, D]``: a dict with ``logits``, ``ensemble_logits``,
        ``crystal_system_logits``, ``expert_logits``, ``gating_weights`` (fp32; shapes as in
        :class:`SpaceGroupClassifierOutput`).

        The expert stages (the only costly part) run under the caller's autocast; everything
        after them runs in fp32 with autocast off, whatever dtype the parameters are stored in.
        """
        config = self.config
        stage_input = features.to(self.expert_stages.weight1.dtype)
        if _fast_path_applies(self, stage_input):
            stage_output = _fast_path_expert_stages(self.expert_stages, stage_input)  # [B, K|1, D]
        else:
            stage_output = self.expert_stages(stage_input)
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            system_embedding = _linear_fp32(self.crystal_system_projection, features)  # [B, P]
            crystal_system_logits = self.crystal_system_classifier(system_embedding)[:, 0]  # [B, 7]
            gating_logits = _linear_fp32(self.gate, system_embedding) + (
                crystal_system_logits.softmax(dim=1) @ self.rule_bias.float()
            )
            gating_weights = gating_logits.softmax(dim=1)  # [B, K]
            if self.expert_projection is not None:
                expert_embeddings = self.expert_projection(stage_output.float())  # [B, K, P]
            else:
                expert_embeddings = _linear_fp32(
                    self.crystal_system_projection, stage_output[:, 0].float()
                )
            expert_logits = self.expert_classifier(expert_embeddings)  # [B, K, C]
            ensemble_logits = torch.einsum("bk,bkc->bc", gating_weights, expert_logits)
            if self._balanced_experts is not None:
                # Expert k learnt z_k ~ log p_bal + (1 - tau_k) log prior: undo the mixture's mean,
                # then add back the share of the prior the user asks for (0: balanced).
                mean_tau = gating_weights @ self.expert_taus.float()  # [B]
                log_prior = self.log_class_prior.float()
                prior_weight = mean_tau - 1.0 + float(config.inference_prior_weight)
                ensemble_logits = ensemble_logits + prior_weight[:, None] * log_prior
            logits = hierarchical_space_group_logits(
                ensemble_logits,
                crystal_system_logits,
                self.label_crystal_systems,
                config.hierarchical_inference,
            )
        return {
            "logits": logits,
            "ensemble_logits": ensemble_logits,
            "crystal_system_logits": crystal_system_logits,
            "expert_logits": expert_logits,
            "gating_weights": gating_weights,
        }

    def forward(
        self,
        input_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> SpaceGroupClassifierOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `[batch, num_points]` or
                `[batch, 1, num_points]`):
                intensities on the config's 2θ grid (``config.two_theta_min`` to
                ``config.two_theta_max``, ``config.num_points`` points, ``config.wavelength``),
                scaled to a maximum of 1.
            labels (`torch.LongTensor` of shape `[batch]`, *optional*): space-group labels
                ``0..num_labels-1`` (space-group number - 1). Given, the output carries the loss;
                this needs physmoe installed.
            return_dict (`bool`, *optional*): return a :class:`SpaceGroupClassifierOutput`
                (default) instead of a tuple.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            labels = _check_labels(
                labels,
                input_values,
                self.num_labels,
                has_loss=self.physmoe_loss is not None,
                check_values=self._checks_values(),
            )
        features = self.forward_features(input_values)
        head = self.forward_head(features)
        loss = loss_components = None
        if labels is not None:
            loss, loss_components = _compute_loss(
                self.physmoe_loss, features, head, labels, self.hard_negative_miner
            )
        output = SpaceGroupClassifierOutput(
            loss=loss, features=features, loss_components=loss_components, **head
        )
        return output if return_dict else output.to_tuple()

    # -- hard-negative mining -------------------------------------------------------------------

    @torch.no_grad()
    def update_hard_negative_miner(
        self, features: torch.Tensor, logits_or_predictions: torch.Tensor, labels: torch.Tensor
    ) -> None:
        """Apply one training step's update to the hard-negative miner.

        Pass tensors of the *global* batch (under DDP, gathered from all processes, the same on
        every process, so every replica applies the same update and DDP's buffer broadcast is
        harmless). Momentum update of the class prototypes from ``features`` ``[N, D]``, and
        ``confusion_matrix[label, predicted] += 1`` with ``predicted`` = argmax of
        ``logits_or_predictions`` ``[N, C]`` or the given classes ``[N]``. No gradient.
        """
        _update_miner(self.hard_negative_miner, features, logits_or_predictions, labels)

    @torch.no_grad()
    def apply_epoch_momentum(self) -> None:
        """Decay the miner's confusion counts once per epoch (``*= 1 - momentum``)."""
        _apply_miner_epoch_momentum(self.hard_negative_miner)

    # -- saving ---------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.save_pretrained``; with remote code registered, the saved
        ``auto_map`` also lists ``AutoModel`` (the trunk) next to this class."""
        if self._auto_class is not None:
            module = ResNet1DMoEModel.__module__.split(".")[-1]
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.setdefault("AutoModel", f"{module}.{ResNet1DMoEModel.__name__}")
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)
