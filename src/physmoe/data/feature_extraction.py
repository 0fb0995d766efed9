"""Measured (or simulated) powder patterns at any wavelength -> model input on the model's grid.

:class:`XRDFeatureExtractor` is a transformers ``SequenceFeatureExtractor``: it is saved next to
a model as ``preprocessor_config.json`` and loaded with ``from_pretrained``. A pattern is given as
2θ values (degrees) and intensities at its own wavelength; each 2θ is converted to d-spacing and
then to 2θ at the model's wavelength, the pattern is linearly interpolated onto the model grid
(zero outside the measured range), negative intensities (background-subtracted data) are clipped
to 0 and the pattern is scaled to maximum 1, as the training patterns are.

Example::

    >>> extractor = XRDFeatureExtractor.from_pretrained("path/to/model")
    >>> two_theta, intensity = np.loadtxt("sample.xy", unpack=True)
    >>> inputs = extractor(
    ...     two_theta, intensity, wavelength=1.78897, return_tensors="pt"
    ... )  # Co K-alpha
    >>> logits = model(**inputs).logits
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor

from ..utils import atomic_open
from .grid import CU_KA1, TwoThetaGrid
from .render import convert_two_theta

logger = logging.getLogger(__name__)

__all__ = ["XRDFeatureExtractor"]


def _as_list(values, name: str) -> tuple[list[np.ndarray], bool]:
    """A batch of 1-D float64 arrays, and whether the input was a single pattern."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        if values.ndim == 1:
            return [values.astype(np.float64)], True
        if values.ndim == 2:
            return [row.astype(np.float64) for row in values], False
        raise ValueError(
            f"{name} must be 1-D (one pattern) or 2-D / a list of 1-D arrays, "
            f"got shape {values.shape}"
        )
    if isinstance(values, Sequence) and not isinstance(values, str):
        if len(values) > 0 and all(np.ndim(v) == 0 for v in values):
            return [np.asarray(values, dtype=np.float64)], True
        batch = []
        for index, item in enumerate(values):
            if isinstance(item, torch.Tensor):
                item = item.detach().cpu().numpy()
            array = np.asarray(item, dtype=np.float64)
            if array.ndim != 1:
                raise ValueError(f"{name} of pattern {index} must be 1-D, got shape {array.shape}")
            batch.append(array)
        return batch, False
    raise TypeError(
        f"{name} must be an array, a tensor or a list of arrays, got {type(values).__name__}"
    )


