"""Run a workflow: check inputs, create the store, build ONE dask graph, compute it with progress.

    decode-integrate (z, omega block) --> center (z) --> recon (z, q block) --> pdf (z)

or, with ``pdf.order: pdf-then-recon``, a branch of the same graph:

    decode-integrate (z, omega block) --> pdf-frames (z, omega block) --> pdf-aux (z) --> pdf (z, r block)
    center (z) --> pdf-aux (z), pdf (z, r block)     (the G(r) sinograms use the slice's rotation axis)

Each arrow is a dependency inside the same graph: reconstruction of a slice starts as soon as
its frames are integrated, while other slices are still being integrated.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import stages, store
from .config import Workflow, WorkflowError, load_workflow
from .io.cbf import CorruptFrameError, read_cbf_payload

log = logging.getLogger(__name__)


def check_inputs(wf: Workflow):
    """Fail fast, before any compute, with one line naming the problem.

    Returns ``(ai, frame_shape)``.
    """
    from .integrate.csr import load_image, load_poni

    first = wf.frame_path(0)
    if not first.parent.is_dir():
        raise WorkflowError(f"inputs.frames: folder {first.parent} does not exist")
    if not first.is_file():
        raise WorkflowError(f"inputs.frames: first frame {first} not found")
    try:
        shape = read_cbf_payload(first).shape
    except CorruptFrameError as err:
        raise WorkflowError(f"inputs.frames: {err}") from None
    try:
        ai = load_poni(wf.inputs.poni)
    except (FileNotFoundError, ValueError) as err:
        raise WorkflowError(f"inputs.poni: {err}") from None
    det_shape = ai.detector.max_shape
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


def prepare_store(wf: Workflow, ai, overwrite: bool | None = None):
    """Create the store template, fill the monitor, and return the :class:`stages.RunContext`."""
    from .io.scan import grid_index, read_monitor, read_scan_file
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
    if wf.inputs.scan_file is not None:
        grid, dup = read_scan_file(wf.inputs.scan_file, s.nz, s.nomega, s.nx)
        if dup.any():
            log.warning("%s: %d scan points recorded twice; the last record is used", wf.inputs.scan_file, dup.sum())
    else:
        iz, iw, ix = np.meshgrid(np.arange(s.nz), np.arange(s.nomega), np.arange(s.nx), indexing="ij")
        grid = grid_index(iz, iw, ix, s.nomega, s.nx, s.fast_axis, s.order)
    if wf.inputs.monitor is not None:
        mon = read_monitor(wf.inputs.monitor, s.nframes if wf.inputs.scan_file is None else int(grid.max()) + 1)
        monitor = np.where(grid >= 0, mon[np.clip(grid, 0, None)], np.nan)
    else:
        monitor = np.ones(grid.shape)
    good = np.isfinite(monitor) & (monitor > 0)
    reference = float(np.median(monitor[good])) if good.any() else 1.0
    attrs = {
        "workflow": wf.model_dump(mode="json"),
        "workflow_yaml": wf.to_yaml(),
        "workflow_digest": wf.digest(),
        "versions": store.versions(),
        "input_digest": store.input_digest([wf.frame_path(i) for i in range(min(s.nframes, 100_000))]),
        "engine": integ.engine,
        "monitor_reference": reference,
        "wavelength_angstrom": wavelength_A,
        "poni": {k: v for k, v in ai.get_config().items() if k != "detector_config"} | {"detector": ai.detector.name},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    store.create_store(path, nz=s.nz, nomega=s.nomega, nx=s.nx, radial=radial, radial_unit=wf.integrate.unit,
                       omega_deg=omega, x_mm=np.arange(s.nx) * s.x_step_mm, z_mm=np.arange(s.nz) * s.z_step_mm,
                       r_A=r_A, omega_chunk=wf.store.omega_chunk, q_chunk=wf.store.q_chunk, attrs=attrs,
                       overwrite=wf.store.overwrite if overwrite is None else overwrite, r_chunk=wf.pdf.r_chunk)
    if op is not None:
        p = wf.pdf
        store.create_pdf_arrays(path, nz=s.nz, nomega=s.nomega, nx=s.nx, nr=op.r_A.size,
                                omega_chunk=wf.store.omega_chunk, r_chunk=p.r_chunk,
                                sinograms=p.order == "pdf-then-recon", aux_channels=stages.pdf_aux_channels(op),
                                attrs={"transform": "PDFgetX3 ad hoc (xrdct_dask.pdf)", **op.params,
                                       "order": p.order, "normalization": p.normalization, "scale": p.scale,
                                       "background": p.background, "bgscale": p.bgscale,
                                       "background_file": str(p.background_file) if p.background_file else None,
                                       "units": {"Q": "1/angstrom", "r": "angstrom", "G": "1/angstrom^2",
                                                 "lowr_slope": "1/angstrom^3", "fq_highq_rms": "1/angstrom"}})
    store.open_array(path, f"{store.REDUCED}/monitor")[...] = monitor.astype(np.float32)
    store.open_array(path, f"{store.REDUCED}/frame_index")[...] = grid
    return stages.RunContext(workflow=wf, store_path=path, monitor_reference=reference, wavelength_A=wavelength_A)


def build_graph(ctx: stages.RunContext) -> dict:
    """The whole run as dask delayed objects, keyed by stage: ``{stage: [delayed, ...]}``."""
    import dask

    wf = ctx.workflow
    s = wf.scan
    nq = stages.integrator_for(wf).plan.nbins
    blocks = store.frame_blocks(s.nz, s.nomega, wf.store.omega_chunk)
    integ = {b: dask.delayed(stages.integrate_block, pure=False)(b, ctx, dask_key_name=b.key) for b in blocks}
    centers, recons, pdfs, pdf_frames = {}, [], [], []
    for z in range(s.nz):
        deps = [d for b, d in integ.items() if b.z == z]
        centers[z] = dask.delayed(stages.find_center, pure=False)(z, ctx, *deps, dask_key_name=("center", z))
        rz = [dask.delayed(stages.reconstruct_block, pure=False)(z, qs, centers[z], ctx,
                                                                  dask_key_name=("recon", z, qs.start))
              for qs in store.q_blocks(nq, wf.store.q_chunk)]
        recons += rz
        if wf.pdf.enabled and wf.pdf.order == "recon-then-pdf":
            pdfs.append(dask.delayed(stages.pdf_slice, pure=False)(z, ctx, *rz, dask_key_name=("pdf", z)))
        elif wf.pdf.enabled:  # pdf-then-recon: transform the frames, reconstruct N + figures, then G blocks
            # the edge background needs the slice's first/last x steps of every angle: wait for the slice
            fz = [dask.delayed(stages.pdf_frames_block, pure=False)(
                b, ctx, *([centers[z]] if wf.pdf.background == "edge" else [d]),
                dask_key_name=("pdf-frames", b.z, b.omega_start)) for b, d in integ.items() if b.z == z]
            pdf_frames += fz
            aux = dask.delayed(stages.reconstruct_pdf_aux, pure=False)(z, centers[z], ctx, *fz,
                                                                       dask_key_name=("pdf-aux", z))
            pdfs.append(aux)
            pdfs += [dask.delayed(stages.reconstruct_pdf_block, pure=False)(z, rs, centers[z], ctx, aux,
                                                                            dask_key_name=("pdf", z, rs.start))
                     for rs in store.q_blocks(stages.pdf_operator(ctx).r_A.size, wf.pdf.r_chunk)]
    graph = {"decode-integrate": list(integ.values()), "center": list(centers.values()), "recon": recons}
    if pdf_frames:
        graph["pdf-frames"] = pdf_frames
    graph["pdf"] = pdfs
    return graph


def _worker_plugin_base():
    from distributed.diagnostics.plugin import WorkerPlugin

    return WorkerPlugin


class IntegratorPlugin(_worker_plugin_base()):
    """Distributed worker plugin: builds the workflow's integrator once per worker at start-up
    (pyFAI's sparse matrix, corrections, engine buffers), frees it at teardown."""

    name = "xrdct-integrator"

    idempotent = False

    def __init__(self, workflow: Workflow):
        self.workflow = workflow

    def setup(self, worker):
        stages.integrator_for(self.workflow)

    def teardown(self, worker):
        stages.clear_integrators()


def _client(wf: Workflow, scheduler_address: str | None, cluster=None):
    from distributed import Client, LocalCluster

    if cluster is not None:
        return Client(cluster), None
    if scheduler_address:
        return Client(scheduler_address), None
    c = wf.compute
    import os

    ncores = os.cpu_count() or 1
    nworkers = c.n_workers or max(1, ncores // c.threads_per_worker)
    lc = LocalCluster(n_workers=nworkers, threads_per_worker=c.threads_per_worker, memory_limit=c.memory_limit,
                      dashboard_address=c.dashboard_address, host="127.0.0.1")
    return Client(lc), lc


def compute_with_progress(client, graph: dict, progress: bool = True) -> dict:
    """Submit every stage's tasks and wait, showing one progress bar per stage.

    Returns ``{stage: [result, ...]}``; a failing task raises here with its key in the message.
    """
    from distributed import as_completed

    order = [k for k in graph if graph[k]]
    flat = [d for k in order for d in graph[k]]
    futures = client.compute(flat)
    stage_of = {}
    i = 0
    for k in order:
        for f in futures[i:i + len(graph[k])]:
            stage_of[f.key] = k
        i += len(graph[k])
    results: dict[str, list] = {k: [] for k in order}
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        tasks = {k: bar.add_task(k, total=len(graph[k])) for k in order}
        bar.start()
    try:
        for fut in as_completed(futures):
            k = stage_of[fut.key]
            if fut.status == "error":
                exc = fut.exception()
                raise RuntimeError(f"task {fut.key} failed: {exc}") from exc
            results[k].append(fut.result())
            if bar is not None:
                bar.advance(tasks[k])
    finally:
        if bar is not None:
            bar.stop()
    return results


def run(workflow: Workflow | str | Path, *, overrides: dict | None = None, scheduler_address: str | None = None,
        cluster=None, progress: bool = True, summary: bool = True) -> Path:
    """Run a whole workflow (integrate -> reconstruct -> PDF) and return the store path.

    ``workflow`` is a :class:`Workflow` or the path of its YAML file.  Without a
    ``scheduler_address`` (or ``cluster``), a LocalCluster is started for the run and closed after.
    """
    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow, overrides)
    if overrides and isinstance(workflow, Workflow):
        from .config import workflow_from_dict

        wf = workflow_from_dict(wf.model_dump(mode="json"), overrides=overrides)
    ai, _ = check_inputs(wf)
    t0 = time.perf_counter()
    ctx = prepare_store(wf, ai)
    client, local = _client(wf, scheduler_address, cluster)
    try:
        log.info("dashboard: %s", client.dashboard_link)
        if progress:
            print(f"dask dashboard: {client.dashboard_link}")
        client.register_plugin(IntegratorPlugin(wf))
        graph = build_graph(ctx)
        results = compute_with_progress(client, graph, progress)
    finally:
        client.close()
        if local is not None:
            local.close()
    wall = time.perf_counter() - t0
    for stage in (store.REDUCED, store.RECON) + ((store.PDF,) if wf.pdf.enabled else ()):
        store.set_stage_status(ctx.store_path, stage, "done")
    info = run_summary(results, wall)
    import zarr

    zarr.open_group(str(ctx.store_path), mode="r+").attrs["run_summary"] = info
    store.consolidate(ctx.store_path)
    if progress:
        print(format_summary(info))
    if summary:
        from .summary import write_summary

        png = write_summary(ctx.store_path)
        if progress:
            print(f"summary picture: {png}")
    return ctx.store_path


def run_summary(results: dict, wall_s: float) -> dict:
    integ = results.get("decode-integrate", [])
    frames = sum(r["frames"] for r in integ)
    status: dict[str, int] = {}
    for r in integ:
        for k, v in r["status"].items():
            status[k] = status.get(k, 0) + v
    return {"frames": frames, "frame_status": status, "wall_seconds": wall_s,
            "frames_per_second": frames / wall_s if wall_s else 0.0,
            "engines": sorted({r["engine"] for r in integ}),
            "task_seconds": {k: float(sum(r["seconds"] for r in v if isinstance(r, dict))) for k, v in results.items()}}


def format_summary(info: dict) -> str:
    bad = {k: v for k, v in info["frame_status"].items() if k != "OK"}
    lines = [f"{info['frames']} frames in {info['wall_seconds']:.1f} s ({info['frames_per_second']:.0f} frames/s "
             f"end to end, engine {', '.join(info['engines'])})"]
    lines.append("frames flagged: " + (", ".join(f"{k.lower()} {v}" for k, v in sorted(bad.items())) if bad else "none"))
    return "\n".join(lines)
