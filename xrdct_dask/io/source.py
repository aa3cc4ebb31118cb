"""The frame-source contract: ``read_frames(source, indices) -> (n, ny, nx)`` for whatever
``inputs.frames`` holds.

``source`` is one of

* a CBF template with an ``{index}`` field, index = acquisition order from 0:
  ``frames/frame_{index:06d}.cbf``, or a folder per slice and a folder or file per line with
  ``{z}``, ``{line}`` / ``{omega}`` fields and ``{index}`` counting within them
  (``slice_{z:04d}/line_{line:05d}/frame_{index:06d}.cbf``, :mod:`xrdct_dask.io.layout`);
  the files may be gzip or bzip2 compressed
  (``.cbf.gz`` / ``.cbf.bz2``, recognised by their first bytes), decompressed in memory and then
  parsed and decoded as plain CBF (:func:`~xrdct_dask.io.cbf.parse_cbf`,
  :func:`~xrdct_dask.io.decode.decode_payload`);
* an HDF5 / NeXus file, ``scan.h5`` or ``scan.h5::/entry/data/data``: a plain frames dataset, a
  virtual dataset over many files (BLISS), or an Eiger master with external links to its data
  files (name the ``/entry/data`` group, or give the file alone); see :mod:`xrdct_dask.io.hdf5`;
* an HDF5 file per slice or per line, ``slice_{z:04d}.h5::/entry/data/data`` (:class:`Hdf5Template`);
* a TIFF or EDF file per frame, the same templates ending ``.tif`` / ``.tiff`` / ``.edf``
  (``.edf.gz``, ``.edf.bz2``), read with fabio and decoded on the host
  (:class:`~xrdct_dask.io.fabio_frames.FabioTemplate`).

Index i is the i-th frame of the dataset (HDF5), the file the template names for i (CBF), or the
frame of its slice / line in the file named for it (HDF5 template); paths are computed from i and
the scan's shape, never found by listing a folder.
A missing file or frame raises ``FileNotFoundError``, a frame that cannot be decoded
:class:`~xrdct_dask.io.cbf.CorruptFrameError` (or a subclass), each naming the file and frame.
Only regular files are opened, so a FIFO or device in the frame folder cannot hang a reader.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xrdct_dask.backend import get_array_module
from xrdct_dask.io import hdf5
from xrdct_dask.io.cbf import CbfPayload, CorruptFrameError, decompress_frame, parse_cbf, read_file
from xrdct_dask.io.decode import decode_payload
from xrdct_dask.io.layout import FrameTemplate, ScanShape, template_fields
from xrdct_dask.io.spec import H5_SUFFIXES, is_hdf5, split_spec
from xrdct_dask.io.status import FrameStatus

if TYPE_CHECKING:
    from xrdct_dask.io import hdf5

log = logging.getLogger(__name__)


def _hdf5():
    """The HDF5 reader (h5py, hdf5plugin, numba kernels), imported when an HDF5 source is used:
    a CBF-only run never loads it."""

    return hdf5


class FrameSource(ABC):
    """Where the frames of a scan are; ``read_frames(indices)`` returns them as ``(n, ny, nx)``."""

    spec: str

    @property
    @abstractmethod
    def nframes(self) -> int | None:
        """Frames the source holds (None: not known without listing files, as for a CBF template)."""

    @property
    @abstractmethod
    def frame_shape(self) -> tuple[int, int]:
        """``(ny, nx)`` = (slow, fast) of one frame."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype:
        """dtype of a decoded frame (int32 for CBF, the dataset's for HDF5)."""

    @abstractmethod
    def read_frames(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``indices`` (ints, acquisition order) as ``(n, ny, nx)`` of :attr:`dtype`."""

    @abstractmethod
    def files(self) -> list[Path]:
        """The files the source reads (for the input digest); for a CBF template: none listed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


# ------------------------------------------------------------------------------------------
# CBF templates, plain or compressed
# ------------------------------------------------------------------------------------------
def check_frame_dtype(dtype, where: str) -> None:
    """Raise ValueError (one line) unless ``dtype`` is one frames can have: integers or floats.
    A compound, string, boolean or complex dataset is not a detector's frames."""
    dt = np.dtype(dtype)
    if dt.kind not in "iuf" or dt.fields is not None or dt.subdtype is not None:
        what = {"V": "compound records", "S": "byte strings", "U": "strings", "O": "objects (strings)",
                "b": "booleans", "c": "complex numbers"}.get(dt.kind, str(dt))
        raise ValueError(f"{where}: a dataset of {what} is not frames (integer counts or floats)")


def pixel_dtype(dtype) -> np.dtype:
    """What the engines integrate frames of ``dtype`` as: float32 for a float dataset (its values
    as they are; NaN, infinite and negative pixels are invalid in that frame, as pyFAI masks
    them), int32 counts for integers (:func:`as_counts`)."""
    return np.dtype(np.float32) if np.dtype(dtype).kind == "f" else np.dtype(np.int32)


_I32 = np.iinfo(np.int32)


def out_of_range(frames) -> np.ndarray:
    """bool ``(n,)``: frames of a 64-bit integer type holding values no int32 count holds (beyond
    +-2^31; an unsigned type's all-ones gap value excepted): they are flagged
    :attr:`~xrdct_dask.io.status.FrameStatus.OUT_OF_RANGE`, never wrapped.  numpy or cupy."""
    dt = frames.dtype
    n = frames.shape[0]
    if dt.kind not in "iu" or dt.itemsize < 8:
        return get_array_module(frames).zeros(n, bool)
    flat = frames.reshape(n, -1)
    if dt.kind == "u":
        return ((flat > _I32.max) & (flat != np.iinfo(dt).max)).any(axis=1)
    return ((flat > _I32.max) | (flat < _I32.min)).any(axis=1)


def as_counts(frames: np.ndarray) -> np.ndarray:
    """What the engines integrate (:func:`pixel_dtype`): int32 counts of decoded integer frames,
    invalid pixels negative as in a Pilatus CBF (an Eiger's unsigned gap / bad-pixel value, 2^32 - 1,
    2^16 - 1, 2^64 - 1, becomes -1; uint32 as a view, no copy; 64-bit values beyond int32 are for
    frames :func:`out_of_range` flags), or float32 of float frames (NaN kept: the engines mask it)."""
    if frames.dtype.kind == "f":
        return frames.astype(np.float32, copy=False)
    if frames.dtype == np.int32:
        return frames
    if frames.dtype == np.uint32:
        return frames.view(np.int32)
    out = frames.astype(np.int32)
    if frames.dtype in (np.uint16, np.uint64):
        out[frames == np.iinfo(frames.dtype).max] = -1
    return out


def read_batch(source: Hdf5Frames | Hdf5Template, indices: np.ndarray,
               threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``indices`` of an HDF5 source as the engines take them (:func:`as_counts`: int32
    counts, or float32 for a float dataset) and a FrameStatus code per frame, never raising for a
    bad one: index < 0 or absent is MISSING, a bad chunk TRUNCATED / SIZE_MISMATCH / CORRUPT_HEADER
    (the raw path: :func:`~xrdct_dask.io.hdf5.read_raw_chunks` + :func:`~xrdct_dask.io.hdf5.decode_chunks`;
    layouts it does not take are read frame by frame), 64-bit values beyond int32 OUT_OF_RANGE,
    damaged metadata (h5py's RuntimeError) CORRUPT_HEADER."""
    if isinstance(source, Hdf5Template) or decoded_on_host(source) and not isinstance(source, Hdf5Frames):
        return source.read_batch(indices, threads)  # a file per slice or line, or TIFF / EDF files
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    frames = np.zeros((idx.size, *source.frame_shape), source.dtype)
    status = np.full(idx.size, int(FrameStatus.MISSING), np.int8)
    present = np.flatnonzero(idx >= 0)
    if present.size:
        try:
            chunks = source.read_raw_chunks(idx[present])
            dec, st = _hdf5().decode_chunks(chunks, threads=threads)
            frames[present], status[present] = dec, st
        except ValueError:  # not one frame per chunk with a filter the raw path decodes
            for k in present:
                try:
                    frames[k] = source.read_frames([idx[k]])[0]
                    status[k] = FrameStatus.OK
                except FileNotFoundError:
                    pass
                except (CorruptFrameError, OSError, RuntimeError):  # h5py: RuntimeError on damaged metadata
                    status[k] = FrameStatus.CORRUPT_HEADER
        except (OSError, RuntimeError, KeyError) as err:  # the file went bad since it was opened
            log.warning("%s: %s", source.spec, str(err).splitlines()[0] if str(err) else
                                                type(err).__name__)
            status[present] = FrameStatus.CORRUPT_HEADER
    status[out_of_range(frames) & (status == FrameStatus.OK)] = FrameStatus.OUT_OF_RANGE
    return as_counts(frames), status


class CbfTemplate(FrameSource):
    """One CBF file per frame, ``template.format(**fields)``; plain, ``.gz`` or ``.bz2``.

    The fields (``{z}``, ``{line}``, ``{omega}``, ``{index}``) are computed from the acquisition
    index and ``scan`` (:class:`~xrdct_dask.io.layout.FrameTemplate`); a flat ``{index}`` template
    needs no ``scan``."""

    def __init__(self, template: str, scan: ScanShape | None = None):
        self.layout = FrameTemplate(template, scan)
        self.spec = template
        self._shape: tuple[int, int] | None = None

    def path(self, index: int) -> Path:
        return Path(self.layout.format(index))

    file_of = path

    def read_payload(self, index: int) -> CbfPayload:
        """The byte-offset payload of frame ``index`` (decompressed in memory when gz / bz2)."""
        path = self.path(index)
        return parse_cbf(decompress_frame(read_file(path), str(path)), str(path))

    @property
    def nframes(self) -> None:
        return None

    @property
    def frame_shape(self) -> tuple[int, int]:
        if self._shape is None:
            self._shape = self.read_payload(0).shape
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int32)

    def read_frames(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.empty((0, *(self._shape or (0, 0))), np.int32)
        for k, i in enumerate(idx):
            payload = self.read_payload(int(i))
            if out is None and k == 0:
                out = np.empty((idx.size, *payload.shape), np.int32)
            if payload.shape != out.shape[1:]:
                raise CorruptFrameError(f"{self.path(i)}: frame is {payload.shape}, the first read {out.shape[1:]}")
            decode_payload(payload, out[k], name=str(self.path(i)))
        self._shape = self._shape or tuple(out.shape[1:])
        return out

    def files(self) -> list[Path]:
        return []


# ------------------------------------------------------------------------------------------
# HDF5 / NeXus
# ------------------------------------------------------------------------------------------
class Hdf5Frames(FrameSource):
    """Frames of an HDF5 / NeXus dataset, VDS or Eiger master, resolved once into segments."""

    def __init__(self, file: str | Path, path: str | None = None):
        self.file = Path(file)
        h5 = _hdf5()
        h5.check_regular(self.file)
        try:
            self.map, self._shape, self._dtype, self.path = h5.open_frames(self.file, path)
        except RuntimeError as err:  # h5py on damaged metadata: one line, as a corrupt file
            raise CorruptFrameError(f"{self.file}: damaged HDF5 metadata ({str(err).splitlines()[0]})") from None
        self.spec = f"{self.file}::{self.path}"
        check_frame_dtype(self._dtype, self.spec)

    @property
    def nframes(self) -> int:
        return int(self.map.segment.size)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._dtype)

    @property
    def segments(self) -> list[hdf5.Segment]:
        return self.map.segments

    def read_raw_chunks(self, indices, out: np.ndarray | None = None, pool=None) -> hdf5.RawChunks:
        """Compressed chunks of frames ``indices`` as stored, packed (see :class:`~xrdct_dask.io.hdf5.RawChunks`;
        ``pool``: threads reading them in parallel)."""
        return _hdf5().read_raw_chunks(self.map, indices, self._shape, self._dtype, out=out, name=self.spec, pool=pool)

    def read_frames(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        return _hdf5().read_frames_h5(self.map, indices, self._shape, self._dtype, name=self.spec, out=out)

    def files(self) -> list[Path]:
        return [self.file] + sorted({s.file for s in self.map.segments} - {self.file})


class Hdf5Template(FrameSource):
    """An HDF5 file per slice or per line: ``slice_{z:04d}.h5::/entry/data/data``.

    Frame ``i`` is frame ``FrameTemplate.local(i)`` of the dataset in the file the template names for
    it (:mod:`xrdct_dask.io.layout`).  Each file is opened as an :class:`Hdf5Frames` when first
    read (at most :attr:`OPEN_FILES` kept open per process); a file that is absent is not
    remembered, so a file written late is read by the next task.  Nothing is listed."""

    OPEN_FILES = 32

    def __init__(self, spec: str, scan: ScanShape | None):
        file, self.dataset = split_spec(spec)
        self.layout = FrameTemplate(file, scan, hdf5=True)
        self.spec = spec
        self._files: dict[str, Hdf5Frames] = {}
        self._first: Hdf5Frames | None = None
        self._lock = threading.Lock()  # the tasks of a worker share this source

    def __getstate__(self):
        return {"spec": self.spec, "scan": self.layout.scan}

    def __setstate__(self, state):
        self.__init__(state["spec"], state["scan"])

    def file_of(self, index: int) -> Path:
        return Path(self.layout.format(index))

    def unit(self, path: Path) -> Hdf5Frames:
        """The open source of one file (FileNotFoundError when absent); refreshed where it has grown."""
        key = str(path)
        with self._lock:
            src = self._files.pop(key, None)
        if src is not None and _stale(src):
            src = None
        if src is None:
            src = Hdf5Frames(path, self.dataset)
        with self._lock:
            self._files[key] = src  # most recent last; the oldest dropped beyond OPEN_FILES
            while len(self._files) > self.OPEN_FILES:
                self._files.pop(next(iter(self._files)))
        return src

    def _first_unit(self) -> Hdf5Frames:
        """The file of frame 0 (shape and dtype of every frame)."""
        if self._first is None:
            self._first = self.unit(self.file_of(0))
        return self._first

    @property
    def nframes(self) -> None:
        return None

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self._first_unit().frame_shape

    @property
    def dtype(self) -> np.dtype:
        return self._first_unit().dtype

    def groups(self, indices: np.ndarray):
        """``(path, rows, local indices)`` per file over ``indices`` (>= 0), in order of first use."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        by_file: dict[str, list[int]] = {}
        for k, i in enumerate(idx):
            by_file.setdefault(self.layout.format(int(i)), []).append(k)
        for path, rows in by_file.items():
            rows = np.asarray(rows, np.int64)
            yield Path(path), rows, np.asarray([self.layout.local(int(i)) for i in idx[rows]], np.int64)

    def read_frames(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if out is None:
            out = np.empty((idx.size, *self.frame_shape), self.dtype)
        for path, rows, local in self.groups(idx):
            out[rows] = self.unit(path).read_frames(local)
        return out

    def read_batch(self, indices: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """:func:`read_batch` file by file: an absent file's frames are MISSING."""

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        shape = self.frame_shape
        frames = np.zeros((idx.size, *shape), pixel_dtype(self.dtype))
        status = np.full(idx.size, int(FrameStatus.MISSING), np.int8)
        present = np.flatnonzero(idx >= 0)
        for path, rows, local in self.groups(idx[present]):
            try:
                src = self.unit(path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, RuntimeError, CorruptFrameError):  # this file only
                status[present[rows]] = FrameStatus.CORRUPT_HEADER
                continue
            if tuple(src.frame_shape) != tuple(shape):  # known from its metadata: nothing of it is read
                status[present[rows]] = FrameStatus.WRONG_SHAPE
                continue
            f, st = read_batch(src, local, threads)
            if f.dtype != frames.dtype and f.dtype.kind == "f":  # a float file among integer ones: floats for all
                frames = frames.astype(np.float32)
            frames[present[rows]], status[present[rows]] = f, st
        return frames, status

    def files(self) -> list[Path]:
        return []


HDF5_SOURCES = (Hdf5Frames, Hdf5Template)


def decoded_on_host(source) -> bool:
    """Whether the engines take ``source``'s frames decoded (HDF5 sources; TIFF / EDF files through
    fabio, :mod:`xrdct_dask.io.fabio_frames`), not as CBF payloads they decode themselves."""
    # lazy: import cycle io.fabio_frames -> io.source
    from xrdct_dask.io.fabio_frames import FabioTemplate

    return isinstance(source, (*HDF5_SOURCES, FabioTemplate))


@functools.lru_cache(maxsize=64)
def _open_cached(spec: str, scan: ScanShape | None, pid: int) -> FrameSource:
    file, path = split_spec(spec)
    if is_hdf5(spec):
        return Hdf5Template(spec, scan) if template_fields(file) else Hdf5Frames(file, path)
    # lazy: import cycle io.fabio_frames -> io.source
    from xrdct_dask.io.fabio_frames import FabioTemplate, is_fabio_series

    return FabioTemplate(spec, scan) if is_fabio_series(spec) else CbfTemplate(spec, scan)


def _stale(source: Hdf5Frames) -> bool:
    """Whether an open HDF5 source may see more if opened again: a file it found missing is there
    now, or one it found unusable (cut short, half written: its frames flagged) may be whole by now."""
    return any((s.missing and s.file.exists()) or s.flag for s in source.segments)


def refreshed(source: FrameSource, indices=None) -> FrameSource:
    """``source``, or a fresh open of it where a file it found missing has appeared since (a data
    file copied in late, a scan still being written) or one it found unusable may be whole now, or
    where frames ``indices`` lie past the length it saw (a file an SWMR writer grows): the
    per-process cache keeps what it saw."""
    grown = indices is not None and isinstance(source, Hdf5Frames) and \
        int(np.max(indices, initial=-1)) >= source.nframes
    if isinstance(source, Hdf5Frames) and (grown or _stale(source)):
        _open_cached.cache_clear()  # (open files stay: the one that was missing was never open, an unusable one closed)
        return open_source(source.spec)
    return source


def open_source(source: str | Path | FrameSource, base_dir: str | Path | None = None,
                scan: ScanShape | None = None) -> FrameSource:
    """The :class:`FrameSource` of what ``inputs.frames`` holds (opened once per process, spec and scan).

    Relative paths are taken relative to ``base_dir`` when given.  ``scan`` (the scan's shape and
    order) computes the ``{z}``, ``{line}``, ``{omega}`` fields of a template
    (:mod:`xrdct_dask.io.layout`); a flat ``{index}`` template or a single HDF5 file needs none.
    Raises ValueError (one line) for a spec that is neither a CBF template nor an HDF5 file with
    frames, FileNotFoundError when the HDF5 file is absent.
    """
    if isinstance(source, FrameSource):
        return source
    spec = str(source)
    if base_dir is not None:
        file, path = split_spec(spec)
        if not Path(file).is_absolute():
            spec = str(Path(base_dir) / file) + (f"::{path}" if path else "")
    if not is_hdf5(spec) and "{" not in spec:
        raise ValueError(f"frames {spec!r}: neither a CBF template with an {{index}} field nor an HDF5 / NeXus file "
                         f"({', '.join(H5_SUFFIXES)} or file::/dataset)")
    if scan is not None and not set(template_fields(split_spec(spec)[0])) - {"index"}:
        scan = None  # one cached source whatever the scan: its paths do not depend on it
    return _open_cached(spec, scan, os.getpid())


def read_frames(source: str | Path | FrameSource, indices, out: np.ndarray | None = None) -> np.ndarray:
    """Frames ``indices`` of ``source`` as ``(n, ny, nx)``: the one reader every engine shares.

    Parameters
    ----------
    source : str, Path or FrameSource
        a CBF template (``frame_{index:06d}.cbf[.gz|.bz2]``) or ``file.h5[::/path]``.
    indices : int or sequence of int
        frames in acquisition order from 0.
    out : ndarray (n, ny, nx), optional

    Returns
    -------
    ndarray (n, ny, nx)
        int32 for CBF, the dataset's dtype for HDF5 (uint32 for Eiger), exactly what fabio / h5py
        with hdf5plugin read.
    """
    return open_source(source).read_frames(indices, out=out)
