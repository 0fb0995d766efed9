"""Checkpoints left incomplete by a run killed while saving: found, skipped on resume, refused
when named."""

from __future__ import annotations

import pytest

from physmoe.checkpoints import checkpoint_problem, last_complete_checkpoint
from physmoe.training import PhysMoETrainer
from test_training import arguments, peak_rows
from tiny_models import tiny_model

# What Trainer._save_checkpoint writes, in the order it writes it (trainer_state.json last).
_CHECKPOINT_FILES = (
    "modeling_resnet1d_moe.py",
    "configuration_resnet1d_moe.py",
    "fast_path_resnet1d_moe.py",
    "loss_resnet1d_moe.py",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
)
# The files resuming reads: a missing or truncated one makes the checkpoint incomplete.
_RESUME_FILES = tuple(
    name
    for name in _CHECKPOINT_FILES
    if not name.endswith(".py") and name != "preprocessor_config.json"
)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A real run of 4 steps with checkpoint-2 and checkpoint-4 (kept pristine: copy it)."""
    out = tmp_path_factory.mktemp("checkpoints") / "out"
    args = arguments(
        out.parent, output_dir=str(out), max_steps=4, save_strategy="steps", save_steps=2
    )
    PhysMoETrainer(tiny_model(), args, train_dataset=peak_rows(16)).train()
    written = sorted(path.name for path in (out / "checkpoint-4").iterdir())
    assert written == sorted(_CHECKPOINT_FILES)
    return out


def _copy_run(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _kill_while_saving(folder, index: int) -> None:
    """As if the process died while writing file ``index`` of the save: earlier files whole, this
    one half written, later ones never written."""
    for later in _CHECKPOINT_FILES[index + 1 :]:
        (folder / later).unlink()
    _truncate(folder / _CHECKPOINT_FILES[index])


@pytest.mark.parametrize("index", range(len(_CHECKPOINT_FILES)))
def test_a_checkpoint_killed_at_any_file_of_its_save_is_skipped(
    two_checkpoints, tmp_path, caplog, index
):
    from physmoe.run_outputs import _check_output_dir

    out = _copy_run(two_checkpoints, tmp_path / "out")
    assert checkpoint_problem(out / "checkpoint-4") is None
    _kill_while_saving(out / "checkpoint-4", index)
    assert checkpoint_problem(out / "checkpoint-4") is not None
    with caplog.at_level("WARNING", logger="physmoe.checkpoints"):
        assert last_complete_checkpoint(out) == str(out / "checkpoint-2")
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    assert _check_output_dir(out, overwrite=False).resume_from == str(out / "checkpoint-2")


@pytest.mark.parametrize("name", _RESUME_FILES)
@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_checkpoint_missing_or_truncating_any_file_resuming_reads_is_incomplete(
    two_checkpoints, tmp_path, name, damage
):
    out = _copy_run(two_checkpoints, tmp_path / "out")
    path = out / "checkpoint-4" / name
    path.unlink() if damage == "delete" else _truncate(path)
    assert checkpoint_problem(out / "checkpoint-4") is not None
    assert last_complete_checkpoint(out) == str(out / "checkpoint-2")
    # Without save_only_model's optimizer/scheduler/RNG files only the model part counts.
    model_only = name in ("optimizer.pt", "scheduler.pt", "rng_state.pth") and damage == "delete"
    model_part = checkpoint_problem(out / "checkpoint-4", require_training_state=False)
    assert (model_part is None) == model_only


def test_resuming_after_a_kill_while_saving_continues_from_the_last_complete_checkpoint(
    two_checkpoints, tmp_path
):
    out = _copy_run(two_checkpoints, tmp_path / "out")
    _kill_while_saving(out / "checkpoint-4", _CHECKPOINT_FILES.index("optimizer.pt"))
    args = arguments(
        tmp_path, output_dir=str(out), max_steps=4, save_strategy="steps", save_steps=2
    )
    trainer = PhysMoETrainer(tiny_model(), args, train_dataset=peak_rows(16))
    trainer.train(resume_from_checkpoint=True)  # checkpoint-2, not the broken checkpoint-4
    assert trainer.state.global_step == 4
    assert checkpoint_problem(out / "checkpoint-4") is None  # saved again, whole this time
    _kill_while_saving(out / "checkpoint-4", _CHECKPOINT_FILES.index("trainer_state.json"))
    expected = r"cannot resume from .*checkpoint-4: trainer_state.json cannot be read"
    with pytest.raises(ValueError, match=expected):
        trainer = PhysMoETrainer(tiny_model(), args, train_dataset=peak_rows(16))
        trainer.train(str(out / "checkpoint-4"))
