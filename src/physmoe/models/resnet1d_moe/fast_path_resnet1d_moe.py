"""The CPU fast path of ResNet1D_MoE: the same function as the modules' plain ``forward``, faster.

:mod:`.modeling_resnet1d_moe` uses it for a trunk whose input is on the CPU, unless switched off
(``model.set_cpu_fast_path(False)``) or under ``torch.compile`` (:func:`applies`). What it does,
each measured faster on our 2-core CPU (fp32 and bf16) and each checked against the plain path
in ``tests/models/test_fast_path_resnet1d_moe.py``:

* The trunk computes on ``[B, C, 1, L]`` tensors in channels-last memory with 2D convolutions of
  height 1 (oneDNN's fast layout; the parameters keep their ``Conv1d`` shapes).
* Blocks whose input is at most :data:`MATMUL_CONV_MAX_LENGTH` long (the wide late blocks)
  convolve as one matmul over stacked shifted inputs (im2col): 2-4x faster there than oneDNN's
  direct convolution, whose weight reorders and backward-weights reduction dominate.
* Inference (eval mode, no autograd) folds every BatchNorm into the preceding convolution or
  matmul and caches the folded weights in the compute dtype until a parameter changes, and max
  pooling skips the index bookkeeping autograd would need.

Like the modeling file it must import without physmoe (remote code carries a copy of both).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

#: Sequences up to this length convolve as one matmul over stacked shifted inputs (im2col).
MATMUL_CONV_MAX_LENGTH = 48


def applies(model: nn.Module, tensor: torch.Tensor) -> bool:
    """The one rule: the fast path runs for CPU tensors, unless the model switched it off or
    torch.compile is tracing (which fuses the plain path itself)."""
    return tensor.device.type == "cpu" and model.cpu_fast_path and not torch.compiler.is_compiling()


def _inference(module: nn.Module) -> bool:
    """Eval mode without autograd: BatchNorms fold into cached weights."""
    return not module.training and not torch.is_grad_enabled()


# ------------------------------------------------------------------------------- convolution


def _conv(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """Convolve ``[B, C, 1, L]`` (channels-last) along L with ``weight`` ``[O, C, 1, K]``.

    ``weight`` is a ``Conv1d`` weight viewed as 4D or a cached channels-last inference weight.
    Returns ``[B, O, 1, L']`` in channels-last memory.
    """
    if stride == 1 and hidden.shape[-1] <= MATMUL_CONV_MAX_LENGTH:
        return _conv_as_matmul(hidden, weight, bias, padding)
    out = F.conv2d(hidden, weight, bias, stride=(1, stride), padding=(0, padding))
    # From one input channel oneDNN returns NCHW (the layouts coincide for C = 1): switch once.
    return out.contiguous(memory_format=torch.channels_last)


def _conv_as_matmul(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """Stride-1 convolution of ``[B, C, 1, L]`` by ``weight`` ``[O, C, 1, K]`` as one matmul.

    The channels-last input is a ``[B, L, C]`` matrix in memory; its ``K`` shifted copies are
    stacked to ``[B * L_out, K * C]`` columns, ordered like the weight's memory (taps outer for a
    channels-last weight, channels outer for a ``Conv1d`` weight) so the weight is used as a
    ``[O, K * C]`` matrix without a copy. The ``[B, L_out, O]`` product is returned as a
    channels-last ``[B, O, 1, L_out]`` view.
    """
    batch, channels, _, length = hidden.shape
    out_channels, _, _, kernel = weight.shape
    rows = hidden.permute(0, 2, 3, 1).reshape(batch, length, channels)  # free for channels-last
    out_length = length + 2 * padding - kernel + 1
    taps_outer = weight.stride(1) == 1 or channels == 1
    if kernel == 1 and padding == 0:
        columns = rows.reshape(batch * length, channels)
        matrix = weight.reshape(out_channels, channels)
    else:
        rows = F.pad(rows, (0, 0, padding, padding))
        taps = [rows[:, k : k + out_length] for k in range(kernel)]
        columns = torch.stack(taps, dim=2 if taps_outer else 3).reshape(
            batch * out_length, kernel * channels
        )
        matrix = (weight.permute(0, 2, 3, 1) if taps_outer else weight).reshape(
            out_channels, kernel * channels
        )
    out = F.linear(columns, matrix, bias)
    return out.view(batch, 1, out_length, out_channels).permute(0, 3, 1, 2)


def _pool(hidden: torch.Tensor, pool_type: str, padding: int) -> torch.Tensor:
    """Kernel-2 stride-2 pooling along the length of ``[B, C, 1, L]`` (channels-last)."""
    if pool_type == "max":
        if torch.is_grad_enabled():
            return F.max_pool2d(hidden, (1, 2), (1, 2), (0, padding))
        # Without autograd, the maximum of the even and odd positions is the same result
        # without max_pool2d's index bookkeeping (several times faster on CPU).
        batch, channels, _, length = hidden.shape
        rows = hidden.permute(0, 2, 3, 1).reshape(batch, length, channels)
        if padding:
            rows = F.pad(rows, (0, 0, padding, padding), value=-math.inf)
        pairs = rows[:, : rows.shape[1] // 2 * 2].unflatten(1, (-1, 2))  # [B, L/2, 2, C]
        pooled = torch.maximum(pairs[:, :, 0], pairs[:, :, 1])  # [B, L/2, C]
        return pooled.unsqueeze(1).permute(0, 3, 1, 2)
    if pool_type == "avg":
        return F.avg_pool2d(hidden, (1, 2), (1, 2), (0, padding))
    return hidden


# ---------------------------------------------------------------------- folded inference weights


def _compute_dtype(tensor: torch.Tensor, parameter: torch.Tensor) -> torch.dtype:
    """The autocast dtype if autocast is on for ``tensor``'s device, else ``parameter``'s dtype."""
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return parameter.dtype


def _fold_batch_norm(
    weight: torch.Tensor, norm: nn.BatchNorm1d
) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(x @ weight)`` in eval mode as one affine map ``(weight', bias)`` in fp32 (torch's
    conv-BN fusion, which scales the output rows, dim 0, of a weight of any rank)."""
    weight, bias = fuse_conv_bn_weights(
        weight.float(), None, norm.running_mean.float(), norm.running_var.float(), norm.eps,
        norm.weight.float(), norm.bias.float(),
    )  # fmt: skip
    return weight.detach(), bias.detach()


