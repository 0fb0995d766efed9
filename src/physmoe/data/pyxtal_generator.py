"""Random crystals from pyxtal, relabelled by spglib: one structure of a generated dataset.

Structure ``i`` of a run with global seed ``s``:

1. Its requested space group is drawn from the prior (ICSD by default, see :mod:`.priors`) with
   ``numpy.random.default_rng(SeedSequence([s, i]))``.
2. Attempt ``k`` (0-based, at most ``max_attempts``) uses ``default_rng(SeedSequence([s, i, k +
   1]))`` for everything random: a Wyckoff combination sampled from the Materials Project
   statistics that pyxtal ships (shipped in :mod:`.wyckoff`'s table: space group, atoms per
   conventional cell, Wyckoff indices, number of MP structures; weighted by that number, limited
   to ``max_atoms`` atoms per conventional cell), elements for the Wyckoff orbits (palette
   below), then ``pyxtal.from_random(..., sites=..., random_state=rng)``. Groups without usable
   MP entries (1, 168, 184, 207, 222, and those whose MP cells exceed ``max_atoms``) get 1-4
   random Wyckoff orbits instead. An attempt that raises, is invalid or exceeds ``time_limit``
   seconds is retried with the next derived seed; after ``max_attempts`` failures the structure
   is dropped (counted in the run's statistics).
3. spglib (``symprec`` 1e-3 A) detects the group; the structure is stored in spglib's
   standardised conventional cell of the detected group, which labels it. The requested group is
   kept in ``requested_space_group``: sampling real Wyckoff combinations makes the two agree for
   most structures, the rest land in a supergroup (e.g. 97 -> 139).

Every random draw depends only on ``(s, i, k)``, so a run gives identical structures for any
number of processes and across kill/resume. (pyxtal 1.1 draws everything on this path from the
``random_state`` Generator; a test checks that numpy's and Python's global RNGs stay untouched.)
(The wall-clock ``time_limit`` is the one exception: an attempt that times out on a slow machine
may finish on a fast one. The limit is generous and timeouts are counted; with
``max_atoms=64`` we saw none.)

Compositions and Wyckoff statistics: :mod:`.wyckoff` (shared with the fast generator in
:mod:`.random_crystals`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..crystallography import NUM_SPACE_GROUPS
from .dataset import (
    PEAK_TWO_THETA_RANGE,
    PEAK_WAVELENGTH,
)
from .priors import sample_space_groups
from .structures import Crystal
from .symmetry import DEFAULT_SYMPREC, standardize_crystal
from .wyckoff import sample_composition

logger = logging.getLogger(__name__)

__all__ = [
    "GENERATORS",
    "GeneratedStructure",
    "GenerationSettings",
    "PlacementBudgetExceeded",
    "generate_structure",
    "random_crystal",
]

#: Structure generators :func:`~physmoe.data.generate.generate_dataset` can use.
GENERATORS = ("pyxtal", "fast")


@dataclass(frozen=True)
class GenerationSettings:
    """How one structure is generated.

    Attributes:
        max_atoms: Most atoms per conventional cell of the requested group (the stored
            standardised cell of a detected supergroup can differ; it is larger in rare cases).
        symprec: spglib tolerance in Angstrom for relabelling.
        max_attempts: Attempts per structure before it is dropped.
        time_limit: Seconds per attempt (enforced with SIGALRM in the main thread of a process;
            not enforced where that is unavailable, e.g. Windows or a non-main thread).
        placement_budget: Site trials pyxtal may make per attempt (see :func:`random_crystal`).
        wavelength: Wavelength in Angstrom of the stored peaks.
        two_theta_range: 2θ window in degrees of the stored peaks.
        generator: ``"pyxtal"`` (the procedure in the module docs) or ``"fast"``
            (:class:`~physmoe.data.RandomCrystalGenerator`, much faster, see
            ``scripts/benchmark_data.py``; no pyxtal needed; structure ``i`` is that generator's
            crystal ``i`` for the run's seed and prior, stored
            in its own cell; ``max_attempts``, ``time_limit`` and ``placement_budget`` do not
            apply).
    """

    max_atoms: int = 64
    symprec: float = DEFAULT_SYMPREC
    max_attempts: int = 10
    time_limit: float = 10.0
    placement_budget: int = 600
    wavelength: float = PEAK_WAVELENGTH
    two_theta_range: tuple[float, float] = PEAK_TWO_THETA_RANGE
    generator: str = "pyxtal"

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}, got {self.generator!r}")
        if int(self.max_atoms) != self.max_atoms or self.max_atoms < 1:
            raise ValueError(f"max_atoms must be a positive integer, got {self.max_atoms}")
        if int(self.max_attempts) != self.max_attempts or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive integer, got {self.max_attempts}")
        if not (math.isfinite(self.symprec) and self.symprec > 0):
            raise ValueError(f"symprec must be a positive number of Angstrom, got {self.symprec}")
        if not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {self.time_limit}")
        if int(self.placement_budget) != self.placement_budget or self.placement_budget < 1:
            raise ValueError(
                f"placement_budget must be a positive integer, got {self.placement_budget}"
            )


@dataclass
class GeneratedStructure:
    """Outcome of :func:`generate_structure`.

    Attributes:
        index: Index of the structure within its run.
        requested_space_group: Group pyxtal was asked for (1..230).
        space_group: Group spglib detects (1..230), or None when every attempt failed.
        crystal: Standardised conventional cell of ``space_group``, or None when every attempt
            failed.
        attempts: Attempts made (>= 1).
        timeouts: Attempts stopped by the time limit.
        errors: Short description of each failed attempt.
    """

    index: int
    requested_space_group: int
    space_group: int | None = None
    crystal: Crystal | None = None
    attempts: int = 0
    timeouts: int = 0
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- composition


@functools.lru_cache(maxsize=NUM_SPACE_GROUPS)
def _pyxtal_group(space_group: int):
    """pyxtal's ``Group`` (read-only use; building one takes ~10 ms)."""
    from pyxtal.symmetry import Group

    return Group(space_group)


