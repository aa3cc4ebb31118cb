"""SinogramPrepTests: each sinogram correction against the phantom's ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import shift

from xrdct_dask import sinogram as sg
from xrdct_dask.backend import to_host
from xrdct_dask.recon import fbp
from xrdct_dask.simulate import make_phantom, omega_angles_deg, project
from xrdct_dask.testing.conformance.base import EngineTests

# ==========================================================================================
# sinogram preparation: (nomega, nx, nq) blocks, each correction against ground truth
# ==========================================================================================
PREP_NX = 64


def sinogram_block(nx: int = PREP_NX, nomega: int = 100, omega_range_deg: float = 180.0):
    """(sinogram (nomega, nx, nq), truth (nx, nx, nq), omega_deg): one q bin per phase map of the
    simulator's phantom, plus one q bin of their sum (a peak shared by all phases)."""
    maps = make_phantom(1, nx)[:, 0]
    maps = np.concatenate([maps, maps.sum(axis=0, keepdims=True)])
    omega = omega_angles_deg(nomega, omega_range_deg)
    sino = np.moveaxis(project(maps, omega), 0, -1).astype(np.float32)
    return sino, np.moveaxis(maps, 0, -1), omega


def circle(n: int) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= (n // 2 - 1) ** 2


def rms(a, mask=None) -> float:
    a = a[mask] if mask is not None else a
    return float(np.sqrt(np.mean(np.square(a))))


def poisson(sino, counts: float, rng):
    """Poisson noise at ``counts`` for the brightest value, back in the sinogram's units."""
    scale = counts / sino.max()
    return (rng.poisson(np.clip(sino, 0, None) * scale) / scale).astype(np.float32)


def ring_amplitude(diff: np.ndarray, radii) -> float:
    """Largest |azimuthal mean| of a difference image on the 1-pixel annuli of the given radii
    around the centre: a stripe at column x back-projects to a ring of radius |x - nx // 2|."""
    n = diff.shape[0]
    yy, xx = np.mgrid[:n, :n]
    rad = np.rint(np.hypot(yy - n // 2, xx - n // 2)).astype(int)
    return max(abs(float(diff[rad == r].mean())) for r in radii)


def fbp_host(sino, omega, center=None):
    """The numpy engine's FBP (axis ``center`` in pixels from the first x, default nx // 2): the
    yardstick every engine's prepared sinogram is measured with."""

    return fbp(to_host(sino), omega, center=center)


class SinogramPrepTests(EngineTests):
    """Sinogram preparation on simulated sinograms with ground truth (the simulator's phantom and
    its skimage Radon transform): each correction undoes the artefact it is for, measured on the
    reconstruction against the clean one (numpy FBP), and leaves clean data alone; another engine
    equals the numpy one (1e-4 of the maximum, the same counts, the centre to 1e-3 px)."""

    def test_monitor_normalisation_undoes_beam_decay(self):
        """A sinogram recorded with a drifting I0 (x monitor / reference) is restored exactly (float32)."""

        sino, _, _ = sinogram_block(nomega=40)
        monitor = 1e5 * (1 + 0.2 * np.sin(np.arange(sino.shape[0] * PREP_NX) / 37.0)).reshape(sino.shape[:2])
        recorded = self.asarray(sino * (monitor / 1e5)[..., None])
        out = self.asnumpy(sg.normalize_monitor(recorded, monitor, reference=1e5))
        np.testing.assert_allclose(out, sino, rtol=1e-5, atol=1e-6)
        monitor[3, 5] = 0  # a dead monitor reading: the frame becomes missing
        assert np.isnan(self.asnumpy(sg.normalize_monitor(recorded, monitor))[3, 5]).all()
        with pytest.raises(ValueError, match=r"the monitor is \(2, 2\) but the sinogram's frames are \(40, 64\)"):
            sg.normalize_monitor(self.asarray(sino), np.ones((2, 2)))

    def test_bad_frames_are_filled_from_neighbours_and_recorded(self, rng):
        """5% of frames lost (NaN or flagged) plus one whole projection: filling from neighbours keeps the
        reconstruction within 2% (RMS, of the phase fraction 1) of the clean one, and the returned
        mask names exactly the frames that were filled."""

        sino, truth, omega = sinogram_block()
        ok = rng.random(sino.shape[:2]) > 0.05
        ok[37] = False
        damaged = sino.copy()
        damaged[~ok] = np.nan
        damaged[5, 7] = 1e6  # flagged bad but with finite garbage: frame_ok wins
        ok[5, 7] = False
        filled, mask = sg.fill_bad_frames(self.asarray(damaged), ok)
        filled, mask = self.asnumpy(filled), self.asnumpy(mask)
        np.testing.assert_array_equal(mask, ~ok)
        assert np.isfinite(filled).all()
        np.testing.assert_array_equal(filled[ok], sino[ok])  # good frames untouched
        inside = circle(PREP_NX)
        clean = fbp_host(sino, omega)
        assert rms(fbp_host(filled, omega) - clean, inside) < 0.02
        zeroed = np.where(ok[..., None], sino, 0)  # what not filling does: 5% missing rays
        assert rms(fbp_host(zeroed, omega) - clean, inside) > 3 * rms(fbp_host(filled, omega) - clean, inside)

    def test_prepare_records_filled_frames_and_can_switch_filling_off(self):

        sino, _, omega = sinogram_block(nomega=30)
        ok = np.ones(sino.shape[:2], bool)
        ok[[2, 9], [10, 11]] = False
        damaged = self.asarray(np.where(ok[..., None], sino, np.nan))
        # filling alone (the default chain also replaces zingers; this noiseless phantom's sharp edges
        # would look like some)
        out, info = sg.prepare_sinogram(damaged, ok, omega, zingers=False, center=PREP_NX // 2)
        assert info["filled"] == 2 and info["steps"] == ["fill_bad"] and info["center"] == PREP_NX // 2
        out, info = sg.prepare_sinogram(damaged, ok, omega, fill_bad=False, center=32)
        out = self.asnumpy(out)
        assert info["filled"] == 0 and (out[~ok] == 0).all() and np.isfinite(out).all()

    @pytest.mark.parametrize("omega_range", [180, 360])
    @pytest.mark.parametrize("offset_px", [-2.63, 0.37, 3.1])
    def test_center_of_rotation_found_to_a_quarter_pixel(self, omega_range, offset_px, rng):
        """The axis displaced by a known fraction of a pixel (cubic-spline shift of the sinogram, Poisson
        noise at 2000 counts) is found within 0.25 px, and reconstructing with it recovers the phantom
        as well as the centred scan does."""


        sino, truth, omega = sinogram_block(nomega=90 if omega_range == 180 else 180, omega_range_deg=omega_range)
        moved = shift(sino, (0, offset_px, 0), order=3, mode="constant")
        noisy = poisson(moved, 2000, rng)
        c = sg.estimate_center(self.asarray(noisy), omega)
        assert abs(c - (PREP_NX // 2 + offset_px)) <= 0.25, c
        n = PREP_NX
        inside = circle(n) & (np.hypot(*np.mgrid[-n // 2:n // 2, -n // 2:n // 2]) < n // 2 - 5)
        err_found = rms(fbp_host(noisy, omega, center=c)[..., 4] - truth[..., 4], inside)
        err_centred = rms(fbp_host(poisson(sino, 2000, rng), omega)[..., 4] - truth[..., 4], inside)
        assert err_found < 1.2 * err_centred

    def test_manual_center_overrides_the_estimate(self):

        sino, _, omega = sinogram_block(nomega=30)
        ok = np.ones(sino.shape[:2], bool)
        _, auto = sg.prepare_sinogram(self.asarray(sino), ok, omega)
        _, manual = sg.prepare_sinogram(self.asarray(sino), ok, omega, center=30.5)
        assert abs(auto["center"] - PREP_NX // 2) < 0.25 and manual["center"] == 30.5 and "center" not in manual["steps"]

    def test_jitter_is_measured_and_removed(self, rng):
        """Random projection shifts (sd 1 px, without the part that is a sinusoid of omega, which is
        indistinguishable from where the sample sits) are measured to 0.1 px RMS, and correcting them
        cuts the reconstruction error against the jitter-free scan at least 4x."""


        sino, truth, omega = sinogram_block()
        _, true_shift = sg.fit_sinusoid(rng.normal(0, 1.0, sino.shape[0]), omega)
        jittered = np.stack([shift(p, (s, 0), order=3, mode="constant") for p, s in zip(sino, true_shift)])
        measured = sg.estimate_jitter(self.asarray(jittered), omega, max_shift_px=4)
        assert rms(measured - true_shift) < 0.1
        corrected = self.asnumpy(sg.shift_projections(self.asarray(jittered), measured))
        inside = circle(PREP_NX)
        clean = fbp_host(sino, omega)
        assert rms(fbp_host(corrected, omega) - clean, inside) * 4 < rms(fbp_host(jittered, omega) - clean, inside)

    def test_shift_projections_moves_each_row(self):

        s = np.zeros((2, 10, 1), np.float32)
        s[:, 4] = 1
        out = self.asnumpy(sg.shift_projections(self.asarray(s), [0.5, -2.0]))
        np.testing.assert_allclose(out[0, 2:6, 0], [-0.0625, 0.5625, 0.5625, -0.0625])  # Keys cubic, half a pixel
        np.testing.assert_allclose(out[1, :, 0], np.eye(10)[6], atol=1e-7)  # whole pixels: an exact move by +2
        ramp = np.tile(np.arange(10, dtype=np.float32)[None, :, None], (1, 1, 2))
        shifted = self.asnumpy(sg.shift_projections(self.asarray(ramp), [0.3]))
        np.testing.assert_allclose(shifted[0, 1:8, 0], np.arange(1, 8) + 0.3, rtol=1e-6)

    @pytest.mark.parametrize("per_projection", [False, True])
    def test_air_background_from_edge_columns(self, per_projection):
        """Air scattering b(q) (different per q, drifting 10% over the scan) recorded at every x is
        removed by subtracting the sample-free edge columns: the reconstruction's error against the
        clean one drops at least 10x (per projection) or 4x (one background for the whole scan)."""

        sino, _, omega = sinogram_block()
        air_q = np.array([0.3, 0.1, 0.5, 0.2, 0.4], np.float32) * sino.max()
        drift = 1 + 0.1 * np.linspace(0, 1, sino.shape[0])[:, None, None]
        recorded = sino + (air_q[None, None, :] * drift).astype(np.float32)
        corrected, bg = sg.subtract_background(self.asarray(recorded), edge_columns=2, per_projection=per_projection)
        assert bg.shape == ((sino.shape[0] if per_projection else 1), 1, 5)
        inside = circle(PREP_NX)
        clean = fbp_host(sino, omega)
        gain = rms(fbp_host(recorded, omega) - clean, inside) / rms(fbp_host(corrected, omega) - clean, inside)
        assert gain > (10 if per_projection else 4), gain
        with pytest.raises(ValueError, match="edge_columns"):
            sg.subtract_background(self.asarray(recorded), edge_columns=40)

    def test_stripe_filter_suppresses_rings_and_keeps_the_phase_maps(self, rng):
        """Hot and miscalibrated detector bins (columns with a gain error of 8-12% or an offset of 3% of
        the maximum, at every angle and q) ring in every q bin's map; the stripe filter finds those
        columns and cuts each map's ring amplitude at least 5x, and every map still correlates with
        the phantom at r >= 0.9.  (128 px: the filter interpolates a stripe from its neighbouring
        columns, which needs features wider than a couple of pixels.)"""

        n = 128
        sino, truth, omega = sinogram_block(nx=n, nomega=200)
        noisy = poisson(sino, 5000, rng)
        striped = noisy.copy()
        stripes = [(28, 1.10, 0.0), (43, 0.92, 0.0), (81, 1.12, 0.0), (93, 1.0, 0.03)]
        for x, gain, offset in stripes:
            striped[:, x] = striped[:, x] * gain + offset * sino.max()
        filtered, found = sg.remove_stripes(self.asarray(striped))
        filtered = self.asnumpy(filtered)
        assert {x for x, *_ in stripes} <= set(found)
        clean, rec_striped, rec_filtered = fbp_host(noisy, omega), fbp_host(striped, omega), fbp_host(filtered, omega)
        radii = [abs(x - n // 2) for x, *_ in stripes]
        inside = circle(n)
        for k in range(sino.shape[-1]):
            before = ring_amplitude(rec_striped[..., k] - clean[..., k], radii)
            after = ring_amplitude(rec_filtered[..., k] - clean[..., k], radii)
            assert before > 5 * after, (k, before, after)
            r = np.corrcoef(rec_filtered[..., k][inside], truth[..., k][inside])[0, 1]
            assert r >= 0.9, (k, r)
        # columns given (as the workflow passes them from the slice's q-summed sinogram) act the same
        again, cols = sg.remove_stripes(self.asarray(striped), columns=found)
        assert cols == found and np.array_equal(self.asnumpy(again), filtered)

    def test_zingers_are_removed_and_clean_data_left_alone(self, rng):
        """Spikes of 5-50x the local value in single (omega, x, q) points (zingers, single-frame spots)
        are found (>= 95%) and replaced; the reconstruction error they cause drops at least 5x; on
        the same data without spikes (Poisson noise at 2000 counts) fewer than 0.05% of the points
        are touched."""

        sino, _, omega = sinogram_block()
        noisy = poisson(sino, 2000, rng)
        _, n_clean = sg.suppress_zingers(self.asarray(noisy))
        assert n_clean < 5e-4 * noisy.size, n_clean
        spiky = noisy.copy()
        inside = np.argwhere(sino > 0.3 * sino.max())
        picks = inside[rng.choice(len(inside), 60, replace=False)]
        w, x, q = picks.T
        spiky[w, x, q] *= rng.uniform(5, 50, len(picks)).astype(np.float32)
        cleaned, n = sg.suppress_zingers(self.asarray(spiky))
        cleaned = self.asnumpy(cleaned)
        found = np.abs(cleaned[w, x, q] - noisy[w, x, q]) < 0.5 * np.abs(spiky[w, x, q] - noisy[w, x, q])
        assert found.mean() >= 0.95 and n < len(picks) + 2 * n_clean + 5
        ref = fbp_host(noisy, omega)
        assert rms(fbp_host(spiky, omega) - ref) > 5 * rms(fbp_host(cleaned, omega) - ref)

    def test_noise_free_sinogram_has_no_zingers(self):
        """The trace of a real object is continuous along omega: nothing in a clean phantom sinogram is
        an isolated spike (also not the single-voxel objects' traces)."""

        sino, _, _ = sinogram_block()
        dots = np.zeros((1, PREP_NX, PREP_NX))
        dots[0, 20, 40] = dots[0, 45, 30] = 1.0
        dot_sino = np.moveaxis(project(dots, omega_angles_deg(100)), 0, -1).astype(np.float32)
        for s in (sino, dot_sino):
            out, n = sg.suppress_zingers(self.asarray(s))
            assert n == 0 and np.array_equal(self.asnumpy(out), s)

    def test_prepare_chain_applies_switched_on_steps_in_order(self):

        sino, _, omega = sinogram_block(nomega=60)
        ok = np.ones(sino.shape[:2], bool)
        recorded = sino + 0.1 * sino.max()
        recorded[10, 30, 2] *= 40
        out, info = sg.prepare_sinogram(self.asarray(recorded), ok, omega, zingers=True, background=True,
                                        stripes=True, jitter=True)
        assert info["steps"] == ["fill_bad", "zingers", "background", "stripes", "jitter", "center"]
        assert [k for k in sg.PREP_STEPS if k in info["steps"]] == info["steps"]  # the documented order
        assert info["zingers"] >= 1 and isinstance(info["stripe_columns"], list) and len(info["shifts_px"]) == 60 \
            and abs(info["center"] - PREP_NX // 2) < 0.25
        out = self.asnumpy(out)
        assert out.dtype == np.float32 and out.shape == sino.shape
        with pytest.raises(ValueError, match="omega has 3 angles but the sinogram has 60 rows"):
            sg.prepare_sinogram(self.asarray(sino), ok, omega[:3])

    def test_equals_numpy_twin(self, rng):
        """Every step switched on, on noisy data with a zinger and 5 % bad frames: the engine's
        prepared block equals numpy's to 1e-4 of its maximum, with the same counts of filled frames
        and zingers and the same centre (1e-3 px)."""

        self.skip_on_twin()
        sino, _, omega = sinogram_block(nomega=60)
        noisy = poisson(sino, 2000, rng)
        noisy[7, 20, 1] *= 30
        ok = rng.random(sino.shape[:2]) > 0.05
        noisy[~ok] = np.nan
        kw = dict(zingers=True, background=True, stripes=True, jitter=True)
        ref, ref_info = sg.prepare_sinogram(noisy, ok, omega, **kw)
        out, info = sg.prepare_sinogram(self.asarray(noisy), self.asarray(ok), omega, **kw)
        assert isinstance(out, self.xp.ndarray)
        np.testing.assert_allclose(self.asnumpy(out), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
        assert info["filled"] == ref_info["filled"] and info["zingers"] == ref_info["zingers"]
        assert abs(info["center"] - ref_info["center"]) < 1e-3
