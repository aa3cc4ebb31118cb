"""IntegratorTests: azimuthal integration against pyFAI's integrate1d_ng, sigma_clip_ng, medfilt1d_ng."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from xrdct_dask.integrate import Integrator
from xrdct_dask.io import read_cbf_payload, read_frame
from xrdct_dask.simulate import DETECTORS
from xrdct_dask.testing.conformance.base import EngineTests

# ==========================================================================================
# integrate: frames -> I(q), sigma(q), pyFAI's numbers
# ==========================================================================================
SHAPE = DETECTORS["small"][0]  # (209, 184): the simulator's 8x8-binned Pilatus 2M


RTOL = 1e-4


MONITOR = np.array([1.0, 2.0, 0.5, 1.5, 0.8])


def synthetic_frames(n: int, seed: int) -> np.ndarray:
    """``(n, *SHAPE)`` int32 Poisson(300) counts with what a detector's frames hold: a module gap
    (rows 100-103, -1 in every frame: static), a pixel bad in frame 1 only (-2) and a zinger in frame 2."""
    rng = np.random.default_rng(seed)
    f = rng.poisson(300, (n,) + SHAPE).astype(np.int32)
    f[:, 100:104] = -1
    f[1, 50, 50] = -2
    f[2, 60, 90] = 400000
    return f


def gap_mask() -> np.ndarray:
    """The static mask of :func:`synthetic_frames`: the module gap."""
    m = np.zeros(SHAPE, np.uint8)
    m[100:104] = 1
    return m


def fresh_ai(ai):
    """A new integrator with the same geometry: pyFAI caches engines per mask, keep oracles clean."""

    return AzimuthalIntegrator(**{k: v for k, v in ai.get_config().items()
                                  if k in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3")},
                               detector=ai.detector, wavelength=ai.wavelength)


def assert_close_to_pyfai(ours, ref, what: str) -> None:
    """``ours`` equals pyFAI's result ``ref.<what>`` to RTOL on the bins pyFAI has pixels in."""
    good = ref.sum_normalization > 0
    assert good.sum() > 100
    np.testing.assert_allclose(ours[good], getattr(ref, what)[good], rtol=RTOL, err_msg=what)


