"""Scan metadata measured by the scan, not invented: omega, x, z and the monitor per frame, and
the frames placed on the (z, omega, x) grid by those positions.

Sources:

* a BLISS / NeXus HDF5 scan: in the entry (``scan.h5`` -> the NeXus default or first NXentry;
  ``scan.h5::/1.1`` names one), a name is looked up as ``measurement/<name>`` (counters and
  scanned motors, one value per point), then ``instrument/positioners/<name>`` (motors; a scalar
  for a motor that did not move), then ``instrument/<name>/value`` (NXpositioner); a name
  starting with ``/`` is a path in the file.  Values are converted from the dataset's ``units``
  attribute to degrees / millimetres (no attribute: taken as degrees / millimetres already).
* a scan CSV (:func:`xrdct_dask.io.scan.read_scan_table`) with optional ``omega_deg``, ``x_mm``,
  ``z_mm``, ``monitor`` columns.

:func:`place_on_grid` bins each frame to the nearest grid angle / step and flags frames that fit
no grid point within the tolerance (default: half the grid step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from xrdct_dask.io.scan import read_scan_table

log = logging.getLogger(__name__)

# factor to degrees / millimetres; keys lower case
ANGLE_UNITS = {"deg": 1.0, "degree": 1.0, "degrees": 1.0, "°": 1.0, "rad": 180.0 / np.pi, "radian": 180.0 / np.pi,
               "radians": 180.0 / np.pi, "mrad": 0.18 / np.pi, "urad": 1.8e-4 / np.pi, "µrad": 1.8e-4 / np.pi}
LENGTH_UNITS = {"mm": 1.0, "um": 1e-3, "µm": 1e-3, "micron": 1e-3, "microns": 1e-3, "nm": 1e-6, "m": 1e3,
                "cm": 10.0}


@dataclass
class ScanPositions:
    """Per-frame measurements in acquisition order; None = not given.

    Attributes
    ----------
    omega_deg, x_mm, z_mm : float64 (n,) or None
    monitor : float64 (n,) or None        counts of the incident-beam monitor
    source : dict                         where each came from (``{"omega_deg": "scan.h5::/1.1/measurement/rot"}``)
    """

    omega_deg: np.ndarray | None = None
    x_mm: np.ndarray | None = None
    z_mm: np.ndarray | None = None
    monitor: np.ndarray | None = None
    source: dict = field(default_factory=dict)

    @property
    def nframes(self) -> int | None:
        sizes = {a.size for a in (self.omega_deg, self.x_mm, self.z_mm, self.monitor) if a is not None}
        return sizes.pop() if len(sizes) == 1 else None


def convert(values: np.ndarray, units: str | None, table: dict, target: str, where: str) -> np.ndarray:
    """``values`` in ``units`` -> ``target`` units by ``table`` (None or "": already in target)."""
    if units is None or str(units).strip() == "":
        return np.asarray(values, np.float64)
    key = str(units).strip().lower()
    if key not in table:
        raise ValueError(f"{where}: units {units!r} are not an {'angle' if table is ANGLE_UNITS else 'length'} "
                         f"this reader converts to {target} ({', '.join(table)})")
    return np.asarray(values, np.float64) * table[key]


def _entry(f, path: str | None) -> str:
    """The entry: as given, else the NeXus default, else the first NXentry, else ``/entry``."""
    if path:
        if path not in f:
            raise ValueError(f"{f.filename}: no entry {path}")
        return "/" + path.strip("/")
    default = f.attrs.get("default")
    if isinstance(default, bytes):
        default = default.decode()
    if default and default in f:
        return "/" + str(default)
    for name, obj in f.items():
        cls = obj.attrs.get("NX_class")
        if (cls.decode() if isinstance(cls, bytes) else cls) == "NXentry":
            return "/" + name
    if "entry" in f:
        return "/entry"
    raise ValueError(f"{f.filename}: no NXentry (name the entry: scan.h5::/1.1)")


def _find(f, entry: str, name: str):
    """The dataset of ``name`` in ``entry`` (see the module doc), or None."""

    cands = [name] if name.startswith("/") else [f"{entry}/measurement/{name}",
                                                  f"{entry}/instrument/positioners/{name}",
                                                  f"{entry}/instrument/{name}/value"]
    for c in cands:
        obj = f.get(c)
        if isinstance(obj, h5py.Dataset):
            return obj
    return None


def _units(d) -> str | None:
    u = d.attrs.get("units")
    return u.decode() if isinstance(u, bytes) else (None if u is None else str(u))


def read_hdf5_positions(path: str | Path, *, omega: str | None = "omega", x: str | None = "x", z: str | None = "z",
                        monitor: str | None = None, nframes: int | None = None) -> ScanPositions:
    """Per-frame omega, x, z and monitor of a BLISS / NeXus scan (``scan.h5`` or ``scan.h5::/1.1``).

    Parameters
    ----------
    path : the scan file, optionally ``::/entry``
    omega, x, z, monitor : names to look up (None: not read); a name that is not found is an error
    nframes : frames of the scan: scalars (motors that did not move) are repeated to this length,
        arrays longer than it are cut (readings after the last frame), shorter ones are an error.

    Returns
    -------
    ScanPositions  (omega in degrees, x and z in millimetres, monitor as stored)
    """

    file, _, entry_path = str(path).partition("::")
    with h5py.File(file, "r") as f:
        entry = _entry(f, entry_path or None)
        out = ScanPositions()
        for attr, name, table, target in (("omega_deg", omega, ANGLE_UNITS, "deg"), ("x_mm", x, LENGTH_UNITS, "mm"),
                                          ("z_mm", z, LENGTH_UNITS, "mm"), ("monitor", monitor, None, None)):
            if name is None:
                continue
            d = _find(f, entry, name)
            if d is None:
                raise ValueError(f"{file}::{entry}: no positioner or counter {name!r} (looked in measurement/, "
                                 f"instrument/positioners/, instrument/{name}/value)")
            where = f"{file}::{d.name}"
            values = np.asarray(d[()], np.float64)
            values = values if table is None else convert(values, _units(d), table, target, where)
            setattr(out, attr, _per_frame(values, nframes, where))
            out.source[attr] = where
    return out


@dataclass
class Hdf5Column:
    """Where one per-frame column of an HDF5 scan is (``file``, dataset ``path``) and how to read it
    block by block: ``factor`` to degrees / millimetres (None: as stored), ``scalar`` for a motor
    that did not move."""

    file: str
    path: str
    where: str
    factor: float | None
    scalar: float | None = None


def hdf5_column(path: str | Path, name: str, kind: str, nframes: int) -> Hdf5Column:
    """The column ``name`` of an HDF5 scan (looked up as :func:`read_hdf5_positions` does) for
    ``kind`` in omega_deg | x_mm | z_mm | monitor, checked (units, at least ``nframes`` values)
    without reading its values."""

    file, _, entry_path = str(path).partition("::")
    tables = {"omega_deg": (ANGLE_UNITS, "deg"), "x_mm": (LENGTH_UNITS, "mm"), "z_mm": (LENGTH_UNITS, "mm")}
    with h5py.File(file, "r") as f:
        entry = _entry(f, entry_path or None)
        d = _find(f, entry, name)
        if d is None:
            raise ValueError(f"{file}::{entry}: no positioner or counter {name!r} (looked in measurement/, "
                             f"instrument/positioners/, instrument/{name}/value)")
        where = f"{file}::{d.name}"
        factor = None
        if kind in tables:
            factor = float(convert(np.ones(1), _units(d), *tables[kind], where)[0])
        if d.ndim == 0:
            return Hdf5Column(file, d.name, where, factor, scalar=float(d[()]))
        n = int(np.prod(d.shape))
        if n < nframes:
            raise ValueError(f"{where}: {n} values for a scan of {nframes} frames")
        if n > nframes:
            log.warning("%s: %d values for %d frames; the last %d ignored", where, n, nframes, n - nframes)
        return Hdf5Column(file, d.name, where, factor)


def read_hdf5_slab(columns: dict[str, Hdf5Column], start: int, stop: int) -> dict[str, np.ndarray]:
    """``{"index", <kind>: values}`` of frames ``start .. stop - 1`` of the columns (float64,
    converted; a motor that did not move repeated): only those frames are read (a dataset of
    several dimensions, flattened in C order, by the rows that hold them)."""

    out = {"index": np.arange(start, stop, dtype=np.int64)}
    files: dict[str, h5py.File] = {}
    try:
        for kind, c in columns.items():
            if c.scalar is not None:
                v = np.full(stop - start, c.scalar)
            else:
                if c.file not in files:
                    files[c.file] = h5py.File(c.file, "r")
                d = files[c.file][c.path]
                row = int(np.prod(d.shape[1:], dtype=np.int64))
                r0, r1 = start // row, -(-stop // row)
                v = np.asarray(d[r0:r1], np.float64).reshape(-1)[start - r0 * row:stop - r0 * row]
            out[kind] = v if c.factor is None else v * c.factor
    finally:
        for f in files.values():
            f.close()
    return out


def _per_frame(values: np.ndarray, nframes: int | None, where: str) -> np.ndarray:
    if values.ndim == 0:
        if nframes is None:
            raise ValueError(f"{where} is a single value (a motor that did not move): give nframes to repeat it")
        return np.full(nframes, float(values))
    values = values.reshape(-1)
    if nframes is not None:
        if values.size < nframes:
            raise ValueError(f"{where}: {values.size} values for a scan of {nframes} frames")
        if values.size > nframes:
            log.warning("%s: %d values for %d frames; the last %d ignored", where, values.size, nframes,
                        values.size - nframes)
            values = values[:nframes]
    return values


def read_csv_positions(path: str | Path) -> ScanPositions:
    """omega_deg, x_mm, z_mm, monitor columns of a scan CSV (those present) in acquisition order."""

    t = read_scan_table(path)
    order = np.argsort(t["index"], kind="stable")
    out = ScanPositions()
    for col in ("omega_deg", "x_mm", "z_mm", "monitor"):
        if col in t:
            setattr(out, col, np.asarray(t[col], np.float64)[order])
            out.source[col] = f"{path}:{col}"
    return out


# ------------------------------------------------------------------------------------------
# frames on the grid by their measured positions
# ------------------------------------------------------------------------------------------
@dataclass
class GridPlacement:
    """Where each frame lands on the ``(nz, nomega, nx)`` grid.

    Attributes
    ----------
    iz, iomega, ix : int64 (n,)       grid indices of each frame; -1 on every axis where it fits none
    off_grid : bool (n,)              the frame fits no grid point within the tolerance
    grid : int64 (nz, nomega, nx)     acquisition index of the frame at each point (-1: none; last wins)
    duplicate : bool (nz, nomega, nx) points measured more than once
    residual_omega_deg, residual_x_mm, residual_z_mm : float64 (n,)   measured - grid value (NaN off grid)
    """

    iz: np.ndarray
    iomega: np.ndarray
    ix: np.ndarray
    off_grid: np.ndarray
    grid: np.ndarray
    duplicate: np.ndarray
    residual_omega_deg: np.ndarray
    residual_x_mm: np.ndarray
    residual_z_mm: np.ndarray


def _nearest(values: np.ndarray, grid: np.ndarray, tol: float | None, period: float | None = None):
    """Index into ``grid`` of the nearest value (-1 beyond ``tol``) and the residual."""
    grid = np.asarray(grid, np.float64)
    order = np.argsort(grid, kind="stable")
    g = grid[order]
    strict = tol is None  # half a step: a reading exactly halfway belongs to neither neighbour
    if tol is None:
        steps = np.diff(g)
        tol = 0.5 * steps.min() if steps.size else np.inf
    v = np.asarray(values, np.float64)
    ext, ext_idx = g, order
    if period is not None:
        v = g[0] + np.mod(v - g[0], period)  # into [g0, g0 + period)
        ext, ext_idx = np.append(g, g[0] + period), np.append(order, order[0])
    right = np.clip(np.searchsorted(ext, v), 0, ext.size - 1)
    left = np.clip(right - 1, 0, ext.size - 1)
    pick = np.where(np.abs(v - ext[left]) <= np.abs(v - ext[right]), left, right)
    resid = v - ext[pick]
    ok = np.abs(resid) < tol if strict else np.abs(resid) <= tol
    return np.where(ok, ext_idx[pick], -1), np.where(ok, resid, np.nan)


def nearest_points(omega_deg, x_mm, z_mm, omega_grid_deg, x_grid_mm, z_grid_mm, *,
                   omega_tol_deg: float | None = None, x_tol_mm: float | None = None, z_tol_mm: float | None = None,
                   omega_period_deg: float | None = 360.0):
    """The grid point of each frame, as :func:`place_on_grid` finds it, without the grid:
    ``(iz, iomega, ix, off_grid, (residual_z, residual_omega, residual_x))``, each ``(n,)``
    (a block of frames at a time: what a streamed scan table needs)."""
    om, xx, zz = (np.asarray(a, np.float64).reshape(-1) for a in (omega_deg, x_mm, z_mm))
    if not om.size == xx.size == zz.size:
        raise ValueError(f"omega has {om.size} values, x {xx.size}, z {zz.size}: one per frame each")
    iw, rw = _nearest(om, omega_grid_deg, omega_tol_deg, omega_period_deg)
    ix, rx = _nearest(xx, x_grid_mm, x_tol_mm)
    iz, rz = _nearest(zz, z_grid_mm, z_tol_mm)
    off = (iw < 0) | (ix < 0) | (iz < 0)
    iw, ix, iz = (np.where(off, -1, a) for a in (iw, ix, iz))
    return iz, iw, ix, off, (rz, rw, rx)


def place_on_grid(omega_deg, x_mm, z_mm, omega_grid_deg, x_grid_mm, z_grid_mm, *,
                  omega_tol_deg: float | None = None, x_tol_mm: float | None = None, z_tol_mm: float | None = None,
                  omega_period_deg: float | None = 360.0) -> GridPlacement:
    """Place frames measured at ``(omega_deg, x_mm, z_mm)`` (each ``(n,)``, acquisition order) on
    the grid ``z_grid_mm x omega_grid_deg x x_grid_mm`` by nearest grid value per axis.

    Omega is compared modulo ``omega_period_deg`` (a reading of 359.98 deg is the grid's 0; None:
    no wrap).  A frame farther than the tolerance from every grid value of an axis (default: half
    the smallest step of that grid; a one-value grid takes everything) is off grid: ``-1`` on all
    three axes and ``off_grid`` true (exactly halfway between two default-tolerance points: off
    grid).  A grid point reached by several frames keeps the last and is marked ``duplicate``.
    """
    iz, iw, ix, off, (rz, rw, rx) = nearest_points(omega_deg, x_mm, z_mm, omega_grid_deg, x_grid_mm, z_grid_mm,
                                                   omega_tol_deg=omega_tol_deg, x_tol_mm=x_tol_mm, z_tol_mm=z_tol_mm,
                                                   omega_period_deg=omega_period_deg)
    shape = (len(z_grid_mm), len(omega_grid_deg), len(x_grid_mm))
    grid = np.full(shape, -1, np.int64)
    seen = np.zeros(shape, np.int32)
    on = np.flatnonzero(~off)
    np.add.at(seen, (iz[on], iw[on], ix[on]), 1)
    grid[iz[on], iw[on], ix[on]] = on  # fancy assignment: the last frame of a repeated point wins
    if off.any():
        log.warning("%d of %d frames fit no grid point (flagged off grid)", int(off.sum()), off.size)
    return GridPlacement(iz, iw, ix, off, grid, seen > 1, np.where(off, np.nan, rw), np.where(off, np.nan, rx),
                         np.where(off, np.nan, rz))


def grid_from_positions(values, n: int) -> np.ndarray:
    """``n`` grid values from measured positions: the sorted readings split into ``n`` groups at
    their ``n - 1`` largest gaps, each group's median (jitter averages out; no assumed step)."""
    v = np.sort(np.asarray(values, np.float64).reshape(-1))
    if n < 1 or np.unique(v).size < n:
        raise ValueError(f"{np.unique(v).size} distinct positions cannot make a grid of {n} values")
    cuts = np.sort(np.argsort(np.diff(v))[::-1][:n - 1]) + 1
    return np.array([np.median(part) for part in np.split(v, cuts)])
