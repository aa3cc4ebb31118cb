"""What the viewer shows, read from a run's store: maps, patterns, sinograms, d-spacing lines, files.

Everything is read with zarr in read mode, without locks and without writing (a store being
filled by ``xrdct watch`` included: zarr replaces chunks by rename, so a read sees a chunk whole,
old or new).  Each slice is read from its view copy (:mod:`xrdct_dask.store.viewcopy`) once the run
has written it (``tasks/view``), else from the chunks the run computes with -- exact, and as fast
as those chunks allow (fine for small slices; a 1000 x 1000 slice's q map then decodes a q
block).  Files written for other programs (.xy, .gr) always hold the exact stored values.

A run with azimuthal sectors (``integrate.npt_azim > 1``: ``recon/intensity`` (z, y, x, chi, q))
is shown as the mean over its sectors (the whole ring, as a 1D run shows it) and has no view copy;
its ``texture/`` arrays are maps of their own, one per reflection (and per sector where the array
has a chi axis): ``texture/index [Ni 111]``, ``texture/strain [Ni 111, chi -85°]``.

Map images are ``(ny, nx)`` float32 with row 0 at the lowest y (drawn y up, as the notebooks
draw them); patterns are ``(nq,)`` on the store's radial axis (``q`` coordinate, its unit), G(r)
``(nr,)`` on ``r`` (angstrom).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from xrdct_dask import store
from xrdct_dask.errors import XrdctError
from xrdct_dask.io.status import usable
from xrdct_dask.pdf.transform import radial_to_q_A
from xrdct_dask.pipeline.stages import writer_of
from xrdct_dask.store import viewcopy
from xrdct_dask.view.summary import RADIAL_NAMES, pretty_unit

VOXEL_MAP_DIMS = ("z", "y", "x")
# texture/ arrays: a map per reflection (and per sector)
INDEXED_MAP_DIMS = {("z", "y", "x", "peak"): ("peak",), ("z", "y", "x", "chi", "peak"): ("chi", "peak")}


class ViewError(XrdctError, ValueError):
    """A store or request the viewer cannot show, in one line."""


@dataclass(frozen=True)
class Axis:
    """A coordinate: ``values``, ``name`` as printed (q, 2θ, r, ...), ``units`` (pretty), ``label``."""

    values: np.ndarray
    name: str
    units: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.units})" if self.units else self.name


def robust_limits(img: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Colour limits from the ``low`` and ``high`` percentiles of the finite values (a few hot or
    dead voxels never set the scale); ``(0, 1)`` without finite values, widened where flat."""
    v = np.asarray(img)[np.isfinite(img)]
    if v.size == 0:
        return 0.0, 1.0
    if v.size > 250_000:  # percentiles of a regular subsample: same limits, a fraction of the sort
        v = v[:: v.size // 250_000]
    lo, hi = (float(x) for x in np.percentile(v, [low, high]))
    if not hi > lo:
        pad = abs(lo) * 0.01 or 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi


def d_to_radial(d_A, unit: str, wavelength_A: float) -> np.ndarray:
    """The radial position of d-spacings ``d_A`` (angstrom) in a pyFAI unit: q = 2 pi / d
    (q_A^-1; x10 for q_nm^-1), 2theta = 2 asin(lambda / 2d) (NaN where the wavelength cannot reach it)."""
    d = np.asarray(d_A, np.float64)
    if unit == "q_A^-1":
        return 2 * np.pi / d
    if unit == "q_nm^-1":
        return 20 * np.pi / d
    if unit == "2th_deg":
        with np.errstate(invalid="ignore"):
            return np.degrees(2 * np.arcsin(wavelength_A / (2 * d)))
    raise ViewError(f"radial unit {unit}: d-spacings cannot be placed on it")


def radial_to_d(x, unit: str, wavelength_A: float) -> np.ndarray:
    """d (angstrom) of radial positions ``x`` in a pyFAI unit (the inverse of :func:`d_to_radial`)."""

    with np.errstate(divide="ignore", invalid="ignore"):
        return 2 * np.pi / radial_to_q_A(np.asarray(x, np.float64), unit, wavelength_A)


class RunData:
    """A run's store as the viewer reads it.  ``path``: the store (refused in one line with
    :class:`ViewError` unless it is a run of this program); ``phases``: ``{name: [d (angstrom),
    ...]}`` to mark on patterns (default: the run's workflow ``view.phases``)."""

    def __init__(self, path, phases: dict | None = None):
        self.path = Path(path)
        try:
            self.attrs = store.run_attrs(self.path)
        except ValueError as err:
            raise ViewError(str(err)) from None
        if not (self.path / store.RECON / "intensity" / "zarr.json").is_file():
            raise ViewError(f"{self.path}: an xrdct-dask store without recon/intensity")
        rec = store.open_array(self.path, f"{store.RECON}/intensity", "r")
        # with sectors (z, y, x, chi, q): shown as their mean over chi
        self.nz, self.ny, self.nx, self.nq = (*rec.shape[:3], rec.shape[-1])
        self.nchi = rec.shape[3] if rec.ndim == 5 else 1
        self._map_index: dict[str, tuple[str, tuple]] | None = None
        self.has_pdf = (self.path / store.PDF / "G" / "zarr.json").is_file()
        self.has_copy = viewcopy.has_copy(self.path)
        self._state: store.TaskState | None = None
        self.view = viewcopy.layout_of(self.path) if self.has_copy else None
        wf = self.attrs.get("workflow", {})
        self.unit = str(store.open_array(self.path, "q", "r").attrs.get("radial_unit")
                        or wf.get("integrate", {}).get("unit", "q_nm^-1"))
        self.wavelength_A = float(self.attrs.get("wavelength_angstrom") or np.nan)
        given = wf.get("view", {}).get("phases") if phases is None else phases
        self.phases = {str(k): [float(d) for d in v] for k, v in (given or {}).items()}

    # ---- axes -------------------------------------------------------------------------------
    @functools.cached_property
    def q(self) -> Axis:

        arr = store.open_array(self.path, "q", "r")
        return Axis(arr[:], RADIAL_NAMES.get(self.unit.split("_")[0], "radial"), pretty_unit(arr.attrs.get("units")))

    @functools.cached_property
    def r(self) -> Axis | None:
        if not self.has_pdf:
            return None
        return Axis(store.open_array(self.path, "r", "r")[:], "r", "Å")

    def _coord(self, name: str, label: str | None = None) -> Axis:
        arr = store.open_array(self.path, name, "r")
        units = arr.attrs.get("units")
        return Axis(arr[:] if units else np.arange(arr.shape[0], dtype=float), label or name,
                    pretty_unit(units) if units else "steps")

    @functools.cached_property
    def x(self) -> Axis:
        return self._coord("x")

    @functools.cached_property
    def y(self) -> Axis:
        return self._coord("y")

    @functools.cached_property
    def z(self) -> Axis:
        return self._coord("z")

    @functools.cached_property
    def omega(self) -> Axis:
        return self._coord("omega", "ω")

    @property
    def r_view(self) -> np.ndarray | None:
        """The r points of G(r) as shown: the copy's (averaged ``r_bin`` at a time) or the store's."""
        if self.r is None:
            return None
        if self.view is None or self.view.r_bin == 1:
            return self.r.values
        return viewcopy.block_mean(self.r.values, (self.view.r_bin,)).astype(np.float64)

    def units(self, name: str) -> str:
        """The pretty unit of array ``name`` (``recon/intensity``, ``pdf/G``, a map of :meth:`voxel_maps`, ...)."""
        return pretty_unit(store.open_array(self.path, name.split(" [")[0], "r").attrs.get("units"))

    def _sector_mean(self, name: str, index: tuple, axis: int) -> np.ndarray:
        """``store[name][index]`` (read as :func:`store.read_chunked` along ``axis``), of a store
        with sectors the mean over chi of ``index`` with every sector (chi comes before the last
        dimension: ``index`` names the others)."""
        if self.nchi == 1:
            return store.read_chunked(self.path, name, index, axis)
        block = store.read_chunked(self.path, name, (*index[:-1], slice(None), index[-1]), axis)
        chi = sum(not isinstance(i, (int, np.integer)) for i in index[:-1])  # chi's axis in the block
        with np.errstate(all="ignore"):
            return np.nanmean(block, axis=chi).astype(np.float32)

    # ---- what is done -----------------------------------------------------------------------
    def state(self, refresh: bool = False) -> store.TaskState:
        """The done-markers (listed, not read: cheap enough to poll every second), as last
        looked at (``refresh``: look again)."""
        if refresh or self._state is None:
            self._state = store.task_state(self.path)
        return self._state

    def copy_done(self, z: int, state: store.TaskState | None = None) -> bool:
        state = state or self.state()
        copied = state.get(writer_of(f"{viewcopy.VIEW}/recon"))
        return self.has_copy and copied is not None and bool(copied[z].all())

    def voxel_maps(self) -> list[str]:
        """Every other per-voxel map of the store: ``group/name`` of (z, y, x) arrays (pdf/scale,
        pdf/ok), and of the texture arrays one per reflection, ``texture/index [Ni 111]``, and
        per reflection and sector, ``texture/strain [Ni 111, chi -85°]``."""
        return list(self._maps())

    def _maps(self) -> dict[str, tuple[str, tuple]]:
        """``{map name: (array path, index after (z, y, x))}`` of :meth:`voxel_maps` (read once:
        the arrays of a store are made with it)."""
        if self._map_index is None:

            out: dict[str, tuple[str, tuple]] = {}
            root = zarr.open_group(str(self.path), mode="r")
            for gname, group in sorted(root.groups()):
                if gname in (store.TASKS, viewcopy.VIEW):
                    continue
                for name, arr in sorted(group.arrays()):
                    dims = tuple(arr.metadata.dimension_names or ())
                    if dims == VOXEL_MAP_DIMS:
                        out[f"{gname}/{name}"] = (f"{gname}/{name}", ())
                    elif dims in INDEXED_MAP_DIMS:
                        out |= self._indexed_maps(f"{gname}/{name}", arr, INDEXED_MAP_DIMS[dims])
            self._map_index = out
        return self._map_index

    def _indexed_maps(self, path: str, arr, extra: tuple) -> dict[str, tuple[str, tuple]]:
        names = store.open_array(self.path, "peak", "r").attrs.get("names") or []
        labels = [names[p] if p < len(names) else f"peak {p}" for p in range(arr.shape[-1])]
        if extra == ("peak",):
            return {f"{path} [{labels[p]}]": (path, (p,)) for p in range(arr.shape[-1])}
        chi = store.open_array(self.path, "chi", "r")[:]
        return {f"{path} [{labels[p]}, chi {chi[k]:g}°]": (path, (k, p))
                for p in range(arr.shape[-1]) for k in range(arr.shape[-2])}

    # ---- maps -------------------------------------------------------------------------------
    def q_map(self, z: int, qi: int, copy: bool | None = None) -> np.ndarray:
        """The reconstruction of slice ``z`` at q bin ``qi``: ``(ny, nx)`` (the copy's: ``(ny/s, nx/s)``)."""
        if self._use_copy(z, copy):
            scale = store.open_array(self.path, f"{viewcopy.VIEW}/recon_scale", "r")[z, qi]
            return store.open_array(self.path, f"{viewcopy.VIEW}/recon", "r")[z, :, :, qi].astype(np.float32) / scale
        return self._sector_mean(f"{store.RECON}/intensity", (z, slice(None), slice(None), qi), 0)

    def q_range_map(self, z: int, q0: int, q1: int, copy: bool | None = None) -> np.ndarray:
        """The reconstruction of slice ``z`` summed over q bins ``q0 .. q1 - 1`` (NaN counted as 0):
        from the copy, the partial 64-bin tiles at the two ends and the coarse sums between."""
        q0, q1 = max(0, q0), min(self.nq, q1)
        if q1 <= q0:
            raise ViewError(f"empty q range {q0}:{q1}")
        if not self._use_copy(z, copy):
            out = np.zeros((self.ny, self.nx), np.float64)
            arr = store.open_array(self.path, f"{store.RECON}/intensity", "r")
            qc = arr.chunks[-1]
            # one q chunk at a time: from q0 to the end of its chunk, then whole chunks (q0 need not start one)
            for a in [q0, *range((q0 // qc + 1) * qc, q1, qc)]:
                b = min(q1, (a // qc + 1) * qc)
                out += np.nansum(self._sector_mean(f"{store.RECON}/intensity",
                                                   (z, slice(None), slice(None), slice(a, b)), 0), axis=-1)
            return out.astype(np.float32)
        t = viewcopy.TILE
        full0, full1 = -(-q0 // t), q1 // t  # whole tiles in the range
        scale = store.open_array(self.path, f"{viewcopy.VIEW}/recon_scale", "r")[z]
        fine = store.open_array(self.path, f"{viewcopy.VIEW}/recon", "r")
        out = np.zeros((self.view.ny, self.view.ny), np.float64)
        ends = [(q0, q1)] if full1 <= full0 else [(q0, full0 * t), (full1 * t, q1)]
        for a, b in ends:
            if b > a:
                out += np.nansum(fine[z, :, :, a:b].astype(np.float32) / scale[a:b], axis=-1)
        if full1 > full0:
            out += store.open_array(self.path, f"{viewcopy.VIEW}/recon_coarse", "r")[z, :, :, full0:full1].sum(axis=-1)
        return out.astype(np.float32)

    def g_map(self, z: int, ri: int, copy: bool | None = None) -> np.ndarray:
        """G of slice ``z`` at r point ``ri`` (of :attr:`r_view` when read from the copy)."""
        if self._use_copy(z, copy):
            scale = store.open_array(self.path, f"{viewcopy.VIEW}/g_scale", "r")[z, ri]
            return store.open_array(self.path, f"{viewcopy.VIEW}/g", "r")[z, :, :, ri].astype(np.float32) / scale
        return store.read_chunked(self.path, f"{store.PDF}/G", (z, slice(None), slice(None), ri), 0)

    def voxel_map(self, name: str, z: int) -> np.ndarray:
        """A (z, y, x) array of the store at slice ``z`` (``pdf/scale``, ``texture/...``), float32."""
        if name not in self._maps():
            raise ViewError(f"{self.path}: no map {name!r} (there are: {', '.join(self.voxel_maps()) or 'none'})")
        path, index = self._maps()[name]
        return store.open_array(self.path, path, "r")[(z, slice(None), slice(None), *index)].astype(np.float32)

    def _use_copy(self, z: int, copy: bool | None) -> bool:
        if copy is False or not self.has_copy:
            return False
        return True if copy else self.copy_done(z)

    def binning(self, z: int) -> int:
        """Voxels a side per map pixel of slice ``z`` as shown (1 when read from the chunks)."""
        return self.view.s if self._use_copy(z, None) else 1

    # ---- patterns ---------------------------------------------------------------------------
    def voxel_pattern(self, z: int, iy: int, ix: int, copy: bool | None = None) -> np.ndarray:
        """The reconstructed pattern ``(nq,)`` of voxel (iy, ix) (from the copy: of its s x s block)."""
        if self._use_copy(z, copy):
            s = self.view.s
            scale = store.open_array(self.path, f"{viewcopy.VIEW}/recon_scale", "r")[z]
            return store.open_array(self.path, f"{viewcopy.VIEW}/recon", "r")[z, iy // s, ix // s].astype(
                np.float32) / scale
        pattern = store.open_array(self.path, f"{store.RECON}/intensity", "r")[z, iy, ix]
        if self.nchi > 1:  # (nchi, nq): the mean over the sectors
            with np.errstate(all="ignore"):
                pattern = np.nanmean(pattern, axis=0).astype(np.float32)
        return pattern

    def voxel_g(self, z: int, iy: int, ix: int, copy: bool | None = None) -> np.ndarray | None:
        """G(r) of voxel (iy, ix) (from the copy: of its s x s block, on :attr:`r_view`); None without PDF."""
        if not self.has_pdf:
            return None
        if self._use_copy(z, copy):
            s = self.view.s
            scale = store.open_array(self.path, f"{viewcopy.VIEW}/g_scale", "r")[z]
            g = store.open_array(self.path, f"{viewcopy.VIEW}/g", "r")[z, iy // s, ix // s]
            return g.astype(np.float32) / scale
        return store.open_array(self.path, f"{store.PDF}/G", "r")[z, iy, ix]

    def mean_pattern(self, z: int) -> np.ndarray:
        """The slice's mean voxel pattern ``(nq,)`` (NaN ignored): the copy's, else one pass over
        the slice a chunk of rows at a time."""
        if self._use_copy(z, None):
            return store.open_array(self.path, f"{viewcopy.VIEW}/recon_mean", "r")[z]
        return _mean_over_rows(self.path, f"{store.RECON}/intensity", z)

    def mean_g(self, z: int) -> np.ndarray | None:
        if not self.has_pdf:
            return None
        if self._use_copy(z, None):
            return store.open_array(self.path, f"{viewcopy.VIEW}/g_mean", "r")[z]
        return _mean_over_rows(self.path, f"{store.PDF}/G", z)

    # ---- sinograms --------------------------------------------------------------------------
    def sinogram(self, z: int, qi: int, copy: bool | None = None) -> tuple[np.ndarray, str]:
        """The sinogram ``(nomega, nx)`` of slice ``z`` at q bin ``qi`` and what it is: read from
        reduced/ where that is cheap (:attr:`sinogram_cheap`), else from the copy (the q plane
        holding it, omega and x averaged to its size)."""
        if copy or (copy is None and self._use_copy(z, None) and not self.sinogram_cheap):  # else exact, at q
            vl = self.view
            p = qi // vl.sino_q
            scale = store.open_array(self.path, f"{viewcopy.VIEW}/sino_scale", "r")[z, p]
            img = store.open_array(self.path, f"{viewcopy.VIEW}/sino", "r")[z, p].astype(np.float32) / scale
            a, b = p * vl.sino_q, min((p + 1) * vl.sino_q, self.nq) - 1
            what = f"q bins {a}-{b} averaged" if b > a else f"q bin {a}"
            return img, what
        return (self._sector_mean(f"{store.REDUCED}/intensity", (z, slice(None), slice(None), qi), 0),
                f"q bin {qi}" + (f", mean of {self.nchi} sectors" if self.nchi > 1 else ""))

    @functools.cached_property
    def sinogram_cheap(self) -> bool:
        """Whether a sinogram at one q read from reduced/ decodes little (its q chunks of every
        angle: at most 64 MB), so that it is shown without a view copy."""
        arr = store.open_array(self.path, f"{store.REDUCED}/intensity", "r")
        return arr.shape[1] * arr.shape[2] * arr.chunks[-1] * self.nchi * 4 <= 64 * 2**20

    def total_sinogram(self, z: int) -> np.ndarray:
        """The q-summed sinogram ``(nomega, nx)`` of slice ``z`` (``reduced/total``: what is integrated so far)."""
        return store.open_array(self.path, f"{store.REDUCED}/total", "r")[z]

    def frame_flags(self, z: int) -> np.ndarray:
        """int8 ``(nomega, nx)``: 1 where the frame is flagged (missing, corrupt, ...), 0 where it
        is used, -1 where it is not written yet."""

        st = store.open_array(self.path, f"{store.REDUCED}/frame_status", "r")[z]
        return np.where(st < 0, -1, (~usable(st)).astype(np.int8)).astype(np.int8)

    # ---- d-spacings -------------------------------------------------------------------------
    def phase_lines(self) -> dict[str, np.ndarray]:
        """``{phase: radial positions}`` of the workflow's ``view.phases`` d-spacings on the q axis."""
        out = {}
        for name, ds in self.phases.items():
            x = d_to_radial(ds, self.unit, self.wavelength_A)
            out[name] = x[np.isfinite(x)]
        return out

    def d_of(self, qi: int) -> float | None:
        """d (angstrom) at q bin ``qi`` (None where the unit has no Q)."""
        try:
            d = float(radial_to_d(self.q.values[qi], self.unit, self.wavelength_A))
        except ValueError:
            return None
        return d if math.isfinite(d) else None

    # ---- files ------------------------------------------------------------------------------
    def xy_text(self, z: int, iy: int, ix: int) -> str:
        """The voxel's exact pattern as a two-column ``.xy`` file (radial position, intensity)."""
        pat = self.voxel_pattern(z, iy, ix, copy=False)
        head = (f"# xrdct-dask: reconstructed pattern of voxel z={z} y={iy} x={ix} of {self.path.name}\n"
                f"# {self.q.label}  intensity ({self.units(f'{store.RECON}/intensity')})\n")
        return head + "".join(f"{a:.6g} {b:.8g}\n" for a, b in zip(self.q.values, pat))

    def gr_text(self, z: int, iy: int, ix: int) -> str:
        """The voxel's exact G(r) as a ``.gr`` file (PDFgetX3's layout: a header, ``#### start data``, r G)."""
        if not self.has_pdf:
            raise ViewError(f"{self.path}: no pdf/G in this run")
        g = self.voxel_g(z, iy, ix, copy=False)
        head = (f"[xrdct-dask]\nstore = {self.path}\nvoxel = {z},{iy},{ix}\n"
                f"composition = {self.attrs.get('workflow', {}).get('pdf', {}).get('composition', '')}\n\n"
                "#### start data\n#L r(Å)  G(Å^-2)\n")
        return head + "".join(f"{a:.6g} {b:.8g}\n" for a, b in zip(self.r.values, g))


def _mean_over_rows(path: Path, name: str, z: int) -> np.ndarray:
    """Mean over the voxels of slice ``z`` of a (z, y, x, c) array, NaN ignored, a chunk of rows at a time."""
    arr = store.open_array(path, name, "r")
    total = np.zeros(arr.shape[-1])
    count = np.zeros(arr.shape[-1])
    for a in range(0, arr.shape[1], arr.chunks[1]):
        rows = arr[z, a:a + arr.chunks[1]]  # with sectors (rows, nx, nchi, nq): their mean too
        good = np.isfinite(rows)
        axes = tuple(range(rows.ndim - 1))
        total += np.where(good, rows, 0).sum(axis=axes)
        count += good.sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(np.float32)
