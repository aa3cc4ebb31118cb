"""CPU (numba) projector pair, batched over q: back-projection and its exact adjoint.

Geometry (skimage's ``iradon``): image pixel ``(i, j)`` of an ``n x n`` grid, ``r = n // 2``, at
angle ``theta`` samples the detector at ``pos = (j - r) cos(theta) - (i - r) sin(theta) + axis``
(in detector pixels), linear interpolation between bins ``floor(pos)`` and ``floor(pos) + 1``;
samples outside ``[0, nd - 1]`` are 0 (``np.interp(left=0, right=0)``), pixels outside the
inscribed circle ``(i - r)^2 + (j - r)^2 > r^2`` are 0.

Speed comes from the q axis: the arrays are ``(..., nq)`` with q contiguous, so the position
and weight of a (pixel, angle) pair are computed once and applied to a whole q chunk in a
SIMD loop; pixels are processed in square tiles so that, angle after angle, the few detector
rows a tile touches stay in L1 while its accumulators stay in L1/L2.  The kernels are serial and
release the GIL; :mod:`.projector` runs them on a thread pool (safe inside dask worker threads,
unlike numba's own thread pools).
"""

from __future__ import annotations

import numba
import numpy as np

TILE = 16  # pixels per tile side: 256 pixels x 32 q x 4 B = 32 KiB of accumulators


@numba.njit(nogil=True, boundscheck=False, fastmath=True, cache=True)
def backproject_tiles(f, cos_t, sin_t, axis_idx, n, scale, tiles, out, q0):
    """``out[i, j, q0 + q] = scale * sum_a interp(f[a, :, q], pos(i, j, a))`` for the pixel tiles listed.

    f (nang, nd, qc) float32 C-contiguous, cos_t/sin_t (nang,) float64, axis_idx float (detector
    pixels), tiles (ntiles,) int64 tile numbers ``ti * ntile + tj``, out (n, n, nq) float32.
    Every pixel of the listed tiles is written (0 outside the circle).
    """
    nang, nd, qc = f.shape
    r = n // 2
    ntile = (n + TILE - 1) // TILE
    acc = np.zeros((TILE, TILE, qc), np.float32)
    hi = nd - 1.0
    for t in tiles:
        i_lo = (t // ntile) * TILE
        j_lo = (t % ntile) * TILE
        acc[...] = 0.0
        for a in range(nang):
            c = cos_t[a]
            s = sin_t[a]
            for di in range(TILE):
                i = i_lo + di
                if i >= n:
                    break
                xpr = i - r
                base = axis_idx - xpr * s
                for dj in range(TILE):
                    j = j_lo + dj
                    if j >= n:
                        break
                    ypr = j - r
                    if xpr * xpr + ypr * ypr > r * r:
                        continue
                    pos = base + ypr * c
                    if pos < 0.0 or pos > hi:
                        continue
                    i0 = int(pos)
                    if i0 > nd - 2:
                        i0 = nd - 2
                    w = np.float32(pos - i0)
                    for q in range(qc):  # the SIMD loop: f[a, i0, :] and f[a, i0 + 1, :] are contiguous
                        f0 = f[a, i0, q]
                        acc[di, dj, q] += f0 + w * (f[a, i0 + 1, q] - f0)
        for di in range(TILE):
            i = i_lo + di
            if i >= n:
                break
            for dj in range(TILE):
                j = j_lo + dj
                if j >= n:
                    break
                for q in range(qc):
                    out[i, j, q0 + q] = acc[di, dj, q] * scale


@numba.njit(nogil=True, boundscheck=False, fastmath=True, cache=True)
def project_angles(img, cos_t, sin_t, axis_idx, angles, out):
    """Exact adjoint of :func:`backproject_tiles` (scale 1) for the listed angles.

    img (n, n, nq) float32, out (nang, nd, nq) float32, zeroed here for the listed angles:
    ``out[a, i0] += (1 - w) img[i, j]``, ``out[a, i0 + 1] += w img[i, j]`` (pixel-driven
    splatting).  Each angle owns its output rows, so angle lists may run concurrently.
    """
    n = img.shape[0]
    nq = img.shape[2]
    nd = out.shape[1]
    r = n // 2
    hi = nd - 1.0
    for a in angles:
        out[a] = 0.0
        c = cos_t[a]
        s = sin_t[a]
        for i in range(n):
            xpr = i - r
            base = axis_idx - xpr * s
            for j in range(n):
                ypr = j - r
                if xpr * xpr + ypr * ypr > r * r:
                    continue
                pos = base + ypr * c
                if pos < 0.0 or pos > hi:
                    continue
                i0 = int(pos)
                if i0 > nd - 2:
                    i0 = nd - 2
                w = np.float32(pos - i0)
                for q in range(nq):
                    v = img[i, j, q]
                    wv = w * v
                    out[a, i0, q] += v - wv
                    out[a, i0 + 1, q] += wv
