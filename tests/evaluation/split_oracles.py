"""A synthetic long-tailed test split and the loop oracle of a class-mean accuracy, shared by the
metric and the bootstrap tests."""

from __future__ import annotations

import numpy as np

from physmoe.crystallography import NUM_SPACE_GROUPS


def long_tailed_split(num_samples=3000, num_classes=NUM_SPACE_GROUPS, accuracy=0.7, seed=0):
    """Zipf-distributed test labels, logits that favour the true class for about ``accuracy``
    of rows."""
    rng = np.random.default_rng(seed)
    prior = 1.0 / np.arange(1, num_classes + 1) ** 1.1
    prior = prior[rng.permutation(num_classes)]
    labels = rng.choice(num_classes, size=num_samples, p=prior / prior.sum())
    logits = rng.normal(size=(num_samples, num_classes))
    boosted = rng.random(num_samples) < accuracy
    logits[np.arange(num_samples), labels] += np.where(boosted, 4.0, 0.5)
    # Training counts log-uniform in [1, 4000): every bucket has members.
    train_counts = np.floor(np.exp(rng.uniform(0, np.log(4000), size=num_classes))).astype(np.int64)
    return logits.astype(np.float32), labels, train_counts


def loop_class_mean(pred, labels, classes):
    accs = []
    for c in classes:
        rows = [i for i in range(len(labels)) if labels[i] == c]
        if rows:
            accs.append(sum(pred[i] == c for i in rows) / len(rows))
    return (sum(accs) / len(accs) if accs else None), len(accs)
