"""Calibration of the predicted space-group probabilities.

* :func:`expected_calibration_error`: ECE of the top-1 probability with equal-width bins
  (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).
* :class:`TemperatureScaler`: one temperature ``T`` fitted on the validation split by minimising
  the negative log-likelihood of ``softmax(logits / T)``. Dividing by ``T`` does not change the
  arg-max, so accuracy is untouched; only the confidence moves. ``T`` is a plain float so that it
  can be stored in the model config.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ._inputs import ScoreKind, as_labels, as_scores, log_probabilities, to_tensor

logger = logging.getLogger(__name__)

__all__ = ["TemperatureScaler", "expected_calibration_error", "top1_confidence_bins"]


def top1_confidence_bins(
    confidence: torch.Tensor, correct: torch.Tensor, num_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin ``(count, confidence_sum, correct_sum)``, each float64 ``[num_bins]``.

    Bin ``m`` (0-based) holds the confidences in ``(m / num_bins, (m + 1) / num_bins]``; the first
    bin also takes a confidence of exactly 0.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    # Edges m / M are correctly rounded divisions, so a hand-written loop over the same edges
    # puts every confidence into the same bin.
    upper_edges = torch.arange(1, num_bins + 1, dtype=torch.float64) / num_bins
    bin_index = torch.bucketize(confidence, upper_edges, right=False).clamp_max(num_bins - 1)
    count = torch.bincount(bin_index, minlength=num_bins).to(torch.float64)
    confidence_sum = torch.bincount(
        bin_index, weights=confidence.to(torch.float64), minlength=num_bins
    )
    correct_sum = torch.bincount(bin_index, weights=correct.to(torch.float64), minlength=num_bins)
    return count, confidence_sum, correct_sum


def _ece(confidence: torch.Tensor, correct: torch.Tensor, num_bins: int) -> float:
    """``sum_m |B_m| / N * |acc(B_m) - conf(B_m)|`` = ``sum_m |correct_m - conf_m| / N``."""
    _, confidence_sum, correct_sum = top1_confidence_bins(confidence, correct, num_bins)
    return float((correct_sum - confidence_sum).abs().sum() / confidence.shape[0])


def expected_calibration_error(
    logits, labels, num_bins: int = 15, input_type: ScoreKind = "auto"
) -> float:
    """Expected calibration error of the top-1 probability, a fraction in [0, 1].

    Args:
        logits: ``[N, C]`` logits or probabilities (see ``input_type``), numpy or torch.
        labels: ``[N]`` integer class labels.
        num_bins: Number of equal-width confidence bins ``(m/M, (m+1)/M]``.
        input_type: ``"logits"``, ``"probabilities"`` or ``"auto"`` (probabilities when every row
            is a probability vector).

    The prediction is the arg-max (first index on ties, as ``torch.argmax``), its confidence the
    predicted class's probability.
    """
    scores, log_probs = log_probabilities(logits, input_type)
    labels = as_labels(labels, scores.shape[0], scores.shape[1])
    predictions = scores.argmax(dim=1)
    confidence = log_probs.gather(1, predictions[:, None]).squeeze(1).exp()
    return _ece(confidence, predictions == labels, num_bins)


def _nll_derivatives(
    logits: torch.Tensor, labels: torch.Tensor, inverse_temperature: float
) -> tuple[float, float]:
    """First and second derivative of the mean NLL of ``softmax(beta * logits)`` w.r.t. ``beta``.

    ``NLL(beta) = mean(logsumexp(beta z) - beta z_y)`` is convex in ``beta``:
    ``NLL' = mean(E_p[z] - z_y)`` and ``NLL'' = mean(Var_p[z]) >= 0`` with ``p = softmax(beta z)``.
    """
    probs = torch.softmax(inverse_temperature * logits, dim=1)
    expected = (probs * logits).sum(dim=1)
    second_moment = (probs * logits.square()).sum(dim=1)
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    gradient = (expected - true_logit).mean()
    curvature = (second_moment - expected.square()).clamp_min(0.0).mean()
    return float(gradient), float(curvature)


def _without_hopeless(
    logits: torch.Tensor, labels: torch.Tensor, t_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` and ``labels`` without the samples whose true class has probability 0 at
    every temperature up to ``t_max``; a ValueError when that is every sample."""
    # Hard hierarchical inference gives the classes of other crystal systems the dtype's lowest
    # value: when it masked the true class, that sample's probability is 0 (below float64's
    # range) at every T in the bounds, its NLL infinite whatever T is. It says nothing about T.
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    hopeless = (logits.amax(dim=1) - true_logit) / t_max > -math.log(
        torch.finfo(torch.float64).tiny
    )
    if bool(hopeless.all()):
        raise ValueError(
            "every sample's true class has probability 0 at every temperature "
            "(masked out by hard "
            "hierarchical inference?): nothing to fit"
        )
    if bool(hopeless.any()):
        logger.info(
            "temperature fit leaves out %d of %d samples "
            "whose true class has probability 0 at every "
            "temperature (masked out by hard hierarchical inference)",
            int(hopeless.sum()),
            len(labels),
        )
        logits, labels = logits[~hopeless], labels[~hopeless]
    return logits, labels


