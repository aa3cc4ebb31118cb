"""SectorTests: azimuthal sectors ((chi, q) bins) and the kept sums, against pyFAI's integrate2d_ng
and its 1D integrations over one sector's azimuth range."""

from __future__ import annotations

import fabio
import numpy as np
import pytest

from xrdct_dask.integrate import SUM_NAMES, IntegrationPlan, Integrator
from xrdct_dask.io import read_cbf_payload, read_frame
from xrdct_dask.io.source import open_source
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.simulate import make_integrator
from xrdct_dask.testing.conformance.base import EngineTests
from xrdct_dask.testing.conformance.integrate import MONITOR, SHAPE, fresh_ai, gap_mask, synthetic_frames

RTOL = 1e-6  # float32 patterns from the same float32 matrix, sums in double: a few float32 ulps
FULL_CIRCLE = (-180.0, 180.0)


def first_pixel_bins(plan: IntegrationPlan) -> np.ndarray:
    """bool ``(npt_azim, npt_rad)``: the bins of the first pixel pyFAI's 2D full splitting handles.

    pyFAI (``FullSplitCSR_2d.calc_lut_2d``) splits that pixel in an uninitialised buffer, so its
    coefficients change from one matrix pyFAI builds to the next; the plan asks pyFAI for them
    again in a clean buffer (:func:`xrdct_dask.integrate.csr._first_pixel_fixed`).  pyFAI's own
    ``integrate2d_ng`` keeps the stale ones: those few bins are left out of the comparisons."""
    first = int(plan.csr_indices.min())
    rows = plan.csc_rows[plan.csc_indptr[first]:plan.csc_indptr[first + 1]]
    out = np.zeros(plan.nbins, bool)
    out[rows] = True
    return out.reshape(plan.pattern_shape)


def assert_pattern_close(ours, ref, good, what: str, rtol: float = RTOL) -> None:
    """``ours`` equals ``ref`` to ``rtol`` relative to each bin, or to ``rtol`` of the pattern's
    largest value where a bin is (nearly) empty, on the bins ``good``."""
    assert good.sum() > 100, what
    scale = np.abs(ref[good]).max()
    np.testing.assert_allclose(ours[good], ref[good], rtol=rtol, atol=rtol * scale, err_msg=what)


