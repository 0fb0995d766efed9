"""scripts/benchmark_longtail.py end to end on a tiny scale: every run trained once, the ablations
built on the validation winner, the summary's numbers against scikit-learn, and a rerun that
trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from scripts_under_test import load_script
from tiny_models import TINY

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark_longtail")


def test_ablations_switch_one_term_of_the_best(bench):
    scale = bench.SCALES["cpu50k"]
    runs = bench.extra_runs(scale, "i_balanced_experts")
    base = bench.METHODS["i_balanced_experts"]
    assert set(runs) == {
        "x_best_without_contrast",
        "x_best_without_hierarchy",
        "x_best_without_centre",
        "x_best_with_hnm",
    }
    assert runs["x_best_without_contrast"] == {**base, "lambda_scl": 0.0}
    assert runs["x_best_without_centre"] == {**base, "lambda_reg": 0.0}
    # No hierarchical loss: the system head is untrained, so inference must not use it.
    assert runs["x_best_without_hierarchy"] == {
        **base,
        "lambda_hier": 0.0,
        "hierarchical_inference": "none",
    }
    assert runs["x_best_with_hnm"] == {**base, "lambda_hnm": bench.HNM_WEIGHT}
    assert bench.extra_runs(scale, "h_physmoe_hnm")["x_best_without_hnm"]["lambda_hnm"] == 0.0
    assert bench.extra_runs(scale, None) == {}
    assert bench.OPERATOR_COSINE in bench.extra_runs(bench.SCALES["cpu"], "c_physmoe")
    with pytest.raises(ValueError, match="unknown methods.*'z_nothing'"):
        bench.run_benchmark(scale, "cpu50k", Path("unused"), methods=["z_nothing"])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_tiny_benchmark_end_to_end_and_resume(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REAL_MAX_SAMPLES", 40)
    tiny = {k: v for k, v in TINY.items() if k not in ("num_experts", "tail_expert_ids")}
    scale = bench.Scale(
        "reference",
        tiny,
        300,
        1,
        32,
        2e-3,
        (0,),
        ("a_cross_entropy", "b_balanced_softmax", "i_balanced_experts"),
        generator="fast",
        evals_per_epoch=2,
        ablations=True,
    )
    out = tmp_path / "bench"
    summary = bench.run_benchmark(scale, "tiny", out, num_proc=1)

    names = [
        "a_cross_entropy",
        "b_balanced_softmax",
        "i_balanced_experts",
        "x_best_without_contrast",
        "x_best_without_hierarchy",
        "x_best_without_centre",
        "x_best_with_hnm",
    ]
    assert list(summary["table"]) == names and summary["best_physmoe"] == "i_balanced_experts"
    ablation = json.loads(
        (out / "runs" / "x_best_without_hierarchy" / "seed0" / "config.json").read_text()
    )
    assert ablation["lambda_hier"] == 0.0 and ablation["hierarchical_inference"] == "none"
    assert ablation["loss_preset"] == "balanced_experts"
    history = json.loads(
        (out / "runs" / "a_cross_entropy" / "seed0" / "log_history.json").read_text()
    )
    assert sum("eval_balanced_accuracy" in entry for entry in history) == 2  # evals_per_epoch

    # The paired difference of balanced accuracy is the difference of scikit-learn's values.
    def balanced(name):
        data = np.load(out / "runs" / name / "seed0" / "predictions_test_saved.npz")
        return balanced_accuracy_score(data["labels"], data["logits"].argmax(-1))

    point = summary["differences"]["i_balanced_experts - b_balanced_softmax (balanced)"][0]
    assert point == pytest.approx(
        balanced("i_balanced_experts") - balanced("b_balanced_softmax"), abs=1e-12
    )
    assert summary["table"]["a_cross_entropy"]["balanced_accuracy"][0] == pytest.approx(
        balanced("a_cross_entropy"), abs=1e-6
    )
    assert "x_best_with_hnm - i_balanced_experts (few)" in summary["differences"]
    targets = summary["targets"]
    assert targets["beats_balanced_softmax_balanced"] == (
        summary["differences"]["i_balanced_experts - b_balanced_softmax (balanced)"][1] > 0
    )
    for name in names:
        real = summary["real"][name]
        assert 0 <= real["top1_accuracy"][0] <= real["top5_accuracy"][0] <= 1
    # Every balanced-experts run at w = 0 (as trained: the table's numbers) and w = 1.
    weighted = summary["inference_prior_weight"]
    assert set(weighted) == {f"{n} (w={w})" for n in names[2:] for w in (0, 1)}
    for name in names[2:]:
        assert weighted[f"{name} (w=0)"]["balanced_accuracy"][0] == pytest.approx(
            summary["table"][name]["balanced_accuracy"][0], abs=1e-6
        )
        assert weighted[f"{name} (w=0)"]["real_top1_accuracy"][0] == pytest.approx(
            summary["real"][name]["top1_accuracy"][0]
        )
    text = (out / "results.md").read_text()
    assert "Real structures" in text and "x_best_with_hnm" in text and "Issue-12 targets" in text

    # A rerun trains nothing and writes the same summary.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/seed0/all_results.json")}
    again = bench.run_benchmark(scale, "tiny", out, dataset=str(out / "data"))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and len(stamps) == len(names)
    assert json.loads(json.dumps(again["table"])) == json.loads(json.dumps(summary["table"]))
