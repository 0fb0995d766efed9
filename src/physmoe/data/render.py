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
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch

from .grid import CU_KA1, CU_KA2, TwoThetaGrid

logger = logging.getLogger(__name__)

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

Range = tuple[float, float]

_MODES = ("profile", "sticks")
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
_MAX_BACKGROUND_DEGREE = 12
# Patterns rendered together on CPU: their [rows, points] tensors stay in cache.
_CHUNK_ROWS = 32
_FOUR_LN2 = 4.0 * math.log(2.0)


# --------------------------------------------------------------------------------------------
# Measurement conditions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasurementConditions:
    """Ranges of the measurement effects a rendered pattern gets; one draw per pattern and call.

    Every range is ``(min, max)``; ``min == max`` fixes the value. Values are drawn uniformly,
    except crystallite size, March-Dollase ``r`` and counts, which are drawn log-uniformly
    (scale parameters). The defaults (:meth:`default`) follow SimXRD-4M's simulation (grain size,
    zero shift, background ~5 % and noise ~2 % of the peak maximum, Kα2, preferred orientation,
    thermal vibration) with the deviations documented below.

    Peak width. FWHM in degrees 2θ of a reflection at Bragg angle θ, contributions added in
    quadrature and floored at one grid step (a reflection narrower than the grid cannot be
    represented on it)::

        H_size   = degrees(K * (λ / 10) / (L * cos θ))        Scherrer, L in nm, λ in Angstrom
        H_strain = degrees(4 * ε * tan θ)                      microstrain ε
        H_inst²  = max(U tan²θ + V tan θ + W, 0)               Caglioti, deg²
        H        = sqrt(H_inst² + H_size² + H_strain²)

    The profile is a pseudo-Voigt ``η L + (1 - η) G`` with Lorentzian and Gaussian of that FWHM.

    Attributes:
        crystallite_size_nm: Scherrer crystallite size L in nm (default 10-100, log-uniform;
            SimXRD-4M's simulator defaults to a grain size of 20).
        scherrer_constant: Shape factor K (0.9).
        microstrain: Microstrain ε, dimensionless (default 0-1e-3).
        caglioti_u, caglioti_v, caglioti_w: Instrument function in deg² (defaults 0.002-0.01,
            -0.003-0, 0.002-0.006: a laboratory Bragg-Brentano diffractometer, FWHM 0.045-0.08 deg
            at low angle; the ranges keep ``U tan²θ + V tan θ + W`` positive at every angle).
        eta: Pseudo-Voigt Lorentzian fraction η in [0, 1] (default 0.2-0.8).
        zero_shift_deg: Zero shift added to every 2θ, degrees (default ±0.1). SimXRD-4M uses up
            to ±1.5 deg, which is larger than a calibrated instrument's error and comparable to
            the lattice differences the classifier must read; we keep a realistic default.
        displacement_mm: Sample displacement s in mm; shifts 2θ by ``-2 s cos θ / R`` radians
            (positive s moves peaks to lower angles). Default ±0.15 mm.
        goniometer_radius_mm: Goniometer radius R in mm (240).
        cell_strain: Isotropic cell strain e: every d-spacing becomes ``d (1 + e)``
            (default ±1 %).
        ka2_probability: Probability that a pattern has the Kα2 line (default 0.5). Peak lists
            that already hold Kα2 lines (``simulate_peaks(..., kalpha2=True)``) should be
            rendered with 0.
        ka2_ratio: Kα2/Kα1 intensity ratio (0.5).
        ka2_wavelength_ratio: λ(Kα2)/λ(Kα1) applied to the grid wavelength (Cu: 1.54439/1.54056;
            for Co use 1.79285/1.78897).
        march_dollase_r: March-Dollase r (default 0.75-1.333, log-uniform; r < 1 plates, r > 1
            needles, r = 1 none). With Miller indices (PeakList ``.hkl``) the angle α between each
            reflection and the preferred direction (a reciprocal-lattice vector drawn from
            ``preferred_directions``) comes from the reciprocal metric, fitted to the lines' hkl
            and d-spacings, and a line's factor is the mean over its family of coinciding
            reflections (the lattice holohedry applied to its representative hkl; exact when the
            family members have equal intensities). Without Miller indices (datasets store only
            positions and intensities) cos α is drawn uniformly in [0, 1] per line, the
            distribution for randomly oriented planes, and the same formula applies.
        preferred_directions: Candidate preferred directions (reciprocal-lattice hkl), one drawn
            uniformly per pattern.
        debye_waller_b: Overall isotropic displacement B in Angstrom² on top of the simulator's:
            intensities times ``exp(-B / (2 d²))`` (default 0-1).
        background_amplitude: Height of a random Chebyshev polynomial background (degree
            ``background_degree``, rescaled to [0, 1]) relative to the peak maximum (default 0-5 %).
        background_degree: Degree of that polynomial (4).
        amorphous_height: Height of a Gaussian amorphous hump relative to the peak maximum
            (default 0-5 %).
        amorphous_center_deg, amorphous_fwhm_deg: Its centre and FWHM in degrees 2θ
            (defaults 15-35 and 5-15).
        counts: Counts at the pattern maximum for Poisson noise (default 1e3-1e5, log-uniform);
            ``None`` for no counting noise.
        exact_poisson: Draw Poisson counts exactly (``torch.poisson``) instead of the normal
            approximation N(λ, λ) (same mean and variance; differs in shape only below ~10
            counts; about 5x faster). Default False.
        read_noise: Standard deviation of Gaussian read noise relative to the maximum
            (default 0-2 %).

    After noise the pattern is clipped at 0 (the feature extractor clips measured patterns the
    same way) and scaled to maximum 1.
    """

    crystallite_size_nm: Range = (10.0, 100.0)
    scherrer_constant: float = 0.9
    microstrain: Range = (0.0, 1e-3)
    caglioti_u: Range = (0.002, 0.01)
    caglioti_v: Range = (-0.003, 0.0)
    caglioti_w: Range = (0.002, 0.006)
    eta: Range = (0.2, 0.8)
    zero_shift_deg: Range = (-0.1, 0.1)
    displacement_mm: Range = (-0.15, 0.15)
    goniometer_radius_mm: float = 240.0
    cell_strain: Range = (-0.01, 0.01)
    ka2_probability: float = 0.5
    ka2_ratio: float = 0.5
    ka2_wavelength_ratio: float = CU_KA2 / CU_KA1
    march_dollase_r: Range = (0.75, 1.0 / 0.75)
    preferred_directions: tuple[tuple[int, int, int], ...] = (
        (0, 0, 1),
        (0, 1, 0),
        (1, 0, 0),
        (1, 1, 0),
        (1, 1, 1),
    )
    debye_waller_b: Range = (0.0, 1.0)
    background_amplitude: Range = (0.0, 0.05)
    background_degree: int = 4
    amorphous_height: Range = (0.0, 0.05)
    amorphous_center_deg: Range = (15.0, 35.0)
    amorphous_fwhm_deg: Range = (5.0, 15.0)
    counts: Range | None = (1e3, 1e5)
    exact_poisson: bool = False
    read_noise: Range = (0.0, 0.02)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "Range" or (f.name == "counts" and value is not None):
                if not (isinstance(value, Sequence) and len(value) == 2):
                    raise ValueError(f"{f.name} must be a (min, max) pair, got {value!r}")
                lo, hi = (float(v) for v in value)
                if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                    raise ValueError(f"{f.name} must be finite with min <= max, got {value!r}")
                object.__setattr__(self, f.name, (lo, hi))
        positive = ("crystallite_size_nm", "march_dollase_r", "amorphous_fwhm_deg")
        for name in positive + (("counts",) if self.counts is not None else ()):
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        nonnegative = (
            "microstrain",
            "debye_waller_b",
            "background_amplitude",
            "amorphous_height",
            "read_noise",
        )
        for name in nonnegative:
            if getattr(self, name)[0] < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (-0.5 < self.cell_strain[0] and self.cell_strain[1] < 0.5):
            # A relative change of the lattice: at -1 the cell vanishes and every peak with it.
            raise ValueError(f"cell_strain must lie in (-0.5, 0.5), got {self.cell_strain}")
        if not (0.0 <= self.eta[0] and self.eta[1] <= 1.0):
            raise ValueError(f"eta must lie in [0, 1], got {self.eta}")
        if not 0.0 <= self.ka2_probability <= 1.0:
            raise ValueError(f"ka2_probability must lie in [0, 1], got {self.ka2_probability}")
        for name in ("scherrer_constant", "goniometer_radius_mm", "ka2_wavelength_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.ka2_ratio < 0:
            raise ValueError(f"ka2_ratio must be >= 0, got {self.ka2_ratio}")
        if (
            int(self.background_degree) != self.background_degree
            or not 0 <= self.background_degree <= _MAX_BACKGROUND_DEGREE
        ):
            raise ValueError(
                f"background_degree must be an integer in [0, {_MAX_BACKGROUND_DEGREE}], "
                f"got {self.background_degree}"
            )
        directions = tuple(tuple(int(i) for i in d) for d in self.preferred_directions)
        if not directions or any(len(d) != 3 or d == (0, 0, 0) for d in directions):
            raise ValueError(
                f"preferred_directions must be non-zero (h, k, l) triples, got {self.preferred_directions}"
            )
        object.__setattr__(self, "preferred_directions", directions)

    @classmethod
    def default(cls) -> MeasurementConditions:
        """Training realism: every effect on, ranges as documented in the class docstring."""
        return cls()

    @classmethod
    def clean(cls) -> MeasurementConditions:
        """Evaluation: fixed moderate broadening, no shift, strain, Kα2, texture, background or noise.

        Crystallite size 50 nm, a typical laboratory instrument (U, V, W = 0.004, -0.002, 0.003
        deg²), η = 0.5: FWHM 0.17 deg at 20 deg 2θ and 0.22 deg at 80 deg.
        """
        return cls(
            crystallite_size_nm=(50.0, 50.0),
            microstrain=(0.0, 0.0),
            caglioti_u=(0.004, 0.004),
            caglioti_v=(-0.002, -0.002),
            caglioti_w=(0.003, 0.003),
            eta=(0.5, 0.5),
            zero_shift_deg=(0.0, 0.0),
            displacement_mm=(0.0, 0.0),
            cell_strain=(0.0, 0.0),
            ka2_probability=0.0,
            march_dollase_r=(1.0, 1.0),
            debye_waller_b=(0.0, 0.0),
            background_amplitude=(0.0, 0.0),
            amorphous_height=(0.0, 0.0),
            counts=None,
            read_noise=(0.0, 0.0),
        )

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SampledConditions:
        """Draw one set of conditions per pattern.

        Random numbers come from ``generator`` (on its own device; the global generator if None),
        results are float64 tensors ``[batch_size]`` on ``device``.
        """
        if int(batch_size) != batch_size or batch_size < 0:
            raise ValueError(f"batch_size must be an integer >= 0, got {batch_size}")
        draw_device = generator.device if generator is not None else torch.device("cpu")
        scalar_ranges = {
            "crystallite_size_nm": (self.crystallite_size_nm, True),
            "microstrain": (self.microstrain, False),
            "caglioti_u": (self.caglioti_u, False),
            "caglioti_v": (self.caglioti_v, False),
            "caglioti_w": (self.caglioti_w, False),
            "eta": (self.eta, False),
            "zero_shift_deg": (self.zero_shift_deg, False),
            "displacement_mm": (self.displacement_mm, False),
            "cell_strain": (self.cell_strain, False),
            "march_dollase_r": (self.march_dollase_r, True),
            "debye_waller_b": (self.debye_waller_b, False),
            "background_amplitude": (self.background_amplitude, False),
            "amorphous_height": (self.amorphous_height, False),
            "amorphous_center_deg": (self.amorphous_center_deg, False),
            "amorphous_fwhm_deg": (self.amorphous_fwhm_deg, False),
            "counts": (self.counts or (1.0, 1.0), True),
            "read_noise": (self.read_noise, False),
        }
        uniform = torch.rand(
            len(scalar_ranges) + 1,
            batch_size,
            generator=generator,
            dtype=torch.float64,
            device=draw_device,
        )
        values = {}
        for row, (name, ((lo, hi), log_scale)) in zip(uniform, scalar_ranges.items(), strict=False):
            values[name] = lo * (hi / lo) ** row if log_scale else lo + (hi - lo) * row
        if self.counts is None:
            values["counts"] = torch.full_like(values["counts"], math.inf)
        ka2 = (uniform[-1] < self.ka2_probability).to(torch.float64)
        directions = torch.tensor(
            self.preferred_directions, dtype=torch.float64, device=draw_device
        )
        choice = torch.randint(
            len(directions), (batch_size,), generator=generator, device=draw_device
        )
        coefficients = torch.randn(
            batch_size,
            self.background_degree + 1,
            generator=generator,
            dtype=torch.float64,
            device=draw_device,
        )
        sampled = SampledConditions(
            **values,
            ka2=ka2,
            preferred_direction=directions[choice],
            background_coefficients=coefficients,
            scherrer_constant=self.scherrer_constant,
            goniometer_radius_mm=self.goniometer_radius_mm,
            ka2_ratio=self.ka2_ratio,
            ka2_wavelength_ratio=self.ka2_wavelength_ratio,
            exact_poisson=self.exact_poisson,
            has_ka2=self.ka2_probability > 0 and self.ka2_ratio > 0,
            has_preferred_orientation=self.march_dollase_r != (1.0, 1.0),
            has_background=self.background_amplitude[1] > 0 or self.amorphous_height[1] > 0,
            has_noise=self.counts is not None or self.read_noise[1] > 0,
        )
        return sampled.to(device) if device is not None else sampled


@dataclass
class SampledConditions:
    """Measurement conditions of one batch: float64 tensors ``[batch]`` (see
    :class:`MeasurementConditions` for units), plus ``preferred_direction [batch, 3]`` and
    ``background_coefficients [batch, degree + 1]`` (Chebyshev coefficients).

    ``counts`` is ``inf`` where a pattern has no counting noise; ``ka2`` is 1.0 where the pattern
    has the Kα2 line. The ``has_*`` flags tell the renderer which stages it can skip; when None
    they are computed from the tensors.
    """

    crystallite_size_nm: torch.Tensor
    microstrain: torch.Tensor
    caglioti_u: torch.Tensor
    caglioti_v: torch.Tensor
    caglioti_w: torch.Tensor
    eta: torch.Tensor
    zero_shift_deg: torch.Tensor
    displacement_mm: torch.Tensor
    cell_strain: torch.Tensor
    ka2: torch.Tensor
    march_dollase_r: torch.Tensor
    preferred_direction: torch.Tensor
    debye_waller_b: torch.Tensor
    background_amplitude: torch.Tensor
    background_coefficients: torch.Tensor
    amorphous_height: torch.Tensor
    amorphous_center_deg: torch.Tensor
    amorphous_fwhm_deg: torch.Tensor
    counts: torch.Tensor
    read_noise: torch.Tensor
    scherrer_constant: float = 0.9
    goniometer_radius_mm: float = 240.0
    ka2_ratio: float = 0.5
    ka2_wavelength_ratio: float = CU_KA2 / CU_KA1
    exact_poisson: bool = False
    has_ka2: bool | None = None
    has_preferred_orientation: bool | None = None
    has_background: bool | None = None
    has_noise: bool | None = None

    def __post_init__(self) -> None:
        batch = self.crystallite_size_nm.shape
        for name in self._tensor_names():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"SampledConditions.{name} must be a tensor, got {type(value).__name__}"
                )
            if value.shape[:1] != batch:
                raise ValueError(
                    f"SampledConditions.{name} has shape {tuple(value.shape)}; expected batch {tuple(batch)}"
                )
        if self.has_ka2 is None:
            self.has_ka2 = bool(self.ka2.any()) and self.ka2_ratio > 0
        if self.has_preferred_orientation is None:
            self.has_preferred_orientation = bool((self.march_dollase_r != 1).any())
        if self.has_background is None:
            self.has_background = bool(
                (self.background_amplitude > 0).any() | (self.amorphous_height > 0).any()
            )
        if self.has_noise is None:
            self.has_noise = bool(torch.isfinite(self.counts).any() | (self.read_noise > 0).any())

    @classmethod
    def _tensor_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.type == "torch.Tensor"]

    @property
    def batch_size(self) -> int:
        return int(self.crystallite_size_nm.shape[0])

    def _map(self, function) -> SampledConditions:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in self._tensor_names():
            values[name] = function(values[name])
        return SampledConditions(**values)

    def to(self, device: torch.device | str) -> SampledConditions:
        """The same conditions with every tensor on ``device`` (float64)."""
        return self._map(lambda t: t.to(device=device, dtype=torch.float64))

    def select(self, rows: slice) -> SampledConditions:
        """The conditions of a slice of the batch (the ``has_*`` flags are kept)."""
        return self._map(lambda t: t[rows])


