"""physmoe.loss.moe_loss against straightforward loop implementations of the spec's formulas."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from physmoe.loss import feature_diversity_loss, log_class_prior, mix_outputs, soft_entropy
from physmoe.loss.moe_loss import gated_ensemble_logits, stack_expert_logits


def log_softmax_loop(row: list[float]) -> list[float]:
    top = max(row)
    log_sum = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_sum for v in row]


def soft_entropy_oracle(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per-sample -sum_c target * log_softmax(logits), one sample at a time in float64."""
    out = []
    for b in range(logits.shape[0]):
        log_probs = log_softmax_loop(logits[b].double().tolist())
        if target.dtype.is_floating_point:
            out.append(-sum(t * lp for t, lp in zip(target[b].tolist(), log_probs, strict=True)))
        else:
            out.append(-log_probs[int(target[b])])
    return out


def mix_outputs_oracle(outputs, labels, balance=False, label_dis=None, eps=1e-6):
    """The spec's mix_outputs, written with loops over experts, pairs and samples."""
    num_experts, batch = len(outputs), outputs[0].shape[0]
    shift = None
    if balance:
        prior = torch.as_tensor(label_dis, dtype=torch.float64)
        prior = (prior / prior.sum()).clamp_min(1e-6)
        shift = prior.log()
    ce = [[0.0] * num_experts for _ in range(batch)]
    for k in range(num_experts):
        logits = outputs[k].double() + (shift if shift is not None else 0.0)
        per_sample = soft_entropy_oracle(logits, labels)
        for b in range(batch):
            ce[b][k] = per_sample[b]
    loss_ce = sum(sum(ce[b][k] for b in range(batch)) / batch for k in range(num_experts))
    distillation = 0.0
    for b in range(batch):
        log_p = [log_softmax_loop(outputs[k][b].double().tolist()) for k in range(num_experts)]
        for i in range(num_experts):
            for j in range(num_experts):
                if i != j:
                    distillation += sum(
                        math.exp(a) * (a - c) for a, c in zip(log_p[i], log_p[j], strict=True)
                    )
    distillation /= batch
    # Spec 1.2 item 3: from each expert's cross-entropy loss (its batch mean), not per sample.
    expert_ce = [sum(ce[b][k] for b in range(batch)) / batch for k in range(num_experts)]
    parallel = num_experts / sum(1.0 / (expert_ce[k] + eps) for k in range(num_experts))
    average = sum(o.double() for o in outputs) / num_experts
    # Spec 1.2 item 1 (item 4 in balance mode): the returned loss is the CE sum alone.
    return loss_ce, average, distillation, parallel


# ---------------------------------------------------------------------------------------------
# soft_entropy
# ---------------------------------------------------------------------------------------------


def test_soft_entropy_hard_and_soft_targets_match_loop():
    torch.manual_seed(0)
    logits = torch.randn(6, 9) * 3
    labels = torch.randint(0, 9, (6,))
    soft = torch.softmax(torch.randn(6, 9), dim=1)
    for target in (labels, soft):
        expected = soft_entropy_oracle(logits, target)
        assert soft_entropy(logits, target, reduction="none").tolist() == pytest.approx(
            expected, rel=1e-5
        )
        assert float(soft_entropy(logits, target)) == pytest.approx(sum(expected) / 6, rel=1e-5)
        assert float(soft_entropy(logits, target, reduction="sum")) == pytest.approx(
            sum(expected), rel=1e-5
        )


def test_soft_entropy_one_hot_equals_hard_labels_and_fp16_is_computed_in_fp32():
    torch.manual_seed(1)
    logits = torch.randn(5, 7) * 4
    labels = torch.randint(0, 7, (5,))
    one_hot = torch.nn.functional.one_hot(labels, 7).float()
    torch.testing.assert_close(soft_entropy(logits, one_hot), soft_entropy(logits, labels))
    half = soft_entropy(logits.half(), labels)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, soft_entropy(logits.half().float(), labels))


