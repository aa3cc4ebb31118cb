"""Where the frames of a scan sit on the (z, omega, x) grid and what the axes are: from the scan
arithmetic, a scan file's grid columns or measured positions, streamed in bounded memory;
written into a new store's per-frame arrays slab by slab."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrdct_dask import store
from xrdct_dask.cluster.sidework import map_pieces, slabs
from xrdct_dask.config import Workflow, WorkflowError
from xrdct_dask.io.positioners import hdf5_column
from xrdct_dask.io.scan import grid_index
from xrdct_dask.io.scantable import (
    FlatColumn,
    SlabFrames,
    grouped_median,
    monitor_blocks,
    remove_scratch,
    scan_header,
    scratch_folder,
)
from xrdct_dask.io.spec import split_spec
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.pipeline.frames import frame_source
from xrdct_dask.runs import positionslabs, scanslabs
from xrdct_dask.view.console import console

log = logging.getLogger(__name__)


@dataclass
class ScanLayout:
    """Where the frames sit and what the axes are, kept per slice on disk (nothing of the size of
    the scan in memory): ``grid`` the frames placed per slice
    (:class:`~xrdct_dask.io.scantable.SlabFrames`: acquisition index, duplicates; None = the scan
    arithmetic of ``scan.order``), the axes' values (``omega_deg``, ``x_mm``, ``z_mm``), a
    measured ``monitor`` by acquisition index (:class:`~xrdct_dask.io.scantable.FlatColumn`, or
    None), ``positions`` (what was measured, from where: recorded in the store) and
    ``monitor_source`` (the workflow key it came from).  :meth:`close` removes the scratch folder."""

    grid: object | None
    omega_deg: np.ndarray
    x_mm: np.ndarray
    z_mm: np.ndarray
    monitor: object | None
    positions: dict
    monitor_source: str = "inputs.monitor"
    scratch: object | None = None
    transmission: object | None = None  # inputs.transmission by acquisition index (a FlatColumn), or None
    monitor_used: list | None = None  # files of the positive monitor readings of the frames placed, where kept

    def index(self, wf: Workflow, z: int) -> np.ndarray:
        """int64 ``(nomega, nx)``: acquisition index of the frame at each point of slice ``z`` (-1 none)."""
        s = wf.scan
        if self.grid is not None:
            return self.grid.index(z)

        iw, ix = np.indices((s.nomega, s.nx))
        return grid_index(z, iw, ix, s.nomega, s.nx, s.fast_axis, s.order)

    def monitor_of(self, idx: np.ndarray) -> np.ndarray:
        """float64 monitor at acquisition indices ``idx`` (NaN where -1; ones without a monitor)."""
        if self.monitor is None:
            return np.ones(idx.shape)
        return self.monitor.take(idx)

    def monitor_reference(self, wf: Workflow, client=None) -> float:
        """The median of the positive monitor values of the frames used (every frame of the scan
        arithmetic, or those placed on the grid), exact, over slabs of slices (or of frames), each
        pass's parts on the workers of ``client`` (None: here); 1 without one."""

        if self.monitor is None:
            return 1.0
        parts = scanslabs.value_streams(self.monitor_used) if self.monitor_used is not None else \
            scanslabs.monitor_streams(self.monitor, self.grid, wf.scan.nframes, wf.scan.nz)
        where = client if len(parts) > 1 else None
        ref = float(grouped_median(parts, 1, mapper=scanslabs.mapper_for(where, "xrdct-monitor-median"))[0])
        return ref if np.isfinite(ref) else 1.0

    def close(self) -> None:

        remove_scratch(self.scratch)
        self.scratch = None