def _minimise_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    low: float,
    high: float,
    tolerance: float,
    max_iterations: int,
) -> float:
    """The ``beta`` in ``[low, high]`` minimising the mean NLL of ``softmax(beta * logits)``:
    a bound when the minimum lies beyond it, else safeguarded Newton inside the bracket."""
    gradient_low, _ = _nll_derivatives(logits, labels, low)
    gradient_high, _ = _nll_derivatives(logits, labels, high)
    if gradient_low >= 0:
        return low
    if gradient_high <= 0:
        return high
    beta = min(max(1.0, low), high)
    for _ in range(max_iterations):
        gradient, curvature = _nll_derivatives(logits, labels, beta)
        if abs(gradient) < tolerance or high - low < 1e-12 * beta:
            break
        if gradient > 0:
            high = beta
        else:
            low = beta
        step = beta - gradient / curvature if curvature > 0 else float("nan")
        beta = step if low < step < high else 0.5 * (low + high)
    return beta


class TemperatureScaler:
    """Post-hoc temperature scaling: ``calibrated_logits = logits / temperature``.

    Fit on the validation split (never on test)::

        scaler = TemperatureScaler()
        temperature = scaler.fit(val_logits, val_labels)   # a plain float
        test_probs = scaler.transform(test_logits).softmax(-1)

    ``TemperatureScaler(temperature=t)`` rebuilds a fitted scaler from a stored value; the default
    ``1.0`` is the identity.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = self._check_temperature(temperature)

    @staticmethod
    def _check_temperature(temperature: float) -> float:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
            raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive finite number, got {temperature}")
        return float(temperature)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temperature={self.temperature:.6g})"

    def fit(
        self,
        logits,
        labels,
        bounds: tuple[float, float] = (0.05, 20.0),
        tolerance: float = 1e-10,
        max_iterations: int = 100,
    ) -> float:
        """Fit ``T`` by minimising the validation NLL; returns (and stores) ``T`` as a float.

        Args:
            logits: ``[N, C]`` validation logits (not probabilities), numpy or torch, any float
                dtype.
            labels: ``[N]`` integer labels.
            bounds: Search interval ``(T_min, T_max)``. A minimum at a bound is logged as a warning
                (e.g. a perfectly separated validation set drives ``T`` to ``T_min``).
            tolerance: Stop when ``|dNLL/dbeta|`` falls below this.
            max_iterations: Cap on safeguarded Newton steps.

        The NLL is convex in ``beta = 1 / T``; safeguarded Newton (Newton steps inside a bisection
        bracket) finds its minimum in a handful of deterministic steps.
        """
        logits = as_scores(logits, "logits")
        labels = as_labels(labels, logits.shape[0], logits.shape[1])
        t_min, t_max = (self._check_temperature(float(b)) for b in bounds)
        if not t_min < t_max:
            raise ValueError(f"bounds must satisfy T_min < T_max, got {bounds}")
        logits, labels = _without_hopeless(logits, labels, t_max)
        beta = _minimise_nll(logits, labels, 1.0 / t_max, 1.0 / t_min, tolerance, max_iterations)
        temperature = 1.0 / beta
        if beta in (1.0 / t_max, 1.0 / t_min):
            logger.warning(
                "Fitted temperature %.4g sits at the search bound %s", temperature, bounds
            )
        self.temperature = temperature
        return temperature

    def transform(self, logits):
        """``logits / T``, same type (numpy or torch), dtype and device as ``logits``."""
        return apply_temperature(logits, self.temperature)

    __call__ = transform


def apply_temperature(logits, temperature: float):
    """``logits / temperature``, kept inside the dtype's finite range.

    Hard hierarchical inference marks impossible classes with the dtype's lowest value; dividing
    that by a temperature below 1 would overflow to ``-inf``. Clamping keeps it the lowest finite
    value, so softmax still gives those classes exactly 0 and metrics see no non-finite logits.
    Same type (numpy or torch), dtype and device as ``logits``.
    """
    if isinstance(logits, torch.Tensor):
        if not logits.is_floating_point():
            raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
        return (logits / temperature).clamp_min(torch.finfo(logits.dtype).min)
    array = to_tensor(logits, "logits").numpy()
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"logits must be floating point, got dtype {array.dtype}")
    with np.errstate(over="ignore"):
        scaled = array / np.asarray(temperature, dtype=array.dtype)
    return np.maximum(scaled, np.finfo(array.dtype).min)
