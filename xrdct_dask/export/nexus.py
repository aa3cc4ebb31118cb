"""NeXus export of a run store: ``export_nexus("run.zarr", "run.h5")``.

silx, PyMca, DAWN, nDTomo and pyFAI's viewers open HDF5 / NeXus, not zarr.  The export writes

    run.h5                               NXroot, default -> the first exported group
      reduced/          NXentry          (one per store group: reduced, recon, pdf)
        intensity/      NXdata           signal "intensity", axes ["z", "omega", "x", "q"],
          intensity                      z_indices = 0, ...; the data, chunked + compressed
          intensity_errors               (reduced) hard link to sigma/sigma: NeXus' uncertainties
          z, omega, x, q                 the coordinates with units / long_name (hard links: stored once)
        sigma/, monitor/, total/, frame_status/ ...   one NXdata per data variable
        program_name                     "xrdct_dask" + version; the store group's attrs as attributes
      recon/ ...                         NXentry, default -> intensity
      pdf/ ...                           NXentry, default -> G
      texture/ ...                       NXentry, default -> index (sectors with texture.peaks)
      azint/            NXentry          NXazint1d / NXazint2d: I, I_errors, the integrator's sums and
                                         the NXprocess (workflow, versions, input digests), linked to
                                         reduced/ (:mod:`xrdct_dask.export.azint`)

Every dataset keeps the store's ``units`` and ``long_name``; data are copied one zarr chunk at a
time (HDF5 chunks divide the zarr chunks, so every write covers whole HDF5 chunks) and never a
whole array in memory; given a dask client, the chunks are read and compressed on its workers
in parallel and the client only writes the compressed bytes (``write_direct_chunk``).
Compression: gzip with byte shuffle (every HDF5 reader has it), or ``"lz4"`` (hdf5plugin,
faster, needs the plugin to read).  The output file is never overwritten
unless it is an earlier export of this program and ``overwrite`` is set.  It is written under a
temporary name of its own (``.OUT.h5.<hex>.partial``, created exclusively: a user's file is never
written over) and renamed when whole, with ``.OUT.h5.xrdct-lock`` held so that two exports of one
file do not race (the second is refused); a disk too full for the next piece stops the export in
one line before HDF5 sees the error, leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import itertools
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import zarr
from distributed import as_completed

from xrdct_dask import __version__ as version
from xrdct_dask.cluster.sidework import resolve_client
from xrdct_dask.errors import ExportError, ExportExistsError
from xrdct_dask.export.azint import write_azint
from xrdct_dask.export.parts import (
    PartsPlan,
    check_parts,
    is_own_parts,
    nparts_for,
    parts_folder,
    place_parts,
    remove_stale_parts,
    start_parts_folder,
)
from xrdct_dask.ownfiles import exclusive_tmp

CREATOR = "xrdct_dask export"
DEFAULT_GROUPS = ("reduced", "recon", "pdf", "texture")
MAIN_SIGNAL = {"reduced": "intensity", "recon": "intensity", "pdf": "G", "texture": "index"}
ERRORS = {("reduced", "intensity"): "sigma"}
H5_CHUNK_BYTES = 1 << 20  # HDF5 chunks of ~1 MiB at most: viewers read them whole


def _h5_chunks(zchunks: tuple[int, ...], itemsize: int, limit: int = H5_CHUNK_BYTES) -> tuple[int, ...]:
    """HDF5 chunk shape: the zarr chunk divided (dim by dim, by its smallest prime factor, largest
    dim first) until it holds at most ``limit`` bytes; each dim divides the zarr chunk's."""
    c = list(zchunks)
    while int(np.prod(c)) * itemsize > limit and max(c) > 1:
        k = int(np.argmax(c))
        n = c[k]
        p = next((d for d in range(2, int(n ** 0.5) + 1) if n % d == 0), n)
        c[k] = n // p
    return tuple(max(1, x) for x in c)


def _attr_value(v):
    """An attribute HDF5 can hold: numbers and strings as they are, anything else as JSON."""
    if isinstance(v, (str, bool, int, float, np.number)):
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return np.asarray(v)
    return json.dumps(v, default=str)


