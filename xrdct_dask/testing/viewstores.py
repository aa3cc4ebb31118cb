"""Run stores written straight in the store's layout from the simulator's ground truth.

For the viewer's tests and benchmark (``benchmarks/bench_view.py``): a store of any size without
simulating and reducing its frames, which at 1000 x 1000 voxels x 2000 q would take hours on a
CPU.  The arrays are what a perfect run would hold: ``recon/intensity`` = the phantom's phase
maps (:func:`~xrdct_dask.simulate.make_phantom`) times their Debye patterns,
``reduced/intensity`` = their pencil-beam projections (skimage ``radon``) times the patterns
(then ``reduced/total``), ``pdf/G`` = G(r) of each voxel's pattern (:func:`xrdct_dask.pdf.compute_pdf`),
with Gaussian noise of ``noise`` times the patterns' mean (so that the chunks compress as measured
data do; one block of noise per block shape, reused) and the frames of ``flagged`` marked
corrupt.  Everything is written a block at a time
(no whole slice of a big array is held), through :func:`xrdct_dask.store.layout.create_store` and
``store.write_region``, so the layout is the run's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrdct_dask import store
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.pdf import build_operator, compute_pdf
from xrdct_dask.simulate import WAVELENGTH_A, make_phantom, omega_angles_deg, phase_library, project
from xrdct_dask.store.budget import choose_layout
from xrdct_dask.store.viewcopy import view_group_attrs, view_layout, view_parts, view_specs, write_view_copy
from xrdct_dask.testing.stores import run_markers

PHASES = ("Ni", "Fe", "NaCl", "aSi")


def phase_patterns(q_nm: np.ndarray) -> np.ndarray:
    """``(4, nq)``: the library's phase patterns per atom (Ni, Fe, NaCl, aSi) on ``q_nm`` (1/nm)."""
    return np.stack([np.interp(q_nm / 10, p.q_A, p.intensity) for p in phase_library()])


