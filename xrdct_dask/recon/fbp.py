"""Filtered back-projection of a block of sinograms, batched over the last (q) axis.

Conventions are skimage's ``iradon(circle=True)`` so that it is the oracle: a sinogram
``(nomega, nx, nq)`` has the rotation axis at pixel ``nx // 2`` (or at ``center``), angles in
degrees, and the image ``(ny, nx, nq)`` = ``(nx, nx, nq)``, zero outside the inscribed circle.
The ramp filter is built in real space and transformed (Kak & Slaney ch. 3, eq. 61), which
removes the DC bias of a sampled frequency ramp; apodisation windows multiply it.

The q axis is processed in chunks: each chunk is zero-padded and filtered with real FFTs
(float32), then back-projected by :func:`.projector.backproject` (numba tiles on the CPU, a CUDA
RawKernel on cupy arrays), so memory stays at a few chunk-sized buffers whatever ``nq`` is.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .projector import backproject, default_threads

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", "none")
CPU_Q_CHUNK = 64  # q bins per filter + back-projection pass on the CPU: a tile's accumulators stay in L2
GPU_Q_CHUNK = 256  # on the GPU: (nomega, nfft, 256) float32 buffers, ~1.3 GB at 600 x 2048


def fourier_filter(size: int, name: str = "ramp") -> np.ndarray:
    """Frequency response (size,) of the FBP filter on an FFT grid of ``size`` points (iradon's)."""
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


def rfft_response(size: int, name: str = "ramp") -> np.ndarray:
    """The filter as a real multiplier of ``rfft`` output, ``(size // 2 + 1,)``.

    ``Re(ifft(fft(s) H))`` of a real ``s`` equals ``irfft(rfft(s) H_even)`` with
    ``H_even[k] = (H[k] + H[-k]) / 2``: the fftshift-ed windows are not exactly even, and this is
    what iradon's ``.real`` keeps of them.
    """
    h = fourier_filter(size, name)
    even = 0.5 * (h + np.roll(h[::-1], 1))
    return even[: size // 2 + 1]


def detector_padding(nx: int) -> tuple[int, int, int]:
    """``(ndiag, pad_before, nfft)`` of iradon(circle=True): the detector axis padded to the square's
    diagonal ``ceil(sqrt(2) nx)``, then zero-padded to a power of two >= 2 ndiag (and >= 64) for the FFT."""
    ndiag = int(np.ceil(np.sqrt(2) * nx))
    pad_before = ndiag // 2 - nx // 2
    nfft = max(64, int(2 ** np.ceil(np.log2(2 * ndiag))))
    return ndiag, pad_before, nfft


def _fft(xp):
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft


def filter_block(sino, filter_name: str = "ramp", threads: int | None = None):
    """Pad the detector axis as iradon(circle=True) does and filter it.

    ``sino`` (nomega, nx, nq) -> ``(filtered (nomega, ndiag, nq) float32 C-contiguous, pad_before)``.
    """
    xp = get_array_module(sino)
    nomega, nx, nq = sino.shape
    ndiag, pad_before, nfft = detector_padding(nx)
    buf = xp.zeros((nomega, nfft, nq), dtype=xp.float32)
    buf[:, pad_before:pad_before + nx] = sino
    fft = _fft(xp)
    kw = {"workers": threads or default_threads()} if xp is np else {}
    spec = fft.rfft(buf, axis=1, **kw)
    spec *= xp.asarray(rfft_response(nfft, filter_name), dtype=xp.float32)[None, :, None]
    out = fft.irfft(spec, n=nfft, axis=1, **kw)[:, :ndiag]
    return xp.ascontiguousarray(out, dtype=xp.float32), pad_before


def padded_filtered(sino, filter_name: str = "ramp"):
    """Alias of :func:`filter_block` (kept for callers of the first version)."""
    return filter_block(sino, filter_name)


def fbp(sino, omega_deg, filter_name: str = "ramp", center: float | None = None, *, q_chunk: int | None = None,
        threads: int | None = None):
    """Reconstruct every q bin of a sinogram block at once.

    Parameters
    ----------
    sino : (nomega, nx, nq) float array, numpy or cupy (the result lives where the input does)
    omega_deg : (nomega,) rotation angles in degrees (180 or 360 degree scans alike: the weight of
        each angle is pi / (2 nomega), iradon's, right for any uniformly covered half or full turn)
    filter_name : ramp | shepp-logan | cosine | hamming | hann | none
    center : rotation-axis position in detector pixels from the first x (default ``nx // 2``, iradon's)
    q_chunk : q bins filtered and back-projected per pass (default: 32 on the CPU, 256 on the GPU)
    threads : CPU threads (default: the cores of this process); ignored on the GPU

    Returns
    -------
    (nx, nx, nq) float32 image per q bin; axes (y, x, q) as iradon's (row, column).
    """
    xp = get_array_module(sino)
    if sino.ndim == 2:
        return fbp(sino[..., None], omega_deg, filter_name, center, q_chunk=q_chunk, threads=threads)[..., 0]
    if sino.ndim != 3:
        raise ValueError(f"the sinogram must be (nomega, nx) or (nomega, nx, nq), got shape {sino.shape}")
    nomega, nx, nq = sino.shape
    omega_deg = np.asarray(omega_deg, dtype=np.float64).ravel()
    if omega_deg.size != nomega:
        raise ValueError(f"omega has {omega_deg.size} angles but the sinogram has {nomega} rows")
    if filter_name not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter_name!r}")
    theta = np.deg2rad(omega_deg)
    chunk = q_chunk or (CPU_Q_CHUNK if xp is np else GPU_Q_CHUNK)
    out = xp.zeros((nx, nx, nq), dtype=xp.float32)
    scale = np.pi / (2 * nomega)
    for q0 in range(0, nq, chunk):
        filtered, pad_before = filter_block(sino[:, :, q0:q0 + chunk], filter_name, threads)
        axis_idx = pad_before + (nx // 2 if center is None else float(center))
        backproject(filtered, np.cos(theta), np.sin(theta), axis_idx, nx, scale=scale, out=out, q0=q0,
                    threads=threads)
    return out
