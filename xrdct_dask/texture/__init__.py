"""Texture and lattice strain per voxel from reconstructed azimuthal sectors.

With sectors (``integrate.npt_azim > 1``) every voxel has a pattern per sector chi.  For a chosen
reflection (a window of radial bins about it, :func:`peak_window`) this module gives, per voxel:

* per sector, the reflection's integrated intensity above a linear background and its fitted
  position (:func:`fit_peaks`), the d-spacing there and the strain ``(d - d0) / d0``
  (:func:`d_and_strain`), ``d0`` given or the voxel's mean d over its sectors;
* the texture index, the spread of the intensity over the sectors (``std / mean``: 0 for a random
  powder, ``a / sqrt(2)`` for ``I(chi) = I0 (1 + a cos 2(chi - chi0))``), and ``chi0``, the
  azimuth of the strongest intensity from the second harmonic (:func:`texture_figures`).

Reconstructing each sector as its own sinogram assumes what a voxel shows at chi does not change
as the sample turns: a fibre texture or a strain state symmetric about the rotation axis.

Arrays in, arrays out (numpy or cupy, whichever comes in); radial positions in the integration
unit (``q_nm^-1``, ``q_A^-1``, ``2th_deg``), d in angstrom.
"""

from __future__ import annotations

import warnings

import numpy as np

from xrdct_dask.backend import get_array_module
from xrdct_dask.pdf.transform import radial_to_q_A

EDGE_BINS = 3  # bins at each end of a window that make its linear background
FIT_FRACTION = 0.3  # bins above this fraction of the net maximum enter the Gaussian fit
MIN_WINDOW_BINS = 2 * EDGE_BINS + 3  # a window needs its background and three points to fit
FIT_ITERATIONS = 12  # Levenberg-Marquardt steps (from Caruana's start: converged in 4-6 on simulated peaks)
FIT_BLOCK = 32768  # profiles fitted at once


def q_A_to_radial(q_A, unit: str, wavelength_A: float):
    """Q (1/A) in an integration unit: the inverse of :func:`xrdct_dask.pdf.transform.radial_to_q_A`."""
    q_A = np.asarray(q_A, dtype=np.float64)
    if unit == "q_nm^-1":
        return q_A * 10.0
    if unit == "q_A^-1":
        return q_A
    if unit == "2th_deg":
        return np.rad2deg(2 * np.arcsin(np.clip(q_A * wavelength_A / (4 * np.pi), -1, 1)))
    raise ValueError(f"cannot convert Q to radial unit {unit!r}")


def d_angstrom_of(radial, unit: str, wavelength_A: float):
    """d-spacing (A) of radial positions: ``2 pi / Q``."""
    xp = get_array_module(radial)
    q = radial_to_q_A(radial, unit, wavelength_A)
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.where(q > 0, 2 * np.pi / xp.where(q > 0, q, 1.0), xp.nan)


def peak_range(d_angstrom: float | None, d_window: float, q_range, unit: str,
               wavelength_A: float) -> tuple[float, float]:
    """The radial range (in ``unit``) of a reflection: ``q_range`` as given, or the radial positions
    of ``d_angstrom * (1 +- d_window)``."""
    if q_range is not None:
        return float(q_range[0]), float(q_range[1])
    ends = q_A_to_radial(2 * np.pi / (d_angstrom * np.array([1 + d_window, 1 - d_window])), unit, wavelength_A)
    return float(min(ends)), float(max(ends))


def peak_window(radial: np.ndarray, lo: float, hi: float) -> slice:
    """The bins of ``radial`` (ascending centres, ``(nq,)``) within ``[lo, hi]``.  ValueError (one
    line) when the range leaves the radial axis or holds fewer than :data:`MIN_WINDOW_BINS` bins."""
    radial = np.asarray(radial, dtype=np.float64)
    if lo < radial[0] or hi > radial[-1]:
        raise ValueError(f"{lo:.5g}..{hi:.5g} lies outside the integrated range {radial[0]:.5g}..{radial[-1]:.5g}")
    a, b = int(np.searchsorted(radial, lo, "left")), int(np.searchsorted(radial, hi, "right"))
    if b - a < MIN_WINDOW_BINS:
        raise ValueError(f"{lo:.5g}..{hi:.5g} holds {b - a} radial bins; a peak needs {MIN_WINDOW_BINS} (its "
                         f"background and three points): widen it or integrate with more bins")
    return slice(a, b)


