"""The frame-source contract: ``read_frames(source, indices) -> (n, ny, nx)`` for whatever
``inputs.frames`` holds.

``source`` is one of

* a CBF template with one ``{index}`` field, index = acquisition order from 0:
  ``frames/frame_{index:06d}.cbf``; the files may be gzip or bzip2 compressed
  (``.cbf.gz`` / ``.cbf.bz2``, recognised by their first bytes), decompressed in memory and then
  parsed and decoded as plain CBF (:func:`~xrdct_dask.io.cbf.parse_cbf`,
  :func:`~xrdct_dask.io.decode.decode_payload`);
* an HDF5 / NeXus file, ``scan.h5`` or ``scan.h5::/entry/data/data``: a plain frames dataset, a
  virtual dataset over many files (BLISS), or an Eiger master with external links to its data
  files (name the ``/entry/data`` group, or give the file alone); see :mod:`xrdct_dask.io.hdf5`.

Index i is the i-th frame of the dataset (HDF5) or the file ``template.format(index=i)`` (CBF).
A missing file or frame raises ``FileNotFoundError``, a frame that cannot be decoded
:class:`~xrdct_dask.io.cbf.CorruptFrameError` (or a subclass), each naming the file and frame.
Only regular files are opened, so a FIFO or device in the frame folder cannot hang a reader.
"""

from __future__ import annotations

import bz2
import functools
import os
import stat
import string
import zlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from . import hdf5
from .cbf import CbfPayload, CorruptFrameError, TruncatedFrameError, parse_cbf
from .decode import decode_payload

H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")
MAX_DECOMPRESSED_BYTES = 1 << 30  # a .cbf.gz that inflates past 1 GiB is not a detector frame
_GZIP, _BZIP2 = b"\x1f\x8b", b"BZh"


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
def read_regular_file(path: str | Path) -> bytes:
    """The bytes of a regular file; FileNotFoundError when absent, CorruptFrameError when it is not
    a regular file (opened non-blocking, so a FIFO is refused instead of waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: frame file not found") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptFrameError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def decompress_frame(raw: bytes, name: str, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """The CBF bytes of a file read whole: gzip / bzip2 by their magic bytes, else as is.

    Raises TruncatedFrameError when the compressed stream ends early, CorruptFrameError when it is
    not valid or inflates past ``limit`` bytes."""
    if raw[:2] == _GZIP:
        d, kind = zlib.decompressobj(16 + zlib.MAX_WBITS), "gzip"
    elif raw[:3] == _BZIP2:
        d, kind = bz2.BZ2Decompressor(), "bzip2"
    else:
        return raw
    try:
        out = d.decompress(raw, limit + 1) if kind == "gzip" else d.decompress(raw, max_length=limit + 1)
    except (OSError, zlib.error, ValueError, EOFError) as err:
        raise CorruptFrameError(f"{name}: not a valid {kind} stream ({err})") from None
    if len(out) > limit:
        raise CorruptFrameError(f"{name}: {kind} stream inflates past {limit} bytes")
    if not d.eof:
        raise TruncatedFrameError(f"{name}: {kind} stream ends before its end marker (truncated file)")
    return out


class CbfTemplate(FrameSource):
    """One CBF file per frame, ``template.format(index=i)``; plain, ``.gz`` or ``.bz2``."""

    def __init__(self, template: str):
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        if fields != ["index"]:
            raise ValueError(f"frame template {template!r} must contain exactly one {{index}} field, "
                             "e.g. frame_{index:06d}.cbf")
        self.spec = template
        self._shape: tuple[int, int] | None = None

    def path(self, index: int) -> Path:
        return Path(self.spec.format(index=int(index)))

    def read_payload(self, index: int) -> CbfPayload:
        """The byte-offset payload of frame ``index`` (decompressed in memory when gz / bz2)."""
        path = self.path(index)
        return parse_cbf(decompress_frame(read_regular_file(path), str(path)), str(path))

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
        hdf5.check_regular(self.file)
        self.map, self._shape, self._dtype, self.path = hdf5.open_frames(self.file, path)
        self.spec = f"{self.file}::{self.path}"

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

    def read_raw_chunks(self, indices, out: np.ndarray | None = None) -> hdf5.RawChunks:
        """Compressed chunks of frames ``indices`` as stored, packed (see :class:`~xrdct_dask.io.hdf5.RawChunks`)."""
        return hdf5.read_raw_chunks(self.map, indices, self._shape, self._dtype, out=out, name=self.spec)

    def read_frames(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        return hdf5.read_frames_h5(self.map, indices, self._shape, self._dtype, name=self.spec, out=out)

    def files(self) -> list[Path]:
        return [self.file] + sorted({s.file for s in self.map.segments} - {self.file})


def split_spec(spec: str | Path) -> tuple[str, str | None]:
    """``"scan.h5::/entry/data/data"`` -> ``("scan.h5", "/entry/data/data")``; no ``::`` -> path None."""
    s = str(spec)
    if "::" in s:
        file, _, path = s.partition("::")
        return file, path or None
    return s, None


def is_hdf5(spec: str | Path) -> bool:
    """True for ``file::path`` and for names ending like an HDF5 / NeXus file (``.h5``, ``.nxs``, ...)."""
    file, path = split_spec(spec)
    return path is not None or file.lower().endswith(H5_SUFFIXES)


@functools.lru_cache(maxsize=64)
def _open_cached(spec: str, pid: int) -> FrameSource:
    if is_hdf5(spec):
        return Hdf5Frames(*split_spec(spec))
    return CbfTemplate(spec)


def open_source(source: str | Path | FrameSource, base_dir: str | Path | None = None) -> FrameSource:
    """The :class:`FrameSource` of what ``inputs.frames`` holds (opened once per process and spec).

    Relative paths are taken relative to ``base_dir`` when given.  Raises ValueError (one line)
    for a spec that is neither a CBF template nor an HDF5 file with frames, FileNotFoundError when
    the HDF5 file is absent.
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
    return _open_cached(spec, os.getpid())


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
