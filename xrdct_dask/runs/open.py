"""Prepare a run: check its inputs, create (or resume) its store, and give the run's context.

Nothing is computed here but what the store's template needs (the radial axis, the PDF's r grid,
the frame indices and monitor of every scan point).  A run's identity is its workflow plus the
contents of its input files (:func:`input_contents`) and a sample of its frames' sizes
(:func:`frame_sample`); a store is resumed only by the same work, created beside its final path
and renamed into place (:func:`xrdct_dask.store.safety.create_aside`), and never replaces anything but a
store of this program.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from xrdct_dask import store
from xrdct_dask.backend import resolve_engine
from xrdct_dask.config import Workflow, WorkflowError, changed_keys
from xrdct_dask.io.status import REREAD_WHEN_WHOLE, FrameStatus
from xrdct_dask.pdf import PDFParameterError, operator_for, radial_to_q_A
from xrdct_dask.pdf.background import load_background
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.integrator import plan_for
from xrdct_dask.pipeline.stages import (
    FRAMES_STAGE,
    Sizes,
    downstream,
    marker_specs,
    reopen_slice,
    view_layout_of,
)
from xrdct_dask.pipeline.tasks_pdf import pdf_aux_channels
from xrdct_dask.runs.background import background_rows, integrate_background_scan
from xrdct_dask.runs.inputs import (
    check_inputs,
    check_recon_engine,
    check_same_inputs,
    frame_sample,
    frames_present,
    input_contents,
    input_files,
)
from xrdct_dask.runs.scanlayout import ScanLayout, scan_layout, write_scan_arrays
from xrdct_dask.runs.sectors import sector_store_args
from xrdct_dask.store.budget import Layout, choose_layout, task_memory
from xrdct_dask.store.specs import MarkerSpec
from xrdct_dask.store.viewcopy import view_group_attrs, view_specs
from xrdct_dask.view.console import console

log = logging.getLogger(__name__)


def prepare_store(wf: Workflow, ai, extra_attrs: dict | None = None, client=None) -> RunContext:
    """Create the store template beside ``store.path``, fill the monitor and frame indices, and
    rename it into place (:func:`store.create_aside`); return the :class:`RunContext`.
    ``extra_attrs`` go to the root with the others (e.g. a reprocessed run's lineage).  The
    per-frame arrays are written slab by slab on the workers of ``client`` (a client or a callable
    making one; None: here), :func:`write_scan_arrays`."""

    plan = plan_for(wf)  # the plan is cached for the workers; no engine is built here
    radial = plan.radial
    wavelength_A = (ai.wavelength or 0) * 1e10
    sectors = sector_store_args(wf, plan.azimuthal, radial, wavelength_A)  # texture peaks checked: nothing written yet
    if wf.sources:  # keys an inputs.pyfai_config gave, and those the workflow set over it
        console.info("from inputs.pyfai_config %s:\n  %s", wf.inputs.pyfai_config, "\n  ".join(wf.sources))
    r_A = op = None
    if wf.pdf.enabled:

        if wf.integrate.unit == "2th_deg" and not wavelength_A > 0:
            raise WorkflowError("inputs.poni: no wavelength in the PONI, needed to turn 2th_deg into Q for the PDF")
        try:
            op = operator_for(radial_to_q_A(radial, wf.integrate.unit, wavelength_A), wf.pdf)
            if wf.pdf.background == "file":
                assert wf.pdf.background_file is not None  # the schema: background: file needs background_file
                load_background(wf.pdf.background_file, radial)
        except PDFParameterError as err:
            raise WorkflowError(str(err)) from None
        r_A = op.r_A
    try:
        lay = scan_layout(wf, client)
    except WorkflowError:
        raise
    except ValueError as err:
        raise WorkflowError(f"inputs.scan_file: {err}") from None
    try:
        return _prepare_store(wf, ai, lay, radial, wavelength_A, r_A, op, extra_attrs, client, sectors)
    finally:
        lay.close()


def _prepare_store(wf: Workflow, ai, lay: ScanLayout, radial, wavelength_A, r_A, op, extra_attrs, client, sectors):
    s = wf.scan
    path = Path(wf.store.path)
    if lay.grid is not None and lay.grid.duplicates():
        log.warning("%d scan points recorded twice; the last record is used", lay.grid.duplicates())
    reference = lay.monitor_reference(wf, client)
    # integrated before the store exists: a background frame that cannot be read stops the run here
    background = integrate_background_scan(wf, reference) if wf.inputs.background_scan is not None else None
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
        **({"workflow_sources": wf.sources} if wf.sources else {}),
    } | (extra_attrs or {})

    layout = layout_for(wf, radial.size, 0 if r_A is None else r_A.size)

    def build(tmp: Path) -> None:
        store.create_store(tmp, nz=s.nz, nomega=s.nomega, nx=s.nx, radial=radial, radial_unit=wf.integrate.unit,
                           omega_deg=lay.omega_deg, x_mm=lay.x_mm, z_mm=lay.z_mm,
                           r_A=r_A, layout=layout, attrs=attrs, markers=store_markers(wf, layout, radial, r_A),
                           **pdf_store_args(wf, op), **absorption_store_args(wf), **sectors,
                           **view_store_args(wf, layout, radial, r_A), background_rows=background_rows(wf))
        if background is not None:
            store.open_array(tmp, f"{store.REDUCED}/background")[...] = background
            store.open_array(tmp, f"{store.REDUCED}/background_total")[...] = np.nansum(background, axis=-1)
        late = write_scan_arrays(tmp, wf, lay, client)
        if late:
            log.warning("%d frames arrived out of the scan's order; placed by the scan file", late)
        store.mark_template_complete(tmp)
        store.consolidate(tmp)

    try:
        store.create_aside(path, build, input_files(wf))
    except store.StoreWriteError as err:
        raise WorkflowError(f"store.path: {err.strerror}") from None
    return RunContext(workflow=wf, store_path=path, monitor_reference=reference, wavelength_A=wavelength_A,
                             layout=layout, check_md5=wf.inputs.check_md5, read_threads=wf.compute.read_threads)


def layout_for(wf: Workflow, nq: int, nr: int) -> Layout:
    """The block sizes of a new store of ``wf`` (:func:`xrdct_dask.store.budget.choose_layout` within
    :func:`xrdct_dask.store.budget.task_memory`)."""
    s = wf.scan
    return choose_layout(nomega=s.nomega, nx=s.nx, nq=nq, nr=nr, omega_chunk=wf.store.omega_chunk,
                         q_chunk=wf.store.q_chunk, r_chunk=wf.pdf.r_chunk, budget=task_memory(wf.compute),
                         pdf_order=wf.pdf.order)


def store_markers(wf: Workflow, layout: Layout, radial, r_A) -> list[MarkerSpec]:
    """The done-markers of a new store of ``wf`` (the stage table's, sized by its bins and blocks)."""
    return marker_specs(wf, Sizes.of(wf, nq=len(radial), nr=0 if r_A is None else len(r_A), layout=layout))


def view_store_args(wf: Workflow, layout: Layout, radial, r_A) -> dict:
    """:func:`store.create_store` arguments of the view copy (``view.write_copy``): its arrays and
    the ``view`` group's attrs (its layout)."""
    vl = view_layout_of(wf, layout, len(radial), 0 if r_A is None else len(r_A))
    if vl is None:
        return {}
    return {"extra_specs": view_specs(wf.scan.nz, vl), "group_attrs": {store.VIEW: view_group_attrs(vl)}}


def absorption_store_args(wf: Workflow) -> dict:
    """:func:`store.create_store` arguments of the transmission channel and the attenuation maps."""
    return {"transmission": wf.inputs.transmission is not None, "absorption": wf.sinogram.absorption != "off"}


def pdf_store_args(wf: Workflow, op) -> dict:
    """:func:`store.create_store` arguments of the PDF: the aux channels of the pdf-then-recon order,
    and the transform's parameters for the ``pdf`` group's attrs."""
    if op is None:
        return {}
    p = wf.pdf
    return {"aux_channels": pdf_aux_channels(op) if p.order == "pdf-then-recon" else None,
            "pdf_attrs": {"transform": "PDFgetX3 ad hoc (xrdct_dask.pdf)", **op.params,
                          "order": p.order, "normalization": p.normalization, "scale": p.scale,
                          "background": p.background, "bgscale": p.bgscale,
                          "background_file": str(p.background_file) if p.background_file else None,
                          "units": {"Q": "1/angstrom", "r": "angstrom", "G": "1/angstrom^2",
                                    "lowr_slope": "1/angstrom^3", "fq_highq_rms": "1/angstrom"}}}


def context_from_store(wf: Workflow, path) -> RunContext:
    """The :class:`RunContext` of an existing store (resume, reprocess): its layout too."""
    attrs = store.read_attrs(path)
    return RunContext(workflow=wf, store_path=Path(path), monitor_reference=float(attrs["monitor_reference"]),
                             wavelength_A=float(attrs["wavelength_angstrom"]), layout=store.layout_of(path),
                             check_md5=wf.inputs.check_md5, read_threads=wf.compute.read_threads)


def open_run(wf: Workflow, overwrite: bool | None = None, extra_attrs: dict | None = None,
             client=None) -> RunContext:
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
    check_recon_engine(wf)
    report_leftovers(path)
    attrs = store.root_attrs(path) if store.is_store(path) else None
    if attrs is not None and attrs.get("template_complete") and not overwrite:
        if attrs.get("work_digest") != wf.work_digest():
            changed = changed_keys(attrs.get("workflow", {}), wf.model_dump(mode="json"))
            raise store.StoreExistsError(
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


def _resume(wf: Workflow, path: Path) -> RunContext:
    try:
        store.check_writable(path)
    except store.StoreWriteError as err:
        raise WorkflowError(f"store.path: {err.strerror}") from None
    ctx = context_from_store(wf, path)
    state = store.task_state(path)
    frames, blocks = reopen_retried(ctx, state)
    if blocks:  # said only when something is redone, as the run's other messages are
        console.warning("%s: %d frames missing or unreadable before are there now: read again (%d blocks redone)",
                        path, frames, blocks)
        state = store.task_state(path)
    if not state[FRAMES_STAGE].all():
        check_inputs(wf)
    log.info("resuming %s: %s", path, ", ".join(f"{k} {d}/{t} done" for k, (d, t) in state.counts().items()))
    return ctx


def reopen_retried(ctx: RunContext, state: store.TaskState) -> tuple[int, int]:
    """Clear the done-markers of integrated blocks holding frames worth reading again: an I/O error,
    or a frame missing, not a regular file or partly written when it was read (a run during the
    acquisition) whose file is whole now (:data:`~xrdct_dask.io.status.REREAD_WHEN_WHOLE`).  The
    markers of the slice's later stages (centre, reconstruction, G(r)) are cleared too: they are
    made from those blocks.
    Returns ``(frames, blocks)`` reopened.  Read slice by slice."""

    wf = ctx.workflow
    wc = ctx.layout.omega_chunk
    done = state[FRAMES_STAGE]
    red = ctx.store_path / store.REDUCED
    status_arr = store.open_array(red, "frame_status", "r")
    index_arr = store.open_array(red, "frame_index", "r")
    frames = blocks = 0
    for z in np.nonzero(done.any(axis=1))[0]:
        st = status_arr[z]
        retry = st == FrameStatus.IO_ERROR
        late = np.isin(st, [int(c) for c in REREAD_WHEN_WHOLE])
        missing = np.argwhere(late & done[z].repeat(wc)[:st.shape[0], None])
        if missing.size:
            idx = index_arr[z]
            arrived = frames_present(wf)
            for w, x in missing:
                if idx[w, x] >= 0 and arrived(int(idx[w, x])):
                    retry[w, x] = True
        rows = np.nonzero(retry.any(axis=1))[0]
        reopen = sorted({int(w) // wc for w in rows if done[z, int(w) // wc]})
        if not reopen:
            continue
        for b in reopen:
            store.mark_done(ctx.store_path, FRAMES_STAGE, (int(z), b), 0)
        for later in downstream(wf, FRAMES_STAGE):  # every marker of the slice made from those blocks
            reopen_slice(ctx.store_path, wf, int(z), later.name)
        frames += int(retry.sum())
        blocks += len(reopen)
    return frames, blocks


def report_leftovers(path) -> None:
    """Remove the half-built stores killed runs left beside ``path`` where they are provably this
    program's and stale (:func:`store.clean_leftovers`), and say so; say what is left."""
    removed, kept = store.clean_leftovers(path)
    for left in removed:
        log.warning("%s: removed (a half-built store of a run that was stopped)", left)
    for left in kept:
        log.warning("%s: left by a run stopped while creating or replacing %s; remove it", left, path)


