"""The integration plan: pyFAI geometry turned into sparse matrices and per-pixel corrections.

pyFAI owns the geometry, the pixel splitting and the corrections; this module only asks it for
them (``setup_sparse_integrator``, ``solidAngleArray``, ``polarization``) and packs them in the
layouts the engines stream through:

* CSR (bins x pixels), as pyFAI builds it: one row per radial bin, or with azimuthal sectors
  (``npt_azim > 1``) one row per (chi, q) bin, chi-major (row ``k * npt_rad + q`` is sector k, bin
  q): pyFAI's 2D full-split matrix (``integrate2d_ng``'s, whose rows are q-major) with its rows
  permuted, so that the engines, which know only rows, give ``(npt_azim, npt_rad)`` patterns.
* CSC (the same matrix by pixel): one column per pixel, so a frame can be consumed in pixel order
  (straight out of the decoder) and scattered into the ~3 bins that pixel touches.

The plan is plain numpy data, identical for the CPU and GPU engines, and cheap to pickle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import fabio
import numpy as np
import pyFAI
import pyFAI.units
import scipy.sparse as sp
from pyFAI.ext.splitPixelFullCSR import FullSplitCSR_2d
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from xrdct_dask.io.pyfai_config import PyFAIConfigError, read_pyfai_config

PIXEL_SPLITS = ("no", "bbox", "full")


@dataclass(frozen=True, eq=False)
class IntegrationPlan:
    """Everything an engine needs to integrate frames of one geometry.

    Shapes: ``npix = ny * nx``, ``nbins = npt_azim * npt_rad`` (rows of the matrix, chi-major);
    ``nnz`` is the number of (bin, pixel) pairs.

    Attributes
    ----------
    radial : float64 (npt_rad,)   radial bin centres in ``unit``
    shape : (ny, nx)              frame shape
    csr_data, csr_indices, csr_indptr : f32 (nnz,), i32 (nnz,), i32 (nbins+1,)
        pixel-splitting coefficients c_qp (fraction of pixel p falling in bin q), masked pixels dropped.
    csc_data, csc_rows, csc_indptr : f32 (nnz,), i32 (nnz,), i64 (npix+1,)
        the same matrix stored by pixel.
    norm : f32 (npix,)            flat * solid angle * polarization (0 where masked)
    dark : f32 (npix,) or None    dark current, counts
    mask : bool (npix,)           static mask (file, detector, invalid corrections)
    static_sums : f64 (4, nbins)  sums over all unmasked pixels of [c, c*norm, c^2*norm^2, c*dark]
    azimuthal : f64 (npt_azim,) or None
        sector centres chi in degrees (pyFAI's chi); None: one sector (a 1D plan, of the whole ring
        or of ``azimuth_range``)
    """

    radial: np.ndarray
    unit: str
    shape: tuple[int, int]
    csr_data: np.ndarray
    csr_indices: np.ndarray
    csr_indptr: np.ndarray
    csc_data: np.ndarray
    csc_rows: np.ndarray
    csc_indptr: np.ndarray
    norm: np.ndarray
    dark: np.ndarray | None
    mask: np.ndarray
    static_sums: np.ndarray
    split: str = "full"
    checksum: str = field(default="")
    azimuthal: np.ndarray | None = None

    @property
    def npt_rad(self) -> int:
        return self.radial.size

    @property
    def npt_azim(self) -> int:
        return 1 if self.azimuthal is None else self.azimuthal.size

    @property
    def pattern_shape(self) -> tuple[int, ...]:
        """One frame's pattern: ``(npt_rad,)``, or ``(npt_azim, npt_rad)`` with sectors."""
        return (self.npt_rad,) if self.azimuthal is None else (self.npt_azim, self.npt_rad)

    @property
    def nbins(self) -> int:
        """Rows of the matrix: ``npt_azim * npt_rad``."""
        return self.npt_azim * self.npt_rad

    @property
    def npix(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nnz(self) -> int:
        return self.csr_data.size

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.csr_data, self.csr_indices, self.csr_indptr, self.csc_data,
                                      self.csc_rows, self.csc_indptr, self.norm, self.mask))


