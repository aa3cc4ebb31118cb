"""The tasks of the graph: plain functions on one block, reading and writing their own regions.

No science here: each stage calls the library (io, integrate, sinogram, recon, pdf) and the store.
Every task takes a :class:`RunContext` (small, picklable) and returns a small dict for the run
summary; what it computed lives in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import store
from .config import Workflow
from .io.cbf import CorruptFrameError, read_cbf_payload
from .io.status import FrameStatus

log = logging.getLogger(__name__)

BATCH_FRAMES = 32  # frames per engine call: the tile accumulators stay in cache
MIN_RELATIVE_SCALE = 0.05  # pdf: voxels below this fraction of the slice's strongest scatterer get G = 0


@dataclass(frozen=True)
class RunContext:
    """What every task needs to know; built once on the client."""

    workflow: Workflow
    store_path: Path
    monitor_reference: float
    wavelength_A: float
    read_threads: int = 4
    check_md5: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.workflow.digest()


# ------------------------------------------------------------------------------------------
# per-process state: integrators are expensive to build (pyFAI's CSR), cheap to reuse
# ------------------------------------------------------------------------------------------
_LOCK = threading.Lock()
_INTEGRATORS: dict[str, object] = {}


def integrator_for(wf: Workflow):
    """The :class:`~xrdct_dask.integrate.Integrator` of a workflow, built once per process."""
    from .integrate import Integrator
    from .integrate.csr import load_image, load_poni

    key = wf.model_dump_json(include={"inputs": {"poni", "mask", "dark", "flat"}, "geometry": True,
                                      "integrate": True})
    with _LOCK:
        integ = _INTEGRATORS.get(key)
        if integ is None:
            i, g, p = wf.inputs, wf.geometry, wf.integrate
            ai = load_poni(i.poni)
            shape = tuple(ai.detector.max_shape) if ai.detector.max_shape is not None else None
            mask = load_image(i.mask) if i.mask else None
            if shape is None:
                shape = mask.shape
            integ = Integrator(ai, shape, p.npt_rad, p.unit, mask=mask,
                               dark=load_image(i.dark) if i.dark else None,
                               flat=load_image(i.flat) if i.flat else None,
                               polarization_factor=g.polarization_factor, solid_angle=g.solid_angle, split=p.split,
                               error_model=p.error_model, outlier=p.outlier, clip_threshold=p.clip_threshold,
                               max_iter=p.max_iter, percentile=p.percentile, radial_range=p.radial_range,
                               engine=p.engine)
            _INTEGRATORS[key] = integ
            log.info("integrator ready: %d bins, %d nnz, engine %s", integ.plan.nbins, integ.plan.nnz, integ.engine)
        return integ


def clear_integrators() -> None:
    with _LOCK:
        _INTEGRATORS.clear()


def block_indices(ctx: RunContext, block: store.FrameBlock) -> np.ndarray:
    """Acquisition indices ``(nw, nx)`` of a block's frames (-1 = not recorded), from the store."""
    arr = store.open_array(ctx.store_path, f"{store.REDUCED}/frame_index", "r")
    return arr[block.z, block.omega_start:block.omega_stop]


def _read(ctx: RunContext, index: int, shape: tuple[int, int]):
    """(payload or None, status) of one frame; never raises for bad data."""
    if index < 0:
        return None, FrameStatus.MISSING
    path = ctx.workflow.frame_path(int(index))
    try:
        payload = read_cbf_payload(path)
    except FileNotFoundError:
        return None, FrameStatus.MISSING
    except CorruptFrameError as err:
        status = FrameStatus.TRUNCATED if "truncated" in str(err) else FrameStatus.CORRUPT_HEADER
        log.warning("%s", err)
        return None, status
    except OSError as err:
        log.warning("%s: %s", path, err)
        return None, FrameStatus.CORRUPT_HEADER
    if payload.shape != shape:
        log.warning("%s: frame is %s, the detector %s", path, payload.shape, shape)
        return None, FrameStatus.WRONG_SHAPE
    if ctx.check_md5 and not payload.check_md5():
        log.warning("%s: Content-MD5 does not match the payload", path)
        return None, FrameStatus.BAD_CHECKSUM
    return payload, FrameStatus.OK


