"""How realistic are generated crystals? Compare three sets of structures:

* ``real``: the real structures shipped in ``physmoe/resources/real_structures.npz`` (see
  ``scripts/collect_real_structures.py``); by default only the inorganic ones (the generators
  draw inorganic compositions; ``--include-molecular`` adds the CSD molecular crystals);
* ``pyxtal``: a random subset of the embedded default set (``default_structures.npz``, pyxtal);
* ``generator``: ``physmoe.data.random_crystals.RandomCrystalGenerator(prior, seed, max_atoms)``
  (skipped with a warning when the module is not there yet).

The tables and JSON also hold ``real_compounds``, the real structures with >= 2 elements (the
real set has many elemental crystals, which the generators rarely make), with KS statistics of
pyxtal and the generator against it; the plot shows the three main sets.

Every structure is put in spglib's standardised conventional cell first, so lattice ratios and
angles are comparable. Quantities per structure: atoms per conventional cell, volume per atom
(A^3), number of distinct elements, nearest-neighbour distance (minimum interatomic distance,
periodic images included), the ratio of that distance to the sum of the two atoms' covalent radii
(``ase.data.covalent_radii``), the smallest such ratio over all pairs (the most compressed
contact), and per crystal system the free lattice ratios b/a, c/a and angles.

Writes ``results/realism/realism.png`` (one panel per quantity, the three sets overlaid),
``realism.json`` (median, 10th/90th percentiles, two-sample KS statistic against ``real``) and
``realism.md`` (the same as tables).

Usage::

    .venv/bin/python scripts/compare_realism.py                     # 2000 generated, 3000 pyxtal
    .venv/bin/python scripts/compare_realism.py --num-generated 500 --num-pyxtal 500 --out /tmp/r
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import spglib
from scipy.stats import ks_2samp

from physmoe.crystallography import CRYSTAL_SYSTEMS, crystal_system_index
from physmoe.data.embedded import read_structure_archive
from physmoe.data.structures import Crystal
from physmoe.data.symmetry import DEFAULT_SYMPREC, standardize_crystal

logger = logging.getLogger("compare_realism")

ROOT = Path(__file__).resolve().parents[1]
REAL_ARCHIVE = ROOT / "src" / "physmoe" / "resources" / "real_structures.npz"
REAL_SOURCES = ROOT / "src" / "physmoe" / "resources" / "real_structures_sources.csv"
DEFAULT_OUT = ROOT / "results" / "realism"

_SHIFTS = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T
_ZERO_SHIFT = 13  # index of (0, 0, 0) in _SHIFTS
#: Sets compared against the real ones (KS statistics).
COMPARED = ("pyxtal", "generator")

#: Free lattice quantities per crystal system (spglib standard conventional setting).
LATTICE_QUANTITIES: dict[str, tuple[str, ...]] = {
    "triclinic": ("b/a", "c/a", "alpha", "beta", "gamma"),
    "monoclinic": ("b/a", "c/a", "beta"),
    "orthorhombic": ("b/a", "c/a"),
    "tetragonal": ("c/a",),
    "trigonal": ("c/a",),
    "hexagonal": ("c/a",),
    "cubic": (),
}
GENERAL_QUANTITIES = (
    "atoms_per_cell",
    "volume_per_atom",
    "num_elements",
    "nn_distance",
    "nn_ratio",
    "min_contact_ratio",
)
LABELS = {
    "atoms_per_cell": "atoms per conventional cell",
    "volume_per_atom": "volume per atom (Å³)",
    "num_elements": "distinct elements",
    "nn_distance": "nearest-neighbour distance (Å)",
    "nn_ratio": "NN distance / (r_cov,i + r_cov,j)",
    "min_contact_ratio": "min over pairs of d / (r_cov,i + r_cov,j)",
}


# --------------------------------------------------------------------------- distances


def _reduced_cell(lattice: np.ndarray, frac_coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delaunay-reduced lattice and the coordinates in it (wrapped to [0, 1)), so that the 27
    neighbouring cells contain every minimum-image vector."""
    reduced = spglib.delaunay_reduce(np.asarray(lattice, dtype=np.float64), eps=1e-5)
    if reduced is None:
        reduced = np.asarray(lattice, dtype=np.float64)
    frac = np.asarray(frac_coords, dtype=np.float64) @ lattice @ np.linalg.inv(reduced)
    return reduced, np.mod(frac, 1.0)


