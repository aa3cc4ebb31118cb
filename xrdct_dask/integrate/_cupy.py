"""GPU engine: the plan on the device, batched decode + fused CSR integration (cupy RawKernels).

Resident per engine (built once per worker through the integrator cache / worker plugin): the
CSR matrix, norm and dark, the static sums, and a pool of pipelines (each two slots of pinned
host buffers, device buffers and a CUDA stream; one pipeline per running task).
:meth:`CupyEngine.integrate_batches` overlaps the host packing and upload of batch k+1 with the
decode + integration of batch k.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from xrdct_dask.backend import cp
from xrdct_dask.gpushare import fence_pool, process_share
from xrdct_dask.integrate._cupy_sources import BATCH_FRAMES, H5Batch, SourcesMixin
from xrdct_dask.integrate.files import compressed, host_hdf5_batches, payload_batches
from xrdct_dask.integrate.sums import Sums, finish, kept_sums
from xrdct_dask.io.gpu_decode import (
    GpuDecoder,
    aligned_layout,
    chunk_layout,
    pack_aligned,
    pinned_empty,
)
from xrdct_dask.io.gpu_hdf5 import ChunkDecoder, decode_into_counts
from xrdct_dask.io.source import Hdf5Frames, decoded_on_host, refreshed

log = logging.getLogger(__name__)

_ROWS = 4  # bins (row chunks) per block (blockDim.y); blockDim.x = 32 lanes
FPT = 2  # frames per lane in the Poisson kernel: a block column covers 32 * FPT frames
CHUNK_ENTRIES = 1024  # matrix entries per row chunk of the Poisson kernel (rows hold 0..~2x the mean)
TILE_WIDTH = 2  # transpose tiles: 32 frames x 32*TILE_WIDTH pixels per block
GROUP = 256  # frames per Poisson launch: bounds its scratch of partial sums (6 x chunks x GROUP doubles)
PART_BYTES = 256 * 2**20  # ... and so does this: a 2D plan (36 x 2000 bins) has ~8x the row chunks of a 1D one


def launch_group(nchunks: int, fpt: int = FPT) -> int:
    """Frames per Poisson launch: :data:`GROUP`, fewer where its partial sums (6 doubles per row
    chunk and frame) would pass :data:`PART_BYTES`; a multiple of a block column (32 * fpt frames)."""
    col = 32 * fpt
    fit = PART_BYTES // (48 * max(nchunks, 1))
    return int(max(col, min(GROUP, fit // col * col)))


def engine_gpu_bytes(batch_frames: int, npix: int, nbins: int, frame_bytes: int, nnz: int, *, pipelines: int = 2,
                     keep_sums: bool = False, hdf5: bool = False) -> int:
    """Device bytes a :class:`CupyEngine` holds running ``pipelines`` tasks at once on batches of
    ``batch_frames`` frames of ``npix`` pixels (``frame_bytes`` compressed) into ``nbins`` bins,
    with a plan of ``nnz`` matrix entries.

    Resident: the CSR matrix (float32 data, int32 indices), norm and dark per pixel, the static
    sums and the row chunks.  Per pipeline, two slots (:class:`_Slot`), each: the frames decoded
    (int32) and their pixel-major copy (``_pixel_major``), the compressed bytes uploaded (x 1.25
    for the arena's file slot, x 1.25 for the slot's growth) and the decoder's scratch (half of
    that), the Poisson kernel's partial sums (:func:`launch_group`), the sums and their finished
    rows; an HDF5 source's chunks of 16-bit counts through a scratch of their own."""
    b = int(batch_frames)
    nchunks = nnz // CHUNK_ENTRIES + nbins
    resident = 8 * nnz + 8 * npix + 4 * (nbins + 1) + 32 * nbins + 12 * nchunks
    upload = int(1.5625 * b * frame_bytes)
    part = 48 * nchunks * launch_group(nchunks)
    sums = b * nbins * (48 + 80 + 4 * (7 if keep_sums else 2))  # (6, n, nb) doubles, finish's temporaries, rows
    raw = int(1.25 * b * npix * 2) if hdf5 else 0
    slot = 8 * b * npix + upload + upload // 2 + part + sums + raw
    return int(resident + pipelines * 2 * slot)


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


class _Slot:
    """One pipeline slot: pinned host in/out buffers, device buffers, a stream and its event."""

    def __init__(self, npix: int, nbins: int, nout: int = 2):

        self.stream = cp.cuda.Stream(non_blocking=True)
        self.decoder = GpuDecoder()  # its scratch is this slot's: the two streams never share it
        self.h5decoder = None  # HDF5 chunks (io.gpu_hdf5.ChunkDecoder), made with the first such batch
        self.event = None
        self.host_in = None
        self.dev_in = None
        self.frames = None
        self.host_out = None
        self.npix, self.nbins = npix, nbins
        self.nout = nout  # float32 rows per frame downloaded: intensity, sigma (and the five kept sums)

    def reserve(self, nbytes: int, nframes: int):

        if nbytes and (self.host_in is None or self.host_in.size < nbytes):
            cap = int(nbytes * 1.25)
            self.host_in = pinned_empty(cap)
            self.dev_in = cp.empty(cap, dtype=cp.uint8)
        if self.frames is None or self.frames.shape[0] < nframes:
            self.frames = cp.empty((nframes, self.npix), dtype=cp.int32)
            out = cp.cuda.alloc_pinned_memory(self.nout * nframes * self.nbins * 4)
            self.host_out = np.frombuffer(out, dtype=np.float32, count=self.nout * nframes * self.nbins).reshape(
                self.nout, nframes, self.nbins)
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


