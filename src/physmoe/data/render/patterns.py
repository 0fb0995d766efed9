"""The entry points: :func:`render_padded` (padded tensors), :func:`render_patterns` (peak lists)
and :class:`PatternRenderer`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..grid import CU_KA1, TwoThetaGrid
from .conditions import MeasurementConditions, SampledConditions
from .engine import _device_generator, _render_chunk, _render_sticks
from .padding import _pad, _PaddedPeaks
from .physics import convert_two_theta

_MODES = ("profile", "sticks")
# Patterns rendered together on CPU: their [rows, points] tensors stay in cache.
_CHUNK_ROWS = 32


def render_padded(
    two_theta: torch.Tensor,
    intensity: torch.Tensor,
    mask: torch.Tensor | None,
    grid: TwoThetaGrid,
    conditions: MeasurementConditions | SampledConditions | None = None,
    mode: str = "profile",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    peaks_wavelength: float = CU_KA1,
    hkl: torch.Tensor | None = None,
    d_spacing: torch.Tensor | None = None,
) -> torch.Tensor:
    """Render padded peak tensors into patterns on ``grid``.

    Args:
        two_theta: Peak positions ``[B, P]`` in degrees 2θ at ``peaks_wavelength``.
        intensity: Integrated intensities ``[B, P]`` (any scale, >= 0).
        mask: ``[B, P]`` bool, True for real peaks (None: all real).
        grid: The model's grid; its wavelength is the measurement's.
        conditions: Ranges to draw from (:class:`MeasurementConditions`), fixed per-pattern values
            (:class:`SampledConditions`), or None for :meth:`MeasurementConditions.clean`.
            Ignored in ``"sticks"`` mode.
        mode: ``"profile"`` or ``"sticks"`` (see the module docstring).
        generator: Source of all random numbers (the global one if None). A CPU generator also
            drives rendering on another device, through a generator seeded from it.
        device: Where to render (default: the device of ``two_theta``).
        peaks_wavelength: Wavelength (Angstrom) the positions were computed at; positions are
            converted to the grid's wavelength through d-spacing, and reflections that cannot be
            observed there (sin θ > 1) are dropped. Intensities are kept as they are (the
            Lorentz-polarisation factor is not recomputed).
        hkl: Miller indices ``[B, P, 3]`` for March-Dollase preferred orientation (rows of zeros
            where unknown).
        d_spacing: The reflections' d-spacings ``[B, P]`` (NaN where unknown) for the
            Debye-Waller factor and the preferred-orientation metric; where not given they are
            ``peaks_wavelength / (2 sin θ)``. (A simulator's Kα2 lines have the reflection's d,
            not that of their position; positions are always converted through the latter.)

    Returns:
        Float32 patterns ``[B, grid.num_points]``, each scaled to maximum 1; a pattern without
        observable peaks is all zeros.
    """
    device = torch.device(device) if device is not None else two_theta.device
    peaks = _checked_peaks(two_theta, intensity, mask, hkl, d_spacing, device)
    return _render(peaks, grid, conditions, mode, generator, device, peaks_wavelength)


def _render(
    peaks: _PaddedPeaks,
    grid: TwoThetaGrid,
    conditions: MeasurementConditions | SampledConditions | None,
    mode: str,
    generator: torch.Generator | None,
    device: torch.device,
    peaks_wavelength: float,
) -> torch.Tensor:
    """:func:`render_padded` of checked peak tensors on ``device``."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    batch = peaks.two_theta.shape[0]
    if batch == 0:
        return torch.zeros(0, grid.num_points, dtype=torch.float32, device=device)
    if mode == "sticks":
        position = convert_two_theta(peaks.two_theta, peaks_wavelength, grid.wavelength)
        valid = peaks.mask & torch.isfinite(position)
        return _render_sticks(torch.nan_to_num(position), peaks.intensity, valid, grid)

    generator = _device_generator(generator, device)
    cond = _sampled_conditions(conditions, batch, generator, device)
    patterns = torch.empty(batch, grid.num_points, dtype=torch.float32, device=device)
    chunks = _chunks(peaks.mask)
    for rows, width in chunks:
        patterns[rows] = _render_chunk(
            *(None if t is None else t[rows, :width] for t in peaks),
            cond if len(chunks) == 1 else cond.select(rows),
            grid,
            generator,
            peaks_wavelength,
        )
    return patterns


