"""A run's inputs: checked before anything is computed (one line naming the problem), and the
contents and frame sample that are part of a run's identity."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from xrdct_dask import store
from xrdct_dask.config import Workflow, WorkflowError
from xrdct_dask.integrate.csr import load_image, load_poni
from xrdct_dask.io.cbf import CorruptFrameError
from xrdct_dask.io.fabio_frames import frame_file_complete, frame_file_shape
from xrdct_dask.io.images import load_stack
from xrdct_dask.io.layout import FrameTemplate
from xrdct_dask.io.source import Hdf5Frames
from xrdct_dask.io.spec import split_spec
from xrdct_dask.limits import check_run_sizes
from xrdct_dask.pipeline.frames import frame_file, frame_path, frame_source
from xrdct_dask.recon.astra import AstraMissingError, check_astra
from xrdct_dask.runs.background import check_background_scan
from xrdct_dask.runs.background import input_files as background_files
from xrdct_dask.view.console import console

log = logging.getLogger(__name__)


FRAMES_PROBED = 64  # check_inputs takes the frame shape from the first readable of these


def check_inputs(wf: Workflow):
    """Fail fast, before any compute, with one line naming the problem.

    Returns ``(ai, frame_shape)``.
    """

    if not wf.frames_hdf5:
        first = frame_path(wf, 0)
        if not first.parent.is_dir():
            raise WorkflowError(f"inputs.frames: folder {first.parent} does not exist")
    # the geometry: a PONI file, or the integration.json of inputs.pyfai_config (parsed by pyFAI)
    assert wf.inputs.poni is not None  # the schema requires it (given, or from inputs.pyfai_config)
    key = ("inputs.pyfai_config" if wf.inputs.pyfai_config and wf.inputs.poni == wf.inputs.pyfai_config
           else "inputs.poni")
    try:
        ai = load_poni(wf.inputs.poni)
    except (FileNotFoundError, ValueError) as err:
        raise WorkflowError(f"{key}: {err}") from None
    # pyFAI reads any text as a PONI with default geometry: insist on the keys a calibration writes
    text = Path(wf.inputs.poni).read_text(errors="replace").lower()
    lacking = [k for k in ("distance", "poni1", "poni2") if f"{k}:" not in text]
    if lacking and key == "inputs.poni":
        raise WorkflowError(f"inputs.poni: {wf.inputs.poni} is not a PONI file (no {', '.join(lacking)} key)")
    numbers = {"Distance": ai.dist, "Poni1": ai.poni1, "Poni2": ai.poni2, "Rot1": ai.rot1, "Rot2": ai.rot2,
               "Rot3": ai.rot3} | ({"Wavelength": ai.wavelength} if ai.wavelength is not None else {})
    bad = [f"{k} = {v}" for k, v in numbers.items() if not np.isfinite(v)]
    if not bad and not ai.dist > 0:
        bad = [f"Distance = {ai.dist} (must be > 0)"]
    if not bad and ai.wavelength is not None and not ai.wavelength > 0:
        bad = [f"Wavelength = {ai.wavelength} (must be > 0)"]
    if bad:
        raise WorkflowError(f"{key}: {wf.inputs.poni} has {', '.join(bad)}: not a usable geometry")
    det_shape = ai.detector.max_shape
    shape = _hdf5_frame_shape(wf) if wf.frames_hdf5 else _cbf_frame_shape(wf, det_shape)
    check_run_sizes(wf, shape)  # before anything of the scan's, the bins' or a frame's size is allocated
    if det_shape is not None and tuple(det_shape) != tuple(shape):
        what = "the PONI's detector" if key == "inputs.poni" else f"its detector ({ai.detector.name})"
        raise WorkflowError(f"{key}: {what} is {det_shape[0]} x {det_shape[1]} pixels but the "
                            f"frames are {shape[0]} x {shape[1]}")
    if ai.wavelength is None and wf.integrate.unit != "2th_deg":
        raise WorkflowError(f"{key}: no wavelength in the geometry, needed for q units")
    for key in ("mask", "dark", "flat"):
        for p in _files(getattr(wf.inputs, key)):  # dark, flat: several files or a stack
            if not Path(p).is_file():
                raise WorkflowError(f"inputs.{key}: {p} not found")
            try:
                img = load_image(p) if key == "mask" else load_stack(p)[0]
            except Exception as err:
                raise WorkflowError(f"inputs.{key}: {p} is not a readable image ({err})") from None
            if img.shape != tuple(shape):
                raise WorkflowError(f"inputs.{key}: {p} is {img.shape[0]} x {img.shape[1]} but the frames are "
                                    f"{shape[0]} x {shape[1]}")
    for key in ("monitor", "transmission", "scan_file"):
        p = getattr(wf.inputs, key)
        if p is not None and not Path(p).is_file():
            raise WorkflowError(f"inputs.{key}: {p} not found")

    check_background_scan(wf, shape)
    return ai, shape


def _files(value) -> list:
    """An input key's files: none, one, or a list (dark, flat)."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def check_recon_engine(wf: Workflow) -> None:
    """``recon.engine: astra`` needs the ASTRA toolbox here: a one-line error before anything is written."""
    if wf.recon.engine == "astra":

        try:
            check_astra()
        except AstraMissingError as err:
            raise WorkflowError(str(err)) from None


