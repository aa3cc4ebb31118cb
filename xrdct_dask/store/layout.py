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
      reduced/scan_flag  int8 (z, omega, x)     DUPLICATE / OUT_OF_ORDER where the scan file placed the frame, else 0
      reduced/transmission f32 (z, omega, x)    inputs.transmission only: the reading after the sample
      reduced/sum_signal, sum_variance, sum_normalization, sum_normalization_squared, count
                         f32 like intensity     integrate.keep_sums only: the integrator's sums (NXazint)
      reduced/background f32 (background_row, x, q)  a measured empty-container / air scan, integrated (only
                                                with inputs.background_scan: 1 row for a line, nomega for a slice)
      reduced/background_total f32 (background_row, x)  its sum over q
      recon/intensity    f32 (z, y, x, q)       chunks (1, nx, nx, q_chunk)
      recon/slice_info   str (z)                JSON per slice from the centre stage: the air columns found
                                                (or why none), the axis estimates and their confidence, the
                                                centre used, the stripe columns and shifts
      recon/air_model    f32 (z, 2, q)          the air subtracted per q: level and slope in x
                                                (xrdct_dask.sinogram.air.air_model), NaN where none
      recon/mu           f32 (z, y, x)          sinogram.absorption only: attenuation per x step
      pdf/G              f32 (z, y, x, r)       chunks (1, nx, nx, r_chunk)
      pdf/scale, pdf/fq_highq_rms, pdf/lowr_slope, pdf/lowr_residual, pdf/ok   (z, y, x) per-voxel
                                                S(Q) scale and quality figures (see xrdct_dask.pdf)
      pdf/G_sinogram     f32 (z, omega, x, r)   pdf-then-recon only: G(r) of every frame
      pdf/aux_sinogram   f32 (z, omega, x, channel)  pdf-then-recon only: scale + quality inputs
      texture/...        f32 (z, y, x, [chi,] peak)  texture.peaks only: intensity, index, orientation,
                                                position, d, strain per voxel (and sector) of each reflection
      tasks/integrate    u8 (z, omega_block)    1 = that block of reduced/ is completely written
      tasks/center       f64 (z)                rotation axis of the slice (pixels); NaN = not yet found
      tasks/recon        u8 (z, q_block)        1 = that q block of recon/ is completely written
      tasks/pdf          u8 (z)                 1 = that slice of pdf/ is completely written
      attrs: workflow, versions, input digest, engine, stage status, template_complete

With azimuthal sectors (``integrate.npt_azim > 1``) the patterns get a ``chi`` axis (degrees, pyFAI's
chi) before q: ``reduced/intensity`` (z, omega, x, chi, q) in chunks (1, omega_chunk, nx, 1, q_chunk)
and ``recon/intensity`` (z, y, x, chi, q) in chunks (1, y_chunk, nx, 1, q_chunk), so that one
sector's sinogram (or volume) of a q block reads without the others'.

Data arrays are compressed with Blosc LZ4 and byte shuffle (``COMPRESSORS``).  The store is
created whole before any compute (template first); every task writes only its own
chunk-aligned region, so a retried task rewrites identical bytes and tasks never share a chunk.
Each task sets its one-element marker in ``tasks/`` (its own chunk) only after its data are
written, and zarr writes every chunk by write-then-rename: after a crash at any instant the
markers name exactly the tasks whose output is whole, which is what a resumed run skips.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from xrdct_dask.integrate.sums import SUM_NAMES
from xrdct_dask.io.status import USABLE, FrameStatus
from xrdct_dask.store.specs import ArraySpec

# Data arrays: byte-shuffled LZ4 in Blosc.  On float32 patterns it compresses better than zarr's
# default (zstd, no shuffle) and several times faster: a decode-integrate task writes ~26 MB per
# 1,600 frames, and at GPU rates the default's compression was a large part of its time.
COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)


REDUCED, RECON, PDF = "reduced", "recon", "pdf"
TEXTURE = "texture"
# the integrator's sums kept next to I and sigma (integrate.keep_sums), pyFAI's / NXazint's names, in its order
SUM_ARRAYS = SUM_NAMES
# texture/ per voxel and reflection ((z, y, x, peak)) and per voxel, sector and reflection ((z, y, x, chi, peak))
TEXTURE_VOXEL = ("index", "orientation_deg", "d0_angstrom")
TEXTURE_SECTOR = ("intensity", "position", "d_angstrom", "strain")


