"""Scan geometry: which acquired frame sits at grid point (z, omega, x), and its monitor.

Frames are numbered in acquisition order from 0.  The fast axis (x or omega) runs innermost; in
snake order it reverses on every odd line, lines being counted over the whole scan.  In
interlaced order (fast axis x) the omega lines of each slice are visited in ``passes``
interleaved passes, pass p taking iomega = p, p + passes, p + 2 passes, ... (each pass a coarse
tomogram of the whole angular range, as in interlaced XRD-CT), and x snakes.  A scan file
(CSV with ``index,iz,iomega,ix`` columns, as written by the acquisition) overrides the
arithmetic, which handles frames recorded out of order or scan points skipped; its optional
``omega_deg, x_mm, z_mm, monitor`` columns are the measured values
(:mod:`xrdct_dask.io.positioners` reads them and places frames by them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ORDERS = ("raster", "snake", "interlaced")
INTERLACE_PASSES = 2  # default number of interleaved omega passes of an interlaced scan


def interlaced_lines(nomega: int, passes: int = INTERLACE_PASSES) -> np.ndarray:
    """The omega indices in the order an interlaced scan visits them: ``(nomega,)`` permutation."""
    if not 1 <= passes <= nomega:
        raise ValueError(f"an interlaced scan needs 1 <= passes <= nomega = {nomega}, got {passes}")
    return np.concatenate([np.arange(p, nomega, passes) for p in range(passes)])


def _check_order(fast_axis: str, order: str) -> None:
    if fast_axis not in ("x", "omega") or order not in ORDERS:
        raise ValueError(f"fast_axis must be x|omega and order one of {'|'.join(ORDERS)}, got {fast_axis!r}, {order!r}")
    if order == "interlaced" and fast_axis != "x":
        raise ValueError("an interlaced scan interleaves omega lines: it needs fast_axis x")


def acquisition_order(nz: int, nomega: int, nx: int, fast_axis: str = "x", order: str = "snake",
                      passes: int = INTERLACE_PASSES) -> np.ndarray:
    """Grid indices of each acquired frame: ``(nframes, 3)`` rows ``(iz, iomega, ix)``."""
    _check_order(fast_axis, order)
    if order == "interlaced":
        iz, k, ix = (a.ravel() for a in np.meshgrid(np.arange(nz), np.arange(nomega), np.arange(nx), indexing="ij"))
        ix = np.where((iz * nomega + k) % 2 == 1, nx - 1 - ix, ix)
        return np.stack([iz, interlaced_lines(nomega, passes)[k], ix], axis=1)
    nslow, nfast = (nomega, nx) if fast_axis == "x" else (nx, nomega)
    iz, islow, ifast = (a.ravel() for a in np.meshgrid(np.arange(nz), np.arange(nslow), np.arange(nfast),
                                                       indexing="ij"))
    if order == "snake":
        ifast = np.where((iz * nslow + islow) % 2 == 1, nfast - 1 - ifast, ifast)
    iomega, ix = (islow, ifast) if fast_axis == "x" else (ifast, islow)
    return np.stack([iz, iomega, ix], axis=1)


def grid_index(iz, iomega, ix, nomega: int, nx: int, fast_axis: str = "x", order: str = "snake",
               passes: int = INTERLACE_PASSES):
    """Acquisition index of grid points (broadcasting arrays), the inverse of :func:`acquisition_order`."""
    _check_order(fast_axis, order)
    iz, iomega, ix = (np.asarray(a, dtype=np.int64) for a in (iz, iomega, ix))
    if order == "interlaced":  # the line number of omega step iomega within its slice
        visit = np.empty(nomega, np.int64)
        visit[interlaced_lines(nomega, passes)] = np.arange(nomega)
        iomega = visit[iomega]
        order = "snake"
    if fast_axis == "x":
        line, fast, nfast = iz * nomega + iomega, ix, nx
    else:
        line, fast, nfast = iz * nx + ix, iomega, nomega
    if order == "snake":
        fast = np.where(line % 2 == 1, nfast - 1 - fast, fast)
    return line * nfast + fast


SCAN_COLUMNS = ("index", "iz", "iomega", "ix")
POSITION_COLUMNS = ("omega_deg", "x_mm", "z_mm", "monitor")  # optional: measured per frame


def check_scan_columns(path, names) -> None:
    """Raise ValueError (one line) unless a scan table's columns ``names`` hold ``index`` and
    either all or none of ``iz, iomega, ix``."""
    if "index" not in names:
        raise ValueError(f"{path}: scan file lacks the column 'index' (acquisition order of each row)")
    grid_cols = [c for c in SCAN_COLUMNS[1:] if c in names]
    if grid_cols and len(grid_cols) != 3:
        missing = sorted(set(SCAN_COLUMNS[1:]) - set(grid_cols))
        raise ValueError(f"{path}: scan file has {', '.join(grid_cols)} but lacks {', '.join(missing)}")


def read_scan_table(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a scan CSV (header line, comma separated) as arrays, one row per frame.

    ``index`` (acquisition order) is required; ``iz, iomega, ix`` (grid indices, int64) come all
    three or not at all; ``omega_deg, x_mm, z_mm, monitor`` (float64, measured) are optional;
    other columns are returned as read.
    """
    table = np.atleast_1d(np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="ascii"))
    names = table.dtype.names or ()
    check_scan_columns(path, names)
    out = {}
    for c in names:
        kind = np.int64 if c in SCAN_COLUMNS else np.float64 if c in POSITION_COLUMNS else None
        try:
            out[c] = np.asarray(table[c], dtype=kind) if kind else np.asarray(table[c])
        except (ValueError, TypeError):
            raise ValueError(f"{path}: column {c!r} holds values that are not numbers") from None
    return out


def read_scan_file(path: str | Path, nz: int, nomega: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid ``(nz, nomega, nx)`` of acquisition indices (-1 = no frame) from a scan CSV, and a
    bool grid of points recorded more than once (the last record wins)."""
    table = read_scan_table(path)
    for col in SCAN_COLUMNS:
        if col not in table:
            raise ValueError(f"{path}: scan file lacks the column {col!r} (needs index,iz,iomega,ix)")
    iz, iw, ix = (table[c] for c in ("iz", "iomega", "ix"))
    inside = (iz >= 0) & (iz < nz) & (iw >= 0) & (iw < nomega) & (ix >= 0) & (ix < nx)
    if not inside.all():
        bad = int((~inside).sum())
        raise ValueError(f"{path}: {bad} rows lie outside the scan grid {nz} x {nomega} x {nx}")
    grid = np.full((nz, nomega, nx), -1, dtype=np.int64)
    seen = np.zeros((nz, nomega, nx), dtype=np.int32)
    np.add.at(seen, (iz, iw, ix), 1)
    grid[iz, iw, ix] = table["index"]
    return grid, seen > 1


def read_monitor(path: str | Path, nframes: int) -> np.ndarray:
    """One I0 value per frame in acquisition order (text, one number per line, # comments)."""
    values = np.loadtxt(path, dtype=np.float64, ndmin=1, comments="#")
    if values.size < nframes:
        raise ValueError(f"{path}: {values.size} monitor values for a scan of {nframes} frames")
    return values[:nframes]
