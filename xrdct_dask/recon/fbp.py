"""Filtered back-projection of a block of sinograms, batched over the last (q) axis.

Conventions are skimage's ``iradon(circle=True)`` so that it is the oracle: a sinogram
``(nomega, nx, nq)`` has the rotation axis at pixel ``nx // 2`` (or at ``center``), angles in
degrees, and the image ``(ny, nx, nq)`` = ``(nx, nx, nq)``, zero outside the inscribed circle.
The ramp filter is built in real space and transformed (Kak & Slaney ch. 3, eq. 61), which
removes the DC bias of a sampled frequency ramp; apodisation windows multiply it.
"""

from __future__ import annotations

import numba
import numpy as np

from ..backend import get_array_module

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", "none")


def fourier_filter(size: int, name: str = "ramp") -> np.ndarray:
    """Frequency response (size,) of the FBP filter on an FFT grid of ``size`` points."""
    if name not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {name!r}")
    if name == "none":
        return np.ones(size)
    n = np.concatenate((np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)))
    h = np.zeros(size)
    h[0] = 0.25
    h[1::2] = -1.0 / (np.pi * n) ** 2  # spatial ramp: h(0)=1/4, h(odd k)=-1/(pi k)^2
    filt = 2.0 * np.real(np.fft.fft(h))
    if name == "shepp-logan":
        w = np.pi * np.fft.fftfreq(size)[1:]
        filt[1:] *= np.sin(w) / w
    elif name == "cosine":
        filt *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    elif name == "hamming":
        filt *= np.fft.fftshift(np.hamming(size))
    elif name == "hann":
        filt *= np.fft.fftshift(np.hanning(size))
    return filt


def padded_filtered(sino, filter_name: str = "ramp"):
    """Pad the detector axis as iradon(circle=True) does and filter it.

    ``sino`` (nomega, nx, nq) -> ``(filtered (nomega, ndiag, nq) float32, pad_before)`` where
    ``ndiag = ceil(sqrt(2) nx)`` (filtering happens on a zero-padded FFT grid of at least 64 and
    a power of two >= 2 ndiag).
    """
    xp = get_array_module(sino)
    nomega, nx, nq = sino.shape
    ndiag = int(np.ceil(np.sqrt(2) * nx))
    pad_before = ndiag // 2 - nx // 2
    nfft = max(64, int(2 ** np.ceil(np.log2(2 * ndiag))))
    buf = xp.zeros((nomega, nfft, nq), dtype=xp.float64)
    buf[:, pad_before:pad_before + nx] = sino
    filt = xp.asarray(fourier_filter(nfft, filter_name))[None, :, None]
    out = xp.fft.ifft(xp.fft.fft(buf, axis=1) * filt, axis=1).real[:, :ndiag]
    return out.astype(xp.float32), pad_before


@numba.njit(nogil=True, boundscheck=False, fastmath=True, cache=True)
def _backproject(filtered, cos_t, sin_t, axis_idx, n, out):
    """out[i, j, :] += sum over angles of linear interpolation of filtered[a, t(i, j), :].

    t = (j - r) cos - (i - r) sin with r = n // 2; sample index = t + axis_idx.  Samples outside
    the detector contribute 0 (np.interp with left=right=0).
    """
    nang, nd, nq = filtered.shape
    r = n // 2
    for i in range(n):
        xpr = i - r
        for j in range(n):
            ypr = j - r
            if xpr * xpr + ypr * ypr > r * r:
                continue
            for a in range(nang):
                pos = ypr * cos_t[a] - xpr * sin_t[a] + axis_idx
                i0 = int(np.floor(pos))
                w = pos - i0
                if i0 < 0 or i0 > nd - 1:
                    continue
                if i0 == nd - 1:
                    if w == 0.0:
                        for q in range(nq):
                            out[i, j, q] += filtered[a, i0, q]
                    continue
                for q in range(nq):
                    out[i, j, q] += (1.0 - w) * filtered[a, i0, q] + w * filtered[a, i0 + 1, q]


def fbp(sino, omega_deg, filter_name: str = "ramp", center: float | None = None):
    """Reconstruct every q bin of a sinogram block at once.

    Parameters
    ----------
    sino : (nomega, nx, nq) float array (numpy; cupy goes to the GPU back-projector)
    omega_deg : (nomega,) rotation angles in degrees
    filter_name : ramp | shepp-logan | cosine | hamming | hann | none
    center : rotation-axis position in detector pixels (default ``nx // 2``, iradon's)

    Returns
    -------
    (nx, nx, nq) float32 image per q bin; axes (y, x, q) as iradon's (row, column).
    """
    xp = get_array_module(sino)
    if sino.ndim == 2:
        return fbp(sino[..., None], omega_deg, filter_name, center)[..., 0]
    nomega, nx, nq = sino.shape
    omega_deg = np.asarray(omega_deg, dtype=np.float64)
    if omega_deg.size != nomega:
        raise ValueError(f"omega has {omega_deg.size} angles but the sinogram has {nomega} rows")
    filtered, pad_before = padded_filtered(sino, filter_name)
    axis_idx = pad_before + (nx // 2 if center is None else float(center))
    theta = np.deg2rad(omega_deg)
    if xp is not np:
        from ._cupy import backproject_cupy

        out = backproject_cupy(filtered, np.cos(theta), np.sin(theta), axis_idx, nx)
    else:
        out = np.zeros((nx, nx, nq), dtype=np.float64)
        _backproject(np.ascontiguousarray(filtered), np.cos(theta), np.sin(theta), float(axis_idx), nx, out)
    return (out * (np.pi / (2 * nomega))).astype(xp.float32)
