"""Run a workflow: check inputs, create the store, build ONE dask graph, compute it with progress.

    decode-integrate (z, omega block) --> sinogram (z) --> recon (z, q block) --> pdf (z)

or, with ``pdf.order: pdf-then-recon``, a branch of the same graph:

    decode-integrate (z, omega block) --> pdf-frames (z, omega block) --> pdf-aux (z) --> pdf (z, r block)
    center (z) --> pdf-aux (z), pdf (z, r block)     (the G(r) sinograms use the slice's rotation axis)

Each arrow is a dependency inside the same graph: reconstruction of a slice starts as soon as
its frames are integrated, while other slices are still being integrated.  Task keys start with
the stage name (``("recon", z, q0)``), which is what the dask dashboard groups and colours by.
Where workers advertise a ``GPU`` resource (GPU profiles in ``cluster/``), the GPU stages
(:data:`GPU_STAGES`) ask for one, so a GPU runs one such task at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from . import stages, store
from .config import Workflow, WorkflowError, load_workflow
from .io.cbf import CorruptFrameError, read_cbf_payload

log = logging.getLogger(__name__)

STAGE_ORDER = ("decode-integrate", "sinogram", "recon", "pdf-frames", "pdf")  # dependency order of the graph's stages
FRAMES_PROBED = 64  # check_inputs takes the frame shape from the first readable of these


class RunStopped(RuntimeError):
    """The run cannot go on (the store cannot be written); what is marked done is whole."""


def check_inputs(wf: Workflow):
    """Fail fast, before any compute, with one line naming the problem.

    Returns ``(ai, frame_shape)``.
    """
    from .integrate.csr import load_image, load_poni

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
    # the frame shape: the first readable frame of the PONI's shape (else the first readable one);
    # a missing or broken frame among them is flagged by its task later, not fatal here
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


def input_files(wf: Workflow) -> dict[str, Path]:
    """The run's inputs by workflow key (the frames by their folder): what a store must never hold."""
    i = wf.inputs
    out = {"inputs.frames": wf.frame_path(0).parent}
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


def frame_sample(wf: Workflow) -> dict:
    """Sizes in bytes (-1: no file) of up to ``FRAMES_SAMPLED`` frames spread over the scan."""
    n = wf.scan.nframes
    idx = np.unique(np.linspace(0, n - 1, min(FRAMES_SAMPLED, n)).astype(np.int64))
    sizes = []
    for i in idx:
        try:
            sizes.append(os.stat(wf.frame_path(int(i))).st_size)
        except OSError:
            sizes.append(-1)
    return {"index": idx.tolist(), "bytes": sizes}


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
        for i, was in zip(sample["index"], sample["bytes"]):
            if was < 0:
                continue
            try:
                size = os.stat(wf.frame_path(int(i))).st_size
            except OSError:
                continue  # gone now: its block, if not done yet, flags it missing
            if size != was:
                raise WorkflowError(f"inputs.frames: {wf.frame_path(int(i))} is {size} bytes, {was} when {path} "
                                    f"was created: the frames changed; {hint}")


def _monitor(wf: Workflow, nframes: int) -> np.ndarray:
    from .io.scan import read_monitor

    try:
        return read_monitor(wf.inputs.monitor, nframes)
    except ValueError as err:
        raise WorkflowError(f"inputs.monitor: {err}") from None


