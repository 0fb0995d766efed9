"""ResNet1D_MoE against a straightforward loop implementation, plus the transformers integration.

The oracle :func:`loop_forward` recomputes the model from its own parameters the obvious way:
``Conv1d``/``BatchNorm1d``/``MaxPool1d``/``AvgPool1d`` on ``[B, C, L]``, one published-style
residual block of 3-tap convolutions per expert on the length-1 trunk output (random side taps),
per-expert projections and cosine classifiers in a Python loop, the ensemble as a loop sum, and
the hierarchy by loops over samples and classes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForSequenceClassification, Trainer, TrainingArguments

from physmoe import crystallography as cryst
from physmoe.models.resnet1d_moe import (
    ResNet1D_MoE,
    ResNet1DMoEConfig,
    ResNet1DMoEForSpaceGroupClassification,
    ResNet1DMoEModel,
    hierarchical_space_group_logits,
)
from physmoe.models.resnet1d_moe import fast_path_resnet1d_moe as fast_path
from scripts_under_test import load_script
from tiny_models import TINY, TINY_STEM, tiny_config, tiny_model

REPO = Path(__file__).resolve().parents[2]


def batch(size: int = 6, num_points: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, num_points, generator=generator)
    labels = torch.randint(0, 230, (size,), generator=generator)
    return x, labels


# ------------------------------------------------------------------------------------------------
# Oracle
# ------------------------------------------------------------------------------------------------


def _bn(h, norm, training, weight=None, bias=None, mean=None, var=None):
    mean = norm.running_mean if mean is None else mean
    var = norm.running_var if var is None else var
    return F.batch_norm(
        h,
        mean.clone(),
        var.clone(),
        norm.weight if weight is None else weight,
        norm.bias if bias is None else bias,
        training,
        norm.momentum,
        norm.eps,
    )


def _cosine(x, weight, scale):
    """``scale * cos(x_b, weight_c)`` by loops over samples and classes."""
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
    rows = []
    for b in range(x.shape[0]):
        rows.append(
            torch.stack(
                [
                    scale * F.cosine_similarity(x[b], weight[c], dim=0)
                    for c in range(weight.shape[0])
                ]
            )
        )
    return torch.stack(rows) if rows else out


def loop_forward(model, x, training, side_taps):
    """Recompute every output of ``model`` from its parameters the straightforward way."""
    config, trunk = model.config, model.resnet1d_moe
    slope, scale = config.negative_slope, config.logit_scale
    leaky = lambda t: F.leaky_relu(t, slope)  # noqa: E731
    h = x[:, None, :]
    if trunk.input_norm is not None:
        h = _bn(h, trunk.input_norm, training)
    if trunk.stem is not None:
        conv = trunk.stem.conv
        h = leaky(
            _bn(
                F.conv1d(h, conv.weight, stride=conv.stride, padding=conv.padding),
                trunk.stem.norm,
                training,
            )
        )
    for index, block in enumerate(trunk.blocks):
        if block.shortcut is not None:
            h = F.conv1d(h, block.shortcut.weight)
        out = leaky(_bn(F.conv1d(h, block.conv1.weight, padding=1), block.norm1, training))
        out = _bn(F.conv1d(out, block.conv2.weight, padding=1), block.norm2, training)
        h = leaky(h + out)
        kind, padding = config.pool_types[index], config.pool_paddings[index]
        h = F.max_pool1d(h, 2, 2, padding) if kind == "max" else F.avg_pool1d(h, 2, 2, padding)
    front = h  # [B, D, 1]
    assert front.shape[-1] == 1
    features = front.mean(dim=2)
    system_embedding = F.linear(
        features, model.crystal_system_projection.weight, model.crystal_system_projection.bias
    )
    system_logits = _cosine(system_embedding, model.crystal_system_classifier.weight[0], scale)
    gating = (
        F.linear(system_embedding, model.gate.weight, model.gate.bias)
        + system_logits.softmax(dim=1) @ model.rule_bias
    ).softmax(dim=1)
    stages, dim = model.expert_stages, config.feature_dim
    expert_logits = []
    for k in range(config.num_experts):
        stage = k if config.expert_mode == "independent" else 0
        part = slice(stage * dim, (stage + 1) * dim)
        # The published per-expert residual block: 3-tap convolutions on the length-1 sequence.
        conv1 = torch.stack(
            [side_taps[stage][0], stages.weight1[stage], side_taps[stage][1]], dim=-1
        )
        conv2 = torch.stack(
            [side_taps[stage][2], stages.weight2[stage], side_taps[stage][3]], dim=-1
        )
        n1, n2 = stages.norm1, stages.norm2
        e = leaky(
            _bn(
                F.conv1d(front, conv1, padding=1),
                n1,
                training,
                n1.weight[part],
                n1.bias[part],
                n1.running_mean[part],
                n1.running_var[part],
            )
        )
        e = _bn(
            F.conv1d(e, conv2, padding=1),
            n2,
            training,
            n2.weight[part],
            n2.bias[part],
            n2.running_mean[part],
            n2.running_var[part],
        )
        expert_features = leaky(front + e).mean(dim=2)
        if config.expert_mode == "independent":
            projection = model.expert_projection
            embedding = F.linear(expert_features, projection.weight[k], projection.bias[k])
        else:
            embedding = F.linear(
                expert_features,
                model.crystal_system_projection.weight,
                model.crystal_system_projection.bias,
            )
        expert_logits.append(_cosine(embedding, model.expert_classifier.weight[k], scale))
    ensemble = sum(gating[:, k : k + 1] * expert_logits[k] for k in range(config.num_experts))
    return {
        "features": features,
        "crystal_system_logits": system_logits,
        "gating_weights": gating,
        "expert_logits": torch.stack(expert_logits, dim=1),
        "ensemble_logits": ensemble,
    }


def random_side_taps(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    dim, stages = model.config.feature_dim, model.expert_stages.num_stages
    return [
        [torch.randn(dim, dim, generator=generator).requires_grad_() for _ in range(4)]
        for _ in range(stages)
    ]


def loop_hierarchical(ensemble, system_logits, label_systems, mode):
    """Probabilities ``[B, C]`` by loops: the oracle of hierarchical inference."""
    batch, num_classes = ensemble.shape
    present = sorted(set(label_systems))
    probs = torch.zeros(batch, num_classes, dtype=torch.float64)
    for b in range(batch):
        sys_scores = {s: math.exp(float(system_logits[b, s])) for s in present}
        total = sum(sys_scores.values())
        if mode == "none":
            weights = [math.exp(float(ensemble[b, c])) for c in range(num_classes)]
            probs[b] = torch.tensor(weights) / sum(weights)
        elif mode == "hard":
            chosen = max(present, key=lambda s: float(system_logits[b, s]))
            weights = [
                math.exp(float(ensemble[b, c])) if label_systems[c] == chosen else 0.0
                for c in range(num_classes)
            ]
            probs[b] = torch.tensor(weights) / sum(weights)
        else:
            for c in range(num_classes):
                members = [j for j in range(num_classes) if label_systems[j] == label_systems[c]]
                within = math.exp(float(ensemble[b, c])) / sum(
                    math.exp(float(ensemble[b, j])) for j in members
                )
                probs[b, c] = sys_scores[label_systems[c]] / total * within
    return probs


# ------------------------------------------------------------------------------------------------
# Numerical equivalence with the straightforward formulation
# ------------------------------------------------------------------------------------------------

OUTPUT_KEYS = (
    "features",
    "crystal_system_logits",
    "gating_weights",
    "expert_logits",
    "ensemble_logits",
)


@pytest.mark.parametrize("expert_mode", ["independent", "shared"])
@pytest.mark.parametrize("stem", [False, True])
@pytest.mark.parametrize("conv_path", ["auto", "direct", "matmul", "plain"])
def test_training_forward_and_gradients_match_loop_reference(
    expert_mode, stem, conv_path, monkeypatch
):
    limit = {"direct": 0, "matmul": 10**9}.get(conv_path, fast_path.MATMUL_CONV_MAX_LENGTH)
    monkeypatch.setattr(fast_path, "MATMUL_CONV_MAX_LENGTH", limit)
    overrides = TINY_STEM if stem else TINY
    torch.manual_seed(0)
    model = ResNet1D_MoE(ResNet1DMoEConfig(**{**overrides, "expert_mode": expert_mode}))
    model.set_cpu_fast_path(conv_path != "plain")
    with torch.no_grad():
        model.rule_bias.normal_()  # a non-zero rule bias, so its path is exercised
    x, _ = batch()
    side_taps = random_side_taps(model)
    model.train()
    ours = model(x)
    reference = loop_forward(model, x, training=True, side_taps=side_taps)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(
            getattr(ours, key), reference[key], rtol=1e-4, atol=1e-4, msg=key
        )

    generator = torch.Generator().manual_seed(3)
    weights = {key: torch.randn(reference[key].shape, generator=generator) for key in OUTPUT_KEYS}
    params = [p for p in model.parameters() if p.requires_grad]
    ours_grads = torch.autograd.grad(
        sum((getattr(ours, k) * w).sum() for k, w in weights.items()), params, allow_unused=True
    )
    flat_taps = [t for taps in side_taps for t in taps]
    reference_grads = torch.autograd.grad(
        sum((reference[k] * w).sum() for k, w in weights.items()),
        params + flat_taps,
        allow_unused=True,
    )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    largest = max(g.abs().max() for g in reference_grads[: len(params)] if g is not None)
    for name, mine, theirs in zip(names, ours_grads, reference_grads[: len(params)], strict=True):
        if theirs is None:
            assert mine is None or not mine.any(), name
            continue
        # Gradients reach ~1e3 and some are sums that nearly cancel (the input BatchNorm's scale
        # is normalised away by the next BatchNorm): tolerance relative to the tensor's largest
        # entry, with a floor relative to the largest gradient of the model.
        tolerance = 1e-4 * theirs.abs().max() + 1e-6 * largest
        assert (mine - theirs).abs().max() <= tolerance, name
    # The published stage's side taps only ever multiply zero padding: they never get a gradient.
    for tap_grad in reference_grads[len(params) :]:
        assert tap_grad is None or not tap_grad.any()


@pytest.mark.parametrize("expert_mode", ["independent", "shared"])
@pytest.mark.parametrize("stem", [False, True])
def test_eval_paths_match_loop_reference(expert_mode, stem):
    overrides = TINY_STEM if stem else TINY
    torch.manual_seed(0)
    model = ResNet1D_MoE(ResNet1DMoEConfig(**{**overrides, "expert_mode": expert_mode}))
    model.train()
    for seed in range(3):  # non-trivial running statistics
        model(batch(seed=seed)[0] * (seed + 1))
    model.eval()
    x, _ = batch(seed=7)
    reference = loop_forward(model, x, training=False, side_taps=random_side_taps(model))
    regular = model(x)  # autograd on: the unfolded path
    with torch.no_grad():
        folded = model(x)  # BatchNorm folded into cached weights
        model.set_cpu_fast_path(False)
        plain = model(x)  # the blocks' plain forward
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(regular[key], reference[key], rtol=1e-4, atol=1e-4, msg=key)
        torch.testing.assert_close(folded[key], reference[key], rtol=1e-4, atol=1e-4, msg=key)
        torch.testing.assert_close(plain[key], reference[key], rtol=1e-4, atol=1e-4, msg=key)


def test_inference_cache_follows_parameter_changes():
    model = tiny_model().eval()
    x, labels = batch()
    with torch.no_grad():
        before = model(x).logits
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(x, labels=labels).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after_step = model(x).logits
    assert not torch.allclose(before, after_step)
    torch.testing.assert_close(after_step, model(x).logits.detach(), rtol=1e-5, atol=1e-5)
    fresh = tiny_model(seed=5).eval()
    with torch.no_grad():
        fresh(x)  # fill the cache, then overwrite every tensor in place
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh(x).logits, after_step, rtol=1e-5, atol=1e-5)
    fresh.train()
    assert all(block.inference_weights.value is None for block in fresh.resnet1d_moe.blocks)


def test_hierarchical_modes_against_loops():
    generator = torch.Generator().manual_seed(0)
    label_systems = cryst.sg_to_sys_map()
    ensemble = 5 * torch.randn(5, 230, generator=generator)
    system_logits = 3 * torch.randn(5, 7, generator=generator)
    for mode in ("soft", "hard", "none"):
        logits = hierarchical_space_group_logits(ensemble, system_logits, label_systems, mode)
        expected = loop_hierarchical(ensemble, system_logits, label_systems.tolist(), mode)
        torch.testing.assert_close(logits.double().softmax(dim=1), expected, rtol=1e-5, atol=1e-7)
    soft = hierarchical_space_group_logits(ensemble, system_logits, label_systems, "soft")
    torch.testing.assert_close(soft.exp().sum(dim=1), torch.ones(5))  # log-probabilities
    hard = hierarchical_space_group_logits(ensemble, system_logits, label_systems, "hard")
    predicted_system = system_logits.argmax(dim=1)
    assert torch.equal(label_systems[hard.argmax(dim=1)], predicted_system)
    outside = label_systems[None, :] != predicted_system[:, None]
    assert torch.isfinite(hard).all() and (hard.softmax(dim=1)[outside] == 0).all()
    assert torch.equal(
        hierarchical_space_group_logits(ensemble, system_logits, label_systems, "none"), ensemble
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_hard_mask_is_dtype_safe(dtype):
    ensemble = torch.randn(3, 230).to(dtype)
    hard = hierarchical_space_group_logits(
        ensemble, torch.randn(3, 7).to(dtype), cryst.sg_to_sys_map(), "hard"
    )
    assert hard.dtype == dtype and torch.isfinite(hard).all()
    assert torch.isfinite(hard.float().log_softmax(dim=1)[hard > torch.finfo(dtype).min]).all()


def test_hierarchy_on_a_label_subset_ignores_absent_systems():
    label_systems = torch.tensor([1, 1, 6, 6, 6])  # only monoclinic and cubic labels
    ensemble = torch.randn(4, 5)
    system_logits = torch.randn(4, 7)
    system_logits[:, 3] = 50.0  # tetragonal has no label: it must not swallow the probability
    for mode in ("soft", "hard"):
        probs = hierarchical_space_group_logits(
            ensemble, system_logits, label_systems, mode
        ).softmax(dim=1)
        expected = loop_hierarchical(ensemble, system_logits, label_systems.tolist(), mode)
        torch.testing.assert_close(probs.double(), expected, rtol=1e-5, atol=1e-7)


def test_model_logits_apply_the_configured_hierarchy():
    x, _ = batch()
    outputs = {}
    for mode in ("soft", "hard", "none"):
        model = tiny_model(hierarchical_inference=mode).eval()
        with torch.no_grad():
            outputs[mode] = model(x)
    ensemble, systems = outputs["none"].ensemble_logits, outputs["none"].crystal_system_logits
    for mode, out in outputs.items():
        torch.testing.assert_close(out.ensemble_logits, ensemble)
        torch.testing.assert_close(
            out.logits,
            hierarchical_space_group_logits(ensemble, systems, cryst.sg_to_sys_map(), mode),
        )


# ------------------------------------------------------------------------------------------------
# Shapes, gradients, determinism, precision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["small", "base", "reference"])
@pytest.mark.parametrize("expert_mode", ["independent", "shared"])
def test_output_shapes_of_every_preset(preset, expert_mode):
    torch.manual_seed(0)
    model = ResNet1D_MoE(ResNet1DMoEConfig.from_preset(preset, expert_mode=expert_mode)).eval()
    config = model.config
    x = torch.rand(2, 1, config.num_points)  # [B, 1, L] is accepted too
    with torch.no_grad():
        out = model(x)
    k, d = config.num_experts, config.feature_dim
    assert out.logits.shape == out.ensemble_logits.shape == (2, 230)
    assert out.crystal_system_logits.shape == (2, 7)
    assert out.expert_logits.shape == (2, k, 230)
    assert out.gating_weights.shape == (2, k)
    assert out.features.shape == (2, d)
    assert out.loss is None and out.loss_components is None
    torch.testing.assert_close(out.gating_weights.sum(dim=1), torch.ones(2))
    trunk = model.resnet1d_moe(x)
    assert trunk.pooler_output.shape == (2, d)
    assert trunk.last_hidden_state.shape == (2, d, config.block_lengths()[-1][1])


def test_trunk_hidden_states_and_tuple_outputs():
    model = tiny_model(**TINY_STEM).eval()
    x, _ = batch(3)
    with torch.no_grad():
        trunk = model.resnet1d_moe(x, output_hidden_states=True)
        as_tuple = model(x, return_dict=False)
    widths = [model.config.stem_channels, *model.config.hidden_sizes]
    lengths = [inp for inp, _ in model.config.block_lengths()] + [
        model.config.block_lengths()[-1][1]
    ]
    assert [tuple(h.shape) for h in trunk.hidden_states] == [
        (3, w, n) for w, n in zip(widths, lengths, strict=True)
    ]
    assert torch.equal(trunk.hidden_states[-1], trunk.last_hidden_state)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (3, 230)


def test_reference_parameter_count():
    """The published 81 M parameters minus the 33.5 M side taps that never train (and the unused
    cRT classifiers), plus the loss centres: about 47.6 M."""
    with torch.device("meta"):
        model = ResNet1D_MoE(ResNet1DMoEConfig())
    total = sum(p.numel() for p in model.parameters())
    side_taps = 8 * 2 * 2 * 1024 * 1024  # per expert, two convolutions, two side taps
    assert abs(total - (81_000_000 - side_taps)) < 0.5e6, total


@pytest.mark.parametrize("expert_mode", ["independent", "shared"])
def test_every_trainable_parameter_gets_a_gradient(expert_mode):
    model = tiny_model(expert_mode=expert_mode).train()
    x, labels = batch(8)
    out = model(x, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert set(out.loss_components) >= {"loss_dol", "loss_col", "loss_sys", "loss_sg", "loss_reg"}
    assert all(not v.requires_grad for v in out.loss_components.values())


def test_seeded_determinism():
    x, labels = batch(8)
    results = []
    for _ in range(2):
        model = tiny_model(seed=123).train()
        out = model(x, labels=labels)
        out.loss.backward()
        results.append(
            (model.state_dict(), out.loss.detach(), [p.grad.clone() for p in model.parameters()])
        )
    (state_a, loss_a, grads_a), (state_b, loss_b, grads_b) = results
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_bf16_autocast_close_to_fp32_and_finite():
    model = tiny_model().train()
    x, labels = batch(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, labels=labels)
    out.loss.backward()
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        reference = model(x)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                low = model(x)
            # Cosine logits are scaled by 30: a few tenths is bf16's rounding, not an error.
            torch.testing.assert_close(
                low.ensemble_logits, reference.ensemble_logits, rtol=0.05, atol=0.5
            )
            torch.testing.assert_close(
                low.gating_weights, reference.gating_weights, rtol=0.05, atol=0.02
            )


def test_eval_batch_of_one_and_training_batch_of_one():
    model = tiny_model().eval()
    x, _ = batch(3)
    with torch.no_grad():
        single = model(x[:1])
        full = model(x)
    torch.testing.assert_close(single.logits, full.logits[:1], rtol=1e-5, atol=1e-5)
    model.train()
    with pytest.raises(ValueError, match="batch of 1 in training mode"):
        model(x[:1], labels=torch.tensor([3]))


@pytest.mark.parametrize(
    ("inputs", "labels", "error", "match"),
    [
        (torch.rand(2, 63), None, ValueError, "num_points=64"),
        (torch.rand(2, 2, 64), None, ValueError, r"\[batch, 64\]"),
        (torch.rand(0, 64), None, ValueError, "empty"),
        (torch.tensor([[float("nan")] * 64] * 2), None, ValueError, "NaN or inf"),
        (torch.tensor([[float("inf")] * 64] * 2), None, ValueError, "NaN or inf"),
        (torch.rand(2, 64), torch.tensor([0, 230]), ValueError, r"0\.\.229"),
        (torch.rand(2, 64), torch.tensor([-1, 3]), ValueError, r"0\.\.229"),
        (torch.rand(2, 64), torch.tensor([1, 2, 3]), ValueError, "labels must be"),
        (torch.rand(2, 64), torch.tensor([1.0, 2.0]), TypeError, "integer"),
        ([[0.0] * 64] * 2, None, TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(inputs, labels, error, match):
    model = tiny_model().train()
    with pytest.raises(error, match=match):
        model(inputs, labels=labels)


def test_validation_can_be_turned_off():
    model = tiny_model(validate_inputs=False).eval()
    with torch.no_grad():
        out = model(torch.full((2, 64), float("nan")))
    assert torch.isnan(out.logits).all()


def test_value_checks_can_be_paused_and_come_back():
    model = tiny_model().train()
    nan_batch = torch.full((2, 64), float("nan"))
    checkers = [m for m in model.modules() if isinstance(getattr(m, "validate", None), bool)]
    assert model.hard_negative_miner in checkers  # the loss leaves label checks to the forward
    with (
        model.value_checks_disabled(),
        model.value_checks_disabled(),
    ):  # nested: restored once, fully
        with torch.no_grad():
            assert torch.isnan(model(nan_batch).logits).all()
        assert not any(m.validate for m in checkers)
    assert model.hard_negative_miner.validate and not model._skip_value_checks
    with pytest.raises(RuntimeError, match="inside"), model.value_checks_disabled():
        raise RuntimeError("inside")
    with pytest.raises(ValueError, match="NaN or inf"):
        model(nan_batch)
    with pytest.raises(ValueError, match=r"0\.\.229"):
        model(torch.rand(2, 64), labels=torch.tensor([0, 230]))
    assert (
        tiny_model(validate_inputs=False).hard_negative_miner.validate is False
    )  # the config still decides


# ------------------------------------------------------------------------------------------------
# Saving, loading, Auto classes, remote code
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def trained_folder(tmp_path):
    """A tiny model after one training step and a miner update, saved; with its eval logits."""
    model = tiny_model().train()
    x, labels = batch(8)
    out = model(x, labels=labels)
    out.loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.update_hard_negative_miner(out.features, out.logits, labels)
    model.eval()
    with torch.no_grad():
        logits = model(x).logits
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    return folder, model, x, logits


def _broken_copy(folder, name, tmp_path, break_it):
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    break_it(copy)
    return copy


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    ("name", "break_it", "match"),
    [
        (
            "weights_only",
            lambda f: (f / "config.json").unlink(),
            r"weights_only is not a checkpoint folder: it has no config\.json",
        ),
        (
            "truncated",
            lambda f: (f / "model.safetensors").write_bytes(
                (f / "model.safetensors").read_bytes()[:100]
            ),
            r"truncated/model\.safetensors is not a readable safetensors file",
        ),
        (
            "empty",
            lambda f: (f / "model.safetensors").write_bytes(b""),
            r"empty/model\.safetensors is not a readable safetensors file",
        ),
        (
            "as_list",
            lambda f: (f / "config.json").write_text("[1, 2]"),
            r"as_list/config\.json must hold a JSON object",
        ),
        (
            "fewer_experts",
            lambda f: _edit_config(f, num_experts=2, tail_expert_ids=[1]),
            (
                r"fewer_experts do not fit its config.*gate\.weight: "
                r"checkpoint \[4, 6\], config \[2, 6\]"
            ),
        ),
    ],
)
def test_from_pretrained_names_what_is_wrong_with_a_folder(
    trained_folder, tmp_path, name, break_it, match
):
    # Each used to raise transformers' or safetensors' own error (RuntimeError, SafetensorError,
    # ...).
    broken = _broken_copy(trained_folder[0], name, tmp_path, break_it)
    with pytest.raises(ValueError, match=match):
        ResNet1D_MoE.from_pretrained(broken)


def test_from_pretrained_refuses_a_file(trained_folder):
    with pytest.raises(ValueError, match=r"model\.safetensors is a file: a checkpoint is a folder"):
        ResNet1D_MoE.from_pretrained(trained_folder[0] / "model.safetensors")


def test_save_and_reload_reproduce_logits_and_miner_state(trained_folder):
    folder, model, x, logits = trained_folder
    assert {
        "config.json",
        "model.safetensors",
        "modeling_resnet1d_moe.py",
        "configuration_resnet1d_moe.py",
        "loss_resnet1d_moe.py",
    } <= {p.name for p in folder.iterdir()}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"}
    stored = load_file(folder / "model.safetensors")
    assert stored["hard_negative_miner.prototypes"].dtype == torch.float32
    for loader in (ResNet1D_MoE, AutoModelForSequenceClassification):
        loaded, info = loader.from_pretrained(folder, output_loading_info=True)
        assert type(loaded) is ResNet1DMoEForSpaceGroupClassification and not loaded.training
        assert not info["missing_keys"] and not info["unexpected_keys"]
        with torch.no_grad():
            assert torch.equal(loaded(x).logits, logits)
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
            assert loaded.state_dict()[name].dtype == tensor.dtype, name
        # Non-persistent buffers are rebuilt, not left as uninitialised memory.
        assert torch.equal(loaded.label_crystal_systems, cryst.sg_to_sys_map())
        assert torch.equal(loaded.physmoe_loss.rule_matrix, cryst.rule_similarity_matrix())
    trunk, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert isinstance(trunk, ResNet1DMoEModel) and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(trunk(x).pooler_output, model(x).features)


def test_checkpoint_without_head_and_miner_keys_initialises_them(trained_folder):
    folder, model, *_ = trained_folder
    state = load_file(folder / "model.safetensors")
    kept = {k: v.contiguous().clone() for k, v in state.items() if k.startswith("resnet1d_moe.")}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    torch.manual_seed(0)
    loaded, info = ResNet1D_MoE.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set(state) - set(kept)
    assert {
        "hard_negative_miner.prototypes",
        "hard_negative_miner.confusion_matrix",
        "rule_bias",
    } <= info["missing_keys"]
    # Initialised as documented, not left as uninitialised memory.
    assert not loaded.hard_negative_miner.prototypes.any()
    assert not loaded.hard_negative_miner.confusion_matrix.any()
    assert not loaded.rule_bias.any()
    stages = loaded.expert_stages
    assert torch.equal(stages.norm1.running_var, torch.ones_like(stages.norm1.running_var))
    assert not stages.norm2.running_mean.any() and not stages.norm2.num_batches_tracked.any()
    assert loaded.expert_classifier.weight.abs().max() <= 1.0
    bound = 1 / math.sqrt(loaded.config.feature_dim)
    assert loaded.crystal_system_projection.weight.abs().max() <= bound
    assert 0.05 < loaded.physmoe_loss.center_loss.centers.std() < 0.2  # randn * 0.1
    std = stages.weight1.std().item()
    assert 0.5 < std * math.sqrt(loaded.config.feature_dim / 2) < 2.0  # Kaiming normal
    assert torch.equal(
        loaded.resnet1d_moe.blocks[1].conv1.weight, model.resnet1d_moe.blocks[1].conv1.weight
    )


def test_bf16_loading_keeps_the_miner_and_centres_fp32(trained_folder):
    folder, model, x, logits = trained_folder
    loaded = ResNet1D_MoE.from_pretrained(folder, dtype=torch.bfloat16)
    assert loaded.resnet1d_moe.blocks[0].conv1.weight.dtype == torch.bfloat16
    assert loaded.hard_negative_miner.prototypes.dtype == torch.float32
    assert loaded.hard_negative_miner.confusion_matrix.dtype == torch.float32
    assert torch.equal(loaded.hard_negative_miner.prototypes, model.hard_negative_miner.prototypes)
    assert loaded.physmoe_loss.center_loss.centers.dtype == torch.float32
    with torch.no_grad():
        out = loaded(x)
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(
        out.logits.softmax(dim=1), logits.softmax(dim=1), rtol=0.1, atol=0.05
    )


def test_loading_with_another_label_set(trained_folder):
    folder, model, x, _ = trained_folder
    id2label = {
        0: "P1 (1)",
        1: "P2_1/c (14)",
        2: "Pnma (62)",
        3: "Fm-3m (225)",
        4: "P6_3/mmc (194)",
    }
    loaded, info = ResNet1D_MoE.from_pretrained(
        folder,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True,
        output_loading_info=True,
    )
    mismatched = {key for key, *_ in info["mismatched_keys"]}
    assert {
        "expert_classifier.weight",
        "hard_negative_miner.prototypes",
        "hard_negative_miner.confusion_matrix",
    } <= mismatched
    assert loaded.expert_classifier.weight.shape == (4, 5, 6)
    assert (
        not loaded.hard_negative_miner.prototypes.any()
        and loaded.hard_negative_miner.prototypes.shape == (5, 8)
    )
    assert loaded.label_crystal_systems.tolist() == [0, 1, 2, 6, 5]
    index = [0, 13, 61, 224, 193]
    torch.testing.assert_close(
        loaded.physmoe_loss.rule_matrix, cryst.rule_similarity_matrix()[index][:, index]
    )
    assert torch.equal(
        loaded.resnet1d_moe.blocks[2].conv1.weight, model.resnet1d_moe.blocks[2].conv1.weight
    )
    loaded.train()
    out = loaded(x, labels=torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]))
    assert out.logits.shape == (8, 5) and torch.isfinite(out.loss)


def test_unknown_label_set_needs_space_groups():
    with pytest.raises(ValueError, match="label_space_groups"):
        tiny_model(num_labels=5)
    model = tiny_model(num_labels=5, hierarchical_inference="none", loss_preset="cross_entropy")
    assert model(batch(2)[0]).logits.shape == (2, 5)


def test_trainer_sees_three_predictions_and_keeps_dividing_the_loss(tmp_path):
    model = tiny_model()
    x, labels = batch(6)

    class Patterns(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return {"input_values": x[i], "labels": labels[i]}

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True
    )
    trainer = Trainer(model=model, args=args, eval_dataset=Patterns())
    assert trainer.model_accepts_loss_kwargs is False
    prediction = trainer.predict(Patterns())
    logits, ensemble, systems = prediction.predictions
    assert logits.shape == ensemble.shape == (6, 230) and systems.shape == (6, 7)
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).logits.numpy(), rtol=1e-5, atol=1e-5)
    assert np.isfinite(prediction.metrics["test_loss"])


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPhysmoe(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "physmoe" or name.startswith("physmoe."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockPhysmoe())
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    folder, io = sys.argv[1], torch.load(sys.argv[2])
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        same = torch.equal(model(io["x"]).logits, io["logits"])
    miner = sorted(k for k in model.state_dict() if k.startswith("hard_negative_miner"))
    miner_equal = torch.equal(model.hard_negative_miner.prototypes, io["prototypes"])
    model.train()
    try:
        model(io["x"], labels=torch.zeros(len(io["x"]), dtype=torch.long))
        training_error = None
    except ImportError as error:
        training_error = str(error)
    trunk = AutoModel.from_pretrained(folder, trust_remote_code=True)
    print(json.dumps({
        "same_logits": same, "miner_keys": miner, "miner_equal": miner_equal,
        "class": type(model).__name__,
        "training_error": training_error, "trunk": type(trunk).__name__,
        "physmoe_imported": any(name.startswith("physmoe") for name in sys.modules),
    }))
    """
)