# --------------------------------------------------------------------------------------------
# Physics helpers
# --------------------------------------------------------------------------------------------


def convert_two_theta(
    two_theta: torch.Tensor,
    from_wavelength: float | torch.Tensor,
    to_wavelength: float | torch.Tensor,
) -> torch.Tensor:
    """2θ (degrees) measured at ``from_wavelength`` -> 2θ of the same d-spacing at ``to_wavelength``.

    ``d = λ_from / (2 sin θ)`` and ``sin θ' = λ_to / (2 d)``. Where ``sin θ' > 1`` the reflection
    cannot be observed at ``to_wavelength``; the result is NaN there. Wavelengths are scalars or
    tensors broadcastable with ``two_theta``.
    """
    sin_theta = torch.sin(torch.deg2rad(two_theta) / 2) * (to_wavelength / from_wavelength)
    return torch.rad2deg(2 * torch.asin(sin_theta))  # asin(x > 1) is NaN


def march_dollase_factor(cos_alpha: torch.Tensor, r: torch.Tensor | float) -> torch.Tensor:
    """March-Dollase factor ``(r² cos²α + sin²α / r) ** -1.5`` (normalised over the sphere).

    ``cos_alpha``: cosine of the angle between a reflection's scattering vector and the preferred
    direction; ``r``: March parameter (broadcastable).
    """
    cos2 = cos_alpha.square()
    return (r * r * cos2 + (1 - cos2) / r) ** -1.5


