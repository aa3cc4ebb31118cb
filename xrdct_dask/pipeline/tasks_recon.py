"""The centre and recon stages' tasks: a slice's rotation axis, and FBP/SIRT/CGLS of a q block."""

from __future__ import annotations

import logging
import time

import numpy as np

from xrdct_dask import store
from xrdct_dask.backend import release, to_host
from xrdct_dask.config import Workflow
from xrdct_dask.gpushare import device_share
from xrdct_dask.pipeline.centering import measured_q, slice_geometry, stored_geometry
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.task import SliceTasks
from xrdct_dask.pipeline.tasks_integrate import _engine
from xrdct_dask.recon import array_module, reconstruct
from xrdct_dask.sinogram import prep_options, prepare_sinogram
from xrdct_dask.sinogram.absorption import (
    absorption_reconstruct,
    mu_from_scattering,
    mu_from_transmission,
    two_theta_deg,
)
from xrdct_dask.sinogram.air import AirColumns
from xrdct_dask.store.budget import gpu_q_sub

log = logging.getLogger(__name__)


def find_center(z: int, ctx: RunContext, *deps) -> dict:
    """Geometry of slice ``z`` (:func:`xrdct_dask.pipeline.centering.slice_geometry`): the rotation
    axis (pixels; or the workflow's value), the air columns (``sinogram.background: auto``), with
    ``sinogram.jitter`` the shift of every projection, with ``sinogram.stripes`` the stripe
    segments; with ``sinogram.absorption`` the slice's attenuation map (``recon/mu``).  Every q
    block of the slice is then corrected with these same numbers."""

    t0 = time.perf_counter()
    summed: list = []
    geo = slice_geometry(ctx, z, sinogram_out=summed)
    if ctx.workflow.sinogram.absorption != "off":  # the slice's attenuation map, with its geometry
        store.write_region(ctx.store_path, f"{store.RECON}/mu", (z,),
                           slice_attenuation(z, ctx, summed[0][..., None], geo)[None])
    store.mark_done(ctx.store_path, "center", (z,), float(geo["center"]))
    return {"stage": "center", "z": z, **geo, "seconds": time.perf_counter() - t0}


def slice_attenuation(z: int, ctx: RunContext, prepared_total, info: dict) -> np.ndarray:
    """The attenuation map (nx, nx) per x step of slice ``z`` for ``sinogram.absorption``: from
    ``reduced/transmission`` (monitor-normalised, :func:`~xrdct_dask.sinogram.absorption.mu_from_transmission`)
    or from the prepared q-summed sinogram (:func:`~xrdct_dask.sinogram.absorption.mu_from_scattering`, mu
    per mm times the x step), with the slice's centre and jitter shifts."""
    sg = ctx.workflow.sinogram
    omega = store.open_array(ctx.store_path, "omega", "r")[:]
    shifts = None if info.get("shifts_px") is None else np.asarray(info["shifts_px"])
    if sg.absorption == "transmission":
        red = ctx.store_path / store.REDUCED
        monitor = store.open_array(red, "monitor", "r")[z].astype(np.float64)
        trans = store.open_array(red, "transmission", "r")[z] / (monitor / ctx.monitor_reference)
        good = np.isfinite(trans) & (trans > 0)
        mu, _ = mu_from_transmission(trans, good, omega, info["center"], sg.absorption_air, sg.background_columns,
                                     shifts)
    else:
        x = store.open_array(ctx.store_path, "x", "r")[:]
        step_mm = float(np.median(np.abs(np.diff(x)))) if x.size > 1 else 1.0
        assert sg.absorption_mu_max_per_mm is not None  # the schema: absorption: scattering needs it
        mu = mu_from_scattering(np.asarray(to_host(prepared_total))[..., 0], omega, info["center"],
                                sg.absorption_mu_max_per_mm * step_mm)
    return np.asarray(to_host(mu), np.float32)


