"""Measurement conditions: the ranges a pattern's effects are drawn from
(:class:`MeasurementConditions`) and the values drawn for a batch (:class:`SampledConditions`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from ..grid import CU_KA1, CU_KA2

Range = tuple[float, float]
_MAX_BACKGROUND_DEGREE = 12


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
                "preferred_directions must be non-zero (h, k, l) triples, "
                f"got {self.preferred_directions}"
            )
        object.__setattr__(self, "preferred_directions", directions)

    @classmethod
    def default(cls) -> MeasurementConditions:
        """Training realism: every effect on, ranges as documented in the class docstring."""
        return cls()

    @classmethod
    def clean(cls) -> MeasurementConditions:
        """Evaluation: fixed moderate broadening, no shift, strain, Kα2, texture, background or
        noise.

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

    def _scalar_ranges(self) -> dict[str, tuple[tuple[float, float], bool]]:
        """Each scalar condition's ``(low, high)`` range and whether it is drawn log-uniformly.

        The order fixes which uniform row each condition gets, so it is part of the seeded result.
        """
        return {
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
        scalar_ranges = self._scalar_ranges()
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
                    f"SampledConditions.{name} has shape {tuple(value.shape)}; "
                    f"expected batch {tuple(batch)}"
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
        device = torch.device(device)
        tensors = [getattr(self, name) for name in self._tensor_names()]
        if all(t.device == device and t.dtype == torch.float64 for t in tensors):
            return self
        return self._map(lambda t: t.to(device=device, dtype=torch.float64))

    def select(self, rows: slice) -> SampledConditions:
        """The conditions of a slice of the batch (the ``has_*`` flags are kept)."""
        return self._map(lambda t: t[rows])
