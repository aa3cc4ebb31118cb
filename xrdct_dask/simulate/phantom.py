"""Synthetic XRD-CT scans with ground truth: phases, phantom, pencil-beam forward model, CBF frames.

Physics, in the order the data are made:

1. **Phase patterns** I(Q) per atom, from structures by the Debye scattering equation
   ``I(Q) = 1/N [sum_i f_i^2 + 2 sum_{i<j} f_i f_j sin(Q r_ij)/(Q r_ij) exp(-sigma^2 Q^2 / 2)]``
   with X-ray form factors f(Q) from xraydb and pair-distance broadening sigma ~ 0.1 A (thermal +
   static disorder), for nanocrystalline clusters (fcc Ni a = 3.524 A,
   bcc Fe a = 2.8665 A, rock-salt NaCl a = 5.640 A) and a random-packed amorphous Si cluster.
   Q runs to 25 1/A, so the patterns carry what the PDF needs.
2. **Phantom**: ``nz`` slices of ``nx x nx`` voxels; each phase has its own map of volume fractions.
3. **Pencil beam**: at (z, omega, x) the 1D pattern is the sum along the beam of fraction x pattern,
   i.e. the Radon transform of each phase map (skimage ``radon``) times the phase pattern.
   Attenuation is off.
4. **Detector**: each 1D pattern is rendered to a 2D frame with pyFAI ``calcfrom1d`` (solid angle
   and polarization applied), scaled by a fluctuating monitor, Poisson-sampled, with module gaps
   (-1), bad pixels (-2), zingers and single-crystal spots, and written as byte-offset CBF by
   fabio in acquisition order (raster or snake).

:func:`simulate_scan` writes a ready-to-run folder: frames, PONI, mask, monitor, scan table, ground
truth (``truth.npz``) and ``workflow.yaml``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import xraydb
from scipy.spatial.distance import cdist, pdist
from skimage.transform import radon, rotate

ENERGY_KEV = 90.0


WAVELENGTH_A = 12.398419843320026 / ENERGY_KEV


Q_GRID_A = np.linspace(0.2, 26.0, 6000)  # 1/A, fine enough for sharp-ish nanocrystal peaks


BEAMSTOP_Q_A = 0.9  # 1/A: pixels below are in the beamstop's shadow (masked, no counts)


# --------------------------------------------------------------------------------------------
# 1. structures and their Debye patterns
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    """A phase of the phantom: name, formula, kind, and its pattern per atom on ``Q_GRID_A``."""

    name: str
    composition: str
    kind: str  # "crystalline" | "amorphous"
    lattice_a: float | None
    q_A: np.ndarray = field(repr=False)
    intensity: np.ndarray = field(repr=False)


def cubic_cluster(a: float, basis: list[tuple[str, tuple[float, float, float]]], radius: float):
    """Atoms of a cubic crystal (lattice ``a`` in A, fractional ``basis``) inside a sphere."""
    n = int(np.ceil(radius / a)) + 1
    g = np.arange(-n, n + 1)
    cells = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(float)
    pos, el = [], []
    for element, frac in basis:
        p = (cells + np.asarray(frac)) * a
        keep = np.linalg.norm(p, axis=1) <= radius
        pos.append(p[keep])
        el += [element] * int(keep.sum())
    return np.concatenate(pos), np.array(el)


def random_packed_cluster(element: str, radius: float, density: float, dmin: float, seed: int = 7):
    """Random sequential addition of hard spheres (min distance ``dmin`` A) at ``density`` atoms/A^3."""
    rng = np.random.default_rng(seed)
    target = int(density * 4 / 3 * np.pi * radius**3)
    pos = np.empty((target, 3))
    n = 0
    for _ in range(200 * target):
        p = rng.uniform(-radius, radius, 3)
        if p @ p > radius**2:
            continue
        if n and np.min(np.sum((pos[:n] - p) ** 2, axis=1)) < dmin**2:
            continue
        pos[n] = p
        n += 1
        if n == target:
            break
    return pos[:n], np.array([element] * n)


def form_factor(element: str, q_A: np.ndarray) -> np.ndarray:
    """Atomic X-ray form factor f0(Q) in electrons (xraydb; its argument is sin(theta)/lambda = Q/4pi)."""

    return np.asarray(xraydb.f0(element, q_A / (4 * np.pi)), dtype=np.float64)


def debye_pattern(positions: np.ndarray, elements: np.ndarray, q_A: np.ndarray, sigma_A: float,
                  rbin_A: float = 0.002) -> np.ndarray:
    """Debye scattering per atom of a cluster, with Gaussian pair-distance broadening ``sigma_A``.

    Pair distances are histogrammed (``rbin_A``) per element pair, then
    ``I(Q) = 1/N [sum_i f_i^2 + 2 sum_pairs f_a f_b h_ab(r) sinc(Q r) exp(-sigma^2 Q^2 / 2)]``.
    """

    kinds = sorted(set(elements))
    f = {k: form_factor(k, q_A) for k in kinds}
    n = len(elements)
    total = sum(f[k] ** 2 * np.count_nonzero(elements == k) for k in kinds)
    dw = np.exp(-0.5 * (sigma_A * q_A) ** 2)
    for i, a in enumerate(kinds):
        for b in kinds[i:]:
            pa, pb = positions[elements == a], positions[elements == b]
            d = pdist(pa) if a == b else cdist(pa, pb).ravel()
            hist, edges = np.histogram(d, bins=np.arange(0.5, d.max() + 2 * rbin_A, rbin_A))
            r = 0.5 * (edges[1:] + edges[:-1])
            nz = hist > 0
            r, hist = r[nz], hist[nz].astype(float)
            s = np.zeros_like(q_A)
            for k in range(0, q_A.size, 500):  # sum_r h(r) sin(Qr)/(Qr), chunked over Q
                qr = np.outer(q_A[k:k + 500], r)
                s[k:k + 500] = (np.sin(qr) / qr) @ hist
            total = total + 2 * f[a] * f[b] * s * dw
    return total / n


@functools.cache
def phase_library() -> tuple[Phase, ...]:
    """The four phases of the phantom (computed once per process, ~2 s)."""
    q = Q_GRID_A
    specs = [
        ("Ni", "Ni", "crystalline", 3.524, cubic_cluster(3.524, [("Ni", (0, 0, 0)), ("Ni", (0.5, 0.5, 0)),
                                                               ("Ni", (0.5, 0, 0.5)), ("Ni", (0, 0.5, 0.5))], 20.0),
         0.09),
        ("Fe", "Fe", "crystalline", 2.8665, cubic_cluster(2.8665, [("Fe", (0, 0, 0)), ("Fe", (0.5, 0.5, 0.5))], 20.0),
         0.09),
        ("NaCl", "NaCl", "crystalline", 5.640, cubic_cluster(5.640, [
            ("Na", (0, 0, 0)), ("Na", (0.5, 0.5, 0)), ("Na", (0.5, 0, 0.5)), ("Na", (0, 0.5, 0.5)),
            ("Cl", (0.5, 0, 0)), ("Cl", (0, 0.5, 0)), ("Cl", (0, 0, 0.5)), ("Cl", (0.5, 0.5, 0.5))], 20.0), 0.10),
        ("aSi", "Si", "amorphous", None, random_packed_cluster("Si", 16.0, 0.05, 2.25), 0.15),
    ]
    return tuple(Phase(name, comp, kind, a, q, debye_pattern(pos, el, q, sig))
                 for name, comp, kind, a, (pos, el), sig in specs)


ATTENUATION_NODE_DEG = 4.0  # 2theta between the simulator's attenuated projections


def two_theta_of_q_deg(q_A) -> np.ndarray:
    """Scattering angle 2theta (degrees) of Q (1/A) at the simulator's energy."""
    return np.rad2deg(2 * np.arcsin(np.clip(np.asarray(q_A, np.float64) * WAVELENGTH_A / (4 * np.pi), 0, 1)))


