"""Stripes of any width, over all or part of the scan: found on the q-summed sinogram, removed in
every q bin (numpy or cupy blocks ``(nomega, nx, nq)``; the finding is host bookkeeping).

A stripe is a run of adjacent columns (translation steps x) whose gain or offset is wrong over a
range of angles: a miscalibrated or dead detector region, a beam glitch, a grain lit at one x.  It
back-projects to a ring.  Three things tell a stripe from the sample (after Vo, Atwood &
Drakopoulos, Opt. Express 26, 28396 (2018), whose sorting idea this uses; the detection is this
module's own):

* **Sorted columns.**  Each column's values over the rows considered are sorted and their
  trimmed mean (dropping ``trim`` of the values at each end) taken: a profile ``p(x)`` of the
  sample's rotational distribution, smooth across x except at the edges of features, while a
  stripe shifts or scales a whole run of columns.  Its noise is the trimmed mean's standard error
  (the column's per-frame noise from its robust frame-to-frame differences along omega).
* **A run against every prediction from outside it.**  For a run ``[a, b]`` of ``w = 1 ..
  max_width`` columns, its mean is compared with three predictions from the two columns on each
  side: the linear extrapolation from the left (``a - 2, a - 1``), from the right
  (``b + 1, b + 2``), and the interpolation between ``a - 1`` and ``b + 1``.  A kink at a feature's
  edge is predicted by the extrapolation from its smooth side, a monotone edge lies between its
  neighbours; a stripe is off all three predictions with the same sign, and above (or below)
  both neighbours.  Its score is the smallest of the three deviations in noise units (each
  prediction's own noise included, plus ``floor_fraction`` of the profile's maximum for the
  profile's own roughness).  Inside a wider stripe, a sub-run is predicted by its neighbours in
  the stripe and scores nothing; a run reaching a clean column is diluted: overlapping
  candidates keep the best score (a matched filter with non-maximum suppression).  The two
  outermost columns on each side are never flagged (no support beyond them).
* **Windows of omega.**  The same test on windows of ``window_rows`` rows (half-overlapping)
  finds stripes over part of the scan (a higher threshold, ``snr_window``: many more tests).  A
  stripe's rows are the span of the windows where it is seen; one seen on the whole scan covers
  every row, unless windows show it significantly absent there (its amplitude there below half
  of the whole scan's by 3 noise levels).

Removal (:func:`remove_stripe_segments`): in each q bin, the omega-sorted values of a stripe's
columns over its rows are replaced by linear interpolation across x between the sorted values of
the nearest clean columns over the same rows, then put back in the column's own omega order:
gain and offset errors alike are removed while the column keeps its angular variation, and every
other value is returned untouched (algotom's ``remove_all_stripe`` smooths every column).
"""

from __future__ import annotations

import numpy as np

from xrdct_dask.backend import get_array_module, to_host

SUPPORT = 2  # columns on each side a run's predictions use


def _profile(total: np.ndarray, trim: float) -> tuple[np.ndarray, np.ndarray]:
    """Trimmed mean over the rows of each column of ``total`` (n, nx) and its standard error."""
    n = total.shape[0]
    cut = int(trim * n)
    kept = max(n - 2 * cut, 1)
    p = np.sort(total, axis=0)[cut:n - cut].mean(axis=0)
    if n > 2:  # per-frame noise from the robust frame-to-frame differences along omega
        frame_noise = 1.4826 * np.median(np.abs(np.diff(total, axis=0)), axis=0) / np.sqrt(2)
    else:
        frame_noise = np.abs(p)
    return p, 1.1 * frame_noise / np.sqrt(kept)  # 1.1: a 10 % trimmed mean's efficiency


def run_scores(p: np.ndarray, se: np.ndarray, max_width: int, floor: float) -> np.ndarray:
    """Signed scores ``(max_width, nx)`` of the runs ``[a, a + w - 1]`` (row ``w - 1``, column ``a``)
    of a profile ``p`` with standard errors ``se``: the smallest deviation, in noise units, of the
    run's mean from the three predictions from outside it, signed; 0 where the three disagree in
    sign, where the run is not above (or below) both neighbours, or where it lacks support."""
    nx = p.size
    v = se.astype(np.float64) ** 2
    out = np.zeros((max_width, nx))
    cp = np.concatenate([[0.0], np.cumsum(p)])
    cv = np.concatenate([[0.0], np.cumsum(v)])
    for w in range(1, max_width + 1):
        a = np.arange(SUPPORT, nx - w - SUPPORT + 1)
        if a.size == 0:
            break
        b = a + w - 1
        m = (cp[b + 1] - cp[a]) / w
        vm = (cv[b + 1] - cv[a]) / w**2
        d = (w + 1) / 2  # mean distance of the run's columns from its neighbour
        preds = ((p[a - 1] + d * (p[a - 1] - p[a - 2]), (1 + d) ** 2 * v[a - 1] + d**2 * v[a - 2]),
                 (p[b + 1] + d * (p[b + 1] - p[b + 2]), (1 + d) ** 2 * v[b + 1] + d**2 * v[b + 2]),
                 (0.5 * (p[a - 1] + p[b + 1]), 0.25 * (v[a - 1] + v[b + 1])))
        z = np.stack([(m - q) / np.sqrt(vm + vq + floor**2) for q, vq in preds])
        same = (np.sign(z) == np.sign(z[0])).all(axis=0)
        bump = (m - p[a - 1]) * (m - p[b + 1]) > 0
        out[w - 1, a] = np.where(same & bump, np.sign(z[0]) * np.abs(z).min(axis=0), 0.0)
    return out


