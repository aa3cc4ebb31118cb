"""Frames placed by their measured positions, the positioner table converted slab by slab on the
workers: a scan CSV without grid columns, or an HDF5 scan's positioners (BLISS ``measurement/``).

At 1000^3 these are 1.57e9 readings per axis (38 GB of omega, x and z): read by one client they
are most of an hour.  The client reads only the table's extents -- the byte offsets of line blocks
(:func:`xrdct_dask.io.tableslabs.line_slabs`) or the datasets' shapes and units
(:func:`xrdct_dask.io.positioners.hdf5_column`) -- and each slab is a task
(:func:`xrdct_dask.cluster.sidework.map_pieces`) that reads its own readings, three times:

1. the sample (:class:`~xrdct_dask.io.scantable.IndexSample`: readings chosen by their acquisition
   index, so the same whatever the slabs) and the monitor readings (a part file per slab, placed
   by :func:`~xrdct_dask.runs.scanslabs.scatter_monitor`); here, the sample's cuts between the
   groups of each axis (:func:`~xrdct_dask.io.scantable.sample_grid_cuts`);
2. each axis's readings grouped by those cuts, written once per slab
   (:class:`~xrdct_dask.io.linemedians.LineValues`), each group's exact median merged by a task per
   range of groups: the axes;
3. each frame placed at its nearest grid point (:func:`~xrdct_dask.io.positioners.nearest_points`),
   the slab's rows added to the slices' part files; then the slices finished
   (:func:`~xrdct_dask.runs.scanslabs.finish_grid`).

With no client the same tasks run here, one after the other: the layout is the same either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrdct_dask.cluster.sidework import map_pieces, slabs
from xrdct_dask.io import linemedians, positioners, scantable, tableslabs
from xrdct_dask.io.scantable import FlatColumn, SlabFrames, grouped_median
from xrdct_dask.runs import scanslabs

log = logging.getLogger(__name__)

SLAB_FRAMES = 1 << 21  # frames of an HDF5 scan one task reads (4 columns: 64 MB)


class GridCutError(ValueError):
    """The readings of an axis do not make its grid (fewer distinct readings than grid values)."""


@dataclass(frozen=True)
class TableSlab:
    """Lines ``start .. stop`` (bytes) of a scan CSV whose header is ``names``."""

    path: str
    names: tuple
    start: int
    stop: int

    def read(self) -> dict[str, np.ndarray]:
        return tableslabs.read_table_slab(self.path, self.start, self.stop, list(self.names))


@dataclass(frozen=True)
class Hdf5Slab:
    """Frames ``start .. stop - 1`` of an HDF5 scan's positioner columns
    (``{kind: Hdf5Column}``)."""

    columns: dict
    start: int
    stop: int

    def read(self) -> dict[str, np.ndarray]:
        return positioners.read_hdf5_slab(self.columns, self.start, self.stop)


def table_slabs(path: str | Path, names: list[str]) -> list[TableSlab]:
    """The slabs of a scan CSV (one line read per slab)."""
    return [TableSlab(str(path), tuple(names), a, b) for a, b in tableslabs.line_slabs(path, header=True)]


def hdf5_slabs(columns: dict, nframes: int) -> list[Hdf5Slab]:
    """The slabs of an HDF5 scan of ``nframes`` frames (nothing read)."""
    return [Hdf5Slab(columns, a, b) for a, b in slabs(nframes, -(-nframes // SLAB_FRAMES))]


def _where(client, n: int):
    return client if n > 1 else None


# ------------------------------------------------------------------------------------------
# the monitor alone (a scan that gives a monitor but does not place the frames)
# ------------------------------------------------------------------------------------------
def convert_monitor(pieces: list, monitor: FlatColumn, client=None) -> None:
    """The monitor readings of every slab placed in ``monitor`` by acquisition index (the last
    reading of an index wins, as when read from the top)."""
    folder = monitor.path.parent
    where = _where(client, len(pieces))
    got = map_pieces(where, _monitor_slab, [(p, k, str(folder)) for k, p in enumerate(pieces)],
                     "xrdct-scan-monitor-slab")
    scanslabs.scatter_monitor(monitor, [(k, g[0], g[1]) for k, g in enumerate(got) if g[1] >= g[0]], folder, where)


def _monitor_slab(piece) -> tuple[int, int]:
    slab, k, folder = piece
    return _keep_monitor(slab.read(), k, folder)


def _keep_monitor(b: dict, k: int, folder: str) -> tuple[int, int]:
    """The slab's ``(index, monitor)`` records into its part file; returns its index range."""
    n = len(b["index"])
    if not n:
        return 0, -1
    rec = np.empty(n, scanslabs._MON)
    rec["index"], rec["value"] = b["index"], b["monitor"]
    rec.tofile(Path(folder) / f"monitor-part{k:06d}.bin")
    return int(b["index"].min()), int(b["index"].max())


