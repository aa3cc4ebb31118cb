"""Batched byte-offset decoding on the GPU (cupy RawModule over ``kernels/byte_offset.cu``).

A batch of compressed payloads sits in one (pinned) host buffer at known byte ranges -- packed by
:func:`pack_aligned`, or the whole files read straight into page-locked memory by
:func:`read_into_pinned` -- and only these compressed bytes cross PCIe.  Two kernel passes and
two scans (see the .cu file) decode every frame of the batch at once into int32 pixels on the
device.  A malformed payload sets its frame's status to 1 (as the CPU decoder) and never makes a
thread read outside its frame's bytes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from xrdct_dask.backend import cp
from xrdct_dask.io.cbf import OPEN_FLAGS, CorruptFrameError, check_regular, locate_payload
from xrdct_dask.io.locate import locate_batch

CHUNK = 64  # bytes per decoding thread (measured on an H100: 64 beats 128, 256, 512)
_THREADS = 128  # threads per block; the write stage holds _THREADS * CHUNK pixels (32 KB)


@functools.cache
def _module():
    src = (Path(__file__).parent / "kernels" / "byte_offset.cu").read_text()
    return cp.RawModule(code=src)


def aligned_layout(sizes: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Begin/end byte offsets (int64) of payloads of ``sizes`` bytes packed at 16-byte alignment,
    and the total size."""
    sizes = np.asarray(sizes, dtype=np.int64)
    padded = (sizes + 15) // 16 * 16
    begin = np.zeros(sizes.size, dtype=np.int64)
    np.cumsum(padded[:-1], out=begin[1:])
    total = int(padded.sum()) if sizes.size else 0
    return begin, begin + sizes, max(total, 16)


