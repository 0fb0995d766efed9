"""The model card: model-index metadata, the tables read from the checkpoint folder, refusals.

Oracles: the metrics and facts passed in, the saved model's own tensors, and hand-derived numbers
for the card's grid line.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from physmoe.data.feature_extraction import XRDFeatureExtractor
from physmoe.model_card import model_card_template_path, write_model_card
from tiny_published_model import tiny_model

METRICS = {  # physmoe.evaluation.compute_metrics keys, as Trainer.evaluate(prefix="test") gives
    "test_num_samples": 1200,
    "test_top1_accuracy": 0.612,
    "test_top5_accuracy": 0.874,
    "test_balanced_accuracy": 0.433,
    "test_macro_f1": 0.401,
    "test_crystal_system_accuracy": 0.83,
    "test_few_shot_accuracy": None,
    "test_few_shot_num_classes": 0,
    "test_ece": 0.031,
    "test_expert_0_top1_accuracy": 0.55,  # a diagnostic: in the table, not the model-index
    "test_runtime": 3.2,
    "test_samples_per_second": 375.0,
}
LONGTAIL = "| Bucket | Classes | Accuracy |\n|---|---:|---:|\n| many-shot | 41 | 0.702 |"


def test_write_model_card_has_model_index_with_the_test_metrics(tmp_path):
    folder = tmp_path / "tiny-card"
    model = tiny_model()
    model.save_pretrained(folder)
    XRDFeatureExtractor.from_config(model.config).save_pretrained(folder)

    path = write_model_card(
        folder,
        metrics=METRICS,
        longtail_table=LONGTAIL,
        training_data={"dataset_name": "Synthetic PXRD patterns", "structures": 12000},
        conditions={"crystallite size (nm)": (10, 100), "Kα2": "on"},
        base_model="lab/base-model",
    )
    assert path == folder / "README.md"
    card = ModelCard.load(path)
    assert card.data.library_name == "physmoe"
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "lab/base-model"
    scores = {  # model-index holds scores only: no counts, no None, no Trainer bookkeeping
        "accuracy": 0.612,
        "top5_accuracy": 0.874,
        "balanced_accuracy": 0.433,
        "f1": 0.401,
        "crystal_system_accuracy": 0.83,
        "ece": 0.031,
    }
    results = card.data.eval_results
    assert {r.metric_type: r.metric_value for r in results} == scores
    assert all(
        r.dataset_split == "test"
        and r.task_name == "Space-group classification"
        and r.dataset_name == "Synthetic PXRD patterns"
        for r in results
    )
    assert card.data.model_name == "tiny-card"
    assert [r.metric_config for r in results if r.metric_type == "f1"] == ["macro"]

    text = card.text
    assert LONGTAIL in text
    assert "| Top-1 accuracy | 0.6120 |" in text and "| Samples | 1200 |" in text
    assert "Runtime" not in text and "runtime" not in text
    assert "- **structures**: 12000" in text and "- **crystallite size (nm)**: 10–100" in text
    # d = λ / (2 sin θ): 1.54056 / (2 sin 45°) = 1.0893 Å and 1.54056 / (2 sin 2.5°) = 17.66 Å
    assert "λ = 1.54056 Å (Cu Kα1): d-spacings 1.089–17.66 Å" in text
    assert "| Model type | resnet1d_moe |" in text and "| Classes | 230 |" in text
    assert "| Expert mode | shared |" in text and "| Experts | 4 |" in text
    n_values = sum(t.numel() for t in model.state_dict().values())
    assert f"| Stored values (parameters and state) | {n_values:,} |" in text
    for section in ("## Intended use", "## How to use", "## Limitations", "108 classes"):
        assert section in text
    assert "{{" not in text and "{%" not in text and "\n\n\n" not in text


def test_write_model_card_refuses_bad_input(tmp_path):
    folder = tmp_path / "card"
    folder.mkdir()
    with pytest.raises(ValueError, match="eval_top1_accuracy.*test split"):
        write_model_card(folder, metrics={"eval_top1_accuracy": 0.5})
    with pytest.raises(ValueError, match="top1_accuracy.*not finite"):
        write_model_card(folder, metrics={"top1_accuracy": math.nan})
    with pytest.raises(TypeError, match="top1_accuracy"):
        write_model_card(folder, metrics={"top1_accuracy": "0.5"})
    with pytest.raises(TypeError, match="longtail_table"):
        write_model_card(folder, longtail_table={"many": 0.5})
    with pytest.raises(FileNotFoundError):
        write_model_card(tmp_path / "absent")
    assert not (folder / "README.md").exists()
    write_model_card(folder)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_model_card(folder)
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results is None and "No evaluation results" in card.text


def test_model_card_template_is_one_file_the_top_level_card_links_to():
    template = model_card_template_path()
    assert template.is_file() and template.parent.name == "resources"
    assert "{{ card_data }}" in template.read_text(encoding="utf-8")
    top_level = Path(__file__).resolve().parents[1] / "model_card.md"
    assert top_level.resolve() == template.resolve()
