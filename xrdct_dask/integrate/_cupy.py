"""GPU engine: the plan on the device, batched decode + fused CSR integration (cupy RawKernels).

Resident per engine (built once per worker through the integrator cache / worker plugin): the
CSR matrix, norm and dark, the static sums, and a pool of pipelines (each two slots of pinned
host buffers, device buffers and a CUDA stream; one pipeline per running task).  :meth:`CupyEngine.integrate_batches` overlaps
the host packing and upload of batch k+1 with the decode + integration of batch k.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backend import cp

log = logging.getLogger(__name__)
BATCH_FRAMES = 128  # frames per launch (Integrator.batch_frames on a GPU)

_ROWS = 4  # bins (row chunks) per block (blockDim.y); blockDim.x = 32 lanes
FPT = 2  # frames per lane in the Poisson kernel: a block column covers 32 * FPT frames
CHUNK_ENTRIES = 1024  # matrix entries per row chunk of the Poisson kernel (rows hold 0..~2x the mean)
TILE_WIDTH = 2  # transpose tiles: 32 frames x 32*TILE_WIDTH pixels per block
GROUP = 256  # frames per Poisson launch: bounds its scratch of partial sums (6 x chunks x GROUP doubles)


def row_chunks(indptr: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the rows of a CSR matrix into chunks of at most ``size`` entries, evenly per row.

    Returns int32 ``(lo, hi, row_chunk)``: chunk c covers entries ``lo[c]:hi[c]`` of one row; the
    chunks of row q are ``row_chunk[q]:row_chunk[q + 1]`` (an empty row has none)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    length = np.diff(indptr)
    per = (length + size - 1) // size
    row_chunk = np.zeros(length.size + 1, dtype=np.int64)
    np.cumsum(per, out=row_chunk[1:])
    rows = np.repeat(np.arange(length.size), per)
    k = np.arange(rows.size) - row_chunk[rows]
    lo = indptr[rows] + k * length[rows] // per[rows]
    hi = indptr[rows] + (k + 1) * length[rows] // per[rows]
    return lo.astype(np.int32), hi.astype(np.int32), row_chunk.astype(np.int32)


def _module():
    return _compiled(FPT)


@functools.cache
def _compiled(fpt: int, *defines: str):
    return cp.RawModule(code=(Path(__file__).parent / "kernels" / "csr_integrate.cu").read_text(),
                        options=(f"-DFPT={fpt}",) + tuple(f"-D{d}" for d in defines))


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


class _Slot:
    """One pipeline slot: pinned host in/out buffers, device buffers, a stream and its event."""

    def __init__(self, npix: int, nbins: int):
        from ..io.gpu_decode import GpuDecoder

        self.stream = cp.cuda.Stream(non_blocking=True)
        self.decoder = GpuDecoder()  # its scratch is this slot's: the two streams never share it
        self.h5decoder = None  # HDF5 chunks (io.gpu_hdf5.ChunkDecoder), made with the first such batch
        self.event = None
        self.host_in = None
        self.dev_in = None
        self.frames = None
        self.host_out = None
        self.npix, self.nbins = npix, nbins

    def reserve(self, nbytes: int, nframes: int):
        from ..io.gpu_decode import pinned_empty

        if nbytes and (self.host_in is None or self.host_in.size < nbytes):
            cap = int(nbytes * 1.25)
            self.host_in = pinned_empty(cap)
            self.dev_in = cp.empty(cap, dtype=cp.uint8)
        if self.frames is None or self.frames.shape[0] < nframes:
            self.frames = cp.empty((nframes, self.npix), dtype=cp.int32)
            out = cp.cuda.alloc_pinned_memory(2 * nframes * self.nbins * 4)
            self.host_out = np.frombuffer(out, dtype=np.float32, count=2 * nframes * self.nbins).reshape(
                2, nframes, self.nbins)
            st = cp.cuda.alloc_pinned_memory(nframes * 4)
            self.host_status = np.frombuffer(st, dtype=np.int32, count=nframes)
            # small per-batch arrays (begin, end, out_off, monitor) go up from pinned memory,
            # asynchronously: a pageable copy would block the host until the stream drains
            meta = cp.cuda.alloc_pinned_memory(5 * (nframes + 1) * 8)
            self.host_meta = np.frombuffer(meta, dtype=np.int64, count=5 * (nframes + 1)).reshape(5, nframes + 1)
            self.dev_meta = cp.empty((5, nframes + 1), dtype=cp.int64)

    def wait(self):
        if self.event is not None:
            self.event.synchronize()


class CupyEngine:
    """GPU engine behind :class:`~xrdct_dask.integrate.Integrator` (see module docstring)."""

    xp = cp
    RING = 4  # pinned read arenas: reads of batches k+1, k+2 while batches k-1, k are on the GPU

    def warm(self, nframes: int, bytes_per_frame: int, rings: int = 0, fill=None) -> None:
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
                batches = (fill(lambda nbytes, k=k: self.arena(ring, k, nbytes)) for k in range(self.RING))
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

    def file_batches(self, source, idx, batches, norm, status, pending, stats, read_threads: int = 8,
                     check_md5: bool = False):
        """CBF files of ``source`` read whole, straight into this engine's page-locked arenas
        (threads, two batches ahead), payload ranges located in place, and the batches run through
        a pipeline without any host copy.  Fills ``status`` for unreadable frames, appends the good
        rows of each batch to ``pending``; yields the pipeline's results."""
        from ..io.cbf import CbfPayload
        from ..io.gpu_decode import read_into_pinned
        from ..io.status import FrameStatus, status_of
        from .files import prefetch

        batch_pool, file_pool = self._read_pools(read_threads)
        shape = np.asarray(self.plan.shape)
        ring = self.arena_ring()  # this task's pinned arenas, until its last batch has left them

        def read(item):
            k, rows = item
            paths = [source.path(int(idx[r])) if idx[r] >= 0 else None for r in rows]
            got = read_into_pinned(paths, lambda nbytes: self.arena(ring, k, nbytes), file_pool, self.slot_bytes,
                                   check_md5)
            self.slot_bytes = max(self.slot_bytes, got[-1])  # a larger file grows the slots of later tasks
            return rows, got

        def engine_batches():
            for rows, (arena, _total, begin, end, shapes, md5s, errors, _slot) in prefetch(
                    batch_pool, read, enumerate(batches), 2):
                failed = np.array([e is not None for e in errors])
                for j in np.nonzero(failed)[0]:
                    status[rows[j]] = status_of(errors[j])
                wrong = ~failed & np.any(shapes != shape, axis=1)
                status[rows[wrong]] = FrameStatus.WRONG_SHAPE
                keep = ~failed & ~wrong
                if check_md5:
                    for j in np.nonzero(keep)[0]:
                        if not CbfPayload(memoryview(arena)[begin[j]:end[j]], tuple(shape), md5s[j]).check_md5():
                            status[rows[j]] = FrameStatus.BAD_CHECKSUM
                            keep[j] = False
                status[rows[keep]] = FrameStatus.OK
                if not keep.any():
                    continue
                good = rows[keep]
                stats["bytes"] += int((end[keep] - begin[keep]).sum())
                pending.append(good)
                yield (arena, begin[keep], end[keep]), norm[good]

        yield from self.integrate_batches(engine_batches(), packed=True)
        # back to the pool only after a complete pass: after an error a read issued ahead may still
        # be filling an arena, so that ring is dropped instead
        self.release_ring(ring)

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
        import os

        n = BATCH_FRAMES
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
        import tempfile

        n = BATCH_FRAMES
        with tempfile.TemporaryDirectory(prefix="xrdct-warm-") as tmp:
            if not hdf5:
                from fabio.cbfimage import CbfImage

                blank = Path(tmp) / "blank.cbf"
                CbfImage(data=np.zeros(self.plan.shape, np.int32), header={}).write(str(blank))
                self._warm_from(blank, n, tasks)
                return
            import h5py

            from ..io.hdf5 import FILES
            from ..io.source import Hdf5Frames

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
        from ..io.cbf import CorruptFrameError
        from ..io.gpu_decode import read_into_pinned
        from ..io.status import frame_message

        def fill(get_arena):
            arena, _total, begin, end, _shapes, _md5s, errors, _slot = read_into_pinned(
                [first] * n, get_arena, slot_bytes=self.slot_bytes)
            if errors[0] is not None:
                raise errors[0]
            return arena, begin, end

        try:
            self.warm(n, self.slot_bytes, rings=tasks, fill=fill)
        except (OSError, CorruptFrameError) as err:  # an unreadable first frame: its task will say so
            log.warning("%s; GPU buffers allocated but not used before the first task", frame_message(first, err))
            self.warm(n, self.slot_bytes, rings=tasks)

    def warm_h5(self, source, tasks: int) -> None:
        """Ready this engine for ``tasks`` concurrent tasks reading the HDF5 chunks of ``source``
        (:class:`~xrdct_dask.io.source.Hdf5Frames`), as :meth:`warm_files` does for CBF files: the
        arenas sized from its first chunk (x 1.5), then each pipeline decodes and integrates a
        batch of that chunk from every arena of its ring.  Before the acquisition (no frame yet)
        the batches are a blank frame of the detector stored unfiltered in a temporary file, which
        takes the same path (raw read, upload, chunk kernels, integration)."""
        from ..io.status import FrameStatus

        n = BATCH_FRAMES
        try:
            first = source.read_raw_chunks([0])
        except (OSError, ValueError):  # an unreadable file, or a layout h5py reads (not one frame per chunk)
            self.warm(n, self.slot_bytes, rings=tasks)
            return
        if first.status[0] == FrameStatus.OK:
            self.slot_bytes = max(self.slot_bytes, int(first.offsets[-1] * 1.5))
            gpu = self._h5_plan(source, first).gpu[0]  # else a filter the kernels do not take (host-decoded)
            self._warm_h5_from(source, n, tasks, n if gpu else 0)
            return
        if tuple(source.frame_shape) != tuple(self.plan.shape):  # its task will say so
            self.warm(n, self.slot_bytes, rings=tasks)
            return
        self.warm_blank(tasks, hdf5=True)

    def _warm_h5_from(self, source, n: int, tasks: int, count: int) -> None:
        """:meth:`warm` with every arena filled with frame 0 of ``source`` ``count`` times (0: arenas only)."""
        try:
            self.warm(n, self.slot_bytes, rings=tasks, fill=self._h5_fill(source, count) if count else None)
        except OSError as err:  # frame 0 gone since: its task will say so
            log.warning("%s; GPU buffers allocated but not used before the first task", err)
            self.warm(n, self.slot_bytes, rings=tasks)

    @staticmethod
    def _h5_plan(source, c):
        """The kernels' :class:`~xrdct_dask.io.gpu_hdf5.ChunkPlan` of raw chunks ``c`` of ``source``."""
        from ..io.gpu_hdf5 import plan_chunks

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
        from ..io.gpu_decode import pinned_empty

        i = k % len(ring)
        a = ring[i]
        if a is None or a.size < nbytes:
            a = ring[i] = pinned_empty(int(nbytes * 1.25) + 4096)
        return a

    def __init__(self, plan, options):
        from ..io.gpu_decode import GpuDecoder

        self.plan = plan
        self.error_model = options.error_model
        self.outlier = options.outlier
        self.options = options
        self.d_data = cp.asarray(plan.csr_data)
        self.d_indices = cp.asarray(plan.csr_indices)
        self.d_indptr = cp.asarray(plan.csr_indptr)
        self.d_norm = cp.asarray(plan.norm)
        self.has_dark = plan.dark is not None
        self.d_dark = cp.asarray(plan.dark) if self.has_dark else cp.zeros(1, cp.float32)
        self.d_static = cp.asarray(plan.static_sums)  # (4, nbins): c, c n, (c n)^2, c dark
        lo, hi, row_chunk = row_chunks(plan.csr_indptr, CHUNK_ENTRIES)
        self.nchunks = int(lo.size)
        self.d_lo, self.d_hi, self.d_row_chunk = cp.asarray(lo), cp.asarray(hi), cp.asarray(row_chunk)
        m = _module()
        self.fpt = FPT
        self._k = {name: m.get_function(name) for name in
                   ("csr_poisson_i32", "csr_poisson_f32", "csr_reduce", "csr_clip_i32", "csr_clip_f32",
                                f"transpose32x{TILE_WIDTH}")}
        self.decoder = GpuDecoder()
        self._pipelines: list[list[_Slot]] = []  # free pipelines of two slots; one per task that runs
        self._free_rings: list[list] = []
        # bytes per file slot in the read arenas (a multiple of 4096), shared by the tasks so that
        # their arenas keep one size: set at warm-up from the scan's files, grown by larger files
        self.slot_bytes = 0
        self._arena_lock = threading.Lock()
        self._pools = None  # reader threads, made by the first task that reads files
        self._out = {}
        # the single-call paths (sums, sums_payloads) share one decoder and the current stream
        self._lock = threading.RLock()

    def _take_pipeline(self) -> list[_Slot]:
        """Two pipeline slots (streams, pinned and device buffers) for one task's batches: tasks on
        several threads of a worker run side by side, each on its own streams."""
        with self._arena_lock:
            if self._pipelines:
                return self._pipelines.pop()
        return [_Slot(self.plan.npix, self.plan.nbins) for _ in range(2)]

    def _give_pipeline(self, pipe: list[_Slot]) -> None:
        with self._arena_lock:
            self._pipelines.append(pipe)

    # -------------------------------------------------------------------------------- sums
    def _buf(self, key, shape):
        a = self._out.get(key)
        if a is None or a.shape != shape:
            a = cp.empty(shape, dtype=cp.float64)
            self._out[key] = a
        return a

    def _pixel_major(self, d_frames, stream, npix: int | None = None):
        """(n, npix) -> (npix, n) into a buffer kept per stream (4-byte words).  ``d_frames`` may be
        (n, stride) with rows padded beyond ``npix``."""
        n, stride = (int(x) for x in d_frames.shape)
        npix = stride if npix is None else npix
        key = ("t", id(stream))
        buf = self._out.get(key)
        if buf is None or buf.size < n * npix:
            buf = cp.empty(n * npix, dtype=cp.uint32)
            self._out[key] = buf
        out = buf[:n * npix]
        with stream:
            tw = 32 * TILE_WIDTH
            self._k[f"transpose32x{TILE_WIDTH}"](((npix + tw - 1) // tw, (n + 31) // 32), (32, 8), (
                d_frames.view(cp.uint32), out, np.int32(n), np.int64(npix), np.int64(stride)))
        return out.view(d_frames.dtype)

    def _sums_device(self, d_frames, monitor, stream=None):
        """Sums (cupy, (n, nbins) each) of device frames (n, npix) int32 or float32."""
        from . import Sums

        n = int(d_frames.shape[0])
        nb = self.plan.nbins
        kind = "i32" if d_frames.dtype == cp.int32 else "f32"
        grid = ((nb + _ROWS - 1) // _ROWS, (n + 31) // 32)
        block = (32, _ROWS)
        stream = stream or cp.cuda.get_current_stream()
        with stream:
            d_mon = (monitor if isinstance(monitor, cp.ndarray) else cp.asarray(np.asarray(monitor, np.float64)))[:, None]
        with stream:
            pix_major = self._pixel_major(cp.ascontiguousarray(d_frames), stream)
            if self.outlier == "none" and self.error_model in ("poisson", "none"):
                out = self._buf(("p", n, id(stream)), (6, n, nb))
                part = self._buf(("part", id(stream)), (6 * self.nchunks * GROUP,))
                for g0 in range(0, n, GROUP):
                    g = min(GROUP, n - g0)
                    pgrid = ((self.nchunks + _ROWS - 1) // _ROWS, (g + 32 * self.fpt - 1) // (32 * self.fpt))
                    self._k[f"csr_poisson_{kind}"](pgrid, block, (
                        self.d_data, self.d_indices, self.d_lo, self.d_hi, np.int32(self.nchunks), pix_major[g0:],
                        np.int64(n), np.int32(g), self.d_norm, self.d_dark, np.int32(self.has_dark),
                        np.int32(self.error_model != "none"), part))
                    self._k["csr_reduce"](((g + 31) // 32, (nb + 7) // 8), (32, 8), (
                        part, self.d_row_chunk, np.int32(nb), np.int32(self.nchunks), np.int32(g), np.int32(g0),
                        np.int32(n), out))
                st = self.d_static
                return Sums(signal=out[0] - (st[3] - out[5]), variance=out[1], normalization=(st[1] - out[3]) * d_mon,
                            count=st[0] - out[2], norm_sq=(st[2] - out[4]) * d_mon * d_mon)
            common = (self.d_data, self.d_indices, self.d_indptr, np.int32(nb), pix_major, np.int64(d_frames.shape[1]),
                      np.int32(n), self.d_norm, self.d_dark, np.int32(self.has_dark))
            cycles = self.options.max_iter if self.outlier == "sigma-clip" else 0
            out = self._buf(("c", n, id(stream)), (5, n, nb))
            self._k[f"csr_clip_{kind}"](grid, block, common + (np.int32(self.error_model == "azimuthal"),
                                                               np.float64(self.options.clip_threshold),
                                                               np.int32(cycles), out))
            return Sums(signal=out[0], variance=out[1], normalization=out[2] * d_mon, count=out[3],
                        norm_sq=out[4] * d_mon * d_mon)

    def sums(self, frames, monitor):
        """Frames on host or device, (n, ny, nx) integer counts (int32) or floats."""
        d = cp.asarray(frames)
        d = d.reshape(d.shape[0], -1)
        if d.dtype != cp.int32:
            d = d.astype(cp.float32) if d.dtype.kind == "f" else d.astype(cp.int32)
        with self._lock:
            return self._sums_device(cp.ascontiguousarray(d), monitor)

    # ----------------------------------------------------------------------- payload batches
    def _launch(self, slot: _Slot, datas: Sequence | None, monitor, packed=None):
        """Pack, upload, decode, integrate and start the download of one batch on ``slot``.

        ``packed = (pinned uint8 host buffer, begin, end)`` skips the host copy: the bytes were
        read straight into page-locked memory (:func:`~xrdct_dask.io.gpu_decode.read_into_pinned`)."""
        from ..io.gpu_decode import aligned_layout, chunk_layout, pack_aligned

        slot.wait()  # the slot's previous batch has left its buffers
        if packed is None:
            n = len(datas)
            begin, end, total = aligned_layout([len(d) for d in datas])
            slot.reserve(total, n)
            pack_aligned(datas, slot.host_in, begin)
            host = slot.host_in[:total]
        else:
            host, begin, end = packed
            n = len(begin)
            total = int(np.max(end)) if n else 16
            slot.reserve(0, n)
            if slot.dev_in is None or slot.dev_in.size < total:
                slot.dev_in = cp.empty(int(total * 1.25), dtype=cp.uint8)
        npix = self.plan.npix
        meta = slot.host_meta
        meta[0, :n], meta[1, :n] = begin, end
        meta[2, :n + 1] = np.arange(n + 1, dtype=np.int64) * npix
        meta[3, :n] = np.asarray(monitor, dtype=np.float64).view(np.int64)
        meta[4, :n + 1] = first = chunk_layout(begin, end, slot.decoder.chunk)
        with slot.stream:
            d_in = slot.dev_in[:total]
            d_in.set(host[:total], stream=slot.stream)
            slot.dev_meta.set(meta, stream=slot.stream)
            d_begin, d_end, d_off = slot.dev_meta[0, :n], slot.dev_meta[1, :n], slot.dev_meta[2, :n + 1]
            d_mon = slot.dev_meta[3, :n].view(cp.float64)
            frames = slot.frames[:n]
            status = slot.decoder.decode(d_in, d_begin, d_end, slot.dev_meta[4, :n + 1], int(first[-1]), d_off,
                                         frames.reshape(-1), n, slot.stream)
        return self._integrate_launched(slot, frames, status, d_mon, n)

    def _launch_h5(self, slot: _Slot, batch: H5Batch, monitor):
        """Upload a batch of HDF5 chunks (one copy of the pinned arena's used bytes), decode it on
        the device straight into the slot's int32 frames (:mod:`~xrdct_dask.io.gpu_hdf5`), then
        integrate as :meth:`_launch` does.  A batch the host decoded (``batch.frames``) is uploaded
        as counts."""
        from ..io.gpu_hdf5 import ChunkDecoder, decode_into_counts

        slot.wait()
        n = batch.nframes
        slot.reserve(0, n)
        meta = slot.host_meta
        meta[3, :n] = np.asarray(monitor, dtype=np.float64).view(np.int64)
        with slot.stream:
            slot.dev_meta.set(meta, stream=slot.stream)
            d_mon = slot.dev_meta[3, :n].view(cp.float64)
            frames = slot.frames[:n]  # int32 counts, or (a float dataset) the same words as float32
            if batch.frames is not None:  # decoded on the host (a layout or filter the kernels do not take)
                host = batch.frames.reshape(n, -1)
                if host.dtype.kind == "f":
                    frames = frames.view(cp.float32)
                frames.set(np.ascontiguousarray(host, frames.dtype), stream=slot.stream)
                status = cp.zeros(n, cp.int32)
                return self._integrate_launched(slot, frames, status, d_mon, n)
            total = max(int(np.max(batch.end)), 1)
            if slot.dev_in is None or slot.dev_in.size < total:
                slot.dev_in = cp.empty(int(total * 1.25), dtype=cp.uint8)
            d_in = slot.dev_in[:total]
            d_in.set(batch.buffer[:total], stream=slot.stream)
            batch.uploaded = slot.stream.record()  # its pinned arena may be read into again after this
            if slot.h5decoder is None:
                slot.h5decoder = ChunkDecoder("cuda")
            dt = np.dtype(batch.dtype)
            if dt.kind == "f":  # integrated as float32 (csr_*_f32: NaN, inf and negative pixels invalid)
                frames = frames.view(cp.float32)
            raw = None
            if dt.itemsize != 4:  # int32 / uint32 decode in place; other types through a scratch buffer
                key = ("h5raw", id(slot))
                raw = self._out.get(key)
                if raw is None or raw.size < n * self.plan.npix * dt.itemsize:
                    raw = self._out[key] = cp.empty(int(n * self.plan.npix * dt.itemsize * 1.25), cp.uint8)
            status = decode_into_counts(slot.h5decoder, d_in, batch.beg, batch.end, batch.filt, batch.plan, dt,
                                        frames, raw, slot.stream)
        return self._integrate_launched(slot, frames, status, d_mon, n)

    def h5_batches(self, source, idx, batches, norm, status, pending, stats, read_threads: int = 8):
        """Frames of an HDF5 source: chunks read raw (located by h5py, read with ``pread`` on the
        reader threads) straight into this engine's page-locked arenas, two batches ahead, one copy to the device
        per batch, decoded and integrated there.  Chunks the kernels do not take (deflate,
        unusual block sizes) and layouts the raw path does not read (chunks of several frames) are
        decoded on the host, said once in the log.  Fills ``status`` for missing frames, appends
        the rows of each engine batch to ``pending``; yields the pipeline's results."""
        from ..io.gpu_hdf5 import FILTER_NAMES_GPU, plan_chunks
        from ..io.source import as_counts, out_of_range, read_batch
        from ..io.status import FrameStatus
        from .files import prefetch

        if tuple(source.frame_shape) != tuple(self.plan.shape):
            log.warning("%s: frames are %s, the detector %s", source.spec, source.frame_shape, self.plan.shape)
            status[:] = FrameStatus.WRONG_SHAPE
            return
        batch_pool, read_pool = self._read_pools(read_threads)
        ring = self.arena_ring()
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
                from ..io.hdf5 import RawChunks, decode_chunks

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

        def engine_batches():
            for rows, st, gpu, host in prefetch(batch_pool, read, enumerate(batches), 2):
                status[rows] = st
                if gpu is not None and gpu[0].size:
                    good, b, nbytes = gpu
                    stats["bytes"] += nbytes
                    pending.append(good)
                    yield b, norm[good]
                if host is not None and host[0].size:
                    good, frames = host
                    stats["bytes"] += int(frames.nbytes)
                    pending.append(good)
                    yield H5Batch(None, None, None, None, None, frames.dtype, frames=frames), norm[good]

        yield from self.integrate_batches(engine_batches())
        self.release_ring(ring)

    def _integrate_launched(self, slot: _Slot, frames, status, d_mon, n: int):
        """Integrate decoded device frames (n, npix) int32 on the slot's stream, NaN where the
        device status (n,) is not 0, and start the downloads of intensity, sigma and status."""
        from . import finish

        with slot.stream:
            s = self._sums_device(frames, d_mon, slot.stream)
            intensity, sigma = finish(s, self.error_model, cp)
            bad = (status != 0)[:, None]
            intensity = cp.where(bad, cp.float32(np.nan), intensity)
            sigma = cp.where(bad, cp.float32(np.nan), sigma)
            host = slot.host_out[:, :n]
            intensity.get(out=host[0], stream=slot.stream, blocking=False)
            sigma.get(out=host[1], stream=slot.stream, blocking=False)
            status.get(out=slot.host_status[:n], stream=slot.stream, blocking=False)
            slot.event = slot.stream.record()
        return slot, n

    def integrate_batches(self, batches: Iterable[tuple], packed: bool = False, pipeline=None) -> Iterator[tuple]:
        """Pipelined: yields ``(intensity, sigma, status)`` host arrays per ``(payloads, monitor)`` batch,
        in order.  Batch k+1 is packed and uploaded while batch k decodes and integrates.

        With ``packed=True`` each batch is ``((pinned buffer, begin, end), monitor)`` instead.
        ``pipeline``: one checked out already (default: the next free one, or a new one)."""
        pipe = pipeline or self._take_pipeline()
        pending = None
        for k, (datas, monitor) in enumerate(batches):
            slot = pipe[k % 2]
            if isinstance(datas, H5Batch):
                launched = self._launch_h5(slot, datas, monitor)
            elif packed:
                launched = self._launch(slot, None, monitor, datas)
            else:
                launched = self._launch(slot, datas, monitor)
            if pending is not None:
                yield self._collect(*pending)
            pending = launched
        if pending is not None:
            yield self._collect(*pending)
        for slot in pipe:
            slot.wait()
        self._give_pipeline(pipe)  # only after a complete pass: a pipeline left mid-way is dropped

    @staticmethod
    def _collect(slot: _Slot, n: int):
        slot.wait()
        return slot.host_out[0, :n].copy(), slot.host_out[1, :n].copy(), slot.host_status[:n].copy()

    def sums_payloads(self, datas, monitor):
        """Decode + integrate one batch; returns (Sums on device, status on device)."""
        from ..io.gpu_decode import aligned_layout, chunk_layout, pack_aligned, pinned_empty

        n = len(datas)
        begin, end, total = aligned_layout([len(d) for d in datas])
        host = pinned_empty(total)
        host[:] = 0
        pack_aligned(datas, host, begin)
        first = chunk_layout(begin, end, self.decoder.chunk)
        d_frames = cp.empty((n, self.plan.npix), dtype=cp.int32)
        out_off = np.arange(n + 1, dtype=np.int64) * self.plan.npix
        with self._lock:
            status = self.decoder.decode(cp.asarray(host), cp.asarray(begin), cp.asarray(end), cp.asarray(first),
                                         int(first[-1]), cp.asarray(out_off), d_frames.reshape(-1), n)
            return self._sums_device(d_frames, monitor), status