def test_soft_entropy_errors():
    logits = torch.randn(3, 4)
    with pytest.raises(ValueError, match="reduction"):
        soft_entropy(logits, torch.zeros(3, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match="soft target shape"):
        soft_entropy(logits, torch.rand(3, 5))
    with pytest.raises(ValueError, match="hard target"):
        soft_entropy(logits, torch.zeros(4, dtype=torch.long))
    for bad in (4, -1):  # gather used to fail with a bare index error
        with pytest.raises(ValueError, match=rf"target must lie in 0\.\.3, found {bad}"):
            soft_entropy(logits, torch.tensor([0, bad, 1]))


# ---------------------------------------------------------------------------------------------
# mix_outputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("balance", [False, True])
def test_mix_outputs_matches_loop(balance):
    torch.manual_seed(2)
    outputs = [torch.randn(5, 6) * 2 for _ in range(3)]
    labels = torch.randint(0, 6, (5,))
    counts = torch.tensor([50.0, 0.0, 7.0, 3.0, 120.0, 1.0])  # a zero count exercises the floor
    got = mix_outputs(outputs, labels, balance=balance, label_dis=counts if balance else None)
    expected = mix_outputs_oracle(outputs, labels, balance, counts)
    names = ("loss", "avg_output", "loss_distillation", "loss_parallel")
    for name, value, reference in zip(names, got, expected, strict=True):
        torch.testing.assert_close(
            value.double(),
            torch.as_tensor(reference, dtype=torch.float64),
            rtol=1e-5,
            atol=1e-5,
            msg=name,
        )


def test_mix_outputs_soft_targets_and_stacked_input():
    torch.manual_seed(3)
    outputs = [torch.randn(4, 5) for _ in range(4)]
    soft = torch.softmax(torch.randn(4, 5), dim=1)
    got = mix_outputs(torch.stack(outputs, dim=1), soft)
    expected = mix_outputs_oracle(outputs, soft)
    for value, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(
            value.double(), torch.as_tensor(reference, dtype=torch.float64), rtol=1e-5, atol=1e-5
        )


def test_mix_outputs_identical_experts_have_zero_distillation_and_parallel_equals_ce():
    torch.manual_seed(4)
    logits = torch.randn(3, 5)
    labels = torch.tensor([0, 4, 2])
    loss, _, distillation, parallel = mix_outputs([logits, logits.clone()], labels)
    ce = soft_entropy(logits, labels, reduction="none")
    assert float(distillation) == pytest.approx(0.0, abs=1e-6)
    # Harmonic mean of two equal losses times K: K * ce / 2 ... = ce (up to eps).
    assert float(parallel) == pytest.approx(float(ce.mean()), rel=1e-4)
    assert float(loss) == pytest.approx(float(2 * ce.mean()), rel=1e-5)  # CE sum only


# Two experts, three classes, two samples; logits = log(probabilities), so softmax(logits) = p.
HAND_PROBS = (
    [[1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 4, 1 / 2]],  # expert 0
    [[1 / 4, 1 / 2, 1 / 4], [1 / 4, 1 / 4, 1 / 2]],  # expert 1
)
HAND_LABELS = (0, 2)


def hand_outputs(dtype=torch.float64):
    return [torch.tensor(p, dtype=dtype).log() for p in HAND_PROBS], torch.tensor(HAND_LABELS)


def test_mix_outputs_by_hand_normal_mode():
    outputs, labels = hand_outputs()
    ln2 = math.log(2)
    # ce_k = batch mean of -log p_k[b, y_b]: expert 0 (ln2 + ln2) / 2, expert 1 (2 ln2 + ln2) / 2.
    ce0, ce1 = ln2, 1.5 * ln2
    # Sample 0: KL(p0 || p1) = 1/2 ln2 + 1/4 ln(1/2) = ln2 / 4, and KL(p1 || p0) = ln2 / 4 too;
    # sample 1: the experts agree (0). Batch mean of the pair sums: (ln2 / 2 + 0) / 2.
    distillation = ln2 / 4
    for eps in (0.0, 1e-6):
        loss, average, got_distillation, parallel = mix_outputs(outputs, labels, eps=eps)
        assert float(loss) == pytest.approx(ce0 + ce1, rel=1e-12)  # 2.5 ln2: the CE sum only
        assert float(got_distillation) == pytest.approx(distillation, rel=1e-12)
        # reciprocal_sum = 1 / (ce0 + eps) + 1 / (ce1 + eps); loss_parallel = 2 / reciprocal_sum.
        expected_parallel = 2 / (1 / (ce0 + eps) + 1 / (ce1 + eps))
        assert float(parallel) == pytest.approx(expected_parallel, rel=1e-12)
        torch.testing.assert_close(average, (outputs[0] + outputs[1]) / 2)
    assert float(parallel) != pytest.approx(7 / 6 * ln2, rel=1e-4)  # the per-sample mean
    assert float(mix_outputs(outputs, labels, eps=0.0)[3]) == pytest.approx(1.2 * ln2, rel=1e-12)


def test_mix_outputs_by_hand_balance_mode():
    outputs, labels = hand_outputs()
    # label_dis counts [1, 1, 2] -> prior [1/4, 1/4, 1/2]; softmax(log p + log prior) ∝ p * prior.
    # Expert 0: sample 0 [1/8, 1/16, 1/8] -> [2/5, 1/5, 2/5], CE ln(5/2); sample 1
    # [1/16, 1/16, 1/4] -> [1/6, 1/6, 2/3], CE ln(3/2). Expert 1: sample 0 [1/16, 1/8, 1/8] ->
    # [1/5, 2/5, 2/5], CE ln 5; sample 1 as expert 0, CE ln(3/2).
    ce0 = (math.log(5 / 2) + math.log(3 / 2)) / 2
    ce1 = (math.log(5) + math.log(3 / 2)) / 2
    loss, average, distillation, parallel = mix_outputs(
        outputs, labels, balance=True, label_dis=torch.tensor([1.0, 1.0, 2.0]), eps=0.0
    )
    # log_class_prior is float32 (its rounding, ~1e-8, bounds the agreement in float64).
    assert float(loss) == pytest.approx(ce0 + ce1, rel=1e-7)  # sum of prior-adjusted CEs
    assert float(parallel) == pytest.approx(2 / (1 / ce0 + 1 / ce1), rel=1e-7)
    assert float(distillation) == pytest.approx(math.log(2) / 4, rel=1e-12)  # raw logits
    torch.testing.assert_close(average, (outputs[0] + outputs[1]) / 2)
    # The same with probabilities instead of counts, and in float32.
    outputs32, _ = hand_outputs(torch.float32)
    again = mix_outputs(outputs32, labels, balance=True, label_dis=[0.25, 0.25, 0.5], eps=0.0)
    assert float(again[0]) == pytest.approx(ce0 + ce1, rel=1e-6)
    assert float(again[3]) == pytest.approx(2 / (1 / ce0 + 1 / ce1), rel=1e-6)


def test_mix_outputs_is_device_agnostic_and_validates():
    assert "cuda" not in inspect.getsource(mix_outputs)
    outputs = [torch.randn(2, 3), torch.randn(2, 3)]
    with pytest.raises(ValueError, match="label_dis"):
        mix_outputs(outputs, torch.tensor([0, 1]), balance=True)
    with pytest.raises(ValueError, match="0..2"):
        mix_outputs(outputs, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="batch size"):
        mix_outputs(outputs, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="same"):
        mix_outputs([torch.randn(2, 3), torch.randn(2, 4)], torch.tensor([0, 1]))


def test_mix_outputs_gradcheck():
    torch.manual_seed(5)
    logits = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 0, 3])
    for index in (0, 2, 3):
        assert torch.autograd.gradcheck(lambda x, i=index: mix_outputs(x, labels)[i], (logits,))


