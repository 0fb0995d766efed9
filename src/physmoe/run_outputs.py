"""A run's output folder: resuming a killed run, replacing a finished model only once its
successor is complete (trained beside it, swapped at the end, a swap killed half-way completed by
the next run), and what a finished run saves there (model, results, card, plots) and pushes."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict
from transformers.trainer_utils import PredictionOutput

from .checkpoints import last_complete_checkpoint
from .crystallography import ID2LABEL, sg_to_sys_map
from .data.grid import TwoThetaGrid
from .data.render import MeasurementConditions
from .evaluation import (
    apply_temperature,
    per_class_accuracy,
    plot_crystal_system_confusion,
    plot_pattern_top5,
    plot_per_class_accuracy,
)
from .training import named_predictions
from .utils import atomic_open, write_json

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
    "loss_resnet1d_moe.py",
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
    skipped (:func:`~physmoe.checkpoints.last_complete_checkpoint`).
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


# -- what a finished run saves ------------------------------------------------------------------


def longtail_markdown_table(metrics: dict, prefix: str = "test_") -> str:
    """Accuracy by training-frequency bucket as a markdown table (for the model card)."""
    rows = [
        ("many-shot (>= 100 training samples)", "many_shot"),
        ("medium-shot (20-99)", "medium_shot"),
        ("few-shot (< 20)", "few_shot"),
        ("reference head", "head"),
        ("reference medium", "medium"),
        ("reference tail", "tail"),
        ("reference extreme tail", "extreme_tail"),
    ]
    lines = ["| bucket | classes in test | class-mean accuracy |", "|---|---:|---:|"]
    for name, key in rows:
        count = metrics.get(f"{prefix}{key}_num_classes")
        accuracy = metrics.get(f"{prefix}{key}_accuracy")
        shown = "-" if accuracy is None else f"{accuracy:.3f}"
        if key == "few_shot" and f"{prefix}few_shot_accuracy_ci_low" in metrics:
            shown += (
                f" (95% CI {metrics[f'{prefix}few_shot_accuracy_ci_low']:.3f}-"
                f"{metrics[f'{prefix}few_shot_accuracy_ci_high']:.3f})"
            )
        lines.append(f"| {name} | {'-' if count is None else int(count)} | {shown} |")
    return "\n".join(lines)


@dataclass
class _FinishedRun:
    """What a finished run trained on and measured, for its saved outputs."""

    dataset: DatasetDict  # the splits (train may be a stream)
    metadata: dict  # the dataset's physmoe_dataset.json
    conditions: MeasurementConditions  # training augmentation
    train_counts: np.ndarray  # [230] training samples per class (expected ones for a stream)
    results: dict  # validation_* and test_* metrics, temperature, miner pairs
    test: PredictionOutput  # the test split's predictions (logits uncalibrated)
    temperature: float  # calibration temperature fitted on validation


def _save_outputs(trainer, output_dir: Path, run: _FinishedRun, plots: bool) -> None:
    from .hub import write_model_card

    # Weights, config and the feature extractor (processing class). Not pushed from here: the
    # push comes once the card and the results exist (and a replaced model has been swapped).
    trainer.save_model(str(output_dir), _internal_call=True)
    write_json(output_dir / "all_results.json", run.results)
    write_json(output_dir / "log_history.json", trainer.state.log_history, indent=1)
    # The card takes test-split values only (its model-index reports the test split).
    test_metrics = {key: value for key, value in run.results.items() if key.startswith("test_")}
    training_data = {
        "dataset": run.metadata.get("name"),
        "structures (train / validation / test)": " / ".join(
            str(len(run.dataset[split])) if split in run.dataset else "streamed"
            for split in ("train", "validation", "test")
        ),
        "space groups in training": int((run.train_counts > 0).sum()),
        "peak wavelength (A)": run.metadata.get("peak_wavelength"),
        "calibration temperature (fitted on validation)": round(float(run.temperature), 4),
    }
    write_model_card(
        output_dir,
        metrics=test_metrics,
        longtail_table=longtail_markdown_table(run.results),
        training_data=training_data,
        conditions=_condition_summary(run.conditions),
        overwrite=True,
    )
    if plots:
        _save_plots(output_dir, run, trainer)


def _push_outputs(trainer, output_dir: Path) -> None:
    from .hub import push_checkpoint

    repo_id = getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id or output_dir.name
    url = push_checkpoint(
        output_dir,
        repo_id,
        private=bool(trainer.args.hub_private_repo),
        token=trainer.args.hub_token,
        revision=trainer.args.hub_revision,
        commit_message="physmoe train: final model, card and metrics",
    )
    logger.info("pushed %s to the Hub: %s", output_dir, url)


def _condition_summary(conditions: MeasurementConditions) -> dict:
    return {
        name: value
        for name, value in dataclasses.asdict(conditions).items()
        if not isinstance(value, (list, dict))
    }


def _save_plots(output_dir: Path, run: _FinishedRun, trainer) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'physmoe[plot]'): no plots")
        return
    predictions = named_predictions(run.test.predictions)
    logits = torch.as_tensor(apply_temperature(predictions["logits"], run.temperature))
    labels = torch.as_tensor(run.test.label_ids)
    accuracy, test_counts = per_class_accuracy(logits, labels, num_classes=logits.shape[1])
    accuracy = np.where(test_counts > 0, accuracy, np.nan)
    plot_per_class_accuracy(
        accuracy,
        run.train_counts,
        output_dir / _PLOT_FILES[0],
        test_counts=test_counts,
        overwrite=True,
    )
    system_of = sg_to_sys_map()
    system_logits = torch.as_tensor(predictions["crystal_system_logits"])
    plot_crystal_system_confusion(
        system_of[labels].numpy(),
        system_logits.argmax(1).numpy(),
        output_dir / _PLOT_FILES[1],
        overwrite=True,
    )
    example = trainer.eval_data_collator([run.dataset["test"][0]])["input_values"][0].numpy()
    probabilities = torch.softmax(logits[0], dim=0)
    top = probabilities.topk(5)
    grid = TwoThetaGrid.from_config(trainer.model.config)
    plot_pattern_top5(
        grid.values(),
        example,
        top.indices.tolist(),
        top.values.tolist(),
        output_dir / _PLOT_FILES[2],
        title=f"test pattern 0, true {ID2LABEL[int(labels[0])]}",
        overwrite=True,
    )
