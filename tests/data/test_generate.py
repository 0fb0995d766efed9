"""Random-crystal generation, resumable shards and the generated DatasetDict.

Oracles: pyxtal's own Wyckoff tables (multiplicities), the MP statistics file read with the csv
module, spglib run directly, the simulator run on the stored structure, and an uninterrupted run
of the same seed for the kill/resume and process-count comparisons.
"""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyxtal", reason="random-crystal generation needs the optional pyxtal extra")

import spglib  # noqa: E402
from pyxtal.symmetry import Group  # noqa: E402

from physmoe.data import generate as gen  # noqa: E402
from physmoe.data import pyxtal_generator  # noqa: E402
from physmoe.data.dataset import FEATURES, crystal_from_row, load_dataset_dict  # noqa: E402
from physmoe.data.generate import generate_dataset  # noqa: E402
from physmoe.data.priors import space_group_prior  # noqa: E402
from physmoe.data.pyxtal_generator import GenerationSettings, generate_structure  # noqa: E402
from physmoe.data.simulate import simulate_peaks  # noqa: E402
from physmoe.data.wyckoff import (  # noqa: E402
    ANION_WEIGHTS,
    CATIONS,
    sample_composition,
    wyckoff_statistics,
)

TINY = {"num_structures": 14, "seed": 3, "shard_size": 4, "max_atoms": 24, "progress": False}