def _cbf_frame_shape(wf: Workflow, det_shape) -> tuple[int, int]:
    """The frame shape of a CBF template: the first readable frame of the PONI's shape (else the
    first readable one); a missing or broken frame among them is flagged by its task later."""
    first = frame_path(wf, 0)
    shape, first_err, seen = None, None, False
    for i in range(min(wf.scan.nframes, FRAMES_PROBED)):
        try:
            s = frame_file_shape(frame_path(wf, i))
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
    return shape  # frame_file_shape's (ny, nx) tuple


def _hdf5_frame_shape(wf: Workflow) -> tuple[int, int]:
    """The frame shape of an HDF5 source (opened: its file, dataset and links are checked)."""
    try:
        src = frame_source(wf)
        shape = tuple(src.frame_shape)  # a file per slice or line: the first one's, opened here
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise WorkflowError(f"inputs.frames: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if src.nframes is not None and src.nframes < wf.scan.nframes:
        per_slice = wf.scan.nomega * wf.scan.nx
        console.warning("inputs.frames: %s holds %d frames (%d whole slices), the workflow %d (%d slices, scan.nz): "
                        "the others are flagged missing", src.spec, src.nframes, src.nframes // per_slice,
                        wf.scan.nframes, wf.scan.nz)
    return shape


def input_files(wf: Workflow) -> dict[str, Path]:
    """The run's inputs by workflow key (the frames by their folder): what a store must never hold."""
    i = wf.inputs
    out = {"inputs.frames": _frame_files(wf)[0].parent}
    if wf.frames_templated:  # a folder per slice or line: the folder above them all too

        out["inputs.frames (root)"] = Path(FrameTemplate(split_spec(wf.inputs.frames)[0], wf.scan_shape,
                                                         wf.frames_hdf5).root() or ".")
    for key in ("poni", "pyfai_config", "mask", "dark", "flat", "monitor", "transmission", "scan_file"):
        files = _files(getattr(i, key))
        for k, f in enumerate(files):  # several dark or flat files: inputs.dark[0], ...
            out[f"inputs.{key}" + (f"[{k}]" if len(files) > 1 else "")] = Path(f)
    if wf.pdf.enabled and wf.pdf.background == "file" and wf.pdf.background_file is not None:
        out["pdf.background_file"] = Path(wf.pdf.background_file)

    return out | background_files(wf)


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

        try:
            return frame_source(wf).files()
        except (OSError, ValueError, KeyError):
            return [Path(split_spec(wf.inputs.frames)[0])]
    n = wf.scan.nframes
    files = [frame_file(wf, int(i)) for i in np.unique(np.linspace(0, n - 1, min(FRAMES_SAMPLED, n)).astype(np.int64))]
    return list(dict.fromkeys(files))


def frame_sample(wf: Workflow) -> dict:
    """Sizes in bytes (-1: no file) of the files standing for the frames (:func:`_frame_files`).
    A CBF file still being written (:func:`~xrdct_dask.io.cbf.frame_complete`) counts as no file:
    a store created during the acquisition is resumed once it is whole."""

    files = _frame_files(wf)
    sizes = []
    for f in files:
        try:
            size = os.stat(f).st_size
            sizes.append(size if wf.frames_hdf5 or frame_file_complete(f) else -1)
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


def frames_present(wf: Workflow):
    """``present(index) -> bool``: whether frame ``index`` can be read whole now (its CBF file is
    complete: :func:`~xrdct_dask.io.cbf.frame_complete`; for an HDF5 source, a fresh look at the
    source holds it)."""
    if not wf.frames_hdf5:

        return lambda i: frame_file_complete(frame_path(wf, i))
    if wf.frames_templated:  # a file per slice or line: its file is there and holds the frame
        src = frame_source(wf)

        def present(i: int) -> bool:
            try:
                return src.layout.local(i) < src.unit(src.file_of(i)).nframes
            except (OSError, ValueError, KeyError, RuntimeError):
                return False
        return present

    try:
        src = Hdf5Frames(*split_spec(wf.inputs.frames))  # not the per-process cache: the file may have grown
    except (OSError, ValueError, KeyError, RuntimeError):
        return lambda i: False

    def there(i: int) -> bool:  # in a data file that is there and readable (a bad file: its frames only)
        seg = src.segments[int(src.map.segment[i])] if i < src.nframes and int(src.map.segment[i]) >= 0 else None
        return seg is not None and not seg.missing and not seg.flag
    return there
