"""PhysMoETrainer: loss surfacing, gradient accumulation, miner updates, logging, resume."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainerCallback

from physmoe.data import PXRDCollator, TwoThetaGrid
from physmoe.training import (
    PhysMoETrainer,
    PhysMoETrainingArguments,
    SpaceGroupMetrics,
    class_counts,
)
from tiny_models import tiny_model


def peak_rows(count: int, seed: int = 0, num_classes: int = 5) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = {"peak_two_theta": [], "peak_intensity": [], "space_group": [], "structure_id": []}
    for i in range(count):
        label = int(rng.integers(0, num_classes)) * 40  # a few well-separated groups
        n = 6 + label // 40
        positions = (
            np.sort(10 + 70 * rng.random(n)) if i % 2 else np.linspace(10 + label / 8, 80, n)
        )
        rows["peak_two_theta"].append(positions.astype(np.float32).tolist())
        rows["peak_intensity"].append((100 * rng.random(n)).astype(np.float32).tolist())
        rows["space_group"].append(label)
        rows["structure_id"].append(f"s{seed}-{i}")
    return Dataset.from_dict(rows)


def stored_rows(count: int, num_points: int = 64, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.rand(count, num_points, generator=generator)
    labels = torch.randint(0, 230, (count,), generator=generator)
    return Dataset.from_dict({"input_values": patterns.tolist(), "space_group": labels.tolist()})


def arguments(tmp_path, **overrides) -> PhysMoETrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return PhysMoETrainingArguments(**{**defaults, **overrides})


def freeze_batch_norm(model: nn.Module) -> None:
    """Keep BatchNorm in eval mode through Trainer's model.train() calls, so a batch's loss is a
    mean over independent samples (batch statistics would couple them)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.train = types.MethodType(
                lambda self, mode=True: nn.Module.train(self, False), module
            )
            module.eval()


