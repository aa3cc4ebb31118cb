"""The integrate stage's task: read, decode and integrate one block of frames, write it to ``reduced/``."""

from __future__ import annotations

import logging
import time

import numpy as np
from distributed import get_worker

from xrdct_dask import store
from xrdct_dask.backend import engine_of
from xrdct_dask.io.status import FrameStatus, usable
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.frames import frame_source
from xrdct_dask.pipeline.integrator import integrator_for
from xrdct_dask.pipeline.task import SliceTasks

log = logging.getLogger(__name__)


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
    pattern = integ.plan.pattern_shape  # (nq,), or (nchi, nq) with sectors
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
    intensity, sigma, status, nbytes, *sums = integ.integrate_source(
        frame_source(ctx.workflow), flat_idx, np.where(bad_monitor, 1.0, ratio), read_threads=ctx.read_threads,
        check_md5=ctx.check_md5)
    sums = sums[0] if sums else None  # integrate.keep_sums: (5, frames, *pattern)
    t_write = time.perf_counter()
    status[(status == FrameStatus.OK) & bad_monitor] = FrameStatus.BAD_MONITOR
    # a good frame the scan file placed (recorded twice, or out of acquisition order) keeps that note
    flag = store.open_array(ctx.store_path, f"{store.REDUCED}/scan_flag", "r")[
        block.z, block.omega_start:block.omega_stop].reshape(-1)
    status = np.where((status == FrameStatus.OK) & (flag > 0), flag, status).astype(np.int8)
    bad = ~usable(status)
    intensity[bad] = np.nan
    sigma[bad] = np.nan
    if sums is not None:
        sums[:, bad] = np.nan
    store.write_reduced(ctx.store_path, block, intensity.reshape(nw, nx, *pattern), sigma.reshape(nw, nx, *pattern),
                        monitor.reshape(nw, nx).astype(np.float32), status.reshape(nw, nx),
                        sums=None if sums is None else sums.reshape(5, nw, nx, *pattern))
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

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _engine(xp) -> str:

    return engine_of(xp)


def add_tasks(b: SliceTasks, st) -> None:
    """The integrate tasks of slice ``b.z`` still to do: one per block of ``store.omega_chunk`` angles."""
    s, wc = b.ctx.workflow.scan, b.ctx.layout.omega_chunk
    for i in b.pending(st.name, -(-s.nomega // wc)):
        b.add(st.name, i * wc, integrate_block, store.FrameBlock(b.z, i * wc, min((i + 1) * wc, s.nomega)), b.ctx)
