"""Compiled (numba) kernel of the renderer's per-reflection work on the CPU.

In torch, every step between a peak list and the B-spline sticks (intensity corrections,
observed positions, Kα2, u-axis index, spline taps) is a call on the chunk's padded ``[b, P]``
tensors. Generated crystals have a median of ~100 lines but a chunk is padded to its longest list
(often thousands), so most of that work is padding. :func:`spread_lines` does the same
arithmetic line by line in one call, skipping padding; it is what
``engine._render_chunk`` runs on the CPU, and ``tests/data/test_render.py`` checks it against
the torch steps (which run on other devices).
"""

from __future__ import annotations

import math

import numpy as np

from ..._jit import jit

__all__ = ["apply_pseudo_voigt", "finish_patterns", "spread_lines", "width_integral"]


@jit
def spread_lines(
    two_theta,
    intensity,
    mask,
    d_spacing,
    orientation,
    orientation_is_cosine,
    march_dollase_r,
    debye_waller_b,
    cell_strain,
    ka2_weight,
    ka2_wavelength_ratio,
    displacement_mm,
    goniometer_radius_mm,
    zero_shift_deg,
    peaks_wavelength,
    grid_wavelength,
    table_first,
    table_spacing,
    index_table,
    index_step,
    scale,
    margin_fwhm,
    size,
):
    """Cubic B-spline sticks ``[b, size]`` (float32) of the lines of ``b`` patterns.

    Per line (``[b, P]`` float64 ``two_theta``, ``intensity``, bool ``mask``; ``d_spacing``
    ``[b, P]`` or ``[0, 0]`` for the line's own d): Debye-Waller ``exp(-B / 2d^2)``, the
    March-Dollase factor (``orientation [b, P]`` holds the factors, or random cos α when
    ``orientation_is_cosine``; ``[0, 0]`` for none), cell strain, the Kα1 line and, where
    ``ka2_weight [b] > 0``, the Kα2 line, zero shift and sample displacement; then the FFT index
    on the u axis (``index_table [b, T]``, ``index_step [b, T-1]``, ``scale [b]`` points per FWHM)
    and the four spline taps of weight ``intensity * d index / d2θ``. Lines that cannot be
    observed, fall off the width table or lie more than ``margin_fwhm`` FWHMs outside the grid
    add nothing. Per-pattern conditions are ``[b]`` float64 arrays.
    """
    batch, num_lines = two_theta.shape
    num_nodes = index_table.shape[1]
    sticks = np.zeros((batch, size), np.float32)
    has_d = d_spacing.shape[0] > 0
    has_orientation = orientation.shape[0] > 0
    six = np.float32(6.0)
    # A line's corrected weight and Kα1 sin θ, kept for its Kα2 line (the torch steps add all
    # Kα1 sticks of a pattern before its Kα2 sticks; the same order keeps the sums identical).
    line_weight = np.empty(num_lines)
    line_sin = np.empty(num_lines)
    for row in range(batch):
        margin = scale[row] * margin_fwhm
        for component in range(2):
            if component == 1 and not ka2_weight[row] > 0:
                break
            for line in range(num_lines):
                if not mask[row, line]:
                    continue
                if component == 0:
                    sin_theta = max(math.sin(math.radians(two_theta[row, line]) / 2), 1e-12)
                    line_d = peaks_wavelength / (2 * sin_theta)
                    d = line_d
                    if has_d and math.isfinite(d_spacing[row, line]) and d_spacing[row, line] > 0:
                        d = d_spacing[row, line]
                    weight = intensity[row, line] * math.exp(-debye_waller_b[row] / (2 * d * d))
                    if has_orientation:
                        factor = orientation[row, line]
                        if orientation_is_cosine:
                            r = march_dollase_r[row]
                            cos2 = factor * factor
                            factor = (r * r * cos2 + (1 - cos2) / r) ** -1.5
                        weight *= factor
                    sin_observed = grid_wavelength / (2 * line_d * (1 + cell_strain[row]))
                    line_weight[line], line_sin[line] = weight, sin_observed
                else:
                    weight = line_weight[line] * ka2_weight[row]
                    sin_observed = line_sin[line] * ka2_wavelength_ratio
                if not sin_observed <= 1.0:
                    continue
                theta = math.asin(sin_observed)
                displacement = -2 * displacement_mm[row] * math.cos(theta) / goniometer_radius_mm
                observed = math.degrees(2 * theta + displacement) + zero_shift_deg[row]
                if not (0.0 < observed < 180.0):
                    continue
                position = (observed - table_first) / table_spacing
                if not (0.0 <= position <= num_nodes - 1):
                    continue
                node = min(int(position), num_nodes - 2)  # position >= 0: int() is floor
                step = index_step[row, node]
                peak_index = index_table[row, node] + (position - node) * step
                if not (margin <= peak_index <= size - margin):
                    continue
                _add_taps(sticks, row, np.float32(peak_index), np.float32(weight * step) / six)
    return sticks


