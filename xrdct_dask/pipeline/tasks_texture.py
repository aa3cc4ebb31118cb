"""The texture stage's task: per voxel of a block of rows, each reflection's intensity, position,
d-spacing and strain in every sector, its texture index and orientation (:mod:`xrdct_dask.texture`)."""

from __future__ import annotations

import time

import numpy as np

from xrdct_dask import store
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.task import SliceTasks
from xrdct_dask.texture import d_and_strain, fit_peaks, peak_range, peak_window, texture_figures


def peak_windows(ctx: RunContext, radial: np.ndarray) -> list[slice]:
    """The radial bins of each of the workflow's ``texture.peaks`` (:func:`~xrdct_dask.texture.peak_window`)."""
    wf = ctx.workflow
    return [peak_window(radial, *peak_range(p.d_angstrom, p.d_window, p.q_range, wf.integrate.unit, ctx.wavelength_A))
            for p in wf.texture.peaks]


def texture_rows(z: int, ys: slice, ctx: RunContext, *deps) -> dict:
    """Read each reflection's radial window of the reconstructed sectors of rows ``ys`` of slice
    ``z`` (``recon/intensity``, one sector's chunk at a time), fit it, write ``texture/``.

    A sector that sees none of a reflection's window (no pixel of the detector there: its
    sinogram, and so its volume, is exactly 0) gets NaN, not an intensity of 0."""
    t0 = time.perf_counter()
    wf, path = ctx.workflow, ctx.store_path
    radial = store.open_array(path, "q", "r")[:]
    chi = store.open_array(path, "chi", "r")[:]
    unit = wf.integrate.unit
    figures: dict[str, list] = {n: [] for n in (*store.TEXTURE_VOXEL, *store.TEXTURE_SECTOR)}
    for peak, win in zip(wf.texture.peaks, peak_windows(ctx, radial)):
        prof = store.read_chunked(path, f"{store.RECON}/intensity", (z, ys, slice(None), slice(None), win), 2)
        seen = np.any(prof != 0, axis=(0, 1, 3))  # (nchi,)
        intensity, position = fit_peaks(prof, radial[win])
        intensity[..., ~seen] = np.nan
        position[..., ~seen] = np.nan
        index, orientation = texture_figures(intensity, chi)
        d, strain, d0 = d_and_strain(position, unit, ctx.wavelength_A, peak.d0_angstrom)
        for name, value in (("intensity", intensity), ("position", position), ("d_angstrom", d), ("strain", strain),
                            ("index", index), ("orientation_deg", orientation), ("d0_angstrom", d0)):
            figures[name].append(value)
    for name, values in figures.items():
        store.write_region(path, f"{store.TEXTURE}/{name}", (slice(z, z + 1), ys), np.stack(values, axis=-1)[None])
    store.mark_done(path, "texture", (z, ys.start // ctx.layout.y_chunk))
    return {"stage": "texture", "z": z, "rows": (ys.start, ys.stop), "peaks": len(wf.texture.peaks),
            "seconds": time.perf_counter() - t0}


def add_tasks(b: SliceTasks, st) -> None:
    """The texture row blocks of slice ``b.z`` still to do, after the slice's recon tasks still to do."""
    nx, yc = b.ctx.workflow.scan.nx, b.ctx.layout.y_chunk
    for i in b.pending(st.name, -(-nx // yc)):
        b.add(st.name, i * yc, texture_rows, b.z, slice(i * yc, min((i + 1) * yc, nx)), b.ctx, *b.deps(st))
