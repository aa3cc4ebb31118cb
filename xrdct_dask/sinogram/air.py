"""Air and container background of a sinogram: found from the data, or measured.

A pencil beam records, besides the sample, what lies along its path at every translation x: air
before and after the sample, a container wall parallel to the beam, the detector's own
background.  None of it rotates with the sample, so it does not depend on omega; it does depend
on x (the air path changes as the stage moves), and on q (each has its own pattern).

**Found** (``sinogram.background: auto``, :func:`find_air_columns`, :func:`fit_air_model`): the
columns that are air in every projection are the columns outside the sample's support.  Over a
half turn a point at radius r from the axis sweeps every x in ``[c - r, c + r]``, so the union
of the projections' supports is one interval around the axis, and the air columns are two runs,
one at each edge.  They are found on the q-summed sinogram by growing each run inwards from its
outermost columns while a column is air: its values stay, at every angle, within a few noise
levels of the air line fitted through the columns accepted so far (a sample crossing the column
at some angles, the sample's rise at the support's edge and a tube wall's chord, which a centred
tube keeps constant over omega, all leave it).  The noise level is the spread of the accepted
columns' values over omega.  The air is then modelled per q bin as a line in x through those
columns' mean patterns (a ramp as well as a level), and subtracted from every frame.  When no
edge column is air (a sample that fills the field of view), nothing is subtracted and the reason
is returned.

**Measured** (``inputs.background_scan``, :func:`subtract_measured`): an empty-tube or air scan
integrated with the run's own plan and normalised by its own monitor is subtracted per q; a line
(one angle) is subtracted from every projection, a slice (every angle) projection by projection.

Functions take and return arrays of the caller's module (numpy or cupy); the column search and
the per-q line fits (small arrays) run on the host.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from xrdct_dask.backend import get_array_module, to_host

SEED_COLUMNS = 2  # outermost columns each side that must be air for a run to start there
ONE_SIDED_LINE = 4  # air columns at one edge only: a line in x from this many, else a constant
TRIM = 0.1  # fraction of an air column's values over omega left out at each end of its mean


def _max_normal(n: int) -> float:
    """Noise levels the largest of ``n`` normal deviates stays below (P ~ 1e-3 per column)."""
    return float(np.sqrt(2 * np.log(max(n, 2)))) + 2.0


@dataclass
class AirColumns:
    """The air columns of a slice (:func:`find_air_columns`).

    ``left``: columns ``[0, left)`` are air; ``right``: columns ``[right, nx)`` are air (``nx``:
    none on that side); ``noise``: per-frame noise of the q-summed air (its units);
    ``threshold``: the largest deviation from the air line a column's frames may show, in those
    units; ``reason``: why no column (or one side only) is air, else None."""

    nx: int
    left: int
    right: int
    noise: float
    threshold: float
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        m = np.zeros(self.nx, bool)
        m[:self.left] = True
        m[self.right:] = True
        return m

    @property
    def columns(self) -> list[int]:
        return np.flatnonzero(self.mask).tolist()

    @property
    def found(self) -> bool:
        return bool(self.left or self.right < self.nx)

    @property
    def support(self) -> tuple[int, int]:
        """The sample's columns ``[start, stop)``: what lies between the air runs."""
        return self.left, self.right

    def to_dict(self) -> dict:
        return asdict(self) | {"columns": self.columns, "found": self.found}

    @classmethod
    def from_dict(cls, d: dict) -> AirColumns:
        """The inverse of :meth:`to_dict` (its derived keys ignored)."""
        return cls(**{k: d[k] for k in ("nx", "left", "right", "noise", "threshold", "reason", "notes") if k in d})


def _noise_floor(total: np.ndarray) -> float:
    """The smallest noise level believed: float32 rounding of the sinogram's largest values (noise-free
    data would otherwise make every rounding error a sample)."""
    return 1e-6 * max(float(np.abs(total).max()), 1e-30)


def _omega_noise(total: np.ndarray, cols) -> float:
    """Per-frame noise of columns ``cols``, pooled: 1.4826 MAD of their second differences along
    omega / sqrt(6).  A sample crossing one of them at a few angles barely moves the median."""
    v = total[:, list(cols)]
    d2 = (v[2:] - 2 * v[1:-1] + v[:-2]).ravel()
    return max(1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / np.sqrt(6), _noise_floor(total))


