"""Sinogram preparation: pure functions on a block ``(nomega, nx, nq)`` (numpy or cupy).

Every function takes and returns arrays of the caller's module (:func:`get_array_module`);
small per-projection or per-frame bookkeeping (indices, shifts, the centre) is computed on the
host.  The scan order (raster, snake, interlaced) is undone when frames are written into
``reduced/`` on the (z, omega, x) grid (:mod:`xrdct_dask.io.scan`), so every function here sees
grid order: row ``w`` is angle ``omega_deg[w]``, column ``x`` is translation step ``x``.

:func:`prepare_sinogram` chains the corrections in the order the physics asks for:

1. monitor (I0) normalisation, when the integration did not apply it;
2. bad frames (``frame_ok`` false, or no finite value) filled from their neighbours, and counted;
3. zingers: isolated spikes (one frame, one q bin) replaced by their 3 x 3 median;
4. air / container background: a measured empty-tube / air scan subtracted per q
   (:func:`xrdct_dask.sinogram.air.subtract_measured`); then, with ``background="auto"``, the air found in
   the columns that are air in every projection, modelled per q as a line in x
   (:mod:`xrdct_dask.sinogram.air`), or with ``background=True`` the mean of fixed edge columns;
5. stripes (ring artefacts) of any width, over all or part of omega (:mod:`xrdct_dask.sinogram.stripes`):
   found on the q-summed sinogram, their omega-sorted values interpolated from the nearest clean
   columns (after Vo et al., Opt. Express 26, 28396 (2018));
6. jitter: each projection shifted so that its centre of mass follows the fitted sinusoid;
7. centre of rotation: mirror matching of each projection with its 180-degree mirror
   (:func:`xrdct_dask.sinogram.axis.find_axis`; the centre of mass of the projections, :func:`estimate_center`,
   is biased by any background that is not removed).

The stripe columns, the shifts and the centre are estimated once per slice on the q-summed
sinogram (the workflow's ``find_center``) and applied with the same numbers to every q block of
the slice, so that all q bins of a voxel are treated alike.
"""

from __future__ import annotations

import numpy as np

from xrdct_dask.backend import get_array_module, to_host
from xrdct_dask.sinogram.air import AirColumns, find_air_columns, subtract_air, subtract_measured
from xrdct_dask.sinogram.axis import find_axis
from xrdct_dask.sinogram.stripes import find_stripes, remove_stripe_segments, stripe_segments

PREP_STEPS = ("normalize_monitor", "fill_bad", "zingers", "background_scan", "background", "stripes", "jitter",
              "center")


def _check_block(sino) -> None:
    if sino.ndim != 3:
        raise ValueError(f"a sinogram block is (nomega, nx, nq), got shape {sino.shape}")


# --------------------------------------------------------------------------------------------
# 1. monitor
# --------------------------------------------------------------------------------------------
def normalize_monitor(sino, monitor, reference: float | None = None):
    """Divide each projection by its I0 relative to ``reference`` (default: the median monitor).

    sino (nomega, nx, nq), monitor (nomega, nx) -> (nomega, nx, nq).  Non-positive monitors give NaN
    frames, which :func:`fill_bad_frames` then treats as missing.
    """
    xp = get_array_module(sino)
    monitor = xp.asarray(monitor, dtype=xp.float64)
    if monitor.shape != sino.shape[:2]:
        raise ValueError(f"the monitor is {monitor.shape} but the sinogram's frames are {sino.shape[:2]}")
    good = monitor[monitor > 0]
    ref = (float(xp.median(good)) if good.size else 1.0) if reference is None else float(reference)
    m = xp.where(monitor > 0, monitor / ref, xp.nan)
    return (sino / m[..., None]).astype(sino.dtype if sino.dtype.kind == "f" else xp.float32)


# --------------------------------------------------------------------------------------------
# 2. bad frames
# --------------------------------------------------------------------------------------------
def _neighbours(good: np.ndarray):
    """For a (n, m) bool map: per point, the nearest good index at or below / at or above along
    axis 1 (-1 where none)."""
    n, m = good.shape
    idx = np.broadcast_to(np.arange(m), (n, m))
    left = np.maximum.accumulate(np.where(good, idx, -1), axis=1)
    right = np.minimum.accumulate(np.where(good, idx, m)[:, ::-1], axis=1)[:, ::-1]
    right = np.where(right == m, -1, right)
    return left, right


