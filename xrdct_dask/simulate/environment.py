"""What surrounds a real XRD-CT sample, for the simulator: a glass tube, air, an off-centre axis.

:class:`SampleEnvironment` describes it and gives the simulator (:func:`~xrdct_dask.simulate.simulate_scan`,
``environment=``) what it needs, each with its ground truth:

* **a glass tube** (a capillary or reactor wall) around the phantom: an annulus of amorphous
  silica (:func:`glass_phase`, Debye pattern of a random Si-O packing), a phase of the sample
  like any other, optionally off the rotation axis (``tube_shift_px``), the phantom inside it;
* **air scattering** recorded at every frame, whose strength changes linearly along the
  translation x (the air path before and after the sample changes as the stage moves):
  ``air_level`` at the first x, ``air_ratio`` times that at the last; its pattern is that of a
  gas of independent N2, O2 and Ar molecules (:func:`air_pattern`: sum of f(Q)^2, Compton left
  out).  The air displaced by the sample itself (a few hundred micrometres of a beam path of
  centimetres) is neglected;
* **the rotation axis off the detector's centre** by ``axis_offset_px`` (the projections are
  computed on a wider grid and sampled at the shifted columns: the axis sits at detector pixel
  ``nx // 2 + axis_offset_px``, :meth:`SampleEnvironment.axis_px`);
* **an empty-tube / air scan** (``background_scan``: ``line``, one translation line at omega 0,
  or ``slice``, every angle and x of one slice): the same tube and air without the sample,
  what a beamline records to remove a container.

:func:`environment_block` makes the same thing as a small sinogram block ``(nomega, nx, nq)`` on a
coarse Q grid without frames: the fast unit tests of the background and axis finders.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fabio.cbfimage import CbfImage
from scipy.ndimage import shift

from xrdct_dask.simulate.phantom import (
    Q_GRID_A,
    Phase,
    debye_pattern,
    form_factor,
    make_phantom,
    phase_library,
    project,
)

AIR_MOLECULES = (("N", 2, 0.781), ("O", 2, 0.210), ("Ar", 1, 0.009))  # element, atoms per molecule, fraction


@functools.cache
def glass_phase() -> Phase:
    """Amorphous silica (the tube wall): Debye pattern per atom of a random packing of Si and O
    (1:2, 0.066 atoms/A^3, no two atoms closer than 1.55 A, the Si-O bond), sigma 0.12 A.  Its
    broad humps are not those of the phantom's amorphous Si (first peak ~1.6 vs ~2.0 1/A), so the
    two unmix apart."""
    rng = np.random.default_rng(11)
    radius, density, dmin = 12.0, 0.066, 1.55
    target = int(density * 4 / 3 * np.pi * radius**3)
    pos = np.empty((target, 3))
    n = 0
    for _ in range(200 * target):
        p = rng.uniform(-radius, radius, 3)
        if p @ p > radius**2 or (n and np.min(np.sum((pos[:n] - p) ** 2, axis=1)) < dmin**2):
            continue
        pos[n] = p
        n += 1
        if n == target:
            break
    elements = np.where(rng.random(n) < 1 / 3, "Si", "O")
    # 0.01 A distance bins: far below the 0.12 A broadening, and 5x fewer sines than the default
    pattern = debye_pattern(pos[:n], elements, Q_GRID_A, 0.12, rbin_A=0.01)
    return Phase("glass", "SiO2", "amorphous", None, Q_GRID_A, pattern)


@functools.cache
def air_pattern() -> np.ndarray:
    """Coherent scattering of air per molecule on ``Q_GRID_A``: a gas scatters as independent
    molecules (``sum f^2`` over their atoms, intramolecular interference and Compton left out),
    scaled so that its mean over Q equals that of the phantom's amorphous Si per atom: an
    ``air_level`` of 1 scatters (summed over Q) as one voxel of the matrix."""
    raw = sum(frac * atoms * form_factor(el, Q_GRID_A) ** 2 for el, atoms, frac in AIR_MOLECULES)
    asi = next(p for p in phase_library() if p.name == "aSi").intensity
    return raw * (asi.mean() / raw.mean())


@dataclass(frozen=True)
class SampleEnvironment:
    """A sample's surroundings (see the module docstring); lengths in voxels (= translation steps).

    ``tube_outer_px`` None: no tube; else the annulus ``[outer - wall, outer)`` around
    ``tube_shift_px`` (y, x) from the axis.  ``sample_radius_px`` the phantom's radius (default: to
    fit in the tube's bore, else 0.42 nx as :func:`make_phantom`); larger than the field of view
    makes a sample that fills it.  ``air_level`` the air scattering at the first x (in voxels of the
    matrix, :func:`air_pattern`), ``air_ratio`` its value at the last x over the first.
    ``background_scan`` ``None``, ``"line"`` or ``"slice"``."""

    tube_outer_px: float | None = None
    tube_wall_px: float = 2.0
    tube_shift_px: tuple[float, float] = (0.0, 0.0)
    sample_radius_px: float | None = None
    axis_offset_px: float = 0.0
    air_level: float = 0.0
    air_ratio: float = 1.0
    background_scan: str | None = None

    def __post_init__(self):
        if self.background_scan not in (None, "line", "slice"):
            raise ValueError(f"background_scan must be None, line or slice, got {self.background_scan!r}")
        if self.tube_outer_px is not None and not 0 < self.tube_wall_px < self.tube_outer_px:
            raise ValueError(f"the tube wall ({self.tube_wall_px} px) must be thinner than its radius "
                             f"({self.tube_outer_px} px)")
        if self.air_level < 0 or self.air_ratio < 0:
            raise ValueError("air_level and air_ratio must be >= 0")

    @property
    def tube(self) -> bool:
        return self.tube_outer_px is not None

    def phases(self) -> tuple[Phase, ...]:
        """The phases of the maps of :meth:`phantom`: the library's, then the glass with a tube."""
        return phase_library() + ((glass_phase(),) if self.tube else ())

    def axis_px(self, nx: int) -> float:
        """The rotation axis in detector pixels from the first x."""
        return nx // 2 + self.axis_offset_px

    def _sample_radius(self, nx: int) -> float:
        if self.sample_radius_px is not None:
            return float(self.sample_radius_px)
        if self.tube:
            return self.tube_outer_px - self.tube_wall_px - 0.6
        return 0.42 * nx

    def _half_grid(self, nx: int) -> int:
        """Half the side of the (even) grid the maps are projected on: the detector and the sample
        (any shift, any offset) inside it."""
        grid = (self._phantom_side(nx) + 1) // 2  # make_phantom's square around the sample
        reach = max(grid, self.tube_outer_px or 0.0) + float(np.hypot(*self.tube_shift_px))
        return int(np.ceil(max(nx // 2 + abs(self.axis_offset_px) + 2, reach + 3, nx - nx // 2 + 2)))

    def _phantom_side(self, nx: int) -> int:
        """Side of :func:`make_phantom`'s grid whose sample (radius 0.42 of it) has the sample's radius
        (odd: its centre on a voxel)."""
        return max(3, int(round(self._sample_radius(nx) / 0.42)) | 1)

    def _maps(self, nz: int, nx: int) -> np.ndarray:
        """Volume fractions ``(nphase, nz, 2 h, 2 h)`` on the projection grid (centre = axis at ``h``)."""
        h = self._half_grid(nx)
        n = 2 * h
        sy, sx = (int(round(v)) for v in self.tube_shift_px)
        m = self._phantom_side(nx)
        small = make_phantom(nz, m)
        maps = np.zeros((len(self.phases()), nz, n, n))
        top, left = h - (m - 1) // 2 + sy, h - (m - 1) // 2 + sx
        maps[:4, :, top:top + m, left:left + m] = small
        if self.tube:
            sub = 4  # supersampled: the annulus's partial voxels
            g = (np.arange(n * sub) + 0.5) / sub - 0.5
            yy, xx = np.meshgrid(g - h - self.tube_shift_px[0], g - h - self.tube_shift_px[1], indexing="ij")
            r = np.hypot(yy, xx)
            ring = ((r >= self.tube_outer_px - self.tube_wall_px) & (r < self.tube_outer_px)).astype(float)
            maps[-1] = ring.reshape(n, sub, n, sub).mean(axis=(1, 3))[None]
        return maps

    def phantom(self, nz: int, nx: int) -> np.ndarray:
        """Volume fractions ``(nphase, nz, nx, nx)`` of :meth:`phases` on the reconstruction grid
        (centred on the rotation axis, at pixel ``nx // 2``): the ground truth."""
        h = self._half_grid(nx)
        return self._maps(nz, nx)[..., h - nx // 2:h - nx // 2 + nx, h - nx // 2:h - nx // 2 + nx]

    def _project(self, maps: np.ndarray, omega_deg: np.ndarray, nx: int) -> np.ndarray:
        h = maps.shape[-1] // 2
        big = project(maps, omega_deg)  # axis at column h
        # detector column j sees the projection-grid column j - nx // 2 - offset + h
        lead = h - nx // 2
        moved = shift(big, (0,) * (big.ndim - 1) + (self.axis_offset_px,), order=3, mode="constant")
        return np.ascontiguousarray(moved[..., lead:lead + nx])

    def sinograms(self, nz: int, nx: int, omega_deg: np.ndarray) -> np.ndarray:
        """Line integrals of every phase ``(nphase, nz, nomega, nx)`` seen by the detector (axis at
        :meth:`axis_px`; what lies beyond the detector is cut off).  The phantom's maps are
        projected by skimage's ``radon``; the tube exactly (:meth:`empty_sinograms`)."""
        om = np.asarray(omega_deg, float)
        maps = self._maps(nz, nx)
        phantom = self._project(maps[:4], om, nx)
        return np.concatenate([phantom, self.empty_sinograms(nz, nx, om)]) if self.tube else phantom

    def empty_sinograms(self, nz: int, nx: int, omega_deg: np.ndarray) -> np.ndarray:
        """The tube alone ``(1, nz, nomega, nx)``: the exact line integrals of the annulus over each
        detector column's width (a rasterised ring rotated by ``radon``'s interpolation would look
        a few % different at every angle, which no real tube does); zeros without a tube.

        The chord of a disc of radius R at distance u from its centre is ``2 sqrt(R^2 - u^2)``; its
        integral over a column ``[s - 1/2, s + 1/2]`` is ``F(s + 1/2) - F(s - 1/2)`` with
        ``F(u) = u sqrt(R^2 - u^2) + R^2 arcsin(u / R)`` (clipped at ``|u| = R``); the annulus is the
        outer disc less the inner.  The tube's centre, ``(dy, dx)`` from the axis, projects to
        ``dx cos(omega) - dy sin(omega)`` (skimage's convention, as the phantom)."""
        om = np.asarray(omega_deg, float)
        if not self.tube:
            return np.zeros((1, nz, om.size, nx))
        dy, dx = self.tube_shift_px
        th = np.deg2rad(om)
        centre = self.axis_px(nx) + dx * np.cos(th) - dy * np.sin(th)  # (nomega,)
        u = np.arange(nx)[None, :] - centre[:, None]  # detector column centre from the tube's centre

        def column_chords(radius: float) -> np.ndarray:
            def f(v):
                v = np.clip(v, -radius, radius)
                return v * np.sqrt(radius**2 - v**2) + radius**2 * np.arcsin(v / radius)
            return f(u + 0.5) - f(u - 0.5)

        outer, inner = self.tube_outer_px, self.tube_outer_px - self.tube_wall_px
        ring = column_chords(outer) - column_chords(inner)
        return np.broadcast_to(ring, (1, nz, om.size, nx)).copy()

    def air_levels(self, nx: int) -> np.ndarray:
        """Air scattering ``(nx,)`` at each translation step (voxels of matrix), linear in x."""
        return self.air_level * (1 + (self.air_ratio - 1) * np.arange(nx) / max(nx - 1, 1))

    def truth(self, nx: int) -> dict:
        """What the tests check against: the axis, the air along x, the settings."""
        return {"axis_px": self.axis_px(nx), "air_levels": self.air_levels(nx).tolist(),
                "tube_outer_px": self.tube_outer_px, "tube_wall_px": self.tube_wall_px,
                "tube_shift_px": list(self.tube_shift_px), "axis_offset_px": self.axis_offset_px,
                "air_level": self.air_level, "air_ratio": self.air_ratio, "background_scan": self.background_scan}


def environment_block(env: SampleEnvironment, nx: int, nomega: int, omega_range_deg: float = 180.0,
                      q_A=None) -> tuple[np.ndarray, dict]:
    """A sinogram block ``(nomega, nx, nq)`` float32 of the environment's sample, noise-free: in each
    q bin, the phases' line integrals times their patterns per atom at that Q, plus the air at
    that x times the air pattern (no detector, no frames: the unit tests' data).

    ``q_A`` the Q points (1/A; default 24 points from 1 to 20 1/A).  Returns ``(sino, truth)``,
    truth: ``maps`` (nphase, nx, nx), ``patterns`` (nphase, nq), ``air`` (nx, nq) the air part,
    ``tube`` (nomega, nx, nq) the tube's part, ``omega_deg``, ``axis_px``, ``names``."""
    q = np.linspace(1.0, 20.0, 24) if q_A is None else np.asarray(q_A, float)
    omega = np.arange(nomega) * (omega_range_deg / nomega)
    phases = env.phases()
    pat = np.stack([np.interp(q, Q_GRID_A, p.intensity) for p in phases])  # (nphase, nq)
    sinos = env.sinograms(1, nx, omega)[:, 0]  # (nphase, nomega, nx)
    air = env.air_levels(nx)[:, None] * np.interp(q, Q_GRID_A, air_pattern())[None, :]
    sino = np.einsum("pwx,pq->wxq", sinos, pat) + air[None]
    tube = (np.einsum("wx,q->wxq", sinos[-1], pat[-1]) if env.tube else np.zeros_like(sino))
    return sino.astype(np.float32), {"maps": env.phantom(1, nx)[:, 0], "patterns": pat, "air": air, "tube": tube,
                                     "omega_deg": omega, "axis_px": env.axis_px(nx),
                                     "names": [p.name for p in phases]}


BACKGROUND_FOLDER = "background"


def write_background_scan(out, env: SampleEnvironment, nomega: int, nx: int, omega_deg, glass, air, order_idx,
                          render, rng) -> dict:
    """Write the empty-tube / air scan of a simulated scan into ``out/background/`` and return its
    ``inputs.background_scan`` entry (paths relative to ``out``).

    ``glass`` (1, nq) the tube's pattern per atom (None: no tube); ``air`` (nx, nq) the air at each
    x; ``order_idx`` the scan's acquisition order ``(n, 3)`` (a ``slice`` background is recorded in
    slice 0's order); ``render(pattern, monitor, seed) -> frame`` the scan's own detector model.
    Frames ``frame_{index:06d}.cbf``, their monitor ``monitor.txt`` (its own fluctuations) and
    ``truth.npz``: ``patterns`` (rows, nx, nq) the expected background per atom-units frame, and
    ``rows`` (1 or nomega)."""
    folder = Path(out) / BACKGROUND_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tube = env.empty_sinograms(1, nx, omega_deg)[0, 0]  # (nomega, nx) glass line integrals
    if env.background_scan == "line":
        points = np.stack([np.zeros(nx, int), np.arange(nx)], axis=1)  # (iw, ix) at omega 0, x ascending
    else:
        first = order_idx[order_idx[:, 0] == 0]
        points = first[:, 1:]
    rows = 1 if env.background_scan == "line" else nomega
    expected = np.zeros((rows, nx, air.shape[1]))
    monitor = 1e5 * rng.normal(1, 0.02, len(points))
    seeds = rng.integers(0, 2**31, len(points))
    for i, (iw, ix) in enumerate(points):
        pattern = air[ix] + (tube[iw, ix] * glass[0] if glass is not None else 0)
        expected[0 if rows == 1 else iw, ix] = pattern
        CbfImage(data=render(pattern, monitor[i], seeds[i])).write(str(folder / f"frame_{i:06d}.cbf"))
    np.savetxt(folder / "monitor.txt", monitor, fmt="%.6e", header="I0 monitor of the background frames")
    np.savez_compressed(folder / "truth.npz", patterns=expected.astype(np.float32), rows=np.array(rows))
    return {"frames": f"{BACKGROUND_FOLDER}/frame_{{index:06d}}.cbf", "monitor": f"{BACKGROUND_FOLDER}/monitor.txt",
            "extent": env.background_scan}


def poisson(sino: np.ndarray, counts: float, rng) -> np.ndarray:
    """Poisson noise at ``counts`` for the brightest value, back in the sinogram's units (float32)."""
    scale = counts / float(np.max(sino))
    return (rng.poisson(np.clip(sino, 0, None) * scale) / scale).astype(np.float32)
