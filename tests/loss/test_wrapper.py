"""PhysMoELossWrapper / NoContrast, presets, build_loss, logit adjustment, validation, dtypes."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from physmoe.loss import (
    LOSS_PRESETS,
    BalancedSoftmaxLossWrapper,
    CrossEntropyLossWrapper,
    PhysMoELossWrapper,
    PhysMoELossWrapperNoContrast,
    build_loss,
)

from . import (
    CFG,
    RULE,
    SG_TO_SYS,
    center_oracle,
    contrastive_oracle,
    hierarchical_oracle,
    icl_oracle,
    make_batch,
)


def ensemble(outputs):
    return torch.einsum("bk,bkc->bc", outputs["gating_weights"], outputs["expert_logits"])


def test_total_and_components_match_oracles():
    weights = {
        "lambda_scl": 0.3,
        "lambda_dol": 0.7,
        "lambda_col": 0.4,
        "lambda_hier": 1.3,
        "lambda_reg": 0.05,
    }
    wrapper = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, **weights)
    outputs, targets = make_batch()
    labels = targets["labels"]
    total, parts = wrapper(outputs, targets)
    dol, col = icl_oracle(outputs["expert_logits"], outputs["gating_weights"], labels, {2, 3})
    loss_sys, loss_sg = hierarchical_oracle(
        outputs["sys_logits"], ensemble(outputs), labels, SG_TO_SYS
    )
    expected = {
        "loss_scl": contrastive_oracle(outputs["features"], labels, RULE),
        "loss_dol": dol,
        "loss_col": col,
        "loss_sys": loss_sys,
        "loss_sg": loss_sg,
        "loss_reg": center_oracle(
            outputs["features"], labels, wrapper.center_loss.centers.detach(), RULE
        ),
    }
    assert set(parts) == set(expected)
    for name, value in expected.items():
        assert float(parts[name]) == pytest.approx(value, rel=1e-4, abs=1e-5), name
    expected_total = (
        0.3 * expected["loss_scl"]
        + 0.7 * dol
        + 0.4 * col
        + 1.3 * (loss_sys + loss_sg)
        + 0.05 * expected["loss_reg"]
    )
    assert float(total.detach()) == pytest.approx(expected_total, rel=1e-4)


def test_spec_defaults():
    wrapper = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS)
    assert (wrapper.lambda_scl, wrapper.lambda_dol, wrapper.lambda_col) == (0.1, 1.0, 1.0)
    assert (wrapper.lambda_hier, wrapper.lambda_reg, wrapper.lambda_hnm, wrapper.tau) == (
        1.0,
        0.001,
        0.0,
        0.0,
    )
    assert (wrapper.contrastive.temperature, wrapper.contrastive.rule_threshold) == (0.07, 0.8)
    assert wrapper.icl.gamma == 2.0 and wrapper.icl.tail_expert_ids == (2, 3)
    assert (
        wrapper.center_loss.centers.shape == (230, 16)
        and wrapper.center_loss.prototype_weight == 0.5
    )
    # The feature size may also come from a transformers-style ``feature_dim``.
    other = SimpleNamespace(num_experts=2, tail_expert_ids=[], feature_dim=8)
    assert PhysMoELossWrapper(other, RULE, SG_TO_SYS).feat_dim == 8


def test_loss_dict_is_detached_and_zero_weights_are_omitted():
    outputs, targets = make_batch(requires_grad=True)
    keys = {
        "physmoe": {"loss_scl", "loss_dol", "loss_col", "loss_sys", "loss_sg", "loss_reg"},
        "physmoe_no_contrast": {"loss_dol", "loss_col", "loss_sys", "loss_sg", "loss_reg"},
        "scheme2": {"loss_scl", "loss_dol", "loss_col", "loss_sys", "loss_sg"},
    }
    for name, expected in keys.items():
        total, parts = build_loss(name, CFG, RULE, SG_TO_SYS)(outputs, targets)
        assert set(parts) == expected, name
        assert total.requires_grad and not any(v.requires_grad for v in parts.values())
    assert len(list(build_loss("scheme2", CFG, RULE, SG_TO_SYS).parameters())) == 0
    # Components with weight 0 are not computed: their inputs may be absent.
    only_moe = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, lambda_scl=0, lambda_hier=0, lambda_reg=0)
    reduced = {k: v for k, v in outputs.items() if k in ("expert_logits", "gating_weights")}
    _, parts = only_moe(reduced, targets)
    assert set(parts) == {"loss_dol", "loss_col"}


def test_presets_and_build_loss():
    assert set(LOSS_PRESETS) == {
        "physmoe",
        "physmoe_no_contrast",
        "scheme2",
        "cross_entropy",
        "balanced_softmax",
        "balanced_experts",
    }
    scheme2 = LOSS_PRESETS["scheme2"]
    assert scheme2.wrapper_class is PhysMoELossWrapper
    assert dict(scheme2.kwargs) == {
        "lambda_scl": 0.2,
        "lambda_dol": 0.5,
        "lambda_col": 0.3,
        "lambda_hier": 1.5,
        "lambda_reg": 0.0,
        "lambda_hnm": 0.0,
        "tau": 0.0,
    }
    assert LOSS_PRESETS["physmoe"].kwargs["lambda_reg"] == 0.001
    assert "lambda_scl" not in LOSS_PRESETS["physmoe_no_contrast"].kwargs
    with pytest.raises(TypeError):
        LOSS_PRESETS["physmoe"].kwargs["lambda_scl"] = 1.0  # read-only
    built = build_loss("scheme2", CFG, RULE, SG_TO_SYS)
    assert (built.lambda_scl, built.lambda_dol, built.lambda_col, built.lambda_hier) == (
        0.2,
        0.5,
        0.3,
        1.5,
    )
    assert built.center_loss is None
    assert build_loss("scheme2", CFG, RULE, SG_TO_SYS, lambda_hier=2.0).lambda_hier == 2.0
    assert (
        type(build_loss("physmoe_no_contrast", CFG, RULE, SG_TO_SYS))
        is PhysMoELossWrapperNoContrast
    )
    assert type(build_loss("cross_entropy", CFG, RULE, SG_TO_SYS)) is CrossEntropyLossWrapper
    balanced = build_loss("balanced_softmax", CFG, RULE, SG_TO_SYS, class_prior=torch.ones(230))
    assert type(balanced) is BalancedSoftmaxLossWrapper and balanced.tau == 1.0
    assert build_loss(LOSS_PRESETS["physmoe"], CFG, RULE, SG_TO_SYS).lambda_scl == 0.1
    with pytest.raises(ValueError, match="unknown loss preset"):
        build_loss("focal", CFG, RULE, SG_TO_SYS)
    with pytest.raises(ValueError, match="no contrastive term"):
        build_loss("physmoe_no_contrast", CFG, RULE, SG_TO_SYS, lambda_scl=0.1)


def test_logit_adjustment_is_ce_on_shifted_logits():
    generator = torch.Generator().manual_seed(3)
    counts = torch.randint(0, 50, (230,), generator=generator).float()
    counts[7] = 0.0
    tau = 0.7
    prior = (counts / counts.sum()).clamp_min(1e-6)
    shift = tau * prior.log()
    outputs, targets = make_batch(seed=3)
    labels = targets["labels"]
    wrapper = PhysMoELossWrapper(
        CFG, RULE, SG_TO_SYS, tau=tau, class_prior=counts, lambda_scl=0, lambda_reg=0
    )
    _, parts = wrapper(outputs, targets)
    dol, col = icl_oracle(
        outputs["expert_logits"], outputs["gating_weights"], labels, {2, 3}, adjustment=shift
    )
    _, loss_sg = hierarchical_oracle(
        outputs["sys_logits"], ensemble(outputs) + shift, labels, SG_TO_SYS
    )
    assert float(parts["loss_dol"]) == pytest.approx(dol, rel=1e-5)
    assert float(parts["loss_col"]) == pytest.approx(col, rel=1e-5)
    assert float(parts["loss_sg"]) == pytest.approx(loss_sg, rel=1e-5)
    # One head expert, only L_dol: exactly the logit-adjusted cross-entropy.
    single = SimpleNamespace(num_experts=1, tail_expert_ids=[], feat_dim=16)
    only_dol = PhysMoELossWrapper(
        single,
        RULE,
        SG_TO_SYS,
        tau=1.0,
        class_prior=counts,
        lambda_scl=0,
        lambda_col=0,
        lambda_hier=0,
        lambda_reg=0,
    )
    logits = outputs["expert_logits"][:, :1]
    total, _ = only_dol({"expert_logits": logits}, targets)
    torch.testing.assert_close(total, F.cross_entropy(logits[:, 0] + prior.log(), labels))
    with pytest.raises(ValueError, match="needs class_prior"):
        PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, tau=1.0)
    with pytest.raises(ValueError, match="expected num_classes=230"):
        PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, tau=1.0, class_prior=torch.ones(10))


def test_input_validation():
    wrapper = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS)
    outputs, targets = make_batch()

    def run(**changes):
        modified = {**outputs, **{k: v for k, v in changes.items() if k != "labels"}}
        modified = {k: v for k, v in modified.items() if v is not None}
        return wrapper(modified, {"labels": changes.get("labels", targets["labels"])})

    bad_labels = targets["labels"].clone()
    bad_labels[3] = 230
    with pytest.raises(ValueError, match=r"0\.\.229, found 230"):
        run(labels=bad_labels)
    with pytest.raises(TypeError, match="integer"):
        run(labels=targets["labels"].float())
    with pytest.raises(ValueError, match="features"):
        run(features=outputs["features"][:-1])
    with pytest.raises(ValueError, match="features"):
        run(features=torch.randn(12, 8))
    with pytest.raises(ValueError, match="expected 4 experts"):
        run(expert_logits=torch.randn(12, 3, 230))
    with pytest.raises(ValueError, match="expert_logits"):
        run(expert_logits=torch.randn(12, 4, 229))
    with pytest.raises(ValueError, match="gating_weights"):
        run(gating_weights=torch.rand(12, 3))
    with pytest.raises(ValueError, match="sys_logits"):
        run(sys_logits=torch.randn(12, 6))
    with pytest.raises(ValueError, match="no 'sys_logits'"):
        run(sys_logits=None)
    with pytest.raises(ValueError, match="no 'labels'"):
        wrapper(outputs, {"label": targets["labels"]})
    with pytest.raises(TypeError, match="mapping"):
        wrapper([outputs["features"]], targets)
    with pytest.raises(ValueError, match="hard_negative_miner"):
        PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, lambda_hnm=0.1)(outputs, targets)


def test_construction_validation():
    with pytest.raises(ValueError, match="square"):
        PhysMoELossWrapper(CFG, RULE[:, :229], SG_TO_SYS)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PhysMoELossWrapper(CFG, RULE * 2, SG_TO_SYS)
    with pytest.raises(ValueError, match="non-finite"):
        PhysMoELossWrapper(CFG, RULE * float("nan"), SG_TO_SYS)
    rounded = PhysMoELossWrapper(CFG, RULE * (1 + 1e-7), SG_TO_SYS)  # float rounding is tolerated
    assert float(rounded.rule_matrix.max()) == 1.0
    with pytest.raises(ValueError, match=r"shape \[230\]"):
        PhysMoELossWrapper(CFG, RULE, SG_TO_SYS[:100])
    bad_map = SG_TO_SYS.clone()
    bad_map[0] = 7
    with pytest.raises(ValueError, match="0..6"):
        PhysMoELossWrapper(CFG, RULE, bad_map)
    with pytest.raises(ValueError, match="tail_expert_ids"):
        PhysMoELossWrapper(
            SimpleNamespace(num_experts=2, tail_expert_ids=[5], feat_dim=4), RULE, SG_TO_SYS
        )
    with pytest.raises(ValueError, match="num_experts"):
        PhysMoELossWrapper(SimpleNamespace(tail_expert_ids=[], feat_dim=4), RULE, SG_TO_SYS)
    with pytest.raises(ValueError, match="lambda_col"):
        PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, lambda_col=-1.0)
    with pytest.raises(ValueError, match="meta tensor"):
        PhysMoELossWrapper(CFG, RULE, torch.empty(230, dtype=torch.long, device="meta"))
    zero = dict.fromkeys(
        ("lambda_scl", "lambda_dol", "lambda_col", "lambda_hier", "lambda_reg"), 0.0
    )
    with pytest.raises(ValueError, match="every loss weight is 0"):
        PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, **zero)(*make_batch())


def test_validate_false_and_input_forms_give_identical_results():
    outputs, targets = make_batch(seed=5)
    reference, parts = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS)(outputs, targets)
    torch.manual_seed(0)  # same centres
    fast = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, validate=False)
    fast.load_state_dict(PhysMoELossWrapper(CFG, RULE, SG_TO_SYS).state_dict())
    slow = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS)
    slow.load_state_dict(fast.state_dict())
    as_list = OrderedDict({**outputs, "expert_logits": list(outputs["expert_logits"].unbind(1))})
    with_ensemble = {**outputs, "ensemble_logits": ensemble(outputs), "gating_weights": None}
    results = [
        slow(outputs, targets)[0],
        fast(outputs, targets)[0],
        slow(as_list, targets)[0],
        slow(outputs, targets["labels"].int())[0],
        slow(with_ensemble, targets)[0],
    ]
    for value in results[1:]:
        torch.testing.assert_close(value, results[0])


def test_degenerate_batches_give_finite_losses_and_gradients():
    wrapper = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, lambda_reg=0.5)
    for labels in (torch.tensor([13]), torch.full((6,), 13), torch.tensor([0, 50, 100, 200])):
        outputs, targets = make_batch(labels=labels, requires_grad=True)
        total, parts = wrapper(outputs, targets)
        total.backward()
        assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
        for value in (*outputs.values(), wrapper.center_loss.centers):
            assert torch.isfinite(value.grad).all()
        wrapper.zero_grad()


def test_reduced_precision_close_to_fp32():
    wrapper = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS, lambda_reg=0.1)
    outputs, targets = make_batch(batch=32, seed=6)
    reference, reference_parts = wrapper(outputs, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_total, _ = wrapper(outputs, targets)
    assert autocast_total.dtype == torch.float32
    torch.testing.assert_close(autocast_total, reference, rtol=1e-6, atol=1e-6)
    for dtype, tolerance in ((torch.bfloat16, 3e-2), (torch.float16, 3e-3)):
        low = {k: v.to(dtype).requires_grad_() for k, v in outputs.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, parts = wrapper(low, targets)
        total.backward()
        assert total.dtype == torch.float32
        assert all(torch.isfinite(v.grad).all() for v in low.values())
        for name, value in parts.items():
            torch.testing.assert_close(
                value, reference_parts[name], rtol=tolerance, atol=tolerance, msg=name
            )


def test_dtype_and_device_moves_and_buffers():
    wrapper = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS)
    assert set(wrapper.state_dict()) == {"center_loss.centers"}  # the constants are non-persistent
    buffers = dict(wrapper.named_buffers())
    assert {
        "rule_matrix",
        "positive_class_mask",
        "icl.tail_expert_mask",
        "hierarchical.sg_to_sys_map",
    } <= set(buffers)
    assert torch.equal(
        buffers["positive_class_mask"], (RULE > 0.8) | torch.eye(230, dtype=torch.bool)
    )
    outputs, targets = make_batch(seed=7)
    reference, _ = wrapper(outputs, targets)
    double = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS).double()
    double.load_state_dict(wrapper.state_dict())
    assert (
        double.rule_matrix.dtype == torch.float64
        and double.hierarchical.sg_to_sys_map.dtype == torch.long
    )
    total, _ = double({k: v.double() for k, v in outputs.items()}, targets)
    assert total.dtype == torch.float64
    torch.testing.assert_close(total.float(), reference, rtol=1e-5, atol=1e-5)
    bf16 = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS).to(torch.bfloat16)
    bf16.load_state_dict(wrapper.state_dict())
    assert bf16.positive_class_mask.dtype == torch.bool  # thresholds stay exact
    total, _ = bf16(outputs, targets)
    torch.testing.assert_close(total, reference, rtol=2e-2, atol=2e-2)


def test_gradcheck_full_wrapper():
    mapping = torch.tensor([0, 0, 1, 1, 1, 2, 6, 6])
    rule = torch.rand(8, 8, generator=torch.Generator().manual_seed(8))
    rule = (rule + rule.T) / 2
    rule.fill_diagonal_(1.0)
    cfg = SimpleNamespace(num_experts=2, tail_expert_ids=[1], feat_dim=3)
    wrapper = PhysMoELossWrapper(
        cfg, rule, mapping, lambda_reg=0.5, temperature=0.5, detach_ensemble=False
    )
    wrapper = wrapper.double()
    labels = torch.tensor([0, 2, 2, 5, 7, 1])
    generator = torch.Generator().manual_seed(9)
    inputs = (
        torch.randn(6, 3, dtype=torch.float64, generator=generator),
        torch.randn(6, 7, dtype=torch.float64, generator=generator),
        torch.randn(6, 2, 8, dtype=torch.float64, generator=generator),
        torch.softmax(torch.randn(6, 2, dtype=torch.float64, generator=generator), dim=1),
    )

    def total(features, sys_logits, expert_logits, gating_weights):
        outputs = {
            "features": features,
            "sys_logits": sys_logits,
            "expert_logits": expert_logits,
            "gating_weights": gating_weights,
        }
        return wrapper(outputs, {"labels": labels})[0]

    assert torch.autograd.gradcheck(total, tuple(x.requires_grad_() for x in inputs))


def test_reset_buffers_after_meta_construction_and_to_empty():
    outputs, targets = make_batch(seed=10)
    reference_wrapper = PhysMoELossWrapper(
        CFG, RULE, SG_TO_SYS, tau=1.0, class_prior=torch.arange(1.0, 231.0)
    )
    reference, _ = reference_wrapper(outputs, targets)
    # As transformers does: build under the meta device, materialise uninitialised memory, then
    # load the persistent state and rebuild the non-persistent buffers.
    counts = torch.arange(1.0, 231.0).numpy()
    with torch.device("meta"):
        wrapper = PhysMoELossWrapper(CFG, RULE, SG_TO_SYS.tolist(), tau=1.0, class_prior=counts)
    assert wrapper.center_loss.centers.is_meta
    wrapper.to_empty(device="cpu")
    for buffer in wrapper.buffers():
        buffer.zero_()  # what uninitialised memory might hold
    wrapper.load_state_dict(reference_wrapper.state_dict())
    wrapper.reset_buffers()
    total, _ = wrapper(outputs, targets)
    torch.testing.assert_close(total, reference)
    wrapper.center_loss.reset_parameters()
    assert 0.05 < float(wrapper.center_loss.centers.detach().std()) < 0.15