def _compression(kind: str) -> dict:
    if kind == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if kind == "lz4":
        # lazy: an h5py plugin, needed only for lz4
        import hdf5plugin

        return dict(hdf5plugin.LZ4())
    if kind == "none":
        return {}
    raise ExportError(f"compression must be gzip, lz4 or none, got {kind!r}")


EXPORT_PIECE_BYTES = 64 << 20  # uncompressed bytes of the zarr chunks one export task reads and encodes
EXPORT_IN_FLIGHT = 8  # pieces per worker whose encoded chunks may wait for the client at once


def _copy_array(zarr_arr, h5group, name: str, compression: dict, client=None, source=None, kind: str = "none",
                guard: SpaceGuard | None = None, parts: PartsPlan | None = None):
    """Copy a zarr array into a new HDF5 dataset one zarr chunk at a time.

    With a ``client``, the zarr chunks are read and encoded into HDF5 chunks (the filters of
    ``kind``) on the workers, pieces of about :data:`EXPORT_PIECE_BYTES` each
    (:func:`_encode_piece`, tasks ``xrdct-export-*``), and the client only writes the encoded
    bytes where they go (``write_direct_chunk``), as they arrive: the compression, the costly part,
    runs in parallel, and the file reads back the same values.  ``source`` = (store path, array
    path) for the workers to open."""
    shape, zchunks = zarr_arr.shape, zarr_arr.chunks
    if zarr_arr.dtype.kind == "T":  # variable-length text (recon/slice_info: a JSON per slice): HDF5 strings
        return h5group.create_dataset(name, data=np.asarray(zarr_arr[...], dtype=object), dtype=h5py.string_dtype())
    dtype = np.dtype(bool) if zarr_arr.dtype == np.dtype(bool) else zarr_arr.dtype
    if not shape or 0 in shape:
        d = h5group.create_dataset(name, shape=shape, dtype=dtype)
        if shape == ():
            d[()] = zarr_arr[()]
        return d
    chunks = _h5_chunks(tuple(min(c, s) for c, s in zip(zchunks, shape)), dtype.itemsize)
    fill = None if dtype == np.dtype(bool) or zarr_arr.fill_value is None else zarr_arr.fill_value
    if parts is not None and source is not None and parts.wants(zarr_arr):
        return parts.virtual(h5group, name, zarr_arr, source[1], chunks, dtype, fill)
    d = h5group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill, **compression)
    grid = [range(0, s, c) for s, c in zip(shape, zchunks)]
    regions = [tuple(slice(a, min(a + c, s)) for a, c, s in zip(start, zchunks, shape))
               for start in itertools.product(*grid)]
    if client is None or source is None:
        for region in regions:
            if guard is not None:
                guard.need(int(np.prod([r.stop - r.start for r in region])) * dtype.itemsize)
            d[region] = zarr_arr[region]
        return d
    per_piece = max(1, EXPORT_PIECE_BYTES // (int(np.prod([min(c, s) for c, s in zip(zchunks, shape)]))
                                              * dtype.itemsize))
    spec = (*source, shape, chunks, dtype.str, fill, kind)
    pieces = [(spec, [[(r.start, r.stop) for r in region] for region in regions[k:k + per_piece]])
              for k in range(0, len(regions), per_piece)]
    _write_encoded(client, d, pieces, f"xrdct-export-{source[1].replace('/', '-')}", guard)
    return d


def _write_encoded(client, d, pieces, name: str, guard: SpaceGuard | None = None) -> None:
    """Encode ``pieces`` on the workers (a bounded number in flight) and write their chunks into ``d``."""


    token = uuid.uuid4().hex[:8]
    window = max(1, EXPORT_IN_FLIGHT * max(1, len(client.scheduler_info(n_workers=-1)["workers"])))
    todo = iter(enumerate(pieces))

    def submit(k, piece):
        return client.submit(_encode_piece, piece, key=f"{name}-{k}-{token}", pure=False)

    running = as_completed([submit(k, p) for k, p in itertools.islice(todo, window)], loop=client.loop)
    for fut in running:
        chunks = fut.result()  # raises a failed piece's error
        if guard is not None:
            guard.need(sum(len(raw) for _, _, raw in chunks))
        for offset, mask, raw in chunks:
            d.id.write_direct_chunk(offset, raw, mask)
        fut.release()
        nxt = next(todo, None)
        if nxt is not None:
            running.add(submit(*nxt))


