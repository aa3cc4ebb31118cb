"""Frame readers: raw compressed bytes + header (cbf.py), decoders (decode.py), scan tables (scan.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cbf import (CbfPayload, CorruptFrameError, SizeMismatchError, TruncatedFrameError, parse_cbf, read_cbf_payload,
                  read_header)
from .decode import decode_batch, decode_payload, pack_payloads

__all__ = ["CbfPayload", "CorruptFrameError", "SizeMismatchError", "TruncatedFrameError", "decode_batch",
           "decode_payload", "pack_payloads", "parse_cbf", "read_cbf_payload", "read_frame", "read_header"]


def read_frame(path: str | Path) -> np.ndarray:
    """Read and decode one byte-offset CBF frame.

    Returns a 2D int32 array (slow, fast) = (ny, nx), exactly what fabio returns.  A missing file
    raises FileNotFoundError, a malformed one :class:`CorruptFrameError`, each naming the file.
    """
    return decode_payload(read_cbf_payload(path), name=str(path))
