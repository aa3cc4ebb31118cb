"""The view copy: a small copy of each slice laid out for looking, written by the run (stage ``view``).

The store's chunks are made for computing: ``recon/intensity`` holds whole slices for a block of
q bins (1, y_chunk, nx, q_chunk), so one q map of a 1000 x 1000 slice decodes a whole q block
(~1 GB), and one voxel's pattern decodes every q block of its rows.  ``xrdct view`` reads this
copy instead (:mod:`xrdct_dask.view`), made of tiles that serve both questions:

    view/recon         f16 (z, yv, xv, q)    recon/intensity averaged over s x s voxel blocks
                                             (s = ceil(nx / view.map_pixels)), times recon_scale;
                                             chunks (1, 64, 64, 64): a q map decodes the tiles of
                                             one q tile, a voxel pattern those of one voxel tile;
                                             shards (1, all, all, q_shard): a file per q block
      recon_scale      f32 (z, q)            the float16 values are intensity x scale (a power of 2
                                             per q block: float16's range never overflows)
      recon_coarse     f32 (z, yv, xv, q/64) sums over 64 q bins: a q-range sum reads the tiles
                                             at its two ends and this for the middle
      recon_mean       f32 (z, q)            the slice's mean voxel pattern (full resolution)
    view/g, g_scale, g_mean                  the same of pdf/G, r points averaged to steps of at
                                             least R_STEP_MIN_A (G(r) peaks are ~0.1 A wide)
    view/sino          f16 (z, qs, wv, xv)   reduced/intensity averaged over q (qs <= 256 planes)
                                             and omega and x blocks, q-major: one plane per chunk
      sino_scale       f32 (z, qs)

The copy's own layout (:class:`ViewLayout`) is recorded in the ``view`` group's attrs.  Float16
keeps 3 significant digits: plenty for a colour map, and the viewer reads exact values from
``recon/`` and ``pdf/`` where it writes files (.xy, .gr).  :func:`write_view_copy` is a pure
function of the store and one slice, written in parts (:func:`view_parts`: a shard of ``view/recon``
or ``view/g`` with its scale, mean and coarse sums, or the sinogram) that the stage runs as tasks of
their own; each part's done-marker is an element of ``tasks/view``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr

from xrdct_dask import store
from xrdct_dask.store.specs import ArraySpec

VIEW = store.VIEW
# every array of the copy (those of G only with the PDF)
VIEW_ARRAYS = tuple(f"{VIEW}/{n}" for n in ("recon", "recon_scale", "recon_coarse", "recon_mean", "sino", "sino_scale",
                                              "g", "g_scale", "g_mean"))
TILE = 64  # tile edge of the copy's chunks (voxels a side, q bins deep)
SINO_PLANES_MAX = 256  # q planes of the sinogram copy at most
R_STEP_MIN_A = 0.02  # the copy's G(r) step at least (angstrom)
F16_TOP = 2.0**14  # scaled magnitudes stay below this (float16's largest is 65504)


@dataclass(frozen=True)
class ViewLayout:
    """Sizes of a store's view copy: ``s`` voxels a side per map pixel (``ny`` x ``ny`` pixels),
    ``q_shard`` q bins per shard (a file per q block), ``r_bin`` r points per copy point (``nr``
    of them), ``sino_w``/``sino_x`` omega/x steps per sinogram pixel (``nw`` x ``ny_sino``),
    ``sino_q`` q bins per sinogram plane (``nqs`` planes)."""

    nx: int
    nq: int
    nr: int
    nomega: int
    s: int
    q_shard: int
    r_bin: int
    sino_w: int
    sino_q: int

    @property
    def ny(self) -> int:
        return -(-self.nx // self.s)

    @property
    def nr_view(self) -> int:
        return -(-self.nr // self.r_bin) if self.nr else 0

    @property
    def nw(self) -> int:
        return -(-self.nomega // self.sino_w)

    @property
    def nqs(self) -> int:
        return -(-self.nq // self.sino_q)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViewLayout:
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})


def view_layout(*, nx: int, nq: int, nr: int, nomega: int, q_chunk: int, map_pixels: int,
                r_step_A: float | None = None) -> ViewLayout:
    """The copy's sizes for a slice of ``nx`` x ``nx`` voxels, ``nq`` q bins (recon q chunks of
    ``q_chunk``), ``nr`` r points ``r_step_A`` apart and ``nomega`` angles."""
    rb = max(1, round(R_STEP_MIN_A / r_step_A)) if nr and r_step_A else 1
    return ViewLayout(nx=nx, nq=nq, nr=nr, nomega=nomega, s=-(-nx // map_pixels),
                      q_shard=TILE * max(1, min(4, -(-q_chunk // TILE))), r_bin=rb,
                      sino_w=-(-nomega // map_pixels), sino_q=-(-nq // SINO_PLANES_MAX))


def has_view_copy(wf) -> bool:
    """Whether a run of ``wf`` writes the view copy: ``view.write_copy``, and no azimuthal sectors
    (the viewer reads their mean from the chunks)."""
    return wf.view.write_copy and wf.integrate.npt_azim == 1


def view_layout_for(wf, layout, nq: int, nr: int) -> ViewLayout | None:
    """The :class:`ViewLayout` of a new store of workflow ``wf`` with block sizes ``layout``,
    ``nq`` radial bins and ``nr`` r points (None: no view copy, :func:`has_view_copy`)."""
    if not has_view_copy(wf):
        return None
    return view_layout(nx=wf.scan.nx, nq=nq, nr=nr, nomega=wf.scan.nomega, q_chunk=layout.q_chunk,
                       map_pixels=wf.view.map_pixels, r_step_A=wf.pdf.rstep if nr else None)


def _tiles(ny: int) -> int:
    return min(TILE, ny)


def _shard(vl: ViewLayout, name: str) -> int:
    """Points of ``view/<name>`` per shard along its last axis: ``q_shard`` (a multiple of the
    64-point tile), or all of them where there are fewer; the shard's scale, mean and coarse sums
    are chunked alike, so that each shard is written by a task of its own."""
    return min(vl.q_shard, vl.nq if name == "recon" else vl.nr_view)


def view_parts(vl: ViewLayout) -> list[tuple[str, int]]:
    """The view stage's tasks of one slice: ``("recon", c0)`` / ``("g", c0)`` for each shard of
    ``view/recon`` / ``view/g`` starting at point ``c0``, and ``("sino", 0)`` for the sinogram.
    Each writes chunks no other one writes, so a slice's copy is written in parallel."""
    parts = [("recon", c0) for c0 in range(0, vl.nq, _shard(vl, "recon"))]
    if vl.nr:
        parts += [("g", c0) for c0 in range(0, vl.nr_view, _shard(vl, "g"))]
    return parts + [("sino", 0)]