def chunk_layout(begin: np.ndarray, end: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """First chunk of each payload: int64 (n+1,) prefix sums of ceil((end - begin) / chunk)."""
    nchunks = (np.maximum(np.asarray(end) - np.asarray(begin), 0) + chunk - 1) // chunk
    first = np.zeros(len(nchunks) + 1, dtype=np.int64)
    np.cumsum(nchunks, out=first[1:])
    return first


def pinned_empty(nbytes: int) -> np.ndarray:
    """A page-locked host uint8 array (DMA without staging copies)."""
    mem = cp.cuda.alloc_pinned_memory(max(int(nbytes), 1))
    return np.frombuffer(mem, dtype=np.uint8, count=int(nbytes))


@functools.cache
def _copy_pool() -> ThreadPoolExecutor:
    """Threads for host copies, made at first use (not at import)."""
    return ThreadPoolExecutor(8, thread_name_prefix="xrdct-pack")


def pack_aligned(payloads: Sequence, out: np.ndarray, begin: np.ndarray) -> None:
    """Copy payloads into ``out`` at ``begin`` offsets (threads: host memcpy is the limit)."""
    def put(k):
        b = int(begin[k])
        src = np.frombuffer(payloads[k], dtype=np.uint8)
        out[b:b + src.size] = src

    if len(payloads) > 4:
        list(_copy_pool().map(put, range(len(payloads))))
    else:
        for k in range(len(payloads)):
            put(k)


class GpuDecoder:
    """Decode packed batches on the device; scratch arrays are kept and grown, never per call.

    ``chunk``: bytes per thread; payloads must start at multiples of it (:func:`aligned_layout`)."""

    def __init__(self, chunk: int = CHUNK):
        self.chunk = int(chunk)
        m = _module()
        self._count = m.get_function("bo_count")
        self._write = m.get_function("bo_write_staged")
        self._status = m.get_function("bo_status")
        self._scratch: dict[str, object] = {}

    def _buf(self, name: str, n: int, dtype):
        a = self._scratch.get(name)
        if a is None or a.size < n or a.dtype != dtype:
            a = cp.empty(max(n, 1), dtype=dtype)
            self._scratch[name] = a
        return a[:n]

    def decode(self, d_buf, d_begin, d_end, d_first_chunk, nchunks: int, d_out_off, d_out, nframes: int,
               stream=None):
        """Decode ``nframes`` payloads of ``d_buf`` (device uint8) into ``d_out`` (device int32).

        ``d_begin``/``d_end``: int64 (nframes,) byte ranges; ``d_first_chunk``: int64 (nframes+1,)
        from :func:`chunk_layout` with this decoder's chunk (``nchunks`` = its last value);
        ``d_out_off``: int64 (nframes+1,) pixel offsets.  Returns device int32 status (nframes,).
        """
        stream = stream or cp.cuda.get_current_stream()
        chunk = self.chunk
        nchunks = max(int(nchunks), 1)
        with stream:
            count = self._buf("count", nchunks, cp.int64)
            dsum = self._buf("dsum", nchunks, cp.uint64)
            grid = ((nchunks + _THREADS - 1) // _THREADS,)
            args = (d_buf, d_begin, d_end, d_first_chunk, np.int32(nframes), np.int32(chunk), np.int64(nchunks))
            self._count(grid, (_THREADS,), args + (count, dsum))
            tok_base = cp.cumsum(count) - count        # exclusive scans
            val_base = cp.cumsum(dsum) - dsum
            stage = min(_THREADS * chunk, 11264)  # words (44 KB < 48 KB): one per byte of the block's chunks
            self._write(grid, (_THREADS,), args + (tok_base, val_base, d_out_off, d_out, np.int32(stage)),
                        shared_mem=4 * stage)
            status = self._buf("status", nframes, cp.int32)
            self._status(((nframes + 127) // 128,), (128,),
                         (d_first_chunk, np.int32(nframes), tok_base, count, d_out_off, status))
        return status


def decode_payloads_gpu(payloads: Sequence, npix: Sequence[int], decoder: GpuDecoder | None = None):
    """Convenience: decode host payloads (bytes-like) on the GPU.

    Returns ``(out int32 device (sum npix,), out_offsets int64 host (n+1,), status int32 host (n,))``.
    """
    decoder = decoder or GpuDecoder()
    sizes = [len(p) for p in payloads]
    begin, end, total = aligned_layout(sizes)
    host = pinned_empty(total)
    host[:] = 0
    pack_aligned(payloads, host, begin)
    first = chunk_layout(begin, end, decoder.chunk)
    out_off = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum(np.asarray(npix, dtype=np.int64), out=out_off[1:])
    d_out = cp.zeros(int(out_off[-1]), dtype=cp.int32)
    status = decoder.decode(cp.asarray(host), cp.asarray(begin), cp.asarray(end), cp.asarray(first), int(first[-1]),
                            cp.asarray(out_off), d_out, len(payloads))
    return d_out, out_off, cp.asnumpy(status)


def read_into_pinned(paths: Sequence, get_arena, pool=None, slot_bytes: int = 0, md5: bool = False):
    """Read whole CBF files into one page-locked arena (no per-frame allocation, no copy).

    Each file gets a slot of ``slot_bytes`` (default: 1.25 x the first file's size); a file that
    does not fit makes the batch be read again with slots that fit it.  Per file the Python work
    is one ``open``, one ``readv`` straight into the arena and one ``close`` (on the reader threads
    of ``pool``); the payloads are then located in one compiled call for the whole batch
    (:func:`~xrdct_dask.io.locate.locate_batch`), and only unusual files go through
    :func:`~xrdct_dask.io.cbf.locate_payload` (which also gives each file's Content-MD5, so
    ``md5=True`` sends every file there).

    ``get_arena(nbytes)`` returns a pinned uint8 array of at least ``nbytes``.  Returns
    ``(arena, total_bytes, begin, end, shapes, md5s, errors, slot_bytes)``: the payload of file k
    is ``arena[begin[k]:end[k]]``, ``shapes`` int64 ``(n, 2)``, ``md5s[k]`` None unless asked,
    ``errors[k]`` None or the exception met (missing file, corrupt header, truncated payload).
    """

    n = len(paths)
    if slot_bytes <= 0:
        first = next((p for p in paths if p is not None and os.path.exists(p)), None)
        slot_bytes = int(os.stat(first).st_size * 1.25) if first is not None else 4096
    slot = (int(slot_bytes) + 4095) // 4096 * 4096
    arena = get_arena(n * slot)
    mv = memoryview(arena)
    sizes = np.full(n, -1, dtype=np.int64)
    bigger = np.zeros(n, dtype=np.int64)  # sizes of files that did not fit their slot
    errors: list = [None] * n

    def read(k):
        if paths[k] is None:
            errors[k] = FileNotFoundError("no frame recorded at this scan point")
            return
        try:  # non-blocking: a named pipe or a device in place of a frame must not hang the reader
            fd = os.open(paths[k], OPEN_FLAGS)
        except FileNotFoundError:
            errors[k] = FileNotFoundError(f"{paths[k]}: frame file not found")
            return
        except OSError as err:
            errors[k] = err
            return
        try:
            got = os.readv(fd, [mv[k * slot:(k + 1) * slot]])
            if got == slot or got == 0:  # larger than the slot, or empty: fstat says which (and if regular)
                full = check_regular(fd, paths[k]).st_size
                if full > slot:
                    bigger[k] = full
            sizes[k] = got
        except OSError:
            try:
                check_regular(fd, paths[k])
            except OSError as special:
                err = special
            errors[k] = err
        finally:
            os.close(fd)

    def read_range(span):
        for k in range(*span):
            read(k)

    if pool is not None:  # a few contiguous runs of files per call: one future each, not one per file
        parts = 16
        list(pool.map(read_range, [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]))
    else:
        read_range((0, n))
    if bigger.any():  # rare: a frame much larger than the first one; read the batch again
        return read_into_pinned(paths, get_arena, pool, int(bigger.max() * 1.25), md5)
    bases = np.arange(n, dtype=np.int64) * slot
    ok, begin, end, ny, nx = locate_batch(arena, bases, sizes)
    shapes = np.stack([ny, nx], axis=1)
    md5s = [None] * n
    for k in np.nonzero(~ok | md5)[0]:
        if errors[k] is not None:
            continue
        try:
            off, nbytes, shape, md5s[k] = locate_payload(mv[bases[k]:bases[k] + sizes[k]], str(paths[k]))
            begin[k], end[k] = bases[k] + off, bases[k] + off + nbytes
            shapes[k] = shape
        except CorruptFrameError as err:
            errors[k] = err
    total = int(end.max()) if n else 0
    return arena, max(total, 16), begin, end, shapes, md5s, errors, slot
