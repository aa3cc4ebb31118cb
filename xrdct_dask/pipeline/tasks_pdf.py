"""The PDF stages' tasks: G(r) per voxel (recon-then-pdf) or per frame, then reconstructed
(pdf-then-recon), with the slice's scale and quality figures."""

from __future__ import annotations

import logging
import time

import numpy as np

from xrdct_dask import store
from xrdct_dask.backend import release, to_host, xp_for_engine
from xrdct_dask.gpushare import device_share
from xrdct_dask.pdf import (
    compute_pdf,
    finish_parts,
    gemm_dtype,
    linear_transform,
    operator_for,
    pattern_scale,
    radial_to_q_A,
    rescale_fixed,
)
from xrdct_dask.pdf.background import edge_columns, edge_voxel_mask, load_background, mean_good_patterns
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.task import SliceTasks
from xrdct_dask.pipeline.tasks_integrate import _engine
from xrdct_dask.pipeline.tasks_recon import _geometry, _reconstruct_sub_blocks
from xrdct_dask.recon import array_module
from xrdct_dask.store.budget import PDF_BATCH, gpu_pdf_batch

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# pdf: recon-then-pdf (pdf_scale -> pdf_rows) or pdf-then-recon (pdf_frames_block ->
# reconstruct_pdf_aux -> reconstruct_pdf_block).  The transform is linear given the scale N
# (xrdct_dask.pdf), so the second order transforms every frame, reconstructs G(r) and the linear
# quality inputs like any sinogram, and divides by the reconstructed N per voxel.
# ------------------------------------------------------------------------------------------
def pdf_operator(ctx: RunContext):
    """The workflow's :class:`~xrdct_dask.pdf.PDFOperator` on the store's radial grid (cached)."""

    radial = store.open_array(ctx.store_path, "q", "r")[:]
    return operator_for(radial_to_q_A(radial, ctx.workflow.integrate.unit, ctx.wavelength_A), ctx.workflow.pdf)


def pdf_aux_channels(op) -> list[str]:
    """Names of the channels of ``pdf/aux_sinogram``: N, then N G(r) and N F(Q) of the quality figures."""
    return (["scale"] + [f"G(r={r:.4f})" for r in op.r_low_A] + [f"F(Q={q:.4f})" for q in op.q_top_A])


def _pdf_file_background(ctx: RunContext):

    p = ctx.workflow.pdf
    if p.background != "file":
        return None
    assert p.background_file is not None  # the schema: background: file needs background_file
    return load_background(p.background_file, store.open_array(ctx.store_path, "q", "r")[:])


def _batch(xp, nq: int, nr: int) -> int:
    """Voxels (or frames) per GEMM: the engine's :data:`~xrdct_dask.store.budget.PDF_BATCH`, on a GPU
    no more than this worker's share of it lets a task hold (:func:`~xrdct_dask.store.budget.gpu_pdf_batch`)."""
    share = device_share(xp)
    if share is None:
        return PDF_BATCH[_engine(xp)]
    return gpu_pdf_batch(share.task_bytes, nq, nr, PDF_BATCH[_engine(xp)])


def _row_blocks(nx: int, rows: int) -> list[slice]:
    return [slice(a, min(a + rows, nx)) for a in range(0, nx, rows)]


def pdf_scale(z: int, ys: slice, ctx: RunContext, *deps) -> dict:
    """recon-then-pdf, before the slice's G blocks, one task per block of voxel rows ``ys`` (they
    run side by side): the block's share of the slice's edge background (sum and count of the
    finite rim voxels per q, ``pdf.background: edge``) and its largest scale N(I) (per-pattern
    scales).  :func:`combine_scales` turns the slice's shares into the background and
    ``min_scale``; N is linear in I(Q), so the background's part is taken off once there."""

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

    return {name: np.array(to_host(getattr(res, name)), copy=True) for name in (*store.PDF_VOXEL_FIGURES, "ok")}


