"""Reprocess finished runs: a new store from a run's own workflow and provenance, plus changes.

The stored workflow (root attr ``workflow``) is the recipe; ``--set key=value`` changes it.  Each
key belongs to the first stage it affects:

    inputs.*, scan.*, geometry.*, integrate.*, store.omega_chunk, store.q_chunk  -> integrate
    sinogram.*, recon.*                                                         -> recon
    pdf.*                                                                       -> pdf
    compute.*, store.path, store.overwrite                                      -> none (how/where, not what)

The new store reruns from the earliest changed stage (or ``from_stage``, if earlier).  Stages
upstream of it are not recomputed: their chunk files and done-markers are hard-linked from the
parent (:func:`xrdct_dask.runs.links.link_group`: no bytes copied, and the parent is never written),
so the usual resume logic of :func:`xrdct_dask.runs.execute.execute` runs exactly the downstream
tasks.  A recon or pdf rerun therefore needs neither the frames nor the PONI: the q grid,
wavelength and monitor reference come from the parent.  The new store records ``parent``
(path, workflow and work digests) and ``reprocess`` (what changed, from which stage, what was
reused).  Several runs are reprocessed as one graph (one :func:`~xrdct_dask.runs.execute.execute`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from xrdct_dask import store
from xrdct_dask.config import Workflow, WorkflowError, changed_keys, flatten, workflow_from_dict
from xrdct_dask.pdf import PDFParameterError, operator_for, radial_to_q_A
from xrdct_dask.pipeline.stages import before_step, reprocess_steps, step_of_key
from xrdct_dask.runs.connect import Connection
from xrdct_dask.runs.execute import execute
from xrdct_dask.runs.inputs import check_recon_engine, input_files
from xrdct_dask.runs.links import link_group
from xrdct_dask.runs.open import (
    absorption_store_args,
    context_from_store,
    open_run,
    pdf_store_args,
    report_leftovers,
    store_markers,
    view_store_args,
)
from xrdct_dask.runs.sectors import sector_store_args
from xrdct_dask.view.console import console

log = logging.getLogger(__name__)

def stage_of(key: str) -> str:
    """The reprocess step a change of workflow ``key`` reruns from (the stage table's ``keys``)."""
    step = step_of_key(key)
    if step is None:
        raise WorkflowError(f"{key}: no stage depends on this key")
    return step


def first_stage(keys) -> str | None:
    steps = {stage_of(k) for k in keys}
    return next((s for s in reprocess_steps() if s in steps), None)


@dataclass
class Reprocess:
    """What :func:`plan_reprocess` decided for one parent run."""

    parent: Path
    out: Path
    workflow: Workflow
    changed: dict[str, list]  # dotted key -> [old, new]
    start: str  # a reprocess step: integrate | recon | pdf

    @property
    def kept(self) -> list:
        """The stages before the start: their arrays and markers are shared with the parent."""
        return before_step(self.workflow, self.start)

    @property
    def reused(self) -> list[str]:
        """The store groups shared with the parent: every group the kept stages write."""
        return list(dict.fromkeys(a.split("/")[0] for st in self.kept for a in st.writes))


def changed_inputs(recorded: dict, wf: Workflow) -> dict[str, list]:
    """Input files whose contents differ from what the parent recorded: ``{"inputs.poni (contents)":
    [old sha256[:12], new]}``.  Files that are gone are not compared (a recon or pdf rerun needs
    neither the frames nor the PONI)."""
    out = {}
    for key, p in input_files(wf).items():
        if key in recorded and p.is_file() and str(p) == recorded[key].get("path"):
            now = store.file_digest(p)
            if now != recorded[key].get("sha256"):
                out[f"{key} (contents)"] = [recorded[key]["sha256"][:12], now[:12]]
    return out


def plan_reprocess(parent: str | Path, overrides: dict | None = None, from_stage: str | None = None,
                   out: str | Path | None = None) -> Reprocess:
    """Decide the new workflow, what changed and where to start, for one parent store."""
    parent = Path(parent)
    steps = reprocess_steps()
    if from_stage is not None and from_stage not in steps:
        raise WorkflowError(f"--from must be one of {', '.join(steps)} (got {from_stage!r})")
    try:
        attrs = store.run_attrs(parent)
    except ValueError as err:
        raise WorkflowError(str(err)) from None
    overrides = dict(overrides or {})
    for k in overrides:
        if k in ("store", "store.path", "store.overwrite"):
            raise WorkflowError(f"--set {k}: the new store's path is --out, and it is never overwritten")
    old = attrs["workflow"]
    wf = workflow_from_dict(old, overrides=overrides, source=f"{parent} (stored workflow)")
    if out is None:
        out = parent.with_name(f"{parent.stem}-{wf.work_digest()[:8]}.zarr")
    out = Path(out).resolve()
    if out == parent.resolve() or parent.resolve() in out.parents:
        raise WorkflowError(f"--out: {out} lies inside the parent store {parent}: choose a path outside it")
    wf = workflow_from_dict(old, overrides={**overrides, "store.path": str(out), "store.overwrite": False},
                            source=f"{parent} (stored workflow)")
    flat_old, flat_new = flatten(old), flatten(wf.model_dump(mode="json"))
    changed = {k: [flat_old.get(k), flat_new.get(k)] for k in changed_keys(old, wf.model_dump(mode="json"))}
    changed |= changed_inputs(attrs.get("input_contents") or {}, wf)
    candidates = [s for s in (first_stage(changed), from_stage) if s is not None]
    if not candidates:
        raise WorkflowError(f"{parent}: nothing to reprocess: the overrides change no stage's parameters "
                            f"(use --from {'|'.join(steps)} to rerun anyway)")
    start = min(candidates, key=steps.index)
    if start != steps[0]:
        state = store.task_state(parent)
        # the stages (with markers) upstream of the start must be whole: their chunks are shared
        need = [st.name for st in before_step(wf, start) if st.marker]
        missing = [k for k in need if state.counts()[k][0] < state.counts()[k][1]]
        if missing:
            raise WorkflowError(f"{parent}: its {', '.join(missing)} tasks are not all done: resume it first "
                                f"(xrdct run) or reprocess --from integrate")
    return Reprocess(parent=parent.resolve(), out=out, workflow=wf, changed=changed, start=start)


def prepare_child(rp: Reprocess, client=None):
    """Create (or resume) the new store of ``rp``; returns its :class:`~xrdct_dask.pipeline.context.RunContext`.
    Its template and shared chunks are written on the workers of ``client`` (a client or a
    callable making one; None: here)."""
    wf, out = rp.workflow, rp.out
    check_recon_engine(wf)
    attrs = store.root_attrs(out) if store.is_store(out) else None
    if attrs is not None and attrs.get("template_complete") and attrs.get("work_digest") == wf.work_digest() \
            and attrs.get("parent", {}).get("path") == str(rp.parent):
        return open_run(wf)  # an interrupted reprocess: resume it
    if out.exists() and (attrs is None or attrs.get("template_complete")):
        raise store.StoreExistsError(f"{out} exists: choose another --out or remove it")
    pattrs = store.read_attrs(rp.parent)
    lineage = {"parent": {"path": str(rp.parent), "workflow_digest": pattrs.get("workflow_digest"),
                          "work_digest": pattrs.get("work_digest")},
               "reprocess": {"changed": rp.changed, "from": rp.start, "reused": rp.reused,
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    if not rp.kept:
        return open_run(wf, extra_attrs=lineage, client=client)
    return _derive_store(rp, lineage, client)


def _derive_store(rp: Reprocess, lineage: dict, client=None):
    """A new store whose upstream groups share the parent's chunks (start = recon or pdf): it takes
    the parent's layout, so that the shared arrays have the same chunks."""
    wf, parent, out = rp.workflow, rp.parent, rp.out
    report_leftovers(out)  # a killed reprocess's half-built store: removed where provably stale, else said
    pattrs = store.read_attrs(parent)
    layout = store.layout_of(parent)
    coord = {n: store.open_array(parent, n, "r")[:] for n in ("q", "omega", "x", "z", "chi") if (parent / n).exists()}
    wavelength_A = float(pattrs["wavelength_angstrom"])
    r_A = op = None
    if wf.pdf.enabled:
        try:
            op = operator_for(radial_to_q_A(coord["q"], wf.integrate.unit, wavelength_A), wf.pdf)
        except PDFParameterError as err:
            raise WorkflowError(str(err)) from None
        r_A = op.r_A
    s = wf.scan
    keep = ("monitor_reference", "wavelength_angstrom", "poni", "input_contents", "frame_sample", "engine")
    attrs = {k: pattrs[k] for k in keep if k in pattrs} | {
        "workflow": wf.model_dump(mode="json"), "workflow_yaml": wf.to_yaml(), "workflow_digest": wf.digest(),
        "work_digest": wf.work_digest(), "versions": store.versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")} | lineage
    try:
        store.check_writable(out.parent)
    except store.StoreWriteError as err:
        raise WorkflowError(f"--out: cannot create {out}: {err.strerror}") from None

    rows = store.background_rows_of(parent)  # the parent's measured background is shared with the rest of reduced/

    def build(tmp):
        store.create_store(tmp, nz=s.nz, nomega=s.nomega, nx=s.nx, radial=coord["q"], radial_unit=wf.integrate.unit,
                           omega_deg=coord["omega"], x_mm=coord["x"], z_mm=coord["z"], r_A=r_A,
                           layout=layout, attrs=attrs, markers=store_markers(wf, layout, coord["q"], r_A),
                           **pdf_store_args(wf, op), **absorption_store_args(wf),
                           **sector_store_args(wf, coord.get("chi"), coord["q"], wavelength_A),
                           **view_store_args(wf, layout, coord["q"], r_A), background_rows=rows)
        n = sum(link_group(parent, tmp, group, client=client) for group in rp.reused)
        n += link_group(parent, tmp, store.TASKS, [st.name for st in rp.kept if st.marker], client=client)
        log.info("%s: %d chunk files shared with %s", out, n, parent)
        store.mark_template_complete(tmp)
        store.consolidate(tmp)

    try:
        store.create_aside(out, build)
    except store.StoreExistsError as err:
        raise WorkflowError(str(err).replace("store.path:", "--out:")) from None
    except store.StoreWriteError as err:
        raise WorkflowError(f"--out: {err.strerror}") from None
    return context_from_store(wf, out)


def reprocess(parents: list[str | Path], overrides: dict | None = None, from_stage: str | None = None,
              out: str | Path | None = None, *, scheduler_address: str | None = None, cluster=None,
              progress: bool = True, summary: bool = True) -> list[Path]:
    """Reprocess one or more runs as one graph; returns the new stores' paths (``out`` only for one run)."""
    parents = [Path(p) for p in parents]
    if not parents:
        raise WorkflowError("no run to reprocess")
    if out is not None and len(parents) > 1:
        raise WorkflowError("--out names one store: leave it out when reprocessing several runs")
    t0 = time.perf_counter()
    plans = [plan_reprocess(p, overrides, from_stage, out) for p in parents]
    outs = [rp.out for rp in plans]
    if len(set(outs)) != len(outs):
        raise WorkflowError("two runs would be reprocessed into the same store: give them different names")
    for rp in plans:
        if progress:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in rp.changed.items()) or "nothing changed"
            console.info("%s -> %s: from %s (%s)", rp.parent, rp.out, rp.start, what)
    conn = Connection(plans[0].workflow, scheduler_address, cluster)
    try:
        ctxs = [prepare_child(rp, conn.get) for rp in plans]  # links / copies on the workers
        execute(ctxs, connection=conn, progress=progress, summary=summary, t0=t0)
    finally:
        conn.close()
    return outs
