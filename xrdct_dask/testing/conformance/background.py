"""Conformance of the air / container background and the axis finder (:mod:`xrdct_dask.sinogram.air`,
:mod:`xrdct_dask.sinogram.axis`), on every engine.

The data are the simulator's sample in its surroundings (:mod:`xrdct_dask.simulate.environment`):
the phantom in a glass tube, air whose scattering changes linearly along x, the rotation axis off
the detector's centre, as sinogram blocks ``(nomega, nx, nq)`` on a coarse Q grid with Poisson
noise, and their ground truth (the air part, the phases' maps, the axis).  Subclass
:class:`BackgroundTests` with ``engine = "numpy"`` or ``"cupy"``; the cupy class also compares
with the numpy engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask import sinogram as sg
from xrdct_dask.simulate.environment import SampleEnvironment, environment_block, poisson
from xrdct_dask.sinogram.air import find_air_columns, subtract_air, subtract_measured
from xrdct_dask.sinogram.axis import find_axis
from xrdct_dask.testing.conformance.base import EngineTests
from xrdct_dask.testing.conformance.sinogram import fbp_host, rms

COUNTS = 2000  # Poisson counts of the brightest value of a q bin: noise of ~2 % there, ~10 % in the air


def true_air_columns(env: SampleEnvironment, nx: int, nomega: int, omega_range_deg: float = 180,
                     noise_levels: float = 3.0) -> np.ndarray:
    """bool (nx,): the columns where the sample and tube add, at every angle, less than
    ``noise_levels`` times a frame's noise in the q sum (Poisson at ``COUNTS``): air as far as any
    measurement can tell (a wall's last partial voxel, smeared by the projector, adds a few %)."""
    s, truth = environment_block(env, nx, nomega, omega_range_deg)
    sample = (s - truth["air"][None]).sum(axis=-1)
    noise = np.sqrt(np.clip(s, 0, None).sum(axis=-1) * float(s.max()) / COUNTS)  # var = sum_q value_q / scale
    return np.all(sample <= noise_levels * noise, axis=0)


ISSUE = dict(tube_outer_px=11.5, tube_wall_px=2.0, air_level=2.0, air_ratio=2.0)


class BackgroundTests(EngineTests):
    """The air columns, the air model, the measured background and the axis, against ground truth."""

    @pytest.mark.parametrize("env", [
        SampleEnvironment(axis_offset_px=5, **ISSUE),  # the issue's scan: a tube, the axis 5 px off, air x2
        SampleEnvironment(axis_offset_px=-3.3, tube_shift_px=(1.3, -0.8), tube_outer_px=11.5, air_level=2.0,
                          air_ratio=0.5),  # a tube off the axis, air halving along x
        SampleEnvironment(axis_offset_px=7.5, sample_radius_px=11.0, air_level=1.0, air_ratio=3.0),  # no tube
        SampleEnvironment(axis_offset_px=1.0, tube_outer_px=11.5, air_level=0.0),  # vacuum: no air at all
    ], ids=["issue", "tube-off-axis", "bare-sample", "no-air"])
    def test_air_columns_are_air_in_every_projection(self, env, rng):
        """The columns found are all air (the sample and the tube add less than 3 noise levels there at
        every angle: a centred glass wall, constant over omega, is sample), and they reach to within
        3 columns of the true edges of the support on each side that has 4 or more air columns."""
        nx, nomega = 40, 64
        s, _ = environment_block(env, nx, nomega)
        air = find_air_columns(self.asarray(poisson(s, COUNTS, rng).sum(axis=-1)))
        truth = true_air_columns(env, nx, nomega)
        assert air.found, air.reason
        assert not (air.mask & ~truth).any(), (air.columns, np.flatnonzero(truth))
        left_true = int(np.argmin(truth)) if not truth.all() else nx
        right_true = nx - int(np.argmin(truth[::-1]))
        if left_true >= 4:
            assert air.left >= left_true - 3, (air.left, left_true)
        if nx - right_true >= 4:
            assert air.right <= right_true + 3, (air.right, right_true)

    @pytest.mark.parametrize("env", [
        SampleEnvironment(sample_radius_px=30, air_level=1.0, air_ratio=2.0),  # wider than the detector
        SampleEnvironment(sample_radius_px=22, tube_shift_px=(0.0, 6.0), air_level=1.0, air_ratio=2.0),  # off centre
    ], ids=["wide", "off-centre"])
    def test_a_sample_filling_the_field_of_view_is_left_untouched(self, env, rng):
        """No column is air in every projection: nothing is subtracted (the prepared sinogram equals the
        one without a background step), and the reason is returned."""
        s, truth = environment_block(env, 40, 64)
        noisy = poisson(s, COUNTS, rng)
        air = find_air_columns(self.asarray(noisy.sum(axis=-1)))
        assert not air.found and "no edge column is air" in air.reason
        ok = np.ones(noisy.shape[:2], bool)
        auto, info = sg.prepare_sinogram(self.asarray(noisy), ok, truth["omega_deg"], background="auto", center=20.0)
        off, _ = sg.prepare_sinogram(self.asarray(noisy), ok, truth["omega_deg"], background=False, center=20.0)
        assert "background" not in info["steps"] and info["air"]["reason"] == air.reason
        np.testing.assert_array_equal(self.asnumpy(auto), self.asnumpy(off))

    def test_air_ramp_is_removed_per_q(self, rng):
        """Air doubling along x, a different pattern per q: after the auto background the sinogram's
        error against the air-free one is < 1.5 % of the air's largest value per q bin on average
        (noise: ~0.8 %), and the reconstruction's error against the air-free one drops at least 8x."""
        env = SampleEnvironment(axis_offset_px=5, **ISSUE)
        s, truth = environment_block(env, 40, 64)
        noisy = poisson(s, 20 * COUNTS, rng)
        clean = noisy - truth["air"][None].astype(np.float32)
        ok = np.ones(s.shape[:2], bool)
        out, info = sg.prepare_sinogram(self.asarray(noisy), ok, truth["omega_deg"], zingers=False, background="auto",
                                        center=truth["axis_px"])
        out = self.asnumpy(out)
        assert info["steps"] == ["fill_bad", "background"] and np.asarray(info["air_model"]).shape == (2, s.shape[-1])
        err = np.abs(out - clean).mean(axis=(0, 1)) / truth["air"].max(axis=0)
        assert err.mean() < 0.015, err
        c = truth["axis_px"]
        ref = fbp_host(clean, truth["omega_deg"], c)
        gain = rms(fbp_host(noisy, truth["omega_deg"], c) - ref) / rms(fbp_host(out, truth["omega_deg"], c) - ref)
        assert gain > 8, gain

    def test_measured_background_line_and_slice(self, rng):
        """A measured empty-tube scan (its tube and air, every angle; or one line, for a tube centred on
        the axis) subtracted per q leaves the sample alone: within the measurement's noise of the
        tube-free, air-free sinogram; a background of the wrong shape is refused in one line."""
        env = SampleEnvironment(axis_offset_px=2.5, **ISSUE)
        s, truth = environment_block(env, 40, 64)
        bg = truth["tube"] + truth["air"][None]
        sample = s - bg
        for measured in (bg, bg[:1]):  # a centred tube looks the same at every angle: one line will do
            noisy_bg = poisson(measured, 20 * COUNTS, rng)
            out = self.asnumpy(subtract_measured(self.asarray(s), self.asarray(noisy_bg)))
            assert np.abs(out - sample).mean() < 0.02 * np.abs(bg).max()
            assert np.abs(s - sample).mean() > 10 * np.abs(out - sample).mean()
        with pytest.raises(ValueError, match=r"the measured background is \(3, 40, 24\) but the sinogram block is"):
            subtract_measured(self.asarray(s), self.asarray(bg[:3]))

    @pytest.mark.parametrize("env, nomega, omega_range", [
        (SampleEnvironment(axis_offset_px=5.0, **ISSUE), 64, 180),
        (SampleEnvironment(axis_offset_px=0.0, **ISSUE), 64, 180),
        (SampleEnvironment(axis_offset_px=10.0, tube_outer_px=9.5, air_level=2.0, air_ratio=2.0), 64, 180),
        (SampleEnvironment(axis_offset_px=-10.0, tube_outer_px=9.5, air_level=2.0, air_ratio=0.5), 128, 360),
    ], ids=["5px", "centred", "10px", "360-minus-10px"])
    def test_axis_found_to_a_tenth_of_a_pixel(self, env, nomega, omega_range, rng):
        """Whole-pixel offsets 0 to 10 px, half and full turns: the axis of the background-corrected
        q sum is within 0.1 px of the truth, with a confidence above 0.8."""
        s, truth = environment_block(env, 40, nomega, omega_range)
        noisy = self.asarray(poisson(s, COUNTS, rng))
        air = find_air_columns(noisy.sum(axis=-1))
        corrected, _ = subtract_air(noisy, air)
        guess = (air.left + air.right - 1) / 2 if air.found else None
        est = find_axis(corrected.sum(axis=-1), truth["omega_deg"], guess_px=guess)
        assert abs(est.center_px - truth["axis_px"]) <= 0.1, (est, truth["axis_px"])
        assert est.confidence > 0.8 and est.method == ("mirror-360" if omega_range == 360 else "vo-180")

    def test_equals_numpy_twin(self, rng):
        """The engine's air columns, air model, corrected sinogram and axis equal numpy's (1e-4 of the
        largest value; the axis to 1e-3 px)."""
        self.skip_on_twin()
        s, truth = environment_block(SampleEnvironment(axis_offset_px=3.4, **ISSUE), 40, 64)
        noisy = poisson(s, COUNTS, rng)
        ref_air = find_air_columns(noisy.sum(axis=-1))
        ref, ref_coef = subtract_air(noisy, ref_air)
        air = find_air_columns(self.asarray(noisy).sum(axis=-1))
        out, coef = subtract_air(self.asarray(noisy), air)
        assert isinstance(out, self.xp.ndarray) and air.columns == ref_air.columns
        np.testing.assert_allclose(coef, ref_coef, rtol=1e-4, atol=1e-4 * np.abs(ref_coef).max())
        np.testing.assert_allclose(self.asnumpy(out), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
        a = find_axis(out.sum(axis=-1), truth["omega_deg"])
        b = find_axis(ref.sum(axis=-1), truth["omega_deg"])
        assert abs(a.center_px - b.center_px) < 1e-3
