"""Space-group priors: how often each of the 230 groups occurs in real structure databases.

The counts come from ``physmoe/resources/space_group_frequencies.csv`` (columns ``space_group``,
``icsd_count``, ``cod_count``, ``ccdc_count``; one row per group 1..230). ICSD is mostly
inorganic, CCDC organic/metal-organic, COD a mixture, so the three priors differ strongly (the
most common group is Pnma in ICSD, P2_1/c in COD and P-1 in CCDC; Fm-3m is common in ICSD and
rare in CCDC).

A prior is a float64 vector ``[230]`` indexed by label (``space_group_number - 1``). Groups with
zero count get probability 0 unless ``smoothing > 0``; :func:`sample_space_groups` never draws a
zero-probability group.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Sequence
from importlib import resources

import numpy as np

from ..crystallography import NUM_SPACE_GROUPS

__all__ = [
    "PRIOR_SOURCES",
    "resolve_prior",
    "sample_space_groups",
    "space_group_counts",
    "space_group_prior",
]

#: Names accepted by :func:`space_group_prior`; all but ``"uniform"`` are columns of the table.
PRIOR_SOURCES: tuple[str, ...] = ("icsd", "cod", "ccdc", "uniform")
_DATABASE_SOURCES = ("icsd", "cod", "ccdc")
_FREQUENCY_FILE = "space_group_frequencies.csv"


@functools.lru_cache(maxsize=1)
def _frequency_table() -> dict[str, np.ndarray]:
    """Parse the shipped CSV into ``{source: int64 [230]}`` and check it is complete."""
    text = resources.files("physmoe.resources").joinpath(_FREQUENCY_FILE).read_text()
    reader = csv.DictReader(io.StringIO(text))
    columns = {source: f"{source}_count" for source in _DATABASE_SOURCES}
    missing = {"space_group", *columns.values()} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{_FREQUENCY_FILE}: missing columns {sorted(missing)}")
    counts = {source: np.full(NUM_SPACE_GROUPS, -1, dtype=np.int64) for source in _DATABASE_SOURCES}
    for row in reader:
        line = reader.line_num
        number = int(row["space_group"])
        if not 1 <= number <= NUM_SPACE_GROUPS:
            raise ValueError(f"{_FREQUENCY_FILE} line {line}: space group {number} not in 1..230")
        for source, column in columns.items():
            value = int(row[column])
            if value < 0 or counts[source][number - 1] != -1:
                raise ValueError(
                    f"{_FREQUENCY_FILE} line {line}: negative or repeated count for group {number}"
                )
            counts[source][number - 1] = value
    absent = np.flatnonzero(counts["icsd"] < 0) + 1
    if absent.size:
        raise ValueError(f"{_FREQUENCY_FILE}: no row for space groups {absent.tolist()}")
    for array in counts.values():
        array.setflags(write=False)
    return counts


def _check_source(source: str) -> str:
    if not isinstance(source, str) or source.lower() not in PRIOR_SOURCES:
        raise ValueError(f"unknown prior source {source!r}; choose one of {PRIOR_SOURCES}")
    return source.lower()


def space_group_counts(source: str = "icsd") -> np.ndarray:
    """Number of database entries per space group, int64 ``[230]`` indexed by label.

    Args:
        source: ``"icsd"``, ``"cod"`` or ``"ccdc"`` (case-insensitive).
    """
    source = _check_source(source)
    if source == "uniform":
        raise ValueError("'uniform' is not a database and has no counts; use space_group_prior")
    return _frequency_table()[source].copy()


def space_group_prior(source: str = "icsd", smoothing: float = 0.0) -> np.ndarray:
    """Probability of each space group, float64 ``[230]`` summing to 1, indexed by label.

    Args:
        source: ``"icsd"`` (default), ``"cod"``, ``"ccdc"`` or ``"uniform"``.
        smoothing: Pseudo-count added to every group before normalising (>= 0). With the default
            0, groups absent from the database have probability 0 and are never sampled.
    """
    source = _check_source(source)
    if not (isinstance(smoothing, (int, float)) and math.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
    if source == "uniform":
        weights = np.ones(NUM_SPACE_GROUPS, dtype=np.float64)
    else:
        weights = _frequency_table()[source].astype(np.float64) + float(smoothing)
    return weights / weights.sum()


def resolve_prior(prior: str | Sequence[float] | np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """A prior given by name (see :func:`space_group_prior`) or as 230 non-negative weights,
    returned normalised as float64 ``[230]``."""
    if isinstance(prior, str):
        return space_group_prior(prior, smoothing)
    weights = np.asarray(prior, dtype=np.float64)
    if weights.shape != (NUM_SPACE_GROUPS,):
        raise ValueError(f"a prior needs {NUM_SPACE_GROUPS} weights, got shape {weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("prior weights must be finite, non-negative and not all zero")
    if not (math.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
    weights = weights + float(smoothing)
    return weights / weights.sum()


def sample_space_groups(prior: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``size`` space-group numbers (1..230, int64 ``[size]``) from a prior.

    Inverse-CDF sampling with ``searchsorted(side="right")``: a group with probability 0 spans an
    empty CDF interval and is never returned.
    """
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (NUM_SPACE_GROUPS,) or np.any(prior < 0) or not prior.sum() > 0:
        raise ValueError(
            f"prior must be {NUM_SPACE_GROUPS} non-negative weights, got {prior.shape}"
        )
    cdf = np.cumsum(prior)
    cdf /= cdf[-1]
    labels = np.searchsorted(cdf, rng.random(size), side="right")
    return labels.astype(np.int64) + 1
