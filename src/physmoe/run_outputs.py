"""A run's output folder: what a finished run writes there, resuming a killed run, and
replacing a finished model only once its successor is complete (trained beside it, swapped at
the end, a swap killed half-way completed by the next run)."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .training import last_complete_checkpoint
from .utils import atomic_open

logger = logging.getLogger(__name__)


_PLOT_FILES = ("per_class_accuracy.png", "crystal_system_confusion.png", "example_top5.png")
# What a finished run writes into its output_dir (replaced by --overwrite_output true).
_RUN_OUTPUTS = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    "README.md",
    "all_results.json",
    "log_history.json",
    "training_args.bin",
    "configuration_resnet1d_moe.py",
    "modeling_resnet1d_moe.py",
    "fast_path_resnet1d_moe.py",
    *_PLOT_FILES,
)


# A finished model is replaced through two siblings of output_dir: the new run trains into
# "<name>.physmoe-new" and its outputs move into output_dir once they are all saved; the old ones
# wait in "<name>.physmoe-old" while they are swapped. _READY in the new folder says its outputs
# are complete, _MOVED in the old one that output_dir's old outputs have all left.
_NEW_SUFFIX, _OLD_SUFFIX = ".physmoe-new", ".physmoe-old"
_READY, _MOVED = ".physmoe-ready", ".physmoe-moved"


@dataclass
class _OutputPlan:
    """Where a run trains (``train_dir``), the checkpoint it resumes from, and whether its
    outputs replace a finished model in ``output_dir`` at the end (``train_dir`` is then the
    ``.physmoe-new`` sibling)."""

    output_dir: Path
    train_dir: Path
    resume_from: str | None
    replaces: bool


def _replacement_folders(output_dir: Path) -> tuple[Path, Path]:
    absolute = Path(os.path.abspath(output_dir))
    name = absolute.name
    return absolute.with_name(name + _NEW_SUFFIX), absolute.with_name(name + _OLD_SUFFIX)


def _is_run_output(entry: Path) -> bool:
    if entry.is_dir():
        return entry.name.startswith("checkpoint-")
    return any(fnmatch.fnmatch(entry.name, pattern) for pattern in _RUN_OUTPUTS)


def _check_output_dir(
    output_dir: Path, overwrite: bool, require_training_state: bool = True
) -> _OutputPlan:
    """Where to train and what to resume from; refuses to clobber a finished model.

    Nothing is deleted here. A finished model is replaced (``overwrite``) by training into the
    ``<output_dir>.physmoe-new`` sibling; :func:`_replace_outputs` swaps the new outputs in once
    they are all saved, so a failing or killed run leaves the old model as it was, and a killed
    replacement run resumes from its own checkpoints when started again. A replacement killed
    while swapping is completed here. Incomplete checkpoints (a run killed while saving one) are
    skipped (:func:`~physmoe.training.last_complete_checkpoint`).
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output_dir {output_dir} is a file, not a folder")
    new, _ = _replacement_folders(output_dir)
    if (new / _READY).is_file():
        logger.warning(
            "%s holds a finished replacement of %s that was not moved in: moving it now",
            new,
            output_dir,
        )
        _replace_outputs(new, output_dir)
    finished = (output_dir / "model.safetensors").exists()
    if finished and not overwrite:
        pending = f"; an interrupted replacement run is in {new}" if new.is_dir() else ""
        raise FileExistsError(
            f"{output_dir} already holds a trained model{pending}; pass --overwrite_output true "
            "to replace it or choose another output_dir"
        )
    if finished:
        last = last_complete_checkpoint(new, require_training_state)
        logger.info(
            "training into %s%s; the model in %s is replaced only once the new one is saved",
            new,
            f" (resuming from {last})" if last else "",
            output_dir,
        )
        return _OutputPlan(output_dir, new, last, replaces=True)
    if new.is_dir():
        logger.warning(
            "%s holds no finished model: ignoring the unfinished replacement run in %s",
            output_dir,
            new,
        )
    last = last_complete_checkpoint(output_dir, require_training_state)
    if last is not None:
        logger.info("resuming from %s", last)
    return _OutputPlan(output_dir, output_dir, last, replaces=False)


def _retarget_checkpoints(new: Path, output_dir: Path) -> None:
    """Point ``best_model_checkpoint`` in the new run's checkpoints at their final place."""
    prefix, target = str(new), str(Path(os.path.abspath(output_dir)))
    for state_file in new.glob("checkpoint-*/trainer_state.json"):
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # an incomplete checkpoint: skipped on resume anyway
            continue
        best = state.get("best_model_checkpoint") if isinstance(state, dict) else None
        if isinstance(best, str) and best.startswith(prefix):
            state["best_model_checkpoint"] = target + best[len(prefix) :]
            with atomic_open(state_file) as handle:  # as TrainerState.save_to_json writes it
                handle.write(json.dumps(state, indent=2, sort_keys=True) + "\n")


def _move_merging(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; folders that exist in both are merged; a file that exists
    in ``target`` (not a run output: those were moved away) is kept and the new one dropped."""
    if not target.exists():
        os.replace(source, target)
    elif source.is_dir() and target.is_dir():
        for child in list(source.iterdir()):
            _move_merging(child, target / child.name)
    else:
        logger.warning(
            "%s exists and is not a run output: kept (the new run's %s is dropped)",
            target,
            source.name,
        )


def _replace_outputs(new: Path, output_dir: Path) -> None:
    """Swap the finished run in ``new`` into ``output_dir``: the old run outputs (model files,
    card, results, plots, checkpoints) move to the ``.physmoe-old`` sibling, the new ones move
    in, both siblings are removed. Other files in ``output_dir`` stay. Safe to repeat after a
    kill at any point (:func:`_check_output_dir` does)."""
    _, old = _replacement_folders(output_dir)
    (new / _READY).touch()
    output_dir.mkdir(parents=True, exist_ok=True)
    if not (old / _MOVED).is_file():
        old.mkdir(exist_ok=True)
        for entry in sorted(output_dir.iterdir()):
            if _is_run_output(entry):
                stale = old / entry.name
                if stale.is_dir():
                    shutil.rmtree(stale)
                os.replace(entry, stale)
        (old / _MOVED).touch()
    for entry in sorted(new.iterdir()):
        if entry.name != _READY:
            _move_merging(entry, output_dir / entry.name)
    shutil.rmtree(new)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("the new model replaced the old one in %s", output_dir)


#: What SpaceGroupMetrics can report (physmoe.evaluation.compute_metrics) plus the Trainer's loss;
#: expert_<k>_top1_accuracy is matched separately.