def integrate_block(block: store.FrameBlock, ctx: RunContext) -> dict:
    """Read, decode and integrate the frames of one block and write them to ``reduced/``.

    Frames are streamed in batches of :data:`BATCH_FRAMES` (file reads on a thread pool overlap
    the engine), so memory does not grow with the block.  Bad frames get NaN patterns and a
    status code; the block always completes.
    """
    t0 = time.perf_counter()
    integ = integrator_for(ctx.workflow)
    idx = block_indices(ctx, block)
    nw, nx = idx.shape
    nq = integ.plan.nbins
    flat_idx = idx.reshape(-1)
    intensity = np.full((flat_idx.size, nq), np.nan, np.float32)
    sigma = np.full((flat_idx.size, nq), np.nan, np.float32)
    status = np.zeros(flat_idx.size, np.int8)
    monitor = store.open_array(ctx.store_path, f"{store.REDUCED}/monitor", "r")[
        block.z, block.omega_start:block.omega_stop].reshape(-1).astype(np.float64)
    bad_monitor = ~(np.isfinite(monitor) & (monitor > 0))
    norm = np.where(bad_monitor, 1.0, monitor / ctx.monitor_reference)
    shape = integ.shape
    nbytes = 0
    with ThreadPoolExecutor(ctx.read_threads) as pool:
        batches = [range(a, min(a + BATCH_FRAMES, flat_idx.size)) for a in range(0, flat_idx.size, BATCH_FRAMES)]
        pending = pool.map(lambda b: [_read(ctx, flat_idx[k], shape) for k in b], batches)
        for rows, results in zip(batches, pending):
            rows = np.asarray(rows)
            good = [k for k, (p, st) in zip(rows, results) if st == FrameStatus.OK]
            for k, (_, st) in zip(rows, results):
                status[k] = st
            if good:
                payloads = [results[k - rows[0]][0] for k in good]
                nbytes += sum(len(p.data) for p in payloads)
                res, dec_status = integ.integrate_payloads(payloads, monitor=norm[good])
                intensity[good] = res.intensity
                sigma[good] = res.sigma
                status[good] = np.where(dec_status != 0, FrameStatus.TRUNCATED, FrameStatus.OK)
    status[(status == FrameStatus.OK) & bad_monitor] = FrameStatus.BAD_MONITOR
    bad = status != FrameStatus.OK
    intensity[bad] = np.nan
    sigma[bad] = np.nan
    store.write_reduced(ctx.store_path, block, intensity.reshape(nw, nx, nq), sigma.reshape(nw, nx, nq),
                        monitor.reshape(nw, nx).astype(np.float32), status.reshape(nw, nx))
    counts = {FrameStatus(s).name: int(n) for s, n in zip(*np.unique(status, return_counts=True))}
    return {"stage": "decode-integrate", "z": block.z, "omega_start": block.omega_start, "frames": int(flat_idx.size),
            "bytes": nbytes, "status": counts, "seconds": time.perf_counter() - t0, "engine": integ.engine}


def find_center(z: int, ctx: RunContext, *deps) -> dict:
    """Geometry of slice ``z`` from its q-summed sinogram, prepared as the q blocks will be: the
    rotation axis (pixels; or the workflow's value), with ``sinogram.jitter`` the shift of every
    projection, with ``sinogram.stripes`` the stripe columns.  Every q block of the slice is then
    corrected with these same numbers."""
    from .sinogram import prep_options, prepare_sinogram

    t0 = time.perf_counter()
    total = store.open_array(ctx.store_path, f"{store.REDUCED}/total", "r")[z]
    ok = store.open_array(ctx.store_path, f"{store.REDUCED}/frame_ok", "r")[z]
    omega = store.open_array(ctx.store_path, "omega", "r")[:]
    _, info = prepare_sinogram(total[..., None], ok, omega, **prep_options(ctx.workflow.sinogram))
    return {"stage": "center", "z": z, "center": info["center"], "shifts_px": info["shifts_px"],
            "stripe_columns": info["stripe_columns"], "filled": info["filled"], "seconds": time.perf_counter() - t0}


