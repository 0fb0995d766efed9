"""The profile engine: peak lists and conditions -> patterns ``[batch, points]``.

How the profile mode is fast. The FWHM ``H(2θ)`` of a pattern is one smooth function of 2θ, so
on the axis ``u(2θ) = ∫ d2θ / H(2θ)`` (measured in FWHMs) every reflection has the same width,
one unit of ``u``. The sticks are spread onto a uniform ``u`` grid (8 points per FWHM) with cubic
B-spline weights at their exact positions, convolved with one pseudo-Voigt kernel per pattern by
FFT (the kernel's spectrum is analytic, so Lorentzian tails are never truncated, and the
B-spline's spectrum is divided out), and read back at the 2θ grid points by cubic interpolation.
Each stick's intensity is divided by its FWHM first, so profiles are area-normalised in 2θ. The
cost is two FFTs of a few thousand points per pattern, independent of the number of reflections
and of their widths. Compared with a direct sum of pseudo-Voigt profiles over the whole grid the
difference is about 0.1 % of the pattern maximum (tested below 0.3 % in
``tests/data/test_render.py``); it comes from the finite sampling of ``u`` and from the slow change
of the width across one profile (which a direct sum ignores).

Patterns are rendered in float32 (the ``[batch, points]`` work) with peak positions, the width
table and the metric fit in float64 (they are small), and come back float32; a model that runs
in bf16 casts its input itself. On CPU, patterns are rendered 32 at a time so that their tensors
stay in cache. Results are bitwise deterministic given the generator on CPU; on CUDA
``index_add_`` uses atomics, so the last bits may vary. Devices without float64 (Apple MPS) are
not supported.

On the CPU, the loops over lines (corrections, positions, spline taps), the pseudo-Voigt
spectrum, the width integral and the read-back with background and noise are compiled kernels
(:mod:`.compiled`): torch spends most of a CPU render on a chunk's padding (lines) and on
passes over ``[b, L]`` temporaries. They draw the same random numbers as the torch steps, give
identical sticks and patterns equal to ~2e-5 of the maximum (float32 rounding of the read-back
index), and the torch steps run everywhere else.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from ..grid import TwoThetaGrid
from .compiled import apply_pseudo_voigt, finish_patterns, spread_lines, width_integral
from .conditions import _MAX_BACKGROUND_DEGREE, SampledConditions
from .physics import (
    _fwhm_deg,
    _preferred_orientation_factors,
    add_counting_noise,
    random_cosines,
)

# FFT points per FWHM in the u axis; 8 keeps the splat/read-back error well below 1 % of a peak.
_POINTS_PER_FWHM = 8
# Reflections up to _MARGIN_FWHM FWHMs outside the grid still contribute their tails; the u domain
# extends twice as far so that periodic wrap-around of a Lorentzian tail stays below ~1e-4.
_MARGIN_FWHM = 20.0
# Width table: _TABLE_INNER_NODES nodes over the grid, extended by _TABLE_EXTENSION_DEG each side.
_TABLE_INNER_NODES = 512
_TABLE_EXTENSION_DEG = 20.0
# Background (smooth) is evaluated on this many points and interpolated onto the grid.
_BACKGROUND_NODES = 256
_FOUR_LN2 = 4.0 * math.log(2.0)
# The conditions that set a pattern's FWHM (besides the Scherrer constant), in the kernel's order.
_WIDTH_PARAMETERS = ("crystallite_size_nm", "microstrain", "caglioti_u", "caglioti_v", "caglioti_w")
# On the CPU the per-line and per-point loops run as the compiled kernels of ``compiled``; the
# torch steps (other devices) are the reference they are tested against (tests switch this off).
_COMPILED_ON_CPU = True


def _compiled(device: torch.device) -> bool:
    return _COMPILED_ON_CPU and device.type == "cpu"


@functools.lru_cache(maxsize=4096)
def _fast_fft_size(minimum: int) -> int:
    """Smallest n >= minimum of the form 2^a 3^b or 5 * 2^a 3^b (fast FFT sizes)."""
    n = max(int(minimum), 16)
    while True:
        m = n
        for p in (2, 3):
            while m % p == 0:
                m //= p
        if m in (1, 5):
            return n
        n += 1


@functools.lru_cache(maxsize=32)
def _grid_geometry(grid: TwoThetaGrid, device: torch.device) -> dict:
    """Per-grid constants: the width table's axis and the coarse background axis.

    The table's nodes are uniform, include the first and last grid points (so the grid points
    sit at fixed fractions between inner nodes), and extend up to ``_TABLE_EXTENSION_DEG``
    beyond the grid for reflections just outside it.
    """
    first = grid.two_theta_min
    last = grid.two_theta_min + (grid.num_points - 1) * grid.step
    spacing = (last - first) / (_TABLE_INNER_NODES - 1)
    extension = math.ceil(_TABLE_EXTENSION_DEG / spacing)
    below = max(0, min(extension, math.floor((first - 0.05) / spacing)))
    above = max(0, min(extension, math.floor((179.0 - last) / spacing)))
    axis = first + spacing * np.arange(-below, _TABLE_INNER_NODES + above)
    coarse = np.linspace(first, last, _BACKGROUND_NODES)
    x = np.linspace(-1.0, 1.0, _BACKGROUND_NODES)
    chebyshev = [np.ones_like(x), x]
    for _ in range(_MAX_BACKGROUND_DEGREE - 1):
        chebyshev.append(2 * x * chebyshev[-1] - chebyshev[-2])
    return {
        "table_first": float(axis[0]),
        "table_spacing": spacing,
        "table_axis": torch.as_tensor(axis, device=device),
        "inner": slice(below, below + _TABLE_INNER_NODES),
        "table_lerp": _lerp_weights(_TABLE_INNER_NODES, grid.num_points, device),
        "coarse_axis": torch.as_tensor(coarse, dtype=torch.float32, device=device),
        "coarse_lerp": _lerp_weights(_BACKGROUND_NODES, grid.num_points, device),
        "chebyshev": torch.as_tensor(np.stack(chebyshev), dtype=torch.float32, device=device),
    }


def _lerp_weights(
    num_nodes: int, num_points: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left node ``[L]`` and fraction ``[L]`` of ``num_points`` points spread evenly over
    ``num_nodes`` nodes, both ends included."""
    position = np.linspace(0.0, num_nodes - 1, num_points)
    left = np.minimum(np.floor(position), num_nodes - 2)
    return (
        torch.as_tensor(left, dtype=torch.int64, device=device),
        torch.as_tensor(position - left, dtype=torch.float32, device=device),
    )


