"""Cross-entropy and Balanced-Softmax baselines against loop oracles."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from physmoe.crystallography import rule_similarity_matrix, sg_to_sys_map
from physmoe.loss import BalancedSoftmaxLossWrapper, CrossEntropyLossWrapper, build_loss

from . import log_softmax_row

CFG = SimpleNamespace(num_experts=3, tail_expert_ids=[2], feat_dim=8)


def ensemble_ce_oracle(expert_logits, gating_weights, labels, shift=None) -> float:
    """Mean over samples of -log_softmax(sum_k g_k z_k + shift)[y], summed expert by expert."""
    total = 0.0
    for b in range(len(labels)):
        logits = sum(
            float(gating_weights[b, k]) * expert_logits[b, k].double()
            for k in range(expert_logits.shape[1])
        )
        if shift is not None:
            logits = logits + shift
        total += -float(log_softmax_row(logits)[int(labels[b])])
    return total / len(labels)


def make_outputs(seed=0, batch=10, num_experts=3, num_classes=230):
    generator = torch.Generator().manual_seed(seed)
    outputs = {
        "expert_logits": torch.randn(batch, num_experts, num_classes, generator=generator) * 2,
        "gating_weights": torch.softmax(
            torch.randn(batch, num_experts, generator=generator), dim=1
        ),
    }
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return outputs, labels


def test_cross_entropy_on_gated_ensemble_matches_loop():
    outputs, labels = make_outputs()
    loss = CrossEntropyLossWrapper(CFG, rule_similarity_matrix(), sg_to_sys_map())
    total, parts = loss(outputs, {"labels": labels})
    expected = ensemble_ce_oracle(outputs["expert_logits"], outputs["gating_weights"], labels)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert set(parts) == {"loss_ce"} and not parts["loss_ce"].requires_grad
    as_list = {**outputs, "expert_logits": list(outputs["expert_logits"].unbind(1))}
    torch.testing.assert_close(loss(as_list, {"labels": labels})[0], total)


def test_single_head_needs_no_gate():
    outputs, labels = make_outputs(seed=1, num_experts=1, num_classes=12)
    total, _ = CrossEntropyLossWrapper()(
        {"expert_logits": outputs["expert_logits"]}, {"labels": labels % 12}
    )
    torch.testing.assert_close(
        total, torch.nn.functional.cross_entropy(outputs["expert_logits"][:, 0], labels % 12)
    )


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_balanced_softmax_is_ce_on_shifted_logits(tau):
    outputs, labels = make_outputs(seed=2)
    counts = torch.randint(0, 100, (230,), generator=torch.Generator().manual_seed(2)).float()
    counts[[4, 9]] = 0.0  # zero-count classes get the documented floor
    total_count = float(counts.sum())
    shift = torch.tensor(
        [tau * math.log(max(float(c) / total_count, 1e-6)) for c in counts], dtype=torch.float64
    )
    loss = build_loss(
        "balanced_softmax",
        CFG,
        rule_similarity_matrix(),
        sg_to_sys_map(),
        class_prior=counts,
        tau=tau,
    )
    total, parts = loss(outputs, {"labels": labels})
    expected = ensemble_ce_oracle(
        outputs["expert_logits"], outputs["gating_weights"], labels, shift
    )
    assert float(total) == pytest.approx(expected, rel=1e-5)
    # Probabilities and counts give the same prior.
    from_probabilities = BalancedSoftmaxLossWrapper(CFG, class_prior=counts / counts.sum(), tau=tau)
    torch.testing.assert_close(from_probabilities(outputs, {"labels": labels})[0], total)


def test_baseline_validation_and_reduced_precision():
    outputs, labels = make_outputs(seed=3)
    with pytest.raises(ValueError, match="needs class_prior"):
        BalancedSoftmaxLossWrapper(CFG)
    with pytest.raises(ValueError, match="tau"):
        BalancedSoftmaxLossWrapper(CFG, class_prior=torch.ones(230), tau=-1.0)
    loss = CrossEntropyLossWrapper(CFG, rule_similarity_matrix())
    with pytest.raises(ValueError, match="0..229"):
        loss(outputs, {"labels": torch.full((10,), 230)})
    with pytest.raises(ValueError, match="expected 3 experts"):
        loss({**outputs, "expert_logits": outputs["expert_logits"][:, :2]}, {"labels": labels})
    with pytest.raises(ValueError, match="gating_weights"):
        loss({**outputs, "gating_weights": outputs["gating_weights"][:, :2]}, {"labels": labels})
    reference, _ = loss(outputs, {"labels": labels})
    low = {k: v.bfloat16() for k, v in outputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = loss(low, {"labels": labels})
    assert total.dtype == torch.float32
    torch.testing.assert_close(total, reference, rtol=3e-2, atol=3e-2)
