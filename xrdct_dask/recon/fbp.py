"""Filtered back-projection of a block of sinograms, batched over the last (q) axis.

Conventions are skimage's ``iradon(circle=True)`` so that it is the oracle: a sinogram
``(nomega, nx, nq)`` has the rotation axis at pixel ``nx // 2`` (or at ``center``), angles in
degrees, and the image ``(ny, nx, nq)`` = ``(nx, nx, nq)``, zero outside the inscribed circle.
The ramp filter is built in real space and transformed (Kak & Slaney ch. 3, eq. 61), which
removes the DC bias of a sampled frequency ramp; apodisation windows multiply it.

The q axis is processed in chunks: each chunk is zero-padded and filtered with real FFTs
(float32) on a grid just large enough for the convolution to be exact where the image's pixels
read it (:func:`detector_window`; iradon pads to a power of two >= twice the diagonal, 2.5x
larger at 400 px), then back-projected by :func:`.projector.backproject` (numba tiles on the
CPU, a CUDA RawKernel on cupy arrays), so memory stays at a few chunk-sized buffers whatever
``nq`` is.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from xrdct_dask.backend import get_array_module
from xrdct_dask.recon.projector import backproject, default_threads

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", "none")
CPU_Q_CHUNK = 64  # q bins per filter + back-projection pass on the CPU: a tile's accumulators stay in L2
GPU_Q_CHUNK = 256  # on the GPU: (nomega, nfft, 256) float32 buffers, ~1.3 GB at 600 x 2048


def iradon_fft_size(nx: int) -> int:
    """The FFT length skimage's iradon(circle=True) uses for ``nx`` detector pixels: a power of two
    >= twice the square's diagonal, and >= 64."""
    return max(64, int(2 ** np.ceil(np.log2(2 * np.ceil(np.sqrt(2) * nx)))))


def fourier_filter(size: int, name: str = "ramp", reference_size: int | None = None) -> np.ndarray:
    """Frequency response (size,) of the FBP filter on an FFT grid of ``size`` points.

    The ramp is iradon's (real-space kernel h(0) = 1/4, h(odd d) = -1/(pi d)^2, transformed);
    Shepp-Logan and cosine windows are functions of the frequency alone.  iradon's Hamming and
    Hann windows are ``np.hamming(N)`` / ``np.hanning(N)`` on its own grid of ``N`` points, whose
    ``N - 1`` spacing makes them depend on ``N``; they are evaluated here as functions of the
    frequency as on a grid of ``reference_size`` points (default ``size``: iradon's own response),
    so a smaller grid gives iradon's result.
    """
    if name not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {name!r}")
    if name == "none":
        return np.ones(size)
    n = np.concatenate((np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)))
    h = np.zeros(size)
    h[0] = 0.25
    h[1::2] = -1.0 / (np.pi * n) ** 2  # spatial ramp: h(0)=1/4, h(odd k)=-1/(pi k)^2
    filt = 2.0 * np.real(np.fft.fft(h))
    ref = size if reference_size is None else reference_size
    # position in np.hamming(ref)'s index after fftshift: m = k + ref/2 for the signed frequency k
    m = np.fft.fftfreq(size) * ref + ref / 2
    if name == "shepp-logan":
        w = np.pi * np.fft.fftfreq(size)[1:]
        filt[1:] *= np.sin(w) / w
    elif name == "cosine":
        filt *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    elif name == "hamming":
        filt *= 0.54 - 0.46 * np.cos(2 * np.pi * m / (ref - 1))
    elif name == "hann":
        filt *= 0.5 - 0.5 * np.cos(2 * np.pi * m / (ref - 1))
    return filt


