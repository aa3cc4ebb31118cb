"""The stages of the graph, in one table, and their tasks: plain functions on one block.

Each stage's name is its task-key prefix (what the dashboard groups by), its progress bar, its
done-marker array ``tasks/<name>`` (where it has one) and its key in the run report; the table
says what one task covers, so that the graph (:mod:`xrdct_dask.graph`), the plan
(:mod:`xrdct_dask.plan`), the task state (:mod:`xrdct_dask.store`), the report and reprocess count
the same tasks.  The tasks only wire the library (io, integrate, sinogram, recon, pdf) to the
store: every task takes a :class:`RunContext` (small, picklable), reads and writes its own
chunk-aligned regions, sets its done-marker last and returns a small dict for the run report.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import store
from .budget import PDF_BATCH, Layout
from .config import Workflow
from .io.status import FrameStatus, usable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage of the graph.

    ``unit``: what one task covers (``omega block``, ``slice``, ``q block``, ``voxel rows``,
    ``r block``); ``marker``: whether ``tasks/<name>`` records its tasks (one element each);
    ``writes``: the store group it fills; ``reprocess``: the reprocess stage it belongs to (a
    change of a key of that stage reruns it); ``gpu``: it runs on the integration GPUs."""

    name: str
    unit: str
    marker: bool
    writes: str | None
    reprocess: str
    gpu: bool = False


STAGES = {s.name: s for s in (
    Stage("integrate", "omega block", True, store.REDUCED, "integrate", gpu=True),
    Stage("center", "slice", True, None, "recon"),
    Stage("recon", "q block", True, store.RECON, "recon"),
    Stage("pdf-scale", "voxel rows", False, None, "pdf"),   # recon-then-pdf: shares of the background and scale
    Stage("pdf-frames", "omega block", False, store.PDF, "pdf"),  # pdf-then-recon: G(r) of every frame
    Stage("pdf-aux", "slice", False, store.PDF, "pdf"),     # pdf-then-recon: N and figures reconstructed
    Stage("pdf", "voxel rows", True, store.PDF, "pdf"),     # recon-then-pdf; pdf-then-recon: "r block"
)}
REPROCESS_STAGES = ("integrate", "recon", "pdf")


def stage_names(wf: Workflow) -> list[str]:
    """The stages of a workflow's graph, in dependency order."""
    names = ["integrate", "center", "recon"]
    if wf.pdf.enabled:
        names += ["pdf-scale", "pdf"] if wf.pdf.order == "recon-then-pdf" else ["pdf-frames", "pdf-aux", "pdf"]
    return names


def unit_count(unit: str, *, nomega: int, nx: int, nq: int, nr: int, layout: Layout) -> int:
    """Tasks per slice of a stage covering ``unit``."""
    return {"omega block": math.ceil(nomega / layout.omega_chunk), "slice": 1,
            "q block": math.ceil(nq / layout.q_chunk), "voxel rows": math.ceil(nx / layout.y_chunk),
            "r block": math.ceil(max(nr, 1) / layout.r_chunk)}[unit]


def pdf_unit(wf: Workflow) -> str:
    return "voxel rows" if wf.pdf.order == "recon-then-pdf" else "r block"


def tasks_per_slice(wf: Workflow, *, nq: int, nr: int, layout: Layout) -> dict[str, int]:
    """``{stage: tasks}`` of one slice with nothing done (what :func:`xrdct_dask.graph.build_graph` builds)."""
    s = wf.scan
    out = {}
    for name in stage_names(wf):
        unit = pdf_unit(wf) if name == "pdf" else STAGES[name].unit
        out[name] = unit_count(unit, nomega=s.nomega, nx=s.nx, nq=nq, nr=nr, layout=layout)
    return out


@dataclass(frozen=True)
class RunContext:
    """What every task needs to know; built once on the client."""

    workflow: Workflow
    store_path: Path
    monitor_reference: float
    wavelength_A: float
    layout: Layout
    read_threads: int = 8
    check_md5: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.workflow.digest()


# ------------------------------------------------------------------------------------------
# per-process state: integrators are expensive to build (pyFAI's CSR), cheap to reuse
# ------------------------------------------------------------------------------------------
_LOCK = threading.Lock()
# integrators of this process outside a dask worker (a worker's belong to its IntegratorPlugin)
_INTEGRATORS: dict[str, object] = {}