def _despike(t: np.ndarray, k: float) -> np.ndarray:
    """``t`` (nomega, nx) with single-frame spikes replaced by the mean of their omega neighbours.

    A zinger or a crystal's spot is faint in the q sum next to the sample (so the zinger filter,
    whose floor follows the brightest value, leaves it) but many air noise levels high: it would
    make an air column look crossed by the sample.  A spike exceeds both its neighbours along
    omega by more than ``k`` of its column's noise (second differences, robust); a sample's trace
    is continuous over omega, so its neighbours rise with it."""
    out = t.copy()
    d2 = t[2:] - 2 * t[1:-1] + t[:-2]
    noise = np.maximum(1.4826 * np.median(np.abs(d2 - np.median(d2, axis=0)), axis=0) / np.sqrt(6), _noise_floor(t))
    pad = np.pad(t, ((1, 1), (0, 0)), mode="reflect")
    below, above = pad[:-2], pad[2:]
    spike = t - np.maximum(below, above) > k * noise
    out[spike] = (0.5 * (below + above))[spike]
    return out


def _line(x: np.ndarray, y: np.ndarray, deg: int):
    return np.polyfit(x, y, deg) if x.size > deg else np.array([y.mean()] if y.size else [0.0])


def find_air_columns(total, seed_columns: int = SEED_COLUMNS, nonlinear: float = 0.2) -> AirColumns:
    """The columns that are air in every projection, from the q-summed sinogram.

    ``total`` (nomega, nx): the slice's sinogram summed over q, bad frames filled and zingers
    removed (any array module; read on the host).  See the module docstring.  With
    ``k = sqrt(2 ln nomega) + 2`` (the largest of nomega normal deviates, with margin):

    1. each edge's ``seed_columns`` outermost columns start a run when every value stays within
       ``k`` noise levels of its column's median (the noise pooled over both edges' seeds from
       second differences along omega);
    2. a run grows inwards while the next column's values stay within ``k`` noise levels of the
       air line through the accepted columns at every angle, and its mean within ``k`` standard
       errors of it (the noise now the accepted columns' spread about their own means);
    3. the shorter run is dropped when its mean level is off the longer run's line (extrapolated)
       by more than ``k`` prediction errors plus ``nonlinear`` of the air level there: a centred
       sample beyond one edge is constant over omega there, but lies far above the air.
    """
    t = np.asarray(to_host(total), dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"the q-summed sinogram is (nomega, nx), got shape {t.shape}")
    nomega, nx = t.shape
    if nomega >= 5 and np.isfinite(t).all():
        t = _despike(t, _max_normal(nomega))
    k = _max_normal(nomega)
    none = AirColumns(nx, 0, nx, float("nan"), float("nan"))
    if nomega < 5 or nx < 2 * seed_columns + 3:
        none.reason = f"too small a sinogram ({nomega} angles x {nx} columns) to tell air from sample"
        return none
    if not np.isfinite(t).all():
        none.reason = "the sinogram has non-finite values"
        return none
    seeds = {"left": list(range(seed_columns)), "right": list(range(nx - seed_columns, nx))}
    s0 = _omega_noise(t, seeds["left"] + seeds["right"])
    ok = {side: all(np.max(np.abs(t[:, c] - np.median(t[:, c]))) <= k * s0 for c in cols)
          for side, cols in seeds.items()}
    if not (ok["left"] or ok["right"]):
        none.reason = (f"no edge column is air in every projection: the {seed_columns} outermost columns at each "
                       f"side vary with omega beyond their noise (the sample fills the field of view)")
        return none
    left = seed_columns if ok["left"] else 0
    right = nx - seed_columns if ok["right"] else nx
    med = t.mean(axis=0)
    x = np.arange(nx, dtype=np.float64)

    def accepted(left: int, right: int):
        cols = np.r_[0:left, right:nx]
        noise = max(1.4826 * float(np.median(np.abs(t[:, cols] - med[cols]))), _noise_floor(t))
        return cols, noise

    while right - left > 3:
        cols, noise = accepted(left, right)
        line = np.polyval(_line(x[cols], med[cols], 1 if cols.size >= 2 else 0), x)
        grew = False
        for side in ("left", "right"):
            if (side == "left" and left == 0) or (side == "right" and right == nx) or right - left <= 3:
                continue  # no run on that side (its seeds were not air), or nothing left between
            c = left if side == "left" else right - 1
            # the line's own error at c, on top of the noise
            spread_ok = np.max(np.abs(t[:, c] - line[c])) <= k * noise * (1 + 1 / np.sqrt(cols.size))
            level_ok = abs(med[c] - line[c]) <= k * noise * (1 + np.sqrt(nomega / cols.size)) / np.sqrt(nomega)
            if spread_ok and level_ok:
                left, right = (left + 1, right) if side == "left" else (left, right - 1)
                grew = True
        if not grew:
            break
    notes = []
    if left and right < nx:
        runs = {"left": np.arange(left), "right": np.arange(right, nx)}
        long_side, short_side = sorted(runs, key=lambda sd: -runs[sd].size)
        lc, sc = runs[long_side], runs[short_side]
        if lc.size >= 4:
            _, noise = accepted(left, right)
            coef = np.polyfit(x[lc], med[lc], 1)
            pred = np.polyval(coef, x[sc])
            xm = x[lc].mean()
            err = noise / np.sqrt(nomega) * np.sqrt(1 / lc.size + (x[sc].mean() - xm) ** 2 / np.sum((x[lc] - xm) ** 2))
            if abs(med[sc].mean() - pred.mean()) > k * err + nonlinear * abs(pred.mean()) + k * noise / np.sqrt(
                    nomega * sc.size):
                notes.append(f"the {short_side} edge's columns lie off the air line of the {long_side} edge: sample "
                             f"(constant over omega there), not air")
                left, right = (left, nx) if short_side == "right" else (0, right)
    cols, noise = accepted(left, right)
    if right - left < 3:
        return AirColumns(nx, 0, nx, noise, k * noise,
                          reason="the air runs leave fewer than 3 columns of sample: the sinogram is air only")
    if not (left and right < nx):
        bare = "right" if left else "left"
        notes.append(f"air on the {'left' if left else 'right'} only: the {bare} edge's columns are sample")
    return AirColumns(nx, left, right, noise, k * noise, notes=notes)