def _checked_peaks(two_theta, intensity, mask, hkl, d_spacing, device) -> _PaddedPeaks:
    """The peak tensors on ``device`` in float64 (mask bool), shapes and values checked once."""
    if two_theta.ndim != 2 or intensity.shape != two_theta.shape:
        raise ValueError(
            "two_theta and intensity must both be [batch, peaks], got "
            f"{tuple(two_theta.shape)} and {tuple(intensity.shape)}"
        )
    shape = tuple(two_theta.shape)
    for name, value, expected in (
        ("mask", mask, shape), ("hkl", hkl, (*shape, 3)), ("d_spacing", d_spacing, shape)
    ):  # fmt: skip
        if value is not None and tuple(value.shape) != expected:
            raise ValueError(f"{name} must be {expected}, got {tuple(value.shape)}")
    two_theta, intensity, hkl, d_spacing = (
        None if t is None else t.to(device=device, dtype=torch.float64)
        for t in (two_theta, intensity, hkl, d_spacing)
    )
    if mask is None:
        mask = torch.ones(shape, dtype=torch.bool, device=device)
    mask = mask.to(device=device, dtype=torch.bool)
    bad = mask & ~(
        (two_theta > 0) & (two_theta < 180) & torch.isfinite(intensity) & (intensity >= 0)
    )
    if bool(bad.any()):  # one host sync per batch
        row, col = torch.nonzero(bad)[0].tolist()
        raise ValueError(
            f"pattern {row}, peak {col}: need 0 < two_theta < 180 and finite intensity >= 0, got "
            f"two_theta={float(two_theta[row, col])}, intensity={float(intensity[row, col])}"
        )
    return _PaddedPeaks(two_theta, intensity, mask, hkl, d_spacing)


def _sampled_conditions(
    conditions: MeasurementConditions | SampledConditions | None,
    batch: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> SampledConditions:
    """Per-pattern values: drawn from ``conditions`` ranges (clean when None) or as given."""
    if conditions is None:
        conditions = MeasurementConditions.clean()
    if isinstance(conditions, MeasurementConditions):
        return conditions.sample(batch, generator=generator, device=device)
    if isinstance(conditions, SampledConditions):
        if conditions.batch_size != batch:
            raise ValueError(
                f"conditions were sampled for {conditions.batch_size} patterns, got {batch}"
            )
        return conditions.to(device)
    raise TypeError(
        "conditions must be MeasurementConditions or SampledConditions, got "
        f"{type(conditions).__name__}"
    )


def _chunks(mask: torch.Tensor) -> list[tuple[torch.Tensor | slice, int]]:
    """``(rows, width)`` pieces of the batch to render together, rows cut to ``width`` peaks.

    On the CPU: chunks of :data:`_CHUNK_ROWS` rows with similar peak counts, each cut to its own
    longest list (rows are padded to the batch's longest, thousands of lines for a large
    low-symmetry cell against ~100 for the median, and padding costs as much as peaks). On other
    devices the whole batch at once.
    """
    if mask.device.type != "cpu":
        return [(slice(0, mask.shape[0]), mask.shape[1])]
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    counts = torch.where(mask, positions, 0).amax(dim=1)
    if len(counts) <= _CHUNK_ROWS:  # one chunk: a view, no reordering copies
        return [(slice(0, len(counts)), max(int(counts.max()), 1))]
    order = torch.argsort(counts, stable=True)
    chunks = [order[start : start + _CHUNK_ROWS] for start in range(0, len(order), _CHUNK_ROWS)]
    return [(rows, max(int(counts[rows[-1]]), 1)) for rows in chunks]


def render_patterns(
    peaks: Sequence,
    grid: TwoThetaGrid,
    conditions: MeasurementConditions | SampledConditions | None = None,
    mode: str = "profile",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    peaks_wavelength: float = CU_KA1,
) -> torch.Tensor:
    """Render a batch of peak lists into patterns ``[B, grid.num_points]`` (float32, max 1).

    Args:
        peaks: PeakList-like objects (``.two_theta``, ``.intensity``; optional ``.hkl`` and
            ``.d_spacing`` used for preferred orientation and the Debye-Waller factor; optional
            ``.wavelength``, which must equal ``peaks_wavelength``) or ``(two_theta, intensity)``
            pairs of arrays, lists or tensors.
        grid, conditions, mode, generator, device, peaks_wavelength: as in :func:`render_padded`
            (``conditions=None`` renders clean patterns).

    Example::

        >>> grid = TwoThetaGrid()
        >>> patterns = render_patterns(
        ...     [(two_theta, intensity)], grid, MeasurementConditions.default(),
        ...     generator=torch.Generator().manual_seed(0),
        ... )
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    # _pad checks every value (and names the peak list); render_padded's check would repeat it.
    padded = _pad(peaks, peaks_wavelength, device)
    return _render(padded, grid, conditions, mode, generator, device, peaks_wavelength)


@dataclass
class PatternRenderer:
    """A grid, conditions and mode held together; calling it renders a batch of peak lists.

    Example::

        >>> renderer = PatternRenderer(TwoThetaGrid(), MeasurementConditions.default())
        >>> patterns = renderer(peak_lists, generator=torch.Generator().manual_seed(0))  # [B, 8500]
    """

    grid: TwoThetaGrid
    conditions: MeasurementConditions | None = None
    mode: str = "profile"
    peaks_wavelength: float = CU_KA1
    device: torch.device | str | None = None

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")

    def __call__(self, peaks: Sequence, generator: torch.Generator | None = None) -> torch.Tensor:
        return render_patterns(
            peaks,
            self.grid,
            self.conditions,
            mode=self.mode,
            generator=generator,
            device=self.device,
            peaks_wavelength=self.peaks_wavelength,
        )