def _plan_inputs(wf: Workflow) -> tuple:
    from .integrate.csr import load_image, load_poni

    i, g, p = wf.inputs, wf.geometry, wf.integrate
    ai = load_poni(i.poni)
    mask = load_image(i.mask) if i.mask else None
    shape = tuple(ai.detector.max_shape) if ai.detector.max_shape is not None else mask.shape
    options = {"mask": mask, "dark": load_image(i.dark) if i.dark else None,
               "flat": load_image(i.flat) if i.flat else None, "polarization_factor": g.polarization_factor,
               "solid_angle": g.solid_angle, "split": p.split, "radial_range": p.radial_range}
    return ai, shape, options


def plan_for(wf: Workflow, inputs: tuple | None = None):
    """The workflow's :class:`~xrdct_dask.integrate.IntegrationPlan` (pyFAI's sparse matrix and the
    corrections), from the plan cache (``compute.cache_dir``) when one of the same geometry, mask,
    dark, flat and bins was built before, else built and kept there: the client builds it once
    while preparing the store, and every worker of the run loads it."""
    from .integrate.cache import cached_plan

    ai, shape, options = inputs or _plan_inputs(wf)
    return cached_plan(ai, shape, wf.integrate.npt_rad, wf.integrate.unit, directory=wf.compute.cache_dir, **options)


def integrator_key(wf: Workflow) -> str:
    """What makes an integrator: the geometry files, the geometry and the integrate section."""
    return wf.model_dump_json(include={"inputs": {"poni", "mask", "dark", "flat"}, "geometry": True,
                                       "integrate": True})


def build_integrator(wf: Workflow):
    """A new :class:`~xrdct_dask.integrate.Integrator` of a workflow (its plan from :func:`plan_for`)."""
    from .integrate import Integrator

    p = wf.integrate
    inputs = _plan_inputs(wf)
    ai, shape, options = inputs
    integ = Integrator(ai, shape, p.npt_rad, p.unit, **options, error_model=p.error_model, outlier=p.outlier,
                       clip_threshold=p.clip_threshold, max_iter=p.max_iter, percentile=p.percentile,
                       engine=p.engine, plan=plan_for(wf, inputs))
    log.info("integrator ready: %d bins, %d nnz, engine %s", integ.plan.nbins, integ.plan.nnz, integ.engine)
    return integ


def integrator_for(wf: Workflow):
    """The :class:`~xrdct_dask.integrate.Integrator` of a workflow: on a dask worker the one its
    :class:`~xrdct_dask.cluster.IntegratorPlugin` built at start-up (per-worker state lives in the
    plugin, freed at its teardown); elsewhere (a task run in this process) one built once per process."""
    key = integrator_key(wf)
    try:
        from distributed import get_worker

        for plugin in get_worker().plugins.values():
            integ = getattr(plugin, "integrators", {}).get(key)
            if integ is not None:
                return integ
    except (ImportError, ValueError):  # not in a worker
        pass
    with _LOCK:
        integ = _INTEGRATORS.get(key)
        if integ is None:
            integ = _INTEGRATORS[key] = build_integrator(wf)
        return integ


def clear_integrators() -> None:
    with _LOCK:
        _INTEGRATORS.clear()


def block_indices(ctx: RunContext, block: store.FrameBlock) -> np.ndarray:
    """Acquisition indices ``(nw, nx)`` of a block's frames (-1 = not recorded), from the store."""
    arr = store.open_array(ctx.store_path, f"{store.REDUCED}/frame_index", "r")
    return arr[block.z, block.omega_start:block.omega_stop]


