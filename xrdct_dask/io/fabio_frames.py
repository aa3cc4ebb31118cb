"""TIFF and EDF frame series: one file per frame, read with fabio and decoded on the host.

Flat panels (PerkinElmer / Varex: 16-bit TIFF) and older beamlines (ESRF EDF) write a file per
frame, named by the same templates as CBF files (``frames/frame_{index:06d}.tif``,
``slice_{z:04d}/line_{line:05d}/frame_{index:06d}.edf``, :mod:`xrdct_dask.io.layout`); an EDF file
may be gzip or bzip2 compressed (``.edf.gz`` / ``.edf.bz2``).  The suffix tells the format; fabio's
own readers decode the images (:class:`fabio.tifimage.TifImage`, :class:`fabio.edfimage.EdfImage`)
from the file's bytes, read here as a CBF file is (:func:`~xrdct_dask.io.cbf.read_file`: regular
files only, gzip / bzip2 inflated with a size limit, a stream that ends early is TRUNCATED).

fabio pads an EDF whose binary section is cut short with zeros (it only logs it): such a file is
TRUNCATED here, told by the header's ``EDF_HeaderSize + EDF_BinarySize`` against the bytes read.
A file holding several frames (a TIFF or EDF stack) is not a frame of a series: CORRUPT_HEADER.

The engines take these frames decoded (:func:`~xrdct_dask.io.source.as_counts`: int32 counts, a
16-bit panel's 65535 invalid as an Eiger's gap value is, or float32 for float images), as they take
HDF5 frames decoded on the host.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fabio.edfimage import EdfImage
from fabio.fabioutils import BytesIO
from fabio.tifimage import TifImage

from xrdct_dask.errors import CorruptFrameError, TruncatedFrameError
from xrdct_dask.io.cbf import decompress_frame, frame_complete, read_cbf_payload, read_file
from xrdct_dask.io.layout import FrameTemplate, ScanShape
from xrdct_dask.io.source import FrameSource, as_counts, check_frame_dtype, out_of_range
from xrdct_dask.io.status import FrameStatus, frame_message, status_of

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
EDF_SUFFIXES = (".edf", ".edf.gz", ".edf.bz2")
FABIO_SUFFIXES = TIFF_SUFFIXES + EDF_SUFFIXES


def is_fabio_series(spec: str | Path) -> bool:
    """Whether a frames template names TIFF or EDF files (by its suffix)."""
    return str(spec).lower().endswith(FABIO_SUFFIXES)


def decode_image(raw: bytes, name: str) -> np.ndarray:
    """The one 2D image of a TIFF or EDF file's bytes ``raw`` (``name``: the file, its suffix the
    format), as fabio decodes it.  Raises TruncatedFrameError for an EDF (or compressed stream)
    that ends early, CorruptFrameError for anything fabio cannot read or a file of several frames."""
    tiff = name.lower().endswith(TIFF_SUFFIXES)
    raw = decompress_frame(raw, name)  # an .edf.gz / .edf.bz2: inflated (a stream cut short raises)
    try:
        img = (TifImage if tiff else EdfImage)().read(BytesIO(raw))
        data = img.data
    except Exception as err:  # fabio raises many kinds (and None data) for bytes it cannot read
        raise CorruptFrameError(f"{name}: not a readable {'TIFF' if tiff else 'EDF'} image "
                                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if data is None or getattr(img, "nframes", 1) != 1 or np.ndim(data) != 2:
        raise CorruptFrameError(f"{name}: holds {getattr(img, 'nframes', '?')} frames of shape "
                                f"{np.shape(data)}: a series has one 2D frame per file")
    if not tiff:
        head = dict(img.header)
        try:
            need = int(head["EDF_HeaderSize"]) + int(head["EDF_BinarySize"])
        except (KeyError, ValueError):
            need = 0
        if len(raw) < need:  # fabio padded the missing pixels with zeros
            raise TruncatedFrameError(f"{name}: EDF binary section ends at byte {len(raw)} of {need}")
    check_frame_dtype(data.dtype, name)
    return np.asarray(data)


def read_image(path: str | Path) -> np.ndarray:
    """The image of the TIFF or EDF file at ``path`` (:func:`decode_image` of its bytes)."""
    return decode_image(read_file(path), str(path))


def image_complete(path: str | Path) -> bool:
    """Whether the TIFF / EDF file at ``path`` reads whole now (:func:`read_image`): the test the
    CBF reader's :func:`~xrdct_dask.io.cbf.frame_complete` is for CBF.  Never raises."""
    try:
        read_image(path)
    except (OSError, ValueError):  # CorruptFrameError and TruncatedFrameError are ValueErrors
        return False
    return True


