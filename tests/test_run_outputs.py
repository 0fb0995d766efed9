"""physmoe.run_outputs: replacing or resuming the outputs of finished and killed runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


def real_checkpoint(output_dir: Path, steps: int = 2) -> Path:
    """A complete Trainer checkpoint ``output_dir/checkpoint-{steps}`` of a tiny model."""
    from datasets import Dataset

    from physmoe.training import PhysMoETrainer, PhysMoETrainingArguments
    from tiny_models import tiny_model

    rng = np.random.default_rng(0)
    rows = {
        "peak_two_theta": [np.sort(10 + 70 * rng.random(6)).tolist() for _ in range(8)],
        "peak_intensity": [(100 * rng.random(6)).tolist() for _ in range(8)],
        "space_group": [1, 14, 62, 225] * 2,
    }
    args = PhysMoETrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=steps,
        save_strategy="steps",
        save_steps=steps,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    PhysMoETrainer(tiny_model(), args, train_dataset=Dataset.from_dict(rows)).train()
    return output_dir / f"checkpoint-{steps}"


def finished_run(out: Path, tag: str) -> None:
    """The files of a finished run (as far as the output_dir logic cares), each holding ``tag``."""
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "trainer_state.json").write_text(tag)
    names = ("model.safetensors", "config.json", "README.md", "all_results.json")
    for name in (*names, "example_top5.png"):
        (out / name).write_text(tag)


def contents(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): path.read_text()
        for path in folder.rglob("*")
        if path.is_file() and path.parent.name != "checkpoint-2"
    }


def test_replacing_a_finished_model_trains_beside_it_and_swaps_at_the_end(tmp_path, capsys):
    from physmoe.run_outputs import _check_output_dir, _replace_outputs

    out = tmp_path / "model"
    finished_run(out, "old")
    (out / "notes.txt").write_text("mine")
    before = contents(out)
    with pytest.raises(FileExistsError, match="already holds a trained model"):
        _check_output_dir(out, overwrite=False)
    plan = _check_output_dir(out, overwrite=True)
    new = tmp_path / "model.physmoe-new"
    assert plan.replaces and plan.train_dir == new and plan.resume_from is None
    assert contents(out) == before  # nothing deleted up front

    # The replacement run is killed after its first checkpoint: started again, it resumes from it
    # (and the old model is still there, also for a run without --overwrite_output).
    checkpoint = real_checkpoint(new)
    assert _check_output_dir(out, overwrite=True).resume_from == str(checkpoint)
    with pytest.raises(FileExistsError, match="interrupted replacement run is in .*physmoe-new"):
        _check_output_dir(out, overwrite=False)
    assert contents(out) == before

    # It finishes: its outputs replace the old run's; the user's other files stay.
    finished_run(new, "new")
    shutil.rmtree(new / "checkpoint-10")
    _replace_outputs(new, out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    assert contents(out) == {
        "notes.txt": "mine",
        "model.safetensors": "new",
        "config.json": "new",
        "README.md": "new",
        "all_results.json": "new",
        "example_top5.png": "new",
    }
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / "checkpoint-10").exists()
    # Not a replacement any more: a plain run resumes in output_dir itself.
    (out / "model.safetensors").unlink()
    plan = _check_output_dir(out, overwrite=False)
    assert not plan.replaces and plan.resume_from == str(out / "checkpoint-2")


def test_a_replacement_killed_while_swapping_is_completed_by_the_next_run(tmp_path, monkeypatch):
    import os

    from physmoe.run_outputs import _check_output_dir, _replace_outputs

    def prepare(root: Path) -> tuple[Path, Path]:
        out, new = root / "model", root / "model.physmoe-new"
        finished_run(out, "old")
        (out / "notes.txt").write_text("mine")
        finished_run(new, "new")
        (new / "checkpoint-12").mkdir()
        (new / "checkpoint-12" / "trainer_state.json").write_text("new")
        return out, new

    expected_root, expected_new = prepare(tmp_path / "reference")
    _replace_outputs(expected_new, expected_root)
    expected = contents(expected_root)
    assert expected["model.safetensors"] == expected["checkpoint-10/trainer_state.json"] == "new"

    real_replace = os.replace
    moves = 0
    while True:  # killed at every move of the swap in turn
        root = tmp_path / f"kill{moves}"
        out, new = prepare(root)
        calls = []

        def killed(source, target, calls=calls, limit=moves):
            if len(calls) == limit:
                raise KeyboardInterrupt("killed")
            calls.append(source)
            return real_replace(source, target)

        monkeypatch.setattr(os, "replace", killed)
        try:
            _replace_outputs(new, out)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        if not finished:
            with pytest.raises(FileExistsError):  # the next run completes the swap, then refuses
                _check_output_dir(out, overwrite=False)
        assert contents(out) == expected, moves
        assert sorted(path.name for path in root.iterdir()) == ["model"], moves
        if finished:
            break
        moves += 1
    assert moves > 8
