"""Per-frame status codes, stored in ``reduced/frame_status`` (int8) and counted in run summaries."""

from __future__ import annotations

from enum import IntEnum


class FrameStatus(IntEnum):
    OK = 0
    TRUNCATED = 1        # payload ended before all pixels were decoded
    MISSING = 2          # no file for this scan point
    CORRUPT_HEADER = 3   # not a CBF / binary header unreadable
    WRONG_SHAPE = 4      # decodes to a shape other than the detector's
    BAD_CHECKSUM = 5     # Content-MD5 does not match the payload (when checking is on)
    BAD_MONITOR = 6      # monitor missing, zero, negative or not finite

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")
