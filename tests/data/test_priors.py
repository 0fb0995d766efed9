"""Space-group priors against the frequency CSV read independently with the csv module."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from physmoe.data.priors import (
    resolve_prior,
    sample_space_groups,
    space_group_counts,
    space_group_prior,
)

RESOURCES = Path(__file__).resolve().parents[2] / "src" / "physmoe" / "resources"
CSV = RESOURCES / "space_group_frequencies.csv"


def _csv_counts(source: str) -> dict[int, int]:
    with open(CSV, newline="") as handle:
        return {
            int(row["space_group"]): int(row[f"{source}_count"]) for row in csv.DictReader(handle)
        }


@pytest.mark.parametrize("source", ["icsd", "cod", "ccdc"])
def test_counts_match_csv(source):
    expected = _csv_counts(source)
    counts = space_group_counts(source)
    assert counts.dtype == np.int64 and counts.shape == (230,)
    for number in range(1, 231):
        assert counts[number - 1] == expected[number], number
    assert space_group_counts(source.upper()).tolist() == counts.tolist()


@pytest.mark.parametrize("source", ["icsd", "cod", "ccdc"])
def test_prior_is_normalised_counts(source):
    expected = _csv_counts(source)
    total = sum(expected.values())
    prior = space_group_prior(source)
    assert prior.dtype == np.float64
    assert prior.sum() == pytest.approx(1.0, abs=1e-12)
    for number, count in expected.items():
        assert prior[number - 1] == pytest.approx(count / total, rel=1e-12, abs=0)
        assert (prior[number - 1] == 0) == (count == 0)


def test_known_values():
    # Most common groups: Pnma (62) in ICSD, P2_1/c (14) in COD, P-1 (2) in CCDC (the table's
    # rows 62, 14, 2); Fd-3c (228) is absent from all three.
    assert int(np.argmax(space_group_prior("icsd"))) + 1 == 62
    assert int(np.argmax(space_group_prior("cod"))) + 1 == 14
    assert int(np.argmax(space_group_prior("ccdc"))) + 1 == 2
    assert space_group_counts("icsd")[13] == 10196
    for source in ("icsd", "cod", "ccdc"):
        assert space_group_prior(source)[227] == 0


def test_smoothing_and_uniform():
    counts = _csv_counts("icsd")
    total = sum(counts.values())
    prior = space_group_prior("icsd", smoothing=2.5)
    for number in (1, 14, 89, 228):
        assert prior[number - 1] == pytest.approx(
            (counts[number] + 2.5) / (total + 230 * 2.5), rel=1e-12
        )
    assert np.all(prior > 0)
    uniform = space_group_prior("uniform")
    assert np.allclose(uniform, 1 / 230, rtol=0, atol=1e-15)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown prior source"):
        space_group_prior("mp")
    with pytest.raises(ValueError, match="smoothing"):
        space_group_prior("icsd", smoothing=-1)
    with pytest.raises(ValueError, match="smoothing"):
        space_group_prior("icsd", smoothing=float("nan"))
    with pytest.raises(ValueError, match="no counts"):
        space_group_counts("uniform")
    with pytest.raises(ValueError, match="230 weights"):
        resolve_prior(np.ones(229))
    with pytest.raises(ValueError, match="non-negative"):
        resolve_prior(-np.ones(230))


def test_resolve_prior():
    weights = np.zeros(230)
    weights[[0, 224]] = [1.0, 3.0]
    prior = resolve_prior(weights)
    assert prior[0] == 0.25 and prior[224] == 0.75 and prior.sum() == 1.0
    assert np.array_equal(resolve_prior("cod"), space_group_prior("cod"))


def test_sampler_never_draws_zero_probability_groups_and_follows_prior():
    prior = space_group_prior("icsd")
    zero = set((np.flatnonzero(prior == 0) + 1).tolist())
    assert zero == {89, 93, 203, 210, 211, 228}  # absent from the ICSD column
    draws = sample_space_groups(prior, 400_000, np.random.default_rng(0))
    assert draws.dtype == np.int64 and draws.min() >= 1 and draws.max() <= 230
    assert not zero & set(np.unique(draws).tolist())
    frequencies = np.bincount(draws - 1, minlength=230) / draws.size
    # Binomial standard error is at most sqrt(p(1-p)/n) <= 0.0008; allow 5 sigma.
    sigma = np.sqrt(prior * (1 - prior) / draws.size)
    assert np.all(np.abs(frequencies - prior) <= 5 * sigma + 1e-12)


def test_sampler_edge_groups_and_determinism():
    # Mass only on the first and last group, with zeros in between: both ends are reachable.
    prior = np.zeros(230)
    prior[[0, 229]] = 0.5
    draws = sample_space_groups(prior, 10_000, np.random.default_rng(1))
    assert set(np.unique(draws).tolist()) == {1, 230}
    again = sample_space_groups(prior, 10_000, np.random.default_rng(1))
    assert np.array_equal(draws, again)