def reconstruct_block(z: int, qs: slice, center, ctx: RunContext, *deps) -> dict:
    """Prepare the sinograms of slice ``z``, q bins ``qs``, reconstruct them all, write ``recon/``.

    ``center`` is :func:`find_center`'s result (or a number of pixels).  Runs on the GPU when
    ``recon.engine`` resolves to cupy.
    """
    from .backend import to_host, xp_for_engine
    from .recon import reconstruct
    from .sinogram import prep_options, prepare_sinogram

    t0 = time.perf_counter()
    wf = ctx.workflow
    geo = center if isinstance(center, dict) else {"center": float(center)}
    red = ctx.store_path / store.REDUCED
    xp = xp_for_engine(wf.recon.engine)
    sino = xp.asarray(store.open_array(red, "intensity", "r")[z, :, :, qs])
    ok = store.open_array(red, "frame_ok", "r")[z]
    omega = store.open_array(ctx.store_path, "omega", "r")[:]
    opts = prep_options(wf.sinogram) | {"center": geo["center"], "known_stripes": geo.get("stripe_columns")}
    if wf.sinogram.jitter and geo.get("shifts_px"):  # the slice's shifts, from its q-summed sinogram
        opts["jitter"] = np.asarray(geo["shifts_px"])
    sino, info = prepare_sinogram(sino, ok, omega, **opts)
    r = wf.recon
    vol = reconstruct(sino, omega, r.algorithm, filter_name=r.filter, center=info["center"], iterations=r.iterations,
                      nonneg=r.nonneg, threads=wf.compute.threads_per_worker)
    store.open_array(ctx.store_path, f"{store.RECON}/intensity")[z, :, :, qs] = to_host(vol)
    return {"stage": "recon", "z": z, "q": (qs.start, qs.stop), "center": info["center"], "filled": info["filled"],
            "zingers": info["zingers"], "steps": info["steps"], "algorithm": r.algorithm,
            "engine": "cupy" if xp is not np else "numpy", "seconds": time.perf_counter() - t0}


def radial_to_q_A(radial: np.ndarray, unit: str, wavelength_A: float) -> np.ndarray:
    """Radial bin positions in Q (1/A) from the integration unit."""
    if unit == "q_nm^-1":
        return radial / 10.0
    if unit == "q_A^-1":
        return radial
    if unit == "2th_deg":
        return 4 * np.pi * np.sin(np.deg2rad(radial) / 2) / wavelength_A
    raise ValueError(f"cannot convert radial unit {unit!r} to Q")


def pdf_slice(z: int, ctx: RunContext, *deps) -> dict:
    """G(r) of every voxel of slice ``z`` from ``recon/`` into ``pdf/G`` (voxels in row batches)."""
    from .pdf import compute_pdf, operator_for
    from .pdf.transform import pattern_scale

    t0 = time.perf_counter()
    radial = store.open_array(ctx.store_path, "q", "r")[:]
    q_A = radial_to_q_A(radial, ctx.workflow.integrate.unit, ctx.wavelength_A)
    op = operator_for(q_A, ctx.workflow.pdf)
    vol = store.open_array(ctx.store_path, f"{store.RECON}/intensity", "r")[z]  # (ny, nx, nq)
    ny, nx, _ = vol.shape
    vol = np.nan_to_num(vol, nan=0.0)
    out = np.zeros((ny, nx, op.r_A.size), np.float32)
    rows = max(1, 4096 // nx)
    # voxels scattering less than MIN_RELATIVE_SCALE of the slice's strongest hold no sample: G = 0
    scale = np.concatenate([pattern_scale(vol[y0:y0 + rows], op).ravel() for y0 in range(0, ny, rows)])
    min_scale = MIN_RELATIVE_SCALE * float(np.max(scale, initial=0.0))
    for y0 in range(0, ny, rows):
        out[y0:y0 + rows] = compute_pdf(vol[y0:y0 + rows], op, min_scale=min_scale).G
    store.open_array(ctx.store_path, f"{store.PDF}/G")[z] = out
    return {"stage": "pdf", "z": z, "seconds": time.perf_counter() - t0}