def _interp_plan(good: np.ndarray):
    """Gather plan filling the non-good points of each row of ``good`` (n, m) by linear interpolation
    between the nearest good points of the row (nearest one at the ends): ``(i1, i2, t)`` with the
    filled value ``(1 - t) v[i1] + t v[i2]``; rows without a good point keep their own index."""
    n, m = good.shape
    left, right = _neighbours(good)
    own = np.broadcast_to(np.arange(m), (n, m))
    i1 = np.where(left >= 0, left, np.where(right >= 0, right, own))
    i2 = np.where(right >= 0, right, i1)
    span = (i2 - i1).astype(np.float64)
    t = np.where(span > 0, (own - i1) / np.where(span > 0, span, 1), 0.0)
    return i1, i2, t


def fill_bad_frames(sino, frame_ok):
    """Replace bad frames by interpolation from their neighbours.

    A frame is bad when ``frame_ok`` (nomega, nx) is false or none of its q values is finite.  Bad
    frames are interpolated linearly along x within their projection (nearest good frame at the
    edges); a projection without any good frame is interpolated along omega between the nearest
    projections that have one.  Non-finite values left in good frames (empty q bins) become 0.

    Returns ``(filled (nomega, nx, nq), filled_mask (nomega, nx) bool, host)``: the mask records
    which frames were filled.
    """
    xp = get_array_module(sino)
    _check_block(sino)
    finite = xp.isfinite(sino)
    ok = to_host(xp.asarray(frame_ok, dtype=bool) & xp.any(finite, axis=-1)).astype(bool)
    if ok.shape != sino.shape[:2]:
        raise ValueError(f"frame_ok is {ok.shape} but the sinogram's frames are {sino.shape[:2]}")
    out = xp.where(finite, sino, 0).astype(xp.float32)
    bad = ~ok
    if not bad.any():
        return out, bad
    nomega, nx = ok.shape
    rows = xp.asarray(np.arange(nomega)[:, None])
    # along x, inside each projection
    x1, x2, t = (xp.asarray(a) for a in _interp_plan(ok))
    t = t.astype(xp.float32)[..., None]
    out = (1 - t) * out[rows, x1] + t * out[rows, x2]
    # projections with no good frame at all: along omega, between the nearest complete projections
    has_good = ok.any(axis=1)
    if not has_good.all():
        if not has_good.any():
            return xp.zeros_like(out), bad
        w1, w2, tw = (xp.asarray(a[0]) for a in _interp_plan(has_good[None, :]))
        tw = tw.astype(xp.float32)[:, None, None]
        out = (1 - tw) * out[w1] + tw * out[w2]
    return out, bad


