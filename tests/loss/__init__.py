"""Independent reference implementations of the loss spec's formulas, shared by the loss tests.

Each oracle follows the spec text literally, one sample / class / expert at a time, in float64,
and returns Python floats. Nothing here imports from physmoe.loss. Also the fixtures the wrapper
tests share (``make_batch``, ``RULE``, ``CFG``, ...).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from physmoe.crystallography import rule_similarity_matrix, sg_to_sys_map


def unit(row: torch.Tensor) -> torch.Tensor:
    row = row.double()
    return row / max(math.sqrt(float((row * row).sum())), 1e-12)


def log_softmax_row(row: torch.Tensor) -> torch.Tensor:
    row = row.double()
    top = float(row.max())
    return row - (top + math.log(float(torch.exp(row - top).sum())))


def contrastive_oracle(features, labels, rule_matrix, temperature=0.07, threshold=0.8) -> float:
    """Spec 2.1: rule-weighted contrastive loss; anchors lacking positives or negatives skipped."""
    batch = features.shape[0]
    f = [unit(features[i]) for i in range(batch)]
    y = [int(v) for v in labels]
    per_anchor = []
    for i in range(batch):
        sim = [float(f[i] @ f[j]) / temperature for j in range(batch)]
        top = max(sim)
        sim = [s - top for s in sim]  # the spec's row-max shift
        positives = [
            j
            for j in range(batch)
            if j != i and (y[i] == y[j] or float(rule_matrix[y[i], y[j]]) > threshold)
        ]
        weights = [1.0 - float(rule_matrix[y[i], y[j]]) for j in range(batch)]
        denominator = sum(math.exp(s) * w for s, w in zip(sim, weights, strict=True))
        if not positives or not any(w > 0 for w in weights):
            continue
        log_denominator = math.log(denominator)
        per_anchor.append(-sum(sim[j] - log_denominator for j in positives) / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def icl_oracle(expert_logits, gating_weights, labels, tail_ids, gamma=2.0, adjustment=None):
    """Spec 2.2: (L_dol, L_col), both means over experts of batch means."""
    batch, num_experts, num_classes = expert_logits.shape
    shift = (
        torch.zeros(num_classes, dtype=torch.float64) if adjustment is None else adjustment.double()
    )
    dol, col = 0.0, 0.0
    for k in range(num_experts):
        dol_k, col_k = 0.0, 0.0
        for b in range(batch):
            log_probs = log_softmax_row(expert_logits[b, k].double() + shift)
            ce = -float(log_probs[int(labels[b])])
            dol_k += (1.0 - math.exp(-ce)) ** gamma * ce if k in tail_ids else ce
            ensemble = sum(
                float(gating_weights[b, j]) * expert_logits[b, j].double()
                for j in range(num_experts)
            )
            ensemble_log_probs = log_softmax_row(ensemble + shift)
            col_k += sum(
                math.exp(float(e)) * (float(e) - float(p))
                for e, p in zip(ensemble_log_probs, log_probs, strict=True)
            )
        dol += dol_k / batch
        col += col_k / batch
    return dol / num_experts, col / num_experts


def hierarchical_oracle(sys_logits, sg_logits, labels, sg_to_sys):
    """Spec 2.3: (L_sys, L_sg) with L_sg restricted to the true crystal system's groups."""
    batch = labels.shape[0]
    loss_sys, loss_sg = 0.0, 0.0
    for b in range(batch):
        y = int(labels[b])
        system = int(sg_to_sys[y])
        loss_sys += -float(log_softmax_row(sys_logits[b])[system])
        allowed = [c for c in range(sg_logits.shape[1]) if int(sg_to_sys[c]) == system]
        z = sg_logits[b].double()
        top = max(float(z[c]) for c in allowed)
        log_sum = top + math.log(sum(math.exp(float(z[c]) - top) for c in allowed))
        loss_sg += log_sum - float(z[y])
    return loss_sys / batch, loss_sg / batch


def center_oracle(features, labels, centers, rule_matrix, prototype_weight=0.5) -> float:
    """Spec 2.4: L_center + 0.5 * L_prototype with row-normalised, zero-diagonal rule weights."""
    num_classes = centers.shape[0]
    u = [unit(centers[c]) for c in range(num_classes)]
    loss_center = sum(
        1.0 - float(unit(features[b]) @ u[int(labels[b])]) for b in range(features.shape[0])
    )
    loss_center /= features.shape[0]
    loss_prototype = 0.0
    for c in range(num_classes):
        weights = [float(rule_matrix[c, j]) if j != c else 0.0 for j in range(num_classes)]
        total = sum(weights)
        expected = (
            sum((w / total) * u[j] for j, w in enumerate(weights))
            if total > 0
            else torch.zeros_like(u[c])
        )
        loss_prototype += 1.0 - float(u[c] @ expected)
    return loss_center + prototype_weight * loss_prototype / num_classes


def hnm_oracle(features, labels, prototypes, hard_negatives, temperature=0.07) -> float:
    """Spec 3.1.4: -log(exp(pos/t) / (exp(pos/t) + mean(exp(neg/t)))) averaged over the batch."""
    total = 0.0
    for b in range(features.shape[0]):
        f = unit(features[b])
        pos = float(f @ unit(prototypes[int(labels[b])])) / temperature
        neg = [float(f @ unit(prototypes[int(n)])) / temperature for n in hard_negatives[b]]
        mean_neg = sum(math.exp(v) for v in neg) / len(neg)
        total += -math.log(math.exp(pos) / (math.exp(pos) + mean_neg))
    return total / features.shape[0]


# Shared by the loss-wrapper tests: the real rule matrix and system map, a 4-expert config and a
# batch generator whose classes include rule-similar pairs (positives beyond the same class).
RULE = rule_similarity_matrix()
SG_TO_SYS = sg_to_sys_map()
CFG = SimpleNamespace(num_experts=4, tail_expert_ids=[2, 3], feat_dim=16)
PAIRED_CLASSES = torch.tensor([0, 1, 2, 5, 9, 3, 10, 13, 61, 224, 225, 228])


def make_batch(batch=12, seed=0, num_experts=4, feat_dim=16, labels=None, requires_grad=False):
    """Random wrapper outputs ``{features [B, D], sys_logits [B, 7], expert_logits [B, K, 230],
    gating_weights [B, K]}`` and targets ``{labels [B]}`` (drawn from PAIRED_CLASSES)."""
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        index = torch.randint(0, len(PAIRED_CLASSES), (batch,), generator=generator)
        labels = PAIRED_CLASSES[index]
    batch = len(labels)
    outputs = {
        "features": torch.randn(batch, feat_dim, generator=generator),
        "sys_logits": torch.randn(batch, 7, generator=generator),
        "expert_logits": torch.randn(batch, num_experts, 230, generator=generator) * 2,
        "gating_weights": torch.softmax(torch.randn(batch, num_experts, generator=generator), 1),
    }
    if requires_grad:
        for value in outputs.values():
            value.requires_grad_()
    return outputs, {"labels": labels}
