"""Tests of PXRDCollator: rendering through render_patterns, determinism in evaluation, fresh
conditions per call / worker / epoch in training, labels and stored patterns."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from physmoe.data.collator import PXRDCollator
from physmoe.data.grid import TwoThetaGrid
from physmoe.data.render import MeasurementConditions, render_patterns

GRID = TwoThetaGrid()
SMALL_GRID = TwoThetaGrid(5.0, 90.0, 1700)


def rows(count: int, seed: int = 0, label_key: str = "space_group") -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(20, 200))
        out.append(
            {
                "peak_two_theta": np.sort(rng.uniform(2, 100, n)).astype(np.float32).tolist(),
                "peak_intensity": (rng.uniform(0, 100, n)).astype(np.float32).tolist(),
                label_key: int(rng.integers(0, 230)),
                "structure_id": f"s{i}",
            }
        )
    return out


def test_eval_is_clean_and_deterministic():
    features = rows(5)
    collator = PXRDCollator(GRID, train=False)
    batch = collator(features)
    assert batch["input_values"].dtype == torch.float32 and batch["input_values"].shape == (
        5,
        GRID.num_points,
    )
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"].tolist() == [row["space_group"] for row in features]
    assert torch.equal(collator(features)["input_values"], batch["input_values"])
    expected = render_patterns(
        [(np.array(r["peak_two_theta"]), np.array(r["peak_intensity"])) for r in features], GRID
    )
    assert torch.equal(batch["input_values"], expected)


def _without_ids(features: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "structure_id"} for row in features]


def test_train_without_ids_draws_new_conditions_every_call_and_is_reproducible_with_a_seed():
    features = _without_ids(rows(4))
    collator = PXRDCollator(SMALL_GRID, train=True, seed=123)
    first, second = collator(features)["input_values"], collator(features)["input_values"]
    assert not torch.allclose(first, second, atol=1e-2)
    clean = PXRDCollator(SMALL_GRID, train=False)(features)["input_values"]
    assert not torch.allclose(first, clean, atol=1e-2)
    assert torch.isfinite(first).all() and torch.allclose(first.amax(1), torch.ones(4))
    again = PXRDCollator(SMALL_GRID, train=True, seed=123)
    assert torch.equal(again(features)["input_values"], first)
    assert torch.equal(again(features)["input_values"], second)
    # Identical rows in one batch get different conditions.
    same = PXRDCollator(SMALL_GRID, train=True, seed=1)([features[0]] * 3)["input_values"]
    assert not torch.allclose(same[0], same[1], atol=1e-2)


def test_train_with_ids_is_a_function_of_seed_epoch_and_structures():
    features = rows(4)
    collator = PXRDCollator(SMALL_GRID, train=True, seed=123)
    first = collator(features)["input_values"]
    # Call history does not matter (a resumed run renders what an uninterrupted one did) ...
    collator(rows(3, seed=9))
    assert torch.equal(collator(features)["input_values"], first)
    assert torch.equal(
        PXRDCollator(SMALL_GRID, train=True, seed=123)(features)["input_values"], first
    )
    # ... while the epoch, the seed and the batch's structures do.
    collator.set_epoch(1)
    assert not torch.allclose(collator(features)["input_values"], first, atol=1e-2)
    other_seed = PXRDCollator(SMALL_GRID, train=True, seed=124)(features)["input_values"]
    assert not torch.allclose(other_seed, first, atol=1e-2)
    assert torch.isfinite(first).all() and torch.allclose(first.amax(1), torch.ones(4))
    same = PXRDCollator(SMALL_GRID, train=True, seed=1)([features[0]] * 3)["input_values"]
    assert not torch.allclose(same[0], same[1], atol=1e-2)


def test_custom_conditions_and_sticks_mode():
    features = rows(3)
    sticks = PXRDCollator(GRID, train=True, mode="sticks", seed=0)(features)["input_values"]
    for row, pattern in zip(features, sticks, strict=True):
        two_theta = np.array(row["peak_two_theta"], dtype=np.float64)
        index = np.floor((two_theta - 5.0) / 0.01).astype(int)
        on_grid = (index >= 0) & (index < 8500)
        assert set(torch.nonzero(pattern).flatten().tolist()) <= set(index[on_grid].tolist())
    only_shift = MeasurementConditions.clean()
    only_shift = type(only_shift)(**{**only_shift.__dict__, "zero_shift_deg": (0.5, 0.5)})
    row = {
        "peak_two_theta": [21.0, 33.3, 47.0, 58.2],
        "peak_intensity": [50.0, 100.0, 20.0, 70.0],
        "labels": 0,
    }
    shifted = PXRDCollator(GRID, conditions=only_shift, train=True, seed=0)([row])["input_values"][
        0
    ]
    clean = PXRDCollator(GRID, train=False)([row])["input_values"][0]
    # 0.5 deg = 50 points (the widths change by < 1 % over 0.5 deg)
    torch.testing.assert_close(shifted[50:], clean[:-50], atol=5e-3, rtol=0)
    assert (shifted - clean).abs().max() > 0.5


def test_labels_keys_and_inference_batches():
    assert PXRDCollator(SMALL_GRID, train=False)(rows(2, label_key="labels"))["labels"].shape == (
        2,
    )
    unlabeled = [{k: v for k, v in row.items() if k != "space_group"} for row in rows(2)]
    assert "labels" not in PXRDCollator(SMALL_GRID, train=False)(unlabeled)
    with pytest.raises(ValueError, match="feature 1 has no label"):
        PXRDCollator(SMALL_GRID, train=False)([rows(1)[0], unlabeled[0]])
    bad = rows(2)
    bad[1]["space_group"] = 230
    with pytest.raises(ValueError, match="feature 1 has label 230"):
        PXRDCollator(SMALL_GRID, train=False)(bad)
    with pytest.raises(ValueError, match="needs 'peak_two_theta'"):
        PXRDCollator(SMALL_GRID, train=False)([{"space_group": 3}])
    with pytest.raises(ValueError, match="empty"):
        PXRDCollator(SMALL_GRID)([])


def test_stored_patterns_pass_through_and_mix_with_peaks():
    rng = np.random.default_rng(1)
    stored = [
        {
            "input_values": torch.from_numpy(rng.random(SMALL_GRID.num_points).astype(np.float32)),
            "labels": 7,
        }
    ]
    peaks = rows(2, label_key="labels")
    batch = PXRDCollator(SMALL_GRID, train=False)([peaks[0], stored[0], peaks[1]])
    assert torch.equal(batch["input_values"][1], stored[0]["input_values"])
    rendered = PXRDCollator(SMALL_GRID, train=False)(peaks)["input_values"]
    assert torch.equal(batch["input_values"][[0, 2]], rendered)
    assert batch["labels"].tolist() == [peaks[0]["labels"], 7, peaks[1]["labels"]]
    with pytest.raises(ValueError, match="feature 0: input_values has 10 points"):
        PXRDCollator(SMALL_GRID)([{"input_values": np.zeros(10), "labels": 1}])
    for label in (3.7, "P2_1/c", [1, 2]):
        with pytest.raises(ValueError, match="feature 1 has label .*integers"):
            PXRDCollator(SMALL_GRID)(
                [stored[0], {"input_values": stored[0]["input_values"], "labels": label}]
            )
    assert PXRDCollator(SMALL_GRID)([{**stored[0], "labels": np.float32(7.0)}])[
        "labels"
    ].tolist() == [7]
    broken = np.zeros(SMALL_GRID.num_points, dtype=np.float32)
    broken[5] = np.nan
    with pytest.raises(ValueError, match=r"feature 1: input_values\[5\] is nan"):
        PXRDCollator(SMALL_GRID)([stored[0], {"input_values": broken, "labels": 1}])


def test_hugging_face_dataset_rows():
    datasets = pytest.importorskip("datasets")
    features = rows(6)
    dataset = datasets.Dataset.from_list(features)
    collator = PXRDCollator(SMALL_GRID, train=False)
    expected = collator(features)["input_values"]
    assert torch.equal(collator([dataset[i] for i in range(6)])["input_values"], expected)
    dataset.set_format("torch")
    batch = collator([dataset[i] for i in range(6)])
    torch.testing.assert_close(batch["input_values"], expected)
    assert batch["labels"].tolist() == [row["space_group"] for row in features]


class _Rows(torch.utils.data.Dataset):
    def __init__(self, row: dict, count: int):
        self.row, self.count = row, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        return self.row


def _epochs(collator: PXRDCollator, num_epochs: int) -> list[list[torch.Tensor]]:
    loader = DataLoader(
        _Rows(_without_ids(rows(1))[0], 8), batch_size=2, num_workers=2, collate_fn=collator
    )
    return [[batch["input_values"] for batch in loader] for _ in range(num_epochs)]


def test_dataloader_workers_and_epochs_get_different_conditions():
    collator = PXRDCollator(SMALL_GRID, train=True, seed=5)
    collator(rows(2))  # used in the main process first: workers must not inherit its generator
    torch.manual_seed(0)
    run = _epochs(collator, 2)
    first_epoch = torch.cat(run[0])
    # Every pattern of the epoch differs (same row, 2 workers x 2 batches x 2 rows).
    distances = torch.cdist(first_epoch, first_epoch)
    assert (distances + torch.eye(len(first_epoch)) * 1e9).min() > 1e-2
    assert not torch.allclose(
        torch.cat(run[1]), first_epoch, atol=1e-2
    )  # new epoch, new conditions
    torch.manual_seed(0)
    repeat = _epochs(PXRDCollator(SMALL_GRID, train=True, seed=5), 2)
    for a, b in zip(run, repeat, strict=True):
        assert torch.equal(torch.cat(a), torch.cat(b))


def test_pickles_without_its_generator():
    collator = PXRDCollator(SMALL_GRID, train=True, seed=3)
    collator(rows(1))
    clone = pickle.loads(pickle.dumps(collator))
    assert clone._generator is None and clone.seed == 3 and clone.grid == SMALL_GRID
    assert torch.equal(
        clone(rows(1))["input_values"],
        PXRDCollator(SMALL_GRID, train=True, seed=3)(rows(1))["input_values"],
    )


@pytest.mark.parametrize("wavelength", [0, 0.0, -1.54, float("nan"), float("inf"), None, True])
def test_peaks_wavelength_must_be_a_wavelength(wavelength):
    message = rf"peaks_wavelength must be a positive number .*got {wavelength!r}"
    with pytest.raises(ValueError, match=message):
        PXRDCollator(SMALL_GRID, train=False, peaks_wavelength=wavelength)


def test_a_one_based_space_group_column_is_named():
    batch = rows(2)
    batch[1]["space_group"] = 230
    message = r"feature 1 has label 230 under 'space_group', .*0-based .*subtract 1"
    with pytest.raises(ValueError, match=message):
        PXRDCollator(SMALL_GRID, train=False)(batch)


def test_the_contrastive_loss_names_out_of_range_labels():
    # Collated labels feed PhysicsContrastiveLoss; a label outside the rule matrix was an
    # IndexError (and a negative one wrapped around to the last class).
    from physmoe.loss.physics_contrast_loss import PhysicsContrastiveLoss

    loss = PhysicsContrastiveLoss()
    features, rule = torch.randn(3, 8), torch.eye(5)
    assert torch.isfinite(loss(features, torch.tensor([0, 1, 1]), rule))
    for labels, value in (([0, 5, 1], 5), ([0, -1, 1], -1)):
        with pytest.raises(ValueError, match=rf"labels must lie in 0\.\.4, found {value}"):
            loss(features, torch.tensor(labels), rule)


# ------------------------------------------------------------------------- survey regressions


def test_a_row_without_peaks_is_refused():
    batch = rows(3)
    batch[2]["peak_two_theta"], batch[2]["peak_intensity"] = [], []
    for train in (False, True):
        with pytest.raises(ValueError, match=r"feature 2 has no peaks \(peak_two_theta is empty\)"):
            PXRDCollator(SMALL_GRID, train=train, seed=0)(batch)


@pytest.mark.parametrize(
    ("key", "value"),
    [("peak_two_theta", "10 20"), ("peak_intensity", ["a", "b"]), ("peak_two_theta", [10.0, None])],
)
def test_peaks_that_are_not_numbers_name_the_field(key, value):
    batch = rows(2)
    batch[1]["peak_two_theta"], batch[1]["peak_intensity"] = [10.0, 20.0], [50.0, 100.0]
    batch[1][key] = value
    with pytest.raises(ValueError, match=rf"feature 1: {key} must be numbers, got "):
        PXRDCollator(SMALL_GRID, train=False)(batch)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_labels": 0}, "num_labels must be an integer >= 1, got 0"),
        ({"num_labels": 2.5}, "num_labels must be an integer >= 1, got 2.5"),
        ({"seed": "abc"}, "seed must be None or an integer >= 0, got 'abc'"),
        ({"seed": -1}, "seed must be None or an integer >= 0, got -1"),
        ({"seed": True}, "seed must be None or an integer >= 0, got True"),
    ],
)
def test_num_labels_and_seed_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PXRDCollator(SMALL_GRID, **kwargs)
    assert PXRDCollator(SMALL_GRID, seed=np.int64(3), num_labels=7).seed == 3