def pdf_rows(z: int, ys: slice, ctx: RunContext, *shares) -> dict:
    """recon-then-pdf: G(r) of the voxels in rows ``ys`` of slice ``z`` (every q of ``recon/``) into
    ``pdf/G`` and the per-voxel scale and figures, in GEMM batches on the engine's device.
    ``shares`` are the slice's :func:`pdf_scale` results (:func:`combine_scales`: background, min_scale)."""

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
    batch = _batch(xp, nq, op.nr)
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
    maps = {k: np.concatenate(v) for k, v in figures.items()}  # each figure: (ny * nx,)
    _write_pdf_figures(ctx, z, ys, maps, (ny, nx))
    store.mark_done(ctx.store_path, "pdf", (z, ys.start // ctx.layout.y_chunk))
    return {"stage": "pdf", "z": z, "y": (ys.start, ys.stop), "voxels_ok": int(maps["ok"].sum()),
            "seconds": time.perf_counter() - t0, "engine": _engine(xp)}


def pdf_frames_block(block: store.FrameBlock, ctx: RunContext, *deps) -> dict:
    """pdf-then-recon, step 1: the transform of every frame of a block into ``pdf/G_sinogram``
    (G(r) with the fixed scale pdf.scale) and ``pdf/aux_sinogram`` (N, and the quality inputs
    divided by pdf.scale).  Missing frames stay NaN and are filled like any sinogram's."""

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
    batch = _batch(xp, nq, op.nr)
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

    geo = _geometry(center)
    sino = store.read_chunked(ctx.store_path, f"{store.PDF}/{name}", (z, slice(None), slice(None), sel), 0)
    # every step named: the geometry and filling only (a library default must not switch on a
    # nonlinear correction of G: the two orders agree because these steps are linear)
    opts = {"center": geo["center"], "fill_bad": ctx.workflow.sinogram.fill_bad, "zingers": False, "background": False,
            "stripes": False, "jitter": False}
    if ctx.workflow.sinogram.jitter and geo.get("shifts_px"):
        opts["jitter"] = np.asarray(geo["shifts_px"])
    return _reconstruct_sub_blocks(ctx, z, sino, opts, array_module(ctx.workflow.recon.engine), filter_only=True)[0]


def reconstruct_pdf_aux(z: int, center, ctx: RunContext, *deps) -> dict:
    """pdf-then-recon, step 2: reconstruct N and the quality inputs of slice ``z``; write the
    per-voxel scale, ok mask and quality figures (the G blocks then divide by this N)."""

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


# ------------------------------------------------------------------------------------------
# how the PDF stages lay out a slice's tasks
# ------------------------------------------------------------------------------------------
def _row_slices(b: SliceTasks) -> list[slice]:
    nx, yc = b.ctx.workflow.scan.nx, b.ctx.layout.y_chunk
    return [slice(a, min(a + yc, nx)) for a in range(0, nx, yc)]


def add_scale_tasks(b: SliceTasks, st) -> None:
    """recon-then-pdf: while a G(r) row block of slice ``b.z`` is to do, every row block's share of
    the scale and edge background, side by side, after the slice's recon tasks still to do."""
    ys = _row_slices(b)
    if b.pending("pdf", len(ys)):
        for y in ys:
            b.add(st.name, y.start, pdf_scale, b.z, y, b.ctx, *b.deps(st))


def add_rows_tasks(b: SliceTasks, st) -> None:
    """recon-then-pdf: the G(r) row blocks of slice ``b.z`` still to do, with every share."""
    ys = _row_slices(b)
    for i in b.pending(st.name, len(ys)):
        b.add(st.name, ys[i].start, pdf_rows, b.z, ys[i], b.ctx, *b.deps(st))


def pdf_points(b: SliceTasks) -> int:
    """The r points of G(r) of the run (the store's, else the operator's)."""
    return b.ctx.extra.get("nr") or pdf_operator(b.ctx).r_A.size


def _r_blocks(b: SliceTasks) -> list[slice]:
    nr = pdf_points(b)
    rc = b.ctx.layout.r_chunk
    return [slice(a, min(a + rc, nr)) for a in range(0, nr, rc)]


def add_frames_tasks(b: SliceTasks, st) -> None:
    """pdf-then-recon: while an r block of slice ``b.z`` is to do, G(r) of every frame block.  They
    wait for the integrate tasks still to do, or for the centre where the edge background needs the
    slice's first and last x steps of every angle."""
    if not b.pending("pdf", len(_r_blocks(b))):
        return
    wf, s, wc = b.ctx.workflow, b.ctx.workflow.scan, b.ctx.layout.omega_chunk
    integ = b.refs.get("integrate", [])
    after = [b.result("center")] if (wf.pdf.background == "edge" or not integ) else integ
    for i in range(-(-s.nomega // wc)):
        b.add(st.name, i * wc, pdf_frames_block, store.FrameBlock(b.z, i * wc, min((i + 1) * wc, s.nomega)),
              b.ctx, *after)


def add_aux_tasks(b: SliceTasks, st) -> None:
    """pdf-then-recon: the scale N and the quality figures of slice ``b.z``, reconstructed."""
    if b.refs.get("pdf-frames"):
        b.add(st.name, 0, reconstruct_pdf_aux, b.z, b.result("center"), b.ctx, *b.refs["pdf-frames"])


def add_blocks_tasks(b: SliceTasks, st) -> None:
    """pdf-then-recon: the r blocks of slice ``b.z`` still to do, reconstructed and divided by N."""
    rs = _r_blocks(b)
    for i in b.pending(st.name, len(rs)):
        b.add(st.name, rs[i].start, reconstruct_pdf_block, b.z, rs[i], b.result("center"), b.ctx,
              b.result("pdf-aux"))
