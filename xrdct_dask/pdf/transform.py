"""I(Q) -> S(Q) -> F(Q) -> G(r), the ad hoc way of PDFgetX3, batched as one matrix product.

PDFgetX3 (Juhas, Davis, Farrow & Billinge, J. Appl. Cryst. 46 (2013) 560-566) and its manual
(diffpy.pdfgetx, "Options and parameters"; quoted below) define the chain; this module follows it:

* the measured intensity per atom is ``I_m = N [<f^2> + <f>^2 (S - 1)] + b(Q)`` with an unknown
  scale N and an unknown smooth additive part b (Compton, multiple scattering, air ...); <f>^2
  and <f^2> come from the composition and xraydb's f0 (Waasmaier-Kirfel);
* "bgscale: scaling of the background intensities loaded from the backgroundfile" (an empty
  sample holder): ``I = I_sample - bgscale * I_background``.  Here the background can also be the
  slice's own rim voxels or first/last x steps (air only);
* ``S(Q) - 1 = (I/N - <f^2>) / <f>^2`` and ``F(Q) = Q [S(Q) - 1]``;
* "rpoly: r-limit for the maximum frequency in the F(Q) correction polynomial. The PDF is
  unreliable at shorter r"; "qmaxinst: ... also used as an upper boundary for the polynomial fit
  correction of the S(Q) data".  So a polynomial fitted to F(Q) over ``qmin <= Q <= qmaxinst`` is
  subtracted (one with P(0) = 0 is a polynomial P(Q)/Q in S(Q): the same correction).  A
  polynomial of degree n has at most n zeros on [0, qmaxinst], as many as sin(Q r) has for
  r = n pi / qmaxinst: the degree that keeps its frequencies below rpoly is
  ``n = rpoly * qmaxinst / pi``, and the correction only changes G(r) below ~rpoly.  Our reading
  of the details the manual leaves open: the polynomial vanishes at Q = 0 as F does
  (``sum_{k=1..n} c_k Q^k``), a fractional n blends the fits of degree floor(n) and ceil(n) (G
  changes continuously with rpoly), and the fit is weighted by dQ;
* qmin, qmax: "the lower (upper) Q-limit for the Fourier transformation of the F(Q) curve":
  ``G(r) = 2/pi * integral_qmin^qmax F(Q) W(Q) sin(Q r) dQ`` (trapezoid rule on the data's own,
  possibly non-uniform, Q grid, as PyStoG integrates), with the optional Lorch window as the manual
  writes it, ``W(Q) = sin(pi x) / (pi x)``, ``x = (Q - qmin) / (qmax - qmin)`` (Lorch's original
  ``x = Q / qmax`` when qmin = 0).

Where this module goes beyond a one-pattern-at-a-time PDFgetX3 run, it says so:

* **Batched and linear.**  Given N, every step is linear in I(Q), so the transform of a batch of
  patterns ``(..., nq)`` is ONE product with a precomputed ``(nq, nr + extras)`` matrix (numpy
  here, cuBLAS through cupy on a GPU).  To keep it exactly linear the self-scattering term
  ``Q <f^2>/<f>^2`` is removed by the same least-squares fit as the polynomial (it is one more
  basis function).  For a single element ``<f^2>/<f>^2 = 1`` and that term is the polynomial's
  own Q^1: identical to subtracting it first.  For several elements it also absorbs a misfit of
  the ratio, which is smooth anyway.
* **The scale N** (``scale_method``).  The manual does not say how the absolute scale is fixed.
  ``"pdfgetx3"`` (default) is what PDFgetX3 does, found on a measured Ni pattern and PDFgetX3's own
  S(Q) for it (tests/data/): its S(Q) equals ``1 + I/(N <f>^2) - (<f^2> - <f>^2)/<f>^2`` minus the
  correction polynomial, to the file's 6 digits, with one constant N, and that N is the mean of
  ``I/<f^2>`` over the top 40 % of [0, qmaxinst] (``Q >= 0.6 qmaxinst``: "S(Q) -> 1 at high Q",
  the high-Q window of PDFgetX2's ``highqratio = 0.6``), here dQ-weighted so that the grid does not
  matter.  ``"upper-half-fit"`` (this module's only choice before) fits ``N <f^2>`` to I by least
  squares over the upper half of [qmin, qmaxinst], weighted by ``<f^2>``: it leans on the lower
  part of that window where the signal is strong, so noise at the top of the pattern moves it
  less, but the Compton intensity rising with Q is not in the model, so N is smaller and G larger
  than PDFgetX3's (1.63x on that Ni pattern).  Both are linear functionals of I.
  ``normalization="fixed"`` uses one given N for every pattern instead: then G is a linear map of
  I(Q), which is what lets the PDF be taken before the tomographic reconstruction.
* **Limits beyond the data** are clipped to the data's Q range with one warning line, as PDFgetX3
  does ("qmax reset to the data boundary"); the clipped values are the ones in ``op.params``.
* The dQ weights make the result independent of the grid: the same pattern on a 2theta grid and
  on a Q grid gives the same G(r) (PDFgetX3 first resamples onto a uniform Q grid).

Per pattern the same product also yields quality figures: the rms of F(Q) over the top 10 % of
[qmin, qmax] (noise and truncation level: F should have decayed there), and at low r, where G
must be the line ``-4 pi rho0 r`` of no atoms, the slope of a line through the origin fitted to G
on [rpoly, lowr_max] and the rms residual about it.  The window starts at rpoly because below it
G is shaped by the correction polynomial itself (PDFgetX3: "the PDF is unreliable at shorter r";
for ideal data G is ~0 there, not the line, so a residual below rpoly measures the method, not the
data); it must end below the shortest interatomic distance (default ``lowr_max = 2 rpoly``).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from dataclasses import dataclass, field

import numpy as np
import xraydb

from xrdct_dask.backend import get_array_module, to_host
from xrdct_dask.errors import PDFParameterError

_FORMULA = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")

HIGHQ_FRACTION = 0.5  # upper-half-fit: N from the upper half of [qmin, qmaxinst]
PDFGETX3_HIGHQ_START = 0.6  # pdfgetx3: N from Q >= 0.6 qmaxinst
UNIT_MIXUP_FACTOR = 10.0  # a limit this many times beyond the data's end is a unit mix-up (1/nm for 1/A)
SCALE_METHODS = ("pdfgetx3", "upper-half-fit")
FQ_TOP_FRACTION = 0.1  # quality: F(Q) level over the top 10 % of [qmin, qmax]
FQ_TOP_POINTS = 64  # at most this many Q points for that figure
N_LOWR = 16  # quality: G(r) on this many points of [rpoly, lowr_max]
MAX_R_POINTS = 200_000  # an r grid larger than this is a typo (rstep in nm?), not a request
NORMALIZATIONS = ("per-pattern", "fixed")

log = logging.getLogger(__name__)




def parse_composition(formula: str) -> dict[str, float]:
    """``"NaCl"`` -> ``{"Na": 1, "Cl": 1}``; ``"Ni0.8Fe0.2"`` -> fractions as given.

    Raises :class:`PDFParameterError` for an unknown element or an unparsable formula.
    """

    formula = formula.replace(" ", "")
    if not formula or _FORMULA.sub("", formula):
        raise PDFParameterError(f"pdf.composition: cannot parse {formula!r} (use e.g. Ni, NaCl, SiO2, Ni0.8Fe0.2)")
    out: dict[str, float] = {}
    for el, n in _FORMULA.findall(formula):
        try:
            xraydb.atomic_number(el)
        except Exception:
            raise PDFParameterError(f"pdf.composition: unknown element {el!r} in {formula!r}") from None
        out[el] = out.get(el, 0.0) + (float(n) if n else 1.0)
    if sum(out.values()) <= 0:
        raise PDFParameterError(f"pdf.composition: {formula!r} has no atoms")
    return out


def form_factor_moments(composition: str, q_A: np.ndarray):
    """``(<f>^2, <f^2>)`` of a composition at Q (1/A), each ``(nq,)`` in electrons^2.

    <f> = sum_i c_i f_i(Q) and <f^2> = sum_i c_i f_i(Q)^2 with atomic fractions c_i and xraydb's
    f0 (its argument is sin(theta)/lambda = Q / 4 pi).
    """

    comp = parse_composition(composition)
    total = sum(comp.values())
    f_mean = np.zeros_like(q_A, dtype=np.float64)
    f2_mean = np.zeros_like(q_A, dtype=np.float64)
    for el, n in comp.items():
        f = np.asarray(xraydb.f0(el, np.asarray(q_A) / (4 * np.pi)), dtype=np.float64)
        f_mean += n / total * f
        f2_mean += n / total * f * f
    return f_mean**2, f2_mean


def r_grid(rmin: float, rmax: float, rstep: float) -> np.ndarray:
    """rmin, rmin + rstep, ... <= rmax (A), as PDFgetX3's rmin/rmax/rstep."""
    return np.arange(rmin, rmax + 0.5 * rstep, rstep)


