"""ResNet1DMoEConfig: defaults, presets, serialisation, validation, label -> crystal system."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import AutoConfig

from physmoe import crystallography as cryst
from physmoe.loss import LOSS_PRESETS
from physmoe.models.resnet1d_moe import RESNET1D_MOE_PRESETS, ResNet1DMoEConfig
from physmoe.models.resnet1d_moe.configuration_resnet1d_moe import (
    CRYSTAL_SYSTEM_FIRST_SPACE_GROUP,
    LOSS_PRESET_NAMES,
    crystal_system_of_space_group,
)


def _torch_pooled_length(config: ResNet1DMoEConfig) -> int:
    """Oracle: push a tensor through the stem stride and torch's own pooling layers."""
    x = torch.zeros(1, 1, config.num_points)
    if config.stem_channels:
        k = config.stem_kernel_size
        x = nn.Conv1d(1, 1, k, stride=config.stem_stride, padding=k // 2)(x)
    for kind, padding in zip(config.pool_types, config.pool_paddings, strict=True):
        if kind == "max":
            x = nn.MaxPool1d(2, 2, padding)(x)
        elif kind == "avg":
            x = nn.AvgPool1d(2, 2, padding)(x)
    return x.shape[-1]


def _comparable(config: ResNet1DMoEConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def test_defaults_are_the_published_architecture():
    config = ResNet1DMoEConfig()
    assert config.hidden_sizes == [32, 32, 64, 128, 128, 256, 256, 512, 512, 1024, 1024, 1024, 1024]
    assert config.pool_types == ["max"] * 4 + ["avg"] * 9
    assert (config.two_theta_min, config.two_theta_max, config.num_points) == (5.0, 90.0, 8500)
    assert config.wavelength == 1.54056
    assert config.feature_dim == 1024 and config.projection_dim == 32
    assert (config.num_experts, config.tail_expert_ids, config.expert_mode) == (
        8,
        [4, 5, 6, 7],
        "independent",
    )
    assert config.logit_scale == 30.0 and config.hidden_dropout_prob == 0.1
    assert config.stem_channels == 0 and config.input_batch_norm
    # The published pooling schedule takes 8500 points to exactly 1 (checked with torch's layers).
    assert config.block_lengths()[-1][1] == 1 == _torch_pooled_length(config)
    assert config.dropout_blocks == [9, 10, 11]


def test_shared_mode_defaults_to_256_projection():
    assert ResNet1DMoEConfig(expert_mode="shared").projection_dim == 256
    assert ResNet1DMoEConfig(expert_mode="shared", projection_dim=64).projection_dim == 64


@pytest.mark.parametrize("name", sorted(RESNET1D_MOE_PRESETS))
def test_presets_are_valid_and_pool_as_torch_does(name):
    config = ResNet1DMoEConfig.from_preset(name)
    lengths = config.block_lengths()
    assert lengths[-1][1] == _torch_pooled_length(config) >= 1
    assert config.feature_dim == config.hidden_sizes[-1]


def test_reference_preset_is_the_default_and_presets_are_small_dicts():
    assert ResNet1DMoEConfig.from_preset("reference").to_dict() == ResNet1DMoEConfig().to_dict()
    assert RESNET1D_MOE_PRESETS["reference"] == {}
    small = ResNet1DMoEConfig.from_preset("small")
    assert small.num_points == 4250 and small.stem_stride == 4 and small.expert_mode == "shared"
    assert small.two_theta_max - small.two_theta_min == pytest.approx(0.02 * small.num_points)
    assert (
        ResNet1DMoEConfig.from_preset("small", num_experts=4, tail_expert_ids=[3]).num_experts == 4
    )
    with pytest.raises(ValueError, match="unknown preset"):
        ResNet1DMoEConfig.from_preset("huge")


def test_labels_are_physmoe_space_group_names():
    config = ResNet1DMoEConfig()
    assert config.num_labels == 230
    assert config.id2label == cryst.ID2LABEL
    assert config.label2id == cryst.LABEL2ID
    assert config.id2label[13] == "P2_1/c (14)"
    assert config.space_group_numbers == list(range(1, 231))
    assert torch.equal(torch.tensor(config.label_crystal_systems), cryst.sg_to_sys_map())


def test_crystal_system_boundaries_agree_with_gemmi_tables():
    for number in range(1, 231):
        assert crystal_system_of_space_group(number) == cryst.crystal_system_index(number)
    assert len(CRYSTAL_SYSTEM_FIRST_SPACE_GROUP) == len(cryst.CRYSTAL_SYSTEMS)
    with pytest.raises(ValueError):
        crystal_system_of_space_group(231)


def test_label_space_groups_from_names_and_explicit_list():
    id2label = {0: "P2_1/c (14)", 1: "Fm-3m (225)", 2: "P-1 (2)"}
    config = ResNet1DMoEConfig(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    assert config.num_labels == 3
    assert config.space_group_numbers == [14, 225, 2]
    assert config.label_crystal_systems == [1, 6, 0]
    explicit = ResNet1DMoEConfig(num_labels=2, label_space_groups=[62, 194])
    assert explicit.label_crystal_systems == [2, 5]
    unnamed = ResNet1DMoEConfig(num_labels=10)
    assert unnamed.id2label[0] == "LABEL_0" and unnamed.space_group_numbers is None
    with pytest.raises(ValueError, match="label_space_groups has 3 entries"):
        _ = ResNet1DMoEConfig(num_labels=2, label_space_groups=[1, 2, 3]).space_group_numbers


def test_save_load_and_json_round_trip(tmp_path):
    config = ResNet1DMoEConfig.from_preset(
        "small", lambda_scl=0.3, class_prior=[1.0] * 230, rule_bias_init=[[0.5] * 8] * 7
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "resnet1d_moe"
    assert saved["hidden_sizes"] == config.hidden_sizes and saved["id2label"]["13"] == "P2_1/c (14)"
    for loaded in (
        ResNet1DMoEConfig.from_pretrained(tmp_path),
        AutoConfig.from_pretrained(tmp_path),
    ):
        assert isinstance(loaded, ResNet1DMoEConfig)
        assert _comparable(loaded) == _comparable(config)
        assert loaded.id2label[13] == "P2_1/c (14)" and isinstance(next(iter(loaded.id2label)), int)
    from_json = ResNet1DMoEConfig.from_dict(json.loads(config.to_json_string()))
    assert _comparable(from_json) == _comparable(config)


@pytest.mark.parametrize("labels", [{}, {"label_space_groups": [14, 62]}])
def test_two_label_config_reloads_with_two_labels(tmp_path, labels):
    # transformers drops id2label when it equals its own 2-label default; ours is 230 labels.
    config = ResNet1DMoEConfig.from_preset("small", num_labels=2, **labels)
    config.save_pretrained(tmp_path)
    loaded = ResNet1DMoEConfig.from_pretrained(tmp_path)
    assert loaded.num_labels == 2 and loaded.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert loaded.label_space_groups == config.label_space_groups


def test_loss_settings():
    assert set(LOSS_PRESET_NAMES) == set(LOSS_PRESETS)
    config = ResNet1DMoEConfig(
        lambda_hnm=0.5,
        contrastive_temperature=0.1,
        focal_gamma=1.0,
        prior_floor=1e-4,
        detach_ensemble=False,
    )
    assert config.loss_overrides() == {
        "lambda_hnm": 0.5,
        "temperature": 0.1,
        "gamma": 1.0,
        "prior_floor": 1e-4,
        "detach_ensemble": False,
    }
    assert ResNet1DMoEConfig().loss_overrides() == {}
    assert ResNet1DMoEConfig().feat_dim == 1024
    assert set(ResNet1DMoEConfig.keys_to_ignore_at_inference) == {
        "expert_logits",
        "features",
        "gating_weights",
        "loss_components",
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_points": 1}, ValueError, "num_points"),
        ({"num_points": 100.0}, ValueError, "num_points"),
        ({"two_theta_min": 50.0, "two_theta_max": 40.0}, ValueError, "two_theta_min"),
        ({"wavelength": -1.0}, ValueError, "wavelength"),
        ({"wavelength": "CuKa"}, TypeError, "wavelength"),
        ({"hidden_sizes": []}, ValueError, "hidden_sizes"),
        ({"hidden_sizes": [8, 16.5]}, TypeError, "hidden_sizes"),
        ({"pool_types": ["max"] * 12}, ValueError, "pool_types"),
        ({"pool_types": ["min"] * 13}, ValueError, "pool_types"),
        ({"pool_paddings": [2] * 13}, ValueError, "pool_paddings"),
        ({"dropout_blocks": [13]}, ValueError, "dropout_blocks"),
        ({"hidden_dropout_prob": 1.0}, ValueError, "hidden_dropout_prob"),
        ({"feature_dim": 512}, ValueError, "feature_dim"),
        ({"num_points": 4000}, ValueError, "below length 1"),
        ({"stem_kernel_size": 4, "stem_channels": 8}, ValueError, "stem_kernel_size"),
        ({"stem_stride": 2}, ValueError, "stem_channels"),
        ({"num_experts": 0}, ValueError, "num_experts"),
        ({"tail_expert_ids": [8]}, ValueError, "tail_expert_ids"),
        ({"tail_expert_ids": [4, 4]}, ValueError, "tail_expert_ids"),
        ({"expert_mode": "sparse"}, ValueError, "expert_mode"),
        ({"projection_dim": 0}, ValueError, "projection_dim"),
        ({"logit_scale": 0}, ValueError, "logit_scale"),
        ({"rule_bias_init": [[0.0] * 8] * 6}, ValueError, "rule_bias_init"),
        ({"hierarchical_inference": "maybe"}, ValueError, "hierarchical_inference"),
        ({"label_space_groups": [0] * 230}, ValueError, "label_space_groups"),
        ({"loss_preset": "focal"}, ValueError, "loss_preset"),
        ({"rule_matrix": "identity"}, ValueError, "rule_matrix"),
        ({"lambda_scl": -0.1}, ValueError, "lambda_scl"),
        ({"tau": float("nan")}, ValueError, "tau"),
        ({"contrastive_temperature": 0.0}, ValueError, "contrastive_temperature"),
        ({"prior_floor": 0.0}, ValueError, "prior_floor"),
        ({"detach_ensemble": "yes"}, TypeError, "detach_ensemble"),
        ({"hnm_momentum": 1.5}, ValueError, "hnm_momentum"),
        ({"hnm_k": 0}, ValueError, "hnm_k"),
        ({"num_labels": 1}, ValueError, "num_labels"),
        ({"class_prior": [-1.0] * 230}, ValueError, "class_prior"),
    ],
)
def test_bad_values_raise_naming_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        ResNet1DMoEConfig(**kwargs)


def test_label_sized_fields_must_match_num_labels():
    # Both used to be accepted here and refused only by the model constructor.
    with pytest.raises(ValueError, match="class_prior has 5 entries, num_labels is 230"):
        ResNet1DMoEConfig(class_prior=[1.0] * 5)
    with pytest.raises(ValueError, match="label_space_groups has 10 entries but num_labels is 230"):
        ResNet1DMoEConfig(label_space_groups=list(range(1, 11)))


def test_unknown_fields_are_warned_about_with_a_suggestion(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        config = ResNet1DMoEConfig(tua=1.0)
    assert "unknown field 'tua' (did you mean 'tau'?)" in caplog.text
    assert config.tau is None  # stored as a plain attribute, as transformers does
    caplog.clear()
    with caplog.at_level("WARNING"):  # a saved config's own extra keys are no typos
        ResNet1DMoEConfig.from_preset("small").save_pretrained(tmp_path)
        ResNet1DMoEConfig.from_pretrained(tmp_path)
        ResNet1DMoEConfig(use_cache=False)  # what the Trainer adds to every config it saves
    assert "unknown field" not in caplog.text


def test_calibration_temperature_round_trips_and_is_validated(tmp_path):
    config = ResNet1DMoEConfig.from_preset("small", calibration_temperature=1.7)
    config.save_pretrained(tmp_path)
    assert ResNet1DMoEConfig.from_pretrained(tmp_path).calibration_temperature == 1.7
    assert ResNet1DMoEConfig().calibration_temperature == 1.0
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="calibration_temperature"):
            ResNet1DMoEConfig(calibration_temperature=bad)


def test_repeated_label_space_groups_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"label_space_groups repeats the space groups \[14\]"):
        ResNet1DMoEConfig(num_labels=3, label_space_groups=[14, 225, 14])
    path = tmp_path / "config.json"
    # 3 labels: transformers leaves 2 generic labels (its default id2label) out of config.json.
    ResNet1DMoEConfig(num_labels=3, label_space_groups=[14, 225, 2]).save_pretrained(tmp_path)
    saved = json.loads(path.read_text())
    saved["label_space_groups"] = [14, 14, 2]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"repeats the space groups \[14\]"):
        ResNet1DMoEConfig.from_pretrained(tmp_path)
