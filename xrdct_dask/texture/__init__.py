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


def peak_range(d_angstrom: float | None, d_window: float, q_range, unit: str, wavelength_A: float) -> tuple[float, float]:
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


def fit_peaks(profiles, radial):
    """Integrated intensity and position of one peak in many profiles.

    Parameters
    ----------
    profiles : float (..., w)
        intensities on the ``w`` bins of a peak's window (NaN: none).
    radial : float (w,)
        the window's bin centres, evenly spaced.

    Returns
    -------
    intensity : float32 (...)
        sum over the window's inner bins of the intensity above the linear background through the
        means of its first and last :data:`EDGE_BINS` bins, times the bin width.
    position : float32 (...)
        the centre of a Gaussian fitted to that net intensity over the bins above
        :data:`FIT_FRACTION` of its maximum: the weighted least squares of ``ln y`` by a parabola
        with weights ``y^2`` (Caruana's fit as weighted by Guo, IEEE Signal Proc. Mag. 28 (2011) 134),
        closed form for every profile at once; NaN where it has no maximum inside the window.
    """
    with warnings.catch_warnings():  # a profile of NaN (a sector that sees nothing) gives NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return _fit_peaks(profiles, radial)


def _fit_peaks(profiles, radial):
    xp = get_array_module(profiles)
    y = xp.asarray(profiles, dtype=xp.float64)
    x = xp.asarray(radial, dtype=xp.float64)
    w = y.shape[-1]
    e = EDGE_BINS
    step = float(x[1] - x[0])
    # x relative to the window's centre, in bins: the normal equations stay well conditioned
    u = (x - x[w // 2]) / step
    left, right = xp.nanmean(y[..., :e], axis=-1), xp.nanmean(y[..., -e:], axis=-1)
    ul, ur = u[:e].mean(), u[-e:].mean()
    background = left[..., None] + (right - left)[..., None] * (u - ul) / (ur - ul)
    net = (y - background)[..., e:w - e]
    ui = u[e:w - e]
    intensity = xp.nansum(net, axis=-1) * step
    top = xp.nanmax(xp.where(xp.isfinite(net), net, -xp.inf), axis=-1)
    use = (net > FIT_FRACTION * top[..., None]) & (top[..., None] > 0)
    wt = xp.where(use, net, 0.0) ** 2
    ln = xp.log(xp.where(use, net, 1.0))
    s = [xp.sum(wt * ui**k, axis=-1) for k in range(5)]
    t = [xp.sum(wt * ui**k * ln, axis=-1) for k in range(3)]
    m = xp.stack([xp.stack([s[0], s[1], s[2]], -1), xp.stack([s[1], s[2], s[3]], -1),
                  xp.stack([s[2], s[3], s[4]], -1)], -2)
    rhs = xp.stack(t, -1)
    ok = (use.sum(axis=-1) >= 3) & xp.isfinite(m).all(axis=(-1, -2))
    m = xp.where(ok[..., None, None], m, xp.eye(3))
    coef = xp.linalg.solve(m, rhs[..., None])[..., 0]
    b, c = coef[..., 1], coef[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = -b / (2 * c)
    ok &= (c < 0) & (centre >= ui[0]) & (centre <= ui[-1])
    position = xp.where(ok, float(x[w // 2]) + centre * step, xp.nan)
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
