"""Iterative reconstructions for under-sampled scans (few angles), batched over q: SIRT and CGLS.

Both solve ``A x = b`` per q bin with ``A`` the linear-interpolation projector of
:mod:`.projector` (pixel-driven, the exact adjoint of the FBP back-projector) on the
inscribed circle of an ``nx x nx`` grid; every q bin is an independent problem, solved together
(the step sizes are per q bin).  The array module comes from the sinogram, so the same code runs
on numpy (numba projectors) and cupy (RawKernel projectors).

* SIRT (Gregor & Benson 2008): ``x <- x + C A^T R (b - A x)`` with ``R = 1 / (A 1)`` and
  ``C = 1 / (A^T 1)``; non-negativity is a projection after every step (the box-constrained SIRT
  of ASTRA), which is what suppresses the streaks of a sparse angular sampling.
* CGLS (Hestenes-Stiefel on the normal equations): fastest decrease of the residual per
  iteration; the number of iterations is the regularisation.  Non-negativity, if asked, is
  applied once at the end (a projection inside the iteration would break conjugacy).
"""

from __future__ import annotations

import numpy as np

from xrdct_dask.backend import get_array_module
from xrdct_dask.recon.projector import backproject, project


def _geometry(sino, omega_deg, center):
    if sino.ndim != 3:
        raise ValueError(f"the sinogram must be (nomega, nx, nq), got shape {sino.shape}")
    nomega, nx, _ = sino.shape
    omega_deg = np.asarray(omega_deg, dtype=np.float64).ravel()
    if omega_deg.size != nomega:
        raise ValueError(f"omega has {omega_deg.size} angles but the sinogram has {nomega} rows")
    theta = np.deg2rad(omega_deg)
    axis = nx // 2 if center is None else float(center)
    return np.cos(theta), np.sin(theta), axis, nx


def _setup(sino, omega_deg, center, iterations):
    """Common start of the iterative solvers: ``(xp, squeeze, b float32 (nomega, nd, nq), cos, sin,
    axis, n)``; a 2D sinogram is one q bin."""
    xp = get_array_module(sino)
    squeeze = sino.ndim == 2
    if squeeze:
        sino = sino[..., None]
    cos_t, sin_t, axis, n = _geometry(sino, omega_deg, center)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    return xp, squeeze, xp.ascontiguousarray(sino, dtype=xp.float32), cos_t, sin_t, axis, n


def _sum_yx(a, xp):
    """Sum over the first two axes in float64: one number per q bin, shape (nq,)."""
    return xp.sum(a, axis=(0, 1), dtype=xp.float64)


def sirt(sino, omega_deg, center: float | None = None, iterations: int = 100, *, nonneg: bool = True,
         relaxation: float = 1.0, x0=None, threads: int | None = None):
    """SIRT of every q bin of a sinogram block.

    sino (nomega, nx, nq) float (numpy or cupy), omega_deg (nomega,) degrees, center in detector
    pixels from the first x (default ``nx // 2``, iradon's).  Returns the image (nx, nx, nq) float32
    in the units of FBP's (a line integral of 1 over one pixel is a voxel value of 1).
    """
    xp, squeeze, b, cos_t, sin_t, axis, n = _setup(sino, omega_deg, center, iterations)
    nomega, nd, nq = b.shape
    kw = {"threads": threads}
    row = project(xp.ones((n, n, 1), xp.float32), cos_t, sin_t, axis, nd, **kw)  # (nomega, nd, 1): ray lengths
    inv_row = xp.where(row > 1e-6, 1.0 / xp.maximum(row, 1e-6), 0.0).astype(xp.float32)
    col = backproject(xp.ones((nomega, nd, 1), xp.float32), cos_t, sin_t, axis, n, **kw)  # (n, n, 1)
    inv_col = xp.where(col > 1e-6, relaxation / xp.maximum(col, 1e-6), 0.0).astype(xp.float32)
    x = xp.zeros((n, n, nq), xp.float32) if x0 is None else xp.array(x0, dtype=xp.float32, copy=True)
    upd = xp.empty_like(x)
    for _ in range(iterations):
        res = b - project(x, cos_t, sin_t, axis, nd, **kw)
        res *= inv_row
        backproject(res, cos_t, sin_t, axis, n, out=upd, **kw)
        x += inv_col * upd
        if nonneg:
            xp.maximum(x, 0, out=x)
    return x[..., 0] if squeeze else x


def cgls(sino, omega_deg, center: float | None = None, iterations: int = 20, *, nonneg: bool = False,
         threads: int | None = None):
    """CGLS of every q bin of a sinogram block (shapes and units as :func:`sirt`)."""
    xp, squeeze, b, cos_t, sin_t, axis, n = _setup(sino, omega_deg, center, iterations)
    nd = b.shape[1]
    kw = {"threads": threads}
    x = xp.zeros((n, n, b.shape[2]), xp.float32)
    r = b.copy()
    s = backproject(r, cos_t, sin_t, axis, n, **kw)
    p = s.copy()
    gamma = _sum_yx(s * s, xp)
    for _ in range(iterations):
        ap = project(p, cos_t, sin_t, axis, nd, **kw)
        delta = _sum_yx(ap * ap, xp)
        alpha = xp.where(delta > 0, gamma / xp.where(delta > 0, delta, 1.0), 0.0).astype(xp.float32)
        x += alpha * p
        r -= alpha * ap
        backproject(r, cos_t, sin_t, axis, n, out=s, **kw)
        gamma_new = _sum_yx(s * s, xp)
        beta = xp.where(gamma > 0, gamma_new / xp.where(gamma > 0, gamma, 1.0), 0.0).astype(xp.float32)
        p *= beta
        p += s
        gamma = gamma_new
    if nonneg:
        xp.maximum(x, 0, out=x)
    return x[..., 0] if squeeze else x
