"""Reading a frame source for an engine: the paths every engine shares.

An engine's :meth:`~xrdct_dask.integrate.engine.Engine.integrate_source` decides how frames reach
it (:mod:`xrdct_dask.integrate.engine`).  Two paths are the same on every engine and live here:

* CBF payloads read on a thread pool a few batches ahead, decoded and integrated by the engine's
  batch pipeline (:func:`payload_batches`; the CPU engine always, the GPU engine for gzip / bzip2
  files, which are decompressed on the host);
* HDF5 frames decoded on the host (bitshuffle-LZ4 / LZ4 without the GIL) and integrated as counts
  (:func:`host_hdf5_batches`; the CPU engine, and a file per slice or line on a GPU).

The GPU engine's own paths (whole CBF files read into page-locked arenas, HDF5 chunks decoded on
the device) are in :mod:`xrdct_dask.integrate._cupy_sources`.  Bad frames get a
:class:`~xrdct_dask.io.status.FrameStatus` and never raise.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from xrdct_dask.backend import to_host
from xrdct_dask.integrate.engine import Read, SourceBatch, pipeline_batches
from xrdct_dask.integrate.sums import finish, kept_sums
from xrdct_dask.io.source import read_batch
from xrdct_dask.io.status import FrameStatus, frame_message, status_of

log = logging.getLogger(__name__)


def prefetch(pool, fn, items, depth: int = 3):
    """``map(fn, items)`` on ``pool`` with at most ``depth`` results in flight (bounded memory).

    The first ``depth`` calls are submitted now, not at the first ``next()``: reading starts while
    the engine is still busy with another task."""
    items = iter(items)
    q = deque(pool.submit(fn, it) for _, it in zip(range(depth), items))

    def results():
        while q:
            yield q.popleft().result()
            nxt = next(items, None)
            if nxt is not None:
                q.append(pool.submit(fn, nxt))

    return results()


def batches_of(n: int, step: int) -> list[np.ndarray]:
    """Rows ``0 .. n-1`` in batches of ``step``."""
    return [np.arange(a, min(a + step, n)) for a in range(0, n, step)]


def compressed(source) -> bool:
    """CBF files kept gzip / bzip2 compressed (archives): decompressed on the host."""
    return str(source.spec).endswith((".gz", ".bz2"))


def read_payload(source, index: int, shape: tuple[int, int], check_md5: bool = False):
    """``(payload or None, status)`` of frame ``index`` of a CBF template; never raises for bad data."""
    if index < 0:
        return None, FrameStatus.MISSING
    path = source.path(int(index))
    try:
        payload = source.read_payload(int(index))
    except (OSError, ValueError) as err:  # CorruptFrameError is a ValueError
        if not isinstance(err, FileNotFoundError):
            log.warning("%s", frame_message(path, err))
        return None, status_of(err)
    if payload.shape != shape:
        log.warning("%s: frame is %s, the detector %s", path, payload.shape, shape)
        return None, FrameStatus.WRONG_SHAPE
    if check_md5 and not payload.check_md5():
        log.warning("%s: Content-MD5 does not match the payload", path)
        return None, FrameStatus.BAD_CHECKSUM
    return payload, FrameStatus.OK


def payload_batches(engine, source, idx: np.ndarray, norm: np.ndarray, shape: tuple[int, int], *,
                    read_threads: int = 8, check_md5: bool = False):
    """CBF payloads of frames ``idx`` read on a thread pool (three batches ahead), decoded and
    integrated by ``engine.integrate_batches``: :class:`~xrdct_dask.integrate.engine.SourceBatch` es."""
    pool = ThreadPoolExecutor(read_threads, thread_name_prefix="xrdct-read")
    batches = batches_of(idx.size, engine.batch_frames)

    def reads():
        results = prefetch(pool, lambda rows: [read_payload(source, idx[k], shape, check_md5) for k in rows], batches)
        for rows, got in zip(batches, results):
            status = np.array([st for _, st in got], np.int8)
            keep = status == FrameStatus.OK
            good = rows[keep]
            payloads = [p.data for (p, _), k in zip(got, keep) if k]
            feeds = [(good, payloads, norm[good], sum(len(p) for p in payloads))] if good.size else []
            yield Read(rows, status, feeds)

    try:
        yield from pipeline_batches(engine.integrate_batches, reads())
    finally:
        pool.shutdown()


def counts_pipeline(engine):
    """An engine pipeline of decoded counts: ``(frames (n, ny, nx), monitor)`` in, ``(intensity, sigma,
    status 0[, sums])`` host arrays out (the sums on the engine, uploaded where it is a GPU)."""
    keep = getattr(engine.options, "keep_sums", False)

    def run(items):
        for frames, monitor in items:
            s = engine.sums(frames, monitor)
            intensity, sigma = finish(s, engine.error_model, engine.xp)
            out = to_host(intensity), to_host(sigma), np.zeros(len(frames), np.int32)
            yield out + (to_host(kept_sums(s, None, engine.xp)),) if keep else out

    return run


def host_hdf5_reads(source, idx: np.ndarray, batches, norm: np.ndarray, read_threads: int = 8):
    """:class:`~xrdct_dask.integrate.engine.Read` s of HDF5 frames decoded on the host a batch ahead
    (:func:`~xrdct_dask.io.source.read_batch`): counts for the rows read whole."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="xrdct-h5")

    def read(rows):
        frames, st = read_batch(source, idx[rows], threads=max(1, read_threads // 2))
        return rows, frames, st

    try:
        for rows, frames, st in prefetch(pool, read, batches, 2):
            keep = st == FrameStatus.OK
            good = rows[keep]
            feeds = [(good, frames[keep], norm[good], int(frames[keep].nbytes))] if keep.any() else []
            yield Read(rows, st, feeds)
    finally:
        pool.shutdown(wait=False)


def host_hdf5_batches(engine, source, idx: np.ndarray, norm: np.ndarray, *, read_threads: int = 8):
    """HDF5 frames decoded on the host and integrated by ``engine``: :class:`SourceBatch` es."""
    return pipeline_batches(counts_pipeline(engine),
                            host_hdf5_reads(source, idx, batches_of(idx.size, engine.batch_frames), norm, read_threads))


def assemble(batches, n: int, nbins: int, sums: bool = False):
    """A task's arrays from an engine's :class:`SourceBatch` es: ``intensity``, ``sigma`` float32
    ``(n, nbins)`` (NaN where not OK), ``status`` int8 ``(n,)``, the bytes read, and with ``sums``
    the kept sums float32 ``(5, n, nbins)`` (NaN where not OK), else None."""
    intensity = np.full((n, nbins), np.nan, np.float32)
    sigma = np.full((n, nbins), np.nan, np.float32)
    kept = np.full((5, n, nbins), np.nan, np.float32) if sums else None
    status = np.zeros(n, np.int8)
    nbytes = 0
    for b in batches:
        b: SourceBatch
        status[b.rows] = b.status
        if b.intensity is not None:
            intensity[b.rows] = b.intensity
            sigma[b.rows] = b.sigma
            if kept is not None:
                kept[:, b.rows] = b.sums
        nbytes += b.nbytes
    return intensity, sigma, status, nbytes, kept
