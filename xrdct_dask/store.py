"""The zarr v3 layout of a run, in one place: names, dimensions, chunks, attrs, regions.

    run.zarr/
      z, omega, x, y, q, r               coordinates (also repeated inside each group, so that
                                         ``xarray.open_zarr(path, group=...)`` is self-contained)
      reduced/intensity  f32 (z, omega, x, q)   chunks (1, omega_chunk, nx, q_chunk)
      reduced/sigma      f32 (z, omega, x, q)
      reduced/monitor    f32 (z, omega, x)
      reduced/total      f32 (z, omega, x)      sum over q of intensity (centre finding, previews)
      reduced/frame_index int64 (z, omega, x)   acquisition index of the frame at each point (-1: none)
      reduced/frame_ok   bool (z, omega, x)     false = missing or corrupt frame
      reduced/frame_status int8 (z, omega, x)   xrdct_dask.io.status.FrameStatus code (-1 = not yet written)
      recon/intensity    f32 (z, y, x, q)       chunks (1, nx, nx, q_chunk)
      pdf/G              f32 (z, y, x, r)       chunks (1, nx, nx, r_chunk)
      pdf/scale, pdf/fq_highq_rms, pdf/lowr_slope, pdf/lowr_residual, pdf/ok   (z, y, x) per-voxel
                                                S(Q) scale and quality figures (see xrdct_dask.pdf)
      pdf/G_sinogram     f32 (z, omega, x, r)   pdf-then-recon only: G(r) of every frame
      pdf/aux_sinogram   f32 (z, omega, x, channel)  pdf-then-recon only: scale + quality inputs
      attrs: workflow, versions, input digest, engine, stage status

The store is created whole before any compute (template first); every task writes only its own
chunk-aligned region, so a retried task rewrites identical bytes and tasks never share a chunk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

REDUCED, RECON, PDF = "reduced", "recon", "pdf"
FORMAT = "xrdct-dask/1"


@dataclass(frozen=True, order=True)
class FrameBlock:
    """The frames of one task: slice ``z``, rotation steps ``omega_start:omega_stop``, every x."""

    z: int
    omega_start: int
    omega_stop: int

    @property
    def key(self) -> tuple:
        return ("decode-integrate", self.z, self.omega_start)


def frame_blocks(nz: int, nomega: int, omega_chunk: int) -> list[FrameBlock]:
    """All blocks of a scan, aligned with the omega chunks of ``reduced/``."""
    return [FrameBlock(z, w, min(w + omega_chunk, nomega)) for z in range(nz) for w in range(0, nomega, omega_chunk)]


def region_for(block: FrameBlock) -> tuple[slice, slice, slice]:
    """The (z, omega, x) region of ``reduced/`` a block writes (q: all)."""
    return (slice(block.z, block.z + 1), slice(block.omega_start, block.omega_stop), slice(None))


def q_blocks(nq: int, q_chunk: int) -> list[slice]:
    """q ranges of reconstruction tasks, aligned with the q chunks."""
    return [slice(a, min(a + q_chunk, nq)) for a in range(0, nq, q_chunk)]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("xrdct-dask", "numpy", "scipy", "numba", "pyFAI", "fabio", "dask", "distributed", "zarr", "xraydb"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def input_digest(paths: list[Path]) -> str:
    """sha256 over (name, size) of every input file: detects a changed or re-ordered input set
    without reading terabytes."""
    h = hashlib.sha256()
    for p in paths:
        try:
            size = p.stat().st_size
        except OSError:
            size = -1
        h.update(f"{p.name}\0{size}\n".encode())
    return h.hexdigest()


def _coord(group, name: str, values: np.ndarray, attrs: dict) -> None:
    arr = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
                             dimension_names=[name], overwrite=True)
    arr[...] = values
    arr.attrs.update(attrs)


def create_store(path: str | Path, *, nz: int, nomega: int, nx: int, radial: np.ndarray, radial_unit: str,
                 omega_deg: np.ndarray, x_mm: np.ndarray, z_mm: np.ndarray, r_A: np.ndarray | None,
                 omega_chunk: int, q_chunk: int, attrs: dict, overwrite: bool = False,
                 r_chunk: int | None = None) -> zarr.Group:
    """Create every array with its final shape, chunks, dims and coordinates (no data yet)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass store.overwrite=true (or --set store.overwrite=true) to replace it")
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    nq = radial.size
    coords = {
        "z": (np.asarray(z_mm, np.float64), {"units": "mm", "long_name": "slice position"}),
        "omega": (np.asarray(omega_deg, np.float64), {"units": "deg", "long_name": "rotation angle"}),
        "x": (np.asarray(x_mm, np.float64), {"units": "mm", "long_name": "translation / voxel column"}),
        "y": (np.asarray(x_mm, np.float64), {"units": "mm", "long_name": "voxel row"}),
        "q": (np.asarray(radial, np.float64), {"units": radial_unit.split("_", 1)[-1], "radial_unit": radial_unit}),
    }
    if r_A is not None:
        coords["r"] = (np.asarray(r_A, np.float64), {"units": "angstrom"})
    for name, (v, a) in coords.items():
        _coord(root, name, v, a)
    qc = min(q_chunk, nq)
    wc = min(omega_chunk, nomega)
    groups = {
        REDUCED: [("intensity", (nz, nomega, nx, nq), (1, wc, nx, qc), "float32", ["z", "omega", "x", "q"]),
                  ("sigma", (nz, nomega, nx, nq), (1, wc, nx, qc), "float32", ["z", "omega", "x", "q"]),
                  ("monitor", (nz, nomega, nx), (1, wc, nx), "float32", ["z", "omega", "x"]),
                  ("total", (nz, nomega, nx), (1, wc, nx), "float32", ["z", "omega", "x"]),
                  ("frame_index", (nz, nomega, nx), (1, wc, nx), "int64", ["z", "omega", "x"]),
                  ("frame_ok", (nz, nomega, nx), (1, wc, nx), "bool", ["z", "omega", "x"]),
                  ("frame_status", (nz, nomega, nx), (1, wc, nx), "int8", ["z", "omega", "x"])],
        RECON: [("intensity", (nz, nx, nx, nq), (1, nx, nx, qc), "float32", ["z", "y", "x", "q"])],
    }
    if r_A is not None:
        rc = min(r_chunk or r_A.size, r_A.size)
        groups[PDF] = [("G", (nz, nx, nx, r_A.size), (1, nx, nx, rc), "float32", ["z", "y", "x", "r"])]
    for gname, arrays in groups.items():
        g = root.create_group(gname)
        dims = {d for *_, dn in arrays for d in dn}
        for d in dims:
            _coord(g, d, *coords[d])
        for name, shape, chunks, dtype, dimnames in arrays:
            fill = {"bool": False, "int8": -1, "int64": -1}.get(dtype, np.nan)
            g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, dimension_names=dimnames)
    root.attrs.update({"format": FORMAT, "stage_status": {REDUCED: "pending", RECON: "pending", PDF: "pending"},
                       **attrs})
    return root


