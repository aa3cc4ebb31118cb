"""The GPU engine's own ways to read a source: whole CBF files straight into page-locked arenas,
HDF5 chunks read raw and decoded on the device; the warm-up of its arenas and pipelines.

A mixin of :class:`~xrdct_dask.integrate._cupy.CupyEngine` (its buffers, pipelines and kernels are
the engine's); the paths every engine shares are in :mod:`xrdct_dask.integrate.files`.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from fabio.cbfimage import CbfImage

from xrdct_dask.backend import cp
from xrdct_dask.integrate.engine import Read, SourceBatch, pipeline_batches
from xrdct_dask.integrate.files import batches_of, compressed, prefetch
from xrdct_dask.io.cbf import CbfPayload, CorruptFrameError
from xrdct_dask.io.gpu_decode import pinned_empty, read_into_pinned
from xrdct_dask.io.gpu_hdf5 import FILTER_NAMES_GPU, plan_chunks
from xrdct_dask.io.hdf5 import FILES, RawChunks, decode_chunks
from xrdct_dask.io.source import Hdf5Frames, as_counts, decoded_on_host, out_of_range, read_batch
from xrdct_dask.io.status import FrameStatus, frame_message, status_of

log = logging.getLogger(__name__)
BATCH_FRAMES = 128  # frames per launch (Integrator.batch_frames on a GPU)


@dataclass
class H5Batch:
    """A batch of HDF5 chunks for :meth:`CupyEngine._launch_h5`: chunk f is ``buffer[beg[f]:end[f]]``
    (``buffer`` pinned), ``filt`` its filter, ``plan`` the kernels' :class:`~xrdct_dask.io.gpu_hdf5.ChunkPlan`,
    ``dtype`` the dataset's; or ``frames`` (n, ny, nx) decoded on the host (int32 counts, or float32
    of a float dataset: :func:`~xrdct_dask.io.source.as_counts`)."""

    buffer: np.ndarray | None
    beg: np.ndarray | None
    end: np.ndarray | None
    filt: np.ndarray | None
    plan: object
    dtype: np.dtype
    frames: np.ndarray | None = None
    uploaded: object = None  # CUDA event: the buffer has been copied to the device

    @property
    def nframes(self) -> int:
        return len(self.frames) if self.frames is not None else len(self.beg)


@functools.cache
def _say_once(message: str) -> None:
    log.warning("%s", message)


class SourcesMixin:
    """Reading sources into the engine's pinned arenas, and warming it up (see the module docstring)."""

    RING = 4  # pinned read arenas: reads of batches k+1, k+2 while batches k-1, k are on the GPU

    def warm(self, source, tasks: int, nframes: int, *, hdf5: bool = False) -> None:
        """Ready this engine for ``tasks`` concurrent tasks on ``source`` (of ``nframes`` frames):
        the pinned read arenas sized and every pipeline run once through every arena of its ring
        (:meth:`warm_files`, :meth:`warm_h5`); ``source`` None, not there yet: a blank frame
        (:meth:`warm_blank`); sources decoded on the host: buffers only."""
        if source is None:  # the source cannot be opened yet (before the acquisition): a blank frame
            self.warm_blank(tasks, hdf5=hdf5)
        elif isinstance(source, Hdf5Frames):  # arenas sized from the first chunk, every pipeline run once
            self.warm_h5(source, tasks)
        elif decoded_on_host(source) or compressed(source):  # decoded on the host: no file arenas
            self._allocate(self.batch_frames, self.slot_bytes, rings=tasks)
        else:
            self.warm_files(source, tasks, nframes)

    def _allocate(self, nframes: int, bytes_per_frame: int, rings: int = 0, fill=None) -> None:
        """Set up ``rings`` pipelines and rings of pinned read arenas for batches of ``nframes``
        files of ``bytes_per_frame`` before the first task (worker start-up: pinning ~2 GB of host
        memory per ring takes a good part of a second).

        ``fill(get_arena) -> (arena, begin, end)`` reads a batch of real payloads into an arena
        (as a task does; or returns an :class:`H5Batch` of HDF5 chunks read into it); each
        pipeline then integrates one such batch from every arena of its ring, so that every
        device buffer (per slot and per stream) is allocated and every page of the arenas has
        been written and sent once before a task's time counts."""
        rings = max(rings, 1)
        pipes = [self._take_pipeline() for _ in range(rings)]
        new = [self.arena_ring() for _ in range(rings)]
        for slot in (s for pipe in pipes for s in pipe):
            slot.reserve(0, nframes)
            if slot.dev_in is None or slot.dev_in.size < nframes * bytes_per_frame:
                slot.dev_in = cp.empty(int(nframes * bytes_per_frame * 1.25), dtype=cp.uint8)
        for pipe, ring in zip(pipes, new):
            for k in range(self.RING):
                self.arena(ring, k, nframes * bytes_per_frame)
            if fill is not None:
                batches = (fill(lambda nbytes, k=k, ring=ring: self.arena(ring, k, nbytes)) for k in range(self.RING))
                for _ in self.integrate_batches(((b, np.ones(b.nframes if isinstance(b, H5Batch) else len(b[1])))
                                                 for b in batches), packed=True, pipeline=pipe):
                    pass
            else:
                self._give_pipeline(pipe)
        for ring in new:
            self.release_ring(ring)

    def _read_pools(self, read_threads: int):
        """This engine's reader threads (per process, shared by its tasks, made with the first)."""
        with self._arena_lock:
            if self._pools is None:
                self._pools = (ThreadPoolExecutor(4, thread_name_prefix="xrdct-batch"),
                               ThreadPoolExecutor(read_threads, thread_name_prefix="xrdct-read"))
            return self._pools

    def _file_source(self, source, idx, norm, read_threads: int = 8, check_md5: bool = False):
        """CBF files of ``source`` read whole, straight into this engine's page-locked arenas
        (threads, two batches ahead), payload ranges located in place, and the batches run through
        a pipeline without any host copy: :class:`~xrdct_dask.integrate.engine.SourceBatch` es."""

        batch_pool, file_pool = self._read_pools(read_threads)
        shape = np.asarray(self.plan.shape)
        ring = self.arena_ring()  # this task's pinned arenas, until its last batch has left them
        batches = batches_of(idx.size, self.batch_frames)

        def read(item):
            k, rows = item
            paths = [source.path(int(idx[r])) if idx[r] >= 0 else None for r in rows]
            got = read_into_pinned(paths, lambda nbytes: self.arena(ring, k, nbytes), file_pool, self.slot_bytes,
                                   check_md5)
            self.slot_bytes = max(self.slot_bytes, got[-1])  # a larger file grows the slots of later tasks
            return rows, got

        def reads():
            for rows, (arena, _total, begin, end, shapes, md5s, errors, _slot) in prefetch(
                    batch_pool, read, enumerate(batches), 2):
                status = np.full(rows.size, FrameStatus.OK, np.int8)
                failed = np.array([e is not None for e in errors])
                for j in np.nonzero(failed)[0]:
                    status[j] = status_of(errors[j])
                wrong = ~failed & np.any(shapes != shape, axis=1)
                status[wrong] = FrameStatus.WRONG_SHAPE
                keep = ~failed & ~wrong
                if check_md5:
                    for j in np.nonzero(keep)[0]:
                        if not CbfPayload(memoryview(arena)[begin[j]:end[j]], tuple(shape), md5s[j]).check_md5():
                            status[j] = FrameStatus.BAD_CHECKSUM
                            keep[j] = False
                good = rows[keep]
                feeds = [(good, (arena, begin[keep], end[keep]), norm[good], int((end[keep] - begin[keep]).sum()))]
                yield Read(rows, status, feeds if keep.any() else [])

        yield from pipeline_batches(lambda items: self.integrate_batches(items, packed=True), reads())
        # back to the pool only after a complete pass: after an error a read issued ahead may still
        # be filling an arena, so that ring is dropped instead
        self.release_ring(ring)

    def _h5_source(self, source, idx, norm, read_threads: int = 8):
        """Frames of an HDF5 source: chunks read raw (located by h5py, read with ``pread`` on the
        reader threads) straight into this engine's page-locked arenas, two batches ahead, one copy
        to the device per batch, decoded and integrated there (:meth:`_h5_reads`):
        :class:`~xrdct_dask.integrate.engine.SourceBatch` es."""

        if tuple(source.frame_shape) != tuple(self.plan.shape):
            log.warning("%s: frames are %s, the detector %s", source.spec, source.frame_shape, self.plan.shape)
            yield SourceBatch(np.arange(idx.size), np.full(idx.size, FrameStatus.WRONG_SHAPE, np.int8))
            return
        ring = self.arena_ring()
        reads = self._h5_reads(ring, source, idx, batches_of(idx.size, self.batch_frames), norm, read_threads)
        yield from pipeline_batches(self.integrate_batches, reads)
        self.release_ring(ring)

    def _h5_reads(self, ring, source, idx, batches, norm, read_threads: int = 8):
        """:class:`~xrdct_dask.integrate.engine.Read` s of an HDF5 source's chunks read raw into the
        arenas of ``ring``: a feed of the chunks the GPU kernels take (:class:`H5Batch`), and one of
        frames decoded on the host (chunks the kernels do not take: deflate, unusual block sizes;
        layouts the raw path does not read: chunks of several frames; said once in the log)."""

        batch_pool, read_pool = self._read_pools(read_threads)
        dt = np.dtype(source.dtype)
        frame_bytes = int(np.prod(source.frame_shape)) * dt.itemsize

        last_use: dict[int, H5Batch] = {}  # arena -> the batch last read into it

        def read(item):
            k, rows = item
            ids = idx[rows]
            prev = last_use.get(k % self.RING)
            if prev is not None and prev.uploaded is not None:  # launched (before this read was asked for)
                prev.uploaded.synchronize()
            try:
                chunks = source.read_raw_chunks(ids, out=lambda nbytes: self.arena(ring, k, nbytes), pool=read_pool)
            except ValueError as err:  # not one frame per chunk with a raw-path filter: h5py reads it
                _say_once(f"{source.spec}: {err}; these frames are decoded on the host")
                frames, st = read_batch(source, ids, threads=max(1, read_threads // 2))
                return rows, st, None, (rows[st == FrameStatus.OK], frames[st == FrameStatus.OK])
            st = chunks.status.astype(np.int8)
            good = np.flatnonzero(st == FrameStatus.OK)
            beg, end = chunks.offsets[:-1][good], chunks.offsets[1:][good]
            filt = chunks.filter_id[good].astype(np.int64)
            plan = plan_chunks(chunks.buffer, beg, end, filt, frame_bytes, dt.itemsize)
            gpu = H5Batch(chunks.buffer, beg[plan.gpu], end[plan.gpu], filt[plan.gpu], None, dt)
            gpu.plan = plan_chunks(chunks.buffer, gpu.beg, gpu.end, gpu.filt, frame_bytes, dt.itemsize)
            last_use[k % self.RING] = gpu
            host = None
            if not plan.gpu.all():  # rare: decoded here, on the reader thread

                cpu = good[~plan.gpu]
                names = sorted({FILTER_NAMES_GPU.get(int(chunks.filter_id[c]), str(chunks.filter_id[c])) for c in cpu})
                _say_once(f"{source.spec}: chunks ({', '.join(names)}) the GPU kernels do not take are decoded on "
                          "the host")
                offs = np.zeros(cpu.size + 1, np.int64)
                np.cumsum(chunks.offsets[cpu + 1] - chunks.offsets[cpu], out=offs[1:])
                packed = np.concatenate([chunks.buffer[chunks.offsets[c]:chunks.offsets[c + 1]] for c in cpu])
                sub = RawChunks(packed, offs, chunks.filter_id[cpu], chunks.status[cpu], chunks.shape, dt,
                                [chunks.names[c] for c in cpu], {})
                frames, cst = decode_chunks(sub)
                cst[out_of_range(frames) & (cst == FrameStatus.OK)] = FrameStatus.OUT_OF_RANGE
                st[cpu] = cst
                host = (rows[cpu[cst == FrameStatus.OK]], as_counts(frames[cst == FrameStatus.OK]))
            return rows, st, (rows[good[plan.gpu]], gpu, int(chunks.offsets[-1])), host

        for rows, st, gpu, host in prefetch(batch_pool, read, enumerate(batches), 2):
            feeds = []
            if gpu is not None and gpu[0].size:
                good, b, nbytes = gpu
                feeds.append((good, b, norm[good], nbytes))
            if host is not None and host[0].size:
                good, frames = host
                feeds.append((good, H5Batch(None, None, None, None, None, frames.dtype, frames=frames),
                              norm[good], int(frames.nbytes)))
            yield Read(rows, st, feeds)

    def warm_files(self, source, tasks: int, nframes: int, sample: int = 64) -> None:
        """Ready this engine for ``tasks`` concurrent tasks reading CBF files of ``source`` (a
        template of ``nframes`` frames).

        The file slots of the pinned read arenas are sized from the largest of ``sample`` frame
        files spread over the source (x 1.25): compressed sizes follow the sample (air at the
        edges of a scan line, dense phases in its middle), and an arena that must grow in a task
        is a new page-locked allocation (~0.6 s per 400 MB, holding up every CUDA call of the
        process).  Then each pipeline integrates a batch of the first frame read (as a task reads)
        into every arena of its ring: buffers allocated and used once before the first task
        (before the acquisition, with no frame yet, a blank frame of the detector's shape)."""

        n = self.batch_frames
        paths = [source.path(int(i)) for i in np.unique(np.linspace(0, max(nframes - 1, 0), sample).astype(np.int64))]
        sizes = [p.stat().st_size for p in paths if os.path.isfile(p)]
        first = source.path(0)
        estimate = self.plan.npix + 8192  # byte-offset at diffraction count rates: ~1 byte a pixel + header
        self.slot_bytes = max(self.slot_bytes, (int(max(sizes, default=estimate) * 1.25) + 4095) // 4096 * 4096)
        if not os.path.isfile(first):  # no frame yet (live mode: armed before the acquisition)
            self.warm_blank(tasks, hdf5=False)
            return
        self._warm_from(first, n, tasks)

    def warm_blank(self, tasks: int, hdf5: bool) -> None:
        """:meth:`warm` before the acquisition, when no frame is there yet (live mode): a blank
        frame of the detector, in a temporary folder removed after, takes the real path through
        every arena and pipeline (reads, payload location or chunk kernels, integration), so
        the first block finds nothing to compile or allocate.  ``hdf5``: the frame is stored
        unfiltered in an HDF5 file (read raw, the chunk kernels), else written as a CBF by fabio."""

        n = self.batch_frames
        with tempfile.TemporaryDirectory(prefix="xrdct-warm-") as tmp:
            if not hdf5:

                blank = Path(tmp) / "blank.cbf"
                CbfImage(data=np.zeros(self.plan.shape, np.int32), header={}).write(str(blank))
                self._warm_from(blank, n, tasks)
                return


            blank = Path(tmp) / "blank.h5"
            with h5py.File(blank, "w") as f:  # 2 frames, chunks of one frame, no filter
                f.create_dataset("data", shape=(2, *self.plan.shape), dtype=np.uint32, chunks=(1, *self.plan.shape),
                                 fillvalue=0)[...] = 0
            try:
                self._warm_h5_from(Hdf5Frames(blank, "/data"), n, tasks, 2)
            finally:
                FILES.forget(blank)

    def _warm_from(self, first, n: int, tasks: int) -> None:
        """:meth:`warm` with every arena filled from CBF file ``first`` read ``n`` times."""

        def fill(get_arena):
            arena, _total, begin, end, _shapes, _md5s, errors, _slot = read_into_pinned(
                [first] * n, get_arena, slot_bytes=self.slot_bytes)
            if errors[0] is not None:
                raise errors[0]
            return arena, begin, end

        try:
            self._allocate(n, self.slot_bytes, rings=tasks, fill=fill)
        except (OSError, CorruptFrameError) as err:  # an unreadable first frame: its task will say so
            log.warning("%s; GPU buffers allocated but not used before the first task", frame_message(first, err))
            self._allocate(n, self.slot_bytes, rings=tasks)

    def warm_h5(self, source, tasks: int) -> None:
        """Ready this engine for ``tasks`` concurrent tasks reading the HDF5 chunks of ``source``
        (:class:`~xrdct_dask.io.source.Hdf5Frames`), as :meth:`warm_files` does for CBF files: the
        arenas sized from its first chunk (x 1.5), then each pipeline decodes and integrates a
        batch of that chunk from every arena of its ring.  Before the acquisition (no frame yet)
        the batches are a blank frame of the detector stored unfiltered in a temporary file, which
        takes the same path (raw read, upload, chunk kernels, integration)."""

        n = self.batch_frames
        try:
            first = source.read_raw_chunks([0])
        except (OSError, ValueError):  # an unreadable file, or a layout h5py reads (not one frame per chunk)
            self._allocate(n, self.slot_bytes, rings=tasks)
            return
        if first.status[0] == FrameStatus.OK:
            self.slot_bytes = max(self.slot_bytes, int(first.offsets[-1] * 1.5))
            gpu = self._h5_plan(source, first).gpu[0]  # else a filter the kernels do not take (host-decoded)
            self._warm_h5_from(source, n, tasks, n if gpu else 0)
            return
        if tuple(source.frame_shape) != tuple(self.plan.shape):  # its task will say so
            self._allocate(n, self.slot_bytes, rings=tasks)
            return
        self.warm_blank(tasks, hdf5=True)

    def _warm_h5_from(self, source, n: int, tasks: int, count: int) -> None:
        """:meth:`warm` with every arena filled with frame 0 of ``source`` ``count`` times (0: arenas only)."""
        try:
            self._allocate(n, self.slot_bytes, rings=tasks, fill=self._h5_fill(source, count) if count else None)
        except OSError as err:  # frame 0 gone since: its task will say so
            log.warning("%s; GPU buffers allocated but not used before the first task", err)
            self._allocate(n, self.slot_bytes, rings=tasks)

    @staticmethod
    def _h5_plan(source, c):
        """The kernels' :class:`~xrdct_dask.io.gpu_hdf5.ChunkPlan` of raw chunks ``c`` of ``source``."""

        dt = np.dtype(source.dtype)
        return plan_chunks(c.buffer, c.offsets[:-1], c.offsets[1:], c.filter_id.astype(np.int64),
                           int(np.prod(source.frame_shape)) * dt.itemsize, dt.itemsize)

    def _h5_fill(self, source, count: int):
        """``fill`` for :meth:`warm`: frame 0 of HDF5 ``source`` ``count`` times, read raw into the arena."""

        def fill(get_arena):
            c = source.read_raw_chunks(np.zeros(count, np.int64), out=get_arena)
            if c.status.any():
                raise OSError(f"{source.spec}: frame 0 unreadable ({c.reasons})")
            return H5Batch(c.buffer, c.offsets[:-1], c.offsets[1:], c.filter_id.astype(np.int64),
                           self._h5_plan(source, c), np.dtype(source.dtype))

        return fill

    def arena_ring(self) -> list:
        """Check out a ring of ``RING`` page-locked read arenas for one task (give it back with
        :meth:`release_ring`): two tasks never share a buffer, and arenas are reused across tasks."""
        with self._arena_lock:  # task threads take and give back rings and pipelines concurrently
            return self._free_rings.pop() if self._free_rings else [None] * self.RING

    def release_ring(self, ring: list) -> None:
        with self._arena_lock:
            self._free_rings.append(ring)

    @staticmethod
    def arena(ring: list, k: int, nbytes: int) -> np.ndarray:
        """Arena ``k % len(ring)`` of a checked-out ring, grown to at least ``nbytes``."""

        i = k % len(ring)
        a = ring[i]
        if a is None or a.size < nbytes:
            a = ring[i] = pinned_empty(int(nbytes * 1.25) + 4096)
        return a
