"""A scan table or monitor file cut into slabs of whole lines, each read on its own.

At 1000^3 a scan table has 1.57e9 lines (~90 GB of text): parsed by one process at ~0.5 M
lines/s that is most of an hour.  Here the file is cut by byte offset: :func:`line_slabs` seeks to
every ``slab_bytes`` and moves on to the next line start (it reads one line per slab: the index of
the table, not the table), and :func:`read_table_slab` / :func:`read_monitor_slab` parse one slab
each, wherever they run.  The values are those of the streamed readers of
:mod:`xrdct_dask.io.scantable` (the same columns, dtypes, checks and one-line errors; the
numbers parsed exactly on the raw bytes where the text is plain (:mod:`xrdct_dask.io.fastcsv`),
else by pandas' C reader, both checked against :func:`numpy.loadtxt` by the tests), so a table
read slab by slab, in any order, equals the table read from the top.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from xrdct_dask.io import fastcsv, scantable
from xrdct_dask.io.scan import POSITION_COLUMNS, SCAN_COLUMNS

# bytes of text one slab covers (~3e5 scan-table lines): what a task parses at once (~100 MB held)
SLAB_BYTES = 16 << 20


def line_slabs(path: str | Path, slab_bytes: int | None = None, header: bool = False) -> list[tuple[int, int]]:
    """Half-open byte ranges ``[(start, stop), ...]`` covering ``path`` after its first line
    (``header``) or from its first byte, each starting at a line start and ending after a line
    end (the last: at the end of the file), about ``slab_bytes`` (:data:`SLAB_BYTES`) each.
    Reads one line per slab."""
    slab_bytes = slab_bytes or SLAB_BYTES
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        first = len(f.readline()) if header else 0
        edges = [first]
        while edges[-1] < size:
            at = edges[-1] + slab_bytes
            if at >= size:
                edges.append(size)
                break
            f.seek(at - 1)  # the byte before: a line end there means `at` starts a line
            at += len(f.readline()) - 1
            edges.append(min(at, size))
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _slab_text(path: str | Path, start: int, stop: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(stop - start)


def _line_of(path: str | Path, start: int) -> int:
    """The 1-based line number of the line starting at byte ``start`` (for an error message only)."""
    n, left = 1, start
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def read_table_slab(path: str | Path, start: int, stop: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The known columns of the lines in bytes ``[start, stop)`` of a scan CSV (a range of
    :func:`line_slabs` with ``header=True``), as :func:`~xrdct_dask.io.scantable.scan_table_blocks`
    gives them: ``index, iz, iomega, ix`` int64, ``omega_deg, x_mm, z_mm, monitor`` float64, those
    present.  ``names``: the header's columns (read here when not given).  A value that is not a
    number (or not whole in an integer column) is the same one-line ValueError."""
    names = names or scantable.scan_header(path)
    wanted = [c for c in names if c in SCAN_COLUMNS + POSITION_COLUMNS]
    raw = _slab_text(path, start, stop)
    fast = fastcsv.parse_numbers(raw, len(names), [names.index(c) for c in wanted])
    if fast is not None:  # plain numbers, read exactly: the general readers would give the same
        return scantable.typed_columns(path, {c: fast[:, k] for k, c in enumerate(wanted)})
    try:
        frame = pd.read_csv(io.BytesIO(raw), header=None, names=names, usecols=wanted, dtype=np.float64,
                            comment="#", skip_blank_lines=True, engine="c")
        cols = {c: frame[c].to_numpy(np.float64) for c in wanted}
        if len(frame.columns) != len(wanted) or any(np.isnan(v).any() for v in cols.values()):
            raise ValueError("a line the fast reader does not take as the streamed one does")
    except (ValueError, pd.errors.ParserError):
        # the streamed reader on the same lines: its values where it takes them, else its error
        lines = raw.decode("ascii", errors="replace").splitlines(keepends=True)
        blocks = list(scantable.parse_table_lines(path, names, lines))
        return {c: np.concatenate([b[c] for b in blocks]) for c in wanted} if blocks else \
            {c: np.empty(0, np.int64 if c in SCAN_COLUMNS else np.float64) for c in wanted}
    return scantable.typed_columns(path, cols)


def read_monitor_slab(path: str | Path, start: int, stop: int) -> np.ndarray:
    """float64 values of the lines in bytes ``[start, stop)`` of a monitor file (one number per
    line, ``#`` comments; a range of :func:`line_slabs`), as
    :func:`~xrdct_dask.io.scantable.monitor_blocks` reads them, with its one-line errors (the
    line numbers counted from the top of the file)."""
    raw = _slab_text(path, start, stop)
    fast = fastcsv.parse_numbers(raw, 1, [0])
    if fast is not None:
        return np.ascontiguousarray(fast[:, 0])
    try:
        frame = pd.read_csv(io.BytesIO(raw), header=None, sep=r"\s+", dtype=np.float64, comment="#",
                            skip_blank_lines=True, engine="c")
        if frame.shape[1] > 1 or np.isnan(frame.to_numpy()).any():
            raise ValueError("not one number per line")
        return np.ascontiguousarray(frame.to_numpy(np.float64).reshape(-1))
    except pd.errors.EmptyDataError:
        return np.empty(0)
    except (ValueError, pd.errors.ParserError):
        # the streamed reader on the same lines: its values where it takes them, else its error
        lines = raw.decode("ascii", errors="replace").splitlines(keepends=True)
        return scantable.parse_monitor_lines(path, lines, _line_of(path, start))
