"""Export parts of a run to files other programs read.

``export_pdf_files`` writes PDFgetX3-layout ``.iq``, ``.sq``, ``.fq`` and ``.gr`` files (PDFgui,
diffpy.srfit, xPDFsuite read them) for single voxels, or for the mean pattern of a mask or a box
of voxels.  The curves are recomputed from the reconstructed ``recon/intensity`` with the run's
own PDF parameters (its stored workflow: background, bgscale, scale method, normalization), so a
single voxel's ``.gr`` is the run's ``pdf/G`` of that voxel (recon-then-pdf), and a region's is
the G of the region's mean I(Q), as PDFgetX3 would compute it from that pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrdct_dask import __version__, store
from xrdct_dask.config import WorkflowError, workflow_from_dict
from xrdct_dask.export import ExportError
from xrdct_dask.pdf import compute_pdf, operator_for, radial_to_q_A, structure_functions
from xrdct_dask.pdf.background import edge_background_voxels, load_background
from xrdct_dask.pdf.pdfgetx3 import format_header, write_curve

PDF_TYPES = ("iq", "sq", "fq", "gr")


@dataclass(frozen=True)
class Selection:
    """Voxels of the reconstruction: ``label`` names the output files, ``index`` is a boolean
    ``(nz, ny, nx)`` mask (True = averaged into this selection)."""

    label: str
    index: np.ndarray


def parse_voxels(spec: str) -> list[tuple[int, int, int]]:
    """``"0,12,10;1,3,4"`` -> ``[(0, 12, 10), (1, 3, 4)]`` (z, y, x)."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        nums = part.split(",")
        if len(nums) != 3 or not all(re.fullmatch(r"-?\d+", n.strip()) for n in nums):
            raise ExportError(f"--voxels: {part!r} is not z,y,x (three integers; several separated by ';')")
        out.append(tuple(int(n) for n in nums))
    if not out:
        raise ExportError("--voxels: no voxel given (z,y,x;z,y,x...)")
    return out


