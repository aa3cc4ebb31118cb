"""I(Q) -> S(Q) -> F(Q) -> G(r), the ad hoc way of PDFgetX3 (Juhas et al., J. Appl. Cryst. 2013),
batched: every step is a matrix product over the last axis, so a whole slice of voxels is
transformed with a few GEMMs (numpy here, cupy on a GPU).

For a sample of composition c with mean form factors <f> and <f^2> (xraydb), the measured
coherent intensity per atom is  I_m = N [<f^2> + <f>^2 (S - 1)] + b(Q)  with an unknown scale N
and a slowly varying background b.  Hence, with y = I_m / <f>^2:

    y(Q) = N <f^2>/<f>^2 + N (S - 1) + b/<f>^2
    P(Q) = least-squares polynomial of degree n = round(rpoly * qmaxinst / pi) fit to y
           (it holds the smooth terms; by construction it only alters G(r) below ~rpoly)
    N    = <P, <f^2>/<f>^2> / <<f^2>/<f>^2, <f^2>/<f>^2>       (self-scattering level)
    S - 1 = (y - P) / N,   F(Q) = Q (S - 1)
    G(r) = 2/pi * integral_qmin^qmax F(Q) sin(Q r) dQ          (trapezoid, as one matrix)

Everything but the division by N is linear in I(Q).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module

_FORMULA = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")


class PDFParameterError(ValueError):
    """A PDF parameter that cannot work, named in one line."""


def parse_composition(formula: str) -> dict[str, float]:
    """``"NaCl"`` -> ``{"Na": 1, "Cl": 1}``; ``"Ni0.8Fe0.2"`` -> fractions as given.

    Raises :class:`PDFParameterError` for an unknown element.
    """
    import xraydb

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
    return out


def form_factor_moments(composition: str, q_A: np.ndarray):
    """(<f>^2, <f^2>) of a composition at Q (1/A), from xraydb's f0 (Waasmaier-Kirfel)."""
    import xraydb

    comp = parse_composition(composition)
    total = sum(comp.values())
    f_mean = np.zeros_like(q_A, dtype=np.float64)
    f2_mean = np.zeros_like(q_A, dtype=np.float64)
    for el, n in comp.items():
        f = np.asarray(xraydb.f0(el, q_A / (4 * np.pi)), dtype=np.float64)
        f_mean += n / total * f
        f2_mean += n / total * f * f
    return f_mean**2, f2_mean


@dataclass(frozen=True, eq=False)
class PDFOperator:
    """The linear parts of the transform, built once per (Q grid, parameters).

    Attributes
    ----------
    q_A : (nq_used,) Q values used (qmin <= Q <= qmaxinst)
    sel : (nq,) bool, which input bins are used
    inv_f2 : (nq_used,) 1/<f>^2
    ratio : (nq_used,) <f^2>/<f>^2
    residual : (nq_used, nq_used) I - V (V^T V)^-1 V^T, the polynomial-removal projector
    proj_p : (nq_used, nq_used) V (V^T V)^-1 V^T, the polynomial fit
    sine : (nq_used, nr) 2/pi * w_Q * Q * sin(Q r) restricted to Q <= qmax (trapezoid weights)
    r_A : (nr,) r grid
    degree : polynomial degree
    """

    q_A: np.ndarray
    sel: np.ndarray
    inv_f2: np.ndarray
    ratio: np.ndarray
    residual: np.ndarray
    proj_p: np.ndarray
    sine: np.ndarray
    r_A: np.ndarray
    degree: int


def r_grid(rmin: float, rmax: float, rstep: float) -> np.ndarray:
    return np.arange(rmin, rmax + 0.5 * rstep, rstep)