class IntegratorTests(EngineTests):
    """Integration equals pyFAI's integrate1d_ng / sigma_clip_ng / medfilt1d_ng (Cython CSR engine)
    with the same geometry, method and corrections.

    Single-precision engines on both sides: rtol 1e-4 on bins with signal is far above float32
    rounding (~1e-7) and far below any physics error (a missing solid-angle or polarization factor
    is a >1e-2 effect at these angles).  Another engine equals the numpy one to 1e-5 (both
    accumulate in double precision; float32 inputs)."""

    @pytest.fixture(scope="class")
    @classmethod
    def frames(cls):
        f = synthetic_frames(5, 7)
        f[2, 150, 120] = 400000     # a second zinger
        f[3, 60:63, 60:63] = 90000  # a single-crystal spot
        return f

    @pytest.fixture(scope="class")
    @classmethod
    def mask(cls):
        m = gap_mask()
        m[:3, :5] = 1
        return m

    def make(self, ai, mask, npt_rad: int = 300, **kw):

        return Integrator(ai, SHAPE, npt_rad, "q_nm^-1", mask=mask, engine=self.engine, **kw)

    def make_for_scan(self, scan, npt_rad: int, engine: str | None = None, **kw):
        """An integrator of a simulated scan's geometry and mask (pyFAI's polarization 0.99)."""

        return Integrator(scan.poni, SHAPE, npt_rad, mask=scan.mask, polarization_factor=0.99,
                          engine=engine or self.engine, **kw)

    @pytest.mark.parametrize("error_model", ["poisson", "azimuthal"])
    @pytest.mark.parametrize("corrections", ["none", "dark+flat"])
    def test_integrate_matches_pyfai(self, small_ai, frames, mask, error_model, corrections):
        rng = np.random.default_rng(3)
        kw = {}
        if corrections == "dark+flat":
            kw = dict(dark=rng.uniform(0, 5, SHAPE).astype(np.float32),
                      flat=rng.uniform(0.9, 1.1, SHAPE).astype(np.float32))
        integ = self.make(small_ai, mask, polarization_factor=0.99, error_model=error_model, **kw)
        res = integ.integrate(frames, monitor=MONITOR)
        for f in range(len(frames)):
            ref = fresh_ai(small_ai).integrate1d_ng(
                frames[f], 300, unit="q_nm^-1", method=("full", "csr", "cython"), error_model=error_model,
                polarization_factor=0.99, mask=(mask != 0) | (frames[f] < 0), normalization_factor=MONITOR[f], **kw)
            np.testing.assert_allclose(res.radial, ref.radial, rtol=1e-9)
            assert_close_to_pyfai(res.intensity[f], ref, "intensity")
            assert_close_to_pyfai(res.sigma[f], ref, "sigma")

    @pytest.mark.parametrize("error_model", ["poisson", "azimuthal"])
    def test_sigma_clip_matches_pyfai(self, small_ai, frames, mask, error_model):
        """pyFAI's sigma_clip_ng (no pixel splitting): outliers (zingers, spots) are rejected per bin."""
        integ = self.make(small_ai, mask, polarization_factor=0.99, error_model=error_model, split="no",
                          outlier="sigma-clip", clip_threshold=3.0, max_iter=5)
        res = integ.integrate(frames, monitor=MONITOR)
        for f in range(len(frames)):
            ref = fresh_ai(small_ai).sigma_clip_ng(
                frames[f], 300, unit="q_nm^-1", method=("no", "csr", "cython"), error_model=error_model,
                polarization_factor=0.99, mask=(mask != 0) | (frames[f] < 0), normalization_factor=MONITOR[f],
                thres=3.0, max_iter=5)
            assert_close_to_pyfai(res.intensity[f], ref, "intensity")
            assert_close_to_pyfai(res.sigma[f], ref, "sigma")
        if error_model != "azimuthal":
            return  # with Poisson sigmas a zinger drags the whole bin out (pyFAI does the same)
        # frame 2's zingers are gone: clipped frame 2 agrees with the clean frames (same counts,
        # so compare monitor-scaled intensities)
        plain = self.make(small_ai, mask, polarization_factor=0.99, split="no").integrate(frames)
        res = integ.integrate(frames)
        clean_level = np.nanmedian(res.intensity[[0, 4]], axis=0)
        p = integ.plan
        pixel = 60 * SHAPE[1] + 90
        hit = p.csc_rows[p.csc_indptr[pixel]]  # the bin of the first zinger (no splitting: one bin)
        assert plain.intensity[2][hit] > 1.5 * clean_level[hit]
        assert abs(res.intensity[2][hit] / clean_level[hit] - 1) < 0.1

    def test_median_matches_pyfai(self, small_ai, frames, mask):
        integ = self.make(small_ai, mask, polarization_factor=0.99, outlier="median", percentile=(25, 75))
        res = integ.integrate(frames, monitor=MONITOR)
        for f in range(len(frames)):
            ref = fresh_ai(small_ai).medfilt1d_ng(
                frames[f], 300, unit="q_nm^-1", method=("full", "csr", "cython"), error_model="poisson",
                polarization_factor=0.99, mask=(mask != 0) | (frames[f] < 0), normalization_factor=MONITOR[f],
                percentile=(25, 75))
            assert_close_to_pyfai(res.intensity[f], ref, "intensity")
            assert_close_to_pyfai(res.sigma[f], ref, "sigma")

    def test_payloads_equal_decoded_frames(self, sim_scan):
        """The fused decode+integrate path gives the same sums as decoding first."""

        paths = [sim_scan.frame_path(i) for i in range(40)]
        integ = self.make_for_scan(sim_scan, 500)
        a = integ.integrate(np.stack([read_frame(p) for p in paths]))
        b, status = integ.integrate_payloads([read_cbf_payload(p) for p in paths])
        assert not status.any()
        np.testing.assert_allclose(b.intensity, a.intensity, rtol=1e-6)
        np.testing.assert_allclose(b.sigma, a.sigma, rtol=1e-6)

    def test_single_frame_and_bad_frame_payload(self, small_ai, mask, sim_scan):
        """A 2D frame gives 1D patterns; a truncated payload gets status 1 and NaN patterns while
        the good one beside it equals the frame integrated alone."""

        integ = self.make(small_ai, mask, 200)
        frame = read_frame(sim_scan.frame_path(0))
        one = integ.integrate(frame)
        assert one.intensity.shape == (200,) and one.sigma.shape == (200,)
        good = read_cbf_payload(sim_scan.frame_path(0))
        truncated = bytes(good.data)[:1000]
        res, status = integ.integrate_payloads([good, truncated])
        assert status.tolist() == [0, 1]
        np.testing.assert_allclose(res.intensity[0], one.intensity, rtol=1e-6)
        assert np.isnan(res.intensity[1]).all()

    def test_batches_equal_single_calls(self, sim_scan):
        """``integrate_batches`` (pipelined on a GPU) yields one result per batch, in order, equal to
        the numpy engine's one call on all payloads (1e-5); a truncated payload in a batch gets
        status 1 and NaN, its neighbours their patterns."""

        payloads = [read_cbf_payload(sim_scan.frame_path(i)) for i in range(100)]
        integ = self.make_for_scan(sim_scan, 500)
        cpu = self.make_for_scan(sim_scan, 500, engine="numpy")
        batches = [(payloads[a:a + 32], np.ones(len(payloads[a:a + 32]))) for a in range(0, 100, 32)]
        got = list(integ.integrate_batches(batches))
        assert len(got) == 4
        ref, _ = cpu.integrate_payloads(payloads)
        np.testing.assert_allclose(np.concatenate([g[0] for g in got]), ref.intensity, rtol=1e-5)
        truncated = [bytes(payloads[0].data)[:500]] + payloads[1:3]
        (i, s, st_), = integ.integrate_batches([(truncated, None)])
        assert st_.tolist() == [1, 0, 0] and np.isnan(i[0]).all() and np.isfinite(i[1]).all()

    def test_tasks_on_two_threads_share_one_engine(self, sim_scan):
        """Two tasks' batch streams on one engine at once (a GPU engine gives each its own pipeline
        of streams and buffers) give the results each gives alone, bit for bit."""


        payloads = [read_cbf_payload(sim_scan.frame_path(i)) for i in range(96)]
        integ = self.make_for_scan(sim_scan, 400)

        def run(part):
            return np.concatenate([r[0] for r in integ.integrate_batches(
                [(part[a:a + 16], np.linspace(0.9, 1.1, len(part[a:a + 16]))) for a in range(0, len(part), 16)])])

        alone = [run(payloads[:48]), run(payloads[48:])]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(run, [payloads[:48], payloads[48:]]))
        for a, b in zip(alone, together):
            np.testing.assert_array_equal(a, b)

    def test_contract_errors(self, small_ai, mask):

        integ = self.make(small_ai, mask, 100)
        with pytest.raises(ValueError, match=r"frames must be \(n, 209, 184\)"):
            integ.integrate(np.zeros((2, 10, 10), np.int32))
        with pytest.raises(ValueError, match="3 monitor values for 2 frames"):
            integ.integrate(np.zeros((2,) + SHAPE, np.int32), monitor=[1, 2, 3])
        with pytest.raises(ValueError, match="detector is 209 x 184 pixels but the frames are 100 x 100"):
            Integrator(small_ai, (100, 100), 100, engine=self.engine)
        with pytest.raises(ValueError, match="error_model"):
            Integrator(small_ai, SHAPE, 100, error_model="gauss", engine=self.engine)

    @pytest.mark.parametrize("kw", [dict(), dict(error_model="azimuthal"),
                                    dict(error_model="azimuthal", outlier="sigma-clip", split="no", clip_threshold=3.0),
                                    dict(error_model="poisson", outlier="sigma-clip", split="no")])
    def test_equals_numpy_twin(self, sim_scan, kw):
        """64 simulated frames, already on the engine's device, with a drifting monitor: intensity
        and sigma equal the numpy engine's to 1e-5 on every bin with signal."""

        self.skip_on_twin()
        stack = np.stack([read_frame(sim_scan.frame_path(i)) for i in range(64)])
        mon = np.linspace(0.8, 1.2, 64)
        cpu = self.make_for_scan(sim_scan, 700, engine="numpy", **kw)
        integ = self.make_for_scan(sim_scan, 700, **kw)
        assert integ.engine == self.engine
        a = cpu.integrate(stack, monitor=mon)
        b = integ.integrate(self.asarray(stack), monitor=mon)
        good = a.intensity != 0
        np.testing.assert_allclose(b.intensity[good], a.intensity[good], rtol=1e-5)
        np.testing.assert_allclose(b.sigma[good], a.sigma[good], rtol=1e-5)
