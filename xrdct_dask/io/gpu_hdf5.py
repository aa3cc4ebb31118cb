"""Batched decoding of HDF5 chunks on the GPU: bitshuffle-LZ4 (32008), LZ4 (32004) and unfiltered
chunks, bit-exact with the CPU path (:func:`~xrdct_dask.io.hdf5.decode_chunks`, h5py + hdf5plugin).

The compressed chunks of a batch sit in one (pinned) host buffer at known byte ranges
(:func:`~xrdct_dask.io.hdf5.read_raw_chunks` reads them there), cross PCIe once, and three
kernels of ``kernels/h5_decode.cu`` decode them on the device straight into the frames array
``(n, ny, nx)`` of the dataset's dtype: one thread per frame checks its framing and lists its
blocks, one warp per block LZ4-decodes it (into shared memory) and bit-unshuffles it into the
frame, one thread per frame writes its :class:`~xrdct_dask.io.status.FrameStatus` code (OK,
TRUNCATED, SIZE_MISMATCH, CORRUPT_HEADER: the codes the CPU path gives the same bytes).

Which frames the kernels take is decided on the host from the chunks' 12-byte headers
(:func:`plan_chunks`): bitshuffle blocks of more than :data:`MAX_BLOCK_BYTES` (shared memory) or
blocks of fewer than :data:`MIN_BLOCK_BYTES`, other filters (deflate) and element sizes other than
1, 2, 4, 8 bytes are decoded on the CPU instead.

The same kernel source compiles as C++ (``device="host"``, g++): the CPU tests run the kernels'
exact logic against h5py + hdf5plugin, on real Eiger files, simulated scans and corrupt chunks.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrdct_dask.backend import cp
from xrdct_dask.io import hdf5
from xrdct_dask.io.gpu_decode import pinned_empty
from xrdct_dask.io.source import out_of_range, pixel_dtype
from xrdct_dask.io.status import FrameStatus

KERNEL = Path(__file__).parent / "kernels" / "h5_decode.cu"
FILTER_NONE, FILTER_LZ4, FILTER_BSLZ4 = 0, 32004, 32008
MAX_BLOCK_BYTES = 48 * 1024  # a bitshuffle block is decoded in shared memory (48 KB: no opt-in needed)
MIN_BLOCK_BYTES = 256  # smaller blocks (not written by detectors) would cost a warp each: CPU
RAW_PIECE = 65536  # bytes per warp of an unfiltered chunk (must equal RAW_PIECE in the .cu file)
ITEMSIZES = (1, 2, 4, 8)
FILTER_NAMES_GPU = {FILTER_NONE: "none", 1: "deflate", FILTER_LZ4: "lz4", FILTER_BSLZ4: "bitshuffle-lz4"}
_SCAN_THREADS = 128


@dataclass
class ChunkPlan:
    """How the kernels take a batch: ``tab_off`` int64 (n + 1,) = first table entry (block) of each
    frame, from its header (the kernels check it again); ``gpu`` bool (n,) = frames they decode;
    ``smem_bytes`` = the largest bitshuffle block (shared memory per warp)."""

    tab_off: np.ndarray
    gpu: np.ndarray
    smem_bytes: int

    @property
    def nentries(self) -> int:
        return int(self.tab_off[-1])


def _be32(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    b = buf[at[:, None] + np.arange(4)].astype(np.int64)
    return (b[:, 0] << 24) | (b[:, 1] << 16) | (b[:, 2] << 8) | b[:, 3]


def plan_chunks(buf: np.ndarray, beg, end, filt, frame_bytes: int, itemsize: int) -> ChunkPlan:
    """The table layout of a batch and the frames the kernels take (host, vectorised).

    Parameters
    ----------
    buf : uint8 host array holding the chunks; chunk f is ``buf[beg[f]:end[f]]``
    beg, end : int64 (n,) byte ranges
    filt : (n,) HDF5 filter id of each chunk (0 = stored unfiltered)
    frame_bytes, itemsize : bytes of a decoded frame and of one element
    """
    beg, end = np.asarray(beg, np.int64), np.asarray(end, np.int64)
    filt = np.asarray(filt, np.int64)
    n = beg.size
    cap = np.zeros(n, np.int64)
    gpu = np.zeros(n, bool)
    if itemsize not in ITEMSIZES or frame_bytes <= 0:
        return ChunkPlan(np.zeros(n + 1, np.int64), gpu, 0)
    head = (end - beg) >= 12
    bb = np.zeros(n, np.int64)
    if head.any():
        bb[head] = _be32(buf, beg[head] + 8)
    none, lz4, bslz4 = filt == FILTER_NONE, filt == FILTER_LZ4, filt == FILTER_BSLZ4
    cap[none] = -(-frame_bytes // RAW_PIECE)
    gpu |= none
    # bitshuffle: blocks of bb / itemsize elements; a header the kernel will reject gets no entries
    ok = bslz4 & head & (bb > 0) & (bb % (8 * itemsize) == 0)
    nelem = frame_bytes // itemsize
    cap[ok] = -(-nelem // np.maximum(bb[ok] // itemsize, 1))
    gpu |= bslz4 & ~(ok & ((bb > MAX_BLOCK_BYTES) | (bb < MIN_BLOCK_BYTES)))
    # LZ4: blocks of bb bytes
    ok4 = lz4 & head & (bb > 0)
    cap[ok4] = -(-frame_bytes // np.maximum(bb[ok4], 1))
    gpu |= lz4 & ~(ok4 & (bb < MIN_BLOCK_BYTES) & (bb < frame_bytes))
    cap[~gpu] = 0
    tab_off = np.zeros(n + 1, np.int64)
    np.cumsum(cap, out=tab_off[1:])
    sm = bb[gpu & ok]
    return ChunkPlan(tab_off, gpu, int(sm.max()) if sm.size else 0)


# ------------------------------------------------------------------------------------------
# the kernels on the GPU (cupy) or compiled as C++ (ctypes)
# ------------------------------------------------------------------------------------------
@functools.cache
def _cuda_module():
    return cp.RawModule(code=KERNEL.read_text())


class _CudaKernels:
    xp = cp

    def __init__(self):
        m = _cuda_module()
        self._scan, self._blocks, self._status = (m.get_function(k) for k in ("h5_scan", "h5_blocks", "h5_status"))

    def run(self, buf, meta, n, frame_bytes, itemsize, tabs, nentries, out, smem_bytes, status, stream):
        beg, end, filt, tab_off = meta
        tab_src, tab_len, tab_out, nblk, blk_bytes, err = tabs
        with stream:
            self._scan(((n + _SCAN_THREADS - 1) // _SCAN_THREADS,), (_SCAN_THREADS,), (
                buf, beg, end, filt, np.int32(n), np.int64(frame_bytes), np.int32(itemsize), tab_off, tab_src,
                tab_len, tab_out, nblk, blk_bytes, err, out, np.int64(smem_bytes)))
            if nentries:
                self._blocks((nentries,), (32,), (
                    buf, filt, np.int32(n), np.int64(frame_bytes), np.int32(itemsize), tab_off, tab_src, tab_len,
                    tab_out, nblk, blk_bytes, err, out, np.int64(smem_bytes), np.int64(nentries)),
                    shared_mem=int(smem_bytes))
            self._status(((n + _SCAN_THREADS - 1) // _SCAN_THREADS,), (_SCAN_THREADS,), (err, np.int32(n), status))


@functools.cache
def host_library() -> ctypes.CDLL:
    """``kernels/h5_decode.cu`` compiled as C++ (``-DXR_HOST``) with the system's C++ compiler,
    cached by the source's digest in the temp folder.  Raises RuntimeError without a compiler."""
    src = KERNEL.read_bytes()
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++, c++, clang++) to build the host twin of h5_decode.cu")
    so = Path(tempfile.gettempdir()) / f"xrdct_h5_decode_{hashlib.sha256(src).hexdigest()[:16]}.so"
    if not so.exists():
        tmp = so.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-DXR_HOST", "-x", "c++", str(KERNEL), "-o", str(tmp)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, so)
    lib = ctypes.CDLL(str(so))
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    lib.h5_scan.argtypes = [p, p, p, p, i32, i64, i32, p, p, p, p, p, p, p, p, i64]
    lib.h5_blocks.argtypes = [p, p, i32, i64, i32, p, p, p, p, p, p, p, p, i64, i64]
    lib.h5_status.argtypes = [p, i32, p]
    for f in (lib.h5_scan, lib.h5_blocks, lib.h5_status):
        f.restype = None
    return lib