def pair_distances(lattice: np.ndarray, frac_coords: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Minimum-image distance (A) between every pair of sites, ``[N, N]``; the diagonal holds the
    distance from a site to its nearest periodic image (shortest lattice vector).

    Vectorised over pairs and a 3x3x3 block of cell shifts, after Delaunay reduction of the cell
    (rows of ``chunk`` sites at a time to bound memory).
    """
    reduced, frac = _reduced_cell(lattice, frac_coords)
    n = len(frac)
    cart_shifts = _SHIFTS @ reduced  # [27, 3]
    out = np.empty((n, n))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        diff = frac[start:stop, None, :] - frac[None, :, :]
        diff -= np.round(diff)
        cart = diff @ reduced  # [c, N, 3]
        vectors = cart[:, :, None, :] + cart_shifts[None, None]  # [c, N, 27, 3]
        dist = np.sqrt(np.einsum("ijkl,ijkl->ijk", vectors, vectors))
        rows = np.arange(start, stop)
        dist[rows - start, rows, _ZERO_SHIFT] = np.inf
        # the zero-shift self term is excluded; a same-site image at (wrapped) zero offset
        # can only sit at another shift, which stays in.
        out[start:stop] = dist.min(axis=2)
    return out


def nearest_neighbour_distances(
    lattice: np.ndarray, frac_coords: np.ndarray, species: Sequence[str]
) -> dict[str, float]:
    """Nearest-neighbour statistics of one structure.

    Returns:
        ``nn_distance``: smallest interatomic distance (A), periodic images included;
        ``nn_ratio``: that distance over the sum of the two atoms' covalent radii;
        ``min_contact_ratio``: the smallest distance / radius-sum ratio over all pairs.
    """
    from ase.data import atomic_numbers, covalent_radii

    distances = pair_distances(lattice, frac_coords)
    radii = covalent_radii[[atomic_numbers[s] for s in species]]
    radius_sum = radii[:, None] + radii[None, :]
    flat = int(np.argmin(distances))
    ratios = distances / radius_sum
    return {
        "nn_distance": float(distances.flat[flat]),
        "nn_ratio": float(ratios.flat[flat]),
        "min_contact_ratio": float(ratios.min()),
    }


# --------------------------------------------------------------------------- quantities


@dataclass
class StructureSet:
    name: str
    values: dict[str, list[float]] = field(default_factory=dict)
    systems: list[int] = field(default_factory=list)
    failures: int = 0

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(float(value))


def lattice_quantities(crystal: Crystal) -> dict[str, float]:
    a, b, c, alpha, beta, gamma = crystal.lattice_parameters
    return {"b/a": b / a, "c/a": c / a, "alpha": alpha, "beta": beta, "gamma": gamma}


def measure(crystals: Sequence[Crystal], name: str, standardized: bool = False) -> StructureSet:
    """All quantities of a set of structures (standardised with spglib unless ``standardized``)."""
    result = StructureSet(name)
    for crystal in crystals:
        try:
            if standardized and crystal.space_group is not None:
                space_group, standard = crystal.space_group, crystal
            else:
                space_group, standard = standardize_crystal(crystal, symprec=DEFAULT_SYMPREC)
        except ValueError:
            result.failures += 1
            continue
        system = CRYSTAL_SYSTEMS[crystal_system_index(space_group)]
        result.systems.append(crystal_system_index(space_group))
        n = len(standard)
        result.add("atoms_per_cell", n)
        result.add("volume_per_atom", standard.volume / n)
        result.add("num_elements", len(set(standard.species)))
        for key, value in nearest_neighbour_distances(
            standard.lattice, standard.frac_coords, standard.species
        ).items():
            result.add(key, value)
        params = lattice_quantities(standard)
        for quantity in LATTICE_QUANTITIES[system]:
            result.add(f"{system} {quantity}", params[quantity])
    return result


def all_quantities() -> list[str]:
    keys = list(GENERAL_QUANTITIES)
    for system, quantities in LATTICE_QUANTITIES.items():
        keys += [f"{system} {q}" for q in quantities]
    return keys


# --------------------------------------------------------------------------- sets


def real_crystals(include_molecular: bool, min_elements: int = 1) -> list[Crystal]:
    import csv

    archive = read_structure_archive(REAL_ARCHIVE)
    with REAL_SOURCES.open() as handle:
        categories = [row["category"] for row in csv.DictReader(handle)]
    if len(categories) != len(archive):
        raise ValueError(f"{REAL_SOURCES} and {REAL_ARCHIVE} disagree on the number of rows")
    crystals = [
        archive.crystal(i)
        for i in range(len(archive))
        if include_molecular or categories[i] != "molecular"
    ]
    return [c for c in crystals if len(set(c.species)) >= min_elements]


def pyxtal_crystals(num: int, seed: int) -> list[Crystal]:
    archive = read_structure_archive()
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(archive), size=min(num, len(archive)), replace=False))
    crystals = []
    for i in indices:
        crystal = archive.crystal(int(i))
        crystal.space_group = None  # float32 storage: relabel and standardise here
        crystals.append(crystal)
    return crystals


def generator_crystals(num: int, seed: int, prior: str, max_atoms: int) -> list[Crystal] | None:
    try:
        from physmoe.data.random_crystals import RandomCrystalGenerator
    except ImportError as error:
        logger.warning("no generator (%s): the generator set is skipped", error)
        return None
    generator = RandomCrystalGenerator(prior=prior, seed=seed, max_atoms=max_atoms)
    records = generator.sample(num)
    crystals = []
    for record in records:
        crystal = record.to_crystal()
        crystal.space_group = None
        crystals.append(crystal)
    return crystals


# --------------------------------------------------------------------------- statistics


def summarize(sets: dict[str, StructureSet], reference: str = "real") -> dict:
    summary: dict = {"quantities": {}, "sets": {}}
    for name, data in sets.items():
        counts = np.bincount(data.systems, minlength=len(CRYSTAL_SYSTEMS))
        elements = np.asarray(data.values.get("num_elements", [0]))
        summary["sets"][name] = {
            "num_structures": len(data.systems),
            "failed": data.failures,
            "single_element_fraction": round(float(np.mean(elements == 1)), 4),
            "crystal_system_fraction": {
                s: round(float(c) / max(1, counts.sum()), 4)
                for s, c in zip(CRYSTAL_SYSTEMS, counts, strict=True)
            },
        }
    ref = sets.get(reference)
    for key in all_quantities():
        entry = {}
        for name, data in sets.items():
            values = np.asarray(data.values.get(key, []), dtype=np.float64)
            if len(values) == 0:
                continue
            p10, median, p90 = np.percentile(values, [10, 50, 90])
            stats = {
                "n": int(len(values)),
                "median": round(float(median), 4),
                "p10": round(float(p10), 4),
                "p90": round(float(p90), 4),
            }
            ref_values = ref.values.get(key, []) if ref is not None else []
            if name in COMPARED and len(ref_values) > 0:
                ks = ks_2samp(values, np.asarray(ref_values))
                stats["ks_vs_real"] = round(float(ks.statistic), 4)
                stats["ks_pvalue"] = float(f"{ks.pvalue:.3g}")
            compounds = sets.get("real_compounds")
            if name in COMPARED and compounds is not None and compounds.values.get(key):
                ks = ks_2samp(values, np.asarray(compounds.values[key]))
                stats["ks_vs_real_compounds"] = round(float(ks.statistic), 4)
            entry[name] = stats
        summary["quantities"][key] = entry
    return summary


def markdown(summary: dict, settings: dict) -> str:
    names = list(summary["sets"])
    lines = [
        "# Realism of generated crystals",
        "",
        "Written by `scripts/compare_realism.py`; settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + ".",
        "",
        "Structures per set (failed = spglib could not standardise; one element = share of "
        "single-element structures; then the share of each crystal system):",
        "",
        "| set | structures | failed | one element | " + " | ".join(CRYSTAL_SYSTEMS) + " |",
        "|---|---|---|---|" + "---|" * len(CRYSTAL_SYSTEMS),
    ]
    for name in names:
        info = summary["sets"][name]
        fractions = " | ".join(f"{info['crystal_system_fraction'][s]:.3f}" for s in CRYSTAL_SYSTEMS)
        lines.append(
            f"| {name} | {info['num_structures']} | {info['failed']} | "
            f"{info['single_element_fraction']:.3f} | {fractions} |"
        )
    compared = [n for n in names if n in COMPARED]
    ks_keys = [("ks_vs_real", "real")]
    if "real_compounds" in names:
        ks_keys.append(("ks_vs_real_compounds", "real_compounds"))
    ks_columns = [(n, k) for k, _ in ks_keys for n in compared]
    lines += [
        "",
        "Median [10th, 90th percentile] per set; KS = two-sample Kolmogorov-Smirnov "
        "statistic against `real` (or `real_compounds`: the real structures with >= 2 "
        "elements); 0 = same distribution, 1 = disjoint.",
        "",
        "| quantity | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"KS {n} vs {dict(ks_keys)[k]}" for n, k in ks_columns)
        + " |",
        "|---|" + "---|" * (len(names) + len(ks_columns)),
    ]
    for key, entry in summary["quantities"].items():
        cells = []
        for name in names:
            s = entry.get(name)
            cells.append(
                "-"
                if s is None
                else f"{s['median']:.3g} [{s['p10']:.3g}, {s['p90']:.3g}] (n={s['n']})"
            )
        ks = [f"{entry[n][k]:.2f}" if n in entry and k in entry[n] else "-" for n, k in ks_columns]
        lines.append(f"| {key} | " + " | ".join(cells) + " | " + " | ".join(ks) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot

_COLOURS = {"real": "black", "pyxtal": "tab:blue", "generator": "tab:orange"}


def plot(sets: dict[str, StructureSet], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = {name: data for name, data in sets.items() if name in _COLOURS}
    keys = all_quantities()
    panels = keys + ["crystal_system"]
    ncols = 5
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows))
    for ax, key in zip(axes.flat, panels, strict=False):
        if key == "crystal_system":
            width = 0.8 / len(sets)
            for offset, name in enumerate(sets):
                fractions = summary["sets"][name]["crystal_system_fraction"]
                x = np.arange(len(CRYSTAL_SYSTEMS)) + (offset - (len(sets) - 1) / 2) * width
                ax.bar(
                    x,
                    [fractions[s] for s in CRYSTAL_SYSTEMS],
                    width,
                    color=_COLOURS.get(name),
                    label=name,
                )
            ax.set_xticks(
                np.arange(len(CRYSTAL_SYSTEMS)),
                [s[:5] for s in CRYSTAL_SYSTEMS],
                rotation=45,
                fontsize=8,
            )
            ax.set_title("crystal-system share", fontsize=10)
            ax.legend(fontsize=8, frameon=False)
            continue
        arrays = {n: np.asarray(d.values.get(key, []), dtype=np.float64) for n, d in sets.items()}
        arrays = {n: a for n, a in arrays.items() if len(a)}
        if not arrays:
            ax.set_visible(False)
            continue
        pooled = np.concatenate(list(arrays.values()))
        lo, hi = np.percentile(pooled, [0.5, 99.5])
        log = key == "atoms_per_cell"
        if key == "num_elements":
            bins = np.arange(0.5, min(pooled.max(), 10) + 1.5)
        elif log:
            bins = np.geomspace(max(lo, 1), max(hi, 2), 30)
        else:
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        for name, values in arrays.items():
            stats = summary["quantities"][key][name]
            label = f"{name} (n={len(values)}"
            label += f", KS {stats['ks_vs_real']:.2f})" if "ks_vs_real" in stats else ")"
            ax.hist(
                np.clip(values, bins[0], bins[-1]),
                bins=bins,
                density=True,
                histtype="step",
                linewidth=1.6,
                color=_COLOURS.get(name),
                label=label,
            )
        if log:
            ax.set_xscale("log")
        ax.set_title(key if key not in LABELS else LABELS[key], fontsize=10)
        ax.legend(fontsize=7, frameon=False)
        ax.tick_params(labelsize=8)
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Real vs pyxtal vs fast-generator crystals (density histograms; values outside "
        "the 0.5-99.5% range clipped to the edge bins; lattice panels in spglib "
        "conventional cells)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-generated", type=int, default=2000)
    parser.add_argument("--num-pyxtal", type=int, default=3000)
    parser.add_argument("--prior", default="icsd")
    parser.add_argument("--max-atoms", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--include-molecular",
        action="store_true",
        help="also compare against the CSD molecular crystals",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("physmoe").setLevel(logging.WARNING)

    sets: dict[str, StructureSet] = {}
    timings = {}
    start = time.perf_counter()
    sets["real"] = measure(real_crystals(args.include_molecular), "real", standardized=True)
    sets["real_compounds"] = measure(
        real_crystals(args.include_molecular, min_elements=2), "real_compounds", standardized=True
    )
    timings["real"] = time.perf_counter() - start
    start = time.perf_counter()
    sets["pyxtal"] = measure(pyxtal_crystals(args.num_pyxtal, args.seed), "pyxtal")
    timings["pyxtal"] = time.perf_counter() - start
    start = time.perf_counter()
    generated = generator_crystals(args.num_generated, args.seed, args.prior, args.max_atoms)
    timings["generator sampling"] = time.perf_counter() - start
    if generated is not None:
        start = time.perf_counter()
        sets["generator"] = measure(generated, "generator")
        timings["generator"] = time.perf_counter() - start
    for name, seconds in timings.items():
        logger.info("%s: %.1f s", name, seconds)

    settings = {
        "num_generated": args.num_generated,
        "num_pyxtal": args.num_pyxtal,
        "prior": args.prior,
        "max_atoms": args.max_atoms,
        "seed": args.seed,
        "include_molecular": args.include_molecular,
        "symprec": DEFAULT_SYMPREC,
    }
    summary = summarize(sets)
    summary["settings"] = settings
    summary["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "realism.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "realism.md").write_text(markdown(summary, settings))
    plot(sets, summary, args.out / "realism.png")
    print(markdown(summary, settings))
    print(f"wrote {args.out}/realism.png, realism.md, realism.json")


if __name__ == "__main__":
    main()