def build_operator(q_A: np.ndarray, composition: str, qmin: float, qmax: float, rpoly: float,
                   rmin: float, rmax: float, rstep: float, qmaxinst: float | None = None,
                   lorch: bool = False) -> PDFOperator:
    """Check the parameters against the data's Q range and build the transform's matrices."""
    q_A = np.asarray(q_A, dtype=np.float64)
    qmaxinst = qmax if qmaxinst is None else qmaxinst
    if rpoly <= 0:
        raise PDFParameterError(f"pdf.rpoly must be > 0 (got {rpoly})")
    if qmin >= qmax:
        raise PDFParameterError(f"pdf.qmin ({qmin}) must be below pdf.qmax ({qmax})")
    if qmaxinst < qmax:
        raise PDFParameterError(f"pdf.qmaxinst ({qmaxinst}) must be >= pdf.qmax ({qmax})")
    if qmaxinst > q_A.max() + 1e-9:
        raise PDFParameterError(f"pdf.qmax{'inst' if qmaxinst != qmax else ''} = {qmaxinst} 1/A is above the "
                                f"data, which end at Q = {q_A.max():.3f} 1/A")
    if qmin < q_A.min() - 1e-9:
        raise PDFParameterError(f"pdf.qmin = {qmin} 1/A is below the data, which start at Q = {q_A.min():.3f} 1/A")
    if rmin >= rmax or rstep <= 0:
        raise PDFParameterError(f"pdf r grid needs rmin < rmax and rstep > 0 (got {rmin}, {rmax}, {rstep})")
    sel = (q_A >= qmin) & (q_A <= qmaxinst)
    q = q_A[sel]
    if q.size < 8:
        raise PDFParameterError(f"only {q.size} Q points between qmin={qmin} and qmaxinst={qmaxinst} 1/A")
    f2avg, favg2 = form_factor_moments(composition, q)
    degree = max(1, int(round(rpoly * qmaxinst / np.pi)))
    # polynomial basis on a scaled variable for conditioning (Legendre on [-1, 1])
    u = 2 * (q - q[0]) / (q[-1] - q[0]) - 1
    v = np.polynomial.legendre.legvander(u, degree)
    proj_p = v @ np.linalg.pinv(v)
    residual = np.eye(q.size) - proj_p
    r = r_grid(rmin, rmax, rstep)
    w = np.gradient(q)  # trapezoid-like weights on a possibly non-uniform grid
    w = np.where(q <= qmax, w, 0.0)
    if lorch:
        w = w * np.sinc(q / qmax)  # sin(pi Q/Qmax) / (pi Q/Qmax)
    sine = (2 / np.pi) * (w * q)[:, None] * np.sin(np.outer(q, r))
    return PDFOperator(q_A=q, sel=sel, inv_f2=1 / f2avg, ratio=favg2 / f2avg, residual=residual, proj_p=proj_p,
                       sine=sine, r_A=r, degree=degree)


@dataclass
class PDFResult:
    """Batched PDF result, leading axes as the input's.

    r_A (nr,), G (..., nr), fq (..., nq_used) F(Q), scale (...) N, and quality figures:
    ``fq_highq_rms`` the rms of F(Q) over the top 10 % of Q (noise / truncation level) and
    ``lowr_residual`` the rms of G(r) + 4 pi rho r style slope misfit below rpoly (0 if unknown).
    """

    r_A: np.ndarray
    G: np.ndarray
    fq: np.ndarray
    q_A: np.ndarray
    scale: np.ndarray
    fq_highq_rms: np.ndarray


def pattern_scale(intensity, op: PDFOperator):
    """The self-scattering level N of each pattern ``(..., nq) -> (...)`` (see module docstring)."""
    xp = get_array_module(intensity)
    i2 = xp.asarray(intensity, dtype=xp.float64)[..., xp.asarray(op.sel)]
    p = (i2 * xp.asarray(op.inv_f2)) @ xp.asarray(op.proj_p).T
    ratio = xp.asarray(op.ratio)
    return (p @ ratio) / (ratio @ ratio)


def compute_pdf(intensity, op: PDFOperator, min_scale: float = 0.0) -> PDFResult:
    """Transform patterns ``(..., nq)`` on the operator's Q grid to G(r) ``(..., nr)``.

    Patterns whose scale N is not above ``min_scale`` (no sample in the voxel) give G = 0.
    """
    xp = get_array_module(intensity)
    lead = intensity.shape[:-1]
    i2 = xp.asarray(intensity, dtype=xp.float64).reshape(-1, intensity.shape[-1])[:, xp.asarray(op.sel)]
    y = i2 * xp.asarray(op.inv_f2)[None, :]
    ratio = xp.asarray(op.ratio)
    p = y @ xp.asarray(op.proj_p).T  # smooth part
    scale = (p @ ratio) / (ratio @ ratio)
    osc = y @ xp.asarray(op.residual).T  # y - P
    ok = scale > max(min_scale, 0.0)
    safe = xp.where(ok, scale, 1.0)
    q = xp.asarray(op.q_A)
    s_minus_1 = xp.where(ok[:, None], osc / safe[:, None], 0.0)
    fq = s_minus_1 * q[None, :]
    g = s_minus_1 @ xp.asarray(op.sine)  # sine already holds 2/pi * w_Q * Q * sin(Qr)
    top = q >= q[0] + 0.9 * (q[-1] - q[0])
    hq = xp.sqrt(xp.mean(fq[:, top] ** 2, axis=1))
    return PDFResult(r_A=op.r_A, G=g.reshape(*lead, -1).astype(xp.float32), fq=fq.reshape(*lead, -1),
                     q_A=op.q_A, scale=scale.reshape(lead), fq_highq_rms=hq.reshape(lead))


@functools.lru_cache(maxsize=8)
def _cached_operator(q_key: bytes, composition, qmin, qmax, rpoly, rmin, rmax, rstep, qmaxinst, lorch):
    q = np.frombuffer(q_key, dtype=np.float64)
    return build_operator(q, composition, qmin, qmax, rpoly, rmin, rmax, rstep, qmaxinst, lorch)


def operator_for(q_A: np.ndarray, params) -> PDFOperator:
    """Cached :func:`build_operator` from a config section with the PDF fields."""
    return _cached_operator(np.ascontiguousarray(q_A, dtype=np.float64).tobytes(), params.composition,
                            params.qmin, params.qmax, params.rpoly, params.rmin, params.rmax, params.rstep,
                            params.qmaxinst, getattr(params, "lorch", False))