def load_image(path: str | Path) -> np.ndarray:
    """Any fabio-readable image (EDF, TIFF, CBF, NPY) as a 2D array."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)

    with fabio.open(str(path)) as img:
        return np.asarray(img.data)


def load_poni(poni):
    """An AzimuthalIntegrator from a PONI path, or an ``integration.json`` of pyFAI-calib2 /
    pyFAI-integrate (its geometry; :mod:`xrdct_dask.io.pyfai_config`), or an integrator (returned as is)."""

    if isinstance(poni, AzimuthalIntegrator):
        return poni

    path = Path(poni)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PONI file not found")
    if path.suffix.lower() == ".json":
        try:
            cfg = read_pyfai_config(path)
        except PyFAIConfigError as err:
            raise ValueError(str(err)) from None
        if cfg.poni is None:
            raise ValueError(f"{path}: the configuration holds no geometry (poni)")
        return pyFAI.load(cfg.poni)
    try:
        return pyFAI.load(str(path))
    except Exception as err:  # pyFAI raises a zoo of types on garbage
        raise ValueError(f"{path}: not a readable PONI file ({err})") from None


def build_plan(ai, shape: tuple[int, int], npt_rad: int, unit: str = "q_nm^-1", *, mask=None,
               dark=None, flat=None, polarization_factor: float | None = None, solid_angle: bool = True,
               split: str = "full", radial_range: tuple[float, float] | None = None, npt_azim: int = 1,
               azimuth_range: tuple[float, float] | None = None) -> IntegrationPlan:
    """Ask pyFAI for the sparse integration matrix and corrections of one geometry.

    Parameters
    ----------
    ai : pyFAI AzimuthalIntegrator
    shape : (ny, nx)
        frame shape; must match the detector of ``ai``.
    mask : array (ny, nx), nonzero = masked; OR-ed with the detector's own mask.
    dark, flat : arrays (ny, nx) in counts / relative; pixels where they are not finite are masked.
    npt_azim : azimuthal sectors; 1 = one pattern per frame (the matrix of ``integrate1d_ng``),
        more = ``(npt_azim, npt_rad)`` bins with the matrix of ``integrate2d_ng`` (same splitting).
    azimuth_range : (lo, hi) chi in degrees, pyFAI's convention (within -180..180); None: pyFAI's
        default (the whole ring for 1D; the pixels' chi extent for sectors).
    """
    if split not in PIXEL_SPLITS:
        raise ValueError(f"split must be one of {PIXEL_SPLITS}, got {split!r}")
    det_shape = tuple(ai.detector.max_shape) if ai.detector.max_shape is not None else None
    if det_shape is not None and tuple(shape) != det_shape:
        raise ValueError(f"the PONI's detector is {det_shape[0]} x {det_shape[1]} pixels "
                         f"but the frames are {shape[0]} x {shape[1]}")
    shape = tuple(int(s) for s in shape)
    npix = shape[0] * shape[1]

    full_mask = np.zeros(shape, dtype=bool)
    if ai.detector.mask is not None:
        full_mask |= ai.detector.mask.astype(bool)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask is {mask.shape} but the frames are {shape}")
        full_mask |= mask != 0

    norm = np.ones(shape, dtype=np.float64)
    if solid_angle:
        norm *= ai.solidAngleArray(shape)
    if polarization_factor is not None:
        norm *= ai.polarization(shape, factor=polarization_factor)
    if flat is not None:
        flat = np.asarray(flat, dtype=np.float64)
        if flat.shape != shape:
            raise ValueError(f"flat is {flat.shape} but the frames are {shape}")
        norm *= flat
    if dark is not None:
        dark = np.asarray(dark, dtype=np.float64)
        if dark.shape != shape:
            raise ValueError(f"dark is {dark.shape} but the frames are {shape}")
        full_mask |= ~np.isfinite(dark)
    full_mask |= ~np.isfinite(norm) | (norm == 0)
    norm = np.where(full_mask, 0.0, norm).astype(np.float32)
    if npt_azim < 1:
        raise ValueError(f"npt_azim must be >= 1, got {npt_azim}")

    azimuthal = None
    if npt_azim == 1 and azimuth_range is None:
        engine = ai.setup_sparse_integrator(shape, npt_rad, mask=full_mask, unit=unit, split=split, algo="CSR",
                                            pos0_range=radial_range, scale=True, empty=0.0)
        data, indices, indptr = (np.ascontiguousarray(a) for a in engine.lut)
        csr = sp.csr_matrix((data.astype(np.float32), indices.astype(np.int32), indptr.astype(np.int32)),
                            shape=(npt_rad, npix))
    else:
        csr, engine, azimuthal = _sector_matrix(ai, shape, npt_rad, npt_azim, unit, full_mask, split, radial_range,
                                                azimuth_range)
    nrows = csr.shape[0]
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csc = csr.tocsc()
    csc.sort_indices()

    c = csr.data.astype(np.float64)
    rows = np.repeat(np.arange(nrows), np.diff(csr.indptr))
    cols = csr.indices
    n = norm.ravel().astype(np.float64)[cols]
    d = np.zeros_like(c) if dark is None else np.where(full_mask, 0.0, dark).ravel()[cols]
    static = np.zeros((4, nrows))
    for k, w in enumerate((c, c * n, (c * n) ** 2, c * d)):
        static[k] = np.bincount(rows, weights=w, minlength=nrows)

    # bin centres in the requested unit (pyFAI keeps them in SI internally; `unit.scale` converts)

    centres = engine.bin_centers if azimuthal is None else engine.bin_centers0
    radial = np.asarray(centres, dtype=np.float64) * pyFAI.units.to_unit(unit).scale
    h = hashlib.sha256()
    for a in (csr.data, csr.indices, csr.indptr, norm, full_mask):
        h.update(np.ascontiguousarray(a).tobytes())
    if dark is not None:
        h.update(np.ascontiguousarray(dark, dtype=np.float32).tobytes())
    return IntegrationPlan(
        radial=radial, unit=unit, shape=shape,
        csr_data=csr.data.astype(np.float32), csr_indices=csr.indices.astype(np.int32),
        csr_indptr=csr.indptr.astype(np.int32),
        csc_data=csc.data.astype(np.float32), csc_rows=csc.indices.astype(np.int32),
        csc_indptr=csc.indptr.astype(np.int64),
        norm=norm.ravel(), dark=None if dark is None else np.where(full_mask, 0, dark).astype(np.float32).ravel(),
        mask=full_mask.ravel(), static_sums=static, split=split, checksum=h.hexdigest()[:16], azimuthal=azimuthal,
    )


def _sector_matrix(ai, shape, npt_rad: int, npt_azim: int, unit: str, mask, split: str, radial_range,
                   azimuth_range):
    """pyFAI's sparse matrix over (q, chi) bins, as ``integrate2d_ng`` (``npt_azim > 1``) or
    ``integrate1d_ng`` with an azimuth range (``npt_azim == 1``) builds it: the ranges converted by
    pyFAI's own rules (radial by the unit's scale, chi to radians on the side of the discontinuity).

    Returns ``(csr (npt_azim * npt_rad, npix) float32 with rows chi-major, pyFAI engine, chi centres
    in degrees or None)``."""
    npix = shape[0] * shape[1]
    radial_unit = pyFAI.units.to_unit(unit)
    pos0 = None if radial_range is None else tuple(float(v) / radial_unit.scale for v in radial_range)
    pos1 = None if azimuth_range is None else ai.normalize_azimuth_range(tuple(float(v) for v in azimuth_range))
    npt = npt_rad if npt_azim == 1 else (npt_rad, npt_azim)
    engine = ai.setup_sparse_integrator(shape, npt, mask=mask, pos0_range=pos0, pos1_range=pos1,
                                        unit=(radial_unit, pyFAI.units.CHI_DEG) if npt_azim > 1 else radial_unit,
                                        split=split, algo="CSR", empty=0.0, scale=False)
    data, indices, indptr = (np.ascontiguousarray(a) for a in engine.lut)
    csr = sp.csr_matrix((data.astype(np.float32), indices.astype(np.int32), indptr.astype(np.int32)),
                        shape=(npt_rad * npt_azim, npix))
    if npt_azim == 1:
        return csr, engine, None
    if split == "full":
        csr = _first_pixel_fixed(ai, shape, csr, engine, radial_unit)
    # pyFAI's rows are q-major (row q * npt_azim + k): take them in chi-major order (k * npt_rad + q)
    order = np.arange(npt_rad * npt_azim).reshape(npt_rad, npt_azim).T.ravel()
    csr = csr[order]
    return csr, engine, np.rad2deg(np.asarray(engine.bin_centers1, dtype=np.float64))


def _first_pixel_fixed(ai, shape, csr, engine, radial_unit):
    """``csr`` with the column of the first pixel pyFAI's 2D full splitting handled made right.

    pyFAI's ``FullSplitCSR_2d.calc_lut_2d`` splits each pixel in a scratch buffer made with
    ``numpy.empty`` and zeroed only after each pixel: the first pixel it handles (the first not
    masked and in range) is split with whatever the memory held, so its coefficients change from
    run to run (seen: 0.77/0.23, -0.0047/1.0047, 5e-24/1.0 for one pixel; NaN is possible), and so
    does every plan's checksum.  That pixel's coefficients are asked of pyFAI again, as the second
    of two copies of it in a matrix of the same bins (the first copy takes the stale buffer)."""
    if csr.nnz == 0:
        return csr
    first = int(csr.indices.min())  # every pixel pyFAI handles gets entries (zeros included)
    unit = (radial_unit, pyFAI.units.CHI_DEG)
    pos = np.asarray(ai.array_from_unit(shape, "corner", unit, scale=False)).reshape(-1, 4, 2)[[first, first]]
    twin = FullSplitCSR_2d(np.ascontiguousarray(pos), bins=engine.bins,
                           pos0_range=(engine.pos0_min, engine.pos0_maxin),
                           pos1_range=(engine.pos1_min, engine.pos1_maxin),
                           allow_pos0_neg=not radial_unit.positive, unit=unit, empty=0.0,
                           chiDiscAtPi=ai.chiDiscAtPi, pos1_period=pyFAI.units.CHI_DEG.period or 0.0,
                           orientation=int(ai.detector.orientation))
    data, indices, indptr = (np.asarray(a) for a in twin.lut)
    fix = sp.csr_matrix((data.astype(np.float32), indices.astype(np.int32), indptr.astype(np.int32)),
                        shape=(csr.shape[0], 2)).tocsc()[:, 1]  # the second copy: split in a clean buffer
    if not (np.isclose(twin.delta0, engine.delta0, rtol=1e-12) and np.isclose(twin.delta1, engine.delta1, rtol=1e-12)):
        raise RuntimeError("pyFAI gave the first pixel's twin other bins than the plan's")  # pyFAI changed
    csc = csr.tocsc()
    return sp.hstack((csc[:, :first], fix, csc[:, first + 1:]), format="csr", dtype=np.float32)
