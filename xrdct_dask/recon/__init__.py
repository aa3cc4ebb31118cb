"""Tomographic reconstruction of sinogram blocks (nomega, nx, nq), batched over q."""

from .fbp import FILTERS, fbp, fourier_filter

__all__ = ["FILTERS", "fbp", "fourier_filter"]
