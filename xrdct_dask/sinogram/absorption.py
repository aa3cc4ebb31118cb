"""Self-absorption correction of XRD-CT slices (``sinogram.absorption``), numpy or cupy.

A dense sample attenuates the pencil beam on its way to every voxel and the scattered beam on its
way out.  With ``mu(y, x)`` the linear attenuation coefficient of the slice (per pixel, the same
at the incident and the scattered energy: elastic scattering) and ``f_q`` the scattering density
in bin q, the frame at angle theta and translation u records

    I(theta, u, q) = integral over the ray of f_q(v) a(v; theta, 2theta_q) dl,
    a(v; theta, 2theta) = exp(-integral of mu upstream of v)
                          * mean over eta of exp(-integral of mu from v along k_out(2theta, eta) / rho(eta)).

**Geometry and approximations.**  The project's axes (:mod:`xrdct_dask.recon`): voxel (i, j) at
``x = j - n // 2``, ``y = n // 2 - i`` from the rotation axis; the ray of detector position ``u``
at angle theta is ``x cos(theta) + y sin(theta) = u`` and the beam travels along
``b = (sin(theta), -cos(theta))`` (down the image at omega = 0; ASTRA's ray direction).  The
detector is downstream: the scattered ray leaves at 2theta from the beam, at azimuth eta around
it, ``k_out = cos(2theta) b + sin(2theta) (cos(eta) e_u + sin(eta) e_z)``.  The slice is taken as
unchanged along z over the height the exit ray climbs (a 2D model), so the exit path is the
in-plane ray of direction ``cos(2theta) b + sin(2theta) cos(eta) e_u`` (normalised by its length
``rho(eta)``), its 3D length ``1 / rho`` times the in-plane one; the azimuthal integration averages
over a whole ring, uniformly in eta (midpoint rule over ``azimuths`` angles; a ring cut by the
detector's edge is averaged as if whole).  At 2theta = 0 the entry and exit paths make the whole
chord and ``a = T(theta, u)``, the transmission, for every voxel of the ray; at high energy the
exit tilt grows with q (2theta = 33 degrees at Q = 26 1/A and 90 keV).

**Correction: effective transmission of the scattering voxels, iterated.**  Start from
``f0 = R(I / T)`` (R the workflow's reconstruction; exact at 2theta = 0); then, with the current
estimate (negative voxels clipped), each ray's effective transmission
``c(theta, u, q) = P[f_q a] / P[f_q]`` (P the forward projection: the attenuation of the ray
weighted by where it scatters), and ``f_{k+1} = R(I / c)``.  The true ``f`` is a fixed point
(``I / c = P[f]``), and ``c`` depends on ``f`` only through the weights along each ray, so one or
two iterations suffice.  ``a`` is linear in 2theta between nodes ``node_step_deg`` apart.
``exit="beam"`` keeps the small-angle limit (``f0``: every frame divided by its transmission).

``mu`` comes from a transmission channel (:func:`mu_from_transmission`: FBP of ``-ln(T / T0)``) or,
without one, from the reconstructed total scattering (:func:`mu_from_scattering`: attenuation taken
proportional to the scattering power, the strongest voxels attenuating as a given mu).
"""

from __future__ import annotations

import numpy as np

from xrdct_dask.backend import get_array_module, ndimage_of, to_host
from xrdct_dask.recon import fbp, project
from xrdct_dask.sinogram import fill_bad_frames, shift_projections

NODE_STEP_DEG = 5.0  # 2theta between the nodes where the voxel attenuation is computed
ANGLES_PER_BATCH = 32  # beam angles whose paths are computed together (and held: ~100 maps of the slice)
AZIMUTHS = 6  # exit azimuths averaged (midpoint rule over [0, pi): cos(eta) covers both sides of the beam)


