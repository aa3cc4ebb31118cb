"""Tomographic reconstruction of sinogram blocks (nomega, nx, nq), batched over q, numpy or cupy.

Axis convention (skimage's ``iradon``, every engine): detector bin ``k`` of a projection sits at
``u = k - center`` from the rotation axis (``center`` in pixels from the first x; default
``nx // 2``); image pixel ``(i, j)`` (row, column) of the ``nx x nx`` result at ``x = j - nx // 2``,
``y = nx // 2 - i``; the ray at angle ``theta`` through ``(x, y)`` meets ``u = x cos(theta) +
y sin(theta)``; pixels outside the inscribed circle are 0.  ASTRA (``'parallel'`` geometry, ``nx``
bins, ``create_vol_geom(nx, nx)``) puts the axis at bin ``(nx - 1) / 2`` and centres its volume
there: on an even grid half a pixel from ``nx // 2``; on an odd one the conventions agree.  The
mapping (volume window, shifted detector) is in :mod:`.astra`, which also runs ASTRA as the
``astra`` engine.
"""

from __future__ import annotations

import numpy as np

from xrdct_dask.backend import xp_for_engine
from xrdct_dask.recon.astra import astra_reconstruct
from xrdct_dask.recon.fbp import FILTERS, fbp, fourier_filter
from xrdct_dask.recon.iterative import cgls, sirt
from xrdct_dask.recon.projector import backproject, project

ALGORITHMS = ("fbp", "sirt", "cgls")


def array_module(engine: str):
    """The array module a recon engine takes its sinograms in: numpy for ``astra`` (ASTRA copies
    host arrays to its GPU itself), else :func:`xrdct_dask.backend.xp_for_engine`."""
    return np if engine == "astra" else xp_for_engine(engine)


def reconstruct(sino, omega_deg, algorithm: str = "fbp", *, filter_name: str = "ramp", center: float | None = None,
                iterations: int | None = None, nonneg: bool = True, threads: int | None = None,
                engine: str = "auto"):
    """One entry point for the workflow: ``(nomega, nx, nq) -> (nx, nx, nq)`` float32 by ``algorithm``.

    ``iterations`` defaults to 100 for SIRT and 20 for CGLS; ``filter_name`` is FBP's, ``nonneg``
    the iterative methods' non-negativity.  ``engine="astra"``: the ASTRA toolbox does it
    (:func:`.astra.astra_reconstruct`, same axis convention and units); any other engine name: the
    project's projectors on the sinogram's array module (the caller chose it: :func:`array_module`).
    """
    if engine == "astra":
        return astra_reconstruct(sino, omega_deg, algorithm, filter_name=filter_name, center=center,
                                 iterations=iterations, nonneg=nonneg)
    if algorithm == "fbp":
        return fbp(sino, omega_deg, filter_name, center, threads=threads)
    if algorithm == "sirt":
        return sirt(sino, omega_deg, center, 100 if iterations is None else iterations, nonneg=nonneg, threads=threads)
    if algorithm == "cgls":
        return cgls(sino, omega_deg, center, 20 if iterations is None else iterations, nonneg=nonneg, threads=threads)
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


__all__ = [
    "ALGORITHMS", "FILTERS", "array_module", "backproject", "cgls", "fbp", "fourier_filter", "project", "reconstruct",
    "sirt",
]
