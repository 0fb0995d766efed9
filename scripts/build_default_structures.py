"""Build the embedded default structure set, src/physmoe/resources/default_structures.npz.

    python scripts/build_default_structures.py [--num-structures 12000] [--min-per-group 15] \
        [--num-proc 2]
    python scripts/build_default_structures.py --generator fast   # RandomCrystalGenerator, ~1 min

Deterministic (fixed seed; every structure depends only on its own derived seed). Two phases:

1. Coverage: every one of the 230 space groups is requested until spglib detects at least
   ``--min-per-group`` structures in it (so that each group lands in train, validation and test).
   Requests that come out in another group count for that group. Groups whose small cells always
   come out in a supergroup (e.g. Fd-3 -> Fd-3m below 96 atoms) get larger cells in later rounds
   (max_atoms 64, then 128, then 192).
2. Long tail: the remaining structures are drawn from the ICSD prior with max_atoms 64.

With ``--generator pyxtal`` (the default) it needs pyxtal (``pip install 'physmoe[sim]'``).
With ``--generator fast`` the structures come from :class:`RandomCrystalGenerator` (seed 2026,
one process): coverage requests of group g are its crystals ``g * 10_000 + 1_000 r + j`` built in
group g in round r (max_atoms 64, 64, 128, 192, 192: the F-centred cubic groups whose orbits
within 64 atoms all have a supergroup's symmetry need larger cells), the long tail its crystals
from 10_000_000 on, from the ICSD prior with max_atoms 64 (as the pyxtal build). The quickstart
trained on such a set is as good on real structures as on the shipped pyxtal set within one
seed's noise (README, *Random crystals without limit*), so the shipped set stays. Prints the
per-bucket counts, the agreement of requested and detected groups, the time taken and the file
size.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from physmoe.crystallography import NUM_SPACE_GROUPS
from physmoe.data.embedded import write_structure_archive
from physmoe.data.priors import space_group_prior
from physmoe.data.pyxtal_generator import (
    GeneratedStructure,
    GenerationSettings,
    generate_structure,
)

SEED = 2026
OUTPUT = (
    Path(__file__).resolve().parents[1] / "src" / "physmoe" / "resources" / "default_structures.npz"
)
# Structure indices: coverage requests for group g use g * 10_000 + j; long-tail ones
# 10_000_000 + i.
COVERAGE_STRIDE = 10_000
TAIL_OFFSET = 10_000_000
MAX_ATOMS_BY_ROUND = (64, 64, 64, 128, 128, 128, 192, 192, 192, 192, 192, 192)


def _generate(task: tuple[int, int | None, int]) -> GeneratedStructure:
    index, space_group, max_atoms = task
    settings = GenerationSettings(max_atoms=max_atoms)
    return generate_structure(
        SEED, index, space_group_prior("icsd"), settings, space_group=space_group
    )


def _generate_fast(args) -> tuple[list[GeneratedStructure], float]:
    from physmoe.data.random_crystals import RandomCrystalGenerator

    start = time.perf_counter()
    structures: list[GeneratedStructure] = []
    detected = Counter()
    for round_index, max_atoms in enumerate((64, 64, 128, 192, 192)):
        generator = RandomCrystalGenerator(seed=SEED, max_atoms=max_atoms)
        for group in range(1, NUM_SPACE_GROUPS + 1):
            missing = max(0, args.min_per_group - detected[group])
            first = group * COVERAGE_STRIDE + round_index * 1_000
            for crystal in generator.generate(range(first, first + missing), space_group=group):
                structures.append(_as_generated_structure(crystal))
                detected[crystal.space_group] += 1
        short = [g for g in range(1, NUM_SPACE_GROUPS + 1) if detected[g] < args.min_per_group]
        print(
            f"coverage round {round_index} (max_atoms {max_atoms}): {len(structures)} structures, "
            f"{len(short)} groups short: {short}"
        )
        if not short:
            break
    generator = RandomCrystalGenerator(prior="icsd", seed=SEED, max_atoms=64)
    num_tail = max(0, args.num_structures - len(structures))
    for crystal in generator.generate(range(TAIL_OFFSET, TAIL_OFFSET + num_tail)):
        structures.append(_as_generated_structure(crystal))
    return structures, time.perf_counter() - start


def _as_generated_structure(crystal) -> GeneratedStructure:
    return GeneratedStructure(
        index=crystal.index,
        crystal=crystal.to_crystal(),
        space_group=crystal.space_group,
        requested_space_group=crystal.requested_space_group,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-structures", type=int, default=12000)
    parser.add_argument("--min-per-group", type=int, default=15)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--generator", choices=("pyxtal", "fast"), default="pyxtal")
    args = parser.parse_args()
    if args.generator == "fast":
        structures, elapsed = _generate_fast(args)
        _write_and_report(args, structures, elapsed)
        return

    start = time.perf_counter()
    structures: list[GeneratedStructure] = []
    detected = Counter()
    next_request = Counter()
    with get_context("spawn").Pool(args.num_proc) as pool:
        for round_index, max_atoms in enumerate(MAX_ATOMS_BY_ROUND):
            tasks = []
            for group in range(1, NUM_SPACE_GROUPS + 1):
                for _ in range(
                    max(0, args.min_per_group - detected[group]) * (1 + round_index // 3)
                ):
                    tasks.append((group * COVERAGE_STRIDE + next_request[group], group, max_atoms))
                    next_request[group] += 1
            if not tasks:
                break
            for result in pool.imap(_generate, tasks, chunksize=4):
                if result.crystal is not None:
                    structures.append(result)
                    detected[result.space_group] += 1
            missing = [
                g for g in range(1, NUM_SPACE_GROUPS + 1) if detected[g] < args.min_per_group
            ]
            print(
                f"coverage round {round_index} (max_atoms {max_atoms}): {len(tasks)} requests, "
                f"{len(structures)} structures, {len(missing)} groups short: {missing[:20]}"
            )
        num_tail = args.num_structures - len(structures)
        tasks = [(TAIL_OFFSET + i, None, 64) for i in range(max(0, num_tail))]
        for result in pool.imap(_generate, tasks, chunksize=8):
            if result.crystal is not None:
                structures.append(result)
    elapsed = time.perf_counter() - start
    _write_and_report(args, structures, elapsed)


def _write_and_report(args, structures: list[GeneratedStructure], elapsed: float) -> None:
    structures.sort(key=lambda s: s.index)
    write_structure_archive(
        args.output,
        [f"{SEED}-{s.index}" for s in structures],
        [s.crystal for s in structures],
        [s.requested_space_group for s in structures],
        [s.space_group for s in structures],
    )
    counts = np.bincount([s.space_group - 1 for s in structures], minlength=NUM_SPACE_GROUPS)
    agree = np.mean([s.space_group == s.requested_space_group for s in structures])
    sites = np.array([len(s.crystal.species) for s in structures])
    print(f"{len(structures)} structures in {elapsed:.0f} s; requested == detected for {agree:.1%}")
    print(
        f"groups with >= {args.min_per_group} structures: {(counts >= args.min_per_group).sum()} / "
        f"230; min {counts.min()}, median {np.median(counts):.0f}, max {counts.max()}"
    )
    for low, high in ((100, None), (20, 99), (args.min_per_group, 19), (0, args.min_per_group - 1)):
        in_bucket = (counts >= low) & (counts <= (high if high is not None else counts.max()))
        label = f">={low}" if high is None else f"{low}-{high}"
        print(
            f"  groups with {label:>6} structures: {in_bucket.sum():3d} "
            f"({counts[in_bucket].sum()} structures)"
        )
    print(f"sites per structure: mean {sites.mean():.1f}, max {sites.max()}")
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
