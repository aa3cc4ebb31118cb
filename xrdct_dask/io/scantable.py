"""A scan's table and monitor read in bounded memory: streamed once, kept per slice on disk.

At 1000^3 a scan table has 1.57e9 rows and a monitor file 1.57e9 lines: read whole they are
tens of GB on the client.  Here they are read in blocks of :data:`BLOCK_ROWS` lines
(:func:`scan_table_blocks`, :func:`monitor_blocks`) and converted once into a scratch folder:

* :class:`SlabFrames` -- the rows placed on the ``(nz, nomega, nx)`` grid, appended per slice
  as they arrive, then per slice the row that wins each point (the last one), the points
  recorded more than once, and the winners' measured values;
* :class:`FlatColumn` -- a value per acquisition index (the monitor) in a flat float64 file,
  read back for the indices of one slice at a time.

Global statistics are exact and held in bounded memory: :func:`grouped_median` (the median of
each group, e.g. the omega readings of every grid angle over all slices, by histogram
narrowing over repeated streamed passes: memory ``O(groups x bins)``, not ``O(rows)``).  Only
:func:`sample_grid_cuts` works on a sample: where a scan gives no grid columns, the groups of
readings along an axis are told apart on a random sample of at most :data:`SAMPLE_MAX`
readings, chosen by their acquisition indices (:func:`sample_keys`; all of them in a smaller scan: then exactly as
:func:`~xrdct_dask.io.positioners.grid_from_positions`); which reading falls in which group, and
each group's median, are then exact over every reading.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrdct_dask.io import mediankernels
from xrdct_dask.io.scan import POSITION_COLUMNS, SCAN_COLUMNS, check_scan_columns

BLOCK_ROWS = 1 << 18  # lines parsed at once (~30 MB of text and values)
SAMPLE_MAX = 1 << 20  # readings per axis kept to find the groups of a scan without grid columns
MEDIAN_CELLS = 1 << 20  # histogram cells of grouped_median (x 24 bytes): its bins per group follow
MEDIAN_COLLECT = 4096  # values per rank grouped_median gathers and sorts once narrowed to them (a pass saved)
FLOATS = ("omega_deg", "x_mm", "z_mm", "monitor")


# ------------------------------------------------------------------------------------------
# streamed readers
# ------------------------------------------------------------------------------------------
ASIDE_SCAN = ".xrdct-scan-"  # the scan table converted beside a store being prepared (store.safety cleans it)


def scan_header(path: str | Path) -> list[str]:
    """Column names of a scan CSV, checked as :func:`~xrdct_dask.io.scan.read_scan_table` does."""
    with open(path, encoding="ascii", errors="replace") as f:
        names = [c.strip() for c in f.readline().strip().split(",")]
    check_scan_columns(path, names)
    return names


def scan_table_blocks(path: str | Path, rows: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The known columns of a scan CSV (``index, iz, iomega, ix`` as int64, ``omega_deg, x_mm,
    z_mm, monitor`` as float64, those present), ``rows`` lines at a time, in file order."""
    rows = rows or BLOCK_ROWS
    names = scan_header(path)
    with open(path, encoding="ascii", errors="replace") as f:
        f.readline()
        while True:
            lines = list(itertools.islice(f, rows))
            if not lines:
                return
            yield from parse_table_lines(path, names, lines)