def direction_maps(mu, phis_deg) -> object:
    """``D(v) = integral_0^inf mu(v + t e) dt`` (pixels) for every voxel centre ``v`` of ``mu`` (n, n) and
    each direction ``e = (cos phi, sin phi)`` (x to the right, y up): ``(len(phis_deg), n, n)``.

    For each direction, ``mu`` is sampled (bilinear, 0 outside) on a grid aligned with it (rows
    across, columns along, unit spacing), summed cumulatively from the far end (a sample's own
    cell counts half) and read back at every voxel (bilinear); all directions in one call of
    ``map_coordinates`` each way.  On ``mu``'s device."""
    xp = get_array_module(mu)
    nd = ndimage_of(xp)
    n = mu.shape[0]
    r = n // 2
    phis = np.deg2rad(np.atleast_1d(np.asarray(phis_deg, np.float64)))
    ndir = phis.size
    ex, ey = (xp.asarray(np.cos(phis))[:, None, None], xp.asarray(np.sin(phis))[:, None, None])
    half = r + 2  # mu is 0 outside the reconstruction disc, and so is every voxel's scattering
    k = xp.arange(-half, half + 1, dtype=xp.float64)
    s, t = k[None, :, None], k[None, None, :]  # rows: across (s), columns: along (t)
    x, y = -ey * s + ex * t, ex * s + ey * t
    sampled = nd.map_coordinates(xp.asarray(mu, xp.float64), xp.stack([r - y, x + r]), order=1, mode="constant",
                                 cval=0.0)  # (ndir, 2 half + 1, 2 half + 1)
    cum = xp.cumsum(sampled[..., ::-1], axis=-1)[..., ::-1] - 0.5 * sampled  # sum over t' > t, half of t
    i = xp.arange(n, dtype=xp.float64)
    vx, vy = i[None, None, :] - r, r - i[None, :, None]  # voxel (i, j): x = j - r, y = r - i
    sv, tv = -ey * vx + ex * vy, ex * vx + ey * vy
    d = xp.broadcast_to(xp.arange(ndir, dtype=xp.float64)[:, None, None], (ndir, n, n))
    return nd.map_coordinates(cum, xp.stack([d, sv + half, tv + half]), order=1, mode="nearest")


def path_integrals(mu, direction) -> object:
    """:func:`direction_maps` for one direction given as a unit vector ``(ex, ey)``: (n, n)."""
    return direction_maps(mu, [np.rad2deg(np.arctan2(direction[1], direction[0]))])[0]


class _Directions:
    """:func:`direction_maps` of one attenuation map on a grid of directions ``step_deg`` apart,
    computed when first asked (a batch at a time), read between grid directions by linear
    interpolation, kept while the beam angles that need them are processed (in order)."""

    def __init__(self, mu, step_deg: float):
        self.mu, self.step = mu, float(step_deg)
        self.maps: dict[int, object] = {}

    def _index(self, phis_deg) -> set[int]:
        return {int(np.floor(p / self.step)) + o for p in np.atleast_1d(phis_deg) for o in (0, 1)}

    def ensure(self, phis_deg, keep_only: bool = False) -> None:
        """Compute the grid directions around ``phis_deg`` not held yet (one batch); ``keep_only``:
        drop every other one (the angles to come need the directions around theirs)."""
        idx = self._index(phis_deg)
        if keep_only:
            for k in set(self.maps) - idx:
                del self.maps[k]
        missing = sorted(idx - set(self.maps))
        if missing:
            dtype = get_array_module(self.mu).float32
            for k, m in zip(missing, direction_maps(self.mu, np.array(missing) * self.step)):
                self.maps[k] = m.astype(dtype)

    def __call__(self, phi_deg: float):
        k = int(np.floor(phi_deg / self.step))
        w = phi_deg / self.step - k
        return (1 - w) * self.maps[k] + w * self.maps[k + 1]