# ---------------------------------------------------------------------------------------------
# feature_diversity_loss
# ---------------------------------------------------------------------------------------------


def mean_pairwise_distance_oracle(features: torch.Tensor, normalize: bool = True) -> float:
    """Mean over samples and ordered expert pairs i != j of ||f_i - f_j||."""
    batch, num_experts, _ = features.shape
    total, count = 0.0, 0
    for b in range(batch):
        rows = [features[b, k].double() for k in range(num_experts)]
        if normalize:
            rows = [r / math.sqrt(float((r * r).sum())) for r in rows]
        for i in range(num_experts):
            for j in range(num_experts):
                if i != j:
                    total += math.sqrt(float(((rows[i] - rows[j]) ** 2).sum()))
                    count += 1
    return total / count


@pytest.mark.parametrize("normalize", [True, False])
def test_feature_diversity_matches_loop(normalize):
    torch.manual_seed(6)
    features = torch.randn(4, 5, 7)
    got = feature_diversity_loss(list(features.unbind(1)), lambda_reg=0.3, normalize=normalize)
    expected = -0.3 * mean_pairwise_distance_oracle(features, normalize)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(feature_diversity_loss(features, 0.3, normalize=normalize), got)


def test_feature_diversity_descent_increases_distance():
    torch.manual_seed(7)
    features = (
        torch.randn(8, 1, 16) + 0.05 * torch.randn(8, 4, 16)
    ).requires_grad_()  # near collapse
    before = mean_pairwise_distance_oracle(features.detach())
    loss = feature_diversity_loss(features, lambda_reg=0.01)
    loss.backward()
    with torch.no_grad():
        stepped = features - 50.0 * features.grad
    after = mean_pairwise_distance_oracle(stepped)
    assert after > before + 1e-3
    assert float(feature_diversity_loss(stepped)) < float(loss.detach())