PDF_VOXEL_FIGURES = ("scale", "fq_highq_rms", "lowr_slope", "lowr_residual")
_PDF_FIGURE_ATTRS = {
    "scale": {"long_name": "self-scattering level N of S(Q) (data units per atom)"},
    "fq_highq_rms": {"units": "1/angstrom", "long_name": "rms of F(Q) over the top 10 % of [qmin, qmax]"},
    "lowr_slope": {"units": "1/angstrom^3", "long_name": "slope of G on [rpoly, lowr_max] through 0 (-4 pi rho0)"},
    "lowr_residual": {"units": "1/angstrom^2", "long_name": "rms of G about that line on [rpoly, lowr_max]"},
}


def create_pdf_arrays(path: str | Path, *, nz: int, nomega: int, nx: int, nr: int, omega_chunk: int, r_chunk: int,
                      sinograms: bool, aux_channels: list[str], attrs: dict) -> None:
    """Add to the ``pdf`` group made by :func:`create_store` the per-voxel figures next to G
    (``scale``, ``fq_highq_rms``, ``lowr_slope``, ``lowr_residual`` f32 and ``ok`` bool, all
    (z, y, x)), and with ``sinograms`` (order pdf-then-recon) ``G_sinogram`` (z, omega, x, r) and
    ``aux_sinogram`` (z, omega, x, channel); the transform's parameters go to the group's attrs."""
    root = zarr.open_group(str(path), mode="r+")
    g = root[PDF]
    g["G"].attrs.update({"units": "1/angstrom^2", "long_name": "G(r) = 4 pi r [rho(r) - rho0]"})
    for name in PDF_VOXEL_FIGURES:
        a = g.create_array(name, shape=(nz, nx, nx), chunks=(1, nx, nx), dtype="float32", fill_value=np.nan,
                           dimension_names=["z", "y", "x"])
        a.attrs.update(_PDF_FIGURE_ATTRS[name])
    g.create_array("ok", shape=(nz, nx, nx), chunks=(1, nx, nx), dtype="bool", fill_value=False,
                   dimension_names=["z", "y", "x"]).attrs["long_name"] = "G computed (scattering strong enough)"
    if sinograms:
        _coord(g, "omega", root["omega"][:], dict(root["omega"].attrs))
        _coord(g, "channel", np.arange(len(aux_channels)), {"long_name": "aux_sinogram channel",
                                                             "names": list(aux_channels)})
        wc, rc = min(omega_chunk, nomega), min(r_chunk, nr)
        g.create_array("G_sinogram", shape=(nz, nomega, nx, nr), chunks=(1, wc, nx, rc), dtype="float32",
                       fill_value=np.nan, dimension_names=["z", "omega", "x", "r"]).attrs.update(
            {"units": "1/angstrom^2", "long_name": "G(r) of each frame with the fixed scale pdf.scale (the frame's "
                                                   "own G: times pdf.scale / aux_sinogram channel 0)"})
        g.create_array("aux_sinogram", shape=(nz, nomega, nx, len(aux_channels)),
                       chunks=(1, wc, nx, len(aux_channels)), dtype="float32", fill_value=np.nan,
                       dimension_names=["z", "omega", "x", "channel"]).attrs.update(
            {"long_name": "per frame: scale N, then G(r_low) and F(q_top) with the fixed scale pdf.scale"})
    g.attrs.update(attrs)


