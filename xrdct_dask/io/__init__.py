"""Frame readers: raw compressed bytes + header (cbf.py), decoders (decode.py), scan tables (scan.py),
the frame-source contract ``read_frames(source, indices)`` for CBF templates and HDF5 (source.py,
hdf5.py).

The names below are imported on first use (PEP 562): ``import xrdct_dask.io.layout`` (the workflow
schema's template checks) loads neither numba nor h5py.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CbfPayload": "cbf", "CorruptFrameError": "cbf", "SizeMismatchError": "cbf", "TruncatedFrameError": "cbf",
    "parse_cbf": "cbf", "read_cbf_payload": "cbf", "read_header": "cbf",
    "decode_batch": "decode", "decode_payload": "decode", "pack_payloads": "decode", "read_frame": "decode",
    "FrameSource": "source", "open_source": "source", "read_frames": "source",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