def write_phantom_store(path, *, nz: int = 1, nx: int = 24, nomega: int = 24, nq: int = 400, rmax: float = 10.0,
                        rstep: float = 0.02, noise: float = 0.0, flagged=(), view_pixels: int | None = 512,
                        phases: dict | None = None, task_memory: int = 2**30, seed: int = 0,
                        fill_view: bool = True, data_slices: int | None = None) -> Path:
    """Write the store at ``path`` (see the module docstring); returns it.

    ``nq`` bins over q = 8 .. 250 1/nm; G on r = 0.5 .. ``rmax`` (``rmax`` 0: no PDF);
    ``flagged``: (z, omega step, x step) of frames marked corrupt; ``view_pixels``: the view
    copy's ``map_pixels`` (None: no copy), written for every slice when ``fill_view``;
    ``phases``: the workflow's ``view.phases``; ``data_slices``: only the first this many slices
    get recon/, pdf/G and reduced/intensity (the others their per-frame arrays and markers only)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    q_nm = np.linspace(8.0, 250.0, nq)
    pats = phase_patterns(q_nm)
    omega = omega_angles_deg(nomega)
    op = build_operator(q_nm / 10, "Ni", 1.0, 20.0, 0.9, 0.5, rmax, rstep) if rmax else None
    nr = op.r_A.size if op is not None else 0
    lay = choose_layout(nomega=nomega, nx=nx, nq=nq, nr=nr, omega_chunk=16, q_chunk="auto", r_chunk=512,
                        budget=task_memory)
    vl = view_layout(nx=nx, nq=nq, nr=nr, nomega=nomega, q_chunk=lay.q_chunk, map_pixels=view_pixels,
                     r_step_A=rstep) if view_pixels else None
    wf = {"integrate": {"unit": "q_nm^-1", "npt_rad": nq}, "sinogram": {},
          "scan": {"nz": nz, "nomega": nomega, "nx": nx},
          "pdf": {"composition": "Ni", "enabled": bool(nr)}, "view": {"phases": phases or {}}}
    pdf_blocks = -(-nx // lay.y_chunk) if nr else 0
    markers = run_markers(nz, nomega, nx, nq, nr, lay, view=vl)
    extra = {"extra_specs": view_specs(nz, vl), "group_attrs": {store.VIEW: view_group_attrs(vl)}} if vl else {}
    store.create_store(path, nz=nz, nomega=nomega, nx=nx, radial=q_nm, radial_unit="q_nm^-1", omega_deg=omega,
                       x_mm=np.arange(nx) * 0.05, z_mm=np.arange(nz) * 0.05, r_A=op.r_A if op is not None else None,
                       layout=lay, markers=markers, **extra,
                       attrs={"workflow": wf, "wavelength_angstrom": WAVELENGTH_A, "monitor_reference": 1.0})
    flagged = set(map(tuple, flagged))
    # G of each phase's pattern: the phantom's voxels are one phase each (or empty: G = 0)
    sigma = np.float32(noise * pats.mean())
    noise_block: dict[tuple, np.ndarray] = {}

    def noisy(a: np.ndarray) -> np.ndarray:
        # one noise block per shape, reused block after block: drawing 1e10 normals would take the
        # writing's whole time, and a repeat a chunk apart is as incompressible to Blosc as new noise
        if noise:
            if a.shape not in noise_block:
                noise_block[a.shape] = sigma * rng.standard_normal(a.shape, dtype=np.float32)
            a += noise_block[a.shape]
        return a

    g_phase = compute_pdf(pats.astype(np.float64), op, min_scale=1e-9).G.astype(np.float32) if op is not None else None
    for z in range(nz):
        full = data_slices is None or z < data_slices
        maps = make_phantom(nz, nx)[:, z]  # (phase, y, x)
        which = np.where(maps.sum(axis=0) > 0, maps.argmax(axis=0), -1)
        for a in range(0, nx, lay.y_chunk) if full else ():
            b = min(a + lay.y_chunk, nx)
            rows = noisy(np.einsum("pyx,pq->yxq", maps[:, a:b], pats).astype(np.float32))
            store.write_chunked(path, f"{store.RECON}/intensity", (z, slice(a, b), slice(None), slice(None)), rows, 2)
            if g_phase is not None:
                g = np.where(which[a:b, :, None] >= 0, g_phase[np.maximum(which[a:b], 0)], 0).astype(np.float32)
                store.write_chunked(path, f"{store.PDF}/G", (z, slice(a, b), slice(None), slice(None)), g, 2)
                store.write_region(path, f"{store.PDF}/ok", (z, slice(a, b)), which[a:b] >= 0)
                store.write_region(path, f"{store.PDF}/scale", (z, slice(a, b)), (which[a:b] >= 0).astype(np.float32))
        sino = project(maps, omega)  # (phase, nomega, nx)
        for w0 in range(0, nomega, lay.omega_chunk):
            w1 = min(w0 + lay.omega_chunk, nomega)
            frames = noisy(np.einsum("pwx,pq->wxq", sino[:, w0:w1], pats).astype(np.float32)) if full else \
                np.full((w1 - w0, nx, nq), np.nan, np.float32)
            status = np.zeros((w1 - w0, nx), np.int8)
            for zz, w, x in flagged:
                if zz == z and w0 <= w < w1:
                    status[w - w0, x] = FrameStatus.CORRUPT_HEADER
            frames[status != 0] = np.nan
            store.write_reduced(path, store.FrameBlock(z, w0, w1), frames, np.sqrt(np.abs(frames)),
                                np.ones((w1 - w0, nx), np.float32), status)
        for b in range(-(-nq // lay.q_chunk)):
            store.mark_done(path, "recon", (z, b))
        for b in range(-(-nomega // lay.omega_chunk)):
            store.mark_done(path, "integrate", (z, b))
        for b in range(pdf_blocks):
            store.mark_done(path, "pdf", (z, b))
        store.mark_done(path, "center", (z,), nx / 2)
        if vl is not None and fill_view:
            write_view_copy(path, z)
            for part in range(len(view_parts(vl))):
                store.mark_done(path, "view", (z, part))
    store.mark_template_complete(path)
    store.consolidate(path)
    return path
