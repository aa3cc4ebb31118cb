"""Frames in HDF5 / NeXus files: which file, dataset and chunk holds frame i, its raw bytes, their decoding.

A frames dataset is ``(nframes, ny, nx)``.  It may be a plain dataset, a virtual dataset (VDS)
mapping frames of many files (BLISS / Lima scans), or an Eiger master file's
``/entry/data/data_000001, ...`` external links to data files.  All of these are resolved here,
once per source, into *segments* -- ``(file, dataset)`` pairs holding real chunks -- and two
per-frame arrays ``segment[i]``, ``local[i]`` (frame i is frame ``local[i]`` of segment
``segment[i]``).  Reads then go straight to the segment's file, never through the VDS: HDF5 would
open every source file a VDS names and keep them open (pyFAI issue #2275: a VDS over thousands of
files exhausts the file handles), whereas here at most :data:`MAX_OPEN_FILES` ``h5py.File``
handles are open per process (least recently used closed first).

The fast path reads a frame's chunk as stored (``read_direct_chunk``: one chunk = one frame, as
Eiger and Lima write) and decodes it with the ``bitshuffle`` package's codec (HDF5 filter 32008,
bitshuffle + LZ4; its C function through ctypes, without the GIL and in place; its wheels are built
with AVX2, hdf5plugin's with SSE2 only), the ``lz4`` package (filter 32004) or zlib (deflate).  The
chunks of a batch are packed into one byte buffer with offsets, as the CBF payloads are, so a GPU
engine can take the same compressed bytes.  Before bitshuffle sees a chunk its block structure is
checked here (bitshuffle trusts the 4-byte block lengths and reads past the buffer on a corrupt
one). Datasets the fast path cannot take (chunks of several frames, other filters) are read by h5py
with hdf5plugin's filters, segment by segment.

On a GPU the same packed chunks are uploaded and decoded by :mod:`xrdct_dask.io.gpu_hdf5` (own
CUDA kernels, the same status codes); this module's decoder is then the fallback for what those
kernels do not take.

Status, as for CBF files: a missing file, a frame not mapped by a VDS, an unwritten chunk or an
index past the end is :attr:`FrameStatus.MISSING` (``FileNotFoundError``); a chunk that cannot be
decoded is :attr:`FrameStatus.CORRUPT_HEADER` / ``TRUNCATED`` / ``SIZE_MISMATCH``
(:class:`~xrdct_dask.io.cbf.CorruptFrameError` and its subclasses), each naming file and frame.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import re
import stat
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py

try:  # registers the bitshuffle / LZ4 / ... filters with HDF5 for the h5py path; the raw path and the GPU
    import hdf5plugin  # noqa: F401  decode need it not (read_direct_chunk), so a GPU node may lack it
except ImportError:
    hdf5plugin = None
import ctypes
from concurrent.futures import ThreadPoolExecutor

import lz4.block
import numba
import numpy as np

from xrdct_dask.io.cbf import CorruptFrameError, SizeMismatchError, TruncatedFrameError
from xrdct_dask.io.status import FrameStatus

FILTER_NONE, FILTER_DEFLATE, FILTER_LZ4, FILTER_BSLZ4 = 0, 1, 32004, 32008
FILTER_NAMES = {FILTER_NONE: "none", FILTER_DEFLATE: "deflate", FILTER_LZ4: "lz4", FILTER_BSLZ4: "bitshuffle-lz4"}
MAX_OPEN_FILES = int(os.environ.get("XRDCT_MAX_OPEN_H5", "64"))
_MAX_LINK_DEPTH = 16
_EIGER_LINK = re.compile(r"^data_(\d{6})$")
_OK, _MISSING = int(FrameStatus.OK), int(FrameStatus.MISSING)
_CORRUPT, _TRUNC, _SIZE = int(FrameStatus.CORRUPT_HEADER), int(FrameStatus.TRUNCATED), int(FrameStatus.SIZE_MISMATCH)


# ------------------------------------------------------------------------------------------
# a bounded number of open files per process
# ------------------------------------------------------------------------------------------
def check_regular(path: Path) -> None:
    """Raise FileNotFoundError when ``path`` does not exist, CorruptFrameError when it is not a
    regular file (a FIFO or device would block the reader forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise CorruptFrameError(f"{path}: not a regular file")


class H5FileCache:
    """Open ``h5py.File`` handles (read-only, HDF5's default locking: a file open twice in one process
    must be opened with the same flags; a file a writer holds in SWMR mode is opened as an SWMR
    reader and its datasets refreshed at each lookup), at most ``maxsize`` per process, the least recently used
    closed first; datasets looked up once per open file.  A file in use (:meth:`using`) is never
    closed under its user: the bound is then exceeded until it is released.  Thread-safe; a forked
    child starts with an empty cache (HDF5 handles do not survive ``fork``)."""

    def __init__(self, maxsize: int = MAX_OPEN_FILES):
        if maxsize < 1:
            raise ValueError(f"the open-file bound must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._files: collections.OrderedDict[str, tuple[h5py.File, dict]] = collections.OrderedDict()
        self._pins: collections.Counter[str] = collections.Counter()
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._swmr: set[str] = set()  # files opened as SWMR readers (a writer still appends to them)

    def __len__(self) -> int:
        return len(self._files)

    def _entry(self, path: Path):
        key = str(path)
        with self._lock:
            if self._pid != os.getpid():
                self._files.clear()
                self._pins.clear()
                self._swmr.clear()
                self._pid = os.getpid()
            hit = self._files.get(key)
            if hit is not None and hit[0].id.valid:
                self._files.move_to_end(key)
                return hit
            check_regular(path)
            try:
                f = h5py.File(key, "r")
                self._swmr.discard(key)
            except OSError as err:
                try:  # a file a writer holds open in SWMR mode: read it as SWMR allows, refreshed on each lookup
                    f = h5py.File(key, "r", swmr=True)
                    self._swmr.add(key)
                except OSError:
                    raise CorruptFrameError(f"{path}: not a readable HDF5 file ({err})") from None
            for old in [k for k in self._files if not self._pins[k]][:max(0, len(self._files) + 1 - self.maxsize)]:
                self._files.pop(old)[0].close()
            entry = (f, {})
            self._files[key] = entry
            return entry

    def file(self, path: Path) -> h5py.File:
        return self._entry(path)[0]

    def dataset(self, path: Path, name: str) -> h5py.Dataset:
        """``file[name]``; valid until the file is evicted (hold it across other opens with :meth:`using`)."""
        with self._lock:
            f, dsets = self._entry(path)
            d = dsets.get(name)
            if d is None:
                d = dsets[name] = f[name]
            elif str(path) in self._swmr:
                d.refresh()  # the length and chunks the SWMR writer has flushed since
            return d

    @contextlib.contextmanager
    def using(self, path: Path, name: str):
        """``with FILES.using(file, name) as dataset:`` -- the file stays open inside the block."""
        with self._lock:
            d = self.dataset(path, name)
            self._pins[str(path)] += 1
        try:
            yield d
        finally:
            with self._lock:
                self._pins[str(path)] -= 1

    def clear(self) -> None:
        with self._lock:
            for f, _ in self._files.values():
                f.close()
            self._files.clear()
            self._swmr.clear()

    def forget(self, path: Path) -> None:
        """Close ``path`` if it is open and not in use (a temporary file about to be removed)."""
        key = str(path)
        with self._lock:
            if key in self._files and not self._pins[key]:
                self._files.pop(key)[0].close()
                self._swmr.discard(key)


FILES = H5FileCache()


# ------------------------------------------------------------------------------------------
# resolving links, VDS mappings and Eiger masters into segments
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """A dataset that holds real chunks: ``file::dataset`` (``missing``: its file is absent;
    ``flag``: the FrameStatus code of every frame of a file that is there but unusable,
    CORRUPT_HEADER (not readable as HDF5, damaged metadata, half written) or WRONG_SHAPE (frames
    of another shape or type than the scan's), ``why`` says what; 0: usable)."""

    file: Path
    dataset: str
    missing: bool = False
    flag: int = 0
    why: str = ""

    def __str__(self) -> str:
        return f"{self.file}::{self.dataset}"


# what h5py raises for a file that is there but cannot be read as the scan's (not HDF5, cut short,
# damaged metadata: h5py's RuntimeError, a dataset path gone)
UNREADABLE = (CorruptFrameError, OSError, RuntimeError, KeyError, ValueError)


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:300]


def flagged_map(file: Path, dataset: str, nframes: int, flag: int, why: str) -> SegmentMap:
    """``nframes`` frames of one unusable file, each with status ``flag`` (see :class:`Segment`);
    the file is closed here, so that a later look opens it afresh (it may be whole by then)."""
    FILES.forget(file)
    return SegmentMap([Segment(file, dataset, flag=int(flag), why=why)], np.zeros(nframes, np.int32),
                      np.arange(nframes, dtype=np.int64))


def _linked_file(name: str, parent: Path) -> Path:
    """Where HDF5 would find a file named by a link or VDS mapping of ``parent``: the name as
    given (absolute, or relative to the parent's folder), else its base name beside the parent
    (a scan folder moved since it was written).  ``"."`` is the parent itself."""
    if name == ".":
        return parent
    p = Path(name)
    cand = p if p.is_absolute() else parent.parent / p
    if not cand.exists() and (parent.parent / p.name).exists():
        return parent.parent / p.name
    return cand


def resolve_path(file: Path, path: str, depth: int = 0) -> tuple[Path, str, str]:
    """Follow soft and external links along ``path`` in ``file`` ourselves (so that every file is
    opened through :data:`FILES`): ``(file, path, kind)`` of the object, kind "dataset" | "group".

    Raises FileNotFoundError when a linked file is missing, KeyError when the path does not exist.
    """
    if depth > _MAX_LINK_DEPTH:
        raise ValueError(f"{file}::{path}: more than {_MAX_LINK_DEPTH} nested links (a cycle?)")
    f = FILES.file(file)
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    for k, name in enumerate(parts):
        group = f["/" + "/".join(done)]
        if not isinstance(group, h5py.Group):
            raise KeyError(f"{file}::/{'/'.join(done)} is a dataset, not a group")
        link = group.get(name, getlink=True)
        rest = "/".join(parts[k + 1:])
        if link is None:
            raise KeyError(f"{file}: no object /{'/'.join(done + [name])}")
        if isinstance(link, h5py.SoftLink):
            target = link.path if link.path.startswith("/") else "/".join(["", *done, link.path])
            return resolve_path(file, f"{target}/{rest}", depth + 1)
        if isinstance(link, h5py.ExternalLink):
            target = _linked_file(link.filename, file)
            if not target.exists():
                raise FileNotFoundError(f"{file}::/{'/'.join(done + [name])} links to {link.filename}, which "
                                        f"does not exist ({target})")
            return resolve_path(target, f"{link.path}/{rest}", depth + 1)
        done.append(name)
    # the object's class, not a handle of it: a second handle of a dataset open while another
    # thread refreshes the cached one (an SWMR file) leaves that one's chunk index stale, and
    # frames inside the length it sees read as never written (tests/test_swmr_reads.py)
    kind = f.get("/" + "/".join(done), getclass=True)
    return file, "/" + "/".join(done), "dataset" if kind is h5py.Dataset else "group"


def _selected_frames(space, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Frame indices (along axis 0, in HDF5's row-major iteration order) selected in ``space``
    of a dataset of ``shape``; every selected frame must be selected whole."""
    kind = space.get_select_type()
    if kind == h5py.h5s.SEL_NONE:
        return np.empty(0, np.int64)
    if kind == h5py.h5s.SEL_ALL:
        return np.arange(shape[0]) if len(shape) == 3 else np.zeros(1, np.int64)
    if kind != h5py.h5s.SEL_HYPERSLABS:
        raise ValueError(f"{where}: VDS mapping by point selection is not supported (only hyperslabs of whole frames)")
    try:
        blocks = np.asarray(space.get_select_hyper_blocklist(), np.int64)  # (nblocks, 2, rank): first, last corner
    except Exception as err:  # an unlimited selection (a VDS still growing)
        raise ValueError(f"{where}: unlimited VDS mappings are not supported ({err})") from None
    frame = shape[-2:]
    if np.any(blocks[:, 0, -2:] != 0) or np.any(blocks[:, 1, -2:] != np.array(frame) - 1):
        raise ValueError(f"{where}: the VDS mapping selects parts of frames; only whole {frame} frames are supported")
    if len(shape) == 2:
        return np.zeros(1, np.int64)
    return np.unique(np.concatenate([np.arange(a, b + 1) for a, b in blocks[:, :, 0]]))


@dataclass
class SegmentMap:
    """``segments`` and, per frame, ``segment`` (int32, -1 = not mapped) and ``local`` (int64)."""

    segments: list[Segment]
    segment: np.ndarray
    local: np.ndarray

    @classmethod
    def concat(cls, parts: list[SegmentMap]) -> SegmentMap:
        """Frames of ``parts`` one after the other (segments shared by several parts listed once)."""
        index: dict[Segment, int] = {}
        seg_ids, locs = [], []
        for p in parts:
            remap = np.array([index.setdefault(s, len(index)) for s in p.segments] + [-1], np.int32)
            seg_ids.append(remap[p.segment])  # -1 (not mapped) picks the last entry, -1
            locs.append(p.local)
        return cls(list(index), np.concatenate(seg_ids) if seg_ids else np.empty(0, np.int32),
                   np.concatenate(locs) if locs else np.empty(0, np.int64))


def segment_map(file: Path, path: str, depth: int = 0) -> tuple[SegmentMap, tuple[int, int], np.dtype]:
    """Resolve the frames dataset ``file::path`` (links, nested VDS) into a :class:`SegmentMap`,
    with the frame shape ``(ny, nx)`` and dtype."""
    if depth > _MAX_LINK_DEPTH:
        raise ValueError(f"{file}::{path}: more than {_MAX_LINK_DEPTH} nested VDS / links")
    file, path, kind = resolve_path(file, path)
    if kind != "dataset":
        raise ValueError(f"{file}::{path} is a group, not a frames dataset")
    with FILES.using(file, path) as d:
        return _segment_map(d, file, path, depth)


def _segment_map(d: h5py.Dataset, file: Path, path: str, depth: int):
    if d.ndim not in (2, 3):
        raise ValueError(f"{file}::{path} has shape {d.shape}: frames need (nframes, ny, nx)")
    n = d.shape[0] if d.ndim == 3 else 1
    frame = tuple(d.shape[-2:])
    if not d.is_virtual:
        return SegmentMap([Segment(file, path)], np.zeros(n, np.int32), np.arange(n, dtype=np.int64)), frame, d.dtype
    seg = np.full(n, -1, np.int32)
    local = np.zeros(n, np.int64)
    parts = [SegmentMap([], np.empty(0, np.int32), np.empty(0, np.int64))]
    for vs in d.virtual_sources():
        where = f"{file}::{path} -> {vs.file_name}::{vs.dset_name}"
        vframes = _selected_frames(vs.vspace, d.shape, where)
        src_all = vs.src_space.get_select_type() == h5py.h5s.SEL_ALL  # its extent is then the source's own
        src_file = _linked_file(vs.file_name, file)
        if not src_file.exists():  # its frames are MISSING; named by where they should be
            sframes = np.arange(vframes.size) if src_all else _selected_frames(vs.src_space, vs.src_space.shape, where)
            child = SegmentMap([Segment(src_file, vs.dset_name, missing=True)], np.zeros(sframes.size, np.int32),
                               sframes.astype(np.int64))
            sframes = np.arange(sframes.size)
        else:
            try:
                child, cframe, _ = segment_map(src_file, vs.dset_name, depth + 1)
            except FileNotFoundError:
                raise
            except UNREADABLE as err:  # this file's frames are flagged, the others read
                n_src = vframes.size if src_all else int(np.prod(vs.src_space.shape[:1]))
                child, cframe = flagged_map(src_file, vs.dset_name, n_src, FrameStatus.CORRUPT_HEADER,
                                            _first_line(err)), frame
            if cframe != frame:  # frames of another shape: this file's are flagged
                child = flagged_map(src_file, vs.dset_name, child.segment.size, FrameStatus.WRONG_SHAPE,
                                    f"frames {cframe}, the VDS's {frame}")
            sframes = np.arange(child.segment.size) if src_all else \
                _selected_frames(vs.src_space, vs.src_space.shape, where)
            if sframes.size and sframes.max() >= child.segment.size:
                raise ValueError(f"{where}: maps source frame {sframes.max()} of a dataset of {child.segment.size}")
        if sframes.size != vframes.size:
            raise ValueError(f"{where}: maps {sframes.size} source frames to {vframes.size} frames")
        base = sum(len(p.segments) for p in parts)
        parts.append(child)
        seg[vframes] = np.where(child.segment[sframes] >= 0, child.segment[sframes] + base, -1)
        local[vframes] = child.local[sframes]
    segs = [s for p in parts for s in p.segments]
    return SegmentMap(segs, seg, local), frame, d.dtype


def eiger_links(file: Path, group: str) -> list[str]:
    """Names of the Eiger ``data_NNNNNN`` members of ``group`` in order (empty if none)."""
    g = FILES.file(file)[group]
    return sorted((k for k in g.keys() if _EIGER_LINK.match(k)), key=lambda k: int(k[5:]))


def eiger_segment_map(file: Path, group: str) -> tuple[SegmentMap, tuple[int, int], np.dtype]:
    """An Eiger master's ``data_000001, ...`` links concatenated in order.

    A link whose data file is missing is counted as holding as many frames as the first present
    one (Eiger writes equal files, ``nimages_per_file``, but the last); its frames are MISSING.  A
    data file that is there but cannot be read (cut short, half written, damaged metadata) is
    counted the same and its frames flagged CORRUPT_HEADER; one of frames of another shape or type
    than the first readable file's has its frames flagged WRONG_SHAPE: one bad file flags its own
    frames, never the scan's.
    """
    names = eiger_links(file, group)
    parts: list = []  # SegmentMap, or (name, flag, why) of a link whose file is missing or unusable
    frame = dtype = None
    per_file = None
    for name in names:
        try:
            m, fr, dt = segment_map(file, f"{group}/{name}")
        except FileNotFoundError:
            parts.append((name, FrameStatus.MISSING, "file not found"))
            continue
        except UNREADABLE as err:
            parts.append((name, FrameStatus.CORRUPT_HEADER, _first_line(err)))
            continue
        if frame is not None and (fr, dt) != (frame, dtype):
            parts.append((name, FrameStatus.WRONG_SHAPE, f"frames {fr} {dt}, the earlier links' {frame} {dtype}",
                          m.segment.size))
            continue
        frame, dtype = fr, dt
        per_file = per_file or m.segment.size
        parts.append(m)
    if frame is None:
        if any(p[1] != FrameStatus.MISSING for p in parts):
            raise CorruptFrameError(f"{file}::{group}: none of the data files of its {len(names)} links is readable "
                                    f"({next(p[2] for p in parts if p[1] != FrameStatus.MISSING)})")
        raise FileNotFoundError(f"{file}::{group}: none of the data files of its {len(names)} links exists")
    maps = []
    for p in parts:
        if isinstance(p, SegmentMap):
            maps.append(p)
            continue
        name, flag, why, *count = p
        link = FILES.file(file)[group].get(name, getlink=True)
        target = _linked_file(getattr(link, "filename", "?"), file)
        where = getattr(link, "path", name)
        if flag == FrameStatus.MISSING:
            maps.append(SegmentMap([Segment(target, where, True)], np.zeros(per_file, np.int32),
                                   np.arange(per_file, dtype=np.int64)))
        else:
            maps.append(flagged_map(target, where, count[0] if count else per_file, flag, why))
    return SegmentMap.concat(maps), frame, dtype


# ------------------------------------------------------------------------------------------
# finding the frames in a NeXus / Eiger / BLISS file
# ------------------------------------------------------------------------------------------
def _attr_str(obj, name: str) -> str | None:
    v = obj.attrs.get(name)
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size else None
    return v.decode() if isinstance(v, bytes) else (str(v) if v is not None else None)


def _nx_signal(file: Path, group: str) -> str | None:
    """Path of the >= 2D signal of NXdata ``group`` (or of its NeXus ``default`` chain)."""
    g = FILES.file(file)[group]
    for _ in range(4):
        if _attr_str(g, "NX_class") == "NXdata" or "signal" in g.attrs:
            break
        nxt = _attr_str(g, "default")
        if not nxt or nxt not in g:
            break
        g = g[nxt]
    sig, gname = _attr_str(g, "signal"), g.name
    if sig and sig in g:
        try:
            f2, p2, kind = resolve_path(file, f"{gname}/{sig}")
        except (KeyError, FileNotFoundError):
            return None
        if kind == "dataset" and FILES.dataset(f2, p2).ndim >= 2:
            return f"{gname}/{sig}"
    if eiger_links(file, gname):
        return gname
    return None


def find_frames(file: Path) -> str:
    """The frames of a NeXus / Eiger / BLISS file without a dataset path: the NeXus ``default``
    NXdata signal, else the first >= 2D NXdata signal of an NXentry, else ``/entry/data/data``,
    else the Eiger master's ``/entry/data`` links.  Returns the path (a group path = Eiger links)."""
    f = FILES.file(file)
    found = _nx_signal(file, "/")
    if found:
        return found
    for obj in f.values():
        if isinstance(obj, h5py.Group) and _attr_str(obj, "NX_class") == "NXentry":
            for sub in obj.values():
                if isinstance(sub, h5py.Group) and _attr_str(sub, "NX_class") == "NXdata":
                    found = _nx_signal(file, sub.name)
                    if found:
                        return found
    if "entry/data/data" in f:
        return "/entry/data/data"
    if "entry/data" in f and eiger_links(file, "/entry/data"):
        return "/entry/data"
    raise ValueError(f"{file}: no frames found (looked for the NeXus default NXdata signal, NXdata signals of the "
                     f"entries, /entry/data/data and Eiger /entry/data/data_000001 links); name the dataset: "
                     f"{file}::/path/to/frames")


def open_frames(file: Path, path: str | None) -> tuple[SegmentMap, tuple[int, int], np.dtype, str]:
    """Resolve ``file[::path]`` into segments: ``(map, frame shape, dtype, path used)``."""
    if path is None:
        path = find_frames(file)
    try:
        file2, path2, kind = resolve_path(file, path)
    except KeyError:
        hint = ""
        parent = path.rstrip("/").rsplit("/", 1)[0] or "/"
        try:
            if eiger_links(file, parent):
                hint = f" (an Eiger master: name the group {file}::{parent} to read its data_NNNNNN links)"
        except KeyError:
            pass
        raise ValueError(f"{file}: no dataset {path}{hint}") from None
    if kind == "group":
        sig = _nx_signal(file2, path2)
        if sig is None:
            raise ValueError(f"{file}::{path} is a group without a frames signal or Eiger data_NNNNNN links")
        if sig == path2:
            m, frame, dtype = eiger_segment_map(file2, path2)
            return m, frame, dtype, path
        return (*segment_map(file2, sig), sig)
    return (*segment_map(file2, path2), path)


# ------------------------------------------------------------------------------------------
# raw chunks
# ------------------------------------------------------------------------------------------
def dataset_filter(d: h5py.Dataset) -> int | None:
    """The fast-path filter id of a dataset stored one frame per chunk, else None (h5py reads it)."""
    frame_chunk = (1, *d.shape[1:]) if d.ndim == 3 else tuple(d.shape)
    if d.chunks is None or tuple(d.chunks) != frame_chunk:
        return None
    plist = d.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    if not filters:
        return FILTER_NONE
    if len(filters) != 1:
        return None
    code, _, cd, _ = filters[0]
    if code == FILTER_BSLZ4 and len(cd) >= 5 and cd[4] == 2:  # cd_values[4] = 2: LZ4 after the bitshuffle
        return FILTER_BSLZ4
    if code in (FILTER_LZ4, FILTER_DEFLATE):
        return code
    return None


@dataclass
class RawChunks:
    """Compressed frames of a batch as stored, packed: frame ``f`` is ``buffer[offsets[f]:offsets[f+1]]``.

    Attributes
    ----------
    buffer : uint8 (nbytes,)
    offsets : int64 (n + 1,)
    filter_id : int32 (n,)    FILTER_BSLZ4 (32008), FILTER_LZ4 (32004), FILTER_DEFLATE (1), FILTER_NONE (0)
    status : int8 (n,)        FrameStatus.OK, or MISSING (no bytes) for an absent file / chunk / frame
    shape : (ny, nx), dtype : numpy dtype of a decoded frame
    names : list of str       ``file::dataset frame k`` of each frame, for messages
    reasons : dict            frame -> why it is MISSING
    """

    buffer: np.ndarray
    offsets: np.ndarray
    filter_id: np.ndarray
    status: np.ndarray
    shape: tuple[int, int]
    dtype: np.dtype
    names: list[str]
    reasons: dict

    def __len__(self) -> int:
        return self.filter_id.size


def read_raw_chunks(m: SegmentMap, indices, shape: tuple[int, int], dtype, out: np.ndarray | None = None,
                    name: str = "", pool=None) -> RawChunks:
    """The stored chunks of frames ``indices`` of a resolved source.  h5py locates each chunk
    (``get_chunk_info_by_coord``: its file address and size); the bytes are then read with
    ``os.pread`` outside HDF5's global lock, on the threads of ``pool`` (a ThreadPoolExecutor)
    when one is given, so that reading scales with threads as the CBF reader does
    (``read_direct_chunk`` serialises every read of a process).  No copy: the bytes land in
    ``out`` (e.g. pinned memory) when it is large enough; ``out`` may also be a callable
    ``out(nbytes) -> uint8 array`` of at least ``nbytes``, asked once the sizes are known).  Never
    raises for a missing frame: its status says MISSING (TRUNCATED: the file ends inside the chunk).

    Raises ValueError when a present segment is not stored one frame per chunk with a supported
    filter (read such sources with :func:`read_frames_h5`)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = idx.size
    status = np.zeros(n, np.int8)
    filt = np.zeros(n, np.int32)
    sizes = np.zeros(n, np.int64)
    where: list = [None] * n
    names: list[str] = []
    reasons: dict[int, str] = {}
    fid_of: dict[int, int | None] = {}
    for k, i in enumerate(idx):
        if i < 0 or i >= m.segment.size:
            status[k] = _MISSING
            names.append(f"{name} frame {i}")
            reasons[k] = f"frame {i} is not in the source ({m.segment.size} frames)"
            continue
        s = int(m.segment[i])
        if s < 0:
            status[k] = _MISSING
            names.append(f"{name} frame {i}")
            reasons[k] = f"frame {i} is not mapped by the virtual dataset"
            continue
        seg, j = m.segments[s], int(m.local[i])
        names.append(f"{seg} frame {j}")
        if seg.missing:
            status[k] = _MISSING
            reasons[k] = f"file not found (frame {i} of {name})"
            continue
        if seg.flag:  # its file is there but unusable: flagged, not read
            status[k] = seg.flag
            reasons[k] = seg.why
            continue
        layout = None
        try:
            with FILES.using(seg.file, seg.dataset) as d:
                if s not in fid_of:
                    fid_of[s] = dataset_filter(d)
                    if fid_of[s] is None:
                        layout = (f"{seg}: chunks {d.chunks} with filters {list(d._filters)}: the raw path needs one "
                                  "frame per chunk, bitshuffle-LZ4 / LZ4 / deflate / none; read with read_frames")
                if layout is None:
                    nlocal = d.shape[0] if d.ndim == 3 else 1
                    coord = (j, 0, 0) if d.ndim == 3 else (0, 0)
                    info = d.id.get_chunk_info_by_coord(coord) if j < nlocal else None
        except FileNotFoundError:
            status[k] = _MISSING
            reasons[k] = "file not found"
            continue
        except UNREADABLE as err:  # gone bad since it was opened (h5py's RuntimeError on damaged metadata)
            status[k] = _CORRUPT
            reasons[k] = _first_line(err)
            continue
        if layout is not None:
            raise ValueError(layout)
        if info is None or info.byte_offset is None:
            status[k] = _MISSING
            reasons[k] = "chunk not written" if info is not None else f"past the dataset's {nlocal} frames"
            continue
        # filter_mask bit 0 set: the (only) filter was skipped for this chunk, stored as is
        filt[k] = FILTER_NONE if info.filter_mask & 1 else fid_of[s]
        sizes[k] = info.size
        where[k] = (seg.file, int(info.byte_offset))  # the file offset (a user block included)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    if callable(out):
        out = out(total)
    buf = out[:total] if out is not None and out.size >= total else np.empty(total, np.uint8)
    todo = [k for k in range(n) if where[k] is not None]
    parts = 1 if pool is None else max(1, min(len(todo), getattr(pool, "_max_workers", 1)))
    groups = [todo[a::parts] for a in range(parts)]
    read = functools.partial(_pread_chunks, where=where, buf=buf, offsets=offsets)
    short = [k for g in (map(read, groups) if parts == 1 else pool.map(read, groups)) for k in g]
    for k in short:
        status[k], filt[k] = _TRUNC, FILTER_NONE
        reasons[k] = "the file ends inside the frame's chunk"
    return RawChunks(buf, offsets, filt, status, shape, np.dtype(dtype), names, reasons)


def _pread_chunks(ks: list[int], where: list, buf: np.ndarray, offsets: np.ndarray) -> list[int]:
    """Read the chunks ``ks`` (``where[k] = (file, address)``) into ``buf[offsets[k]:offsets[k+1]]``
    with ``os.preadv`` (the GIL released); returns those the file ends inside of."""
    short, fds = [], {}
    try:
        for k in ks:
            file, pos = where[k]
            fd = fds.get(file)
            if fd is None:
                fd = fds[file] = os.open(file, os.O_RDONLY)
            view = memoryview(buf[offsets[k]:offsets[k + 1]])
            while len(view):
                got = os.preadv(fd, [view], pos)
                if got <= 0:
                    short.append(k)
                    break
                view, pos = view[got:], pos + got
    finally:
        for fd in fds.values():
            os.close(fd)
    return short


@numba.njit(cache=True, nogil=True)
def _be(buf, pos, n):
    v = np.int64(0)
    for b in range(n):
        v = (v << 8) | np.int64(buf[pos + b])
    return v


@numba.njit(cache=True, nogil=True)
def _check_bslz4(buf, offsets, filt, status, frame_bytes, itemsize, block_elems):
    """Check the framing of every bitshuffle-LZ4 chunk (status per frame), and its block size.

    Chunk: uint64 BE uncompressed bytes, uint32 BE block bytes, then per block of ``bs``
    elements a uint32 BE length + that many LZ4 bytes; the last block holds the remainder
    rounded down to a multiple of 8 elements; the final ``nelem % 8`` elements follow raw.
    """
    for f in range(filt.size):
        if status[f] != 0 or filt[f] != 32008:
            continue
        a, b = offsets[f], offsets[f + 1]
        if b - a < 12:
            status[f] = 1  # TRUNCATED
            continue
        if _be(buf, a, 8) != frame_bytes:
            status[f] = 7  # SIZE_MISMATCH
            continue
        bbytes = _be(buf, a + 8, 4)
        if bbytes <= 0 or bbytes % (8 * itemsize) != 0:
            status[f] = 3  # CORRUPT_HEADER
            continue
        bs = bbytes // itemsize
        block_elems[f] = bs
        nelem = frame_bytes // itemsize
        pos = a + 12
        done = 0
        while status[f] == 0:
            left = nelem - done
            this = bs if left >= bs else left - left % 8
            if this == 0:
                break
            if pos + 4 > b:
                status[f] = 1
                break
            clen = _be(buf, pos, 4)
            if clen <= 0 or clen > this * itemsize + (this * itemsize) // 255 + 16:
                status[f] = 3
                break
            if pos + 4 + clen > b:
                status[f] = 1
                break
            pos += 4 + clen
            done += this
        if status[f] == 0:
            rest = (nelem - done) * itemsize
            if pos + rest > b:
                status[f] = 1
            elif pos + rest < b:
                status[f] = 7


def _lz4_h5(data: memoryview, nbytes: int) -> bytes:
    """HDF5 LZ4 filter (32004) framing: uint64 BE total, uint32 BE block size, then per block a
    uint32 BE compressed length + bytes (stored raw when that length equals the block's)."""

    if len(data) < 12:
        raise EOFError("chunk shorter than its 12-byte header")
    total = int.from_bytes(data[:8], "big")
    block = int.from_bytes(data[8:12], "big")
    if total != nbytes:
        raise OverflowError(f"header says {total} bytes, the frame has {nbytes}")
    if block <= 0:
        raise ValueError(f"block size {block}")
    out, pos = bytearray(), 12
    while len(out) < total:
        this = min(block, total - len(out))
        if pos + 4 > len(data):
            raise EOFError("chunk ends inside its blocks")
        clen = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
        if pos + clen > len(data):
            raise EOFError("chunk ends inside its blocks")
        piece = data[pos:pos + clen]
        if clen != this:
            piece = lz4.block.decompress(piece, uncompressed_size=this)
            if len(piece) != this:  # python-lz4 returns what a corrupt block decodes to, short or not
                raise ValueError(f"an LZ4 block decodes to {len(piece)} bytes, not {this}")
        out += piece
        pos += clen
    if len(out) != total or pos != len(data):
        raise OverflowError(f"blocks decode to {len(out)} bytes in {pos} of {len(data)} chunk bytes")
    return bytes(out)


_REASONS = {_TRUNC: "chunk ends inside its compressed blocks", _SIZE: "chunk size disagrees with the frame size",
            _CORRUPT: "chunk cannot be decoded"}


@functools.cache
def _bshuf_c():
    """The ``bitshuffle`` package's compiled ``bshuf_decompress_lz4`` (its public C API, exported by
    its extension module), called through ctypes: no GIL held while it runs, output written in
    place.  None when the symbol is not there (then its Python API decodes, plus one copy)."""

    # lazy: an h5py plugin, loaded at the first bitshuffle-LZ4 chunk
    import bitshuffle.ext

    try:
        fn = ctypes.CDLL(bitshuffle.ext.__file__).bshuf_decompress_lz4
    except (OSError, AttributeError):
        return None
    # int64_t bshuf_decompress_lz4(const void* in, void* out, size_t size, size_t elem_size, size_t block_size)
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
    return fn


def _decode_one(buf: np.ndarray, fid: int, dest: np.ndarray, block: int, frame_bytes: int) -> int:
    """Decode one chunk into ``dest`` (an (ny, nx) C-contiguous view); returns a status code."""
    try:
        if fid == FILTER_BSLZ4:
            c = _bshuf_c()
            if c is not None and dest.flags.c_contiguous:
                got = c(buf[12:].ctypes.data, dest.ctypes.data, dest.size, dest.itemsize, block)
                return _OK if got == buf.size - 12 else (_SIZE if got >= 0 else _CORRUPT)
            # lazy: an h5py plugin, loaded at the first bitshuffle-LZ4 chunk
            import bitshuffle

            dest[...] = bitshuffle.decompress_lz4(buf[12:], dest.shape, dest.dtype, block)
            return _OK
        if fid == FILTER_LZ4:
            raw = _lz4_h5(memoryview(buf), frame_bytes)
        elif fid == FILTER_DEFLATE:
            d = zlib.decompressobj()
            raw = d.decompress(buf, frame_bytes + 1)
            if not d.eof:
                raise EOFError("deflate stream ends early")
        else:
            raw = buf
        if len(raw) != frame_bytes:
            raise OverflowError(f"{len(raw)} bytes for a {frame_bytes}-byte frame")
        dest[...] = np.frombuffer(raw, dest.dtype).reshape(dest.shape)
        return _OK
    except EOFError:
        return _TRUNC
    except OverflowError:
        return _SIZE
    except Exception:  # noqa: BLE001 -- whatever a codec raises on bad bytes marks this frame, not the batch
        return _CORRUPT


def decode_chunks(chunks: RawChunks, out: np.ndarray | None = None, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Decode a batch of raw chunks on the CPU.

    Parameters
    ----------
    chunks : RawChunks
    out : (n, ny, nx) array of ``chunks.dtype``, optional
    threads : int
        frames decoded concurrently (bitshuffle-LZ4 runs without the GIL); 1 = this thread only.

    Returns
    -------
    out : (n, ny, nx)
        decoded frames (frames that are not OK are left as they were: zeros in a new array).
    status : int8 (n,)
        FrameStatus codes: OK, MISSING (from the chunks), TRUNCATED / SIZE_MISMATCH / CORRUPT_HEADER.

    One compiled pass checks the framing of all bitshuffle-LZ4 chunks (bitshuffle trusts the
    block lengths), then one codec call per frame decodes it in place.
    """
    n = len(chunks)
    ny, nx = chunks.shape
    dt = chunks.dtype
    if out is None:
        out = np.zeros((n, ny, nx), dt)
    elif out.shape != (n, ny, nx) or out.dtype != dt:
        raise ValueError(f"out is {out.shape} {out.dtype}, the chunks decode to {(n, ny, nx)} {dt}")
    status = chunks.status.copy()
    block = np.zeros(n, np.int64)
    frame_bytes = ny * nx * dt.itemsize
    _check_bslz4(chunks.buffer, chunks.offsets, chunks.filter_id, status, frame_bytes, dt.itemsize, block)
    buf, off = chunks.buffer, chunks.offsets
    todo = np.flatnonzero(status == _OK)

    def one(f):
        status[f] = _decode_one(buf[off[f]:off[f + 1]], int(chunks.filter_id[f]), out[f], int(block[f]), frame_bytes)

    if threads > 1 and todo.size > 1:

        with ThreadPoolExecutor(min(threads, todo.size)) as pool:
            list(pool.map(one, todo))
    else:
        for f in todo:
            one(f)
    return out, status


def raise_for_status(chunks: RawChunks, status: np.ndarray) -> None:
    """Raise for the first frame that is not OK: FileNotFoundError (MISSING),
    TruncatedFrameError, SizeMismatchError or CorruptFrameError, naming file, dataset and frame."""
    bad = np.flatnonzero(status != _OK)
    if bad.size == 0:
        return
    f = int(bad[0])
    code, name = int(status[f]), chunks.names[f]
    fid = FILTER_NAMES.get(int(chunks.filter_id[f]), str(chunks.filter_id[f]))
    if code == _MISSING:
        raise FileNotFoundError(f"{name}: {chunks.reasons.get(f, 'missing')}")
    cls = {_TRUNC: TruncatedFrameError, _SIZE: SizeMismatchError}.get(code, CorruptFrameError)
    raise cls(f"{name}: {_REASONS.get(code, 'cannot be decoded')} ({fid}, {chunks.offsets[f + 1] - chunks.offsets[f]} "
              f"bytes)")


def read_frames_h5(m: SegmentMap, indices, shape: tuple[int, int], dtype, name: str = "",
                   out: np.ndarray | None = None) -> np.ndarray:
    """Frames ``indices`` as ``(n, ny, nx)``: the raw path where every segment allows it, else
    h5py (with hdf5plugin's filters) segment by segment; raises for the first bad frame."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    try:
        chunks = read_raw_chunks(m, idx, shape, dtype, name=name)
    except ValueError:
        chunks = None
    if chunks is not None:
        out, status = decode_chunks(chunks, out)
        raise_for_status(chunks, status)
        return out
    if out is None:
        out = np.empty((idx.size, *shape), dtype)
    for k, i in enumerate(idx):
        if i < 0 or i >= m.segment.size or m.segment[i] < 0:
            raise FileNotFoundError(f"{name} frame {i}: not in the source ({m.segment.size} frames) or not mapped")
        seg, j = m.segments[int(m.segment[i])], int(m.local[i])
        if seg.missing:
            raise FileNotFoundError(f"{seg} frame {j}: file not found")
        if seg.flag:
            raise CorruptFrameError(f"{seg} frame {j}: {seg.why}")
        try:
            with FILES.using(seg.file, seg.dataset) as d:
                out[k] = d[j] if d.ndim == 3 else d[...]
        except FileNotFoundError:
            raise
        except (OSError, RuntimeError, KeyError) as err:  # a filter failed on a corrupt chunk, damaged metadata
            raise CorruptFrameError(f"{seg} frame {j}: cannot be read ({_first_line(err)})") from None
    return out
