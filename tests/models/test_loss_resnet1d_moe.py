"""The classifier's PhysMoE loss and hard-negative miner (:mod:`.loss_resnet1d_moe`), through the
model: the configured ``physmoe.loss`` wrapper and its settings, the miner's updates against
loops, and the names the modeling file still exports for them."""

from __future__ import annotations

import pytest
import torch

from physmoe import crystallography as cryst
from physmoe.loss import HardNegativeMining_Proto, build_loss
from physmoe.models.resnet1d_moe import loss_resnet1d_moe, modeling_resnet1d_moe
from tiny_models import tiny_model


def batch(size: int = 6, num_points: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, num_points, generator=generator)
    labels = torch.randint(0, 230, (size,), generator=generator)
    return x, labels


# ------------------------------------------------------------------------------------------------
# The configured physmoe.loss wrapper
# ------------------------------------------------------------------------------------------------


def test_loss_is_the_configured_physmoe_wrapper():
    model = tiny_model(lambda_hnm=0.2, loss_preset="scheme2").train()
    x, labels = batch(8)
    model.update_hard_negative_miner(torch.randn(8, 8), torch.randn(8, 230), labels)
    out = model(x, labels=labels)
    config = model.config
    wrapper = build_loss(
        "scheme2", config, cryst.rule_similarity_matrix(), cryst.sg_to_sys_map(), lambda_hnm=0.2
    )
    wrapper.load_state_dict(model.physmoe_loss.state_dict())
    expected, components = wrapper(
        {
            "features": out.features,
            "sys_logits": out.crystal_system_logits,
            "expert_logits": out.expert_logits,
            "gating_weights": out.gating_weights,
        },
        {"labels": labels},
        hard_negative_miner=model.hard_negative_miner,
    )
    torch.testing.assert_close(out.loss, expected)
    assert set(components) == set(out.loss_components) and "loss_hnm" in components
    assert wrapper.lambda_dol == 0.5 and model.physmoe_loss.lambda_hier == 1.5


@pytest.mark.parametrize(
    ("overrides", "wrapper_name"),
    [
        ({"loss_preset": "cross_entropy"}, "CrossEntropyLossWrapper"),
        (
            {"loss_preset": "balanced_softmax", "class_prior": list(range(1, 231))},
            "BalancedSoftmaxLossWrapper",
        ),
        (
            {"loss_preset": "physmoe_no_contrast", "rule_matrix": "operator_cosine"},
            "PhysMoELossWrapperNoContrast",
        ),
    ],
)
def test_loss_presets_and_rule_matrix_source(overrides, wrapper_name):
    model = tiny_model(**overrides).train()
    assert type(model.physmoe_loss).__name__ == wrapper_name
    x, labels = batch(4)
    assert torch.isfinite(model(x, labels=labels).loss)
    if overrides.get("rule_matrix") == "operator_cosine":
        torch.testing.assert_close(model.physmoe_loss.rule_matrix, cryst.operator_cosine_matrix())


def test_every_loss_setting_reaches_the_wrapper():
    model = tiny_model(
        lambda_scl=0.3,
        lambda_dol=0.7,
        lambda_col=0.2,
        lambda_hier=1.2,
        lambda_reg=0.01,
        lambda_hnm=0.4,
        tau=0.5,
        class_prior=list(range(1, 231)),
        contrastive_temperature=0.2,
        rule_threshold=0.9,
        focal_gamma=1.5,
        prior_floor=1e-3,
        detach_ensemble=False,
    )
    loss = model.physmoe_loss
    assert (
        loss.lambda_scl,
        loss.lambda_dol,
        loss.lambda_col,
        loss.lambda_hier,
        loss.lambda_reg,
        loss.lambda_hnm,
        loss.tau,
    ) == (0.3, 0.7, 0.2, 1.2, 0.01, 0.4, 0.5)
    assert loss.contrastive.temperature == 0.2 and loss.rule_threshold == 0.9
    assert loss.icl.gamma == 1.5 and loss.icl.detach_ensemble is False
    prior = torch.arange(1, 231, dtype=torch.float64)
    expected = (prior / prior.sum()).clamp_min(1e-3).log()  # the prior_floor reached the loss
    torch.testing.assert_close(loss.log_prior.double(), expected, rtol=1e-6, atol=1e-6)
    x, labels = batch(8)
    assert torch.isfinite(model.train()(x, labels=labels).loss)


def test_loss_settings_the_preset_cannot_take_raise():
    with pytest.raises(ValueError, match="does not accept"):
        tiny_model(loss_preset="cross_entropy", lambda_scl=0.5)


# ------------------------------------------------------------------------------------------------
# Hard-negative mining
# ------------------------------------------------------------------------------------------------


def test_hard_negative_miner_update_against_loops():
    model = tiny_model()
    miner = model.hard_negative_miner
    assert isinstance(miner, HardNegativeMining_Proto)
    assert miner.k == 3 and miner.momentum == 0.9
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.zeros(230, 8)
    confusion = torch.zeros(230, 230)
    for step in range(3):
        features = torch.randn(10, 8, generator=generator)
        labels = torch.tensor([0, 0, 5, 5, 5, 17, 229, step, step, 3])
        logits = torch.randn(10, 230, generator=generator)
        model.update_hard_negative_miner(features, logits, labels)
        for c in labels.unique().tolist():
            members = [features[i] for i in range(10) if labels[i] == c]  # raw: spec 3.1.1
            prototypes[c] = 0.9 * prototypes[c] + 0.1 * torch.stack(members).mean(dim=0)
        for i in range(10):
            confusion[labels[i], logits[i].argmax()] += 1
    torch.testing.assert_close(miner.prototypes, prototypes)
    assert torch.equal(miner.confusion_matrix, confusion)
    model.update_hard_negative_miner(torch.randn(2, 8), torch.tensor([4, 9]), torch.tensor([4, 4]))
    assert (
        miner.confusion_matrix[4, 4] == confusion[4, 4] + 1
        and miner.confusion_matrix[4, 9] == confusion[4, 9] + 1
    )
    before = miner.confusion_matrix.clone()
    model.apply_epoch_momentum()
    torch.testing.assert_close(miner.confusion_matrix, before * 0.1)
    assert not miner.prototypes.requires_grad
    assert {"hard_negative_miner.prototypes", "hard_negative_miner.confusion_matrix"} <= set(
        model.state_dict()
    )


# ------------------------------------------------------------------------------------------------
# Names of the modeling file
# ------------------------------------------------------------------------------------------------


def test_names_that_moved_here_stay_importable_from_the_modeling_file():
    # Code written before the split imported these from modeling_resnet1d_moe.
    moved = {
        "_DEFAULT_PRIOR_FLOOR": "DEFAULT_PRIOR_FLOOR",
        "_RULE_LOSS_PRESETS": "RULE_LOSS_PRESETS",
        "_balanced_experts_constants": "balanced_experts_constants",
        "_import_physmoe": "import_physmoe",
        "_is_physmoe_miner": "is_physmoe_miner",
        "ResNet1DMoEHardNegativeMinerState": "ResNet1DMoEHardNegativeMinerState",
    }
    for old, new in moved.items():
        assert getattr(modeling_resnet1d_moe, old) is getattr(loss_resnet1d_moe, new), old
