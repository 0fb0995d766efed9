"""Ranked, calibrated space-group predictions for measured patterns and CIF files.

:class:`SpaceGroupPredictor` bundles a trained :class:`~physmoe.ResNet1D_MoE` with its
:class:`~physmoe.XRDFeatureExtractor` (the model's 2θ grid and wavelength)::

    >>> predictor = SpaceGroupPredictor.from_pretrained("outputs/quickstart")
    >>> result = predictor.predict_file("sample.xy", wavelength=1.54056)   # or a .cif
    >>> print(format_predictions([result]))

Probabilities are ``softmax(logits / T)`` with the temperature ``T`` fitted on the validation
split at the end of training (``config.calibration_temperature``; 1 when not fitted), so a
predicted 0.8 is right about 80 % of the time on data like the validation set.

Every prediction also names the groups a powder pattern cannot tell apart from the best one
(:func:`~physmoe.crystallography.indistinguishable_groups`: same Laue class and the same
systematic absences, e.g. P2, Pm and P2/m) with their summed probability, and with
``min_confidence`` it is marked ``uncertain`` when the best probability is below the threshold.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers.utils import FEATURE_EXTRACTOR_NAME

from .crystallography import (
    CRYSTAL_SYSTEMS,
    crystal_system_index,
    powder_equivalence_classes,
    powder_equivalence_index,
    space_group_symbol,
)
from .data.feature_extraction import XRDFeatureExtractor
from .data.grid import TwoThetaGrid
from .data.readers import read_pattern
from .data.render import MeasurementConditions, render_patterns
from .data.simulate import simulate_peaks
from .evaluation import apply_temperature
from .runtime import recommended_autocast, recommended_autocast_dtype

logger = logging.getLogger(__name__)

__all__ = [
    "SpaceGroupCandidate",
    "SpaceGroupPrediction",
    "SpaceGroupPredictor",
    "check_device",
    "check_min_confidence",
    "default_checkpoint",
    "format_predictions",
]

_CIF_SUFFIXES = (".cif", ".mcif")
_SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "resources" / "pretrained"


def default_checkpoint() -> Path:
    """The folder of the pretrained checkpoint shipped inside the package (a ``save_pretrained``
    folder with its model card), what ``physmoe predict`` uses when no model is named::

        >>> model = ResNet1D_MoE.from_pretrained(default_checkpoint())
        >>> predictor = SpaceGroupPredictor.from_pretrained(default_checkpoint())

    Raises ``FileNotFoundError`` when this installation carries no weights (a build without
    package data)."""
    if (
        not (_SHIPPED_CHECKPOINT / "config.json").is_file()
        or not (_SHIPPED_CHECKPOINT / "model.safetensors").is_file()
    ):
        raise FileNotFoundError(
            f"no pretrained checkpoint in {_SHIPPED_CHECKPOINT} (config.json and model.safetensors "
            "expected): this installation was built without the package data; reinstall physmoe "
            "or name a model folder"
        )
    return _SHIPPED_CHECKPOINT


@dataclass(frozen=True)
class SpaceGroupCandidate:
    """One ranked answer.

    Attributes:
        rank: 1 for the most probable group.
        space_group: International Tables number, 1..230.
        symbol: Hermann-Mauguin symbol (``"P2_1/c"``).
        crystal_system: Name of the group's crystal system.
        probability: Calibrated probability in [0, 1].
    """

    rank: int
    space_group: int
    symbol: str
    crystal_system: str
    probability: float


@dataclass
class SpaceGroupPrediction:
    """The answer for one pattern: top-k space groups and the crystal-system head's view.

    Attributes:
        source: Where the pattern came from (file name, or ``"pattern 0"``).
        candidates: The ``top_k`` most probable groups, best first.
        crystal_system_probabilities: Probability of each crystal system from the system head.
        uncertain: The best probability is below ``min_confidence`` (the candidates are still
            listed); always False without a threshold.
        min_confidence: The threshold the prediction was made with, or None.
        indistinguishable_space_groups: The best group's powder-equivalence set (numbers, the
            best group included): groups with the same Laue class and systematic absences,
            which a powder pattern cannot tell apart by its line positions.
        indistinguishable: Their Hermann-Mauguin symbols.
        indistinguishable_probability: Summed probability of that set (over the groups the
            model knows); at least the best group's probability.
        wavelength: For a pattern file, the wavelength (Angstrom) its 2θ axis was read at.
        wavelength_note: Where that wavelength came from, when not given by the caller (stated
            in the file's header, or assumed to be the model's); shown with the prediction.
    """

    source: str
    candidates: list[SpaceGroupCandidate]
    crystal_system_probabilities: dict[str, float] = field(default_factory=dict)
    uncertain: bool = False
    min_confidence: float | None = None
    indistinguishable_space_groups: tuple[int, ...] = ()
    indistinguishable: tuple[str, ...] = ()
    indistinguishable_probability: float | None = None
    wavelength: float | None = None
    wavelength_note: str | None = None

    @property
    def best(self) -> SpaceGroupCandidate:
        return self.candidates[0]

    def to_dict(self) -> dict:
        """A JSON-ready dict (what ``physmoe predict --json`` prints for each pattern)."""
        return {
            "source": self.source,
            "uncertain": self.uncertain,
            "min_confidence": self.min_confidence,
            "candidates": [dict(c.__dict__) for c in self.candidates],
            "indistinguishable": list(self.indistinguishable),
            "indistinguishable_space_groups": list(self.indistinguishable_space_groups),
            "indistinguishable_probability": self.indistinguishable_probability,
            "crystal_systems": dict(self.crystal_system_probabilities),
            "wavelength": self.wavelength,
            "wavelength_note": self.wavelength_note,
        }


def check_min_confidence(min_confidence: float | None) -> float | None:
    """``min_confidence`` as a float in [0, 1] (or None); a clear ValueError otherwise."""
    if min_confidence is None:
        return None
    if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float, np.number)):
        raise ValueError(f"min_confidence must be a number in [0, 1], got {min_confidence!r}")
    value = float(min_confidence)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"min_confidence must lie in [0, 1], got {min_confidence!r}")
    return value


def _same_grid(first: TwoThetaGrid, second: TwoThetaGrid) -> bool:
    """Equal up to JSON float rounding."""
    return first.num_points == second.num_points and all(
        math.isclose(getattr(first, name), getattr(second, name), rel_tol=1e-9)
        for name in ("two_theta_min", "two_theta_max", "wavelength")
    )


def check_top_k(top_k: int) -> int:
    """``top_k`` as an int >= 1 (an integral float is accepted); a TypeError/ValueError
    otherwise."""
    integral = isinstance(top_k, numbers.Integral) or (
        isinstance(top_k, float) and top_k.is_integer()
    )
    if isinstance(top_k, bool) or not integral:
        raise TypeError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return int(top_k)


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a ``torch.device``; a ValueError naming it when it is not a device name or
    this machine lacks it (``cuda`` without CUDA, ``cuda:3`` with two GPUs, ``mps``)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a torch device name ({error})") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                f"{build}); use --device cpu or leave --device out"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu")
    return parsed


class SpaceGroupPredictor:
    """Predict space groups with a trained model.

    Args:
        model: A :class:`~physmoe.ResNet1D_MoE` (put in eval mode here).
        feature_extractor: Converts patterns to the model grid (default: built from the config).
        temperature: Calibration temperature (default: ``config.calibration_temperature`` or 1).
        device: Where to run (default: the model's device).
        autocast_dtype: Autocast precision (default: physmoe's recommendation for the device;
            ``torch.float32`` disables autocast).
    """

    def __init__(
        self,
        model,
        feature_extractor: XRDFeatureExtractor | None = None,
        temperature: float | None = None,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.model = model.eval()
        if device is not None:
            self.model.to(check_device(device))
        self.device = next(model.parameters()).device
        self.feature_extractor = feature_extractor or XRDFeatureExtractor.from_config(model.config)
        self.grid = TwoThetaGrid.from_config(model.config)
        if not _same_grid(self.feature_extractor.grid, self.grid):
            # Its patterns would not fit the model (or be converted to the wrong wavelength).
            raise ValueError(
                f"the feature extractor's grid ({FEATURE_EXTRACTOR_NAME}) "
                f"{self.feature_extractor.grid} "
                f"differs from the model config's grid {self.grid}"
            )
        if temperature is None:
            temperature = float(getattr(model.config, "calibration_temperature", 1.0) or 1.0)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.autocast_dtype = (
            recommended_autocast_dtype(self.device) if autocast_dtype is None else autocast_dtype
        )
        numbers = model.config.space_group_numbers
        if numbers is None:
            raise ValueError(
                f"the model's {model.config.num_labels} labels are not known space groups: set "
                "config.label_space_groups or id2label names ending in '(number)'"
            )
        self.label_space_groups = np.asarray(numbers, dtype=np.int64)
        # Powder-equivalence set of every label, for the summed probability of the best one's.
        label_class = powder_equivalence_index()[self.label_space_groups - 1]
        self._label_powder_class = torch.from_numpy(label_class)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: torch.device | str | None = None, **kwargs
    ) -> SpaceGroupPredictor:
        """Load the model and its feature extractor from a checkpoint folder or Hub repository."""
        from .hub import check_checkpoint_location
        from .models.resnet1d_moe import ResNet1D_MoE

        if device is not None:
            check_device(device)  # before loading anything
        path = check_checkpoint_location(path)
        model = ResNet1D_MoE.from_pretrained(path)
        preprocessor = Path(path) / FEATURE_EXTRACTOR_NAME
        extractor = None
        if Path(path).is_dir() and not preprocessor.is_file():
            logger.warning(
                "no %s in %s: using the model config's grid", FEATURE_EXTRACTOR_NAME, path
            )
        elif Path(path).is_dir():
            try:
                extractor = XRDFeatureExtractor.from_pretrained(path)
            except (OSError, TypeError, ValueError) as error:  # a corrupt file is no missing one
                raise ValueError(
                    f"{preprocessor} is not a valid feature-extractor config: {error}"
                ) from error
        else:
            try:
                extractor = XRDFeatureExtractor.from_pretrained(path)
            except OSError:  # a Hub repository without the file
                logger.warning(
                    "no %s in %s: using the model config's grid", FEATURE_EXTRACTOR_NAME, path
                )
        return cls(model, extractor, device=device, **kwargs)

    # -- core -----------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_input_values(
        self,
        input_values: torch.Tensor,
        top_k: int = 5,
        sources: Sequence[str] | None = None,
        min_confidence: float | None = None,
    ) -> list[SpaceGroupPrediction]:
        """Predictions for patterns already on the model grid, ``[num_points]`` or
        ``[B, num_points]``, on any intensity scale.

        The model was trained on patterns scaled to maximum 1 with no negative values, so every
        row is brought there first (:meth:`normalize_input_values`: integer and other dtypes
        become float32, each row is divided by its maximum, small negative values from
        background subtraction are clipped to 0); rows that cannot be a pattern (non-finite
        values, no positive intensity, negative values outweighing the peaks) are refused with
        a ValueError naming the row and the reason.

        With ``min_confidence`` (in [0, 1]) a prediction whose best probability is below it is
        marked ``uncertain``."""
        min_confidence = check_min_confidence(min_confidence)
        top_k = min(check_top_k(top_k), self.model.config.num_labels)
        input_values = self.normalize_input_values(input_values, sources).to(self.device)
        if sources is not None and len(sources) != len(input_values):
            raise ValueError(f"{len(sources)} sources for {len(input_values)} patterns")
        probabilities, system_probabilities = self._probabilities(input_values)
        top_probabilities, top_labels = probabilities.topk(top_k, dim=-1)
        best_class, set_probabilities = self._best_powder_set(probabilities, top_labels[:, 0])
        top_probabilities, top_labels = top_probabilities.cpu().numpy(), top_labels.cpu().numpy()
        system_probabilities = system_probabilities.cpu().numpy()
        sources = [f"pattern {i}" for i in range(len(input_values))] if sources is None else sources
        predictions = []
        for row, source in enumerate(sources):
            candidates = self._candidates(top_labels[row], top_probabilities[row])
            systems = {
                name: float(p)
                for name, p in zip(CRYSTAL_SYSTEMS, system_probabilities[row], strict=True)
            }
            members = powder_equivalence_classes()[int(best_class[row])]
            best = candidates[0].probability
            predictions.append(
                SpaceGroupPrediction(
                    source,
                    candidates,
                    systems,
                    uncertain=min_confidence is not None and best < min_confidence,
                    min_confidence=min_confidence,
                    indistinguishable_space_groups=members,
                    indistinguishable=tuple(space_group_symbol(n) for n in members),
                    indistinguishable_probability=float(set_probabilities[row]),
                )
            )
        return predictions

    def _probabilities(self, input_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated space-group probabilities ``[B, num_labels]`` and crystal-system
        probabilities ``[B, 7]`` of model-ready ``input_values``, in float32."""
        with recommended_autocast(self.device, self.autocast_dtype):
            output = self.model(input_values)
        probabilities = torch.softmax(
            apply_temperature(output.logits.float(), self.temperature), dim=-1
        )
        system_probabilities = torch.softmax(output.crystal_system_logits.float(), dim=-1)
        return probabilities, system_probabilities

    def _best_powder_set(
        self, probabilities: torch.Tensor, best_labels: torch.Tensor
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Per row, the powder-equivalence set of the best label (an index into
        :func:`powder_equivalence_classes`) and the summed probability of its labels."""
        label_class = self._label_powder_class.to(probabilities.device)
        num_sets = int(label_class.max()) + 1
        class_probabilities = probabilities.new_zeros(len(probabilities), num_sets)
        class_probabilities.index_add_(1, label_class, probabilities)
        best_class = label_class[best_labels]
        set_probabilities = class_probabilities.gather(1, best_class[:, None])[:, 0].cpu().numpy()
        return best_class, set_probabilities

    def _candidates(
        self, labels: np.ndarray, probabilities: np.ndarray
    ) -> list[SpaceGroupCandidate]:
        """One row's ranked candidates from its top labels and their probabilities."""
        candidates = []
        for rank, (label, probability) in enumerate(zip(labels, probabilities, strict=True), 1):
            number = int(self.label_space_groups[label])
            candidates.append(
                SpaceGroupCandidate(
                    rank=rank,
                    space_group=number,
                    symbol=space_group_symbol(number),
                    crystal_system=CRYSTAL_SYSTEMS[crystal_system_index(number)],
                    probability=float(probability),
                )
            )
        return candidates

    def normalize_input_values(
        self, input_values, sources: Sequence[str] | None = None
    ) -> torch.Tensor:
        """``input_values`` as the model's input: float32 ``[B, num_points]``, every row scaled to
        maximum 1 (the model was trained on such patterns; a pattern on a 0-100 or counts scale,
        e.g. :func:`~physmoe.data.read_reference_npy`'s, would otherwise give another answer),
        negative values clipped to 0 (as :class:`~physmoe.XRDFeatureExtractor` does).

        Raises:
            ValueError: a wrong shape; a row with NaN/inf, without a positive value (all zero
                or negative) or whose most negative value exceeds its maximum in size (a
                sign-flipped or wrongly background-subtracted pattern); naming the row (and its
                source, from ``sources``).
        """
        if input_values is None or isinstance(input_values, (str, bytes)):
            raise TypeError(
                "input_values must be a tensor or array of intensities, "
                f"got {type(input_values).__name__}"
            )
        try:
            values = torch.as_tensor(input_values)
        except (TypeError, ValueError, RuntimeError) as error:  # e.g. a list holding strings
            raise TypeError(
                f"input_values must be a tensor or array of intensities: {error}"
            ) from error
        if values.dim() == 1:
            values = values[None]
        num_points = self.grid.num_points
        if values.dim() != 2 or values.shape[1] != num_points:
            raise ValueError(
                f"input_values must be [num_points] or [batch, num_points] on the model grid "
                f"({num_points} points), got shape {tuple(values.shape)}; use predict() for "
                "patterns on their own 2theta axis"
            )
        if values.is_complex():
            raise ValueError(f"input_values must be real intensities, got dtype {values.dtype}")
        values = values.detach().to(torch.float64)
        finite = torch.isfinite(values).all(dim=1)
        clean = torch.where(finite[:, None], values, 0.0)
        peak, lowest = clean.amax(dim=1), clean.amin(dim=1)
        bad = ~finite | (peak <= 0) | (-lowest > peak)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0])
            high, low = float(peak[row]), float(lowest[row])
            if not bool(finite[row]):
                reason = "it has non-finite values (NaN or inf)"
            elif high <= 0:
                reason = "it is all zero" if low == 0 else "it has no positive intensity"
            else:
                reason = (
                    f"its most negative value {low:.4g} outweighs its maximum {high:.4g} "
                    "(sign-flipped, or a wrongly subtracted background?)"
                )
            name = f"pattern {row}"
            if sources is not None and row < len(sources):
                name += f" ({sources[row]})"
            raise ValueError(f"{name} cannot be a diffraction pattern: {reason}")
        rescaled = (peak - 1.0).abs() > 1e-6
        if bool(rescaled.any()):
            logger.info(
                "%d of %d patterns rescaled to maximum 1 (their maxima start %s)",
                int(rescaled.sum()),
                len(values),
                [round(float(v), 4) for v in peak[rescaled][:3]],
            )
        return (values.clamp_min(0.0) / peak[:, None]).to(torch.float32)

    # -- inputs from the outside world ----------------------------------------------------------

    def predict(
        self,
        two_theta: np.ndarray | Sequence[np.ndarray],
        intensity: np.ndarray | Sequence[np.ndarray],
        wavelength: float | Sequence[float] | None = None,
        top_k: int = 5,
        sources: Sequence[str] | None = None,
        min_confidence: float | None = None,
    ) -> list[SpaceGroupPrediction]:
        """Predictions for measured patterns: 2θ (degrees) and intensity arrays at ``wavelength``
        (Angstrom; default the model's), one pattern or a list. Converted to the model grid
        through d-spacing by the feature extractor. ``min_confidence`` (in [0, 1]): mark a
        prediction ``uncertain`` when its best probability is below it."""
        min_confidence = check_min_confidence(min_confidence)
        features = self.feature_extractor(
            two_theta, intensity, wavelength=wavelength, return_tensors="pt"
        )
        return self.predict_input_values(
            features["input_values"], top_k=top_k, sources=sources, min_confidence=min_confidence
        )

    def pattern_from_cif(self, path: str | os.PathLike) -> torch.Tensor:
        """The clean pattern ``[num_points]`` of a CIF's structure on the model grid."""
        peaks = simulate_peaks(
            path,
            wavelength=self.grid.wavelength,
            two_theta_range=(self.grid.two_theta_min, self.grid.two_theta_max),
        )
        if len(peaks.two_theta) == 0:
            raise ValueError(
                f"{path}: the structure has no reflection between {self.grid.two_theta_min} "
                f"and {self.grid.two_theta_max} deg"
            )
        return render_patterns(
            [peaks], self.grid, MeasurementConditions.clean(), peaks_wavelength=self.grid.wavelength
        )[0]

    def predict_file(
        self,
        path: str | os.PathLike,
        wavelength: float | None = None,
        top_k: int = 5,
        min_confidence: float | None = None,
    ) -> SpaceGroupPrediction:
        """Prediction for a file: a CIF (its clean simulated pattern), a two-column pattern
        (``.xy``, ``.xye``, ``.csv``, ...) or an instrument file (``.xrdml``, ``.brml``, ``.raw``,
        ``.ras``); ``wavelength`` in Angstrom when the file does not say and it is not the
        model's. ``min_confidence``: as for :meth:`predict`."""
        min_confidence = check_min_confidence(min_confidence)
        path = Path(path)
        if path.suffix.lower() in _CIF_SUFFIXES:
            pattern = self.pattern_from_cif(path)
            return self.predict_input_values(
                pattern, top_k=top_k, sources=[path.name], min_confidence=min_confidence
            )[0]
        pattern = read_pattern(path, wavelength=wavelength)
        used_wavelength = pattern.wavelength if pattern.wavelength is not None else wavelength
        note = None
        if used_wavelength is None:
            logger.warning(
                "%s states no wavelength: assuming the model's (%.5f A)", path, self.grid.wavelength
            )
            note = f"not stated: assumed the model's {self.grid.wavelength:g} A; pass --wavelength"
        elif wavelength is None:
            note = f"{used_wavelength:g} A stated in the file; pass --wavelength to override"
        prediction = self.predict(
            pattern.two_theta,
            pattern.intensity,
            wavelength=used_wavelength,
            top_k=top_k,
            sources=[path.name],
            min_confidence=min_confidence,
        )[0]
        prediction.wavelength = float(used_wavelength or self.grid.wavelength)
        prediction.wavelength_note = note
        return prediction