# ------------------------------------------------------------------------------------------
# frames placed by their measured positions
# ------------------------------------------------------------------------------------------
def place_by_positions(pieces: list, shape: tuple[int, int, int], measured: list[str], expect: int,
                       folder: Path, client=None, monitor: FlatColumn | None = None,
                       reference: FlatColumn | None = None) -> dict:
    """Place the frames of a positioner table (slabs ``pieces``, see the module) on the grid of
    ``shape`` ``(nz, nomega, nx)`` by their ``measured`` readings (omega_deg, x_mm and maybe z_mm):
    the readings of each axis split into its grid's groups at the largest gaps of a sample of
    them (the table's ``expect`` rows: the sample's first level), each group's exact median the
    axis value, each frame at its nearest grid point.  ``monitor``: the table's monitor column
    placed there by acquisition index on the way; ``reference``: the monitor whose readings of
    the frames placed are kept for the monitor reference.

    Returns ``{"grid": SlabFrames, "axes": {measured: float64 (n,)}, "off": frames on no grid
    point, "rows": frames read, "monitor_used": files}``.  :class:`GridCutError` where the readings
    do not make the grid (:func:`~xrdct_dask.io.scantable.sample_grid_cuts`)."""
    nz, nw, nx = shape
    sizes = {"omega_deg": nw, "x_mm": nx, "z_mm": nz}
    where = _where(client, len(pieces))
    level = scantable.sample_level(expect)
    got = map_pieces(where, _sample_slab,
                     [(p, k, measured, level, str(folder) if monitor is not None else None)
                      for k, p in enumerate(pieces)], "xrdct-scan-positions-sample")
    sample = scantable.IndexSample(level)
    for g in got:  # in slab order: the sample does not depend on it (the keys decide)
        sample.add(g["keys"], g["values"])
    if monitor is not None:
        scanslabs.scatter_monitor(monitor, [(k, g["imin"], g["imax"]) for k, g in enumerate(got)
                                            if g["imax"] >= g["imin"]], folder, where)
    try:
        cuts = {k: scantable.sample_grid_cuts(sample.column(k), sizes[k]) for k in measured}
    except ValueError as err:
        raise GridCutError(str(err)) from None
    axes = _group_medians(pieces, cuts, sizes, folder, where)
    if "z_mm" not in axes:
        axes["z_mm"] = np.zeros(1)
    grid = SlabFrames(folder / "slabs", nz, nw, nx)
    placed = map_pieces(where, _place_slab, [(p, k, axes, grid) for k, p in enumerate(pieces)],
                        "xrdct-scan-positions-place")
    done = scanslabs.finish_grid(grid, where, {}, reference)
    off, rows = sum(p[0] for p in placed), sum(p[1] for p in placed)
    if off:
        log.warning("%d of %d frames fit no grid point (flagged off grid)", off, rows)
    return {"grid": grid, "axes": axes, "off": off, "rows": rows, "monitor_used": done["monitor_used"]}


def _sample_slab(piece) -> dict:
    """Pass 1 of :func:`place_by_positions` (a task): the slab's readings in the sample of
    ``level`` (with their keys), its monitor readings kept (their index range)."""
    slab, k, measured, level, folder = piece
    b = slab.read()
    keys = scantable.sample_keys(b["index"])
    keep = scantable.in_sample(keys, level)
    out = {"keys": keys[keep], "values": {m: b[m][keep] for m in measured}, "imin": 0, "imax": -1}
    if folder is not None:
        out["imin"], out["imax"] = _keep_monitor(b, k, folder)
    return out


def _group_medians(pieces: list, cuts: dict, sizes: dict, folder: Path, where) -> dict[str, np.ndarray]:
    """Pass 2: each axis's exact group medians (see the module)."""
    got = map_pieces(where, _group_slab, [(p, k, cuts, sizes, str(folder)) for k, p in enumerate(pieces)],
                     "xrdct-scan-positions-groups")
    axes = {}
    for m in cuts:
        stems = [g["stems"][m] for g in got]
        counts = np.sum([g["counts"][m] for g in got], axis=0)
        if counts.max(initial=0) > linemedians.LINE_VALUES_MAX:  # a group too large for one task's memory
            streams = [GroupStream(p, m, cuts[m]) for p in pieces]
            axes[m] = grouped_median(streams, sizes[m], mapper=scanslabs.mapper_for(where, f"xrdct-scan-median-{m}"))
        else:
            ranges = linemedians.line_ranges(counts, None if where is not None else linemedians.MERGE_VALUES_HERE)
            axes[m] = np.concatenate(map_pieces(where, scanslabs._line_medians_part,
                                                [(stems, g0, g1) for g0, g1 in ranges], f"xrdct-scan-median-{m}"))
        for stem in stems:
            for f in (stem + ".f8", stem + ".off.npy"):
                Path(f).unlink(missing_ok=True)
    return axes


def _group_slab(piece) -> dict:
    slab, k, cuts, sizes, folder = piece
    b = slab.read()
    out: dict = {"stems": {}, "counts": {}}
    for m, c in cuts.items():
        w = linemedians.LineValues(Path(folder) / f"positions-{m}-part{k:06d}", sizes[m])
        w.add(np.searchsorted(c, b[m], side="right"), b[m])
        out["stems"][m], out["counts"][m] = w.stem, w.close()
    return out


@dataclass(frozen=True)
class GroupStream:
    """``(group by the cuts, reading)`` of one slab's ``field``: a part of :func:`grouped_median`."""

    slab: object
    field: str
    cuts: np.ndarray

    def __call__(self):
        v = self.slab.read()[self.field]
        yield np.searchsorted(self.cuts, v, side="right"), v


def _place_slab(piece) -> tuple[int, int]:
    """Pass 3: each frame of the slab at its nearest grid point, added to the slices' part files of
    slab ``k`` (so that the slices keep the table's order: the last record of a point wins)."""
    slab, k, axes, grid = piece
    b = slab.read()
    idx = b["index"]
    z = b.get("z_mm", np.zeros(idx.size))
    iz, iw, ix, out, _ = positioners.nearest_points(b["omega_deg"], b["x_mm"], z, axes["omega_deg"], axes["x_mm"],
                                                    axes["z_mm"], omega_period_deg=360.0)
    on = ~out
    grid.add(iz[on], iw[on], ix[on], idx[on].astype(np.int64), {}, part=k)
    return int(out.sum()), int(idx.size)
