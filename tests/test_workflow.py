"""The main job's building blocks: model construction from arguments and overrides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physmoe.workflow import ModelArguments, build_model


def test_model_overrides_and_missing_models_are_named(tmp_path):
    counts = np.ones(230)
    with pytest.raises(
        ValueError, match=r"model_overrides must be a JSON object: Expecting property name"
    ):
        build_model(ModelArguments(model_overrides="{tau: 1}"), counts)
    with pytest.raises(
        ValueError, match=r"model_overrides must be a JSON object, got \['tau', 1\]"
    ):
        build_model(ModelArguments(model_overrides=["tau", 1]), counts)  # a YAML list
    missing = tmp_path / "no_model"
    with pytest.raises(FileNotFoundError, match=f"no such checkpoint folder: {missing}"):
        build_model(ModelArguments(model_name_or_path=str(missing)), counts)


def test_unknown_model_overrides_are_refused_with_a_suggestion(tmp_path):
    counts = np.ones(230)
    message = r"unknown ResNet1DMoEConfig fields 'tua' \(did you mean 'tau'\?\)"
    with pytest.raises(ValueError, match=message):
        build_model(ModelArguments(model_overrides='{"tua": 1.0}'), counts)
    from tiny_models import tiny_model

    saved = tmp_path / "base"
    tiny_model(seed=3).save_pretrained(saved)
    with pytest.raises(ValueError, match=r"unknown ResNet1DMoEConfig fields 'no_such'"):
        arguments = ModelArguments(model_name_or_path=str(saved), model_overrides='{"no_such": 1}')
        build_model(arguments, counts)


def test_the_balanced_experts_preset_gets_the_training_prior():
    counts = np.arange(1, 231, dtype=float)
    model = build_model(
        ModelArguments(model_overrides='{"loss_preset": "balanced_experts"}'), counts
    )
    assert model.config.class_prior == pytest.approx(list(counts / counts.sum()))
    labels = torch.tensor([0, 5, 229, 61])
    out = model(torch.rand(4, model.config.num_points), labels=labels)
    assert torch.isfinite(out.loss)
