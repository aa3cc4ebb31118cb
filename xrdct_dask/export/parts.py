"""NeXus export in parts written on the workers, tied together by one master file.

At 1000^3 the reduced data are 12.6 TB: written by one client into one file, the export is bound
by that client's disk bandwidth.  Here every worker writes HDF5 files of its own (whole zarr chunks
along the first axis of every large array) and the client writes only the master::

    run.h5                         the NeXus tree of today (NXentry / NXdata, axes, units, links):
                                   every large array a virtual dataset mapping its first-axis slabs
    run.h5.parts/part-00000.h5     the slabs of part 0 of every large array, compressed as asked
    run.h5.parts/part-00001.h5     ...
    run.h5.parts/xrdct-export.json who wrote this folder (an overwrite replaces only such a folder)

The parts are written into ``.run.h5.parts.<12 hex>.partial`` (its mark file, written first, names
the export, its process and host) and the folder renamed into place when whole.  An export killed
meanwhile leaves that folder behind; the next export of the same file, holding the file's lock (so
no export of it is alive), removes it (:func:`remove_stale_parts`, one line saying so) -- only a
folder of that name holding that mark and nothing but part files.

The virtual datasets name their sources relative to the master (HDF5 looks for them beside it),
so the master and its folder can be moved together.  HDF5 fills a missing source with the fill
value without a word, so :func:`check_parts` opens every part the master lists and compares its
token (the export's own, written last into each part) and its datasets' shapes: a missing,
truncated or foreign part is a one-line :class:`~xrdct_dask.errors.ExportError` naming it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import zarr

from xrdct_dask.cluster.sidework import map_pieces, resolve_client, slabs
from xrdct_dask.errors import ExportError
from xrdct_dask.ownfiles import is_own_json, own_tmp_name
from xrdct_dask.view.console import console

PARTS_SUFFIX = ".parts"  # OUT.h5 -> OUT.h5.parts/
PART_MARK = "xrdct-export.json"
PART_MIN_BYTES = 1 << 20  # arrays smaller than this stay in the master (coordinates, per-slice figures)
PARTS_PER_WORKER = 2  # part files per worker: a slow one does not hold the others back long


def parts_folder(out_h5: Path) -> Path:
    return out_h5.with_name(out_h5.name + PARTS_SUFFIX)


def is_own_parts(folder: Path) -> bool:
    """Whether ``folder`` is a parts folder this program wrote (its mark file says so)."""
    # lazy: import cycle export.nexus -> export.parts
    from xrdct_dask.export.nexus import CREATOR

    return folder.is_dir() and not folder.is_symlink() and is_own_json(folder / PART_MARK, "creator", CREATOR)


class PartsPlan:
    """The large arrays of an export, each cut along its first axis (at zarr chunk edges) into
    ``nparts`` slabs; part ``k`` holds slab ``k`` of every array.  :meth:`virtual` maps one array
    into the master (a virtual dataset of its parts); :meth:`write` has the parts written."""

    def __init__(self, run_zarr: Path, out_h5: Path, folder: Path, nparts: int, kind: str):
        self.run_zarr, self.out_h5, self.folder, self.nparts, self.kind = run_zarr, out_h5, folder, nparts, kind
        self.token = uuid.uuid4().hex
        self.final = parts_folder(out_h5)
        self.arrays: list[dict] = []

    def wants(self, zarr_arr) -> bool:
        return (zarr_arr.ndim >= 2 and zarr_arr.dtype.kind != "T" and 0 not in zarr_arr.shape
                and int(np.prod(zarr_arr.shape)) * zarr_arr.dtype.itemsize >= PART_MIN_BYTES)

    def part_name(self, k: int) -> str:
        return f"part-{k:05d}.h5"

    def virtual(self, nxdata, name: str, zarr_arr, array_path: str, chunks: tuple, dtype: np.dtype, fill):
        """A virtual dataset ``nxdata[name]`` of the array's slabs in the parts (relative names)."""
        shape = zarr_arr.shape
        c0 = zarr_arr.chunks[0]
        nchunks = -(-shape[0] // c0)
        edges = [(a * c0, min(b * c0, shape[0])) for a, b in slabs(nchunks, self.nparts)]
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        inside = f"{array_path}"
        for k, (a, b) in enumerate(edges):
            rel = f"{self.final.name}/{self.part_name(k)}"
            layout[a:b] = h5py.VirtualSource(rel, inside, shape=(b - a, *shape[1:]), dtype=dtype)
        self.arrays.append({"array": array_path, "shape": list(shape), "chunks": list(chunks), "dtype": dtype.str,
                            "fill": None if fill is None else float(fill), "edges": edges})
        return nxdata.create_virtual_dataset(name, layout, fillvalue=fill)

    def manifest(self) -> dict:
        """What the master records of its parts (checked by :func:`check_parts`)."""
        parts: dict[int, dict] = {}
        for a in self.arrays:
            for k, (lo, hi) in enumerate(a["edges"]):
                parts.setdefault(k, {})[a["array"]] = [hi - lo, *a["shape"][1:]]
        return {"folder": self.final.name, "token": self.token,
                "parts": {self.part_name(k): v for k, v in sorted(parts.items())}}

    def write(self, client, guard=None) -> list[int]:
        """Each part a task on the workers of ``client`` (None: here): returns the bytes each wrote."""
        pieces = []
        for k in range(max((len(a["edges"]) for a in self.arrays), default=0)):
            todo = [(a["array"], a["edges"][k], a["shape"], a["chunks"], a["dtype"], a["fill"])
                    for a in self.arrays if k < len(a["edges"])]
            pieces.append((str(self.run_zarr), str(self.folder / self.part_name(k)), todo, self.kind, self.token,
                           guard))
        return map_pieces(client, _write_part, pieces, "xrdct-export-part")


def _write_part(piece) -> int:
    """One part file (a task): slab ``[a, b)`` of each listed array, zarr chunk by zarr chunk,
    with the export's HDF5 chunks and filters; the export's token written last (a part without
    it was not finished).  Returns the file's size in bytes."""
    # lazy: import cycle export.nexus -> export.parts
    from xrdct_dask.export.nexus import _compression

    store_path, out, todo, kind, token, guard = piece
    comp = _compression(kind)
    with h5py.File(out, "x") as f:  # a new name in this export's own folder: never someone's file
        for array_path, (a, b), shape, chunks, dtype, fill in todo:
            src = zarr.open_array(str(Path(store_path) / array_path), mode="r")
            dt = np.dtype(dtype)
            d = f.create_dataset(array_path, shape=(b - a, *shape[1:]), dtype=dt,
                                 chunks=tuple(min(c, s) for c, s in zip(chunks, (b - a, *shape[1:]))),
                                 fillvalue=fill, **comp)
            zc = src.chunks
            grid = [range(a, b, zc[0])] + [range(0, s, c) for s, c in zip(shape[1:], zc[1:])]
            for start in _product(grid):
                region = tuple(slice(s0, min(s0 + c, e)) for s0, c, e in zip(start, zc, (b, *shape[1:])))
                if guard is not None:
                    guard.need(int(np.prod([r.stop - r.start for r in region])) * dt.itemsize)
                local = (slice(region[0].start - a, region[0].stop - a), *region[1:])
                d[local] = src[region]
        f.attrs["xrdct_export_token"] = token  # last: its presence says the part is whole
    return os.path.getsize(out)


def _product(grid):
    return itertools.product(*grid)


def nparts_for(client) -> int:
    """Part files of an export: :data:`PARTS_PER_WORKER` per worker of ``client`` (1 without one)."""
    client = resolve_client(client)
    if client is None:
        return 1
    return max(1, PARTS_PER_WORKER * len(client.scheduler_info(n_workers=-1)["workers"]))


def check_parts(master: str | Path) -> None:
    """Refuse, in one line naming the file, a parts export whose master lists a part that is
    missing, not a whole HDF5 file, from another export, or of other shapes; nothing for a
    single-file export."""
    master = Path(master)
    with h5py.File(master, "r") as f:
        raw = f.attrs.get("xrdct_parts")
    if raw is None:
        return
    man = json.loads(raw)
    folder = master.parent / man["folder"]
    for name, datasets in man["parts"].items():
        p = folder / name
        if not p.is_file():
            raise ExportError(f"{p}: part file of {master.name} is missing; export again (--overwrite)")
        try:
            with h5py.File(p, "r") as f:
                if f.attrs.get("xrdct_export_token") != man["token"]:
                    raise ExportError(f"{p}: part file of {master.name} is partial or from another export; export "
                                      "again (--overwrite)")
                for ds, shape in datasets.items():
                    if ds not in f or list(f[ds].shape) != shape:
                        raise ExportError(f"{p}: part file of {master.name} lacks {ds} {tuple(shape)}; export again "
                                          "(--overwrite)")
        except OSError as err:
            raise ExportError(f"{p}: part file of {master.name} is not a whole HDF5 file ({_first(err)}); export "
                              "again (--overwrite)") from None


def _first(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def start_parts_folder(out_h5: Path) -> Path:
    """A new folder ``.OUT.h5.parts.<12 hex>.partial`` for an export's parts (created exclusively),
    its mark file written first: this program's, for ``OUT.h5``, by this process on this host (what
    :func:`remove_stale_parts` recognises)."""
    from xrdct_dask.export.nexus import CREATOR  # lazy: import cycle export.nexus -> export.parts

    folder = own_tmp_name(parts_folder(out_h5), "partial")
    folder.mkdir()
    (folder / PART_MARK).write_text(json.dumps({"creator": CREATOR, "partial_export_of": out_h5.name,
                                                "pid": os.getpid(), "host": socket.gethostname(),
                                                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return folder


_STALE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.(?P<kind>partial|old)(\.removing)?$")
_PART_FILE = re.compile(r"^part-\d{5}\.h5$")


def remove_stale_parts(out_h5: Path) -> list[Path]:
    """Remove the parts folders that exports of ``out_h5`` left behind: ``.OUT.h5.parts.<12 hex>.partial``
    of an export killed while writing (its mark names ``OUT.h5``) and ``.OUT.h5.parts.<12 hex>.old``
    of one killed while replacing its predecessor's (the mark of a finished parts folder).  Call it
    holding the target's lock (:func:`~xrdct_dask.export.nexus.target_lock`): no export of ``OUT.h5``
    is alive then.  A folder is removed only if it holds its mark and part files, nothing else; it
    is renamed first, so that a part task the killed export left running cannot write into it again.
    One console line per folder removed."""
    from xrdct_dask.export.nexus import CREATOR  # lazy: import cycle export.nexus -> export.parts

    removed = []
    want = parts_folder(out_h5).name
    for p in sorted(out_h5.parent.glob(f".{want}.*")):
        m = _STALE.match(p.name)
        if not m or m["name"] != want or p.is_symlink() or not p.is_dir():
            continue
        try:
            mark = json.loads((p / PART_MARK).read_text())
            names = [q.name for q in p.iterdir()]
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if not isinstance(mark, dict) or mark.get("creator") != CREATOR:
            continue
        if m["kind"] == "partial" and mark.get("partial_export_of") != out_h5.name:
            continue
        if any(n != PART_MARK and not _PART_FILE.match(n) for n in names):
            continue  # something this program does not write: not touched
        gone = p if p.name.endswith(".removing") else p.with_name(f"{p.name}.removing")
        try:
            p.rename(gone)
            for n in sorted(names, key=lambda n: n == PART_MARK):  # the mark last: a folder half removed
                (gone / n).unlink(missing_ok=True)  # is still recognised by the next export
            gone.rmdir()
        except OSError:
            continue
        removed.append(p)
        who = f" (export by pid {mark['pid']} on {mark['host']}, started {mark['started']})" if "pid" in mark else ""
        console.info("%s: removed %s, the parts folder an interrupted export left%s", out_h5, p.name, who)
    return removed


def place_parts(tmp_folder: Path, final: Path) -> None:
    """Rename the finished parts folder into place, first removing an earlier export's folder of
    that name (only one this program wrote: the caller checked)."""
    # lazy: import cycle export.nexus -> export.parts
    from xrdct_dask.export.nexus import CREATOR

    (tmp_folder / PART_MARK).write_text(json.dumps({"creator": CREATOR}))
    if final.exists():
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.old")
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp_folder.rename(final)
