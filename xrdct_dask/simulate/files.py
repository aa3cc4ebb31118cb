"""The simulator's HDF5 scans (Eiger-like master and bitshuffle-LZ4 data files, BLISS-like
motors) and scan tables."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from xrdct_dask.io.scan import INTERLACE_PASSES, interlaced_lines
from xrdct_dask.simulate.phantom import WAVELENGTH_A


def _frames_dataset(f, path: str, n: int, shape: tuple[int, int]):
    """An int32 ``(n, ny, nx)`` frames dataset at ``path`` of open file ``f``: chunks of one frame,
    bitshuffle + LZ4 (HDF5 filter 32008), in NXentry / NXdata groups as a detector writes."""
    group, _, name = path.strip("/").rpartition("/")
    f.attrs["default"] = "entry"
    g = f.require_group(group) if group else f
    for k, _ in enumerate(group.split("/") if group else []):
        sub = f["/".join(group.split("/")[:k + 1])]
        sub.attrs["NX_class"] = "NXentry" if k == 0 else "NXdata"
    if group:
        g.attrs["signal"] = name
    return g.create_dataset(name, shape=(n, *shape), dtype=np.int32, chunks=(1, *shape),
                            **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))


def write_hdf5_units(out: str | Path, layout, dataset: str, render, nframes: int, shape: tuple[int, int], *,
                     threads: int = 4, progress=None) -> None:
    """Write an HDF5 file per slice or line: the file ``layout.format(i)`` (relative to ``out``)
    holds, at ``dataset``, the frames of its unit in acquisition order (frame ``layout.local(i)``).

    ``layout`` is a :class:`~xrdct_dask.io.layout.FrameTemplate` without ``{index}``; a unit's
    frames are consecutive in acquisition order."""

    out = Path(out)
    starts = [0]
    while starts[-1] < nframes:  # the first frame of each unit: the next unit starts where its count ends
        first = starts[-1]
        size = layout.scan.nfast if layout.scope == "line" else layout.scan.per_slice
        starts.append(min(first + size, nframes))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for first, last in zip(starts[:-1], starts[1:]):
            path = out / layout.format(first)
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as f:
                d = _frames_dataset(f, dataset, last - first, shape)
                for j, frame in enumerate(pool.map(render, range(first, last))):
                    d[j] = frame
                    if progress is not None:
                        progress(first + j + 1, nframes)


def write_hdf5_scan(folder: str | Path, render, nframes: int, shape: tuple[int, int], *, positions: dict,
                    monitor: np.ndarray, frames_per_file: int = 100, threads: int = 4, progress=None,
                    pixel_size_m: float = 172e-6, wavelength_A: float = WAVELENGTH_A, prefix: str = "scan") -> Path:
    """Write frames as an Eiger-like HDF5 scan and return the master file.

    ``{prefix}_data_000001.h5, ...``: ``/entry/data/data`` int32 ``(k, ny, nx)``, chunks of one
    frame compressed with bitshuffle + LZ4 (HDF5 filter 32008, hdf5plugin), at most
    ``frames_per_file`` frames each, ``image_nr_low/high`` attrs (1-based) as Eiger writes.
    ``{prefix}_master.h5``: NXentry ``/entry`` whose NXdata ``/entry/data`` holds the Eiger
    external links ``data_000001, ...`` and ``data``, a virtual dataset over all data files (what
    BLISS / Lima write; h5py and silx read frames through it); per-frame positioners
    ``/entry/measurement/{name}`` (hard-linked from ``/entry/instrument/positioners/{name}``,
    with ``units``) and ``/entry/measurement/monitor``.  All file names are relative, so the
    folder can move.

    Parameters
    ----------
    render : callable
        ``render(i) -> (ny, nx) int32`` frame ``i`` in acquisition order (called from ``threads`` threads).
    positions : dict
        ``{name: (values (nframes,), units)}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ny, nx = shape
    names = []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for k, first in enumerate(range(0, nframes, frames_per_file)):
            last = min(first + frames_per_file, nframes)
            name = f"{prefix}_data_{k + 1:06d}.h5"
            names.append((name, first, last))
            with h5py.File(folder / name, "w") as f:
                f.attrs["default"] = "entry"
                entry = f.create_group("entry")
                entry.attrs.update({"NX_class": "NXentry", "default": "data"})
                data = entry.create_group("data")
                data.attrs.update({"NX_class": "NXdata", "signal": "data"})
                d = data.create_dataset("data", shape=(last - first, ny, nx), dtype=np.int32, chunks=(1, ny, nx),
                                        **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
                d.attrs.update({"image_nr_low": np.int32(first + 1), "image_nr_high": np.int32(last)})
                for j, frame in enumerate(pool.map(render, range(first, last))):
                    d[j] = frame
                    if progress is not None:
                        progress(first + j + 1, nframes)
    master = folder / f"{prefix}_master.h5"
    with h5py.File(master, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        data = entry.create_group("data")
        data.attrs.update({"NX_class": "NXdata", "signal": "data"})
        layout = h5py.VirtualLayout(shape=(nframes, ny, nx), dtype=np.int32)
        for k, (name, first, last) in enumerate(names):
            data[f"data_{k + 1:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
            layout[first:last] = h5py.VirtualSource(name, "/entry/data/data", shape=(last - first, ny, nx))
        data.create_virtual_dataset("data", layout, fillvalue=-1)
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        det = inst.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        for key in ("x_pixel_size", "y_pixel_size"):
            det.create_dataset(key, data=pixel_size_m).attrs["units"] = "m"
        det.create_dataset("description", data="PILATUS 2M (simulated by xrdct_dask)")
        beam = inst.create_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        beam.create_dataset("incident_wavelength", data=wavelength_A).attrs["units"] = "angstrom"
        pos = inst.create_group("positioners")
        pos.attrs["NX_class"] = "NXcollection"
        meas = entry.create_group("measurement")
        meas.attrs["NX_class"] = "NXcollection"
        for key, (values, units) in positions.items():
            ds = meas.create_dataset(key, data=np.asarray(values, np.float64))
            ds.attrs["units"] = units
            pos[key] = ds  # a hard link: one dataset, two names (BLISS lists scanned motors in both)
        meas.create_dataset("monitor", data=np.asarray(monitor, np.float64)).attrs["units"] = "counts"
    return master


def _ascii_digits(values: np.ndarray, width: int, decimals: int = 0) -> np.ndarray:
    """uint8 ``(n, width + (decimals > 0))``: non-negative ``values`` as zero-padded fixed-point text."""
    scaled = np.round(np.asarray(values, np.float64) * 10**decimals).astype(np.int64)
    if (scaled < 0).any() or (scaled >= 10 ** (width)).any():
        raise ValueError(f"values outside [0, 1e{width - decimals}) cannot be written in {width} digits")
    digits = np.empty((scaled.size, width), np.uint8)
    for j in range(width - 1, -1, -1):  # last digit first
        scaled, d = np.divmod(scaled, 10)
        digits[:, j] = d
    digits += ord("0")
    if decimals:
        digits = np.insert(digits, width - decimals, ord("."), axis=1)
    return digits


def write_scan_table(path: str | Path, nz: int, nomega: int, nx: int, *, order: str = "snake",
                     omega_range_deg: float = 180.0, x_step_mm: float = 0.01, z_step_mm: float = 0.01,
                     jitter: float = 0.05, monitor_path: str | Path | None = None, seed: int = 0,
                     rows: int = 1 << 20) -> int:
    """Write the scan table (``index,iz,iomega,ix,omega_deg,x_mm,z_mm``) of an ``nz x nomega x nx``
    scan (fast axis x, ``order`` raster | snake | interlaced) as the acquisition would, and its
    monitor file (one value per line) at ``monitor_path``, ``rows`` rows at a time: 1e7 rows in
    seconds, in bounded memory.  Readings are the grid values plus uniform jitter of ``jitter``
    steps (non-negative: the grid starts one step in).  Returns the rows written.

    The test data of the bounded-memory scan reading (:mod:`xrdct_dask.io.scantable`)."""

    rng = np.random.default_rng(seed)
    n = nz * nomega * nx
    omega_step = omega_range_deg / nomega
    lines = interlaced_lines(nomega, INTERLACE_PASSES) if order == "interlaced" else np.arange(nomega)
    w_int = lambda v: max(1, len(str(int(v))))  # noqa: E731
    mon = open(monitor_path, "wb") if monitor_path is not None else None
    try:
        with open(path, "wb") as f:
            f.write(b"index,iz,iomega,ix,omega_deg,x_mm,z_mm\n")
            if mon is not None:
                mon.write(b"# I0 monitor, one value per frame in acquisition order\n")
            for a in range(0, n, rows):
                i = np.arange(a, min(a + rows, n), dtype=np.int64)
                line, fast = i // nx, i % nx
                iz, k = line // nomega, line % nomega
                ix = np.where(line % 2 == 1, nx - 1 - fast, fast) if order != "raster" else fast
                iw = lines[k]
                jit = lambda size=i.size: rng.uniform(-jitter, jitter, size)  # noqa: E731
                omega = (iw + 1 + jit()) * omega_step
                x = (ix + 1 + jit()) * x_step_mm
                z = (iz + 1 + jit()) * z_step_mm
                sep = np.full((i.size, 1), ord(","), np.uint8)
                parts = [_ascii_digits(i, w_int(n)), sep, _ascii_digits(iz, w_int(nz)), sep,
                         _ascii_digits(iw, w_int(nomega)), sep, _ascii_digits(ix, w_int(nx)), sep,
                         _ascii_digits(omega, w_int((nomega + 2) * omega_step) + 6, 6), sep,
                         _ascii_digits(x, w_int((nx + 2) * x_step_mm) + 6, 6), sep,
                         _ascii_digits(z, w_int((nz + 2) * z_step_mm) + 6, 6),
                         np.full((i.size, 1), ord("\n"), np.uint8)]
                f.write(np.concatenate(parts, axis=1).tobytes())
                if mon is not None:
                    value = 1e5 * (1 + 0.05 * np.sin(2 * np.pi * i / 97.0)) + rng.uniform(0, 1000, i.size)
                    mon.write(np.concatenate([_ascii_digits(value, 8, 1), np.full((i.size, 1), ord("\n"), np.uint8)],
                                             axis=1).tobytes())
    finally:
        if mon is not None:
            mon.close()
    return n
