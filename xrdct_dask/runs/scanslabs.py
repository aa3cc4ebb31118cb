"""A scan file and a monitor file converted on the workers, slab by slab, with the client holding
only the files' index.

The client cuts each file into byte slabs of whole lines (:func:`xrdct_dask.io.tableslabs.line_slabs`:
one line read per slab); each slab is a task (:func:`xrdct_dask.cluster.sidework.map_pieces`) that
parses its lines and writes what it found into the scratch folder under names of its own (rows
per slice ``rows-part<k>-<z>.bin``, monitor readings ``monitor-part<k>.bin``), returning a few
numbers (rows, rows off the grid, grid lines seen, its acquisition indices' range).  Then, again
on the workers: the monitor readings are placed in the flat monitor file (slabs whose indices do
not overlap at once; overlapping ones in table order, so the last reading of an index wins as
when read from the top), and each slab of slices keeps its winning rows
(:meth:`~xrdct_dask.io.scantable.SlabFrames.finish`).  The medians (axes, monitor reference) are
:func:`~xrdct_dask.io.scantable.grouped_median` over slabs of slices, each pass's histograms made
on the workers and merged here.  With no client every task runs here, one after the other, with
the same functions: the layout is the same either way, and the same as the table read from the top.

The workers must see the scratch folder (beside the store: the workers write the store too).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from xrdct_dask.cluster.sidework import imap_pieces, map_pieces, slabs
from xrdct_dask.io import linemedians, tableslabs
from xrdct_dask.io.scantable import FlatColumn, SlabFrames, grouped_median

log = logging.getLogger(__name__)

SLICE_PARTS_PER_SLAB = 1  # slices per median part are chosen so that there are about as many parts as table slabs
MEDIAN_PARTS_MAX = 256  # parts a median pass is cut into at most (each pass one task per part)
MEDIAN_IN_FLIGHT = 64  # median parts submitted at once: their results wait on the workers, not here
VALUE_BLOCK = 1 << 17  # readings a median pass takes from a file at once (1 MB; its temporaries ~10x that)

_MON = np.dtype([("index", "<i8"), ("value", "<f8")])


def mapper_for(client, name: str):
    """``mapper(fn, parts)`` for :func:`~xrdct_dask.io.scantable.grouped_median`: each part a task
    on the workers of ``client`` (None: here), the results yielded as they finish, so that the
    median merges one part's histograms at a time (a first pass over the omega lines of a
    1000^3 scan is ~1e6 cells a part: all parts at once would be GBs on the client)."""
    return lambda fn, parts: (r for _, r in imap_pieces(client, fn, parts, name, in_flight=MEDIAN_IN_FLIGHT))


def _client_if_many(client, n: int):
    """The workers where there is more than one piece to share; a single piece runs here (no
    cluster started for a small table)."""
    return client if n > 1 else None


# ------------------------------------------------------------------------------------------
# the scan file
# ------------------------------------------------------------------------------------------
def convert_scan_file(path: str | Path, names: list[str], grid: SlabFrames | None, monitor: FlatColumn | None,
                      client=None, axes: dict[str, int] | None = None, reference: FlatColumn | None = None) -> dict:
    """Read the scan CSV at ``path`` (header ``names``) slab by slab on the workers: its rows added
    to ``grid`` (its ``iz, iomega, ix`` columns, the fields ``grid.fields``; None: not placed) and
    its ``monitor`` column scattered into ``monitor`` by acquisition index (None: not read).

    Returns ``{"rows", "bad" (rows outside the grid), "seen" (bool per grid line of z, omega, x,
    where a frame is)}``; where no row is outside the grid, ``grid`` is finished (winners per
    slice, points recorded twice, ``max_index``), with what :func:`finish_grid` gives for ``axes``
    and ``reference`` (``"medians"``, ``"monitor_used"``)."""
    ranges = tableslabs.line_slabs(path, header=True)
    folder = grid.folder if grid is not None else monitor.path.parent if monitor is not None else None
    pieces = [(str(path), names, a, b, k, grid, monitor is not None, str(folder)) for k, (a, b) in enumerate(ranges)]
    where = _client_if_many(client, len(pieces))
    stats = map_pieces(where, _convert_slab, pieces, "xrdct-scan-table")
    out = {"rows": sum(s["rows"] for s in stats), "bad": sum(s["bad"] for s in stats), "seen": None}
    if grid is not None:
        out["seen"] = [np.logical_or.reduce([s["seen"][i] for s in stats]) if stats else np.zeros(n, bool)
                       for i, n in enumerate(grid.shape)]
    if out["bad"]:
        return out
    if monitor is not None:
        scatter_monitor(monitor, [(k, s["imin"], s["imax"]) for k, s in enumerate(stats) if s["rows"]], folder,
                        where)
    if grid is not None:
        out.update(finish_grid(grid, where, axes, reference))
    return out


def _convert_slab(piece) -> dict:
    """One slab of :func:`convert_scan_file` (a task): parse, place, keep the monitor readings."""
    path, names, start, stop, k, grid, monitor, folder = piece
    b = tableslabs.read_table_slab(path, start, stop, names)
    n = len(b["index"]) if b else 0
    # counts and the index range; "seen": a bool array per grid axis where the slab placed a frame
    stat: dict[str, Any] = {"rows": n, "bad": 0, "imin": int(b["index"].min()) if n else 0,
                            "imax": int(b["index"].max()) if n else -1}
    if grid is not None:
        nz, nw, nx = grid.shape
        iz, iw, ix = (b.get(c, np.empty(0, np.int64)) for c in ("iz", "iomega", "ix"))
        inside = (iz >= 0) & (iz < nz) & (iw >= 0) & (iw < nw) & (ix >= 0) & (ix < nx)
        stat["bad"] = int((~inside).sum())
        seen = [np.zeros(m, bool) for m in grid.shape]
        if stat["bad"]:
            stat["seen"] = seen
            return stat
        for line, i in zip(seen, (iz, iw, ix)):
            line[i] = True
        stat["seen"] = seen
        grid.add(iz, iw, ix, b["index"], {f: b[f] for f in grid.fields}, part=k)
    if monitor and n:
        rec = np.empty(n, _MON)
        rec["index"], rec["value"] = b["index"], b["monitor"]
        rec.tofile(Path(folder) / f"monitor-part{k:06d}.bin")
    return stat


def scatter_monitor(monitor: FlatColumn, parts: list[tuple[int, int, int]], folder, client=None) -> None:
    """Place the monitor readings the slabs kept (``(slab, smallest index, largest index)`` each)
    into ``monitor`` (sized for the largest index first, so no task grows the file): slabs whose
    index ranges overlap none other's at once on the workers, the others here in table order (a
    repeated index keeps its last reading, as when read from the top)."""
    if not parts:
        return
    need = max(b for _, _, b in parts) + 1
    if need > monitor.size:
        os.truncate(monitor.path, need * 8)
        monitor.size = need
    by_start = sorted(parts, key=lambda p: p[1])
    clash = set()
    for (k0, _, b0), (k1, a1, _) in zip(by_start[:-1], by_start[1:]):
        if a1 <= b0:
            clash |= {k0, k1}
    alone = [(monitor, str(folder), k) for k, _, _ in parts if k not in clash]
    map_pieces(client if len(alone) > 1 else None, _scatter_part, alone, "xrdct-scan-monitor")
    for k, _, _ in sorted(p for p in parts if p[0] in clash):
        _scatter_part((monitor, str(folder), k))


def _scatter_part(piece) -> int:
    monitor, folder, k = piece
    f = Path(folder) / f"monitor-part{k:06d}.bin"
    rec = np.fromfile(f, _MON)
    monitor.scatter(rec["index"], rec["value"])
    f.unlink()
    return len(rec)


def finish_grid(grid: SlabFrames, client=None, axes: dict[str, int] | None = None,
                reference: FlatColumn | None = None) -> dict:
    """:meth:`SlabFrames.finish` slab of slices by slab of slices on the workers, taking from each
    slice's winning rows while they are in memory (no pass reads them back):

    * ``axes`` (``{field: grid axis}``): the exact median of ``field`` over each grid line along
      the axis -- a slice's (axis 0) right there, an omega or x line's from the readings each slab
      writes grouped by line (:class:`~xrdct_dask.io.linemedians.LineValues`), merged by a task per
      range of lines (:func:`~xrdct_dask.io.linemedians.medians_of_lines`); a line of more than
      :data:`~xrdct_dask.io.linemedians.LINE_VALUES_MAX` readings by histogram narrowing instead;
    * ``reference`` (the monitor by acquisition index): the positive readings of the frames placed,
      one file a slab, for the monitor reference (:func:`value_streams`).

    Returns ``{"medians": {field: float64 (n lines,)}, "monitor_used": [files] or None}``."""
    axes = axes or {}
    parts = [(grid, k, z0, z1, axes, reference) for k, (z0, z1) in enumerate(slabs(grid.shape[0],
                                                                                 _median_parts(grid.shape[0])))]
    where = client if len(parts) > 1 else None
    got = map_pieces(where, _finish_part, parts, "xrdct-scan-slices")
    grid.max_index = max((g["top"] for g in got), default=-1)
    grid._finished = True
    medians = {}
    for field, axis in axes.items():
        if axis == 0:
            medians[field] = np.concatenate([g["medians"][field] for g in got])
            continue
        stems = [g["stems"][field] for g in got]
        counts = np.sum([g["counts"][field] for g in got], axis=0)
        if counts.max(initial=0) > linemedians.LINE_VALUES_MAX:  # a line too long for one task's memory
            medians[field] = grouped_median(slice_streams(grid, field, axis), grid.shape[axis],
                                            mapper=mapper_for(where, f"xrdct-scan-median-{field}"))
        else:  # merged where the slabs were finished: here, a task holds what the client may hold
            ranges = linemedians.line_ranges(counts, None if where is not None else linemedians.MERGE_VALUES_HERE)
            medians[field] = np.concatenate(map_pieces(where, _line_medians_part,
                                                       [(stems, g0, g1) for g0, g1 in ranges],
                                                       f"xrdct-scan-median-{field}"))
        for stem in stems:
            for f in (stem + ".f8", stem + ".off.npy"):
                Path(f).unlink(missing_ok=True)
    used = [g["monitor_used"] for g in got] if reference is not None else None
    return {"medians": medians, "monitor_used": used}


def _finish_part(piece) -> dict:
    """One slab of slices of :func:`finish_grid` (a task)."""
    grid, k, z0, z1, axes, reference = piece
    lines = {f: linemedians.LineValues(grid.folder / f"line-{f}-part{k:06d}", grid.shape[a])
             for f, a in axes.items() if a}
    slice_medians: dict[str, list[float]] = {f: [] for f, a in axes.items() if not a}
    used = grid.folder / f"monitor-used-part{k:06d}.f8"
    if reference is not None:
        used.write_bytes(b"")

    def each(z: int, win: np.ndarray) -> None:
        for f, a in axes.items():
            if a:
                lines[f].add(win["iomega" if a == 1 else "ix"], win[f])
            else:
                slice_medians[f].append(linemedians.exact_median(win[f]))
        if reference is not None:
            v = reference.take(win["index"])
            with open(used, "ab") as fh:
                v[v > 0].tofile(fh)  # NaN (an index past the monitor's end) is not > 0: left out

    top = grid.finish(range(z0, z1), each)
    return {"top": top, "medians": {f: np.asarray(v, np.float64) for f, v in slice_medians.items()},
            "stems": {f: w.stem for f, w in lines.items()}, "counts": {f: w.close() for f, w in lines.items()},
            "monitor_used": str(used)}


def _line_medians_part(piece) -> np.ndarray:
    stems, g0, g1 = piece
    return linemedians.medians_of_lines(stems, g0, g1)


class ValueStream:
    """``(0, value)`` blocks of a float64 file (the monitor readings :func:`finish_grid` kept): a
    part of the monitor reference's median."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self):
        with open(self.path, "rb") as f:
            while True:
                v = np.fromfile(f, np.float64, VALUE_BLOCK)
                if not v.size:
                    return
                yield np.zeros(v.size, np.int64), v


