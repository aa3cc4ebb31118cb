"""The ASTRA toolbox as a reconstruction engine (``recon.engine: astra``) and as the tests' oracle.

Same sinograms in, same images out as :func:`xrdct_dask.recon.reconstruct`: ``(nomega, nx, nq)`` ->
``(nx, nx, nq)`` float32 on the host, zero outside the inscribed circle, in the units of the
project's FBP (a line integral of 1 over one pixel is a voxel value of 1), with the rotation axis
at ``center`` pixels from the first x (the pipeline's centre), reconstructed by ASTRA one q bin at
a time (``FBP_CUDA`` / ``SIRT_CUDA`` / ``CGLS_CUDA`` where ASTRA sees a CUDA GPU, its CPU ``FBP`` /
``SIRT`` / ``CGLS`` with the ``strip`` projector elsewhere).

**Axis convention and its mapping.**  The project (skimage's ``iradon``): image pixel ``(i, j)`` of
an ``n x n`` grid sits at ``x = j - n // 2``, ``y = n // 2 - i`` from the rotation axis; detector bin
``k`` at ``u = k - center`` (``center`` defaults to ``nx // 2``); the ray at angle ``theta``
through ``(x, y)`` meets ``u = x cos(theta) + y sin(theta)``.  ASTRA (``'parallel'``, bin width 1,
``n`` bins) puts bin ``k`` at ``u = k - (n - 1) / 2`` and the voxels of its default volume
(``create_vol_geom(n, n)``) at ``x = j - (n - 1) / 2``, ``y = (n - 1) / 2 - i``: on an even grid both
its axis and its volume sit half a pixel from ``n // 2``.  The mapping used here:

* volume: the window ``x in [-n // 2 - 1/2, n - n // 2 - 1/2]``, ``y in [n // 2 + 1/2 - n, n // 2 + 1/2]``,
  so that ASTRA's voxel ``(i, j)`` is the project's;
* detector, ``'parallel_vec'`` (SIRT, CGLS, FBP_CUDA): the detector centre moved by
  ``(n - 1) / 2 - center`` bins along the detector (ASTRA's ``geom_postalignment``);
* detector, CPU ``FBP`` (which takes only ``'parallel'``): the sinogram zero-padded so that
  ``center`` is the padded detector's centre, exactly where ``2 * center`` is an integer; the rest
  (at most a quarter pixel) is a Fourier shift of every projection (exact for band-limited data).

Uneven angles are weighted by their arcs as in the project's FBP (:func:`.fbp.angle_weights`).
"""

from __future__ import annotations

import functools

import numpy as np

from xrdct_dask.backend import to_host
from xrdct_dask.errors import XrdctError
from xrdct_dask.recon.fbp import angle_weights, block_angles

ASTRA_FILTERS = {"ramp": "ram-lak", "shepp-logan": "shepp-logan", "cosine": "cosine", "hamming": "hamming",
                 "hann": "hann", "none": "none"}


class AstraMissingError(XrdctError, RuntimeError):
    """recon.engine: astra without the ASTRA toolbox."""


def _astra():
    try:
        # lazy: astra is optional (the astra extra)
        import astra
    except ImportError:
        raise AstraMissingError("recon.engine: astra needs the ASTRA toolbox (pip install astra-toolbox), "
                                "which is not importable here") from None
    return astra


def astra_available() -> bool:
    """True when the ASTRA toolbox imports."""
    try:
        _astra()
    except AstraMissingError:
        return False
    return True


def check_astra() -> None:
    """Raise :class:`AstraMissingError` (one line) unless the ASTRA toolbox imports."""
    _astra()


@functools.cache
def astra_uses_cuda() -> bool:
    """ASTRA's CUDA algorithms are usable here (ASTRA built with CUDA and a GPU seen)."""
    try:
        return bool(_astra().use_cuda())
    except Exception:  # no driver, no device
        return False


def volume_geometry(n: int) -> dict:
    """ASTRA's volume geometry of the project's ``n x n`` grid (voxel ``(i, j)`` at ``x = j - n // 2``,
    ``y = n // 2 - i``)."""
    r = n // 2
    return _astra().create_vol_geom(n, n, -r - 0.5, n - r - 0.5, r + 0.5 - n, r + 0.5)


