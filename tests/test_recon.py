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


def test_uneven_measured_angles_are_weighted_by_their_arcs():
    """A half turn sampled unevenly (a crowded and a sparse half, as a motor's readings or missed
    projections give): FBP weighting each projection by its arc is much closer to the object than
    FBP that assumes even steps, and an even turn keeps iradon's weights exactly."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import radon, resize

    from xrdct_dask.recon import fbp
    from xrdct_dask.recon.fbp import angle_weights

    img = resize(shepp_logan_phantom(), (96, 96), anti_aliasing=True)
    theta = np.sort(np.r_[np.linspace(0, 90, 90, endpoint=False), np.linspace(90, 180, 30, endpoint=False)])
    sino = radon(img, theta=theta, circle=True).T.astype(np.float32)  # (nomega, nx)
    weighted = fbp(sino, theta, "ramp")
    even = np.pi / (2 * theta.size)
    w = angle_weights(theta)
    # the weights add up to pi/2 (iradon's for any turn); a 3-degree step weighs 3 times a 1-degree one
    assert w is not None and w.sum() == pytest.approx(np.pi / 2) and w[-5] == pytest.approx(3 * w[10])
    # FBP assuming even steps: every projection with iradon's weight for this many angles
    from xrdct_dask.recon.fbp import filter_block
    from xrdct_dask.recon.projector import backproject

    filtered, axis = filter_block(sino[..., None], "ramp", 96 // 2, 96)
    naive = backproject(filtered, np.cos(np.deg2rad(theta)), np.sin(np.deg2rad(theta)), axis, 96, scale=even)[..., 0]
    inside = np.hypot(*np.mgrid[-48:48, -48:48]) < 44
    err_weighted = np.sqrt(np.mean((weighted - img)[inside] ** 2))
    err_naive = np.sqrt(np.mean((naive - img)[inside] ** 2))
    assert err_weighted < 0.7 * err_naive, (err_weighted, err_naive)
    assert angle_weights(np.arange(180) * 1.0) is None and angle_weights(np.arange(360) * 1.0) is None
