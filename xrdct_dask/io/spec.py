"""What ``inputs.frames`` names, told apart without opening anything (no heavy imports: the
workflow schema uses it to validate).

``file.h5`` / ``file.nxs`` / ``file::/entry/data/data`` is an HDF5 / NeXus source (the file part
may be a template, ``slice_{z:04d}.h5``: a file per slice or line); anything else is a CBF
template with an ``{index}`` field, maybe ``{z}``, ``{line}``, ``{omega}`` too
(:mod:`xrdct_dask.io.layout`; :mod:`xrdct_dask.io.source` reads them all).
"""

from __future__ import annotations

from pathlib import Path

H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")


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
