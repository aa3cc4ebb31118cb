"""Frame readers: raw compressed bytes + header (cbf.py), decoders (decode.py), scan tables (scan.py),
the frame-source contract ``read_frames(source, indices)`` for CBF templates and HDF5 (source.py,
hdf5.py; imported on first use: h5py stays out of a plain ``import xrdct_dask.io``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrdct_dask.io import source
from xrdct_dask.io.cbf import (
    CbfPayload,
    CorruptFrameError,
    SizeMismatchError,
    TruncatedFrameError,
    parse_cbf,
    read_cbf_payload,
    read_header,
)
from xrdct_dask.io.decode import decode_batch, decode_payload, pack_payloads

__all__ = ["CbfPayload", "CorruptFrameError", "FrameSource", "SizeMismatchError", "TruncatedFrameError", "decode_batch",
           "decode_payload", "open_source", "pack_payloads", "parse_cbf", "read_cbf_payload", "read_frame",
           "read_frames", "read_header"]
_SOURCE = ("FrameSource", "open_source", "read_frames")


def __getattr__(name: str):
    if name in _SOURCE:

        return getattr(source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_frame(path: str | Path) -> np.ndarray:
    """Read and decode one byte-offset CBF frame.

    Returns a 2D int32 array (slow, fast) = (ny, nx), exactly what fabio returns.  A missing file
    raises FileNotFoundError, a malformed one :class:`CorruptFrameError`, each naming the file.
    """
    return decode_payload(read_cbf_payload(path), name=str(path))