def _rotated_path_integrals(mu: np.ndarray, phi_deg: float, upsample: int = 2) -> np.ndarray:
    """``integral_0^inf mu(v + t e) dt`` (pixels) at every pixel centre, ``e`` at ``phi_deg`` from +x
    (x right, y up): ``mu`` upsampled, turned (skimage ``rotate``) so that ``e`` points down the rows,
    summed down each column (a cell's own half included), turned back and averaged over each
    pixel's sub-pixels.  (The simulator's own discretisation: the correction in
    :mod:`xrdct_dask.sinogram.absorption` samples along the rays instead.)"""
    fine = np.kron(mu, np.ones((upsample, upsample)))
    turn = -90.0 - phi_deg  # counter-clockwise turn bringing the direction phi onto -y (down the rows)
    r = rotate(fine, turn, order=1, mode="constant", cval=0.0, preserve_range=True)
    cum = (np.cumsum(r[::-1], axis=0)[::-1] - 0.5 * r) / upsample  # sum below each cell, in pixels
    back = rotate(cum, -turn, order=1, mode="edge", preserve_range=True)
    n = mu.shape[0]
    return back.reshape(n, upsample, n, upsample).mean(axis=(1, 3))


def attenuated_projections(maps: np.ndarray, mu: np.ndarray, omega_deg: np.ndarray, two_theta_deg,
                           azimuths: int = 16) -> np.ndarray:
    """Pencil-beam projections of each phase map of one slice with self-absorption:
    ``(nphase, n, n) -> (nphase, len(two_theta_deg), nomega, n)``.

    At angle theta the beam travels along ``b = (sin theta, -cos theta)`` (x right, y up; the
    detector row along ``(cos theta, sin theta)``, skimage's ``radon`` convention); a voxel's
    scattering at 2theta reaches a downstream detector attenuated by ``mu`` (per pixel) along the
    beam up to it and along the exit ray ``cos(2theta) b + sin(2theta) cos(eta) e_u`` (the in-plane
    part, its length ``rho``; the 3D path ``1 / rho`` times longer, the slice unchanged along z),
    averaged over ``azimuths`` values of eta; the attenuated map is then projected (skimage
    ``radon``) at that angle alone."""
    nphase, n, _ = maps.shape
    tts = np.deg2rad(np.atleast_1d(np.asarray(two_theta_deg, np.float64)))
    eta = (np.arange(azimuths) + 0.5) * np.pi / azimuths
    out = np.zeros((nphase, tts.size, omega_deg.size, n))
    for w, th_deg in enumerate(omega_deg):
        th = np.deg2rad(th_deg)
        b = np.array([np.sin(th), -np.cos(th)])
        eu = np.array([np.cos(th), np.sin(th)])
        entry = np.exp(-_rotated_path_integrals(mu, np.rad2deg(np.arctan2(-b[1], -b[0]))))
        for k, tt in enumerate(tts):
            leave = np.zeros((n, n))
            for e in eta:
                d = np.cos(tt) * b + np.sin(tt) * np.cos(e) * eu
                rho = np.hypot(*d)
                leave += np.exp(-_rotated_path_integrals(mu, np.rad2deg(np.arctan2(d[1], d[0]))) / rho)
            att = entry * leave / azimuths
            for p in range(nphase):
                out[p, k, w] = radon(maps[p] * att, theta=[th_deg], circle=True)[:, 0]
    return out


