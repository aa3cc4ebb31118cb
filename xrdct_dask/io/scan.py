"""Scan geometry: which acquired frame sits at grid point (z, omega, x), and its monitor.

Frames are numbered in acquisition order from 0.  The fast axis (x or omega) runs innermost; in
snake order it reverses on every odd line, lines being counted over the whole scan.  A scan file
(CSV with ``index,iz,iomega,ix`` columns, as written by the acquisition) overrides the
arithmetic, which handles frames recorded out of order or scan points skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def acquisition_order(nz: int, nomega: int, nx: int, fast_axis: str = "x", order: str = "snake") -> np.ndarray:
    """Grid indices of each acquired frame: ``(nframes, 3)`` rows ``(iz, iomega, ix)``."""
    if fast_axis not in ("x", "omega") or order not in ("raster", "snake"):
        raise ValueError(f"fast_axis must be x|omega and order raster|snake, got {fast_axis!r}, {order!r}")
    nslow, nfast = (nomega, nx) if fast_axis == "x" else (nx, nomega)
    iz, islow, ifast = (a.ravel() for a in np.meshgrid(np.arange(nz), np.arange(nslow), np.arange(nfast),
                                                       indexing="ij"))
    if order == "snake":
        ifast = np.where((iz * nslow + islow) % 2 == 1, nfast - 1 - ifast, ifast)
    iomega, ix = (islow, ifast) if fast_axis == "x" else (ifast, islow)
    return np.stack([iz, iomega, ix], axis=1)


def grid_index(iz, iomega, ix, nomega: int, nx: int, fast_axis: str = "x", order: str = "snake"):
    """Acquisition index of grid points (broadcasting arrays), the inverse of :func:`acquisition_order`."""
    iz, iomega, ix = (np.asarray(a, dtype=np.int64) for a in (iz, iomega, ix))
    if fast_axis == "x":
        line, fast, nfast = iz * nomega + iomega, ix, nx
    else:
        line, fast, nfast = iz * nx + ix, iomega, nomega
    if order == "snake":
        fast = np.where(line % 2 == 1, nfast - 1 - fast, fast)
    return line * nfast + fast


def read_scan_file(path: str | Path, nz: int, nomega: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid ``(nz, nomega, nx)`` of acquisition indices (-1 = no frame) from a scan CSV, and a
    bool grid of points recorded more than once (the last record wins)."""
    table = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="ascii")
    for col in ("index", "iz", "iomega", "ix"):
        if col not in table.dtype.names:
            raise ValueError(f"{path}: scan file lacks the column {col!r} (needs index,iz,iomega,ix)")
    table = np.atleast_1d(table)
    iz, iw, ix = (np.asarray(table[c], dtype=np.int64) for c in ("iz", "iomega", "ix"))
    inside = (iz >= 0) & (iz < nz) & (iw >= 0) & (iw < nomega) & (ix >= 0) & (ix < nx)
    if not inside.all():
        bad = int((~inside).sum())
        raise ValueError(f"{path}: {bad} rows lie outside the scan grid {nz} x {nomega} x {nx}")
    grid = np.full((nz, nomega, nx), -1, dtype=np.int64)
    seen = np.zeros((nz, nomega, nx), dtype=np.int32)
    np.add.at(seen, (iz, iw, ix), 1)
    grid[iz, iw, ix] = np.asarray(table["index"], dtype=np.int64)
    return grid, seen > 1


def read_monitor(path: str | Path, nframes: int) -> np.ndarray:
    """One I0 value per frame in acquisition order (text, one number per line, # comments)."""
    values = np.loadtxt(path, dtype=np.float64, ndmin=1, comments="#")
    if values.size < nframes:
        raise ValueError(f"{path}: {values.size} monitor values for a scan of {nframes} frames")
    return values[:nframes]
