"""A whole simulated scan written as a beamline would: frames, PONI, mask, monitor, ground truth
and a ready workflow."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from fabio.cbfimage import CbfImage
from fabio.edfimage import EdfImage
from fabio.tifimage import TifImage

from xrdct_dask.io.layout import FrameTemplate, ScanShape
from xrdct_dask.io.scan import acquisition_order
from xrdct_dask.io.spec import is_hdf5, split_spec
from xrdct_dask.simulate.detector import DETECTORS, _render, detector_mask, make_integrator
from xrdct_dask.simulate.environment import air_pattern as env_air_pattern
from xrdct_dask.simulate.environment import write_background_scan
from xrdct_dask.simulate.files import write_hdf5_scan, write_hdf5_units
from xrdct_dask.simulate.phantom import (
    ATTENUATION_NODE_DEG,
    BEAMSTOP_Q_A,
    ENERGY_KEV,
    Q_GRID_A,
    WAVELENGTH_A,
    attenuated_projections,
    make_phantom,
    omega_angles_deg,
    phase_library,
    project,
    two_theta_of_q_deg,
)
from xrdct_dask.simulate.texture import textured_profiles
from xrdct_dask.store import is_store, root_attrs


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

        scan = ScanShape(self.nz, self.nomega, self.nx, self.fast_axis, self.order)
        return self.root / FrameTemplate(self.frames_template, scan).format(index)

    @property
    def frames(self) -> str:
        """The frame source (``inputs.frames``) with the scan's folder prepended."""
        return str(self.root / self.frames_template)


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


def _frame_image(name: str, frame: np.ndarray, header: dict):
    """The fabio image a frame file ``name`` is written with: TIFF (``.tif`` / ``.tiff``: the pixels
    only), EDF (``.edf[.gz|.bz2]``: the CBF header's lines as keys), else CBF."""
    lower = name.lower()
    if lower.endswith((".tif", ".tiff")):
        return TifImage(data=frame)
    if ".edf" in lower:
        lines = header["_array_data.header_contents"].split("\r\n")
        return EdfImage(data=frame, header={f"line_{k}": v.lstrip("# ") for k, v in enumerate(lines)})
    return CbfImage(data=frame, header=header)


