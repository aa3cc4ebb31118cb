"""Prepare a run: check its inputs, create (or resume) its store, and give the run's context.

Nothing is computed here but what the store's template needs (the radial axis, the PDF's r grid,
the frame indices and monitor of every scan point).  A run's identity is its workflow plus the
contents of its input files (:func:`input_contents`) and a sample of its frames' sizes
(:func:`frame_sample`); a store is resumed only by the same work, created beside its final path
and renamed into place (:func:`xrdct_dask.store.create_aside`), and never replaces anything but a
store of this program.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import stages, store
from .backend import resolve_engine
from .budget import Layout, choose_layout, task_memory
from .config import Workflow, WorkflowError, changed_keys
from .io.cbf import CorruptFrameError, read_cbf_payload
from .io.status import FrameStatus
from .limits import check_run_sizes

log = logging.getLogger(__name__)

FRAMES_PROBED = 64  # check_inputs takes the frame shape from the first readable of these


def check_inputs(wf: Workflow):
    """Fail fast, before any compute, with one line naming the problem.

    Returns ``(ai, frame_shape)``.
    """
    from .integrate.csr import load_image, load_poni

    if not wf.frames_hdf5:
        first = wf.frame_path(0)
        if not first.parent.is_dir():
            raise WorkflowError(f"inputs.frames: folder {first.parent} does not exist")
    try:
        ai = load_poni(wf.inputs.poni)
    except (FileNotFoundError, ValueError) as err:
        raise WorkflowError(f"inputs.poni: {err}") from None
    # pyFAI reads any text as a PONI with default geometry: insist on the keys a calibration writes
    text = Path(wf.inputs.poni).read_text(errors="replace").lower()
    lacking = [k for k in ("distance", "poni1", "poni2") if f"{k}:" not in text]
    if lacking:
        raise WorkflowError(f"inputs.poni: {wf.inputs.poni} is not a PONI file (no {', '.join(lacking)} key)")
    numbers = {"Distance": ai.dist, "Poni1": ai.poni1, "Poni2": ai.poni2, "Rot1": ai.rot1, "Rot2": ai.rot2,
               "Rot3": ai.rot3} | ({"Wavelength": ai.wavelength} if ai.wavelength is not None else {})
    bad = [f"{k} = {v}" for k, v in numbers.items() if not np.isfinite(v)]
    if not bad and not ai.dist > 0:
        bad = [f"Distance = {ai.dist} (must be > 0)"]
    if not bad and ai.wavelength is not None and not ai.wavelength > 0:
        bad = [f"Wavelength = {ai.wavelength} (must be > 0)"]
    if bad:
        raise WorkflowError(f"inputs.poni: {wf.inputs.poni} has {', '.join(bad)}: not a usable geometry")
    det_shape = ai.detector.max_shape
    shape = _hdf5_frame_shape(wf) if wf.frames_hdf5 else _cbf_frame_shape(wf, det_shape)
    check_run_sizes(wf, shape)  # before anything of the scan's, the bins' or a frame's size is allocated
    if det_shape is not None and tuple(det_shape) != tuple(shape):
        raise WorkflowError(f"inputs.poni: the PONI's detector is {det_shape[0]} x {det_shape[1]} pixels but the "
                            f"frames are {shape[0]} x {shape[1]}")
    if ai.wavelength is None and wf.integrate.unit != "2th_deg":
        raise WorkflowError("inputs.poni: no wavelength in the PONI, needed for q units")
    for key in ("mask", "dark", "flat"):
        p = getattr(wf.inputs, key)
        if p is None:
            continue
        if not Path(p).is_file():
            raise WorkflowError(f"inputs.{key}: {p} not found")
        try:
            img = load_image(p)
        except Exception as err:
            raise WorkflowError(f"inputs.{key}: {p} is not a readable image ({err})") from None
        if img.shape != tuple(shape):
            raise WorkflowError(f"inputs.{key}: {p} is {img.shape[0]} x {img.shape[1]} but the frames are "
                                f"{shape[0]} x {shape[1]}")
    for key in ("monitor", "scan_file"):
        p = getattr(wf.inputs, key)
        if p is not None and not Path(p).is_file():
            raise WorkflowError(f"inputs.{key}: {p} not found")
    return ai, shape


def _cbf_frame_shape(wf: Workflow, det_shape) -> tuple[int, int]:
    """The frame shape of a CBF template: the first readable frame of the PONI's shape (else the
    first readable one); a missing or broken frame among them is flagged by its task later."""
    first = wf.frame_path(0)
    shape, first_err, seen = None, None, False
    for i in range(min(wf.scan.nframes, FRAMES_PROBED)):
        try:
            s = read_cbf_payload(wf.frame_path(i)).shape
        except FileNotFoundError:
            continue
        except (CorruptFrameError, OSError) as err:
            seen, first_err = True, first_err or err
            continue
        seen, shape = True, shape or s
        if det_shape is None or tuple(s) == tuple(det_shape):
            shape = s
            break
    if not seen:
        raise WorkflowError(f"inputs.frames: first frame {first} not found")
    if shape is None:
        raise WorkflowError(f"inputs.frames: none of the first {FRAMES_PROBED} frames is readable ({first_err})")
    return tuple(shape)


def _hdf5_frame_shape(wf: Workflow) -> tuple[int, int]:
    """The frame shape of an HDF5 source (opened: its file, dataset and links are checked)."""
    try:
        src = wf.frame_source()
        shape = tuple(src.frame_shape)  # a file per slice or line: the first one's, opened here
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise WorkflowError(f"inputs.frames: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if src.nframes is not None and src.nframes < wf.scan.nframes:
        log.warning("inputs.frames: %s holds %d frames, the scan %d: the others are flagged missing", src.spec,
                    src.nframes, wf.scan.nframes)
    return shape


def input_files(wf: Workflow) -> dict[str, Path]:
    """The run's inputs by workflow key (the frames by their folder): what a store must never hold."""
    i = wf.inputs
    out = {"inputs.frames": _frame_files(wf)[0].parent}
    if wf.frames_templated:  # a folder per slice or line: the folder above them all too
        from .io.layout import FrameTemplate
        from .io.spec import split_spec

        out["inputs.frames (root)"] = Path(FrameTemplate(split_spec(wf.inputs.frames)[0], wf.scan_shape,
                                                         wf.frames_hdf5).root() or ".")
    for key in ("poni", "mask", "dark", "flat", "monitor", "scan_file"):
        if getattr(i, key) is not None:
            out[f"inputs.{key}"] = Path(getattr(i, key))
    if wf.pdf.enabled and wf.pdf.background == "file" and wf.pdf.background_file is not None:
        out["pdf.background_file"] = Path(wf.pdf.background_file)
    return out