def _channels_last_weight(weight: torch.Tensor) -> torch.Tensor:
    """``Conv1d`` weight ``[O, C, K]`` -> ``[O, C, 1, K]`` in channels-last memory."""
    return weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _fold_conv_norm(conv: nn.Conv1d, norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = _fold_batch_norm(conv.weight, norm)
    return _channels_last_weight(weight), bias


class InferenceWeights:
    """Per-module cache of folded, cast inference weights (``module.inference_weights``).

    The cache key holds the dtype and the storage address and version counter of every source
    tensor, so any change (optimiser step, ``load_state_dict``, ``.to()``) rebuilds it; training
    mode clears it (:func:`clear_caches`). Plain Python state, never part of the ``state_dict``.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: tuple[torch.Tensor | None, ...] | None = None

    def get(
        self, module: nn.Module, dtype: torch.dtype, build: Any
    ) -> tuple[torch.Tensor | None, ...]:
        sources = [*module.parameters(), *module.buffers()]
        key = (dtype, tuple((t.data_ptr(), t._version) for t in sources))
        if key != self.key:
            self.key, self.value = None, None  # free the old weights first
            with torch.inference_mode(False), torch.no_grad():
                with torch.autocast(device_type=sources[0].device.type, enabled=False):
                    self.value = tuple(None if t is None else t.to(dtype) for t in build())
            self.key = key
        return self.value

    def clear(self) -> None:
        self.key, self.value = None, None


def _cached(module: nn.Module, dtype: torch.dtype, build: Any) -> tuple[torch.Tensor | None, ...]:
    cache = module.__dict__.get("inference_weights")
    if cache is None:
        cache = module.__dict__["inference_weights"] = InferenceWeights()
    return cache.get(module, dtype, build)


def clear_caches(model: nn.Module) -> None:
    """Drop every cached inference weight of ``model``'s modules (memory)."""
    for module in model.modules():
        cache = module.__dict__.get("inference_weights")
        if cache is not None:
            cache.clear()


# ------------------------------------------------------------------------------------ modules


def _stem(stem: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``ResNet1DMoEStem`` on ``[B, 1, 1, L]`` -> ``[B, C, 1, L']``."""
    stride, padding = stem.conv.stride[0], stem.conv.padding[0]
    if _inference(stem):
        weight, bias = _cached(
            stem,
            _compute_dtype(hidden, stem.conv.weight),
            lambda: _fold_conv_norm(stem.conv, stem.norm),
        )
        out = _conv(hidden.to(weight.dtype), weight, bias, stride, padding)
    else:
        out = stem.norm(_conv(hidden, stem.conv.weight.unsqueeze(2), None, stride, padding))
    return F.leaky_relu(out, stem.negative_slope, inplace=True)


def _fold_block(block: nn.Module) -> tuple[torch.Tensor | None, ...]:
    shortcut = None if block.shortcut is None else _channels_last_weight(block.shortcut.weight)
    return (
        shortcut,
        *_fold_conv_norm(block.conv1, block.norm1),
        *_fold_conv_norm(block.conv2, block.norm2),
    )


def _residual_block(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``ResNet1DMoEResidualBlock`` on ``[B, C_in, 1, L]`` -> ``[B, C_out, 1, L]``."""
    slope = block.negative_slope
    if _inference(block):
        shortcut, weight1, bias1, weight2, bias2 = _cached(
            block, _compute_dtype(hidden, block.conv1.weight), lambda: _fold_block(block)
        )
        hidden = hidden.to(weight1.dtype)
        if shortcut is not None:
            hidden = _conv(hidden, shortcut, None)
        out = F.leaky_relu(_conv(hidden, weight1, bias1, padding=1), slope, inplace=True)
        out = _conv(out, weight2, bias2, padding=1)
        return F.leaky_relu(out.add_(hidden), slope, inplace=True)
    if block.shortcut is not None:
        hidden = _conv(hidden, block.shortcut.weight.unsqueeze(2), None)
    # In-place activations/add act on BatchNorm outputs, which no backward needs.
    out = block.norm1(_conv(hidden, block.conv1.weight.unsqueeze(2), None, padding=1))
    out = F.leaky_relu(out, slope, inplace=True)
    out = block.norm2(_conv(out, block.conv2.weight.unsqueeze(2), None, padding=1))
    return F.leaky_relu(out.add_(hidden), slope, inplace=True)


def encode(
    trunk: nn.Module, hidden: torch.Tensor, output_hidden_states: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """``ResNet1DMoEModel``'s blocks on ``[B, 1, L]`` -> last output ``[B, D, L']`` and, with
    ``output_hidden_states``, every block's input and the last output (``[B, C, L]`` views)."""
    config = trunk.config
    hidden = hidden[:, :, None, :].contiguous(memory_format=torch.channels_last)  # [B, 1, 1, L]
    if trunk.input_norm is not None:
        hidden = trunk.input_norm(hidden)
    if trunk.stem is not None:
        hidden = _stem(trunk.stem, hidden)
    hidden_states = [] if output_hidden_states else None
    dropout_blocks = set(config.dropout_blocks)
    for index, block in enumerate(trunk.blocks):
        if hidden_states is not None:
            hidden_states.append(hidden[:, :, 0])
        hidden = _pool(
            _residual_block(block, hidden), config.pool_types[index], config.pool_paddings[index]
        )
        if index in dropout_blocks:
            hidden = trunk.dropout(hidden)
    if hidden_states is not None:
        hidden_states.append(hidden[:, :, 0])
    return hidden[:, :, 0], None if hidden_states is None else tuple(hidden_states)


def _fold_stages(stages: nn.Module) -> tuple[torch.Tensor, ...]:
    num_stages, dim = stages.num_stages, stages.dim
    weight1, bias1 = _fold_batch_norm(stages.weight1.reshape(num_stages * dim, dim), stages.norm1)
    weight2, bias2 = _fold_batch_norm(stages.weight2.reshape(num_stages * dim, dim), stages.norm2)
    # [K, D_in, D_out] so the batched matmul reads it without a transpose.
    weight2 = weight2.view(num_stages, dim, dim).transpose(1, 2).contiguous()
    return weight1, bias1, weight2, bias2.view(num_stages, dim)


def expert_stages(stages: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``ResNet1DMoEExpertStages`` on ``[B, D]`` -> ``[B, num_stages, D]``; in inference with its
    BatchNorms folded into cached weights (one matmul, one batched matmul)."""
    batch, num_stages, dim = features.shape[0], stages.num_stages, stages.dim
    slope = stages.negative_slope
    if _inference(stages):
        weight1, bias1, weight2, bias2 = _cached(
            stages, _compute_dtype(features, stages.weight1), lambda: _fold_stages(stages)
        )
        features = features.to(weight1.dtype)
        hidden = F.leaky_relu(F.linear(features, weight1, bias1), slope, inplace=True)
        hidden = torch.baddbmm(
            bias2.unsqueeze(1), hidden.view(batch, num_stages, dim).transpose(0, 1), weight2
        )
        hidden = hidden.transpose(0, 1)  # [B, K, D]
    else:
        dtype = _compute_dtype(features, stages.weight1)
        hidden = F.linear(features, stages.weight1.reshape(num_stages * dim, dim))  # [B, K*D]
        hidden = F.leaky_relu(stages.norm1(hidden), slope, inplace=True)
        # Cast before transposing: autocast would otherwise copy a strided (transposed) view.
        weight2 = stages.weight2.to(dtype).transpose(1, 2)
        hidden = torch.bmm(hidden.view(batch, num_stages, dim).transpose(0, 1).to(dtype), weight2)
        hidden = stages.norm2(hidden.transpose(0, 1).reshape(batch, num_stages * dim)).view(
            batch, num_stages, dim
        )
    hidden = hidden.add_(features.unsqueeze(1).to(hidden.dtype))
    return F.leaky_relu(hidden, slope, inplace=True)