@jit
def _add_taps(sticks, row, peak_index, weight):
    """Add one stick (float32 index and weight / 6) to ``sticks[row]`` with cubic B-spline taps."""
    left = int(peak_index)  # the index is positive: int() is floor, and cheaper
    s = peak_index - np.float32(left)
    one_minus = np.float32(1.0) - s
    s2 = s * s
    s3 = s2 * s
    first = min(max(left - 1, 0), sticks.shape[1] - 4)
    sticks[row, first] += one_minus * one_minus * one_minus * weight
    three = np.float32(3.0)
    sticks[row, first + 1] += (three * s3 - np.float32(6.0) * s2 + np.float32(4.0)) * weight
    sticks[row, first + 2] += (
        np.float32(-3.0) * s3 + three * s2 + three * s + np.float32(1.0)
    ) * weight
    sticks[row, first + 3] += s3 * weight


@jit
def finish_patterns(
    profile_u,
    grid_nodes,
    node_left,
    node_fraction,
    background,
    background_left,
    background_fraction,
    noise,
    read_variance,
    inverse_counts,
):
    """Patterns ``[b, L]`` (float32) from the convolved u-axis profiles ``profile_u [b, size]``.

    Each grid point's FFT index is interpolated linearly from ``grid_nodes [b, N]`` (the index of
    N evenly spread grid points; point ``j`` lies ``node_fraction[j]`` past node
    ``node_left[j]``), the profile is read there by 4-point Lagrange interpolation, clipped at 0
    and scaled to maximum 1. Then, where given (``[0, 0]`` arrays otherwise), the background
    ``[b, K]`` (nodes ``background_left``/``background_fraction``) is added, and Gaussian noise
    ``noise [b, L]`` (standard normal) of variance ``read_variance + signal * inverse_counts``
    (``[b]``); the result is clipped and scaled to maximum 1 again. A pattern without signal stays
    all zeros. The float32 arithmetic follows the torch steps of ``engine``.
    """
    batch, size = profile_u.shape
    points = node_left.shape[0]
    has_background = background.shape[0] > 0
    has_noise = noise.shape[0] > 0
    patterns = np.empty((batch, points), np.float32)
    zero, one, half = np.float32(0.0), np.float32(1.0), np.float32(0.5)
    for row in range(batch):
        out = patterns[row]
        peak = zero
        for j in range(points):
            index = _lerp(grid_nodes[row, node_left[j]], grid_nodes[row, node_left[j] + 1],
                          node_fraction[j])  # fmt: skip
            # The FFT index is positive: int() is floor (float64 floors cost 3x the loop).
            first = min(max(int(index), 1), size - 3)
            t = index - np.float32(first)
            first -= 1
            t_minus_1, t_plus_1, t_minus_2 = t - one, t + one, t - np.float32(2.0)
            a, b = t * t_minus_1, t_plus_1 * t_minus_2
            value = profile_u[row, first] * (a * t_minus_2) * np.float32(-1.0 / 6.0)
            value += half * profile_u[row, first + 1] * (b * t_minus_1)
            value += np.float32(-0.5) * profile_u[row, first + 2] * (b * t)
            value += np.float32(1.0 / 6.0) * profile_u[row, first + 3] * (a * t_plus_1)
            value = max(value, zero)
            out[j] = value
            peak = max(peak, value)
        if not peak > zero:
            out[:] = zero
            continue
        _divide(out, peak)
        if not (has_background or has_noise):
            continue
        peak = zero
        for j in range(points):
            value = out[j]
            if has_background:
                k = background_left[j]
                value += _lerp(background[row, k], background[row, k + 1], background_fraction[j])
            if has_noise:
                variance = read_variance[row] + max(value, zero) * inverse_counts[row]
                value = noise[row, j] * np.sqrt(variance) + value
            value = max(value, zero)
            out[j] = value
            peak = max(peak, value)
        _divide(out, peak)
    return patterns


