"""The spec's loss components against loop oracles, gradchecks, degenerate batches, properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from physmoe.crystallography import rule_similarity_matrix, sg_to_sys_map
from physmoe.loss import (
    CenterRegularizationLoss,
    HierarchicalLoss,
    ICLMoELoss,
    PhysicsContrastiveLoss,
)

from . import center_oracle, contrastive_oracle, hierarchical_oracle, icl_oracle

PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)
RULE = rule_similarity_matrix()
SG_TO_SYS = sg_to_sys_map()
# Classes with rule-similar partners above 0.8 and some that are not (0-based labels).
MIXED_CLASSES = torch.tensor([0, 1, 2, 5, 9, 3, 10, 13, 61, 224, 225, 228])


def random_rule_matrix(num_classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.rand(num_classes, num_classes, generator=generator)
    matrix = (matrix + matrix.T) / 2
    matrix.fill_diagonal_(1.0)
    return matrix


# ---------------------------------------------------------------------------------------------
# PhysicsContrastiveLoss
# ---------------------------------------------------------------------------------------------


def test_contrastive_matches_loop_with_real_rule_matrix():
    torch.manual_seed(0)
    labels = MIXED_CLASSES[torch.randint(0, len(MIXED_CLASSES), (24,))]
    features = torch.randn(24, 16)
    got = PhysicsContrastiveLoss()(features, labels, RULE)
    assert float(got) == pytest.approx(
        contrastive_oracle(features, labels, RULE), rel=1e-4, abs=1e-5
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_contrastive_matches_loop_with_random_rule_matrix(seed):
    torch.manual_seed(seed)
    rule = random_rule_matrix(6, seed)
    labels = torch.randint(0, 6, (10,))
    features = torch.randn(10, 5)
    loss = PhysicsContrastiveLoss(temperature=0.5, rule_threshold=0.6)
    expected = contrastive_oracle(features, labels, rule, temperature=0.5, threshold=0.6)
    assert float(loss(features, labels, rule)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    positive_mask = (rule > 0.6) | torch.eye(6, dtype=torch.bool)
    assert float(loss(features, labels, rule, positive_class_mask=positive_mask)) == pytest.approx(
        expected, rel=1e-5, abs=1e-6
    )


def test_contrastive_degenerate_batches_are_finite():
    loss = PhysicsContrastiveLoss()
    for features, labels in (
        (torch.randn(1, 8), torch.tensor([13])),  # batch of one: no pairs
        (torch.randn(6, 8), torch.full((6,), 13)),  # one class: no negatives
        (torch.randn(4, 8), torch.tensor([0, 50, 100, 200])),  # no positives at all
        (torch.zeros(3, 8), torch.tensor([13, 13, 100])),  # zero features
    ):
        features.requires_grad_()
        value = loss(features, labels, RULE)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(features.grad).all()
        expected = contrastive_oracle(features.detach(), labels, RULE)
        assert float(value.detach()) == pytest.approx(expected, abs=1e-5)
    assert float(loss(torch.randn(6, 8), torch.full((6,), 13), RULE)) == 0.0


def test_contrastive_anchor_without_positive_contributes_nothing():
    torch.manual_seed(4)
    features = torch.randn(5, 8)
    labels = torch.tensor([13, 13, 100, 100, 200])  # class 200 has no rule-similar partner here
    assert not bool((RULE[199, [12, 99]] > 0.8).any())
    value = float(PhysicsContrastiveLoss()(features, labels, RULE))
    # The oracle averages over the four anchors that have positives; counting the lonely one
    # as a zero term would give 4/5 of that.
    expected = contrastive_oracle(features, labels, RULE)
    assert value == pytest.approx(expected, rel=1e-5)
    assert value != pytest.approx(expected * 4 / 5, rel=1e-3)


def test_contrastive_refuses_integer_features_and_non_tensor_rule_matrix():
    loss = PhysicsContrastiveLoss()
    labels = torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match="features must be floating point, got torch.int64"):
        loss(torch.ones(3, 4, dtype=torch.long), labels, RULE)
    with pytest.raises(TypeError, match="rule_matrix must be a torch.Tensor, got ndarray"):
        loss(torch.randn(3, 4), labels, RULE.numpy())


def test_contrastive_gradcheck():
    torch.manual_seed(5)
    rule = random_rule_matrix(4, 5).double()
    features = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 2, 3, 0])
    loss = PhysicsContrastiveLoss(temperature=0.5, rule_threshold=0.7)
    assert torch.autograd.gradcheck(lambda f: loss(f, labels, rule), (features,))


def test_contrastive_reduced_precision_close_to_fp32():
    torch.manual_seed(6)
    labels = MIXED_CLASSES[torch.randint(0, len(MIXED_CLASSES), (32,))]
    features = torch.randn(32, 64)
    loss = PhysicsContrastiveLoss()
    reference = loss(features, labels, RULE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss(features, labels, RULE)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=1e-6, atol=1e-6)
    for dtype, tolerance in ((torch.bfloat16, 5e-2), (torch.float16, 5e-3)):
        low = loss(features.to(dtype), labels, RULE)
        assert torch.isfinite(low)
        torch.testing.assert_close(low, reference, rtol=tolerance, atol=tolerance)


@PROPERTY
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_contrastive_properties(labels, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    features = torch.randn(len(labels), 4, generator=generator, requires_grad=True)
    rule = random_rule_matrix(6, seed)
    loss = PhysicsContrastiveLoss(temperature=0.2)
    value = loss(features, labels, rule)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(features.grad).all()
    permutation = torch.randperm(len(labels), generator=generator)
    permuted = loss(features.detach()[permutation], labels[permutation], rule)
    torch.testing.assert_close(permuted, value.detach(), rtol=1e-5, atol=1e-5)
    if len(set(labels.tolist())) == 1:
        assert float(value.detach()) == 0.0  # one class: no negatives, every anchor is skipped


# ---------------------------------------------------------------------------------------------
# ICLMoELoss
# ---------------------------------------------------------------------------------------------


def test_icl_matches_loop():
    torch.manual_seed(7)
    logits = torch.randn(5, 4, 9) * 2
    gates = torch.softmax(torch.randn(5, 4), dim=1)
    labels = torch.randint(0, 9, (5,))
    loss = ICLMoELoss(num_experts=4, tail_expert_ids=[2, 3], gamma=2.0)
    dol, col = loss(logits, gates, labels)
    expected_dol, expected_col = icl_oracle(logits, gates, labels, {2, 3})
    assert float(dol) == pytest.approx(expected_dol, rel=1e-5)
    assert float(col) == pytest.approx(expected_col, rel=1e-5)
    list_dol, list_col = loss(list(logits.unbind(1)), gates, labels)
    torch.testing.assert_close((list_dol, list_col), (dol, col))


def test_icl_focal_equals_cross_entropy_at_gamma_zero_and_adjustment():
    torch.manual_seed(8)
    logits = torch.randn(6, 3, 5)
    gates = torch.softmax(torch.randn(6, 3), dim=1)
    labels = torch.randint(0, 5, (6,))
    adjustment = torch.log(torch.tensor([0.5, 0.2, 0.1, 0.15, 0.05]))
    all_tail = ICLMoELoss(3, [0, 1, 2], gamma=0.0)
    all_head = ICLMoELoss(3, [])
    torch.testing.assert_close(
        all_tail(logits, gates, labels, adjustment), all_head(logits, gates, labels, adjustment)
    )
    dol, col = all_head(logits, gates, labels, adjustment)
    expected = sum(F.cross_entropy(logits[:, k] + adjustment, labels) for k in range(3)) / 3
    torch.testing.assert_close(dol, expected)
    assert float(col) == pytest.approx(
        icl_oracle(logits, gates, labels, set(), adjustment=adjustment)[1], rel=1e-5
    )


def test_icl_ensemble_target_detached_by_default():
    torch.manual_seed(9)
    logits = torch.randn(4, 3, 6, requires_grad=True)
    gates = torch.softmax(torch.randn(4, 3), dim=1).requires_grad_()
    labels = torch.randint(0, 6, (4,))
    _, col = ICLMoELoss(3)(logits, gates, labels)
    col.backward()
    assert gates.grad is None or torch.count_nonzero(gates.grad) == 0
    gates.grad = None
    _, col = ICLMoELoss(3, detach_ensemble=False)(logits, gates, labels)
    col.backward()
    assert torch.count_nonzero(gates.grad) > 0


def test_icl_gradcheck_and_batch_of_one():
    torch.manual_seed(10)
    logits = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    gates = torch.softmax(torch.randn(3, 2, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.tensor([0, 3, 1])
    loss = ICLMoELoss(2, [1], detach_ensemble=False)
    assert torch.autograd.gradcheck(lambda x, g: loss(x, g, labels), (logits, gates))
    one = torch.randn(1, 2, 4, requires_grad=True)
    dol, col = loss(one, torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    (dol + col).backward()
    assert torch.isfinite(one.grad).all()


def test_icl_validation():
    with pytest.raises(ValueError, match="tail_expert_ids"):
        ICLMoELoss(4, [4])
    with pytest.raises(ValueError, match="tail_expert_ids"):
        ICLMoELoss(4, [1, 1])
    loss = ICLMoELoss(2)
    with pytest.raises(ValueError, match="expected 2 experts"):
        loss(torch.randn(3, 3, 5), torch.rand(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="gating_weights"):
        loss(torch.randn(3, 2, 5), torch.rand(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="0..4"):
        loss(torch.randn(3, 2, 5), torch.rand(3, 2), torch.tensor([0, 5, 1]))


# ---------------------------------------------------------------------------------------------
# HierarchicalLoss
# ---------------------------------------------------------------------------------------------


def test_hierarchical_matches_loop_with_real_map():
    torch.manual_seed(11)
    labels = torch.randint(0, 230, (12,))
    sys_logits, sg_logits = torch.randn(12, 7), torch.randn(12, 230) * 3
    loss_sys, loss_sg = HierarchicalLoss(SG_TO_SYS)(sys_logits, sg_logits, labels)
    expected_sys, expected_sg = hierarchical_oracle(sys_logits, sg_logits, labels, SG_TO_SYS)
    assert float(loss_sys) == pytest.approx(expected_sys, rel=1e-5)
    assert float(loss_sg) == pytest.approx(expected_sg, rel=1e-5)


def test_hierarchical_triclinic_and_masked_gradients():
    # Triclinic has two groups: P1 and P-1. The masked loss only sees those two logits.
    sg_logits = torch.randn(1, 230, requires_grad=True)
    _, loss_sg = HierarchicalLoss(SG_TO_SYS)(torch.randn(1, 7), sg_logits, torch.tensor([1]))
    expected = torch.logsumexp(sg_logits.detach()[0, :2], 0) - sg_logits.detach()[0, 1]
    torch.testing.assert_close(loss_sg, expected)
    loss_sg.backward()
    assert torch.count_nonzero(sg_logits.grad[0, 2:]) == 0 and torch.isfinite(sg_logits.grad).all()


def test_hierarchical_gradcheck_and_reduced_precision():
    torch.manual_seed(12)
    mapping = torch.tensor([0, 0, 1, 1, 1, 2])
    loss = HierarchicalLoss(mapping, num_systems=3)
    sys_logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    sg_logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 5, 4])
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b, labels), (sys_logits, sg_logits))
    real = HierarchicalLoss(SG_TO_SYS)
    labels = torch.randint(0, 230, (16,))
    sys32, sg32 = torch.randn(16, 7), torch.randn(16, 230) * 4
    reference = torch.stack(real(sys32, sg32, labels))
    for dtype, tolerance in ((torch.bfloat16, 3e-2), (torch.float16, 3e-3)):
        low = torch.stack(real(sys32.to(dtype), sg32.to(dtype), labels))
        assert low.dtype == torch.float32 and torch.isfinite(low).all()
        torch.testing.assert_close(low, reference, rtol=tolerance, atol=tolerance)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(torch.stack(real(sys32, sg32, labels)), reference)


@PROPERTY
@given(labels=st.lists(st.integers(0, 229), min_size=1, max_size=10), seed=st.integers(0, 2**16))
def test_hierarchical_properties(labels, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    sys_logits = torch.randn(len(labels), 7, generator=generator) * 5
    sg_logits = (torch.randn(len(labels), 230, generator=generator) * 5).requires_grad_()
    loss = HierarchicalLoss(SG_TO_SYS)
    loss_sys, loss_sg = loss(sys_logits, sg_logits, labels)
    (loss_sys + loss_sg).backward()
    assert torch.isfinite(sg_logits.grad).all()
    assert float(loss_sys.detach()) >= 0 and float(loss_sg.detach()) >= 0
    # Masking removes competitors from the softmax: never above plain cross-entropy.
    assert float(loss_sg.detach()) <= float(F.cross_entropy(sg_logits.detach(), labels)) + 1e-5
    permutation = torch.randperm(len(labels), generator=generator)
    permuted = loss(sys_logits[permutation], sg_logits.detach()[permutation], labels[permutation])
    torch.testing.assert_close(
        torch.stack(permuted), torch.stack((loss_sys, loss_sg)).detach(), rtol=1e-5, atol=1e-5
    )


def test_hierarchical_validation():
    with pytest.raises(ValueError, match="0..6"):
        HierarchicalLoss(torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="vector"):
        HierarchicalLoss(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        HierarchicalLoss(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="sys_logits"):
        HierarchicalLoss(SG_TO_SYS)(torch.randn(2, 6), torch.randn(2, 230), torch.tensor([0, 1]))


@pytest.mark.parametrize("bad", [230, -1])
def test_hierarchical_refuses_out_of_range_labels(bad):
    loss = HierarchicalLoss(SG_TO_SYS)
    with pytest.raises(ValueError, match=rf"labels must lie in 0\.\.229, found {bad}"):
        loss(torch.randn(2, 7), torch.randn(2, 230), torch.tensor([0, bad]))


# ---------------------------------------------------------------------------------------------
# CenterRegularizationLoss
# ---------------------------------------------------------------------------------------------


def plain_center_loss(features, labels, centers, rule_matrix, prototype_weight=0.5):
    """The spec's formula in plain autograd ops (gradient oracle for the fused backward)."""
    unit_centers = F.normalize(centers, dim=1)
    loss_center = (1 - (F.normalize(features, dim=1) * unit_centers[labels]).sum(1)).mean()
    weights = rule_matrix.clone()
    weights.fill_diagonal_(0)
    weights = weights / weights.sum(1, keepdim=True)
    expected = weights @ unit_centers
    return loss_center + prototype_weight * (1 - (unit_centers * expected).sum(1)).mean()


