"""The frames of a workflow: its ``inputs.frames`` opened as a frame source, and the file of a frame.

The workflow schema (:mod:`xrdct_dask.config`) names the frames; these functions open them
(:func:`xrdct_dask.io.source.open_source`, one source per process), computed from the template and
the scan's shape (:mod:`xrdct_dask.io.layout`): nothing is listed.
"""

from __future__ import annotations

from pathlib import Path

from xrdct_dask.config import Workflow
from xrdct_dask.io.source import open_source


def frame_source(wf: Workflow):
    """The :class:`~xrdct_dask.io.source.FrameSource` of ``wf``'s ``inputs.frames`` (opened once per process)."""
    return open_source(wf.inputs.frames, scan=wf.scan_shape)


def frame_path(wf: Workflow, index: int) -> Path:
    """The CBF file of frame ``index`` (a template source; an HDF5 source has no file per frame)."""
    if wf.frames_hdf5:
        raise ValueError(f"inputs.frames {wf.inputs.frames!r} is an HDF5 source: frames have no file each")
    return frame_source(wf).path(index)


def frame_file(wf: Workflow, index: int) -> Path:
    """The file holding frame ``index``: its CBF file, the HDF5 file of its slice or line, or the
    one HDF5 file of the scan."""
    src = frame_source(wf)
    return src.file_of(index) if hasattr(src, "file_of") else src.file
