"""The integrator's results: the five sums per frame and bin, and intensity and sigma from them.

    signal        S_q = sum_p c_qp (raw_p - dark_p)
    variance      V_q = sum_p c_qp^2 max(raw_p, 1)               (Poisson, as pyFAI's Cython preproc)
    normalization N_q = monitor * sum_p c_qp flat_p solidangle_p polarization_p
    count         C_q = sum_p c_qp
    norm_sq       M_q = monitor^2 * sum_p (c_qp n_p)^2

``I = S / N`` and ``sigma = sqrt(V) / N`` (pyFAI's standard error of the mean).

Kept (``Integrator(keep_sums=True)``, the store's ``integrate.keep_sums``) they are the NXazint
accumulators, stacked in the order of :data:`SUM_NAMES`: bins and frames merge exactly by adding
them (``I = sum S / sum N``), which averaging intensities does not.  The Poisson variance adds
too; the azimuthal one (pyFAI's weighted spread about each bin's own mean) adds only where the
merged bins have the same mean.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Integrated(NamedTuple):
    """radial (nbins,) in the integrator's unit; intensity and sigma (n, nbins) float32."""

    radial: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray


# the kept sums, in the order they are stacked and stored (pyFAI's result names; NXazint's)
SUM_NAMES = ("sum_signal", "sum_variance", "sum_normalization", "sum_normalization_squared", "count")


class Sums(NamedTuple):
    """Per-frame, per-bin sums, each (n, nbins) float64 (see module docstring)."""

    signal: np.ndarray
    variance: np.ndarray
    normalization: np.ndarray
    count: np.ndarray
    norm_sq: np.ndarray


def finish(sums: Sums, error_model: str, xp=np, empty: float = 0.0):
    """Intensity and sigma (float32) from the sums; bins with no normalisation get ``empty``."""
    with np.errstate(all="ignore"):
        good = sums.normalization > 0
        safe = xp.where(good, sums.normalization, 1.0)
        intensity = xp.where(good, sums.signal / safe, empty)
        if error_model == "none":
            sigma = xp.full_like(intensity, np.nan)
        else:
            sigma = xp.where(good, xp.sqrt(xp.maximum(sums.variance, 0.0)) / safe, empty)
    return intensity.astype(xp.float32), sigma.astype(xp.float32)


def kept_sums(sums: Sums, bad=None, xp=np):
    """The sums stacked as stored: float32 ``(5, n, nbins)`` in the order of :data:`SUM_NAMES`
    (signal, variance, normalization, norm_sq, count), NaN for the frames ``bad`` (n,) flags.
    float32 loses nothing that matters: the matrix coefficients they are made of are float32."""
    out = xp.stack([sums.signal, sums.variance, sums.normalization, sums.norm_sq, sums.count]).astype(xp.float32)
    if bad is not None:
        out[:, xp.asarray(bad, dtype=bool)] = xp.float32(np.nan)
    return out
