"""Logit-adjusted experts with the PhysMoE terms: the ``"balanced_experts"`` preset.

Beyond the loss specification (whose tail experts use focal loss): every expert ``k`` of ``K``
gets its own logit-adjusted cross-entropy ``CE(z_k + tau_k log(prior), y)`` with ``tau_k``
evenly spaced from ``tau_min`` to ``tau_max`` (0 and 2 by default, mean 1), the "logit-adjusted
experts" of BalPoE (Sarto et al. 2023; SADE 2022 uses tau = 0, 1, 2 for its three experts).

Why the ensemble is balanced. The logit-adjusted loss with strength ``tau`` is minimised by
``z_k = log p_bal(y | x) + (1 - tau_k) log prior(y) + c(x)``: ``tau = 0`` learns the
training (head-biased) posterior, ``tau = 1`` the balanced one (Balanced Softmax), ``tau = 2``
an inverse-prior, tail-biased one. A convex combination with weights ``g_k`` therefore carries
``(1 - sum_k g_k tau_k) log prior``, and

    balanced(x) = sum_k g_k z_k + (sum_k g_k tau_k - 1) log(prior)
                = sum_k g_k (z_k + tau_k log(prior)) - log(prior)

estimates ``log p_bal(y | x)`` up to a per-sample constant. With uniform weights ``g_k = 1/K``
and mean tau 1 the correction vanishes and this is BalPoE's test-time rule exactly (the plain
average of the unadjusted expert logits). The model's gate is input-dependent, so the model
uses the general form with its gating weights (``ResNet1D_MoE`` computes it as its
``ensemble_logits`` for this preset; :func:`balanced_expert_ensemble` is the same formula).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from physmoe.crystallography import NUM_CRYSTAL_SYSTEMS
from physmoe.loss.hnm import HardNegativeMining_Proto
from physmoe.loss.moe_loss import (
    DEFAULT_PRIOR_FLOOR,
    expert_logits_from_outputs,
    full_precision,
    labels_from_targets,
    log_class_prior,
    output_tensor,
    upcast,
)
from physmoe.loss.physics_contrast_loss import (
    _config_value,
    check_loss_weights,
    physics_terms,
    positive_class_mask,
)

__all__ = [
    "DEFAULT_EXPERT_TAU_RANGE",
    "BalancedExpertsLossWrapper",
    "balanced_expert_ensemble",
    "expert_taus",
]

#: Default ``(tau_min, tau_max)`` of the ``"balanced_experts"`` preset (mean tau 1).
DEFAULT_EXPERT_TAU_RANGE = (0.0, 2.0)


def expert_taus(
    num_experts: int,
    tau_min: float = DEFAULT_EXPERT_TAU_RANGE[0],
    tau_max: float = DEFAULT_EXPERT_TAU_RANGE[1],
) -> torch.Tensor:
    """Logit-adjustment strengths of the experts, float32 ``[num_experts]``.

    ``tau_k = tau_min + (tau_max - tau_min) * k / (K - 1)``: evenly spaced, expert 0 the plain
    (head) expert, expert ``K - 1`` the most tail-leaning; for K = 8 and the defaults 0, 2/7, ...,
    2. A single expert gets the midpoint ``(tau_min + tau_max) / 2``.
    """
    num_experts = int(num_experts)
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    for name, value in (("tau_min", tau_min), ("tau_max", tau_max)):
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if tau_min > tau_max:
        raise ValueError(f"tau_min ({tau_min}) must not exceed tau_max ({tau_max})")
    if num_experts == 1:
        taus = np.array([(tau_min + tau_max) / 2.0])
    else:
        taus = tau_min + (tau_max - tau_min) * np.arange(num_experts) / (num_experts - 1)
    # numpy, not torch: this may run inside transformers' meta-device context.
    return torch.from_numpy(taus.astype(np.float32))


def balanced_expert_ensemble(
    expert_logits: torch.Tensor,
    gating_weights: torch.Tensor | None,
    taus: torch.Tensor,
    log_prior: torch.Tensor,
) -> torch.Tensor:
    """The balanced ensemble ``sum_k g_k z_k + (sum_k g_k tau_k - 1) log(prior)`` ``[B, C]``.

    ``expert_logits`` ``[B, K, C]`` (unadjusted), ``gating_weights`` ``[B, K]`` (rows summing to
    1; ``None`` means uniform ``1/K``), ``taus`` ``[K]``, ``log_prior`` ``[C]``. See the module
    docstring for why this is balanced; with uniform weights and mean tau 1 it is the plain
    average of the expert logits.
    """
    batch, num_experts, num_classes = expert_logits.shape
    dtype = expert_logits.dtype
    if gating_weights is None:
        gating_weights = expert_logits.new_full((batch, num_experts), 1.0 / num_experts)
    if gating_weights.shape != (batch, num_experts):
        raise ValueError(
            f"gating_weights must be [batch, num_experts] = {[batch, num_experts]}, "
            f"got {list(gating_weights.shape)}"
        )
    if taus.shape != (num_experts,) or log_prior.shape != (num_classes,):
        raise ValueError(
            f"taus must be [{num_experts}] and log_prior [{num_classes}], got "
            f"{list(taus.shape)} and {list(log_prior.shape)}"
        )
    gating_weights = gating_weights.to(dtype)
    mixed = torch.einsum("bk,bkc->bc", gating_weights, expert_logits)
    mean_tau = gating_weights @ taus.to(dtype)  # [B]
    return mixed + (mean_tau - 1.0)[:, None] * log_prior.to(dtype)


class BalancedExpertsLossWrapper(nn.Module):
    """Logit-adjusted experts plus the PhysMoE terms (preset ``"balanced_experts"``).

    ``L_total = λ_dol L_dol + λ_hier (L_sys + L_sg) + λ_scl L_scl + λ_reg L_reg + λ_hnm L_hnm``
    with ``a = log(prior)`` ``[C]``, expert logits ``z_k`` and gating weights ``g_k``:

    * ``L_dol = mean_k mean_b CE(z_bk + tau_k a, y_b)``: each expert's logit-adjusted
      cross-entropy (the "division of labour" is by ``tau_k``, :func:`expert_taus`; no focal
      loss, no tail experts: ``cfg.tail_expert_ids`` is ignored);
    * ``L_sys = CE(sys_logits, system(y))`` and ``L_sg`` = the hierarchical loss's
      crystal-system-masked CE of ``balanced + a`` = ``sum_k g_k (z_k + tau_k a)``, i.e.
      Balanced Softmax on the balanced ensemble (:func:`balanced_expert_ensemble`, recomputed
      here from ``expert_logits`` and ``gating_weights``; ``outputs["ensemble_logits"]`` is not
      read). It is the term that trains the gate;
    * ``L_scl`` (physics contrastive), ``L_reg`` (centre regularisation), ``L_hnm`` (hard
      negatives, from the miner passed to ``forward``): as in
      :class:`~physmoe.loss.PhysMoELossWrapper`.

    No collaboration (KL) term: the experts are meant to differ. Defaults: ``tau_min`` 0,
    ``tau_max`` 2, ``λ_dol`` 1, ``λ_hier`` 1, ``λ_scl`` 0.1, ``λ_reg`` 0.001, ``λ_hnm`` 0 (the
    spec's weights for the kept terms, untuned). A component with weight 0 is neither computed
    nor reported. ``class_prior`` ``[C]`` (probabilities or counts; the training class
    frequencies) is required; zero counts are clamped to ``prior_floor`` before the log.

    ``forward(outputs, targets, hard_negative_miner=None)`` -> ``(total, loss_dict)`` with the
    unweighted, detached components ``loss_dol``, ``loss_sys``, ``loss_sg``, ``loss_scl``,
    ``loss_reg``, ``loss_hnm``. Computed in float32 with autocast off, vectorised over experts.
    """

    def __init__(
        self,
        cfg: Any,
        rule_matrix: torch.Tensor,
        sg_to_sys_map: torch.Tensor,
        *,
        class_prior: torch.Tensor | Sequence[float] | None = None,
        tau_min: float = DEFAULT_EXPERT_TAU_RANGE[0],
        tau_max: float = DEFAULT_EXPERT_TAU_RANGE[1],
        lambda_dol: float = 1.0,
        lambda_hier: float = 1.0,
        lambda_scl: float = 0.1,
        lambda_reg: float = 0.001,
        lambda_hnm: float = 0.0,
        prior_floor: float = DEFAULT_PRIOR_FLOOR,
        temperature: float = 0.07,
        rule_threshold: float = 0.8,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.num_experts = int(_config_value(cfg, "num_experts"))
        self.feat_dim = int(_config_value(cfg, "feat_dim", "feature_dim"))
        weights = {
            "lambda_dol": lambda_dol,
            "lambda_hier": lambda_hier,
            "lambda_scl": lambda_scl,
            "lambda_reg": lambda_reg,
            "lambda_hnm": lambda_hnm,
        }
        check_loss_weights(weights)
        if not any(value > 0 for value in weights.values()):
            raise ValueError("every loss weight is 0: nothing to optimise")
        self.lambda_dol, self.lambda_hier = float(lambda_dol), float(lambda_hier)
        self.lambda_scl, self.lambda_reg = float(lambda_scl), float(lambda_reg)
        self.lambda_hnm = float(lambda_hnm)
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.rule_threshold = float(rule_threshold)
        self.validate = bool(validate)

        (
            self._rule_matrix, self._sg_to_sys, self.contrastive, self.hierarchical,
            self.center_loss,
        ) = physics_terms(
            rule_matrix, sg_to_sys_map, self.feat_dim, lambda_scl=self.lambda_scl,
            lambda_reg=self.lambda_reg, temperature=temperature,
            rule_threshold=rule_threshold, validate=self.validate,
        )  # fmt: skip
        self.num_classes = self._rule_matrix.shape[0]
        if class_prior is None:
            raise ValueError(
                "BalancedExpertsLossWrapper needs class_prior, [num_classes] probabilities or "
                "counts (the training class frequencies)"
            )
        self._log_prior = log_class_prior(class_prior, self.num_classes, floor=prior_floor).numpy()
        self._taus = expert_taus(self.num_experts, self.tau_min, self.tau_max).numpy()

        for name, value in self._buffers_from_host().items():
            self.register_buffer(name, value, persistent=False)

    def _buffers_from_host(self) -> dict[str, torch.Tensor]:
        buffers = {
            "rule_matrix": torch.from_numpy(self._rule_matrix.copy()),
            "log_prior": torch.from_numpy(self._log_prior.copy()),
            "expert_taus": torch.from_numpy(self._taus.copy()),
        }
        if self.lambda_scl > 0:
            buffers["positive_class_mask"] = positive_class_mask(
                self._rule_matrix, self.rule_threshold
            )
        return buffers

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Rebuild every non-persistent buffer from the host copies, in place (device and dtype
        kept); needed after materialising a model built on the meta device."""
        for name, value in self._buffers_from_host().items():
            getattr(self, name).copy_(value)
        self.hierarchical.reset_buffers()
        if self.center_loss is not None:
            self.center_loss.reset_buffers()

    def expert_losses(self, expert_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each expert's logit-adjusted CE (batch mean) ``[K]`` from ``expert_logits``
        ``[B, K, C]`` and ``labels`` ``[B]``, all experts in one log-softmax."""
        logits = upcast(expert_logits)
        adjustment = self.expert_taus.to(logits.dtype)[:, None] * self.log_prior.to(logits.dtype)
        log_probs = F.log_softmax(logits + adjustment, dim=2)  # [B, K, C]
        index = labels[:, None, None].expand(-1, logits.shape[1], 1)
        return -log_probs.gather(2, index).squeeze(2).mean(dim=0)

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Mapping[str, torch.Tensor] | torch.Tensor,
        hard_negative_miner: HardNegativeMining_Proto | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = labels_from_targets(targets, self.num_classes, check_range=self.validate)
        batch = labels.shape[0]
        if self.lambda_hnm > 0 and hard_negative_miner is None:
            raise ValueError(
                "lambda_hnm > 0 needs the model's hard_negative_miner passed to forward()"
            )
        needs_features = self.lambda_scl > 0 or self.lambda_reg > 0 or self.lambda_hnm > 0
        features = (
            output_tensor(outputs, "features", (batch, self.feat_dim)) if needs_features else None
        )
        expert_logits = None
        if self.lambda_dol > 0 or self.lambda_hier > 0:
            expert_logits = expert_logits_from_outputs(
                outputs, batch, self.num_experts, self.num_classes
            )

        losses: dict[str, torch.Tensor] = {}
        weighted: list[torch.Tensor] = []
        with full_precision(labels.device):
            if self.lambda_dol > 0:
                losses["loss_dol"] = self.expert_losses(expert_logits, labels).mean()
                weighted.append(self.lambda_dol * losses["loss_dol"])
            if self.lambda_hier > 0:
                gating_weights = None
                if self.num_experts > 1 or outputs.get("gating_weights") is not None:
                    gating_weights = output_tensor(
                        outputs, "gating_weights", (batch, self.num_experts)
                    )
                balanced = balanced_expert_ensemble(
                    expert_logits, gating_weights, self.expert_taus, self.log_prior
                )
                sys_logits = output_tensor(outputs, "sys_logits", (batch, NUM_CRYSTAL_SYSTEMS))
                losses["loss_sys"], losses["loss_sg"] = self.hierarchical(
                    sys_logits, balanced + self.log_prior.to(balanced.dtype), labels
                )
                weighted.append(self.lambda_hier * (losses["loss_sys"] + losses["loss_sg"]))
            if self.lambda_scl > 0:
                losses["loss_scl"] = self.contrastive(
                    features, labels, self.rule_matrix, self.positive_class_mask
                )
                weighted.append(self.lambda_scl * losses["loss_scl"])
            if self.lambda_reg > 0:
                losses["loss_reg"] = self.center_loss(features, labels)
                weighted.append(self.lambda_reg * losses["loss_reg"])
            if self.lambda_hnm > 0:
                losses["loss_hnm"] = hard_negative_miner.compute_contrastive_loss(features, labels)
                weighted.append(self.lambda_hnm * losses["loss_hnm"])
        total = sum(weighted[1:], weighted[0])
        return total, {name: value.detach() for name, value in losses.items()}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_experts={self.num_experts}, "
            f"feat_dim={self.feat_dim}, tau_min={self.tau_min}, tau_max={self.tau_max}, "
            f"lambda_dol={self.lambda_dol}, lambda_hier={self.lambda_hier}, "
            f"lambda_scl={self.lambda_scl}, lambda_reg={self.lambda_reg}, "
            f"lambda_hnm={self.lambda_hnm}, validate={self.validate}"
        )