@functools.lru_cache(maxsize=1)
def _metric_forms() -> tuple[np.ndarray, ...]:
    """Reciprocal metrics of the lattice systems as bases ``[6, n]`` of (G11, G22, G33, G12, G13,
    G23), most symmetric first: cubic, hexagonal (c unique), rhombohedral axes, tetragonal
    (c unique), orthorhombic, monoclinic (b, c, a unique), triclinic."""
    unit = np.eye(6)
    return (
        np.array([[1, 1, 1, 0, 0, 0]], dtype=np.float64).T,
        np.array([[1, 1, 0, 0.5, 0, 0], [0, 0, 1, 0, 0, 0]], dtype=np.float64).T,
        np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=np.float64).T,
        np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]], dtype=np.float64).T,
        unit[:, :3],
        unit[:, [0, 1, 2, 4]],
        unit[:, [0, 1, 2, 3]],
        unit[:, [0, 1, 2, 5]],
        unit,
    )


def _fit_reciprocal_metric(
    hkl: torch.Tensor, d_spacing: torch.Tensor, usable: torch.Tensor
) -> torch.Tensor:
    """Reciprocal metric tensor G* ``[B, 3, 3]`` from ``1/d² = hᵀ G* h`` by least squares.

    ``hkl [B, P, 3]``, ``d_spacing [B, P]``, ``usable [B, P]`` (bool). A powder pattern's
    representative reflections often do not determine all six components (silicon has 7 lines
    below 100 deg, with dependent index patterns), so the metric of each lattice system is fitted
    in turn, most symmetric first, and the first that reproduces every d-spacing (relative
    residual below 1e-6) is kept; triclinic is the fallback.
    """
    h, k, ell = hkl.unbind(-1)
    design = torch.stack([h * h, k * k, ell * ell, 2 * h * k, 2 * h * ell, 2 * k * ell], dim=-1)
    design = design * usable.unsqueeze(-1)  # [B, P, 6]
    target = torch.where(usable, d_spacing.clamp_min(1e-12) ** -2, 0.0)  # [B, P]
    # Least squares through the normal equations: every lattice system reuses these.
    gram = design.transpose(1, 2) @ design  # [B, 6, 6]
    moment = design.transpose(1, 2) @ target.unsqueeze(-1)  # [B, 6, 1]
    total = target.square().sum(-1)  # [B]
    chosen = torch.zeros(hkl.shape[0], 6, dtype=hkl.dtype, device=hkl.device)
    found = torch.zeros(hkl.shape[0], dtype=torch.bool, device=hkl.device)
    for form in _metric_forms():  # 9 lattice systems, a fixed loop over [B, n, n] systems
        basis = torch.as_tensor(form, dtype=hkl.dtype, device=hkl.device)  # [6, n]
        normal = basis.T @ gram @ basis
        rhs = basis.T @ moment
        # A tiny ridge keeps rank-deficient systems solvable (close to the minimum-norm answer).
        ridge = 1e-12 * normal.diagonal(dim1=1, dim2=2).sum(-1) / normal.shape[-1] + 1e-300
        eye = torch.eye(normal.shape[-1], dtype=normal.dtype, device=normal.device)
        theta = torch.linalg.solve(normal + ridge[:, None, None] * eye, rhs)  # [B, n, 1]
        residual = (
            total
            - 2 * (theta * rhs).sum((1, 2))
            + (theta.transpose(1, 2) @ normal @ theta).flatten()
        )
        fits = (residual <= 1e-12 * total.clamp_min(1e-300)) | (form.shape[1] == 6)
        take = fits & ~found
        chosen = torch.where(take[:, None], (basis @ theta).squeeze(-1), chosen)
        found = found | take
    g11, g22, g33, g12, g13, g23 = chosen.unbind(-1)
    return torch.stack(
        [
            torch.stack([g11, g12, g13], -1),
            torch.stack([g12, g22, g23], -1),
            torch.stack([g13, g23, g33], -1),
        ],
        dim=-2,
    )


