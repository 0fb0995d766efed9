"""Text and markdown tables of a metrics dict (the CLI prints one; the model card embeds the
other)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

__all__ = ["format_metrics_table", "metric_display_name", "metrics_markdown_table"]

_DISPLAY_NAMES = {
    "num_samples": "Samples",
    "num_classes_present": "Classes present",
    "top1_accuracy": "Top-1 accuracy",
    "top5_accuracy": "Top-5 accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro-F1",
    "nll": "NLL (nats)",
    "ece": "ECE",
    "crystal_system_accuracy": "Crystal-system accuracy",
    "crystal_system_accuracy_head": "Crystal-system accuracy (system head)",
    "crystal_system_accuracy_from_sg": "Crystal-system accuracy (from space group)",
    "sg_accuracy_given_correct_system": "Space-group accuracy given true system",
    "reference_bucket_scale": "Reference bucket scale",
    "few_shot_accuracy_ci_low": "Few-shot accuracy, 95% CI low",
    "few_shot_accuracy_ci_high": "Few-shot accuracy, 95% CI high",
    "loss": "Loss (PhysMoE, on this split)",
}
_BUCKET_NAMES = {
    "many_shot": "Many-shot (>=100 train)",
    "medium_shot": "Medium-shot (20-99 train)",
    "few_shot": "Few-shot (<20 train)",
    "head": "Reference head",
    "medium": "Reference medium",
    "tail": "Reference tail",
    "extreme_tail": "Reference extreme tail",
}


def metric_display_name(key: str) -> str:
    """Readable name of a :func:`~physmoe.evaluation.compute_metrics` key (unknown keys
    unchanged)."""
    if key in _DISPLAY_NAMES:
        return _DISPLAY_NAMES[key]
    expert = re.fullmatch(r"expert_(\d+)_top1_accuracy", key)
    if expert:
        return f"Expert {expert.group(1)} top-1 accuracy"
    for bucket, name in _BUCKET_NAMES.items():
        if key == f"{bucket}_accuracy":
            return f"{name} accuracy"
        if key == f"{bucket}_num_classes":
            return f"{name} classes"
    return key


def _format_value(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _rows(metrics: Mapping[str, object]) -> list[tuple[str, str]]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
    return [(metric_display_name(str(key)), _format_value(value)) for key, value in metrics.items()]


def format_metrics_table(metrics: Mapping[str, object], title: str | None = None) -> str:
    """Fixed-width two-column text table; floats with 4 decimals (fractions, not percent)."""
    rows = _rows(metrics)
    name_width = max([len("Metric"), *(len(name) for name, _ in rows)])
    value_width = max([len("Value"), *(len(value) for _, value in rows)])
    rule = "-" * (name_width + 2 + value_width)
    lines = [title, rule] if title else [rule]
    lines += [f"{'Metric':<{name_width}}  {'Value':>{value_width}}", rule]
    lines += [f"{name:<{name_width}}  {value:>{value_width}}" for name, value in rows]
    lines.append(rule)
    return "\n".join(lines)


def metrics_markdown_table(metrics: Mapping[str, object], title: str | None = None) -> str:
    """GitHub-flavoured markdown table with the same rows as :func:`format_metrics_table`."""
    rows = _rows(metrics)
    lines = [f"**{title}**", ""] if title else []
    lines += ["| Metric | Value |", "|---|---:|"]
    lines += [f"| {name.replace('|', '/')} | {value} |" for name, value in rows]
    return "\n".join(lines)