def voxel_attenuation(mu, theta_rad: float, two_theta_rad, azimuths: int = AZIMUTHS, directions=None):
    """``a(v; theta, 2theta)`` of the module docstring for every voxel and each 2theta given:
    ``(len(two_theta_rad), n, n)`` on ``mu``'s device.  ``directions``: a :class:`_Directions` cache
    (default: every path computed exactly for this angle)."""
    xp = get_array_module(mu)
    b = np.array([np.sin(theta_rad), -np.cos(theta_rad)])  # the beam's direction
    eu = np.array([np.cos(theta_rad), np.sin(theta_rad)])  # along the detector row (translation)
    eta = (np.arange(azimuths) + 0.5) * np.pi / azimuths
    tts = np.atleast_1d(np.asarray(two_theta_rad, np.float64))
    phi = lambda d: float(np.rad2deg(np.arctan2(d[1], d[0])))  # noqa: E731
    exits = [(k, phi(np.cos(tt) * b + np.sin(tt) * np.cos(e) * eu),
              float(np.hypot(*(np.cos(tt) * b + np.sin(tt) * np.cos(e) * eu)))) for k, tt in enumerate(tts)
             for e in (eta if tt else eta[:1])]  # 2theta = 0: one exit, along the beam
    phis = [phi(-b)] + [p for _, p, _ in exits]
    if directions == "phis":  # the directions this angle needs (degrees), nothing computed
        return np.mod(phis, 360.0)
    if directions is None:
        maps = direction_maps(mu, phis)
        get = dict(zip(range(len(phis)), maps)).__getitem__
        lookup = {p: i for i, p in enumerate(phis)}
        path = lambda p: get(lookup[p])  # noqa: E731
    else:
        directions.ensure(np.mod(phis, 360.0))
        path = lambda p: directions(float(np.mod(p, 360.0)))  # noqa: E731
    entry = xp.exp(-path(phis[0]))
    leave = [0] * tts.size
    count = [0] * tts.size
    for k, p, rho in exits:
        leave[k] = leave[k] + xp.exp(-path(p) / rho)
        count[k] += 1
    return xp.stack([entry * leave[k] / count[k] for k in range(tts.size)])


def two_theta_deg(radial, unit: str, wavelength_A: float) -> np.ndarray:
    """Scattering angle 2theta (degrees) of radial bins in ``unit`` (q_nm^-1, q_A^-1, 2th_deg)."""
    radial = np.asarray(radial, np.float64)
    if unit == "2th_deg":
        return radial
    q_A = radial / 10.0 if unit == "q_nm^-1" else radial
    if unit not in ("q_nm^-1", "q_A^-1"):
        raise ValueError(f"unit must be q_nm^-1, q_A^-1 or 2th_deg, got {unit!r}")
    if not wavelength_A > 0:
        raise ValueError("2theta from q needs the wavelength (the PONI has none)")
    return np.rad2deg(2.0 * np.arcsin(np.clip(q_A * wavelength_A / (4.0 * np.pi), 0.0, 1.0)))