def test_center_loss_matches_loop_with_real_rule_matrix():
    torch.manual_seed(13)
    loss = CenterRegularizationLoss(230, 16, rule_matrix=RULE)
    assert (
        loss.centers.shape == (230, 16) and 0.05 < float(loss.centers.detach().std()) < 0.15
    )  # randn * 0.1
    features, labels = torch.randn(10, 16), torch.randint(0, 230, (10,))
    expected = center_oracle(features, labels, loss.centers.detach(), RULE)
    with torch.no_grad():
        assert float(loss(features, labels)) == pytest.approx(expected, rel=1e-5)
        assert float(loss(features, labels, RULE)) == pytest.approx(expected, rel=1e-5)


def test_center_loss_gradients_match_plain_autograd_and_gradcheck():
    torch.manual_seed(14)
    rule = random_rule_matrix(7, 14).double()
    loss = CenterRegularizationLoss(7, 5).double()
    features = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 6, 1, 0])
    value = loss(features, labels, rule)
    value.backward()
    centers = loss.centers.detach().clone().requires_grad_()
    features_ref = features.detach().clone().requires_grad_()
    reference = plain_center_loss(features_ref, labels, centers, rule)
    reference.backward()
    torch.testing.assert_close(value.detach(), reference.detach())
    torch.testing.assert_close(loss.centers.grad, centers.grad)
    torch.testing.assert_close(features.grad, features_ref.grad)

    def as_function(f, c):
        return torch.func.functional_call(loss, {"centers": c}, (f, labels, rule))

    assert torch.autograd.gradcheck(
        as_function, (features.detach().requires_grad_(), centers.detach().requires_grad_())
    )


def test_center_loss_degenerate_and_reduced_precision():
    torch.manual_seed(15)
    loss = CenterRegularizationLoss(230, 32, rule_matrix=RULE)
    features = torch.randn(1, 32, requires_grad=True)
    value = loss(features, torch.tensor([5]))
    value.backward()
    assert (
        torch.isfinite(value)
        and torch.isfinite(features.grad).all()
        and torch.isfinite(loss.centers.grad).all()
    )
    features = torch.randn(16, 32)
    labels = torch.randint(0, 230, (16,))
    reference = loss(features, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(features, labels), reference)
    torch.testing.assert_close(loss(features.bfloat16(), labels), reference, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(loss(features.half(), labels), reference, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="needs a rule_matrix"):
        CenterRegularizationLoss(4, 3)(torch.randn(2, 3), torch.tensor([0, 1]))


@pytest.mark.parametrize("bad", [230, -1])
def test_center_loss_refuses_out_of_range_labels(bad):
    # -1 used to pick the last centre silently.
    loss = CenterRegularizationLoss(230, 8, rule_matrix=RULE)
    with pytest.raises(ValueError, match=rf"labels must lie in 0\.\.229, found {bad}"):
        loss(torch.randn(2, 8), torch.tensor([0, bad]))
