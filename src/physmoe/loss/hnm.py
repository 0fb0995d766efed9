"""Prototype-based hard-negative mining (HNM).

:class:`HardNegativeMining_Proto` keeps one momentum-averaged feature prototype per class and a
running confusion matrix; its contrastive loss contrasts each sample's prototype with the
prototypes of the ``k`` classes its class is most often confused with.

Its state lives in two persistent float32 buffers (saved in the model's ``state_dict`` and
``model.safetensors``), updated by momentum, never by the optimiser. Under DDP the training loop
must apply the updates from the *global* batch on every process (DDP broadcasts buffers from
rank 0); nothing here updates the state implicitly, and the loss wrappers never call the updates.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from physmoe.loss.moe_loss import check_labels, check_tensor, full_precision, upcast

__all__ = ["HardNegativeMining_Proto"]


class HardNegativeMining_Proto(nn.Module):
    """Prototype hard-negative miner.

    Args:
        num_classes: ``C`` (at least 2).
        feat_dim: feature size ``D``.
        momentum: prototype smoothing and epoch decay factor (0.9).
        temperature: of the contrastive loss (0.07).
        k: hard negatives per sample (3; at most ``C - 1``).
        validate: check label ranges in every call (one host sync per call); shapes are always
            checked.

    Buffers (persistent, float32): ``prototypes`` ``[C, D]`` (zeros until a class is seen) and
    ``confusion_matrix`` ``[C, C]`` (rows: true class, columns: predicted class). The updates
    compute in float32 and write back in the buffers' dtype; keep this module in float32 (e.g.
    transformers' ``_keep_in_fp32_modules_strict``): bf16 cannot count beyond 256 exactly.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        momentum: float = 0.9,
        temperature: float = 0.07,
        k: int = 3,
        validate: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 to have negatives, got {num_classes}")
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be >= 1, got {feat_dim}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self._check_k(k, num_classes)
        self.num_classes = int(num_classes)
        self.feat_dim = int(feat_dim)
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.k = int(k)
        self.validate = bool(validate)
        self.register_buffer("prototypes", torch.zeros(num_classes, feat_dim, dtype=torch.float32))
        self.register_buffer(
            "confusion_matrix", torch.zeros(num_classes, num_classes, dtype=torch.float32)
        )

    @staticmethod
    def _check_k(k: int, num_classes: int) -> None:
        if isinstance(k, bool) or not (isinstance(k, int) and 1 <= k <= num_classes - 1):
            raise ValueError(
                f"k must be an int in 1..{num_classes - 1} (num_classes - 1), got {k!r}"
            )

    def _check_features(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = check_tensor(features, "features")
        if features.dim() != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(
                f"features must be [batch, {self.feat_dim}], got {list(features.shape)}"
            )
        if features.shape[0] != labels.shape[0]:
            raise ValueError(
                f"features have batch size {features.shape[0]}, labels {labels.shape[0]}"
            )
        return upcast(features)

    @torch.no_grad()
    def update_prototypes(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Momentum update of the prototypes of the classes present in the batch.

        ``prototype_c <- momentum * prototype_c + (1 - momentum) * mean_{y_b = c} f_b``: the
        momentum mean of the features ``[B, D]`` *as given* (no normalisation before averaging;
        :meth:`compute_contrastive_loss` normalises features and prototypes, its step 1).
        Classes absent from the batch keep their prototype. Per-class sums use ``index_add_``;
        computed in float32 (float64 features are rounded to the float32 buffer).
        """
        labels = check_labels(labels, self.num_classes, check_range=self.validate)
        features = self._check_features(features, labels).detach().float()
        sums = features.new_zeros(self.num_classes, self.feat_dim).index_add_(0, labels, features)
        # index_add_, not bincount: on CUDA bincount reads min and max on the host (a sync).
        ones = features.new_ones(labels.shape[0])
        counts = features.new_zeros(self.num_classes).index_add_(0, labels, ones)
        means = sums / counts.clamp_min(1)[:, None]
        old = self.prototypes.float()
        updated = self.momentum * old + (1.0 - self.momentum) * means
        self.prototypes.copy_(torch.where(counts[:, None] > 0, updated, old))

    @torch.no_grad()
    def update_confusion_matrix(
        self,
        predicted: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        predictions: torch.Tensor | None = None,
    ) -> None:
        """``confusion_matrix[true, predicted] += 1`` for every sample.

        The seed's signature and order: ``update_confusion_matrix(predicted, labels)``.

        Args:
            predicted: predicted classes ``[B]`` or logits/probabilities ``[B, C]`` (argmax).
            labels: true classes ``[B]`` (the rows).
            predictions: keyword-only alias of ``predicted`` (this package's former name), so
                ``update_confusion_matrix(labels=y, predictions=p)`` keeps working; give
                ``predicted`` or ``predictions``, not both.
        """
        if predicted is not None and predictions is not None:
            raise TypeError(
                "update_confusion_matrix got both 'predicted' and its alias 'predictions'; "
                "pass the predictions once"
            )
        predicted = predictions if predicted is None else predicted
        if predicted is None or labels is None:
            missing = [n for n, v in (("predicted", predicted), ("labels", labels)) if v is None]
            raise TypeError(
                f"update_confusion_matrix(predicted, labels) is missing {' and '.join(missing)}"
            )
        labels = check_tensor(labels, "labels")
        if labels.dim() != 1:
            raise ValueError(
                f"labels must be [batch] class indices, got {list(labels.shape)}; the order is "
                "update_confusion_matrix(predicted, labels), as in the seed implementation"
            )
        labels = check_labels(labels, self.num_classes, check_range=self.validate)
        predicted = check_tensor(predicted, "predicted")
        if predicted.dim() == 2:
            if predicted.shape != (labels.shape[0], self.num_classes):
                raise ValueError(
                    f"predicted logits must be [batch, {self.num_classes}], "
                    f"got {list(predicted.shape)}"
                )
            predicted = predicted.argmax(dim=1)
        elif predicted.shape != labels.shape:
            raise ValueError(
                "predicted must be [batch] classes or [batch, C] logits matching labels "
                f"{list(labels.shape)}, got {list(predicted.shape)}"
            )
        predicted = check_labels(
            predicted, self.num_classes, check_range=self.validate, name="predicted"
        )
        # Scatter-add in place (no host sync, unlike bincount on CUDA); repeated pairs accumulate.
        ones = torch.ones(labels.shape[0], dtype=self.confusion_matrix.dtype, device=labels.device)
        flat = labels * self.num_classes + predicted
        self.confusion_matrix.view(-1).index_add_(0, flat, ones)

    @torch.no_grad()
    def get_hard_negative_classes(self, labels: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """The ``k`` classes each label is most often predicted as, ``[B, k]`` (long).

        A batched top-k over the confusion-matrix rows of ``labels``, with the label's own
        column excluded (the diagonal counts correct predictions): the class itself is never
        returned. Ties (e.g. an all-zero row early in training) are broken by ``torch.topk``.
        """
        k = self.k if k is None else k
        self._check_k(k, self.num_classes)
        labels = check_labels(labels, self.num_classes, check_range=self.validate)
        return self._most_confused(labels, k)

    def _most_confused(self, labels: torch.Tensor, k: int) -> torch.Tensor:
        rows = self.confusion_matrix[labels].float()  # [B, C]
        rows.scatter_(1, labels[:, None], -torch.inf)
        return rows.topk(k, dim=1).indices

    def compute_contrastive_loss(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Prototype contrastive loss with hard negatives (scalar, batch mean).

        With unit features ``f``, unit prototypes ``p`` (the stored prototypes are momentum
        means of raw features; they are L2-normalised here, the spec's step 1; zero prototypes
        stay zero), ``t`` the temperature and ``N(b)`` the ``k`` hard-negative classes of ``y_b``:
        ``loss_b = -log(exp(f.p_y / t) / (exp(f.p_y / t) + mean_{n in N(b)} exp(f.p_n / t)))``,
        evaluated as a ``logsumexp``. Gradients flow into the features only.
        """
        labels = check_labels(labels, self.num_classes, check_range=self.validate)
        features = self._check_features(features, labels)
        with full_precision(features.device):
            dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
            features = F.normalize(features.to(dtype), dim=1)
            prototypes = F.normalize(self.prototypes.to(dtype), dim=1)
            hard_negatives = self._most_confused(labels, self.k)  # [B, k]
            # Cosine similarities over the temperature: own prototype [B, 1], hard negatives [B, k].
            positive = (features * prototypes[labels]).sum(dim=1, keepdim=True) / self.temperature
            negative = torch.einsum("bd,bkd->bk", features, prototypes[hard_negatives])
            negative = negative / self.temperature
            # mean_k exp(x_k) = exp(logsumexp(x - log k)): one logsumexp over [positive, negatives].
            log_k = math.log(hard_negatives.shape[1])
            scores = torch.cat([positive, negative - log_k], dim=1)  # [B, 1 + k]
            return (torch.logsumexp(scores, dim=1) - positive.squeeze(1)).mean()

    @torch.no_grad()
    def apply_epoch_momentum(self, momentum: float | None = None) -> None:
        """End-of-epoch decay of the confusion counts:
        ``confusion_matrix *= (1 - momentum)``.

        ``momentum``: as in the seed's ``apply_epoch_momentum(momentum=0.9)``; ``None`` (the
        default) uses the configured ``self.momentum`` (0.9 unless set otherwise), so with the
        defaults the counts are multiplied by 0.1.
        """
        momentum = self.momentum if momentum is None else momentum
        if isinstance(momentum, bool) or not (
            isinstance(momentum, numbers.Real) and 0 <= momentum <= 1
        ):
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        self.confusion_matrix.mul_(1.0 - float(momentum))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, momentum={self.momentum}, "
            f"temperature={self.temperature}, k={self.k}"
        )