def prepare_store(wf: Workflow, ai, extra_attrs: dict | None = None) -> stages.RunContext:
    """Create the store template beside ``store.path``, fill the monitor and frame indices, and
    rename it into place (:func:`store.create_aside`); return the :class:`stages.RunContext`.
    ``extra_attrs`` go to the root with the others (e.g. a reprocessed run's lineage)."""
    from .io.scan import grid_index, read_scan_file
    from .pdf import PDFParameterError, operator_for

    s = wf.scan
    integ = stages.integrator_for(wf)
    radial = integ.radial
    wavelength_A = (ai.wavelength or 0) * 1e10
    r_A = op = None
    if wf.pdf.enabled:
        from .pdf.background import load_background

        if wf.integrate.unit == "2th_deg" and not wavelength_A > 0:
            raise WorkflowError("inputs.poni: no wavelength in the PONI, needed to turn 2th_deg into Q for the PDF")
        try:
            op = operator_for(stages.radial_to_q_A(radial, wf.integrate.unit, wavelength_A), wf.pdf)
            if wf.pdf.background == "file":
                load_background(wf.pdf.background_file, radial)
        except PDFParameterError as err:
            raise WorkflowError(str(err)) from None
        r_A = op.r_A
    omega = np.arange(s.nomega) * (s.omega_range_deg / s.nomega)
    path = Path(wf.store.path)
    flags = grid = None
    if wf.inputs.scan_file is not None:
        try:
            grid, dup = read_scan_file(wf.inputs.scan_file, s.nz, s.nomega, s.nx)
        except ValueError as err:
            raise WorkflowError(f"inputs.scan_file: {err}") from None
        if dup.any():
            log.warning("%s: %d scan points recorded twice; the last record is used", wf.inputs.scan_file, dup.sum())
        flags = _scan_flags(grid, dup, s)
    iw, ix = np.indices((s.nomega, s.nx))

    def grid_of(z: int) -> np.ndarray:  # acquisition indices of slice z; the scan arithmetic slab by slab
        return grid[z] if grid is not None else grid_index(z, iw, ix, s.nomega, s.nx, s.fast_axis, s.order)

    mon = None
    if wf.inputs.monitor is not None:
        mon = _monitor(wf, s.nframes if grid is None else int(grid.max()) + 1)
        used = mon if grid is None else mon[grid[grid >= 0]]  # every frame, or those the scan file places
        good = used[np.isfinite(used) & (used > 0)]
        reference = float(np.median(good)) if good.size else 1.0
    else:
        reference = 1.0

    def monitor_of(z: int) -> np.ndarray:
        g = grid_of(z)
        return np.ones(g.shape) if mon is None else np.where(g >= 0, mon[np.clip(g, 0, None)], np.nan)
    attrs = {
        "workflow": wf.model_dump(mode="json"),
        "workflow_yaml": wf.to_yaml(),
        "workflow_digest": wf.digest(),
        "work_digest": wf.work_digest(),
        "versions": store.versions(),
        "input_contents": input_contents(wf),
        "frame_sample": frame_sample(wf),
        "engine": integ.engine,
        "monitor_reference": reference,
        "wavelength_angstrom": wavelength_A,
        "poni": {k: v for k, v in ai.get_config().items() if k != "detector_config"} | {"detector": ai.detector.name},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    } | (extra_attrs or {})

    def build(tmp: Path) -> None:
        store.create_store(tmp, nz=s.nz, nomega=s.nomega, nx=s.nx, radial=radial, radial_unit=wf.integrate.unit,
                           omega_deg=omega, x_mm=np.arange(s.nx) * s.x_step_mm, z_mm=np.arange(s.nz) * s.z_step_mm,
                           r_A=r_A, omega_chunk=wf.store.omega_chunk, q_chunk=wf.store.q_chunk, attrs=attrs,
                           r_chunk=wf.pdf.r_chunk)
        if op is not None:
            create_pdf_arrays(wf, tmp, op)
        mon_arr = store.open_array(tmp, f"{store.REDUCED}/monitor")
        idx_arr = store.open_array(tmp, f"{store.REDUCED}/frame_index")
        for z in range(s.nz):  # slab by slab: the client never holds (nz, nomega, nx) arrays it did not read
            mon_arr[z] = monitor_of(z).astype(np.float32)
            idx_arr[z] = grid_of(z)
        if flags is not None:
            store.open_array(tmp, f"{store.REDUCED}/scan_flag")[...] = flags
        store.mark_template_complete(tmp)
        store.consolidate(tmp)

    try:
        store.create_aside(path, build, input_files(wf))
    except store.StoreWriteError as err:
        raise WorkflowError(f"store.path: {err.strerror}") from None
    return stages.RunContext(workflow=wf, store_path=path, monitor_reference=reference, wavelength_A=wavelength_A,
                             check_md5=wf.inputs.check_md5, read_threads=wf.compute.read_threads)


def create_pdf_arrays(wf: Workflow, path, op) -> None:
    """The ``pdf/`` arrays next to G (figures; the sinograms of the pdf-then-recon order) and the
    transform's parameters in the group's attrs."""
    s, p = wf.scan, wf.pdf
    store.create_pdf_arrays(path, nz=s.nz, nomega=s.nomega, nx=s.nx, nr=op.r_A.size,
                            omega_chunk=wf.store.omega_chunk, r_chunk=p.r_chunk,
                            sinograms=p.order == "pdf-then-recon", aux_channels=stages.pdf_aux_channels(op),
                            attrs={"transform": "PDFgetX3 ad hoc (xrdct_dask.pdf)", **op.params,
                                   "order": p.order, "normalization": p.normalization, "scale": p.scale,
                                   "background": p.background, "bgscale": p.bgscale,
                                   "background_file": str(p.background_file) if p.background_file else None,
                                   "units": {"Q": "1/angstrom", "r": "angstrom", "G": "1/angstrom^2",
                                             "lowr_slope": "1/angstrom^3", "fq_highq_rms": "1/angstrom"}})


def _scan_flags(grid: np.ndarray, dup: np.ndarray, s) -> np.ndarray:
    """int8 ``(nz, nomega, nx)``: DUPLICATE where the scan file records a point twice, OUT_OF_ORDER
    where it places a frame elsewhere than the scan arithmetic (fast axis, snake) would, else 0."""
    from .io.scan import grid_index
    from .io.status import FrameStatus

    flags = np.zeros(grid.shape, np.int8)
    iw, ix = np.indices(grid.shape[1:])
    for z in range(grid.shape[0]):  # slab by slab: no (nz, nomega, nx) temporaries
        expected = grid_index(z, iw, ix, s.nomega, s.nx, s.fast_axis, s.order)
        flags[z][(grid[z] >= 0) & (grid[z] != expected)] = FrameStatus.OUT_OF_ORDER
    flags[dup] = FrameStatus.DUPLICATE
    n = int((flags == FrameStatus.OUT_OF_ORDER).sum())
    if n:
        log.warning("%d frames arrived out of the scan's order; placed by the scan file", n)
    return flags


