"""The run's summary picture: what a beamline scientist looks at first.

Top row: the q-summed sinogram of a slice as measured and after the workflow's sinogram
preparation (side by side), and the mean diffraction pattern with the q bins shown below marked.  Middle row: reconstructed maps at the strongest peaks of the mean pattern.  Bottom
row: G(r) of a few voxels (when the PDF stage ran).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import store

log = logging.getLogger(__name__)


def strongest_peaks(pattern: np.ndarray, n: int = 3, min_separation: int = 5) -> list[int]:
    """Indices of the ``n`` highest local maxima of a pattern, at least ``min_separation`` bins apart."""
    from scipy.signal import find_peaks

    p = np.nan_to_num(pattern)
    idx, props = find_peaks(p, distance=min_separation, prominence=0.02 * (p.max() - p.min() + 1e-30))
    order = np.argsort(props["prominences"])[::-1]
    return sorted(int(i) for i in idx[order[:n]])


def prepared_sinogram(path: str | Path, z: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The q-summed sinogram of slice ``z`` as measured and as the reconstruction saw it (the
    workflow's ``sinogram`` section, from the store's attrs): ``(before, after, info)``."""
    from .config import Sinogram
    from .sinogram import prep_options, prepare_sinogram

    path = Path(path)
    total = store.open_array(path, f"{store.REDUCED}/total", "r")[z]
    ok = store.open_array(path, f"{store.REDUCED}/frame_ok", "r")[z]
    omega = store.open_array(path, "omega", "r")[:]
    section = Sinogram.model_validate(store.read_attrs(path).get("workflow", {}).get("sinogram", {}))
    after, info = prepare_sinogram(total[..., None], ok, omega, **prep_options(section))
    return total, after[..., 0], info


SOFTWARE = "xrdct-dask summary"  # the PNG's Software text: a picture this program may replace


def summary_path(path: str | Path) -> Path:
    """``run-summary.png`` beside ``run.zarr``: named after its store, so stores sharing a folder
    keep their own pictures."""
    path = Path(path)
    return path.parent / f"{path.stem}-summary.png"


def is_our_picture(png: Path) -> bool:
    """True for a PNG this program wrote (its Software text), which it may overwrite."""
    try:
        from PIL import Image

        with Image.open(png) as im:
            return im.text.get("Software", "") == SOFTWARE
    except Exception:  # not a PNG, unreadable
        return False


