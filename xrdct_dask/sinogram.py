"""Sinogram preparation: pure functions on a block ``(nomega, nx, nq)`` (numpy or cupy).

The scan order (raster, snake) is already undone when frames are written into ``reduced/`` on
the (z, omega, x) grid, so every function here sees grid order.
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module


def normalize_monitor(sino, monitor, reference: float | None = None):
    """Divide each projection by its I0 relative to ``reference`` (default: the median monitor).

    sino (nomega, nx, nq), monitor (nomega, nx) -> (nomega, nx, nq).  Non-positive monitors give NaN
    rows, which :func:`fill_bad_frames` then treats as missing.
    """
    xp = get_array_module(sino)
    ref = float(xp.nanmedian(monitor)) if reference is None else float(reference)
    m = xp.where(monitor > 0, monitor / ref, xp.nan)
    return sino / m[..., None]


def fill_bad_frames(sino, frame_ok):
    """Replace frames flagged bad (or non-finite) by linear interpolation along x in the same
    projection (nearest good neighbour at the edges); a projection with no good frame becomes the
    mean of its neighbouring projections.  Returns ``(filled, nfilled)``.
    """
    xp = get_array_module(sino)
    ok = xp.asarray(frame_ok, dtype=bool) & xp.all(xp.isfinite(sino), axis=-1)
    nbad = int((~ok).sum())
    if nbad == 0:
        return sino, 0
    out = np.array(sino.get() if xp is not np else sino, dtype=np.float32, copy=True)
    okh = ok.get() if xp is not np else ok
    x = np.arange(out.shape[1])
    empty_rows = []
    for w in range(out.shape[0]):
        good = okh[w]
        if good.all():
            continue
        if not good.any():
            empty_rows.append(w)
            continue
        for k in range(out.shape[2]):
            out[w, ~good, k] = np.interp(x[~good], x[good], out[w, good, k])
    full = [w for w in range(out.shape[0]) if okh[w].any()]
    for w in empty_rows:
        if full:
            nb = sorted(full, key=lambda v: abs(v - w))[:2]
            out[w] = out[nb].mean(axis=0)
        else:
            out[w] = 0.0
    return xp.asarray(out), nbad


def estimate_center(sino, omega_deg) -> float:
    """Rotation-axis position (in pixels from the first x) from the projections' centres of mass.

    For parallel-beam data the centre of mass of projection theta is ``c + a cos(theta) +
    b sin(theta)``; a least-squares fit over all angles gives ``c``.  Uses the q-summed sinogram.
    """
    xp = get_array_module(sino)
    total = sino.sum(axis=-1) if sino.ndim == 3 else sino
    total = np.asarray(total.get() if xp is not np else total, dtype=np.float64)
    total = np.clip(total, 0, None)
    x = np.arange(total.shape[1], dtype=np.float64)
    mass = total.sum(axis=1)
    good = mass > 0
    if good.sum() < 3:
        return (total.shape[1] - 1) / 2
    com = (total[good] @ x) / mass[good]
    th = np.deg2rad(np.asarray(omega_deg, dtype=np.float64))[good]
    a = np.stack([np.ones_like(th), np.cos(th), np.sin(th)], axis=1)
    coef, *_ = np.linalg.lstsq(a, com, rcond=None)
    return float(coef[0])


def prepare_sinogram(sino, frame_ok, omega_deg, *, monitor=None, normalize_monitor_flag: bool = False,
                     center: float | str = "auto"):
    """Monitor normalisation (if asked and not done at integration), bad-frame filling, centre.

    Returns ``(sino, info)`` with ``info = {"center": float, "filled": int}``.
    """
    if normalize_monitor_flag and monitor is not None:
        sino = normalize_monitor(sino, monitor)
    sino, nfilled = fill_bad_frames(sino, frame_ok)
    c = estimate_center(sino, omega_deg) if center == "auto" else float(center)
    return sino, {"center": c, "filled": nfilled}
