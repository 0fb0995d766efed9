"""A data collator that renders patterns from stored peaks on the fly (or stacks stored patterns).

Datasets keep one stick pattern per structure (``peak_two_theta``, ``peak_intensity``); the
collator turns a list of such rows into a model batch ``{"input_values": [B, L], "labels": [B]}``.
In training every call draws fresh measurement conditions for every pattern, so each epoch sees
new broadening, shifts, background and noise; in evaluation the clean conditions make batches
deterministic.

Example::

    >>> collator = PXRDCollator(TwoThetaGrid(), train=True, seed=0)
    >>> loader = DataLoader(dataset["train"], batch_size=32, collate_fn=collator, num_workers=2)
    >>> trainer = Trainer(model, args, train_dataset=..., data_collator=collator)
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..crystallography import NUM_SPACE_GROUPS
from .grid import CU_KA1, TwoThetaGrid
from .render import MeasurementConditions, render_patterns

logger = logging.getLogger(__name__)

__all__ = ["PXRDCollator"]

_LABEL_KEYS = ("labels", "label", "space_group")


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _as_float64(values, what: str) -> np.ndarray:
    """Peak values as float64, with an error naming ``what`` for anything but numbers."""
    array = _as_numpy(values)
    if array.dtype.kind not in "biuf":  # np.asarray keeps strings and objects as they are
        raise ValueError(f"{what} must be numbers, got {values!r:.80}")
    return array.astype(np.float64, copy=False)


@dataclass
class PXRDCollator:
    """Collate dataset rows into ``{"input_values": FloatTensor [B, L], "labels": LongTensor [B]}``.

    Rows are mappings with ``peak_two_theta`` and ``peak_intensity`` (rendered on ``grid``) or with
    ``input_values`` (a stored pattern of ``grid.num_points`` values, stacked as it is), and a
    0-based label under ``labels``, ``label`` or ``space_group``. Without labels in any row the
    batch has no ``labels`` key (inference). All three are 0-based (label = International number
    - 1): physmoe datasets store ``space_group`` as a 0-based ``ClassLabel``, so a column of
    1-based numbers 1..230 must be converted first (a value of 230 is refused with that advice;
    other 1-based values cannot be told from labels).

    Args:
        grid: The model's grid (default: 2θ 5-90 deg, 8500 points, Cu Kα1).
        conditions: Measurement conditions for training (default
            :meth:`MeasurementConditions.default`). Evaluation always uses
            :meth:`MeasurementConditions.clean`.
        train: Random conditions per pattern and call (True) or clean, deterministic rendering.
        peaks_wavelength: Wavelength (Angstrom) the stored peak positions were computed at
            (datasets record it; physmoe's are at Cu Kα1, 1.54056).
        seed: Seed of the training conditions. When every row carries a ``structure_id`` (physmoe
            datasets do), a batch's conditions are a pure function of ``seed``, the epoch (see
            :meth:`set_epoch`) and the batch's structure ids: whichever process, DataLoader worker
            or resumed run renders the batch gets the same pattern, and every epoch differs.
            Without ids the collator keeps its own generator, seeded from ``seed`` (in DataLoader
            workers mixed with the worker's per-epoch seed) and advanced by every call. With
            ``seed=None`` the generator is seeded from torch's global generator at first use.
        mode: ``"profile"`` (realistic) or ``"sticks"`` (the public reference's binning).
        num_labels: Labels must lie in ``[0, num_labels)`` (230 space groups).
    """

    grid: TwoThetaGrid = field(default_factory=TwoThetaGrid)
    conditions: MeasurementConditions | None = None
    train: bool = True
    peaks_wavelength: float = CU_KA1
    seed: int | None = None
    mode: str = "profile"
    num_labels: int = NUM_SPACE_GROUPS
    epoch: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.grid, TwoThetaGrid):
            raise TypeError(f"grid must be a TwoThetaGrid, got {type(self.grid).__name__}")
        if self.mode not in ("profile", "sticks"):
            raise ValueError(f"mode must be 'profile' or 'sticks', got {self.mode!r}")
        if self.conditions is not None and not isinstance(self.conditions, MeasurementConditions):
            raise TypeError(
                f"conditions must be MeasurementConditions, got {type(self.conditions).__name__}"
            )
        for name, value, minimum in (("num_labels", self.num_labels, 1), ("seed", self.seed, 0)):
            if value is None and name == "seed":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | np.integer)
                or value < minimum
            ):
                allowed = "None or an integer >= 0" if name == "seed" else "an integer >= 1"
                raise ValueError(f"{name} must be {allowed}, got {value!r}")
        wavelength = self.peaks_wavelength
        if isinstance(wavelength, bool) or not (
            isinstance(wavelength, (int, float, np.number))
            and math.isfinite(wavelength)
            and wavelength > 0
        ):
            raise ValueError(
                f"peaks_wavelength must be a positive number of Angstrom (the wavelength the "
                f"stored peak positions were computed at), got {wavelength!r}"
            )
        self._generator: torch.Generator | None = None
        self._generator_owner: tuple | None = None

    # The generator is per process: never pickle it into DataLoader workers.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_generator"], state["_generator_owner"] = None, None
        return state

    def _training_generator(self) -> torch.Generator:
        """This process's generator, (re)seeded when first used in a new worker or epoch."""
        info = torch.utils.data.get_worker_info()
        owner = None if info is None else (info.id, info.seed)
        if self._generator is None or owner != self._generator_owner:
            if self.seed is None:  # torch's global RNG (DataLoader seeds it per worker and epoch)
                seed = int(torch.randint(0, 2**62, (1,)))
            elif info is None:
                seed = int(self.seed)
            else:  # mix the user's seed with this worker's seed for this epoch
                mixed = np.random.SeedSequence([int(self.seed), info.seed % 2**63])
                seed = int(mixed.generate_state(1, np.uint64)[0] >> 2)
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_owner = owner
        return self._generator

    def set_epoch(self, epoch: int) -> None:
        """Set the training epoch that keys the conditions of batches with structure ids
        (:class:`~physmoe.training.PhysMoETrainer` calls it at the start of every epoch)."""
        self.epoch = int(epoch)

    def _keyed_generator(self, features: Sequence[Mapping]) -> torch.Generator | None:
        """A generator seeded from (seed, epoch, structure ids), or None if a row has no id."""
        if self.seed is None or not all("structure_id" in row for row in features):
            return None
        ids = [zlib.crc32(str(row["structure_id"]).encode()) for row in features]
        state = np.random.SeedSequence([int(self.seed), self.epoch, *ids]).generate_state(
            1, np.uint64
        )[0]
        return torch.Generator().manual_seed(int(state >> 2))

    def _labels(self, features: Sequence[Mapping]) -> torch.Tensor | None:
        keys = [
            next((k for k in _LABEL_KEYS if k in row and row[k] is not None), None)
            for row in features
        ]
        if all(k is None for k in keys):
            return None
        if any(k is None for k in keys):
            missing = keys.index(None)
            raise ValueError(
                f"feature {missing} has no label ({'/'.join(_LABEL_KEYS)}) but others do"
            )
        labels = np.empty(len(features), dtype=np.int64)
        for index, (row, key) in enumerate(zip(features, keys, strict=True)):
            value = np.asarray(_as_numpy(row[key]))
            integral = value.size == 1 and (
                np.issubdtype(value.dtype, np.integer)
                or (np.issubdtype(value.dtype, np.floating) and float(value).is_integer())
            )
            if not integral:
                raise ValueError(
                    f"feature {index} has label {row[key]!r}; "
                    "labels must be 0-based space-group labels (integers)"
                )
            labels[index] = int(value)
        bad = (labels < 0) | (labels >= self.num_labels)
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            if keys[index] == "space_group" and labels[index] == self.num_labels:
                raise ValueError(
                    f"feature {index} has label {labels[index]} under 'space_group', a column "
                    f"that must hold 0-based labels 0..{self.num_labels - 1} (label = "
                    "International number - 1, as physmoe datasets' ClassLabel does); this looks "
                    "like 1-based "
                    "space-group numbers: subtract 1 (or store them as 'labels')"
                )
            raise ValueError(
                f"feature {index} has label {labels[index]}; "
                "labels must be 0-based space-group labels in "
                f"[0, {self.num_labels})"
            )
        return torch.from_numpy(labels)

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("cannot collate an empty list of features")
        stored = [i for i, row in enumerate(features) if "input_values" in row]
        to_render = [i for i, row in enumerate(features) if "input_values" not in row]
        input_values = torch.empty(len(features), self.grid.num_points, dtype=torch.float32)
        if stored:
            patterns = [
                np.asarray(_as_numpy(features[i]["input_values"]), dtype=np.float32).reshape(-1)
                for i in stored
            ]
            for i, pattern in zip(stored, patterns, strict=True):
                if pattern.shape[0] != self.grid.num_points:
                    raise ValueError(
                        f"feature {i}: input_values has {pattern.shape[0]} points, "
                        f"the grid has {self.grid.num_points}"
                    )
                if not np.isfinite(pattern).all():
                    point = int(np.flatnonzero(~np.isfinite(pattern))[0])
                    raise ValueError(
                        f"feature {i}: input_values[{point}] is {pattern[point]} (NaN or inf)"
                    )
            input_values[stored] = torch.from_numpy(np.stack(patterns))
        if to_render:
            peaks = []
            for i in to_render:
                row = features[i]
                if "peak_two_theta" not in row or "peak_intensity" not in row:
                    raise ValueError(
                        f"feature {i} needs 'peak_two_theta' and 'peak_intensity' "
                        "(or 'input_values'); "
                        f"it has {sorted(row)}"
                    )
                two_theta, intensity = (
                    _as_float64(row[key], f"feature {i}: {key}")
                    for key in ("peak_two_theta", "peak_intensity")
                )
                if two_theta.size == 0:  # its clean pattern would be all zero: no training signal
                    raise ValueError(f"feature {i} has no peaks (peak_two_theta is empty)")
                peaks.append((two_theta, intensity))
            if self.train:
                conditions = self.conditions or MeasurementConditions.default()
                generator = self._keyed_generator(features) or self._training_generator()
            else:
                conditions = MeasurementConditions.clean()
                generator = torch.Generator().manual_seed(
                    0 if self.seed is None else int(self.seed)
                )
            input_values[to_render] = render_patterns(
                peaks,
                self.grid,
                conditions,
                mode=self.mode,
                generator=generator,
                peaks_wavelength=self.peaks_wavelength,
            )
        batch = {"input_values": input_values}
        labels = self._labels(features)
        if labels is not None:
            batch["labels"] = labels
        return batch