def trapezoid_weights(x: np.ndarray) -> np.ndarray:
    """Weights w with ``sum(w * y) == np.trapezoid(y, x)`` for any y on the grid x (non-uniform ok)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.zeros_like(x)
    if x.size > 1:
        d = np.diff(x)
        w[:-1] += d / 2
        w[1:] += d / 2
    return w


def lorch_window(q_A: np.ndarray, qmin: float, qmax: float) -> np.ndarray:
    """PDFgetX3's Lorch window ``sin(pi x)/(pi x)``, ``x = (Q - qmin)/(qmax - qmin)``; 0 outside.

    With qmin = 0 this is Lorch's (1969) ``sin(pi Q/Qmax)/(pi Q/Qmax)``, as PyStoG uses.
    """
    q = np.asarray(q_A, dtype=np.float64)
    x = (q - qmin) / (qmax - qmin)
    return np.where((q >= qmin) & (q <= qmax), np.sinc(x), 0.0)


def sine_matrix(q_A: np.ndarray, r_A: np.ndarray, qmin: float, qmax: float, lorch: bool = False) -> np.ndarray:
    """``(nq, nr)`` matrix T with ``G = F @ T`` = 2/pi * trapezoid over qmin <= Q <= qmax of
    F(Q) W(Q) sin(Q r).  Rows of Q outside [qmin, qmax] are zero."""
    q = np.asarray(q_A, dtype=np.float64)
    inside = (q >= qmin) & (q <= qmax)
    w = np.zeros_like(q)
    w[inside] = trapezoid_weights(q[inside])
    if lorch:
        w *= lorch_window(q, qmin, qmax)
    return (2 / np.pi) * w[:, None] * np.sin(np.outer(q, np.asarray(r_A, dtype=np.float64)))


def g_from_fq(q_A, fq, r_A, qmin: float | None = None, qmax: float | None = None, lorch: bool = False):
    """G(r) ``(..., nr)`` from F(Q) = Q[S(Q) - 1] ``(..., nq)`` (batched over leading axes)."""
    xp = get_array_module(fq)
    q = np.asarray(q_A, dtype=np.float64)
    qmin = float(q.min()) if qmin is None else qmin
    qmax = float(q.max()) if qmax is None else qmax
    t = xp.asarray(sine_matrix(q, r_A, qmin, qmax, lorch), dtype=fq.dtype if fq.dtype.kind == "f" else np.float64)
    return fq @ t


def g_from_sq(q_A, sq, r_A, qmin: float | None = None, qmax: float | None = None, lorch: bool = False):
    """G(r) from S(Q): ``G = 2/pi int Q [S(Q) - 1] sin(Q r) dQ`` (the last step of the ad hoc chain)."""
    xp = get_array_module(sq)
    return g_from_fq(q_A, (sq - 1) * xp.asarray(q_A, dtype=sq.dtype), r_A, qmin, qmax, lorch)


def _projector_factors(basis: np.ndarray, w: np.ndarray, rtol: float = 1e-10):
    """``(U, Z)`` with the dQ-weighted least-squares projector onto span(basis) = U @ Z.T.

    P = V (V^T W V)^+ V^T W; a rank-revealing SVD of W^1/2 V handles collinear columns (for one
    element the self-scattering column equals the Q^1 column).
    """
    sw = np.sqrt(w)
    u, s, _ = np.linalg.svd(sw[:, None] * basis, full_matrices=False)
    keep = s > rtol * s[0]
    ur = u[:, keep]
    safe = np.where(sw > 0, sw, 1.0)
    return ur / safe[:, None], ur * sw[:, None]


def correction_basis(q_A: np.ndarray, degree: int, selfscatter_shape: np.ndarray) -> np.ndarray:
    """``(nq, degree + 1)``: Q P_j(u) for j < degree (span = {Q, ..., Q^degree}; Legendre P_j of Q
    mapped onto [-1, 1] for conditioning) and the self-scattering shape in F(Q) units."""
    q = np.asarray(q_A, dtype=np.float64)
    u = 2 * (q - q[0]) / (q[-1] - q[0]) - 1
    v = q[:, None] * np.polynomial.legendre.legvander(u, degree - 1)
    return np.concatenate([v, selfscatter_shape[:, None]], axis=1)


@dataclass(frozen=True, eq=False)
class PDFOperator:
    """The transform's matrices for one (Q grid, parameters), built once and reused.

    Attributes
    ----------
    sel : slice of the input Q bins used (qmin <= Q <= qmaxinst)
    q_A : (nq,) those Q values, 1/A
    r_A : (nr,) r grid, A
    r_low_A : (N_LOWR,) r points of the low-r check, [rpoly, lowr_max]
    q_top_A : (ntop,) Q points of the high-Q F(Q) check
    matrix : (nq, nr + N_LOWR + ntop + 1) float64, ``I @ matrix`` = [N G(r) | N G(r_low) | N F(q_top) | N]
    f2avg, favg2 : (nq,) <f>^2 and <f^2>
    to_fq : (nq,) Q / <f>^2 (I -> N F before the correction)
    proj_u, proj_z : factors of the correction's projector P = U Z^T (F_corrected = F - (F @ Z) @ U^T)
    degree : float, rpoly * qmaxinst / pi
    params : the parameters it was built from (for the store's attrs)
    """

    sel: slice
    q_A: np.ndarray
    r_A: np.ndarray
    r_low_A: np.ndarray
    q_top_A: np.ndarray
    matrix: np.ndarray
    f2avg: np.ndarray
    favg2: np.ndarray
    to_fq: np.ndarray
    proj_u: np.ndarray
    proj_z: np.ndarray
    degree: float
    params: dict
    _device: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def nr(self) -> int:
        return self.r_A.size

    @property
    def columns(self) -> dict[str, slice]:
        """Column ranges of :attr:`matrix` (and of :func:`linear_transform`'s output)."""
        nr, nl, nt = self.r_A.size, self.r_low_A.size, self.q_top_A.size
        return {"G": slice(0, nr), "G_low": slice(nr, nr + nl), "F_top": slice(nr + nl, nr + nl + nt),
                "scale": slice(nr + nl + nt, nr + nl + nt + 1)}

    def matrix_for(self, xp, dtype):
        """:attr:`matrix` as an array of module ``xp`` and ``dtype``, converted once per device."""
        key = (xp.__name__, np.dtype(dtype).str, _device_id(xp))
        with self._lock:
            m = self._device.get(key)
            if m is None:
                m = xp.asarray(self.matrix.astype(dtype))
                self._device[key] = m
        return m


def _device_id(xp) -> int:
    if xp is np:
        return -1
    return int(xp.cuda.runtime.getDevice())


def clip_limits(q_A: np.ndarray, qmin: float, qmax: float, qmaxinst: float | None = None):
    """Q limits (1/A) clipped to the data's range ``q_A[0]..q_A[-1]``, as PDFgetX3 does.

    Returns ``(qmin, qmax, qmaxinst, notes)``; ``notes`` lists what was clipped ("qmax 31.5 ->
    31.490"), empty when nothing was.  ``qmaxinst`` defaults to ``qmax``.  Limits that cannot be
    right raise a one-line :class:`PDFParameterError`: qmax not above qmin, qmaxinst below qmax,
    a limit more than ``UNIT_MIXUP_FACTOR`` times beyond the data's end (Q in 1/nm given as 1/A),
    or a range that misses the data.
    """
    q_A = np.asarray(q_A, dtype=np.float64)
    if q_A.ndim != 1 or q_A.size < 2 or not np.all(np.diff(q_A) > 0):
        raise PDFParameterError("pdf: the Q grid must be 1-D and strictly increasing")
    qmaxinst = qmax if qmaxinst is None else qmaxinst
    if not qmin < qmax:
        raise PDFParameterError(f"pdf.qmin ({qmin}) must be below pdf.qmax ({qmax})")
    if qmaxinst < qmax:
        raise PDFParameterError(f"pdf.qmaxinst ({qmaxinst}) must be >= pdf.qmax ({qmax})")
    lo, hi = float(q_A[0]), float(q_A[-1])
    for name, value in (("qmax", qmax), ("qmaxinst", qmaxinst)):
        if value > UNIT_MIXUP_FACTOR * hi:
            raise PDFParameterError(f"pdf.{name} = {value} 1/A is more than {UNIT_MIXUP_FACTOR:g}x the data's end "
                                    f"(Q = {hi:.3f} 1/A): Q limits are in 1/A, not 1/nm")
    if qmin >= hi or qmax <= lo:
        raise PDFParameterError(f"pdf.qmin..qmax = {qmin}..{qmax} 1/A misses the data, which span "
                                f"Q = {lo:.3f}..{hi:.3f} 1/A")
    notes = []
    clipped = {}
    for name, value, bound in (("qmin", qmin, max(qmin, lo)), ("qmax", qmax, min(qmax, hi)),
                               ("qmaxinst", qmaxinst, min(qmaxinst, hi))):
        clipped[name] = bound
        if bound != value and not (name == "qmaxinst" and qmaxinst == qmax):
            notes.append(f"{name} {value:g} -> {bound:.4g}")
    return clipped["qmin"], clipped["qmax"], clipped["qmaxinst"], notes


def check_parameters(q_A: np.ndarray, composition: str, qmin: float, qmax: float, rpoly: float, rmin: float,
                     rmax: float, rstep: float, qmaxinst: float | None = None, lowr_max: float | None = None) -> float:
    """Raise a one-line :class:`PDFParameterError` for parameters that cannot work on this Q grid
    (limits already inside the data, see :func:`clip_limits`); return the effective qmaxinst."""
    q_A = np.asarray(q_A, dtype=np.float64)
    qmaxinst = qmax if qmaxinst is None else qmaxinst
    if q_A.ndim != 1 or q_A.size < 2 or not np.all(np.diff(q_A) > 0):
        raise PDFParameterError("pdf: the Q grid must be 1-D and strictly increasing")
    if not rpoly > 0:
        raise PDFParameterError(f"pdf.rpoly must be > 0 (got {rpoly})")
    if lowr_max is not None and not lowr_max > rpoly:
        raise PDFParameterError(f"pdf.lowr_max ({lowr_max}) must be above pdf.rpoly ({rpoly})")
    if not qmin < qmax:
        raise PDFParameterError(f"pdf.qmin ({qmin}) must be below pdf.qmax ({qmax})")
    if qmaxinst < qmax:
        raise PDFParameterError(f"pdf.qmaxinst ({qmaxinst}) must be >= pdf.qmax ({qmax})")
    if qmaxinst > q_A[-1] + 1e-9 or qmin < q_A[0] - 1e-9:
        raise PDFParameterError(f"pdf: Q limits {qmin}..{qmaxinst} 1/A outside the data "
                                f"({q_A[0]:.3f}..{q_A[-1]:.3f} 1/A); clip them with clip_limits")
    if not (rmin < rmax and rstep > 0 and rmin >= 0):
        raise PDFParameterError(f"pdf r grid needs 0 <= rmin < rmax and rstep > 0 (got {rmin}, {rmax}, {rstep})")
    if (rmax - rmin) / rstep > MAX_R_POINTS:
        raise PDFParameterError(f"pdf r grid has {(rmax - rmin) / rstep:.0f} points (> {MAX_R_POINTS}): "
                                f"rmin, rmax, rstep are in A")
    nfit = int(np.count_nonzero((q_A >= qmin) & (q_A <= qmaxinst)))
    degree = rpoly * qmaxinst / np.pi
    if nfit < int(np.ceil(degree)) + 8:
        raise PDFParameterError(f"pdf: only {nfit} Q points between qmin={qmin} and qmaxinst={qmaxinst} 1/A for a "
                                f"correction polynomial of degree {degree:.1f} (rpoly={rpoly})")
    parse_composition(composition)
    return qmaxinst


def build_operator(q_A: np.ndarray, composition: str, qmin: float, qmax: float, rpoly: float,
                   rmin: float, rmax: float, rstep: float, qmaxinst: float | None = None,
                   lorch: bool = False, lowr_max: float | None = None, scale_method: str = "pdfgetx3") -> PDFOperator:
    """Check the parameters against the data's Q grid (1/A, increasing) and build the matrices.

    Q in 1/A, r in A; ``qmaxinst`` defaults to ``qmax``, ``lowr_max`` to ``2 rpoly``;
    ``scale_method`` is how each pattern's N is found (``SCALE_METHODS``, module docstring).
    Q limits beyond the data are clipped to it with one warning line (:func:`clip_limits`).

    Raises :class:`PDFParameterError` (one line) before anything is computed.
    """
    q_all = np.asarray(q_A, dtype=np.float64)
    if scale_method not in SCALE_METHODS:
        raise PDFParameterError(f"pdf.scale_method must be one of {SCALE_METHODS} (got {scale_method!r})")
    qmin, qmax, qmaxinst, notes = clip_limits(q_all, qmin, qmax, qmaxinst)
    if notes:
        log.warning("pdf: Q limits clipped to the data (Q = %.4g..%.4g 1/A), as PDFgetX3 does: %s",
                    q_all[0], q_all[-1], ", ".join(notes))
    qmaxinst = check_parameters(q_all, composition, qmin, qmax, rpoly, rmin, rmax, rstep, qmaxinst, lowr_max)
    lowr_max = 2 * rpoly if lowr_max is None else lowr_max
    i0 = int(np.searchsorted(q_all, qmin - 1e-12, side="left"))
    i1 = int(np.searchsorted(q_all, qmaxinst + 1e-12, side="right"))
    sel = slice(i0, i1)
    q = q_all[sel]
    f2avg, favg2 = form_factor_moments(composition, q)
    to_fq = q / f2avg

    # the correction: weighted LS projector onto {Q^1..Q^n, Q <f^2>/<f>^2}, n blended floor/ceil
    w_fit = trapezoid_weights(q)
    degree = rpoly * qmaxinst / np.pi
    lo, hi = max(1, int(np.floor(degree))), max(1, int(np.ceil(degree)))
    frac = 0.0 if hi == lo else degree - lo
    shape = q * favg2 / f2avg
    u_lo, z_lo = _projector_factors(correction_basis(q, lo, shape), w_fit)
    if frac > 0:
        u_hi, z_hi = _projector_factors(correction_basis(q, hi, shape), w_fit)
        proj_u = np.concatenate([(1 - frac) * u_lo, frac * u_hi], axis=1)
        proj_z = np.concatenate([z_lo, z_hi], axis=1)
    else:
        proj_u, proj_z = u_lo, z_lo

    def corrected(t):  # rows: F (before correction) -> columns t applied after the correction
        # F_c = F - (F @ Z) @ U^T, so F_c @ t = F @ (t - Z (U^T t)); scaled by Q/<f>^2 (I -> N F)
        return to_fq[:, None] * (t - proj_z @ (proj_u.T @ t))

    r = r_grid(rmin, rmax, rstep)
    r_low = np.linspace(rpoly, lowr_max, N_LOWR)
    inside = np.flatnonzero(q <= qmax + 1e-12)
    top = inside[q[inside] >= qmin + (1 - FQ_TOP_FRACTION) * (qmax - qmin)]
    if top.size > FQ_TOP_POINTS:
        top = top[np.linspace(0, top.size - 1, FQ_TOP_POINTS).round().astype(int)]
    pick = np.zeros((q.size, top.size))
    pick[top, np.arange(top.size)] = 1.0
    if scale_method == "pdfgetx3":
        # N = dQ-weighted mean of I/<f^2> over Q >= 0.6 qmaxinst ("S -> 1 at high Q", PDFgetX3)
        wh = np.where(q >= PDFGETX3_HIGHQ_START * qmaxinst, w_fit, 0.0)
        scale_vec = wh / favg2 / np.sum(wh)
    else:
        # N: least squares of N <f^2> to I over the upper half of the fit range (dQ weights)
        wh = np.where(q >= qmin + HIGHQ_FRACTION * (qmaxinst - qmin), w_fit, 0.0)
        scale_vec = wh * favg2 / np.sum(wh * favg2 * favg2)
    matrix = np.concatenate([corrected(sine_matrix(q, r, qmin, qmax, lorch)),
                             corrected(sine_matrix(q, r_low, qmin, qmax, lorch)),
                             corrected(pick), scale_vec[:, None]], axis=1)
    params = {"composition": composition, "qmin": qmin, "qmax": qmax, "qmaxinst": qmaxinst, "rpoly": rpoly,
              "rmin": rmin, "rmax": rmax, "rstep": rstep, "lorch": bool(lorch), "lowr_max": lowr_max,
              "poly_degree": degree, "scale_method": scale_method}
    return PDFOperator(sel=sel, q_A=q, r_A=r, r_low_A=r_low, q_top_A=q[top], matrix=matrix, f2avg=f2avg,
                       favg2=favg2, to_fq=to_fq, proj_u=proj_u, proj_z=proj_z, degree=degree, params=params)


# ------------------------------------------------------------------------------------------
# applying it
# ------------------------------------------------------------------------------------------
def linear_transform(intensity, op: PDFOperator, background=None, bgscale: float = 1.0, dtype=np.float32):
    """The linear part of the transform of patterns ``(..., nq_in)`` on the operator's input grid.

    Returns ``(..., ncol)`` = [N G(r) | N G(r_low) | N F(q_top) | N] (column ranges in
    ``op.columns``): one GEMM with ``op.matrix`` in ``dtype`` (numpy, or cupy when ``intensity``
    is a cupy array).  ``background`` ``(nq_in,)``, scaled by ``bgscale``, is subtracted first
    (by linearity, as ``bgscale * (background @ matrix)``).
    """
    xp = get_array_module(intensity)
    lead = intensity.shape[:-1]
    flat = intensity.reshape(-1, intensity.shape[-1])[:, op.sel]
    if flat.dtype != dtype:
        flat = flat.astype(dtype)
    m = op.matrix_for(xp, dtype)
    y = flat @ m
    if background is not None and bgscale != 0:
        b = xp.asarray(to_host(background).astype(np.float64)[op.sel] @ op.matrix, dtype=dtype)
        y -= b * bgscale
    return y.reshape(*lead, m.shape[1])


@dataclass
class PDFResult:
    """Batched PDF result, leading axes ``(...)`` as the input's.

    r_A (nr,) A; G (..., nr) float32 in 1/A^2 (None from :func:`finish_parts` without G);
    scale (...) the self-scattering level N (intensity
    per atom); ok (...) bool, False where the pattern scattered too weakly (G = 0, figures NaN);
    fq_highq_rms (...) rms of F(Q) over the top 10 % of [qmin, qmax] (1/A);
    lowr_slope (...) slope of G(r) on [rpoly, lowr_max] fitted through the origin (-4 pi rho0, 1/A^3);
    lowr_residual (...) rms of G(r) about that line there (1/A^2).
    """

    r_A: np.ndarray
    G: object
    scale: object
    ok: object
    fq_highq_rms: object
    lowr_slope: object
    lowr_residual: object


def finish(linear, op: PDFOperator, normalization: str = "per-pattern", fixed_scale: float = 1.0,
           min_scale: float = 0.0) -> PDFResult:
    """Divide the linear part ``(..., ncol)`` of :func:`linear_transform` by the scale and compute
    the quality figures.

    ``normalization="per-pattern"`` divides by each pattern's own N (patterns with N <=
    ``min_scale`` give G = 0 and NaN figures); ``"fixed"`` divides everything by ``fixed_scale``
    (a linear map; no pattern is masked).
    """
    col = op.columns
    return finish_parts(linear[..., col["scale"]][..., 0], linear[..., col["G_low"]], linear[..., col["F_top"]],
                        op, linear[..., col["G"]], normalization=normalization, fixed_scale=fixed_scale,
                        min_scale=min_scale)


def finish_parts(n, g_low, f_top, op: PDFOperator, g=None, *, normalization: str = "per-pattern",
                 fixed_scale: float = 1.0, min_scale: float = 0.0) -> PDFResult:
    """:func:`finish` on separate parts of the linear output: N ``(...)``, N G(r_low) ``(..., nlow)``,
    N F(q_top) ``(..., ntop)`` and optionally N G(r) ``(..., nr)`` (``G`` is None without it).

    The parts may come from a reconstruction (pdf-then-recon): the map is linear, so the FBP of
    each frame's parts is the voxel's parts.
    """
    if normalization not in NORMALIZATIONS:
        raise PDFParameterError(f"pdf.normalization must be one of {NORMALIZATIONS} (got {normalization!r})")
    xp = get_array_module(n)
    if normalization == "fixed":
        ok = xp.ones(n.shape, dtype=bool)
        denom = xp.full(n.shape, fixed_scale, dtype=n.dtype)
    else:
        ok = n > max(min_scale, 0.0)
        denom = xp.where(ok, n, xp.ones_like(n))
    inv = (1 / denom)[..., None]
    out_g = None
    if g is not None:
        out_g = xp.where(ok[..., None], g * inv, 0).astype(xp.float32, copy=False)
    glow = g_low.astype(xp.float64) * inv
    r_low = xp.asarray(op.r_low_A)
    slope = (glow @ r_low) / float(op.r_low_A @ op.r_low_A)
    resid = xp.sqrt(xp.mean((glow - slope[..., None] * r_low) ** 2, axis=-1))
    fq_rms = xp.sqrt(xp.mean((f_top.astype(xp.float64) * inv) ** 2, axis=-1))
    nan = xp.asarray(np.nan)
    return PDFResult(r_A=op.r_A, G=out_g, scale=n, ok=ok, fq_highq_rms=xp.where(ok, fq_rms, nan),
                     lowr_slope=xp.where(ok, slope, nan), lowr_residual=xp.where(ok, resid, nan))


def compute_pdf(intensity, op: PDFOperator, min_scale: float = 0.0, *, background=None, bgscale: float = 1.0,
                normalization: str = "per-pattern", fixed_scale: float = 1.0, dtype=np.float32) -> PDFResult:
    """Patterns ``(..., nq_in)`` on the operator's input Q grid -> :class:`PDFResult` (G (..., nr)).

    numpy in, numpy out; cupy in, cupy out (the GEMM runs on the GPU).
    """
    lin = linear_transform(intensity, op, background=background, bgscale=bgscale, dtype=dtype)
    return finish(lin, op, normalization=normalization, fixed_scale=fixed_scale, min_scale=min_scale)


def pattern_scale(intensity, op: PDFOperator, background=None, bgscale: float = 1.0):
    """The self-scattering level N of each pattern ``(..., nq_in) -> (...)`` (float64; the dot
    product runs in the patterns' own float dtype, so a float32 slice is not copied)."""
    xp = get_array_module(intensity)
    v = op.matrix[:, op.columns["scale"]][:, 0]
    dt = intensity.dtype if intensity.dtype.kind == "f" else np.float64
    n = (intensity[..., op.sel] @ xp.asarray(v, dtype=dt)).astype(xp.float64)
    if background is not None and bgscale != 0:
        n = n - bgscale * float(to_host(background).astype(np.float64)[op.sel] @ v)
    return n


def structure_functions(intensity, op: PDFOperator, scale=None, background=None, bgscale: float = 1.0):
    """``(S, F_raw, F)`` ``(..., nq)`` on ``op.q_A`` for inspecting a few patterns (numpy, float64).

    S = 1 + (I/N - <f^2>)/<f>^2, F_raw = Q (S - 1) before the polynomial correction, F after it.
    ``scale`` defaults to each pattern's own N.
    """
    i = np.asarray(intensity, dtype=np.float64)[..., op.sel]
    if background is not None:
        i = i - bgscale * np.asarray(background, dtype=np.float64)[op.sel]
    n = np.einsum("...q,q->...", i, op.matrix[:, op.columns["scale"]][:, 0]) if scale is None else \
        np.asarray(scale, dtype=np.float64)
    s = 1 + (i / np.asarray(n)[..., None] - op.favg2) / op.f2avg
    f_raw = op.q_A * (s - 1)
    f = f_raw - (f_raw @ op.proj_z) @ op.proj_u.T
    return s, f_raw, f


@functools.lru_cache(maxsize=8)
def _cached_operator(q_key: bytes, composition, qmin, qmax, rpoly, rmin, rmax, rstep, qmaxinst, lorch, lowr_max,
                     scale_method):
    q = np.frombuffer(q_key, dtype=np.float64)
    return build_operator(q, composition, qmin, qmax, rpoly, rmin, rmax, rstep, qmaxinst, lorch, lowr_max, scale_method)


def operator_for(q_A: np.ndarray, params) -> PDFOperator:
    """Cached :func:`build_operator` from a config section with the PDF fields."""
    return _cached_operator(np.ascontiguousarray(q_A, dtype=np.float64).tobytes(), params.composition,
                            params.qmin, params.qmax, params.rpoly, params.rmin, params.rmax, params.rstep,
                            params.qmaxinst, getattr(params, "lorch", False), getattr(params, "lowr_max", None),
                            getattr(params, "scale_method", "pdfgetx3"))


# ------------------------------------------------------------------------------------------
# what the workflow needs around the transform
# ------------------------------------------------------------------------------------------
def radial_to_q_A(radial: np.ndarray, unit: str, wavelength_A: float) -> np.ndarray:
    """Radial bin positions of an integration unit (``q_nm^-1``, ``q_A^-1``, ``2th_deg``) as Q (1/A)."""
    if unit == "q_nm^-1":
        return radial / 10.0
    if unit == "q_A^-1":
        return radial
    if unit == "2th_deg":
        return 4 * np.pi * np.sin(np.deg2rad(radial) / 2) / wavelength_A
    raise ValueError(f"cannot convert radial unit {unit!r} to Q")


def gemm_dtype(xp):
    """Precision of the transform's GEMM: float32 on a GPU (its fast path); float64 on the CPU, where
    an sgemm's rounding follows how the BLAS library was started (threads, kernels) and a resumed
    run would differ from an uninterrupted one in the last bits of G."""
    return np.float32 if xp is not np else np.float64


def rescale_fixed(g_fixed, scale, ok, fixed_scale: float):
    """G of each voxel from G computed with one fixed scale (``pdf-then-recon``): the transform is
    linear given N, so ``G = G_fixed * fixed_scale / N`` per voxel, and 0 where not ``ok``.
    ``g_fixed (..., nr)``, ``scale``, ``ok`` ``(...)``; float32 out."""
    xp = get_array_module(g_fixed)
    n = xp.asarray(scale, dtype=xp.float64)
    factor = xp.where(ok, fixed_scale / xp.where(ok, n, 1.0), 0.0)
    return (g_fixed * factor[..., None]).astype(xp.float32)