def input_contents(wf: Workflow) -> dict[str, dict]:
    """``{key: {"path", "sha256"}}`` of every input file but the frames: part of a run's identity
    (a PONI edited in place is a different run, like a changed workflow key)."""
    return {k: {"path": str(p), "sha256": store.file_digest(p)} for k, p in input_files(wf).items()
            if k != "inputs.frames" and p.is_file()}

FRAMES_SAMPLED = 256  # frame files whose sizes a store records: a different data set is noticed on resume


def _frame_files(wf: Workflow) -> list[Path]:
    """Files standing for the frames: up to ``FRAMES_SAMPLED`` frame files spread over the scan (a
    template: computed from it, never listed; a file per slice or line counted once), or the
    files of one HDF5 source (master, data files: what is there now)."""
    if wf.frames_hdf5 and not wf.frames_templated:
        from .io.spec import split_spec

        try:
            return wf.frame_source().files()
        except (OSError, ValueError, KeyError):
            return [Path(split_spec(wf.inputs.frames)[0])]
    n = wf.scan.nframes
    files = [wf.frame_file(int(i)) for i in np.unique(np.linspace(0, n - 1, min(FRAMES_SAMPLED, n)).astype(np.int64))]
    return list(dict.fromkeys(files))


def frame_sample(wf: Workflow) -> dict:
    """Sizes in bytes (-1: no file) of the files standing for the frames (:func:`_frame_files`).
    A CBF file still being written (:func:`~xrdct_dask.io.cbf.frame_complete`) counts as no file:
    a store created during the acquisition is resumed once it is whole."""
    from .io.cbf import frame_complete

    files = _frame_files(wf)
    sizes = []
    for f in files:
        try:
            size = os.stat(f).st_size
            sizes.append(size if wf.frames_hdf5 or frame_complete(f) else -1)
        except OSError:
            sizes.append(-1)
    return {"files": [str(f) for f in files], "bytes": sizes}