def rfft_response(size: int, name: str = "ramp", reference_size: int | None = None) -> np.ndarray:
    """The filter as a real multiplier of ``rfft`` output, ``(size // 2 + 1,)``.

    ``Re(ifft(fft(s) H))`` of a real ``s`` equals ``irfft(rfft(s) H_even)`` with
    ``H_even[k] = (H[k] + H[-k]) / 2``: the fftshift-ed windows are not exactly even, and this is
    what iradon's ``.real`` keeps of them.
    """
    h = fourier_filter(size, name, reference_size)
    even = 0.5 * (h + np.roll(h[::-1], 1))
    return even[: size // 2 + 1]


def _fast_len4(m: int) -> int:
    """Smallest 5-smooth FFT length >= m that is a multiple of 4 (the real-space ramp puts the odd
    distances 1, 3, ... on both halves of the grid, which needs an even half)."""

    k = scipy.fft.next_fast_len(max(m, 64), real=True)
    while k % 4:
        k = scipy.fft.next_fast_len(k + 1, real=True)
    return k


def detector_window(nx: int, axis_px: float, n: int) -> tuple[int, int, int]:
    """``(lo, hi, nfft)``: the detector positions ``lo <= pos < hi`` (in pixels of the measured
    sinogram, which spans ``[0, nx)``; outside it is zero-padded) that the pixels of the inscribed
    circle of an ``n x n`` image read, with one bin of margin, and an FFT length for which the
    circular convolution equals the linear one on that window: every input-to-output distance
    ``d`` stays below ``nfft / 2``, so the filter kernel is sampled at ``d`` itself, as by iradon's
    larger power-of-two grid."""
    r = n // 2
    lo = int(np.floor(axis_px - r)) - 1
    hi = int(np.ceil(axis_px + r)) + 2
    dmax = max(hi - 1, nx - 1 - lo)
    return lo, hi, _fast_len4(2 * dmax + 2)


def _fft(xp):
    if xp is np:

        return scipy.fft
    return xp.fft


def filter_block(sino, filter_name: str = "ramp", axis_px: float | None = None, n: int | None = None,
                 threads: int | None = None):
    """Filter the detector axis of a sinogram block and cut out what the back-projector reads.

    sino (nomega, nx, nq); ``axis_px`` the rotation axis in its pixels (default ``nx // 2``);
    ``n`` the image size (default ``nx``).  Returns ``(filtered (nomega, hi - lo, nq) float32
    C-contiguous, axis in the filtered window's pixels)`` (:func:`detector_window`).
    """
    xp = get_array_module(sino)
    nomega, nx, nq = sino.shape
    axis_px = nx // 2 if axis_px is None else float(axis_px)
    lo, hi, nfft = detector_window(nx, axis_px, nx if n is None else n)
    buf = xp.zeros((nomega, nfft, nq), dtype=xp.float32)
    buf[:, :nx] = sino
    fft = _fft(xp)
    kw = {"workers": threads or default_threads(), "overwrite_x": True} if xp is np else {}
    spec = fft.rfft(buf, axis=1, **kw)
    response = rfft_response(nfft, filter_name, reference_size=iradon_fft_size(nx))
    spec *= xp.asarray(response, dtype=spec.dtype)[None, :, None]
    full = fft.irfft(spec, n=nfft, axis=1, **kw)
    window = xp.asarray(np.arange(lo, hi) % nfft)  # negative positions: the zero padding at the end
    return xp.ascontiguousarray(xp.take(full, window, axis=1), dtype=xp.float32), axis_px - lo


def angle_weights(omega_deg, period_deg: float | None = None) -> np.ndarray | None:
    """Per-angle FBP weights for angles that do not cover the turn evenly, None for even ones.

    A projection stands for the arc half-way to its neighbours (sorted, periodic over
    ``period_deg``: 180 for a half turn, 360 for a full one; default 360 where the angles span
    more than 180 degrees, else 180), and weighs ``pi/2 * arc / period``: for n even steps this
    is iradon's ``pi / (2 n)`` for a half or a full turn alike.  Measured angles of a real scan
    (a motor's readings, a missed projection) are uneven; FBP with even weights would
    over-weigh the crowded directions."""
    th = np.asarray(omega_deg, dtype=np.float64).ravel()
    n = th.size
    if n < 2:
        return None
    if period_deg is None:
        period_deg = 360.0 if np.ptp(th) > 180.0 + 1e-9 else 180.0
    t = np.mod(th, period_deg)
    order = np.argsort(t, kind="stable")
    ts = t[order]
    gaps = np.diff(np.r_[ts, ts[0] + period_deg])  # gap after each sorted angle
    arc = 0.5 * (gaps + np.roll(gaps, 1))
    if np.allclose(arc, period_deg / n, rtol=1e-3, atol=0.0):
        return None  # an even turn (readings within 0.1 % of a step): iradon's weight
    w = np.empty(n)
    w[order] = 0.5 * np.pi * arc / period_deg
    return w


def block_angles(sino, omega_deg) -> np.ndarray:
    """The angles (nomega,) float64 of a sinogram block (nomega, nx, nq), checked against its shape."""
    if sino.ndim != 3:
        raise ValueError(f"the sinogram must be (nomega, nx) or (nomega, nx, nq), got shape {sino.shape}")
    omega_deg = np.asarray(omega_deg, dtype=np.float64).ravel()
    if omega_deg.size != sino.shape[0]:
        raise ValueError(f"omega has {omega_deg.size} angles but the sinogram has {sino.shape[0]} rows")
    return omega_deg


def fbp(sino, omega_deg, filter_name: str = "ramp", center: float | None = None, *, q_chunk: int | None = None,
        threads: int | None = None):
    """Reconstruct every q bin of a sinogram block at once.

    Parameters
    ----------
    sino : (nomega, nx, nq) float array, numpy or cupy (the result lives where the input does)
    omega_deg : (nomega,) rotation angles in degrees (180 or 360 degree scans alike: the weight of
        each angle is pi / (2 nomega), iradon's, right for any evenly covered half or full turn;
        uneven angles, e.g. measured ones, are weighted by their arcs, :func:`angle_weights`)
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
    omega_deg = block_angles(sino, omega_deg)
    nomega, nx, nq = sino.shape
    if filter_name not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter_name!r}")
    theta = np.deg2rad(omega_deg)
    chunk = q_chunk or (CPU_Q_CHUNK if xp is np else GPU_Q_CHUNK)
    out = xp.zeros((nx, nx, nq), dtype=xp.float32)
    scale = np.pi / (2 * nomega)
    weights = angle_weights(omega_deg)
    axis_px = nx // 2 if center is None else float(center)
    for q0 in range(0, nq, chunk):
        filtered, axis_idx = filter_block(sino[:, :, q0:q0 + chunk], filter_name, axis_px, nx, threads)
        if weights is not None:  # uneven angles: each projection by its own arc (relative to the even weight)
            filtered *= xp.asarray((weights / scale).astype(np.float32))[:, None, None]
        backproject(filtered, np.cos(theta), np.sin(theta), axis_idx, nx, scale=scale, out=out, q0=q0,
                    threads=threads)
    return out
