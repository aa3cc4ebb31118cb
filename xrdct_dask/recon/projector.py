"""The projector pair of the reconstructions, batched over q, on numpy (numba) or cupy (RawKernel).

``backproject`` (image <- sinogram, linear interpolation, skimage ``iradon`` geometry) and
``project`` (its exact adjoint, sinogram <- image) take the array module from their inputs.
Shapes: sinograms ``(nang, nd, nq)``, images ``(n, n, nq)``, both float32 with q contiguous;
``axis_idx`` is the rotation axis in detector pixels of the sinogram given.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from xrdct_dask.backend import get_array_module
from xrdct_dask.recon import _numba
from xrdct_dask.recon._cupy import backproject_cupy, project_cupy


def default_threads() -> int:
    """Threads for the CPU kernels: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _run_split(fn, items: np.ndarray, threads: int) -> None:
    """Run ``fn(items_subset)`` over ``threads`` interleaved subsets (balanced: the circle leaves corner
    tiles empty), on a thread pool; the numba kernels release the GIL."""
    threads = max(1, min(int(threads), items.size))
    if threads == 1:
        fn(items)
        return
    parts = [np.ascontiguousarray(items[k::threads]) for k in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        for fut in [pool.submit(fn, p) for p in parts]:
            fut.result()


def backproject(sino, cos_t, sin_t, axis_idx: float, n: int, *, scale: float = 1.0, out=None, q0: int = 0,
                threads: int | None = None):
    """``out[i, j, q0:q0 + nq] = scale * sum_a interp(sino[a, :, q], pos(i, j, a))``.

    sino (nang, nd, nq) float32; cos_t, sin_t (nang,) host float64; returns ``out`` (n, n, >= q0 + nq)
    float32, allocated (n, n, nq) when not given.  Pixels outside the inscribed circle are 0.
    """
    xp = get_array_module(sino)
    nang, nd, nq = sino.shape
    if nd < 2:
        raise ValueError(f"the sinogram needs at least 2 detector bins, got {nd}")
    if out is None:
        out = xp.zeros((n, n, nq), dtype=xp.float32)
    if out.shape[:2] != (n, n) or out.shape[2] < q0 + nq or out.dtype != np.float32:
        raise ValueError(f"out must be float32 ({n}, {n}, >= {q0 + nq}), got {out.dtype} {out.shape}")
    cos_t = np.ascontiguousarray(cos_t, dtype=np.float64)
    sin_t = np.ascontiguousarray(sin_t, dtype=np.float64)
    if xp is not np:

        backproject_cupy(sino, cos_t, sin_t, float(axis_idx), n, float(scale), out, q0)
        return out
    f = np.ascontiguousarray(sino, dtype=np.float32)
    ntile = (n + _numba.TILE - 1) // _numba.TILE
    tiles = np.arange(ntile * ntile, dtype=np.int64)
    _run_split(lambda t: _numba.backproject_tiles(f, cos_t, sin_t, float(axis_idx), n, np.float32(scale), t, out, q0),
               tiles, threads or default_threads())
    return out


def project(img, cos_t, sin_t, axis_idx: float, nd: int, *, threads: int | None = None):
    """Forward projection, the exact adjoint of :func:`backproject` with ``scale = 1``.

    img (n, n, nq) float32 (values outside the inscribed circle are ignored) -> (nang, nd, nq) float32.
    """
    xp = get_array_module(img)
    n, n2, nq = img.shape
    if n != n2:
        raise ValueError(f"the image must be square in (y, x), got {img.shape[:2]}")
    cos_t = np.ascontiguousarray(cos_t, dtype=np.float64)
    sin_t = np.ascontiguousarray(sin_t, dtype=np.float64)
    nang = cos_t.size
    if xp is not np:

        return project_cupy(img, cos_t, sin_t, float(axis_idx), nd)
    im = np.ascontiguousarray(img, dtype=np.float32)
    out = np.zeros((nang, nd, nq), np.float32)
    _run_split(lambda a: _numba.project_angles(im, cos_t, sin_t, float(axis_idx), a, out),
               np.arange(nang, dtype=np.int64), threads or default_threads())
    return out
