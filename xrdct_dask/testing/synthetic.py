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
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.scan import acquisition_order

ENERGY_KEV = 90.0
WAVELENGTH_A = 12.398419843320026 / ENERGY_KEV
Q_GRID_A = np.linspace(0.2, 26.0, 6000)  # 1/A, fine enough for sharp-ish nanocrystal peaks
BEAMSTOP_Q_A = 0.9  # 1/A: pixels below are in the beamstop's shadow (masked, no counts)

DETECTORS = {
    # name: (shape (ny, nx), pixel size m, binning of the Pilatus 2M it mimics)
    "pilatus2m": ((1679, 1475), 172e-6, 1),
    "small": ((209, 184), 172e-6 * 8, 8),
}


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
    import xraydb

    return np.asarray(xraydb.f0(element, q_A / (4 * np.pi)), dtype=np.float64)


def debye_pattern(positions: np.ndarray, elements: np.ndarray, q_A: np.ndarray, sigma_A: float,
                  rbin_A: float = 0.002) -> np.ndarray:
    """Debye scattering per atom of a cluster, with Gaussian pair-distance broadening ``sigma_A``.

    Pair distances are histogrammed (``rbin_A``) per element pair, then
    ``I(Q) = 1/N [sum_i f_i^2 + 2 sum_pairs f_a f_b h_ab(r) sinc(Q r) exp(-sigma^2 Q^2 / 2)]``.
    """
    from scipy.spatial.distance import cdist, pdist

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
                                                               ("Ni", (0.5, 0, 0.5)), ("Ni", (0, 0.5, 0.5))], 20.0), 0.09),
        ("Fe", "Fe", "crystalline", 2.8665, cubic_cluster(2.8665, [("Fe", (0, 0, 0)), ("Fe", (0.5, 0.5, 0.5))], 20.0), 0.09),
        ("NaCl", "NaCl", "crystalline", 5.640, cubic_cluster(5.640, [
            ("Na", (0, 0, 0)), ("Na", (0.5, 0.5, 0)), ("Na", (0.5, 0, 0.5)), ("Na", (0, 0.5, 0.5)),
            ("Cl", (0.5, 0, 0)), ("Cl", (0, 0.5, 0)), ("Cl", (0, 0, 0.5)), ("Cl", (0.5, 0.5, 0.5))], 20.0), 0.10),
        ("aSi", "Si", "amorphous", None, random_packed_cluster("Si", 16.0, 0.05, 2.25), 0.15),
    ]
    return tuple(Phase(name, comp, kind, a, q, debye_pattern(pos, el, q, sig))
                 for name, comp, kind, a, (pos, el), sig in specs)


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
    from skimage.transform import radon

    flat = maps.reshape(-1, *maps.shape[-2:])
    out = np.stack([radon(m, theta=omega_deg, circle=True).T for m in flat])
    return out.reshape(*maps.shape[:-2], omega_deg.size, maps.shape[-1])


# --------------------------------------------------------------------------------------------
# 4. detector, acquisition order, files
# --------------------------------------------------------------------------------------------
def make_integrator(detector: str = "small", dist_m: float = 0.2):
    """A pyFAI integrator for a Pilatus 2M (or its 8x8-binned twin), beam near the centre."""
    import pyFAI
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {list(DETECTORS)}, got {detector!r}")
    shape, pixel, _ = DETECTORS[detector]
    det = pyFAI.detector_factory("Pilatus2M") if detector == "pilatus2m" else \
        Detector(pixel1=pixel, pixel2=pixel, max_shape=shape)
    return AzimuthalIntegrator(dist=dist_m, poni1=0.52 * shape[0] * pixel, poni2=0.49 * shape[1] * pixel,
                               rot1=0.002, rot2=-0.001, detector=det, wavelength=WAVELENGTH_A * 1e-10)


def detector_mask(detector: str) -> np.ndarray:
    """Module gaps (1) of a Pilatus 2M, block-reduced for the binned detector."""
    import pyFAI

    gaps = pyFAI.detector_factory("Pilatus2M").mask.astype(bool)
    shape, _, b = DETECTORS[detector]
    if b == 1:
        return gaps
    return gaps[:shape[0] * b, :shape[1] * b].reshape(shape[0], b, shape[1], b).any(axis=(1, 3))


