"""Compiled (numba) kernels of the simulator: what costs more in numpy calls than in arithmetic.

A cell of a few atoms has a few hundred reflections; in numpy each step (select the reflections
in range, sum the phases, sort, merge, scale) is a call on arrays that small, so the calls' fixed
cost set the time of a pattern. These loops do the same arithmetic in float64 in one call each:

* :func:`reflections_in_range`: ``|g|^2`` of every point of an hkl box and those in range;
* :func:`pair_squared`: ``|F|^2`` of a list of reflections, from per-axis phase tables
  (``exp(2 pi i hkl . x) = e_h(x) e_k(y) e_l(z)``, so only ``H + K + L`` sines and cosines per
  site), exact in float64 where float32 phasors were good to ~1e-7;
* :func:`lines_of_one`: one structure's lines: Lorentz-polarisation, merging, scaling, cut.
"""

from __future__ import annotations

import math

import numpy as np

from ..._jit import jit

__all__ = ["lines_of_one", "pair_squared", "reflections_in_range"]


@jit
def reflections_in_range(hkl, quad, terms, g2_low, g2_high):
    """The points of an hkl box (``hkl [M0, 3]``, ``quad [M0, 6]`` = ``h^2, k^2, l^2, 2hk, 2hl,
    2kl``) with ``g2_low <= |g|^2 <= g2_high`` for the metric ``terms [6]``: ``hkl [M, 3]`` and
    ``|g|^2 [M]``."""
    g2 = np.empty(quad.shape[0])
    keep = np.empty(quad.shape[0], np.int64)
    count = 0
    for m in range(quad.shape[0]):
        value = 0.0
        for j in range(6):
            value += quad[m, j] * terms[j]
        if g2_low <= value <= g2_high:
            keep[count] = m
            g2[count] = value
            count += 1
    kept = np.empty((count, 3))
    for i in range(count):
        kept[i] = hkl[keep[i]]
    return kept, g2[:count]


@jit
def _phase_tables(hkl, coords):
    """``exp(2 pi i n x)`` of every site for every index ``n`` each axis of ``hkl`` takes:
    real and imaginary parts ``[3, n_max - n_min + 1, N]``, and ``n_min`` of each axis."""
    low = np.zeros(3, np.int64)
    high = np.zeros(3, np.int64)
    for m in range(hkl.shape[0]):
        for axis in range(3):
            index = int(hkl[m, axis])
            low[axis] = min(low[axis], index)
            high[axis] = max(high[axis], index)
    span = int((high - low).max()) + 1
    real = np.empty((3, span, coords.shape[0]))
    imaginary = np.empty((3, span, coords.shape[0]))
    for axis in range(3):
        for n in range(coords.shape[0]):
            for i in range(high[axis] - low[axis] + 1):
                turns = (low[axis] + i) * coords[n, axis]
                angle = (
                    2.0 * math.pi * (turns - math.floor(turns))
                )  # reduced first: exact at large n
                real[axis, i, n] = math.cos(angle)
                imaginary[axis, i, n] = math.sin(angle)
    return real, imaginary, low