def vector_geometry(nd: int, theta_rad: np.ndarray, center: float) -> dict:
    """``'parallel_vec'`` geometry of ``nd`` bins with the rotation axis at bin ``center``: ASTRA's
    ``'parallel'`` one (axis at ``(nd - 1) / 2``) with its detector moved by ``(nd - 1) / 2 - center``
    bins (a point at ``u`` from the axis then falls on bin ``center + u``)."""
    astra = _astra()
    geom = astra.create_proj_geom("parallel", 1.0, nd, np.asarray(theta_rad, np.float64))
    return astra.functions.geom_postalignment(geom, (nd - 1) / 2 - float(center))


def centred_sinogram(sino: np.ndarray, center: float, reach: int = 0) -> np.ndarray:
    """``(nomega, m)``: a sinogram ``(nomega, nx)`` (axis at bin ``center``) moved onto a detector whose
    centre ``(m - 1) / 2`` is the axis: zero-padded by whole bins where ``2 * center`` is an integer,
    the remaining fraction ``f`` (``|f| <= 1/4``) applied as a Fourier shift (``out(u) = in(u + f)``);
    and padded on both sides until it reaches ``reach`` bins from the axis (the image's pixels then
    read the filtered sinogram's tails beyond the measured bins, as the project's FBP does)."""
    nomega, nx = sino.shape
    half = np.round(2.0 * center) / 2.0  # the nearest whole or half pixel
    frac = float(center) - half
    if frac:
        pad = 8  # room for the shifted tails before the circular transform wraps them
        buf = np.zeros((nomega, nx + 2 * pad))
        buf[:, pad:pad + nx] = sino
        k = np.fft.rfftfreq(buf.shape[1])
        buf = np.fft.irfft(np.fft.rfft(buf, axis=1) * np.exp(2j * np.pi * k * frac), n=buf.shape[1], axis=1)
        sino, half = buf, half + pad
    nx = sino.shape[1]
    # put `half` at (m - 1) / 2: left + half = (m - 1) / 2 with m = left + nx + right
    left = max(0, int(round(nx - 1 - 2 * half)))
    right = int(round(2 * (half + left) + 1 - (left + nx)))
    more = max(0, int(np.ceil(reach - (left + nx + right - 1) / 2)))
    return np.pad(np.asarray(sino, np.float32), ((0, 0), (left + more, right + more)))


def circle_mask(n: int) -> np.ndarray:
    """The project's reconstruction disc: ``(i - n//2)^2 + (j - n//2)^2 <= (n//2)^2``."""
    r = n // 2
    yy, xx = np.mgrid[:n, :n]
    return (yy - r) ** 2 + (xx - r) ** 2 <= r * r


