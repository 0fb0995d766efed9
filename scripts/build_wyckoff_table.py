"""Build ``physmoe/resources/wyckoff_table.npz``: Wyckoff orbits of the 230 space groups and the
Materials Project Wyckoff-occupation statistics, so that random crystals need no pyxtal at run time.

    python scripts/build_wyckoff_table.py [--output src/physmoe/resources/wyckoff_table.npz]

Needs pyxtal (the ``sim`` extra): neither gemmi nor spglib exposes Wyckoff orbits. The table holds
pyxtal's settings (for the 24 groups with two origins, origin choice 2) and its Wyckoff order
(index 0 = general position). Every affine entry of the orbit operators is a multiple of 1/24, so
they are stored exactly as int8 numerators. ``tests/data/test_wyckoff.py`` checks that the shipped
file equals a fresh build where pyxtal is installed.
"""

from __future__ import annotations

import argparse
import csv
from importlib import resources
from pathlib import Path

import numpy as np

DENOMINATOR = 24
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "src/physmoe/resources/wyckoff_table.npz"


def build_table() -> dict[str, np.ndarray]:
    """All arrays of the table (see :mod:`physmoe.data.wyckoff` for their meaning)."""
    from pyxtal.symmetry import Group

    letters, multiplicities, dofs, ops, group_offsets, op_offsets = [], [], [], [], [0], [0]
    for number in range(1, 231):
        for position in Group(number).Wyckoff_positions:
            affine = np.array([op.affine_matrix[:3] for op in position.ops])  # [m, 3, 4]
            numerators = np.rint(affine * DENOMINATOR)
            if np.abs(numerators - affine * DENOMINATOR).max() > 1e-9:
                raise ValueError(f"group {number} {position.letter}: entries not multiples of 1/24")
            if len(affine) != position.multiplicity:
                raise ValueError(f"group {number} {position.letter}: {len(affine)} operators")
            letters.append(position.letter)
            multiplicities.append(position.multiplicity)
            dofs.append(position.get_dof())
            ops.append(numerators.astype(np.int8))
            op_offsets.append(op_offsets[-1] + len(affine))
        group_offsets.append(len(letters))

    source = resources.files("pyxtal").joinpath("database", "spg_num_wps_mp.csv")
    mp_group, mp_atoms, mp_count, mp_positions, mp_offsets = [], [], [], [], [0]
    with resources.as_file(source) as path, open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            indices = [int(w) for w in row["wps"].split("-")]
            mp_group.append(int(row["spg"]))
            mp_atoms.append(int(row["n_atoms"]))
            mp_count.append(int(row["count"]))
            mp_positions.extend(indices)
            mp_offsets.append(len(mp_positions))
    return {
        "group_offsets": np.array(group_offsets, dtype=np.int32),
        "letters": np.array(letters, dtype="<U1"),
        "multiplicities": np.array(multiplicities, dtype=np.int16),
        "degrees_of_freedom": np.array(dofs, dtype=np.int8),
        "op_offsets": np.array(op_offsets, dtype=np.int32),
        "ops_numerators": np.concatenate(ops),
        "mp_space_group": np.array(mp_group, dtype=np.int16),
        "mp_num_atoms": np.array(mp_atoms, dtype=np.int16),
        "mp_count": np.array(mp_count, dtype=np.int32),
        "mp_offsets": np.array(mp_offsets, dtype=np.int32),
        "mp_wyckoff_indices": np.array(mp_positions, dtype=np.int16),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    table = build_table()
    tmp = args.output.with_name(args.output.name + ".tmp.npz")
    np.savez_compressed(tmp, **table)
    tmp.replace(args.output)
    print(
        f"wrote {args.output}: {len(table['letters'])} Wyckoff positions, "
        f"{len(table['ops_numerators'])} orbit operators, {len(table['mp_count'])} MP combinations"
    )


if __name__ == "__main__":
    main()