def pick_runs(scores: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Runs ``(x0, x1 exclusive, score)`` whose ``|score| > threshold``, best first, none overlapping
    or touching a better one (non-maximum suppression over widths and positions)."""
    w_idx, a_idx = np.nonzero(np.abs(scores) > threshold)
    order = np.argsort(-np.abs(scores[w_idx, a_idx]), kind="stable")
    taken: list[tuple[int, int, float]] = []
    for k in order:
        x0, x1 = int(a_idx[k]), int(a_idx[k] + w_idx[k] + 1)
        if all(x1 < t0 or x0 > t1 for t0, t1, _ in taken):  # neither overlapping nor adjacent
            taken.append((x0, x1, float(scores[w_idx[k], a_idx[k]])))
    return taken


def _windows(nomega: int, window_rows: int | None) -> list[tuple[int, int]]:
    """Half-overlapping windows of omega rows (none when one window would cover the scan)."""
    rows = max(16, nomega // 8) if window_rows is None else int(window_rows)
    if rows >= nomega or rows < 4:
        return []
    starts = list(range(0, nomega - rows + 1, rows // 2))
    if starts[-1] + rows < nomega:
        starts.append(nomega - rows)
    return [(s, s + rows) for s in starts]


def find_stripes(sino, snr: float = 3.0, max_width: int = 6, *, window_rows: int | None = None,
                 snr_window: float | None = None, trim: float = 0.1, floor_fraction: float = 2e-3) -> list[list[int]]:
    """Stripe segments of a sinogram: ``[[x0, x1, w0, w1], ...]`` (columns ``x0:x1`` over rows
    ``w0:w1``, host ints, sorted by column), the method of the module docstring.

    sino (nomega, nx, nq) (summed over q) or (nomega, nx); ``snr``: the whole scan's threshold;
    ``max_width``: widest stripe looked for, columns; ``window_rows``: rows per window (default
    ``max(16, nomega // 8)``); ``snr_window``: the windows' threshold (default ``snr + 2``)."""
    total = sino.sum(axis=-1) if sino.ndim == 3 else sino
    total = np.nan_to_num(np.asarray(to_host(total), dtype=np.float64))
    nomega, nx = total.shape
    if nx < 2 * SUPPORT + 1 or nomega < 3 or max_width < 1:
        return []
    p, se = _profile(total, trim)
    floor = floor_fraction * float(np.max(np.abs(p), initial=0.0))
    thr_w = snr + 2.0 if snr_window is None else snr_window
    windows = _windows(nomega, window_rows)
    found = [(x0, x1, s, None) for x0, x1, s in pick_runs(run_scores(p, se, max_width, floor), snr)]
    win_profiles = [_profile(total[w0:w1], trim) for w0, w1 in windows]
    for j, (pw, sw) in enumerate(win_profiles):
        found += [(x0, x1, s, j) for x0, x1, s in pick_runs(run_scores(pw, sw, max_width, floor), thr_w)]
    # group detections of the same stripe (overlapping columns); its columns are its best detection's
    found.sort(key=lambda f: -abs(f[2]))
    groups: list[dict] = []
    for x0, x1, s, j in found:
        g = next((g for g in groups if x0 <= g["x1"] and x1 >= g["x0"] and np.sign(s) == g["sign"]), None)
        if g is None:
            if any(x0 <= h["x1"] and x1 >= h["x0"] for h in groups):
                continue  # overlaps a stripe of the other sign: the better one stands
            groups.append({"x0": x0, "x1": x1, "sign": np.sign(s), "whole": j is None, "windows": set()})
        else:
            g["whole"] |= j is None
            if j is not None:
                g["windows"].add(j)
    out = []
    for g in groups:
        rows = _stripe_rows(g, total, windows, win_profiles, p, se, floor, nomega)
        if rows is not None:
            out.append([g["x0"], g["x1"], *rows])
    return sorted(out)


def _run_amplitude(p: np.ndarray, se: np.ndarray, x0: int, x1: int) -> tuple[float, float]:
    """Mean deviation of ``p[x0:x1]`` from the interpolation between its neighbours, and its error."""
    m = p[x0:x1].mean() - 0.5 * (p[x0 - 1] + p[x1])
    var = (se[x0:x1] ** 2).sum() / (x1 - x0) ** 2 + 0.25 * (se[x0 - 1] ** 2 + se[x1] ** 2)
    return float(m), float(np.sqrt(var))


def _stripe_rows(g: dict, total, windows, win_profiles, p, se, floor, nomega) -> tuple[int, int] | None:
    """The rows ``(w0, w1)`` of a stripe group: every row for one seen on the whole scan unless
    windows show it significantly absent; else the span of the windows where it was seen."""
    if not windows:
        return (0, nomega) if g["whole"] else None
    if g["whole"]:
        amp, _ = _run_amplitude(p, se, g["x0"], g["x1"])
        on = []
        for j, (pw, sw) in enumerate(win_profiles):
            a, e = _run_amplitude(pw, sw, g["x0"], g["x1"])
            off = g["sign"] * (0.5 * amp - a) > 3 * np.hypot(e, floor)
            if not off:
                on.append(j)
        if not on or len(on) == len(windows):
            return (0, nomega)
    else:
        on = sorted(g["windows"])
    w0 = windows[min(on)][0]
    w1 = windows[max(on)][1]
    # a span reaching the first / last window covers the scan's end rows too
    return (0 if min(on) == 0 else w0, nomega if max(on) == len(windows) - 1 else w1)


def stripe_segments(stripes, shape: tuple[int, int]) -> list[list[int]]:
    """Segments ``[[x0, x1, w0, w1], ...]`` from a list of segments, or from stripe columns (indices or
    a bool mask ``(nx,)``) over every row: runs of adjacent columns become one segment each."""
    nomega, nx = shape
    if len(stripes) and np.ndim(stripes[0]) == 1 and len(stripes[0]) == 4:
        return [[int(v) for v in seg] for seg in stripes]
    cols = np.asarray(to_host(stripes))
    mask = cols.astype(bool) if cols.dtype == bool else np.isin(np.arange(nx), cols)
    if mask.shape != (nx,):
        raise ValueError(f"the stripe mask has {mask.size} columns but the sinogram {nx}")
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return [[int(a), int(b), 0, nomega] for a, b in zip(edges[::2], edges[1::2])]


def stripe_mask(segments, shape: tuple[int, int]) -> np.ndarray:
    """bool ``(nomega, nx)``: the points of the segments ``[[x0, x1, w0, w1], ...]``."""
    mask = np.zeros(shape, bool)
    for x0, x1, w0, w1 in segments:
        mask[w0:w1, x0:x1] = True
    return mask


def remove_stripe_segments(sino, segments):
    """Sorting-based removal of stripe segments (module docstring) in every q bin.

    sino (nomega, nx, nq) numpy or cupy; segments ``[[x0, x1, w0, w1], ...]`` (:func:`find_stripes`
    of the slice's q-summed sinogram).  The neighbours of a segment are the nearest columns outside
    every segment over its rows.  Returns the cleaned block, float32, on the input's device.
    """
    # lazy: import cycle sinogram.corrections -> sinogram.stripes (corrections runs this step in its chain)
    from xrdct_dask.sinogram.corrections import _interp_plan

    xp = get_array_module(sino)
    if sino.ndim != 3:
        raise ValueError(f"a sinogram block is (nomega, nx, nq), got shape {sino.shape}")
    s = xp.asarray(sino, dtype=xp.float32)
    nomega, nx, _ = s.shape
    if not segments:
        return s
    out = s.copy()
    flagged = stripe_mask(segments, (nomega, nx))
    for x0, x1, w0, w1 in segments:
        if not (0 <= x0 < x1 <= nx and 0 <= w0 < w1 <= nomega):
            raise ValueError(f"stripe segment {[x0, x1, w0, w1]} lies outside the sinogram's {nomega} x {nx}")
        clean = ~flagged[w0:w1].any(axis=0)  # columns clean over all of this segment's rows
        if not clean.any():
            continue
        cols = np.arange(x0, x1)
        c1, c2, t = (a[0, cols] for a in _interp_plan(clean[None, :]))
        rows = slice(w0, w1)
        block = s[rows]
        order = xp.argsort(block[:, xp.asarray(cols)], axis=0)  # the stripe columns' own omega order
        lo = xp.sort(block[:, xp.asarray(c1)], axis=0)  # the neighbours' sorted values over these rows
        hi = xp.sort(block[:, xp.asarray(c2)], axis=0)
        tt = xp.asarray(t, dtype=xp.float32)[None, :, None]
        fixed = (1 - tt) * lo + tt * hi
        out[rows, x0:x1] = xp.take_along_axis(fixed, xp.argsort(order, axis=0), axis=0)
    return out
