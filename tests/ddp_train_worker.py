"""Run under torchrun by test_training_ddp.py: a few PhysMoETrainer steps in 2 CPU processes.

Each rank saves its final weights, its miner state and, for every step, the local micro-batch
the miner update was built from (before the cross-process gather), so the test can replay the
global-batch updates independently.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from physmoe.training import PhysMoETrainer
from test_training import arguments, peak_rows, tiny_model


class RecordingTrainer(PhysMoETrainer):
    def _collect_for_miner(self, model, outputs, labels):
        self.local_batches.append(
            (
                outputs.features.detach().float().clone(),
                outputs.ensemble_logits.detach().argmax(-1),
                labels.clone(),
            )
        )
        super()._collect_for_miner(model, outputs, labels)


def main(out_dir: Path) -> None:
    model = tiny_model()
    args = arguments(
        out_dir, output_dir=str(out_dir / "run"), num_train_epochs=1, ddp_backend="gloo"
    )
    trainer = RecordingTrainer(model, args, train_dataset=peak_rows(24))
    trainer.local_batches = []
    trainer.train()
    rank = trainer.args.process_index
    torch.save(
        {
            "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
            "parameter_names": [name for name, _ in model.named_parameters()],
            "local_batches": trainer.local_batches,
            "world_size": trainer.args.world_size,
            "momentum": model.config.hnm_momentum,
        },
        out_dir / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