def _scan_source(wf: Workflow):
    """The scan's own per-frame table: ``(slabs, columns, sources, has_grid)`` where ``slabs()``
    lists its slabs, each read on its own (``.read()``: ``index``, grid columns, ``omega_deg``,
    ``x_mm``, ``z_mm``, ``monitor``; :mod:`xrdct_dask.runs.positionslabs`), from the scan file,
    else from an HDF5 source's scan (``inputs.positioners``: the datasets' extents and units read
    here, their values by the slabs); None when the scan gives nothing per frame."""

    if wf.inputs.scan_file is not None:
        path = wf.inputs.scan_file
        try:
            names = scan_header(path)
        except ValueError as err:
            raise WorkflowError(f"inputs.scan_file: {err}") from None
        cols = [c for c in ("omega_deg", "x_mm", "z_mm", "monitor") if c in names]
        return (lambda: positionslabs.table_slabs(path, names)), set(names), {c: f"{path}:{c}" for c in cols}, \
            "iz" in names
    if wf.frames_hdf5 and not wf.frames_templated and wf.scan.positions != "nominal":

        n = frame_source(wf).nframes
        names = wf.inputs.positioners
        file = split_spec(wf.inputs.frames)[0]
        columns = {}
        for attr, name in (("omega_deg", names.omega), ("x_mm", names.x), ("z_mm", names.z),
                           ("monitor", names.monitor)):
            if name is None:
                continue
            try:  # each name on its own: a scan without a z motor still gives omega and x
                columns[attr] = hdf5_column(file, name, attr, n)
            except (ValueError, KeyError, OSError) as err:
                if attr == "monitor":
                    raise WorkflowError(f"inputs.positioners.monitor: {err}") from None
                continue

        return ((lambda: positionslabs.hdf5_slabs(columns, n)), {"index", *columns},
                {k: c.where for k, c in columns.items()}, False)
    return None


AXIS_OF = {"z_mm": 0, "omega_deg": 1, "x_mm": 2}


def _places_frames(wf: Workflow, columns, has_grid: bool) -> bool:
    """Whether a scan giving ``columns`` per frame places the frames on the grid: its grid columns,
    or measured omega and x where ``scan.positions`` allows them (else the scan arithmetic does)."""
    return has_grid or (wf.scan.positions != "nominal" and {"omega_deg", "x_mm"} <= set(columns))


def frames_placed_by_scan(wf: Workflow) -> bool:
    """Whether the scan itself (its file's grid columns, or its measured positions) places the
    frames, as :func:`scan_layout` will decide: then ``reduced/scan_flag`` is written.  Reads the
    scan file's header or the HDF5 scan's positioner names only."""
    src = _scan_source(wf)
    return src is not None and _places_frames(wf, src[1], src[3])