def test_feature_diversity_degenerate_cases_are_finite():
    one_expert = torch.randn(3, 1, 4, requires_grad=True)
    loss = feature_diversity_loss(one_expert)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(one_expert.grad, torch.zeros_like(one_expert))
    collapsed = torch.randn(2, 1, 5).expand(2, 3, 5).clone().requires_grad_()
    loss = feature_diversity_loss(collapsed)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(collapsed.grad).all()


def test_feature_diversity_gradcheck():
    torch.manual_seed(8)
    features = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: feature_diversity_loss(f, 0.5), (features,))


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def test_stack_and_gated_ensemble_match_loop():
    torch.manual_seed(9)
    experts = [torch.randn(3, 5) for _ in range(4)]
    gates = torch.softmax(torch.randn(3, 4), dim=1)
    stacked = stack_expert_logits(experts, num_experts=4)
    assert torch.equal(stacked[:, 2], experts[2])
    expected = sum(gates[:, k : k + 1] * experts[k] for k in range(4))
    torch.testing.assert_close(gated_ensemble_logits(stacked, gates), expected)
    with pytest.raises(ValueError, match="expected 3 experts"):
        stack_expert_logits(experts, num_experts=3)
    with pytest.raises(ValueError, match="gating_weights"):
        gated_ensemble_logits(stacked, gates[:, :3])


def test_log_class_prior_normalises_and_clamps():
    counts = torch.tensor([3.0, 0.0, 1.0])
    expected = [math.log(0.75), math.log(1e-6), math.log(0.25)]
    assert log_class_prior(counts, 3).tolist() == pytest.approx(expected, rel=1e-6)
    assert log_class_prior([0.5, 0.5]).tolist() == pytest.approx([math.log(0.5)] * 2)
    for bad, match in (
        ([1.0, -1.0], "non-negative"),
        ([0.0, 0.0], "sums to 0"),
        ([[1.0]], "vector"),
        ([1.0, float("nan")], "finite"),
    ):
        with pytest.raises(ValueError, match=match):
            log_class_prior(bad)
    with pytest.raises(ValueError, match="expected num_classes=4"):
        log_class_prior(counts, 4)
