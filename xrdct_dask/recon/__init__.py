"""Tomographic reconstruction of sinogram blocks (nomega, nx, nq), batched over q, numpy or cupy."""

from __future__ import annotations

from xrdct_dask.recon.fbp import FILTERS, fbp, fourier_filter
from xrdct_dask.recon.iterative import cgls, sirt
from xrdct_dask.recon.projector import backproject, project

ALGORITHMS = ("fbp", "sirt", "cgls")


def reconstruct(sino, omega_deg, algorithm: str = "fbp", *, filter_name: str = "ramp", center: float | None = None,
                iterations: int | None = None, nonneg: bool = True, threads: int | None = None):
    """One entry point for the workflow: ``(nomega, nx, nq) -> (nx, nx, nq)`` float32 by ``algorithm``.

    ``iterations`` defaults to 100 for SIRT and 20 for CGLS; ``filter_name`` is FBP's, ``nonneg``
    the iterative methods' non-negativity.
    """
    if algorithm == "fbp":
        return fbp(sino, omega_deg, filter_name, center, threads=threads)
    if algorithm == "sirt":
        return sirt(sino, omega_deg, center, 100 if iterations is None else iterations, nonneg=nonneg, threads=threads)
    if algorithm == "cgls":
        return cgls(sino, omega_deg, center, 20 if iterations is None else iterations, nonneg=nonneg, threads=threads)
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


__all__ = ["ALGORITHMS", "FILTERS", "backproject", "cgls", "fbp", "fourier_filter", "project", "reconstruct", "sirt"]
