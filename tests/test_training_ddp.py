"""Two-process DDP training on the CPU (torchrun, gloo): replicas stay identical and the miner
holds exactly what the global batches imply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddp_launch import run_two_processes
from physmoe.loss import HardNegativeMining_Proto

HERE = Path(__file__).resolve().parent


def test_two_process_training_keeps_replicas_and_miner_in_sync(tmp_path):
    result = run_two_processes(HERE / "ddp_train_worker.py", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2

    # Identical replicas: every weight and the miner's buffers. (BatchNorm running statistics are
    # per-process until DDP's next broadcast from rank 0, which saves the checkpoint.)
    compared = ranks[0]["parameter_names"] + [
        "hard_negative_miner.prototypes",
        "hard_negative_miner.confusion_matrix",
    ]
    assert len(compared) > 10
    for name in compared:
        assert torch.equal(ranks[0]["state_dict"][name], ranks[1]["state_dict"][name]), name

    # The ranks saw different samples (a real data-parallel split) ...
    labels = [torch.cat([b[2] for b in r["local_batches"]]) for r in ranks]
    features = [torch.cat([b[0] for b in r["local_batches"]]) for r in ranks]
    assert not torch.equal(features[0], features[1])

    # ... and the miner equals one fed with the global batch of every step (rank 0's part, then
    # rank 1's, as all-gather orders it), decayed once at the end of the epoch.
    state = ranks[0]["state_dict"]
    miner = HardNegativeMining_Proto(
        230, state["hard_negative_miner.prototypes"].shape[1], momentum=ranks[0]["momentum"]
    )
    for step0, step1 in zip(ranks[0]["local_batches"], ranks[1]["local_batches"], strict=True):
        global_batch = [torch.cat(parts) for parts in zip(step0, step1, strict=True)]
        miner.update_prototypes(global_batch[0], global_batch[2])
        miner.update_confusion_matrix(global_batch[1], global_batch[2])  # (predicted, labels)
    miner.apply_epoch_momentum()
    torch.testing.assert_close(
        state["hard_negative_miner.prototypes"], miner.prototypes, rtol=1e-5, atol=1e-6
    )
    assert torch.equal(state["hard_negative_miner.confusion_matrix"], miner.confusion_matrix)
    assert float(miner.confusion_matrix.sum()) == pytest.approx(
        sum(len(x) for x in labels) * (1 - ranks[0]["momentum"])
    )