def view_specs(nz: int, vl: ViewLayout) -> list[ArraySpec]:
    """The arrays of the view copy (what :func:`xrdct_dask.store.layout.create_store` creates and
    ``xrdct plan`` counts), written by the ``view`` stage."""
    ny, t = vl.ny, _tiles(vl.ny)
    pad = -(-ny // t) * t

    def tiles(name, nc, shard_c):
        tc = min(TILE, nc)
        return ArraySpec(f"{VIEW}/{name}", (nz, ny, ny, nc), (1, t, t, tc), "float16",
                               ("z", "vy", "vx", name_dim(name)), np.nan,
                               shards=(1, pad, pad, -(-min(shard_c, nc) // tc) * tc))

    qs, gs = _shard(vl, "recon"), _shard(vl, "g")
    out = [tiles("recon", vl.nq, qs),
           ArraySpec(f"{VIEW}/recon_scale", (nz, vl.nq), (1, qs), "float32", ("z", "q"), np.nan),
           ArraySpec(f"{VIEW}/recon_coarse", (nz, ny, ny, -(-vl.nq // TILE)), (1, ny, ny, -(-qs // TILE)),
                     "float32", ("z", "vy", "vx", "q_tile"), np.nan),
           ArraySpec(f"{VIEW}/recon_mean", (nz, vl.nq), (1, qs), "float32", ("z", "q"), np.nan),
           ArraySpec(f"{VIEW}/sino", (nz, vl.nqs, vl.nw, ny), (1, 1, vl.nw, ny), "float16",
                     ("z", "q_plane", "vomega", "vx"), np.nan, shards=(1, vl.nqs, vl.nw, ny)),
           ArraySpec(f"{VIEW}/sino_scale", (nz, vl.nqs), (1, vl.nqs), "float32", ("z", "q_plane"), np.nan)]
    if vl.nr:
        nrv = vl.nr_view
        out += [tiles("g", nrv, gs),
                ArraySpec(f"{VIEW}/g_scale", (nz, nrv), (1, gs), "float32", ("z", "vr"), np.nan),
                ArraySpec(f"{VIEW}/g_mean", (nz, nrv), (1, gs), "float32", ("z", "vr"), np.nan)]
    return out


def view_group_attrs(vl: ViewLayout) -> dict:
    """The ``view`` group's attrs: the copy's layout, and what it is."""
    return {"layout": vl.to_dict(), "long_name": "the view copy (xrdct view): maps and patterns averaged for display, "
                                                 "see xrdct_dask.store.viewcopy"}


def name_dim(name: str) -> str:
    return "q" if name == "recon" else "vr"


def has_copy(path) -> bool:
    """Whether store ``path`` was made with a view copy (its arrays exist; slices done: ``tasks/view``)."""
    return (Path(path) / VIEW / "recon" / "zarr.json").is_file()


def layout_of(path) -> ViewLayout:
    return ViewLayout.from_dict(dict(zarr.open_group(str(Path(path) / VIEW), mode="r").attrs)["layout"])


# ------------------------------------------------------------------------------------------
# block means and the float16 scale
# ------------------------------------------------------------------------------------------
def block_mean(a: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """``a`` averaged over blocks of ``factors`` along its leading axes (NaN ignored; an all-NaN
    block is NaN; the last block of an axis may be smaller).  float32."""
    a = np.asarray(a, np.float32)
    good = np.isfinite(a)
    total = np.where(good, a, 0).astype(np.float64)
    count = good.astype(np.int32)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        starts = np.arange(0, a.shape[axis], f)
        total = np.add.reduceat(total, starts, axis=axis)
        count = np.add.reduceat(count, starts, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def block_sums(a: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Sums of ``a (n, m, ...)`` float32 over s x s blocks of its first two axes (NaN as 0) and
    the count of finite values in each (None where ``a`` has no NaN: every block is full but
    the last ones, whose sizes :func:`block_counts` gives).  One pass where there is no NaN."""
    a = np.asarray(a, np.float32)
    nan = np.isnan(a)
    counts = None
    if nan.any():
        a = np.where(nan, np.float32(0), a)
        counts = (~nan).astype(np.float32)
    if s == 1:
        return a, counts
    starts0, starts1 = np.arange(0, a.shape[0], s), np.arange(0, a.shape[1], s)
    sums = np.add.reduceat(np.add.reduceat(a, starts0, axis=0), starts1, axis=1)
    if counts is not None:
        counts = np.add.reduceat(np.add.reduceat(counts, starts0, axis=0), starts1, axis=1)
    return sums, counts


def block_counts(n: int, m: int, s: int) -> np.ndarray:
    """``(ceil(n/s), ceil(m/s), 1)``: voxels in each s x s block of an ``(n, m)`` grid."""
    rows = np.minimum(s, n - np.arange(0, n, s))
    cols = np.minimum(s, m - np.arange(0, m, s))
    return (rows[:, None] * cols[None, :])[..., None].astype(np.float32)


def bin_last(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` averaged over groups of ``k`` along its last axis (NaN ignored; the last group may
    be smaller), float32."""
    if k == 1:
        return a
    n = a.shape[-1]
    m = n - n % k
    parts = [_group_means(a[..., :m].reshape(a.shape[:-1] + (m // k, k)))]
    if m < n:
        parts.append(_group_means(a[..., None, m:]))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def _group_means(g: np.ndarray) -> np.ndarray:
    """Means over the last axis, NaN ignored (all NaN: NaN); one pass where there is no NaN."""
    nan = np.isnan(g)
    if not nan.any():
        return g.mean(axis=-1, dtype=np.float32)
    count = (~nan).sum(axis=-1)
    total = np.where(nan, np.float32(0), g).sum(axis=-1, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def f16_scale(values: np.ndarray) -> float:
    """A power of 2 that brings the largest finite magnitude of ``values`` to at most F16_TOP (1 for none)."""
    values = np.asarray(values)
    # fmax / fmin skip NaN and keep to one SIMD pass each (no |values| temporary)
    hi, lo = (float(f.reduce(values, axis=None, initial=np.nan)) for f in (np.fmax, np.fmin))
    top = max(abs(v) for v in (hi, lo, 0.0) if math.isfinite(v))
    return 1.0 if top == 0 else float(2.0 ** math.floor(math.log2(F16_TOP / top)))


# ------------------------------------------------------------------------------------------
# the writer: one slice, a block of rows or angles at a time
# ------------------------------------------------------------------------------------------
def _bands(n: int, chunk: int, factor: int) -> list[slice]:
    """Row bands that hold whole chunks of ``chunk`` rows and whole blocks of ``factor``."""
    step = min(n, math.lcm(chunk, factor))
    return [slice(a, min(a + step, n)) for a in range(0, n, step)]


def _write_shard(path: Path, z: int, name: str, vl: ViewLayout, c0: int) -> None:
    """The shard of ``view/<name>`` (``recon`` from recon/intensity, with its 64-point coarse sums;
    ``g`` from pdf/G, r points averaged ``r_bin`` at a time) of slice ``z`` that starts at point
    ``c0``, with its scale and mean: recon row chunks read a band at a time."""
    src, c_bin, coarse = ((f"{store.RECON}/intensity", 1, True) if name == "recon"
                          else (f"{store.PDF}/G", vl.r_bin, False))
    arr = store.open_array(path, src, "r")
    nc_src = arr.shape[3]
    nc = vl.nq if name == "recon" else vl.nr_view
    c1 = min(c0 + _shard(vl, name), nc)
    total = np.zeros(c1 - c0, np.float64)
    count = np.zeros(c1 - c0, np.int64)
    block = np.empty((vl.ny, vl.ny, c1 - c0), np.float32)
    for ys in _bands(vl.nx, arr.chunks[1], vl.s):
        rows = bin_last(arr[z, ys, :, c0 * c_bin:min(c1 * c_bin, nc_src)], c_bin)  # (band, nx, c1 - c0)
        sums, counts = block_sums(rows, vl.s)
        if counts is None:
            counts = block_counts(rows.shape[0], rows.shape[1], vl.s)
            count += rows.shape[0] * rows.shape[1]
        else:
            count += counts.sum(axis=(0, 1), dtype=np.int64)
        total += sums.sum(axis=(0, 1), dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0: an all-NaN block stays NaN
            np.divide(sums, counts, out=block[ys.start // vl.s:-(-ys.stop // vl.s)])
        del rows, sums, counts
    scale = f16_scale(block)
    block *= scale  # in place (a power of 2: exact both ways), no second shard-sized temporary
    store.write_region(path, f"{VIEW}/{name}", (z, slice(None), slice(None), slice(c0, c1)), block.astype(np.float16))
    block /= scale
    store.write_region(path, f"{VIEW}/{name}_scale", (z, slice(c0, c1)), np.full(c1 - c0, scale, np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        store.write_region(path, f"{VIEW}/{name}_mean", (z, slice(c0, c1)),
                           np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32))
    if coarse:  # NaN counts as 0 in a sum over q
        block[np.isnan(block)] = 0
        sums = np.add.reduceat(block, np.arange(0, c1 - c0, TILE), axis=2)
        store.write_region(path, f"{VIEW}/{name}_coarse",
                           (z, slice(None), slice(None), slice(c0 // TILE, c0 // TILE + sums.shape[2])), sums)


def _write_sinogram(path: Path, z: int, vl: ViewLayout) -> None:
    """``view/sino`` of slice ``z``: reduced/intensity averaged over (sino_w, s, sino_q) blocks,
    a band of whole omega chunks at a time, stored q-major."""
    arr = store.open_array(path, f"{store.REDUCED}/intensity", "r")
    out = np.empty((vl.nw, vl.ny, vl.nqs), np.float32)
    for ws in _bands(vl.nomega, arr.chunks[1], vl.sino_w):
        rows = bin_last(store.read_chunked(path, f"{store.REDUCED}/intensity", (z, ws, slice(None), slice(None)), 2),
                        vl.sino_q)
        out[ws.start // vl.sino_w:-(-ws.stop // vl.sino_w)] = block_mean(rows, (vl.sino_w, vl.s))
        del rows
    scale = f16_scale(out)
    store.write_region(path, f"{VIEW}/sino", (z,), np.moveaxis(out * scale, 2, 0).astype(np.float16))
    store.write_region(path, f"{VIEW}/sino_scale", (z,), np.full(vl.nqs, scale, np.float32))


def write_view_part(path, z: int, part: int) -> dict:
    """Write part ``part`` (of :func:`view_parts`) of the view copy of slice ``z`` of store
    ``path`` (the ``view`` group made with the store) from its ``recon/``, ``pdf/G`` and
    ``reduced/`` arrays; returns what was written and the seconds it took.

    Holds one shard of the copy (``ny^2 q_shard`` floats) and a band of whole recon row chunks of
    it, or the slice's binned sinogram (``nw ny nqs`` floats): never a whole slice of a big array."""
    t0 = time.perf_counter()
    path = Path(path)
    vl = layout_of(path)
    name, c0 = view_parts(vl)[part]
    if name == "sino":
        _write_sinogram(path, z, vl)
    else:
        _write_shard(path, z, name, vl, c0)
    return {"stage": "view", "z": z, "part": f"{name}@{c0}", "pixels": vl.ny, "seconds": time.perf_counter() - t0}


def write_view_copy(path, z: int) -> dict:
    """The whole view copy of slice ``z`` in this process, part after part (the run writes the
    parts as tasks of their own, :func:`write_view_part`)."""
    parts = [write_view_part(path, z, i) for i in range(len(view_parts(layout_of(path))))]
    return {"stage": "view", "z": z, "pixels": parts[0]["pixels"], "seconds": sum(p["seconds"] for p in parts)}


def view_bytes(vl: ViewLayout, y_chunk: int, omega_chunk: int) -> int:
    """Bytes a view task holds at most: a shard (float32 + float16) with a band of recon rows (of
    ``y_chunk`` row chunks) and its coarse sums, or the binned sinogram and its float16 copy with a
    band of reduced/ (of ``omega_chunk`` angle chunks)."""
    band = min(vl.nx, math.lcm(y_chunk, vl.s)) * vl.nx * vl.q_shard * 4
    shard = vl.ny * vl.ny * vl.q_shard * 6 + vl.ny * vl.ny * -(-vl.q_shard // TILE) * 4
    sino = vl.nw * vl.ny * vl.nqs * 6 + min(vl.nomega, math.lcm(omega_chunk, vl.sino_w)) * vl.nx * vl.nq * 4
    return int(max(band + shard, sino))