def _lerp(values: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Linear interpolation of node values ``[B, K]`` to the points of ``weights`` -> ``[B, L]``."""
    left, fraction = weights
    left = left.expand(values.shape[0], -1)
    low = torch.gather(values, 1, left)
    return torch.lerp(low, torch.gather(values, 1, left + 1), fraction)


def _device_generator(
    generator: torch.Generator | None, device: torch.device
) -> torch.Generator | None:
    """A generator on ``device``: ``generator`` itself, or one seeded from it (deterministic)."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _scale_to_max_(pattern: torch.Tensor) -> torch.Tensor:
    """Clip at 0 and scale each row to maximum 1, in place; all-zero rows stay zero."""
    pattern.clamp_min_(0.0)
    peak = pattern.amax(dim=1, keepdim=True)
    return pattern.div_(torch.where(peak > 0, peak, 1.0))


def _render_sticks(
    two_theta: torch.Tensor, intensity: torch.Tensor, valid: torch.Tensor, grid: TwoThetaGrid
):
    """Reference binning: running maximum of the stick intensities in each grid bin."""
    batch = two_theta.shape[0]
    bins = torch.floor((two_theta - grid.two_theta_min) / grid.step)
    valid = valid & (bins >= 0) & (bins < grid.num_points)
    rows = torch.arange(batch, device=two_theta.device)[:, None] * grid.num_points
    flat_index = (rows + torch.where(valid, bins, 0).long()).reshape(-1)
    values = torch.where(valid, intensity, 0.0).reshape(-1).to(torch.float32)
    pattern = torch.zeros(batch * grid.num_points, dtype=torch.float32, device=two_theta.device)
    pattern.scatter_reduce_(0, flat_index, values, reduce="amax", include_self=True)
    return _scale_to_max_(pattern.view(batch, grid.num_points))


class _UAxis(NamedTuple):
    """The u axis of a chunk: FFT size and, per pattern, points per FWHM and node indices."""

    size: int  # FFT points (one size for the whole chunk)
    scale: torch.Tensor  # FFT points per unit u = the FWHM in points  [B]
    index_table: torch.Tensor  # FFT index of each width-table node  [B, T]
    index_step: torch.Tensor  # its increments  [B, T-1]


def _u_axis(geometry: dict, cond: SampledConditions, grid: TwoThetaGrid, batch: int) -> _UAxis:
    """u(2θ) on the width-table nodes, and the FFT grid that samples it."""
    inner = geometry["inner"]
    u_table = _width_integral(geometry, cond, grid, batch)

    # The u domain: the grid's u range plus two margins on each side, sampled with
    # _POINTS_PER_FWHM points per unit; reflections are kept within one margin of the grid.
    u_first, u_last = u_table[:, inner.start], u_table[:, inner.stop - 1]
    start = u_first - 2 * _MARGIN_FWHM
    span = u_last - u_first + 4 * _MARGIN_FWHM
    size = _fast_fft_size(math.ceil(_POINTS_PER_FWHM * float(span.max())) + 2)  # one sync per chunk
    scale = size / span
    index_table = (u_table - start[:, None]) * scale[:, None]
    return _UAxis(size, scale, index_table, torch.diff(index_table, dim=1))


def _width_integral(
    geometry: dict, cond: SampledConditions, grid: TwoThetaGrid, batch: int
) -> torch.Tensor:
    """u(2θ) on the table nodes ``[B, T]``: cumulative trapezoid of 1 / FWHM (float64)."""
    table_axis, spacing = geometry["table_axis"], geometry["table_spacing"]
    if _compiled(table_axis.device):
        return torch.from_numpy(
            width_integral(
                table_axis.numpy(), spacing, cond.scherrer_constant,
                *(getattr(cond, name).numpy() for name in _WIDTH_PARAMETERS),
                grid.wavelength, grid.step,
            )
        )  # fmt: skip
    inverse_fwhm = _fwhm_deg(table_axis.expand(batch, -1), cond, grid.wavelength, grid.step)
    inverse_fwhm = inverse_fwhm.reciprocal()
    u_table = torch.cumsum((inverse_fwhm[:, 1:] + inverse_fwhm[:, :-1]) * (spacing / 2), dim=1)
    return torch.nn.functional.pad(u_table, (1, 0))


def _stick_positions(
    two_theta: torch.Tensor,
    intensity: torch.Tensor,
    valid: torch.Tensor,
    geometry: dict,
    axis: _UAxis,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FFT index ``[B, P]`` (float32) and weight ``[B, P]`` of every reflection.

    The index is piecewise linear between table nodes. The intensity is divided by the FWHM
    (through d index / d2θ), which makes the profiles area-normalised in 2θ; reflections off
    the table or beyond one margin of the grid get weight 0.
    """
    num_nodes = geometry["table_axis"].shape[0]
    position = (two_theta - geometry["table_first"]) / geometry["table_spacing"]
    node = position.floor().clamp(0, num_nodes - 2)
    node_step = torch.gather(axis.index_step, 1, node.long())
    peak_index = torch.gather(axis.index_table, 1, node.long()) + (position - node) * node_step
    valid = valid & (position >= 0) & (position <= num_nodes - 1)
    margin = (axis.scale * _MARGIN_FWHM)[:, None]  # u_first - margin and u_last + margin
    valid = valid & (peak_index >= margin) & (peak_index <= axis.size - margin)
    weight = torch.where(valid, intensity * node_step, 0.0).float()
    return peak_index.float(), weight


def _spread_sticks(peak_index: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    """Each stick onto its 4 nearest FFT points with cubic B-spline weights -> ``[B, size]``.

    The weights are taken at the stick's exact sub-point position, and the B-spline's spectrum
    (sinc⁴) is divided out in the convolution, so a peak's shape does not depend on where it
    falls between points.
    """
    batch, device = peak_index.shape[0], peak_index.device
    left = peak_index.floor()
    s = peak_index - left
    one_minus = 1 - s
    s2 = s * s
    s3 = s2 * s
    weight = weight / 6
    tap_weight = torch.stack(
        [
            one_minus * one_minus * one_minus,
            3 * s3 - 6 * s2 + 4,
            -3 * s3 + 3 * s2 + 3 * s + 1,
            s3,
        ],
        dim=-1,
    ).mul_(weight.unsqueeze(-1))  # [B, P, 4]
    rows = torch.arange(batch, device=device)[:, None] * size
    first_tap = (left.long() - 1).clamp_(0, size - 4) + rows
    tap_index = first_tap.unsqueeze(-1) + torch.arange(4, device=device)
    sticks = torch.zeros(batch * size, dtype=torch.float32, device=device)
    sticks.index_add_(0, tap_index.reshape(-1), tap_weight.reshape(-1))
    return sticks.view(batch, size)


def _convolve_pseudo_voigt(
    sticks: torch.Tensor, axis: _UAxis, cond: SampledConditions
) -> torch.Tensor:
    """Convolution ``[B, size]`` with the area-normalised pseudo-Voigt of FWHM ``scale`` points.

    By FFT; the spectrum is analytic (no truncated tails), divided by that of the B-spline. On
    the CPU the multiplication is ``compiled.apply_pseudo_voigt`` (no exponentials per point).
    """
    size = axis.size
    spectrum = torch.fft.rfft(sticks)
    if _compiled(sticks.device):
        apply_pseudo_voigt(
            spectrum.numpy(), axis.scale.numpy(), cond.eta.numpy(), size, _unspread(size)
        )
        return torch.fft.irfft(spectrum, n=size)
    frequency = torch.arange(size // 2 + 1, device=sticks.device, dtype=torch.float32) / size
    unspread = torch.sinc(frequency).pow_(-4)
    x = (torch.pi * axis.scale.float())[:, None] * frequency
    eta = cond.eta.float()[:, None]
    pseudo_voigt = (
        torch.exp(-x)
        .mul_(eta)
        .add_(torch.exp(x.square_().mul_(-1 / _FOUR_LN2)).mul_(1 - eta))
        .mul_(unspread)
    )
    return torch.fft.irfft(spectrum.mul_(pseudo_voigt), n=size)


@functools.lru_cache(maxsize=64)
def _unspread(size: int) -> np.ndarray:
    """sinc(k / size)⁻⁴ for k = 0 .. size // 2 (float64): the inverse B-spline spectrum."""
    return np.sinc(np.arange(size // 2 + 1) / size) ** -4


def _read_back(profile_u: torch.Tensor, axis: _UAxis, geometry: dict) -> torch.Tensor:
    """The profiles ``[B, size]`` at the grid points ``[B, L]``.

    Cubic (4-point Lagrange) interpolation at each grid point's FFT index: linear interpolation
    would flatten peak tops by ~ln2 / 8² = 1 %. The index table is linear between nodes and its
    inner nodes include both grid ends.
    """
    size = axis.size
    grid_index = _lerp(axis.index_table[:, geometry["inner"]].float(), geometry["table_lerp"])
    left = grid_index.floor().clamp_(1, size - 3)
    t = grid_index.sub_(left)
    left = left.long().sub_(1)  # first of the 4 points
    t_minus_1, t_plus_1, t_minus_2 = t - 1, t + 1, t - 2
    a, b = t * t_minus_1, t_plus_1 * t_minus_2

    def point(k: int) -> torch.Tensor:  # profile_u at left + k, through a shifted view
        return torch.gather(profile_u[:, k:], 1, left)

    pattern = point(0).mul_(a * t_minus_2).mul_(-1 / 6)
    pattern.addcmul_(point(1), b.mul(t_minus_1), value=0.5)
    pattern.addcmul_(point(2), b.mul_(t), value=-0.5)
    pattern.addcmul_(point(3), a.mul_(t_plus_1), value=1 / 6)
    return pattern


def _background(cond: SampledConditions, grid: TwoThetaGrid, device: torch.device) -> torch.Tensor:
    """Polynomial background plus amorphous hump ``[B, L]`` relative to a peak maximum of 1.

    Both are smooth, so they are evaluated on ``_BACKGROUND_NODES`` points and interpolated.
    """
    coarse_lerp = _grid_geometry(grid, device)["coarse_lerp"]
    return _lerp(_coarse_background(cond, grid, device), coarse_lerp)


def _coarse_background(
    cond: SampledConditions, grid: TwoThetaGrid, device: torch.device
) -> torch.Tensor:
    """The background ``[B, _BACKGROUND_NODES]`` on its coarse nodes."""
    geometry = _grid_geometry(grid, device)
    coefficients = cond.background_coefficients.float()
    degree = coefficients.shape[1] - 1
    if degree > _MAX_BACKGROUND_DEGREE:
        raise ValueError(
            f"background_degree {degree} is above the supported maximum {_MAX_BACKGROUND_DEGREE}"
        )
    polynomial = coefficients @ geometry["chebyshev"][: degree + 1]  # [B, K]
    low = polynomial.amin(dim=1, keepdim=True)
    high = polynomial.amax(dim=1, keepdim=True)
    polynomial = (polynomial - low) / (high - low).clamp_min(1e-12)  # rescaled to [0, 1]
    offset = (
        geometry["coarse_axis"] - cond.amorphous_center_deg.float()[:, None]
    ) / cond.amorphous_fwhm_deg.float()[:, None]
    hump = cond.amorphous_height.float()[:, None] * torch.exp(-_FOUR_LN2 * offset.square())
    return cond.background_amplitude.float()[:, None] * polynomial + hump


def _render_chunk(
    two_theta: torch.Tensor,
    intensity: torch.Tensor,
    mask: torch.Tensor,
    hkl: torch.Tensor | None,
    d_spacing: torch.Tensor | None,
    cond: SampledConditions,
    grid: TwoThetaGrid,
    generator: torch.Generator | None,
    peaks_wavelength: float,
) -> torch.Tensor:
    """Render a few patterns at once (their tensors stay in cache): the lines' sticks on the u
    axis, pseudo-Voigt profiles through it (see the module docstring), background and noise
    ``[b, L]``. On the CPU the per-line work is one compiled call (``compiled.spread_lines``),
    elsewhere torch steps over the padded ``[b, P]`` tensors; both give the same sticks."""
    geometry = _grid_geometry(grid, two_theta.device)
    axis = _u_axis(geometry, cond, grid, batch=two_theta.shape[0])
    lines = _Lines(two_theta, intensity, mask, hkl, d_spacing)
    if _compiled(two_theta.device):
        sticks = _compiled_sticks(lines, cond, grid, generator, peaks_wavelength, geometry, axis)
    else:
        sticks = _torch_sticks(lines, cond, grid, generator, peaks_wavelength, geometry, axis)
    profile_u = _convolve_pseudo_voigt(sticks, axis, cond)
    if _compiled(two_theta.device) and not (cond.has_noise and cond.exact_poisson):
        return _compiled_finish(profile_u, axis, geometry, cond, grid, generator)
    return _torch_finish(profile_u, axis, geometry, cond, grid, generator)


def _torch_finish(profile_u, axis, geometry, cond, grid, generator) -> torch.Tensor:
    """Profiles ``[b, size]`` -> patterns ``[b, L]`` by torch steps: read back at the grid,
    scale, background, noise, scale (an all-zero pattern stays zero)."""
    pattern = _scale_to_max_(_read_back(profile_u, axis, geometry))
    if not (cond.has_background or cond.has_noise):
        return pattern
    has_signal = pattern.amax(dim=1, keepdim=True) > 0
    if cond.has_background:
        pattern += _background(cond, grid, pattern.device)
    if cond.has_noise:
        pattern = add_counting_noise(
            pattern, cond.counts, cond.read_noise, generator, cond.exact_poisson
        )
    return _scale_to_max_(pattern).mul_(has_signal)


def _compiled_finish(profile_u, axis, geometry, cond, grid, generator) -> torch.Tensor:
    """:func:`_torch_finish` as one ``compiled.finish_patterns`` call on the CPU (not for exact
    Poisson noise); the noise is drawn as :func:`add_counting_noise` draws it."""
    empty = np.zeros((0, 0), np.float32)
    background, noise = empty, empty
    read_variance = inverse_counts = np.zeros(axis.scale.shape[0], np.float32)
    if cond.has_background:
        background = _coarse_background(cond, grid, profile_u.device).numpy()
    if cond.has_noise:
        noise = torch.randn(
            (profile_u.shape[0], grid.num_points), generator=generator, dtype=torch.float32
        ).numpy()
        counts = cond.counts.float()
        read_variance = cond.read_noise.float().square().numpy()
        inverse_counts = torch.where(torch.isfinite(counts), counts.reciprocal(), 0.0).numpy()
    node_left, node_fraction = geometry["table_lerp"]
    background_left, background_fraction = geometry["coarse_lerp"]
    patterns = finish_patterns(
        profile_u.numpy(), axis.index_table[:, geometry["inner"]].float().numpy(),
        node_left.numpy(), node_fraction.numpy(), background, background_left.numpy(),
        background_fraction.numpy(), noise, read_variance, inverse_counts,
    )  # fmt: skip
    return torch.from_numpy(patterns)


class _Lines(NamedTuple):
    """A chunk's padded lines: ``[b, P]`` float64 positions (deg, at the peaks' wavelength),
    intensities, bool mask; ``[b, P, 3]`` Miller indices and ``[b, P]`` d-spacings or None."""

    two_theta: torch.Tensor
    intensity: torch.Tensor
    mask: torch.Tensor
    hkl: torch.Tensor | None
    d_spacing: torch.Tensor | None


def _line_d_spacing(lines: _Lines, peaks_wavelength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The d of each line's position, and the d of its reflection where known (else the same)."""
    sin_theta = torch.sin(torch.deg2rad(lines.two_theta) / 2).clamp_min(1e-12)
    line_d = peaks_wavelength / (2 * sin_theta)
    if lines.d_spacing is None:
        return line_d, line_d
    known = torch.isfinite(lines.d_spacing) & (lines.d_spacing > 0)
    return line_d, torch.where(known, lines.d_spacing, line_d)


def _torch_sticks(lines, cond, grid, generator, peaks_wavelength, geometry, axis) -> torch.Tensor:
    """The sticks ``[b, size]`` by torch steps over the padded lines (any device)."""
    # Intensity corrections: overall Debye-Waller and March-Dollase preferred orientation.
    line_d, d_spacing = _line_d_spacing(lines, peaks_wavelength)
    debye_waller = torch.exp(-cond.debye_waller_b[:, None] / (2 * d_spacing.square()))
    intensity = lines.intensity * debye_waller
    if cond.has_preferred_orientation:
        intensity = intensity * _preferred_orientation_factors(
            lines.hkl, d_spacing, lines.mask, cond.preferred_direction, cond.march_dollase_r,
            generator,
        )  # fmt: skip

    # Positions: cell strain through d, the grid wavelength (and Kα2), then zero shift and
    # sample displacement.
    mask = lines.mask
    sin_observed = grid.wavelength / (2 * line_d * (1 + cond.cell_strain[:, None]))
    if cond.has_ka2:
        sin_observed = torch.cat([sin_observed, sin_observed * cond.ka2_wavelength_ratio], dim=1)
        intensity = torch.cat([intensity, intensity * (cond.ka2 * cond.ka2_ratio)[:, None]], dim=1)
        mask = torch.cat([mask, mask], dim=1)
    valid = mask & (sin_observed <= 1.0)
    theta = torch.asin(sin_observed.clamp(max=1.0))
    displacement = -2 * cond.displacement_mm[:, None] * torch.cos(theta) / cond.goniometer_radius_mm
    position = torch.rad2deg(2 * theta + displacement) + cond.zero_shift_deg[:, None]
    valid = valid & (position > 0) & (position < 180)
    peak_index, weight = _stick_positions(position, intensity, valid, geometry, axis)
    return _spread_sticks(peak_index, weight, axis.size)


def _compiled_sticks(
    lines, cond, grid, generator, peaks_wavelength, geometry, axis
) -> torch.Tensor:
    """The sticks ``[b, size]`` from ``compiled.spread_lines`` (CPU tensors); the random numbers
    are drawn as :func:`_torch_sticks` draws them."""
    empty = np.zeros((0, 0))
    d_spacing, orientation, is_cosine = empty, empty, False
    if lines.d_spacing is not None:
        d_spacing = lines.d_spacing.numpy()
    if cond.has_preferred_orientation and lines.hkl is None:
        orientation = random_cosines(lines.mask, generator).numpy()
        is_cosine = True
    elif cond.has_preferred_orientation:
        orientation = _preferred_orientation_factors(
            lines.hkl, _line_d_spacing(lines, peaks_wavelength)[1], lines.mask,
            cond.preferred_direction, cond.march_dollase_r, generator,
        ).numpy()  # fmt: skip
    ka2_weight = (cond.ka2 * cond.ka2_ratio) if cond.has_ka2 else torch.zeros_like(cond.ka2)
    sticks = spread_lines(
        lines.two_theta.numpy(), lines.intensity.numpy(), lines.mask.numpy(),
        d_spacing, orientation, is_cosine, cond.march_dollase_r.numpy(),
        cond.debye_waller_b.numpy(), cond.cell_strain.numpy(), ka2_weight.numpy(),
        float(cond.ka2_wavelength_ratio), cond.displacement_mm.numpy(),
        float(cond.goniometer_radius_mm), cond.zero_shift_deg.numpy(),
        float(peaks_wavelength), float(grid.wavelength), float(geometry["table_first"]),
        float(geometry["table_spacing"]), axis.index_table.numpy(), axis.index_step.numpy(),
        axis.scale.numpy(), _MARGIN_FWHM, axis.size,
    )  # fmt: skip
    return torch.from_numpy(sticks)
