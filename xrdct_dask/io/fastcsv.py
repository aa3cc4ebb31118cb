"""A numeric CSV slab parsed on its raw bytes, exactly, or not at all.

The scan table's lines are plain numbers (``12,0,3,7,1.234567,0.080000,0.010000``): pandas' C
reader spends ~0.5 us a line on them (tokenizing into Python-level chunks, then converting); a
single loop over the bytes does it in a tenth of that.  :func:`parse_numbers` takes only the
plainest form -- per line ``ncols`` fields separated by ``,`` (or one field a line), each
``[+-]digits[.digits][(e|E)[+-]digits]``, lines ended by ``\\n`` or ``\\r\\n``, blank lines and
lines starting with ``#`` skipped -- and converts a number only where the result is the exactly
rounded one (Clinger's fast path: a decimal significand below 2^53 times or over a power of ten
up to 1e22, both exact doubles, one IEEE rounding).  Anything else (spaces, quotes, a comment
after a value, ``nan``, 17+ significant digits, a short line) makes it give up on the whole slab
(None), and the caller parses it the general way: the values are the same either way.
"""

from __future__ import annotations

import numba
import numpy as np

_POW10 = np.array([10.0 ** k for k in range(23)])  # 1e0 .. 1e22: each an exact double
_MANT_MAX = 1 << 53


@numba.njit(nogil=True, inline="always")
def _sign(buf, i):  # pragma: no cover - compiled
    """``(negative, index after the sign)`` of an optional ``+`` / ``-`` at ``buf[i]``."""
    if i < buf.size and (buf[i] == 45 or buf[i] == 43):
        return buf[i] == 45, i + 1
    return False, i


@numba.njit(nogil=True, cache=True)
def _parse(buf, ncols, keep, out, pow10):  # pragma: no cover - compiled
    """Rows parsed into ``out`` (``keep[c]``: the column of ``out`` field ``c`` goes to, -1: none);
    returns the number of rows, or -1 where the slab is not in the plain form."""
    n = buf.size
    i = 0
    row = 0
    while i < n:
        c = buf[i]
        if c == 10:  # blank line
            i += 1
            continue
        if c == 13 and i + 1 < n and buf[i + 1] == 10:
            i += 2
            continue
        if c == 35:  # '#': a comment line
            while i < n and buf[i] != 10:
                i += 1
            i += 1
            continue
        if row >= out.shape[0]:
            return -1
        col = 0
        while True:  # one field
            k = keep[col]
            if k < 0:
                while i < n and buf[i] != 44 and buf[i] != 10 and buf[i] != 13:
                    if buf[i] == 35 or buf[i] == 34:  # a comment or a quote: not plain
                        return -1
                    i += 1
            else:
                neg, i = _sign(buf, i)
                m = 0
                digits = 0
                e10 = 0
                dot = False
                while i < n:  # the significand's digits, one '.' among them
                    c = buf[i]
                    if 48 <= c <= 57:
                        m = m * 10 + (c - 48)
                        if digits >= 15 and m > _MANT_MAX:  # 15 digits stay below 2^53; past them, check
                            return -1
                        digits += 1
                        if dot:
                            e10 -= 1
                    elif c == 46 and not dot:
                        dot = True
                    else:
                        break
                    i += 1
                if digits == 0:
                    return -1
                if i < n and (buf[i] == 101 or buf[i] == 69):  # 'e', 'E'
                    eneg, i = _sign(buf, i + 1)
                    e = 0
                    ed = 0
                    while i < n and 48 <= buf[i] <= 57:
                        if e < 10000:
                            e = e * 10 + (buf[i] - 48)
                        ed += 1
                        i += 1
                    if ed == 0:
                        return -1
                    e10 += -e if eneg else e
                if m == 0:
                    v = 0.0
                elif e10 == 0:
                    v = float(m)
                elif 0 < e10 <= 22:
                    v = float(m) * pow10[e10]
                elif -22 <= e10 < 0:
                    v = float(m) / pow10[-e10]
                else:
                    return -1
                out[row, k] = -v if neg else v
            # after a field: a separator, the line's end, or the slab's end
            if i < n and buf[i] == 44:
                col += 1
                i += 1
                if col >= ncols:
                    return -1
                continue
            if i >= n or buf[i] == 10 or (buf[i] == 13 and i + 1 < n and buf[i + 1] == 10):
                if col != ncols - 1:
                    return -1
                if i < n:
                    i += 2 if buf[i] == 13 else 1
                row += 1
                break
            return -1
    return row


@numba.njit(nogil=True, cache=True)
def _count_lines(buf):  # pragma: no cover - compiled
    n = 1
    for c in buf:
        if c == 10:
            n += 1
    return n


def parse_numbers(raw: bytes, ncols: int, keep: list[int]) -> np.ndarray | None:
    """float64 ``(rows, len(keep))``: fields ``keep`` (column numbers, in the order wanted) of the
    lines of ``raw`` (``ncols`` fields each), exactly as :func:`float` reads them; None where the
    text is not in the plain form this parser takes (see the module: parse it the general way)."""
    buf = np.frombuffer(raw, np.uint8)
    where = np.full(ncols, -1, np.int64)
    for j, c in enumerate(keep):
        where[c] = j
    rows = _count_lines(buf)  # an upper bound of the rows (no temporary the size of the text)
    out = np.empty((rows, len(keep)), np.float64)
    got = _parse(buf, ncols, where, out, _POW10)
    return None if got < 0 else out[:got]
