"""HardNegativeMining_Proto against loops; state handling; use inside the PhysMoE wrapper."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physmoe.crystallography import rule_similarity_matrix, sg_to_sys_map
from physmoe.loss import HardNegativeMining_Proto, PhysMoELossWrapper

from . import hnm_oracle


def prototypes_oracle(prototypes, features, labels, momentum):
    """Spec 3.1.1 with a loop over the unique labels (features as given, not normalised)."""
    updated = prototypes.clone().double()
    for label in sorted(set(labels.tolist())):
        rows = [features[b].double() for b in range(len(labels)) if int(labels[b]) == label]
        mean = sum(rows) / len(rows)
        updated[label] = momentum * updated[label] + (1 - momentum) * mean
    return updated


def test_update_prototypes_matches_loop():
    torch.manual_seed(0)
    miner = HardNegativeMining_Proto(num_classes=6, feat_dim=4)
    expected = torch.zeros(6, 4, dtype=torch.float64)
    for step in range(3):
        features = torch.randn(7, 4)
        labels = torch.randint(0, 5, (7,))  # class 5 never appears
        miner.update_prototypes(features, labels)
        expected = prototypes_oracle(expected, features, labels, 0.9)
        torch.testing.assert_close(
            miner.prototypes.double(), expected, rtol=1e-5, atol=1e-6, msg=f"step {step}"
        )
    assert torch.equal(miner.prototypes[5], torch.zeros(4))
    assert miner.prototypes.dtype == torch.float32


def test_update_prototypes_by_hand_is_the_momentum_mean_of_raw_features():
    miner = HardNegativeMining_Proto(num_classes=3, feat_dim=2, momentum=0.9, k=1)
    features = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    miner.update_prototypes(features, torch.tensor([0, 0, 1]))
    # Class 0: mean([3, 4], [1, 0]) = [2, 2] -> 0.9 * 0 + 0.1 * [2, 2]; class 1: 0.1 * [0, 2].
    # (Normalising first would give 0.1 * mean([0.6, 0.8], [1, 0]) = [0.08, 0.04].)
    expected = torch.tensor([[0.2, 0.2], [0.0, 0.2], [0.0, 0.0]])
    torch.testing.assert_close(miner.prototypes, expected, rtol=0, atol=1e-7)
    miner.update_prototypes(torch.tensor([[10.0, 0.0]]), torch.tensor([0]))
    # Class 0: 0.9 * [0.2, 0.2] + 0.1 * [10, 0] = [1.18, 0.18]; the others are unchanged.
    expected = torch.tensor([[1.18, 0.18], [0.0, 0.2], [0.0, 0.0]])
    torch.testing.assert_close(miner.prototypes, expected, rtol=0, atol=1e-6)
    # The loss normalises the prototypes (spec 3.1.4 step 1): their scale does not matter.
    miner.confusion_matrix.copy_(torch.tensor([[5.0, 1.0, 0.0], [2.0, 5.0, 0.0], [0.0, 1.0, 5.0]]))
    features, labels = torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), torch.tensor([0, 1])
    loss = miner.compute_contrastive_loss(features, labels)
    hard = miner.get_hard_negative_classes(labels).tolist()
    expected_loss = hnm_oracle(features, labels, expected, hard)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    miner.prototypes.mul_(7.0)
    torch.testing.assert_close(miner.compute_contrastive_loss(features, labels), loss)


def test_update_confusion_matrix_matches_loop():
    torch.manual_seed(1)
    miner = HardNegativeMining_Proto(num_classes=5, feat_dim=2)
    expected = torch.zeros(5, 5)
    labels = torch.randint(0, 5, (20,))
    predictions = torch.randint(0, 5, (20,))
    logits = torch.randn(20, 5)
    miner.update_confusion_matrix(predictions, labels)  # the seed's positional order
    miner.update_confusion_matrix(labels=labels, predictions=logits)  # our keyword names
    for b in range(20):
        expected[int(labels[b]), int(predictions[b])] += 1
        expected[int(labels[b]), int(logits[b].argmax())] += 1
    assert torch.equal(miner.confusion_matrix, expected)


def test_positional_call_from_ported_seed_code_fills_true_by_predicted():
    # Seed code: miner.update_confusion_matrix(predicted, labels); rows true, columns predicted.
    labels = torch.tensor([0, 1, 1, 2, 2])
    predicted = torch.tensor([2, 1, 0, 2, 2])
    expected = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    miner = HardNegativeMining_Proto(num_classes=3, feat_dim=2, k=1)
    miner.update_confusion_matrix(predicted, labels)
    assert torch.equal(miner.confusion_matrix, expected)
    assert not torch.equal(miner.confusion_matrix, expected.T)
    # Class 0 was mistaken for class 2 (never the reverse): its hard negative is 2.
    assert miner.get_hard_negative_classes(torch.tensor([0])).tolist() == [[2]]
    # Every keyword spelling gives the same matrix.
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 3 - 1
    calls = (
        {"predicted": predicted, "labels": labels},
        {"labels": labels, "predictions": predicted},
        {"labels": labels, "predictions": logits},
    )
    for kwargs in calls:
        other = HardNegativeMining_Proto(num_classes=3, feat_dim=2, k=1)
        other.update_confusion_matrix(**kwargs)
        assert torch.equal(other.confusion_matrix, expected), sorted(kwargs)
    mixed = HardNegativeMining_Proto(num_classes=3, feat_dim=2, k=1)
    mixed.update_confusion_matrix(predicted, labels=labels)
    assert torch.equal(mixed.confusion_matrix, expected)


def test_update_confusion_matrix_argument_errors():
    miner = HardNegativeMining_Proto(num_classes=3, feat_dim=2, k=1)
    labels, predicted = torch.tensor([0, 1]), torch.tensor([1, 1])
    with pytest.raises(TypeError, match="both 'predicted' and its alias 'predictions'"):
        miner.update_confusion_matrix(predicted, labels, predictions=predicted)
    with pytest.raises(TypeError, match="missing predicted and labels"):
        miner.update_confusion_matrix()
    with pytest.raises(TypeError, match="missing labels"):
        miner.update_confusion_matrix(predictions=predicted)
    with pytest.raises(TypeError, match="missing predicted"):
        miner.update_confusion_matrix(labels=labels)
    # Old-order call with logits: the logits land in `labels`, a clear error names the order.
    with pytest.raises(ValueError, match=r"update_confusion_matrix\(predicted, labels\)"):
        miner.update_confusion_matrix(labels, torch.randn(2, 3))
    assert not miner.confusion_matrix.any()


def test_apply_epoch_momentum_argument_and_configured_default():
    counts = torch.tensor([[10.0, 2.0], [4.0, 20.0]])
    miner = HardNegativeMining_Proto(num_classes=2, feat_dim=2, k=1)  # momentum 0.9
    miner.confusion_matrix.copy_(counts)
    miner.apply_epoch_momentum()  # configured 0.9: counts * (1 - 0.9)
    torch.testing.assert_close(miner.confusion_matrix, torch.tensor([[1.0, 0.2], [0.4, 2.0]]))
    configured = HardNegativeMining_Proto(num_classes=2, feat_dim=2, momentum=0.75, k=1)
    configured.confusion_matrix.copy_(counts)
    configured.apply_epoch_momentum(momentum=0.9)  # the seed's call: the argument wins
    torch.testing.assert_close(configured.confusion_matrix, torch.tensor([[1.0, 0.2], [0.4, 2.0]]))
    configured.apply_epoch_momentum()  # then the configured 0.75: * 0.25
    torch.testing.assert_close(
        configured.confusion_matrix, torch.tensor([[0.25, 0.05], [0.1, 0.5]])
    )
    configured.apply_epoch_momentum(0.5)  # positional, as a number
    torch.testing.assert_close(
        configured.confusion_matrix, torch.tensor([[0.125, 0.025], [0.05, 0.25]])
    )
    for bad in (1.5, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match="momentum"):
            configured.apply_epoch_momentum(bad)
    assert configured.momentum == 0.75


def test_hard_negatives_match_loop_and_exclude_self():
    miner = HardNegativeMining_Proto(num_classes=6, feat_dim=2, k=2)
    generator = torch.Generator().manual_seed(2)
    # Distinct counts (no ties), and a dominant diagonal as in a trained model.
    counts = torch.randperm(36, generator=generator).float().view(6, 6) + torch.eye(6) * 100
    miner.confusion_matrix.copy_(counts)
    labels = torch.tensor([0, 3, 3, 5, 1])
    got = miner.get_hard_negative_classes(labels)
    for b, label in enumerate(labels.tolist()):
        others = [(float(counts[label, c]), c) for c in range(6) if c != label]
        expected = [c for _, c in sorted(others, reverse=True)[:2]]
        assert got[b].tolist() == expected
    every_other = miner.get_hard_negative_classes(labels, k=5)
    for b, label in enumerate(labels.tolist()):
        assert sorted(every_other[b].tolist()) == [c for c in range(6) if c != label]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    counts=st.lists(st.integers(0, 3), min_size=16, max_size=16),
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    k=st.integers(1, 3),
)
def test_hard_negatives_never_return_the_class_itself(counts, labels, k):
    miner = HardNegativeMining_Proto(num_classes=4, feat_dim=2, k=k)
    miner.confusion_matrix.copy_(torch.tensor(counts, dtype=torch.float32).view(4, 4))
    labels = torch.tensor(labels)
    hard = miner.get_hard_negative_classes(labels)
    assert hard.shape == (len(labels), k)
    assert not bool((hard == labels[:, None]).any())
    assert all(len(set(row)) == k for row in hard.tolist())


def test_contrastive_loss_matches_loop_and_only_features_get_gradients():
    torch.manual_seed(3)
    miner = HardNegativeMining_Proto(num_classes=8, feat_dim=6, k=3)
    miner.update_prototypes(torch.randn(40, 6), torch.arange(40) % 8)
    miner.confusion_matrix.copy_(torch.randperm(64).float().view(8, 8))
    features = torch.randn(10, 6, requires_grad=True)
    labels = torch.randint(0, 8, (10,))
    loss = miner.compute_contrastive_loss(features, labels)
    hard = miner.get_hard_negative_classes(labels)
    expected = hnm_oracle(features.detach(), labels, miner.prototypes, hard.tolist())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(features.grad).all() and torch.count_nonzero(features.grad) > 0
    assert not miner.prototypes.requires_grad and len(list(miner.parameters())) == 0


def test_contrastive_loss_gradcheck_degenerate_and_reduced_precision():
    torch.manual_seed(4)
    miner = HardNegativeMining_Proto(num_classes=5, feat_dim=3, k=2, temperature=0.5).double()
    miner.update_prototypes(torch.randn(20, 3, dtype=torch.float64), torch.arange(20) % 5)
    miner.confusion_matrix.copy_(torch.rand(5, 5))
    labels = torch.tensor([0, 4, 2])
    features = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f: miner.compute_contrastive_loss(f, labels), (features,)
    )
    fresh = HardNegativeMining_Proto(num_classes=230, feat_dim=16)  # zero prototypes, zero counts
    one = torch.randn(1, 16, requires_grad=True)
    value = fresh.compute_contrastive_loss(one, torch.tensor([7]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(one.grad).all()
    trained = HardNegativeMining_Proto(num_classes=230, feat_dim=16)
    trained.update_prototypes(torch.randn(460, 16), torch.arange(460) % 230)
    features, labels = torch.randn(32, 16), torch.randint(0, 230, (32,))
    reference = trained.compute_contrastive_loss(features, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(trained.compute_contrastive_loss(features, labels), reference)
    for dtype, tolerance in ((torch.bfloat16, 5e-2), (torch.float16, 5e-3)):
        torch.testing.assert_close(
            trained.compute_contrastive_loss(features.to(dtype), labels),
            reference,
            rtol=tolerance,
            atol=tolerance,
        )


def test_epoch_momentum_and_state_dict():
    miner = HardNegativeMining_Proto(num_classes=4, feat_dim=3, momentum=0.75)
    miner.update_confusion_matrix(
        labels=torch.tensor([0, 1, 1, 3]), predicted=torch.tensor([2, 1, 0, 3])
    )
    before = miner.confusion_matrix.clone()
    miner.apply_epoch_momentum()
    torch.testing.assert_close(miner.confusion_matrix, before * 0.25)
    miner.update_prototypes(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    state = miner.state_dict()
    assert set(state) == {"prototypes", "confusion_matrix"}
    assert state["prototypes"].shape == (4, 3) and state["confusion_matrix"].shape == (4, 4)
    assert all(v.dtype == torch.float32 for v in state.values())
    restored = HardNegativeMining_Proto(num_classes=4, feat_dim=3)
    restored.load_state_dict(state)
    assert torch.equal(restored.prototypes, miner.prototypes)
    assert torch.equal(restored.confusion_matrix, miner.confusion_matrix)


def test_validation():
    with pytest.raises(ValueError, match="k must be"):
        HardNegativeMining_Proto(num_classes=4, feat_dim=3, k=4)
    with pytest.raises(ValueError, match="num_classes"):
        HardNegativeMining_Proto(num_classes=1, feat_dim=3)
    miner = HardNegativeMining_Proto(num_classes=4, feat_dim=3)
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        miner.update_prototypes(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="0..3"):
        miner.update_prototypes(torch.randn(2, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="batch size"):
        miner.compute_contrastive_loss(torch.randn(3, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="predicted must lie in 0..3"):
        miner.update_confusion_matrix(torch.tensor([0, 9]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        miner.update_confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="k must be"):
        miner.get_hard_negative_classes(torch.tensor([0]), k=0)


def test_wrapper_adds_miner_loss_and_never_updates_the_miner():
    cfg = SimpleNamespace(num_experts=3, tail_expert_ids=[2], feat_dim=8)
    rule, mapping = rule_similarity_matrix(), sg_to_sys_map()
    generator = torch.Generator().manual_seed(5)
    miner = HardNegativeMining_Proto(230, 8)
    miner.update_prototypes(torch.randn(460, 8, generator=generator), torch.arange(460) % 230)
    miner.confusion_matrix.copy_(torch.rand(230, 230, generator=generator))
    state = {k: v.clone() for k, v in miner.state_dict().items()}
    labels = torch.randint(0, 230, (16,), generator=generator)
    outputs = {
        "features": torch.randn(16, 8, generator=generator, requires_grad=True),
        "sys_logits": torch.randn(16, 7, generator=generator),
        "expert_logits": torch.randn(16, 3, 230, generator=generator),
        "gating_weights": torch.softmax(torch.randn(16, 3, generator=generator), dim=1),
    }
    torch.manual_seed(0)
    without = PhysMoELossWrapper(cfg, rule, mapping)
    torch.manual_seed(0)
    with_hnm = PhysMoELossWrapper(cfg, rule, mapping, lambda_hnm=0.25)
    base, _ = without(outputs, {"labels": labels})
    total, parts = with_hnm(outputs, {"labels": labels}, hard_negative_miner=miner)
    total.backward()
    expected = miner.compute_contrastive_loss(outputs["features"].detach(), labels)
    torch.testing.assert_close(parts["loss_hnm"], expected)
    torch.testing.assert_close(total.detach(), base.detach() + 0.25 * expected)
    for name, value in miner.state_dict().items():
        assert torch.equal(value, state[name]), name
    # One-class batch through the whole wrapper with HNM: finite.
    one_class = {k: v.detach()[:4] for k, v in outputs.items()}
    total, _ = with_hnm(one_class, {"labels": torch.full((4,), 13)}, hard_negative_miner=miner)
    assert torch.isfinite(total)
