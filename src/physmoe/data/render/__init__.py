"""Render peak lists into powder patterns on a model's 2θ grid, batched in torch (CPU or CUDA).

A peak list (reflection positions in degrees 2θ at some wavelength, integrated intensities, and
optionally Miller indices) becomes a pattern ``[num_points]`` with maximum 1. Two modes:

``"profile"``
    Realistic patterns. Each reflection gets a pseudo-Voigt profile whose FWHM follows Scherrer
    crystallite-size broadening, microstrain and the Caglioti instrument function; positions
    carry zero shift, sample displacement and isotropic cell strain; a Kα2 line, March-Dollase
    preferred orientation, an overall Debye-Waller factor, a polynomial background, an amorphous
    hump, Poisson counting noise and read noise are added as :class:`MeasurementConditions` says.

``"sticks"``
    The public reference's binning: every reflection falls into bin
    ``floor((2θ - two_theta_min) / step)``, a bin keeps the largest intensity that fell into it,
    no broadening and no measurement effects; then the pattern is scaled to maximum 1.

Modules: :mod:`.conditions` (what is drawn), :mod:`.physics` (the effects), :mod:`.padding` (peak
lists to tensors), :mod:`.engine` (the FFT profile engine; its docs say how the profile mode is
fast), :mod:`.patterns` (the entry points).
"""

from .conditions import MeasurementConditions, SampledConditions
from .padding import pad_peaks
from .patterns import PatternRenderer, render_padded, render_patterns
from .physics import add_counting_noise, convert_two_theta, march_dollase_factor

__all__ = [
    "MeasurementConditions",
    "PatternRenderer",
    "SampledConditions",
    "add_counting_noise",
    "convert_two_theta",
    "march_dollase_factor",
    "pad_peaks",
    "render_padded",
    "render_patterns",
]
