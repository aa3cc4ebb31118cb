"""The per-value loops of :func:`~xrdct_dask.io.scantable.grouped_median`'s passes, in numba.

A pass reads every ``(group, value)`` pair once and updates a few counters per selection (a
selection ``s = j * ngroups + group`` is one of a group's two middle ranks).  In numpy each pass
made ~20 temporaries of the block's size (masks, gathered bounds, cells), 100-300 ns a value; a
loop does it in a few ns and allocates nothing (a dask worker returns freed memory to the system
at once, so every large temporary there is fresh pages).  Non-finite values are skipped.  The
kernels are serial and release the GIL (they run inside dask worker threads).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, inline="always")
def _tally(k, x, n, lo, hi):  # pragma: no cover - compiled
    """Cell ``k`` takes value ``x``: counted, its smallest and largest value updated."""
    n[k] += 1
    if x < lo[k]:
        lo[k] = x
    if x > hi[k]:
        hi[k] = x


@numba.njit(nogil=True, cache=True)
def range_pass(g, v, n, lo, hi):  # pragma: no cover - compiled
    """Per group: ``n[g] += 1``, ``lo[g] = min``, ``hi[g] = max`` of the finite values."""
    for i in range(v.size):
        if np.isfinite(v[i]):
            _tally(g[i], v[i], n, lo, hi)


@numba.njit(nogil=True, cache=True)
def hist_pass(g, v, ngroups, selected, slo, shi, scale, bins, nbelow, hist, bmin, bmax):  # pragma: no cover - compiled
    """For each finite value and each selected selection ``s`` of its group: counted in
    ``nbelow[s]`` below ``slo[s]``; inside ``[slo[s], shi[s]]`` histogrammed into cell
    ``s * bins + b`` (``b = floor((x - lo) * scale[s])``, ``scale = bins / (hi - lo)``: monotone in
    ``x``, so that each cell is an interval of values; the last bin closed), the cell's count,
    smallest and largest value updated."""
    for i in range(v.size):
        x = v[i]
        if not np.isfinite(x):
            continue
        for j in range(2):
            s = g[i] + j * ngroups
            if not selected[s]:
                continue
            a = slo[s]
            if x < a:
                nbelow[s] += 1
                continue
            c = shi[s]
            if x > c:
                continue
            b = int((x - a) * scale[s])
            if b > bins - 1:
                b = bins - 1
            _tally(s * bins + b, x, hist, bmin, bmax)


@numba.njit(nogil=True, cache=True)
def collect_pass(g, v, ngroups, selected, slo, shi, nbelow):  # pragma: no cover - compiled
    """The ``(selection, value)`` pairs of the finite values inside ``[slo[s], shi[s]]`` of a
    selected selection ``s`` of their group (two arrays, in stream order); those below counted
    into ``nbelow``."""
    sel = np.empty(64, np.int64)
    val = np.empty(64, np.float64)
    m = 0
    for i in range(v.size):
        x = v[i]
        if not np.isfinite(x):
            continue
        for j in range(2):
            s = g[i] + j * ngroups
            if not selected[s]:
                continue
            if x < slo[s]:
                nbelow[s] += 1
            elif x <= shi[s]:
                if m == sel.size:  # a pass gathers few values (narrowed to them): grow by doubling
                    sel = np.concatenate((sel, np.empty(m, np.int64)))
                    val = np.concatenate((val, np.empty(m, np.float64)))
                sel[m] = s
                val[m] = x
                m += 1
    return sel[:m].copy(), val[:m].copy()


def as_pair(g, v) -> tuple[np.ndarray, np.ndarray]:
    """A stream's block as the kernels take it: int64 groups and float64 values, contiguous (one
    compiled version of each kernel)."""
    return np.ascontiguousarray(g, np.int64), np.ascontiguousarray(v, np.float64)
