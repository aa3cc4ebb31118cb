"""The rotation axis of a slice by mirror matching, and the axis over z.

A parallel-beam projection and its 180-degree mirror see the same rays reversed:
``p(theta + 180, x) = p(theta, 2 c - x)``, with ``c`` the axis in pixels.  The axis is where a
sinogram and its mirror agree best:

* **180-degree scans** (Vo, Atwood & Drakopoulos, Opt. Express 22, 19078 (2014)): the sinogram
  followed by its mirror about a candidate ``c`` is a 360-degree sinogram; only at the right
  ``c`` is it one of a real object, whose 2D Fourier transform is confined to the double wedge
  ``|m| <= R |omega_x|`` (angular harmonic m, radial frequency omega_x, object radius R).  The
  metric is the energy outside the wedge (:func:`vo_metric`): a sum of squares, so that it is a
  parabola in a small axis error and its minimum is found to a fraction of a pixel by a bounded
  scalar minimisation (the reference implementation, algotom's ``find_center_vo``, takes the
  best of a 0.25 px grid of an L1 metric).
* **360-degree scans**: every projection has its real mirror, 180 degrees later; the axis is the
  least-squares registration of the second half with the first half mirrored
  (:func:`mirror_metric`), after removing from their difference its mean over omega: a
  background that does not rotate with the sample (air, a detector offset) is the same at every
  angle, and so drops out exactly.

Both run on a background-corrected sinogram (:mod:`xrdct_dask.sinogram.air`); a coarse search on whole
half-pixel candidates (whole-pixel shifts of the mirror) over a range around the support's
centre, then the sub-pixel minimisation around the best.  The **confidence** is the metric's
contrast, ``1 - min / median`` over the coarse range: near 1 for a sharp minimum, near 0 where
the metric is flat (an empty slice, noise only).

Over z, a tilted axis moves linearly: :func:`fit_axis_over_z` fits ``c(z) = a + b z`` to the
slices' estimates, weighted by their confidence, rejecting outliers (iteratively, beyond 3.5
robust standard deviations).

All of it works on a small 2D host array ``(nomega, nx)`` (a slice's q-summed sinogram).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import minimize_scalar

from xrdct_dask.backend import get_array_module, to_host

FULL_TURN_DEG = 270.0  # an omega range wider than this is a 360-degree scan (mirror pairs exist)


@dataclass
class AxisEstimate:
    """The axis of one slice: ``center_px`` (pixels from the first x), ``confidence`` (0..1, the
    metric's contrast), ``method`` (``vo-180`` | ``mirror-360``), ``search_px`` the coarse range."""

    center_px: float
    confidence: float
    method: str
    search_px: tuple[float, float]

    def to_dict(self) -> dict:
        return asdict(self)


def _mirror_rows(omega_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows ``(first, second)`` with ``omega[second] = omega[first] + 180`` (within a quarter step),
    for a scan covering a full turn; None for a half turn."""
    om = np.asarray(omega_deg, np.float64)
    if om.size < 4 or np.ptp(om) < FULL_TURN_DEG:
        return None
    step = np.median(np.abs(np.diff(np.sort(om))))
    first = np.flatnonzero(om - om.min() < 180 - step / 4)
    target = om[first] + 180
    second = np.argmin(np.abs(om[None, :] - target[:, None]), axis=1)
    good = np.abs(om[second] - target) <= step / 4
    if good.sum() < 4:
        return None
    return first[good], second[good]


def outside_wedge(nrows: int, ncols: int, radius_px: float, drop_rows: int | None = None) -> np.ndarray:
    """bool ``(nrows, ncols)`` over an fftshifted 2D spectrum of a 360-degree sinogram of ``nrows``
    angles: true outside the double wedge ``|m| <= R |omega_x|`` where a real object of radius
    ``radius_px`` puts no energy (``|j - jc| < |m| ncols / (2 pi R)``), less the lowest angular
    harmonics (``|m| <= drop_rows``: the wedge's tip, where noise dominates) and the zero radial
    frequency."""
    m = np.arange(nrows) - nrows // 2
    j = np.arange(ncols) - ncols // 2
    drop = max(1, min(20, int(0.05 * nrows))) if drop_rows is None else drop_rows
    mask = np.abs(j)[None, :] < np.abs(m)[:, None] * ncols / (2 * np.pi * max(radius_px, 1.0))
    mask[np.abs(m) <= drop] = False
    mask[:, j == 0] = False
    return mask


class MirrorSeries:
    """A mirror-matching metric as an exact function of the axis: ``K + 2 Re sum_j C_j
    exp(-2 pi i f_j s)``, ``s = 2 c - (nx - 1)`` the shift that puts the mirror about ``c`` in place.

    Both metrics compare the sinogram with its mirror (the flipped sinogram, shifted by ``s``).
    On rows padded to ``N`` columns (their edge values repeated, room for any shift within the
    detector) a shift is a phase ramp ``exp(-2 pi i f_j s)`` on column frequency ``f_j``, so a sum
    of squares over any set of Fourier coefficients is a trigonometric series in ``s``: two FFTs
    per slice, then O(N) per candidate axis, and the metric is smooth between candidates.

    * ``vo(half_turn, radius_px)``: Vo's energy outside the double wedge of ``[sino; mirror]``,
      ``sum_mask |A + B e^{-2 pi i f s}|^2`` with ``A``, ``B`` the 2D FFTs of ``[sino; 0]`` and
      ``[0; flipped]``;
    * ``mirror(first, second)``: ``sum |first - second mirrored|^2`` less the difference's mean
      over omega (Parseval over the columns: the mean over rows of a column coefficient is its
      omega-constant part)."""

    def __init__(self, nx: int, const: float, coef: np.ndarray, freq: np.ndarray):
        self.nx, self.const, self.coef, self.freq = nx, const, coef, freq

    @staticmethod
    def _pad(a: np.ndarray) -> np.ndarray:
        nx = a.shape[1]
        return np.pad(a, ((0, 0), (nx + 2, nx + 2)), mode="edge")

    @classmethod
    def vo(cls, half_turn: np.ndarray, radius_px: float) -> MirrorSeries:
        n, nx = half_turn.shape
        sp = cls._pad(half_turn)
        fp = cls._pad(half_turn[:, ::-1])
        zero = np.zeros_like(sp)
        a = np.fft.fft2(np.vstack([sp, zero]))
        b = np.fft.fft2(np.vstack([zero, fp]))
        mask = np.fft.ifftshift(outside_wedge(2 * n, sp.shape[1], radius_px))
        const = float(np.sum((np.abs(a) ** 2 + np.abs(b) ** 2)[mask]))
        coef = np.sum(np.where(mask, np.conj(a) * b, 0), axis=0)
        return cls(nx, const, 2 * coef, np.fft.fftfreq(sp.shape[1]))

    @classmethod
    def mirror(cls, first: np.ndarray, second: np.ndarray) -> MirrorSeries:
        nx = first.shape[1]
        p = np.fft.fft(cls._pad(first), axis=1)
        q = np.fft.fft(cls._pad(second[:, ::-1]), axis=1)
        p -= p.mean(axis=0, keepdims=True)
        q -= q.mean(axis=0, keepdims=True)
        const = float(np.sum(np.abs(p) ** 2 + np.abs(q) ** 2))
        coef = -np.sum(np.conj(p) * q, axis=0)
        return cls(nx, const, 2 * coef, np.fft.fftfreq(p.shape[1]))

    def __call__(self, center_px):
        """The metric at axis ``center_px`` (a number or an array of them), over the constant part."""
        s = 2 * np.asarray(center_px, np.float64) - (self.nx - 1)
        phase = np.exp(-2j * np.pi * np.multiply.outer(s, self.freq))
        return (self.const + np.real(phase @ self.coef)) / self.const


def find_axis(sino, omega_deg, *, guess_px: float | None = None, search_px: float | None = None,
              radius_px: float | None = None, smooth: bool = True) -> AxisEstimate:
    """The rotation axis of a 2D sinogram by mirror matching (see the module docstring).

    sino (nomega, nx) (any module; the search runs on the host), background-corrected;
    omega_deg (nomega,) degrees (uniform over a half turn, or over a full turn: mirror pairs
    within a quarter step).  ``guess_px`` the centre of the coarse search (default: the middle
    of the detector), ``search_px`` its half-width (default ``max(8, nx / 8)`` around a guess,
    ``nx / 4`` without one); ``radius_px`` the object's radius for the wedge (default
    ``0.5 nx``).  ``smooth``: a Gaussian of 1 px along omega first (noise of single frames).

    Returns an :class:`AxisEstimate`; the centre is clipped to the search range.
    """
    s = np.asarray(to_host(sino), dtype=np.float64)
    om = np.asarray(omega_deg, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"the axis is found on a 2D sinogram (nomega, nx), got shape {s.shape}")
    if om.size != s.shape[0]:
        raise ValueError(f"omega has {om.size} angles but the sinogram has {s.shape[0]} rows")
    nomega, nx = s.shape
    s = np.where(np.isfinite(s), s, 0.0)
    if guess_px is None:
        guess_px, half = (nx - 1) / 2, (nx / 4 if search_px is None else search_px)
    else:
        half = max(8.0, nx / 8) if search_px is None else search_px
    lo, hi = max(0.0, guess_px - half), min(nx - 1.0, guess_px + half)
    pairs = _mirror_rows(om)
    if pairs is not None:
        first, second = s[pairs[0]], s[pairs[1]]
        if smooth:
            first, second = (gaussian_filter1d(a, 1.0, axis=0, mode="nearest") for a in (first, second))
        metric = MirrorSeries.mirror(first, second)
        method = "mirror-360"
    else:
        half_turn = s[np.argsort(om)]
        if smooth:
            half_turn = gaussian_filter1d(half_turn, 1.0, axis=0, mode="nearest")
        metric = MirrorSeries.vo(half_turn, 0.5 * nx if radius_px is None else radius_px)
        method = "vo-180"
    grid = np.arange(np.ceil(2 * lo) / 2, hi + 1e-9, 0.5)  # whole-pixel shifts of the mirror
    if grid.size < 3:
        grid = np.linspace(lo, hi, 3)
    values = metric(grid)
    best = int(np.argmin(values))
    # a minimum on the range's edge may lie beyond it: widen the range that way (within the detector)
    while best in (0, grid.size - 1) and (grid[0] > 0 if best == 0 else grid[-1] < nx - 1):
        step = max(4.0, (hi - lo) / 2)
        if best == 0:
            more = np.arange(grid[0] - 0.5, max(0.0, grid[0] - step) - 1e-9, -0.5)[::-1]
            grid, values = np.r_[more, grid], np.r_[metric(more), values]
            lo = float(grid[0])
        else:
            more = np.arange(grid[-1] + 0.5, min(nx - 1.0, grid[-1] + step) + 1e-9, 0.5)
            grid, values = np.r_[grid, more], np.r_[values, metric(more)]
            hi = float(grid[-1])
        if more.size == 0:
            break
        best = int(np.argmin(values))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    res = minimize_scalar(lambda c: float(metric(c)), bounds=(a, b), method="bounded", options={"xatol": 1e-3})
    center = float(res.x) if res.fun <= values[best] else float(grid[best])
    med = float(np.median(values))
    confidence = float(np.clip(1 - min(res.fun, values[best]) / med, 0, 1)) if med > 0 else 0.0
    return AxisEstimate(center, confidence, method, (float(lo), float(hi)))


@dataclass
class AxisFit:
    """A line ``center(z) = intercept_px + slope_px * z`` through the slices' axis estimates.

    ``fitted`` (nz,) the line at every slice; ``inlier`` (nz,) the slices it rests on (an
    estimate that is NaN, below ``min_confidence`` or rejected as an outlier is not); ``rms_px``
    the inliers' weighted residual; ``used`` how many inliers."""

    intercept_px: float
    slope_px: float
    fitted: np.ndarray
    inlier: np.ndarray
    rms_px: float
    used: int

    def to_dict(self) -> dict:
        return {"intercept_px": self.intercept_px, "slope_px_per_slice": self.slope_px,
                "fitted_px": [float(v) for v in self.fitted], "inlier": [bool(v) for v in self.inlier],
                "rms_px": self.rms_px, "used": self.used}


def fit_axis_over_z(center_px, confidence, z=None, *, min_confidence: float = 0.05, reject: float = 3.5,
                    floor_px: float = 0.05) -> AxisFit | None:
    """Robust weighted line through the slices' axes (a tilted axis moves linearly with z).

    ``center_px``, ``confidence`` (nz,); ``z`` the slice positions (default 0..nz-1).  Weights are
    the confidences; slices with NaN, or a confidence below ``min_confidence``, are left out.
    Iteratively: fit, then drop the slices further from the line than ``reject`` robust standard
    deviations (1.4826 MAD of the residuals, at least ``floor_px``), until none is dropped.  With
    one usable slice the line is flat through it; None without any."""
    c = np.asarray(center_px, np.float64)
    w = np.nan_to_num(np.asarray(confidence, np.float64))
    zz = np.arange(c.size, dtype=np.float64) if z is None else np.asarray(z, np.float64)
    if not (c.shape == w.shape == zz.shape):
        raise ValueError(f"center {c.shape}, confidence {w.shape} and z {zz.shape} must have one value per slice")
    use = np.isfinite(c) & (w >= min_confidence)
    if not use.any():
        return None
    while True:
        if use.sum() >= 2 and np.ptp(zz[use]) > 0:
            coef = np.polyfit(zz[use], c[use], 1, w=np.sqrt(w[use]))
        else:
            coef = np.array([0.0, np.average(c[use], weights=w[use])])
        resid = c - np.polyval(coef, zz)
        if use.sum() <= 2:
            break
        scale = max(1.4826 * float(np.median(np.abs(resid[use]))), floor_px)
        out = use & (np.abs(resid) > reject * scale)
        if not out.any():
            break
        use &= ~out
    rms = float(np.sqrt(np.average(resid[use] ** 2, weights=w[use])))
    return AxisFit(float(coef[1]), float(coef[0]), np.polyval(coef, zz), use, rms, int(use.sum()))


def structured_bins(sino, support=None, nbins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The q bins whose sinograms carry the most structure above their noise, for the axis.

    sino (nomega, nx, nq), background-corrected (any module); ``support`` (nx,) bool: the sample's
    columns (default all).  A bin's structure is the standard deviation of its values over the
    support (every angle); its noise the robust spread of their second differences along omega
    (1.4826 MAD / sqrt(6): frame-to-frame noise, which a sample's smooth traces barely reach).
    Returns ``(bins, weights)``: the ``nbins`` best bins by structure / noise, strongest first,
    and ``1 / noise`` of each (summed with these weights every bin's noise counts alike and its
    structure by its signal-to-noise ratio)."""
    xp = get_array_module(sino)
    nx = sino.shape[1]
    cols = np.flatnonzero(np.ones(nx, bool) if support is None else np.asarray(support, bool))
    s = xp.asarray(sino[:, xp.asarray(cols)], dtype=xp.float64)
    spread = np.asarray(to_host(xp.std(s, axis=(0, 1))))
    d2 = s[2:] - 2 * s[1:-1] + s[:-2] if s.shape[0] >= 3 else s - s.mean(axis=0)
    d2 = d2.reshape(-1, d2.shape[-1])
    noise = np.asarray(to_host(xp.median(xp.abs(d2 - xp.median(d2, axis=0)), axis=0))) * 1.4826 / np.sqrt(6)
    noise = np.maximum(noise, 1e-6 * max(float(spread.max()), 1e-30))
    snr = np.where(np.isfinite(spread), spread / noise, 0.0)
    bins = np.argsort(-snr)[:max(1, min(nbins, snr.size))]
    return bins, 1.0 / noise[bins]


def weighted_sum(sino, bins, weights):
    """``sum_k weights[k] * sino[..., bins[k]]`` ``(nomega, nx)`` on the host (float64)."""
    xp = get_array_module(sino)
    sel = xp.asarray(sino[..., xp.asarray(np.asarray(bins))], dtype=xp.float64)
    return np.asarray(to_host(sel @ xp.asarray(np.asarray(weights, np.float64))))
