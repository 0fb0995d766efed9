"""A small dataset and a tiny model's training config, shared by tests/test_cli.py and
scripts/survey_bad_inputs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from physmoe.data.embedded import default_dataset, read_structure_archive, write_structure_archive
from tiny_models import TINY


def small_embedded_dataset(root: Path) -> Path:
    """60 embedded structures of 4 groups (2, 14, 62, 225), built under ``root`` like the default
    dataset; the path of the built DatasetDict."""
    full = read_structure_archive()
    keep = np.concatenate([np.flatnonzero(full.space_groups == g)[:15] for g in (2, 14, 62, 225)])
    archive = write_structure_archive(
        root / "small.npz",
        full.structure_ids[keep].tolist(),
        [full.crystal(int(i)) for i in keep],
        [int(g) or None for g in full.requested_space_groups[keep]],
        full.space_groups[keep].tolist(),
    )
    default_dataset(cache_dir=root / "cache", archive=archive, progress=False)
    (built,) = (root / "cache").iterdir()
    return built


def tiny_train_settings(dataset: Path | str, output_dir: Path, /, **extra) -> dict:
    """``physmoe train`` settings of the tiny model on ``dataset`` (on the CPU, no reporting);
    ``extra`` settings are added or replace these, and a None value unsets one."""
    settings = {
        "preset": "reference",
        "dataset": str(dataset),
        "output_dir": str(output_dir),
        "model_overrides": dict(TINY),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 3e-3,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "load_best_model_at_end": True,
        "metric_for_best_model": "balanced_accuracy",
        "logging_steps": 2,
        "use_cpu": True,
        "report_to": "none",
        "bf16": False,
        "disable_tqdm": True,
        **extra,
    }
    return {name: value for name, value in settings.items() if value is not None}