def _nodes(two_theta: np.ndarray, step_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2theta nodes (degrees) spanning ``two_theta`` and, per bin, the lower node and its weight."""
    lo, hi = float(np.min(two_theta)), float(np.max(two_theta))
    count = max(1, int(np.ceil((hi - lo) / step_deg)) + 1)
    if count == 1:
        return np.array([lo]), np.zeros(two_theta.size, np.int64), np.zeros(two_theta.size)
    nodes = np.linspace(lo, hi, count)
    k = np.clip(np.searchsorted(nodes, two_theta, side="right") - 1, 0, count - 2)
    return nodes, k, np.clip((two_theta - nodes[k]) / (nodes[1] - nodes[0]), 0.0, 1.0)


def transmission_of(mu, omega_deg, center: float, nx: int):
    """The transmission ``exp(-P[mu])`` ``(nomega, nx)`` of an attenuation map (n, n) on a detector of
    ``nx`` bins with the axis at ``center`` (the project's forward projector)."""
    xp = get_array_module(mu)
    th = np.deg2rad(np.asarray(omega_deg, np.float64))
    line = project(xp.asarray(mu, xp.float32)[..., None], np.cos(th), np.sin(th), center, nx)[..., 0]
    return xp.exp(-line)


def absorption_reconstruct(sino, omega_deg, mu, two_theta, reconstruct, *, center: float, iterations: int = 2,
                           exit: str = "scattering-angle", azimuths: int = AZIMUTHS,
                           node_step_deg: float = NODE_STEP_DEG):
    """Reconstruct a sinogram block corrected for self-absorption (module docstring).

    Parameters
    ----------
    sino : (nomega, nx, nq) float, numpy or cupy: the prepared (attenuated) sinograms
    omega_deg : (nomega,) angles, degrees
    mu : (nx, nx) attenuation per pixel (the slice's, same grid and axis as the reconstruction)
    two_theta : (nq,) scattering angle of each bin, degrees
    reconstruct : ``reconstruct(sino (nomega, nx, nq)) -> (nx, nx, nq)``, the workflow's algorithm
    center : the rotation axis in detector pixels (the reconstruction's)
    iterations : effective-transmission updates after the first estimate (0: ``I / T`` only)
    exit : ``scattering-angle`` (the exit path at 2theta, averaged over azimuth) or ``beam``
        (the small-angle limit: every frame divided by its transmission)

    Returns
    -------
    (nx, nx, nq) float32 on the input's device.
    """
    xp = get_array_module(sino)
    if sino.ndim != 3:
        raise ValueError(f"a sinogram block is (nomega, nx, nq), got shape {sino.shape}")
    nomega, nx, nq = sino.shape
    mu = xp.asarray(mu, xp.float32)
    if mu.shape != (nx, nx):
        raise ValueError(f"the attenuation map is {tuple(mu.shape)} but the slice is {nx} x {nx}")
    two_theta = np.asarray(to_host(two_theta), np.float64).ravel()
    if two_theta.size != nq:
        raise ValueError(f"{two_theta.size} scattering angles for a block of {nq} q bins")
    if exit not in ("scattering-angle", "beam"):
        raise ValueError(f"exit must be scattering-angle or beam, got {exit!r}")
    sino = xp.asarray(sino, xp.float32)
    trans = transmission_of(mu, omega_deg, center, nx).astype(xp.float32)  # (nomega, nx)
    f = reconstruct(sino / trans[..., None])
    if exit == "beam" or iterations <= 0:
        return f
    th = np.deg2rad(np.asarray(omega_deg, np.float64))
    cos_t, sin_t = np.cos(th), np.sin(th)
    nodes, k, t = _nodes(two_theta, node_step_deg)
    kk, tt = xp.asarray(k), xp.asarray(t, xp.float32)
    kk_hi = xp.asarray(np.minimum(k + 1, len(nodes) - 1))
    step = min(1.0, 180.0 / nomega)  # directions of the paths: finer than the scan's angular step
    for _ in range(iterations):
        pos = xp.maximum(xp.asarray(f, xp.float32), 0)
        plain = project(pos, cos_t, sin_t, center, nx)  # (nomega, nx, nq): P[f]
        weighted = xp.empty_like(plain)
        directions = _Directions(mu, step)
        order = np.argsort(np.mod(th, 2 * np.pi), kind="stable")  # in angle order: the paths' cache slides
        for pos_in_order, w in enumerate(order):
            if pos_in_order % ANGLES_PER_BATCH == 0:  # the paths of the next angles, in one batch
                batch = order[pos_in_order:pos_in_order + ANGLES_PER_BATCH]
                directions.ensure(np.concatenate([voxel_attenuation(mu, th[v], np.deg2rad(nodes), azimuths, "phis")
                                                  for v in batch]), keep_only=True)
            a = voxel_attenuation(mu, th[w], np.deg2rad(nodes), azimuths, directions).astype(xp.float32)
            a = xp.ascontiguousarray(xp.moveaxis(a, 0, -1))  # (n, n, nodes)
            a_q = a[..., kk]  # each bin between its two nodes: (n, n, nq)
            a_q *= 1 - tt
            a_q += tt * a[..., kk_hi]
            a_q *= pos
            weighted[w] = project(a_q, cos_t[w:w + 1], sin_t[w:w + 1], center, nx)[0]
        # rays through no scattering (air, clipped noise) keep the transmission of the whole chord
        floor = 1e-3 * xp.max(plain, axis=(0, 1), keepdims=True)
        c = xp.where(plain > floor, weighted / xp.maximum(plain, floor), trans[..., None])
        c = xp.clip(c, 1e-6, None).astype(xp.float32)
        f = reconstruct(sino / c)
    return f


def mu_from_transmission(transmission, frame_ok, omega_deg, center: float, air: float | None = None,
                         air_columns: int = 2, shifts_px=None):
    """Attenuation map (nx, nx) per pixel: FBP of ``-ln(T / T0)`` of a transmission sinogram
    (nomega, nx) (monitor-normalised diode readings; ``frame_ok`` (nomega, nx) bool: bad frames are
    filled from their neighbours), with the slice's axis ``center`` and jitter ``shifts_px``.
    ``air``: T0, the reading without sample; default the median of the first and last
    ``air_columns`` columns (which must be air, as for the edge background).  Negative voxels
    (noise) are set to 0.  Returns ``(mu, T0)``."""
    xp = get_array_module(transmission)
    t = xp.asarray(transmission, xp.float64)
    nomega, nx = t.shape
    ok = xp.asarray(frame_ok, bool) & xp.isfinite(t) & (t > 0)
    if air is None:
        if not 1 <= air_columns <= nx // 2 - 1:
            raise ValueError(f"the air columns must be 1 .. nx // 2 - 1 = {nx // 2 - 1}, got {air_columns}")
        edges = xp.concatenate([t[:, :air_columns], t[:, nx - air_columns:]], axis=1)
        good = edges[xp.concatenate([ok[:, :air_columns], ok[:, nx - air_columns:]], axis=1)]
        air = float(xp.median(good)) if good.size else float("nan")
    if not (np.isfinite(air) and air > 0):
        raise ValueError(f"the transmission without sample (T0) must be > 0, got {air}")
    line = -xp.log(xp.where(ok, t, 1.0) / air)
    filled, _ = fill_bad_frames(line[..., None].astype(xp.float32), ok)
    if shifts_px is not None:
        filled = shift_projections(filled, shifts_px)
    mu = fbp(filled, omega_deg, center=center)[..., 0]
    return xp.maximum(mu, 0), air


def mu_from_scattering(total, omega_deg, center: float, mu_max_per_px: float, iterations: int = 3,
                       percentile: float = 99.0):
    """Attenuation map (nx, nx) per pixel estimated from the q-summed sinogram (nomega, nx) (prepared:
    background subtracted, bad frames filled) when no transmission was recorded.

    Assumes the attenuation proportional to the total scattering power, the strongest voxels
    (the ``percentile`` of the disc's positive voxels) attenuating as ``mu_max_per_px``:
    ``mu = mu_max S / S_ref``.  ``S`` is reconstructed from the sinogram divided by the
    transmission of the current ``mu`` (the small-angle limit), ``iterations`` times, so that a
    dense sample's own attenuation does not hollow its estimate."""
    xp = get_array_module(total)
    total = xp.asarray(total, xp.float32)
    nx = total.shape[1]
    mu = xp.zeros((nx, nx), xp.float32)
    for _ in range(max(1, iterations)):
        s = fbp((total / transmission_of(mu, omega_deg, center, nx))[..., None], omega_deg, center=center)[..., 0]
        pos = s[s > 0]
        ref = float(xp.percentile(pos, percentile)) if pos.size else 0.0
        if not ref > 0:
            return mu
        mu = (mu_max_per_px * xp.clip(s / ref, 0.0, None)).astype(xp.float32)
    return mu