class _HostKernels:
    xp = np

    def __init__(self):
        self.lib = host_library()

    def run(self, buf, meta, n, frame_bytes, itemsize, tabs, nentries, out, smem_bytes, status, stream):
        ptr = lambda a: a.ctypes.data  # noqa: E731
        beg, end, filt, tab_off = (ptr(a) for a in meta)
        tab_src, tab_len, tab_out, nblk, blk_bytes, err = (ptr(a) for a in tabs)
        self.lib.h5_scan(ptr(buf), beg, end, filt, n, frame_bytes, itemsize, tab_off, tab_src, tab_len, tab_out,
                         nblk, blk_bytes, err, ptr(out), smem_bytes)
        self.lib.h5_blocks(ptr(buf), filt, n, frame_bytes, itemsize, tab_off, tab_src, tab_len, tab_out, nblk,
                           blk_bytes, err, ptr(out), smem_bytes, nentries)
        self.lib.h5_status(err, n, ptr(status))


class ChunkDecoder:
    """Decode batches of HDF5 chunks with the kernels of ``h5_decode.cu``: on the GPU
    (``device="cuda"``, cupy) or the same source compiled as C++ (``device="host"``, for tests).

    Scratch arrays (block tables, per-frame state, pinned staging of the per-batch metadata) are
    kept and grown, never allocated per call; one decoder serves one stream at a time (the caller
    waits for its previous batch before reusing it, as a pipeline slot does)."""

    def __init__(self, device: str = "cuda"):
        if device not in ("cuda", "host"):
            raise ValueError(f"device must be 'cuda' or 'host', got {device!r}")
        self.device = device
        self._k = _CudaKernels() if device == "cuda" else _HostKernels()
        self.xp = self._k.xp
        self._scratch: dict[str, object] = {}
        self._staging = None

    def _buf(self, name: str, n: int, dtype):
        a = self._scratch.get(name)
        if a is None or a.size < n:
            a = self.xp.empty(max(int(n * 1.25), 16), dtype=dtype)
            self._scratch[name] = a
        return a[:n]

    def _meta(self, beg, end, filt, tab_off, stream):
        """(beg, end, filt, tab_off) as int64 arrays where the kernels run (one H2D copy on cuda)."""
        n = len(beg)
        if self.device == "host":
            return [np.ascontiguousarray(a, np.int64) for a in (beg, end, filt, tab_off)]
        size = 4 * n + 1
        if self._staging is None or self._staging.size < size:

            self._staging = pinned_empty(8 * int(size * 1.25) + 8).view(np.int64)
        h = self._staging[:size]
        h[:n], h[n:2 * n], h[2 * n:3 * n], h[3 * n:] = beg, end, filt, tab_off
        d = self._buf("meta", size, np.int64)
        d.set(h, stream=stream)
        return [d[:n], d[n:2 * n], d[2 * n:3 * n], d[3 * n:]]

    def decode(self, buf, beg, end, filt, plan: ChunkPlan, frame_bytes: int, itemsize: int, out, stream=None):
        """Decode chunks ``buf[beg[f]:end[f]]`` (``buf`` where the kernels run: a device uint8 array
        on cuda) into ``out`` (uint8, ``n * frame_bytes``, same place).

        Every frame must be one the plan's kernels take (``plan.gpu`` all true).  Returns the
        int32 status (n,) where the kernels ran (FrameStatus codes); on cuda asynchronous on
        ``stream`` (default: the current one)."""
        n = len(beg)
        if not np.all(plan.gpu):
            raise ValueError(f"{int(np.sum(~plan.gpu))} of the {n} chunks are not for the GPU kernels (plan.gpu)")
        if out.size < n * frame_bytes:
            raise ValueError(f"out holds {out.size} bytes, {n} frames need {n * frame_bytes}")
        status = self._buf("status", n, np.int32)
        if n == 0:
            return status
        stream = stream if stream is not None or self.device == "host" else cp.cuda.get_current_stream()
        meta = self._meta(beg, end, filt, plan.tab_off, stream)
        ne = plan.nentries
        tabs = [self._buf(k, ne, np.int64) for k in ("tab_src", "tab_len", "tab_out")]
        tabs += [self._buf("nblk", n, np.int64), self._buf("blk_bytes", n, np.int64), self._buf("err", n, np.uint64)]
        self._k.run(buf, meta, n, int(frame_bytes), int(itemsize), tabs, ne, out, max(int(plan.smem_bytes), 0),
                    status, stream)
        return status