def _encode_piece(piece) -> list[tuple[tuple[int, ...], int, bytes]]:
    """HDF5 chunks of some zarr chunks, encoded as HDF5 itself encodes them: the data are written to
    an in-memory HDF5 dataset of the same shape, chunks, fill and filters and read back raw
    (``read_direct_chunk``).  Returns ``(chunk offset, filter mask, bytes)`` for each HDF5 chunk."""


    (store_path, array_path, shape, chunks, dtype, fill, kind), regions = piece
    src = zarr.open_array(str(Path(store_path) / array_path), mode="r")
    out = []
    with h5py.File(f"xrdct-export-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False) as f:
        d = f.create_dataset("d", shape=shape, dtype=np.dtype(dtype), chunks=chunks, fillvalue=fill,
                             **_compression(kind))
        for bounds in regions:
            region = tuple(slice(a, b) for a, b in bounds)
            d[region] = src[region]
            for start in itertools.product(*(range(a, b, c) for (a, b), c in zip(bounds, chunks))):
                mask, raw = d.id.read_direct_chunk(start)
                out.append((start, mask, bytes(raw)))
    return out


def _coordinates(group) -> dict:
    """The 1D arrays of a zarr group named after their own dimension."""
    out = {}
    for name, arr in group.arrays():
        dims = arr.metadata.dimension_names or ()
        if arr.ndim == 1 and tuple(dims) == (name,):
            out[name] = arr
    return out


def export_nexus(run_zarr: str | Path, out_h5: str | Path, groups=DEFAULT_GROUPS, *, compression: str = "gzip",
                 overwrite: bool = False, client=None, single_file: bool | None = None) -> Path:
    """Write the groups of a run store as NeXus (NXentry / NXdata) to ``out_h5``.

    Parameters
    ----------
    run_zarr : path of the run store (``xrdct run`` output)
    out_h5 : path of the HDF5 file to create
    groups : store groups to export; the default exports those of ``reduced, recon, pdf`` the store
        has, a group named explicitly must exist.
    compression : "gzip" (default), "lz4" (hdf5plugin) or "none"
    overwrite : replace ``out_h5`` when it is an earlier export of this program (never another file)
    client : a dask client (or a callable making one): the chunks are read and compressed on its
        workers in parallel, the client writes the compressed bytes; None: all here.  The file
        reads back the same either way.
    single_file : one HDF5 file (today's layout).  False: every large array is written by the
        workers into part files ``OUT.h5.parts/part-*.h5`` (whole zarr chunks along its first axis)
        and ``OUT.h5`` holds the NeXus tree with a virtual dataset per array
        (:mod:`xrdct_dask.export.parts`).  Default: parts with a client, one file without.

    Returns the path written.  Raises :class:`ExportError` (one line) for a missing store or group,
    an existing output file, or a bad compression name.
    """

    run_zarr, out_h5 = Path(run_zarr), Path(out_h5)
    try:
        root = zarr.open_group(str(run_zarr), mode="r")
    except Exception as err:  # zarr raises several kinds for "not a store"
        raise ExportError(f"{run_zarr}: not a zarr store ({type(err).__name__}: {err})") from None
    present = set(root.group_keys())
    groups = tuple(groups)
    explicit = groups != DEFAULT_GROUPS
    missing = [g for g in groups if g not in present]
    if explicit and missing:
        raise ExportError(f"{run_zarr}: no group {missing[0]!r} (the store has {', '.join(sorted(present))})")
    groups = tuple(g for g in groups if g in present)
    if not groups:
        raise ExportError(f"{run_zarr}: none of the groups {', '.join(DEFAULT_GROUPS)} is in the store")
    comp = _compression(compression)
    in_parts = (client is not None) if single_file is None else not single_file
    folder = parts_folder(out_h5)
    if (folder.exists() or folder.is_symlink()) and not (overwrite and is_own_parts(folder)):
        raise ExportError(f"{folder} exists and is not the parts folder of an export of this program being "
                          "overwritten: nothing was written" if not is_own_parts(folder) else
                          f"{folder} exists (an earlier export's parts): pass overwrite to replace it")
    if out_h5.exists():
        if not overwrite:
            raise ExportExistsError(out_h5)
        try:
            with h5py.File(out_h5, "r") as f:
                ours = f.attrs.get("creator") == CREATOR
        except OSError:
            ours = False
        if not ours:
            raise ExportError(f"{out_h5} exists and is not an export of this program: not overwritten")

    with target_lock(out_h5):  # one export at a time writes OUT.h5; a second is refused in one line
        remove_stale_partials(out_h5)
        remove_stale_parts(out_h5)
        with exclusive_tmp(out_h5, "partial") as (_, tmp):  # a name of its own: never a user's file
            guard = SpaceGuard(out_h5, _h5_chunk_count(root, groups))
            client = resolve_client(client)
            plan = None
            if in_parts:
                ptmp = start_parts_folder(out_h5)  # exclusive: a new folder of this export's own
                plan = PartsPlan(run_zarr, out_h5, ptmp, nparts_for(client), compression)
            try:
                _write(tmp, root, run_zarr, out_h5, groups, comp, version, client, compression, guard, plan)
                if plan is not None:
                    plan.write(client, guard)
                    place_parts(plan.folder, folder)
                elif overwrite and is_own_parts(folder):  # a parts export replaced by one file: its parts go
                    shutil.rmtree(folder)
            except OSError as err:  # a write HDF5 could not do (a disk filled by someone else meanwhile)
                raise ExportError(f"{out_h5}: cannot be written ({err.strerror or _first_line(err)}); nothing "
                                  "was left") from None
            finally:
                if plan is not None and plan.folder.exists():
                    shutil.rmtree(plan.folder, ignore_errors=True)  # this export's own unfinished parts
            tmp.replace(out_h5)
        if plan is not None:
            check_parts(out_h5)
    return out_h5


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


LOCK_MARK = b"xrdct-dask export lock\n"  # the contents of a lock file this program made (and may remove)


@contextlib.contextmanager
def target_lock(out_h5: Path):
    """Hold ``.OUT.h5.xrdct-lock`` beside ``out_h5`` (``flock``, exclusive, not waiting) while an
    export writes it: a second export of the same file is refused in one line, and neither can
    remove the other's partial file.  The lock file is removed after, where it is this program's
    (its contents say so); a file of that name that is not is only locked, never written."""
    lock = out_h5.with_name(f".{out_h5.name}.xrdct-lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
            os.write(fd, LOCK_MARK)
        except FileExistsError:
            try:
                fd = os.open(lock, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:  # removed by the export that just finished: try again
                continue
        except OSError as err:
            raise ExportError(f"{out_h5}: cannot be written ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ExportError(f"{out_h5}: another export is writing it now (it holds {lock.name}): wait for it "
                              "to finish, or export to another file") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a lock file an export removed as we opened it: take the new one
    try:
        yield lock
    finally:
        try:
            if os.pread(fd, len(LOCK_MARK) + 1, 0) == LOCK_MARK:
                os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.partial$")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def remove_stale_partials(out_h5: Path) -> list[Path]:
    """Remove the partial files of exports of ``out_h5`` that were killed (``.OUT.h5.<12 hex>.partial``
    holding an HDF5 file, or nothing): called with the target's lock held, so no export is writing
    them.  Nothing else is touched (a user's ``.OUT.h5.partial`` has no such name)."""
    removed = []
    for p in out_h5.parent.glob(f".{glob.escape(out_h5.name)}.*.partial"):
        m = _PARTIAL.match(p.name)
        if not m or m["name"] != out_h5.name or not p.is_file() or p.is_symlink():
            continue
        try:
            with open(p, "rb") as fh:
                head = fh.read(len(_HDF5_SIGNATURE))
            if head in (b"", _HDF5_SIGNATURE):
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


SPACE_MARGIN = 4 << 20  # bytes kept free for HDF5's metadata (object headers, chunk index, the close)


class SpaceGuard:
    """Refuse to write what the disk cannot take, before HDF5 tries: HDF5 hitting ENOSPC leaves its
    handles unusable (hundreds of lines of errors as they are freed, then a segfault at exit).
    Before each piece, the free space must hold its bytes (uncompressed: an upper bound for what
    a filter writes, + 1 %) plus the metadata margin (4 MB + 256 B per HDF5 chunk of the export)."""

    def __init__(self, out_h5: Path, nchunks: int):
        self.out_h5 = out_h5
        self.margin = SPACE_MARGIN + 256 * nchunks

    def need(self, nbytes: int) -> None:
        free = shutil.disk_usage(self.out_h5.parent).free
        if free < int(nbytes * 1.01) + 1024 + self.margin:
            raise ExportError(f"{self.out_h5}: no space left on the device ({free / 1e6:,.1f} MB free, the export "
                              f"needs more): nothing was left")


def _h5_chunk_count(root, groups) -> int:
    """HDF5 chunks the export of ``groups`` writes (for :class:`SpaceGuard`'s metadata margin)."""
    n = 0
    for g in groups:
        for _, arr in root[g].arrays():
            if arr.ndim and 0 not in arr.shape:
                c = _h5_chunks(tuple(min(c, s) for c, s in zip(arr.chunks, arr.shape)), arr.dtype.itemsize)
                n += int(np.prod([-(-s // k) for s, k in zip(arr.shape, c)]))
    return n


def _write(tmp: Path, root, run_zarr: Path, out_h5: Path, groups, comp: dict, version: str, client=None,
           kind: str = "none", guard: SpaceGuard | None = None, parts: PartsPlan | None = None) -> None:

    with h5py.File(tmp, "w") as f:
        f.attrs.update({"NX_class": "NXroot", "creator": CREATOR, "file_name": out_h5.name,
                        "file_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "default": groups[0],
                        "HDF5_Version": h5py.version.hdf5_version, "h5py_version": h5py.version.version,
                        "source_store": str(run_zarr.resolve())})
        for k, v in dict(root.attrs).items():
            f.attrs[f"xrdct_{k}"] = _attr_value(v)
        for gname in groups:
            _export_group(root[gname], f.create_group(gname), gname, comp, version, client, run_zarr, kind, guard,
                          parts)
        if parts is not None:
            f.attrs["xrdct_parts"] = json.dumps(parts.manifest())
        if "reduced" in groups:
            write_azint(f, root, version)


def _export_group(zg, entry, gname: str, comp: dict, version: str, client=None, run_zarr: Path | None = None,
                  kind: str = "none", guard: SpaceGuard | None = None, parts: PartsPlan | None = None) -> None:
    entry.attrs["NX_class"] = "NXentry"
    entry.attrs["title"] = f"xrdct_dask {gname}"
    entry.create_dataset("program_name", data="xrdct_dask").attrs["version"] = version
    for k, v in dict(zg.attrs).items():
        entry.attrs[k] = _attr_value(v)
    coords = _coordinates(zg)
    variables = [n for n, _ in zg.arrays() if n not in coords]
    if not variables:
        return
    main = MAIN_SIGNAL.get(gname) if MAIN_SIGNAL.get(gname) in variables else variables[0]
    entry.attrs["default"] = main
    written_coords: dict[str, object] = {}
    written_vars: dict[str, object] = {}
    for name in [main] + [v for v in variables if v != main]:
        arr = zg[name]
        nxdata = entry.create_group(name)
        nxdata.attrs.update({"NX_class": "NXdata", "signal": name})
        d = _copy_array(arr, nxdata, name, comp, client, (str(run_zarr), f"{gname}/{name}"), kind, guard, parts)
        d.attrs.update({k: _attr_value(v) for k, v in dict(arr.attrs).items()})
        written_vars[name] = d
        dims = list(arr.metadata.dimension_names or [None] * arr.ndim)
        axes = []
        for i, dim in enumerate(dims):
            if dim in coords:
                if dim not in written_coords:
                    c = _copy_array(coords[dim], nxdata, dim, {})
                    c.attrs.update({k: _attr_value(v) for k, v in dict(coords[dim].attrs).items()})
                    written_coords[dim] = c
                else:
                    nxdata[dim] = written_coords[dim]  # hard link: one dataset, several NXdata
                nxdata.attrs[f"{dim}_indices"] = i
                axes.append(dim)
            else:
                axes.append(".")
        nxdata.attrs["axes"] = axes
        if arr.attrs.get("long_name"):
            nxdata.attrs["title"] = f"{gname}/{name}: {arr.attrs['long_name']}"
    for (g, sig), err in ERRORS.items():
        if g == gname and sig in written_vars and err in written_vars:
            entry[sig][f"{sig}_errors"] = written_vars[err]