def check_same_inputs(wf: Workflow, path: Path, attrs: dict) -> None:
    """Refuse (one line naming the file) to resume a store whose inputs changed since it was made:
    an input file's contents, or the size of a sampled frame that existed then (frames that were
    missing may have arrived since: they are read by the resumed run)."""
    hint = (f"set store.overwrite=true to start again, or `xrdct reprocess {path}` for a new run from it")
    recorded = attrs.get("input_contents")
    if recorded is not None:
        now = input_contents(wf)
        for key in sorted(set(recorded) | set(now)):
            if recorded.get(key, {}).get("sha256") != now.get(key, {}).get("sha256"):
                what = now.get(key, recorded.get(key, {})).get("path", key)
                raise WorkflowError(f"{key}: {what} changed since {path} was created (its contents differ): {hint}")
    sample = attrs.get("frame_sample")
    if sample is not None:
        for f, was in zip(sample["files"], sample["bytes"]):
            if was < 0:
                continue
            try:
                size = os.stat(f).st_size
            except OSError:
                continue  # gone now: its block, if not done yet, flags it missing
            if size != was:
                raise WorkflowError(f"inputs.frames: {f} is {size} bytes, {was} when {path} "
                                    f"was created: the frames changed; {hint}")


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

    def index(self, wf: Workflow, z: int) -> np.ndarray:
        """int64 ``(nomega, nx)``: acquisition index of the frame at each point of slice ``z`` (-1 none)."""
        s = wf.scan
        if self.grid is not None:
            return self.grid.index(z)
        from .io.scan import grid_index

        iw, ix = np.indices((s.nomega, s.nx))
        return grid_index(z, iw, ix, s.nomega, s.nx, s.fast_axis, s.order)

    def monitor_of(self, idx: np.ndarray) -> np.ndarray:
        """float64 monitor at acquisition indices ``idx`` (NaN where -1; ones without a monitor)."""
        if self.monitor is None:
            return np.ones(idx.shape)
        return self.monitor.take(idx)

    def monitor_reference(self, wf: Workflow) -> float:
        """The median of the positive monitor values of the frames used (every frame of the scan
        arithmetic, or those placed on the grid), exact, streamed slice by slice; 1 without one."""
        from .io.scantable import grouped_median

        if self.monitor is None:
            return 1.0

        def stream():
            if self.grid is None:
                for v in self.monitor.blocks(wf.scan.nframes):
                    v = v[v > 0]
                    yield np.zeros(v.size, np.int64), v
                return
            for z in range(wf.scan.nz):
                idx = self.grid.index(z)
                v = self.monitor.take(idx[idx >= 0])
                v = v[v > 0]
                yield np.zeros(v.size, np.int64), v

        ref = float(grouped_median(stream, 1)[0])
        return ref if np.isfinite(ref) else 1.0

    def close(self) -> None:
        from .io.scantable import remove_scratch

        remove_scratch(self.scratch)
        self.scratch = None


