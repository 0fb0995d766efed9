"""The main job as functions: train -> choose on validation -> calibrate -> test -> save.

``physmoe train`` (and ``scripts/benchmark_longtail.py``) call :func:`train_and_evaluate`;
``physmoe evaluate`` calls :func:`evaluate_checkpoint`. The protocol is
``docs/evaluation-protocol.md``: structure-disjoint splits, the checkpoint chosen on the
validation split (``load_best_model_at_end``), the temperature fitted on validation, metrics
reported once on the test split over the whole split.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict, concatenate_datasets
from transformers import set_seed

from .crystallography import ID2LABEL, NUM_SPACE_GROUPS
from .data.collator import PXRDCollator
from .data.dataset import PEAK_WAVELENGTH, dataset_metadata, load_dataset_dict
from .data.embedded import default_dataset
from .data.grid import TwoThetaGrid
from .data.render import MeasurementConditions
from .data.streaming import StreamingCrystalDataset, held_out_dataset, structure_fingerprint
from .evaluation import (
    TemperatureScaler,
    apply_temperature,
    bucket_accuracy_ci,
    hnm_most_confused_pairs,
)
from .evaluation.metrics import _BUCKETS
from .models.resnet1d_moe import ResNet1D_MoE, ResNet1DMoEConfig
from .run_outputs import (
    _check_output_dir,
    _FinishedRun,
    _push_outputs,
    _replace_outputs,
    _retarget_checkpoints,
    _save_outputs,
    longtail_markdown_table,
)
from .training import (
    PhysMoETrainer,
    PhysMoETrainingArguments,
    class_counts,
    named_predictions,
    replace_args,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DataArguments",
    "ModelArguments",
    "RunArguments",
    "build_model",
    "build_stream",
    "evaluate_checkpoint",
    "load_data",
    "longtail_markdown_table",
    "train_and_evaluate",
]

_LOGIT_ADJUSTED_PRESETS = ("balanced_softmax", "balanced_experts")


@dataclass
class ModelArguments:
    """Which model to train.

    Args:
        preset: ``ResNet1DMoEConfig.from_preset`` name ("small", "base", "reference").
        model_name_or_path: Fine-tune this checkpoint instead of starting from ``preset``.
        model_overrides: JSON object of ``ResNet1DMoEConfig`` fields to change, e.g.
            ``'{"loss_preset": "scheme2", "hierarchical_inference": "none"}'``.
    """

    preset: str = field(
        default="small", metadata={"help": "Config preset: small, base or reference."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint to fine-tune."}
    )
    model_overrides: str = field(
        default="", metadata={"help": "JSON object of config fields to change."}
    )


@dataclass
class DataArguments:
    """Which data to train and evaluate on.

    Args:
        dataset: A DatasetDict written by ``physmoe simulate`` / ``generate_dataset``,
            ``"default"`` for the embedded 12,000-structure set, or ``"stream"``: training
            crystals generated without end inside the DataLoader workers
            (:class:`~physmoe.data.StreamingCrystalDataset`; needs ``max_steps``), validation and
            test crystals generated once from the generator's own "validation" / "test" streams.
        augmentation: Training measurement conditions: ``"default"`` (random SimXRD-like
            realism, new for every batch and epoch) or ``"clean"``.
        max_train_samples / max_eval_samples: Truncate splits (quick runs).
        stream_prior / stream_seed / stream_max_atoms / stream_prior_floor: The stream's
            generator (prior "icsd", "cod", "ccdc" or "uniform"; the floor mixes in that share of
            the uniform prior so that rare groups are seen; held-out crystals use the same).
        stream_validation_size / stream_test_size: Held-out generated crystals (no structure of
            them is ever streamed: other generator streams, and excluded by fingerprint).
        patterns_per_crystal: Renderings of every streamed crystal, each with its own random
            measurement conditions (amortises generation and simulation).
        stream_crystals_per_block: Crystals generated and shuffled together.
    """

    dataset: str = field(
        default="default", metadata={"help": "DatasetDict path, 'default' or 'stream'."}
    )
    augmentation: str = field(default="default", metadata={"help": "'default' or 'clean'."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training rows."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many validation/test rows."}
    )
    stream_prior: str = field(
        default="icsd", metadata={"help": "Stream prior: icsd, cod, ccdc or uniform."}
    )
    stream_seed: int = field(default=0, metadata={"help": "Seed of the stream's generator."})
    stream_prior_floor: float = field(
        default=0.0, metadata={"help": "Share of the uniform prior mixed into stream_prior."}
    )
    stream_max_atoms: int = field(default=64, metadata={"help": "Most atoms per generated cell."})
    stream_validation_size: int = field(
        default=1000, metadata={"help": "Held-out validation crystals."}
    )
    stream_test_size: int = field(default=1000, metadata={"help": "Held-out test crystals."})
    patterns_per_crystal: int = field(
        default=8, metadata={"help": "Patterns rendered per streamed crystal."}
    )
    stream_crystals_per_block: int = field(
        default=32, metadata={"help": "Crystals generated and shuffled together."}
    )


@dataclass
class RunArguments:
    """What to do around training.

    Args:
        calibrate: Fit a softmax temperature on the validation split and store it in the config.
        overwrite_output: Replace a finished model already in ``output_dir``.
        plots: Save plots next to the model (needs matplotlib, the ``plot`` extra).
        predict_files: Files (CIF or patterns) to predict with the reloaded model at the end.
        bootstrap_samples: Bootstrap replicates for the few-shot confidence interval (two-stage:
            test classes, then structures within them).
    """

    calibrate: bool = field(default=True, metadata={"help": "Fit a temperature on validation."})
    overwrite_output: bool = field(
        default=False, metadata={"help": "Replace a finished model in output_dir."}
    )
    plots: bool = field(default=True, metadata={"help": "Save plots (needs matplotlib)."})
    predict_files: list[str] = field(
        default_factory=list, metadata={"help": "Files to predict after training."}
    )
    bootstrap_samples: int = field(
        default=1000, metadata={"help": "Bootstrap replicates for intervals."}
    )


def load_data(data_args: DataArguments, seed: int = 0) -> tuple[DatasetDict, dict]:
    """The DatasetDict and its metadata (peak wavelength, source). For ``dataset="stream"`` it
    holds the held-out ``validation`` and ``test`` splits only (see :func:`build_stream`)."""
    if data_args.dataset == "stream":
        prior, stream_seed = data_args.stream_prior, data_args.stream_seed
        name = f"streamed random crystals ({prior} prior, seed {stream_seed})"
        return _held_out_splits(data_args), {"name": name, "peak_wavelength": PEAK_WAVELENGTH}
    if data_args.dataset == "default":
        dataset = default_dataset()
        metadata = {
            "name": "physmoe embedded default (12,000 pyxtal structures)",
            "peak_wavelength": PEAK_WAVELENGTH,
        }
    else:
        dataset = load_dataset_dict(data_args.dataset)
        metadata = dict(dataset_metadata(data_args.dataset))
        metadata.setdefault("name", Path(data_args.dataset).name)
    for split in ("train", "validation", "test"):
        if split not in dataset:
            raise ValueError(
                f"dataset {data_args.dataset!r} has no {split!r} split (it has {sorted(dataset)})"
            )
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_eval_samples,
    }
    for split, limit in limits.items():
        if limit is not None and limit < 1:
            raise ValueError(
                f"max_{'train' if split == 'train' else 'eval'}_samples must be >= 1, got {limit}"
            )
        if limit is not None and limit < len(dataset[split]):
            dataset[split] = _subsample(dataset[split], limit, seed)
    return dataset, metadata


def _subsample(dataset, size: int, seed: int):
    """``size`` rows of ``dataset`` drawn at random. In memory: by default datasets writes the
    shuffled index as a cache-*.arrow file into the user's dataset folder."""
    shuffled = dataset.shuffle(seed=seed, keep_in_memory=True)
    return shuffled.select(range(size), keep_in_memory=True)