def scan_layout(wf: Workflow, client=None) -> ScanLayout:
    """The frames' places and the axes of a scan (see :class:`ScanLayout`), read in bounded memory.

    The scan's table is streamed once (:mod:`xrdct_dask.io.scantable`) into a scratch folder
    beside the store, slice by slice.  A scan file's ``iz, iomega, ix`` columns place the frames;
    else measured omega and x (and z) place them on the grid of their own values (the readings
    of each axis grouped into ``nomega`` / ``nx`` / ``nz`` values, the groups told apart on a
    random sample of at most :data:`~xrdct_dask.io.scantable.SAMPLE_MAX` readings, each group's
    median exact; each frame at the nearest, frames that fit none left out and counted); else
    the scan arithmetic.  The axes are the measured values (the exact median reading of each grid
    line) where the scan gives them and ``scan.positions`` allows, else the nominal grid, and the
    store records which (``positions`` attr).

    A scan file and a monitor file are converted slab by slab on the workers of ``client`` (a
    client, a callable making one, or None: here; :mod:`xrdct_dask.runs.scanslabs`), the medians
    merged from per-slab histograms: the layout is the same either way."""

    s = wf.scan
    nominal = {"omega_deg": np.arange(s.nomega) * (s.omega_range_deg / s.nomega),
               "x_mm": np.arange(s.nx) * s.x_step_mm, "z_mm": np.arange(s.nz) * s.z_step_mm}
    src = _scan_source(wf)
    pieces, columns, sources, has_grid = src if src is not None else (None, set(), {}, False)
    measured = [k for k in ("omega_deg", "x_mm", "z_mm") if k in columns]
    if s.positions == "nominal":
        measured = []
    elif s.positions == "measured" and not {"omega_deg", "x_mm"} <= set(measured):
        raise WorkflowError("scan.positions: measured, but the scan gives no omega and x per frame (scan file "
                            "columns omega_deg, x_mm, or the HDF5 scan's inputs.positioners)")
    place = not has_grid and _places_frames(wf, measured, False)
    lay = ScanLayout(grid=None, monitor=None, positions={}, scratch=scratch_folder(wf.store.path),
                     omega_deg=nominal["omega_deg"], x_mm=nominal["x_mm"], z_mm=nominal["z_mm"])
    folder = Path(lay.scratch.name)
    try:
        if wf.inputs.monitor is not None:
            lay.monitor = FlatColumn(folder / "monitor.f8")
            try:
                scanslabs.read_monitor_file(wf.inputs.monitor, lay.monitor, client)
            except ValueError as err:
                raise WorkflowError(f"inputs.monitor: {err}") from None
        elif "monitor" in columns:
            lay.monitor, lay.monitor_source = FlatColumn(folder / "monitor.f8"), "the scan's monitor"
        mon_rows = "monitor" in columns and wf.inputs.monitor is None
        placed = "scan arithmetic (scan.order, scan.fast_axis)"
        axes: dict[str, np.ndarray] = {}
        if has_grid:
            lay.grid, got = _grid_from_columns(wf, measured, lay.monitor if mon_rows else None, folder, client,
                                               reference=lay.monitor)
            lay.monitor_used = got["monitor_used"]
            placed = "scan file columns iz, iomega, ix"
            for k in measured:  # lines without a frame (allowed missing) take the nominal grid's place
                axes[k] = _line_medians(got["medians"][k], nominal[k] if s.allow_missing else None)
        elif place:
            lay.grid, axes, off, lay.monitor_used = _grid_from_positions(wf, pieces(), measured,
                                                                         lay.monitor if mon_rows else None,
                                                                         folder, client, lay.monitor)
            placed = f"measured positions ({off} frames fit no grid point and are left out)"
        elif mon_rows and wf.inputs.scan_file is not None:
            scanslabs.convert_scan_file(wf.inputs.scan_file, scan_header(wf.inputs.scan_file), None, lay.monitor,
                                        client)
        elif mon_rows:
            positionslabs.convert_monitor(pieces(), lay.monitor, client)
        if lay.monitor is not None and lay.monitor_source == "inputs.monitor":
            need = s.nframes if lay.grid is None else lay.grid.max_index + 1
            if lay.monitor.size < need:
                raise WorkflowError(f"inputs.monitor: {wf.inputs.monitor}: {lay.monitor.size} monitor values for a "
                                    f"scan of {need} frames")
        if wf.inputs.transmission is not None:
            lay.transmission = read_transmission(wf, folder / "transmission.f8",
                                                 s.nframes if lay.grid is None else lay.grid.max_index + 1)
        for k, v in axes.items():
            setattr(lay, k, v)
        lay.positions = {"frames placed by": placed,
                         **{k: (sources.get(k, "measured") if k in axes else "nominal") for k in nominal}}
    except BaseException:
        lay.close()
        raise
    return lay


def read_transmission(wf: Workflow, path: Path, need: int):
    """``inputs.transmission`` as a :class:`~xrdct_dask.io.scantable.FlatColumn` at ``path``: exactly
    ``need`` readings (one per frame of the scan, in acquisition order), each finite and > 0 (a
    transmission's logarithm is taken); anything else is a one-line WorkflowError naming the key."""

    src = wf.inputs.transmission
    col = FlatColumn(path)
    bad, first = 0, None
    try:
        for v in monitor_blocks(src):
            wrong = ~(np.isfinite(v) & (v > 0))
            if wrong.any() and first is None:
                first = col.size + int(np.argmax(wrong)) + 1
            bad += int(wrong.sum())
            col.append(v)
    except ValueError as err:
        raise WorkflowError(f"inputs.transmission: {err}") from None
    if col.size != need:
        raise WorkflowError(f"inputs.transmission: {src}: {col.size} values for a scan of {need} frames (one "
                            f"reading per frame, in acquisition order)")
    if bad:
        raise WorkflowError(f"inputs.transmission: {src}: {bad} values are zero, negative or not a number (the "
                            f"first is value {first}): a transmission reading must be > 0")
    return col