@functools.lru_cache(maxsize=1)
def _tolerance_matrix():
    """pyxtal's default atomic distance tolerances, as ``from_random`` uses them."""
    from pyxtal.tolerance import Tol_matrix

    return Tol_matrix(prototype="atomic", factor=1.0)


class PlacementBudgetExceeded(RuntimeError):
    """pyxtal tried more site placements than the budget allows (see :func:`random_crystal`)."""


@functools.lru_cache(maxsize=1)
def _budgeted_random_crystal():
    """pyxtal's random_crystal with a deterministic cap on placement trials."""
    from pyxtal.crystal import random_crystal as pyxtal_random_crystal

    class BudgetedRandomCrystal(pyxtal_random_crystal):
        def __init__(self, *args, placement_budget: int, **kwargs):
            self.placement_budget = placement_budget
            super().__init__(*args, **kwargs)

        def check_wp(self, *args, **kwargs):
            self.placement_budget -= 1
            if self.placement_budget < 0:
                raise PlacementBudgetExceeded("placement budget exhausted")
            return super().check_wp(*args, **kwargs)

    return BudgetedRandomCrystal


def random_crystal(
    space_group: int, rng: np.random.Generator, max_atoms: int = 64, placement_budget: int = 600
) -> Crystal:
    """One pyxtal structure of ``space_group`` (its conventional cell, pyxtal's setting).

    The composition comes from :func:`sample_composition`. pyxtal's own search (up to 40 cells x
    10 coordinate sets, each with several trials per Wyckoff site) can run for many seconds on
    crowded cells; it is cut after ``placement_budget`` site trials instead (a count, so the
    outcome does not depend on machine speed). Time is ~3 ms per trial; 99% of structures that
    pyxtal builds at all need fewer than ~460 trials.

    Raises:
        RuntimeError: pyxtal produced no valid structure (including
            :class:`PlacementBudgetExceeded`).
    """
    from pyxtal.msg import Error as PyxtalError

    species, num_ions, sites = sample_composition(space_group, rng, max_atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure = _budgeted_random_crystal()(
                3,
                _pyxtal_group(space_group),
                species,
                num_ions,
                sites=sites,
                tm=_tolerance_matrix(),
                random_state=rng,
                placement_budget=placement_budget,
            )
        except PyxtalError as error:
            raise RuntimeError(f"pyxtal: {error}") from error
    if not structure.valid:
        raise RuntimeError(
            f"pyxtal found no valid structure for group {space_group} ({species}, {num_ions})"
        )
    return Crystal(
        lattice=structure.lattice.matrix,
        species=[site.specie for site in structure.atom_sites for _ in range(len(site.coords))],
        frac_coords=np.concatenate([site.coords for site in structure.atom_sites]),
        space_group=space_group,
    )


class _AttemptTimeout(BaseException):
    """Raised by the attempt timer; a BaseException so that pyxtal's ``except Exception``
    blocks do not swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_AttemptTimeout` after ``seconds`` and every 0.5 s after that until it
    propagates (no-op where SIGALRM is unavailable: Windows, or not the main thread)."""
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def on_alarm(signum, frame):
        raise _AttemptTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def generate_structure(
    seed: int,
    index: int,
    prior: np.ndarray,
    settings: GenerationSettings | None = None,
    space_group: int | None = None,
) -> GeneratedStructure:
    """Structure ``index`` of the run with global ``seed`` (deterministic, see module docs).

    Args:
        seed: Global seed of the run.
        index: Index of the structure in the run.
        prior: Space-group prior, float64 ``[230]`` (see :mod:`.priors`).
        settings: Generation settings (default :class:`GenerationSettings`).
        space_group: Request this group instead of drawing one from the prior.
    """
    settings = settings or GenerationSettings()
    if space_group is None:
        group_rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        space_group = int(sample_space_groups(prior, 1, group_rng)[0])
    result = GeneratedStructure(index=index, requested_space_group=int(space_group))
    for attempt in range(settings.max_attempts):
        seed_sequence = np.random.SeedSequence([seed, index, attempt + 1])
        result.attempts += 1
        try:
            with _time_limit(settings.time_limit):
                crystal = random_crystal(
                    space_group,
                    np.random.default_rng(seed_sequence),
                    settings.max_atoms,
                    settings.placement_budget,
                )
                result.space_group, result.crystal = standardize_crystal(crystal, settings.symprec)
            return result
        except _AttemptTimeout:
            result.timeouts += 1
            result.errors.append(f"attempt {attempt}: over {settings.time_limit} s")
        except (RuntimeError, ValueError, ArithmeticError, LookupError) as error:
            # pyxtal signals a failed search, an impossible composition or a degenerate cell.
            result.errors.append(f"attempt {attempt}: {type(error).__name__}: {error}")
    logger.debug("structure %d (group %d) failed: %s", index, space_group, result.errors)
    return result
