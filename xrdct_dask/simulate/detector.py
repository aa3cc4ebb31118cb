"""The simulated detector: a PONI geometry, its mask, and phase patterns as the detector sees them."""

from __future__ import annotations

import numpy as np
import pyFAI
from pyFAI.detectors import Detector
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from xrdct_dask.simulate.phantom import Q_GRID_A, WAVELENGTH_A, phase_library

DETECTORS = {
    # name: (shape (ny, nx), pixel size m, binning of the Pilatus 2M it mimics)
    "pilatus2m": ((1679, 1475), 172e-6, 1),
    "small": ((209, 184), 172e-6 * 8, 8),
}


# --------------------------------------------------------------------------------------------
# 4. detector, acquisition order, files
# --------------------------------------------------------------------------------------------
def make_integrator(detector: str = "small", dist_m: float = 0.2):
    """A pyFAI integrator for a Pilatus 2M (or its 8x8-binned twin), beam near the centre."""

    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {list(DETECTORS)}, got {detector!r}")
    shape, pixel, _ = DETECTORS[detector]
    det = pyFAI.detector_factory("Pilatus2M") if detector == "pilatus2m" else \
        Detector(pixel1=pixel, pixel2=pixel, max_shape=shape)
    return AzimuthalIntegrator(dist=dist_m, poni1=0.52 * shape[0] * pixel, poni2=0.49 * shape[1] * pixel,
                               rot1=0.002, rot2=-0.001, detector=det, wavelength=WAVELENGTH_A * 1e-10)


def detector_mask(detector: str) -> np.ndarray:
    """Module gaps (1) of a Pilatus 2M, block-reduced for the binned detector."""

    gaps = pyFAI.detector_factory("Pilatus2M").mask.astype(bool)
    shape, _, b = DETECTORS[detector]
    if b == 1:
        return gaps
    return gaps[:shape[0] * b, :shape[1] * b].reshape(shape[0], b, shape[1], b).any(axis=(1, 3))


def phase_patterns_as_measured(integrator, detector: str = "small", phases=None) -> np.ndarray:
    """Each phase's pattern as the instrument records it: rendered noise-free on the detector
    (solid angle, polarization, pixel size) and integrated by ``integrator``.  ``(nphase, nbins)``,
    the basis to unmix reconstructed voxel patterns into phase fractions.  ``phases`` default the
    library's (a scan with a tube: ``SampleEnvironment.phases()``)."""
    ai = make_integrator(detector)
    shape = DETECTORS[detector][0]
    frames = np.stack([ai.calcfrom1d(Q_GRID_A * 10, p.intensity, shape=shape, dim1_unit="q_nm^-1",
                                     correctSolidAngle=True, polarization_factor=0.99)
                       for p in (phase_library() if phases is None else phases)])
    return integrator.integrate(frames).intensity


def _render(ai, shape, q_nm, pattern, scale, rng, gaps, bad, zinger_rate, spot_rate, profiles=None):
    if profiles is None:
        expected = ai.calcfrom1d(q_nm, pattern * scale, shape=shape, dim1_unit="q_nm^-1", correctSolidAngle=True,
                                 polarization_factor=0.99)
    else:  # textured phases: ``pattern`` holds the phases' amounts, ``profiles`` their counts per pixel
        expected = (scale * (pattern @ profiles)).reshape(shape)
    frame = rng.poisson(np.maximum(expected, 0)).astype(np.int32)
    if rng.random() < zinger_rate:  # cosmic rays / zingers: single hot pixels
        k = rng.integers(1, 4)
        rows, cols = rng.integers(0, shape[0], k), rng.integers(0, shape[1], k)
        frame[rows, cols] += rng.integers(10**5, 10**6, k, dtype=np.int32)
    if rng.random() < spot_rate:  # a single-crystal reflection: a small bright blob
        cy, cx = rng.integers(5, shape[0] - 5), rng.integers(5, shape[1] - 5)
        yy, xx = np.mgrid[-3:4, -3:4]
        frame[cy - 3:cy + 4, cx - 3:cx + 4] += (2e4 * np.exp(-(yy**2 + xx**2) / 2.0)).astype(np.int32)
    frame[gaps] = -1
    frame[bad] = -2
    return frame