def astra_reconstruct(sino, omega_deg, algorithm: str = "fbp", *, filter_name: str = "ramp",
                      center: float | None = None, iterations: int | None = None, nonneg: bool = True,
                      gpu: bool | None = None) -> np.ndarray:
    """Reconstruct every q bin of a sinogram block with ASTRA.

    Parameters
    ----------
    sino : (nomega, nx, nq) or (nomega, nx) float array (a cupy array is copied to the host)
    omega_deg : (nomega,) angles in degrees
    algorithm : fbp | sirt | cgls (iterations default to 100 SIRT, 20 CGLS; ``nonneg``: SIRT's
        ``MinConstraint`` 0, CGLS's result clipped at 0, as the project's)
    filter_name : FBP's filter (ramp is ASTRA's ``ram-lak``)
    center : rotation axis in detector pixels from the first x (default ``nx // 2``)
    gpu : ASTRA's CUDA algorithms (default: where ASTRA can use CUDA)

    Returns
    -------
    (nx, nx, nq) float32 (or (nx, nx)), axes (y, x, q), zero outside the inscribed circle.
    """
    astra = _astra()
    sino = np.asarray(to_host(sino), dtype=np.float32)
    if sino.ndim == 2:
        return astra_reconstruct(sino[..., None], omega_deg, algorithm, filter_name=filter_name, center=center,
                                 iterations=iterations, nonneg=nonneg, gpu=gpu)[..., 0]
    omega_deg = block_angles(sino, omega_deg)
    nomega, nx, nq = sino.shape
    if algorithm not in ("fbp", "sirt", "cgls"):
        raise ValueError(f"algorithm must be one of ('fbp', 'sirt', 'cgls'), got {algorithm!r}")
    if filter_name not in ASTRA_FILTERS:
        raise ValueError(f"filter must be one of {tuple(ASTRA_FILTERS)}, got {filter_name!r}")
    center = nx // 2 if center is None else float(center)
    gpu = astra_uses_cuda() if gpu is None else bool(gpu)
    theta = np.deg2rad(omega_deg)
    vol = volume_geometry(nx)
    mask = circle_mask(nx)
    if algorithm == "fbp":
        weights = angle_weights(omega_deg)
        if weights is not None:  # uneven angles: each projection by its arc, relative to the even weight
            sino = sino * (weights / (np.pi / (2 * nomega))).astype(np.float32)[:, None, None]
        if gpu:
            try:
                return _run_bins(astra, sino, vector_geometry(nx, theta, center), vol, mask, "FBP_CUDA",
                                 {"FilterType": ASTRA_FILTERS[filter_name]}, None, None)
            except Exception:  # noqa: BLE001 -- an FBP_CUDA that takes only 'parallel': the padded detector below
                pass
        padded = [centred_sinogram(sino[..., q], center, reach=nx // 2 + 2) for q in range(nq)]
        geom = astra.create_proj_geom("parallel", 1.0, padded[0].shape[1], theta)
        return _run_bins(astra, np.stack(padded, axis=-1), geom, vol, mask, "FBP_CUDA" if gpu else "FBP",
                         {"FilterType": ASTRA_FILTERS[filter_name]}, None, "strip")
    name = {"sirt": "SIRT", "cgls": "CGLS"}[algorithm] + ("_CUDA" if gpu else "")
    iterations = (100 if algorithm == "sirt" else 20) if iterations is None else int(iterations)
    options = {"MinConstraint": 0.0} if algorithm == "sirt" and nonneg else {}
    out = _run_bins(astra, sino, vector_geometry(nx, theta, center), vol, mask, name, options, iterations,
                    None if gpu else "strip")
    if algorithm == "cgls" and nonneg:
        np.maximum(out, 0, out=out)
    return out


def _run_bins(astra, sino, proj_geom, vol_geom, mask, name: str, options: dict, iterations, projector):
    """Run ASTRA algorithm ``name`` on every q bin of ``sino`` (nomega, nd, nq) with the same data
    objects; returns (n, n, nq) float32, zero outside ``mask``."""
    nq = sino.shape[2]
    n = mask.shape[0]
    out = np.zeros((n, n, nq), np.float32)
    sid = astra.data2d.create("-sino", proj_geom, 0.0)
    rid = astra.data2d.create("-vol", vol_geom, 0.0)
    mid = astra.data2d.create("-vol", vol_geom, mask.astype(np.float32))
    pid = astra.create_projector(projector, proj_geom, vol_geom) if projector else None
    cfg = astra.astra_dict(name)
    cfg["ProjectionDataId"], cfg["ReconstructionDataId"] = sid, rid
    if pid is not None:
        cfg["ProjectorId"] = pid
    if iterations is not None:  # iterative: unknowns only in the disc, as the project's projectors
        options = {**options, "ReconstructionMaskId": mid}
    cfg["option"] = options
    aid = None
    try:
        for q in range(nq):
            astra.data2d.store(sid, np.ascontiguousarray(sino[..., q]))
            astra.data2d.store(rid, 0.0)
            if aid is None or iterations is not None:  # an iterative algorithm starts afresh for every bin
                if aid is not None:
                    astra.algorithm.delete(aid)
                aid = astra.algorithm.create(cfg)
            astra.algorithm.run(aid, *(() if iterations is None else (iterations,)))
            out[..., q] = np.where(mask, astra.data2d.get(rid), 0.0)
    finally:
        if aid is not None:
            astra.algorithm.delete(aid)
        if pid is not None:
            astra.projector.delete(pid)
        astra.data2d.delete([sid, rid, mid])
    return out
