"""scripts/build_default_structures.py --generator fast: every group covered, labels spglib's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import spglib

from physmoe.data.embedded import read_structure_archive
from scripts_under_test import load_script

REPO = Path(__file__).resolve().parents[1]


def _script():
    return load_script("build_default_structures")


def test_fast_build_covers_every_group_with_labels_spglib_agrees_with(
    tmp_path, monkeypatch, capsys
):
    output = tmp_path / "structures.npz"
    argv = ["build", "--generator", "fast", "--num-structures", "300", "--min-per-group", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--output", str(output)])
    _script().main()
    assert "wrote" in capsys.readouterr().out
    archive = read_structure_archive(output)
    assert len(archive) == 300
    # Every group, including the F-centred cubic ones that need more than 64 atoms.
    assert set(archive.space_groups.tolist()) == set(range(1, 231))
    assert len(set(archive.structure_ids.tolist())) == 300
    # The stored (float32) structures keep the labels, checked with spglib (the generator
    # labels with moyo): every 5th structure.
    for index in range(0, len(archive), 5):
        crystal = archive.crystal(index)
        numbers = [sorted(set(crystal.species)).index(s) for s in crystal.species]
        dataset = spglib.get_symmetry_dataset(
            (crystal.lattice, crystal.frac_coords, numbers), symprec=1e-3
        )
        assert dataset.number == archive.space_groups[index], archive.structure_ids[index]
    assert np.all(archive.requested_space_groups > 0)
