"""Integration equals pyFAI's integrate1d_ng / sigma_clip_ng / medfilt1d_ng (Cython CSR engine)
with the same geometry, method and corrections.

Single-precision engines on both sides: rtol 1e-4 on bins with signal is far above float32
rounding (~1e-7) and far below any physics error (a missing solid-angle or polarization factor
is a >1e-2 effect at these angles).  ``IntegratorTests`` is the conformance suite of an engine.
"""

from __future__ import annotations

import numpy as np
import pytest
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from xrdct_dask.integrate import Integrator

SHAPE = (209, 184)
RTOL = 1e-4


def fresh_ai(ai):
    """A new integrator with the same geometry: pyFAI caches engines per mask, keep oracles clean."""
    return AzimuthalIntegrator(**{k: v for k, v in ai.get_config().items()
                                  if k in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3")},
                               detector=ai.detector, wavelength=ai.wavelength)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(7)
    f = rng.poisson(300, (5,) + SHAPE).astype(np.int32)
    f[:, 100:104] = -1                    # a module gap (also in the static mask)
    f[1, 50, 50] = -2                     # a pixel bad in one frame only
    f[2, 60, 90] = f[2, 150, 120] = 400000  # zingers
    f[3, 60:63, 60:63] = 90000            # a single-crystal spot
    return f


@pytest.fixture(scope="module")
def mask():
    m = np.zeros(SHAPE, np.uint8)
    m[100:104] = 1
    m[:3, :5] = 1
    return m


MONITOR = np.array([1.0, 2.0, 0.5, 1.5, 0.8])


def assert_close(ours, ref, what):
    good = ref.sum_normalization > 0
    assert good.sum() > 100
    np.testing.assert_allclose(ours[good], getattr(ref, what)[good], rtol=RTOL, err_msg=what)


class IntegratorTests:
    """Subclass with ``engine = ...`` to run the conformance suite on an engine."""

    engine = "numpy"

    def make(self, ai, mask, **kw):
        return Integrator(ai, SHAPE, 300, "q_nm^-1", mask=mask, engine=self.engine, **kw)

    @pytest.mark.parametrize("error_model", ["poisson", "azimuthal"])
    @pytest.mark.parametrize("corrections", ["none", "dark+flat"])
    def test_integrate_matches_pyfai(self, small_ai, frames, mask, error_model, corrections):
        rng = np.random.default_rng(3)
        kw = {}
        if corrections == "dark+flat":
            kw = dict(dark=rng.uniform(0, 5, SHAPE).astype(np.float32), flat=rng.uniform(0.9, 1.1, SHAPE).astype(np.float32))
        integ = self.make(small_ai, mask, polarization_factor=0.99, error_model=error_model, **kw)
        res = integ.integrate(frames, monitor=MONITOR)
        for f in range(len(frames)):
            ref = fresh_ai(small_ai).integrate1d_ng(
                frames[f], 300, unit="q_nm^-1", method=("full", "csr", "cython"), error_model=error_model,
                polarization_factor=0.99, mask=(mask != 0) | (frames[f] < 0), normalization_factor=MONITOR[f], **kw)
            np.testing.assert_allclose(res.radial, ref.radial, rtol=1e-9)
            assert_close(res.intensity[f], ref, "intensity")
            assert_close(res.sigma[f], ref, "sigma")

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
            assert_close(res.intensity[f], ref, "intensity")
            assert_close(res.sigma[f], ref, "sigma")
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
            assert_close(res.intensity[f], ref, "intensity")
            assert_close(res.sigma[f], ref, "sigma")

    def test_payloads_equal_decoded_frames(self, sim_scan):
        """The fused decode+integrate path gives the same sums as decoding first."""
        from xrdct_dask.io import read_cbf_payload, read_frame

        paths = [sim_scan.frame_path(i) for i in range(40)]
        integ = Integrator(sim_scan.poni, SHAPE, 500, mask=sim_scan.mask, polarization_factor=0.99, engine=self.engine)
        a = integ.integrate(np.stack([read_frame(p) for p in paths]))
        b, status = integ.integrate_payloads([read_cbf_payload(p) for p in paths])
        assert not status.any()
        np.testing.assert_allclose(b.intensity, a.intensity, rtol=1e-6)
        np.testing.assert_allclose(b.sigma, a.sigma, rtol=1e-6)


class TestNumpyEngine(IntegratorTests):
    engine = "numpy"


def test_contract_errors(small_ai, mask):
    integ = Integrator(small_ai, SHAPE, 100, mask=mask, engine="numpy")
    with pytest.raises(ValueError, match=r"frames must be \(n, 209, 184\)"):
        integ.integrate(np.zeros((2, 10, 10), np.int32))
    with pytest.raises(ValueError, match="3 monitor values for 2 frames"):
        integ.integrate(np.zeros((2,) + SHAPE, np.int32), monitor=[1, 2, 3])
    with pytest.raises(ValueError, match="detector is 209 x 184 pixels but the frames are 100 x 100"):
        Integrator(small_ai, (100, 100), 100)
    with pytest.raises(ValueError, match="error_model"):
        Integrator(small_ai, SHAPE, 100, error_model="gauss")


def test_single_frame_and_bad_frame_payload(small_ai, mask, sim_scan):
    from xrdct_dask.io import read_cbf_payload, read_frame

    integ = Integrator(small_ai, SHAPE, 200, mask=mask, engine="numpy")
    frame = read_frame(sim_scan.frame_path(0))
    one = integ.integrate(frame)
    assert one.intensity.shape == (200,) and one.sigma.shape == (200,)
    good = read_cbf_payload(sim_scan.frame_path(0))
    truncated = bytes(good.data)[:1000]
    res, status = integ.integrate_payloads([good, truncated])
    assert status.tolist() == [0, 1]
    np.testing.assert_allclose(res.intensity[0], one.intensity, rtol=1e-6)
    assert np.isnan(res.intensity[1]).all()


def test_row_chunks_cover_each_entry_once():
    """The GPU kernel's load balancing: every CSR entry lies in exactly one chunk of its own row,
    chunks hold at most `size` entries, and a row's chunks are contiguous and in order."""
    from xrdct_dask.integrate._cupy import row_chunks

    rng = np.random.default_rng(3)
    length = rng.integers(0, 50, 200)
    length[[0, 7, 199]] = 0  # empty rows, first and last included
    indptr = np.concatenate([[0], np.cumsum(length)])
    lo, hi, row_chunk = row_chunks(indptr, 16)
    assert row_chunk[0] == 0 and row_chunk[-1] == lo.size
    assert np.all(hi - lo <= 16) and np.all(hi > lo)
    for q in range(length.size):
        c0, c1 = row_chunk[q], row_chunk[q + 1]
        assert c1 - c0 == -(-length[q] // 16)
        if c1 > c0:
            assert lo[c0] == indptr[q] and hi[c1 - 1] == indptr[q + 1]
            np.testing.assert_array_equal(lo[c0 + 1:c1], hi[c0:c1 - 1])
