"""Choose the array module (numpy or cupy) in one place.

Every science module takes arrays and asks :func:`get_array_module` which module they belong to;
no other module imports cupy directly.  Importing this module never fails on a CPU-only login
node: cupy is optional, and a request for the GPU engine on a machine without one degrades to
numpy with exactly one WARNING per process.
"""

from __future__ import annotations

import functools
import logging
import types

import numpy as np
import scipy.ndimage

log = logging.getLogger(__name__)

try:  # GPU imports are guarded: the package must import where cupy is absent.
    import cupy as cp
except Exception:  # ImportError, or a CUDA runtime that fails to load
    cp = None

ENGINES = ("auto", "numpy", "cupy")


@functools.cache
def gpu_available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device
        return False


@functools.cache
def _warn_degraded(requested: str) -> None:
    log.warning("engine %r asked for but no usable CUDA GPU/cupy here: using the numpy engine", requested)


def resolve_engine(engine: str = "auto") -> str:
    """Map ``auto|numpy|cupy`` to the engine that will actually run here.

    ``auto`` picks cupy when a GPU is usable.  ``cupy`` without a GPU degrades to numpy with one
    warning (never silently, never an error: a CPU worker in a GPU cluster still finishes).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "numpy":
        return "numpy"
    if gpu_available():
        return "cupy"
    if engine == "cupy":
        _warn_degraded(engine)
    return "numpy"


def xp_for_engine(engine: str) -> types.ModuleType:
    """The array module of an engine name (after :func:`resolve_engine`)."""
    return cp if resolve_engine(engine) == "cupy" else np


def get_array_module(*arrays) -> types.ModuleType:
    """numpy or cupy, whichever the arrays live in (numpy for host arrays and scalars)."""
    if cp is not None:
        return cp.get_array_module(*arrays)
    return np


def ndimage_of(xp) -> types.ModuleType:
    """``scipy.ndimage`` for numpy, ``cupyx.scipy.ndimage`` for cupy (the same functions on the device)."""
    if xp is np:
        return scipy.ndimage
    # lazy: cupy is optional (the gpu extra)
    import cupyx.scipy.ndimage

    return cupyx.scipy.ndimage


def to_host(a):
    """A numpy view/copy of ``a`` wherever it lives."""
    if cp is not None and isinstance(a, cp.ndarray):
        return cp.asnumpy(a)
    return np.asarray(a)


def release(xp) -> None:
    """Give a task's device memory back: cupy's pool keeps freed blocks for the process, and the
    workers that reconstruct share the GPU with the integration engines."""
    if cp is not None and xp is cp:
        cp.get_default_memory_pool().free_all_blocks()


def engine_of(xp) -> str:
    """The engine name (``numpy`` | ``cupy``) of an array module: the one place that names it."""
    return "cupy" if cp is not None and xp is cp else "numpy"