def value_streams(paths: list[str]) -> list[ValueStream]:
    return [ValueStream(p) for p in paths]


def _median_parts(nz: int) -> int:
    return max(1, min(nz, MEDIAN_PARTS_MAX))


def slice_streams(grid: SlabFrames, field: str, axis: int) -> list:
    """``grid.stream(field, axis)`` cut into slabs of slices: the parts of a parallel median."""
    return [grid.stream(field, axis, z0, z1) for z0, z1 in slabs(grid.shape[0], _median_parts(grid.shape[0]))]


# ------------------------------------------------------------------------------------------
# a monitor file (one reading per line, by acquisition index)
# ------------------------------------------------------------------------------------------
def read_monitor_file(path: str | Path, column: FlatColumn, client=None) -> FlatColumn:
    """The readings of a monitor file appended to ``column`` (in file order), parsed slab by slab
    on the workers: each slab's values into a part file, then each part copied to its place (the
    count of the slabs before it) in the column's file."""
    ranges = tableslabs.line_slabs(path)
    folder = column.path.parent
    pieces = [(str(path), a, b, str(folder / f"{column.path.name}-part{k:06d}.bin")) for k, (a, b) in enumerate(ranges)]
    where = _client_if_many(client, len(pieces))
    counts = map_pieces(where, _parse_monitor_slab, pieces, "xrdct-monitor-file")
    base = column.size
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64) + base
    total = int(offsets[-1])
    with open(column.path, "ab") as f:
        f.truncate(total * 8)
    map_pieces(where, _place_part, [(p[3], str(column.path), int(o)) for p, o in zip(pieces, offsets[:-1])],
               "xrdct-monitor-place")
    column.size = total
    return column