class XRDFeatureExtractor(SequenceFeatureExtractor):
    """Turns 2θ/intensity patterns at any wavelength into ``input_values [B, num_points]``.

    Args:
        two_theta_min, two_theta_max, num_points, wavelength: The model's grid
            (:class:`~physmoe.data.grid.TwoThetaGrid`; default 5-90 deg, 8500 points, Cu Kα1).
        min_coverage: Smallest fraction of the grid a pattern must cover after conversion to
            the model's wavelength (default 0.5); patterns covering less are refused.
        **kwargs: Passed to ``SequenceFeatureExtractor`` (``feature_size=1``,
            ``padding_value=0.0`` and ``sampling_rate=num_points`` are fixed: the sampling rate
            has no meaning for diffraction patterns and only satisfies the transformers API).

    Patterns whose 2θ values are strictly decreasing are reversed; any other non-monotonic order
    (including repeated 2θ values) is refused, as are NaN/inf, mismatched lengths, fewer than two
    points and 2θ outside (0, 180) degrees. Points that cannot be observed at the model's
    wavelength (sin θ > 1) are dropped.
    """

    model_input_names = ["input_values"]

    def __init__(
        self,
        two_theta_min: float = 5.0,
        two_theta_max: float = 90.0,
        num_points: int = 8500,
        wavelength: float = CU_KA1,
        min_coverage: float = 0.5,
        **kwargs,
    ) -> None:
        for fixed in ("feature_size", "sampling_rate", "padding_value", "feature_extractor_type"):
            kwargs.pop(fixed, None)
        kwargs.setdefault("return_attention_mask", False)
        grid = TwoThetaGrid(
            float(two_theta_min), float(two_theta_max), int(num_points), float(wavelength)
        )
        if not 0.0 < float(min_coverage) <= 1.0:
            raise ValueError(f"min_coverage must lie in (0, 1], got {min_coverage}")
        super().__init__(feature_size=1, sampling_rate=grid.num_points, padding_value=0.0, **kwargs)
        self.two_theta_min = grid.two_theta_min
        self.two_theta_max = grid.two_theta_max
        self.num_points = grid.num_points
        self.wavelength = grid.wavelength
        self.min_coverage = float(min_coverage)

    @property
    def grid(self) -> TwoThetaGrid:
        """The model grid this extractor produces patterns on."""
        return TwoThetaGrid(
            self.two_theta_min, self.two_theta_max, self.num_points, self.wavelength
        )

    @classmethod
    def from_config(cls, config, **kwargs) -> XRDFeatureExtractor:
        """The extractor for a model config (anything with the four grid attributes)."""
        grid = TwoThetaGrid.from_config(config)
        return cls(
            grid.two_theta_min, grid.two_theta_max, grid.num_points, grid.wavelength, **kwargs
        )

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Write the configuration atomically (temporary file, then ``os.replace``)."""
        with atomic_open(json_file_path) as handle:
            handle.write(self.to_json_string())

    def __call__(
        self,
        two_theta,
        intensity,
        wavelength: float | Sequence[float] | None = None,
        return_tensors: str | None = None,
    ) -> BatchFeature:
        """Convert one pattern (1-D arrays) or a batch (lists of 1-D arrays, lengths may differ).

        Args:
            two_theta: 2θ in degrees at ``wavelength``, ascending (or strictly descending).
            intensity: Intensities, any scale (negative values are clipped to 0).
            wavelength: Wavelength in Angstrom of the measurement, one for all patterns or one per
                pattern (default: the model's wavelength; pass it for anything not measured at
                that wavelength).
            return_tensors: ``"pt"``, ``"np"`` or None (numpy).

        Returns:
            ``BatchFeature`` with ``input_values`` float32 ``[B, num_points]``, each row with
            maximum 1.

        Raises:
            ValueError: naming the pattern index, for NaN/inf, mismatched lengths, fewer than two
                points, non-monotonic 2θ, no positive intensity, or coverage of less than
                ``min_coverage`` of the grid (with the covered range at the model's wavelength).
        """
        positions, single = _as_list(two_theta, "two_theta")
        values, single_values = _as_list(intensity, "intensity")
        if single != single_values or len(positions) != len(values):
            raise ValueError(
                f"two_theta and intensity must both be one pattern or batches of equal size; got "
                f"{len(positions)} and {len(values)} patterns"
            )
        if len(positions) == 0:
            raise ValueError("no patterns given")
        wavelengths = self._wavelengths(wavelength, len(positions))
        grid = self.grid
        sorted_positions, sorted_values = [], []
        for index, (x, y) in enumerate(zip(positions, values, strict=True)):
            x, y = self._validated(index, x, y)
            sorted_positions.append(x)
            sorted_values.append(y)
        input_values = self._interpolate(sorted_positions, sorted_values, wavelengths, grid)
        return BatchFeature({"input_values": input_values}, tensor_type=return_tensors)

    def _wavelengths(self, wavelength, count: int) -> np.ndarray:
        if wavelength is None:
            return np.full(count, self.wavelength)
        wavelengths = np.asarray(wavelength, dtype=np.float64).reshape(-1)
        if wavelengths.size == 1:
            wavelengths = np.full(count, wavelengths[0])
        if wavelengths.size != count:
            raise ValueError(f"got {wavelengths.size} wavelengths for {count} patterns")
        bad = ~(np.isfinite(wavelengths) & (wavelengths > 0))
        if bad.any():
            raise ValueError(
                f"wavelength of pattern {int(np.flatnonzero(bad)[0])} must be positive, "
                f"got {wavelengths[bad][0]}"
            )
        return wavelengths

    @staticmethod
    def _validated(index: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if x.shape != y.shape:
            raise ValueError(
                f"pattern {index}: two_theta has {x.size} points but intensity has {y.size}"
            )
        if x.size < 2:
            raise ValueError(f"pattern {index}: need at least 2 points, got {x.size}")
        for name, array in (("two_theta", x), ("intensity", y)):
            if not np.all(np.isfinite(array)):
                bad = int(np.flatnonzero(~np.isfinite(array))[0])
                raise ValueError(f"pattern {index}: {name} has NaN or inf at point {bad}")
        if x.min() <= 0 or x.max() >= 180:
            raise ValueError(
                f"pattern {index}: two_theta must lie in (0, 180) degrees, got {x.min()}-{x.max()}"
            )
        step = np.diff(x)
        if np.all(step < 0):
            x, y = x[::-1], y[::-1]
        elif not np.all(step > 0):
            bad = int(np.flatnonzero(step <= 0)[0])
            raise ValueError(
                f"pattern {index}: two_theta must be strictly increasing (or strictly decreasing); "
                f"point {bad + 1} ({x[bad + 1]}) follows {x[bad]}"
            )
        return x, y

    def _interpolate(
        self, positions: list, values: list, wavelengths: np.ndarray, grid: TwoThetaGrid
    ) -> np.ndarray:
        """Convert to the model wavelength and interpolate onto the grid, batched: ``[B, L]``."""
        lengths = np.array([len(x) for x in positions])
        batch, width = len(positions), int(lengths.max())
        padded_x = np.full((batch, width), np.inf)
        padded_y = np.zeros((batch, width))
        filled = np.arange(width)[None, :] < lengths[:, None]
        padded_x[filled] = np.concatenate(positions)
        padded_y[filled] = np.concatenate(values)
        source = torch.from_numpy(padded_x)
        converted = convert_two_theta(
            source, torch.from_numpy(wavelengths)[:, None], grid.wavelength
        )
        observable = torch.isfinite(converted)  # NaN where sin θ > 1 (a tail, 2θ is monotonic)
        converted = torch.where(observable, converted, torch.inf)
        counts = observable.sum(dim=1)  # [B]
        first = converted[:, 0]
        last = torch.gather(converted, 1, (counts - 1).clamp_min(0)[:, None]).squeeze(1)

        target = torch.from_numpy(grid.values()).expand(batch, -1).contiguous()  # [B, L]
        inside = (target >= first[:, None]) & (target <= last[:, None]) & (counts[:, None] >= 2)
        coverage = inside.double().mean(dim=1)
        too_little = coverage < self.min_coverage - 1e-12
        if bool(too_little.any()):
            i = int(torch.nonzero(too_little)[0])
            low, high = float(first[i]), float(last[i])
            covered = (
                f"covers 2θ {low:.2f}-{high:.2f} deg at the model's wavelength {grid.wavelength} A"
                if counts[i] >= 1
                else f"has no point observable at the model's wavelength {grid.wavelength} A"
            )
            raise ValueError(
                f"pattern {i} (measured at {wavelengths[i]} A) {covered}: "
                f"{float(coverage[i]):.1%} of the model grid "
                f"{grid.two_theta_min}-{grid.two_theta_max} deg; "
                f"at least {self.min_coverage:.0%} is required"
            )
        right = torch.searchsorted(converted, target, right=True).clamp(1, width - 1)
        right = torch.minimum(right, (counts - 1).clamp_min(1)[:, None])
        left = right - 1
        x_left, x_right = torch.gather(converted, 1, left), torch.gather(converted, 1, right)
        intensity = torch.from_numpy(padded_y)
        y_left, y_right = torch.gather(intensity, 1, left), torch.gather(intensity, 1, right)
        weight = ((target - x_left) / (x_right - x_left)).clamp(0.0, 1.0)
        pattern = torch.where(inside, torch.lerp(y_left, y_right, weight), 0.0).clamp_min(0.0)
        peak = pattern.amax(dim=1)
        if bool((peak <= 0).any()):
            i = int(torch.nonzero(peak <= 0)[0])
            raise ValueError(f"pattern {i} has no positive intensity on the model grid")
        return (pattern / peak[:, None]).to(torch.float32).numpy()
