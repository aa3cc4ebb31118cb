"""Per-frame status codes, stored in ``reduced/frame_status`` (int8) and counted in run summaries.

Codes 1-7 and 10-12 mark frames that could not be used: their patterns are NaN, ``frame_ok`` is false and
every later stage treats them as missing.  DUPLICATE and OUT_OF_ORDER describe how the scan file
placed a good frame: the frame is used (``frame_ok`` true) and the code is kept for the record.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from xrdct_dask.io.cbf import NotRegularFileError, SizeMismatchError, TruncatedFrameError


class FrameStatus(IntEnum):
    OK = 0
    TRUNCATED = 1        # payload ended before all pixels were decoded
    MISSING = 2          # no file for this scan point
    CORRUPT_HEADER = 3   # not a CBF / binary header unreadable
    WRONG_SHAPE = 4      # decodes to a shape other than the detector's
    BAD_CHECKSUM = 5     # Content-MD5 does not match the payload (when checking is on)
    BAD_MONITOR = 6      # monitor missing, zero, negative or not finite
    SIZE_MISMATCH = 7    # X-Binary-Size disagrees with where the binary section ends
    DUPLICATE = 8        # usable: the scan file records this point more than once (the last record is used)
    OUT_OF_ORDER = 9     # usable: the frame arrived at another acquisition index; placed by the scan file
    IO_ERROR = 10        # the file could not be read (EIO, permissions, a vanished mount): retried by a rerun
    NOT_A_FILE = 11      # a named pipe, device or folder in place of the frame file: never opened for reading
    OUT_OF_RANGE = 12    # a 64-bit integer frame with values no int32 count holds: not integrated

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


USABLE = (FrameStatus.OK, FrameStatus.DUPLICATE, FrameStatus.OUT_OF_ORDER)
# frames a rerun reads again (their blocks are redone): the file may have come back since.  A
# MISSING frame is retried only where its file exists now; corrupt frames stay flagged.
RETRIED = (FrameStatus.MISSING, FrameStatus.IO_ERROR)
# what a file still being written reads as (an empty or half-written header, a payload short of its
# size): a rerun reads such a frame again once its file is whole (io.cbf.frame_complete)
PARTIAL = (FrameStatus.TRUNCATED, FrameStatus.CORRUPT_HEADER)
# what a rerun reads again once the frame's file is there and whole now: no file then, a folder,
# pipe or link to a device in its place then (a real file may have replaced it), or a partial file
REREAD_WHEN_WHOLE = (FrameStatus.MISSING, FrameStatus.NOT_A_FILE, *PARTIAL)


def usable(status) -> np.ndarray:
    """``frame_ok`` of status codes (any shape): true where the frame's pattern is used."""
    return np.isin(np.asarray(status), [int(s) for s in USABLE])


def status_of(err: Exception) -> FrameStatus:
    """The status of a frame whose reading raised ``err`` (by exception type, never by message)."""

    if isinstance(err, FileNotFoundError):
        return FrameStatus.MISSING
    if isinstance(err, NotRegularFileError):
        return FrameStatus.NOT_A_FILE
    if isinstance(err, TruncatedFrameError):
        return FrameStatus.TRUNCATED
    if isinstance(err, SizeMismatchError):
        return FrameStatus.SIZE_MISMATCH
    if isinstance(err, OSError):  # EIO, EACCES, ESTALE...: the file is there but could not be read now
        return FrameStatus.IO_ERROR
    return FrameStatus.CORRUPT_HEADER


def frame_message(path, err: Exception) -> str:
    """``err`` naming ``path`` once (the readers' messages already start with it)."""
    return str(err) if str(path) in str(err) else f"{path}: {err}"