def _scan_source(wf: Workflow):
    """The scan's own per-frame table: ``(blocks, columns, sources, has_grid)`` where ``blocks()``
    streams it (:func:`~xrdct_dask.io.scantable.scan_table_blocks`: ``index``, grid columns,
    ``omega_deg``, ``x_mm``, ``z_mm``, ``monitor``), from the scan file, else from an HDF5
    source's scan (``inputs.positioners``, read a block of frames at a time:
    :func:`~xrdct_dask.io.positioners.hdf5_column_blocks`); None when the scan gives nothing per frame."""
    from .io.positioners import hdf5_column, hdf5_column_blocks
    from .io.scantable import scan_header, scan_table_blocks

    if wf.inputs.scan_file is not None:
        path = wf.inputs.scan_file
        try:
            names = scan_header(path)
        except ValueError as err:
            raise WorkflowError(f"inputs.scan_file: {err}") from None
        cols = [c for c in ("omega_deg", "x_mm", "z_mm", "monitor") if c in names]
        return (lambda: scan_table_blocks(path)), set(names), {c: f"{path}:{c}" for c in cols}, "iz" in names
    if wf.frames_hdf5 and not wf.frames_templated and wf.scan.positions != "nominal":
        from .io.spec import split_spec

        n = wf.frame_source().nframes
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
        from .io import scantable

        return ((lambda: hdf5_column_blocks(columns, n, scantable.BLOCK_ROWS)), {"index", *columns},
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


def scan_layout(wf: Workflow) -> ScanLayout:
    """The frames' places and the axes of a scan (see :class:`ScanLayout`), read in bounded memory.

    The scan's table is streamed once (:mod:`xrdct_dask.io.scantable`) into a scratch folder
    beside the store, slice by slice.  A scan file's ``iz, iomega, ix`` columns place the frames;
    else measured omega and x (and z) place them on the grid of their own values (the readings
    of each axis grouped into ``nomega`` / ``nx`` / ``nz`` values, the groups told apart on a
    random sample of at most :data:`~xrdct_dask.io.scantable.SAMPLE_MAX` readings, each group's
    median exact; each frame at the nearest, frames that fit none left out and counted); else
    the scan arithmetic.  The axes are the measured values (the exact median reading of each grid
    line) where the scan gives them and ``scan.positions`` allows, else the nominal grid, and the
    store records which (``positions`` attr)."""
    from .io.scantable import FlatColumn, monitor_blocks, scratch_folder

    s = wf.scan
    nominal = {"omega_deg": np.arange(s.nomega) * (s.omega_range_deg / s.nomega),
               "x_mm": np.arange(s.nx) * s.x_step_mm, "z_mm": np.arange(s.nz) * s.z_step_mm}
    src = _scan_source(wf)
    blocks, columns, sources, has_grid = src if src is not None else (None, set(), {}, False)
    measured = [k for k in ("omega_deg", "x_mm", "z_mm") if k in columns]
    if s.positions == "nominal":
        measured = []
    elif s.positions == "measured" and not {"omega_deg", "x_mm"} <= set(measured):
        raise WorkflowError("scan.positions: measured, but the scan gives no omega and x per frame (scan file "
                            "columns omega_deg, x_mm, or the HDF5 scan's inputs.positioners)")
    place = not has_grid and _places_frames(wf, measured, False)
    lay = ScanLayout(grid=None, monitor=None, positions={}, scratch=scratch_folder(wf.store.path), **nominal)
    folder = Path(lay.scratch.name)
    try:
        if wf.inputs.monitor is not None:
            lay.monitor = FlatColumn(folder / "monitor.f8")
            try:
                for v in monitor_blocks(wf.inputs.monitor):
                    lay.monitor.append(v)
            except ValueError as err:
                raise WorkflowError(f"inputs.monitor: {err}") from None
        elif "monitor" in columns:
            lay.monitor, lay.monitor_source = FlatColumn(folder / "monitor.f8"), "the scan's monitor"
        mon_rows = "monitor" in columns and wf.inputs.monitor is None
        placed = "scan arithmetic (scan.order, scan.fast_axis)"
        axes: dict[str, np.ndarray] = {}
        if has_grid:
            lay.grid = _grid_from_columns(wf, blocks, measured, lay.monitor if mon_rows else None, folder)
            placed = "scan file columns iz, iomega, ix"
            for k in measured:
                axes[k] = _line_medians(lay.grid, k, AXIS_OF[k])
        elif place:
            lay.grid, axes, off = _grid_from_positions(wf, blocks, measured, lay.monitor if mon_rows else None,
                                                       folder)
            placed = f"measured positions ({off} frames fit no grid point and are left out)"
        elif mon_rows:
            for b in blocks():
                lay.monitor.scatter(b["index"], b["monitor"])
        if lay.monitor is not None and lay.monitor_source == "inputs.monitor":
            need = s.nframes if lay.grid is None else lay.grid.max_index + 1
            if lay.monitor.size < need:
                raise WorkflowError(f"inputs.monitor: {wf.inputs.monitor}: {lay.monitor.size} monitor values for a "
                                    f"scan of {need} frames")
        for k, v in axes.items():
            setattr(lay, k, v)
        lay.positions = {"frames placed by": placed,
                         **{k: (sources.get(k, "measured") if k in axes else "nominal") for k in nominal}}
    except BaseException:
        lay.close()
        raise
    return lay


def _grid_from_columns(wf: Workflow, blocks, fields: list[str], monitor, folder: Path):
    """The frames placed by a scan file's ``iz, iomega, ix`` columns, per slice
    (:class:`~xrdct_dask.io.scantable.SlabFrames`, with the ``fields`` read), the monitor column
    scattered into ``monitor`` on the way."""
    from .io.scantable import SlabFrames

    s = wf.scan
    grid = SlabFrames(folder / "slabs", s.nz, s.nomega, s.nx, fields)
    bad = 0
    for b in blocks():
        iz, iw, ix = b["iz"], b["iomega"], b["ix"]
        inside = (iz >= 0) & (iz < s.nz) & (iw >= 0) & (iw < s.nomega) & (ix >= 0) & (ix < s.nx)
        bad += int((~inside).sum())
        if bad:
            continue
        if monitor is not None:
            monitor.scatter(b["index"], b["monitor"])
        grid.add(iz, iw, ix, b["index"], {f: b[f] for f in fields})
    if bad:
        raise WorkflowError(f"inputs.scan_file: {wf.inputs.scan_file}: {bad} rows lie outside the scan grid "
                            f"{s.nz} x {s.nomega} x {s.nx}")
    grid.finish()
    return grid


def _grid_from_positions(wf: Workflow, blocks, measured: list[str], monitor, folder: Path):
    """Frames placed by their measured positions: one pass keeps the readings (flat files) and a
    random sample per axis; the sample tells the groups of each axis apart, every reading is
    grouped by those cuts and each group's median is exact (:func:`grouped_median`); a second
    pass places each frame at its nearest grid point (:func:`~xrdct_dask.io.positioners.nearest_points`).
    Returns ``(SlabFrames, axes, frames off grid)``."""
    from .io.positioners import nearest_points
    from .io.scantable import FlatColumn, Sample, SlabFrames, grouped_median, sample_grid_cuts

    s = wf.scan
    flat = {k: FlatColumn(folder / f"{k}.f8") for k in ("index", *measured)}
    samples = {k: Sample() for k in measured}
    for b in blocks():
        flat["index"].append(b["index"])
        for k in measured:
            flat[k].append(b[k])
            samples[k].add(b[k])
        if monitor is not None:
            monitor.scatter(b["index"], b["monitor"])
    sizes = {"omega_deg": s.nomega, "x_mm": s.nx, "z_mm": s.nz}
    axes = {}
    try:
        for k in measured:
            cuts = sample_grid_cuts(samples[k].values(), sizes[k])

            def stream(k=k, cuts=cuts):
                for v in flat[k].blocks():
                    yield np.searchsorted(cuts, v, side="right"), v

            axes[k] = grouped_median(stream, sizes[k])
    except ValueError as err:
        raise WorkflowError(f"scan: the measured positions do not make a {s.nz} x {s.nomega} x {s.nx} grid "
                            f"({err})") from None
    if "z_mm" not in measured:
        if s.nz > 1:
            raise WorkflowError("scan: omega and x are measured but not z, and the scan has several slices: name "
                                "inputs.positioners.z or give the scan file a z_mm column")
        axes["z_mm"] = np.zeros(1)
    grid = SlabFrames(folder / "slabs", s.nz, s.nomega, s.nx)
    off = total = 0
    readers = {k: flat[k].blocks() for k in flat}
    for idx in readers["index"]:
        v = {k: next(readers[k]) for k in measured}
        z = v.get("z_mm", np.zeros(idx.size))
        iz, iw, ix, out, _ = nearest_points(v["omega_deg"], v["x_mm"], z, axes["omega_deg"], axes["x_mm"],
                                            axes["z_mm"], omega_period_deg=360.0)
        on = ~out
        off, total = off + int(out.sum()), total + idx.size
        grid.add(iz[on], iw[on], ix[on], idx[on].astype(np.int64), {})
    grid.finish()
    if off:
        log.warning("%d of %d frames fit no grid point (flagged off grid)", off, total)
    return grid, axes, off


def _line_medians(grid, field: str, axis: int) -> np.ndarray:
    """The exact median of the per-frame ``field`` over each line of ``grid`` along ``axis`` (the
    frames placed there), streamed slice by slice: a measured coordinate for each grid index."""
    from .io.scantable import grouped_median

    out = grouped_median(grid.stream(field, axis), grid.shape[axis])
    if np.isnan(out).any():
        raise WorkflowError(f"scan: no frame measured at {int(np.isnan(out).sum())} grid lines: their positions are "
                            "unknown (scan.positions: nominal uses the grid)")
    return out


def prepare_store(wf: Workflow, ai, extra_attrs: dict | None = None, client=None) -> stages.RunContext:
    """Create the store template beside ``store.path``, fill the monitor and frame indices, and
    rename it into place (:func:`store.create_aside`); return the :class:`stages.RunContext`.
    ``extra_attrs`` go to the root with the others (e.g. a reprocessed run's lineage).  The
    per-frame arrays are written slab by slab on the workers of ``client`` (a client or a callable
    making one; None: here), :func:`write_scan_arrays`."""
    from .pdf import PDFParameterError, operator_for, radial_to_q_A

    radial = stages.plan_for(wf).radial  # the plan is cached for the workers; no engine is built here
    wavelength_A = (ai.wavelength or 0) * 1e10
    r_A = op = None
    if wf.pdf.enabled:
        from .pdf.background import load_background

        if wf.integrate.unit == "2th_deg" and not wavelength_A > 0:
            raise WorkflowError("inputs.poni: no wavelength in the PONI, needed to turn 2th_deg into Q for the PDF")
        try:
            op = operator_for(radial_to_q_A(radial, wf.integrate.unit, wavelength_A), wf.pdf)
            if wf.pdf.background == "file":
                load_background(wf.pdf.background_file, radial)
        except PDFParameterError as err:
            raise WorkflowError(str(err)) from None
        r_A = op.r_A
    try:
        lay = scan_layout(wf)
    except WorkflowError:
        raise
    except ValueError as err:
        raise WorkflowError(f"inputs.scan_file: {err}") from None
    try:
        return _prepare_store(wf, ai, lay, radial, wavelength_A, r_A, op, extra_attrs, client)
    finally:
        lay.close()


def _prepare_store(wf: Workflow, ai, lay: ScanLayout, radial, wavelength_A, r_A, op, extra_attrs, client):
    s = wf.scan
    path = Path(wf.store.path)
    if lay.grid is not None and lay.grid.duplicates():
        log.warning("%d scan points recorded twice; the last record is used", lay.grid.duplicates())
    reference = lay.monitor_reference(wf)
    attrs = {
        "workflow": wf.model_dump(mode="json"),
        "workflow_yaml": wf.to_yaml(),
        "workflow_digest": wf.digest(),
        "work_digest": wf.work_digest(),
        "versions": store.versions(),
        "input_contents": input_contents(wf),
        "frame_sample": frame_sample(wf),
        "engine": resolve_engine(wf.integrate.engine),
        "monitor_reference": reference,
        "wavelength_angstrom": wavelength_A,
        "poni": {k: v for k, v in ai.get_config().items() if k != "detector_config"} | {"detector": ai.detector.name},
        "positions": lay.positions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    } | (extra_attrs or {})

    layout = layout_for(wf, radial.size, 0 if r_A is None else r_A.size)

    def build(tmp: Path) -> None:
        store.create_store(tmp, nz=s.nz, nomega=s.nomega, nx=s.nx, radial=radial, radial_unit=wf.integrate.unit,
                           omega_deg=lay.omega_deg, x_mm=lay.x_mm, z_mm=lay.z_mm,
                           r_A=r_A, layout=layout, attrs=attrs, pdf_blocks=pdf_blocks(wf, layout, r_A),
                           **pdf_store_args(wf, op))
        late = write_scan_arrays(tmp, wf, lay, client)
        if late:
            log.warning("%d frames arrived out of the scan's order; placed by the scan file", late)
        store.mark_template_complete(tmp)
        store.consolidate(tmp)

    try:
        store.create_aside(path, build, input_files(wf))
    except store.StoreWriteError as err:
        raise WorkflowError(f"store.path: {err.strerror}") from None
    return stages.RunContext(workflow=wf, store_path=path, monitor_reference=reference, wavelength_A=wavelength_A,
                             layout=layout, check_md5=wf.inputs.check_md5, read_threads=wf.compute.read_threads)


SLAB_POINTS = 1 << 21  # scan points a template-writing task covers (whole slices: z chunks are 1)
SLABS_IN_FLIGHT = 16  # slabs read ahead by the client while the workers write: ~16 x 25 MB at most


def write_scan_arrays(path: Path, wf: Workflow, lay: ScanLayout, client=None) -> int:
    """Fill ``reduced/monitor``, ``reduced/frame_index`` (and ``scan_flag`` where a scan file or
    measured positions place the frames) of the new store at ``path``, in slabs of whole slices,
    each a task on the workers of ``client`` (:func:`xrdct_dask.sidework.map_pieces`; None: here,
    one after the other; the arrays are the same).  The client reads each slab's frame indices and
    monitor from the scan layout (:class:`ScanLayout`, slice by slice) as the tasks run, a few
    slabs ahead: it never holds the scan's ``(nz, nomega, nx)`` arrays.  Returns the frames that
    arrived out of the scan's order."""
    from .sidework import map_pieces, slabs

    s = wf.scan
    late = 0

    def pieces():
        nonlocal late
        for z0, z1 in slabs(s.nz, -(-s.nz * s.nomega * s.nx // SLAB_POINTS)):
            idx = np.stack([lay.index(wf, z) for z in range(z0, z1)])
            mon = lay.monitor_of(idx).astype(np.float32)
            flags = None
            if lay.grid is not None:
                flags = np.stack([_scan_flags(z, idx[z - z0], lay.grid.duplicate(z), s) for z in range(z0, z1)])
                late += int((flags == FrameStatus.OUT_OF_ORDER).sum())
            yield str(path), z0, z1, idx, mon, flags

    map_pieces(client, _write_scan_slab, pieces(), "xrdct-template-slab", in_flight=SLABS_IN_FLIGHT)
    return late


def _write_scan_slab(piece) -> int:
    """One slab of :func:`write_scan_arrays`: slices ``z0 .. z1 - 1``; returns the points written."""
    path, z0, z1, idx, mon, flags = piece
    store.open_array(path, f"{store.REDUCED}/monitor")[z0:z1] = mon
    store.open_array(path, f"{store.REDUCED}/frame_index")[z0:z1] = idx
    if flags is not None:
        store.open_array(path, f"{store.REDUCED}/scan_flag")[z0:z1] = flags
    return int(idx.size)


def layout_for(wf: Workflow, nq: int, nr: int) -> Layout:
    """The block sizes of a new store of ``wf`` (:func:`xrdct_dask.budget.choose_layout` within
    :func:`xrdct_dask.budget.task_memory`)."""
    s = wf.scan
    return choose_layout(nomega=s.nomega, nx=s.nx, nq=nq, nr=nr, omega_chunk=wf.store.omega_chunk,
                         q_chunk=wf.store.q_chunk, r_chunk=wf.pdf.r_chunk, budget=task_memory(wf.compute),
                         pdf_order=wf.pdf.order)


def pdf_blocks(wf: Workflow, layout: Layout, r_A) -> int:
    """pdf tasks (and done-markers) per slice: voxel-row blocks, or r blocks (pdf-then-recon)."""
    if r_A is None:
        return 0
    return stages.unit_count(stages.pdf_unit(wf), nomega=wf.scan.nomega, nx=wf.scan.nx, nq=0, nr=len(r_A),
                             layout=layout)


def pdf_store_args(wf: Workflow, op) -> dict:
    """:func:`store.create_store` arguments of the PDF: the aux channels of the pdf-then-recon order,
    and the transform's parameters for the ``pdf`` group's attrs."""
    if op is None:
        return {}
    p = wf.pdf
    return {"aux_channels": stages.pdf_aux_channels(op) if p.order == "pdf-then-recon" else None,
            "pdf_attrs": {"transform": "PDFgetX3 ad hoc (xrdct_dask.pdf)", **op.params,
                          "order": p.order, "normalization": p.normalization, "scale": p.scale,
                          "background": p.background, "bgscale": p.bgscale,
                          "background_file": str(p.background_file) if p.background_file else None,
                          "units": {"Q": "1/angstrom", "r": "angstrom", "G": "1/angstrom^2",
                                    "lowr_slope": "1/angstrom^3", "fq_highq_rms": "1/angstrom"}}}


def _scan_flags(z: int, idx: np.ndarray, dup: np.ndarray, s) -> np.ndarray:
    """int8 ``(nomega, nx)`` of slice ``z`` (acquisition indices ``idx``, points recorded twice
    ``dup``): DUPLICATE where the scan file records a point twice, OUT_OF_ORDER where it places
    a frame elsewhere than the scan arithmetic (fast axis, snake) would, else 0."""
    from .io.scan import grid_index

    flags = np.zeros(idx.shape, np.int8)
    iw, ix = np.indices(idx.shape)
    expected = grid_index(z, iw, ix, s.nomega, s.nx, s.fast_axis, s.order)
    flags[(idx >= 0) & (idx != expected)] = FrameStatus.OUT_OF_ORDER
    flags[dup] = FrameStatus.DUPLICATE
    return flags


def context_from_store(wf: Workflow, path) -> stages.RunContext:
    """The :class:`stages.RunContext` of an existing store (resume, reprocess): its layout too."""
    attrs = store.read_attrs(path)
    return stages.RunContext(workflow=wf, store_path=Path(path), monitor_reference=float(attrs["monitor_reference"]),
                             wavelength_A=float(attrs["wavelength_angstrom"]), layout=store.layout_of(path),
                             check_md5=wf.inputs.check_md5, read_threads=wf.compute.read_threads)


def open_run(wf: Workflow, overwrite: bool | None = None, extra_attrs: dict | None = None,
             client=None) -> stages.RunContext:
    """The store of ``wf``, resumed or created, and its context; nothing is computed.

    A new store's per-frame arrays are written on the workers of ``client`` (a client, or a
    callable making one when first needed: a store that is resumed, or inputs that fail their
    checks, never start a cluster); None: here.

    An existing store with a complete template, the same work digest
    (:meth:`Workflow.work_digest`) and the same input contents (:func:`check_same_inputs`) is
    resumed: its done-markers say which tasks are skipped, and blocks with frames to read again
    (:func:`reopen_retried`) are redone.  A store of this program whose template was never
    completed is recreated.  A store of other work is refused unless ``store.overwrite`` is set
    (which always starts afresh); and nothing but a store of this program, holding nothing else,
    is ever replaced (:func:`store.check_replaceable`): any other folder is refused in one line.
    """
    path = Path(wf.store.path)
    overwrite = wf.store.overwrite if overwrite is None else overwrite
    report_leftovers(path)
    attrs = store.root_attrs(path) if store.is_store(path) else None
    if attrs is not None and attrs.get("template_complete") and not overwrite:
        if attrs.get("work_digest") != wf.work_digest():
            changed = changed_keys(attrs.get("workflow", {}), wf.model_dump(mode="json"))
            raise FileExistsError(
                f"{path} holds a run of another workflow (changed: {', '.join(changed) or 'unknown'}): pass "
                f"store.overwrite=true to replace it, or `xrdct reprocess {path} --set ...` for a new run from it")
        check_same_inputs(wf, path, attrs)
        return _resume(wf, path)
    if attrs is not None and not attrs.get("template_complete"):
        log.warning("%s: template incomplete (a run stopped while preparing it): creating it again", path)
    ai, _ = check_inputs(wf)
    try:
        store.check_replaceable(path, input_files(wf))
    except store.StoreExistsError as err:
        raise WorkflowError(str(err)) from None
    parent = Path(os.path.abspath(path)).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        store.check_writable(parent)
    except FileExistsError:
        raise WorkflowError(f"store.path: cannot create {path}: {parent} is a file, not a folder") from None
    except OSError as err:
        raise WorkflowError(f"store.path: cannot create {path}: {err.strerror or err}") from None
    return prepare_store(wf, ai, extra_attrs, client=client)


def report_leftovers(path) -> None:
    """Remove the half-built stores killed runs left beside ``path`` where they are provably this
    program's and stale (:func:`store.clean_leftovers`), and say so; say what is left."""
    removed, kept = store.clean_leftovers(path)
    for left in removed:
        log.warning("%s: removed (a half-built store of a run that was stopped)", left)
    for left in kept:
        log.warning("%s: left by a run stopped while creating or replacing %s; remove it", left, path)


def _resume(wf: Workflow, path: Path) -> stages.RunContext:
    try:
        store.check_writable(path)
    except store.StoreWriteError as err:
        raise WorkflowError(f"store.path: {err.strerror}") from None
    ctx = context_from_store(wf, path)
    state = store.task_state(path)
    retried = reopen_retried(ctx, state)
    if retried:
        log.warning("%s: %d frames missing or unreadable before are read again (%d blocks redone)", path,
                    *retried)
        state = store.task_state(path)
    if not state.integrate.all():
        check_inputs(wf)
    log.info("resuming %s: %s", path, ", ".join(f"{k} {d}/{t} done" for k, (d, t) in state.counts().items()))
    return ctx


def frames_present(wf: Workflow):
    """``present(index) -> bool``: whether frame ``index`` can be read whole now (its CBF file is
    complete: :func:`~xrdct_dask.io.cbf.frame_complete`; for an HDF5 source, a fresh look at the
    source holds it)."""
    if not wf.frames_hdf5:
        from .io.cbf import frame_complete

        return lambda i: frame_complete(wf.frame_path(i))
    if wf.frames_templated:  # a file per slice or line: its file is there and holds the frame
        src = wf.frame_source()

        def present(i: int) -> bool:
            try:
                return src.layout.local(i) < src.unit(src.file_of(i)).nframes
            except (OSError, ValueError, KeyError, RuntimeError):
                return False
        return present
    from .io.source import Hdf5Frames
    from .io.spec import split_spec

    try:
        src = Hdf5Frames(*split_spec(wf.inputs.frames))  # not the per-process cache: the file may have grown
    except (OSError, ValueError, KeyError, RuntimeError):
        return lambda i: False

    def there(i: int) -> bool:  # in a data file that is there and readable (a bad file: its frames only)
        seg = src.segments[int(src.map.segment[i])] if i < src.nframes and int(src.map.segment[i]) >= 0 else None
        return seg is not None and not seg.missing and not seg.flag
    return there


def reopen_retried(ctx: stages.RunContext, state: store.TaskState) -> tuple[int, int]:
    """Clear the done-markers of integrated blocks holding frames worth reading again: an I/O error,
    or a frame missing, not a regular file or partly written when it was read (a run during the
    acquisition) whose file is whole now (:data:`~xrdct_dask.io.status.REREAD_WHEN_WHOLE`).  The
    slice's centre, reconstruction and G(r) are cleared too: they are made from those blocks.
    Returns ``(frames, blocks)`` reopened.  Read slice by slice."""
    from .io.status import REREAD_WHEN_WHOLE, FrameStatus

    wf = ctx.workflow
    wc = ctx.layout.omega_chunk
    red = ctx.store_path / store.REDUCED
    status_arr = store.open_array(red, "frame_status", "r")
    index_arr = store.open_array(red, "frame_index", "r")
    frames = blocks = 0
    for z in np.nonzero(state.integrate.any(axis=1))[0]:
        st = status_arr[z]
        retry = st == FrameStatus.IO_ERROR
        late = np.isin(st, [int(c) for c in REREAD_WHEN_WHOLE])
        missing = np.argwhere(late & state.integrate[z].repeat(wc)[:st.shape[0], None])
        if missing.size:
            idx = index_arr[z]
            arrived = frames_present(wf)
            for w, x in missing:
                if idx[w, x] >= 0 and arrived(int(idx[w, x])):
                    retry[w, x] = True
        rows = np.nonzero(retry.any(axis=1))[0]
        reopen = sorted({int(w) // wc for w in rows if state.integrate[z, int(w) // wc]})
        if not reopen:
            continue
        for b in reopen:
            store.mark_done(ctx.store_path, "integrate", (int(z), b), 0)
        store.mark_done(ctx.store_path, "center", (int(z),), np.nan)
        for b in range(state.recon.shape[1]):
            store.mark_done(ctx.store_path, "recon", (int(z), b), 0)
        if state.pdf is not None:
            store.mark_done(ctx.store_path, "pdf", (int(z),), 0)
        frames += int(retry.sum())
        blocks += len(reopen)
    return frames, blocks
