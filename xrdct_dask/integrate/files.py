"""The Integrator reads its own frames: :func:`integrate_source` of a frame source's indices.

One contract for every engine and every source: ``(source, indices, monitor) -> (intensity,
sigma, status)``, where bad frames get NaN patterns and a :class:`~xrdct_dask.io.status.FrameStatus`
code and never raise.  How the frames reach the engine depends on both:

* a CBF template on the CPU (or gzip / bzip2 files anywhere): files read on a thread pool a few
  batches ahead, their byte-offset payloads decoded and integrated in one pass
  (:meth:`~xrdct_dask.integrate.Integrator.integrate_batches`);
* a CBF template on a GPU: whole files read straight into the engine's page-locked arenas, only
  compressed bytes cross PCIe (:meth:`~xrdct_dask.integrate._cupy.CupyEngine.file_batches`);
* an HDF5 source on the CPU: the chunks read with ``read_direct_chunk`` and decoded on the host
  (bitshuffle-LZ4 / LZ4 without the GIL), the counts integrated by the engine;
* an HDF5 source on a GPU: the chunks read raw into the engine's page-locked arenas, only their
  compressed bytes cross PCIe, decoded there (:meth:`~xrdct_dask.integrate._cupy.CupyEngine.h5_batches`,
  :mod:`~xrdct_dask.io.gpu_hdf5`).

Per-process reading state (thread pools) belongs to the engine, built with it (the worker
plugin builds the integrator once per worker).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from xrdct_dask.io.source import HDF5_SOURCES, Hdf5Frames, read_batch, refreshed
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


def integrate_source(integ, source, indices, monitor, *, read_threads: int = 8, check_md5: bool = False):
    """Integrate frames ``indices`` (acquisition order, -1 = no frame) of ``source``.

    Returns ``intensity``, ``sigma`` float32 ``(n, nbins)`` (NaN for frames that are not OK),
    ``status`` int8 ``(n,)`` and the bytes read.  ``monitor`` ``(n,)`` normalises each frame
    (pyFAI's normalization_factor).  Frames stream through in batches of ``integ.batch_frames``.
    """

    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n, nq = idx.size, integ.plan.nbins
    intensity = np.full((n, nq), np.nan, np.float32)
    sigma = np.full((n, nq), np.nan, np.float32)
    status = np.zeros(n, np.int8)
    norm = np.asarray(monitor, np.float64).reshape(-1)
    step = integ.batch_frames
    batches = [np.arange(a, min(a + step, n)) for a in range(0, n, step)]
    pending: deque = deque()  # good rows of the batches handed to the engine, awaiting results
    stats = {"bytes": 0}
    if isinstance(source, Hdf5Frames) and integ.engine == "cupy":  # chunks decoded on the GPU
        results = integ._impl.h5_batches(refreshed(source, idx), idx, batches, norm, status, pending, stats,
                                         read_threads)
    elif isinstance(source, HDF5_SOURCES):  # a file per slice or line (Hdf5Template): decoded on the host
        results = _hdf5_batches(integ, refreshed(source, idx), idx, batches, norm, status, pending, stats, read_threads)
    elif integ.engine == "cupy" and not compressed(source):
        results = integ._impl.file_batches(source, idx, batches, norm, status, pending, stats, read_threads,
                                           check_md5)
    else:
        results = _payload_batches(integ, source, idx, batches, norm, status, pending, stats, read_threads,
                                   check_md5)
    for res_i, res_s, dec_status in results:
        good = pending.popleft()
        intensity[good] = res_i
        sigma[good] = res_s
        # the engines' decoders give FrameStatus codes (CBF byte-offset: 1 = TRUNCATED; HDF5 chunks:
        # TRUNCATED, SIZE_MISMATCH, CORRUPT_HEADER)
        status[good] = np.where(dec_status > 0, dec_status, np.where(dec_status < 0, FrameStatus.TRUNCATED,
                                                                     FrameStatus.OK))
    return intensity, sigma, status, stats["bytes"]


def _payload_batches(integ, source, idx, batches, norm, status, pending, stats, read_threads, check_md5):
    """CBF payloads read on a thread pool (three batches ahead), decoded and integrated by the engine."""
    shape = integ.shape
    pool = ThreadPoolExecutor(read_threads, thread_name_prefix="xrdct-read")

    def engine_batches(reads):
        for rows, results in zip(batches, reads):
            status[rows] = [st for _, st in results]
            good = np.asarray([k for k, (_, st) in zip(rows, results) if st == FrameStatus.OK], dtype=np.int64)
            if good.size == 0:
                continue
            payloads = [results[k - rows[0]][0] for k in good]
            stats["bytes"] += sum(len(p.data) for p in payloads)
            pending.append(good)
            yield payloads, norm[good]

    try:
        reads = prefetch(pool, lambda rows: [read_payload(source, idx[k], shape, check_md5) for k in rows], batches)
        yield from integ.integrate_batches(engine_batches(reads))
    finally:
        pool.shutdown()


def _hdf5_batches(integ, source, idx, batches, norm, status, pending, stats, read_threads):
    """HDF5 chunks read raw and decoded on the host a batch ahead (:func:`~xrdct_dask.io.source.read_batch`),
    the counts integrated by the engine (uploaded where it is a GPU)."""

    pool = ThreadPoolExecutor(1, thread_name_prefix="xrdct-h5")

    def read(rows):
        frames, st = read_batch(source, idx[rows], threads=max(1, read_threads // 2))
        return rows, frames, st

    try:
        for rows, frames, st in prefetch(pool, read, batches, 2):
            status[rows] = st
            keep = st == FrameStatus.OK
            if not keep.any():
                continue
            good = rows[keep]
            stats["bytes"] += int(frames[keep].nbytes)
            pending.append(good)
            res = integ.integrate(frames[keep], norm[good])
            yield res.intensity, res.sigma, np.zeros(good.size, np.int32)
    finally:
        pool.shutdown(wait=False)


def warm(integ, source, tasks: int, nframes: int, sample: int = 64, hdf5: bool = False) -> None:
    """Ready an integrator for ``tasks`` concurrent tasks on ``source``: kernels compiled (and on a
    GPU reading CBF files or HDF5 chunks, the pinned read arenas sized and every pipeline run once,
    :meth:`~xrdct_dask.integrate._cupy.CupyEngine.warm_files`, :meth:`~xrdct_dask.integrate._cupy.CupyEngine.warm_h5`;
    ``source`` None, not there yet: :meth:`~xrdct_dask.integrate._cupy.CupyEngine.warm_blank`)."""

    integ.warm_up()
    if integ.engine != "cupy":
        return
    if source is None:  # the source cannot be opened yet (before the acquisition): a blank frame, as ``hdf5`` says
        integ._impl.warm_blank(tasks, hdf5=hdf5)
        return
    if isinstance(source, Hdf5Frames):  # arenas sized from the first chunk, every pipeline run once
        integ._impl.warm_h5(source, tasks)
        return
    if isinstance(source, HDF5_SOURCES) or compressed(source):  # decoded on the host: no file arenas to size
        integ._impl.warm(integ.batch_frames, integ._impl.slot_bytes, rings=tasks)
        return
    integ._impl.warm_files(source, tasks, nframes, sample)