class CupyEngine(SourcesMixin):
    """GPU engine behind :class:`~xrdct_dask.integrate.Integrator` (see module docstring); implements
    :class:`~xrdct_dask.integrate.engine.Engine` (its ways to read sources: :mod:`._cupy_sources`)."""

    name = "cupy"
    xp = cp
    batch_frames = BATCH_FRAMES

    def integrate_source(self, source, indices, monitor, *, read_threads: int = 8, check_md5: bool = False):
        """:class:`~xrdct_dask.integrate.engine.SourceBatch` es of frames ``indices`` of ``source``: an
        HDF5 source's chunks decoded here; CBF files read whole into pinned arenas, only their
        compressed bytes crossing PCIe; a file per slice or line (HDF5) and gzip / bzip2 CBF files
        decoded on the host (:mod:`xrdct_dask.integrate.files`)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if isinstance(source, Hdf5Frames):
            return self._h5_source(refreshed(source, idx), idx, monitor, read_threads)
        if decoded_on_host(source):  # a file per slice or line, TIFF / EDF files
            return host_hdf5_batches(self, refreshed(source, idx), idx, monitor, read_threads=read_threads)
        if compressed(source):
            return payload_batches(self, source, idx, monitor, self.plan.shape, read_threads=read_threads,
                                   check_md5=check_md5)
        return self._file_source(source, idx, monitor, read_threads, check_md5)

    def __init__(self, plan, options):

        self.plan = plan
        share = process_share()  # this worker's share of its GPU (the local cluster's layout), or None
        fence_pool(share)
        if share is not None and share.batch_frames:
            self.batch_frames = share.batch_frames
        self.error_model = options.error_model
        self.outlier = options.outlier
        self.options = options
        self.keep_sums = bool(getattr(options, "keep_sums", False))
        self.d_data = cp.asarray(plan.csr_data)
        self.d_indices = cp.asarray(plan.csr_indices)
        self.d_indptr = cp.asarray(plan.csr_indptr)
        self.d_norm = cp.asarray(plan.norm)
        self.has_dark = plan.dark is not None
        self.d_dark = cp.asarray(plan.dark) if self.has_dark else cp.zeros(1, cp.float32)
        self.d_static = cp.asarray(plan.static_sums)  # (4, nbins): c, c n, (c n)^2, c dark
        lo, hi, row_chunk = row_chunks(plan.csr_indptr, CHUNK_ENTRIES)
        self.nchunks = int(lo.size)
        self.group = launch_group(self.nchunks)
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
        return [_Slot(self.plan.npix, self.plan.nbins, 7 if self.keep_sums else 2) for _ in range(2)]

    def _give_pipeline(self, pipe: list[_Slot]) -> None:
        with self._arena_lock:
            self._pipelines.append(pipe)

    # -------------------------------------------------------------------------------- sums
    def _buf(self, key, shape):
        """A float64 device array of ``shape`` kept per ``key`` (a stream's), grown, never one per
        batch size: the last batch of every task has its own size."""
        size = int(np.prod(shape))
        a = self._out.get(key)
        if a is None or a.size < size:
            a = self._out[key] = cp.empty(size, dtype=cp.float64)
        return a[:size].reshape(shape)

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

        n = int(d_frames.shape[0])
        nb = self.plan.nbins
        kind = "i32" if d_frames.dtype == cp.int32 else "f32"
        grid = ((nb + _ROWS - 1) // _ROWS, (n + 31) // 32)
        block = (32, _ROWS)
        stream = stream or cp.cuda.get_current_stream()
        with stream:
            d_mon = (monitor if isinstance(monitor, cp.ndarray)
                     else cp.asarray(np.asarray(monitor, np.float64)))[:, None]
        with stream:
            pix_major = self._pixel_major(cp.ascontiguousarray(d_frames), stream)
            if self.outlier == "none" and self.error_model in ("poisson", "none"):
                out = self._buf(("p", id(stream)), (6, n, nb))
                part = self._buf(("part", id(stream)), (6 * self.nchunks * self.group,))
                for g0 in range(0, n, self.group):
                    g = min(self.group, n - g0)
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
            out = self._buf(("c", id(stream)), (5, n, nb))
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

    def _integrate_launched(self, slot: _Slot, frames, status, d_mon, n: int):
        """Integrate decoded device frames (n, npix) int32 on the slot's stream, NaN where the
        device status (n,) is not 0, and start the downloads of intensity, sigma and status."""

        with slot.stream:
            s = self._sums_device(frames, d_mon, slot.stream)
            intensity, sigma = finish(s, self.error_model, cp)
            bad = (status != 0)[:, None]
            intensity = cp.where(bad, cp.float32(np.nan), intensity)
            sigma = cp.where(bad, cp.float32(np.nan), sigma)
            host = slot.host_out[:, :n]
            intensity.get(out=host[0], stream=slot.stream, blocking=False)
            sigma.get(out=host[1], stream=slot.stream, blocking=False)
            if self.keep_sums:  # the five sums as float32, NaN for frames that did not decode
                kept = cp.where(bad[None], cp.float32(np.nan), kept_sums(s, None, cp))
                for k in range(5):  # row by row: each host row is contiguous, host[2:7] is not
                    kept[k].get(out=host[2 + k], stream=slot.stream, blocking=False)
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
        out = slot.host_out[0, :n].copy(), slot.host_out[1, :n].copy(), slot.host_status[:n].copy()
        return out + (slot.host_out[2:7, :n].copy(),) if slot.nout == 7 else out

    def sums_payloads(self, datas, monitor):
        """Decode + integrate one batch; returns (Sums on device, status on device)."""

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
