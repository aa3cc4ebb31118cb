"""Reading and writing a store's arrays: chunk-aligned regions, attrs, the layout a store records."""

from __future__ import annotations

import errno
import functools
import json
import os
import warnings
from pathlib import Path

import numpy as np
import zarr

from xrdct_dask.errors import NotARunError
from xrdct_dask.io.status import usable
from xrdct_dask.store.budget import MIN_TASK_MEMORY, Layout
from xrdct_dask.store.layout import FORMAT, PDF, RECON, REDUCED, SUM_ARRAYS, FrameBlock, region_for
from xrdct_dask.store.safety import StoreWriteError


def open_array(path: str | Path, name: str, mode: str = "r+") -> zarr.Array:
    """``store[name]``, opened once per process while its metadata file is unchanged.

    Every task opens ~10 arrays; re-reading and parsing their ``zarr.json`` each time cost more
    than some of the writes.  The cache is keyed by that file's inode, size and mtime, so a store
    recreated in place (``store.overwrite``) or an array whose metadata changed is opened anew."""
    full = Path(path) / name
    if mode not in ("r", "r+"):  # creating modes always go to zarr
        return zarr.open_array(str(full), mode=mode)
    try:
        st = os.stat(full / "zarr.json")
    except OSError:  # not a zarr v3 array (or gone): zarr says what is wrong
        return zarr.open_array(str(full), mode=mode)
    return _open_array(str(full), mode, (st.st_ino, st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=512)
def _open_array(full: str, mode: str, _stamp: tuple) -> zarr.Array:
    return zarr.open_array(full, mode=mode)


def _chunk_spans(arr, index: tuple, axis: int):
    """``(dim, start, [(a, b), ...])``: the dimension of ``arr`` behind result axis ``axis`` of
    ``arr[index]`` (ints drop dimensions), where its slice starts, and its chunk-aligned pieces."""
    kept = [d for d, i in enumerate(index) if not isinstance(i, (int, np.integer))]
    dim = kept[axis]
    start, stop, _ = index[dim].indices(arr.shape[dim])
    c = arr.chunks[dim]
    edges = [start, *range((start // c + 1) * c, stop, c), stop]
    return dim, start, list(zip(edges[:-1], edges[1:]))


def read_chunked(path, name: str, index: tuple, axis: int) -> np.ndarray:
    """``store[name][index]`` read one chunk width of ``axis`` at a time into one output array:
    what the read holds beyond its result is one chunk's decoded bytes, not the whole selection's
    (zarr decodes every chunk of a selection before assembling it).  ``index`` holds ints and
    slices (step 1), one per dimension; ``axis`` counts the dimensions of the result."""
    arr = open_array(path, name, "r")
    dim, start, spans = _chunk_spans(arr, index, axis)
    kept = [d for d, i in enumerate(index) if not isinstance(i, (int, np.integer))]
    out = np.empty([len(range(*index[d].indices(arr.shape[d]))) for d in kept], dtype=arr.dtype)
    for a, b in spans:
        dst = [slice(None)] * len(kept)
        dst[axis] = slice(a - start, b - start)
        out[tuple(dst)] = arr[index[:dim] + (slice(a, b),) + index[dim + 1:]]
    return out


def write_chunked(path, name: str, region: tuple, value: np.ndarray, axis: int) -> None:
    """:func:`write_region` one chunk width of ``axis`` (of ``value``) at a time: zarr encodes
    every chunk of a region at once, which would hold a second copy of a large ``value``."""
    dim, start, spans = _chunk_spans(open_array(path, name), region, axis)
    for a, b in spans:
        src = [slice(None)] * value.ndim
        src[axis] = slice(a - start, b - start)
        write_region(path, name, region[:dim] + (slice(a, b),) + region[dim + 1:], value[tuple(src)])


def write_region(path, name: str, region, value) -> None:
    """``store[name][region] = value``; an OSError becomes a :class:`StoreWriteError` naming both."""
    try:
        open_array(path, name)[region] = value
    except OSError as err:
        raise StoreWriteError(err.errno or errno.EIO,
                              f"{Path(path) / name}: cannot write {region} ({err.strerror or err})") from None


def write_reduced(path, block: FrameBlock, intensity, sigma, monitor, frame_status, sums=None) -> None:
    """Write one block: intensity, sigma ``(nw, nx, nq)`` (with sectors ``(nw, nx, nchi, nq)``);
    monitor, frame_status ``(nw, nx)``; ``sums`` (the kept sums, ``(5, nw, nx, ...)`` in the order of
    :data:`~xrdct_dask.store.layout.SUM_ARRAYS`) or None.

    ``frame_status`` is written last: a block whose status reads -1 was not (completely) written.
    ``frame_ok`` is :func:`~xrdct_dask.io.status.usable` of the status; ``total`` sums every bin.
    """

    reg = region_for(block)
    ok = usable(frame_status)
    write_region(path, f"{REDUCED}/intensity", reg, intensity[None])
    write_region(path, f"{REDUCED}/sigma", reg, sigma[None])
    for name, values in zip(SUM_ARRAYS, () if sums is None else sums):
        write_region(path, f"{REDUCED}/{name}", reg, values[None])
    write_region(path, f"{REDUCED}/monitor", reg, monitor[None])
    bins = -1 if intensity.ndim == 3 else tuple(range(2, intensity.ndim))
    write_region(path, f"{REDUCED}/total", reg, np.where(ok, np.nansum(intensity, axis=bins), np.nan)[None])
    write_region(path, f"{REDUCED}/frame_ok", reg, ok[None])
    write_region(path, f"{REDUCED}/frame_status", reg, frame_status.astype(np.int8)[None])


def background_rows_of(path) -> int:
    """Rows of a store's measured background (``reduced/background``), 0 where it has none."""
    g = zarr.open_group(str(Path(path) / REDUCED), mode="r")
    return int(g["background"].shape[0]) if "background" in g.array_keys() else 0


def layout_of(path):
    """The :class:`~xrdct_dask.store.budget.Layout` of a store: recorded in its attrs, or (a store made
    before layouts were recorded) read off its arrays' chunks."""

    attrs = read_attrs(path)
    if "layout" in attrs:
        return Layout.from_dict(attrs["layout"])
    red = open_array(path, f"{REDUCED}/intensity", "r").chunks
    rec = open_array(path, f"{RECON}/intensity", "r").chunks
    g = open_array(path, f"{PDF}/G", "r").chunks if (Path(path) / PDF / "G").exists() else (1, 1, 1, 1)
    return Layout(omega_chunk=red[1], q_chunk=red[3], q_sub=red[3], y_chunk=rec[1], r_chunk=g[3],
                  budget=MIN_TASK_MEMORY)


def consolidate(path) -> None:
    """Write consolidated metadata (one read opens the whole hierarchy, as xarray prefers).

    Call again after any attrs change: readers trust the consolidated copy."""

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def run_attrs(path) -> dict:
    """The root attrs of a finished or partial run of this program (its stored workflow among
    them); ValueError, one line, for anything else."""
    try:
        attrs = read_attrs(path)
    except Exception:  # zarr raises several kinds for "not a store"
        raise NotARunError(f"{path}: not a zarr store") from None
    if attrs.get("format") != FORMAT or "workflow" not in attrs:
        raise NotARunError(f"{path}: not an xrdct-dask run (no stored workflow)")
    return attrs


def read_attrs(path) -> dict:
    return json.loads(json.dumps(dict(zarr.open_group(str(path), mode="r").attrs)))