@jit
def pair_squared(hkl, s2, form, coords, site_element, occupancy, b_site):
    """``|F|^2 [M]`` of reflections ``hkl [M, 3]`` (integer-valued) at ``s^2 [M]``.

    ``form [E, M]``: the atomic form factor of every element at every reflection (numpy's
    vectorised ``exp`` computes them faster than a loop). Sites: ``coords [N, 3]``
    (fractional), ``site_element [N]`` (row of ``form``), ``occupancy [N]``, ``b_site [N]``
    (Debye-Waller B, Angstrom^2).
    """
    real, imaginary, low = _phase_tables(hkl, coords)
    with_b = False
    for n in range(coords.shape[0]):
        with_b = with_b or b_site[n] != 0.0
    squared = np.empty(hkl.shape[0])
    for m in range(hkl.shape[0]):
        h = int(hkl[m, 0]) - low[0]
        k = int(hkl[m, 1]) - low[1]
        ell = int(hkl[m, 2]) - low[2]
        total_real = 0.0
        total_imaginary = 0.0
        for n in range(coords.shape[0]):
            hk_real = real[0, h, n] * real[1, k, n] - imaginary[0, h, n] * imaginary[1, k, n]
            hk_imaginary = real[0, h, n] * imaginary[1, k, n] + imaginary[0, h, n] * real[1, k, n]
            phase_real = hk_real * real[2, ell, n] - hk_imaginary * imaginary[2, ell, n]
            phase_imaginary = hk_real * imaginary[2, ell, n] + hk_imaginary * real[2, ell, n]
            weight = occupancy[n] * form[site_element[n], m]
            if with_b:
                weight *= math.exp(-b_site[n] * s2[m])
            total_real += weight * phase_real
            total_imaginary += weight * phase_imaginary
        squared[m] = total_real * total_real + total_imaginary * total_imaginary
    return squared


@jit
def lines_of_one(g2, squared, absent, bragg, ratios, sin2_low, sin2_high, merge_tol):
    """The lines of one structure before the intensity cut, sorted by 2θ.

    Args:
        g2, squared: ``|g|^2`` and ``|F|^2`` of its reflections ``[M]``.
        absent: ``|F|^2`` below which a reflection is systematically absent.
        bragg, ratios: ``sin^2(theta) / |g|^2`` and relative intensity of each wavelength ``[W]``.
        sin2_low, sin2_high: The 2θ range as ``sin^2(theta)`` (used with two wavelengths; with
            one, the reflections were enumerated for the range).
        merge_tol: Reflections closer than this (degrees) to the previous one join its line.

    Returns:
        ``which [R]``: the reflection of every (wavelength, reflection) pair in range, in 2θ
        order; ``starts [L]``: where each line begins in it; ``two_theta [L]`` and
        ``intensity [L]`` (strongest 100, all 0 if none is above 0) of the lines.
    """
    num_wavelengths, num = ratios.shape[0], g2.shape[0]
    sin2 = np.empty(num_wavelengths * num)
    which = np.empty(num_wavelengths * num, np.int64)
    wavelength = np.empty(num_wavelengths * num, np.int64)
    count = 0
    for w in range(num_wavelengths):
        for m in range(num):
            value = bragg[w] * g2[m]
            in_range = num_wavelengths == 1 or sin2_low <= value <= sin2_high
            if squared[m] >= absent and in_range:
                sin2[count] = value
                which[count] = m
                wavelength[count] = w
                count += 1
    order = np.argsort(sin2[:count], kind="mergesort")
    sin2, which, wavelength = sin2[order], which[order], wavelength[order]
    starts = np.empty(count, np.int64)
    two_theta = np.empty(count)
    intensity = np.empty(count)
    lines = -1
    previous = -np.inf
    for r in range(count):
        # cos 2θ = 1 - 2 sin^2 θ; LP = (1 + cos^2 2θ) / (sin^2 θ cos θ)
        cos_2theta = 1.0 - 2.0 * sin2[r]
        angle = math.acos(cos_2theta) * (180.0 / math.pi)
        lorentz_polarisation = (1.0 + cos_2theta * cos_2theta) / (
            sin2[r] * math.sqrt(1.0 - sin2[r])
        )
        value = squared[which[r]] * lorentz_polarisation * ratios[wavelength[r]]
        if r == 0 or angle - previous > merge_tol:
            lines += 1
            starts[lines] = r
            two_theta[lines] = angle
            intensity[lines] = value
        else:
            intensity[lines] += value
        previous = angle
    lines += 1
    intensity = intensity[:lines]
    strongest = intensity.max() if lines else 0.0
    intensity *= 100.0 / strongest if strongest > 0 else 0.0
    return which, starts[:lines], two_theta[:lines], intensity
