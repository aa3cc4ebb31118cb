"""Where the payloads lie in a batch of CBF file images, in compiled code (numba, no GIL).

:func:`~xrdct_dask.io.cbf.locate_payload` parses one file's binary MIME header in Python (~25 us
under the GIL): at 10,000 frames/s per GPU that is a quarter of a core and, worse, a lock the
reader threads queue on.  :func:`locate_batch` does the same for a whole batch of file images
lying in one buffer, in one compiled call that releases the GIL.

It is a fast path, not a second parser: it accepts a file only in the common form (the fields
written as ``Key: value`` / ``Key="value"`` lines, plain decimal numbers, the payload ending
where the closing boundary says) and then gives exactly what :func:`locate_payload` gives.
Anything else -- a missing or odd field, another compression, a truncated file, a size that
disagrees with the boundary -- comes back as "not located" and the caller asks
:func:`locate_payload`, which accepts it or raises the precise error.  ``tests/test_decode.py``
checks the agreement on real, simulated and mutated headers.
"""

from __future__ import annotations

import numba
import numpy as np

from xrdct_dask.io.cbf import _CLOSING, _SECTION, _TAIL_BYTES, BINARY_MARKER

_HEAD = 16384  # bytes searched for the binary section (locate_payload's first look)

_SEC = np.frombuffer(_SECTION, np.uint8)
_CLO = np.frombuffer(_CLOSING, np.uint8)
_MRK = np.frombuffer(BINARY_MARKER, np.uint8)
# field names, lower case, in this order: their index is the field id
_NAMES = [b"x-binary-size", b"x-binary-size-fastest-dimension", b"x-binary-size-second-dimension", b"conversions",
          b"x-binary-element-type", b"x-binary-number-of-elements"]
_NAME_LEN = np.array([len(k) for k in _NAMES], np.int64)
_NAME_BYTES = np.zeros((len(_NAMES), max(len(k) for k in _NAMES)), np.uint8)
for _i, _k in enumerate(_NAMES):
    _NAME_BYTES[_i, :len(_k)] = np.frombuffer(_k, np.uint8)
