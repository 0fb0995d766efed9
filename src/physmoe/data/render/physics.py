"""The physics the renderer applies: 2θ at another wavelength, March-Dollase preferred orientation
(with the lattice metric fitted from the peak list), peak widths, counting noise."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

from .conditions import SampledConditions


def convert_two_theta(
    two_theta: torch.Tensor,
    from_wavelength: float | torch.Tensor,
    to_wavelength: float | torch.Tensor,
) -> torch.Tensor:
    """2θ (degrees) measured at ``from_wavelength`` -> 2θ of the same d-spacing at
    ``to_wavelength``.

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


def random_cosines(
    usable: torch.Tensor, generator: torch.Generator | None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """cos α uniform in [0, 1) for the ``usable [B, P]`` lines (randomly oriented planes), 0 in
    the padding: one draw per line, in row-major order, whatever the padding (a chunk is padded
    to its longest list, often ten times the median)."""
    values = torch.zeros(usable.shape, dtype=dtype, device=usable.device)
    count = int(usable.sum())  # one host sync per chunk
    values[usable] = torch.rand(count, generator=generator, dtype=dtype, device=usable.device)
    return values


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
    random_cos = random_cosines(usable, generator, d_spacing.dtype)
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