TASKS = "tasks"


FORMAT = "xrdct-dask/1"
# what a new store's template holds besides coordinates: per-frame arrays written before any task
TEMPLATE_WRITES = (f"{REDUCED}/monitor", f"{REDUCED}/frame_index", f"{REDUCED}/scan_flag", f"{REDUCED}/transmission")


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

    out = {}
    for pkg in ("xrdct-dask", "numpy", "scipy", "numba", "pyFAI", "fabio", "dask", "distributed", "zarr", "xraydb"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def file_digest(path) -> str:
    """sha256 of a file's contents (PONI, mask, dark, flat, monitor, scan file: small next to the frames)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _coord(group, name: str, values: np.ndarray, attrs: dict) -> None:
    arr = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
                             dimension_names=[name], overwrite=True)
    arr[...] = values
    arr.attrs.update(attrs)


# ------------------------------------------------------------------------------------------
# what is ours: a store is recognised by the format marker in its root zarr.json (written first),
# and replaced only whole, only when it holds nothing but what this program writes there
# ------------------------------------------------------------------------------------------
COORDS = ("z", "omega", "x", "y", "q", "r", "channel", "chi", "peak")


VIEW = "view"  # the view copy (xrdct_dask.store.viewcopy)
ROOT_ENTRIES = frozenset({"zarr.json", REDUCED, RECON, PDF, TEXTURE, TASKS, VIEW, *COORDS})


def array_specs(*, nz: int, nomega: int, nx: int, nq: int, nr: int, layout, markers=(),
                pdf_sinograms: bool = False, aux_channels: int = 0, transmission: bool = False,
                absorption: bool = False, background_rows: int = 0, nchi: int = 1, sums: bool = False,
                peaks: int = 0) -> list[ArraySpec]:
    """Every data array and done-marker of a store: what :func:`create_store` creates and what
    ``xrdct plan`` counts.  ``nr = 0``: no PDF; ``pdf_sinograms``: the pdf-then-recon arrays;
    ``markers``: the :class:`MarkerSpec` of each stage that records its tasks, in stage order;
    ``transmission``: ``reduced/transmission`` (a transmission reading per frame); ``absorption``:
    ``recon/mu`` (the slices' attenuation maps of the self-absorption correction);
    ``background_rows``: the rows of a measured background scan (0: none); ``nchi > 1``:
    azimuthal sectors (a ``chi`` axis before q, one sector per chunk); ``sums``: the integrator's
    sums (:data:`SUM_ARRAYS`) next to I and sigma; ``peaks``: the ``texture/`` arrays of that many
    reflections."""
    wc, qc, yc, rc = layout.omega_chunk, layout.q_chunk, layout.y_chunk, layout.r_chunk
    frame = ("z", "omega", "x")
    # a pattern: (q,), or (chi, q) with sectors; one sector per chunk
    pat, pchunk, pdims = ((nq,), (qc,), ("q",)) if nchi == 1 else ((nchi, nq), (1, qc), ("chi", "q"))
    out = [ArraySpec(f"{REDUCED}/{n}", (nz, nomega, nx, *pat), (1, wc, nx, *pchunk), "float32", (*frame, *pdims),
                     np.nan) for n in ("intensity", "sigma", *(SUM_ARRAYS if sums else ()))]
    out += [ArraySpec(f"{REDUCED}/{n}", (nz, nomega, nx), (1, wc, nx), dt, frame, fill)
            for n, dt, fill in (("monitor", "float32", np.nan), ("total", "float32", np.nan),
                                ("frame_index", "int64", -1), ("frame_ok", "bool", False),
                                ("frame_status", "int8", -1), ("scan_flag", "int8", -1))]
    if transmission:
        out.append(ArraySpec(f"{REDUCED}/transmission", (nz, nomega, nx), (1, wc, nx), "float32", frame, np.nan))
    if background_rows:
        out.append(ArraySpec(f"{REDUCED}/background", (background_rows, nx, nq), (min(background_rows, wc), nx, qc),
                             "float32", ("background_row", "x", "q"), np.nan))
        out.append(ArraySpec(f"{REDUCED}/background_total", (background_rows, nx), (background_rows, nx), "float32",
                             ("background_row", "x"), np.nan))
    out.append(ArraySpec(f"{RECON}/intensity", (nz, nx, nx, *pat), (1, yc, nx, *pchunk), "float32",
                         ("z", "y", "x", *pdims), np.nan))
    if absorption:
        out.append(ArraySpec(f"{RECON}/mu", (nz, nx, nx), (1, yc, nx), "float32", ("z", "y", "x"), np.nan))
    out.append(ArraySpec(f"{RECON}/slice_info", (nz,), (1,), "str", ("z",), "", compressed=False))
    out.append(ArraySpec(f"{RECON}/air_model", (nz, 2, nq), (1, 2, qc), "float32", ("z", "air_term", "q"), np.nan))
    if nr:
        out.append(ArraySpec(f"{PDF}/G", (nz, nx, nx, nr), (1, yc, nx, rc), "float32", ("z", "y", "x", "r"), np.nan))
        out += [ArraySpec(f"{PDF}/{n}", (nz, nx, nx), (1, yc, nx), "float32", ("z", "y", "x"), np.nan)
                for n in PDF_VOXEL_FIGURES]
        out.append(ArraySpec(f"{PDF}/ok", (nz, nx, nx), (1, yc, nx), "bool", ("z", "y", "x"), False))
        if pdf_sinograms:
            out.append(ArraySpec(f"{PDF}/G_sinogram", (nz, nomega, nx, nr), (1, wc, nx, rc), "float32",
                                 (*frame, "r"), np.nan))
            out.append(ArraySpec(f"{PDF}/aux_sinogram", (nz, nomega, nx, aux_channels), (1, wc, nx, aux_channels),
                                 "float32", (*frame, "channel"), np.nan))
    if peaks:  # one chunk per texture task (a block of voxel rows), all sectors and reflections
        vox = ("z", "y", "x")
        out += [ArraySpec(f"{TEXTURE}/{n}", (nz, nx, nx, peaks), (1, yc, nx, peaks), "float32", (*vox, "peak"), np.nan)
                for n in TEXTURE_VOXEL]
        out += [ArraySpec(f"{TEXTURE}/{n}", (nz, nx, nx, nchi, peaks), (1, yc, nx, nchi, peaks), "float32",
                          (*vox, "chi", "peak"), np.nan) for n in TEXTURE_SECTOR]
    # done-markers: one element (and one chunk) per task, written after the task's data
    for m in markers:
        shape, dims = ((nz,), ("z",)) if m.value else ((nz, m.per_slice), ("z", m.dim))
        out.append(ArraySpec(f"{TASKS}/{m.name}", shape, (1,) * len(shape), "float64" if m.value else "uint8", dims,
                             np.nan if m.value else 0, compressed=False))
    return out


def create_store(path: str | Path, *, nz: int, nomega: int, nx: int, radial: np.ndarray, radial_unit: str,
                 omega_deg: np.ndarray, x_mm: np.ndarray, z_mm: np.ndarray, r_A: np.ndarray | None,
                 layout, attrs: dict, markers=(), aux_channels: list[str] | None = None,
                 pdf_attrs: dict | None = None, transmission: bool = False, absorption: bool = False,
                 chi_deg: np.ndarray | None = None, sums: bool = False, peaks: list[dict] | None = None,
                 background_rows: int = 0, extra_specs=(), group_attrs: dict | None = None) -> zarr.Group:
    """Create every array of :func:`array_specs` with its final shape, chunks, dims and
    coordinates (no data yet) at a new ``path`` (an existing one is refused: replacing goes
    through :func:`create_aside`).

    ``layout`` (:class:`xrdct_dask.store.budget.Layout`) sets the chunks (and is recorded in the root's
    attrs, where the tasks read their block sizes); ``markers`` the done-markers of the stages
    (:class:`MarkerSpec`, in stage order: ``tasks/`` records the order);
    ``aux_channels`` (pdf-then-recon) names the channels of ``pdf/aux_sinogram``; ``pdf_attrs``
    (the transform's parameters) go to the ``pdf`` group; ``transmission``, ``absorption``, ``sums``: as
    :func:`array_specs`; ``chi_deg``: the sector centres (degrees) of a store with sectors; ``peaks``:
    the texture reflections (``{"label", "d_angstrom", ...}`` each: the ``peak`` coordinate's attrs);
    ``background_rows`` the rows of a measured background scan
    (``reduced/background``; 0: none); ``extra_specs`` more arrays (the view copy's,
    :func:`xrdct_dask.store.viewcopy.view_specs`) and ``group_attrs`` their groups' attrs.

    The root's ``zarr.json`` with the format marker (and ``template_complete: false``) is the
    first file written: whatever happens next, the folder is recognisably this program's."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists: a store is created in a new folder")
    root = zarr.open_group(str(path), mode="w-", zarr_format=3,
                           attributes={"format": FORMAT, "template_complete": False})
    # each coordinate: its values and its attrs (strings, plus the names/peaks lists of the label axes)
    coords: dict[str, tuple[np.ndarray, dict[str, Any]]] = {
        "z": (np.asarray(z_mm, np.float64), {"units": "mm", "long_name": "slice position"}),
        "omega": (np.asarray(omega_deg, np.float64), {"units": "deg", "long_name": "rotation angle"}),
        "x": (np.asarray(x_mm, np.float64), {"units": "mm", "long_name": "translation / voxel column"}),
        "y": (np.asarray(x_mm, np.float64), {"units": "mm", "long_name": "voxel row"}),
        "q": (np.asarray(radial, np.float64), {"units": radial_unit.split("_", 1)[-1], "radial_unit": radial_unit}),
    }
    if r_A is not None:
        coords["r"] = (np.asarray(r_A, np.float64), {"units": "angstrom"})
    if aux_channels:
        coords["channel"] = (np.arange(len(aux_channels)), {"long_name": "aux_sinogram channel",
                                                            "names": list(aux_channels)})
    if chi_deg is not None:
        coords["chi"] = (np.asarray(chi_deg, np.float64), {"units": "deg", "long_name": "azimuthal angle chi "
                                                           "(pyFAI's), sector centre"})
    if peaks:
        coords["peak"] = (np.arange(len(peaks)), {"long_name": "texture reflection",
                                                  "names": [p["label"] for p in peaks], "peaks": list(peaks)})
    for name in ("z", "omega", "x", "y", "q", "r", "chi", "peak"):
        if name in coords:
            _coord(root, name, *coords[name])
    specs = array_specs(nz=nz, nomega=len(omega_deg), nx=nx, nq=radial.size, nr=0 if r_A is None else r_A.size,
                        layout=layout, markers=markers, pdf_sinograms=bool(aux_channels),
                        aux_channels=len(aux_channels or ()), transmission=transmission, absorption=absorption,
                        background_rows=background_rows, nchi=1 if chi_deg is None else len(chi_deg), sums=sums,
                        peaks=len(peaks or ())) + list(extra_specs)
    groups: dict[str, list[ArraySpec]] = {}
    for spec in specs:
        groups.setdefault(spec.path.split("/")[0], []).append(spec)
    for gname, arrays in groups.items():
        g = root.create_group(gname)
        for d in sorted({d for spec in arrays for d in spec.dims if d in coords}):
            _coord(g, d, *coords[d])
        for spec in arrays:
            g.create_array(spec.path.split("/")[1], shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype,
                           fill_value=spec.fill, dimension_names=list(spec.dims), shards=spec.shards,
                           **({"compressors": COMPRESSORS} if spec.compressed else
                              # a marker's chunk file exists exactly while it is set (a reset deletes it)
                              {"config": {"write_empty_chunks": False}}))
    if TASKS in groups:
        root[TASKS].attrs["stages"] = [m.name for m in markers]
        for m in markers:
            root[TASKS][m.name].attrs.update({"units": m.units, "long_name": m.long_name})
    if PDF in groups:
        _pdf_attrs(root[PDF], aux_channels)
        root[PDF].attrs.update(pdf_attrs or {})
    for gname, gattrs in (group_attrs or {}).items():
        root[gname].attrs.update(gattrs)
    root.attrs.update({"stage_status": {REDUCED: "pending", RECON: "pending", PDF: "pending"}, **attrs,
                       "layout": layout.to_dict(), "format": FORMAT, "template_complete": False})
    describe_variables(root)
    return root


PDF_VOXEL_FIGURES = ("scale", "fq_highq_rms", "lowr_slope", "lowr_residual")


_PDF_FIGURE_ATTRS = {
    "scale": {"long_name": "self-scattering level N of S(Q) (data units per atom)"},
    "fq_highq_rms": {"units": "1/angstrom", "long_name": "rms of F(Q) over the top 10 % of [qmin, qmax]"},
    "lowr_slope": {"units": "1/angstrom^3", "long_name": "slope of G on [rpoly, lowr_max] through 0 (-4 pi rho0)"},
    "lowr_residual": {"units": "1/angstrom^2", "long_name": "rms of G about that line on [rpoly, lowr_max]"},
}


def _pdf_attrs(g, aux_channels) -> None:
    """What the ``pdf`` group's arrays mean (units, long names)."""
    g["G"].attrs.update({"units": "1/angstrom^2", "long_name": "G(r) = 4 pi r [rho(r) - rho0]"})
    for name in PDF_VOXEL_FIGURES:
        g[name].attrs.update(_PDF_FIGURE_ATTRS[name])
    g["ok"].attrs["long_name"] = "G computed (scattering strong enough)"
    if aux_channels:
        g["G_sinogram"].attrs.update(
            {"units": "1/angstrom^2", "long_name": "G(r) of each frame with the fixed scale pdf.scale (the frame's "
                                                   "own G: times pdf.scale / aux_sinogram channel 0)"})
        g["aux_sinogram"].attrs.update(
            {"long_name": "per frame: scale N, then G(r_low) and F(q_top) with the fixed scale pdf.scale"})


# ------------------------------------------------------------------------------------------
# units and long names of every variable (CF / NeXus readers show them)
# ------------------------------------------------------------------------------------------
_RADIAL_NAMES = {"q": "scattering vector magnitude q", "2th": "scattering angle 2theta",
                 "r": "radial distance on the detector", "d*2": "inverse d-spacing squared", "chi": "azimuthal angle"}


VARIABLE_ATTRS = {
    # (group, name) or name: (units, long_name); "1" = dimensionless (UDUNITS)
    (REDUCED, "intensity"): ("counts", "azimuthally integrated intensity, normalised to the reference monitor"),
    (REDUCED, "sigma"): ("counts", "standard deviation of the integrated intensity"),
    (REDUCED, "monitor"): ("counts", "incident-beam monitor I0 of the frame"),
    (REDUCED, "total"): ("counts", "integrated intensity summed over the radial bins"),
    (REDUCED, "frame_index"): ("1", "acquisition index of the frame at this scan point (-1: no frame)"),
    (REDUCED, "frame_ok"): ("1", "frame used (true) or missing / corrupt (false)"),
    (REDUCED, "frame_status"): ("1", "frame status code (xrdct_dask.io.status.FrameStatus; -1: not yet written)"),
    (REDUCED, "scan_flag"): ("1", "how the scan file placed the frame (FrameStatus code; 0: as planned)"),
    (REDUCED, "transmission"): ("counts", "transmission reading (diode or monitor after the sample) of the frame"),
    (REDUCED, "sum_signal"): ("counts", "sum over the bin's pixels of c (raw - dark), c = pixel share (pyFAI)"),
    (REDUCED, "sum_variance"): ("counts^2", "propagated variance before normalisation (sum of c^2 max(raw, 1) "
                                            "for the Poisson model)"),
    (REDUCED, "sum_normalization"): ("1", "sum of c flat solid-angle polarisation times the relative monitor"),
    (REDUCED, "sum_normalization_squared"): ("1", "sum of the squared normalisation terms"),
    (REDUCED, "count"): ("pixels", "sum of the pixel shares c in the bin"),
    (TEXTURE, "intensity"): ("counts/voxel", "integrated intensity of the reflection in the sector, above a linear "
                                             "background, times the radial bin width"),
    (TEXTURE, "index"): ("1", "texture index: spread (std / mean) of the reflection's intensity over the sectors"),
    (TEXTURE, "orientation_deg"): ("deg", "chi of the strongest intensity (second harmonic over the sectors)"),
    (TEXTURE, "position"): ("radial unit", "fitted peak position of the reflection in the sector (integrate.unit)"),
    (TEXTURE, "d_angstrom"): ("angstrom", "d-spacing of the fitted peak position in the sector"),
    (TEXTURE, "strain"): ("1", "lattice strain (d - d0) / d0 in the sector"),
    (TEXTURE, "d0_angstrom"): ("angstrom", "strain-free d-spacing of the strain (given, or the voxel's mean d)"),
    "chi": ("deg", "azimuthal angle chi (pyFAI's), sector centre"), "peak": ("1", "texture reflection"),
    (REDUCED, "background"): ("counts", "measured empty-container / air background (inputs.background_scan)"),
    (REDUCED, "background_total"): ("counts", "measured background summed over the radial bins"),
    (RECON, "intensity"): ("counts/voxel", "reconstructed diffraction intensity per voxel"),
    (RECON, "slice_info"): ("1", "JSON per slice: air columns, axis estimates, centre used (centre stage)"),
    (RECON, "air_model"): ("counts", "air subtracted per q: level and slope terms (xrdct_dask.sinogram.air.air_model)"),
    (RECON, "mu"): ("1/pixel", "linear attenuation coefficient per x step (self-absorption correction)"),
    (PDF, "G"): ("1/angstrom^2", "G(r) = 4 pi r [rho(r) - rho0]"),
    (PDF, "ok"): ("1", "G computed (scattering strong enough)"),
    (PDF, "scale"): ("1", "self-scattering level N of S(Q) (data units per atom)"),
    (PDF, "G_sinogram"): ("1/angstrom^2", "G(r) of each frame"),
    (PDF, "aux_sinogram"): ("1", "per frame: scale N, G(r_low), F(q_top)"),
    "z": ("mm", "slice position"), "omega": ("deg", "rotation angle"), "x": ("mm", "translation / voxel column"),
    "y": ("mm", "voxel row"), "r": ("angstrom", "interatomic distance r"), "channel": ("1", "aux_sinogram channel"),
}


def frame_status_attrs() -> dict:
    """CF flag attributes describing the codes of ``frame_status`` (and ``scan_flag``)."""

    codes = {-1: "not_written"} | {int(s): s.name.lower() for s in FrameStatus}
    return {"flag_values": list(codes), "flag_meanings": " ".join(codes.values()),
            "codes": {str(k): v.replace("_", " ") for k, v in codes.items()},
            "usable_codes": [int(s) for s in USABLE]}


def describe_variables(root) -> None:
    """Give every array of the store (a zarr group or its path) ``units`` and ``long_name`` attrs
    where it has none (existing attrs are kept), and describe the ``frame_status`` codes
    (:func:`frame_status_attrs`).  Called at the end of :func:`create_store`; safe to call again."""
    if not isinstance(root, zarr.Group):
        root = zarr.open_group(str(root), mode="r+")

    def visit(group, gname: str) -> None:
        for name, arr in group.arrays():
            units, long_name = VARIABLE_ATTRS.get((gname, name), VARIABLE_ATTRS.get(name, (None, None)))
            if name == "q" and "radial_unit" in arr.attrs:
                kind, _, unit = str(arr.attrs["radial_unit"]).partition("_")
                units, long_name = unit, _RADIAL_NAMES.get(kind, f"radial coordinate ({arr.attrs['radial_unit']})")
            new = {k: v for k, v in (("units", units), ("long_name", long_name))
                   if v is not None and k not in arr.attrs}
            if gname == REDUCED and name in ("frame_status", "scan_flag") and "flag_values" not in arr.attrs:
                new.update(frame_status_attrs())
            if new:
                arr.attrs.update(new)
        for name, sub in group.groups():
            visit(sub, name)

    visit(root, "")