# --------------------------------------------------------------------------------------------
# 2. phantom and 3. pencil-beam forward model
# --------------------------------------------------------------------------------------------
def make_phantom(nz: int, nx: int) -> np.ndarray:
    """Volume fractions ``(nphase, nz, nx, nx)`` (axes: phase, z, y, x) of the library's phases.

    A disk-shaped sample (radius 0.42 nx) of amorphous matrix holding a Ni disk, an Fe bar and a
    NaCl ellipse that drift slowly with z; fractions sum to 1 inside the sample, 0 outside.
    """
    y, x = np.mgrid[0:nx, 0:nx].astype(float)
    c = (nx - 1) / 2
    xr, yr = (x - c) / nx, (y - c) / nx  # in units of the field of view
    maps = np.zeros((4, nz, nx, nx))
    for z in range(nz):
        t = z / max(nz - 1, 1)
        sample = xr**2 + yr**2 <= 0.42**2
        ni = (xr + 0.17 - 0.04 * t) ** 2 + (yr + 0.12) ** 2 <= 0.12**2
        fe = (np.abs(xr - 0.15) <= 0.08) & (np.abs(yr + 0.10 + 0.05 * t) <= 0.16)
        nacl = ((xr - 0.02) / 0.22) ** 2 + ((yr - 0.22 + 0.03 * t) / 0.09) ** 2 <= 1
        crystals = [ni & sample, fe & sample & ~ni, nacl & sample & ~ni & ~fe]
        for k, m in enumerate(crystals):
            maps[k, z] = m
        maps[3, z] = sample & ~(crystals[0] | crystals[1] | crystals[2])
    return maps


def omega_angles_deg(nomega: int, omega_range_deg: float = 180.0) -> np.ndarray:
    """Rotation angles of the scan: ``nomega`` steps over ``omega_range_deg``, endpoint excluded."""
    return np.arange(nomega) * (omega_range_deg / nomega)


def project(maps: np.ndarray, omega_deg: np.ndarray) -> np.ndarray:
    """Line integrals of each map (pencil beam, voxel units): ``(..., nx, nx) -> (..., nomega, nx)``.

    Uses skimage's ``radon`` (``circle=True``), so the sinogram axis convention is skimage's: the
    rotation axis sits at pixel ``nx // 2``.
    """

    flat = maps.reshape(-1, *maps.shape[-2:])
    out = np.stack([radon(m, theta=omega_deg, circle=True).T for m in flat])
    return out.reshape(*maps.shape[:-2], omega_deg.size, maps.shape[-1])