def _held_out_splits(data_args: DataArguments) -> DatasetDict:
    sizes = {"validation": data_args.stream_validation_size, "test": data_args.stream_test_size}
    for split, size in sizes.items():
        if isinstance(size, bool) or int(size) != size or size < 1:
            raise ValueError(f"stream_{split}_size must be a positive integer, got {size!r}")
        if data_args.max_eval_samples is not None:
            if data_args.max_eval_samples < 1:
                raise ValueError(f"max_eval_samples must be >= 1, got {data_args.max_eval_samples}")
            sizes[split] = min(size, data_args.max_eval_samples)
    logger.info("generating %d validation and %d test crystals", sizes["validation"], sizes["test"])
    settings = {
        "prior": data_args.stream_prior,
        "seed": data_args.stream_seed,
        "max_atoms": data_args.stream_max_atoms,
        "prior_floor": data_args.stream_prior_floor,
    }
    return DatasetDict(
        {split: held_out_dataset(split, size, **settings) for split, size in sizes.items()}
    )


def build_stream(
    data_args: DataArguments, held_out: DatasetDict | None = None
) -> StreamingCrystalDataset:
    """The training stream of ``data_args``; crystals with the fingerprint of a held-out row
    (``held_out``'s splits) are never streamed."""
    exclude = set()
    if held_out is not None and len(held_out):
        columns = ["lattice_parameters", "species", "frac_coords"]
        rows = concatenate_datasets(list(held_out.values())).select_columns(columns)
        exclude = {structure_fingerprint(*(row[name] for name in columns)) for row in rows}
    return StreamingCrystalDataset(
        data_args.stream_prior,
        seed=data_args.stream_seed,
        max_atoms=data_args.stream_max_atoms,
        patterns_per_crystal=data_args.patterns_per_crystal,
        crystals_per_block=data_args.stream_crystals_per_block,
        exclude_fingerprints=exclude,
        prior_floor=data_args.stream_prior_floor,
    )