def parse_table_lines(path: str | Path, names: list[str], lines: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """The known columns of some lines of a scan CSV whose header is ``names`` (one block; none
    when the lines hold no row), checked: a value that is not a number, or not whole in an integer
    column, is a one-line ValueError naming the column."""
    wanted = [c for c in names if c in SCAN_COLUMNS + POSITION_COLUMNS]
    cols = [names.index(c) for c in wanted]
    try:
        a = np.loadtxt(lines, delimiter=",", usecols=cols, dtype=np.float64, ndmin=2, comments="#")
    except ValueError as err:
        m = re.search(r"column (\d+)", str(err))
        col = names[int(m.group(1)) - 1] if m and 0 < int(m.group(1)) <= len(names) else "?"
        raise ValueError(f"{path}: column {col!r} holds values that are not numbers") from None
    if not len(a):
        return
    yield typed_columns(path, {c: a[:, k] for k, c in enumerate(wanted)})


def typed_columns(path: str | Path, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parsed float64 columns as the readers give them: the grid and index columns as int64 (a
    value that is not whole is a one-line ValueError naming the column), the others float64."""
    out = {}
    for c, v in columns.items():
        if c in SCAN_COLUMNS:
            if not np.array_equal(v, np.round(v)):
                raise ValueError(f"{path}: column {c!r} holds values that are not whole numbers")
            v = v.astype(np.int64)
        out[c] = np.ascontiguousarray(v)
    return out


def monitor_blocks(path: str | Path, rows: int | None = None) -> Iterator[np.ndarray]:
    """The values of a monitor file (one number per line, ``#`` comments) as float64 blocks."""
    rows = rows or BLOCK_ROWS
    with open(path, encoding="ascii", errors="replace") as f:
        start = 1
        while True:
            lines = list(itertools.islice(f, rows))
            if not lines:
                return
            v = parse_monitor_lines(path, lines, start)
            start += len(lines)
            yield v


def parse_monitor_lines(path: str | Path, lines: list[str], start: int) -> np.ndarray:
    """float64 values of some lines of a monitor file, the first of them line ``start`` (1-based):
    anything but one number per line (or a comment) is a one-line ValueError naming the line."""
    try:
        v = np.loadtxt(lines, dtype=np.float64, ndmin=1, comments="#")
    except ValueError as err:
        raise ValueError(f"{path}: {_first_bad(lines, start) or err}") from None
    if v.ndim != 1:
        raise ValueError(f"{path}: {v.shape[1]} numbers on a line; one monitor value per line")
    return v


def _first_bad(lines: list[str], start: int) -> str | None:
    """``line N: 'text' is not a number`` for the first line of a block that is not one number."""
    for k, line in enumerate(lines):
        text = line.split("#", 1)[0].strip()
        try:
            if text:
                float(text)
        except ValueError:
            return f"line {start + k}: {text[:40]!r} is not a number"
    return None


def array_blocks(columns: dict[str, np.ndarray], rows: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """In-memory per-frame columns (same length) in blocks, as :func:`scan_table_blocks` gives them."""
    rows = rows or BLOCK_ROWS
    n = len(next(iter(columns.values()))) if columns else 0
    for a in range(0, n, rows):
        yield {k: np.asarray(v[a:a + rows]) for k, v in columns.items()}


# ------------------------------------------------------------------------------------------
# on-disk columns
# ------------------------------------------------------------------------------------------
class FlatColumn:
    """float64 values by acquisition index in a flat file (0 where nothing was written):
    written block by block, read back for any indices (one slice's) through a short-lived map."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.touch()
        self.size = 0

    def append(self, values: np.ndarray) -> None:
        with open(self.path, "ab") as f:
            np.asarray(values, np.float64).tofile(f)
        self.size += len(values)

    def scatter(self, index: np.ndarray, values: np.ndarray) -> None:
        """``column[index] = values`` (the last of repeated indices wins), growing the file."""
        if not len(index):
            return
        need = int(index.max()) + 1
        if need > self.size:
            os.truncate(self.path, need * 8)
            self.size = need
        mm = np.memmap(self.path, np.float64, "r+", shape=(self.size,))
        mm[index] = values
        mm.flush()
        del mm

    def take(self, index: np.ndarray) -> np.ndarray:
        """``column[index]`` (any shape of int indices; NaN at indices outside ``0 .. size - 1``)."""
        index = np.asarray(index, np.int64)
        out = np.full(index.shape, np.nan)
        inside = (index >= 0) & (index < self.size)
        if not inside.any():
            return out
        mm = np.memmap(self.path, np.float64, "r", shape=(self.size,))
        out[inside] = mm[index[inside]]
        del mm
        return out

    def blocks(self, stop: int | None = None, rows: int | None = None) -> Iterator[np.ndarray]:
        rows = rows or BLOCK_ROWS
        stop = self.size if stop is None else min(stop, self.size)
        with open(self.path, "rb") as f:
            for a in range(0, stop, rows):
                yield np.fromfile(f, np.float64, min(rows, stop - a))


def _record_dtype(fields: Iterable[str]) -> np.dtype:
    return np.dtype([("index", "<i8"), ("iomega", "<i4"), ("ix", "<i4")] + [(f, "<f8") for f in fields])


class SlabFrames:
    """Frames placed on the ``(nz, nomega, nx)`` grid, kept per slice in ``folder``.

    :meth:`add` appends rows (grid indices ``iz, iomega, ix``, acquisition ``index`` and the
    measured ``fields``) to their slice's file; :meth:`finish` keeps per slice the row that came
    last at each point (a scan file's last record wins) and counts the points recorded twice.
    Reading a slice back holds that slice only."""

    def __init__(self, folder: Path, nz: int, nomega: int, nx: int, fields: Iterable[str] = ()):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shape = (nz, nomega, nx)
        self.fields = tuple(fields)
        self.max_index = -1
        self.placed = 0
        self._finished = False

    @property
    def dtype(self) -> np.dtype:
        """The rows' record dtype, built where it is used: a dtype that came through pickle (a
        task's argument on a worker) has field dtypes that are not numpy's own float64/int64
        instances, and numpy's ``ufunc.at`` then leaves its fast loop for the buffered one,
        ~20x slower (measured: ``np.minimum.at`` of 1e6 values 0.07 s against 0.004 s)."""
        return _record_dtype(self.fields)

    def _file(self, z: int, kind: str) -> Path:
        return self.folder / f"{kind}-{z:06d}.bin"

    def _rows(self, z: int) -> np.ndarray:
        """The rows added to slice ``z``, in table order: the slabs' parts in slab order, then
        the rows added without a part.  The files are removed once read."""
        files = sorted(self.folder.glob(f"rows-part*-{z:06d}.bin")) + [self._file(z, "rows")]
        rows = [np.fromfile(f, self.dtype) for f in files if f.exists()]
        for f in files:
            f.unlink(missing_ok=True)
        return np.concatenate(rows) if rows else np.empty(0, self.dtype)

    def add(self, iz: np.ndarray, iomega: np.ndarray, ix: np.ndarray, index: np.ndarray,
            values: dict[str, np.ndarray], part: int | None = None) -> None:
        """Append rows (all inside the grid) to their slices' files, in the order given.  ``part``:
        the slab of the table they come from (several slabs are added at once, each to files of
        its own; :meth:`finish` reads a slice's parts in slab order, so the last record still wins)."""
        if not len(iz):
            return
        rec = np.empty(len(iz), self.dtype)
        rec["index"], rec["iomega"], rec["ix"] = index, iomega, ix
        for f in self.fields:
            rec[f] = values[f]
        order = np.argsort(iz, kind="stable") if np.any(iz[1:] < iz[:-1]) else None  # a table in scan order: sorted
        zsorted = iz if order is None else iz[order]
        starts = np.concatenate([[0], np.flatnonzero(zsorted[1:] != zsorted[:-1]) + 1])
        for a, b in zip(starts, [*starts[1:], len(iz)]):
            kind = "rows" if part is None else f"rows-part{part:06d}"
            with open(self._file(int(zsorted[a]), kind), "ab") as fh:
                (rec[a:b] if order is None else rec[order[a:b]]).tofile(fh)
        self.max_index = max(self.max_index, int(index.max()))
        self.placed += len(iz)

    def finish(self, zs: Iterable[int] | None = None,
               each: Callable[[int, np.ndarray], None] | None = None) -> int:
        """Per slice (``zs``, default all): the winning row of each point (grid order) and the points
        recorded twice.  Returns the largest acquisition index placed in those slices (-1: none);
        finishing all of them sets :attr:`max_index` to it.  Slices are independent: slabs of them
        may be finished at once by different processes (:mod:`xrdct_dask.runs.scanslabs`).
        ``each(z, winners)``: called with each slice's winning rows while they are in memory (what
        else is taken from them is taken without reading them back)."""
        nw, nx = self.shape[1:]
        top = -1
        for z in (range(self.shape[0]) if zs is None else zs):
            rows = self._rows(z)
            flat = rows["iomega"].astype(np.int64) * nx + rows["ix"]
            seen = np.bincount(flat, minlength=nw * nx)
            last = np.full(nw * nx, -1, np.int64)
            last[flat] = np.arange(len(rows))  # fancy assignment: the last row of a repeated point wins
            win = rows[last[last >= 0]]
            win.tofile(self._file(z, "win"))
            if each is not None:
                each(z, win)
            if win.size:
                top = max(top, int(win["index"].max()))
            np.flatnonzero(seen > 1).astype(np.int64).tofile(self._file(z, "dup"))
        if zs is None:
            self.max_index = top
            self._finished = True
        return top

    def winners(self, z: int) -> np.ndarray:
        """The rows at the points of slice ``z`` (one per recorded point, in grid order)."""
        return np.fromfile(self._file(z, "win"), self.dtype)

    def index(self, z: int) -> np.ndarray:
        """int64 ``(nomega, nx)``: acquisition index of the frame at each point of slice ``z`` (-1 none)."""
        w = self.winners(z)
        out = np.full(self.shape[1:], -1, np.int64)
        out[w["iomega"], w["ix"]] = w["index"]
        return out

    def duplicate(self, z: int) -> np.ndarray:
        """bool ``(nomega, nx)``: points of slice ``z`` recorded more than once."""
        out = np.zeros(self.shape[1] * self.shape[2], bool)
        out[np.fromfile(self._file(z, "dup"), np.int64)] = True
        return out.reshape(self.shape[1:])

    def duplicates(self) -> int:
        return sum(self._file(z, "dup").stat().st_size // 8 for z in range(self.shape[0]))

    def stream(self, field: str, axis: int, z0: int = 0, z1: int | None = None) -> SliceStream:
        """For :func:`grouped_median`: ``(grid index along axis, value of field)`` of every
        winning row of slices ``z0 .. z1 - 1`` (default all), slice by slice (``axis`` 0 = z,
        1 = omega, 2 = x).  A picklable callable: it can run on a worker."""
        return SliceStream(self, field, axis, z0, self.shape[0] if z1 is None else z1)


@dataclass(frozen=True)
class SliceStream:
    """The ``(group, value)`` blocks of :meth:`SlabFrames.stream`: one block per slice."""

    grid: SlabFrames
    field: str
    axis: int
    z0: int
    z1: int

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for z in range(self.z0, self.z1):
            w = self.grid.winners(z)
            g = np.full(len(w), z, np.int64) if self.axis == 0 else \
                w["iomega" if self.axis == 1 else "ix"].astype(np.int64)
            yield g, w[self.field]


def scratch_folder(near: str | Path | None) -> tempfile.TemporaryDirectory:
    """A scratch folder for a scan's converted table, beside the store (same file system, room
    for it) where its folder exists, else in the system's temporary folder."""

    parent = Path(os.path.abspath(near)).parent if near is not None else None
    name = f".{Path(near).name}{ASIDE_SCAN}" if near is not None else ASIDE_SCAN
    return tempfile.TemporaryDirectory(prefix=name, dir=parent if parent is not None and parent.is_dir() else None)


def remove_scratch(tmp: tempfile.TemporaryDirectory | None) -> None:
    """Remove a folder :func:`scratch_folder` made (and all it holds: this program's files)."""
    if tmp is not None:
        shutil.rmtree(tmp.name, ignore_errors=True)
        tmp.cleanup()


# ------------------------------------------------------------------------------------------
# statistics in bounded memory
# ------------------------------------------------------------------------------------------
def serial_map(fn: Callable, parts: Iterable) -> list:
    """``[fn(p) for p in parts]``: the mapper of :func:`grouped_median` when no workers are given."""
    return [fn(p) for p in parts]


def grouped_median(stream, ngroups: int, *, bins: int | None = None, collect: int | None = None,
                   mapper: Callable | None = None) -> np.ndarray:
    """The exact median of each group's finite values, streamed as ``(group, value)`` blocks.

    ``stream()`` starts a new pass over the data (it is called a few times); ``stream`` may also be
    a list of such callables (parts of the data, e.g. slabs of slices), each pass then reduced
    part by part through ``mapper(fn, parts)``, an iterable of ``fn(part)`` in any order
    (default :func:`serial_map`; on workers, :func:`xrdct_dask.runs.scanslabs.mapper_for`), each
    merged here as it comes (one part's result held at a time): counts add,
    minima and maxima are taken, gathered values are joined, so the result does not depend on
    how the data are cut or where the parts run.  Each group's two middle ranks are found by
    narrowing: a pass histograms the values inside each rank's current interval into ``bins``
    bins (default: as many as :data:`MEDIAN_CELLS` allows, 16 to 65536) and keeps the bin holding
    the rank (its smallest to its largest value), until at most ``collect``
    (:data:`MEDIAN_COLLECT`) values are left, which a last pass gathers and sorts.
    Memory ``O(ngroups x bins)`` here and in each part (a part returns its non-empty cells only);
    a group without values gets NaN.
    Returns float64 ``(ngroups,)``: the mean of the two middle values (``np.median``)."""
    bins = bins or int(np.clip(MEDIAN_CELLS // (2 * ngroups), 16, 1 << 16))
    collect = collect or MEDIAN_COLLECT
    parts = list(stream) if isinstance(stream, (list, tuple)) else [stream]
    mapper = mapper or serial_map
    n = np.zeros(ngroups, np.int64)
    lo = np.full(ngroups, np.inf)
    hi = np.full(ngroups, -np.inf)
    for pn, plo, phi in mapper(functools.partial(_range_part, ngroups=ngroups), parts):
        n += pn
        np.minimum(lo, plo, out=lo)
        np.maximum(hi, phi, out=hi)
    # selections s = j * ngroups + g: rank (n-1)//2 (j = 0) and n//2 (j = 1) of group g
    rank = np.concatenate([(n - 1) // 2, n // 2])
    slo, shi = np.tile(lo, 2), np.tile(hi, 2)
    inside = np.tile(n, 2)
    has = inside > 0
    value = np.full(2 * ngroups, np.nan)
    done = ~has | (slo == shi)
    value[has & done] = slo[has & done]
    S = 2 * ngroups
    while True:
        active = ~done & (inside > collect)
        if not active.any():
            break
        hist = np.zeros(S * bins, np.int64)
        bmin = np.full(S * bins, np.inf)
        bmax = np.full(S * bins, -np.inf)
        nbelow = np.zeros(S, np.int64)
        fn = functools.partial(_hist_part, ngroups=ngroups, bins=bins, active=active, slo=slo, shi=shi)
        for below, cell, count, cmin, cmax in mapper(fn, parts):
            nbelow += below
            hist[cell] += count  # cells are unique within a part
            np.minimum.at(bmin, cell, cmin)
            np.maximum.at(bmax, cell, cmax)
        for s in np.flatnonzero(active):
            h = hist[s * bins:(s + 1) * bins]
            r = rank[s] - nbelow[s]  # rank inside the interval
            k = int(np.searchsorted(np.cumsum(h), r, side="right"))  # the bin holding rank r
            slo[s], shi[s], inside[s] = bmin[s * bins + k], bmax[s * bins + k], h[k]
            if slo[s] == shi[s]:
                done[s], value[s] = True, slo[s]
    left = np.flatnonzero(~done)
    if left.size:
        got: dict[int, list] = {int(s): [] for s in left}
        nbelow = np.zeros(S, np.int64)
        want = np.zeros(S, bool)
        want[left] = True
        fn = functools.partial(_collect_part, ngroups=ngroups, want=want, slo=slo, shi=shi)
        for below, sel, vals in mapper(fn, parts):
            nbelow += below
            for ss, part in zip(sel, vals):
                got[int(ss)].append(part)
        for s in left:
            vals = np.sort(np.concatenate(got[int(s)]))
            value[s] = vals[rank[s] - nbelow[s]]
    return np.where(n > 0, (value[:ngroups] + value[ngroups:]) / 2, np.nan)


def _range_part(stream, ngroups: int):
    """First pass of :func:`grouped_median` over one part: count, smallest and largest finite value per group."""
    n = np.zeros(ngroups, np.int64)
    lo = np.full(ngroups, np.inf)
    hi = np.full(ngroups, -np.inf)
    for g, v in stream():
        mediankernels.range_pass(*mediankernels.as_pair(g, v), n, lo, hi)
    return n, lo, hi


def _hist_part(stream, ngroups: int, bins: int, active: np.ndarray, slo: np.ndarray, shi: np.ndarray):
    """A narrowing pass of :func:`grouped_median` over one part: the values below each active
    interval counted, those inside histogrammed.  Returns ``(nbelow (S,), cells, count, min, max)``
    of the part's non-empty cells ``s * bins + bin`` only (a few per selection once narrowed)."""
    S = active.size
    hist = np.zeros(S * bins, np.int64)
    bmin = np.full(S * bins, np.inf)
    bmax = np.full(S * bins, -np.inf)
    nbelow = np.zeros(S, np.int64)
    active, slo, shi = (np.ascontiguousarray(a) for a in (active, slo, shi))
    with np.errstate(divide="ignore", invalid="ignore"):  # selections not active: no interval
        scale = np.where(active, bins / (shi - slo), 0.0)
    for g, v in stream():
        mediankernels.hist_pass(*mediankernels.as_pair(g, v), ngroups, active, slo, shi, scale, bins, nbelow, hist,
                                bmin, bmax)
    cells = np.flatnonzero(hist)
    return nbelow, cells, hist[cells], bmin[cells], bmax[cells]


def _collect_part(stream, ngroups: int, want: np.ndarray, slo: np.ndarray, shi: np.ndarray):
    """The last pass of :func:`grouped_median` over one part: ``(nbelow, selections, [values of each])``."""
    nbelow = np.zeros(want.size, np.int64)
    want, slo, shi = (np.ascontiguousarray(a) for a in (want, slo, shi))
    sel, vals = [], []
    for g, v in stream():
        sm, vm = mediankernels.collect_pass(*mediankernels.as_pair(g, v), ngroups, want, slo, shi, nbelow)
        if not sm.size:
            continue
        order = np.argsort(sm, kind="stable")
        keys, starts = np.unique(sm[order], return_index=True)
        for k, part in zip(keys, np.split(vm[order], starts[1:])):
            sel.append(int(k))
            vals.append(part)
    return nbelow, sel, vals


def sample_keys(index: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint64 ``(n,)``: a pseudo-random key for each acquisition index (splitmix64 of index and
    ``seed``).  A reading is in the sample of level ``L`` when its key is below ``2^(64 - L)``
    (:func:`in_sample`): the sample depends on the readings' indices only, not on how the table is
    cut into slabs or in what order they are read.  Random, not strided: a stride can alias with
    the scan's own period and miss whole grid values."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, np.int64).astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def in_sample(keys: np.ndarray, level: int) -> np.ndarray:
    """bool: the readings of keys ``keys`` (:func:`sample_keys`) in the sample of ``level`` (each kept
    with probability ``2^-level``; level 0: all of them)."""
    if level <= 0:
        return np.ones(keys.shape, bool)
    return keys < np.uint64(1 << (64 - level))


def sample_level(n: int, size: int | None = None) -> int:
    """The level whose sample of ``n`` readings holds about ``size`` (:data:`SAMPLE_MAX`) at most:
    0 (every reading) while they fit."""
    size = size or SAMPLE_MAX
    level = 0
    while n > size << level:
        level += 1
    return level


class IndexSample:
    """The sample of some columns' readings (:func:`sample_keys`), merged from parts in any cut:
    each part gives its readings at level :attr:`level` or finer (:meth:`add`); while more than
    ``size`` (:data:`SAMPLE_MAX`) are held, the level rises (each kept reading dropped unless its
    key is in the finer sample).  The result is the readings of the sample of the smallest level
    at or above the first one that holds at most ``size``, whatever the parts."""

    def __init__(self, level: int, size: int | None = None):
        self.level = level
        self.size = size or SAMPLE_MAX
        self.keys: list[np.ndarray] = []
        self.values: dict[str, list[np.ndarray]] = {}
        self.count = 0

    def add(self, keys: np.ndarray, values: dict[str, np.ndarray]) -> None:
        keep = in_sample(keys, self.level)
        self.keys.append(keys[keep])
        for k, v in values.items():
            self.values.setdefault(k, []).append(np.asarray(v, np.float64)[keep])
        self.count += int(keep.sum())
        while self.count > self.size:
            self.level += 1
            keys = np.concatenate(self.keys)
            keep = in_sample(keys, self.level)
            self.keys = [keys[keep]]
            self.values = {k: [np.concatenate(v)[keep]] for k, v in self.values.items()}
            self.count = int(keep.sum())

    def column(self, name: str) -> np.ndarray:
        parts = self.values.get(name, [])
        return np.concatenate(parts) if parts else np.empty(0)


def sample_grid_cuts(sample: np.ndarray, n: int) -> np.ndarray:
    """The ``n - 1`` values that split readings into the ``n`` groups of a grid axis: midway across
    the ``n - 1`` largest gaps of the sorted sample (as :func:`~xrdct_dask.io.positioners.grid_from_positions`
    splits them)."""
    v = np.sort(np.asarray(sample, np.float64).reshape(-1))
    if n < 1 or np.unique(v).size < n:
        raise ValueError(f"{np.unique(v).size} distinct positions cannot make a grid of {n} values")
    cuts = np.sort(np.argsort(np.diff(v))[::-1][:n - 1]) + 1
    return (v[cuts - 1] + v[cuts]) / 2