@jit
def _lerp(low, high, fraction):
    """torch.lerp's float32 formula (exact at both ends)."""
    if fraction < np.float32(0.5):
        return low + fraction * (high - low)
    return high - (high - low) * (np.float32(1.0) - fraction)


@jit
def _divide(values, peak):
    """``values / peak`` in place where ``peak > 0``."""
    if peak > 0:
        for j in range(values.shape[0]):
            values[j] /= peak


@jit
def apply_pseudo_voigt(spectrum, scale, eta, size, unspread):
    """Multiply the real FFTs ``spectrum [b, size // 2 + 1]`` (complex, in place) by the spectrum of
    the area-normalised pseudo-Voigt of FWHM ``scale [b]`` points and mixing ``eta [b]``, divided
    by the cubic B-spline's (``unspread [size // 2 + 1]`` = sinc⁻⁴).

    At frequency ``k / size`` the Lorentzian's spectrum is ``exp(-a k)`` and the Gaussian's
    ``exp(-a² k² / 4 ln 2)`` with ``a = π scale / size``; both come from float64 recurrences
    (one multiplication each per frequency, no exponential), good to ~1e-12.
    """
    four_ln2 = 4.0 * math.log(2.0)
    for row in range(spectrum.shape[0]):
        a = math.pi * scale[row] / size
        c = a * a / four_ln2
        lorentz_step, gauss_step, gauss_factor = math.exp(-a), math.exp(-2.0 * c), math.exp(-c)
        lorentz, gauss = 1.0, 1.0
        mix = eta[row]
        for k in range(spectrum.shape[1]):
            spectrum[row, k] *= np.float32((mix * lorentz + (1.0 - mix) * gauss) * unspread[k])
            lorentz *= lorentz_step
            gauss *= gauss_factor
            gauss_factor *= gauss_step


@jit
def width_integral(
    nodes, spacing, scherrer_constant, crystallite_size_nm, microstrain, caglioti_u, caglioti_v,
    caglioti_w, wavelength, min_fwhm,
):  # fmt: skip
    """u(2θ) = ∫ d2θ / FWHM(2θ) on the evenly spaced ``nodes [T]`` (deg; trapezoid rule, 0 at the
    first node) for each pattern's width parameters ``[b]`` -> ``[b, T]`` float64. The FWHM is
    ``engine``'s: Caglioti (clipped at 0), Scherrer size and microstrain terms in quadrature, at
    least ``min_fwhm``."""
    batch, num_nodes = crystallite_size_nm.shape[0], nodes.shape[0]
    tan_theta, inverse_cos = np.empty(num_nodes), np.empty(num_nodes)
    for j in range(num_nodes):
        theta = math.radians(nodes[j]) / 2
        tan_theta[j], inverse_cos[j] = math.tan(theta), 1.0 / math.cos(theta)
    u = np.empty((batch, num_nodes))
    for row in range(batch):
        size_term = math.degrees(scherrer_constant * (wavelength / 10.0) / crystallite_size_nm[row])
        strain_term = math.degrees(4 * microstrain[row])
        previous, total = 0.0, 0.0
        for j in range(num_nodes):
            t = tan_theta[j]
            instrument = max(caglioti_u[row] * t * t + caglioti_v[row] * t + caglioti_w[row], 0.0)
            size = size_term * inverse_cos[j]
            strain = strain_term * t
            inverse = 1.0 / max(math.sqrt(instrument + size * size + strain * strain), min_fwhm)
            if j > 0:
                total += (inverse + previous) * (spacing / 2)
            u[row, j] = total
            previous = inverse
    return u
