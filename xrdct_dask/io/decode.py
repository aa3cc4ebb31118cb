"""CBF byte-offset decoding on the CPU (numba), one frame or a packed batch.

The byte-offset format stores each pixel as the difference to the previous one:
one signed byte, or the escape 0x80 followed by a little-endian int16, or 0x80 0x8000 followed by
an int32, or 0x80 0x8000 0x80000000 followed by an int64.  The running value starts at 0 and
the result is taken modulo 2**32 as int32 (what CBFlib and fabio return).

Status codes (per frame, shared with the GPU decoder):
    0  ok
    1  payload ended before all pixels were decoded (truncated or corrupt)

Speed (:func:`decode_stream`): most pixels of a diffraction frame are one-byte deltas (a real
Pilatus 2M frame: 12 escapes in 2.5 M pixels; a simulated one with bright rings: 5 % escapes, in
runs).  So the decoder takes ``BLOCK`` bytes at a time: when none of them is the escape 0x80 (one
test on 64-bit words) they are ``BLOCK`` pixels, summed without a branch or a bounds check per
pixel; a block holding an escape, and the payload's tail, are parsed token by token with every
bounds check.  Indices are unsigned so that numba emits no negative-index wrap-around per access.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numba
import numpy as np

from xrdct_dask.io.cbf import CbfPayload, CorruptFrameError, read_cbf_payload

OK, TRUNCATED = 0, 1
STATUS_NAMES = {OK: "ok", TRUNCATED: "truncated payload"}

# sha256 of this file: a numba-cached function of another module that compiles decode_stream in
# keys its cache on it (numba validates a cache against the function's own file only)
SOURCE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

BLOCK = 32  # pixels per fast-path block: 4 words tested at once; 16 and 64 measured no faster (2026-12-07)
_HIGH = np.uint64(0x8080808080808080)  # the high bit of each byte of a word
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)  # the low 7 bits of each byte
_U = np.uint64


@numba.njit(cache=True, nogil=True, boundscheck=False)
def decode_stream(buf, pos, stop, val, out, out_pos, stride, count):
    """Decode ``count`` pixels of a byte-offset stream ``buf[pos:stop]`` (uint8) into
    ``out[out_pos + k * stride]``, k = 0..count-1 (int32, e.g. a frame or a pixel-major tile).

    ``val`` is the running value before the first pixel (0 at a frame's start), so a frame can
    be decoded in several calls.  Returns ``(pos, val, status)``: where the next token starts, the
    last pixel's value (int64, its low 32 bits are the pixel) and :data:`OK` or
    :data:`TRUNCATED`.  Never reads outside ``buf[pos:stop]``; writes only the ``count`` pixels
    (a truncated stream leaves the undecoded ones as they were).
    """
    sbuf = buf.view(np.int8)  # one-byte deltas are the signed bytes themselves
    step = _U(stride)
    o = _U(out_pos)
    i = 0
    while i < count:
        if count - i >= BLOCK and stop - pos >= BLOCK:
            p = _U(pos)
            esc = _U(0)
            for w in range(BLOCK // 8):
                word = _U(0)
                for k in range(8):  # little-endian: LLVM merges the bytes into one 64-bit load
                    word |= _U(buf[p + _U(8 * w + k)]) << _U(8 * k)
                # byte 0x80 <=> high bit set and low 7 bits 0; (b & 0x7F) + 0x7F carries into
                # the high bit exactly when the low 7 bits are not all 0 (no carry between bytes)
                esc |= word & ~((word & _LOW7) + _LOW7)
            if esc & _HIGH == 0:  # BLOCK one-byte deltas: val_k = val_{k-1} + int8(b_k)
                for k in range(BLOCK):
                    val += np.int64(sbuf[p + _U(k)])
                    out[o] = val  # int32 truncation = modulo 2**32, as CBFlib
                    o += step
                pos += BLOCK
                i += BLOCK
                continue
        # a block with an escape, or the tail: token by token, every length checked
        end = min(count, i + BLOCK)
        while i < end:
            if pos >= stop:
                return pos, val, TRUNCATED
            d = np.int64(sbuf[_U(pos)])
            pos += 1
            if d == -128:  # 0x80: a 16-bit delta follows
                if stop - pos < 2:
                    return pos, val, TRUNCATED
                p = _U(pos)
                d = (np.int64(sbuf[p + _U(1)]) << 8) | np.int64(buf[p])
                pos += 2
                if d == -32768:  # 0x8000: a 32-bit delta follows
                    if stop - pos < 4:
                        return pos, val, TRUNCATED
                    p = _U(pos)
                    d = ((np.int64(sbuf[p + _U(3)]) << 24) | (np.int64(buf[p + _U(2)]) << 16)
                         | (np.int64(buf[p + _U(1)]) << 8) | np.int64(buf[p]))
                    pos += 4
                    if d == -2147483648:  # 0x80000000: a 64-bit delta follows
                        if stop - pos < 8:
                            return pos, val, TRUNCATED
                        p = _U(pos)
                        d = np.int64(0)
                        for k in range(8):
                            d |= np.int64(buf[p + _U(k)]) << (8 * k)
                        pos += 8
            val += d
            out[o] = val
            o += step
            i += 1
    return pos, val, OK


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _decode_one(buf, start, stop, out, out_start, n):
    """Decode ``n`` pixels from ``buf[start:stop]`` into ``out[out_start:out_start+n]``.

    Returns the status code; never reads outside ``[start, stop)``.
    """
    return decode_stream(buf, start, stop, np.int64(0), out, out_start, 1, n)[2]


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


def read_frame(path) -> np.ndarray:
    """Read and decode one byte-offset CBF frame.

    Returns a 2D int32 array (slow, fast) = (ny, nx), exactly what fabio returns.  A missing file
    raises FileNotFoundError, a malformed one :class:`CorruptFrameError`, each naming the file.
    """
    return decode_payload(read_cbf_payload(path), name=str(path))