_BYTE_OFFSET = np.frombuffer(b"byte_offset", np.uint8)
_BITS32 = np.frombuffer(b"32-bit", np.uint8)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _at(buf, i, pat):
    """``pat`` starts at ``buf[i]``."""
    for j in range(pat.size):
        if buf[i + j] != pat[j]:
            return False
    return True


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _find(buf, lo, hi, pat):
    """First index >= lo where ``pat`` starts and ends before ``hi``, else -1."""
    for i in range(lo, hi - pat.size + 1):
        if _at(buf, i, pat):
            return i
    return -1


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _rfind(buf, lo, hi, pat):
    """Last such index, else -1."""
    for i in range(hi - pat.size, lo - 1, -1):
        if _at(buf, i, pat):
            return i
    return -1


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _lower(c):
    return c + 32 if 65 <= c <= 90 else c


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _contains_ci(buf, lo, hi, pat):
    """``pat`` (lower case) occurs in ``buf[lo:hi]``, ignoring ASCII case."""
    m = pat.size
    for i in range(lo, hi - m + 1):
        ok = True
        for j in range(m):
            if _lower(buf[i + j]) != pat[j]:
                ok = False
                break
        if ok:
            return True
    return False


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _digits(buf, lo, hi):
    """The decimal number in ``buf[lo:hi]`` (digits only, at most 17), else -1."""
    if hi <= lo or hi - lo > 17:
        return -1
    v = np.int64(0)
    for i in range(lo, hi):
        c = buf[i]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _locate_one(buf, base, size, names, name_len, byte_offset, bits32, sec, mrk, clo, tail_bytes):
    """(ok, begin, nbytes, ny, nx) of the file image ``buf[base:base + size]`` (offsets relative)."""
    head = min(size, 16384)
    start = _find(buf, base, base + head, sec)
    if start < 0:
        return False, 0, 0, 0, 0
    marker = _find(buf, start, base + head, mrk)
    if marker < 0:
        return False, 0, 0, 0, 0
    # fields: the last occurrence of each wins (as the dict of locate_payload); -1 = absent
    vlo = np.full(6, -1, np.int64)
    vhi = np.full(6, -1, np.int64)
    pos = start
    while pos < marker:
        eol = pos
        while eol < marker and buf[eol] != 10:
            eol += 1
        # a field line: [ \t]*key[ \t]*[:=][ \t]*value[ \t;]*\r?
        i = pos
        while i < eol and (buf[i] == 32 or buf[i] == 9):
            i += 1
        k0 = i
        c = _lower(buf[i]) if i < eol else 0
        if 97 <= c <= 122:
            i += 1
            while i < eol:
                c = _lower(buf[i])
                if (97 <= c <= 122) or (48 <= c <= 57) or c == 45:
                    i += 1
                else:
                    break
            k1 = i
            while i < eol and (buf[i] == 32 or buf[i] == 9):
                i += 1
            if i < eol and (buf[i] == 58 or buf[i] == 61):
                i += 1
                while i < eol and (buf[i] == 32 or buf[i] == 9):
                    i += 1
                v1 = eol
                if v1 > i and buf[v1 - 1] == 13:
                    v1 -= 1
                while v1 > i and (buf[v1 - 1] == 32 or buf[v1 - 1] == 9 or buf[v1 - 1] == 59):
                    v1 -= 1
                # an \r inside the value, a value ending in \r before blanks: leave it to Python
                for j in range(i, v1):
                    if buf[j] == 13:
                        return False, 0, 0, 0, 0
                # quotes are stripped at both ends (str.strip('"'))
                while i < v1 and buf[i] == 34:
                    i += 1
                while v1 > i and buf[v1 - 1] == 34:
                    v1 -= 1
                for f in range(names.shape[0]):
                    m = name_len[f]
                    if k1 - k0 != m:
                        continue
                    same = True
                    for j in range(m):
                        if _lower(buf[k0 + j]) != names[f, j]:
                            same = False
                            break
                    if same:
                        vlo[f] = i
                        vhi[f] = v1
        pos = eol + 1
    if vlo[0] < 0 or vlo[1] < 0 or vlo[2] < 0:
        return False, 0, 0, 0, 0
    nbytes = _digits(buf, vlo[0], vhi[0])
    nfast = _digits(buf, vlo[1], vhi[1])
    nslow = _digits(buf, vlo[2], vhi[2])
    if nbytes < 0 or nfast <= 0 or nslow <= 0:
        return False, 0, 0, 0, 0
    if vlo[3] >= 0 and not _contains_ci(buf, vlo[3], vhi[3], byte_offset):
        return False, 0, 0, 0, 0
    if vlo[4] >= 0 and _find(buf, vlo[4], vhi[4], bits32) < 0:
        return False, 0, 0, 0, 0
    if vlo[5] >= 0 and _digits(buf, vlo[5], vhi[5]) != nfast * nslow:
        return False, 0, 0, 0, 0
    begin = marker + mrk.size - base
    end = begin + nbytes
    if end > size or nbytes < nfast * nslow:
        return False, 0, 0, 0, 0
    # check_extent: the payload ends at the closing boundary, with only \0 then \r\n between
    tail_start = max(begin, size - tail_bytes)
    k = _rfind(buf, base + tail_start, base + size, clo)
    if k >= 0:
        closing = k - base
        if end > closing:
            return False, 0, 0, 0, 0
        j = closing
        while j > end and (buf[base + j - 1] == 13 or buf[base + j - 1] == 10):
            j -= 1
        for i in range(end, j):
            if buf[base + i] != 0:
                return False, 0, 0, 0, 0
    return True, begin, nbytes, nslow, nfast


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _locate_all(buf, bases, sizes, ok, begin, end, ny, nx, names, name_len, byte_offset, bits32, sec, mrk, clo,
                tail_bytes):
    for k in range(bases.size):
        if sizes[k] < 0:
            ok[k] = False
            continue
        r = _locate_one(buf, bases[k], sizes[k], names, name_len, byte_offset, bits32, sec, mrk, clo, tail_bytes)
        ok[k] = r[0]
        begin[k] = bases[k] + r[1]
        end[k] = bases[k] + r[1] + r[2]
        ny[k] = r[3]
        nx[k] = r[4]


def locate_batch(buf: np.ndarray, bases: np.ndarray, sizes: np.ndarray):
    """Locate the payloads of the file images ``buf[bases[k]:bases[k] + sizes[k]]`` (uint8 buffer).

    Returns ``(ok, begin, end, ny, nx)``: where ``ok[k]``, the payload of file k is
    ``buf[begin[k]:end[k]]`` (absolute offsets) and decodes to ``(ny[k], nx[k])``, exactly as
    :func:`~xrdct_dask.io.cbf.locate_payload` says; where not (or ``sizes[k] < 0``), ask it.
    """
    bases = np.ascontiguousarray(bases, dtype=np.int64)
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    n = bases.size
    ok = np.zeros(n, np.bool_)
    begin, end = np.zeros(n, np.int64), np.zeros(n, np.int64)
    ny, nx = np.zeros(n, np.int64), np.zeros(n, np.int64)
    _locate_all(buf, bases, sizes, ok, begin, end, ny, nx, _NAME_BYTES, _NAME_LEN, _BYTE_OFFSET, _BITS32, _SEC,
                _MRK, _CLO, _TAIL_BYTES)
    return ok, begin, end, ny, nx
