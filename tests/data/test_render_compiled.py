"""The renderer's compiled CPU kernels (physmoe.data.render.compiled) against the torch steps they
replace on the CPU (the steps every other device runs), stage by stage and end to end.

The oracle tests of ``test_render.py`` (direct pseudo-Voigt sums, hand-computed positions, noise
moments) run through the compiled kernels on the CPU; these tests tie them to the torch steps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from physmoe.data.grid import TwoThetaGrid
from physmoe.data.render import MeasurementConditions, engine, render_patterns
from physmoe.data.render.padding import _pad
from physmoe.data.simulate import simulate_peaks

GRID = TwoThetaGrid(two_theta_min=5.0, two_theta_max=90.0, num_points=4250)


def random_lines(seed: int, batch: int = 12) -> list[tuple[np.ndarray, np.ndarray]]:
    """Peak lists of very different lengths (one long, as large cells have), some lines outside
    the grid (their tails still count) and near 0 and 180 degrees."""
    rng = np.random.default_rng(seed)
    lists = []
    for n in rng.choice([1, 5, 40, 200, 1500], size=batch):
        two_theta = np.sort(rng.uniform(0.5, 179.5, n))
        lists.append((two_theta, rng.uniform(0.0, 100.0, n)))
    return lists


def conditions(name: str) -> MeasurementConditions:
    if name == "clean":
        return MeasurementConditions.clean()
    if name == "default":
        return MeasurementConditions.default()
    # Every pattern with Kα2, strong preferred orientation, shifts and strain.
    return replace(
        MeasurementConditions.default(),
        ka2_probability=1.0,
        march_dollase_r=(0.5, 2.0),
        debye_waller_b=(1.0, 3.0),
        displacement_mm=(-0.5, 0.5),
    )


def chunk_inputs(peaks, cond_name: str, seed: int):
    padded = _pad(peaks, None, "cpu")
    generator = torch.Generator().manual_seed(seed)
    cond = conditions(cond_name).sample(len(peaks), generator=generator, device="cpu")
    geometry = engine._grid_geometry(GRID, torch.device("cpu"))
    axis = engine._u_axis(geometry, cond, GRID, len(peaks))
    return engine._Lines(*padded), cond, geometry, axis


@pytest.fixture
def torch_steps(monkeypatch):
    """Run the torch steps on the CPU (as on other devices)."""
    monkeypatch.setattr(engine, "_COMPILED_ON_CPU", False)


@pytest.mark.parametrize("cond_name", ["clean", "default", "strong"])
@pytest.mark.parametrize("seed", [0, 1])
def test_sticks_are_identical_to_the_torch_steps(cond_name, seed):
    lines, cond, geometry, axis = chunk_inputs(random_lines(seed), cond_name, seed)
    compiled, steps = (
        function(lines, cond, GRID, torch.Generator().manual_seed(7), 1.54056, geometry, axis)
        for function in (engine._compiled_sticks, engine._torch_sticks)
    )
    assert compiled.abs().sum() > 0
    assert torch.equal(compiled, steps)  # same float32 operations in the same order


def test_sticks_with_miller_indices_and_d_spacings_match_the_torch_steps(test_structures):
    # Preferred orientation from each line's hkl family, Debye-Waller from the reflection's d.
    peaks = [simulate_peaks(s.structure, return_hkl=True) for s in test_structures[::4]]
    lines, cond, geometry, axis = chunk_inputs(peaks, "strong", 3)
    assert lines.hkl is not None and lines.d_spacing is not None
    compiled, steps = (
        function(lines, cond, GRID, torch.Generator().manual_seed(7), 1.54056, geometry, axis)
        for function in (engine._compiled_sticks, engine._torch_sticks)
    )
    torch.testing.assert_close(compiled, steps, rtol=1e-5, atol=1e-6 * float(steps.abs().max()))


def test_width_integral_and_convolution_match_the_torch_steps(torch_steps):
    lines, cond, geometry, axis = chunk_inputs(random_lines(2), "default", 2)
    sticks = engine._torch_sticks(lines, cond, GRID, None, 1.54056, geometry, axis)
    expected_u = engine._width_integral(geometry, cond, GRID, len(cond.eta))
    expected_profile = engine._convolve_pseudo_voigt(sticks, axis, cond)
    engine._COMPILED_ON_CPU = True  # restored by monkeypatch
    torch.testing.assert_close(
        engine._width_integral(geometry, cond, GRID, len(cond.eta)), expected_u, rtol=1e-12, atol=0
    )
    profile = engine._convolve_pseudo_voigt(sticks, axis, cond)
    torch.testing.assert_close(profile, expected_profile, rtol=0, atol=2e-6 * float(profile.max()))


@pytest.mark.parametrize("cond_name", ["clean", "default", "strong"])
def test_patterns_match_the_torch_steps(cond_name, monkeypatch):
    peaks = random_lines(4, batch=40) + [(np.array([179.0]), np.array([1.0]))]  # last: no signal
    compiled = render_patterns(
        peaks, GRID, conditions(cond_name), generator=torch.Generator().manual_seed(5)
    )
    monkeypatch.setattr(engine, "_COMPILED_ON_CPU", False)
    steps = render_patterns(
        peaks, GRID, conditions(cond_name), generator=torch.Generator().manual_seed(5)
    )
    # float32 rounding of the read-back index moves steep flanks by ~1e-5 of the maximum
    torch.testing.assert_close(compiled, steps, rtol=0, atol=1e-4)
    assert float((compiled - steps).abs().mean()) < 1e-6
    peak = compiled.amax(dim=1)
    assert torch.equal(peak > 0, steps.amax(dim=1) > 0)  # the same rows without signal
    assert torch.equal(compiled[-1], torch.zeros(GRID.num_points)) and peak.sum() > 30
    assert torch.equal(peak[peak > 0], torch.ones(int((peak > 0).sum())))
