"""The run's summary picture: what a beamline scientist looks at first.

Top row: the q-summed sinogram of a slice as measured and after the workflow's sinogram
preparation (side by side, one colour scale), the mean reconstructed voxel pattern with the q of
its strongest peaks marked, and which frames of the slice were flagged.  Middle row: the
reconstructed maps at those peaks, each titled with its q and d-spacing (with azimuthal sectors:
of the sectors' mean pattern).  With sectors a texture row follows: the slice's mean intensity at
those peaks in each sector (normalised by its mean over the sectors: flat for a powder), and where
the texture stage ran the first reflection's texture index map and its strain map in the sector
where the slice's strain is largest.  Bottom row (when the PDF stage ran): G(r) of the few voxels
whose diffraction patterns differ most (a phase each, as a rule; marked on the map beside), a G
map at the r where the slice's |G| is largest (diverging colours centred on G = 0), and the
slice's mean G(r).

Orientation as in the notebooks (xarray's ``.plot()``): the first dimension up, the second to the
right, both in the units of the store's coordinates (``units`` attrs: mm, deg; steps where a
coordinate has none).  Every map has a colour bar labelled with the variable's unit.  Everything
is read one slice at a time, a block of voxel rows at a time, and a map larger than
:data:`MAX_DISPLAY` pixels on a side is drawn as block means (the frame flags as block minima: a
flagged frame is never averaged away), so the picture costs the same at any scan size.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.signal import find_peaks

from xrdct_dask import store
from xrdct_dask.config import Sinogram
from xrdct_dask.pdf.transform import radial_to_q_A
from xrdct_dask.sinogram import prep_options, prepare_sinogram

log = logging.getLogger(__name__)

SOFTWARE = "xrdct-dask summary"  # the PNG's Software text: a picture this program may replace
MAX_CANDIDATES = 256  # voxels whose patterns are kept while the slice is read, to choose the distinct ones from
MIN_STRENGTH = 0.05  # ... among those scattering at least this fraction of the slice's strongest
N_VOXEL_CURVES = 4
MAX_DISPLAY = 1000  # pixels per side of a drawn map (a PNG at 90 dpi shows a few hundred)

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def pretty_unit(units: str | None) -> str:
    """A stored unit string as it reads on a plot: ``angstrom`` -> Å, ``1/angstrom^2`` -> Å⁻²,
    ``nm^-1`` -> nm⁻¹, ``A^-1`` -> Å⁻¹; others unchanged ("" for None)."""
    if not units:
        return ""
    u = str(units).strip().replace("angstrom", "Å")
    u = re.sub(r"^A(?=\^|$)", "Å", u)
    m = re.fullmatch(r"1/(\S+?)(?:\^(\d+))?", u)
    if m:  # 1/X^n -> X^-n
        u = f"{m.group(1)}^-{m.group(2) or 1}"
    return re.sub(r"\^(-?\d+)", lambda g: ("" if g.group(1) == "1" else g.group(1)).translate(_SUPERSCRIPT), u)


def label(name: str, units: str | None) -> str:
    """``name (unit)``, or the name alone for a dimensionless quantity."""
    u = pretty_unit(units)
    return f"{name} ({u})" if u and u != "1" else name


def strongest_peaks(pattern: np.ndarray, n: int = 3, min_separation: int = 5) -> list[int]:
    """Indices of the ``n`` highest local maxima of a pattern, at least ``min_separation`` bins apart."""

    p = np.nan_to_num(pattern)
    idx, props = find_peaks(p, distance=min_separation, prominence=0.02 * (p.max() - p.min() + 1e-30))
    order = np.argsort(props["prominences"])[::-1]
    return sorted(int(i) for i in idx[order[:n]])


def distinct_curves(curves: np.ndarray, strength: np.ndarray, n: int, iterations: int = 10) -> list[int]:
    """Rows of ``curves (m, c)`` standing for the (at most) ``n`` groups of rows that differ most.

    Similarity is the Pearson r of two rows.  The groups start from farthest-point sampling (the
    strongest row, then each time the row least like those chosen, none that repeats a chosen
    one: r > 0.999) and are refined by assigning every row to its most similar group centre
    (k-means on the correlation sphere); each group is then represented by its purest row (the one
    whose likeness to its own centre exceeds that to any other centre most; the strongest among
    equals), so a row that mixes two groups (a voxel on a boundary) stands for none.  Groups in the
    order found, the strongest row's first; never a row twice; rows without spread are left out."""
    c = np.nan_to_num(np.asarray(curves, dtype=np.float64))
    c = c - c.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(c, axis=1)
    usable = np.flatnonzero(norm > 0)
    if usable.size == 0:
        return []
    unit = c[usable] / norm[usable, None]
    weight = np.asarray(strength, dtype=np.float64)[usable]
    seeds = [int(np.argmax(weight))]
    farthest = 1 - unit @ unit[seeds[0]]  # 1 - r to the nearest seed
    while len(seeds) < min(n, usable.size):
        k = int(np.argmax(farthest))
        if farthest[k] < 1e-3:
            break
        seeds.append(k)
        farthest = np.minimum(farthest, 1 - unit @ unit[k])
    centres = unit[seeds]
    for _ in range(iterations):
        group = np.argmax(unit @ centres.T, axis=1)
        new = np.stack([unit[group == g].sum(axis=0) if (group == g).any() else centres[g] for g in range(len(seeds))])
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        if np.allclose(new, centres):
            break
        centres = new
    sim = unit @ centres.T
    group = np.argmax(sim, axis=1)
    # purity: how much more a row is like its own centre than like any other (a mixture is between)
    other = np.where(np.arange(len(seeds))[None, :] == group[:, None], -np.inf, sim).max(axis=1, initial=-1.0)
    purity = np.round(sim[np.arange(group.size), group] - other, 6)
    picks = []
    for g in range(len(seeds)):
        members = np.flatnonzero(group == g)
        if members.size:
            picks.append(int(usable[members[np.lexsort((weight[members], purity[members]))[-1]]]))
    return picks


