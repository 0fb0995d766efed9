"""Training throughput on streamed crystals against the model-only step rate.

    python scripts/benchmark_streaming.py [--preset small] [--batch-size 32] [--steps 60]
        [--workers 1] [--patterns-per-crystal 8] [--max-atoms 64] [--rounds 3] [--device cpu]
        [--json out.json]

Measures, in one process on ``--device`` (``cpu`` or ``cuda``; bf16 autocast where recommended,
as ``physmoe train``; on CUDA every step ends with a synchronisation):

* ``model only``: the bare training step (forward with labels + PhysMoE loss + backward + AdamW)
  on a fixed batch, as ``scripts/benchmark_speed.py`` times it; on the CPU with all torch
  threads and with one fewer (what :class:`~physmoe.training.PhysMoETrainer` leaves the model
  beside a stream worker);
* ``trainer, stored patterns``: :class:`~physmoe.training.PhysMoETrainer` on pre-rendered
  patterns (the Trainer's own overhead, no data cost);
* ``trainer, stream``: :class:`~physmoe.training.PhysMoETrainer` on a
  :class:`~physmoe.data.StreamingCrystalDataset` whose DataLoader workers generate crystals,
  simulate their peaks and render every crystal ``--patterns-per-crystal`` times;
* ``stream alone``: the stream's DataLoader without a model (what the workers can deliver); its
  time per batch as a share of a bare step is what the stream costs a training step that waits
  for it (in-process, 0 workers).

Trainer rates are patterns per second between the end of step ``--warmup`` and the last step;
the model-only rate is the median step. ``--workers`` and ``--patterns-per-crystal`` take
comma-separated lists (every combination is measured). The machine's speed drifts, so every
setting is measured ``--rounds`` times in turn; the table gives each setting's median rate and
the median over rounds of its rate divided by the bare step's rate in the same round.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from physmoe.data import PXRDCollator, StreamingCrystalDataset, TwoThetaGrid
from physmoe.models.resnet1d_moe import ResNet1D_MoE, ResNet1DMoEConfig
from physmoe.runtime import configure_malloc, recommended_autocast_dtype
from physmoe.training import PhysMoETrainer, PhysMoETrainingArguments


class StepClock(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(args.device)
        self.times.append(time.perf_counter())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(preset: str) -> ResNet1D_MoE:
    torch.manual_seed(0)
    return ResNet1D_MoE(ResNet1DMoEConfig.from_preset(preset))


def model_only(preset: str, batch: int, steps: int, warmup: int, dtype, device) -> float:
    model = build_model(preset).to(device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(batch, model.config.num_points, generator=generator).to(device)
    labels = torch.randint(0, 230, (batch,), generator=generator).to(device)
    # fused AdamW, as benchmark_speed.py and the Trainer's default optim (adamw_torch_fused)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def trainer_rate(preset, batch, steps, warmup, dtype, device, train_dataset, workers) -> float:
    model = build_model(preset)
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="physmoe-bench-") as out:
        args = PhysMoETrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=warmup + steps,
            learning_rate=1e-4,
            logging_steps=50,
            save_strategy="no",
            report_to=[],
            use_cpu=device.type == "cpu",
            disable_tqdm=True,
            bf16=dtype is not None,
            dataloader_num_workers=workers,
            seed=0,
        )
        trainer = PhysMoETrainer(model, args, train_dataset=train_dataset, callbacks=[clock])
        trainer.train()
    elapsed = clock.times[-1] - clock.times[warmup - 1]
    return steps * batch / elapsed


def fewer_threads(threads: int, measure) -> float:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure()
    finally:
        torch.set_num_threads(saved)


def stored_patterns(preset: str, count: int) -> Dataset:
    num_points = ResNet1DMoEConfig.from_preset(preset).num_points
    generator = torch.Generator().manual_seed(0)
    patterns = torch.rand(count, num_points, generator=generator)
    labels = torch.randint(0, 230, (count,), generator=generator)
    dataset = Dataset.from_dict({"input_values": patterns.numpy(), "space_group": labels.numpy()})
    return dataset.with_format("numpy")  # as arrays: python lists would cost ~7 ms per batch


def stream_alone(preset, batch, steps, warmup, workers, stream) -> float:
    collator = PXRDCollator(TwoThetaGrid.from_config(ResNet1DMoEConfig.from_preset(preset)), seed=0)
    stream.configure(batch_size=batch, num_workers=workers)
    loader = DataLoader(stream, batch_size=batch, collate_fn=collator, num_workers=workers)
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps")
    parser.add_argument("--workers", default="1", help="comma-separated DataLoader worker counts")
    parser.add_argument("--patterns-per-crystal", default="8", help="comma-separated values")
    parser.add_argument("--max-atoms", type=int, default=64)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--skip-alone", action="store_true", help="skip the stream-alone rate")
    parser.add_argument(
        "--rounds", type=int, default=3, help="times every setting is measured, in turn"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    malloc = configure_malloc(reexec=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    dtype = None if args.fp32 else recommended_autocast_dtype(device)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{where}, torch {torch.__version__}, {os.cpu_count()} CPUs, {threads} torch threads, "
        f"preset {args.preset}, batch {args.batch_size}, {args.steps} timed steps after "
        f"{args.warmup}, precision {'bf16' if dtype is not None else 'fp32'}, "
        f"malloc {malloc['method']}"
    )
    batch, steps, warmup = args.batch_size, args.steps, args.warmup
    worker_counts = [int(w) for w in args.workers.split(",")]
    per_crystal_counts = [int(p) for p in args.patterns_per_crystal.split(",")]
    bare_on = f"{threads} threads" if device.type == "cpu" else args.device
    settings = {f"model only (bare step, {bare_on})": lambda: model_only(
        args.preset, batch, steps, warmup, dtype, device
    )}  # fmt: skip
    if device.type == "cpu" and threads > 1 and any(workers > 0 for workers in worker_counts):
        settings[f"model only (bare step, {threads - 1} threads)"] = lambda: fewer_threads(
            threads - 1, lambda: model_only(args.preset, batch, steps, warmup, dtype, device)
        )
    stored = stored_patterns(args.preset, batch * 8)
    settings["trainer, stored patterns"] = lambda: trainer_rate(
        args.preset, batch, steps, warmup, dtype, device, stored, 0
    )
    for workers, per_crystal in itertools.product(worker_counts, per_crystal_counts):

        def stream(per_crystal=per_crystal):
            return StreamingCrystalDataset(
                "icsd", seed=0, max_atoms=args.max_atoms, patterns_per_crystal=per_crystal
            )

        name = f"{workers} worker(s), {per_crystal} patterns/crystal"
        if not args.skip_alone:
            settings[f"stream alone, {name}"] = lambda workers=workers, stream=stream: stream_alone(
                args.preset, batch, steps, warmup, workers, stream()
            )
        settings[f"trainer, stream, {name}"] = lambda workers=workers, stream=stream: trainer_rate(
            args.preset, batch, steps, warmup, dtype, device, stream(), workers
        )
    # The machine's speed drifts by 10-30 % over minutes: every round measures every setting,
    # and each is compared with the bare step of its own round.
    rates = {name: [] for name in settings}
    for round_index in range(args.rounds):
        for name, measure in settings.items():
            rates[name].append(measure())
            print(f"round {round_index + 1}: {name}: {rates[name][-1]:.1f}", flush=True)
    bare = rates[next(iter(settings))]
    rows = []
    for name, values in rates.items():
        row = {"setting": name, "patterns_per_s": statistics.median(values), "rounds": values}
        pairs = list(zip(values, bare, strict=True))
        if name.startswith("stream alone"):  # its time per batch, as a share of a bare step
            row["work_of_bare_step"] = statistics.median(b / v for v, b in pairs)
        else:
            row["of_bare_step"] = statistics.median(v / b for v, b in pairs)
        rows.append(row)
    print(
        "\n| setting | patterns/s (median) | rate, of the bare step "
        "| stream's time per batch, of a bare step |"
    )
    print("|---|---:|---:|---:|")
    for row in rows:
        rate, work = row.get("of_bare_step"), row.get("work_of_bare_step")
        print(
            f"| {row['setting']} | {row['patterns_per_s']:.1f} | "
            f"{'' if rate is None else f'{rate:.1%}'} | {'' if work is None else f'{work:.1%}'} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