def fit_peaks(profiles, radial, block: int = FIT_BLOCK):
    """Integrated intensity and position of one peak in many profiles: a Gaussian on a linear
    background fitted to each.

    Parameters
    ----------
    profiles : float (..., w)
        intensities on the ``w`` bins of a peak's window (NaN: none).
    radial : float (w,)
        the window's bin centres, evenly spaced.
    block : profiles fitted at once (bounds the Jacobians held: ``block * w * 5`` doubles)

    Returns
    -------
    intensity : float32 (...)
        the fitted Gaussian's area ``A s sqrt(2 pi)`` (intensity times radial unit).
    position : float32 (...)
        its centre; NaN (and the intensity too) where the fit fails: no maximum inside the
        window, a width beyond it, or a profile with NaN.

    The start is Caruana's closed form (the weighted least squares of ``ln y`` by a parabola, weights
    ``y^2``; Guo, IEEE Signal Proc. Mag. 28 (2011) 134) on the profile less the line through its
    first and last :data:`EDGE_BINS` bins; then :data:`FIT_ITERATIONS` damped Gauss-Newton steps
    (Levenberg-Marquardt) fit the peak and the background together.  Fitting them together matters:
    a window holds the peak's tails at its edges, and a line through them tilts with the peak and
    takes back part of its shift (a third, for a window of +-2.5 sigma)."""
    xp = get_array_module(profiles)
    y = xp.asarray(profiles, dtype=xp.float64)
    lead, w = y.shape[:-1], y.shape[-1]
    flat = y.reshape(-1, w)
    intensity = xp.empty(flat.shape[0], dtype=xp.float32)
    position = xp.empty(flat.shape[0], dtype=xp.float32)
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # failed fits are NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        for a in range(0, flat.shape[0], block):
            intensity[a:a + block], position[a:a + block] = _fit_block(xp, flat[a:a + block], radial)
    return intensity.reshape(lead), position.reshape(lead)


