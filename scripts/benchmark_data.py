"""Benchmark the data pipeline: peak lists per second of physmoe's simulator against pymatgen's
``XRDCalculator`` on the same structures in the same run, and rendered patterns per second.

    python scripts/benchmark_data.py [--num-structures 35] [--repeats 5] [--seed 0]
                                     [--batch-size 64] [--skip-render]

Structures come from pyxtal (random crystals, 5 per crystal system by default, fixed seed), so
pyxtal and pymatgen must be installed (the ``sim`` extra). Times are the best of ``--repeats``
passes (wall clock, one thread), which is the least noisy statistic on a shared machine. The
agreement columns compare line positions (deg) and Gaussian-broadened profiles (FWHM 0.1 deg,
cosine) of the two simulators, both with B = 0; what differs is the form-factor table (IT92 vs
pymatgen's), up to ~2 on the 0-100 scale for single lines.
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
from physmoe.data.simulate import simulate_peaks  # noqa: E402
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
SPECIES = ("O", "Na", "Mg", "Al", "Si", "S", "Cl", "K", "Ca", "Ti", "Fe", "Cu", "Zn", "Sr", "Ba", "La", "Pb")
TWO_THETA_RANGE = (5.0, 90.0)


def random_structures(num_structures: int, seed: int, min_atoms: int = 8, max_atoms: int = 64) -> list:
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
        elements = [str(e) for e in rng.choice(SPECIES, size=int(rng.integers(1, 4)), replace=False)]
        multiplicities = sorted({len(wp) for wp in group.Wyckoff_positions})
        counts = [int(rng.choice(multiplicities) * rng.integers(1, 3)) for _ in elements]
        if not min_atoms <= sum(counts) <= max_atoms or not group.check_compatible(counts)[0]:
            continue
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, number, elements, counts, random_state=int(rng.integers(1 << 31)))
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
    return np.minimum(np.abs(reference[index] - positions), np.abs(reference[index - 1] - positions))


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
            time_theirs = best_time(lambda s=structure: calculator.get_pattern(s, two_theta_range=TWO_THETA_RANGE), repeats)
        time_ours = best_time(lambda c=crystal: simulate_peaks(c, CU_KA1, TWO_THETA_RANGE), repeats)
        time_convert = best_time(lambda s=structure: Crystal.from_pymatgen(s), repeats)
        x, y = np.asarray(theirs.x), np.asarray(theirs.y)
        # Every pymatgen line against all our reflections and our lines above 0.1 against
        # pymatgen's: with different form-factor tables a weak line can fall below the 1e-3
        # cut-off in one simulator only.
        every_line = simulate_peaks(crystal, CU_KA1, TWO_THETA_RANGE, min_intensity=0.0)
        shift = np.concatenate([
            nearest_distance(x, every_line.two_theta),
            nearest_distance(ours.two_theta[ours.intensity > 0.1], x),
        ])
        rows.append({
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
        })
    return rows


def print_simulation_table(rows: list) -> None:
    print("\nPeak-list simulation, Cu Ka1, 2theta 5-90 deg (best of repeats, ms per structure)")
    header = f"{'crystal system':<14} {'n':>3} {'atoms':>6} {'lines':>6} {'physmoe':>8} {'pymatgen':>9} {'speed-up':>9} {'max |d2th|':>11} {'min cos':>8}"
    print(header)
    print("-" * len(header))
    for system in range(7):
        part = [r for r in rows if r["system"] == system]
        if not part:
            continue
        ours = statistics.mean(r["ours"] for r in part) * 1e3
        theirs = statistics.mean(r["pymatgen"] for r in part) * 1e3
        print(
            f"{CRYSTAL_SYSTEMS[system]:<14} {len(part):>3} {statistics.mean(r['atoms'] for r in part):>6.1f} "
            f"{statistics.mean(r['lines'] for r in part):>6.0f} {ours:>8.2f} {theirs:>9.2f} {theirs / ours:>8.1f}x "
            f"{max(r['shift'] for r in part):>11.1e} {min(r['cosine'] for r in part):>8.5f}"
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
        f"({len(rows) / (total_ours + total_convert):,.0f} including pymatgen -> Crystal conversion), "
        f"pymatgen XRDCalculator {len(rows) / total_theirs:,.1f}"
    )
    ratios = sorted(r["pymatgen"] / r["ours"] for r in rows)
    print(
        f"per-structure speed-up: min {ratios[0]:.1f}x, median {statistics.median(ratios):.1f}x, "
        f"max {ratios[-1]:.1f}x"
    )
    slowest = max(rows, key=lambda r: r["ours"])
    print(
        f"slowest physmoe structure: space group {slowest['space_group']}, {slowest['atoms']} atoms, "
        f"{slowest['ours'] * 1e3:.2f} ms"
    )


def benchmark_rendering(peak_lists: list, crystals_by_index: list, batch_size: int, repeats: int) -> None:
    try:
        import torch

        from physmoe.data.render import MeasurementConditions, render_patterns
    except ImportError as error:
        print(f"\nRendering skipped: physmoe.data.render is not available ({error})")
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    grid = TwoThetaGrid()
    batch = [peak_lists[i % len(peak_lists)] for i in range(batch_size)]
    print(f"\nRendering on the {grid.num_points}-point grid, batch {batch_size}, {torch.get_num_threads()} thread(s)")
    print(f"{'mode / conditions':<28} {'ms per batch':>13} {'patterns/s':>11}")
    cases = [
        ("sticks", "sticks", None),
        ("profile, clean", "profile", MeasurementConditions.clean()),
        ("profile, default (realism)", "profile", MeasurementConditions.default()),
    ]
    for name, mode, conditions in cases:
        generator = torch.Generator().manual_seed(0)
        render_patterns(batch, grid, conditions, mode=mode, generator=generator)  # warm-up
        seconds = best_time(lambda m=mode, c=conditions, g=generator: render_patterns(batch, grid, c, mode=m, generator=g), repeats)
        print(f"{name:<28} {seconds * 1e3:>13.1f} {batch_size / seconds:>11,.0f}")
    # End to end: simulate the peak lists of a batch of structures, then render them clean.
    crystals = [crystals_by_index[i % len(crystals_by_index)] for i in range(batch_size)]
    clean = MeasurementConditions.clean()

    def simulate_and_render():
        peaks = [simulate_peaks(c, CU_KA1, TWO_THETA_RANGE) for c in crystals]
        return render_patterns(peaks, grid, clean, generator=torch.Generator().manual_seed(0))

    seconds = best_time(simulate_and_render, repeats)
    print(f"{'simulate + render clean':<28} {seconds * 1e3:>13.1f} {batch_size / seconds:>11,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-structures", type=int, default=35, help="structures (>= 30, spread over 7 systems)")
    parser.add_argument("--repeats", type=int, default=5, help="timing passes per measurement (best is kept)")
    parser.add_argument("--seed", type=int, default=0, help="pyxtal seed")
    parser.add_argument("--batch-size", type=int, default=64, help="patterns per rendering batch")
    parser.add_argument("--skip-render", action="store_true", help="only benchmark the simulator")
    args = parser.parse_args()
    if args.num_structures < 7:
        parser.error("--num-structures must be at least 7 (one per crystal system)")

    start = time.perf_counter()
    structures = random_structures(args.num_structures, args.seed)
    assert all(crystal_system_index(number) == system for system, number, _ in structures)
    print(f"{len(structures)} pyxtal structures (seed {args.seed}) in {time.perf_counter() - start:.1f} s")
    rows = benchmark_simulation(structures, args.repeats)
    print_simulation_table(rows)
    if not args.skip_render:
        crystals = [Crystal.from_pymatgen(structure) for _, _, structure in structures]
        benchmark_rendering([r["peaks"] for r in rows], crystals, args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
