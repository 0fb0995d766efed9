"""Honest evaluation of space-group classifiers (see ``docs/evaluation-protocol.md``).

* :func:`compute_metrics`: every split-level metric in one dict (top-1/5, balanced accuracy,
  macro-F1, crystal-system accuracies, shot and reference buckets, ECE, NLL, per-expert accuracy).
* :func:`bootstrap_ci`, :func:`bucket_accuracy_ci`, :func:`two_stage_bootstrap`: bootstrap
  intervals for small buckets.
* :func:`per_class_accuracy`, :func:`confusion_matrix`, :func:`class_buckets`,
  :func:`hnm_most_confused_pairs`.
* :class:`TemperatureScaler`, :func:`expected_calibration_error`.
* :func:`format_metrics_table`, :func:`metrics_markdown_table`.
* The real-structure benchmark (``physmoe evaluate --real``, a test set only):
  :func:`run_real_benchmark`, :func:`evaluate_real_checkpoint`, :func:`real_benchmark_metrics`,
  :func:`risk_coverage`, :func:`format_real_benchmark`.
* Plots (``physmoe[plot]`` extra): :func:`plot_per_class_accuracy`,
  :func:`plot_crystal_system_confusion`, :func:`plot_pattern_top5`.
"""

from .bootstrap import (
    BOOTSTRAP_METRICS,
    ConfidenceInterval,
    bootstrap_ci,
    bucket_accuracy_ci,
    two_stage_bootstrap,
)
from .calibration import TemperatureScaler, apply_temperature, expected_calibration_error
from .metrics import (
    REFERENCE_THRESHOLDS,
    REFERENCE_TRAIN_SIZE,
    SHOT_THRESHOLDS,
    ConfusedPair,
    class_buckets,
    compute_metrics,
    confusion_matrix,
    hnm_most_confused_pairs,
    per_class_accuracy,
)
from .plots import plot_crystal_system_confusion, plot_pattern_top5, plot_per_class_accuracy
from .real import (
    evaluate_real_checkpoint,
    format_real_benchmark,
    real_benchmark_metrics,
    risk_coverage,
    run_real_benchmark,
)
from .report import format_metrics_table, metric_display_name, metrics_markdown_table

__all__ = [
    "BOOTSTRAP_METRICS",
    "REFERENCE_THRESHOLDS",
    "REFERENCE_TRAIN_SIZE",
    "SHOT_THRESHOLDS",
    "ConfidenceInterval",
    "ConfusedPair",
    "TemperatureScaler",
    "apply_temperature",
    "bootstrap_ci",
    "bucket_accuracy_ci",
    "two_stage_bootstrap",
    "class_buckets",
    "compute_metrics",
    "confusion_matrix",
    "evaluate_real_checkpoint",
    "expected_calibration_error",
    "format_metrics_table",
    "format_real_benchmark",
    "hnm_most_confused_pairs",
    "metric_display_name",
    "metrics_markdown_table",
    "per_class_accuracy",
    "plot_crystal_system_confusion",
    "plot_pattern_top5",
    "plot_per_class_accuracy",
    "real_benchmark_metrics",
    "risk_coverage",
    "run_real_benchmark",
]