def parse_region(spec: str) -> tuple[slice, slice, slice]:
    """``"0:2,10:20,10:20"`` (z, y, x, Python half-open ranges; a single index allowed) -> slices."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 3:
        raise ExportError(f"--region: {spec!r} is not z0:z1,y0:y1,x0:x1")
    out = []
    for p in parts:
        m = re.fullmatch(r"(\d+)(?::(\d+))?", p)
        if m is None:
            raise ExportError(f"--region: {p!r} in {spec!r} is not a range a:b or an index")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a + 1
        if b <= a:
            raise ExportError(f"--region: empty range {p!r} in {spec!r}")
        out.append(slice(a, b))
    return tuple(out)


def selections(shape, *, voxels=None, mask=None, region=None) -> list[Selection]:
    """The selections asked for, checked against the reconstruction's ``shape`` (nz, ny, nx).

    ``voxels``: list of (z, y, x), one selection each; ``mask``: a ``.npy`` file of a boolean
    ``(nz, ny, nx)`` or ``(ny, nx)`` (every slice) array, one selection (its mean); ``region``:
    three slices, one selection (the box's mean).  Exactly one of them.
    """
    given = [n for n, v in (("--voxels", voxels), ("--mask", mask), ("--region", region)) if v is not None]
    if len(given) != 1:
        raise ExportError("--pdf-files needs exactly one of --voxels, --mask, --region"
                          + (f" (got {', '.join(given)})" if given else ""))
    nz, ny, nx = shape
    out = []
    if voxels is not None:
        for z, y, x in voxels:
            if not (0 <= z < nz and 0 <= y < ny and 0 <= x < nx):
                raise ExportError(f"--voxels: ({z}, {y}, {x}) is outside the reconstruction (z, y, x) = {shape}")
            m = np.zeros(shape, bool)
            m[z, y, x] = True
            out.append(Selection(f"z{z}_y{y}_x{x}", m))
    elif mask is not None:
        path = Path(mask)
        if not path.is_file():
            raise ExportError(f"--mask: {path} not found")
        try:
            m = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ExportError(f"--mask: {path} is not a .npy array ({err})") from None
        if m.shape == (ny, nx):
            m = np.broadcast_to(m, shape)
        if m.shape != tuple(shape):
            raise ExportError(f"--mask: {path} has shape {m.shape}, the reconstruction (z, y, x) is {shape}")
        m = np.asarray(m != 0)
        if not m.any():
            raise ExportError(f"--mask: {path} selects no voxel")
        out.append(Selection(f"mask_{path.stem}", m))
    else:
        zs, ys, xs = region
        if zs.stop > nz or ys.stop > ny or xs.stop > nx:
            raise ExportError(f"--region: z {zs.start}:{zs.stop}, y {ys.start}:{ys.stop}, x {xs.start}:{xs.stop} "
                              f"exceeds the reconstruction (z, y, x) = {shape}")
        m = np.zeros(shape, bool)
        m[zs, ys, xs] = True
        out.append(Selection(f"region_z{zs.start}-{zs.stop}_y{ys.start}-{ys.stop}_x{xs.start}-{xs.stop}", m))
    return out


def _run_workflow(run: Path):
    try:
        attrs = store.run_attrs(run)
    except ValueError as err:
        raise ExportError(str(err)) from None
    # a run made before pdf.scale_method existed used the upper-half fit: export what it stored
    legacy = {} if "scale_method" in attrs["workflow"].get("pdf", {}) else {"pdf.scale_method": "upper-half-fit"}
    try:
        wf = workflow_from_dict(attrs["workflow"], overrides=legacy, source=f"{run} (stored workflow)")
    except WorkflowError as err:
        raise ExportError(str(err)) from None
    if not wf.pdf.enabled:
        raise ExportError(f"{run}: the run has pdf.enabled: false (no PDF parameters to export with)")
    if attrs.get("stage_status", {}).get("recon") != "done":
        raise ExportError(f"{run}: recon/ is not complete (stage recon: {attrs.get('stage_status', {}).get('recon')})")
    return wf, attrs


def export_pdf_files(run: str | Path, outdir: str | Path, *, voxels=None, mask=None, region=None,
                     types=PDF_TYPES) -> list[Path]:
    """Write ``OUTDIR/<run>_<selection>.{iq,sq,fq,gr}`` in PDFgetX3's layout; return the paths.

    I(Q) is the selection's mean reconstructed pattern on [qmin, qmaxinst] minus ``bgscale`` times
    the run's background (a file, or the rim of each voxel's slice for ``edge``); S(Q) and F(Q)
    are after the correction polynomial (S = 1 + F/Q, as in PDFgetX3's files), G(r) on the run's
    r grid.  Q in 1/A.
    ``outdir`` is created if missing; existing files are never replaced.
    """

    run = Path(run)
    bad = [t for t in types if t not in PDF_TYPES]
    if bad:
        raise ExportError(f"unknown PDF file type(s) {', '.join(bad)} (use {', '.join(PDF_TYPES)})")
    wf, attrs = _run_workflow(run)
    p = wf.pdf
    vol = store.open_array(run, f"{store.RECON}/intensity", "r")
    sels = selections(vol.shape[:3], voxels=voxels, mask=mask, region=region)
    radial = store.open_array(run, "q", "r")[:]
    wavelength_A = float(attrs.get("wavelength_angstrom") or 0.0)
    op = operator_for(radial_to_q_A(radial, wf.integrate.unit, wavelength_A), p)
    file_bg = load_background(p.background_file, radial) if p.background == "file" else None
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for sel in sels:
        patterns = []
        for z in np.flatnonzero(sel.index.any(axis=(1, 2))):
            zslice = vol[int(z)]  # (ny, nx, nq)
            pats = np.nan_to_num(zslice[sel.index[z]], nan=0.0).astype(np.float64)
            if p.background == "edge":
                pats = pats - p.bgscale * np.asarray(edge_background_voxels(zslice, p.edge_width), np.float64)
            elif file_bg is not None:
                pats = pats - p.bgscale * file_bg
            patterns.append(pats)
        i_mean = np.concatenate(patterns).mean(axis=0)
        res = compute_pdf(i_mean, op, normalization=p.normalization, fixed_scale=p.scale, dtype=np.float64)
        n = float(res.scale) if p.normalization == "per-pattern" else p.scale
        _, _, f = structure_functions(i_mean, op, scale=n)
        # PDFgetX3's .sq is S after the correction: S = 1 + F/Q (its S(Q) files satisfy this)
        s = 1 + f / np.where(op.q_A > 0, op.q_A, np.inf)
        curves = {"iq": (op.q_A, i_mean[op.sel]), "sq": (op.q_A, s), "fq": (op.q_A, f), "gr": (op.r_A, res.G)}
        stem = f"{run.stem}_{sel.label}"
        comments = [f"xrdct_dask export of {run} ({int(sel.index.sum())} voxel(s): {sel.label})",
                    f"scale N = {n:.6g} ({p.normalization}, scale_method {p.scale_method}); "
                    f"background {p.background}; I(Q) is background-subtracted"]
        if p.normalization == "per-pattern" and not bool(res.ok):
            comments.append("warning: this pattern's scale N <= 0: G = 0")
        for t in types:
            header = format_header(op.params, t, inputfile=f"{run}:recon/intensity[{sel.label}]",
                                   backgroundfile=str(p.background_file or ""),
                                   bgscale=p.bgscale if p.background != "none" else 0.0,
                                   wavelength_A=wavelength_A or None, version=f"xrdct_dask-{__version__}",
                                   comments=comments)
            written.append(write_curve(outdir / f"{stem}.{t}", *curves[t], header))
    return written
