"""Peak lists -> padded, checked tensors ``[batch, max_peaks]`` (positions, intensities, Miller
indices, d-spacings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch


class _PaddedPeaks(NamedTuple):
    two_theta: torch.Tensor  # [B, P] float64
    intensity: torch.Tensor  # [B, P] float64
    mask: torch.Tensor  # [B, P] bool
    hkl: torch.Tensor | None  # [B, P, 3] float64, zeros where unknown
    d_spacing: torch.Tensor | None  # [B, P] float64, NaN where unknown


def _peak_arrays(item, index: int) -> dict:
    """The arrays of one peak list (PeakList-like object or (two_theta, intensity) pair)."""
    if hasattr(item, "two_theta") and hasattr(item, "intensity"):
        return {
            "two_theta": item.two_theta,
            "intensity": item.intensity,
            "hkl": getattr(item, "hkl", None),
            "d_spacing": getattr(item, "d_spacing", None),
            "wavelength": getattr(item, "wavelength", None),
        }
    if isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
        return {"two_theta": item[0], "intensity": item[1]}
    raise TypeError(
        f"peak list {index} must have .two_theta and .intensity "
        "or be a (two_theta, intensity) pair, "
        f"got {type(item).__name__}"
    )


def _as_numpy(values, what: str = "values") -> np.ndarray:
    """``values`` as float64; ValueError naming ``what`` if they are not numbers (a string, too:
    ``"5"`` would otherwise pass as one peak)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, str | bytes):
        raise ValueError(f"{what} must be numbers, got the string {values!r}")
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be numbers, got {values!r} ({error})") from None


def _checked_peak_list(item, index: int, peaks_wavelength: float | None) -> dict:
    """The arrays of peak list ``index`` as float64 numpy, their lengths and wavelength checked."""
    arrays = _peak_arrays(item, index)
    for name in ("two_theta", "intensity", "d_spacing"):
        if arrays.get(name) is not None:
            arrays[name] = _as_numpy(arrays[name], f"peak list {index}: {name}").reshape(-1)
    if arrays.get("hkl") is not None:
        arrays["hkl"] = _as_numpy(arrays["hkl"], f"peak list {index}: hkl").reshape(-1, 3)
    count = arrays["two_theta"].size
    for name in ("intensity", "hkl", "d_spacing"):
        if arrays.get(name) is not None and len(arrays[name]) != count:
            raise ValueError(
                f"peak list {index}: two_theta has {count} values "
                f"but {name} has {len(arrays[name])}"
            )
    wavelength = arrays.get("wavelength")
    if (
        wavelength is not None
        and peaks_wavelength is not None
        and abs(float(wavelength) - peaks_wavelength) > 1e-6
    ):
        raise ValueError(
            f"peak list {index} was computed at wavelength {float(wavelength)} Angstrom but "
            f"peaks_wavelength is {peaks_wavelength}; pass peaks_wavelength={float(wavelength)}"
        )
    return arrays


def _check_values(two_theta: np.ndarray, intensity: np.ndarray, offsets: np.ndarray) -> None:
    """ValueError naming the peak list and peak of the first bad position or intensity.

    ``two_theta``, ``intensity``: all lists concatenated; ``offsets``: their cumulative lengths.
    """

    def fail(bad: np.ndarray, what: str) -> None:
        first = int(np.flatnonzero(bad)[0])
        index = int(np.searchsorted(offsets, first, side="right"))
        start = offsets[index - 1] if index > 0 else 0
        raise ValueError(f"peak list {index}, peak {first - start}: {what}")

    bad = ~np.isfinite(two_theta) | (two_theta <= 0) | (two_theta >= 180)
    if bad.any():
        fail(bad, f"two_theta must be finite and in (0, 180) degrees, got {two_theta[bad][0]}")
    bad = ~np.isfinite(intensity) | (intensity < 0)
    if bad.any():
        fail(bad, f"intensity must be finite and >= 0, got {intensity[bad][0]}")


def _pad(peaks: Sequence, peaks_wavelength: float | None, device) -> _PaddedPeaks:
    """Validate peak lists and pad them into batch tensors (see :func:`pad_peaks`)."""
    arrays = [_checked_peak_list(item, index, peaks_wavelength) for index, item in enumerate(peaks)]
    lengths = np.array([item["two_theta"].size for item in arrays], dtype=np.int64)
    offsets = np.cumsum(lengths)
    batch, width = len(lengths), int(lengths.max(initial=0))
    mask = np.arange(width)[None, :] < lengths[:, None]

    def concatenated(name: str, fill: float, shape: tuple = ()) -> np.ndarray:
        parts = [
            item[name]
            if item.get(name) is not None
            else np.full((item["two_theta"].size, *shape), fill)
            for item in arrays
        ]
        return np.concatenate(parts) if parts else np.zeros((0, *shape))

    def padded(values: np.ndarray, fill: float) -> torch.Tensor:
        out = np.full((batch, width, *values.shape[1:]), fill)
        out[mask] = values
        return torch.as_tensor(out, device=device)

    two_theta, intensity = concatenated("two_theta", 0.0), concatenated("intensity", 0.0)
    _check_values(two_theta, intensity, offsets)
    hkl = d_spacing = None
    if any(item.get("hkl") is not None for item in arrays):
        hkl = padded(concatenated("hkl", 0.0, (3,)), 0.0)
    if any(item.get("d_spacing") is not None for item in arrays):
        d_spacing = padded(concatenated("d_spacing", np.nan), np.nan)
    return _PaddedPeaks(
        padded(two_theta, 0.0),
        padded(intensity, 0.0),
        torch.as_tensor(mask, device=device),
        hkl,
        d_spacing,
    )


def pad_peaks(
    peaks: Sequence, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad peak lists of different lengths into batch tensors.

    Args:
        peaks: PeakList-like objects (``.two_theta``, ``.intensity``) or ``(two_theta, intensity)``
            pairs of arrays, lists or tensors.
        device: Where the tensors go (CPU if None).

    Returns:
        ``two_theta [B, P]`` and ``intensity [B, P]`` (float64, 0 in padding) and ``mask [B, P]``
        (bool, True for real peaks), ``P`` the longest list.

    Raises:
        ValueError: mismatched lengths, NaN/inf, 2θ outside (0, 180), negative intensity (the
            message names the peak list and peak).
    """
    padded = _pad(peaks, None, device)
    return padded.two_theta, padded.intensity, padded.mask
