"""Benchmark the data pipeline: peak lists per second of physmoe's simulator against pymatgen's
``XRDCalculator`` on the same structures in the same run, the batched simulator against a loop,
random-crystal generation with peak lists, and rendered patterns per second.

    python scripts/benchmark_data.py [--num-structures 35] [--repeats 5] [--seed 0]
                                     [--batch-size 64] [--skip-render] [--skip-generation]
                                     [--generation-structures 200]

Structures come from pyxtal (random crystals, 5 per crystal system by default, fixed seed), so
pyxtal and pymatgen must be installed (the ``sim`` extra), plus real 1-8 atom cells (rock salt,
silicon, copper and MgO, conventional and primitive, CsCl, alpha-Fe) and 2x1x1 supercells of the
largest pyxtal cells (the 65+ atom bucket). Times are the best of ``--repeats`` passes (wall
clock, one thread), which is the least noisy statistic on a shared machine. The agreement columns
compare line positions (deg) and Gaussian-broadened profiles (FWHM 0.1 deg, cosine) of the two
simulators, both with B = 0; what differs is the form-factor table (IT92 vs pymatgen's), up to ~2
on the 0-100 scale for single lines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from physmoe.crystallography import CRYSTAL_SYSTEMS, crystal_system_index  # noqa: E402
from physmoe.data.grid import CU_KA1, TwoThetaGrid  # noqa: E402
from physmoe.data.simulate import simulate_peaks, simulate_peaks_batch  # noqa: E402
from physmoe.data.structures import Crystal  # noqa: E402

# Space groups drawn per crystal system (several centrings each).
SPACE_GROUPS = {
    0: (1, 2),
    1: (4, 5, 11, 12, 14, 15),
    2: (19, 33, 43, 62, 63, 71),
    3: (82, 87, 122, 123, 129, 139, 141),
    4: (146, 148, 160, 164, 166, 167),
    5: (173, 176, 186, 187, 191, 194),
    6: (198, 216, 221, 225, 227, 229),
}
SPECIES = (
    "O",
    "Na",
    "Mg",
    "Al",
    "Si",
    "S",
    "Cl",
    "K",
    "Ca",
    "Ti",
    "Fe",
    "Cu",
    "Zn",
    "Sr",
    "Ba",
    "La",
    "Pb",
)
TWO_THETA_RANGE = (5.0, 90.0)
# Cell-size buckets (atoms per cell) of the speed-up table.
BUCKETS = ((1, 4), (5, 16), (17, 32), (33, 64), (65, 10_000))
# What stored datasets and the streaming generator simulate: Cu K-alpha1, 2θ 2-100 deg.
GENERATION_RANGE = (2.0, 100.0)


def simple_structures() -> list:
    """Real cells of 1-8 atoms, as ``(system, space group, pymatgen Structure)``."""
    from pymatgen.core import Lattice, Structure

    origin, centre = [0, 0, 0], [0.5, 0.5, 0.5]
    build = Structure.from_spacegroup
    rock_salt = build("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [origin, centre])
    silicon = build("Fd-3m", Lattice.cubic(5.431), ["Si"], [origin])
    copper = build("Fm-3m", Lattice.cubic(3.615), ["Cu"], [origin])
    magnesia = build("Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], [origin, centre])
    cubic = [
        (225, rock_salt), (225, rock_salt.get_primitive_structure()),
        (227, silicon), (227, silicon.get_primitive_structure()),
        (225, copper), (225, copper.get_primitive_structure()),
        (221, Structure(Lattice.cubic(4.123), ["Cs", "Cl"], [origin, centre])),
        (229, build("Im-3m", Lattice.cubic(2.8665), ["Fe"], [origin])),
        (225, magnesia.get_primitive_structure()),
    ]  # fmt: skip
    return [(6, number, structure) for number, structure in cubic]


def supercells(structures: list, count: int) -> list:
    """2x1x1 supercells of the ``count`` largest structures: cells of 65+ atoms without waiting
    for pyxtal to place that many."""
    largest = sorted(structures, key=lambda item: -len(item[2]))[:count]
    return [(system, number, structure.make_supercell([2, 1, 1], in_place=False))
            for system, number, structure in largest]  # fmt: skip


def random_structures(
    num_structures: int, seed: int, min_atoms: int = 8, max_atoms: int = 64
) -> list:
    """``num_structures`` pyxtal crystals spread evenly over the seven crystal systems, with
    ``min_atoms``..``max_atoms`` atoms per conventional cell (typical inorganic cells)."""
    from pyxtal import pyxtal
    from pyxtal.symmetry import Group

    rng = np.random.default_rng(seed)
    structures = []
    attempts = 0
    while len(structures) < num_structures:
        attempts += 1
        if attempts > 100 * num_structures:
            raise RuntimeError("pyxtal failed too often; try another --seed")
        system = len(structures) % 7
        number = int(rng.choice(SPACE_GROUPS[system]))
        group = Group(number)
        elements = [
            str(e) for e in rng.choice(SPECIES, size=int(rng.integers(1, 4)), replace=False)
        ]
        multiplicities = sorted({len(wp) for wp in group.Wyckoff_positions})
        counts = [int(rng.choice(multiplicities) * rng.integers(1, 3)) for _ in elements]
        if not min_atoms <= sum(counts) <= max_atoms or not group.check_compatible(counts)[0]:
            continue
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(
                    3, number, elements, counts, random_state=int(rng.integers(1 << 31))
                )
        except Exception:  # pyxtal raises assorted errors for compositions it cannot place
            continue
        if crystal.valid:
            structures.append((system, number, crystal.to_pymatgen()))
    return structures


def best_time(function, repeats: int) -> float:
    """Best wall time of ``repeats`` calls, seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def nearest_distance(positions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distance from every position to the nearest reference position (sorted), degrees."""
    index = np.clip(np.searchsorted(reference, positions), 1, max(len(reference) - 1, 1))
    return np.minimum(
        np.abs(reference[index] - positions), np.abs(reference[index - 1] - positions)
    )


def profile_cosine(x1, y1, x2, y2, fwhm: float = 0.1) -> float:
    grid = np.arange(*TWO_THETA_RANGE, 0.01)
    sigma = fwhm / 2.3548
    p1 = (y1[:, None] * np.exp(-0.5 * ((grid[None, :] - x1[:, None]) / sigma) ** 2)).sum(0)
    p2 = (y2[:, None] * np.exp(-0.5 * ((grid[None, :] - x2[:, None]) / sigma) ** 2)).sum(0)
    return float(p1 @ p2 / (np.linalg.norm(p1) * np.linalg.norm(p2)))


def benchmark_simulation(structures: list, repeats: int) -> list:
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    calculator = XRDCalculator(wavelength=CU_KA1)
    rows = []
    for system, number, structure in structures:
        crystal = Crystal.from_pymatgen(structure)
        ours = simulate_peaks(crystal, CU_KA1, TWO_THETA_RANGE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = calculator.get_pattern(structure, two_theta_range=TWO_THETA_RANGE)
            time_theirs = best_time(
                lambda s=structure: calculator.get_pattern(s, two_theta_range=TWO_THETA_RANGE),
                repeats,
            )
        time_ours = best_time(lambda c=crystal: simulate_peaks(c, CU_KA1, TWO_THETA_RANGE), repeats)
        time_convert = best_time(lambda s=structure: Crystal.from_pymatgen(s), repeats)
        x, y = np.asarray(theirs.x), np.asarray(theirs.y)
        # Every pymatgen line against all our reflections and our lines above 0.1 against
        # pymatgen's: with different form-factor tables a weak line can fall below the 1e-3
        # cut-off in one simulator only.
        every_line = simulate_peaks(crystal, CU_KA1, TWO_THETA_RANGE, min_intensity=0.0)
        shift = np.concatenate(
            [
                nearest_distance(x, every_line.two_theta),
                nearest_distance(ours.two_theta[ours.intensity > 0.1], x),
            ]
        )
        rows.append(
            {
                "system": system,
                "space_group": number,
                "atoms": len(structure),
                "lines": len(ours),
                "ours": time_ours,
                "convert": time_convert,
                "pymatgen": time_theirs,
                "shift": float(shift.max()) if len(shift) else 0.0,
                "cosine": profile_cosine(ours.two_theta, ours.intensity, x, y),
                "peaks": ours,
            }
        )
    return rows


def print_simulation_table(rows: list) -> None:
    print("\nPeak-list simulation, Cu Ka1, 2theta 5-90 deg (best of repeats, ms per structure)")
    header = (
        f"{'crystal system':<14} {'n':>3} {'atoms':>6} {'lines':>6} {'physmoe':>8} {'pymatgen':>9} "
        f"{'speed-up':>9} {'max |d2th|':>11} {'min cos':>8}"
    )
    print(header)
    print("-" * len(header))
    for system in range(7):
        part = [r for r in rows if r["system"] == system]
        if not part:
            continue
        ours = statistics.mean(r["ours"] for r in part) * 1e3
        theirs = statistics.mean(r["pymatgen"] for r in part) * 1e3
        print(
            f"{CRYSTAL_SYSTEMS[system]:<14} {len(part):>3} "
            f"{statistics.mean(r['atoms'] for r in part):>6.1f} "
            f"{statistics.mean(r['lines'] for r in part):>6.0f} {ours:>8.2f} {theirs:>9.2f} "
            f"{theirs / ours:>8.1f}x {max(r['shift'] for r in part):>11.1e} "
            f"{min(r['cosine'] for r in part):>8.5f}"
        )
    total_ours = sum(r["ours"] for r in rows)
    total_convert = sum(r["convert"] for r in rows)
    total_theirs = sum(r["pymatgen"] for r in rows)
    print("-" * len(header))
    print(
        f"{'all':<14} {len(rows):>3} {statistics.mean(r['atoms'] for r in rows):>6.1f} "
        f"{statistics.mean(r['lines'] for r in rows):>6.0f} {total_ours / len(rows) * 1e3:>8.2f} "
        f"{total_theirs / len(rows) * 1e3:>9.2f} {total_theirs / total_ours:>8.1f}x "
        f"{max(r['shift'] for r in rows):>11.1e} {min(r['cosine'] for r in rows):>8.5f}"
    )
    print(
        f"\npeak lists per second: physmoe {len(rows) / total_ours:,.0f} "
        f"({len(rows) / (total_ours + total_convert):,.0f} including pymatgen -> Crystal "
        f"conversion), pymatgen XRDCalculator {len(rows) / total_theirs:,.1f}"
    )
    ratios = sorted(r["pymatgen"] / r["ours"] for r in rows)
    print(
        f"per-structure speed-up: min {ratios[0]:.1f}x, median {statistics.median(ratios):.1f}x, "
        f"max {ratios[-1]:.1f}x"
    )
    slowest = max(rows, key=lambda r: r["ours"])
    print(
        f"slowest physmoe structure: space group {slowest['space_group']}, {slowest['atoms']} "
        f"atoms, {slowest['ours'] * 1e3:.2f} ms"
    )


def print_bucket_table(rows: list) -> None:
    """Speed-up over XRDCalculator per cell-size bucket: the fixed per-call cost shows in the
    smallest cells, the per-reflection cost in the largest."""
    print("\nBy cell size (atoms per cell; ms per structure are medians, speed-ups per structure)")
    header = (
        f"{'atoms':<8} {'n':>3} {'physmoe':>8} {'pymatgen':>9} {'min x':>7} {'median x':>9} "
        f"{'max |d2th|':>11} {'min cos':>8}"
    )
    print(header)
    print("-" * len(header))
    for low, high in BUCKETS:
        part = [r for r in rows if low <= r["atoms"] <= high]
        if not part:
            continue
        ratios = [r["pymatgen"] / r["ours"] for r in part]
        label = f"{low}-{high}" if high < 10_000 else f"{low}+"
        print(
            f"{label:<8} {len(part):>3} {statistics.median(r['ours'] for r in part) * 1e3:>8.3f} "
            f"{statistics.median(r['pymatgen'] for r in part) * 1e3:>9.2f} {min(ratios):>6.1f}x "
            f"{statistics.median(ratios):>8.1f}x {max(r['shift'] for r in part):>11.1e} "
            f"{min(r['cosine'] for r in part):>8.5f}"
        )


def benchmark_batch(crystals: list, repeats: int, two_theta_range=TWO_THETA_RANGE) -> tuple:
    """Structures per second of ``simulate_peaks_batch`` and of a loop over ``simulate_peaks`` on
    the same crystals (checked equal first)."""
    loop = [simulate_peaks(c, CU_KA1, two_theta_range) for c in crystals]
    batch = simulate_peaks_batch(crystals, wavelength=CU_KA1, two_theta_range=two_theta_range)
    for single, batched in zip(loop, batch, strict=True):
        np.testing.assert_allclose(batched.two_theta, single.two_theta, rtol=1e-6)
        np.testing.assert_allclose(batched.intensity, single.intensity, rtol=1e-6)
    options = {"wavelength": CU_KA1, "two_theta_range": two_theta_range}
    time_loop = best_time(lambda: [simulate_peaks(c, **options) for c in crystals], repeats)
    time_batch = best_time(lambda: simulate_peaks_batch(crystals, **options), repeats)
    return len(crystals) / time_batch, len(crystals) / time_loop


def print_batch_table(cases: list, repeats: int) -> None:
    print("\nBatched simulation: simulate_peaks_batch vs a loop over simulate_peaks (same results)")
    header = (
        f"{'structures':<40} {'n':>5} {'batch /s':>10} {'loop /s':>9} {'speed-up':>9} "
        f"{'batch ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, crystals, two_theta_range in cases:
        batch_rate, loop_rate = benchmark_batch(crystals, repeats, two_theta_range)
        print(
            f"{name:<40} {len(crystals):>5} {batch_rate:>10,.0f} {loop_rate:>9,.0f} "
            f"{batch_rate / loop_rate:>8.2f}x {1e3 / batch_rate:>9.3f}"
        )


def benchmark_generation(num_structures: int, repeats: int) -> None:
    """Random crystals with their peak lists (Cu K-alpha1, 2θ 2-100 deg), structures per second on
    this core: the fast generator + ``simulate_peaks_batch`` against the pyxtal path
    (``generate_structure`` + ``simulate_peaks``), which runs once on at most 50 structures (it
    is ~100x slower)."""
    try:
        from physmoe.data.random_crystals import RandomCrystalGenerator
    except ImportError as error:
        print(f"\nGeneration skipped: physmoe.data.random_crystals is not available ({error})")
        return
    from physmoe.data.priors import space_group_prior
    from physmoe.data.pyxtal_generator import generate_structure

    options = {"wavelength": CU_KA1, "two_theta_range": GENERATION_RANGE}

    def fast():
        crystals = RandomCrystalGenerator(prior="icsd", seed=0).sample(num_structures)
        return crystals, simulate_peaks_batch(crystals, **options)

    crystals, _ = fast()
    time_fast = best_time(fast, repeats)
    time_peaks = best_time(lambda: simulate_peaks_batch(crystals, **options), repeats)
    atoms = [len(c.species) for c in crystals]
    per_atom_volume = sorted(c.volume / len(c.species) for c in crystals)
    prior = space_group_prior("icsd")
    num_pyxtal = min(num_structures, 50)
    start = time.perf_counter()
    made = 0
    for index in range(num_pyxtal):
        generated = generate_structure(0, index, prior)
        if generated.crystal is not None:
            simulate_peaks(generated.crystal, CU_KA1, GENERATION_RANGE)
            made += 1
    time_pyxtal = time.perf_counter() - start
    fast_rate, pyxtal_rate = num_structures / time_fast, made / time_pyxtal
    low, high = GENERATION_RANGE
    print(f"\nRandom crystals with peak lists (Cu Ka1, 2theta {low:g}-{high:g} deg), one core")
    print(
        f"atoms per cell: mean {statistics.mean(atoms):.1f}, median {statistics.median(atoms):g}, "
        f"max {max(atoms)}; volume per atom median {statistics.median(per_atom_volume):.1f} A^3, "
        f"max {per_atom_volume[-1]:.0f} A^3"
    )
    print(
        f"RandomCrystalGenerator + simulate_peaks_batch: {fast_rate:,.0f} structures/s "
        f"({num_structures} structures, best of {repeats}); peak lists alone "
        f"{time_peaks / num_structures * 1e3:.3f} ms/structure"
    )
    print(
        f"pyxtal generate_structure + simulate_peaks:   {pyxtal_rate:,.1f} structures/s "
        f"({made} of {num_pyxtal} made, one pass)"
    )
    print(f"ratio: {fast_rate / pyxtal_rate:,.1f}x")


def benchmark_rendering(
    peak_lists: list, crystals_by_index: list, batch_size: int, repeats: int
) -> None:
    try:
        import torch

        from physmoe.data.render import MeasurementConditions, render_patterns
    except ImportError as error:
        print(f"\nRendering skipped: physmoe.data.render is not available ({error})")
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    grid = TwoThetaGrid()
    batch = [peak_lists[i % len(peak_lists)] for i in range(batch_size)]
    print(
        f"\nRendering on the {grid.num_points}-point grid, batch {batch_size}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(f"{'mode / conditions':<28} {'ms per batch':>13} {'patterns/s':>11}")
    cases = [
        ("sticks", "sticks", None),
        ("profile, clean", "profile", MeasurementConditions.clean()),
        ("profile, default (realism)", "profile", MeasurementConditions.default()),
    ]
    for name, mode, conditions in cases:
        generator = torch.Generator().manual_seed(0)
        render_patterns(batch, grid, conditions, mode=mode, generator=generator)  # warm-up
        seconds = best_time(
            lambda m=mode, c=conditions, g=generator: render_patterns(
                batch, grid, c, mode=m, generator=g
            ),
            repeats,
        )
        print(f"{name:<28} {seconds * 1e3:>13.1f} {batch_size / seconds:>11,.0f}")
    # End to end: simulate the peak lists of a batch of structures, then render them clean.
    crystals = [crystals_by_index[i % len(crystals_by_index)] for i in range(batch_size)]
    clean = MeasurementConditions.clean()

    def simulate_and_render():
        peaks = [simulate_peaks(c, CU_KA1, TWO_THETA_RANGE) for c in crystals]
        return render_patterns(peaks, grid, clean, generator=torch.Generator().manual_seed(0))

    seconds = best_time(simulate_and_render, repeats)
    print(f"{'simulate + render clean':<28} {seconds * 1e3:>13.1f} {batch_size / seconds:>11,.0f}")

    # Training data as streamed: fast-generator ICSD-prior crystals, whose peak counts are heavy
    # tailed (median ~130 lines, a few large low-symmetry cells with thousands), 10 batches.
    from physmoe.data.random_crystals import RandomCrystalGenerator

    generated = RandomCrystalGenerator(prior="icsd", seed=0).sample(10 * batch_size)
    streamed = simulate_peaks_batch(generated, wavelength=CU_KA1, two_theta_range=GENERATION_RANGE)
    counts = sorted(len(p.two_theta) for p in streamed)
    default = MeasurementConditions.default()

    def render_streamed():
        generator = torch.Generator().manual_seed(0)
        for start in range(0, len(streamed), batch_size):
            render_patterns(
                streamed[start : start + batch_size], grid, default, generator=generator
            )

    seconds = best_time(render_streamed, repeats) / 10
    print(
        f"{'default, generated crystals':<28} {seconds * 1e3:>13.1f} {batch_size / seconds:>11,.0f}"
        f"   (lines per crystal: median {counts[len(counts) // 2]}, max {counts[-1]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--num-structures", type=int, default=35, help="structures (>= 30, spread over 7 systems)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timing passes per measurement (best is kept)"
    )
    parser.add_argument("--seed", type=int, default=0, help="pyxtal seed")
    parser.add_argument("--batch-size", type=int, default=64, help="patterns per rendering batch")
    parser.add_argument("--skip-render", action="store_true", help="skip the rendering benchmark")
    parser.add_argument(
        "--skip-generation", action="store_true", help="skip the random-crystal benchmark"
    )
    parser.add_argument(
        "--generation-structures", type=int, default=200, help="crystals per generation timing pass"
    )
    args = parser.parse_args()
    if args.num_structures < 7:
        parser.error("--num-structures must be at least 7 (one per crystal system)")

    start = time.perf_counter()
    structures = random_structures(args.num_structures, args.seed)
    assert all(crystal_system_index(number) == system for system, number, _ in structures)
    print(
        f"{len(structures)} pyxtal structures (seed {args.seed}) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    extra = simple_structures() + supercells(structures, 4)
    rows = benchmark_simulation(structures + extra, args.repeats)
    print_simulation_table(rows)
    print_bucket_table(rows)
    crystals = [Crystal.from_pymatgen(structure) for _, _, structure in structures]
    small = [Crystal.from_pymatgen(structure) for _, _, structure in simple_structures()]
    print_batch_table(
        [
            ("pyxtal cells, 2theta 5-90", crystals, TWO_THETA_RANGE),
            ("pyxtal cells, 2theta 2-100", crystals, GENERATION_RANGE),
            ("1-8 atom real cells x 20, 2theta 5-90", small * 20, TWO_THETA_RANGE),
        ],
        args.repeats,
    )
    if not args.skip_generation:
        benchmark_generation(args.generation_structures, args.repeats)
    if not args.skip_render:
        crystals = [Crystal.from_pymatgen(structure) for _, _, structure in structures]
        benchmark_rendering([r["peaks"] for r in rows], crystals, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