@functools.lru_cache(maxsize=1)
def _lattice_rotations() -> tuple[np.ndarray, int]:
    """Candidate rotations of Miller indices, int ``[36, 3, 3]``, and where the hexagonal ones
    start.

    The first 24 are the proper signed permutations of (h, k, l) (rotations of every holohedry
    in standard settings except the hexagonal one); the last 12 form 622 in hexagonal axes,
    generated by the 6-fold rotation (h, k, l) -> (h + k, -h, l) and the 2-fold
    (h, k, l) -> (k, h, -l). Holohedries are centrosymmetric and |cos α| is the same for h and
    -h, so rotations suffice.
    """
    identity = np.eye(3, dtype=np.int64)
    signed_permutations = [
        np.diag(signs) @ identity[list(order)]
        for order in itertools.permutations(range(3))
        for signs in itertools.product((1, -1), repeat=3)
    ]
    proper = [m for m in signed_permutations if round(np.linalg.det(m)) == 1]
    generators = [
        np.array([[1, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]]),
    ]
    hexagonal = {identity.tobytes(): identity}
    frontier = [identity]
    while frontier:
        grown = []
        for element in frontier:
            for generator in generators:
                product = generator @ element
                if product.tobytes() not in hexagonal:
                    hexagonal[product.tobytes()] = product
                    grown.append(product)
        frontier = grown
    return np.stack(proper + list(hexagonal.values())), len(proper)