def test_remote_code_loads_without_physmoe(trained_folder, tmp_path):
    folder, model, x, logits = trained_folder
    copy = tmp_path / "copied"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    torch.save(
        {"x": x, "logits": logits, "prototypes": model.hard_negative_miner.prototypes},
        tmp_path / "io.pt",
    )
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = ""
    result = subprocess.run(
        [sys.executable, str(tmp_path / "remote.py"), str(copy), str(tmp_path / "io.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "same_logits": True,
        "miner_keys": ["hard_negative_miner.confusion_matrix", "hard_negative_miner.prototypes"],
        "miner_equal": True,
        "class": "ResNet1DMoEForSpaceGroupClassification",
        "training_error": report["training_error"],
        "trunk": "ResNet1DMoEModel",
        "physmoe_imported": False,
    }
    assert "needs the physmoe package" in report["training_error"]


# ------------------------------------------------------------------------------------------------
# The benchmark's straightforward model
# ------------------------------------------------------------------------------------------------


def _load_benchmark():
    return load_script("benchmark_speed")


def test_benchmark_straightforward_model_computes_the_same_function():
    benchmark = _load_benchmark()
    config = tiny_config(num_experts=8, tail_expert_ids=[4, 5, 6, 7], projection_dim=32)
    torch.manual_seed(0)
    model = ResNet1D_MoE(config).eval()
    plain = benchmark.StraightforwardResNet1DMoE(config).eval()
    plain.load_from(model)
    x, _ = batch(4)
    with torch.no_grad():
        ours, theirs = model(x), plain(x)
    torch.testing.assert_close(
        theirs["ensemble_logits"], ours.ensemble_logits, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        torch.stack(theirs["expert_logits"], dim=1), ours.expert_logits, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        theirs["sys_logits"], ours.crystal_system_logits, rtol=1e-4, atol=1e-4
    )
    # Its hard mask equals our "hard" mode.
    hard = hierarchical_space_group_logits(
        ours.ensemble_logits, ours.crystal_system_logits, cryst.sg_to_sys_map(), "hard"
    )
    torch.testing.assert_close(
        theirs["logits"].softmax(dim=1), hard.softmax(dim=1), rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_benchmark_quick_run_prints_the_table(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "benchmark_speed.py"),
            "--quick",
            "--threads",
            "1",
            "--json",
            str(tmp_path / "b.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| cpu | straightforward |" in result.stdout and "allocator:" in result.stdout
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert {(r["model"], r["precision"]) for r in rows} == {
        ("ResNet1D_MoE", "fp32"),
        ("ResNet1D_MoE", "bf16"),
        ("straightforward", "fp32"),
    }
    assert all(r["train_step_s"] > 0 and r["speedup_train"] > 0 for r in rows)
