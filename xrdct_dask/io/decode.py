"""CBF byte-offset decoding on the CPU (numba), one frame or a packed batch.

The byte-offset format stores each pixel as the difference to the previous one:
one signed byte, or the escape 0x80 followed by a little-endian int16, or 0x80 0x8000 followed by
an int32, or 0x80 0x8000 0x80000000 followed by an int64.  The running value starts at 0 and
the result is taken modulo 2**32 as int32 (what CBFlib and fabio return).

Status codes (per frame, shared with the GPU decoder):
    0  ok
    1  payload ended before all pixels were decoded (truncated or corrupt)
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from xrdct_dask.io.cbf import CbfPayload, CorruptFrameError

OK, TRUNCATED = 0, 1
STATUS_NAMES = {OK: "ok", TRUNCATED: "truncated payload"}


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _decode_one(buf, start, stop, out, out_start, n):
    """Decode ``n`` pixels from ``buf[start:stop]`` into ``out[out_start:out_start+n]``.

    Returns the status code; never reads outside ``[start, stop)``.
    """
    pos = start
    val = np.int64(0)
    for i in range(n):
        if pos >= stop:
            return TRUNCATED
        d = np.int64(buf[pos])
        pos += 1
        if d >= 128:
            d -= 256
        if d == -128:  # 0x80: a 16-bit delta follows
            if pos + 2 > stop:
                return TRUNCATED
            d = np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8)
            pos += 2
            if d >= 32768:
                d -= 65536
            if d == -32768:  # 0x8000: a 32-bit delta follows
                if pos + 4 > stop:
                    return TRUNCATED
                d = (np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8) | (np.int64(buf[pos + 2]) << 16)
                     | (np.int64(buf[pos + 3]) << 24))
                pos += 4
                if d >= 2147483648:
                    d -= 4294967296
                if d == -2147483648:  # 0x80000000: a 64-bit delta follows
                    if pos + 8 > stop:
                        return TRUNCATED
                    d = np.int64(0)
                    for k in range(8):
                        d |= np.int64(buf[pos + k]) << (8 * k)
                    pos += 8
        val += d
        out[out_start + i] = val  # truncation to int32 = modulo 2**32, as CBFlib
    return OK


@numba.njit(cache=True, nogil=True)
def _decode_batch(buf, offsets, out, out_offsets, status):
    for f in range(offsets.shape[0] - 1):
        n = out_offsets[f + 1] - out_offsets[f]
        status[f] = _decode_one(buf, offsets[f], offsets[f + 1], out, out_offsets[f], n)


def pack_payloads(payloads: Sequence[bytes | memoryview], out: np.ndarray | None = None):
    """Concatenate compressed payloads into one uint8 buffer.

    Returns ``(buffer, offsets)`` with ``offsets`` int64 of length ``n + 1``: frame ``f`` is
    ``buffer[offsets[f]:offsets[f+1]]``.  ``out`` (e.g. a pinned host buffer) is filled in place
    when given and large enough.
    """
    sizes = np.fromiter((len(p) for p in payloads), dtype=np.int64, count=len(payloads))
    offsets = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    if out is None or out.size < total:
        out = np.empty(total, dtype=np.uint8)
    for p, a, b in zip(payloads, offsets[:-1], offsets[1:]):
        out[a:b] = np.frombuffer(p, dtype=np.uint8)
    return out[:total], offsets


def decode_batch(buffer: np.ndarray, offsets: np.ndarray, npix: Sequence[int] | np.ndarray,
                 out: np.ndarray | None = None):
    """Decode a packed batch of payloads (frames may differ in size).

    Parameters
    ----------
    buffer : uint8 (nbytes,), offsets : int64 (n+1,)
        as returned by :func:`pack_payloads`.
    npix : (n,) ints
        pixels in each frame.
    out : int32 (sum(npix),), optional
        destination; frame ``f`` lands at ``out[out_offsets[f]:out_offsets[f+1]]``.

    Returns
    -------
    out : int32 (sum(npix),), out_offsets : int64 (n+1,), status : int32 (n,)
    """
    npix = np.asarray(npix, dtype=np.int64)
    out_offsets = np.zeros(npix.size + 1, dtype=np.int64)
    np.cumsum(npix, out=out_offsets[1:])
    if out is None:
        out = np.empty(int(out_offsets[-1]), dtype=np.int32)
    status = np.zeros(npix.size, dtype=np.int32)
    _decode_batch(np.asarray(buffer, dtype=np.uint8), np.asarray(offsets, dtype=np.int64), out.reshape(-1),
                  out_offsets, status)
    return out, out_offsets, status


def decode_payload(payload: CbfPayload, out: np.ndarray | None = None, name: str = "<payload>") -> np.ndarray:
    """Decode one CBF payload to a 2D int32 image (raises :class:`CorruptFrameError` if malformed)."""
    if out is None:
        out = np.empty(payload.shape, dtype=np.int32)
    buf = np.frombuffer(payload.data, dtype=np.uint8)
    st = _decode_one(buf, 0, buf.size, out.reshape(-1), 0, payload.size)
    if st != OK:
        raise CorruptFrameError(f"{name}: {STATUS_NAMES[st]} ({buf.size} bytes for {payload.size} pixels)")
    return out