def _tables(dataset_dict) -> dict:
    return {name: split.data.table.to_pydict() for name, split in dataset_dict.items()}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted single-process run (the reference for the comparisons below)."""
    out_dir = tmp_path_factory.mktemp("reference")
    return out_dir, generate_dataset(out_dir, num_proc=1, **TINY)


# --------------------------------------------------------------------------- composition


def test_wyckoff_statistics_format_against_pyxtal_multiplicities():
    with resources.as_file(
        resources.files("pyxtal").joinpath("database", "spg_num_wps_mp.csv")
    ) as path:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    statistics = wyckoff_statistics()
    assert sum(len(s[1]) for s in statistics.values()) == len(rows)
    assert sum(int(s[2].sum()) for s in statistics.values()) == sum(int(r["count"]) for r in rows)
    assert set(range(1, 231)) - set(statistics) == {1, 168, 184, 207, 222}
    # Our reading of the file: n_atoms = sum of the multiplicities of the listed Wyckoff indices
    # in pyxtal's order (0 = general position), i.e. atoms per conventional cell.
    for group in (2, 14, 15, 62, 63, 139, 148, 166, 194, 216, 221, 225, 227, 229, 230):
        multiplicities = [wp.multiplicity for wp in Group(group).Wyckoff_positions]
        n_atoms, combinations, _ = statistics[group]
        for n, combination in zip(n_atoms, combinations, strict=True):
            assert sum(multiplicities[w] for w in combination) == n, (group, combination)


@pytest.mark.parametrize("space_group", [1, 2, 14, 62, 139, 166, 194, 207, 225, 227, 230])
def test_sample_composition_is_consistent(space_group):
    labels = {wp.get_label(): wp for wp in Group(space_group).Wyckoff_positions}
    for trial in range(20):
        rng = np.random.default_rng([space_group, trial])
        species, num_ions, sites = sample_composition(space_group, rng, max_atoms=64)
        assert len(species) == len(set(species)) == len(num_ions) == len(sites) >= 1
        assert set(species) <= set(CATIONS) | set(ANION_WEIGHTS)
        assert sum(1 for s in species if s in ANION_WEIGHTS) <= 1
        for count, site_labels in zip(num_ions, sites, strict=True):
            assert count == sum(labels[label].multiplicity for label in site_labels)
        assert sum(num_ions) <= 64
        fixed = [label for s in sites for label in s if labels[label].get_dof() == 0]
        assert len(fixed) == len(set(fixed))  # a fixed special position holds one orbit


def test_groups_beyond_max_atoms_are_refused():
    # Ia-3d (230): the smallest orbit has 16 sites.
    with pytest.raises(ValueError, match="needs at least 16 atoms"):
        sample_composition(230, np.random.default_rng(0), max_atoms=8)


def test_generate_structure_is_deterministic_and_relabelled_by_spglib():
    prior = space_group_prior("icsd")
    first = [generate_structure(11, i, prior, GenerationSettings(max_atoms=32)) for i in range(6)]
    again = [generate_structure(11, i, prior, GenerationSettings(max_atoms=32)) for i in range(6)]
    other = generate_structure(12, 0, prior, GenerationSettings(max_atoms=32))
    for a, b in zip(first, again, strict=True):
        assert a.requested_space_group == b.requested_space_group and a.space_group == b.space_group
        assert a.crystal.species == b.crystal.species
        np.testing.assert_array_equal(a.crystal.frac_coords, b.crystal.frac_coords)
        np.testing.assert_array_equal(a.crystal.lattice, b.crystal.lattice)
        assert prior[a.requested_space_group - 1] > 0
        kinds = {s: k for k, s in enumerate(sorted(set(a.crystal.species)))}
        cell = (a.crystal.lattice, a.crystal.frac_coords, [kinds[s] for s in a.crystal.species])
        assert spglib.get_symmetry_dataset(cell, symprec=1e-3).number == a.space_group
    assert not np.array_equal(other.crystal.lattice, first[0].crystal.lattice)


def test_generation_leaves_global_rngs_alone():
    # Determinism rests on pyxtal drawing only from the Generator we pass (true for pyxtal 1.1).
    import random

    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002 (the legacy global state is the point)
    python_state = random.getstate()
    for i in range(20):
        generate_structure(4, i, space_group_prior("uniform"), GenerationSettings(max_atoms=48))
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002
    assert random.getstate() == python_state


def test_requested_group_follows_the_prior():
    prior = np.zeros(230)
    prior[224] = 1.0  # only Fm-3m
    results = [generate_structure(0, i, prior, GenerationSettings(max_atoms=32)) for i in range(4)]
    assert {r.requested_space_group for r in results} == {225}


def test_failed_attempts_are_retried_with_new_seeds_then_dropped(monkeypatch):
    seeds = []

    def always_fails(space_group, rng, max_atoms, placement_budget):
        seeds.append(rng.integers(1 << 62))
        raise RuntimeError("no structure")

    monkeypatch.setattr(pyxtal_generator, "random_crystal", always_fails)
    result = generate_structure(0, 5, space_group_prior("icsd"), GenerationSettings(max_attempts=3))
    assert result.crystal is None and result.space_group is None and result.attempts == 3
    assert len(set(seeds)) == 3 and len(result.errors) == 3


def test_time_limit_stops_a_slow_attempt(monkeypatch):
    import time

    def slow(space_group, rng, max_atoms, placement_budget):
        time.sleep(5)

    monkeypatch.setattr(pyxtal_generator, "random_crystal", slow)
    start = time.perf_counter()
    result = generate_structure(
        0, 0, space_group_prior("icsd"), GenerationSettings(max_attempts=2, time_limit=0.2)
    )
    assert time.perf_counter() - start < 2
    assert result.timeouts == 2 and result.crystal is None


# --------------------------------------------------------------------------- datasets


def test_generated_dataset_content(reference_run):
    out_dir, dataset_dict = reference_run
    assert set(dataset_dict) == {"train", "validation", "test"}
    plain = datasets.load_from_disk(str(out_dir / "dataset"))
    assert plain["train"].features == FEATURES
    ids = [i for split in dataset_dict.values() for i in split["structure_id"]]
    assert sorted(ids, key=lambda s: int(s.split("-")[1])) == [f"3-{i}" for i in range(14)]
    for row in dataset_dict["train"]:
        crystal = crystal_from_row(row)
        kinds = {s: k for k, s in enumerate(sorted(set(crystal.species)))}
        cell = (crystal.lattice, crystal.frac_coords, [kinds[s] for s in crystal.species])
        assert spglib.get_symmetry_dataset(cell, symprec=1e-3).number == row["space_group"] + 1
        assert row["source"] == "pyxtal" and 0 <= row["requested_space_group"] < 230
        peaks = simulate_peaks(crystal, two_theta_range=(2.0, 100.0))
        np.testing.assert_allclose(row["peak_two_theta"], peaks.two_theta, atol=2e-4)
        np.testing.assert_allclose(row["peak_intensity"], peaks.intensity, atol=0.05)
    metadata = json.loads((out_dir / "dataset" / "physmoe_dataset.json").read_text())
    assert metadata["wavelength"] == 1.54056 and metadata["two_theta_range"] == [2.0, 100.0]
    assert metadata["generation"]["structures"] == 14 and metadata["generation"]["dropped"] == []
    assert 0.5 <= metadata["generation"]["requested_equals_detected"] <= 1.0
    # Calling again with the same arguments returns the finished dataset.
    again = generate_dataset(out_dir, num_proc=1, **TINY)
    assert _tables(again) == _tables(dataset_dict)


def test_two_processes_give_identical_content(reference_run, tmp_path):
    _, reference = reference_run
    parallel = generate_dataset(tmp_path / "run", num_proc=2, **TINY)
    assert _tables(parallel) == _tables(reference)


def test_resume_after_lost_and_truncated_shards(reference_run, tmp_path):
    import shutil

    out_dir, reference = reference_run
    copy = tmp_path / "run"
    shutil.copytree(out_dir, copy)
    shutil.rmtree(copy / "dataset")
    shards = sorted((copy / "shards").glob("shard-*.parquet"))
    assert len(shards) == 4
    shards[-1].unlink()  # never written
    shards[1].write_bytes(shards[1].read_bytes()[:300])  # truncated
    (copy / "shards" / ".shard-00002.parquet.tmp-1").write_bytes(b"partial")  # a killed write
    resumed = generate_dataset(copy, num_proc=1, **TINY)
    assert _tables(resumed) == _tables(reference)
    assert not list((copy / "shards").glob(".*"))


def test_resume_after_a_crash_inside_the_worker(reference_run, tmp_path, monkeypatch):
    _, reference = reference_run
    real = gen.generate_structure
    calls = []

    def crash_after_six(*args, **kwargs):
        calls.append(1)
        if len(calls) > 6:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "generate_structure", crash_after_six)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "run", num_proc=1, **TINY)
    written = sorted(p.name for p in (tmp_path / "run" / "shards").iterdir())
    assert written == ["shard-00000.parquet"]  # 6 structures: one full shard of 4
    assert pq.read_metadata(tmp_path / "run" / "shards" / written[0]).num_rows == 4
    monkeypatch.setattr(gen, "generate_structure", real)
    resumed = generate_dataset(tmp_path / "run", num_proc=1, **TINY)
    assert _tables(resumed) == _tables(reference)


def test_out_dir_protection(reference_run, tmp_path):
    out_dir, _ = reference_run
    with pytest.raises(ValueError, match="seed: 3 -> 4"):
        generate_dataset(out_dir, num_proc=1, **{**TINY, "seed": 4})
    with pytest.raises(ValueError, match="prior"):
        generate_dataset(out_dir, num_proc=1, prior="cod", **TINY)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        generate_dataset(foreign, num_proc=1, **TINY)
    dataset_dict = generate_dataset(
        foreign, num_proc=1, overwrite=True, **{**TINY, "num_structures": 3}
    )
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sum(len(s) for s in dataset_dict.values()) == 3
    assert (
        load_dataset_dict(foreign)["train"]["structure_id"] == dataset_dict["train"]["structure_id"]
    )
    # overwrite=True replaces a run with different parameters.
    replaced = generate_dataset(
        foreign, num_proc=1, overwrite=True, **{**TINY, "num_structures": 2, "seed": 9}
    )
    assert sorted(i for s in replaced.values() for i in s["structure_id"]) == ["9-0", "9-1"]
    assert len(list((foreign / "shards").iterdir())) == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_structures"):
        generate_dataset(tmp_path / "a", 0)
    with pytest.raises(ValueError, match="max_atoms"):
        generate_dataset(tmp_path / "b", 5, max_atoms=0)
    with pytest.raises(ValueError, match="unknown prior"):
        generate_dataset(tmp_path / "c", 5, prior="mp")
    with pytest.raises(ValueError, match="not a physmoe generation run"):
        gen.build_dataset_dict(tmp_path)
    assert not Path(tmp_path / "a").exists()


def test_fast_generator_runs_hold_the_generators_crystals(tmp_path):
    """(Process counts cannot matter: crystal i depends on (seed, i) alone, which
    test_random_crystals checks across processes.)"""
    from physmoe.data import RandomCrystalGenerator

    settings = {**TINY, "num_structures": 30, "generator": "fast"}
    one = generate_dataset(tmp_path / "one", num_proc=1, **settings)
    rows = {r["structure_id"]: r for split in one.values() for r in split}
    assert len(rows) == 30
    expected = RandomCrystalGenerator(prior="icsd", seed=3, max_atoms=24).generate(range(30))
    for crystal in expected:
        row = rows[f"3-{crystal.index}"]
        assert row["space_group"] == crystal.space_group - 1
        assert row["requested_space_group"] == crystal.requested_space_group - 1
        assert row["species"] == crystal.species and row["source"] == "random_crystals"
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["generator"] == "fast" and "pyxtal_version" not in manifest
    with pytest.raises(ValueError, match="generator must be one of"):
        generate_dataset(tmp_path / "bad", generator="pymatgen", **TINY)
