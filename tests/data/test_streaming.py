"""StreamingCrystalDataset: disjoint deterministic slots, DataLoader workers, resume, held-out
crystals, worker failures, PhysMoETrainer and 2-process DDP.

Run as a script under torchrun (``test_two_ranks_stream_disjoint_crystals`` does) it trains a
few steps on the stream in each process and saves the structure ids every step used.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from ddp_launch import run_two_processes
from physmoe.data import (
    FEATURES,
    PXRDCollator,
    StreamingCrystalDataset,
    TwoThetaGrid,
    held_out_dataset,
    structure_fingerprint,
)
from physmoe.data.random_crystals import RandomCrystalGenerator
from physmoe.data.streaming import STREAM_STATE_FILE, StreamLayout
from physmoe.training import PhysMoETrainer, PhysMoETrainingArguments
from tiny_models import tiny_model

MAX_ATOMS = 16  # small cells: fast generation


def index_of(structure_id: str) -> int:
    return int(structure_id.rsplit("-", 1)[1])


def stream(**overrides) -> StreamingCrystalDataset:
    settings = dict(seed=3, max_atoms=MAX_ATOMS, patterns_per_crystal=2, crystals_per_block=3)
    return StreamingCrystalDataset(**{**settings, **overrides})


def batch_ids(loader, num_batches: int) -> list[list[str]]:
    iterator = iter(loader)
    return [next(iterator)["structure_id"] for _ in range(num_batches)]


def id_collate(rows):
    return {"structure_id": [row["structure_id"] for row in rows]}


def loader(dataset, batch_size: int, num_workers: int) -> DataLoader:
    dataset.configure(batch_size=batch_size, num_workers=num_workers)
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=id_collate
    )


# -- the stream -------------------------------------------------------------------------------


def test_rows_blocks_and_labels():
    data = stream()
    iterator = iter(data.configure(batch_size=1, num_workers=0))
    rows = [next(iterator) for _ in range(12)]  # two blocks of 3 crystals x 2 patterns
    generator = RandomCrystalGenerator(seed=3, max_atoms=MAX_ATOMS)
    crystals = {c.structure_id: c for c in generator.generate(range(6))}
    for block in (rows[:6], rows[6:]):  # each crystal of a block exactly twice, in shuffled order
        counts = Counter(row["structure_id"] for row in block)
        assert set(counts.values()) == {2} and len(counts) == 3
        assert sorted(row["pattern_index"] for row in block) == [0, 0, 0, 1, 1, 1]
    assert {row["structure_id"] for row in rows} == set(crystals)
    assert [row["structure_id"] for row in rows[:6]] != sorted(
        row["structure_id"] for row in rows[:6]
    )
    for row in rows:
        assert row["labels"] == crystals[row["structure_id"]].space_group - 1
        assert (
            row["peak_two_theta"].dtype == np.float32 and row["peak_intensity"].dtype == np.float32
        )
        assert len(row["peak_two_theta"]) == len(row["peak_intensity"]) > 0
    # Deterministic: the same rows again.
    again = iter(stream().configure(batch_size=1, num_workers=0))
    assert [next(again)["structure_id"] for _ in range(12)] == [row["structure_id"] for row in rows]
    # The collator renders them (labels = space group - 1).
    batch = PXRDCollator(TwoThetaGrid(num_points=64), train=True, seed=0)(rows[:4])
    assert batch["input_values"].shape == (4, 64) and torch.isfinite(batch["input_values"]).all()
    assert batch["labels"].tolist() == [row["labels"] for row in rows[:4]]


def test_ranks_and_workers_take_disjoint_interleaved_blocks():
    """World size 2 x 2 workers: slot s = rank * 2 + worker streams blocks s, s + 4, s + 8, ..."""
    per_rank = []
    for rank in (0, 1):
        data = stream(patterns_per_crystal=1).configure(rank=rank, world_size=2)
        per_rank.append(batch_ids(loader(data, batch_size=3, num_workers=2), 6))
    for rank, batches in enumerate(per_rank):
        for n, ids in enumerate(batches):  # batch n comes from worker n % 2, its (n // 2)-th block
            block = rank * 2 + n % 2 + (n // 2) * 4
            assert sorted(map(index_of, ids)) == [3 * block, 3 * block + 1, 3 * block + 2]
    seen = [{i for ids in batches for i in ids} for batches in per_rank]
    assert not seen[0] & seen[1]
    assert sorted(map(index_of, seen[0] | seen[1])) == list(range(36))  # nothing skipped


def test_workers_match_the_single_process_layout():
    """Two workers deliver exactly what the layout says, run after run."""
    first = batch_ids(loader(stream(), batch_size=4, num_workers=2), 8)
    again = batch_ids(loader(stream(), batch_size=4, num_workers=2), 8)
    assert first == again
    # Worker w's rows, in order, are the rows of slots w of a 1-rank 2-worker layout.
    for worker in (0, 1):
        rows = [i for n, ids in enumerate(first) if n % 2 == worker for i in ids]
        blocks = sorted({index_of(i) // 3 for i in rows})
        assert all(block % 2 == worker for block in blocks)
        assert Counter(rows) == Counter({i: 2 for i in rows})  # both patterns of every crystal


@pytest.mark.parametrize("batches", [1, 3, 5])
def test_resume_continues_exactly_where_the_run_stopped(batches):
    full = batch_ids(loader(stream(), batch_size=4, num_workers=2), 10)
    data = stream()
    loader(data, batch_size=4, num_workers=2)  # configures the layout
    state = json.loads(json.dumps(data.state_dict(batches_per_rank=batches)))
    resumed = stream()
    resumed_loader = loader(resumed, batch_size=4, num_workers=2)
    resumed.load_state_dict(state)
    assert batch_ids(resumed_loader, 10 - batches) == full[batches:]


def test_resume_with_another_layout_never_repeats_a_crystal():
    full = batch_ids(loader(stream(), batch_size=4, num_workers=2), 5)
    data = stream()
    loader(data, batch_size=4, num_workers=2)
    state = data.state_dict(batches_per_rank=5)
    resumed = stream()
    resumed_loader = loader(resumed, batch_size=4, num_workers=1)  # one worker now
    resumed.load_state_dict(state)
    later = batch_ids(resumed_loader, 4)
    used = {index_of(i) for ids in full for i in ids}
    # Worker 0 used blocks 0 and 2 (12 rows), worker 1 blocks 1 and 3 (8 of 12 rows): the stream
    # restarts at block 4, crystal 12 (the rest of block 3 is skipped).
    assert max(used) < 12 == min(index_of(i) for ids in later for i in ids)
    assert StreamLayout(1, 2, 4, 2, 3).next_unstarted_block(0, 5) == 4
    assert StreamLayout(1, 2, 4, 2, 3).next_unstarted_block(0, 6) == 4
    assert StreamLayout(1, 2, 4, 2, 3).next_unstarted_block(10, 7) == 15  # 10, 12, 14 and 11, 13


def test_state_dict_checks():
    data = stream()
    with pytest.raises(ValueError, match="configure"):
        data.state_dict(2)
    data.configure(batch_size=4, num_workers=0)
    state = data.state_dict(2)
    assert state["layout"] == {
        "world_size": 1,
        "num_workers": 0,
        "batch_size": 4,
        "patterns_per_crystal": 2,
        "crystals_per_block": 3,
    }
    with pytest.raises(ValueError, match="seed"):
        stream(seed=4).configure(batch_size=4, num_workers=0).load_state_dict(state)
    with pytest.raises(ValueError, match="physmoe stream state"):
        data.load_state_dict({"format": "other"})
    with pytest.raises(ValueError, match="patterns_per_crystal"):
        stream(patterns_per_crystal=0)
    with pytest.raises(ValueError, match="prior"):
        stream(prior="csd")
    with pytest.raises(ValueError, match="rank 2"):
        stream().configure(rank=2, world_size=2)


def test_label_prior_and_expected_counts():
    data = stream(prior="uniform")
    np.testing.assert_allclose(data.label_prior, np.full(230, 1 / 230))
    np.testing.assert_allclose(data.expected_class_counts(4600), np.full(230, 10.0))  # 2 patterns


# -- held-out crystals ------------------------------------------------------------------------


def test_held_out_crystals_never_appear_in_the_stream():
    validation = held_out_dataset("validation", 30, seed=3, max_atoms=MAX_ATOMS)
    test = held_out_dataset("test", 30, seed=3, max_atoms=MAX_ATOMS)
    assert validation.features == FEATURES and len(validation) == 30
    assert (
        validation[0]["structure_id"] == "validation-3-0" and test[5]["structure_id"] == "test-3-5"
    )
    held = {
        structure_fingerprint(r["lattice_parameters"], r["species"], r["frac_coords"])
        for split in (validation, test)
        for r in split
    }
    assert len(held) == 60
    generator = RandomCrystalGenerator(seed=3, max_atoms=MAX_ATOMS)
    streamed = [c.to_crystal() for c in generator.generate(range(300))]
    prints = {
        structure_fingerprint(c.lattice_parameters, c.species, c.frac_coords) for c in streamed
    }
    assert len(prints) == 300 and not prints & held  # disjoint generator streams
    # The fingerprint of a stored row (float32) equals that of the generated crystal (float64).
    crystal = RandomCrystalGenerator(seed=3, max_atoms=MAX_ATOMS, split="validation").generate([0])[
        0
    ]
    crystal = crystal.to_crystal()
    row = validation[0]
    assert structure_fingerprint(
        crystal.lattice_parameters, crystal.species, crystal.frac_coords
    ) == (structure_fingerprint(row["lattice_parameters"], row["species"], row["frac_coords"]))


def test_excluded_fingerprints_are_replaced():
    generator = RandomCrystalGenerator(seed=3, max_atoms=MAX_ATOMS)
    excluded = [c.to_crystal() for c in generator.generate([1, 4])]
    fingerprints = {
        structure_fingerprint(c.lattice_parameters, c.species, c.frac_coords) for c in excluded
    }
    data = stream(patterns_per_crystal=1, exclude_fingerprints=fingerprints)
    iterator = iter(data.configure(batch_size=1, num_workers=0))
    ids = [next(iterator)["structure_id"] for _ in range(9)]
    kept = {index_of(i) for i in ids if index_of(i) < 1 << 40}
    assert kept == {0, 2, 3, 5, 6, 7, 8}
    assert len(set(ids)) == 9  # two replacements from the spare range, blocks keep 3 crystals


# -- failures ---------------------------------------------------------------------------------


@dataclass
class FailingFactory:
    """A generator that raises (or kills its process) from stream index ``fail_at`` on."""

    fail_at: int
    hard: bool = False

    def __call__(self):
        return FailingGenerator(
            RandomCrystalGenerator(seed=3, max_atoms=MAX_ATOMS), self.fail_at, self.hard
        )


@dataclass
class FailingGenerator:
    inner: RandomCrystalGenerator
    fail_at: int
    hard: bool

    @property
    def label_prior(self):
        return self.inner.label_prior

    def generate(self, indices):
        if max(indices) >= self.fail_at:
            if self.hard:
                os._exit(3)
            raise ValueError(f"cannot generate crystal {max(indices)}")
        return self.inner.generate(indices)


def test_generator_error_in_a_worker_surfaces_in_the_main_process():
    data = stream(generator_factory=FailingFactory(fail_at=7))
    with pytest.raises(ValueError, match="cannot generate crystal"):
        batch_ids(loader(data, batch_size=4, num_workers=2), 20)


def test_dead_worker_raises_instead_of_hanging():
    data = stream(generator_factory=FailingFactory(fail_at=7, hard=True))
    with pytest.raises(RuntimeError, match="exited unexpectedly|killed"):
        batch_ids(loader(data, batch_size=4, num_workers=2), 20)


# -- PhysMoETrainer ---------------------------------------------------------------------------


@dataclass
class IdCollator(PXRDCollator):
    """Also returns the batch's structure ids (CRC32) so that the trainer can record them."""

    def __call__(self, features):
        batch = super().__call__(features)
        batch["structure_crc"] = torch.tensor(
            [zlib.crc32(r["structure_id"].encode()) for r in features]
        )
        return batch