def test_trainer_surfaces_the_physmoe_loss_and_logs_averaged_components(tmp_path):
    model = tiny_model()
    recorded = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        output = forward(*args, **kwargs)
        if model.training:
            recorded.append({k: float(v) for k, v in output.loss_components.items()})
        return output

    model.forward = recording_forward
    trainer = PhysMoETrainer(
        model, arguments(tmp_path, logging_steps=2, max_steps=4), train_dataset=peak_rows(16)
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss_dol" in entry]
    assert len(logs) == 2
    for log, steps in zip(logs, (recorded[0:2], recorded[2:4]), strict=True):
        for name in ("loss_scl", "loss_dol", "loss_col", "loss_sys", "loss_sg", "loss_reg"):
            assert log[name] == pytest.approx(
                np.mean([step[name] for step in steps]), rel=1e-4, abs=1e-6
            )


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    # Cross-entropy is a mean over independent samples once BatchNorm is frozen: accumulating two
    # batches of 4 must give the update of one batch of 8 (the Trainer's GA-scaling trap doubles
    # it).
    data = stored_rows(8)
    finals = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        model = tiny_model(loss_preset="cross_entropy")
        freeze_batch_norm(model)
        args = arguments(
            tmp_path,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
        )
        trainer = PhysMoETrainer(
            model,
            args,
            train_dataset=data,
            data_collator=PXRDCollator(TwoThetaGrid.from_config(model.config)),
        )
        trainer.train()
        finals.append(model)
    start = tiny_model(loss_preset="cross_entropy").state_dict()
    one, two = (m.state_dict() for m in finals)
    moved = [
        name
        for name in one
        if one[name].is_floating_point() and not torch.equal(one[name], start[name])
    ]
    assert moved, "training changed nothing"
    for name in moved:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    # The miner saw the whole accumulated batch once: identical state either way.
    for buffer in ("prototypes", "confusion_matrix"):
        assert torch.equal(
            getattr(finals[0].hard_negative_miner, buffer),
            getattr(finals[1].hard_negative_miner, buffer),
        )
    # 8 samples counted once, then the end-of-epoch decay.
    assert float(finals[0].hard_negative_miner.confusion_matrix.sum()) == pytest.approx(
        8 * (1 - 0.9)
    )


def test_miner_counts_every_training_sample_and_decays_once_per_epoch(tmp_path):
    model = tiny_model()
    data = peak_rows(18)  # 4 full batches per epoch; the remainder of 2 is dropped
    trainer = PhysMoETrainer(model, arguments(tmp_path, num_train_epochs=2), train_dataset=data)
    trainer.train()
    momentum = model.config.hnm_momentum
    # Epoch 1 adds 16 and decays, epoch 2 adds 16 and decays.
    expected = (16 * (1 - momentum) + 16) * (1 - momentum)
    assert float(model.hard_negative_miner.confusion_matrix.sum()) == pytest.approx(
        expected, rel=1e-6
    )
    seen = torch.zeros(230, dtype=torch.bool)
    seen[torch.tensor(data["space_group"])] = True
    has_prototype = model.hard_negative_miner.prototypes.abs().sum(1) > 0
    assert torch.equal(has_prototype, seen)


def test_plain_training_arguments_keep_the_peak_columns(tmp_path, caplog):
    from transformers import TrainingArguments

    plain = TrainingArguments(
        **{
            k: v
            for k, v in vars(arguments(tmp_path, max_steps=2)).items()
            if k
            in (
                "output_dir",
                "per_device_train_batch_size",
                "max_steps",
                "report_to",
                "use_cpu",
                "seed",
                "disable_tqdm",
                "save_strategy",
            )
        }
    )
    assert plain.remove_unused_columns
    model = tiny_model()
    trainer = PhysMoETrainer(model, plain, train_dataset=peak_rows(8))
    trainer.train()  # HF Dataset rows with peak columns only: nothing is removed
    assert trainer.state.global_step == 2 and "remove_unused_columns=True would drop" in caplog.text
    assert plain.remove_unused_columns  # the caller's arguments are not modified


def test_miner_update_can_be_switched_off(tmp_path):
    model = tiny_model()
    args = arguments(tmp_path, max_steps=2, update_hard_negative_miner=False)
    PhysMoETrainer(model, args, train_dataset=peak_rows(8)).train()
    assert float(model.hard_negative_miner.confusion_matrix.abs().sum()) == 0.0
    assert float(model.hard_negative_miner.prototypes.abs().sum()) == 0.0


def _host_reads_in_compute_loss(trainer: PhysMoETrainer) -> list[str]:
    """Train, recording every host read of a tensor (a device sync on a GPU) inside compute_loss:
    the forward, the loss and the miner update."""
    reads, compute_loss = [], trainer.compute_loss

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            reads.append(name)
            return original(self, *args, **kwargs)

        return read

    def counted_compute_loss(*args, **kwargs):
        with pytest.MonkeyPatch.context() as patch:
            for name in ("__bool__", "item", "tolist", "__int__", "__float__", "numpy"):
                patch.setattr(torch.Tensor, name, counting(name))
            return compute_loss(*args, **kwargs)

    trainer.compute_loss = counted_compute_loss
    trainer.train()
    return reads


def test_training_with_the_validating_collator_has_no_host_sync_per_step(tmp_path):
    class Record(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.seen.append((model._skip_value_checks, model.hard_negative_miner.validate))

    model, record = tiny_model(), Record()
    trainer = PhysMoETrainer(
        model, arguments(tmp_path, max_steps=2), train_dataset=peak_rows(8), callbacks=[record]
    )
    assert (
        _host_reads_in_compute_loss(trainer) == []
    )  # PXRDCollator checked the batches on the host
    assert record.seen == [(True, False)] * 2
    assert (model._skip_value_checks, model.hard_negative_miner.validate) == (False, True)

    # Any other collator: the model checks every batch itself, reading flags on the host.
    record.seen.clear()

    def plain(rows):
        return {
            "input_values": torch.tensor([r["input_values"] for r in rows]),
            "labels": torch.tensor([r["space_group"] for r in rows]),
        }

    trainer = PhysMoETrainer(
        model,
        arguments(tmp_path, max_steps=2),
        data_collator=plain,
        train_dataset=stored_rows(8),
        callbacks=[record],
    )
    assert "__bool__" in _host_reads_in_compute_loss(trainer)
    assert record.seen == [(False, True)] * 2


def test_evaluation_uses_clean_patterns_and_whole_split_metrics(tmp_path):
    model = tiny_model()
    train, validation = peak_rows(16, seed=0), peak_rows(10, seed=1)
    trainer = PhysMoETrainer(
        model, arguments(tmp_path, max_steps=1), train_dataset=train, eval_dataset=validation
    )
    first, second = trainer.evaluate(), trainer.evaluate()
    assert first["eval_top1_accuracy"] == second["eval_top1_accuracy"]
    assert first["eval_loss"] == pytest.approx(second["eval_loss"], rel=1e-6)
    # The metrics are those of the whole split, computed from clean renderings.
    clean = PXRDCollator(TwoThetaGrid.from_config(model.config), train=False)(list(validation))
    model.eval()
    with torch.no_grad():
        outputs = model(clean["input_values"])
    accuracy = float((outputs.logits.argmax(1) == clean["labels"]).float().mean())
    assert first["eval_top1_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    # Per-expert accuracy from the experts' arg-max, gathered instead of their [N, K, C] logits.
    for k in range(model.config.num_experts):
        expert_accuracy = float(
            (outputs.expert_logits[:, k].argmax(1) == clean["labels"]).float().mean()
        )
        assert first[f"eval_expert_{k}_top1_accuracy"] == pytest.approx(expert_accuracy, abs=1e-6)
    predicted = trainer.predict(validation).predictions
    assert [tuple(part.shape) for part in predicted] == [
        (10, 230),
        (10, 230),
        (10, 7),
        (10, model.config.num_experts),
    ]
    assert "eval_few_shot_accuracy" in first and "eval_balanced_accuracy" in first
    assert trainer.train_class_counts.sum() == 16


def test_training_loss_decreases(tmp_path):
    model = tiny_model()
    args = arguments(tmp_path, num_train_epochs=8, learning_rate=3e-3, logging_steps=4)
    trainer = PhysMoETrainer(model, args, train_dataset=peak_rows(32))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_resume_from_a_mid_training_checkpoint_matches_an_uninterrupted_run(tmp_path):
    data = peak_rows(24)

    def run(output_dir, resume=None, max_steps=None):
        model = tiny_model(hidden_dropout_prob=0.2)
        args = arguments(
            tmp_path,
            output_dir=str(output_dir),
            num_train_epochs=2,
            save_strategy="steps",
            save_steps=4,
            logging_steps=3,
        )
        trainer = PhysMoETrainer(model, args, train_dataset=data)
        if max_steps is not None:  # stop early, as a killed run would
            trainer.add_callback(_StopAt(max_steps))
        trainer.train(resume_from_checkpoint=resume)
        return model

    full = run(tmp_path / "full")
    run(tmp_path / "part", max_steps=4)  # 6 steps per epoch: stops inside epoch 1
    resumed = run(tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-4"))
    expected, actual = full.state_dict(), resumed.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert float(full.hard_negative_miner.confusion_matrix.sum()) > 0


class _StopAt:
    def __init__(self, step: int):
        self.step = step

    def __getattr__(self, name):  # every other callback event is a no-op
        if name.startswith("on_"):
            return lambda args, state, control, **kwargs: control
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


def test_metrics_callable_and_class_counts():
    logits = np.eye(230, dtype=np.float32)[[0, 1, 2, 2]]
    system_logits = np.zeros((4, 7), dtype=np.float32)
    from transformers import EvalPrediction

    metrics = SpaceGroupMetrics(class_counts([0, 0, 1]))(
        EvalPrediction((logits, logits, system_logits), np.array([0, 1, 2, 3]))
    )
    assert metrics["top1_accuracy"] == pytest.approx(0.75)
    assert metrics["few_shot_accuracy"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="0..229"):
        class_counts([0, 230])


def test_named_predictions_follow_prediction_step(tmp_path):
    from physmoe.training import PREDICTION_FIELDS, named_predictions

    model = tiny_model()
    args = arguments(tmp_path, output_dir=str(tmp_path / "out"), max_steps=1)
    trainer = PhysMoETrainer(model, args, train_dataset=peak_rows(8), eval_dataset=peak_rows(8))
    output = trainer.predict(peak_rows(8))
    named = named_predictions(output.predictions)
    assert tuple(named) == PREDICTION_FIELDS
    assert named["logits"].shape == named["ensemble_logits"].shape == (8, 230)
    assert named["crystal_system_logits"].shape == (8, 7)
    assert named["expert_predictions"].shape == (8, model.config.num_experts)
    model.eval()
    batch = trainer.eval_data_collator([peak_rows(8)[i] for i in range(8)])
    with torch.no_grad():
        direct = model(batch["input_values"])
    np.testing.assert_allclose(named["logits"], direct.logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        named["crystal_system_logits"], direct.crystal_system_logits.numpy(), rtol=1e-4, atol=1e-4
    )
    assert named_predictions(named["logits"]) == {"logits": named["logits"]}
    with pytest.raises(ValueError, match="at most 4 prediction arrays"):
        named_predictions((1, 2, 3, 4, 5))


def test_total_flos_are_the_trainers_estimate(tmp_path):
    # PhysMoETrainer counts the parameters once instead of every step: total_flos must equal
    # transformers' own per-step estimate (6 x input values x non-embedding parameters) summed.
    model = tiny_model()
    trainer = PhysMoETrainer(model, arguments(tmp_path, max_steps=3), train_dataset=peak_rows(16))
    trainer.train()
    batch = {"input_values": torch.zeros(4, model.config.num_points)}
    expected = Trainer.floating_point_ops(trainer, batch)
    assert expected == 6 * 4 * model.config.num_points * model.num_parameters(
        exclude_embeddings=True
    )
    assert trainer.floating_point_ops(batch) == expected
    assert trainer.state.total_flos == 3 * expected