class SectorTests(EngineTests):
    """Sectors (``npt_azim > 1``) equal pyFAI's ``integrate2d_ng`` (full splitting, CSR, Cython) bin by
    bin, on simulated frames and on the real Pilatus 2M frame; each sector's clipped or median
    pattern equals pyFAI's ``sigma_clip_ng`` / ``medfilt1d_ng`` over that sector's azimuth range;
    the kept sums re-bin and merge exactly.

    Tolerance 1e-6 relative (to the bin, or to the pattern's maximum for bins near zero): both
    sides apply the same float32 coefficients with double accumulators; what is left is the final
    float32 rounding (6e-8) and the order of the additions."""

    @pytest.fixture(scope="class")
    @classmethod
    def frames(cls):
        return synthetic_frames(3, 11)

    @pytest.fixture(scope="class")
    @classmethod
    def mask(cls):
        return gap_mask()

    def make(self, ai, mask, npt_rad=200, npt_azim=12, **kw):
        return Integrator(ai, SHAPE, npt_rad, "q_nm^-1", mask=mask, npt_azim=npt_azim, engine=self.engine, **kw)

    @pytest.mark.parametrize("error_model", ["poisson", "azimuthal"])
    @pytest.mark.parametrize("corrections", ["none", "dark+flat"])
    def test_sectors_match_pyfai_integrate2d(self, small_ai, frames, mask, error_model, corrections):
        """12 sectors x 200 q bins of three frames with monitors, a module gap, a pixel bad in one
        frame, optionally dark and flat: intensity and sigma equal pyFAI's integrate2d_ng, the
        radial and chi axes too."""
        rng = np.random.default_rng(5)
        kw = {}
        if corrections == "dark+flat":
            kw = dict(dark=rng.uniform(0, 5, SHAPE).astype(np.float32),
                      flat=rng.uniform(0.9, 1.1, SHAPE).astype(np.float32))
        integ = self.make(small_ai, mask, polarization_factor=0.99, error_model=error_model,
                          azimuth_range=FULL_CIRCLE, **kw)
        res = integ.integrate(self.asarray(frames), monitor=MONITOR[:3])
        assert res.intensity.shape == (3, 12, 200)
        stale = first_pixel_bins(integ.plan)
        for f in range(3):
            ref = fresh_ai(small_ai).integrate2d_ng(
                frames[f], 200, 12, unit="q_nm^-1", method=("full", "csr", "cython"), error_model=error_model,
                polarization_factor=0.99, mask=(mask != 0) | (frames[f] < 0), normalization_factor=MONITOR[f],
                azimuth_range=FULL_CIRCLE, **kw)
            np.testing.assert_allclose(res.radial, ref.radial, rtol=1e-12)
            np.testing.assert_allclose(integ.azimuthal, ref.azimuthal, rtol=1e-12)
            good = (ref.sum_normalization > 0) & ~stale
            assert_pattern_close(res.intensity[f], ref.intensity, good, "intensity")
            assert_pattern_close(res.sigma[f], ref.sigma, good, "sigma")

    def test_default_azimuth_range_is_the_whole_circle(self, small_ai, frames, mask):
        """Without azimuth_range the sectors split -180..180 deg (pyFAI's default would be the
        pixels' chi extent: sector edges that move with the detector); kept sums by default."""
        integ = self.make(small_ai, mask, npt_azim=8, polarization_factor=None)
        assert integ.keep_sums and not self.make(small_ai, mask, npt_azim=1).keep_sums
        np.testing.assert_allclose(integ.azimuthal, np.arange(-157.5, 180, 45), atol=1e-5)
        res = integ.integrate(self.asarray(frames[:1]))
        ref = fresh_ai(small_ai).integrate2d_ng(frames[0], 200, 8, unit="q_nm^-1", method=("full", "csr", "cython"),
                                                error_model="poisson", mask=(mask != 0) | (frames[0] < 0),
                                                azimuth_range=FULL_CIRCLE)
        np.testing.assert_allclose(integ.azimuthal, ref.azimuthal, rtol=1e-12)
        assert_pattern_close(res.intensity[0], ref.intensity,
                             (ref.sum_normalization > 0) & ~first_pixel_bins(integ.plan), "intensity")

    @pytest.mark.parametrize("outlier", ["sigma-clip", "median"])
    def test_outliers_per_sector_equal_pyfai_1d_over_the_sector(self, small_ai, frames, mask, outlier):
        """What sigma-clipping and the median mean with sectors: each (chi, q) bin is clipped (or
        its quantiles taken) over its own pixels, exactly as pyFAI's 1D sigma_clip_ng / medfilt1d_ng
        over that sector's azimuth range does (no splitting for the clip, as pyFAI's)."""
        edges = np.linspace(*FULL_CIRCLE, 5)
        radial_range = (5.0, 300.0)
        split = "no" if outlier == "sigma-clip" else "full"
        if outlier == "median" and self.engine != "numpy":
            pytest.skip("the median filter runs on the CPU engine")
        kw = dict(outlier="sigma-clip", clip_threshold=3.0, max_iter=5) if outlier == "sigma-clip" else dict(
            outlier="median", percentile=(25, 75))
        integ = self.make(small_ai, mask, npt_rad=150, npt_azim=4, azimuth_range=FULL_CIRCLE, split=split,
                          radial_range=radial_range, polarization_factor=0.99, **kw)
        res = integ.integrate(self.asarray(frames), monitor=MONITOR[:3])
        for f in range(3):
            for k in range(4):
                common = dict(unit="q_nm^-1", method=(split, "csr", "cython"), error_model="poisson",
                              polarization_factor=0.99, mask=(mask != 0) | (frames[f] < 0),
                              normalization_factor=MONITOR[f], radial_range=radial_range,
                              azimuth_range=(edges[k], edges[k + 1]))
                ai = fresh_ai(small_ai)
                ref = (ai.sigma_clip_ng(frames[f], 150, thres=3.0, max_iter=5, **common) if outlier == "sigma-clip"
                       else ai.medfilt1d_ng(frames[f], 150, percentile=(25, 75), **common))
                good = ref.sum_normalization > 0
                if split == "full":  # the 1D matrix splits pixels over the sector's edges differently
                    good &= np.abs(res.intensity[f, k] / np.where(good, ref.intensity, 1) - 1) < 0.05
                    assert good.sum() > 0.9 * (ref.sum_normalization > 0).sum()
                    assert_pattern_close(res.intensity[f, k], ref.intensity, good, f"{outlier} sector {k}",
                                         rtol=0.05)
                    continue
                assert_pattern_close(res.intensity[f, k], ref.intensity, good, f"{outlier} sector {k}", rtol=1e-4)

    def test_one_sector_is_the_1d_integration(self, small_ai, frames, mask):
        """npt_azim 1 with an azimuth range is pyFAI's integrate1d_ng over that range."""
        integ = self.make(small_ai, mask, npt_rad=300, npt_azim=1, azimuth_range=(-90.0, 45.0),
                          polarization_factor=0.99)
        res = integ.integrate(self.asarray(frames), monitor=MONITOR[:3])
        assert res.intensity.shape == (3, 300) and integ.azimuthal is None
        for f in range(3):
            ref = fresh_ai(small_ai).integrate1d_ng(
                frames[f], 300, unit="q_nm^-1", method=("full", "csr", "cython"), error_model="poisson",
                polarization_factor=0.99, mask=(mask != 0) | (frames[f] < 0), normalization_factor=MONITOR[f],
                azimuth_range=(-90.0, 45.0))
            assert_pattern_close(res.intensity[f], ref.intensity, ref.sum_normalization > 0, "intensity")

    def test_real_pilatus_frame_matches_pyfai(self, real_cbf):
        """The real Pilatus 2M frame (gaps -1, bad pixels -2, mostly empty: a single-crystal
        frame), 36 sectors x 500 q bins, decoded and integrated in one pass: pyFAI's integrate2d_ng
        of fabio's pixels to 1e-6."""

        ai = make_integrator("pilatus2m")
        frame = fabio.open(str(real_cbf)).data
        integ = Integrator(ai, frame.shape, 500, "q_nm^-1", npt_azim=36, azimuth_range=FULL_CIRCLE,
                           polarization_factor=0.99, engine=self.engine)
        res, status = integ.integrate_payloads([read_cbf_payload(real_cbf)])
        assert status.tolist() == [0]
        ref = fresh_ai(ai).integrate2d_ng(frame, 500, 36, unit="q_nm^-1", method=("full", "csr", "cython"),
                                          error_model="poisson", polarization_factor=0.99, mask=frame < 0,
                                          azimuth_range=FULL_CIRCLE)
        good = (ref.sum_normalization > 0) & ~first_pixel_bins(integ.plan)
        assert_pattern_close(res.intensity[0], ref.intensity, good, "intensity")
        assert_pattern_close(res.sigma[0], ref.sigma, good, "sigma")

    def test_sums_rebin_to_half_the_bins(self, small_ai, frames, mask):
        """Two neighbouring q bins merged from the kept sums (S1 + S2) / (N1 + N2) are the bin of an
        integration with half the bins over the same range (pyFAI's edges of n bins are every other
        edge of 2n); the mean of their intensities is not (a bin's pixels weigh by their share).
        Exact up to the float32 coefficients: 1e-5; the mean misses by 100x that.  (The variance
        does not re-bin so: a pixel split between the two bins counts c1^2 + c2^2 in their sums,
        (c1 + c2)^2 in the coarse bin's; frames, which share no pixel, merge exactly, next test.)

        In one sector (a 1D matrix): pyFAI's 2D full splitting is not additive over resolutions (it
        puts up to 6 % of a pixel in another sector at 200 q bins than at 100, for 277 of the 38k
        pixels here), so 2D bins re-bin to what pyFAI's finer matrix says, not to its coarser one."""
        radial_range = (5.0, 300.0)
        fine = self.make(small_ai, mask, npt_rad=200, npt_azim=1, radial_range=radial_range, polarization_factor=0.99)
        coarse = self.make(small_ai, mask, npt_rad=100, npt_azim=1, radial_range=radial_range,
                           polarization_factor=0.99)
        s = fine.sums(self.asarray(frames), monitor=MONITOR[:3])
        pair = {k: self.asnumpy(getattr(s, k)).reshape(3, 100, 2).sum(axis=-1) for k in ("signal", "normalization")}
        want = coarse.integrate(self.asarray(frames), monitor=MONITOR[:3])
        good = pair["normalization"] > 0
        np.testing.assert_allclose(pair["signal"][good] / pair["normalization"][good], want.intensity[good], rtol=1e-5)
        naive = fine.integrate(self.asarray(frames), monitor=MONITOR[:3]).intensity.reshape(3, 100, 2).mean(axis=-1)
        assert np.abs(naive[good] / want.intensity[good] - 1).max() > 100 * 1e-5

    def test_sums_of_two_frames_are_the_two_integrated_together(self, small_ai, frames, mask):
        """Two frames merged from their kept sums (signal, variance and normalisation added) equal
        pyFAI integrating the two as one exposure: their counts added, the variance given as the
        sum of the two Poisson variances, the monitor the sum of the two (1e-5)."""
        integ = self.make(small_ai, mask, npt_rad=200, npt_azim=6, azimuth_range=FULL_CIRCLE, polarization_factor=0.99)
        a, b = frames[0].astype(np.int64), frames[1].astype(np.int64)
        s = integ.sums(self.asarray(frames[:2]), monitor=MONITOR[:2])
        sig, var, nrm = (self.asnumpy(getattr(s, k)).sum(axis=0) for k in ("signal", "variance", "normalization"))
        bad = (a < 0) | (b < 0) | (mask != 0)
        together = np.where(bad, 0, a + b).astype(np.float32)
        variance = np.where(bad, 0, np.maximum(a, 1) + np.maximum(b, 1)).astype(np.float32)
        ref = fresh_ai(small_ai).integrate2d_ng(together, 200, 6, unit="q_nm^-1", method=("full", "csr", "cython"),
                                                variance=variance, polarization_factor=0.99, mask=bad,
                                                normalization_factor=float(MONITOR[0] + MONITOR[1]),
                                                azimuth_range=FULL_CIRCLE)
        # pixel 50, 50 is bad in frame 1 only: pyFAI's one exposure masks it in both (left out)
        good = (ref.sum_normalization > 0) & ~first_pixel_bins(integ.plan)
        rows = integ.plan.csc_rows[integ.plan.csc_indptr[50 * SHAPE[1] + 50]:integ.plan.csc_indptr[50 * SHAPE[1] + 51]]
        good.reshape(-1)[rows] = False
        with np.errstate(all="ignore"):
            assert_pattern_close(sig / nrm, ref.intensity, good, "merged intensity", rtol=1e-5)
            assert_pattern_close(np.sqrt(var) / nrm, ref.sigma, good, "merged sigma", rtol=1e-5)

    def test_kept_sums_come_with_the_patterns(self, sim_scan):
        """integrate_source with keep_sums: the five float32 sums of every frame, in SUM_NAMES order,
        give back its intensity (S / N) and sigma (sqrt(V) / N); a missing frame's are NaN."""
        integ = Integrator(sim_scan.poni, SHAPE, 150, mask=sim_scan.mask, npt_azim=4, azimuth_range=FULL_CIRCLE,
                           keep_sums=True, engine=self.engine)
        src = open_source(sim_scan.frames)
        idx = np.array([0, 1, -1, 3, 4])
        intensity, sigma, status, nbytes, sums = integ.integrate_source(src, idx, np.linspace(0.9, 1.1, 5))
        assert len(SUM_NAMES) == 5 and sums.shape == (5, 5, 4, 150) and sums.dtype == np.float32
        assert status[2] == FrameStatus.MISSING and np.isnan(sums[:, 2]).all() and nbytes > 0
        ok = np.delete(np.arange(5), 2)
        signal, variance, norm, norm_sq, count = sums[:, ok]
        good = norm > 0
        np.testing.assert_allclose((signal / np.where(good, norm, 1))[good], intensity[ok][good], rtol=1e-6)
        np.testing.assert_allclose((np.sqrt(variance) / np.where(good, norm, 1))[good], sigma[ok][good], rtol=1e-6)
        assert (count[good] > 0).all() and (norm_sq[good] > 0).all()
        plain = Integrator(sim_scan.poni, SHAPE, 150, mask=sim_scan.mask, npt_azim=4, azimuth_range=FULL_CIRCLE,
                           keep_sums=False, engine=self.engine).integrate_source(src, idx, np.linspace(0.9, 1.1, 5))
        assert len(plain) == 4
        np.testing.assert_array_equal(plain[0], intensity)

    def test_equals_numpy_twin(self, sim_scan):
        """64 simulated frames in 36 sectors with a drifting monitor: intensity, sigma and the kept
        sums equal the numpy engine's to 1e-5 on every bin with signal."""
        self.skip_on_twin()
        stack = np.stack([read_frame(sim_scan.frame_path(i)) for i in range(64)])
        mon = np.linspace(0.8, 1.2, 64)
        kw = dict(mask=sim_scan.mask, npt_azim=36, azimuth_range=FULL_CIRCLE, polarization_factor=0.99)
        cpu = Integrator(sim_scan.poni, SHAPE, 300, engine="numpy", **kw)
        dev = Integrator(sim_scan.poni, SHAPE, 300, engine=self.engine, **kw)
        a = cpu.integrate(stack, monitor=mon)
        b = dev.integrate(self.asarray(stack), monitor=mon)
        good = a.intensity != 0
        np.testing.assert_allclose(b.intensity[good], a.intensity[good], rtol=1e-5)
        np.testing.assert_allclose(b.sigma[good], a.sigma[good], rtol=1e-5)
