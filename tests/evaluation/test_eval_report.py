"""Metric tables: exact table text."""

from __future__ import annotations

import numpy as np
import pytest

from physmoe.evaluation import (
    compute_metrics,
    format_metrics_table,
    metric_display_name,
    metrics_markdown_table,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_text_and_markdown_tables_exactly():
    metrics = {
        "top1_accuracy": 0.5,
        "num_samples": 6,
        "few_shot_accuracy": 0.25,
        "expert_3_top1_accuracy": 1.0,
        "custom": None,
    }
    # Name column = longest name (29 chars), two spaces, value column = longest value (6 chars).
    expected = "\n".join(
        [
            "Test split",
            "-" * 37,
            "Metric                          Value",
            "-" * 37,
            "Top-1 accuracy                 0.5000",
            "Samples                             6",
            "Few-shot (<20 train) accuracy  0.2500",
            "Expert 3 top-1 accuracy        1.0000",
            "custom                            n/a",
            "-" * 37,
        ]
    )
    assert format_metrics_table(metrics, title="Test split") == expected
    assert metrics_markdown_table(metrics) == "\n".join(
        [
            "| Metric | Value |",
            "|---|---:|",
            "| Top-1 accuracy | 0.5000 |",
            "| Samples | 6 |",
            "| Few-shot (<20 train) accuracy | 0.2500 |",
            "| Expert 3 top-1 accuracy | 1.0000 |",
            "| custom | n/a |",
        ]
    )
    with pytest.raises(TypeError, match="mapping"):
        format_metrics_table([("top1_accuracy", 0.5)])


def test_table_of_a_full_metrics_dict_names_every_key():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 230, size=300)
    metrics = compute_metrics(
        rng.normal(size=(300, 230)),
        labels,
        rng.integers(0, 500, size=230),
        rng.normal(size=(300, 7)),
        rng.normal(size=(300, 2, 230)),
    )
    table = format_metrics_table(metrics).splitlines()
    assert len(table) == len(metrics) + 4
    assert len({len(line) for line in table}) == 1  # fixed width
    for key in metrics:
        assert metric_display_name(key) != key, f"no readable name for {key}"
    assert len(metrics_markdown_table(metrics, title="t").splitlines()) == len(metrics) + 4
