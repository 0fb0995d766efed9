"""Training data that never runs out: random crystals generated inside DataLoader workers.

:class:`StreamingCrystalDataset` is a ``torch.utils.data.IterableDataset`` of dataset rows
(``structure_id``, ``labels``, ``peak_two_theta``, ``peak_intensity``) that
:class:`~physmoe.data.PXRDCollator`, used as the DataLoader's ``collate_fn``, renders with fresh
random measurement conditions in the same worker. Crystals come from
:class:`~physmoe.data.random_crystals.RandomCrystalGenerator`, whose crystal ``i`` is a pure
function of ``(seed, split, i)``.

The stream (see :class:`StreamLayout`):

* Crystal indices are cut into *blocks* of ``crystals_per_block`` consecutive indices. Block ``k``
  holds crystals ``k * M .. (k + 1) * M - 1`` (``M = crystals_per_block``); each is simulated once
  and rendered ``patterns_per_crystal`` (``P``) times, and the block's ``M * P`` rows are shuffled
  with a generator seeded by ``(seed, k)``. Every crystal appears exactly ``P`` times, so the label
  distribution is the generator's :attr:`~StreamingCrystalDataset.label_prior`. Repeats of a
  crystal land in different batches or in different places of one batch and get independent
  measurement conditions from the collator.
* With world size ``W`` (DDP ranks) and ``K`` DataLoader workers, the ``W * K`` (rank, worker)
  *slots* take blocks round-robin: slot ``s = rank * K + worker`` produces blocks
  ``start_block + s + j * W * K`` for ``j = 0, 1, ...``. Every rank sees different crystals and no
  crystal repeats beyond its ``P`` patterns. A DataLoader takes batch ``n`` of a rank from worker
  ``n % K`` (``in_order``), so the rows of a rank's first ``n`` batches are known exactly.
* Position: the number of batches every rank has consumed (``global_step *
  gradient_accumulation_steps`` under the Trainer). :meth:`~StreamingCrystalDataset.state_dict`
  records it with the layout; :meth:`~StreamingCrystalDataset.load_state_dict` continues right
  after it: each worker regenerates only its current, partly consumed block and skips the rows
  already used. A resumed run therefore trains on exactly the rows an uninterrupted run would
  have. If the layout changed (other world size, workers, batch size, ``P`` or ``M``), the stream
  restarts at the first block no slot had started (nothing repeats; the rest of partly used
  blocks is skipped).

:class:`~physmoe.training.PhysMoETrainer` does the bookkeeping: it builds the DataLoader itself
(each rank reads its own slots instead of accelerate's sharding or dispatching, which would
generate every crystal on every rank or on rank 0 only), writes ``physmoe_stream.json`` into
every checkpoint and restores it on ``resume_from_checkpoint`` (without the Trainer's
batch-skipping, which would replay the stream from index 0).

Validation and test crystals come from the generator's ``"validation"`` / ``"test"`` splits,
independent random streams; :func:`held_out_dataset` materialises them once as a normal
``datasets.Dataset`` (:data:`~physmoe.data.dataset.FEATURES`), and ``exclude_fingerprints``
makes the stream replace any crystal whose :func:`structure_fingerprint` appears there.

Example::

    >>> stream = StreamingCrystalDataset(prior="icsd", seed=0, patterns_per_crystal=8)
    >>> loader = DataLoader(stream.configure(batch_size=32, num_workers=1), batch_size=32,
    ...                     collate_fn=PXRDCollator(train=True, seed=0), num_workers=1)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..crystallography import NUM_SPACE_GROUPS
from .dataset import PEAK_TWO_THETA_RANGE, PEAK_WAVELENGTH
from .random_crystals import SPLITS, RandomCrystalGenerator
from .simulate import simulate_peaks_batch

logger = logging.getLogger(__name__)

__all__ = [
    "STREAM_STATE_FILE",
    "StreamLayout",
    "StreamingCrystalDataset",
    "held_out_dataset",
    "structure_fingerprint",
]

#: File in a Trainer checkpoint that holds the stream position.
STREAM_STATE_FILE = "physmoe_stream.json"
_STATE_FORMAT = "physmoe-stream"
_STATE_VERSION = 1
# Replacement crystals for excluded ones come from indices far above any real stream position.
_SPARE_OFFSET = 1 << 48
_MAX_REPLACEMENTS = 64


def structure_fingerprint(
    lattice_parameters: Sequence[float], species: Sequence[str], frac_coords
) -> str:
    """A hash of a cell description: lattice parameters rounded to 0.01 (Angstrom, degrees) and
    the sorted (element, coordinates rounded to 0.001, wrapped into [0, 1)) sites.

    Values are cast to float32 first, so a generated crystal (float64) and its stored dataset row
    (float32) get the same fingerprint. Two descriptions of one structure in different settings
    or origins get different fingerprints: this identifies a generated crystal, not a structure
    type.
    """
    parameters = np.round(np.asarray(lattice_parameters, dtype=np.float32).astype(np.float64), 2)
    coords = np.asarray(frac_coords, dtype=np.float32).astype(np.float64).reshape(-1, 3)
    coords = np.mod(np.round(np.mod(coords, 1.0), 3), 1.0)
    if len(species) != len(coords):
        raise ValueError(f"{len(species)} species for {len(coords)} sites")
    sites = sorted(
        (str(element), *(f"{value:.3f}" for value in site))
        for element, site in zip(species, coords, strict=True)
    )
    text = ",".join(f"{value:.2f}" for value in parameters) + ";" + ";".join(map(",".join, sites))
    return hashlib.sha1(text.encode()).hexdigest()


def _crystal_fingerprint(crystal) -> str:
    structure = crystal.to_crystal()
    return structure_fingerprint(
        structure.lattice_parameters, structure.species, structure.frac_coords
    )


@dataclass(frozen=True)
class StreamLayout:
    """How the stream is cut: ranks, workers per rank, batch size and block shape."""

    world_size: int
    num_workers: int
    batch_size: int
    patterns_per_crystal: int
    crystals_per_block: int

    @property
    def num_slots(self) -> int:
        return self.world_size * max(1, self.num_workers)

    @property
    def rows_per_block(self) -> int:
        return self.patterns_per_crystal * self.crystals_per_block

    def worker_batches(self, batches_per_rank: int, worker: int) -> int:
        """Batches worker ``worker`` of a rank delivered among that rank's first ones."""
        workers = max(1, self.num_workers)
        return max(0, (batches_per_rank - worker + workers - 1) // workers)

    def next_unstarted_block(self, start_block: int, batches_per_rank: int) -> int:
        """The first block index no slot has started after ``batches_per_rank`` batches."""
        workers = max(1, self.num_workers)
        last = start_block - 1
        for slot in range(self.num_slots):
            rows = self.batch_size * self.worker_batches(batches_per_rank, slot % workers)
            started = -(-rows // self.rows_per_block)
            if started:
                last = max(last, start_block + slot + (started - 1) * self.num_slots)
        return last + 1


class _GeneratorFactory:
    """Builds the ``RandomCrystalGenerator`` (in each worker; picklable)."""

    def __init__(self, prior, seed: int, max_atoms: int, split: str, prior_floor: float = 0.0):
        self.prior, self.seed, self.max_atoms, self.split = prior, seed, max_atoms, split
        self.prior_floor = prior_floor

    def __call__(self):
        return RandomCrystalGenerator(
            prior=self.prior,
            seed=self.seed,
            max_atoms=self.max_atoms,
            split=self.split,
            prior_floor=self.prior_floor,
        )


class StreamingCrystalDataset(IterableDataset):
    """An endless stream of freshly generated crystals' stick patterns (see the module doc).

    Every row: ``structure_id`` (the crystal's, e.g. ``"train-0-1234"``), ``labels`` (0-based
    space-group label = the spglib-detected number - 1), ``peak_two_theta`` / ``peak_intensity``
    (float32, Cu K-alpha1, 2θ 2-100 deg like stored datasets), ``pattern_index`` (which of the
    crystal's ``patterns_per_crystal`` renderings). Use :class:`~physmoe.data.PXRDCollator` as
    ``collate_fn``: it renders each batch in the worker with fresh random conditions.

    Args:
        prior: Space-group prior of the generator: ``"icsd"``, ``"cod"``, ``"ccdc"``,
            ``"uniform"`` or 230 weights.
        seed: Generator seed (the crystals are a pure function of seed, split and index).
        max_atoms: Largest conventional cell the generator builds.
        split: Generator split to stream (``"train"``; validation and test crystals come from
            the other splits, see :func:`held_out_dataset`).
        patterns_per_crystal: Renderings of every generated crystal (each with its own random
            measurement conditions). Generating and simulating a crystal costs several times
            more than rendering a pattern (``scripts/benchmark_streaming.py``), so 1 cannot keep
            up with a CPU training step; 8-32 amortise it (default 8).
        crystals_per_block: Crystals generated and shuffled together (the shuffle buffer holds
            ``crystals_per_block * patterns_per_crystal`` rows).
        exclude_fingerprints: :func:`structure_fingerprint` values that must never be streamed
            (held-out crystals); a matching crystal is replaced by one from a spare index range.
        wavelength, two_theta_range: Peak simulation settings.
        worker_timeout: Seconds the DataLoader (built by the Trainer) waits for a worker's batch
            before raising, so a hung generator fails instead of stalling training (0 = forever).
        generator_factory: Zero-argument picklable callable returning the crystal generator
            (anything with ``generate(indices)`` and ``label_prior``); default
            ``RandomCrystalGenerator(prior, seed, max_atoms, split, prior_floor=prior_floor)``.
        prior_floor: Share of the uniform prior mixed into ``prior`` (every group then has
            probability >= ``prior_floor / 230``; see the generator).
    """

    def __init__(
        self,
        prior: str | Sequence[float] | np.ndarray = "icsd",
        *,
        seed: int = 0,
        max_atoms: int = 64,
        split: str = "train",
        patterns_per_crystal: int = 8,
        crystals_per_block: int = 32,
        exclude_fingerprints: Iterable[str] | None = None,
        wavelength: float = PEAK_WAVELENGTH,
        two_theta_range: tuple[float, float] = PEAK_TWO_THETA_RANGE,
        worker_timeout: float = 600.0,
        generator_factory: Callable[[], object] | None = None,
        prior_floor: float = 0.0,
    ):
        if generator_factory is None:
            generator_factory = _GeneratorFactory(prior, seed, max_atoms, split, prior_floor)
            generator_factory()  # the generator checks prior, seed, max_atoms, split and floor
        for name, value in (
            ("patterns_per_crystal", patterns_per_crystal),
            ("crystals_per_block", crystals_per_block),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if worker_timeout < 0:
            raise ValueError(f"worker_timeout must be >= 0, got {worker_timeout}")
        self.prior, self.seed, self.max_atoms, self.split = prior, int(seed), int(max_atoms), split
        self.patterns_per_crystal = int(patterns_per_crystal)
        self.crystals_per_block = int(crystals_per_block)
        self.exclude_fingerprints = frozenset(exclude_fingerprints or ())
        self.wavelength = float(wavelength)
        self.two_theta_range = (float(two_theta_range[0]), float(two_theta_range[1]))
        self.worker_timeout = float(worker_timeout)
        self.generator_factory = generator_factory
        self.rank: int | None = None
        self.world_size: int | None = None
        self.batch_size: int | None = None
        self.num_workers: int | None = None
        self._start_block = 0
        self._batches_consumed = 0
        self._label_prior: np.ndarray | None = None

    # -- configuration and position -------------------------------------------------------------

    def configure(
        self,
        *,
        batch_size: int | None = None,
        num_workers: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> StreamingCrystalDataset:
        """Set the layout the stream is read with (the Trainer does this); returns ``self``.

        ``rank`` / ``world_size`` default to ``torch.distributed`` (or the ``RANK`` /
        ``WORLD_SIZE`` variables torchrun sets) when the workers start; ``batch_size`` and
        ``num_workers`` must match the DataLoader's for :meth:`state_dict` to be exact."""
        for name, value, minimum in (
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("world_size", world_size, 1),
            ("rank", rank, 0),
        ):
            if value is not None and (int(value) != value or value < minimum):
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        self.batch_size = self.batch_size if batch_size is None else int(batch_size)
        self.num_workers = self.num_workers if num_workers is None else int(num_workers)
        self.rank = self.rank if rank is None else int(rank)
        self.world_size = self.world_size if world_size is None else int(world_size)
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is not below world_size {self.world_size}")
        return self

    def _distributed(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        return (rank if self.rank is None else self.rank), (
            world if self.world_size is None else self.world_size
        )

    def layout(self, num_workers: int | None = None) -> StreamLayout:
        """The current :class:`StreamLayout` (needs ``batch_size`` from :meth:`configure`)."""
        workers = self.num_workers if num_workers is None else num_workers
        if self.batch_size is None or workers is None:
            raise ValueError(
                "the stream position needs the DataLoader's batch_size and num_workers: call "
                "configure(batch_size=..., num_workers=...) first"
            )
        return StreamLayout(
            self._distributed()[1],
            workers,
            self.batch_size,
            self.patterns_per_crystal,
            self.crystals_per_block,
        )

    def _identity(self) -> dict:
        prior = self.prior if isinstance(self.prior, str) else [float(x) for x in self.prior]
        return {"seed": self.seed, "split": self.split, "max_atoms": self.max_atoms, "prior": prior}

    def state_dict(self, batches_per_rank: int | None = None) -> dict:
        """The stream position after every rank consumed ``batches_per_rank`` batches since this
        dataset's start (default: the start itself), with the layout and the generator settings.
        JSON-serialisable."""
        batches = self._batches_consumed if batches_per_rank is None else int(batches_per_rank)
        if batches < 0:
            raise ValueError(f"batches_per_rank must be >= 0, got {batches}")
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            **self._identity(),
            "layout": dataclasses.asdict(self.layout()),
            "start_block": self._start_block,
            "batches_per_rank": batches,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream right after the position ``state`` (from :meth:`state_dict`).

        With the same layout the workers skip exactly the rows already consumed; with another
        layout the stream restarts at the first block no slot had started. A state of another
        generator (seed, split, prior, max_atoms) is refused."""
        if state.get("format") != _STATE_FORMAT or state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"not a physmoe stream state: format {state.get('format')!r} "
                f"version {state.get('version')!r}"
            )
        saved = {key: state.get(key) for key in self._identity()}
        if saved != self._identity():
            raise ValueError(
                f"the stream state is for generator settings {saved}, this dataset has "
                f"{self._identity()}"
            )
        old = StreamLayout(**state["layout"])
        start, batches = int(state["start_block"]), int(state["batches_per_rank"])
        if self.batch_size is not None and self.num_workers is not None and old == self.layout():
            self._start_block, self._batches_consumed = start, batches
            return
        self._start_block = old.next_unstarted_block(start, batches)
        self._batches_consumed = 0
        logger.warning(
            "the stream layout changed (%s -> world_size=%s, num_workers=%s, batch_size=%s): "
            "continuing at block %d, the first one no worker had started",
            old,
            self._distributed()[1],
            self.num_workers,
            self.batch_size,
            self._start_block,
        )

    # -- labels ---------------------------------------------------------------------------------

    @property
    def label_prior(self) -> np.ndarray:
        """Expected distribution of the streamed labels, float64 ``[230]`` (the generator's)."""
        if self._label_prior is None:
            prior = np.asarray(self.generator_factory().label_prior, dtype=np.float64)
            if prior.shape != (NUM_SPACE_GROUPS,) or not np.isclose(prior.sum(), 1.0):
                raise ValueError("the generator's label_prior must be 230 weights summing to 1")
            self._label_prior = prior
        return self._label_prior

    def expected_class_counts(self, num_patterns: float) -> np.ndarray:
        """Expected distinct crystals per class among ``num_patterns`` streamed rows:
        ``label_prior * num_patterns / patterns_per_crystal``, float64 ``[230]`` (the training
        counts that logit-adjusted losses and shot buckets use, in structures like a stored
        dataset's)."""
        if num_patterns <= 0:
            raise ValueError(f"num_patterns must be > 0, got {num_patterns}")
        return self.label_prior * (float(num_patterns) / self.patterns_per_crystal)

    # -- iteration ------------------------------------------------------------------------------

    def _block_crystals(self, generator, block: int) -> list:
        size = self.crystals_per_block
        indices = list(range(block * size, (block + 1) * size))
        crystals = list(generator.generate(indices))
        if len(crystals) != len(indices):
            raise RuntimeError(
                f"the crystal generator returned {len(crystals)} crystals for "
                f"{len(indices)} indices"
            )
        if not self.exclude_fingerprints:
            return crystals
        for position, crystal in enumerate(crystals):
            attempt = 0
            while _crystal_fingerprint(crystal) in self.exclude_fingerprints:
                if attempt == _MAX_REPLACEMENTS:
                    raise RuntimeError(
                        f"{_MAX_REPLACEMENTS} replacements of crystal {indices[position]} are all "
                        "excluded: is exclude_fingerprints built from this stream?"
                    )
                spare = _SPARE_OFFSET + (indices[position] * _MAX_REPLACEMENTS + attempt)
                (crystal,) = generator.generate([spare])
                attempt += 1
            crystals[position] = crystal
        return crystals

    def _block_rows(self, generator, block: int) -> list[dict]:
        crystals = self._block_crystals(generator, block)
        peaks = simulate_peaks_batch(
            crystals, wavelength=self.wavelength, two_theta_range=self.two_theta_range
        )
        base = [
            (
                str(crystal.structure_id),
                int(crystal.space_group) - 1,
                np.asarray(peak.two_theta, dtype=np.float32),
                np.asarray(peak.intensity, dtype=np.float32),
            )
            for crystal, peak in zip(crystals, peaks, strict=True)
        ]
        rng = np.random.default_rng([self.seed, SPLITS[self.split], block])
        order = rng.permutation(len(base) * self.patterns_per_crystal)
        rows = []
        for item in order.tolist():
            structure_id, label, two_theta, intensity = base[item % len(base)]
            rows.append(
                {
                    "structure_id": structure_id,
                    "labels": label,
                    "peak_two_theta": two_theta,
                    "peak_intensity": intensity,
                    "pattern_index": item // len(base),
                }
            )
        return rows

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        if self.num_workers is not None and max(1, self.num_workers) != workers:
            raise ValueError(
                f"the stream was configured for num_workers={self.num_workers} but is read by "
                f"{workers} worker(s): configure(num_workers=...) with the DataLoader's value"
            )
        rank, world = self._distributed()
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        # A DataLoader takes a rank's batches from workers 0, 1, ... from its start; after n
        # consumed batches worker w plays the part of the slot that delivers batch n + w.
        role = (worker + self._batches_consumed) % workers
        slots, slot = world * workers, rank * workers + role
        skip_rows = 0
        if self._batches_consumed:
            layout = self.layout(num_workers=0 if info is None else workers)
            skip_rows = layout.batch_size * layout.worker_batches(self._batches_consumed, role)
        rows_per_block = self.crystals_per_block * self.patterns_per_crystal
        step, skip_rows = divmod(skip_rows, rows_per_block)
        generator = self.generator_factory()
        while True:
            rows = self._block_rows(generator, self._start_block + slot + step * slots)
            yield from rows[skip_rows:]
            skip_rows = 0
            step += 1


def held_out_dataset(
    split: str,
    num_structures: int,
    *,
    prior: str | Sequence[float] | np.ndarray = "icsd",
    seed: int = 0,
    max_atoms: int = 64,
    generator_factory: Callable[[], object] | None = None,
    prior_floor: float = 0.0,
):
    """The first ``num_structures`` crystals of the generator's ``split`` ("validation" or
    "test") as a ``datasets.Dataset`` with :data:`~physmoe.data.dataset.FEATURES` (source
    ``"random_crystals"``), for evaluation next to a :class:`StreamingCrystalDataset`."""
    from datasets import Dataset

    from .dataset import FEATURES, structure_row

    if split not in ("validation", "test"):
        raise ValueError(f"held-out split must be 'validation' or 'test', got {split!r}")
    if (
        isinstance(num_structures, bool)
        or int(num_structures) != num_structures
        or num_structures < 1
    ):
        raise ValueError(f"num_structures must be a positive integer, got {num_structures!r}")
    factory = generator_factory or _GeneratorFactory(prior, seed, max_atoms, split, prior_floor)
    crystals = factory().generate(list(range(int(num_structures))))
    rows = []
    for crystal in crystals:
        requested = getattr(crystal, "requested_space_group", None)
        rows.append(
            structure_row(
                str(crystal.structure_id),
                crystal,
                int(crystal.space_group),
                requested_space_group=None if not requested else int(requested),
                source="random_crystals",
            )
        )
    return Dataset.from_list(rows, features=FEATURES)