def build_model(model_args: ModelArguments, train_class_counts: np.ndarray) -> ResNet1D_MoE:
    """A fresh model from the preset (or the checkpoint to fine-tune) with the overrides applied.
    Logit-adjusted losses get the training class prior."""
    overrides = model_args.model_overrides or {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except ValueError as error:
            raise ValueError(
                f"model_overrides must be a JSON object: {error} in {overrides!r}"
            ) from error
    if not isinstance(overrides, dict):
        raise ValueError(
            f"model_overrides must be a JSON object, got {model_args.model_overrides!r}"
        )
    import difflib
    import inspect

    known = set(inspect.signature(ResNet1DMoEConfig.__init__).parameters) - {"self"}
    known |= {"num_labels"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        hints = [
            f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
            for name in unknown
            for close in [difflib.get_close_matches(name, sorted(known), n=1)]
        ]
        raise ValueError(f"model_overrides: unknown ResNet1DMoEConfig fields {', '.join(hints)}")
    if model_args.model_name_or_path:
        from .hub import check_checkpoint_location

        # A missing folder: "no such checkpoint folder", not transformers' repo-id message.
        check_checkpoint_location(model_args.model_name_or_path)
        # Through from_dict, so that the overrides are normalised and validated like a new config's
        # (from_pretrained(..., **overrides) would set them as plain attributes).
        loaded = ResNet1DMoEConfig.from_pretrained(model_args.model_name_or_path)
        config = ResNet1DMoEConfig.from_dict({**loaded.to_dict(), **overrides})
        if config.space_group_numbers != list(range(1, NUM_SPACE_GROUPS + 1)):
            raise ValueError(
                f"{model_args.model_name_or_path} predicts {config.num_labels} labels, "
                "not the 230 space groups in "
                "order (label = number - 1) that physmoe train's datasets use; "
                "fine-tune it in your own loop"
            )
    else:
        config = ResNet1DMoEConfig.from_preset(model_args.preset, **overrides)
    if config.loss_preset in _LOGIT_ADJUSTED_PRESETS or (config.tau or 0) > 0:
        prior = train_class_counts / train_class_counts.sum()
        config.class_prior = prior.tolist()
    if model_args.model_name_or_path:
        # Architecture overrides re-initialise the layers they change (logged by transformers);
        # without overrides a checkpoint whose weights do not fit is an error.
        return ResNet1D_MoE.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=bool(overrides)
        )
    return ResNet1D_MoE(config)


#: What SpaceGroupMetrics can report (physmoe.evaluation.compute_metrics) plus the Trainer's loss;
#: expert_<k>_top1_accuracy is matched separately.
_METRIC_NAMES = frozenset(
    {
        "loss",
        "num_samples",
        "num_classes_present",
        "top1_accuracy",
        "top5_accuracy",
        "balanced_accuracy",
        "macro_f1",
        "nll",
        "ece",
        "crystal_system_accuracy",
        "crystal_system_accuracy_head",
        "crystal_system_accuracy_from_sg",
        "sg_accuracy_given_correct_system",
        "reference_bucket_scale",
        *(f"{bucket}_{kind}" for bucket in _BUCKETS for kind in ("accuracy", "num_classes")),
    }
)


def _check_metric_name(name: str | None) -> None:
    """Refuse a ``metric_for_best_model`` that evaluation never reports ("eval_" prefix optional):
    the Trainer would fail with a KeyError after the first evaluation."""
    if not name:
        return
    plain = name.removeprefix("eval_")
    if plain in _METRIC_NAMES or re.fullmatch(r"expert_\d+_top1_accuracy", plain):
        return
    close = difflib.get_close_matches(plain, sorted(_METRIC_NAMES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"metric_for_best_model {name!r} is not an evaluation metric{hint}; choose one of "
        f"{', '.join(sorted(_METRIC_NAMES))}"
    )


def _prefixed(metrics: dict, prefix: str) -> dict:
    return {k if k.startswith(prefix) else f"{prefix}{k}": v for k, v in metrics.items()}


def train_and_evaluate(
    model_args: ModelArguments,
    data_args: DataArguments,
    run_args: RunArguments,
    training_args: PhysMoETrainingArguments,
) -> dict:
    """Train, select on validation, calibrate, evaluate on test, save model + card + plots.

    Resumes from the last checkpoint in ``output_dir`` when one exists (a killed run continues).
    Returns the validation and test metrics (``validation_*``, ``test_*``) plus the temperature.
    """
    set_seed(training_args.seed)
    # Mistakes that would otherwise surface only after training.
    _check_metric_name(training_args.metric_for_best_model)
    missing = [path for path in run_args.predict_files if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"predict_files: no such file {', '.join(missing)}")
    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(local=False, desc="checking output_dir"):
        plan = _check_output_dir(
            output_dir, run_args.overwrite_output, not training_args.save_only_model
        )
    if plan.replaces:
        # The new run lives in the sibling folder until its outputs are saved (see
        # _check_output_dir); the Hub repository keeps output_dir's name.
        changes = {"output_dir": str(plan.train_dir)}
        if training_args.push_to_hub and not training_args.hub_model_id:
            changes["hub_model_id"] = Path(os.path.abspath(output_dir)).name
        training_args = replace_args(training_args, **changes)
    resume_from = training_args.resume_from_checkpoint or plan.resume_from
    if data_args.dataset == "stream" and training_args.max_steps <= 0:
        raise ValueError(
            f"dataset: stream never ends: set max_steps (got {training_args.max_steps}); "
            "num_train_epochs has no meaning for it"
        )
    dataset, metadata, train_dataset, train_counts = _training_data(data_args, training_args)
    model = build_model(model_args, train_counts)
    collator, conditions = _training_collator(model, data_args, training_args, metadata)
    trainer = PhysMoETrainer(
        model,
        training_args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=dataset["validation"],
        train_class_counts=train_counts,
    )
    logger.info(
        "training %s (%.2f M parameters) on %s structures, validating on %d",
        model_args.model_name_or_path or model_args.preset,
        model.num_parameters() / 1e6,
        "streamed" if data_args.dataset == "stream" else len(train_dataset),
        len(dataset["validation"]),
    )
    trainer.train(resume_from_checkpoint=resume_from)
    results, test, temperature = _calibrate_and_test(trainer, dataset, train_counts, run_args)

    if trainer.is_world_process_zero():
        run = _FinishedRun(dataset, metadata, conditions, train_counts, results, test, temperature)
        _save_outputs(trainer, plan.train_dir, run, plots=run_args.plots)
        if plan.replaces:
            _retarget_checkpoints(plan.train_dir, output_dir)
            _replace_outputs(plan.train_dir, output_dir)
        if trainer.args.push_to_hub:  # once the card and the results exist
            _push_outputs(trainer, output_dir)
    return results


def _training_data(data_args: DataArguments, training_args: PhysMoETrainingArguments) -> tuple:
    """``(dataset, metadata, train_dataset, train_counts)``: the splits, the training set (a
    stream for ``dataset: stream``) and its samples per class ``[230]``."""
    dataset, metadata = load_data(data_args, seed=training_args.seed)
    if data_args.dataset != "stream":
        train_dataset = dataset["train"]
        return dataset, metadata, train_dataset, class_counts(train_dataset["space_group"])
    train_dataset = build_stream(data_args, dataset)
    # The expected crystals per class over the run (label prior x patterns / patterns_per_crystal,
    # float64), for logit adjustment and the shot buckets.
    patterns = (
        training_args.max_steps
        * training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
    )
    return dataset, metadata, train_dataset, train_dataset.expected_class_counts(patterns)


def _training_collator(model, data_args: DataArguments, training_args, metadata: dict) -> tuple:
    """The training collator (on the model's grid, with the run's augmentation and seed) and its
    measurement conditions."""
    if data_args.augmentation not in ("default", "clean"):
        raise ValueError(
            f"augmentation must be 'default' or 'clean', got {data_args.augmentation!r}"
        )
    conditions = (
        MeasurementConditions.default()
        if data_args.augmentation == "default"
        else MeasurementConditions.clean()
    )
    seed = training_args.augmentation_seed
    collator = PXRDCollator(
        TwoThetaGrid.from_config(model.config),
        conditions=conditions,
        train=True,
        seed=training_args.seed if seed is None else seed,
        peaks_wavelength=float(metadata.get("peak_wavelength", PEAK_WAVELENGTH)),
    )
    return collator, conditions


def _calibrate_and_test(trainer, dataset, train_counts, run_args: RunArguments) -> tuple:
    """Fit the temperature on validation, evaluate the test split: ``(results, test predictions,
    temperature)``; results hold the validation and test metrics, the few-shot interval and the
    miner's most-confused pairs."""
    validation = trainer.predict(dataset["validation"], metric_key_prefix="validation")
    temperature = 1.0
    if run_args.calibrate:
        temperature = TemperatureScaler().fit(
            named_predictions(validation.predictions)["logits"], validation.label_ids
        )
    trainer.model.config.calibration_temperature = float(temperature)
    trainer.compute_metrics.temperature = float(temperature)
    test = trainer.predict(dataset["test"], metric_key_prefix="test")
    results = {
        **_prefixed(validation.metrics, "validation_"),
        **_prefixed(test.metrics, "test_"),
        "calibration_temperature": temperature,
    }
    test_logits = apply_temperature(named_predictions(test.predictions)["logits"], temperature)
    interval = bucket_accuracy_ci(
        test_logits,
        test.label_ids,
        train_counts,
        "few_shot",
        n_boot=run_args.bootstrap_samples,
        seed=trainer.args.seed,
    )
    if interval is not None:
        results["test_few_shot_accuracy_ci_low"] = interval.low
        results["test_few_shot_accuracy_ci_high"] = interval.high
    # What the miner learned to treat as hard negatives (decayed training counts).
    miner = getattr(trainer.accelerator.unwrap_model(trainer.model), "hard_negative_miner", None)
    if miner is not None:
        pairs = hnm_most_confused_pairs(miner.confusion_matrix, top=10, id2label=ID2LABEL)
        results["hnm_most_confused_pairs"] = [pair._asdict() for pair in pairs]
    return results, test, temperature


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    dataset: str = "default",
    split: str = "test",
    batch_size: int = 64,
    max_samples: int | None = None,
    bf16: bool | None = None,
) -> dict:
    """Metrics of a saved model on a split, over the whole split (shot buckets from the dataset's
    training split; probabilities at the checkpoint's calibration temperature)."""
    from .runtime import recommended_autocast_dtype

    if dataset == "stream":
        raise ValueError(
            "dataset 'stream' has no stored splits to evaluate: pass a saved dataset or 'default'"
        )
    from .hub import check_checkpoint_location

    checkpoint = check_checkpoint_location(checkpoint)  # before the (slow) data loading
    data, metadata = load_data(DataArguments(dataset=dataset, max_eval_samples=max_samples))
    if split not in data:
        raise ValueError(f"no split {split!r} in {dataset!r}; choose one of {sorted(data)}")
    evaluated = data[split]
    if max_samples is not None and len(evaluated) > max_samples:
        # load_data limits validation/test only; train keeps its size for the shot buckets.
        evaluated = _subsample(evaluated, max_samples, seed=0)
    model = ResNet1D_MoE.from_pretrained(checkpoint)
    use_bf16 = (
        recommended_autocast_dtype("cuda" if torch.cuda.is_available() else "cpu") == torch.bfloat16
        if bf16 is None
        else bf16
    )
    grid = TwoThetaGrid.from_config(model.config)
    collator = PXRDCollator(
        grid, train=False, peaks_wavelength=float(metadata.get("peak_wavelength", PEAK_WAVELENGTH))
    )
    with tempfile.TemporaryDirectory(
        prefix="physmoe-eval-"
    ) as scratch:  # the Trainer needs an output_dir
        args = PhysMoETrainingArguments(
            output_dir=scratch,
            per_device_eval_batch_size=batch_size,
            report_to=[],
            bf16=use_bf16,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=False,
        )
        trainer = PhysMoETrainer(
            model,
            args,
            data_collator=collator,
            train_class_counts=class_counts(data["train"]["space_group"]),
        )
        trainer.compute_metrics.temperature = float(
            getattr(model.config, "calibration_temperature", 1.0) or 1.0
        )
        output = trainer.predict(evaluated, metric_key_prefix=split)
    return {
        key: value
        for key, value in output.metrics.items()
        if not key.endswith(("_runtime", "_per_second"))
    }
