"""Reconstruction batched over q on every engine (``ReconstructorTests`` of
xrdct_dask.testing.conformance: FBP equals skimage's iradon, the projector pair is adjoint and is
skimage's radon, the iterative methods beat FBP on an under-sampled scan; numpy, and cupy, which
also equals the numpy engine), plus what only the numba engine has: q chunks and threads."""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask.recon import fbp
from xrdct_dask.testing.conformance import ReconstructorTests


class TestNumpyReconstructor(ReconstructorTests):
    engine = "numpy"

    def test_q_chunks_and_threads_do_not_change_the_result(self, rng):
        """Chunking over q and splitting tiles over threads only reorganise independent work."""
        s = rng.random((40, 33, 70)).astype(np.float32)
        theta = np.linspace(0, 180, 40, endpoint=False)
        ref = fbp(s, theta, q_chunk=64, threads=1)
        np.testing.assert_array_equal(fbp(s, theta, q_chunk=7, threads=2), ref)
        np.testing.assert_array_equal(fbp(s, theta, q_chunk=70, threads=3), ref)


@pytest.mark.gpu
class TestCupyReconstructor(ReconstructorTests):
    engine = "cupy"
