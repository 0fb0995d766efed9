"""Training ResNet1D_MoE with the Hugging Face :class:`~transformers.Trainer`.

:class:`PhysMoETrainer` is a ``Trainer`` whose loss is the model's PhysMoE loss and which keeps
the model's hard-negative miner (HNM) up to date:

* ``compute_loss`` returns the loss of the model's forward (a per-batch mean, so the Trainer
  divides it by the gradient-accumulation steps: ``loss_is_scaled_for_ga = False``);
* each loss component (``loss_dol``, ``loss_sg``, ...) is summed on the device and logged as its
  average over the logging interval -- one host sync per log, none per step;
* the miner is updated once per optimizer step from the *global* batch: the micro-batches of a
  gradient-accumulation cycle are concatenated and, under DDP, gathered from every process, and
  every process applies the same update (so DDP's buffer broadcast changes nothing);
* the miner's epoch momentum is applied by :class:`PhysMoECallback` at the end of every epoch
  (before that epoch's evaluation and checkpoint, so the checkpoint holds it);
* evaluation renders clean, deterministic patterns (:class:`~physmoe.data.PXRDCollator` with
  ``train=False``) while training renders new measurement conditions for every batch;
* metrics are computed over the whole evaluation split by :class:`SpaceGroupMetrics`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments

from .checkpoints import checkpoint_problem, last_complete_checkpoint
from .crystallography import NUM_SPACE_GROUPS
from .data.collator import PXRDCollator
from .data.feature_extraction import XRDFeatureExtractor
from .data.grid import TwoThetaGrid
from .data.streaming import STREAM_STATE_FILE, StreamingCrystalDataset
from .evaluation import apply_temperature, compute_metrics

logger = logging.getLogger(__name__)

__all__ = [
    "PREDICTION_FIELDS",
    "PhysMoETrainingArguments",
    "PhysMoETrainer",
    "PhysMoECallback",
    "named_predictions",
    "SpaceGroupMetrics",
    "StreamPositionCallback",
    "checkpoint_problem",
    "class_counts",
    "last_complete_checkpoint",
]


@dataclass
class PhysMoETrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults that suit PXRD training, and the miner switch.

    Changed defaults: ``remove_unused_columns=False`` (the collator reads the peak columns, which
    are no forward arguments), ``logging_nan_inf_filter=False`` (the filter costs a host sync every
    step), ``ddp_find_unused_parameters=False`` (every parameter receives a gradient, so DDP's
    extra graph traversal is waste). Training batches drop an epoch's incomplete last batch
    (see :meth:`PhysMoETrainer.get_train_dataloader`); evaluation never drops samples.

    Args:
        update_hard_negative_miner (`bool`, defaults to True): update the model's hard-negative
            miner (prototypes and confusion matrix) from every optimizer step's global batch and
            decay its confusion counts once per epoch.
        augmentation_seed (`int`, *optional*): seed of the training collator's measurement
            conditions (default: ``seed``). Each batch's conditions are a function of this seed,
            the epoch and the batch's structures, so a resumed run renders exactly what an
            uninterrupted one would.
    """

    remove_unused_columns: bool = False
    logging_nan_inf_filter: bool = False
    ddp_find_unused_parameters: bool | None = False
    update_hard_negative_miner: bool = field(
        default=True, metadata={"help": "Update the hard-negative miner from the global batch."}
    )
    augmentation_seed: int | None = field(
        default=None, metadata={"help": "Seed of the training augmentation (default: seed)."}
    )