def _grid_from_columns(wf: Workflow, fields: list[str], monitor, folder: Path, client=None, reference=None):
    """The frames placed by a scan file's ``iz, iomega, ix`` columns, per slice
    (:class:`~xrdct_dask.io.scantable.SlabFrames`, with the ``fields`` read), the monitor column
    scattered into ``monitor`` on the way; the file read slab by slab on the workers of ``client``
    (:func:`xrdct_dask.runs.scanslabs.convert_scan_file`).  Returns the grid and what the conversion
    found: the exact median of each field over its grid lines (``"medians"``), the files of the
    ``reference`` monitor's readings of the frames placed (``"monitor_used"``)."""

    s = wf.scan
    path = wf.inputs.scan_file
    grid = SlabFrames(folder / "slabs", s.nz, s.nomega, s.nx, fields)
    got = scanslabs.convert_scan_file(path, scan_header(path), grid, monitor, client,
                                      axes={k: AXIS_OF[k] for k in fields}, reference=reference)
    if got["bad"]:
        raise WorkflowError(f"inputs.scan_file: {wf.inputs.scan_file}: {got['bad']} rows lie outside the scan grid "
                            f"{s.nz} x {s.nomega} x {s.nx}")
    check_scan_extent(wf, got["seen"], "the scan file")
    return grid, got


EXTENT = (("scan.nz", "slices"), ("scan.nomega", "angles"), ("scan.nx", "x steps"))


def check_scan_extent(wf: Workflow, seen: list[np.ndarray], what: str) -> None:
    """Refuse, in one line saying what is wrong, a scan whose frames leave whole slices, angles
    or x steps of the workflow's grid empty (``seen``: bool per grid line of z, omega and x, where
    ``what`` has a frame): "the scan file has 2 slices, the workflow 3".  With
    ``scan.allow_missing`` the run goes on (their frames flagged missing) and a console line says so."""
    for (key, label), line in zip(EXTENT, seen):
        if line.all():
            continue
        have = int(line.sum())
        if line[:have].all():  # the last ones are empty: the workflow's grid is larger than the scan
            msg, fix = f"{what} has {have} {label}, the workflow {line.size}", f"set {key}={have}"
        else:
            empty = np.flatnonzero(~line)
            shown = ", ".join(str(int(i)) for i in empty[:8]) + (", ..." if empty.size > 8 else "")
            msg, fix = f"{what} has no frame in {empty.size} of the workflow's {line.size} {label} ({shown})", \
                f"check {key}"
        if not wf.scan.allow_missing:
            raise WorkflowError(f"{key}: {msg}: {fix}, or pass --allow-missing (scan.allow_missing: true) to run "
                                f"with their frames flagged missing")
        console.warning("%s: %s: their frames are flagged missing (scan.allow_missing)", key, msg)


def _grid_from_positions(wf: Workflow, pieces: list, measured: list[str], monitor, folder: Path, client=None,
                         reference=None):
    """Frames placed by their measured positions, the table's slabs read on the workers of
    ``client`` (:func:`xrdct_dask.runs.positionslabs.place_by_positions`: a sample of the readings
    tells the groups of each axis apart, each group's median is exact, each frame goes to its
    nearest grid point), ``monitor`` (the table's monitor column) filled on the way.
    Returns ``(SlabFrames, axes, frames off grid, files of the reference monitor's readings used)``."""

    s = wf.scan
    if "z_mm" not in measured and s.nz > 1:
        raise WorkflowError("scan: omega and x are measured but not z, and the scan has several slices: name "
                            "inputs.positioners.z or give the scan file a z_mm column")
    try:
        got = positionslabs.place_by_positions(pieces, (s.nz, s.nomega, s.nx), measured, s.nframes, folder, client,
                                               monitor=monitor, reference=reference)
    except positionslabs.GridCutError as err:
        raise WorkflowError(f"scan: the measured positions do not make a {s.nz} x {s.nomega} x {s.nx} grid "
                            f"({err})") from None
    return got["grid"], got["axes"], got["off"], got["monitor_used"]