def fit_air_model(sino, air: AirColumns | np.ndarray, degree: int = 1) -> np.ndarray:
    """Per-q air model from the air columns: ``coef`` ``(degree + 1, nq)`` host float64 with the
    background at column x ``sum_k coef[k] * u**k``, ``u = (x - (nx - 1) / 2) / nx``.

    sino (nomega, nx, nq) (any module); ``air`` an :class:`AirColumns` or a column mask (nx,).
    Each air column's mean pattern over omega (a ``TRIM``-trimmed mean: a stray spike left out) is
    fitted by least squares per q bin.  With air on
    one side only, in fewer than ``ONE_SIDED_LINE`` columns (or fewer than ``degree + 2``), the
    model drops to a constant: a line extrapolated from a narrow edge across the whole sample
    would multiply its errors."""
    nomega, nx, nq = sino.shape
    mask = air.mask if isinstance(air, AirColumns) else np.asarray(to_host(air), bool)
    cols = np.flatnonzero(mask)
    if cols.size == 0:
        return np.zeros((degree + 1, nq))
    xp = get_array_module(sino)
    # each air column's pattern: its values over omega, less the top and bottom TRIM of them (a spot or
    # zinger the per-q filter left would otherwise lift a whole column's level)
    ordered = xp.sort(xp.asarray(sino[:, xp.asarray(cols)], dtype=xp.float64), axis=0)
    cut = int(TRIM * nomega)
    means = np.asarray(to_host(xp.mean(ordered[cut:nomega - cut], axis=0)))
    two_sided = cols.min() < nx // 2 <= cols.max()
    deg = degree if (two_sided or cols.size >= ONE_SIDED_LINE) and cols.size >= degree + 2 else 0
    u = (cols - (nx - 1) / 2) / nx
    a = np.stack([u**p for p in range(deg + 1)], axis=1)  # (ncols, deg + 1)
    coef, *_ = np.linalg.lstsq(a, means, rcond=None)
    out = np.zeros((degree + 1, nq))
    out[:deg + 1] = coef
    return out


def air_model(coef: np.ndarray, nx: int, xp=np):
    """The background ``(1, nx, nq)`` float32 of :func:`fit_air_model`'s coefficients, on ``xp``."""
    u = (np.arange(nx) - (nx - 1) / 2) / nx
    bg = np.stack([u**p for p in range(coef.shape[0])], axis=1) @ np.asarray(coef)  # (nx, nq)
    return xp.asarray(bg[None].astype(np.float32))


def subtract_air(sino, air: AirColumns | np.ndarray, degree: int = 1):
    """``sino - air_model(fit_air_model(sino, air))``: returns ``(corrected float32, coef)``;
    untouched (``coef`` zeros) where there is no air column."""
    xp = get_array_module(sino)
    coef = fit_air_model(sino, air, degree)
    if not coef.any():
        return xp.asarray(sino, dtype=xp.float32), coef
    return (xp.asarray(sino, dtype=xp.float32) - air_model(coef, sino.shape[1], xp)), coef


def subtract_measured(sino, background):
    """Subtract a measured background (empty tube, air): ``background`` ``(1, nx, nq)`` (a line,
    recorded at one angle: every projection) or ``(nomega, nx, nq)`` (every angle: projection
    by projection), already normalised as the sinogram (same integration, monitor, q bins).
    Non-finite background values (bins its frames did not cover) subtract nothing."""
    xp = get_array_module(sino)
    bg = xp.asarray(background, dtype=xp.float32)
    if bg.ndim != 3 or bg.shape[1:] != sino.shape[1:] or bg.shape[0] not in (1, sino.shape[0]):
        raise ValueError(f"the measured background is {tuple(bg.shape)} but the sinogram block is "
                         f"{tuple(sino.shape)}: it needs (1 or nomega, nx, nq)")
    return xp.asarray(sino, dtype=xp.float32) - xp.where(xp.isfinite(bg), bg, 0)