def phase_patterns_as_measured(integrator, detector: str = "small") -> np.ndarray:
    """Each phase's pattern as the instrument records it: rendered noise-free on the detector
    (solid angle, polarization, pixel size) and integrated by ``integrator``.  ``(nphase, nbins)``,
    the basis to unmix reconstructed voxel patterns into phase fractions."""
    ai = make_integrator(detector)
    shape = DETECTORS[detector][0]
    frames = np.stack([ai.calcfrom1d(Q_GRID_A * 10, p.intensity, shape=shape, dim1_unit="q_nm^-1",
                                     correctSolidAngle=True, polarization_factor=0.99) for p in phase_library()])
    return integrator.integrate(frames).intensity


@dataclass
class SimulatedScan:
    """Paths of a simulated scan folder and its ground truth."""

    root: Path
    workflow: Path
    frames_template: str
    poni: Path
    mask: Path
    monitor: Path
    scan_file: Path
    truth: Path
    nz: int
    nomega: int
    nx: int
    detector: str
    phases: tuple[str, ...]
    fmt: str = "cbf"
    fast_axis: str = "x"
    order: str = "snake"

    def load_truth(self) -> dict:
        with np.load(self.truth, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def frame_path(self, index: int) -> Path:
        """The CBF file of frame ``index`` (``fmt="cbf"`` scans only)."""
        if self.fmt != "cbf":
            raise ValueError(f"{self.root}: an {self.fmt} scan has no file per frame (frames: {self.frames_template})")
        from ..io.layout import FrameTemplate, ScanShape

        scan = ScanShape(self.nz, self.nomega, self.nx, self.fast_axis, self.order)
        return self.root / FrameTemplate(self.frames_template, scan).format(index)

    @property
    def frames(self) -> str:
        """The frame source (``inputs.frames``) with the scan's folder prepended."""
        return str(self.root / self.frames_template)


def _render(ai, shape, q_nm, pattern, scale, rng, gaps, bad, zinger_rate, spot_rate):
    expected = ai.calcfrom1d(q_nm, pattern * scale, shape=shape, dim1_unit="q_nm^-1", correctSolidAngle=True,
                             polarization_factor=0.99)
    frame = rng.poisson(np.maximum(expected, 0)).astype(np.int32)
    if rng.random() < zinger_rate:  # cosmic rays / zingers: single hot pixels
        k = rng.integers(1, 4)
        frame[rng.integers(0, shape[0], k), rng.integers(0, shape[1], k)] += rng.integers(10**5, 10**6, k, dtype=np.int32)
    if rng.random() < spot_rate:  # a single-crystal reflection: a small bright blob
        cy, cx = rng.integers(5, shape[0] - 5), rng.integers(5, shape[1] - 5)
        yy, xx = np.mgrid[-3:4, -3:4]
        frame[cy - 3:cy + 4, cx - 3:cx + 4] += (2e4 * np.exp(-(yy**2 + xx**2) / 2.0)).astype(np.int32)
    frame[gaps] = -1
    frame[bad] = -2
    return frame


SIMULATION_MARKER = ".xrdct-simulation"  # the folder holds a simulated scan (written first, before any file)


def check_simulation_folder(out: Path) -> None:
    """Raise ValueError (one line) unless ``out`` is absent, empty, or a simulated scan written
    before (its marker, or the ground truth only the simulator writes): a simulation writes
    frames, PONI, mask, monitor and workflow.yaml, and must never write over a user's files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    if not ((out / SIMULATION_MARKER).is_file() or (out / "truth.npz").is_file() or not any(out.iterdir())):
        raise ValueError(f"{out} holds files that are not a simulated scan: simulate into a new or empty folder")
    made = stores_made_from(out)
    if made:  # new frames under the same names would orphan it: its recorded inputs changed under it
        raise ValueError(f"{out} holds {made[0].name}, a store made from this simulated scan: simulating again would "
                         f"change the inputs it records; remove the store, or simulate into another folder")


def simulated_workflow(out: str | Path, nz: int, nomega: int, nx: int, seed: int = 0) -> Path | None:
    """The ``workflow.yaml`` of a whole scan of this shape and seed that :func:`simulate_scan` wrote
    into ``out`` (the workflow is its last file), else None: a demo rerun reuses it instead of
    simulating over a folder whose store records it."""
    try:
        made = json.loads((Path(out) / "truth.json").read_text())
    except (OSError, ValueError):
        return None
    scan = made.get("scan", {}) if isinstance(made, dict) else {}
    same = (scan.get("nz"), scan.get("nomega"), scan.get("nx"), made.get("seed")) == (nz, nomega, nx, seed)
    wf = Path(out) / "workflow.yaml"
    return wf if same and wf.is_file() and (Path(out) / SIMULATION_MARKER).is_file() else None


def stores_made_from(folder: Path) -> list[Path]:
    """The stores of this program in ``folder`` (its entries, where a simulated scan's workflow puts
    them) that record files under ``folder`` as their inputs (input contents or sampled frames)."""
    from ..store import is_store, root_attrs

    root = Path(folder).resolve()
    found = []
    for entry in sorted(Path(folder).iterdir()):
        if not (entry.is_dir() and is_store(entry)):
            continue
        attrs = root_attrs(entry) or {}
        recorded = [v.get("path") for v in (attrs.get("input_contents") or {}).values() if isinstance(v, dict)]
        recorded += list((attrs.get("frame_sample") or {}).get("files", []))
        if any(p and Path(p).resolve().is_relative_to(root) for p in recorded):
            found.append(entry)
    return found


def simulate_scan(out_dir: str | Path, nz: int = 2, nomega: int = 32, nx: int = 24, *, detector: str = "small",
                  order: str = "snake", fast_axis: str = "x", omega_range_deg: int = 180, npt_rad: int = 1000,
                  seed: int = 0, peak_counts: float = 1.0e5, zinger_rate: float = 0.02, spot_rate: float = 0.02,
                  threads: int = 4, progress=None, fmt: str = "cbf", frames_per_file: int = 100,
                  frames: str | None = None) -> SimulatedScan:
    """Simulate a whole XRD-CT scan into ``out_dir`` and return its paths.

    Writes the frames in acquisition order -- ``fmt="cbf"``: ``frames/frame_{index:06d}.cbf``;
    ``fmt="h5"``: an Eiger-like ``frames/scan_master.h5`` with data files ``scan_data_000001.h5``,
    ... of ``frames_per_file`` frames each (see :func:`write_hdf5_scan`), same pixel values --
    and ``geometry.poni``, ``mask.edf``
    (gaps, beamstop and bad pixels = 1), ``monitor.txt``, ``scan.csv``, ``truth.npz`` (phase maps
    ``(nphase, nz, nx, nx)``, phase patterns per atom on ``q_A``, sinograms of each phase) and a
    ready ``workflow.yaml``.  ``peak_counts`` sets the expected counts of the brightest pixel.

    ``frames``, a template relative to ``out_dir`` (:mod:`xrdct_dask.io.layout`), writes another
    layout of the same frames: ``slice_{z:04d}/line_{line:05d}/frame_{index:06d}.cbf`` (CBF, may
    end ``.cbf.gz`` / ``.cbf.bz2``: compressed after writing), or ``slice_{z:04d}.h5::/entry/data/data``
    (``fmt="h5"``: a plain HDF5 file per slice or line, chunks of one frame, bitshuffle-LZ4).
    """
    from fabio.cbfimage import CbfImage
    from fabio.edfimage import EdfImage

    if fmt not in ("cbf", "h5"):
        raise ValueError(f"fmt must be cbf or h5, got {fmt!r}")
    if frames_per_file < 1:
        raise ValueError(f"frames_per_file must be >= 1, got {frames_per_file}")
    from ..io.layout import FrameTemplate, ScanShape
    from ..io.spec import is_hdf5, split_spec

    out = Path(out_dir)
    check_simulation_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SIMULATION_MARKER).write_text("written by xrdct_dask.testing.synthetic.simulate_scan: a simulated scan "
                                         "may be written again here\n")
    layout = None
    if frames is not None:
        if is_hdf5(frames) != (fmt == "h5"):
            raise ValueError(f"frames {frames!r} is not a {fmt} template (--format {fmt})")
        layout = FrameTemplate(split_spec(frames)[0], ScanShape(nz, nomega, nx, fast_axis, order), hdf5=fmt == "h5")
    rng = np.random.default_rng(seed)
    phases = phase_library()
    maps = make_phantom(nz, nx)
    omega = omega_angles_deg(nomega, omega_range_deg)
    sinos = project(maps, omega)  # (nphase, nz, nomega, nx)
    pat = np.stack([p.intensity for p in phases])  # (nphase, nq)

    ai = make_integrator(detector)
    shape = DETECTORS[detector][0]
    # beamstop shadow: no counts below BEAMSTOP_Q_A (the nanoclusters' small-angle scattering)
    q_pix_A = ai.center_array(shape, unit="q_nm^-1") / 10
    gaps = detector_mask(detector) | (q_pix_A < BEAMSTOP_Q_A)
    bad = np.zeros(shape, bool)
    bad.flat[rng.choice(bad.size, max(3, bad.size // 20000), replace=False)] = True
    bad &= ~gaps
    ai.write(str(out / "geometry.poni"))
    EdfImage(data=(gaps | bad).astype(np.uint8)).write(str(out / "mask.edf"))

    # scale so that the brightest expected pixel of the scan is ~peak_counts
    corr = ai.solidAngleArray(shape) * ai.polarization(shape, 0.99)
    brightest = np.einsum("pzwx,p->zwx", sinos, pat[:, Q_GRID_A >= BEAMSTOP_Q_A].max(axis=1)).max()
    scale = peak_counts / (brightest * corr.max())

    order_idx = acquisition_order(nz, nomega, nx, fast_axis, order)
    nframes = len(order_idx)
    monitor = 1e5 * (1 + 0.05 * np.sin(2 * np.pi * np.arange(nframes) / 97.0)) * rng.normal(1, 0.01, nframes)
    x_mm = np.arange(nx) * 1.0
    z_mm = np.arange(nz) * 1.0
    q_nm = Q_GRID_A * 10
    seeds = rng.integers(0, 2**31, nframes)

    def render(i):
        iz, iw, ix = order_idx[i]
        pattern = np.tensordot(sinos[:, iz, iw, ix], pat, axes=1)
        return _render(ai, shape, q_nm, pattern, scale * monitor[i] / 1e5, np.random.default_rng(seeds[i]),
                       gaps, bad, zinger_rate, spot_rate)

    if layout is None:
        (out / "frames").mkdir(exist_ok=True)

    def write(i):
        iz, iw, ix = order_idx[i]
        frame = render(i)
        header = {"_array_data.header_convention": "PILATUS_1.2",
                  "_array_data.header_contents": "\r\n".join([
                      "# Detector: PILATUS 2M (simulated by xrdct_dask)",
                      f"# Pixel_size {DETECTORS[detector][1]:.6g} m x {DETECTORS[detector][1]:.6g} m",
                      "# Exposure_time 0.0040000 s",
                      f"# Wavelength {WAVELENGTH_A:.5f} A",
                      f"# Flux {monitor[i]:.6e}",
                      f"# Start_angle {omega[iw]:.4f} deg.",
                      f"# Scan_point iz={iz} iomega={iw} ix={ix}",
                      f"# Sample_x_mm {x_mm[ix]:.4f}",
                      f"# Sample_z_mm {z_mm[iz]:.4f}"])}
        path = out / (layout.format(i) if layout is not None else f"frames/frame_{i:06d}.cbf")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".gz", ".bz2"):  # an archive of compressed frames
            import bz2
            import gzip

            tmp = path.with_name(path.name + ".tmp.cbf")
            CbfImage(data=frame, header=header).write(str(tmp))
            with (gzip if path.suffix == ".gz" else bz2).open(path, "wb") as fh:
                fh.write(tmp.read_bytes())
            tmp.unlink()
        else:
            CbfImage(data=frame, header=header).write(str(path))

    if fmt == "cbf":
        frames_template = frames or "frames/frame_{index:06d}.cbf"
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for k, _ in enumerate(pool.map(write, range(nframes))):
                if progress is not None:
                    progress(k + 1, nframes)
    elif layout is not None:
        frames_template = frames
        write_hdf5_units(out, layout, split_spec(frames)[1] or "/entry/data/data", render, nframes, shape,
                         threads=threads, progress=progress)
    else:
        frames_template = "frames/scan_master.h5::/entry/data/data"
        positions = {"omega": (omega[order_idx[:, 1]], "deg"), "x": (x_mm[order_idx[:, 2]], "mm"),
                     "z": (z_mm[order_idx[:, 0]], "mm")}
        write_hdf5_scan(out / "frames", render, nframes, shape, positions=positions, monitor=monitor,
                        frames_per_file=frames_per_file, threads=threads, progress=progress,
                        pixel_size_m=DETECTORS[detector][1], wavelength_A=WAVELENGTH_A)

    np.savetxt(out / "monitor.txt", monitor, fmt="%.6e", header="I0 monitor, one value per frame in acquisition order")
    with open(out / "scan.csv", "w") as fh:
        fh.write("index,iz,iomega,ix,z_mm,omega_deg,x_mm,monitor\n")
        for i, (iz, iw, ix) in enumerate(order_idx):
            fh.write(f"{i},{iz},{iw},{ix},{z_mm[iz]:.4f},{omega[iw]:.6f},{x_mm[ix]:.4f},{monitor[i]:.6e}\n")
    np.savez_compressed(out / "truth.npz", phase_maps=maps, phase_patterns=pat, q_A=Q_GRID_A,
                        phase_names=np.array([p.name for p in phases]), sinograms=sinos.astype(np.float32),
                        omega_deg=omega, intensity_scale=np.array(scale))
    (out / "truth.json").write_text(json.dumps({
        "phases": [{"name": p.name, "composition": p.composition, "kind": p.kind, "lattice_a_angstrom": p.lattice_a}
                   for p in phases],
        "energy_kev": ENERGY_KEV, "wavelength_angstrom": WAVELENGTH_A, "detector": detector, "seed": seed,
        "scan": {"nz": nz, "nomega": nomega, "nx": nx, "order": order, "fast_axis": fast_axis,
                 "omega_range_deg": omega_range_deg}}, indent=2))

    wf = {
        "inputs": {"frames": frames_template, "poni": "geometry.poni", "mask": "mask.edf",
                   "monitor": "monitor.txt", "scan_file": "scan.csv"},
        "scan": {"nz": nz, "nomega": nomega, "nx": nx, "fast_axis": fast_axis, "order": order,
                 "omega_range_deg": omega_range_deg},
        "integrate": {"npt_rad": npt_rad, "unit": "q_nm^-1"},
        "recon": {"algorithm": "fbp", "filter": "ramp"},
        "pdf": {"composition": "Ni", "qmin": 1.0, "qmax": 20.0, "rpoly": 0.9, "rmin": 0.5, "rmax": 20.0,
                "rstep": 0.01, "lorch": True},
        "store": {"path": "run.zarr", "omega_chunk": min(16, nomega)},
    }
    import yaml

    # last, and whole at once (renamed into place): a watcher that sees it finds every file it names
    part = out / ".workflow.yaml.part"
    part.write_text("# written by `xrdct simulate`; paths are relative to this file\n" + yaml.safe_dump(wf, sort_keys=False))
    part.replace(out / "workflow.yaml")
    return SimulatedScan(root=out, workflow=out / "workflow.yaml", frames_template=frames_template,
                         poni=out / "geometry.poni", mask=out / "mask.edf", monitor=out / "monitor.txt",
                         scan_file=out / "scan.csv", truth=out / "truth.npz", nz=nz, nomega=nomega, nx=nx,
                         detector=detector, phases=tuple(p.name for p in phases), fmt=fmt, fast_axis=fast_axis,
                         order=order)


def _frames_dataset(f, path: str, n: int, shape: tuple[int, int]):
    """An int32 ``(n, ny, nx)`` frames dataset at ``path`` of open file ``f``: chunks of one frame,
    bitshuffle + LZ4 (HDF5 filter 32008), in NXentry / NXdata groups as a detector writes."""
    import hdf5plugin

    group, _, name = path.strip("/").rpartition("/")
    f.attrs["default"] = "entry"
    g = f.require_group(group) if group else f
    for k, part in enumerate(group.split("/") if group else []):
        sub = f["/".join(group.split("/")[:k + 1])]
        sub.attrs["NX_class"] = "NXentry" if k == 0 else "NXdata"
    if group:
        g.attrs["signal"] = name
    return g.create_dataset(name, shape=(n, *shape), dtype=np.int32, chunks=(1, *shape),
                            **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))


def write_hdf5_units(out: str | Path, layout, dataset: str, render, nframes: int, shape: tuple[int, int], *,
                     threads: int = 4, progress=None) -> None:
    """Write an HDF5 file per slice or line: the file ``layout.format(i)`` (relative to ``out``)
    holds, at ``dataset``, the frames of its unit in acquisition order (frame ``layout.local(i)``).

    ``layout`` is a :class:`~xrdct_dask.io.layout.FrameTemplate` without ``{index}``; a unit's
    frames are consecutive in acquisition order."""
    import h5py

    out = Path(out)
    starts = [0]
    while starts[-1] < nframes:  # the first frame of each unit: the next unit starts where its count ends
        first = starts[-1]
        size = layout.scan.nfast if layout.scope == "line" else layout.scan.per_slice
        starts.append(min(first + size, nframes))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for first, last in zip(starts[:-1], starts[1:]):
            path = out / layout.format(first)
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as f:
                d = _frames_dataset(f, dataset, last - first, shape)
                for j, frame in enumerate(pool.map(render, range(first, last))):
                    d[j] = frame
                    if progress is not None:
                        progress(first + j + 1, nframes)


def write_hdf5_scan(folder: str | Path, render, nframes: int, shape: tuple[int, int], *, positions: dict,
                    monitor: np.ndarray, frames_per_file: int = 100, threads: int = 4, progress=None,
                    pixel_size_m: float = 172e-6, wavelength_A: float = WAVELENGTH_A, prefix: str = "scan") -> Path:
    """Write frames as an Eiger-like HDF5 scan and return the master file.

    ``{prefix}_data_000001.h5, ...``: ``/entry/data/data`` int32 ``(k, ny, nx)``, chunks of one
    frame compressed with bitshuffle + LZ4 (HDF5 filter 32008, hdf5plugin), at most
    ``frames_per_file`` frames each, ``image_nr_low/high`` attrs (1-based) as Eiger writes.
    ``{prefix}_master.h5``: NXentry ``/entry`` whose NXdata ``/entry/data`` holds the Eiger
    external links ``data_000001, ...`` and ``data``, a virtual dataset over all data files (what
    BLISS / Lima write; h5py and silx read frames through it); per-frame positioners
    ``/entry/measurement/{name}`` (hard-linked from ``/entry/instrument/positioners/{name}``,
    with ``units``) and ``/entry/measurement/monitor``.  All file names are relative, so the
    folder can move.

    Parameters
    ----------
    render : callable
        ``render(i) -> (ny, nx) int32`` frame ``i`` in acquisition order (called from ``threads`` threads).
    positions : dict
        ``{name: (values (nframes,), units)}``.
    """
    import h5py
    import hdf5plugin

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ny, nx = shape
    names = []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for k, first in enumerate(range(0, nframes, frames_per_file)):
            last = min(first + frames_per_file, nframes)
            name = f"{prefix}_data_{k + 1:06d}.h5"
            names.append((name, first, last))
            with h5py.File(folder / name, "w") as f:
                f.attrs["default"] = "entry"
                entry = f.create_group("entry")
                entry.attrs.update({"NX_class": "NXentry", "default": "data"})
                data = entry.create_group("data")
                data.attrs.update({"NX_class": "NXdata", "signal": "data"})
                d = data.create_dataset("data", shape=(last - first, ny, nx), dtype=np.int32, chunks=(1, ny, nx),
                                        **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
                d.attrs.update({"image_nr_low": np.int32(first + 1), "image_nr_high": np.int32(last)})
                for j, frame in enumerate(pool.map(render, range(first, last))):
                    d[j] = frame
                    if progress is not None:
                        progress(first + j + 1, nframes)
    master = folder / f"{prefix}_master.h5"
    with h5py.File(master, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        data = entry.create_group("data")
        data.attrs.update({"NX_class": "NXdata", "signal": "data"})
        layout = h5py.VirtualLayout(shape=(nframes, ny, nx), dtype=np.int32)
        for k, (name, first, last) in enumerate(names):
            data[f"data_{k + 1:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
            layout[first:last] = h5py.VirtualSource(name, "/entry/data/data", shape=(last - first, ny, nx))
        data.create_virtual_dataset("data", layout, fillvalue=-1)
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        det = inst.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        for key in ("x_pixel_size", "y_pixel_size"):
            det.create_dataset(key, data=pixel_size_m).attrs["units"] = "m"
        det.create_dataset("description", data="PILATUS 2M (simulated by xrdct_dask)")
        beam = inst.create_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        beam.create_dataset("incident_wavelength", data=wavelength_A).attrs["units"] = "angstrom"
        pos = inst.create_group("positioners")
        pos.attrs["NX_class"] = "NXcollection"
        meas = entry.create_group("measurement")
        meas.attrs["NX_class"] = "NXcollection"
        for key, (values, units) in positions.items():
            ds = meas.create_dataset(key, data=np.asarray(values, np.float64))
            ds.attrs["units"] = units
            pos[key] = ds  # a hard link: one dataset, two names (BLISS lists scanned motors in both)
        meas.create_dataset("monitor", data=np.asarray(monitor, np.float64)).attrs["units"] = "counts"
    return master


def stream_frames(sources: list[Path], targets: list[Path], rate_hz: float, *, in_place: bool = False,
                  link: bool = False, pieces: int = 4, stop=None, on_written=None) -> np.ndarray:
    """Write frame files at a steady rate, as a detector does: ``targets[i]`` gets the bytes of
    ``sources[i % len(sources)]`` at ``t0 + i / rate_hz`` (s).

    By default each frame is written under a temporary name in the same folder
    (``.NAME.part``) and renamed into place when whole, as a Pilatus or a data mover does; with
    ``in_place`` it is written under its final name in ``pieces`` parts spread over the frame's
    1 / rate_hz, so that a reader sees partial files.  ``link``: the temporary name is a hard link
    to the source (no bytes written: a long scan cycling over a few distinct frames).  ``stop`` (a ``threading.Event``) ends
    the stream early; ``on_written(i, epoch)`` is called after each frame.  Returns the epoch
    seconds at which each frame became whole under its final name (NaN: not written).
    """
    import os
    import time

    if not rate_hz > 0:
        raise ValueError(f"rate must be > 0 frames/s, got {rate_hz}")
    if link and in_place:
        raise ValueError("in_place writes the frames' bytes; link makes hard links: not both")
    whole = np.full(len(targets), np.nan)
    cache: dict[Path, bytes] = {}
    period = 1.0 / rate_hz
    t0 = time.perf_counter()
    for i, dst in enumerate(targets):
        if stop is not None and stop.is_set():
            break
        wait = t0 + i * period - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        src = Path(sources[i % len(sources)])
        dst = Path(dst)
        if link:
            tmp = dst.with_name(f".{dst.name}.part")
            os.link(src, tmp)
            os.rename(tmp, dst)
            whole[i] = time.time()
            if on_written is not None:
                on_written(i, whole[i])
            continue
        data = cache.get(src)
        if data is None:
            data = src.read_bytes()
            if len(cache) < 256:  # a few distinct frames cycled over: read each once
                cache[src] = data
        dst = Path(dst)
        if in_place:
            cuts = np.linspace(0, len(data), pieces + 1).astype(int)
            with open(dst, "wb") as fh:
                for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
                    fh.write(data[a:b])
                    fh.flush()
                    if k < pieces - 1:
                        time.sleep(period / pieces)
        else:
            tmp = dst.with_name(f".{dst.name}.part")
            tmp.write_bytes(data)
            os.rename(tmp, dst)
        whole[i] = time.time()
        if on_written is not None:
            on_written(i, whole[i])
    return whole


def _ascii_digits(values: np.ndarray, width: int, decimals: int = 0) -> np.ndarray:
    """uint8 ``(n, width + (decimals > 0))``: non-negative ``values`` as zero-padded fixed-point text."""
    scaled = np.round(np.asarray(values, np.float64) * 10**decimals).astype(np.int64)
    if (scaled < 0).any() or (scaled >= 10 ** (width)).any():
        raise ValueError(f"values outside [0, 1e{width - decimals}) cannot be written in {width} digits")
    digits = np.empty((scaled.size, width), np.uint8)
    for j in range(width - 1, -1, -1):  # last digit first
        scaled, d = np.divmod(scaled, 10)
        digits[:, j] = d
    digits += ord("0")
    if decimals:
        digits = np.insert(digits, width - decimals, ord("."), axis=1)
    return digits


def write_scan_table(path: str | Path, nz: int, nomega: int, nx: int, *, order: str = "snake",
                     omega_range_deg: float = 180.0, x_step_mm: float = 0.01, z_step_mm: float = 0.01,
                     jitter: float = 0.05, monitor_path: str | Path | None = None, seed: int = 0,
                     rows: int = 1 << 20) -> int:
    """Write the scan table (``index,iz,iomega,ix,omega_deg,x_mm,z_mm``) of an ``nz x nomega x nx``
    scan (fast axis x, ``order`` raster | snake | interlaced) as the acquisition would, and its
    monitor file (one value per line) at ``monitor_path``, ``rows`` rows at a time: 1e7 rows in
    seconds, in bounded memory.  Readings are the grid values plus uniform jitter of ``jitter``
    steps (non-negative: the grid starts one step in).  Returns the rows written.

    The test data of the bounded-memory scan reading (:mod:`xrdct_dask.io.scantable`)."""
    from ..io.scan import INTERLACE_PASSES, interlaced_lines

    rng = np.random.default_rng(seed)
    n = nz * nomega * nx
    omega_step = omega_range_deg / nomega
    lines = interlaced_lines(nomega, INTERLACE_PASSES) if order == "interlaced" else np.arange(nomega)
    w_int = lambda v: max(1, len(str(int(v))))  # noqa: E731
    mon = open(monitor_path, "wb") if monitor_path is not None else None
    try:
        with open(path, "wb") as f:
            f.write(b"index,iz,iomega,ix,omega_deg,x_mm,z_mm\n")
            if mon is not None:
                mon.write(b"# I0 monitor, one value per frame in acquisition order\n")
            for a in range(0, n, rows):
                i = np.arange(a, min(a + rows, n), dtype=np.int64)
                line, fast = i // nx, i % nx
                iz, k = line // nomega, line % nomega
                ix = np.where(line % 2 == 1, nx - 1 - fast, fast) if order != "raster" else fast
                iw = lines[k]
                jit = lambda: rng.uniform(-jitter, jitter, i.size)  # noqa: E731
                omega = (iw + 1 + jit()) * omega_step
                x = (ix + 1 + jit()) * x_step_mm
                z = (iz + 1 + jit()) * z_step_mm
                sep = np.full((i.size, 1), ord(","), np.uint8)
                parts = [_ascii_digits(i, w_int(n)), sep, _ascii_digits(iz, w_int(nz)), sep,
                         _ascii_digits(iw, w_int(nomega)), sep, _ascii_digits(ix, w_int(nx)), sep,
                         _ascii_digits(omega, w_int((nomega + 2) * omega_step) + 6, 6), sep,
                         _ascii_digits(x, w_int((nx + 2) * x_step_mm) + 6, 6), sep,
                         _ascii_digits(z, w_int((nz + 2) * z_step_mm) + 6, 6),
                         np.full((i.size, 1), ord("\n"), np.uint8)]
                f.write(np.concatenate(parts, axis=1).tobytes())
                if mon is not None:
                    value = 1e5 * (1 + 0.05 * np.sin(2 * np.pi * i / 97.0)) + rng.uniform(0, 1000, i.size)
                    mon.write(np.concatenate([_ascii_digits(value, 8, 1), np.full((i.size, 1), ord("\n"), np.uint8)],
                                             axis=1).tobytes())
    finally:
        if mon is not None:
            mon.close()
    return n