def decode_into_counts(decoder: ChunkDecoder, buf, beg, end, filt, plan: ChunkPlan, dtype, counts, scratch=None,
                       stream=None):
    """Decode chunks of a ``dtype`` dataset into ``counts`` (n, npix) where the decoder runs, as
    :func:`~xrdct_dask.io.source.as_counts` makes them on the host: ``counts`` is of
    :func:`~xrdct_dask.io.source.pixel_dtype` (float32 for a float dataset: its values as they are,
    NaN included, for the engine to mask; int32 counts for integers).  4-byte types are decoded in
    place (uint32 read as int32: an Eiger gap 2^32 - 1 is -1; float32 as float32), others through
    ``scratch`` (uint8, >= n * npix * itemsize) and converted (uint16's 65535 and uint64's 2^64 - 1
    -> -1; float64 / float16 -> float32).  A 64-bit integer frame with values beyond int32 gets
    status OUT_OF_RANGE (:func:`~xrdct_dask.io.source.out_of_range`), never wrapped values.
    Returns the status (n,) where the decoder runs."""
    dt = np.dtype(dtype)
    n, npix = counts.shape
    if np.dtype(counts.dtype) != pixel_dtype(dt):
        raise ValueError(f"frames of {dt} are integrated as {pixel_dtype(dt)}, not {counts.dtype}")
    frame_bytes = npix * dt.itemsize
    out = counts.view(np.uint8).reshape(-1) if dt.itemsize == 4 else scratch[:n * frame_bytes]
    status = decoder.decode(buf, beg, end, filt, plan, frame_bytes, dt.itemsize, out, stream)
    if dt.itemsize != 4:
        vals = out.view(dt).reshape(n, npix)
        if dt.kind == "f":
            counts[...] = vals.astype(np.float32)
        else:
            if dt.itemsize == 8:  # values no int32 holds flag their frame (the status where it decoded OK)
                bad = out_of_range(vals)
                status[...] = decoder.xp.where((status == 0) & bad, np.int32(FrameStatus.OUT_OF_RANGE), status)
            counts[...] = vals.astype(np.int32)
            if dt in (np.uint16, np.uint64):
                counts[vals == np.iinfo(dt).max] = -1
    return status