def frame_file_complete(path: str | Path) -> bool:
    """Whether the frame file at ``path`` is whole: a TIFF / EDF file read whole by fabio
    (:func:`image_complete`), a CBF file by its header's promise (:func:`~xrdct_dask.io.cbf.frame_complete`)."""
    return image_complete(path) if is_fabio_series(path) else frame_complete(path)


def frame_file_shape(path: str | Path) -> tuple[int, int]:
    """``(ny, nx)`` of the frame file at ``path``: a TIFF / EDF image decoded, a CBF file's header
    read (:func:`~xrdct_dask.io.cbf.read_cbf_payload`).  Raises as those readers do."""
    return tuple(read_image(path).shape) if is_fabio_series(path) else tuple(read_cbf_payload(path).shape)


class FabioTemplate(FrameSource):
    """One TIFF or EDF file per frame, ``template.format(**fields)`` (the fields as for a CBF
    template, :class:`~xrdct_dask.io.layout.FrameTemplate`), decoded on the host by fabio."""

    def __init__(self, template: str, scan: ScanShape | None = None):
        self.layout = FrameTemplate(template, scan)
        self.spec = template
        self._first: np.ndarray | None = None

    def path(self, index: int) -> Path:
        return Path(self.layout.format(index))

    file_of = path

    def _first_frame(self) -> np.ndarray:
        if self._first is None:
            self._first = read_image(self.path(0))
        return self._first

    @property
    def nframes(self) -> None:
        return None  # a file per frame: not known without listing the folder

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self._first_frame().shape)

    @property
    def dtype(self) -> np.dtype:
        return self._first_frame().dtype

    def read_frames(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        for k, i in enumerate(idx):
            img = read_image(self.path(int(i)))
            if out is None:
                out = np.empty((idx.size, *img.shape), img.dtype)
            if img.shape != out.shape[1:]:
                raise CorruptFrameError(f"{self.path(i)}: frame is {img.shape}, the first read {out.shape[1:]}")
            out[k] = img
        return out if out is not None else np.empty((0, 0, 0), np.int32)

    def read_batch(self, indices, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``indices`` as the engines take them (:func:`~xrdct_dask.io.source.as_counts`)
        and a FrameStatus code per frame, never raising for a bad one: index < 0 or no file
        MISSING, a file cut short TRUNCATED, one fabio cannot read (or of several frames)
        CORRUPT_HEADER, a frame of another shape than the first good one WRONG_SHAPE."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        status = np.full(idx.size, int(FrameStatus.MISSING), np.int8)

        def one(k):
            if idx[k] < 0:
                return k, None, FrameStatus.MISSING
            path = self.path(int(idx[k]))
            try:
                return k, read_image(path), FrameStatus.OK
            except (OSError, ValueError) as err:
                if not isinstance(err, FileNotFoundError):
                    log.warning("%s", frame_message(path, err))
                return k, None, status_of(err)

        if threads > 1 and idx.size > 1:
            with ThreadPoolExecutor(min(threads, idx.size), thread_name_prefix="xrdct-fabio") as pool:
                got = list(pool.map(one, range(idx.size)))
        else:
            got = [one(k) for k in range(idx.size)]
        good = [(k, img) for k, img, st in got if img is not None]
        shapes = [img.shape for _, img in good]
        # the series' shape: frame 0's (the run checked it against the detector), else the batch's most frequent
        try:
            shape = self.frame_shape
        except (OSError, ValueError):
            shape = max(set(shapes), key=shapes.count) if shapes else (0, 0)
        kind = np.result_type(*(img.dtype for _, img in good)) if good else np.dtype(np.int32)
        frames = np.zeros((idx.size, *shape), kind)
        for k, img, st in got:
            status[k] = st
            if img is None:
                continue
            if img.shape != shape:
                log.warning("%s: frame is %s, the first read %s", self.path(int(idx[k])), img.shape, shape)
                status[k] = FrameStatus.WRONG_SHAPE
                continue
            frames[k] = img
        status[out_of_range(frames) & (status == FrameStatus.OK)] = FrameStatus.OUT_OF_RANGE
        return as_counts(frames), status

    def files(self) -> list[Path]:
        return []
