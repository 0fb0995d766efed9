"""The CPU fast path computes what the blocks' plain ``forward`` computes, and runs when the rule
says so. (Both paths are also checked against the loop oracle in test_modeling_resnet1d_moe.py.)"""

from __future__ import annotations

import copy

import pytest
import torch

from physmoe.models.resnet1d_moe import fast_path_resnet1d_moe as fast_path
from tiny_models import TINY_STEM, tiny_model

# A stem, padded max and avg pooling and a block without pooling: every branch of the fast path.
EVERY_BRANCH = dict(
    TINY_STEM, pool_types=["max", "avg", "max", "avg", "none"], pool_paddings=[0, 1, 1, 0, 0]
)
VARIANTS = pytest.mark.parametrize(
    "overrides",
    [{}, EVERY_BRANCH, {"expert_mode": "independent"}],
    ids=["tiny", "stem", "independent"],
)
KEYS = (
    "features",
    "crystal_system_logits",
    "gating_weights",
    "expert_logits",
    "ensemble_logits",
    "logits",
)


def _inputs(size: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(size, 64, generator=generator), torch.randint(
        0, 230, (size,), generator=generator
    )


def _pair(**overrides):
    fast = tiny_model(**overrides)
    plain = copy.deepcopy(fast)
    plain.set_cpu_fast_path(False)
    return fast, plain


@VARIANTS
def test_training_step_is_the_same_on_both_paths(overrides):
    fast, plain = _pair(**overrides)
    x, labels = _inputs()
    outputs = [model.train()(x, labels=labels) for model in (fast, plain)]
    for key in KEYS:
        torch.testing.assert_close(
            getattr(outputs[0], key), getattr(outputs[1], key), rtol=1e-4, atol=1e-4, msg=key
        )
    for output in outputs:
        output.loss.backward()
    largest = max(p.grad.abs().max() for p in plain.parameters() if p.grad is not None)
    for (name, mine), theirs in zip(fast.named_parameters(), plain.parameters(), strict=True):
        if theirs.grad is None:
            assert mine.grad is None or not mine.grad.any(), name
            continue
        # Some gradients are sums that nearly cancel (the input BatchNorm's scale is normalised
        # away by the next BatchNorm): a floor relative to the model's largest gradient.
        tolerance = 1e-4 * theirs.grad.abs().max() + 1e-6 * largest
        assert (mine.grad - theirs.grad).abs().max() <= tolerance, name
    # BatchNorm running statistics are updated alike.
    for (name, mine), theirs in zip(fast.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=1e-5, atol=1e-6, msg=name)


@VARIANTS
def test_inference_is_the_same_on_both_paths(overrides):
    fast, plain = _pair(**overrides)
    for seed in range(3):  # non-trivial running statistics
        fast.train()(_inputs(seed=seed)[0] * (seed + 1))
    plain.load_state_dict(fast.state_dict())
    fast.eval(), plain.eval()
    x, _ = _inputs(seed=7)
    with torch.no_grad():
        folded, reference = fast(x), plain(x)
        trunk_fast = fast.resnet1d_moe(x, output_hidden_states=True)
        trunk_plain = plain.resnet1d_moe(x, output_hidden_states=True)
    for key in KEYS:
        torch.testing.assert_close(folded[key], reference[key], rtol=1e-4, atol=1e-4, msg=key)
    assert len(trunk_fast.hidden_states) == len(trunk_plain.hidden_states)
    for mine, theirs in zip(trunk_fast.hidden_states, trunk_plain.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        trunk_fast.last_hidden_state, trunk_plain.last_hidden_state, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        trunk_fast.pooler_output, trunk_plain.pooler_output, rtol=1e-4, atol=1e-5
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low_fast, low_plain = fast(x), plain(x)
    # Cosine logits are scaled by 30: a few tenths is bf16 rounding (different summation orders).
    torch.testing.assert_close(
        low_fast.ensemble_logits, low_plain.ensemble_logits, rtol=0.05, atol=0.5
    )
    torch.testing.assert_close(
        low_fast.gating_weights, low_plain.gating_weights, rtol=0.05, atol=0.02
    )


def test_the_rule_picks_the_path(monkeypatch):
    calls = []
    real_encode = fast_path.encode
    monkeypatch.setattr(
        "physmoe.models.resnet1d_moe.modeling_resnet1d_moe._fast_path_encode",
        lambda *args, **kwargs: calls.append(1) or real_encode(*args, **kwargs),
    )
    model = tiny_model().eval()
    x, _ = _inputs()
    with torch.no_grad():
        model(x)
        assert len(calls) == 1  # CPU input: the fast path
        model.set_cpu_fast_path(False)
        model(x)
        assert len(calls) == 1 and not model.resnet1d_moe.cpu_fast_path
        model.set_cpu_fast_path(True)
        assert fast_path.applies(model, x)
        assert not fast_path.applies(model, torch.empty(1, device="meta"))  # other devices: plain
    fresh = tiny_model()
    fresh.resnet1d_moe.cpu_fast_path = False
    assert fresh.cpu_fast_path and not fast_path.applies(fresh.resnet1d_moe, x)


def test_folded_weights_are_cached_per_module_and_dropped_in_training():
    model = tiny_model().eval()
    x, _ = _inputs()
    with torch.no_grad():
        model(x)
    block = model.resnet1d_moe.blocks[0]
    cached = block.inference_weights.value
    assert cached is not None and "inference_weights" not in block.state_dict()
    with torch.no_grad():
        model(x)
    assert block.inference_weights.value is cached  # parameters unchanged: reused
    model.train()
    assert all(
        module.__dict__["inference_weights"].value is None
        for module in model.modules()
        if "inference_weights" in module.__dict__
    )
