"""HDF5 chunks compressed the way detectors store them, written without hdf5plugin (a GPU node may
lack it): bitshuffle-LZ4 (filter 32008) and HDF5's LZ4 framing (32004), one chunk per frame.

The bit-shuffle is numpy's (``unpackbits`` / ``packbits``); the LZ4 blocks come from the ``lz4``
package (:func:`lz4_block_compressor`).  The chunks are written with
``write_direct_chunk`` into datasets that declare the filter, so h5py + hdf5plugin read them as
any detector file (tests check that), and the raw path (:mod:`xrdct_dask.io.hdf5`) takes them.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import h5py
import lz4.block
import numpy as np

FILTER_LZ4, FILTER_BSLZ4 = 32004, 32008


@functools.cache
def lz4_block_compressor():
    """``compress(bytes) -> bytes``: one raw LZ4 block (no size header), from the ``lz4`` package.
    Where it is absent (a GPU node), assign another here, e.g. pyarrow's ``lz4_raw`` codec
    (tests/test_gpu_hdf5.py and benchmarks/bench_gpu_hdf5.py do)."""

    return lambda b: lz4.block.compress(b, store_size=False)


def default_block_elems(itemsize: int) -> int:
    """bitshuffle's default block: 8 KB of elements, a multiple of 8, at least 128."""
    return max(128, 8192 // itemsize // 8 * 8)


def bitshuffle_blocks(x: np.ndarray) -> np.ndarray:
    """(m, bs) elements -> (m, bs * itemsize) bytes: bit j of element i at bit j * bs + i (LSB first)."""
    m, bs = x.shape
    k = x.dtype.itemsize
    bits = np.unpackbits(np.ascontiguousarray(x).view(np.uint8).reshape(m, bs, k), axis=2, bitorder="little")
    return np.packbits(bits.transpose(0, 2, 1), axis=2, bitorder="little").reshape(m, bs * k)


def bslz4_chunk(frame: np.ndarray, block_elems: int = 0) -> bytes:
    """One frame as filter 32008 stores it: uint64 BE bytes, uint32 BE block bytes, per block of
    ``block_elems`` elements a uint32 BE length + the LZ4 block of its bit-shuffled bytes; the last
    block holds the rest rounded down to 8 elements; the final nelem % 8 elements raw."""
    flat = np.ascontiguousarray(frame).reshape(-1)
    k = flat.dtype.itemsize
    bs = block_elems or default_block_elems(k)
    if bs % 8:
        raise ValueError(f"bitshuffle blocks hold a multiple of 8 elements, not {bs}")
    compress = lz4_block_compressor()
    full = flat.size // bs
    last = (flat.size - full * bs) // 8 * 8
    parts = [struct.pack(">QI", flat.nbytes, bs * k)]
    groups = [bitshuffle_blocks(flat[:full * bs].reshape(full, bs))] if full else []
    if last:
        groups.append(bitshuffle_blocks(flat[full * bs:full * bs + last].reshape(1, last)))
    for blocks in groups:
        for b in blocks:
            c = compress(b.tobytes())
            parts += [struct.pack(">I", len(c)), c]
    parts.append(flat[full * bs + last:].tobytes())
    return b"".join(parts)


def lz4_chunk(frame: np.ndarray, block_bytes: int = 1 << 30) -> bytes:
    """One frame as HDF5's LZ4 filter (32004) stores it: uint64 BE bytes, uint32 BE block bytes,
    per block a uint32 BE length + its LZ4 block, or the block's bytes as they are when LZ4 does
    not make them smaller."""
    raw = np.ascontiguousarray(frame).tobytes()
    compress = lz4_block_compressor()
    parts = [struct.pack(">QI", len(raw), block_bytes)]
    for a in range(0, len(raw), block_bytes):
        piece = raw[a:a + block_bytes]
        c = compress(piece)
        if len(c) >= len(piece):
            c = piece
        parts += [struct.pack(">I", len(c)), c]
    return b"".join(parts)


def create_chunked(group, name: str, shape, dtype, filter_id: int, block: int = 0):
    """A dataset of one-frame chunks declaring ``filter_id`` (32008 with LZ4, or 32004) whether
    or not the filter is registered here (hdf5plugin's set_local expands 32008's options into
    (major, minor, element size, block, lz4); unregistered, they are stored as given, expanded)."""

    k = np.dtype(dtype).itemsize
    if filter_id == FILTER_BSLZ4:
        opts = (block, 2) if h5py.h5z.filter_avail(FILTER_BSLZ4) else (0, 4, k, block, 2)
    elif filter_id == FILTER_LZ4:
        opts = (block or (1 << 30),)
    else:
        raise ValueError(f"filter {filter_id}: only 32008 (bitshuffle-LZ4) and 32004 (LZ4) are written here")
    return group.create_dataset(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), compression=filter_id,
                                compression_opts=opts, allow_unknown_filter=True)


def write_frames(path: str | Path, frames: np.ndarray, filter: str, block: int = 0, name: str = "data") -> str:
    """Write ``frames`` (n, ny, nx) to ``path::/name``, one chunk per frame; ``filter``:
    ``bitshuffle-lz4`` (``block`` elements per block, 0 = bitshuffle's default), ``lz4``
    (``block`` bytes, 0 = 1 GB: one block), ``gzip`` (h5py's own) or ``none``.  Returns the spec."""

    frames = np.asarray(frames)
    with h5py.File(path, "w") as f:
        if filter in ("gzip", "none"):
            f.create_dataset(name, data=frames, chunks=(1, *frames.shape[1:]),
                             compression="gzip" if filter == "gzip" else None)
        elif filter == "bitshuffle-lz4":
            d = create_chunked(f, name, frames.shape, frames.dtype, FILTER_BSLZ4)
            for j, fr in enumerate(frames):
                d.id.write_direct_chunk((j, 0, 0), bslz4_chunk(fr, block))
        elif filter == "lz4":
            d = create_chunked(f, name, frames.shape, frames.dtype, FILTER_LZ4, block)
            for j, fr in enumerate(frames):
                d.id.write_direct_chunk((j, 0, 0), lz4_chunk(fr, block or (1 << 30)))
        else:
            raise ValueError(f"filter must be bitshuffle-lz4, lz4, gzip or none, got {filter!r}")
    return f"{path}::/{name}"