def integrate_block(block: store.FrameBlock, ctx: RunContext) -> dict:
    """Read, decode and integrate the frames of one block and write them to ``reduced/``.

    Frames are streamed in batches of ``integrator.batch_frames``: file reads run on a thread pool a few
    batches ahead, the engine pipelines the batches (on a GPU, the upload of the next batch
    overlaps the compute of the current one), so memory does not grow with the block.  Bad frames
    get NaN patterns and a status code; the block always completes.
    """
    t0 = time.perf_counter()
    started = time.time()
    integ = integrator_for(ctx.workflow)
    idx = block_indices(ctx, block)
    nw, nx = idx.shape
    nq = integ.plan.nbins
    flat_idx = idx.reshape(-1)
    monitor = store.open_array(ctx.store_path, f"{store.REDUCED}/monitor", "r")[
        block.z, block.omega_start:block.omega_stop].reshape(-1).astype(np.float64)
    # a monitor reading far from the scan's median (a beam dump, a glitching counter) would scale the
    # frame's pattern by orders of magnitude: such frames are flagged, not normalised
    ratio = monitor / ctx.monitor_reference
    limit = ctx.workflow.inputs.monitor_max_ratio
    with np.errstate(invalid="ignore"):
        bad_monitor = ~(np.isfinite(ratio) & (ratio > 0) & (ratio <= limit) & (ratio >= 1 / limit))
    t_engine = time.perf_counter()
    intensity, sigma, status, nbytes = integ.integrate_source(
        ctx.workflow.frame_source(), flat_idx, np.where(bad_monitor, 1.0, ratio), read_threads=ctx.read_threads,
        check_md5=ctx.check_md5)
    t_write = time.perf_counter()
    status[(status == FrameStatus.OK) & bad_monitor] = FrameStatus.BAD_MONITOR
    # a good frame the scan file placed (recorded twice, or out of acquisition order) keeps that note
    flag = store.open_array(ctx.store_path, f"{store.REDUCED}/scan_flag", "r")[
        block.z, block.omega_start:block.omega_stop].reshape(-1)
    status = np.where((status == FrameStatus.OK) & (flag > 0), flag, status).astype(np.int8)
    bad = ~usable(status)
    intensity[bad] = np.nan
    sigma[bad] = np.nan
    store.write_reduced(ctx.store_path, block, intensity.reshape(nw, nx, nq), sigma.reshape(nw, nx, nq),
                        monitor.reshape(nw, nx).astype(np.float32), status.reshape(nw, nx))
    store.mark_done(ctx.store_path, "integrate", (block.z, block.omega_start // ctx.layout.omega_chunk))
    counts = {FrameStatus(s).name: int(n) for s, n in zip(*np.unique(status, return_counts=True))}
    return {"stage": "integrate", "z": block.z, "omega_start": block.omega_start, "frames": int(flat_idx.size),
            "bytes": nbytes, "status": counts, "seconds": time.perf_counter() - t0, "engine": integ.engine,
            "seconds_setup": t_engine - t0, "seconds_engine": t_write - t_engine,
            "seconds_write": time.perf_counter() - t_write, "worker": worker_address(),
            "started": started, "finished": time.time()}


def worker_address() -> str | None:
    """The dask worker running this task (None outside a worker): for the engine report."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _engine(xp) -> str:
    from .backend import engine_of

    return engine_of(xp)


def find_center(z: int, ctx: RunContext, *deps) -> dict:
    """Geometry of slice ``z`` (:func:`xrdct_dask.centering.slice_geometry`): the rotation axis
    (pixels; or the workflow's value), the air columns (``sinogram.background: auto``), with
    ``sinogram.jitter`` the shift of every projection, with ``sinogram.stripes`` the stripe
    columns.  Every q block of the slice is then corrected with these same numbers."""
    from .centering import slice_geometry

    t0 = time.perf_counter()
    geo = slice_geometry(ctx, z)
    store.mark_done(ctx.store_path, "center", (z,), float(geo["center"]))
    return {"stage": "center", "z": z, **geo, "seconds": time.perf_counter() - t0}


def _geometry(center) -> dict:
    return center if isinstance(center, dict) else {"center": float(center)}


def slice_backgrounds(ctx: RunContext, geo: dict, qs: slice) -> dict:
    """:func:`~xrdct_dask.sinogram.prepare_sinogram` options of a q block from the slice's geometry:
    the air columns its centre task found (``sinogram.background: auto``; None: found in the
    block) and the measured background's bins ``qs``."""
    from .air import AirColumns
    from .centering import measured_q

    air = geo.get("air")
    return {"air_columns": AirColumns.from_dict(air) if air else None, "measured_background": measured_q(ctx, qs)}


def _reconstruct_sub_blocks(ctx: RunContext, z: int, sino: np.ndarray, opts: dict, xp, filter_only: bool = False):
    """Prepare (:func:`~xrdct_dask.sinogram.prepare_sinogram` with ``opts``) and reconstruct a
    host sinogram block ``(nomega, nx, n)`` of slice ``z``, ``layout.q_sub`` bins at a time on ``xp``'s device
    (every correction acts on each bin alone, with the slice's geometry in ``opts``).  Returns the
    host volume ``(nx, nx, n)`` float32 and the last sub-block's preparation info.
    ``filter_only``: FBP with the workflow's filter whatever recon.algorithm says (G(r) sinograms)."""
    from .backend import to_host
    from .recon import fbp, reconstruct
    from .sinogram import prepare_sinogram

    r = ctx.workflow.recon
    ok = store.open_array(ctx.store_path / store.REDUCED, "frame_ok", "r")[z]
    omega = store.open_array(ctx.store_path, "omega", "r")[:]
    nx, n = sino.shape[1], sino.shape[2]
    vol = np.empty((nx, nx, n), np.float32)
    info: dict = {}
    zingers = 0
    air_model = np.full((2, n), np.nan, np.float32)  # the air subtracted per q (background auto)
    measured = opts.pop("measured_background", None)
    for a in range(0, n, ctx.layout.q_sub):
        b = min(a + ctx.layout.q_sub, n)
        sub = None if measured is None else measured[..., a:b]
        prepared, info = prepare_sinogram(xp.asarray(sino[..., a:b]), ok, omega, measured_background=sub, **opts)
        if info.get("air_model") is not None:
            air_model[:, a:b] = info["air_model"]
        if filter_only:
            out = fbp(prepared, omega, r.filter, center=info["center"])
        else:
            out = reconstruct(prepared, omega, r.algorithm, filter_name=r.filter, center=info["center"],
                              iterations=r.iterations, nonneg=r.nonneg, threads=ctx.workflow.compute.threads_per_worker)
        vol[..., a:b] = to_host(out)
        zingers += info["zingers"]
        del prepared, out
    return vol, info | {"zingers": zingers, "air_model": air_model}


def reconstruct_block(z: int, qs: slice, center, ctx: RunContext, *deps) -> dict:
    """Prepare the sinograms of slice ``z``, q bins ``qs``, reconstruct them, write ``recon/``.

    ``center`` is :func:`find_center`'s result (or a number of pixels).  The block is prepared and
    reconstructed ``layout.q_sub`` bins at a time, so the task holds the block's sinogram and
    volume and one sub-block's temporaries (:func:`xrdct_dask.budget.recon_bytes`).  Runs on the
    GPU where ``recon.engine`` resolves to cupy (the sub-blocks are uploaded, the volume downloaded).
    """
    from .backend import release, xp_for_engine
    from .sinogram import prep_options

    t0 = time.perf_counter()
    wf = ctx.workflow
    geo = _geometry(center)
    xp = xp_for_engine(wf.recon.engine)
    # (nomega, nx, nq_block), one omega chunk at a time
    sino = store.read_chunked(ctx.store_path, f"{store.REDUCED}/intensity", (z, slice(None), slice(None), qs), 0)
    opts = prep_options(wf.sinogram) | {"center": geo["center"], "known_stripes": geo.get("stripe_columns")}
    if wf.sinogram.jitter and geo.get("shifts_px"):  # the slice's shifts, from its q-summed sinogram
        opts["jitter"] = np.asarray(geo["shifts_px"])
    opts |= slice_backgrounds(ctx, geo, qs)
    vol, info = _reconstruct_sub_blocks(ctx, z, sino, opts, xp)
    del sino
    release(xp)
    store.write_chunked(ctx.store_path, f"{store.RECON}/intensity", (z, slice(None), slice(None), qs), vol, 0)
    store.write_region(ctx.store_path, f"{store.RECON}/air_model", (z, slice(None), qs), info["air_model"])
    store.mark_done(ctx.store_path, "recon", (z, qs.start // ctx.layout.q_chunk))
    return {"stage": "recon", "z": z, "q": (qs.start, qs.stop), "center": info["center"], "filled": info["filled"],
            "zingers": info["zingers"], "steps": info["steps"], "algorithm": wf.recon.algorithm,
            "engine": _engine(xp), "seconds": time.perf_counter() - t0}


def warm_slice_stages(wf: Workflow, nq: int = 4) -> dict:
    """Run the slice stages' computations once, in this process, on a synthetic slice of the
    scan's shape: the q-summed sinogram prepared as :func:`find_center` does, then ``nq`` q bins
    prepared and reconstructed as :func:`reconstruct_block` does (the workflow's corrections,
    algorithm, filter and engine; a centred disc, a few frames flagged so the filling runs).  The
    kernels these compile (cupy's modules, numba's functions) are then ready before the first
    real slice.  Live mode runs it on every worker while it waits for the first frame.

    Never raises: returns ``{"seconds", "engine"}``, or ``{"error"}`` saying why it could not run
    (the first slice then compiles them, as in a batch run)."""
    from .backend import release, to_host, xp_for_engine
    from .recon import reconstruct
    from .sinogram import prep_options, prepare_sinogram

    t0 = time.perf_counter()
    try:
        s, r = wf.scan, wf.recon
        xp = xp_for_engine(r.engine)
        omega = np.linspace(0.0, 180.0, s.nomega, endpoint=False)
        x = np.arange(s.nx) - (s.nx - 1) / 2
        disc = 2 * np.sqrt(np.clip((0.4 * s.nx) ** 2 - x**2, 0, None)) + 1.0  # chord lengths of a centred disc
        sino = (disc[None, :, None] * np.arange(1, nq + 1)[None, None, :] * np.ones((s.nomega, 1, 1))).astype(
            np.float32)
        ok = np.ones((s.nomega, s.nx), bool)
        ok[0, : min(3, s.nx)] = False
        _, geo = prepare_sinogram(sino.sum(axis=-1, keepdims=True), ok, omega, **prep_options(wf.sinogram))
        opts = prep_options(wf.sinogram) | {"center": geo["center"], "known_stripes": geo["stripe_columns"]}
        if wf.sinogram.jitter and geo.get("shifts_px"):
            opts["jitter"] = np.asarray(geo["shifts_px"])
        prepared, info = prepare_sinogram(xp.asarray(sino), ok, omega, **opts)
        to_host(reconstruct(prepared, omega, r.algorithm, filter_name=r.filter, center=info["center"],
                            iterations=None if r.iterations is None else min(r.iterations, 2), nonneg=r.nonneg,
                            threads=wf.compute.threads_per_worker))
        del prepared
        release(xp)
    except Exception as err:  # a warm-up must never stop a run
        return {"error": f"{type(err).__name__}: {err}"}
    return {"seconds": time.perf_counter() - t0, "engine": _engine(xp)}


# ------------------------------------------------------------------------------------------
# pdf: recon-then-pdf (pdf_scale -> pdf_rows) or pdf-then-recon (pdf_frames_block ->
# reconstruct_pdf_aux -> reconstruct_pdf_block).  The transform is linear given the scale N
# (xrdct_dask.pdf), so the second order transforms every frame, reconstructs G(r) and the linear
# quality inputs like any sinogram, and divides by the reconstructed N per voxel.
# ------------------------------------------------------------------------------------------
def pdf_operator(ctx: RunContext):
    """The workflow's :class:`~xrdct_dask.pdf.PDFOperator` on the store's radial grid (cached)."""
    from .pdf import operator_for, radial_to_q_A

    radial = store.open_array(ctx.store_path, "q", "r")[:]
    return operator_for(radial_to_q_A(radial, ctx.workflow.integrate.unit, ctx.wavelength_A), ctx.workflow.pdf)


def pdf_aux_channels(op) -> list[str]:
    """Names of the channels of ``pdf/aux_sinogram``: N, then N G(r) and N F(Q) of the quality figures."""
    return (["scale"] + [f"G(r={r:.4f})" for r in op.r_low_A] + [f"F(Q={q:.4f})" for q in op.q_top_A])


def _pdf_file_background(ctx: RunContext):
    from .pdf.background import load_background

    p = ctx.workflow.pdf
    if p.background != "file":
        return None
    return load_background(p.background_file, store.open_array(ctx.store_path, "q", "r")[:])


def _row_blocks(nx: int, rows: int) -> list[slice]:
    return [slice(a, min(a + rows, nx)) for a in range(0, nx, rows)]


def pdf_scale(z: int, ys: slice, ctx: RunContext, *deps) -> dict:
    """recon-then-pdf, before the slice's G blocks, one task per block of voxel rows ``ys`` (they
    run side by side): the block's share of the slice's edge background (sum and count of the
    finite rim voxels per q, ``pdf.background: edge``) and its largest scale N(I) (per-pattern
    scales).  :func:`combine_scales` turns the slice's shares into the background and
    ``min_scale``; N is linear in I(Q), so the background's part is taken off once there."""
    from .backend import release, to_host, xp_for_engine
    from .pdf import pattern_scale
    from .pdf.background import edge_voxel_mask

    t0 = time.perf_counter()
    p = ctx.workflow.pdf
    xp = xp_for_engine(p.engine)
    nx, nq = store.open_array(ctx.store_path, f"{store.RECON}/intensity", "r").shape[2:]
    edge = p.background == "edge"
    scales = p.normalization == "per-pattern" and p.min_relative_scale > 0
    rim = edge_voxel_mask(nx, p.edge_width)[ys]
    out = {"stage": "pdf-scale", "z": z, "y": (ys.start, ys.stop), "rim_total": None, "rim_count": None,
           "largest": 0.0, "engine": _engine(xp)}
    if (edge and rim.any()) or scales:
        rows = xp.asarray(store.read_chunked(ctx.store_path, f"{store.RECON}/intensity",
                                             (z, ys, slice(None), slice(None)), 2))
        if edge and rim.any():  # nanmean over the rim voxels: sums and counts, combined per slice
            v = rows[xp.asarray(rim)].astype(xp.float64)
            good = xp.isfinite(v)
            out["rim_total"] = to_host(xp.where(good, v, 0.0).sum(axis=0))
            out["rim_count"] = to_host(good.sum(axis=0))
        if scales:
            n = pattern_scale(xp.nan_to_num(rows, nan=0.0).reshape(-1, nq).astype(xp.float64), pdf_operator(ctx))
            out["largest"] = float(to_host(n).max(initial=0.0))
        del rows
        release(xp)
    return out | {"seconds": time.perf_counter() - t0}


def combine_scales(ctx: RunContext, shares: tuple) -> dict:
    """The slice's background ``(nq,)`` (or None) and ``min_scale`` from its :func:`pdf_scale` shares."""
    from .pdf import pattern_scale

    p = ctx.workflow.pdf
    bg = _pdf_file_background(ctx)
    if p.background == "edge":
        total = sum(s["rim_total"] for s in shares if s["rim_total"] is not None)
        count = sum(s["rim_count"] for s in shares if s["rim_count"] is not None)
        with np.errstate(invalid="ignore", divide="ignore"):
            bg = np.asarray(total / count, np.float64)
    largest = max((s["largest"] for s in shares), default=0.0)
    if bg is not None and p.bgscale != 0 and largest:
        largest -= p.bgscale * float(pattern_scale(np.asarray(bg, np.float64)[None], pdf_operator(ctx))[0])
    return {"background": bg, "min_scale": p.min_relative_scale * max(largest, 0.0)}


def _write_pdf_figures(ctx: RunContext, z: int, ys: slice, figures: dict, shape) -> None:
    for name, value in figures.items():
        store.write_region(ctx.store_path, f"{store.PDF}/{name}", (z, ys), value.reshape(shape))


def _host_figures(res) -> dict:
    """The per-voxel figures of a PDF batch on the host, as copies: on the CPU they are views of
    the batch's whole linear output, which a kept view would hold alive batch after batch."""
    from .backend import to_host

    return {name: np.array(to_host(getattr(res, name)), copy=True) for name in (*store.PDF_VOXEL_FIGURES, "ok")}


def pdf_rows(z: int, ys: slice, ctx: RunContext, *shares) -> dict:
    """recon-then-pdf: G(r) of the voxels in rows ``ys`` of slice ``z`` (every q of ``recon/``) into
    ``pdf/G`` and the per-voxel scale and figures, in GEMM batches on the engine's device.
    ``shares`` are the slice's :func:`pdf_scale` results (:func:`combine_scales`: background, min_scale)."""
    from .backend import release, to_host, xp_for_engine
    from .pdf import compute_pdf, gemm_dtype

    t0 = time.perf_counter()
    p = ctx.workflow.pdf
    op = pdf_operator(ctx)
    xp = xp_for_engine(p.engine)
    prep = combine_scales(ctx, shares)
    # (ny_block, nx, nq), one q chunk at a time
    rows = store.read_chunked(ctx.store_path, f"{store.RECON}/intensity", (z, ys, slice(None), slice(None)), 2)
    ny, nx, nq = rows.shape
    flat = rows.reshape(-1, nq)
    g = np.empty((flat.shape[0], op.nr), np.float32)
    figures: dict[str, list] = {}
    batch = PDF_BATCH[_engine(xp)]
    dtype = gemm_dtype(xp)
    for a in range(0, flat.shape[0], batch):  # NaN (never-reconstructed voxels) -> 0, on the device
        patterns = xp.nan_to_num(xp.asarray(flat[a:a + batch]), nan=0.0).astype(dtype, copy=False)
        res = compute_pdf(patterns, op, prep["min_scale"], background=prep["background"],
                          bgscale=p.bgscale, normalization=p.normalization, fixed_scale=p.scale, dtype=dtype)
        g[a:a + batch] = to_host(res.G)
        for name, value in _host_figures(res).items():
            figures.setdefault(name, []).append(value)
        del res, patterns
    del rows, flat
    release(xp)
    store.write_chunked(ctx.store_path, f"{store.PDF}/G", (z, ys, slice(None), slice(None)), g.reshape(ny, nx, -1), 2)
    figures = {k: np.concatenate(v) for k, v in figures.items()}
    _write_pdf_figures(ctx, z, ys, figures, (ny, nx))
    store.mark_done(ctx.store_path, "pdf", (z, ys.start // ctx.layout.y_chunk))
    return {"stage": "pdf", "z": z, "y": (ys.start, ys.stop), "voxels_ok": int(figures["ok"].sum()),
            "seconds": time.perf_counter() - t0, "engine": _engine(xp)}


def pdf_frames_block(block: store.FrameBlock, ctx: RunContext, *deps) -> dict:
    """pdf-then-recon, step 1: the transform of every frame of a block into ``pdf/G_sinogram``
    (G(r) with the fixed scale pdf.scale) and ``pdf/aux_sinogram`` (N, and the quality inputs
    divided by pdf.scale).  Missing frames stay NaN and are filled like any sinogram's."""
    from .backend import to_host, xp_for_engine
    from .pdf import gemm_dtype, linear_transform
    from .pdf.background import edge_columns, mean_good_patterns

    t0 = time.perf_counter()
    p = ctx.workflow.pdf
    op = pdf_operator(ctx)
    xp = xp_for_engine(p.engine)
    red = ctx.store_path / store.REDUCED
    frames = store.open_array(red, "intensity", "r")[block.z, block.omega_start:block.omega_stop]  # (nw, nx, nq)
    nw, nx, nq = frames.shape
    if p.background == "edge":  # the slice's first/last x steps: air (and container) only
        cols = edge_columns(nx, p.edge_width)
        edge = store.open_array(red, "intensity", "r").get_orthogonal_selection((block.z, slice(None), cols))
        ok = store.open_array(red, "frame_ok", "r").get_orthogonal_selection((block.z, slice(None), cols))
        bg = mean_good_patterns(edge, ok)
    else:
        bg = _pdf_file_background(ctx)
    flat = frames.reshape(-1, nq)
    lin = np.empty((flat.shape[0], op.matrix.shape[1]), np.float32)
    batch = PDF_BATCH[_engine(xp)]
    for a in range(0, flat.shape[0], batch):
        lin[a:a + batch] = to_host(linear_transform(xp.asarray(flat[a:a + batch]), op, bg, p.bgscale,
                                                    dtype=gemm_dtype(xp)))
    col = op.columns
    g = lin[:, col["G"]] / np.float32(p.scale)
    aux = np.concatenate([lin[:, col["scale"]], lin[:, col["G_low"]] / np.float32(p.scale),
                          lin[:, col["F_top"]] / np.float32(p.scale)], axis=1)
    region = (block.z, slice(block.omega_start, block.omega_stop))
    store.write_region(ctx.store_path, f"{store.PDF}/G_sinogram", region, g.reshape(nw, nx, -1))
    store.write_region(ctx.store_path, f"{store.PDF}/aux_sinogram", region, aux.reshape(nw, nx, -1))
    return {"stage": "pdf-frames", "z": block.z, "omega_start": block.omega_start, "frames": nw * nx,
            "seconds": time.perf_counter() - t0, "engine": _engine(xp)}


def _reconstruct_pdf_sinogram(ctx: RunContext, z: int, name: str, sel, center) -> np.ndarray:
    """FBP of a G(r) or aux sinogram block with the slice's geometry (centre, jitter shifts) and
    bad frames filled; the intensity-only corrections (zingers, stripes, air) stay with I(q)."""
    from .backend import xp_for_engine

    geo = _geometry(center)
    sino = store.read_chunked(ctx.store_path, f"{store.PDF}/{name}", (z, slice(None), slice(None), sel), 0)
    # every step named: the geometry and filling only (a library default must not switch on a
    # nonlinear correction of G: the two orders agree because these steps are linear)
    opts = {"center": geo["center"], "fill_bad": ctx.workflow.sinogram.fill_bad, "zingers": False, "background": False,
            "stripes": False, "jitter": False}
    if ctx.workflow.sinogram.jitter and geo.get("shifts_px"):
        opts["jitter"] = np.asarray(geo["shifts_px"])
    return _reconstruct_sub_blocks(ctx, z, sino, opts, xp_for_engine(ctx.workflow.recon.engine), filter_only=True)[0]


def reconstruct_pdf_aux(z: int, center, ctx: RunContext, *deps) -> dict:
    """pdf-then-recon, step 2: reconstruct N and the quality inputs of slice ``z``; write the
    per-voxel scale, ok mask and quality figures (the G blocks then divide by this N)."""
    from .pdf import finish_parts

    t0 = time.perf_counter()
    p = ctx.workflow.pdf
    op = pdf_operator(ctx)
    vol = _reconstruct_pdf_sinogram(ctx, z, "aux_sinogram", slice(None), center).astype(np.float64)
    ny, nx, _ = vol.shape
    nl = op.r_low_A.size
    n = vol[..., 0].reshape(-1)
    low = vol[..., 1:1 + nl].reshape(-1, nl) * p.scale  # back to N G(r_low), N F(q_top)
    top = vol[..., 1 + nl:].reshape(-1, vol.shape[-1] - 1 - nl) * p.scale
    min_scale = p.min_relative_scale * float(np.max(n, initial=0.0))
    res = finish_parts(n, low, top, op, normalization=p.normalization, fixed_scale=p.scale, min_scale=min_scale)
    _write_pdf_figures(ctx, z, slice(None), _host_figures(res), (ny, nx))
    return {"stage": "pdf-aux", "z": z, "voxels_ok": int(res.ok.sum()), "seconds": time.perf_counter() - t0}


def reconstruct_pdf_block(z: int, rs: slice, center, ctx: RunContext, *deps) -> dict:
    """pdf-then-recon, step 3: reconstruct G(r) points ``rs`` of slice ``z`` into ``pdf/G``
    (per-pattern: rescaled by the voxel's reconstructed N, :func:`xrdct_dask.pdf.rescale_fixed`)."""
    from .pdf import rescale_fixed

    t0 = time.perf_counter()
    p = ctx.workflow.pdf
    vol = _reconstruct_pdf_sinogram(ctx, z, "G_sinogram", rs, center)  # G with the fixed scale
    if p.normalization == "per-pattern":
        n = store.open_array(ctx.store_path, f"{store.PDF}/scale", "r")[z]
        ok = store.open_array(ctx.store_path, f"{store.PDF}/ok", "r")[z]
        vol = rescale_fixed(vol, n, ok, p.scale)
    store.write_region(ctx.store_path, f"{store.PDF}/G", (z, slice(None), slice(None), rs), vol)
    store.mark_done(ctx.store_path, "pdf", (z, rs.start // ctx.layout.r_chunk))
    return {"stage": "pdf", "z": z, "r": (rs.start, rs.stop), "seconds": time.perf_counter() - t0}