def decode_chunks_gpu(chunks, decoder: ChunkDecoder | None = None, device: str = "cuda"):
    """The GPU twin of :func:`~xrdct_dask.io.hdf5.decode_chunks`: a batch of raw chunks (host) ->
    ``(frames (n, ny, nx) on the host, status int8 (n,))``, frames not OK left zero.

    The chunks the kernels take are uploaded once and decoded there; the rest (other filters,
    unusual block sizes) are decoded on the CPU."""

    decoder = decoder or ChunkDecoder(device)
    n = len(chunks)
    ny, nx = chunks.shape
    dt = np.dtype(chunks.dtype)
    frame_bytes = ny * nx * dt.itemsize
    frames = np.zeros((n, ny, nx), dt)
    status = chunks.status.astype(np.int8)
    beg, end = chunks.offsets[:-1], chunks.offsets[1:]
    todo = np.flatnonzero(status == 0)
    plan = plan_chunks(chunks.buffer, beg[todo], end[todo], chunks.filter_id[todo], frame_bytes, dt.itemsize)
    on_gpu, on_cpu = todo[plan.gpu], todo[~plan.gpu]
    if on_gpu.size:
        sub = plan_chunks(chunks.buffer, beg[on_gpu], end[on_gpu], chunks.filter_id[on_gpu], frame_bytes,
                          dt.itemsize)
        xp = decoder.xp
        buf = xp.asarray(chunks.buffer) if xp is not np else chunks.buffer
        out = xp.zeros(on_gpu.size * frame_bytes, np.uint8)
        st = decoder.decode(buf, beg[on_gpu], end[on_gpu], chunks.filter_id[on_gpu], sub, frame_bytes, dt.itemsize,
                            out)
        got = out.view(dt).reshape(on_gpu.size, ny, nx)
        st = st.get() if xp is not np else st
        got = got.get() if xp is not np else got
        frames[on_gpu] = got
        status[on_gpu] = st
        frames[on_gpu[st != 0]] = 0
    if on_cpu.size:
        sizes = end[on_cpu] - beg[on_cpu]
        offs = np.zeros(on_cpu.size + 1, np.int64)
        np.cumsum(sizes, out=offs[1:])
        packed = np.concatenate([chunks.buffer[a:b] for a, b in zip(beg[on_cpu], end[on_cpu])]) if on_cpu.size \
            else np.empty(0, np.uint8)
        rest = hdf5.RawChunks(packed, offs, chunks.filter_id[on_cpu], chunks.status[on_cpu], chunks.shape, dt,
                              [chunks.names[k] for k in on_cpu], {})
        frames[on_cpu], status[on_cpu] = hdf5.decode_chunks(rest)
    return frames, status