def _absorption_inputs(ctx: RunContext, z: int, qs: slice) -> dict | None:
    """What the self-absorption correction of slice ``z``, q bins ``qs`` needs: the slice's
    attenuation map (``recon/mu``) and each bin's 2theta (degrees); None when it is off."""
    if ctx.workflow.sinogram.absorption == "off":
        return None
    radial = store.open_array(ctx.store_path, "q", "r")[qs]
    return {"mu": store.open_array(ctx.store_path, f"{store.RECON}/mu", "r")[z],
            "two_theta": two_theta_deg(radial, ctx.workflow.integrate.unit, ctx.wavelength_A)}


def _geometry(center) -> dict:
    return center if isinstance(center, dict) else {"center": float(center)}


def slice_backgrounds(ctx: RunContext, geo: dict, qs: slice) -> dict:
    """:func:`~xrdct_dask.sinogram.prepare_sinogram` options of a q block from the slice's geometry:
    the air columns its centre task found (``sinogram.background: auto``; None: found in the
    block) and the measured background's bins ``qs``."""
    air = geo.get("air")
    return {"air_columns": AirColumns.from_dict(air) if air else None, "measured_background": measured_q(ctx, qs)}


def _reconstruct_sub_blocks(ctx: RunContext, z: int, sino: np.ndarray, opts: dict, xp, filter_only: bool = False,
                            absorption: dict | None = None):
    """Prepare (:func:`~xrdct_dask.sinogram.corrections.prepare_sinogram` with ``opts``) and reconstruct a
    host sinogram block ``(nomega, nx, n)`` of slice ``z``, ``layout.q_sub`` bins at a time on ``xp``'s device
    (every correction acts on each bin alone, with the slice's geometry in ``opts``).  Returns the
    host volume ``(nx, nx, n)`` float32 and the last sub-block's preparation info.
    ``filter_only``: FBP with the workflow's filter whatever recon.algorithm says (G(r) sinograms).
    ``absorption``: :func:`_absorption_inputs` of the block: corrected for self-absorption
    (:func:`~xrdct_dask.sinogram.absorption.absorption_reconstruct`)."""

    r = ctx.workflow.recon
    ok = store.open_array(ctx.store_path / store.REDUCED, "frame_ok", "r")[z]
    omega = store.open_array(ctx.store_path, "omega", "r")[:]
    nx, n = sino.shape[1], sino.shape[2]
    vol = np.empty((nx, nx, n), np.float32)
    info: dict = {}
    zingers = 0
    air_model = np.full((2, n), np.nan, np.float32)  # the air subtracted per q (background auto)
    measured = opts.pop("measured_background", None)
    step = _device_q_sub(ctx, xp, omega.size, nx)
    for a in range(0, n, step):
        b = min(a + step, n)
        sub = None if measured is None else measured[..., a:b]
        prepared, info = prepare_sinogram(xp.asarray(sino[..., a:b]), ok, omega, measured_background=sub, **opts)
        if info.get("air_model") is not None:
            air_model[:, a:b] = info["air_model"]

        def run(s, c=info["center"]):
            return reconstruct(s, omega, "fbp" if filter_only else r.algorithm, filter_name=r.filter, center=c,
                               iterations=r.iterations, nonneg=r.nonneg,
                               threads=ctx.workflow.compute.threads_per_worker, engine=r.engine)

        if absorption is None:
            out = run(prepared)
        else:
            sg = ctx.workflow.sinogram
            out = absorption_reconstruct(prepared, omega, xp.asarray(absorption["mu"]), absorption["two_theta"][a:b],
                                         run, center=info["center"], iterations=sg.absorption_iterations,
                                         exit=sg.absorption_exit)
        vol[..., a:b] = to_host(out)
        zingers += info["zingers"]
        del prepared, out
    return vol, info | {"zingers": zingers, "air_model": air_model}