def simulate_scan(out_dir: str | Path, nz: int = 2, nomega: int = 32, nx: int = 24, *, detector: str = "small",
                  order: str = "snake", fast_axis: str = "x", omega_range_deg: int = 180, npt_rad: int = 1000,
                  seed: int = 0, peak_counts: float = 1.0e5, zinger_rate: float = 0.02, spot_rate: float = 0.02,
                  threads: int = 4, progress=None, fmt: str = "cbf", frames_per_file: int = 100,
                  frames: str | None = None, mu_per_px=None, environment=None, texture: dict | None = None,
                  distance_m: float = 0.2) -> SimulatedScan:
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
    end ``.cbf.gz`` / ``.cbf.bz2``: compressed after writing; or ``.tif`` / ``.edf`` (``.edf.gz``): TIFF or EDF
    files of the same pixels, written by fabio), or ``slice_{z:04d}.h5::/entry/data/data``
    (``fmt="h5"``: a plain HDF5 file per slice or line, chunks of one frame, bitshuffle-LZ4).

    ``environment`` (:class:`~xrdct_dask.simulate.environment.SampleEnvironment`): the sample in a
    glass tube, air scattering varying along x, the rotation axis off centre, and an empty-tube
    scan (``background/``, in the workflow's ``inputs.background_scan``); the truth then holds the
    glass as a fifth phase and ``truth.json`` the axis and the air (``environment``).

    ``mu_per_px`` (one value per phase of the library, 1/pixel): a dense sample.  Its attenuation
    map ``mu = sum_p mu_p fraction_p`` attenuates the beam in to every voxel and the scattered beam
    out at 2theta(Q) (:func:`attenuated_projections` over 8 azimuths, at 2theta nodes
    ``ATTENUATION_NODE_DEG`` apart, the patterns interpolated between them), and a transmission
    channel is recorded:
    ``transmission.txt``, one reading per frame (a diode after the sample: 0.8 x monitor x
    exp(-P[mu]), Poisson), named ``inputs.transmission`` in the workflow; ``truth.npz`` gains ``mu``.

    ``texture`` (``{phase name: PhaseTexture}``, :mod:`xrdct_dask.simulate.texture`): those phases
    scatter with a preferred orientation and a lattice strain that vary with the azimuth chi (the
    same at every omega); ``truth.json`` records them.  ``distance_m``: sample-detector distance
    (larger: bigger rings, more pixels per azimuthal sector, a smaller q range).
    """

    if fmt not in ("cbf", "h5"):
        raise ValueError(f"fmt must be cbf or h5, got {fmt!r}")
    if frames_per_file < 1:
        raise ValueError(f"frames_per_file must be >= 1, got {frames_per_file}")
    if texture and mu_per_px is not None:
        raise ValueError("a textured sample is simulated without attenuation (mu_per_px)")

    out = Path(out_dir)
    check_simulation_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SIMULATION_MARKER).write_text("written by xrdct_dask.simulate.simulate_scan: a simulated scan "
                                         "may be written again here\n")
    layout = None
    if frames is not None:
        if is_hdf5(frames) != (fmt == "h5"):
            raise ValueError(f"frames {frames!r} is not a {fmt} template (--format {fmt})")
        layout = FrameTemplate(split_spec(frames)[0], ScanShape(nz, nomega, nx, fast_axis, order), hdf5=fmt == "h5")
    rng = np.random.default_rng(seed)
    env = environment
    omega = omega_angles_deg(nomega, omega_range_deg)
    if env is None:
        phases = phase_library()
        maps = make_phantom(nz, nx)
        sinos = project(maps, omega)  # (nphase, nz, nomega, nx)
    else:
        phases, maps, sinos = env.phases(), env.phantom(nz, nx), env.sinograms(nz, nx, omega)
    pat = np.stack([p.intensity for p in phases])  # (nphase, nq)
    air = None if env is None else env.air_levels(nx)[:, None] * env_air_pattern()[None, :]  # (nx, nq)
    mu = att = None
    if mu_per_px is not None:
        mu_per_px = np.asarray(mu_per_px, np.float64)
        if mu_per_px.shape != (len(phases),) or (mu_per_px < 0).any():
            raise ValueError(f"mu_per_px needs {len(phases)} values >= 0 (one per phase), got {mu_per_px.tolist()}")
        mu = np.tensordot(mu_per_px, maps, axes=1)  # (nz, nx, nx)
        tt_q = two_theta_of_q_deg(Q_GRID_A)
        nodes = np.arange(0.0, tt_q.max() + ATTENUATION_NODE_DEG, ATTENUATION_NODE_DEG)
        att = np.stack([attenuated_projections(maps[:, z], mu[z], omega, nodes, azimuths=8) for z in range(nz)],
                       axis=2)
        node_k = np.clip(np.searchsorted(nodes, tt_q, side="right") - 1, 0, nodes.size - 2)
        node_t = (tt_q - nodes[node_k]) / ATTENUATION_NODE_DEG

    ai = make_integrator(detector, distance_m)
    shape = DETECTORS[detector][0]
    profiles = None
    if texture:
        unknown = sorted(set(texture) - {p.name for p in phases})
        if unknown:
            raise ValueError(f"texture names phases {unknown}; the phantom's are {[p.name for p in phases]}")
        profiles = textured_profiles(ai, shape, Q_GRID_A * 10, pat, [texture.get(p.name) for p in phases])
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
        if profiles is not None:  # the phases' amounts along the beam; their counts per pixel are in profiles
            return _render(ai, shape, q_nm, sinos[:, iz, iw, ix], scale * monitor[i] / 1e5,
                           np.random.default_rng(seeds[i]), gaps, bad, zinger_rate, spot_rate, profiles)
        if att is None:
            pattern = np.tensordot(sinos[:, iz, iw, ix], pat, axes=1) + (0 if air is None else air[ix])
        else:  # each node's attenuated pattern, linear in 2theta between nodes
            at_nodes = np.tensordot(att[:, :, iz, iw, ix], pat, axes=([0], [0]))  # (nnodes, nq)
            q = np.arange(pat.shape[1])
            pattern = (1 - node_t) * at_nodes[node_k, q] + node_t * at_nodes[node_k + 1, q]
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
        image = _frame_image(path.name, frame, header)  # CBF, or TIFF / EDF (a flat panel's, an older beamline's)
        if path.suffix in (".gz", ".bz2"):  # an archive of compressed frames

            tmp = path.with_name(path.name + ".tmp")
            image.write(str(tmp))
            with (gzip if path.suffix == ".gz" else bz2).open(path, "wb") as fh:
                fh.write(tmp.read_bytes())
            tmp.unlink()
        else:
            image.write(str(path))

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

    background = None
    if env is not None and env.background_scan is not None:
        background = write_background_scan(out, env, nomega, nx, omega, pat[-1:] if env.tube else None, air,
                                           order_idx, lambda pattern, mon, s: _render(
                                               ai, shape, q_nm, pattern, scale * mon / 1e5, np.random.default_rng(s),
                                               gaps, bad, 0.0, 0.0), rng)
    np.savetxt(out / "monitor.txt", monitor, fmt="%.6e", header="I0 monitor, one value per frame in acquisition order")
    if mu is not None:
        line = project(mu[None], omega)[0]  # (nz, nomega, nx): -ln T of every scan point
        diode = rng.poisson(0.8 * monitor * np.exp(-line[tuple(order_idx.T)])).astype(np.float64)
        np.savetxt(out / "transmission.txt", np.maximum(diode, 1.0), fmt="%.1f",
                   header="transmission (diode after the sample), one value per frame in acquisition order")
    with open(out / "scan.csv", "w") as fh:
        fh.write("index,iz,iomega,ix,z_mm,omega_deg,x_mm,monitor\n")
        for i, (iz, iw, ix) in enumerate(order_idx):
            fh.write(f"{i},{iz},{iw},{ix},{z_mm[iz]:.4f},{omega[iw]:.6f},{x_mm[ix]:.4f},{monitor[i]:.6e}\n")
    np.savez_compressed(out / "truth.npz", phase_maps=maps, phase_patterns=pat, q_A=Q_GRID_A,
                        phase_names=np.array([p.name for p in phases]), sinograms=sinos.astype(np.float32),
                        omega_deg=omega, intensity_scale=np.array(scale),
                        **({} if mu is None else {"mu": mu, "mu_per_px": mu_per_px}))
    (out / "truth.json").write_text(json.dumps({
        "phases": [{"name": p.name, "composition": p.composition, "kind": p.kind, "lattice_a_angstrom": p.lattice_a}
                   for p in phases],
        "energy_kev": ENERGY_KEV, "wavelength_angstrom": WAVELENGTH_A, "detector": detector, "seed": seed,
        **({"distance_m": distance_m} if distance_m != 0.2 else {}),
        **({"texture": {name: t.to_dict() for name, t in texture.items()}} if texture else {}),
        "scan": {"nz": nz, "nomega": nomega, "nx": nx, "order": order, "fast_axis": fast_axis,
                 "omega_range_deg": omega_range_deg}}
        | ({} if env is None else {"environment": env.truth(nx)}), indent=2))

    wf = {
        "inputs": {"frames": frames_template, "poni": "geometry.poni", "mask": "mask.edf",
                   "monitor": "monitor.txt", "scan_file": "scan.csv",
                   **({} if mu is None else {"transmission": "transmission.txt"})},
        "scan": {"nz": nz, "nomega": nomega, "nx": nx, "fast_axis": fast_axis, "order": order,
                 "omega_range_deg": omega_range_deg},
        "integrate": {"npt_rad": npt_rad, "unit": "q_nm^-1"},
        "recon": {"algorithm": "fbp", "filter": "ramp"},
        "pdf": {"composition": "Ni", "qmin": 1.0, "qmax": 20.0, "rpoly": 0.9, "rmin": 0.5, "rmax": 20.0,
                "rstep": 0.01, "lorch": True},
        "store": {"path": "run.zarr", "omega_chunk": min(16, nomega)},
    }
    if background is not None:
        wf["inputs"]["background_scan"] = background

    # last, and whole at once (renamed into place): a watcher that sees it finds every file it names
    part = out / ".workflow.yaml.part"
    part.write_text("# written by `xrdct simulate`; paths are relative to this file\n"
                    + yaml.safe_dump(wf, sort_keys=False))
    part.replace(out / "workflow.yaml")
    return SimulatedScan(root=out, workflow=out / "workflow.yaml", frames_template=frames_template,
                         poni=out / "geometry.poni", mask=out / "mask.edf", monitor=out / "monitor.txt",
                         scan_file=out / "scan.csv", truth=out / "truth.npz", nz=nz, nomega=nomega, nx=nx,
                         detector=detector, phases=tuple(p.name for p in phases), fmt=fmt, fast_axis=fast_axis,
                         order=order)


def stream_frames(sources: list[Path], targets: list[Path], rate_hz: float, *, in_place: bool = False,
                  link: bool = False, pieces: int = 4, stop=None, on_written=None) -> np.ndarray:
    """Write frame files at a steady rate, as a detector does: ``targets[i]`` gets the bytes of
    ``sources[i % len(sources)]`` at ``t0 + i / rate_hz`` (s).

    By default each frame is written under a temporary name in the same folder
    (``.NAME.part``) and renamed into place when whole, as a Pilatus or a data mover does; with
    ``in_place`` it is written under its final name in ``pieces`` parts spread over the frame's
    1 / rate_hz, so that a reader sees partial files.  ``link``: the temporary name is a hard link
    to the source (no bytes written: a long scan cycling over a few distinct frames).  ``stop`` (a
    ``threading.Event``) ends the stream early; ``on_written(i, epoch)`` is called after each frame.  Returns the epoch
    seconds at which each frame became whole under its final name (NaN: not written).
    """

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