def class_counts(
    labels: Sequence[int] | np.ndarray | torch.Tensor, num_classes: int = NUM_SPACE_GROUPS
) -> np.ndarray:
    """Samples per class, int64 ``[num_classes]`` (the training counts the shot buckets use)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}"
        )
    return np.bincount(labels, minlength=num_classes)


#: What :meth:`PhysMoETrainer.prediction_step` keeps of the model's outputs, in the order the
#: Trainer returns them as ``predictions`` (the later ones may be absent).
PREDICTION_FIELDS = ("logits", "ensemble_logits", "crystal_system_logits", "expert_predictions")


def named_predictions(predictions) -> dict:
    """A Trainer's ``predictions`` from :class:`PhysMoETrainer` by name (:data:`PREDICTION_FIELDS`):
    ``logits [N, C]``, ``ensemble_logits [N, C]``, ``crystal_system_logits [N, 7]``,
    ``expert_predictions [N, K]``."""
    values = predictions if isinstance(predictions, tuple) else (predictions,)
    if len(values) > len(PREDICTION_FIELDS):
        raise ValueError(
            f"expected at most {len(PREDICTION_FIELDS)} prediction arrays {PREDICTION_FIELDS}, "
            f"got {len(values)} (were explicit ignore_keys passed to predict?)"
        )
    return dict(zip(PREDICTION_FIELDS, values, strict=False))


class SpaceGroupMetrics:
    """``compute_metrics`` for the Trainer: :func:`physmoe.evaluation.compute_metrics` over the
    whole evaluation split.

    The Trainer passes the model outputs that :meth:`PhysMoETrainer.prediction_step` keeps:
    ``(logits [N, C], ensemble_logits [N, C], crystal_system_logits [N, 7], expert_predictions
    [N, K])``; the last two are optional.

    Args:
        train_class_counts: training samples per class ``[C]`` (for the shot buckets), or None.
        temperature: divide the logits by this before computing probability metrics (ECE, NLL).
    """

    def __init__(
        self, train_class_counts: Sequence[int] | np.ndarray | None = None, temperature: float = 1.0
    ):
        self.train_class_counts = (
            None if train_class_counts is None else np.asarray(train_class_counts)
        )
        self.temperature = float(temperature)

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        outputs = named_predictions(prediction.predictions)
        logits = apply_temperature(
            np.asarray(outputs["logits"], dtype=np.float32), self.temperature
        )
        metrics = compute_metrics(
            logits,
            np.asarray(prediction.label_ids),
            train_class_counts=self.train_class_counts,
            crystal_system_logits=outputs.get("crystal_system_logits"),
            expert_predictions=outputs.get("expert_predictions"),
        )
        # Counts stay (they say how many classes a bucket mean covers); absent buckets are omitted.
        return {key: value for key, value in metrics.items() if value is not None}


class PhysMoECallback(TrainerCallback):
    """Epoch bookkeeping: the miner's epoch momentum and the training collator's epoch."""

    def __init__(self, trainer: PhysMoETrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        collator = self.trainer.data_collator
        if hasattr(collator, "set_epoch"):
            collator.set_epoch(int(state.epoch or 0))

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if getattr(args, "update_hard_negative_miner", True) and hasattr(
            model, "apply_epoch_momentum"
        ):
            model.apply_epoch_momentum()


class StreamPositionCallback(TrainerCallback):
    """Keeps a :class:`~physmoe.data.StreamingCrystalDataset`'s position in the checkpoints.

    Every checkpoint gets ``physmoe_stream.json``: the stream's :meth:`state_dict` after
    ``global_step * gradient_accumulation_steps`` batches per rank (written by the main process).
    :meth:`PhysMoETrainer.train` reads it back on resume."""

    def __init__(self, trainer: PhysMoETrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        dataset = self.trainer.train_dataset
        if not isinstance(dataset, StreamingCrystalDataset) or not args.should_save:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            logger.warning("no checkpoint folder %s: stream position not saved", folder)
            return
        batches = self.trainer.stream_batches(state.global_step)
        position = dataset.state_dict(batches_per_rank=batches)
        (folder / STREAM_STATE_FILE).write_text(json.dumps(position, indent=1))


# -- what PhysMoETrainer.__init__ fills in before handing over to Trainer.__init__ ---------------


def _with_physmoe_defaults(args: TrainingArguments | None) -> TrainingArguments:
    """``args``, or physmoe's defaults when None; plain ``TrainingArguments`` are made to keep the
    peak columns."""
    if args is None:
        return PhysMoETrainingArguments(output_dir="trainer_output")
    if not isinstance(args, PhysMoETrainingArguments) and args.remove_unused_columns:
        # Plain TrainingArguments default to True, which drops the peak columns the collator
        # renders from (they are no forward arguments) and fails with "no columns match".
        logger.warning(
            "remove_unused_columns=True would drop the peak columns PXRDCollator renders from; "
            "using False "
            "(PhysMoETrainingArguments has physmoe's defaults)"
        )
        return replace_args(args, remove_unused_columns=False)
    return args


def _default_collators(model, args: TrainingArguments, data_collator, eval_data_collator) -> tuple:
    """``(data_collator, eval_data_collator)`` with the defaults filled in: for training a
    :class:`PXRDCollator` on the model's grid, for evaluation a training PXRDCollator's clean,
    deterministic twin."""
    if data_collator is None and model is not None:
        seed = getattr(args, "augmentation_seed", None)
        data_collator = PXRDCollator(
            TwoThetaGrid.from_config(model.config),
            train=True,
            seed=args.seed if seed is None else seed,
            num_labels=model.config.num_labels,
        )
    if eval_data_collator is None and isinstance(data_collator, PXRDCollator):
        eval_data_collator = replace(data_collator, train=False)
    return data_collator, eval_data_collator


def _default_class_counts(model, args: TrainingArguments, train_dataset, train_class_counts):
    """``train_class_counts`` if given, else counted from the training data (a stream's expected
    crystals per class over ``max_steps``, a dataset's ``space_group`` column) or None. Refuses a
    stream without ``max_steps``."""
    if isinstance(train_dataset, StreamingCrystalDataset):
        if args.max_steps is None or args.max_steps <= 0:
            raise ValueError(
                f"a StreamingCrystalDataset never ends: set max_steps (got {args.max_steps})"
            )
        if train_class_counts is None:
            patterns = (
                args.max_steps
                * args.per_device_train_batch_size
                * args.gradient_accumulation_steps
                * args.world_size
            )
            train_class_counts = train_dataset.expected_class_counts(patterns)
    if (
        train_class_counts is None
        and train_dataset is not None
        and "space_group" in getattr(train_dataset, "column_names", ())
    ):
        train_class_counts = class_counts(train_dataset["space_group"], model.config.num_labels)
    return train_class_counts


class PhysMoETrainer(Trainer):
    """A :class:`~transformers.Trainer` for :class:`~physmoe.ResNet1D_MoE`.

    Beyond ``Trainer``'s arguments:

    Args:
        train_class_counts: training samples per class ``[C]`` for the shot-bucket metrics; by
            default counted from ``train_dataset["space_group"]`` when that column exists.
        eval_data_collator: collator for evaluation and prediction (default: the training
            collator's grid with clean, deterministic conditions).

    ``train_dataset`` may be a :class:`~physmoe.data.StreamingCrystalDataset` (set ``max_steps``):
    every rank then reads its own part of the stream with ``dataloader_num_workers`` workers
    that generate, simulate and render; checkpoints hold the stream position
    (``physmoe_stream.json``) and a resumed run continues after it instead of skipping batches;
    the class counts default to the stream's expected crystals per class over ``max_steps``.

    With ``data_collator=None`` the training collator is a :class:`PXRDCollator` on the model's
    grid with the default (SimXRD-like) measurement conditions. ``compute_metrics=None`` uses
    :class:`SpaceGroupMetrics`. ``processing_class=None`` uses the model's
    :class:`~physmoe.XRDFeatureExtractor`, so every checkpoint and pushed repository carries its
    ``preprocessor_config.json``; ``push_to_hub`` writes physmoe's model card.
    """

    # The model's loss is a per-batch mean: let the Trainer divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model=None,
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        *,
        train_class_counts: Sequence[int] | np.ndarray | None = None,
        eval_data_collator=None,
        compute_metrics=None,
        **kwargs,
    ):
        args = _with_physmoe_defaults(args)
        data_collator, eval_data_collator = _default_collators(
            model, args, data_collator, eval_data_collator
        )
        train_class_counts = _default_class_counts(model, args, train_dataset, train_class_counts)
        if compute_metrics is None:
            compute_metrics = SpaceGroupMetrics(train_class_counts)
        if kwargs.get("processing_class") is None and model is not None:
            kwargs["processing_class"] = XRDFeatureExtractor.from_config(model.config)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics,
            **kwargs,
        )
        self.train_class_counts = train_class_counts
        self.eval_data_collator = eval_data_collator or self.data_collator
        self.add_callback(PhysMoECallback(self))
        self.add_callback(StreamPositionCallback(self))
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_steps = 0
        self._miner_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # Per-step lookups that cost ~1 ms each on a CPU step of ~65 ms, done once per wrapper.
        self._unwrapped: tuple[torch.nn.Module, torch.nn.Module] | None = None
        self._flos_per_value: tuple[torch.nn.Module, int] | None = None

    # -- data -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _swapped(self, **attributes) -> Iterator[None]:
        saved = {name: getattr(self, name) for name in attributes}
        for name, value in attributes.items():
            setattr(self, name, value)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``. With a :class:`~physmoe.data.PXRDCollator`, which checks labels and
        patterns on the host as it collates, the model's own per-step value checks (each a host
        sync, see ``config.validate_inputs``) are switched off for the run
        (:meth:`~physmoe.ResNet1D_MoE.value_checks_disabled`).

        With a :class:`~physmoe.data.StreamingCrystalDataset` a resumed run restores the stream
        position from the checkpoint and does not skip (regenerate) the consumed batches.

        ``resume_from_checkpoint=True`` resumes from the last *complete* checkpoint in
        ``output_dir`` (:func:`last_complete_checkpoint`: folders left incomplete by a run killed
        while saving are skipped with a warning); a named checkpoint that is incomplete is an
        error saying what it lacks."""
        resume_from_checkpoint = self._checked_resume(resume_from_checkpoint)
        with contextlib.ExitStack() as stack:
            if isinstance(self.train_dataset, StreamingCrystalDataset):
                self._restore_stream(resume_from_checkpoint)
                no_skip = replace_args(self.args, ignore_data_skip=True)
                stack.enter_context(self._swapped(args=no_skip))
                stack.enter_context(self._cpu_threads_beside_workers())
            collator, config = self.data_collator, getattr(self.model, "config", None)
            checked_on_host = (
                isinstance(collator, PXRDCollator)
                and config is not None
                and collator.num_labels <= config.num_labels
            )
            if checked_on_host and hasattr(self.model, "value_checks_disabled"):
                stack.enter_context(self.model.value_checks_disabled())
            return super().train(resume_from_checkpoint, *args, **kwargs)

    @contextlib.contextmanager
    def _cpu_threads_beside_workers(self) -> Iterator[None]:
        """On the CPU, leave one core to every stream worker: torch's OpenMP threads wait for
        each other at every operator, and one of them pre-empted by a busy worker stalls the
        step (10-30x slower on 2 cores with 2 threads + 1 worker before the renderer was
        compiled; since then 51-91% of the bare step against 60-64% with 1 thread, so keeping
        2 threads gains nothing dependable)."""
        workers = self.args.dataloader_num_workers
        threads = torch.get_num_threads()
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if self.args.device.type != "cpu" or workers == 0 or threads + workers <= (cpus or 1):
            yield
            return
        fewer = max(1, (cpus or 1) - workers)
        logger.info(
            "%d stream workers on %d CPUs: training with %d torch threads instead of %d",
            workers,
            cpus,
            fewer,
            threads,
        )
        torch.set_num_threads(fewer)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def stream_batches(self, global_step: int) -> int:
        """Batches every rank has taken from the training stream after ``global_step`` steps."""
        return int(global_step) * self.args.gradient_accumulation_steps

    def _configure_stream(self) -> StreamingCrystalDataset:
        return self.train_dataset.configure(
            batch_size=self._train_batch_size,
            num_workers=self.args.dataloader_num_workers,
            rank=self.args.process_index,
            world_size=self.args.world_size,
        )

    def _checked_resume(self, resume_from_checkpoint):
        """``resume_from_checkpoint`` with ``True`` turned into the last complete checkpoint; a
        named incomplete one is refused."""
        require_state = not self.args.save_only_model
        if isinstance(resume_from_checkpoint, bool):
            if not resume_from_checkpoint:
                return None
            last = last_complete_checkpoint(self.args.output_dir, require_state)
            if last is None:
                raise ValueError(f"no complete checkpoint in {self.args.output_dir} to resume from")
            return last
        if resume_from_checkpoint is not None:
            problem = checkpoint_problem(resume_from_checkpoint, require_state)
            if problem is not None:
                raise ValueError(
                    f"cannot resume from {resume_from_checkpoint}: {problem} (a run killed while "
                    "saving it?); resume from an earlier checkpoint or start afresh"
                )
        return resume_from_checkpoint

    def _restore_stream(self, resume_from_checkpoint) -> None:
        stream = self._configure_stream()
        if not resume_from_checkpoint:
            return
        folder = Path(resume_from_checkpoint)
        state_file = folder / STREAM_STATE_FILE
        if state_file.is_file():
            stream.load_state_dict(json.loads(state_file.read_text()))
            logger.info("training stream continues after %s", state_file)
            return
        trainer_state = folder / "trainer_state.json"
        steps = 0
        if trainer_state.is_file():
            steps = json.loads(trainer_state.read_text()).get("global_step", 0)
        logger.warning(
            "%s has no %s: assuming the stream was read with the current layout for %d steps",
            folder,
            STREAM_STATE_FILE,
            steps,
        )
        stream.load_state_dict(stream.state_dict(batches_per_rank=self.stream_batches(steps)))

    def get_train_dataloader(self):
        if isinstance(self.train_dataset, StreamingCrystalDataset):
            return self._stream_dataloader()
        # A last training batch of one sample breaks BatchNorm; dropping the remainder of a
        # shuffled epoch loses nothing systematic. Evaluation never drops samples.
        args = replace_args(self.args, dataloader_drop_last=True)
        if (
            args.dataloader_persistent_workers
            and args.dataloader_num_workers > 0
            and hasattr(self.data_collator, "set_epoch")
        ):
            logger.warning(
                "dataloader_persistent_workers keeps each worker's copy of the collator "
                "from the first epoch: "
                "training batches get the same measurement conditions every epoch"
            )
        with self._swapped(args=args):
            return super().get_train_dataloader()

    def _stream_dataloader(self):
        """Each rank reads its own slots of the stream (see :mod:`physmoe.data.streaming`), so the
        DataLoader is prepared for one process: accelerate's default for an IterableDataset
        (rank 0 generates everything and dispatches it) or its sharding (every rank generates
        everything) would waste the other ranks' cores."""
        from accelerate.data_loader import prepare_data_loader
        from torch.utils.data import DataLoader

        stream, args = self._configure_stream(), self.args
        workers = args.dataloader_num_workers
        loader = DataLoader(
            stream,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
            multiprocessing_context=(
                args.dataloader_multiprocessing_context if workers > 0 else None
            ),
            timeout=stream.worker_timeout if workers > 0 else 0,
        )
        return prepare_data_loader(
            loader,
            self.args.device,
            num_processes=1,
            process_index=0,
            put_on_device=True,
            dispatch_batches=False,
            non_blocking=self.accelerator.non_blocking,
        )

    def get_eval_dataloader(self, eval_dataset=None):
        with self._swapped(data_collator=self.eval_data_collator):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._swapped(data_collator=self.eval_data_collator):
            return super().get_test_dataloader(test_dataset)

    # -- loss -----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training and loss is not None:
            self._accumulate_components(outputs.loss_components)
            if getattr(self.args, "update_hard_negative_miner", True):
                self._collect_for_miner(model, outputs, inputs["labels"])
        return (loss, outputs) if return_outputs else loss

    def _accumulate_components(self, components: dict[str, torch.Tensor] | None) -> None:
        for name, value in (components or {}).items():
            value = value.detach().float()
            self._component_sums[name] = (
                self._component_sums[name] + value if name in self._component_sums else value
            )
        # One increment per micro-batch; the Trainer's own loss is averaged per optimizer step and
        # so is this (sum over micro-batches / their number).
        self._component_steps += 1

    def _collect_for_miner(self, model, outputs, labels: torch.Tensor) -> None:
        # What the miner sees: trunk features and the gated ensemble's prediction (the experts'
        # raw confusion among all classes, not narrowed by hierarchical inference).
        self._miner_batches.append(
            (
                outputs.features.detach().float(),
                outputs.ensemble_logits.detach().argmax(dim=-1),
                labels.detach(),
            )
        )
        if not self.accelerator.sync_gradients:
            return  # wait for the last micro-batch of this optimizer step
        features, predictions, labels = (
            torch.cat(parts) for parts in zip(*self._miner_batches, strict=True)
        )
        self._miner_batches.clear()
        if self.accelerator.num_processes > 1:  # every process gets the global batch
            features, predictions, labels = self.accelerator.gather((features, predictions, labels))
        self._unwrapped_model(model).update_hard_negative_miner(features, predictions, labels)

    def _unwrapped_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``accelerator.unwrap_model(model)``, looked up once per wrapped model."""
        if self._unwrapped is None or self._unwrapped[0] is not model:
            self._unwrapped = (model, self.accelerator.unwrap_model(model))
        return self._unwrapped[1]

    def floating_point_ops(self, inputs: dict) -> int:
        """The Trainer's estimate (6 x input values x parameters, for ``total_flos``), with the
        parameter count taken once per model instead of at every step."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._flos_per_value is None or self._flos_per_value[0] is not self.model:
            count = self.model.num_parameters(exclude_embeddings=True)
            self._flos_per_value = (self.model, 6 * count)
        return inputs[main_input].numel() * self._flos_per_value[1]

    # -- evaluation -----------------------------------------------------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """``Trainer.prediction_step``, keeping the experts' arg-max instead of dropping them.

        The config's ``keys_to_ignore_at_inference`` drops ``expert_logits`` ``[B, K, C]``; here
        they are reduced to ``[B, K]`` predictions on the device, before the Trainer gathers and
        concatenates them, so per-expert accuracy costs K integers per sample. The outputs are
        ``(logits, ensemble_logits, crystal_system_logits, expert_predictions)``. Explicit
        ``ignore_keys`` are used as given.
        """
        if ignore_keys is None:
            ignored = getattr(self.model.config, "keys_to_ignore_at_inference", [])
            ignore_keys = [key for key in ignored if key != "expert_logits"]
        loss, outputs, labels = super().prediction_step(
            model, inputs, prediction_loss_only, ignore_keys=ignore_keys
        )
        if isinstance(outputs, tuple):  # the experts' logits are the only 3-D output
            outputs = tuple(value.argmax(dim=-1) if value.ndim == 3 else value for value in outputs)
        return loss, outputs, labels

    def create_model_card(
        self, model_name: str | None = None, finetuned_from: str | None = None, **kwargs
    ) -> None:
        """physmoe's card (``physmoe.hub.write_model_card``) instead of transformers' generic one:
        the test metrics come from ``output_dir/all_results.json`` when ``physmoe train`` wrote
        it (the card's model-index reports the test split only, so none otherwise)."""
        if not self.is_world_process_zero():
            return
        from .hub import write_model_card

        output_dir = Path(self.args.output_dir)
        results_file = output_dir / "all_results.json"
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        test_metrics = {key: value for key, value in results.items() if key.startswith("test_")}
        write_model_card(
            output_dir,
            metrics=test_metrics or None,
            model_name=model_name,
            base_model=finetuned_from,
            repo_id=self.hub_model_id,
            overwrite=True,
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._component_steps:
            names = sorted(self._component_sums)
            stacked = (
                torch.stack([self._component_sums[name] for name in names]) / self._component_steps
            )
            if self.accelerator.num_processes > 1:
                stacked = self.accelerator.reduce(stacked, reduction="mean")
            for name, value in zip(names, stacked.tolist(), strict=True):  # one sync per log
                logs[name] = round(value, 6)
            self._component_sums.clear()
            self._component_steps = 0
        super().log(logs, start_time)


def replace_args(args: TrainingArguments, **changes) -> TrainingArguments:
    """A shallow copy of ``args`` with some attributes changed (TrainingArguments re-validates in
    ``__post_init__``; attribute assignment on a copy avoids re-running it)."""
    import copy

    new = copy.copy(args)
    for name, value in changes.items():
        object.__setattr__(new, name, value)
    return new