def _preferred_orientation_factors(
    hkl: torch.Tensor | None,
    d_spacing: torch.Tensor,
    usable: torch.Tensor,
    direction: torch.Tensor,
    r: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """March-Dollase factors ``[B, P]`` for preferred direction ``direction [B, 3]``, r ``[B]``.

    With Miller indices, a powder line is the whole family of reflections that the lattice
    metric makes coincide (the simulator merges them and keeps one representative hkl). The
    factor is the mean over that family: the rotations of the lattice holohedry (those of
    :func:`_lattice_rotations` that preserve the fitted reciprocal metric) applied to the
    representative. This assumes equal intensities within a family, exact when the Laue class
    is the holohedry. Reflections without Miller indices (``hkl`` None or (0, 0, 0)) get cos α
    drawn uniformly in [0, 1] (the distribution for randomly oriented planes).
    """
    random_cos = torch.rand(
        d_spacing.shape, generator=generator, dtype=d_spacing.dtype, device=d_spacing.device
    )
    r = r[:, None]
    random_factor = march_dollase_factor(random_cos, r)
    if hkl is None:
        return random_factor
    has_hkl = (hkl != 0).any(-1) & usable
    metric = _fit_reciprocal_metric(hkl, d_spacing, has_hkl)  # [B, 3, 3]
    table, first_hexagonal = _lattice_rotations()
    rotations = torch.as_tensor(table, dtype=metric.dtype, device=metric.device)  # [K, 3, 3]
    # The holohedry: rotations M with Mᵀ G* M = G*, which map reflections onto reflections of
    # the same d; the hexagonal set where it is the larger group.
    moved = rotations.transpose(1, 2) @ metric[:, None] @ rotations  # [B, K, 3, 3]
    tolerance = 1e-6 * metric.abs().amax(dim=(1, 2)).clamp_min(1e-30)
    preserved = (moved - metric[:, None]).abs().amax(dim=(-1, -2)) <= tolerance[:, None]
    signed, hexagonal = preserved[:, :first_hexagonal], preserved[:, first_hexagonal:]
    use_hexagonal = (hexagonal.sum(1) > signed.sum(1))[:, None]
    in_group = torch.cat([signed & ~use_hexagonal, hexagonal & use_hexagonal], dim=1)
    # Gather each pattern's group (padded to the largest in the batch; identity is always in).
    group_size = in_group.sum(1)
    largest = int(group_size.max())  # one host sync
    order = torch.argsort(in_group.to(torch.int8), dim=1, descending=True, stable=True)
    members = order[:, :largest]  # [B, G]
    weight = (torch.arange(largest, device=metric.device) < group_size[:, None]).to(torch.float32)
    # cos² α of M h: ((M h)ᵀ G* p)² / (|h|² |p|²), with |M h| = |h| for metric-preserving M.
    metric_p = (metric @ direction[:, :, None]).squeeze(-1)  # [B, 3]
    rotated_p = torch.einsum("bgji,bj->bgi", rotations[members], metric_p)  # Mᵀ G* p  [B, G, 3]
    cross = (hkl.float() @ rotated_p.float().transpose(1, 2)).square_()  # [B, P, G]
    norm_h = ((hkl @ metric) * hkl).sum(-1).clamp_min(1e-30)  # [B, P]
    norm_p = (metric_p * direction).sum(-1).clamp_min(1e-30)  # [B]
    cos2 = cross.div_((norm_h * norm_p[:, None]).float().unsqueeze(-1)).clamp_(0.0, 1.0)
    # March-Dollase in cos²: (r² c² + (1 - c²) / r) ** -1.5 = ((r² - 1/r) c² + 1/r) ** -1.5
    r32 = r.float().unsqueeze(-1)
    factor = cos2.mul_(r32 * r32 - 1 / r32).add_(1 / r32).pow_(-1.5)  # [B, P, G]
    family = (factor @ weight.unsqueeze(-1)).squeeze(-1) / group_size[:, None]
    return torch.where(has_hkl, family.to(random_factor.dtype), random_factor)


def _fwhm_deg(
    two_theta: torch.Tensor, cond: SampledConditions, wavelength: float, min_fwhm: float
) -> torch.Tensor:
    """Peak FWHM in degrees at 2θ ``[B, T]`` (degrees) for each pattern's conditions ``[B]``."""
    theta = torch.deg2rad(two_theta) / 2
    tan_theta = torch.tan(theta)
    size = torch.rad2deg(
        cond.scherrer_constant
        * (wavelength / 10.0)
        / (cond.crystallite_size_nm[:, None] * torch.cos(theta))
    )
    strain = torch.rad2deg(4 * cond.microstrain[:, None] * tan_theta)
    instrument = (
        cond.caglioti_u[:, None] * tan_theta**2
        + cond.caglioti_v[:, None] * tan_theta
        + cond.caglioti_w[:, None]
    ).clamp_min(0.0)
    return (instrument + size**2 + strain**2).sqrt().clamp_min(min_fwhm)


def add_counting_noise(
    pattern: torch.Tensor,
    counts: torch.Tensor,
    read_noise: torch.Tensor,
    generator: torch.Generator | None = None,
    exact_poisson: bool = False,
) -> torch.Tensor:
    """Poisson counting noise and Gaussian read noise on non-negative patterns ``[B, L]``.

    ``counts [B]`` is the count level of intensity 1 (``inf`` for no counting noise) and
    ``read_noise [B]`` the read-noise standard deviation in the same units as ``pattern``.
    Returns ``Poisson(pattern * counts) / counts + read_noise * N(0, 1)``; with
    ``exact_poisson=False`` the Poisson term is its normal approximation (mean and variance
    exact), drawn together with the read noise in a single Gaussian.
    """
    if (
        pattern.ndim != 2
        or counts.shape != pattern.shape[:1]
        or read_noise.shape != pattern.shape[:1]
    ):
        raise ValueError(
            f"need pattern [B, L], counts [B] and read_noise [B], got {tuple(pattern.shape)}, "
            f"{tuple(counts.shape)} and {tuple(read_noise.shape)}"
        )
    counts = counts.to(device=pattern.device, dtype=pattern.dtype)[:, None]
    read_variance = read_noise.to(device=pattern.device, dtype=pattern.dtype)[:, None].square()
    finite = torch.isfinite(counts)
    signal = pattern.clamp_min(0.0)
    if exact_poisson:
        scale = torch.where(finite, counts, 1.0)
        poisson = torch.poisson(signal * scale, generator=generator).div_(scale)
        pattern = torch.where(finite, poisson, pattern)
        variance = read_variance.expand_as(pattern)
    else:
        inverse_counts = torch.where(finite, counts.reciprocal(), 0.0)
        variance = torch.addcmul(read_variance, signal, inverse_counts)
    noise = torch.randn(
        pattern.shape, generator=generator, dtype=pattern.dtype, device=pattern.device
    )
    return noise.mul_(variance.sqrt()).add_(pattern)


# --------------------------------------------------------------------------------------------
# Peak lists -> padded tensors
# --------------------------------------------------------------------------------------------


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
        f"peak list {index} must have .two_theta and .intensity or be a (two_theta, intensity) pair, "
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


def _pad(peaks: Sequence, peaks_wavelength: float | None, device) -> _PaddedPeaks:
    """Validate peak lists and pad them into batch tensors (see :func:`pad_peaks`)."""
    arrays = [_peak_arrays(item, index) for index, item in enumerate(peaks)]
    for index, item in enumerate(arrays):
        for name in ("two_theta", "intensity", "d_spacing"):
            if item.get(name) is not None:
                item[name] = _as_numpy(item[name], f"peak list {index}: {name}").reshape(-1)
        if item.get("hkl") is not None:
            item["hkl"] = _as_numpy(item["hkl"], f"peak list {index}: hkl").reshape(-1, 3)
        count = item["two_theta"].size
        for name in ("intensity", "hkl", "d_spacing"):
            if item.get(name) is not None and len(item[name]) != count:
                raise ValueError(
                    f"peak list {index}: two_theta has {count} values but {name} has {len(item[name])}"
                )
        wavelength = item.get("wavelength")
        if (
            wavelength is not None
            and peaks_wavelength is not None
            and abs(float(wavelength) - peaks_wavelength) > 1e-6
        ):
            raise ValueError(
                f"peak list {index} was computed at wavelength {float(wavelength)} Angstrom but "
                f"peaks_wavelength is {peaks_wavelength}; pass peaks_wavelength={float(wavelength)}"
            )
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

    def fail(bad: np.ndarray, what: str) -> None:
        first = int(np.flatnonzero(bad)[0])
        index = int(np.searchsorted(offsets, first, side="right"))
        start = offsets[index - 1] if index > 0 else 0
        raise ValueError(f"peak list {index}, peak {first - start}: {what}")

    def padded(values: np.ndarray, fill: float) -> torch.Tensor:
        out = np.full((batch, width, *values.shape[1:]), fill)
        out[mask] = values
        return torch.as_tensor(out, device=device)

    two_theta, intensity = concatenated("two_theta", 0.0), concatenated("intensity", 0.0)
    bad = ~np.isfinite(two_theta) | (two_theta <= 0) | (two_theta >= 180)
    if bad.any():
        fail(bad, f"two_theta must be finite and in (0, 180) degrees, got {two_theta[bad][0]}")
    bad = ~np.isfinite(intensity) | (intensity < 0)
    if bad.any():
        fail(bad, f"intensity must be finite and >= 0, got {intensity[bad][0]}")
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


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


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


def _render_profiles(
    two_theta: torch.Tensor,
    intensity: torch.Tensor,
    valid: torch.Tensor,
    cond: SampledConditions,
    grid: TwoThetaGrid,
) -> torch.Tensor:
    """Pseudo-Voigt profiles through the constant-width axis u (see the module docstring).

    ``two_theta``, ``intensity``, ``valid``: ``[B, P]`` observed positions (deg), intensities,
    usable flags. Returns unnormalised float32 patterns ``[B, L]``.
    """
    geometry = _grid_geometry(grid, two_theta.device)
    batch, device = two_theta.shape[0], two_theta.device
    first, spacing, inner = geometry["table_first"], geometry["table_spacing"], geometry["inner"]
    num_nodes = geometry["table_axis"].shape[0]

    # u(2θ) on the table nodes: cumulative trapezoid of 1 / FWHM.  [B, T]
    inverse_fwhm = _fwhm_deg(
        geometry["table_axis"].expand(batch, -1), cond, grid.wavelength, grid.step
    ).reciprocal()
    u_table = torch.cumsum((inverse_fwhm[:, 1:] + inverse_fwhm[:, :-1]) * (spacing / 2), dim=1)
    u_table = torch.nn.functional.pad(u_table, (1, 0))

    # The u domain: the grid's u range plus two margins on each side, sampled with
    # _POINTS_PER_FWHM points per unit; reflections are kept within one margin of the grid.
    u_first, u_last = u_table[:, inner.start], u_table[:, inner.stop - 1]
    start = u_first - 2 * _MARGIN_FWHM
    span = u_last - u_first + 4 * _MARGIN_FWHM
    size = _fast_fft_size(math.ceil(_POINTS_PER_FWHM * float(span.max())) + 2)  # one sync per chunk
    scale = size / span  # FFT points per unit u = FWHM in points  [B]
    index_table = (u_table - start[:, None]) * scale[:, None]  # FFT index of each node  [B, T]
    index_step = torch.diff(index_table, dim=1)  # [B, T-1]

    # FFT index of every reflection (piecewise linear between nodes). Its intensity is divided by
    # its FWHM (through d index / d2θ), which makes the profiles area-normalised in 2θ.
    position = (two_theta - first) / spacing
    node = position.floor().clamp(0, num_nodes - 2)
    node_step = torch.gather(index_step, 1, node.long())
    peak_index = torch.gather(index_table, 1, node.long()) + (position - node) * node_step
    valid = valid & (position >= 0) & (position <= num_nodes - 1)
    margin = (scale * _MARGIN_FWHM)[:, None]  # u_first - margin and u_last + margin, in points
    valid = valid & (peak_index >= margin) & (peak_index <= size - margin)
    weight = torch.where(valid, intensity * node_step, 0.0).float()

    # Spread each stick onto its 4 nearest points with cubic B-spline weights at its exact
    # sub-point position, and divide the B-spline's spectrum (sinc⁴) out below: a peak's shape
    # does not depend on where it falls between points.
    peak_index = peak_index.float()
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

    # Convolution with the area-normalised pseudo-Voigt of FWHM `scale` points by FFT; the
    # spectrum is analytic (no truncated tails), divided by that of the B-spline.
    frequency = torch.arange(size // 2 + 1, device=device, dtype=torch.float32) / size
    unspread = torch.sinc(frequency).pow_(-4)
    x = (torch.pi * scale.float())[:, None] * frequency
    eta = cond.eta.float()[:, None]
    spectrum = (
        torch.exp(-x)
        .mul_(eta)
        .add_(torch.exp(x.square_().mul_(-1 / _FOUR_LN2)).mul_(1 - eta))
        .mul_(unspread)
    )
    profile_u = torch.fft.irfft(torch.fft.rfft(sticks.view(batch, size)).mul_(spectrum), n=size)

    # Read back at the grid points: cubic (4-point Lagrange) interpolation at each grid point's
    # FFT index (linear interpolation would flatten peak tops by ~ln2 / 8² = 1 %). The index
    # table is linear between nodes and its inner nodes include both grid ends.
    grid_index = _lerp(index_table[:, inner].float(), geometry["table_lerp"])  # [B, L]
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
    coarse = cond.background_amplitude.float()[:, None] * polynomial + hump
    return _lerp(coarse, geometry["coarse_lerp"])


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
    """Render a few patterns at once (their tensors stay in cache): peak corrections and
    positions ``[b, P]``, profiles, background and noise ``[b, L]``."""
    # Intensity corrections: overall Debye-Waller and March-Dollase preferred orientation.
    line_d = peaks_wavelength / (2 * torch.sin(torch.deg2rad(two_theta) / 2).clamp_min(1e-12))
    if d_spacing is None:
        d_spacing = line_d
    else:
        d_spacing = torch.where(torch.isfinite(d_spacing) & (d_spacing > 0), d_spacing, line_d)
    intensity = intensity * torch.exp(-cond.debye_waller_b[:, None] / (2 * d_spacing.square()))
    if cond.has_preferred_orientation:
        intensity = intensity * _preferred_orientation_factors(
            hkl, d_spacing, mask, cond.preferred_direction, cond.march_dollase_r, generator
        )

    # Positions: cell strain through d, the grid wavelength (and Kα2), then zero shift and
    # sample displacement.
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

    pattern = _scale_to_max_(_render_profiles(position, intensity, valid, cond, grid))
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
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if two_theta.ndim != 2 or intensity.shape != two_theta.shape:
        raise ValueError(
            f"two_theta and intensity must both be [batch, peaks], got {tuple(two_theta.shape)} and "
            f"{tuple(intensity.shape)}"
        )
    device = torch.device(device) if device is not None else two_theta.device
    two_theta = two_theta.to(device=device, dtype=torch.float64)
    intensity = intensity.to(device=device, dtype=torch.float64)
    if mask is None:
        mask = torch.ones(two_theta.shape, dtype=torch.bool, device=device)
    elif mask.shape != two_theta.shape:
        raise ValueError(f"mask must be {tuple(two_theta.shape)}, got {tuple(mask.shape)}")
    mask = mask.to(device=device, dtype=torch.bool)
    if hkl is not None and hkl.shape != (*two_theta.shape, 3):
        raise ValueError(f"hkl must be {(*two_theta.shape, 3)}, got {tuple(hkl.shape)}")
    bad = mask & ~(
        (two_theta > 0) & (two_theta < 180) & torch.isfinite(intensity) & (intensity >= 0)
    )
    if bool(bad.any()):  # one host sync per batch
        row, col = torch.nonzero(bad)[0].tolist()
        raise ValueError(
            f"pattern {row}, peak {col}: need 0 < two_theta < 180 and finite intensity >= 0, got "
            f"two_theta={float(two_theta[row, col])}, intensity={float(intensity[row, col])}"
        )
    batch = two_theta.shape[0]
    if batch == 0:
        return torch.zeros(0, grid.num_points, dtype=torch.float32, device=device)

    if mode == "sticks":
        position = convert_two_theta(two_theta, peaks_wavelength, grid.wavelength)
        valid = mask & torch.isfinite(position)
        return _render_sticks(torch.nan_to_num(position), intensity, valid, grid)

    generator = _device_generator(generator, device)
    if conditions is None:
        conditions = MeasurementConditions.clean()
    if isinstance(conditions, MeasurementConditions):
        cond = conditions.sample(batch, generator=generator, device=device)
    elif isinstance(conditions, SampledConditions):
        if conditions.batch_size != batch:
            raise ValueError(
                f"conditions were sampled for {conditions.batch_size} patterns, got {batch}"
            )
        cond = conditions.to(device)
    else:
        raise TypeError(
            f"conditions must be MeasurementConditions or SampledConditions, got {type(conditions).__name__}"
        )

    if hkl is not None:
        hkl = hkl.to(device=device, dtype=torch.float64)
    if d_spacing is not None:
        if d_spacing.shape != two_theta.shape:
            raise ValueError(
                f"d_spacing must be {tuple(two_theta.shape)}, got {tuple(d_spacing.shape)}"
            )
        d_spacing = d_spacing.to(device=device, dtype=torch.float64)

    patterns = torch.empty(batch, grid.num_points, dtype=torch.float32, device=device)
    if device.type == "cpu":
        # Chunks of rows with similar peak counts, each cut to its own longest list: rows are
        # padded to the batch's longest (thousands of lines for a large low-symmetry cell, ~100
        # for the median), and padding costs as much as peaks.
        counts = torch.where(mask, torch.arange(1, mask.shape[1] + 1, device=device), 0).amax(dim=1)
        order = torch.argsort(counts, stable=True)
        chunks = [order[start : start + _CHUNK_ROWS] for start in range(0, batch, _CHUNK_ROWS)]
        widths = [max(int(counts[rows[-1]]), 1) for rows in chunks]
    else:
        chunks, widths = [slice(0, batch)], [two_theta.shape[1]]
    for rows, width in zip(chunks, widths, strict=True):
        patterns[rows] = _render_chunk(
            two_theta[rows, :width],
            intensity[rows, :width],
            mask[rows, :width],
            None if hkl is None else hkl[rows, :width],
            None if d_spacing is None else d_spacing[rows, :width],
            cond.select(rows),
            grid,
            generator,
            peaks_wavelength,
        )
    return patterns


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
        >>> patterns = render_patterns([(two_theta, intensity)], grid, MeasurementConditions.default(),
        ...                            generator=torch.Generator().manual_seed(0))
    """
    padded = _pad(peaks, peaks_wavelength, device)
    return render_padded(
        padded.two_theta,
        padded.intensity,
        padded.mask,
        grid,
        conditions,
        mode=mode,
        generator=generator,
        device=device,
        peaks_wavelength=peaks_wavelength,
        hkl=padded.hkl,
        d_spacing=padded.d_spacing,
    )


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