def context_from_store(wf: Workflow, path) -> stages.RunContext:
    """The :class:`stages.RunContext` of an existing store (resume, reprocess)."""
    attrs = store.read_attrs(path)
    return stages.RunContext(workflow=wf, store_path=Path(path), monitor_reference=float(attrs["monitor_reference"]),
                             wavelength_A=float(attrs["wavelength_angstrom"]), check_md5=wf.inputs.check_md5,
                             read_threads=wf.compute.read_threads)


def open_run(wf: Workflow, overwrite: bool | None = None, extra_attrs: dict | None = None) -> stages.RunContext:
    """The store of ``wf``, resumed or created, and its context; nothing is computed.

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
    for left in store.leftovers(path):
        log.warning("%s: left by a run stopped while creating or replacing %s; remove it", left, path)
    attrs = store.root_attrs(path) if store.is_store(path) else None
    if attrs is not None and attrs.get("template_complete") and not overwrite:
        if attrs.get("work_digest") != wf.work_digest():
            from .reprocess import changed_keys

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
    return prepare_store(wf, ai, extra_attrs)


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


def reopen_retried(ctx: stages.RunContext, state: store.TaskState) -> tuple[int, int]:
    """Clear the done-markers of integrated blocks holding frames worth reading again: an I/O error,
    or a missing frame whose file exists now (:data:`~xrdct_dask.io.status.RETRIED`).  The
    slice's centre, reconstruction and G(r) are cleared too: they are made from those blocks.
    Returns ``(frames, blocks)`` reopened.  Read slice by slice."""
    from .io.status import FrameStatus

    wf = ctx.workflow
    wc = wf.store.omega_chunk
    red = ctx.store_path / store.REDUCED
    status_arr = store.open_array(red, "frame_status", "r")
    index_arr = store.open_array(red, "frame_index", "r")
    frames = blocks = 0
    for z in np.nonzero(state.integrate.any(axis=1))[0]:
        st = status_arr[z]
        retry = st == FrameStatus.IO_ERROR
        missing = np.argwhere((st == FrameStatus.MISSING) & state.integrate[z].repeat(wc)[:st.shape[0], None])
        if missing.size:
            idx = index_arr[z]
            for w, x in missing:
                if idx[w, x] >= 0 and wf.frame_path(int(idx[w, x])).is_file():
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


def build_graph(ctx: stages.RunContext, zs=None, done: store.TaskState | None = None, token: str = "") -> dict:
    """The run (or slices ``zs`` of it) as dask delayed objects, keyed by stage: ``{stage: [delayed, ...]}``.

    With ``done`` (:func:`store.task_state`), tasks whose done-marker is set are left out: a slice
    whose blocks are all integrated reuses its stored centre, and so on down the chain.  ``token``
    suffixes the task names so that several runs (or a rerun) never share a key on a scheduler.
    """
    import dask

    wf = ctx.workflow
    s = wf.scan
    nq = int(store.open_array(ctx.store_path, "q", "r").shape[0])
    wc, qc = wf.store.omega_chunk, wf.store.q_chunk
    sfx = f"-{token}" if token else ""
    out = {"decode-integrate": [], "sinogram": [], "recon": [], "pdf": []}
    for z in range(s.nz) if zs is None else zs:
        blocks = [store.FrameBlock(z, w, min(w + wc, s.nomega)) for w in range(0, s.nomega, wc)]
        if done is not None:
            blocks = [b for b in blocks if not done.integrate[z, b.omega_start // wc]]
        integ = [dask.delayed(stages.integrate_block, pure=False)(b, ctx, dask_key_name=(b.key[0] + sfx,) + b.key[1:])
                 for b in blocks]
        out["decode-integrate"] += integ
        # a resumed slice reuses its stored centre, unless its preparation also needs the slice's
        # jitter shifts or stripe columns (found with the centre, not stored)
        reuse = not (wf.sinogram.jitter or wf.sinogram.stripes)
        if done is not None and not integ and reuse and np.isfinite(done.center[z]):
            center = float(done.center[z])
        else:
            center = dask.delayed(stages.find_center, pure=False)(z, ctx, *integ, dask_key_name=("sinogram" + sfx, z))
            out["sinogram"].append(center)
        qbs = [qs for qs in store.q_blocks(nq, qc) if done is None or not done.recon[z, qs.start // qc]]
        rz = [dask.delayed(stages.reconstruct_block, pure=False)(z, qs, center, ctx,
                                                                  dask_key_name=("recon" + sfx, z, qs.start))
              for qs in qbs]
        out["recon"] += rz
        if not wf.pdf.enabled or (done is not None and done.pdf is not None and done.pdf[z]):
            continue
        if wf.pdf.order == "recon-then-pdf":
            out["pdf"].append(dask.delayed(stages.pdf_slice, pure=False)(z, ctx, *rz, dask_key_name=("pdf" + sfx, z)))
            continue
        # pdf-then-recon: transform every frame, reconstruct N + quality figures, then the G blocks;
        # the edge background needs the slice's first/last x steps of every angle (after the centre)
        all_blocks = [store.FrameBlock(z, w, min(w + wc, s.nomega)) for w in range(0, s.nomega, wc)]
        after = [center] if (wf.pdf.background == "edge" or not integ) else integ
        fz = [dask.delayed(stages.pdf_frames_block, pure=False)(
            b, ctx, *after, dask_key_name=("pdf-frames" + sfx, b.z, b.omega_start)) for b in all_blocks]
        out.setdefault("pdf-frames", []).extend(fz)
        aux = dask.delayed(stages.reconstruct_pdf_aux, pure=False)(z, center, ctx, *fz, dask_key_name=("pdf-aux" + sfx, z))
        gz = [dask.delayed(stages.reconstruct_pdf_block, pure=False)(z, rs, center, ctx, aux,
                                                                      dask_key_name=("pdf" + sfx, z, rs.start))
              for rs in store.q_blocks(stages.pdf_operator(ctx).r_A.size, wf.pdf.r_chunk)]
        out["pdf"] += [aux] + gz + [dask.delayed(stages.mark_pdf_done, pure=False)(
            z, ctx, *gz, dask_key_name=("pdf-done" + sfx, z))]
    if "pdf-frames" in out:  # keep the dependency order of the stages
        out = {k: out[k] for k in ("decode-integrate", "sinogram", "recon", "pdf-frames", "pdf")}
    return out


def pending_tasks(ctx: stages.RunContext, done: store.TaskState) -> list[int]:
    """Tasks still to run in each slice (what :func:`build_graph` would build), from the markers alone."""
    wf = ctx.workflow
    out = []
    for z in range(wf.scan.nz):
        n_int = int((~done.integrate[z]).sum())
        n_center = int(n_int > 0 or not np.isfinite(done.center[z]))
        n_pdf = int(wf.pdf.enabled and (done.pdf is None or not done.pdf[z]))
        out.append(n_int + n_center + int((~done.recon[z]).sum()) + n_pdf)
    return out


def _worker_plugin_base():
    from distributed.diagnostics.plugin import WorkerPlugin

    return WorkerPlugin


class IntegratorPlugin(_worker_plugin_base()):
    """Distributed worker plugin: builds the workflow's integrator once per worker at start-up
    (pyFAI's sparse matrix, corrections, engine buffers), frees it at teardown."""

    name = "xrdct-integrator"

    idempotent = False

    def __init__(self, workflow: Workflow, unique: bool = False, gpu_only: bool = False):
        self.workflow = workflow
        self.gpu_only = gpu_only  # decode-integrate tasks need a GPU worker: the others need no integrator
        if unique:  # several workflows in one graph: one plugin each
            self.name = f"xrdct-integrator-{workflow.digest()[:12]}"

    def setup(self, worker):
        if self.gpu_only and not dict(getattr(worker.state, "total_resources", {}) or {}).get("GPU"):
            return  # a CPU worker beside GPU workers: it runs no decode-integrate task
        integ = stages.integrator_for(self.workflow)
        integ.warm_up()  # JIT-compiled / cached kernels loaded now, not in the first task
        if hasattr(integ._impl, "warm"):  # GPU: buffers allocated and used once before the first task
            stages.warm_gpu_engine(self.workflow, integ, int(getattr(worker.state, "nthreads", 2)))
        # distributed's worker logger: this line lands in the worker's own log (a batch job's .err file)
        logging.getLogger("distributed.worker").info(
            "xrdct: decode-integrate engine %s (resources %s)", integ.engine,
            dict(getattr(worker.state, "total_resources", {}) or {}))

    def teardown(self, worker):
        stages.clear_integrators()


class RunLogPlugin(_worker_plugin_base()):
    """Distributed worker plugin for a run's logging on its workers.

    A task that cannot write the store raises :class:`~xrdct_dask.store.StoreWriteError`; the
    client stops the run with one line naming the cause, so the worker's own "Compute Failed"
    block with its traceback is left out for that exception (every other failure keeps it).
    ``level``: the level of the ``distributed`` loggers in the workers (a local cluster follows
    the client's, so a quiet command line is not interleaved with worker chatter); None leaves
    a cluster's own logging as it is."""

    name = "xrdct-run-logging"
    idempotent = False

    def __init__(self, level: int | None = None):
        self.level = level

    def setup(self, worker):
        wl = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _StoreErrorFilter) for f in wl.filters):
            wl.addFilter(_StoreErrorFilter())
        if self.level is not None:
            logging.getLogger("distributed").setLevel(self.level)