def prepared_sinogram(path: str | Path, z: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The q-summed sinogram of slice ``z`` as measured and as the reconstruction saw it (the
    workflow's ``sinogram`` section, from the store's attrs): ``(before, after, info)``."""

    path = Path(path)
    total = store.open_array(path, f"{store.REDUCED}/total", "r")[z]
    ok = store.open_array(path, f"{store.REDUCED}/frame_ok", "r")[z]
    omega = store.open_array(path, "omega", "r")[:]
    section = Sinogram.model_validate(store.read_attrs(path).get("workflow", {}).get("sinogram", {}))
    after, info = prepare_sinogram(total[..., None], ok, omega, **prep_options(section))
    return total, after[..., 0], info


def summary_path(path: str | Path) -> Path:
    """``run-summary.png`` beside ``run.zarr``: named after its store, so stores sharing a folder
    keep their own pictures."""
    path = Path(path)
    return path.parent / f"{path.stem}-summary.png"


def is_our_picture(png: Path, software: str = SOFTWARE) -> bool:
    """True for a PNG this program wrote (its Software text ``software``), which it may overwrite."""
    try:

        with Image.open(png) as im:
            return im.text.get("Software", "") == software
    except Exception:  # not a PNG, unreadable
        return False


def write_summary(path: str | Path, z: int | None = None, out: str | Path | None = None) -> Path | None:
    """Draw the summary picture of store ``path`` (slice ``z``, default the middle one) into ``out``
    (default :func:`summary_path`) and return its path; None, with a warning, where ``out`` is a
    file this program did not write (it is never overwritten)."""
    path = Path(path)
    out = Path(out) if out else summary_path(path)
    if out.exists() and not is_our_picture(out):
        log.warning("%s exists and was not written by xrdct-dask: the summary picture is not drawn over it", out)
        return None
    fig = summary_figure(path, z)
    fig.savefig(out, dpi=90, metadata={"Software": SOFTWARE})
    return out


def summary_figure(path: str | Path, z: int | None = None):
    """The summary picture of store ``path`` (slice ``z``, default the middle one) as a matplotlib
    ``Figure`` (drawn with Agg, pyplot's backend untouched): what :func:`write_summary` saves."""
    # a bare Figure draws with Agg without touching pyplot's backend (inline plots in Jupyter stay)
    # lazy: matplotlib takes a second to import; only drawing needs it
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    attrs = store.read_attrs(path)
    nz = store.open_array(path, f"{store.REDUCED}/total", "r").shape[0]
    z = nz // 2 if z is None else z
    qa, xa, ya, wa = (_Axis(path, n) for n in ("q", "x", "y", "omega"))
    q, x, y, omega = qa.values, xa.values, ya.values, wa.values
    recon_units = _units(path, f"{store.RECON}/intensity")
    has_pdf = (path / store.PDF).exists() and attrs.get("stage_status", {}).get(store.PDF) == "done"

    # the voxels whose G(r) is drawn: of the voxels with G (pdf/ok), those whose diffraction patterns
    # differ most (a phase is told by its pattern, which has less noise than G of a weak voxel)
    strength = picks = None
    if has_pdf:
        ok_voxel = store.read_chunked(path, f"{store.PDF}/ok", (z, slice(None), slice(None)), 0).astype(bool)
        n_scale = store.read_chunked(path, f"{store.PDF}/scale", (z, slice(None), slice(None)), 0)
        strength = np.where(ok_voxel & np.isfinite(n_scale), n_scale, -np.inf)
    candidates = _candidates(strength) if has_pdf else []
    # the slice's volume: mean voxel pattern, and the patterns of the candidates
    recon = _slice_pass(path, f"{store.RECON}/intensity", z, keep=candidates)
    if has_pdf:
        picks = [candidates[i] for i in distinct_curves(recon.kept, strength.ravel()[candidates], N_VOXEL_CURVES)]
    peaks = strongest_peaks(recon.mean, 3)
    sectors = recon.sector_mean is not None
    rows = 2 + has_pdf + sectors
    fig = Figure(figsize=(14, 3.9 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, 3)

    # -- top: sinogram measured | prepared, mean pattern, flagged frames
    measured, prepared, prep = prepared_sinogram(path, z)
    both = np.concatenate([measured[np.isfinite(measured)], prepared[np.isfinite(prepared)]])
    lo, hi = np.percentile(both, (0.5, 99.5)) if both.size else (0.0, 1.0)
    sino_axes = grid[0, 0].subgridspec(1, 2, wspace=0.02).subplots(sharey=True)
    shared = Normalize(lo, hi)  # one colour scale, one colour bar for both
    for ax, img, what in zip(sino_axes, (measured, prepared), (f"sinogram, slice {z}\nmeasured", "\nprepared")):
        im = _map(ax, img, x, omega, cmap="viridis", norm=shared)
        ax.set_title(what, fontsize=9, loc="left")
        ax.set_xlabel(xa.label)
    sino_axes[0].set_ylabel(wa.label)
    sino_axes[1].tick_params(labelleft=False)
    fig.colorbar(im, ax=list(sino_axes), label=label("intensity summed over q", _units(path, f"{store.REDUCED}/total")))
    sino_axes[1].text(0.98, 0.02, f"{', '.join(prep['steps'])}\ncentre {prep['center']:.2f} px", fontsize=7,
                      color="w", ha="right", va="bottom", transform=sino_axes[1].transAxes)

    ax = fig.add_subplot(grid[0, 1])
    ax.plot(q, recon.mean, lw=0.8, color="k")
    for n, k in enumerate(peaks):  # labels one below the other: close peaks stay readable
        ax.axvline(q[k], color="C3", lw=0.6)
        ax.annotate(f"{q[k]:.1f}", (q[k], 1.0 - 0.08 * n), xycoords=("data", "axes fraction"), xytext=(3, -2),
                    textcoords="offset points", ha="left", va="top", fontsize=8, color="C3")
    ax.set(title=f"mean voxel pattern, slice {z} (red: the maps below)", xlabel=qa.label,
           ylabel=label("intensity", recon_units))

    ok = store.open_array(path, f"{store.REDUCED}/frame_ok", "r")[z]
    n_flagged = int((~ok).sum())
    flagged_all = sum(n for k, n in attrs.get("run_summary", {}).get("frame_status", {}).items()
                      if k not in ("OK", "DUPLICATE", "OUT_OF_ORDER", "NOT_WRITTEN"))
    ax = fig.add_subplot(grid[0, 2])
    _map(ax, ok.astype(float), x, omega, cmap=ListedColormap(["C3", "0.85"]), vmin=0, vmax=1, how="min")
    ax.set(title=f"frames of slice {z} ({flagged_all} flagged in the run)", xlabel=xa.label, ylabel=wa.label)
    ax.legend(handles=[Patch(color="0.85", label=f"used ({ok.size - n_flagged})"),
                       Patch(color="C3", label=f"flagged, filled from neighbours ({n_flagged})")],
              loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8, frameon=False)

    # -- middle: the reconstruction at the strongest peaks, named by q (and d where it is known)
    d_A = _d_spacing_A(q, path, attrs)
    for k, qi in enumerate(peaks):
        ax = fig.add_subplot(grid[1, k])
        im = _map(ax, _plane(path, f"{store.RECON}/intensity", z, qi), x, y, cmap="magma", aspect="equal")
        d = f" (d = {d_A[qi]:.3f} Å)" if d_A is not None else ""
        ax.set(title=f"{qa.at(qi)}{d}", xlabel=xa.label, ylabel=ya.label)
        fig.colorbar(im, ax=ax, label=label("intensity", recon_units))
    for k in range(len(peaks), 3):
        fig.add_subplot(grid[1, k]).axis("off")
    if sectors:
        _texture_row(fig, grid, 2, path, z, recon.sector_mean, peaks, qa, xa, ya)

    # -- bottom: G(r)
    if has_pdf:
        ra = _Axis(path, "r")
        r, r_label = ra.values, ra.label
        g_label = label("G", _units(path, f"{store.PDF}/G"))
        g = _slice_pass(path, f"{store.PDF}/G", z, keep=picks)
        ri = int(np.nanargmax(g.mean_abs))
        ax_g = fig.add_subplot(grid[rows - 1, 0])
        ax_map = fig.add_subplot(grid[rows - 1, 1])
        plane = shrink(_plane(path, f"{store.PDF}/G", z, ri))
        lim = float(np.nanmax(np.abs(plane))) if np.isfinite(plane).any() else 0.0
        lim = lim if lim > 0 else 1.0
        im = _map(ax_map, plane, x, y, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="equal")
        fig.colorbar(im, ax=ax_map, label=g_label)
        ax_map.set(title=f"G at {ra.at(ri)} (symbols: the voxels at left)", xlabel=xa.label, ylabel=ya.label)
        for n, flat in enumerate(picks):
            yy, xx = np.unravel_index(flat, strength.shape)
            curve = g.kept[n]
            ax_g.plot(r, curve, lw=0.8, color=f"C{n}", label=f"voxel {ya.at(yy)}, {xa.at(xx)}")
            ax_map.plot(x[xx], y[yy], marker="os^D"[n % 4], mfc="none", mec=f"C{n}", mew=1.5, ms=7)
        ax_g.set(title="G(r) of the voxels whose patterns differ most", xlabel=r_label, ylabel=g_label)
        if picks:
            ax_g.legend(fontsize=7)
        ax = fig.add_subplot(grid[rows - 1, 2])
        ax.plot(r, g.mean, lw=0.8, color="k")
        ax.axvline(r[ri], color="0.5", lw=0.6, ls="--")
        ax.axhline(0, color="0.8", lw=0.5)
        ax.set(title=f"mean G(r) of slice {z} (dashed: the map's r)", xlabel=r_label, ylabel=g_label)
    run_frames = attrs.get("run_summary", {}).get("frames", "?")
    fig.suptitle(f"{path.name}: slice {z} (of 0..{nz - 1}); {run_frames} frames in the run", fontsize=11)
    return fig


def _units(path, name: str) -> str | None:
    return store.open_array(path, name, "r").attrs.get("units")


def _texture_row(fig, grid, row: int, path: Path, z: int, sector_mean: np.ndarray, peaks: list[int], qa, xa, ya):
    """The texture row: each marked peak's slice-mean intensity per sector over its mean (flat
    for a powder); where ``texture/`` was written, the first reflection's texture index map and its
    strain map in the sector of the slice's largest mean |strain|."""
    chi = _Axis(path, "chi")
    ax = fig.add_subplot(grid[row, 0])
    for n, qi in enumerate(peaks):
        curve = sector_mean[:, qi]
        with np.errstate(invalid="ignore", divide="ignore"):
            ax.plot(chi.values, curve / np.nanmean(curve), marker="o", ms=3, lw=0.8, color=f"C{n}", label=qa.at(qi))
    ax.axhline(1.0, color="0.8", lw=0.5)
    ax.set(title=f"intensity per sector over its mean, slice {z}", xlabel=chi.label, ylabel="relative intensity")
    if peaks:
        ax.legend(fontsize=7)
    done = ((path / store.TEXTURE).exists()
            and store.read_attrs(path).get("stage_status", {}).get(store.TEXTURE) == "done")
    if not done:
        for k in (1, 2):
            fig.add_subplot(grid[row, k]).axis("off")
        return
    names = store.open_array(path, "peak", "r").attrs.get("names", [])
    name = names[0] if names else "reflection 0"
    index = store.read_chunked(path, f"{store.TEXTURE}/index", (z, slice(None), slice(None), 0), 0)
    ax = fig.add_subplot(grid[row, 1])
    top = float(np.nanpercentile(index, 98)) if np.isfinite(index).any() else 1.0  # weak rim voxels: any spread
    im = _map(ax, index, xa.values, ya.values, cmap="viridis", aspect="equal", vmin=0, vmax=top if top > 0 else 1.0)
    fig.colorbar(im, ax=ax, label="texture index (std / mean over χ)")
    ax.set(title=f"texture of {name}", xlabel=xa.label, ylabel=ya.label)
    strain = store.read_chunked(path, f"{store.TEXTURE}/strain", (z, slice(None), slice(None), slice(None), 0), 0)
    with np.errstate(invalid="ignore"):
        mean_abs = np.nanmean(np.abs(strain), axis=(0, 1)) if np.isfinite(strain).any() else np.zeros(strain.shape[-1])
    k = int(np.nanargmax(np.nan_to_num(mean_abs, nan=-1.0)))
    plane = strain[..., k]
    lim = float(np.nanpercentile(np.abs(plane), 99)) if np.isfinite(plane).any() else 0.0
    lim = lim if lim > 0 else 1e-3
    ax = fig.add_subplot(grid[row, 2])
    im = _map(ax, plane, xa.values, ya.values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="equal")
    fig.colorbar(im, ax=ax, label="strain (d - d0) / d0")
    ax.set(title=f"strain of {name} at {chi.at(k, 1)}", xlabel=xa.label, ylabel=ya.label)


RADIAL_NAMES = {"q": "q", "2th": "2θ", "chi": "χ", "r": "radius", "d*2": "d*²"}  # pyFAI unit kinds
AXIS_NAMES = {"omega": "ω", "chi": "χ"}


class _Axis:
    """A coordinate of the store as a plot axis: ``values``, ``name``, ``units`` (as printed,
    "steps" where the coordinate has no unit: then the values are 0, 1, ...) and ``label``."""

    def __init__(self, path, name: str):
        arr = store.open_array(path, name, "r")
        units = arr.attrs.get("units")
        if name == "q":  # the radial coordinate: named after its kind (q, 2theta, ...)
            self.name = RADIAL_NAMES.get(str(arr.attrs.get("radial_unit", "q_")).split("_")[0], "radial")
        else:
            self.name = AXIS_NAMES.get(name, name)
        self.values = arr[:] if units else np.arange(arr.shape[0], dtype=float)
        self.units = pretty_unit(units) if units else "steps"
        self.label = f"{self.name} ({self.units})"

    def at(self, i: int, digits: int = 2) -> str:
        """``name = value unit`` at index ``i`` (steps as whole numbers)."""
        return f"{self.name} = {self.values[i]:.{0 if self.units == 'steps' else digits}f} {self.units}"


def _extent(values: np.ndarray) -> tuple[float, float]:
    """The edges of the first and last pixel centred on (evenly spaced) coordinate values."""
    step = (values[-1] - values[0]) / (values.size - 1) if values.size > 1 else 1.0
    return values[0] - step / 2, values[-1] + step / 2


def shrink(img: np.ndarray, how: str = "mean", most: int | None = None) -> np.ndarray:
    """``img (y, x)`` with at most ``most`` (:data:`MAX_DISPLAY`) pixels a side: blocks of
    ``ceil(n / most)`` pixels replaced by their mean (NaN ignored; all-NaN blocks stay NaN) or,
    ``how="min"``, their minimum (the last block may be smaller).  Smaller images are returned as given."""
    most = most or MAX_DISPLAY
    img = np.asarray(img, dtype=np.float64)
    if max(img.shape) <= most:
        return img
    good = np.isfinite(img)
    total, count = np.where(good, img, 0.0), good.astype(np.int64)
    for axis in (0, 1):
        n = img.shape[axis]
        if n <= most:
            continue
        starts = np.arange(0, n, -(-n // most))
        if how == "min":
            img = np.minimum.reduceat(img, starts, axis=axis)
        else:
            total, count = (np.add.reduceat(a, starts, axis=axis) for a in (total, count))
    if how == "min":
        return img
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _map(ax, img, x: np.ndarray, y: np.ndarray, aspect="auto", how: str = "mean", **kw):
    """``img (y, x)`` with y up and x to the right, on its coordinates (xarray's ``.plot()``),
    :func:`shrink` to at most :data:`MAX_DISPLAY` pixels a side."""
    return ax.imshow(shrink(img, how), origin="lower", extent=(*_extent(x), *_extent(y)), aspect=aspect,
                     interpolation="nearest", **kw)


def _d_spacing_A(q: np.ndarray, path, attrs: dict) -> np.ndarray | None:
    """d = 2 pi / Q (A) of each radial bin, where the unit (and for 2theta the wavelength) allow."""

    unit = store.open_array(path, "q", "r").attrs.get("radial_unit", "q_nm^-1")
    try:
        q_A = radial_to_q_A(q, unit, float(attrs.get("wavelength_angstrom") or np.nan))
    except ValueError:  # a unit without a Q
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 2 * np.pi / q_A
    return d if np.isfinite(d).any() else None


def _candidates(strength: np.ndarray) -> list[int]:
    """Flat indices of at most MAX_CANDIDATES voxels among those with at least MIN_STRENGTH of the
    slice's largest strength (the self-scattering level N: how much matter scatters there),
    evenly spread over them in strength order (the strongest included)."""
    flat = strength.ravel()
    good = np.flatnonzero(np.isfinite(flat))
    if good.size == 0:
        return []
    good = good[flat[good] >= MIN_STRENGTH * flat[good].max()]
    good = good[np.argsort(flat[good])[::-1]]
    step = max(1, -(-good.size // MAX_CANDIDATES))
    return sorted(int(i) for i in good[::step])


class _Pass:
    """What one pass over a slice gives: ``mean``, ``mean_abs`` over voxels per channel (NaN
    ignored), ``per_voxel`` sum over channels ``(y, x)``, ``kept`` the channels of the voxels asked
    for ``(len(keep), c)``; with sectors (a (z, y, x, chi, c) array) these are of the sectors' mean,
    and ``sector_mean`` ``(nchi, c)`` is the mean over voxels per sector (else None)."""

    def __init__(self, mean, mean_abs, per_voxel, kept, sector_mean=None):
        self.mean, self.mean_abs, self.per_voxel, self.kept = mean, mean_abs, per_voxel, kept
        self.sector_mean = sector_mean


def _row_blocks(path, name: str) -> list[slice]:
    arr = store.open_array(path, name, "r")
    step = arr.chunks[1]
    return [slice(a, min(a + step, arr.shape[1])) for a in range(0, arr.shape[1], step)]


def _slice_pass(path, name: str, z: int, keep=()) -> _Pass:
    """One pass over slice ``z`` of a (z, y, x, c) array, a chunk of rows at a time: the mean over
    voxels of the values and of their magnitudes per channel ``(c,)`` (NaN ignored), the sum over
    channels per voxel ``(y, x)``, and the channels of the voxels ``keep`` (flat indices into
    (y, x)), at most a few hundred of them."""
    arr = store.open_array(path, name, "r")
    ny, nx, nc = arr.shape[1], arr.shape[2], arr.shape[-1]
    sectors = arr.ndim == 5  # (z, y, x, chi, c): the sectors' mean pattern of each voxel
    by_sector = np.zeros(arr.shape[3:]) if sectors else None
    total, total_abs, count = np.zeros(nc), np.zeros(nc), np.zeros(nc)
    per_voxel = np.zeros((ny, nx))
    keep = np.asarray(keep, dtype=np.int64)
    kept = np.full((keep.size, nc), np.nan)
    for ys in _row_blocks(path, name):
        rows = store.read_chunked(path, name, (z, ys, *(slice(None),) * (arr.ndim - 2)), 2)
        if sectors:
            by_sector += np.nansum(rows, axis=(0, 1))
            with np.errstate(invalid="ignore"):
                rows = np.nanmean(rows, axis=2)
        good = np.isfinite(rows)
        v = np.where(good, rows, 0)
        total += v.sum(axis=(0, 1))
        total_abs += np.abs(v).sum(axis=(0, 1))
        count += good.sum(axis=(0, 1))
        per_voxel[ys] = np.nansum(rows, axis=-1)
        mine = (keep // nx >= ys.start) & (keep // nx < ys.stop)
        kept[mine] = rows[keep[mine] // nx - ys.start, keep[mine] % nx]
    with np.errstate(invalid="ignore", divide="ignore"):
        return _Pass(total / count, total_abs / count, per_voxel, kept,
                     None if by_sector is None else by_sector / (ny * nx))


def _plane(path, name: str, z: int, channel: int) -> np.ndarray:
    """``array[z, :, :, channel]`` read a chunk of rows at a time (with sectors: their mean)."""
    if store.open_array(path, name, "r").ndim == 5:
        with np.errstate(invalid="ignore"):
            sectors = store.read_chunked(path, name, (z, slice(None), slice(None), slice(None), channel), 0)
            return np.nanmean(sectors, -1)
    return store.read_chunked(path, name, (z, slice(None), slice(None), channel), 0)
