"""The "balanced_experts" preset: logit-adjusted experts (tau spread 0..2) with PhysMoE terms.

The oracles below compute every term by hand, one expert and one sample at a time in float64,
from the formulas in physmoe.loss.balanced_experts; the model tests check that the model's
inference logits follow the documented balanced rule.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from physmoe.loss import (
    DEFAULT_EXPERT_TAU_RANGE,
    LOSS_PRESETS,
    BalancedExpertsLossWrapper,
    HardNegativeMining_Proto,
    balanced_expert_ensemble,
    build_loss,
    expert_taus,
)
from physmoe.models.resnet1d_moe import (
    ResNet1D_MoE,
    ResNet1DMoEConfig,
    hierarchical_space_group_logits,
)
from physmoe.models.resnet1d_moe.configuration_resnet1d_moe import BALANCED_EXPERTS_TAU_RANGE
from tiny_models import tiny_model

from . import (
    CFG,
    RULE,
    SG_TO_SYS,
    center_oracle,
    contrastive_oracle,
    hierarchical_oracle,
    log_softmax_row,
    make_batch,
)

COUNTS = torch.arange(1.0, 231.0) ** 2  # a long-tailed prior (ratio 52,900)


def log_prior_oracle(counts, floor=1e-6):
    total = float(counts.double().sum())
    return torch.tensor([math.log(max(float(c) / total, floor)) for c in counts.double()])


def taus_oracle(num_experts, low=0.0, high=2.0):
    if num_experts == 1:
        return [(low + high) / 2]
    return [low + (high - low) * k / (num_experts - 1) for k in range(num_experts)]


def expert_ce_oracle(expert_logits, labels, taus, log_prior):
    """mean_k mean_b CE(z_bk + tau_k log prior, y_b), by loops."""
    batch, num_experts, _ = expert_logits.shape
    total = 0.0
    for k in range(num_experts):
        per_expert = 0.0
        for b in range(batch):
            row = expert_logits[b, k].double() + taus[k] * log_prior
            per_expert += -float(log_softmax_row(row)[int(labels[b])])
        total += per_expert / batch
    return total / num_experts


def balanced_oracle(expert_logits, gating_weights, taus, log_prior):
    """sum_k g_k z_k + (sum_k g_k tau_k - 1) log prior, by loops ([B, C] float64)."""
    batch, num_experts, _ = expert_logits.shape
    rows = []
    for b in range(batch):
        row = -log_prior.clone()
        for k in range(num_experts):
            g = float(gating_weights[b, k])
            row = row + g * (expert_logits[b, k].double() + taus[k] * log_prior)
        rows.append(row)
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------------
# Taus and the balanced ensemble
# ------------------------------------------------------------------------------------------------


def test_tau_spread():
    torch.testing.assert_close(
        expert_taus(8), torch.tensor([2.0 * k / 7 for k in range(8)]), rtol=0, atol=1e-7
    )
    taus = expert_taus(8)
    assert taus[0] == 0 and taus[-1] == 2 and taus.dtype == torch.float32
    torch.testing.assert_close(expert_taus(8).mean(), torch.tensor(1.0))
    assert expert_taus(1).tolist() == [1.0]
    assert expert_taus(3, 0.5, 1.5).tolist() == [0.5, 1.0, 1.5]
    assert expert_taus(4, 1.0, 1.0).tolist() == [1.0] * 4
    for bad in ({"tau_min": 2.0, "tau_max": 1.0}, {"tau_min": -0.5}, {"tau_max": math.inf}):
        with pytest.raises(ValueError, match="tau"):
            expert_taus(4, **bad)
    with pytest.raises(ValueError, match="num_experts"):
        expert_taus(0)


def test_balanced_ensemble_formula_and_balpoe_special_case():
    outputs, _ = make_batch(num_experts=8, seed=1)
    logits, gates = outputs["expert_logits"], outputs["gating_weights"]
    log_prior = log_prior_oracle(COUNTS)
    taus = expert_taus(8)
    got = balanced_expert_ensemble(logits, gates, taus, log_prior.float())
    expected = balanced_oracle(logits, gates, taus_oracle(8), log_prior)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    # BalPoE: uniform weights and mean tau 1 -> the plain average of the unadjusted logits.
    uniform = balanced_expert_ensemble(logits, None, taus, log_prior.float())
    torch.testing.assert_close(uniform, logits.mean(dim=1), rtol=1e-5, atol=1e-5)


def test_ensemble_of_ideal_experts_is_balanced_for_any_gate():
    # Expert k's population minimiser: z_k = s + (1 - tau_k) log prior (s: balanced scores).
    # The balanced ensemble recovers s (up to a per-sample constant) whatever the gate.
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(5, 230, generator=generator, dtype=torch.float64)
    log_prior = log_prior_oracle(COUNTS)
    taus = expert_taus(8).double()
    logits = scores[:, None, :] + (1 - taus)[None, :, None] * log_prior
    gates = torch.softmax(3 * torch.randn(5, 8, generator=generator, dtype=torch.float64), 1)
    got = balanced_expert_ensemble(logits, gates, taus, log_prior)
    torch.testing.assert_close(got, scores, rtol=1e-9, atol=1e-9)
    # The plain gated sum is off by (1 - sum_k g_k tau_k) log prior, not a constant.
    raw = torch.einsum("bk,bkc->bc", gates, logits)
    offset = (1 - gates @ taus)[:, None] * log_prior
    torch.testing.assert_close(raw - scores, offset, rtol=1e-9, atol=1e-9)
    assert (raw - scores).std(dim=1).min() > 0.1


# ------------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------------


def test_loss_matches_loop_oracle():
    weights = dict(lambda_dol=0.7, lambda_hier=1.3, lambda_scl=0.3, lambda_reg=0.05)
    wrapper = BalancedExpertsLossWrapper(CFG, RULE, SG_TO_SYS, class_prior=COUNTS, **weights)
    outputs, targets = make_batch()
    labels = targets["labels"]
    total, parts = wrapper(outputs, targets)
    log_prior = log_prior_oracle(COUNTS)
    taus = taus_oracle(4)
    adjusted = balanced_oracle(outputs["expert_logits"], outputs["gating_weights"], taus, log_prior)
    loss_sys, loss_sg = hierarchical_oracle(
        outputs["sys_logits"], adjusted + log_prior, labels, SG_TO_SYS
    )
    centers = wrapper.center_loss.centers.detach()
    expected = {
        "loss_dol": expert_ce_oracle(outputs["expert_logits"], labels, taus, log_prior),
        "loss_sys": loss_sys,
        "loss_sg": loss_sg,
        "loss_scl": contrastive_oracle(outputs["features"], labels, RULE),
        "loss_reg": center_oracle(outputs["features"], labels, centers, RULE),
    }
    assert set(parts) == set(expected)
    for name, value in expected.items():
        assert float(parts[name]) == pytest.approx(value, rel=1e-5, abs=1e-5), name
    expected_total = (
        0.7 * expected["loss_dol"]
        + 1.3 * (loss_sys + loss_sg)
        + 0.3 * expected["loss_scl"]
        + 0.05 * expected["loss_reg"]
    )
    assert float(total.detach()) == pytest.approx(expected_total, rel=1e-5)
    # loss_sg is Balanced Softmax on the balanced ensemble: sum_k g_k (z_k + tau_k log prior).
    gated_adjusted = torch.einsum(
        "bk,bkc->bc",
        outputs["gating_weights"].double(),
        outputs["expert_logits"].double()
        + torch.tensor(taus, dtype=torch.float64)[None, :, None] * log_prior,
    )
    # (float32 gates sum to 1 only to ~1e-7.)
    torch.testing.assert_close(adjusted + log_prior, gated_adjusted, rtol=1e-5, atol=1e-5)


def test_hnm_term_and_custom_tau_range():
    miner = HardNegativeMining_Proto(230, 16, k=3)
    outputs, targets = make_batch(seed=3)
    miner.update_prototypes(outputs["features"], targets["labels"])
    wrapper = BalancedExpertsLossWrapper(
        CFG,
        RULE,
        SG_TO_SYS,
        class_prior=COUNTS,
        tau_min=0.5,
        tau_max=1.5,
        lambda_scl=0,
        lambda_reg=0,
        lambda_hier=0,
        lambda_hnm=0.4,
    )
    total, parts = wrapper(outputs, targets, hard_negative_miner=miner)
    assert set(parts) == {"loss_dol", "loss_hnm"}
    taus = taus_oracle(4, 0.5, 1.5)
    log_prior = log_prior_oracle(COUNTS)
    dol = expert_ce_oracle(outputs["expert_logits"], targets["labels"], taus, log_prior)
    hnm = miner.compute_contrastive_loss(outputs["features"], targets["labels"])
    assert float(parts["loss_dol"]) == pytest.approx(dol, rel=1e-5)
    torch.testing.assert_close(total, parts["loss_dol"] + 0.4 * hnm)
    with pytest.raises(ValueError, match="hard_negative_miner"):
        wrapper(outputs, targets)


def test_uniform_prior_reduces_to_plain_cross_entropy_per_expert():
    wrapper = BalancedExpertsLossWrapper(
        CFG, RULE, SG_TO_SYS, class_prior=torch.ones(230), lambda_scl=0, lambda_reg=0
    )
    outputs, targets = make_batch(seed=4)
    labels = targets["labels"]
    logits = outputs["expert_logits"]
    plain = torch.stack([F.cross_entropy(logits[:, k], labels) for k in range(4)])
    torch.testing.assert_close(wrapper.expert_losses(logits, labels), plain)
    _, parts = wrapper(outputs, targets)
    torch.testing.assert_close(parts["loss_dol"], plain.mean())
    # ... and the hierarchical loss sees the plain gated ensemble (up to a per-sample constant).
    gated = torch.einsum("bk,bkc->bc", outputs["gating_weights"], logits)
    loss_sys, loss_sg = hierarchical_oracle(outputs["sys_logits"], gated, labels, SG_TO_SYS)
    assert float(parts["loss_sg"]) == pytest.approx(loss_sg, rel=1e-5)
    assert float(parts["loss_sys"]) == pytest.approx(loss_sys, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_finite_in_fp32_and_bf16(dtype):
    wrapper = BalancedExpertsLossWrapper(CFG, RULE, SG_TO_SYS, class_prior=COUNTS, lambda_reg=0.1)
    outputs, targets = make_batch(batch=32, seed=5)
    reference, reference_parts = wrapper(outputs, targets)
    low = {k: v.to(dtype).requires_grad_() for k, v in outputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = wrapper(low, targets)
    total.backward()
    assert total.dtype == torch.float32 and torch.isfinite(total)
    for name, value in low.items():
        assert value.grad is not None and torch.isfinite(value.grad).all(), name
    assert torch.isfinite(wrapper.center_loss.centers.grad).all()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    for name, value in parts.items():
        torch.testing.assert_close(
            value, reference_parts[name], rtol=tolerance, atol=tolerance, msg=name
        )


def test_degenerate_batches_are_finite():
    wrapper = BalancedExpertsLossWrapper(CFG, RULE, SG_TO_SYS, class_prior=COUNTS, lambda_reg=0.5)
    for labels in (
        torch.full((6,), 13),  # one class
        torch.tensor([0, 229]),  # batch of 2
        torch.tensor([13]),  # batch of 1
        torch.tensor([228, 228]),  # the rarest classes only
    ):
        outputs, targets = make_batch(labels=labels, requires_grad=True)
        total, parts = wrapper(outputs, targets)
        total.backward()
        assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
        for value in (*outputs.values(), wrapper.center_loss.centers):
            assert torch.isfinite(value.grad).all()
        wrapper.zero_grad()
    # A zero-count class (prior clamped at the floor) and a single expert without a gate.
    counts = COUNTS.clone()
    counts[5] = 0
    single = BalancedExpertsLossWrapper(
        SimpleNamespace(num_experts=1, feat_dim=16), RULE, SG_TO_SYS, class_prior=counts
    )
    outputs, targets = make_batch(num_experts=1, labels=torch.tensor([5, 5]))
    del outputs["gating_weights"]
    total, _ = single(outputs, targets)
    assert torch.isfinite(total) and single.expert_taus.tolist() == [1.0]


def test_preset_build_loss_and_validation():
    preset = LOSS_PRESETS["balanced_experts"]
    assert preset.wrapper_class is BalancedExpertsLossWrapper
    assert dict(preset.kwargs) == {
        "tau_min": 0.0,
        "tau_max": 2.0,
        "lambda_dol": 1.0,
        "lambda_hier": 1.0,
        "lambda_scl": 0.1,
        "lambda_reg": 0.001,
        "lambda_hnm": 0.0,
    }
    built = build_loss("balanced_experts", CFG, RULE, SG_TO_SYS, class_prior=COUNTS, tau_max=1.0)
    assert type(built) is BalancedExpertsLossWrapper
    assert built.expert_taus.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    torch.testing.assert_close(built.log_prior.double(), log_prior_oracle(COUNTS).float().double())
    with pytest.raises(ValueError, match="needs class_prior"):
        build_loss("balanced_experts", CFG, RULE, SG_TO_SYS)
    for setting in ("tau", "lambda_col", "gamma", "detach_ensemble"):  # not part of this preset
        with pytest.raises(TypeError):
            build_loss("balanced_experts", CFG, RULE, SG_TO_SYS, class_prior=COUNTS, **{setting: 1})
    with pytest.raises(ValueError, match="lambda_hier"):
        build_loss("balanced_experts", CFG, RULE, SG_TO_SYS, class_prior=COUNTS, lambda_hier=-1)
    with pytest.raises(ValueError, match="nothing to optimise"):
        BalancedExpertsLossWrapper(
            CFG,
            RULE,
            SG_TO_SYS,
            class_prior=COUNTS,
            lambda_dol=0,
            lambda_hier=0,
            lambda_scl=0,
            lambda_reg=0,
        )
    assert BALANCED_EXPERTS_TAU_RANGE == DEFAULT_EXPERT_TAU_RANGE


def test_reset_buffers_after_meta_construction():
    outputs, targets = make_batch(seed=7)
    reference = BalancedExpertsLossWrapper(CFG, RULE, SG_TO_SYS, class_prior=COUNTS)
    expected, _ = reference(outputs, targets)
    with torch.device("meta"):
        wrapper = BalancedExpertsLossWrapper(
            CFG, RULE, SG_TO_SYS.tolist(), class_prior=COUNTS.numpy()
        )
    wrapper.to_empty(device="cpu")
    for buffer in wrapper.buffers():
        buffer.zero_()
    wrapper.load_state_dict(reference.state_dict())
    wrapper.reset_buffers()
    total, _ = wrapper(outputs, targets)
    torch.testing.assert_close(total, expected)


# ------------------------------------------------------------------------------------------------
# The model with this preset
# ------------------------------------------------------------------------------------------------


def balanced_model(**overrides):
    return tiny_model(loss_preset="balanced_experts", class_prior=COUNTS.tolist(), **overrides)


def test_config_and_forward_with_labels():
    config = ResNet1DMoEConfig(loss_preset="balanced_experts", expert_tau_max=1.5)
    assert config.balanced_expert_taus() == pytest.approx(expert_taus(8, 0.0, 1.5).tolist())
    assert config.loss_overrides() == {"tau_max": 1.5}
    assert ResNet1DMoEConfig(num_experts=8).balanced_expert_taus() == taus_oracle(8)
    with pytest.raises(ValueError, match="expert_tau_min"):
        ResNet1DMoEConfig(expert_tau_min=2.5)
    with pytest.raises(ValueError, match="expert_tau_max"):
        ResNet1DMoEConfig(expert_tau_max=-1.0)
    model = balanced_model(expert_tau_min=0.25, lambda_hnm=0.1).train()
    assert type(model.physmoe_loss) is BalancedExpertsLossWrapper
    taus = model.physmoe_loss.expert_taus.tolist()
    assert taus == pytest.approx([0.25, 0.25 + 1.75 / 3, 0.25 + 3.5 / 3, 2.0])
    x = torch.rand(6, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 13, 61, 224, 13, 2])
    out = model(x, labels=labels)
    assert torch.isfinite(out.loss) and "loss_hnm" in out.loss_components
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="needs config.class_prior"):
        tiny_model(loss_preset="balanced_experts")
    with pytest.raises(ValueError, match="does not accept"):
        balanced_model(tau=1.0)
    with pytest.raises(ValueError, match="does not accept"):
        tiny_model(expert_tau_max=1.0)  # the physmoe preset has no expert taus


@pytest.mark.parametrize("mode", ["soft", "hard", "none"])
def test_model_logits_follow_the_balanced_rule(mode):
    model = balanced_model(hierarchical_inference=mode).eval()
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    log_prior = log_prior_oracle(COUNTS)
    expected = balanced_oracle(
        out.expert_logits, out.gating_weights, taus_oracle(4), log_prior
    ).float()
    torch.testing.assert_close(out.ensemble_logits, expected, rtol=1e-5, atol=1e-4)
    hierarchy = hierarchical_space_group_logits(
        expected, out.crystal_system_logits, model.label_crystal_systems, mode
    )
    torch.testing.assert_close(out.logits, hierarchy, rtol=1e-5, atol=1e-4)
    # The training loss sees the same balanced ensemble the model reports.
    same = balanced_expert_ensemble(
        out.expert_logits,
        out.gating_weights,
        model.physmoe_loss.expert_taus,
        model.physmoe_loss.log_prior,
    )
    torch.testing.assert_close(out.ensemble_logits, same, rtol=0, atol=0)


def test_balanced_logits_survive_save_and_load(tmp_path):
    model = balanced_model(hierarchical_inference="soft").eval()
    x = torch.rand(3, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(tmp_path)
    loaded = ResNet1D_MoE.from_pretrained(tmp_path).eval()
    assert loaded.config.loss_preset == "balanced_experts"
    torch.testing.assert_close(loaded.expert_taus, model.expert_taus)
    torch.testing.assert_close(loaded.log_class_prior, model.log_class_prior)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, expected)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_inference_prior_weight_adds_the_prior_back(weight):
    # w = 1: ideal experts (z_k = s + (1 - tau_k) log prior) give s + log prior, the posterior
    # under the training frequencies; in general the balanced ensemble + w log prior.
    x = torch.rand(4, 64, generator=torch.Generator().manual_seed(3))
    balanced, weighted = (
        balanced_model().eval(),
        balanced_model(inference_prior_weight=weight).eval(),
    )
    weighted.load_state_dict(balanced.state_dict())
    with torch.no_grad():
        plain, shifted = balanced(x), weighted(x)
    log_prior = log_prior_oracle(COUNTS).float()
    torch.testing.assert_close(
        shifted.ensemble_logits, plain.ensemble_logits + weight * log_prior, rtol=1e-5, atol=1e-4
    )
    torch.testing.assert_close(shifted.expert_logits, plain.expert_logits)
    # Training does not depend on it.
    labels = torch.tensor([0, 13, 61, 224])
    torch.manual_seed(0)
    loss_plain = balanced.train()(x, labels=labels).loss
    torch.manual_seed(0)
    torch.testing.assert_close(weighted.train()(x, labels=labels).loss, loss_plain)


def test_inference_prior_weight_is_validated():
    with pytest.raises(ValueError, match="inference_prior_weight must lie in"):
        ResNet1DMoEConfig(loss_preset="balanced_experts", inference_prior_weight=1.5)
    with pytest.raises(ValueError, match="applies to loss_preset='balanced_experts' only"):
        ResNet1DMoEConfig(inference_prior_weight=1.0)
