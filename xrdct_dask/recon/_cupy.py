"""GPU (cupy) projector pair: the RawKernels of ``kernels/projectors.cu``, launched on cupy arrays.

Shapes and geometry as :mod:`._numba` (its CPU twin, which the gpu-marked tests compare to).
The module is compiled by NVRTC once per process (cupy caches it on disk across processes).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from xrdct_dask.backend import cp

KERNEL_SOURCE = Path(__file__).with_name("kernels") / "projectors.cu"
BP_PIX_PER_THREAD = 4  # pixels per thread along a row (registers: one accumulator each)
BP_ROWS = 8  # warps per block of the back-projector (blockDim = (32, BP_ROWS))
FP_ANGLES = 4  # warps per block of the forward projector (blockDim = (32, FP_ANGLES))
LANES = 32  # q lanes per warp: 32 float32 = one 128-byte transaction


@functools.cache
def _module():
    if cp is None:
        raise RuntimeError("the GPU projectors need cupy, which is not importable here")
    return cp.RawModule(code=KERNEL_SOURCE.read_text(),
                        options=("--std=c++14", f"-DBP_PIX_PER_THREAD={BP_PIX_PER_THREAD}"))


def _angles(cos_t, sin_t):
    return cp.asarray(np.ascontiguousarray(np.stack([cos_t, sin_t], axis=1), dtype=np.float64))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def backproject_cupy(f, cos_t, sin_t, axis_idx: float, n: int, scale: float, out, q0: int = 0):
    """``out[:, :, q0:q0 + nqc] = scale * backprojection of f`` on the GPU.

    f (nang, nd, nqc) float32 cupy, cos_t/sin_t (nang,) host float64, out (n, n, nq) float32
    C-contiguous cupy.  Returns ``out``.
    """
    f = cp.ascontiguousarray(f, dtype=cp.float32)
    nang, nd, nqc = f.shape
    if not (out.flags.c_contiguous and out.dtype == cp.float32):
        raise ValueError("out must be a C-contiguous float32 cupy array")
    groups = n * _cdiv(n, BP_PIX_PER_THREAD)
    kernel = _module().get_function("backproject_linear")
    kernel((_cdiv(groups, BP_ROWS), _cdiv(nqc, LANES), 1), (LANES, BP_ROWS, 1),
           (f, _angles(cos_t, sin_t), np.int32(nang), np.int32(nd), np.int32(nqc), np.int32(n),
            np.float64(axis_idx), np.float32(scale), out, np.int64(out.shape[2]), np.int32(q0)))
    return out


def project_cupy(img, cos_t, sin_t, axis_idx: float, nd: int):
    """Forward projection (adjoint of the back-projector, scale 1) on the GPU.

    img (n, n, nq) cupy -> (nang, nd, nq) float32 cupy.
    """
    img = cp.ascontiguousarray(img, dtype=cp.float32)
    n, _, nq = img.shape
    nang = len(cos_t)
    out = cp.zeros((nang, nd, nq), dtype=cp.float32)
    kernel = _module().get_function("project_linear")
    kernel((_cdiv(nq, LANES), _cdiv(nang, FP_ANGLES), 1), (LANES, FP_ANGLES, 1),
           (img, _angles(cos_t, sin_t), np.int32(nang), np.int32(nd), np.int32(nq), np.int32(n),
            np.float64(axis_idx), out))
    return out