# --------------------------------------------------------------------------------------------
# 3. zingers
# --------------------------------------------------------------------------------------------
def suppress_zingers(sino, threshold: float = 8.0, floor_fraction: float = 1e-3):
    """Replace isolated spikes by the median of their 3 x 3 (omega, x) neighbourhood, per q bin.

    A value is a spike when it exceeds the second largest of its 8 neighbours by more than
    ``threshold`` local noise levels (second largest: a spike may have one bright neighbour, a
    diffraction spot over two frames or a second zinger).  The local noise level is the spread of
    the neighbours (second largest - smallest) / 2.85 (the expected range of 8 normal samples is
    2.85 sigma), floored at ``floor_fraction`` of the q bin's largest magnitude (noise-free or
    empty regions).  Zingers and single-frame diffraction spots are isolated in (omega, x); the
    trace of a real object is continuous along omega, so it has neighbours above and below
    about as bright as itself and is left alone.  The first and last projections see their
    neighbours mirrored.

    sino (nomega, nx, nq) -> ``(cleaned float32, nspikes)``.
    """
    xp = get_array_module(sino)
    _check_block(sino)
    if threshold <= 0:
        raise ValueError(f"the zinger threshold must be > 0 noise levels, got {threshold}")
    nomega, nx, nq = sino.shape
    s = xp.asarray(sino, dtype=xp.float32)
    if nomega < 3 or nx < 3:
        return s, 0
    pad = xp.pad(s, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    hood = [(dw, dx) for dw in (0, 1, 2) for dx in (0, 1, 2) if (dw, dx) != (1, 1)]
    first = pad[0:nomega, 0:nx]
    top1, top2, low = first.copy(), xp.full_like(s, -np.inf), first.copy()  # largest, second largest, smallest
    for dw, dx in hood[1:]:
        v = pad[dw:dw + nomega, dx:dx + nx]
        xp.maximum(top2, xp.minimum(top1, v), out=top2)
        xp.maximum(top1, v, out=top1)
        xp.minimum(low, v, out=low)
    floor = floor_fraction * xp.max(xp.abs(s).reshape(-1, nq), axis=0)
    noise = xp.maximum((top2 - low) / 2.85, floor[None, None, :])
    spike = (s - top2) > threshold * noise
    nspikes = int(spike.sum())
    if nspikes == 0:
        return s, 0
    w, x, q = xp.nonzero(spike)
    around = xp.stack([pad[w + dw, x + dx, q] for dw in (0, 1, 2) for dx in (0, 1, 2)], axis=1)
    out = s.copy()
    out[w, x, q] = xp.median(around, axis=1)
    return out, nspikes


# --------------------------------------------------------------------------------------------
# 4. air / container background
# --------------------------------------------------------------------------------------------
def edge_background(sino, edge_columns: int = 2, per_projection: bool = False):
    """Background pattern from the sample-free edge columns: the mean of the first and last
    ``edge_columns`` columns, per projection ``(nomega, 1, nq)`` or for the whole scan ``(1, 1, nq)``.

    What a pencil beam records beside the sample (air scattering along the beam path, a
    container wall parallel to it, detector background) is recorded at every x as well.
    """
    xp = get_array_module(sino)
    _check_block(sino)
    nx = sino.shape[1]
    if not 1 <= edge_columns <= nx // 2 - 1:
        raise ValueError(f"background needs 1 <= edge_columns <= nx // 2 - 1 = {nx // 2 - 1}, got {edge_columns}")
    edges = xp.concatenate([sino[:, :edge_columns], sino[:, nx - edge_columns:]], axis=1)
    bg = edges.mean(axis=1, keepdims=True)
    return bg if per_projection else bg.mean(axis=0, keepdims=True)


def subtract_background(sino, edge_columns: int = 2, per_projection: bool = False):
    """``sino - edge_background(sino)``: returns ``(corrected, background)``."""
    bg = edge_background(sino, edge_columns, per_projection)
    return sino - bg, bg


# --------------------------------------------------------------------------------------------
# 5. stripes
# --------------------------------------------------------------------------------------------
def stripe_columns(sino, snr: float = 3.0, floor_fraction: float = 2e-3, trim: float = 0.1) -> np.ndarray:
    """Find stripes: columns x whose intensity distribution over omega is off their neighbours'.

    Works on the q-summed sinogram (a stripe comes from the beam or the detector at one
    translation x, so it is in every q bin, while the whole sample's profile is smooth).  Each
    column is sorted along omega; its trimmed mean (dropping ``trim`` of the values at each end)
    gives a profile p(x), smooth except for kinks at the edges of features (it is the projection
    of the sample's rotational average).  A column's deviation is the smallest of
    ``|p(x) - prediction|`` over three predictions from its neighbours: the midpoint
    ``(p(x-1) + p(x+1)) / 2`` and the linear extrapolations from the left (x-2, x-1) and the right
    (x+1, x+2); a kink is predicted by the extrapolation from its smooth side, a stripe by none.
    A stripe is also a bump or a dip: above or below both neighbours (so the steep, monotone
    edges of the sample are not taken for stripes; the outermost columns never are).
    Stripes are the columns whose deviation exceeds ``snr`` times its noise: the standard error of
    the trimmed mean (per-frame noise from the column's robust frame-to-frame differences along
    omega, 1.4826 median |s(w+1) - s(w)| / sqrt(2)) times 1.5 for the prediction's own noise,
    floored at ``floor_fraction`` of the largest profile value.

    sino (nomega, nx, nq) or (nomega, nx) -> mask (nx,) bool, host.
    """
    total = sino.sum(axis=-1) if sino.ndim == 3 else sino
    total = np.asarray(to_host(total), dtype=np.float64)
    nomega, nx = total.shape
    if nx < 5 or nomega < 3:
        return np.zeros(nx, dtype=bool)
    cut = int(trim * nomega)
    p = np.sort(total, axis=0)[cut:nomega - cut].mean(axis=0)
    pp = np.pad(p, 2, mode="reflect")
    c = pp[2:-2]
    mid = 0.5 * (pp[1:-3] + pp[3:-1])
    left = 2 * pp[1:-3] - pp[:-4]
    right = 2 * pp[3:-1] - pp[4:]
    dev = np.minimum(np.minimum(np.abs(c - mid), np.abs(c - left)), np.abs(c - right))
    bump = (c - pp[1:-3]) * (c - pp[3:-1]) > 0  # above or below both neighbours
    bump[[0, -1]] = False  # the outermost columns have a neighbour on one side only
    frame_noise = 1.4826 * np.median(np.abs(np.diff(total, axis=0)), axis=0) / np.sqrt(2)
    stderr = 1.5 * frame_noise / np.sqrt(nomega - 2 * cut)
    return bump & (dev > snr * np.maximum(stderr, floor_fraction * np.max(np.abs(p))))


def remove_stripes(sino, snr: float = 3.0, columns=None):
    """Sorting-based stripe (ring artefact) removal on the stripe columns only (after Vo, Atwood &
    Drakopoulos, Opt. Express 26, 28396 (2018)).

    A stripe is a column whose gain or offset is wrong at every angle (a hot or miscalibrated
    detector bin, a beam glitch at one x).  In each q bin, the omega-sorted values of each stripe
    column are replaced by linear interpolation across x between the sorted values of the nearest
    columns that are no stripe, then put back in the column's own omega order: gain and offset
    errors alike are removed while the column keeps its angular variation (the sample), and every
    other column is returned untouched.

    sino (nomega, nx, nq); ``columns``: stripe mask (nx,) or column indices, default
    :func:`stripe_columns` of this block.  Returns ``(cleaned float32, stripe column indices)``.
    """
    xp = get_array_module(sino)
    _check_block(sino)
    s = xp.asarray(sino, dtype=xp.float32)
    nx = s.shape[1]
    if columns is None:
        mask = stripe_columns(s, snr)
    else:
        columns = np.asarray(to_host(columns))
        mask = columns.astype(bool) if columns.dtype == bool else np.isin(np.arange(nx), columns)
        if mask.shape != (nx,):
            raise ValueError(f"the stripe mask has {mask.size} columns but the sinogram {nx}")
    cols = np.flatnonzero(mask)
    if cols.size == 0 or cols.size == nx:
        return s, cols.tolist()
    x1, x2, t = (a[0, cols] for a in _interp_plan(~mask[None, :]))
    cols_d, x1, x2 = xp.asarray(cols), xp.asarray(x1), xp.asarray(x2)
    order = xp.argsort(s[:, cols_d], axis=0)  # (nomega, ncol, nq): the stripe columns' omega order
    lo = xp.sort(s[:, x1], axis=0)  # the neighbours' sorted values, (nomega, ncol, nq)
    hi = xp.sort(s[:, x2], axis=0)
    tt = xp.asarray(t, dtype=xp.float32)[None, :, None]
    fixed = (1 - tt) * lo + tt * hi
    out = s.copy()
    out[:, cols_d] = xp.take_along_axis(fixed, xp.argsort(order, axis=0), axis=0)
    return out, cols.tolist()


# --------------------------------------------------------------------------------------------
# 6-7. centre of mass: jitter and centre of rotation
# --------------------------------------------------------------------------------------------
def centers_of_mass(sino) -> np.ndarray:
    """Centre of mass of each projection, in pixels from the first x: ``(nomega,)`` host float64
    (NaN for a projection without positive mass).  Uses the q-summed, non-negative signal."""
    total = sino.sum(axis=-1) if sino.ndim == 3 else sino
    total = np.clip(np.nan_to_num(to_host(total).astype(np.float64)), 0, None)
    mass = total.sum(axis=1)
    com = total @ np.arange(total.shape[1], dtype=np.float64)
    return np.where(mass > 0, com / np.where(mass > 0, mass, 1), np.nan)


def fit_sinusoid(com: np.ndarray, omega_deg) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``com(theta) = c + a cos(theta) + b sin(theta)``: returns ``(coef (c, a, b),
    residual (nomega,))``; NaN centres of mass are left out of the fit (their residual is 0)."""
    th = np.deg2rad(np.asarray(omega_deg, dtype=np.float64))
    if th.size != com.size:
        raise ValueError(f"omega has {th.size} angles but there are {com.size} projections")
    good = np.isfinite(com)
    if good.sum() < 3:
        raise ValueError(f"the centre of mass needs >= 3 projections with signal, got {int(good.sum())}")
    a = np.stack([np.ones_like(th), np.cos(th), np.sin(th)], axis=1)
    coef, *_ = np.linalg.lstsq(a[good], com[good], rcond=None)
    resid = np.where(good, com - a @ coef, 0.0)
    return coef, resid


def estimate_center(sino, omega_deg) -> float:
    """Rotation-axis position (in pixels from the first x) from the projections' centres of mass.

    For parallel-beam data the centre of mass of projection theta is ``c + a cos(theta) +
    b sin(theta)`` (the sample's centre of mass circling the axis at ``c``); a least-squares fit
    over all angles gives ``c``, for 180 and 360 degree scans alike.  Needs sample-free edges
    (no truncation) and background-free data: subtract the background first.
    """
    try:
        coef, _ = fit_sinusoid(centers_of_mass(sino), omega_deg)
    except ValueError:  # no signal to fit: iradon's default axis
        return float(sino.shape[1] // 2)
    return float(coef[0])


def estimate_jitter(sino, omega_deg, max_shift_px: float = 3.0) -> np.ndarray:
    """Per-projection displacement ``(nomega,)`` (pixels, host float64) of the sample from its
    fitted sinusoid: the residual of :func:`fit_sinusoid`, clipped to ``+-max_shift_px``.

    A displacement that is itself a sinusoid of omega (a fixed offset of the whole sample) cannot
    be told from the sample's position and is left in the image; everything else is jitter.
    Without signal to fit (fewer than 3 projections with mass), no shift.
    """
    com = centers_of_mass(sino)
    try:
        _, resid = fit_sinusoid(com, omega_deg)
    except ValueError:
        return np.zeros(com.size)
    return np.clip(resid, -max_shift_px, max_shift_px)


def _keys_weights(t: np.ndarray) -> list[np.ndarray]:
    """Keys' cubic convolution (a = -1/2) weights of the 4 taps i0-1, i0, i0+1, i0+2 at fraction t."""
    return [((-0.5 * t + 1.0) * t - 0.5) * t,
            (1.5 * t - 2.5) * t * t + 1.0,
            ((-1.5 * t + 2.0) * t + 0.5) * t,
            (0.5 * t - 0.5) * t * t]


def shift_projections(sino, shifts_px):
    """Move projection ``w`` by ``-shifts_px[w]`` pixels along x: ``out[w, x] = sino[w, x + shifts_px[w]]``
    (Keys cubic interpolation, 0 outside the detector).  Undoes a displacement measured by
    :func:`estimate_jitter`."""
    xp = get_array_module(sino)
    _check_block(sino)
    shifts = np.asarray(to_host(shifts_px), dtype=np.float64).ravel()
    nomega, nx, _ = sino.shape
    if shifts.size != nomega:
        raise ValueError(f"{shifts.size} shifts for a sinogram of {nomega} projections")
    pos = np.arange(nx)[None, :] + shifts[:, None]
    i0 = np.floor(pos).astype(np.int64)
    t = pos - i0
    rows = xp.asarray(np.arange(nomega)[:, None])
    out = xp.zeros(sino.shape, dtype=xp.float32)
    for k, w in zip((-1, 0, 1, 2), _keys_weights(t)):
        idx = i0 + k
        inside = (idx >= 0) & (idx < nx)
        w = xp.asarray(np.where(inside, w, 0.0), dtype=xp.float32)[..., None]
        out += w * sino[rows, xp.asarray(np.clip(idx, 0, nx - 1))]
    return out


# --------------------------------------------------------------------------------------------
# the chain
# --------------------------------------------------------------------------------------------
def prepare_sinogram(sino, frame_ok, omega_deg, *, monitor=None, normalize_monitor_flag: bool = False,
                     fill_bad: bool = True, zingers: bool = True, zinger_threshold: float = 8.0,
                     background: bool | str = "auto", background_columns: int = 2,
                     background_per_projection: bool = False,
                     air_columns=None, measured_background=None,
                     stripes: bool = False, stripe_snr: float = 3.0, stripe_max_width_px: int = 6, known_stripes=None,
                     jitter: bool | np.ndarray = False, max_jitter_px: float = 3.0, center: float | str = "auto"):
    """Apply the corrections switched on, in the order of the module docstring.

    sino (nomega, nx, nq) numpy or cupy; frame_ok (nomega, nx) bool; omega_deg (nomega,) degrees.
    ``background`` False, True (edge columns) or ``"auto"`` (the air columns: ``air_columns``, the
    slice's :class:`~xrdct_dask.sinogram.air.AirColumns` or mask, default found on this block's q sum);
    ``measured_background`` ``(1 or nomega, nx, nq)``: a measured empty-tube / air scan to subtract
    first.  ``known_stripes`` the slice's stripe segments ``[[x0, x1, w0, w1], ...]`` or stripe
    columns (over every row) (default: found in this block, :func:`xrdct_dask.sinogram.stripes.find_stripes`);
    ``jitter`` False, True (estimate here) or the slice's shifts ``(nomega,)``; ``center``
    ``"auto"`` (estimate here, after the other corrections) or a number of pixels.

    Returns ``(sino float32, info)``, ``info = {"center": float, "filled": int, "zingers": int,
    "stripe_columns": list, "stripe_segments": list, "shifts_px": list | None, "steps": [names of
    the steps applied], "air": air columns found (dict) or None, "air_model": per-q model (2, nq) or
    None, "axis": the axis estimate (dict) or None}``.
    """
    xp = get_array_module(sino)
    _check_block(sino)
    if np.asarray(omega_deg).size != sino.shape[0]:
        raise ValueError(f"omega has {np.asarray(omega_deg).size} angles but the sinogram has {sino.shape[0]} rows")
    steps = []
    if normalize_monitor_flag and monitor is not None:
        sino = normalize_monitor(sino, monitor)
        steps.append("normalize_monitor")
    if fill_bad:
        sino, filled = fill_bad_frames(sino, frame_ok)
        steps.append("fill_bad")
    else:  # bad frames become zeros, i.e. missing rays
        ok = xp.asarray(frame_ok, dtype=bool)[..., None]
        filled = np.zeros(sino.shape[:2], bool)
        sino = xp.where(ok & xp.isfinite(sino), sino, 0).astype(xp.float32)
    nspikes, stripe_cols, segments = 0, [], []
    if zingers:
        sino, nspikes = suppress_zingers(sino, zinger_threshold)
        steps.append("zingers")
    air = air_coef = axis = None
    if measured_background is not None:
        sino = subtract_measured(sino, measured_background)
        steps.append("background_scan")
    if background == "auto":
        air = find_air_columns(sino.sum(axis=-1)) if air_columns is None else air_columns
        if not isinstance(air, AirColumns) or air.found:
            sino, air_coef = subtract_air(sino, air)
            steps.append("background")
    elif background:
        sino, _ = subtract_background(sino, background_columns, background_per_projection)
        steps.append("background")
    if stripes:
        segments = (find_stripes(sino, stripe_snr, stripe_max_width_px) if known_stripes is None
                    else stripe_segments(known_stripes, sino.shape[:2]))
        sino = remove_stripe_segments(sino, segments)
        stripe_cols = sorted({x for x0, x1, *_ in segments for x in range(x0, x1)})
        steps.append("stripes")
    shifts = None
    if jitter is not False and jitter is not None:
        shifts = estimate_jitter(sino, omega_deg, max_jitter_px) if jitter is True else np.asarray(jitter, float)
        sino = shift_projections(sino, shifts)
        steps.append("jitter")
    if center == "auto":
        guess = (air.left + air.right - 1) / 2 if isinstance(air, AirColumns) and air.found else None
        axis = find_axis(sino.sum(axis=-1), omega_deg, guess_px=guess)
        c = axis.center_px
        steps.append("center")
    else:
        c = float(center)
    info = {"center": c, "filled": int(filled.sum()), "zingers": nspikes, "stripe_columns": stripe_cols,
            "stripe_segments": segments, "shifts_px": None if shifts is None else [float(v) for v in shifts],
            "steps": steps, "air": air.to_dict() if hasattr(air, "to_dict") else None,
            "air_model": None if air_coef is None else air_coef.tolist(),
            "axis": None if axis is None else axis.to_dict()}
    return xp.asarray(sino, dtype=xp.float32), info


def prep_options(section) -> dict:
    """Keyword arguments of :func:`prepare_sinogram` from a workflow's ``sinogram`` section (any
    object with its attributes).  I0 is applied at integration (pyFAI ``normalization_factor``),
    so the sinogram-level normalisation stays off here."""
    return {"fill_bad": section.fill_bad, "zingers": section.zingers, "zinger_threshold": section.zinger_threshold,
            "background": section.background, "background_columns": section.background_columns,
            "background_per_projection": section.background_per_projection, "stripes": section.stripes,
            "stripe_snr": section.stripe_snr, "stripe_max_width_px": section.stripe_max_width_px,
            "jitter": section.jitter, "max_jitter_px": section.max_jitter_px,
            "center": section.center}