def _worker_log_level() -> int:
    """The ``distributed`` log level of a local cluster's workers: the client's, except that a
    quiet client (ERROR and above: the command line without -v) hears nothing from its workers
    but CRITICAL, since the client itself reports every failure in one line (a worker's own
    shutdown chatter, e.g. a heartbeat to a scheduler closing after Ctrl-C, is noise there)."""
    level = logging.getLogger("distributed").getEffectiveLevel()
    return logging.CRITICAL if level >= logging.ERROR else level


class _StoreErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("Compute Failed") and "StoreWriteError" in str(record.args))


def gpu_count() -> int:
    """CUDA devices visible here (0 without cupy or a driver)."""
    from .backend import cp, gpu_available

    return int(cp.cuda.runtime.getDeviceCount()) if gpu_available() else 0


GPU_GB_PER_WORKER = 20  # a GPU worker's engine holds ~13 GB: two pipelines of 128-frame batches


def workers_per_gpu_for(device: int) -> int:
    """Default GPU worker processes for a device: one per ``GPU_GB_PER_WORKER`` GB of its memory,
    1 to 4.  Several processes read frames side by side (one GIL each); on one H100/H200 four gave
    the highest graph rate (benchmarks/RESULTS.md)."""
    from .backend import cp

    total = cp.cuda.runtime.getDeviceProperties(device)["totalGlobalMem"]
    return int(min(4, max(1, total // (GPU_GB_PER_WORKER * 10**9))))


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Worker processes started inside inherit an ignored SIGINT (Python keeps an ignored SIGINT
    ignored): a Ctrl-C in the terminal reaches the client alone, which stops the run and closes the
    workers in order, instead of every worker printing its own KeyboardInterrupt traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def local_cluster(wf: Workflow, gpus: list[int] | None = None):
    """A cluster on this machine for one run.

    Without GPUs (or with ``integrate.engine: numpy``): a LocalCluster of single-threaded workers.
    With GPUs: ``compute.workers_per_gpu`` (default :func:`workers_per_gpu_for`) worker processes
    per GPU (``CUDA_VISIBLE_DEVICES`` = its GPU, resource ``GPU=1``, two threads so that one task reads and writes while another holds the
    GPU pipeline; several processes because reading and parsing frames is Python work under one
    GIL per process) plus CPU workers (resource ``CPU=1``) on the remaining cores for sinograms,
    reconstruction and PDF.  ``gpus``: the device numbers to use (default: all of them).
    """
    import os

    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    c = wf.compute
    ncores = os.cpu_count() or 1
    if gpus is None:
        gpus = list(range(gpu_count())) if wf.integrate.engine in ("auto", "cupy") else []
    ngpu = len(gpus)
    if ngpu == 0:
        nworkers = c.n_workers or max(1, ncores // c.threads_per_worker)
        with _workers_ignore_sigint():
            return LocalCluster(n_workers=nworkers, threads_per_worker=c.threads_per_worker,
                                memory_limit=c.memory_limit, dashboard_address=c.dashboard_address, host="127.0.0.1")
    # GPU workers hold several GB of page-locked buffers, fixed at start-up (not growing with the
    # scan): the "auto" share of RAM would pause them for it, so they get no limit unless one is set
    gpu_limit = 0 if c.memory_limit == "auto" else c.memory_limit
    per_gpu = c.workers_per_gpu or workers_per_gpu_for(gpus[0])
    workers = {f"gpu-{i}-{k}": {"cls": Nanny, "options": {
        "nthreads": 2, "resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": str(i)}, "host": "127.0.0.1",
        "memory_limit": gpu_limit}} for i in gpus for k in range(per_gpu)}
    ncpu = c.n_workers or max(1, (ncores - 2 * ngpu * per_gpu) // c.threads_per_worker)
    workers |= {f"cpu-{k}": {"cls": Nanny, "options": {
        "nthreads": c.threads_per_worker, "resources": {"CPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": ""},
        "host": "127.0.0.1", "memory_limit": c.memory_limit}} for k in range(ncpu)}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": c.dashboard_address, "host": "127.0.0.1"}}
    with _workers_ignore_sigint():
        return SpecCluster(workers=workers, scheduler=scheduler, name="xrdct-local-gpu")


def _client(wf: Workflow, scheduler_address: str | None, cluster=None, jobs: int | None = None,
            adaptive: bool | None = None, cluster_options: dict | None = None):
    """``(client, cluster started here or None)``: a given cluster object, a running scheduler, a
    cluster profile (``cluster`` as a name/path, or ``compute.cluster``), or a cluster on this
    machine (:func:`local_cluster`)."""
    from distributed import Client

    if cluster is not None and not isinstance(cluster, (str, Path)):
        return Client(cluster), None
    if scheduler_address:
        return Client(scheduler_address), None
    c = wf.compute
    profile = cluster if cluster is not None else c.cluster
    if profile is not None:
        from .cluster import describe, make_cluster

        jc = make_cluster(profile, **(cluster_options or {}))
        n = jobs or c.jobs
        if c.adaptive if adaptive is None else adaptive:
            jc.adapt(minimum_jobs=0, maximum_jobs=n)
            log.info("cluster %s: adaptive, 0..%d jobs of %s", profile, n, describe(jc))
        else:
            jc.scale(jobs=n)
            log.info("cluster %s: %d jobs of %s", profile, n, describe(jc))
        return Client(jc), jc
    lc = local_cluster(wf)
    return Client(lc), lc


def stage_resources(client, wf: Workflow | None = None, cluster=None) -> dict[str, dict]:
    """``client.compute`` arguments of each stage: integration asks for ``GPU`` when the workers
    offer it (and the workflow does not pin the numpy engine), the other stages for ``CPU`` when
    the workers are marked so.  A dask-jobqueue cluster says what its (maybe not yet started)
    workers will advertise; otherwise the workers connected now are asked.  A CPU-only cluster
    gets no annotations at all: the same graph runs as on a laptop."""
    from .cluster import declared_resources

    declared = declared_resources(cluster) if cluster is not None and not isinstance(cluster, (str, Path)) else None
    offered: set = set()
    if declared is not None:
        offered = {k for k, v in declared.items() if v}
    else:
        for w in client.scheduler_info(n_workers=-1)["workers"].values():
            offered |= {k for k, v in (w.get("resources") or {}).items() if v}
    # half a GPU per task: two tasks share a GPU worker, each on its own pipeline of streams, so
    # one reads or writes while the other computes
    use_gpu = "GPU" in offered and (wf is None or wf.integrate.engine != "numpy")
    gpu = {"resources": {"GPU": 0.5}} if use_gpu else {}
    cpu = {"resources": {"CPU": 1}} if "CPU" in offered else {}
    return {"decode-integrate": gpu, "sinogram": cpu, "recon": cpu, "pdf-frames": cpu, "pdf": cpu}


def engine_report(results: list[dict]) -> list[str]:
    """Which engine ran where, one line per engine, from the decode-integrate task results
    (their ``engine`` and ``worker``): e.g. ``["engine cupy: 12 decode-integrate tasks on 2
    worker(s) (node01 x2)"]``."""
    from collections import Counter, defaultdict

    tasks: Counter = Counter()
    workers: dict[str, set] = defaultdict(set)
    for r in results:
        tasks[r["engine"]] += 1
        if r.get("worker"):
            workers[r["engine"]].add(r["worker"])
    lines = []
    for engine in sorted(tasks):
        hosts = Counter(a.split("://")[-1].rsplit(":", 1)[0] for a in workers[engine])
        where = ", ".join(f"{h} x{n}" if n > 1 else h for h, n in sorted(hosts.items())) or "this process"
        lines.append(f"engine {engine}: {tasks[engine]} decode-integrate tasks on {len(workers[engine]) or 1} "
                     f"worker(s) ({where})")
    return lines


def compute_with_progress(client, graph: dict, progress: bool = True) -> dict:
    """Submit every stage's tasks of one graph and wait, showing one progress bar per stage.

    Stages are routed by :func:`stage_resources`.  Returns ``{stage: [result, ...]}``; a failing
    task raises here with its key in the message.
    """
    items = [(0, k, d) for k, ds in graph.items() for d in ds]
    results: dict[str, list] = {k: [] for k in graph if graph[k]}
    for _, stage, res in compute_waves(client, [lambda: items], {k: len(v) for k, v in graph.items()}, progress,
                                       resources=stage_resources(client)):
        results[stage].append(res)
    return results


def run(workflow: Workflow | str | Path, *, overrides: dict | None = None, scheduler_address: str | None = None,
        cluster=None, jobs: int | None = None, adaptive: bool | None = None, cluster_options: dict | None = None,
        progress: bool = True, summary: bool = True) -> Path:
    """Run a whole workflow (integrate -> reconstruct -> PDF) and return the store path.

    ``workflow`` is a :class:`Workflow` or the path of its YAML file.  Without a
    ``scheduler_address`` (or ``cluster``), a LocalCluster is started for the run and closed after.
    A store left by an interrupted run of the same work is resumed: only the tasks whose
    done-marker is missing run (see :func:`open_run`).
    """
    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow, overrides)
    if overrides and isinstance(workflow, Workflow):
        from .config import workflow_from_dict

        wf = workflow_from_dict(wf.model_dump(mode="json"), overrides=overrides)
    t0 = time.perf_counter()
    profile = cluster if isinstance(cluster, (str, Path)) else (
        wf.compute.cluster if cluster is None and not scheduler_address else None)
    if profile is not None:  # a broken cluster profile fails here, before the store is created
        from .cluster import load_profile

        load_profile(profile, **(cluster_options or {}))
    ctx = open_run(wf)
    execute([ctx], scheduler_address=scheduler_address, cluster=cluster, jobs=jobs, adaptive=adaptive,
            cluster_options=cluster_options, progress=progress, summary=summary, t0=t0)
    return ctx.store_path


def pending_by_stage(ctx: stages.RunContext, done: store.TaskState) -> list[dict[str, int]]:
    """Per slice, the tasks :func:`build_graph` builds from these markers, by stage."""
    wf = ctx.workflow
    out = []
    for z in range(wf.scan.nz):
        n_int = int((~done.integrate[z]).sum())
        d = {"decode-integrate": n_int, "sinogram": int(n_int > 0 or not np.isfinite(done.center[z])),
             "recon": int((~done.recon[z]).sum())}
        if wf.pdf.enabled and (done.pdf is None or not done.pdf[z]):
            if wf.pdf.order == "recon-then-pdf":
                d["pdf"] = 1
            else:
                nb = done.integrate.shape[1]
                nrb = -(-stages.pdf_operator(ctx).r_A.size // wf.pdf.r_chunk)
                d["pdf-frames"], d["pdf"] = nb, nrb + 2  # aux + G blocks + done marker
        elif wf.pdf.enabled:
            d["pdf"] = 0
        out.append(d)
    return out


def execute(ctxs: list[stages.RunContext], *, scheduler_address: str | None = None, cluster=None,
            jobs: int | None = None, adaptive: bool | None = None, cluster_options: dict | None = None,
            progress: bool = True, summary: bool = True, t0: float | None = None) -> list[dict]:
    """Compute what is not yet done in one or more prepared stores, as one graph, and finish them.

    Slices with pending tasks (of every store together) are grouped into waves of at most
    ``compute.max_tasks / 2`` tasks (:func:`xrdct_dask.plan.waves`); two waves are in flight at a
    time.  Returns each store's run summary.  A task that cannot write the store stops the run
    with :class:`RunStopped`; every other task failure raises RuntimeError naming the task.
    """
    import uuid

    from .plan import waves

    t0 = time.perf_counter() if t0 is None else t0
    states = [store.task_state(c.store_path) for c in ctxs]
    units = [(i, z, d) for i, (c, st) in enumerate(zip(ctxs, states))
             for z, d in enumerate(pending_by_stage(c, st)) if sum(d.values())]
    groups = waves([sum(d.values()) for *_, d in units], min(c.workflow.compute.max_tasks for c in ctxs))
    totals: dict[str, int] = {}
    for *_, d in units:
        for k, v in d.items():
            totals[k] = totals.get(k, 0) + v
    token = uuid.uuid4().hex[:8]
    if progress:
        for c, st in zip(ctxs, states):
            done, total = (sum(x) for x in zip(*st.counts().values()))
            if done:
                print(f"{c.store_path}: {done} of {total} tasks already done (their chunks are kept)")

    def wave(k: int) -> list:
        by_ctx: dict[int, list[int]] = {}
        for u in groups[k]:
            i, z, _ = units[u]
            by_ctx.setdefault(i, []).append(z)
        items = []
        for i, zs in by_ctx.items():
            g = build_graph(ctxs[i], zs=zs, done=states[i], token=f"{token}{i}")
            items += [(i, stage, d) for stage, ds in g.items() for d in ds]
        return items

    results: list[dict[str, list]] = [{} for _ in ctxs]
    if units:
        client, local = _client(ctxs[0].workflow, scheduler_address, cluster, jobs, adaptive, cluster_options)
        try:
            log.info("dashboard: %s", client.dashboard_link)
            if progress:
                print(f"dask dashboard: {client.dashboard_link}")
            client.register_plugin(RunLogPlugin(_worker_log_level() if local is not None else None))
            need = {c.workflow.digest(): c.workflow for c, st in zip(ctxs, states) if not st.integrate.all()}
            resources = stage_resources(client, ctxs[0].workflow, local)
            for wf in need.values():
                client.register_plugin(IntegratorPlugin(wf, unique=len(need) > 1,
                                                        gpu_only=bool(resources["decode-integrate"])))
            for i, stage, res in compute_waves(client, [lambda k=k: wave(k) for k in range(len(groups))], totals,
                                               progress, stores=[c.store_path for c in ctxs], resources=resources):
                results[i].setdefault(stage, []).append(res)
        finally:
            client.close()
            if local is not None:
                local.close()
    wall = time.perf_counter() - t0
    return [finish_run(c, results[i], states[i], wall, progress=progress, summary=summary)
            for i, c in enumerate(ctxs)]


def compute_waves(client, wave_builders: list, totals: dict[str, int], progress: bool = True, stores=(),
                  resources: dict[str, dict] | None = None):
    """Submit waves of ``(tag, stage, delayed)`` items, two in flight, and yield ``(tag, stage,
    result)`` as tasks finish, with one progress bar per stage (``totals``: tasks per stage).

    Each wave is submitted stage by stage in :data:`STAGE_ORDER` (dependency order), with
    ``resources[stage]`` as extra ``client.compute`` arguments (e.g. ``{"resources": {"GPU": 1}}``)."""
    from collections import deque

    from distributed import as_completed

    queue = deque(wave_builders)
    meta: dict = {}
    inflight: list[set] = []
    ac = as_completed()

    def submit():
        by_stage: dict[str, list] = {}
        for tag, stage, d in queue.popleft()():
            by_stage.setdefault(stage, []).append((tag, d))
        keys = set()
        order = sorted(by_stage, key=lambda k: STAGE_ORDER.index(k) if k in STAGE_ORDER else len(STAGE_ORDER))
        for stage in order:  # the graph of a later stage holds the keys of earlier ones: submit those first
            items = by_stage[stage]
            futures = client.compute([d for _, d in items], optimize_graph=False, **(resources or {}).get(stage, {}))
            for (tag, _), f in zip(items, futures):
                meta[f.key] = (tag, stage, f)
                keys.add(f.key)
            ac.update(futures)
        inflight.append(keys)

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        bars = {k: bar.add_task(k, total=v) for k, v in totals.items() if v}
        bar.start()
    try:
        while queue and len(inflight) < 2:
            submit()
        for fut in ac:
            tag, stage, _ = meta.pop(fut.key)
            if fut.status == "error":
                exc = fut.exception()
                if isinstance(exc, OSError):
                    raise RunStopped(_stop_message(exc, fut.key, stores[tag] if stores else None)) from exc
                raise RuntimeError(f"task {fut.key} failed: {exc}") from exc
            yield tag, stage, fut.result()
            if bar is not None:
                bar.advance(bars[stage])
            for keys in inflight:
                keys.discard(fut.key)
            inflight[:] = [k for k in inflight if k]
            while queue and len(inflight) < 2:
                submit()
    except BaseException:
        client.cancel([f for *_, f in meta.values()])
        raise
    finally:
        if bar is not None:
            bar.stop()


def _stop_message(exc: OSError, key, path) -> str:
    done = ""
    if path is not None:
        try:
            counts = store.task_state(path).counts()
            done = (f"; {sum(d for d, _ in counts.values())} of {sum(t for _, t in counts.values())} tasks are "
                    f"whole and marked done, nothing else is")
        except Exception:  # the store may be unreadable too
            pass
    return (f"the store cannot be written: {exc.strerror or exc} (task {key}){done}. Free space or fix the "
            f"store's permissions, then rerun the same command to resume")


def status_counts(path) -> dict[str, int]:
    """How many frames of a store have each status (read slice by slice)."""
    from .io.status import FrameStatus

    arr = store.open_array(path, f"{store.REDUCED}/frame_status", "r")
    counts: dict[str, int] = {}
    for z in range(arr.shape[0]):
        for code, n in zip(*np.unique(arr[z], return_counts=True)):
            name = FrameStatus(int(code)).name if int(code) >= 0 else "NOT_WRITTEN"
            counts[name] = counts.get(name, 0) + int(n)
    return counts


def finish_run(ctx: stages.RunContext, results: dict, before: store.TaskState, wall: float, *,
               progress: bool = True, summary: bool = True) -> dict:
    """Stage status and run summary into the store's attrs (and the summary picture).

    The summary describes the whole store (frames integrated, their status), not only what this
    invocation computed: a resumed or repeated run reports the run, and what it added now."""
    import zarr

    after = store.task_state(ctx.store_path)
    counts = after.counts()
    full = {k: d == t for k, (d, t) in counts.items()}
    stage_done = {store.REDUCED: full["decode-integrate"], store.RECON: full["recon"] and full["sinogram"]}
    if ctx.workflow.pdf.enabled:
        stage_done[store.PDF] = full["pdf"]
    for stage, ok in stage_done.items():
        store.set_stage_status(ctx.store_path, stage, "done" if ok else "partial")
    previous = store.read_attrs(ctx.store_path).get("run_summary") or {}
    info = run_summary(results, wall, previous)
    info["engine_report"] = engine_report(results.get("decode-integrate", [])) or previous.get("engine_report", [])
    info["frame_status"] = status_counts(ctx.store_path)
    info["frames"] = sum(n for k, n in info["frame_status"].items() if k != "NOT_WRITTEN")
    info["tasks"] = {k: {"executed": len(results.get(k, [])), "skipped": d}
                     for k, (d, _) in before.counts().items()}
    zarr.open_group(str(ctx.store_path), mode="r+").attrs["run_summary"] = info
    store.consolidate(ctx.store_path)
    if progress:
        print(format_summary(info))
    if summary:
        from .summary import write_summary

        png = write_summary(ctx.store_path)
        if progress and png is not None:
            print(f"summary picture: {png}")
    return info


RUNS_KEPT = 20  # invocations listed in a store's run_summary["runs"]


def run_summary(results: dict, wall_s: float, previous: dict | None = None) -> dict:
    """This invocation's figures (frames integrated now, seconds, rate, engines, task seconds),
    with the earlier invocations of the same store listed under ``runs``."""
    integ = results.get("decode-integrate", [])
    frames = sum(r["frames"] for r in integ)
    status: dict[str, int] = {}
    for r in integ:
        for k, v in r["status"].items():
            status[k] = status.get(k, 0) + v
    previous = previous or {}
    engines = sorted({r["engine"] for r in integ} | set(previous.get("engines", [])))
    this = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "frames_integrated": frames, "wall_seconds": wall_s}
    return {"frames_this_run": frames, "frame_status_this_run": status, "wall_seconds": wall_s,
            "frames_per_second": frames / wall_s if wall_s else 0.0, "engines": engines,
            "runs": (list(previous.get("runs", [])) + [this])[-RUNS_KEPT:],
            "task_seconds": {k: float(sum(r["seconds"] for r in v if isinstance(r, dict))) for k, v in results.items()}}


def format_summary(info: dict) -> str:
    bad = {k: v for k, v in info["frame_status"].items() if k not in ("OK", "NOT_WRITTEN")}
    now, total = info["frames_this_run"], info["frames"]
    if now:
        lines = [f"{now} frames integrated in {info['wall_seconds']:.1f} s ({info['frames_per_second']:.0f} frames/s "
                 f"end to end, engine {', '.join(info['engines'])})"
                 + (f"; {total} frames in the store" if total != now else "")]
    else:
        lines = [f"all {total} frames of the store were integrated by earlier runs; {info['wall_seconds']:.1f} s now"]
    lines.append("frames flagged: " + (", ".join(f"{k.lower().replace('_', ' ')} {v}" for k, v in sorted(bad.items()))
                                       if bad else "none"))
    lines += info.get("engine_report", [])
    skipped = sum(t["skipped"] for t in info.get("tasks", {}).values())
    if skipped:
        executed = sum(t["executed"] for t in info["tasks"].values())
        lines.append(f"tasks: {skipped} already done (kept from an earlier run or the parent), {executed} ran now")
    return "\n".join(lines)
