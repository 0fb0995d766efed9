"""physmoe.evaluation.bootstrap against binomial quantiles, loop bootstraps and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm
from split_oracles import long_tailed_split, loop_class_mean

from physmoe.crystallography import NUM_SPACE_GROUPS
from physmoe.evaluation import compute_metrics
from physmoe.evaluation.bootstrap import bootstrap_ci, bucket_accuracy_ci, two_stage_bootstrap

C = NUM_SPACE_GROUPS

# sklearn warns when a prediction names a class absent from y_true; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")


def test_stratified_bootstrap_of_one_class_is_binomial():
    # One class, 40 test samples, 10 right: a stratified replicate is Binomial(40, 0.25) / 40.
    logits = np.zeros((40, 3))
    labels = np.zeros(40, dtype=int)
    logits[10:, 1] = 1.0
    ci = bootstrap_ci("top1_accuracy", logits, labels, n_boot=20_000, seed=1)
    assert ci.estimate == 0.25
    assert ci.low == pytest.approx(stats.binom.ppf(0.025, 40, 0.25) / 40, abs=1 / 40 + 1e-9)
    assert ci.high == pytest.approx(stats.binom.ppf(0.975, 40, 0.25) / 40, abs=1 / 40 + 1e-9)
    # Whole-split resampling of a micro accuracy is Binomial(N, acc) / N as well.
    plain = bootstrap_ci("top1_accuracy", logits, labels, n_boot=4000, seed=1, stratified=False)
    assert plain.low == pytest.approx(stats.binom.ppf(0.025, 40, 0.25) / 40, abs=1 / 40 + 1e-9)


def test_few_shot_bootstrap_matches_a_loop_bootstrap():
    rng = np.random.default_rng(8)
    num_classes, per_class = 12, 6
    labels = np.repeat(np.arange(num_classes), per_class)
    logits = rng.normal(size=(labels.size, num_classes))
    logits[np.arange(labels.size), labels] += rng.choice([0.0, 3.0], size=labels.size)
    train_counts = np.r_[np.full(6, 500), np.full(6, 10)]  # classes 6..11 are few-shot
    pred = logits.argmax(1)

    ours = bootstrap_ci("few_shot_accuracy", logits, labels, train_counts, n_boot=4000, seed=0)
    replicates = []
    for _ in range(4000):  # resample each class's own rows, then average its accuracy
        accs = []
        for c in range(6, 12):
            rows = rng.choice(np.flatnonzero(labels == c), size=per_class)
            accs.append(np.mean(pred[rows] == c))
        replicates.append(np.mean(accs))
    low, high = np.quantile(replicates, [0.025, 0.975])
    few = [c for c in range(6, 12)]
    assert ours.estimate == pytest.approx(loop_class_mean(list(pred), list(labels), few)[0])
    assert ours.low == pytest.approx(low, abs=0.03)
    assert ours.high == pytest.approx(high, abs=0.03)
    assert ours.low <= ours.estimate <= ours.high
    # Deterministic per seed.
    assert (
        bootstrap_ci("few_shot_accuracy", logits, labels, train_counts, n_boot=4000, seed=0) == ours
    )
    logits, labels, _ = long_tailed_split(seed=8)
    first = bootstrap_ci("balanced_accuracy", logits, labels, n_boot=500, seed=0)
    assert bootstrap_ci("balanced_accuracy", logits, labels, n_boot=500, seed=0) == first
    assert bootstrap_ci("balanced_accuracy", logits, labels, n_boot=500, seed=1) != first


def test_bootstrap_macro_f1_and_callables():
    logits, labels, counts = long_tailed_split(num_samples=600, seed=9)
    class_counts = np.bincount(labels, minlength=C)
    present = np.unique(labels)

    def sklearn_macro_f1(scores, y):
        # Stratified resampling keeps every class's test count.
        np.testing.assert_array_equal(np.bincount(y, minlength=C), class_counts)
        return skm.f1_score(
            y, np.asarray(scores).argmax(1), average="macro", labels=present, zero_division=0
        )

    named = bootstrap_ci("macro_f1", logits, labels, n_boot=50, seed=3)
    with_callable = bootstrap_ci(sklearn_macro_f1, logits, labels, n_boot=50, seed=3)
    assert named == pytest.approx(with_callable, abs=1e-12)  # same resampled rows, same values
    torch_callable = bootstrap_ci(
        lambda s, y: float((s.argmax(1) == y).double().mean()),
        torch.from_numpy(logits),
        torch.from_numpy(labels),
        n_boot=200,
    )
    assert torch_callable.estimate == pytest.approx(
        compute_metrics(logits, labels)["top1_accuracy"]
    )

    # The empty medium-shot bucket has no interval; a missing input is named.
    assert bootstrap_ci("few_shot_accuracy", logits, labels, np.full(C, 1000)) is None
    with pytest.raises(ValueError, match="needs train_class_counts"):
        bootstrap_ci("tail_accuracy", logits, labels)
    with pytest.raises(ValueError, match="sg_accuracy_given_correct_system with 4 classes needs"):
        bootstrap_ci("sg_accuracy_given_correct_system", np.eye(4), np.arange(4))
    balanced = bootstrap_ci("balanced_accuracy", logits, labels, n_boot=200)
    assert balanced.estimate == pytest.approx(skm.balanced_accuracy_score(labels, logits.argmax(1)))
    with pytest.raises(ValueError, match="unknown bootstrap metric"):
        bootstrap_ci("accuracy", logits, labels)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci("top1_accuracy", logits, labels, n_boot=0)
    given = bootstrap_ci("sg_accuracy_given_correct_system", logits, labels, n_boot=200)
    assert given.estimate == pytest.approx(
        compute_metrics(logits, labels)["sg_accuracy_given_correct_system"]
    )
    assert given.low <= given.estimate <= given.high


def test_two_stage_bootstrap_varies_the_classes_where_within_class_resampling_cannot():
    # 40 few-shot classes with one test sample each: half right, half wrong.
    labels = np.arange(40)
    logits = np.full((40, 230), -1.0, dtype=np.float32)
    logits[np.arange(40), np.where(np.arange(40) % 2 == 0, labels, labels + 100)] = 1.0
    counts = np.full(230, 5)
    within = bootstrap_ci("few_shot_accuracy", logits, labels, train_class_counts=counts, seed=0)
    assert within.low == within.high == 0.5  # singletons cannot vary within their class
    two_stage = bucket_accuracy_ci(logits, labels, counts, "few_shot", n_boot=2000, seed=0)
    assert two_stage.estimate == 0.5
    # Drawing 40 of 40 classes with replacement: binomial spread sqrt(0.25 / 40) = 0.079.
    assert 0.30 < two_stage.low < 0.40 and 0.60 < two_stage.high < 0.70
    # All-correct classes give a degenerate interval; paired rows share their draws.
    correct = np.stack([np.ones(40), (np.arange(40) % 2 == 0).astype(float)])
    replicates = two_stage_bootstrap(correct, labels, np.arange(40), n_boot=300, seed=1)
    assert replicates.shape == (300, 2) and np.all(replicates[:, 0] == 1.0)
    assert (
        bucket_accuracy_ci(logits, labels, np.full(230, 500), "few_shot") is None
    )  # no few-shot class
    with pytest.raises(ValueError, match="no sample"):
        two_stage_bootstrap(correct, labels, np.array([41]))
    # The estimate is the class mean over present classes of the bucket (loop oracle).
    uneven = np.array([0, 0, 0, 1, 2, 2])
    scores = np.eye(230, dtype=np.float32)[[0, 5, 0, 1, 7, 2]]
    oracle = np.mean(
        [np.mean([scores[i].argmax() == c for i in np.flatnonzero(uneven == c)]) for c in (0, 1, 2)]
    )
    assert bucket_accuracy_ci(
        scores, uneven, counts, "few_shot", n_boot=50
    ).estimate == pytest.approx(oracle)
    with pytest.raises(ValueError, match=r"train_class_counts must have shape \[230\]"):
        bucket_accuracy_ci(logits, labels, np.full(100, 5))
    with pytest.raises(ValueError, match="bucket must be one of"):
        bucket_accuracy_ci(logits, labels, counts, "few-shot")
    with pytest.raises(ValueError, match="n_boot must be a positive int"):
        bucket_accuracy_ci(logits, labels, counts, n_boot=0)
