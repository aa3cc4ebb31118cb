"""A measured empty-container / air scan (``inputs.background_scan``): checked, then integrated.

The beamline records the container (a capillary, a reactor) or the air alone, with everything
else as for the sample.  Its frames are integrated with the run's own integration plan (same
geometry, mask, dark, flat, corrections and q bins) and normalised by their own monitor relative
to the scan's monitor reference, so that they are in the units of ``reduced/intensity``;
:func:`xrdct_dask.sinogram.air.subtract_measured` then takes them off every sinogram, per q:

* ``extent: line``: ``scan.nx`` frames, one translation line at a fixed angle (index = x step):
  one row subtracted from every projection.  Right for air, and for a container that is
  rotationally symmetric about the axis (it looks the same at every angle);
* ``extent: slice``: ``scan.nomega x scan.nx`` frames in the scan's own order (``scan.order``,
  ``scan.fast_axis``): subtracted projection by projection, for any container that stays put
  between the two scans.

The checks (:func:`check_background_scan`) run with the run's other input checks, before the store
is created; a frame that cannot be integrated stops the run then too (:func:`integrate_background_scan`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrdct_dask.config import BackgroundScan, Workflow, WorkflowError
from xrdct_dask.io.cbf import CorruptFrameError, read_cbf_payload
from xrdct_dask.io.layout import ScanShape
from xrdct_dask.io.scan import grid_index
from xrdct_dask.io.scantable import monitor_blocks
from xrdct_dask.io.source import CbfTemplate, open_source
from xrdct_dask.io.spec import split_spec
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.pipeline.integrator import integrator_for

KEY = "inputs.background_scan"


def _scan_of(wf: Workflow) -> BackgroundScan:
    """``inputs.background_scan`` of a workflow that has one (the functions below are called only then)."""
    b = wf.inputs.background_scan
    assert b is not None, f"{KEY}: the workflow has no background scan"
    return b


def background_shape(wf: Workflow):
    """The :class:`~xrdct_dask.io.layout.ScanShape` of the background scan's frames (one slice)."""

    b, s = _scan_of(wf), wf.scan
    if b.extent == "line":
        return ScanShape(1, 1, s.nx, "x", "raster")
    return ScanShape(1, s.nomega, s.nx, s.fast_axis, s.order, s.interlace_passes)


def background_indices(wf: Workflow) -> np.ndarray:
    """int64 ``(rows, nx)``: the acquisition index of the background frame at each (row, x)."""

    shape = background_shape(wf)
    iw, ix = np.indices((shape.nomega, shape.nx))
    return grid_index(0, iw, ix, shape.nomega, shape.nx, shape.fast_axis, shape.order, shape.passes)


def background_rows(wf: Workflow) -> int:
    """Rows of ``reduced/background`` (0 without a background scan)."""
    b = wf.inputs.background_scan
    return 0 if b is None else (1 if b.extent == "line" else wf.scan.nomega)


def _source(wf: Workflow):

    return open_source(_scan_of(wf).frames, scan=background_shape(wf))


def read_monitor(wf: Workflow) -> np.ndarray | None:
    """The background frames' monitor, one value per frame in acquisition order (None: not given).
    Raises :class:`WorkflowError` (one line) for a missing file, a wrong count, or a value that
    is not finite and > 0 (a frame that cannot be normalised)."""

    path = _scan_of(wf).monitor
    if path is None:
        return None
    if not Path(path).is_file():
        raise WorkflowError(f"{KEY}.monitor: {path} not found")
    try:
        values = np.concatenate(list(monitor_blocks(path)) or [np.zeros(0)])
    except ValueError as err:
        raise WorkflowError(f"{KEY}.monitor: {err}") from None
    n = background_indices(wf).size
    if values.size != n:
        raise WorkflowError(f"{KEY}.monitor: {path} has {values.size} values for {n} background frames "
                            f"(extent {_scan_of(wf).extent})")
    bad = np.flatnonzero(~(np.isfinite(values) & (values > 0)))
    if bad.size:
        raise WorkflowError(f"{KEY}.monitor: {path}: frame {int(bad[0])} has monitor {values[bad[0]]:g} "
                            f"({bad.size} not > 0): it cannot be normalised")
    return values


def check_background_scan(wf: Workflow, frame_shape: tuple[int, int]) -> None:
    """Fail fast (one line naming the key) unless every background frame is there with the run's
    frame shape, and its monitor (if any) has one positive value per frame.  Nothing is read but
    file sizes and headers."""
    if wf.inputs.background_scan is None:
        return
    b = wf.inputs.background_scan
    idx = np.sort(background_indices(wf).ravel())
    try:
        src = _source(wf)
    except (OSError, ValueError, KeyError) as err:
        raise WorkflowError(f"{KEY}.frames: {err}") from None

    if not isinstance(src, CbfTemplate):  # HDF5: one dataset, or a file per line
        try:
            n, shape = src.nframes, tuple(src.frame_shape)
        except (OSError, ValueError, KeyError) as err:
            raise WorkflowError(f"{KEY}.frames: {err}") from None
        if n is not None and n < idx.size:
            raise WorkflowError(f"{KEY}.frames: {b.frames} holds {n} frames, the background scan "
                                f"(extent {b.extent}) needs {idx.size}")
    else:
        missing = [int(i) for i in idx if not Path(src.path(int(i))).is_file()]
        if missing:
            raise WorkflowError(f"{KEY}.frames: {len(missing)} of {idx.size} background frames missing, the first "
                                f"{src.path(missing[0])}")

        try:
            shape = tuple(read_cbf_payload(src.path(int(idx[0]))).shape)
        except (CorruptFrameError, OSError) as err:
            raise WorkflowError(f"{KEY}.frames: {src.path(int(idx[0]))} is not a readable frame ({err})") from None
    if tuple(shape) != tuple(frame_shape):
        raise WorkflowError(f"{KEY}.frames: the background frames are {shape[0]} x {shape[1]} but the scan's "
                            f"{frame_shape[0]} x {frame_shape[1]}")
    read_monitor(wf)


def integrate_background_scan(wf: Workflow, monitor_reference: float, integrator=None) -> np.ndarray:
    """The background scan integrated: float32 ``(rows, nx, nq)`` in the units of
    ``reduced/intensity`` (monitor / ``monitor_reference`` applied as the frames' is).  A frame
    that cannot be read or decoded is a :class:`WorkflowError` naming it (a background is
    subtracted from every sinogram: no frame of it may be missing)."""

    integ = integrator if integrator is not None else integrator_for(wf)
    idx = background_indices(wf)
    mon = read_monitor(wf)
    ratio = np.ones(idx.size) if mon is None else mon[idx.ravel()] / monitor_reference
    intensity, _, status, _ = integ.integrate_source(_source(wf), idx.ravel(), ratio,
                                                     read_threads=wf.compute.read_threads)
    bad = np.flatnonzero(status != FrameStatus.OK)
    if bad.size:
        k = int(bad[0])
        raise WorkflowError(f"{KEY}.frames: background frame {int(idx.ravel()[k])} could not be integrated "
                            f"({FrameStatus(int(status[k])).name}; {bad.size} frames)")
    return intensity.reshape(*idx.shape, -1).astype(np.float32)


def input_files(wf: Workflow) -> dict[str, Path]:
    """The background scan's files a store must never hold or replace (its frames' folder, its
    monitor)."""
    b = wf.inputs.background_scan
    if b is None:
        return {}

    out = {f"{KEY}.frames": Path(split_spec(b.frames)[0]).parent}
    if b.monitor is not None:
        out[f"{KEY}.monitor"] = Path(b.monitor)
    return out