def _device_q_sub(ctx: RunContext, xp, nomega: int, nx: int) -> int:
    """q bins prepared and reconstructed at once: the layout's ``q_sub``, on a GPU no more than
    this worker's share of it lets a task hold (:func:`~xrdct_dask.store.budget.gpu_q_sub`)."""
    share = device_share(xp)
    if share is None or not share.task_bytes:
        return ctx.layout.q_sub
    return gpu_q_sub(share.task_bytes, nomega, nx, ctx.layout.q_sub, iterative=ctx.workflow.recon.algorithm != "fbp")


def reconstruct_block(z: int, qs: slice, center, ctx: RunContext, *deps) -> dict:
    """Prepare the sinograms of slice ``z``, q bins ``qs``, reconstruct them, write ``recon/``
    (:func:`reconstruct_sector_block` with no sectors)."""
    return reconstruct_sector_block(z, None, qs, center, ctx)


def reconstruct_sector_block(z: int, chi: int | None, qs: slice, center, ctx: RunContext, *deps) -> dict:
    """Prepare the sinograms of slice ``z``, sector ``chi`` (None: no sectors), q bins ``qs``,
    reconstruct them, write ``recon/``.

    ``center`` is :func:`find_center`'s result (or a number of pixels).  The block is prepared and
    reconstructed ``layout.q_sub`` bins at a time, so the task holds the block's sinogram and
    volume and one sub-block's temporaries (:func:`xrdct_dask.store.budget.recon_bytes`).  Runs on the
    GPU where ``recon.engine`` resolves to cupy (the sub-blocks are uploaded, the volume downloaded).
    """

    t0 = time.perf_counter()
    wf = ctx.workflow
    geo = _geometry(center)
    xp = array_module(wf.recon.engine)
    # (nomega, nx, nq_block), one omega chunk at a time
    bins = (qs,) if chi is None else (int(chi), qs)  # the block's (chi, q) index in reduced/ and recon/
    sino = store.read_chunked(ctx.store_path, f"{store.REDUCED}/intensity", (z, slice(None), slice(None), *bins), 0)
    opts = prep_options(wf.sinogram) | {"center": geo["center"],
                                        "known_stripes": geo.get("stripe_segments", geo.get("stripe_columns"))}
    if wf.sinogram.jitter and geo.get("shifts_px"):  # the slice's shifts, from its q-summed sinogram
        opts["jitter"] = np.asarray(geo["shifts_px"])
    opts |= slice_backgrounds(ctx, geo, qs)
    vol, info = _reconstruct_sub_blocks(ctx, z, sino, opts, xp, absorption=_absorption_inputs(ctx, z, qs))
    del sino
    release(xp)
    store.write_chunked(ctx.store_path, f"{store.RECON}/intensity", (z, slice(None), slice(None), *bins), vol, 0)
    if info.get("air_model") is not None and chi is None:  # (z, 2, q): one model per q bin, of 1D runs only
        store.write_region(ctx.store_path, f"{store.RECON}/air_model", (z, slice(None), qs), info["air_model"])
    nqb = 0 if chi is None else -(-store.open_array(ctx.store_path, "q", "r").shape[0] // ctx.layout.q_chunk)
    store.mark_done(ctx.store_path, "recon", (z, (chi or 0) * nqb + qs.start // ctx.layout.q_chunk))
    return {"stage": "recon", "z": z, "q": (qs.start, qs.stop), **({} if chi is None else {"chi": int(chi)}),
            "center": info["center"], "filled": info["filled"],
            "zingers": info["zingers"], "steps": info["steps"], "algorithm": wf.recon.algorithm,
            "engine": "astra" if wf.recon.engine == "astra" else _engine(xp), "seconds": time.perf_counter() - t0}


def warm_slice_stages(wf: Workflow, nq: int = 4) -> dict:
    """Run the slice stages' computations once, in this process, on a synthetic slice of the
    scan's shape: the q-summed sinogram prepared as :func:`find_center` does, then ``nq`` q bins
    prepared and reconstructed as :func:`reconstruct_block` does (the workflow's corrections,
    algorithm, filter and engine; a centred disc, a few frames flagged so the filling runs).  The
    kernels these compile (cupy's modules, numba's functions) are then ready before the first
    real slice.  Live mode runs it on every worker while it waits for the first frame.

    Never raises: returns ``{"seconds", "engine"}``, or ``{"error"}`` saying why it could not run
    (the first slice then compiles them, as in a batch run)."""

    t0 = time.perf_counter()
    try:
        s, r = wf.scan, wf.recon
        xp = array_module(r.engine)
        omega = np.linspace(0.0, 180.0, s.nomega, endpoint=False)
        x = np.arange(s.nx) - (s.nx - 1) / 2
        disc = 2 * np.sqrt(np.clip((0.4 * s.nx) ** 2 - x**2, 0, None)) + 1.0  # chord lengths of a centred disc
        sino = (disc[None, :, None] * np.arange(1, nq + 1)[None, None, :] * np.ones((s.nomega, 1, 1))).astype(
            np.float32)
        ok = np.ones((s.nomega, s.nx), bool)
        ok[0, : min(3, s.nx)] = False
        _, geo = prepare_sinogram(sino.sum(axis=-1, keepdims=True), ok, omega, **prep_options(wf.sinogram))
        opts = prep_options(wf.sinogram) | {"center": geo["center"], "known_stripes": geo["stripe_segments"]}
        if wf.sinogram.jitter and geo.get("shifts_px"):
            opts["jitter"] = np.asarray(geo["shifts_px"])
        prepared, info = prepare_sinogram(xp.asarray(sino), ok, omega, **opts)
        to_host(reconstruct(prepared, omega, r.algorithm, filter_name=r.filter, center=info["center"],
                            iterations=None if r.iterations is None else min(r.iterations, 2), nonneg=r.nonneg,
                            threads=wf.compute.threads_per_worker, engine=r.engine))
        del prepared
        release(xp)
    except Exception as err:  # a warm-up must never stop a run
        return {"error": f"{type(err).__name__}: {err}"}
    return {"seconds": time.perf_counter() - t0, "engine": _engine(xp)}


def add_center_tasks(b: SliceTasks, st) -> None:
    """The centre task of slice ``b.z``, after its integrate tasks still to do.  A resumed slice
    reuses its stored centre, unless its preparation also needs the slice's jitter shifts or stripe
    columns (found with the centre, not stored)."""
    wf = b.ctx.workflow
    deps = b.deps(st)
    stored = b.stored_value(st.name)
    recorded = stored_geometry(b.ctx.store_path, b.z) if not deps and stored is not None else None
    if recorded is not None:  # the geometry the slice's centre task recorded (centre, air, stripes, shifts)
        b.values[st.name] = recorded
    elif not deps and stored is not None and not (wf.sinogram.jitter or wf.sinogram.stripes):
        b.values[st.name] = stored  # a store made before the geometry was recorded: its centre
    else:
        b.add(st.name, 0, find_center, b.z, b.ctx, *deps)


def add_recon_tasks(b: SliceTasks, st) -> None:
    """The recon tasks of slice ``b.z`` still to do: one per block of ``layout.q_chunk`` bins (of each
    sector: task ``k * nqb + j`` is sector k, q block j), with the slice's centre."""
    nq, qc = b.nq, b.ctx.layout.q_chunk
    nqb, nchi = -(-nq // qc), b.ctx.workflow.integrate.npt_azim
    center = b.result(st.after[0])
    for i in b.pending(st.name, nchi * nqb):
        k, j = divmod(i, nqb)
        qs = slice(j * qc, min((j + 1) * qc, nq))
        if nchi == 1:
            b.add(st.name, j * qc, reconstruct_block, b.z, qs, center, b.ctx)
        else:  # keyed by the block's first (chi, q) bin, flat
            b.add(st.name, k * nq + j * qc, reconstruct_sector_block, b.z, k, qs, center, b.ctx)
