"""The viewer's page as a matplotlib figure: what its "save PNG" button sends (the map, the
patterns, G(r) and the sinogram as the page shows them)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from xrdct_dask import store
from xrdct_dask.view.summary import _extent

if TYPE_CHECKING:  # the page builds this figure of itself: no import at run time
    from xrdct_dask.view.app import Viewer


def view_figure(v: Viewer):
    """The page's map, patterns, G(r) and sinogram as a matplotlib Figure (the PNG 'save' writes)."""
    # lazy: matplotlib takes a second to import; only drawing needs it
    from matplotlib.figure import Figure

    d = v.data
    fig = Figure(figsize=(13, 8.5), layout="constrained")
    ax = fig.subplots(2, 2)
    img, label, what = v.current
    ext = (*_extent(d.x.values), *_extent(d.y.values))
    im = ax[0, 0].imshow(img, origin="lower", extent=ext, cmap=v.w_cmap.value, vmin=v.mapper.low, vmax=v.mapper.high,
                         interpolation="nearest")
    fig.colorbar(im, ax=ax[0, 0], label=label)
    ax[0, 0].set(title=f"slice {v.z}: {what}", xlabel=d.x.label, ylabel=d.y.label)
    if v.voxel is not None:
        ax[0, 0].plot(d.x.values[v.voxel[1]], d.y.values[v.voxel[0]], "rs", mfc="none", ms=10)
    p = v.pat_src.data
    ax[0, 1].plot(p["q"], p["mean"], color="0.5", label="slice mean")
    if np.isfinite(p["voxel"]).any():
        ax[0, 1].plot(p["q"], p["voxel"], label=f"voxel {v.voxel}")
    ax[0, 1].axvline(d.q.values[v.qi], color="r", lw=0.8)
    for k, (name, xs) in enumerate(d.phase_lines().items()):
        for j, x in enumerate(xs):
            ax[0, 1].axvline(x, color=f"C{k + 2}", ls="--", lw=0.8, label=f"{name} (d)" if j == 0 else None)
    ax[0, 1].set(xlabel=d.q.label, ylabel=f"intensity ({d.units(f'{store.RECON}/intensity')})")
    ax[0, 1].legend(fontsize=8)
    s_img = np.asarray(v.sino_src.data["image"][0])
    sext = (*_extent(d.x.values), *_extent(d.omega.values))
    si = ax[1, 0].imshow(s_img, origin="lower", extent=sext, aspect="auto", interpolation="nearest",
                         vmin=v.sino_mapper.low, vmax=v.sino_mapper.high)
    fig.colorbar(si, ax=ax[1, 0], label=v.sino_bar.title)
    fx, fy = v.flag_src.data["x"], v.flag_src.data["y"]
    if len(fx):
        ax[1, 0].plot(fx, fy, "rx", ms=5, label="flagged frames")
        ax[1, 0].legend(fontsize=8)
    ax[1, 0].set(title=v.sino_fig.title.text, xlabel=d.x.label, ylabel=d.omega.label)
    if d.has_pdf:
        g = v.g_src.data
        ax[1, 1].plot(g["r"], g["mean"], color="0.5", label="slice mean")
        if np.isfinite(np.asarray(g["voxel"], float)).any():
            ax[1, 1].plot(g["r"], g["voxel"], label=f"voxel {v.voxel}")
        ax[1, 1].axhline(0, color="0.8", lw=0.5)
        ax[1, 1].set(xlabel="r (Å)", ylabel="G(r) (Å⁻²)")
        ax[1, 1].legend(fontsize=8)
    else:
        ax[1, 1].axis("off")
    fig.suptitle(f"{d.path.name} ({time.strftime('%Y-%m-%d %H:%M')})")
    return fig