def _line_medians(medians: np.ndarray, nominal: np.ndarray | None = None) -> np.ndarray:
    """A measured coordinate for each grid index: ``medians``, the exact median of the per-frame
    value over each grid line (the frames placed there; NaN: none,
    :func:`xrdct_dask.runs.scanslabs.finish_grid`).  ``nominal`` (the grid's values, given where
    missing lines are allowed): a line without a frame takes its nominal value shifted by the
    median offset of the measured lines from theirs."""

    out = np.array(medians, np.float64)
    empty = np.isnan(out)
    if nominal is not None and empty.any() and not empty.all():
        out[empty] = nominal[empty] + np.median(out[~empty] - nominal[~empty])
    if np.isnan(out).any():
        raise WorkflowError(f"scan: no frame measured at {int(np.isnan(out).sum())} grid lines: their positions are "
                            "unknown (scan.positions: nominal uses the grid)")
    return out


SLAB_POINTS = 1 << 20  # scan points a template-writing task covers (whole slices: z chunks are 1; ~40 MB held)


SLABS_IN_FLIGHT = 64  # slab tasks submitted at once (each a few numbers: the workers read their slices)


def write_scan_arrays(path: Path, wf: Workflow, lay: ScanLayout, client=None) -> int:
    """Fill ``reduced/monitor``, ``reduced/frame_index`` (and ``scan_flag`` where a scan file or
    measured positions place the frames, ``transmission`` where the scan has one) of the new store
    at ``path``, in slabs of whole slices, each a task on the workers of ``client``
    (:func:`xrdct_dask.cluster.sidework.map_pieces`; None: here, one after the other; the arrays
    are the same).  Each task reads its slices' frame indices, monitor and flags from the scan
    layout's files itself (:class:`ScanLayout`, slice by slice): the client holds none of the
    scan's ``(nz, nomega, nx)`` arrays and reads nothing of them.  Returns the frames that arrived
    out of the scan's order."""

    s = wf.scan
    view = ScanLayout(grid=lay.grid, omega_deg=lay.omega_deg[:0], x_mm=lay.x_mm[:0], z_mm=lay.z_mm[:0],
                      monitor=lay.monitor, positions={}, transmission=lay.transmission)  # no scratch handle: picklable
    pieces = ((str(path), z0, z1, s, view)
              for z0, z1 in slabs(s.nz, -(-s.nz * s.nomega * s.nx // SLAB_POINTS)))
    return sum(map_pieces(client, _write_scan_slab, pieces, "xrdct-template-slab", in_flight=SLABS_IN_FLIGHT))


class _ScanOnly:
    """The ``scan`` of a workflow, for :meth:`ScanLayout.index` on a worker."""

    def __init__(self, scan):
        self.scan = scan


def _write_scan_slab(piece) -> int:
    """One slab of :func:`write_scan_arrays`: slices ``z0 .. z1 - 1`` read from the layout and
    written; returns the frames of the slab that arrived out of the scan's order."""
    path, z0, z1, s, lay = piece
    wf = _ScanOnly(s)
    idx = np.stack([lay.index(wf, z) for z in range(z0, z1)])
    store.open_array(path, f"{store.REDUCED}/monitor")[z0:z1] = lay.monitor_of(idx).astype(np.float32)
    store.open_array(path, f"{store.REDUCED}/frame_index")[z0:z1] = idx
    late = 0
    if lay.grid is not None:
        flags = np.stack([_scan_flags(z, idx[z - z0], lay.grid.duplicate(z), s) for z in range(z0, z1)])
        late = int((flags == FrameStatus.OUT_OF_ORDER).sum())
        store.open_array(path, f"{store.REDUCED}/scan_flag")[z0:z1] = flags
    if lay.transmission is not None:
        store.open_array(path, f"{store.REDUCED}/transmission")[z0:z1] = lay.transmission.take(idx).astype(np.float32)
    return late


def _scan_flags(z: int, idx: np.ndarray, dup: np.ndarray, s) -> np.ndarray:
    """int8 ``(nomega, nx)`` of slice ``z`` (acquisition indices ``idx``, points recorded twice
    ``dup``): DUPLICATE where the scan file records a point twice, OUT_OF_ORDER where it places
    a frame elsewhere than the scan arithmetic (fast axis, snake) would, else 0."""

    flags = np.zeros(idx.shape, np.int8)
    iw, ix = np.indices(idx.shape)
    expected = grid_index(z, iw, ix, s.nomega, s.nx, s.fast_axis, s.order)
    flags[(idx >= 0) & (idx != expected)] = FrameStatus.OUT_OF_ORDER
    flags[dup] = FrameStatus.DUPLICATE
    return flags
