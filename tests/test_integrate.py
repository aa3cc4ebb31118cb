"""Integration equals pyFAI's integrate1d_ng / sigma_clip_ng / medfilt1d_ng on every engine
(``IntegratorTests`` of xrdct_dask.testing.conformance: numpy, and cupy, which also equals the numpy
engine to 1e-5), plus what only the GPU engine has: its launches over many frames and its CSR
row chunks."""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask.testing.conformance import IntegratorTests


class TestNumpyEngine(IntegratorTests):
    engine = "numpy"


@pytest.mark.gpu
class TestCupyEngine(IntegratorTests):
    engine = "cupy"

    def test_many_frames_in_one_call_equal_cpu_engine(self, sim_scan, monkeypatch):
        """More frames than one Poisson launch takes (GROUP): the launches and their row-chunk sums
        (several chunks per row) add up to the CPU engine's sums, frame by frame."""
        from xrdct_dask.integrate import _cupy
        from xrdct_dask.io import read_frame

        monkeypatch.setattr(_cupy, "CHUNK_ENTRIES", 64)  # this small detector's rows hold ~400 entries
        stack = np.stack([read_frame(sim_scan.frame_path(i % 64)) for i in range(_cupy.GROUP + 45)])
        mon = np.linspace(0.8, 1.2, stack.shape[0])
        cpu = self.make_for_scan(sim_scan, 300, engine="numpy")
        gpu = self.make_for_scan(sim_scan, 300)
        assert gpu.impl.nchunks > np.count_nonzero(np.diff(gpu.plan.csr_indptr))  # rows were split
        a = cpu.integrate(stack, monitor=mon)
        b = gpu.integrate(self.asarray(stack), monitor=mon)
        good = a.intensity != 0
        np.testing.assert_allclose(b.intensity[good], a.intensity[good], rtol=1e-5)
        np.testing.assert_allclose(b.sigma[good], a.sigma[good], rtol=1e-5)


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