def _fit_block(xp, y, radial):
    """:func:`fit_peaks` of ``y (n, w)``."""
    x = xp.asarray(radial, dtype=xp.float64)
    w = y.shape[-1]
    e = EDGE_BINS
    step = float(x[1] - x[0])
    u = (x - x[w // 2]) / step  # bins from the window's centre: well-conditioned normal equations
    # start: the edge line, then Caruana's parabola through ln(net) over the bins above FIT_FRACTION
    ul, ur = float(u[:e].mean()), float(u[-e:].mean())
    left, right = y[:, :e].mean(axis=1), y[:, -e:].mean(axis=1)
    b1 = (right - left) / (ur - ul)
    b0 = left - b1 * ul
    net = y - (b0[:, None] + b1[:, None] * u)
    top = net[:, e:w - e].max(axis=1)
    use = (net > FIT_FRACTION * top[:, None]) & (top[:, None] > 0)
    use[:, :e] = use[:, w - e:] = False
    wt = xp.where(use, net, 0.0) ** 2
    ln = xp.log(xp.where(use, net, 1.0))
    s = [xp.sum(wt * u**k, axis=1) for k in range(5)]
    m = xp.stack([xp.stack([s[0], s[1], s[2]], -1), xp.stack([s[1], s[2], s[3]], -1),
                  xp.stack([s[2], s[3], s[4]], -1)], -2)
    rhs = xp.stack([xp.sum(wt * u**k * ln, axis=1) for k in range(3)], -1)
    ok = (use.sum(axis=1) >= 3) & xp.isfinite(y).all(axis=1)
    coef = xp.linalg.solve(xp.where(ok[:, None, None], m, xp.eye(3)), rhs[..., None])[..., 0]
    c = coef[:, 2]
    ok &= c < 0
    sig = xp.sqrt(xp.where(ok, -0.5 / c, 1.0))
    mu = xp.where(ok, -coef[:, 1] / (2 * c), 0.0)
    amp = xp.where(ok, top, 0.0)
    p = xp.stack([amp, mu, sig, xp.where(ok, b0, 0.0), xp.where(ok, b1, 0.0)], -1)  # (n, 5)
    yy = xp.where(ok[:, None], y, 0.0)
    lam = xp.full(y.shape[0], 1e-3)
    cost, prev = None, p
    for _ in range(FIT_ITERATIONS):
        d = u[None, :] - p[:, 1:2]
        g = xp.exp(-0.5 * (d / p[:, 2:3]) ** 2)
        r = yy - (p[:, 0:1] * g + p[:, 3:4] + p[:, 4:5] * u)
        now = xp.sum(r * r, axis=1)
        if cost is not None:  # Levenberg-Marquardt: keep a step that lowered the cost, else damp more
            better = now <= cost
            p = xp.where(better[:, None], p, prev)
            lam = xp.where(better, lam / 3, lam * 4)
            d = u[None, :] - p[:, 1:2]
            g = xp.exp(-0.5 * (d / p[:, 2:3]) ** 2)
            r = yy - (p[:, 0:1] * g + p[:, 3:4] + p[:, 4:5] * u)
            now = xp.sum(r * r, axis=1)
        cost, prev = now, p
        jac = xp.stack([g, p[:, 0:1] * g * d / p[:, 2:3] ** 2, p[:, 0:1] * g * d**2 / p[:, 2:3] ** 3,
                        xp.ones_like(g), xp.broadcast_to(u, g.shape)], -1)  # (n, w, 5)
        jtj = xp.einsum("nwi,nwj->nij", jac, jac)
        jtj = jtj + lam[:, None, None] * (jtj * xp.eye(5)) + 1e-12 * xp.eye(5)
        step_ = xp.linalg.solve(jtj, xp.einsum("nwi,nw->ni", jac, r)[..., None])[..., 0]
        p = p + xp.where(ok[:, None], step_, 0.0)
    amp, mu, sig = prev[:, 0], prev[:, 1], xp.abs(prev[:, 2])
    ok &= xp.isfinite(prev).all(axis=1) & (amp > 0) & (mu >= u[e]) & (mu <= u[w - e - 1]) & (sig < w)
    intensity = xp.where(ok, amp * sig * step * np.sqrt(2 * np.pi), xp.nan)
    position = xp.where(ok, float(x[w // 2]) + mu * step, xp.nan)
    return intensity.astype(xp.float32), position.astype(xp.float32)


def texture_figures(intensity, chi_deg):
    """Texture index and orientation of a reflection from its intensity per sector.

    ``intensity`` (..., nchi) (NaN: a sector that does not see the reflection), ``chi_deg`` (nchi,).
    Returns float32 ``index = std / mean`` over the sectors (NaN where the mean is not positive)
    and ``orientation_deg`` in (-90, 90], the chi of the strongest intensity from the second
    harmonic ``sum I exp(2 i chi)`` (a texture has maxima at chi0 and chi0 + 180)."""
    xp = get_array_module(intensity)
    i = xp.asarray(intensity, dtype=xp.float64)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = xp.nanmean(i, axis=-1)
        index = xp.where(mean > 0, xp.nanstd(i, axis=-1) / xp.where(mean > 0, mean, 1.0), xp.nan)
    two = 2 * xp.deg2rad(xp.asarray(chi_deg, dtype=xp.float64))
    known = xp.isfinite(i)
    c = xp.sum(xp.where(known, i * xp.cos(two), 0.0), axis=-1)
    s = xp.sum(xp.where(known, i * xp.sin(two), 0.0), axis=-1)
    orient = xp.rad2deg(xp.arctan2(s, c)) / 2
    orient = xp.where(orient <= -90, orient + 180, orient)
    return index.astype(xp.float32), xp.where(mean > 0, orient, xp.nan).astype(xp.float32)


def d_and_strain(position, unit: str, wavelength_A: float, d0_angstrom: float | None = None):
    """d-spacing (A) per sector of fitted positions ``(..., nchi)`` and the strain ``(d - d0) / d0``
    against ``d0_angstrom`` or, where None, each voxel's mean d over its sectors (the strain is
    then the azimuthal variation about it).  Returns float32 ``d (..., nchi)``, ``strain (..., nchi)``
    and ``d0 (...)``."""
    xp = get_array_module(position)
    d = d_angstrom_of(xp.asarray(position, dtype=xp.float64), unit, wavelength_A)
    if d0_angstrom is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            d0 = xp.nanmean(d, axis=-1)
    else:
        d0 = xp.full(d.shape[:-1], float(d0_angstrom))
    strain = d / d0[..., None] - 1
    return d.astype(xp.float32), strain.astype(xp.float32), d0.astype(xp.float32)


__all__ = ["EDGE_BINS", "FIT_FRACTION", "MIN_WINDOW_BINS", "d_and_strain", "d_angstrom_of", "fit_peaks",
           "peak_range", "peak_window", "q_A_to_radial", "texture_figures"]
