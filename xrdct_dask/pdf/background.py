"""Background patterns for the PDF: a measured file, or the edge of the slice itself.

PDFgetX3 subtracts ``bgscale`` times a measured background (empty container, air) from the
sample's pattern.  In a tomographic scan the background is also in the data: the frames at the
ends of each translation line see only air (and container), and so do the voxels at the rim of
the reconstruction circle when the sample sits inside it.  All functions are numpy/cupy agnostic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrdct_dask.backend import get_array_module
from xrdct_dask.pdf.transform import PDFParameterError


def load_background(path: str | Path, radial: np.ndarray) -> np.ndarray:
    """A two-column text file (radial position in the integration unit, intensity; ``#`` comments)
    interpolated onto the data's radial grid ``(nq,)``.

    Raises :class:`PDFParameterError` (one line) for a missing or unreadable file, or one that
    does not cover the data's radial range.
    """
    path = Path(path)
    if not path.is_file():
        raise PDFParameterError(f"pdf.background_file: {path} not found")
    try:
        data = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as err:
        raise PDFParameterError(f"pdf.background_file: {path} is not a two-column text file ({err})") from None
    if data.shape[1] < 2 or data.shape[0] < 2:
        raise PDFParameterError(f"pdf.background_file: {path} needs two columns (radial, intensity) and >= 2 rows")
    x, y = data[:, 0], data[:, 1]
    order = np.argsort(x)
    x, y = x[order], y[order]
    radial = np.asarray(radial, dtype=np.float64)
    span = radial[-1] - radial[0]
    if x[0] > radial[0] + 1e-6 * span or x[-1] < radial[-1] - 1e-6 * span:
        raise PDFParameterError(f"pdf.background_file: {path} covers {x[0]:.4g}..{x[-1]:.4g} but the data "
                                f"span {radial[0]:.4g}..{radial[-1]:.4g} (same unit as integrate.unit)")
    return np.interp(radial, x, y)


def edge_voxel_mask(nx: int, width: int) -> np.ndarray:
    """``(nx, nx)`` bool: the outermost ``width`` pixels inside the reconstruction circle
    (radius nx // 2 about pixel nx // 2, as :func:`xrdct_dask.recon.fbp`)."""
    c = nx // 2
    yy, xx = np.mgrid[0:nx, 0:nx]
    rho2 = (yy - c) ** 2 + (xx - c) ** 2
    return (rho2 <= c * c) & (rho2 > max(c - width, 0) ** 2)


def edge_background_voxels(volume, width: int):
    """Mean pattern ``(nq,)`` of the voxels of a slice ``(ny, nx, nq)`` in the rim of the
    reconstruction circle (non-finite voxels ignored)."""
    xp = get_array_module(volume)
    m = xp.asarray(edge_voxel_mask(volume.shape[1], width))
    return xp.nanmean(volume[m], axis=0)


def edge_columns(nx: int, width: int) -> np.ndarray:
    """Indices of the first and last ``width`` translation steps of a line of ``nx`` (unique, sorted)."""
    return np.unique(np.r_[0:min(width, nx), max(nx - width, 0):nx])


def mean_good_patterns(patterns, frame_ok):
    """Mean ``(nq,)`` of the patterns ``(..., nq)`` whose ``frame_ok`` ``(...)`` is true and that are finite."""
    xp = get_array_module(patterns)
    good = xp.asarray(frame_ok, dtype=bool) & xp.all(xp.isfinite(patterns), axis=-1)
    if not bool(good.any()):
        raise PDFParameterError("pdf.background: edge has no good frame in this slice")
    return patterns[good].mean(axis=0)


def edge_background_frames(sinogram, frame_ok, width: int):
    """Mean pattern ``(nq,)`` of the good frames in the first and last ``width`` translation steps
    of a slice's sinogram ``(nomega, nx, nq)``; ``frame_ok`` ``(nomega, nx)``."""
    cols = edge_columns(sinogram.shape[1], width)
    return mean_good_patterns(sinogram[:, cols], frame_ok[:, cols])