@dataclass
class LoggingFactory:
    """The stream's generator, appending every index it generates to ``path`` (any process)."""

    path: str

    def __call__(self):
        return LoggingGenerator(RandomCrystalGenerator(seed=3, max_atoms=MAX_ATOMS), self.path)


@dataclass
class LoggingGenerator:
    inner: RandomCrystalGenerator
    path: str

    @property
    def label_prior(self):
        return self.inner.label_prior

    def generate(self, indices):
        with open(self.path, "a") as log:
            log.write("".join(f"{i}\n" for i in indices))
        return self.inner.generate(indices)


class RecordingTrainer(PhysMoETrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append(inputs.pop("structure_crc").tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class StopAt(TrainerCallback):
    """Simulates a killed run: raises right after checkpoint ``step`` is complete."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def train_args(out: Path, **overrides) -> PhysMoETrainingArguments:
    settings = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-2,
        logging_steps=2,
        save_strategy="steps",
        save_steps=3,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=2,
        bf16=False,
    )
    return PhysMoETrainingArguments(**{**settings, **overrides})


def stream_trainer(out: Path, log: Path | None = None, **overrides) -> RecordingTrainer:
    model = tiny_model()
    collator = IdCollator(TwoThetaGrid.from_config(model.config), train=True, seed=0)
    data = stream(generator_factory=None if log is None else LoggingFactory(str(log)))
    trainer = RecordingTrainer(
        model, train_args(out, **overrides), data_collator=collator, train_dataset=data
    )
    trainer.seen = []
    return trainer


def test_trainer_resume_continues_the_stream(tmp_path):
    full = stream_trainer(tmp_path / "full")
    full.train()
    assert len(full.seen) == 6 and all(len(ids) == 4 for ids in full.seen)
    expected = full.train_dataset.expected_class_counts(6 * 4)
    np.testing.assert_allclose(full.train_class_counts, expected)  # label prior x 12 crystals

    killed = stream_trainer(tmp_path / "run")
    killed.add_callback(StopAt(3))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert killed.seen == full.seen[:3]
    state = json.loads((tmp_path / "run" / "checkpoint-3" / STREAM_STATE_FILE).read_text())
    assert state["batches_per_rank"] == 3 and state["layout"]["num_workers"] == 2

    log = tmp_path / "generated.txt"
    resumed = stream_trainer(tmp_path / "run", log=log)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.seen == full.seen[3:]  # exactly the uninterrupted run's later batches
    # 3 batches of 4 consumed block 0 (worker 0) and parts of blocks 2 (worker 0) and 1 (worker
    # 1): the resumed workers regenerate from blocks 1 and 2 on, never from crystal 0.
    generated = {int(line) for line in log.read_text().split()}
    assert min(generated) == 3 and {3, 4, 5, 6, 7, 8} <= generated
    assert resumed.state.global_step == 6
    final = json.loads((tmp_path / "run" / "checkpoint-6" / STREAM_STATE_FILE).read_text())
    assert final["batches_per_rank"] == 6


def test_trainer_needs_max_steps(tmp_path):
    with pytest.raises(ValueError, match="max_steps"):
        PhysMoETrainer(
            tiny_model(),
            train_args(tmp_path, max_steps=-1, num_train_epochs=1),
            train_dataset=stream(),
        )


def test_trainer_surfaces_a_worker_error(tmp_path):
    model = tiny_model()
    trainer = PhysMoETrainer(
        model,
        train_args(tmp_path, save_strategy="no"),
        train_dataset=stream(generator_factory=FailingFactory(8)),
    )
    with pytest.raises(ValueError, match="cannot generate crystal"):
        trainer.train()


# -- DDP --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_stream_disjoint_crystals(tmp_path):
    result = run_two_processes(__file__, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(len(steps) == 4 and all(len(ids) == 4 for ids in steps) for steps in seen)
    ids = [{i for step in steps for i in step} for steps in seen]
    assert not ids[0] & ids[1]  # every rank sees different crystals
    # Rank r, worker w (2 workers) reads blocks 2r + w, 2r + w + 4, ... of 3 crystals.
    for rank in (0, 1):
        blocks = {index_of(i) // 3 for i in ids[rank]}
        assert {block % 4 // 2 for block in blocks} == {rank}


def _ddp_worker(out_dir: Path) -> None:
    trainer = stream_trainer(out_dir / "run", max_steps=4, save_strategy="no", ddp_backend="gloo")
    trainer.train()
    names = {zlib.crc32(f"train-3-{i}".encode()): f"train-3-{i}" for i in range(48)}
    rank = trainer.args.process_index
    steps = [[names[crc] for crc in ids] for ids in trainer.seen]
    (out_dir / f"rank{rank}.json").write_text(json.dumps(steps))


if __name__ == "__main__":
    _ddp_worker(Path(sys.argv[1]))