def format_predictions(predictions: Sequence[SpaceGroupPrediction]) -> str:
    """A readable fixed-width table of ranked predictions (what ``physmoe predict`` prints).

    An uncertain prediction is flagged ``uncertain`` on its title line; below the candidates,
    the best group's powder-indistinguishable set and its summed probability."""
    lines = []
    header = (
        f"{'rank':>4}  {'space group':<18} {'no.':>4}  {'crystal system':<14} {'probability':>11}"
    )
    for prediction in predictions:
        title = prediction.source
        if prediction.crystal_system_probabilities:
            system, system_p = max(
                prediction.crystal_system_probabilities.items(), key=lambda item: item[1]
            )
            title += f"  (crystal-system head: {system} {system_p:.3f})"
        if prediction.uncertain:
            title += (
                f"  uncertain: best probability {prediction.best.probability:.3f} < "
                f"min-confidence {prediction.min_confidence:g}"
            )
        lines.append(title)
        if prediction.wavelength_note:
            lines.append(f"wavelength: {prediction.wavelength_note}")
        lines.append(header)
        lines.append("-" * len(header))
        for c in prediction.candidates:
            lines.append(
                f"{c.rank:>4}  {c.symbol:<18} {c.space_group:>4}  "
                f"{c.crystal_system:<14} {c.probability:>11.3f}"
            )
        if prediction.indistinguishable:
            line = f"indistinguishable by powder: {', '.join(prediction.indistinguishable)}"
            if prediction.indistinguishable_probability is not None:
                line += f"  (summed probability {prediction.indistinguishable_probability:.3f})"
            lines.append(line)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