def write_summary(path: str | Path, z: int | None = None, out: str | Path | None = None) -> Path | None:
    """Draw the summary picture of store ``path`` (slice ``z``, default the middle one) into ``out``
    (default :func:`summary_path`) and return its path; None, with a warning, where ``out`` is a
    file this program did not write (it is never overwritten)."""
    # a bare Figure draws with Agg without touching pyplot's backend (inline plots in Jupyter stay)
    from matplotlib.figure import Figure

    path = Path(path)
    out = Path(out) if out else summary_path(path)
    if out.exists() and not is_our_picture(out):
        log.warning("%s exists and was not written by xrdct-dask: the summary picture is not drawn over it", out)
        return None
    q = store.open_array(path, "q", "r")[:]
    attrs = store.read_attrs(path)
    unit = attrs.get("workflow", {}).get("integrate", {}).get("unit", "q_nm^-1")
    nz = store.open_array(path, f"{store.REDUCED}/total", "r").shape[0]
    z = nz // 2 if z is None else z
    total = store.open_array(path, f"{store.REDUCED}/total", "r")[z]
    # the slice's volume and G are read a block of voxel rows at a time (bounded at any size)
    mean, energy = _slice_pass(path, f"{store.RECON}/intensity", z)
    peaks = strongest_peaks(mean, 3)
    has_pdf = (path / store.PDF).exists() and attrs.get("stage_status", {}).get(store.PDF) == "done"
    rows = 3 if has_pdf else 2
    fig = Figure(figsize=(13, 3.6 * rows))
    ax = fig.subplots(rows, 3)
    _, prepared, prep = prepared_sinogram(path, z)
    gap = np.full((total.shape[0], 1), np.nan)
    finite = np.isfinite(total)
    lo, hi = (np.nanpercentile(total, (0.5, 99.5)) if finite.any() else (0, 1))
    ax[0, 0].imshow(np.hstack([total, gap, prepared]), aspect="auto", cmap="viridis", vmin=lo, vmax=hi,
                    interpolation="nearest")
    ax[0, 0].set(title=f"sinogram, slice {z} (sum over q): measured | prepared", xlabel="x | x", ylabel="omega step")
    ax[0, 0].text(0.99, 0.01, f"{', '.join(prep['steps'])}; centre {prep['center']:.2f} px", fontsize=7,
                  color="w", ha="right", va="bottom", transform=ax[0, 0].transAxes)
    ax[0, 1].plot(q, mean, lw=0.8)
    for k in peaks:
        ax[0, 1].axvline(q[k], color="C3", lw=0.6)
    ax[0, 1].set(title="mean voxel pattern", xlabel=unit, ylabel="intensity")
    ok = store.open_array(path, f"{store.REDUCED}/frame_ok", "r")[z]
    flagged_all = sum(n for k, n in attrs.get("run_summary", {}).get("frame_status", {}).items()
                      if k not in ("OK", "DUPLICATE", "OUT_OF_ORDER", "NOT_WRITTEN"))
    ax[0, 2].imshow(ok, aspect="auto", cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax[0, 2].set(title=f"frame_ok, slice {z}: {int((~ok).sum())} flagged ({flagged_all} in the run)", xlabel="x",
                 ylabel="omega step")
    for k, qi in enumerate(peaks[:3]):
        im = ax[1, k].imshow(_plane(path, f"{store.RECON}/intensity", z, qi), cmap="magma")
        ax[1, k].set(title=f"recon at {unit} = {q[qi]:.2f}")
        fig.colorbar(im, ax=ax[1, k], fraction=0.046)
    for k in range(len(peaks), 3):
        ax[1, k].axis("off")
    if has_pdf:
        g = store.open_array(path, f"{store.PDF}/G", "r")
        r = store.open_array(path, "r", "r")[:]
        picks = np.argsort(energy.ravel())[::-1][:: max(1, energy.size // 40)][:4]
        for i in picks:
            yy, xx = np.unravel_index(i, energy.shape)
            ax[2, 0].plot(r, g[z, yy, xx], lw=0.7, label=f"voxel ({yy},{xx})")
        ax[2, 0].set(title="G(r) of a few voxels", xlabel="r (A)", ylabel="G(r)")
        ax[2, 0].legend(fontsize=7)
        mean_g, _ = _slice_pass(path, f"{store.PDF}/G", z)
        mean_abs, _ = _slice_pass(path, f"{store.PDF}/G", z, np.abs)
        rmax_i = int(np.nanargmax(mean_abs))
        ax[2, 1].imshow(_plane(path, f"{store.PDF}/G", z, rmax_i), cmap="RdBu_r")
        ax[2, 1].set(title=f"G at r = {r[rmax_i]:.2f} A")
        ax[2, 2].plot(r, mean_g, lw=0.8)
        ax[2, 2].set(title="mean G(r) of the slice", xlabel="r (A)")
    fig.suptitle(f"{path.name}: {attrs.get('run_summary', {}).get('frames', '?')} frames", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90, metadata={"Software": SOFTWARE})
    return out


def _row_blocks(path, name: str) -> list[slice]:
    arr = store.open_array(path, name, "r")
    step = arr.chunks[1]
    return [slice(a, min(a + step, arr.shape[1])) for a in range(0, arr.shape[1], step)]


def _slice_pass(path, name: str, z: int, fn=None) -> tuple[np.ndarray, np.ndarray]:
    """One pass over slice ``z`` of a (z, y, x, c) array, a chunk of rows at a time: the mean over
    voxels of ``fn(values)`` per channel ``(c,)`` (NaN ignored) and the sum over channels per voxel
    ``(y, x)``."""
    arr = store.open_array(path, name, "r")
    total, count = np.zeros(arr.shape[3]), np.zeros(arr.shape[3])
    per_voxel = np.zeros(arr.shape[1:3])
    for ys in _row_blocks(path, name):
        rows = store.read_chunked(path, name, (z, ys, slice(None), slice(None)), 2)
        v = rows if fn is None else fn(rows)
        good = np.isfinite(v)
        total += np.where(good, v, 0).sum(axis=(0, 1))
        count += good.sum(axis=(0, 1))
        per_voxel[ys] = np.nansum(rows, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count, per_voxel


def _plane(path, name: str, z: int, channel: int) -> np.ndarray:
    """``array[z, :, :, channel]`` read a chunk of rows at a time."""
    return store.read_chunked(path, name, (z, slice(None), slice(None), channel), 0)