def open_array(path: str | Path, name: str, mode: str = "r+") -> zarr.Array:
    return zarr.open_array(str(Path(path) / name), mode=mode)


def write_reduced(path, block: FrameBlock, intensity, sigma, monitor, frame_status) -> None:
    """Write one block: intensity, sigma ``(nw, nx, nq)``; monitor, frame_status ``(nw, nx)``.

    ``frame_status`` is written last: a block whose status reads -1 was not (completely) written.
    """
    reg = region_for(block)
    ok = frame_status == 0
    open_array(path, f"{REDUCED}/intensity")[reg] = intensity[None]
    open_array(path, f"{REDUCED}/sigma")[reg] = sigma[None]
    open_array(path, f"{REDUCED}/monitor")[reg] = monitor[None]
    open_array(path, f"{REDUCED}/total")[reg] = np.where(ok, np.nansum(intensity, axis=-1), np.nan)[None]
    open_array(path, f"{REDUCED}/frame_ok")[reg] = ok[None]
    open_array(path, f"{REDUCED}/frame_status")[reg] = frame_status.astype(np.int8)[None]


def consolidate(path) -> None:
    """Write consolidated metadata (one read opens the whole hierarchy, as xarray prefers).

    Call again after any attrs change: readers trust the consolidated copy."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def set_stage_status(path, stage: str, status: str) -> None:
    root = zarr.open_group(str(path), mode="r+")
    st = dict(root.attrs.get("stage_status", {}))
    st[stage] = status
    root.attrs["stage_status"] = st
    consolidate(path)


def read_attrs(path) -> dict:
    return json.loads(json.dumps(dict(zarr.open_group(str(path), mode="r").attrs)))