def _parse_monitor_slab(piece) -> int:
    path, a, b, out = piece
    v = tableslabs.read_monitor_slab(path, a, b)
    v.tofile(out)
    return int(v.size)


def _place_part(piece) -> int:
    part, target, offset = piece
    data = np.fromfile(part, np.float64)
    fd = os.open(target, os.O_WRONLY)
    try:
        os.pwrite(fd, data.tobytes(), offset * 8)
    finally:
        os.close(fd)
    os.unlink(part)
    return int(data.size)


# ------------------------------------------------------------------------------------------
# the monitor reference
# ------------------------------------------------------------------------------------------
class MonitorStream:
    """``(0, positive monitor value)`` blocks of the frames used: acquisition indices ``a .. b - 1``
    (no grid: the scan arithmetic uses every frame), or those placed in slices ``a .. b - 1``."""

    def __init__(self, monitor: FlatColumn, grid: SlabFrames | None, a: int, b: int):
        self.monitor, self.grid, self.a, self.b = monitor, grid, a, b

    def __call__(self):
        return self._blocks()

    def _blocks(self):
        if self.grid is None:
            idx0 = self.a
            while idx0 < self.b:
                idx1 = min(self.b, idx0 + (1 << 20))
                v = self.monitor.take(np.arange(idx0, idx1))
                v = v[v > 0]
                yield np.zeros(v.size, np.int64), v
                idx0 = idx1
            return
        for z in range(self.a, self.b):
            idx = self.grid.index(z)
            v = self.monitor.take(idx[idx >= 0])
            v = v[v > 0]
            yield np.zeros(v.size, np.int64), v


def monitor_streams(monitor: FlatColumn, grid: SlabFrames | None, nframes: int, nz: int) -> list[MonitorStream]:
    """The parts of the monitor reference's median (:class:`MonitorStream`)."""
    if grid is None:
        n = min(nframes, monitor.size)
        return [MonitorStream(monitor, None, a, b) for a, b in slabs(n, max(1, min(MEDIAN_PARTS_MAX, n // (1 << 20))))]
    return [MonitorStream(monitor, grid, z0, z1) for z0, z1 in slabs(nz, _median_parts(nz))]
