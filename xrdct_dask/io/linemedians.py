"""Exact medians of a scan's grid lines from values written once, grouped by line.

A scan file's measured axes are the median reading of each grid line: every omega line and every
x line runs through all slices (at 1000^3 ~1.6e6 readings a line, 1.57e9 in all).  The histogram
narrowing of :func:`~xrdct_dask.io.scantable.grouped_median` needs no more than ``O(lines x bins)``
memory, but reads every reading 3-5 times (a range pass, narrowing passes, a last gathering pass).
Here each part of the scan (a slab of slices, finished on a worker) writes its readings once,
sorted by line, with where each line starts in each of its slices (:class:`LineValues`); a task
per range of lines (:func:`medians_of_lines`) reads those lines' segments only, from every part,
and takes each line's two middle values with :func:`numpy.partition`.  Memory of a task: the
readings of its lines (at most :data:`MERGE_VALUES`, unless one line alone holds more).

The result is the median of the finite readings, ``(v[(n - 1) // 2] + v[n // 2]) / 2`` of them
sorted, NaN for a line without one: :func:`numpy.median`'s, and
:func:`~xrdct_dask.io.scantable.grouped_median`'s, to the last bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MERGE_VALUES = 1 << 24  # readings a merge task on a worker gathers at most (128 MB): its lines follow
MERGE_VALUES_HERE = 1 << 20  # the same without workers, where the client runs the tasks (8 MB)
LINE_VALUES_MAX = 1 << 25  # a line with more readings (256 MB) is left to histogram narrowing


def exact_median(values: np.ndarray) -> float:
    """The median of the finite ``values`` (float64, any order; NaN when there is none): the mean of
    the two middle values of them sorted, found by :func:`numpy.partition` (no sort)."""
    v = values[np.isfinite(values)]
    n = v.size
    if not n:
        return float("nan")
    lo, hi = (n - 1) // 2, n // 2
    p = np.partition(v, [lo, hi] if hi != lo else lo)
    return float((p[lo] + p[hi]) / 2)


def _line_keys(lines: np.ndarray, nlines: int) -> np.ndarray:
    """``lines`` as the smallest unsigned type holding ``nlines``: numpy's stable sort is a radix
    sort (linear) for 8- and 16-bit keys, a merge sort otherwise."""
    for t in (np.uint8, np.uint16):
        if nlines <= np.iinfo(t).max + 1:
            return lines.astype(t)
    return lines


class LineValues:
    """The finite readings of one field of the slices of one part, grouped by grid line, kept at
    ``<stem>.f8`` (float64; slice after slice, within a slice line after line, table order kept
    within a line) and ``<stem>.off.npy`` (int64 ``(slices, nlines + 1)``: where each line's
    readings of each slice start in the values file, in values).  :meth:`add` one slice at a
    time, then :meth:`close`."""

    def __init__(self, stem: str | Path, nlines: int):
        self.stem = str(stem)
        self.nlines = nlines
        self.rows: list[np.ndarray] = []
        self.size = 0
        self.counts = np.zeros(nlines, np.int64)
        Path(self.stem + ".f8").write_bytes(b"")

    def add(self, lines: np.ndarray, values: np.ndarray) -> None:
        """Append one slice's readings ``values`` (float64) on grid ``lines`` (ints in ``0 ..
        nlines - 1``): the finite ones, grouped by line (a stable sort, a copy of the values)."""
        ok = np.isfinite(values)
        if not ok.all():
            lines, values = lines[ok], values[ok]
        keys = _line_keys(lines, self.nlines)
        if keys.size > 1 and np.any(keys[1:] < keys[:-1]):
            order = np.argsort(keys, kind="stable")
            values = values[order]
        count = np.bincount(keys, minlength=self.nlines)
        with open(self.stem + ".f8", "ab") as f:
            np.ascontiguousarray(values, np.float64).tofile(f)
        row = np.empty(self.nlines + 1, np.int64)
        row[0] = self.size
        np.cumsum(count, out=row[1:])
        row[1:] += self.size
        self.rows.append(row)
        self.size += values.size
        self.counts += count

    def close(self) -> np.ndarray:
        """Write the offsets; returns the readings of each line in this part (int64 ``(nlines,)``)."""
        off = np.stack(self.rows) if self.rows else np.zeros((0, self.nlines + 1), np.int64)
        np.save(self.stem + ".off.npy", off)
        return self.counts


def medians_of_lines(stems: list[str], g0: int, g1: int) -> np.ndarray:
    """float64 ``(g1 - g0,)``: the exact median of the readings of lines ``g0 .. g1 - 1`` over every
    part of ``stems`` (:class:`LineValues` files); reads only those lines' segments."""
    pieces: list[list[np.ndarray]] = [[] for _ in range(g1 - g0)]
    for stem in stems:
        off = np.load(stem + ".off.npy", mmap_mode="r")
        if not off.shape[0]:
            continue
        cut = np.asarray(off[:, g0:g1 + 1])
        if cut[:, -1].sum() == cut[:, 0].sum():
            continue
        with open(stem + ".f8", "rb") as f:
            for row in cut:
                a, b = int(row[0]), int(row[-1])
                if b == a:
                    continue
                f.seek(a * 8)
                seg = np.fromfile(f, np.float64, b - a)
                edges = row - a
                for k in np.flatnonzero(np.diff(edges)):
                    pieces[k].append(seg[edges[k]:edges[k + 1]])
    return np.array([exact_median(np.concatenate(p)) if p else np.nan for p in pieces], np.float64)


def line_ranges(counts: np.ndarray, most: int | None = None) -> list[tuple[int, int]]:
    """``[(g0, g1), ...]`` covering the lines in order, each holding at most ``most``
    (:data:`MERGE_VALUES`) readings in all (a line holding more is a range of its own)."""
    most = most or MERGE_VALUES
    out, g0, held = [], 0, 0
    for g, c in enumerate(np.asarray(counts, np.int64).tolist()):
        if g > g0 and held + c > most:
            out.append((g0, g))
            g0, held = g, 0
        held += c
    if len(counts):
        out.append((g0, len(counts)))
    return out
