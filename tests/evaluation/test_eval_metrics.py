"""physmoe.evaluation metrics against scikit-learn, loop oracles and a hand-computed example."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from split_oracles import long_tailed_split, loop_class_mean

from physmoe.crystallography import ID2LABEL, NUM_SPACE_GROUPS, sg_to_sys_map
from physmoe.evaluation import (
    REFERENCE_TRAIN_SIZE,
    class_buckets,
    compute_metrics,
    confusion_matrix,
    hnm_most_confused_pairs,
    per_class_accuracy,
)

C = NUM_SPACE_GROUPS

# sklearn warns when a prediction names a class absent from y_true; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Loop oracles: the definitions written out one sample / one class at a time.
# ----------------------------------------------------------------------------------------------


def loop_argmax(row):
    best = 0
    for j in range(len(row)):
        if row[j] > row[best]:  # strict: the first maximal index wins
            best = j
    return best


def loop_ece(confidence, correct, num_bins):
    total = 0.0
    for m in range(num_bins):
        lo, hi = m / num_bins, (m + 1) / num_bins
        members = [
            i
            for i in range(len(confidence))
            if (lo < confidence[i] <= hi) or (m == 0 and confidence[i] == 0)
        ]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidence[i] for i in members) / len(members)
            total += len(members) / len(confidence) * abs(acc - conf)
    return total


# ----------------------------------------------------------------------------------------------
# Against scikit-learn and loop oracles on a long-tailed 230-class split
# ----------------------------------------------------------------------------------------------


def test_against_sklearn_on_long_tailed_split():
    logits, labels, train_counts = long_tailed_split()
    assert len(np.unique(labels)) < C  # some classes have no test sample
    m = compute_metrics(logits, labels, train_counts)
    pred = logits.argmax(1)
    present = np.unique(labels)
    assert m["top1_accuracy"] == pytest.approx(skm.accuracy_score(labels, pred), abs=1e-12)
    assert m["top5_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(labels, logits, k=5, labels=np.arange(C)), abs=1e-12
    )
    assert m["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels, pred), abs=1e-12
    )
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(labels, pred, average="macro", labels=present, zero_division=0), abs=1e-12
    )
    assert m["num_classes_present"] == len(present)
    assert m["num_samples"] == len(labels)
    np.testing.assert_array_equal(
        confusion_matrix(labels, pred, C), skm.confusion_matrix(labels, pred, labels=np.arange(C))
    )
    np.testing.assert_array_equal(
        confusion_matrix(labels, logits, C), confusion_matrix(labels, pred, C)
    )
    json.dumps(m, allow_nan=False)  # JSON-ready: no NaN, no numpy scalars
    assert all(type(v) in (int, float) for v in m.values())


def test_buckets_given_system_ece_nll_and_experts_against_loops():
    logits, labels, train_counts = long_tailed_split(num_samples=1200, seed=1)
    rng = np.random.default_rng(1)
    system_logits = rng.normal(size=(len(labels), 7))
    experts = rng.normal(size=(len(labels), 3, C)).astype(np.float32)
    experts[:, 1] += 6 * np.eye(C)[labels]  # expert 1 mostly right
    m = compute_metrics(
        logits,
        labels,
        train_counts,
        crystal_system_logits=system_logits,
        expert_logits=experts,
        num_bins=10,
    )

    pred = [loop_argmax(row) for row in logits]
    sys_map = sg_to_sys_map().tolist()
    # Shot buckets: absolute thresholds.
    for name, members in {
        "many_shot": [c for c in range(C) if train_counts[c] >= 100],
        "medium_shot": [c for c in range(C) if 20 <= train_counts[c] <= 99],
        "few_shot": [c for c in range(C) if train_counts[c] < 20],
    }.items():
        mean, count = loop_class_mean(pred, labels, members)
        assert m[f"{name}_num_classes"] == count > 0
        assert m[f"{name}_accuracy"] == pytest.approx(mean, abs=1e-12)
    # Reference buckets, scaled by the training-set size over 120k.
    s = train_counts.sum() / 120_000
    assert m["reference_bucket_scale"] == pytest.approx(s)
    for name, members in {
        "head": [c for c in range(C) if train_counts[c] > 1000 * s],
        "medium": [c for c in range(C) if 100 * s <= train_counts[c] <= 1000 * s],
        "tail": [c for c in range(C) if train_counts[c] < 100 * s],
        "extreme_tail": [c for c in range(C) if train_counts[c] < 20 * s],
    }.items():
        mean, count = loop_class_mean(pred, labels, members)
        assert m[f"{name}_num_classes"] == count > 0
        assert m[f"{name}_accuracy"] == pytest.approx(mean, abs=1e-12)

    # Given the true system: arg-max over that system's groups only.
    hits = 0
    for row, y in zip(logits, labels, strict=True):
        candidates = [c for c in range(C) if sys_map[c] == sys_map[y]]
        hits += candidates[loop_argmax([row[c] for c in candidates])] == y
    assert m["sg_accuracy_given_correct_system"] == pytest.approx(hits / len(labels), abs=1e-12)
    from_sg = np.mean([sys_map[p] == sys_map[y] for p, y in zip(pred, labels, strict=True)])
    head = np.mean(
        [loop_argmax(r) == sys_map[y] for r, y in zip(system_logits, labels, strict=True)]
    )
    assert m["crystal_system_accuracy_from_sg"] == pytest.approx(from_sg, abs=1e-12)
    assert m["crystal_system_accuracy_head"] == pytest.approx(head, abs=1e-12)
    assert m["crystal_system_accuracy"] == m["crystal_system_accuracy_head"]

    probs = softmax(logits)
    conf = [probs[i, pred[i]] for i in range(len(labels))]
    correct = [pred[i] == labels[i] for i in range(len(labels))]
    assert m["ece"] == pytest.approx(loop_ece(conf, correct, 10), abs=1e-9)
    nll = np.mean([-math.log(probs[i, labels[i]]) for i in range(len(labels))])
    assert m["nll"] == pytest.approx(nll, rel=1e-9)
    for k in range(3):
        acc = np.mean([loop_argmax(experts[i, k]) == labels[i] for i in range(len(labels))])
        assert m[f"expert_{k}_top1_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert m["expert_1_top1_accuracy"] > 0.9
    # The trainer gathers the experts' arg-max [N, K] instead of their logits: same numbers.
    from_predictions = compute_metrics(logits, labels, expert_predictions=experts.argmax(axis=2))
    for k in range(3):
        assert from_predictions[f"expert_{k}_top1_accuracy"] == m[f"expert_{k}_top1_accuracy"]


def test_given_system_accuracy_gives_no_credit_when_the_true_system_is_masked_out():
    # Hard hierarchical inference with a wrong system: every group of the true system sits at the
    # lowest value. Arg-max over ties would pick the system's first group and credit it.
    lowest = np.finfo(np.float32).min
    system_of = sg_to_sys_map()
    logits = np.full((2, C), lowest, dtype=np.float32)
    logits[:, system_of.numpy() == 3] = 0.5  # tetragonal predicted; both samples are triclinic
    labels = np.array([0, 1])  # P1 (first group of its system), P-1
    m = compute_metrics(logits, labels)
    assert m["top1_accuracy"] == 0.0 and m["sg_accuracy_given_correct_system"] == 0.0
    logits[1, 1] = -3.0  # P-1 above P1 inside the (still masked-out elsewhere) true system
    assert compute_metrics(logits, labels)["sg_accuracy_given_correct_system"] == 0.5


def test_hand_computed_example():
    # 4 classes in 2 crystal systems (classes 0, 1 -> system 0; 2, 3 -> system 1).
    logits = np.array(
        [
            [2, 0, 0, 0],  # y=0, pred 0: correct
            [1, 0, 3, 0],  # y=0, pred 2: wrong, wrong system; within system 0: [1, 0] -> 0 correct
            [0, 2, 0, 0],  # y=1, pred 1: correct
            [3, 1, 0, 0],  # y=1, pred 0: wrong, right system; within system 0: [3, 1] -> 0 wrong
            [0, 0, 1, 0],  # y=2, pred 2: correct
            [
                1,
                0,
                0,
                1,
            ],  # y=3, tie 0/3 -> pred 0 (first index): wrong; within system 1: [0, 1] -> 3
        ],
        dtype=np.float64,
    )
    labels = np.array([0, 0, 1, 1, 2, 3])
    sg_to_sys = np.array([0, 0, 1, 1])
    train_counts = np.array([150, 5, 50, 0])
    head = np.eye(2)[[0, 0, 0, 0, 1, 1]]  # the system head is always right
    experts = np.stack([logits, 5 * np.eye(4)[labels]], axis=1)
    m = compute_metrics(
        logits, labels, train_counts, head, experts, sg_to_sys, num_bins=4, reference_scale=0.1
    )

    # Predictions [0, 2, 1, 0, 2, 0]: 3 of 6 right.
    assert m["top1_accuracy"] == pytest.approx(3 / 6)
    assert m["top5_accuracy"] == 1.0  # C = 4 <= 5
    # Per-class recall: 1/2, 1/2, 1/1, 0/1 -> mean 0.5.
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    # F1_c = 2 TP / (n_true + n_pred); predicted counts [3, 1, 2, 0]:
    # class 0: 2/(2+3) = 0.4, class 1: 2/(2+1), class 2: 2/(1+2), class 3: 0.
    assert m["macro_f1"] == pytest.approx((0.4 + 2 / 3 + 2 / 3 + 0) / 4)
    # Systems true [0,0,0,0,1,1], from predictions [0,1,0,0,1,0]: 4 of 6.
    assert m["crystal_system_accuracy_from_sg"] == pytest.approx(4 / 6)
    assert m["crystal_system_accuracy_head"] == 1.0
    assert m["crystal_system_accuracy"] == 1.0
    # Within the true system rows 0, 1, 2, 4, 5 are right (row 3 is not).
    assert m["sg_accuracy_given_correct_system"] == pytest.approx(5 / 6)
    # Shot buckets from train counts [150, 5, 50, 0]: many {0} 0.5, medium {2} 1.0, few {1, 3}
    # (0.5 + 0) / 2.
    assert (
        m["many_shot_accuracy"],
        m["medium_shot_accuracy"],
        m["few_shot_accuracy"],
    ) == pytest.approx((0.5, 1.0, 0.25))
    assert (
        m["many_shot_num_classes"],
        m["medium_shot_num_classes"],
        m["few_shot_num_classes"],
    ) == (1, 1, 2)
    # Reference buckets at scale 0.1: head > 100 {0}, medium [10, 100] {2}, tail < 10 {1, 3},
    # extreme < 2 {3}.
    assert m["reference_bucket_scale"] == 0.1
    assert (
        m["head_accuracy"],
        m["medium_accuracy"],
        m["tail_accuracy"],
        m["extreme_tail_accuracy"],
    ) == pytest.approx((0.5, 1.0, 0.25, 0.0))
    # Top-1 probabilities: rows 0, 2: e^2/(e^2+3); rows 1, 3: e^3/(e^3+e+2); row 4: e/(e+3);
    # row 5: e/(2e+2).
    e = math.e
    c0, c1, c4, c5 = e**2 / (e**2 + 3), e**3 / (e**3 + e + 2), e / (e + 3), e / (2 * e + 2)
    # Bins of width 1/4: (.25,.5] = rows 4 (right), 5 (wrong); (.5,.75] = rows 0, 2 (right);
    # (.75,1] = rows 1, 3 (wrong).
    assert m["ece"] == pytest.approx(
        (abs(1 - c4 - c5) + abs(2 - 2 * c0) + abs(0 - 2 * c1)) / 6, abs=1e-12
    )
    nll = [
        -math.log(c0),
        math.log(e + 1 + e**3 + 1) - 1,
        -math.log(c0),
        math.log(e**3 + e + 2) - 1,
        -math.log(c4),
        -math.log(c5),
    ]
    assert m["nll"] == pytest.approx(sum(nll) / 6, abs=1e-12)
    assert (m["expert_0_top1_accuracy"], m["expert_1_top1_accuracy"]) == (0.5, 1.0)

    # Default scale: 205 training patterns -> s = 205/120000: head > 1.71 {0, 1, 2}, medium empty,
    # tail < 0.171 {3}, extreme tail < 0.034 {3}.
    d = compute_metrics(logits, labels, train_counts, sg_to_sys=sg_to_sys)
    assert d["reference_bucket_scale"] == pytest.approx(205 / REFERENCE_TRAIN_SIZE)
    assert d["head_accuracy"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert "medium_accuracy" not in d and d["medium_num_classes"] == 0
    assert d["tail_accuracy"] == 0.0 and d["extreme_tail_accuracy"] == 0.0

    accuracy, counts = per_class_accuracy(logits, labels)
    np.testing.assert_allclose(accuracy, [0.5, 0.5, 1.0, 0.0])
    np.testing.assert_array_equal(counts, [2, 2, 1, 1])


# ----------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------


def test_absent_class_and_empty_bucket():
    # Class 2 has no test sample: it is left out of the class means (sklearn with labels=present).
    logits = np.array(
        [[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 3.0], [3.0, 0, 0, 0]]
    )
    labels = np.array([0, 1, 1, 3, 3])
    m = compute_metrics(logits, labels, np.array([500, 500, 500, 500]), sg_to_sys=np.zeros(4, int))
    pred = logits.argmax(1)
    assert m["num_classes_present"] == 3
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(labels, pred, average="macro", labels=[0, 1, 3])
    )
    # Every class is many-shot: the medium and few-shot buckets are empty -> keys omitted, counts 0.
    assert m["many_shot_num_classes"] == 3 and m["many_shot_accuracy"] == m["balanced_accuracy"]
    for bucket in ("medium_shot", "few_shot"):
        assert f"{bucket}_accuracy" not in m and m[f"{bucket}_num_classes"] == 0
    json.dumps(m, allow_nan=False)
    accuracy, counts = per_class_accuracy(pred, labels, num_classes=4)
    np.testing.assert_array_equal(counts, [1, 2, 0, 2])
    assert accuracy[2] == 0.0 and not np.isnan(accuracy).any()
    # A bucket whose classes are all absent from the split is omitted too.
    m = compute_metrics(logits, labels, np.array([500, 500, 5, 500]), sg_to_sys=np.zeros(4, int))
    assert "few_shot_accuracy" not in m and m["few_shot_num_classes"] == 0


def test_single_sample_all_correct_all_wrong():
    logits = torch.randn(1, C, generator=torch.Generator().manual_seed(0))
    label = int(logits.argmax())
    one = compute_metrics(logits, torch.tensor([label]))
    assert one["top1_accuracy"] == one["balanced_accuracy"] == one["macro_f1"] == 1.0
    assert one["ece"] == pytest.approx(1 - float(logits.softmax(1).max()))

    logits, labels, counts = long_tailed_split(num_samples=500, seed=3)
    perfect = np.eye(C)[labels] * 10.0
    m = compute_metrics(perfect, labels, counts)
    for key in (
        "top1_accuracy",
        "top5_accuracy",
        "balanced_accuracy",
        "macro_f1",
        "crystal_system_accuracy",
    ):
        assert m[key] == 1.0
    assert m["ece"] == pytest.approx(1 - softmax(perfect).max(1).mean())
    wrong = (np.roll(np.eye(C), 1, axis=1) - np.eye(C))[labels] * 10.0  # predicts label + 1
    m = compute_metrics(wrong, labels, counts)
    assert m["top1_accuracy"] == m["balanced_accuracy"] == m["macro_f1"] == 0.0
    assert m["top5_accuracy"] == 0.0  # the true class scores lowest of all 230
    # With the true class tied at 0 with 228 others, ties put it at rank 1 + (its index among
    # them): only labels 0..3 make the top 5.
    tied = np.roll(np.eye(C), 1, axis=1)[labels] * 10.0
    assert compute_metrics(tied, labels)["top5_accuracy"] == pytest.approx(np.mean(labels <= 3))


def test_ties_break_towards_the_first_index_like_torch_argmax():
    logits = torch.zeros(3, 6)
    logits[1, [2, 4]] = 1.0
    labels = torch.tensor([0, 4, 5])
    m = compute_metrics(logits, labels, sg_to_sys=torch.zeros(6, dtype=torch.long))
    # torch.argmax gives [0, 2, 0]: only row 0 is right.
    assert torch.equal(logits.argmax(1), torch.tensor([0, 2, 0]))
    assert m["top1_accuracy"] == pytest.approx(1 / 3)
    # Top-5: row 2's true class 5 is the last of six tied classes -> rank 5 -> outside the top 5.
    assert m["top5_accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_match_float64_of_the_same_values(dtype):
    logits, labels, counts = long_tailed_split(num_samples=400, seed=4)
    low = torch.from_numpy(logits).to(dtype)
    expected = compute_metrics(low.double().numpy(), labels, counts)
    assert compute_metrics(low, torch.from_numpy(labels), torch.from_numpy(counts)) == expected
    probs = low.float().softmax(1).to(dtype)  # low-precision probabilities are detected too
    from_probs = compute_metrics(probs, labels, counts)
    assert from_probs["top1_accuracy"] == pytest.approx(expected["top1_accuracy"], abs=0.01)
    assert from_probs["nll"] == pytest.approx(expected["nll"], rel=0.02)


def test_probabilities_give_the_same_metrics_as_logits():
    logits, labels, counts = long_tailed_split(num_samples=800, seed=5)
    from_logits = compute_metrics(logits.astype(np.float64), labels, counts)
    from_probs = compute_metrics(softmax(logits), labels, counts)
    assert from_probs.keys() == from_logits.keys()
    for key, value in from_logits.items():
        assert from_probs[key] == pytest.approx(value, abs=1e-9), key
    # A zero probability on the true class gives a large but finite NLL.
    one_hot_wrong = np.eye(4)[[1, 2]]
    m = compute_metrics(
        one_hot_wrong, np.array([0, 0]), sg_to_sys=np.zeros(4, int), input_type="probabilities"
    )
    assert math.isfinite(m["nll"]) and m["nll"] > 700


def test_per_batch_macro_f1_differs_from_the_whole_split_value():
    """The reference averages macro-F1 over batches; on a long tail that is not the split's
    value."""
    logits, labels, _ = long_tailed_split(num_samples=4096, accuracy=0.6, seed=6)
    pred = logits.argmax(1)
    whole = skm.f1_score(labels, pred, average="macro", labels=np.unique(labels), zero_division=0)
    per_batch = np.mean(
        [
            skm.f1_score(
                labels[i : i + 64],
                pred[i : i + 64],
                average="macro",
                labels=np.unique(labels[i : i + 64]),
                zero_division=0,
            )
            for i in range(0, len(labels), 64)
        ]
    )
    assert abs(per_batch - whole) > 0.05
    assert compute_metrics(logits, labels)["macro_f1"] == pytest.approx(whole, abs=1e-12)


def test_bad_inputs_raise_clear_errors():
    logits, labels = np.zeros((4, C), np.float32), np.array([0, 1, 2, 3])
    bad = logits.copy()
    bad[2, 7] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value at index \(2, 7\)"):
        compute_metrics(bad, labels)
    with pytest.raises(ValueError, match=r"labels\[1\] = 230 is outside \[0, 230\)"):
        compute_metrics(logits, np.array([0, 230, 1, 2]))
    with pytest.raises(TypeError, match="integer class indices"):
        compute_metrics(logits, labels.astype(float))
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        compute_metrics(logits, labels[:3])
    with pytest.raises(ValueError, match=r"shape \[N, C\]"):
        compute_metrics(logits[0], labels)
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(np.zeros((0, C)), np.zeros(0, int))
    with pytest.raises(ValueError, match=r"train_class_counts must have shape \[230\]"):
        compute_metrics(logits, labels, np.ones(229))
    with pytest.raises(ValueError, match=r"train_class_counts\[3\] = -1.0 is negative"):
        compute_metrics(logits, labels, np.r_[1, 1, 1, -1, np.ones(226)])
    with pytest.raises(ValueError, match=r"crystal_system_logits must have shape \[4, >6\]"):
        compute_metrics(logits, labels, crystal_system_logits=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="crystal_system_logits with 3 classes needs sg_to_sys"):
        compute_metrics(np.zeros((2, 3)), np.array([0, 1]), crystal_system_logits=np.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"expert_logits must have shape \[4, K, 230\]"):
        compute_metrics(logits, labels, expert_logits=np.zeros((4, 2, 10)))
    with pytest.raises(ValueError, match=r"expert_predictions must have shape \[4, K\]"):
        compute_metrics(logits, labels, expert_predictions=np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"expert_predictions\[5\] = 230 is outside \[0, 230\)"):
        compute_metrics(
            logits, labels, expert_predictions=np.array([[0, 1], [2, 3], [4, 230], [0, 0]])
        )
    with pytest.raises(TypeError, match="expert_predictions must be integer"):
        compute_metrics(logits, labels, expert_predictions=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="not both"):
        compute_metrics(
            logits,
            labels,
            expert_logits=np.zeros((4, 2, 230)),
            expert_predictions=np.zeros((4, 2), dtype=int),
        )
    with pytest.raises(ValueError, match="declared as probabilities"):
        compute_metrics(logits + 1.0, labels, input_type="probabilities")
    with pytest.raises(ValueError, match="num_bins"):
        compute_metrics(logits, labels, num_bins=0)
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        compute_metrics("logits", labels)
    # Without a crystal-system map (C != 230) the system metrics are omitted, not guessed.
    assert "crystal_system_accuracy" not in compute_metrics(np.zeros((2, 3)), np.array([0, 1]))


# ----------------------------------------------------------------------------------------------
# Buckets and confused pairs
# ----------------------------------------------------------------------------------------------


def test_class_buckets_against_loops():
    counts = np.array([0, 5, 19, 20, 60, 99, 100, 101, 999, 1000, 1001, 5000])
    masks = class_buckets(counts, reference_scale=1.0)
    oracle = {
        "many_shot": [n >= 100 for n in counts],
        "medium_shot": [20 <= n < 100 for n in counts],
        "few_shot": [n < 20 for n in counts],
        "head": [n > 1000 for n in counts],
        "medium": [100 <= n <= 1000 for n in counts],
        "tail": [n < 100 for n in counts],
        "extreme_tail": [n < 20 for n in counts],
    }
    for name, expected in oracle.items():
        np.testing.assert_array_equal(masks[name], expected, err_msg=name)
    # Scale 2: every reference threshold doubles; shot buckets do not move.
    doubled = class_buckets(counts, reference_scale=2.0)
    np.testing.assert_array_equal(doubled["head"], counts > 2000)
    np.testing.assert_array_equal(doubled["extreme_tail"], counts < 40)
    np.testing.assert_array_equal(doubled["few_shot"], masks["few_shot"])
    with pytest.raises(ValueError, match="sum to 0"):
        class_buckets(np.zeros(3))
    with pytest.raises(ValueError, match="reference_scale"):
        class_buckets(counts, reference_scale=0.0)
    with pytest.raises(TypeError, match="reference_scale must be a number"):
        class_buckets(counts, reference_scale="1")


def test_most_confused_pairs_against_sorted_loop():
    rng = np.random.default_rng(7)
    matrix = rng.integers(0, 4, size=(12, 12))
    np.fill_diagonal(matrix, 50)  # the diagonal is never a confusion
    entries = [
        (-int(matrix[i, j]), i, j)
        for i in range(12)
        for j in range(12)
        if i != j and matrix[i, j] > 0
    ]
    expected = [(i, j, -neg) for neg, i, j in sorted(entries)[:15]]
    pairs = hnm_most_confused_pairs(matrix, top=15)
    assert [tuple(p) for p in pairs] == expected
    assert all(type(p.count) is int for p in pairs)

    decayed = torch.zeros(C, C)
    decayed[13, 3] = 2.5  # P2_1/c (14) predicted as P2_1 (4)
    decayed[61, 18] = 7.25
    decayed[4, 4] = 100.0
    named = hnm_most_confused_pairs(decayed, top=10, id2label=ID2LABEL)
    assert named == [(ID2LABEL[61], ID2LABEL[18], 7.25), (ID2LABEL[13], ID2LABEL[3], 2.5)]
    assert named[0].true == "Pnma (62)"
    assert hnm_most_confused_pairs(np.eye(3), top=5) == []
    with pytest.raises(ValueError, match="square"):
        hnm_most_confused_pairs(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        hnm_most_confused_pairs(-np.ones((2, 2)))
