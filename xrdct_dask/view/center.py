"""``xrdct center RUN.zarr``: a slice reconstructed at candidate axes around the one found, to check by eye.

As tomopy's ``write_center`` and algotom's centre sweeps do: the slice's prepared q-summed
sinogram (bad frames, zingers, the measured background, the air, stripes and jitter as the run
does them) is reconstructed by FBP at ``count`` axes spaced ``step_px`` around the one found by
the run's own centre finder (:func:`xrdct_dask.pipeline.centering.slice_geometry`, nothing written), each
panel labelled with its axis; a wrong axis shows as arcs and doubled edges, worse the further
off.  The run's store is only read; the picture goes beside it, never into it, and never over a
file this program did not write (its PNG ``Software`` text says who wrote it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrdct_dask import store
from xrdct_dask.config import WorkflowError, workflow_from_dict
from xrdct_dask.errors import XrdctError
from xrdct_dask.pipeline.centering import slice_geometry
from xrdct_dask.pipeline.stages import FRAMES_STAGE
from xrdct_dask.recon import fbp
from xrdct_dask.runs.open import context_from_store
from xrdct_dask.view.summary import is_our_picture

SOFTWARE = "xrdct-dask center"


class CenterPictureError(XrdctError, ValueError):
    """The picture cannot be made (one line: the store, the slice, the output)."""


def center_picture_path(path: str | Path, z: int) -> Path:
    """``RUN-center-z0007.png`` beside ``RUN.zarr``."""
    path = Path(path)
    return path.parent / f"{path.stem}-center-z{z:04d}.png"


def candidate_axes(found_px: float, step_px: float, count: int) -> np.ndarray:
    """``count`` axes ``step_px`` apart centred on ``found_px`` (the found one in the middle)."""
    return found_px + step_px * (np.arange(count) - (count - 1) / 2)


def write_center_picture(path: str | Path, z: int | None = None, out: str | Path | None = None, *,
                         step_px: float = 0.5, count: int = 9) -> tuple[Path, dict]:
    """Draw slice ``z`` (default the middle one) of store ``path`` reconstructed at ``count``
    candidate axes ``step_px`` apart around the axis the run's centre finder gives, into ``out``
    (default :func:`center_picture_path`).  Returns ``(png, geometry)`` (the finder's result: the
    axis, its confidence, the air columns).  Raises :class:`CenterPictureError` for a store that
    is not a run, a slice not integrated, a bad ``step_px``/``count``, or an ``out`` that is inside
    the store or a file this program did not write."""

    path = Path(path)
    if not store.is_store(path):
        raise CenterPictureError(f"{path} is not a run store of xrdct-dask")
    if not step_px > 0 or count < 1:
        raise CenterPictureError(f"--step must be > 0 px and --count >= 1 (got {step_px}, {count})")
    attrs = store.read_attrs(path)
    try:
        wf = workflow_from_dict(attrs["workflow"], source=f"{path} (stored workflow)")
    except (KeyError, WorkflowError) as err:
        raise CenterPictureError(f"{path}: no usable stored workflow ({err})") from None
    nz = wf.scan.nz
    z = nz // 2 if z is None else int(z)
    if not 0 <= z < nz:
        raise CenterPictureError(f"--z {z}: the run has slices 0 to {nz - 1}")
    if not store.task_state(path)[FRAMES_STAGE][z].all():
        raise CenterPictureError(f"slice {z} of {path} is not integrated yet: nothing to centre")
    out = Path(out) if out is not None else center_picture_path(path, z)
    inside = Path(out).resolve()
    if inside == path.resolve() or path.resolve() in inside.parents:
        raise CenterPictureError(f"{out} is inside the run store {path}: the picture goes beside it (--out)")
    if out.exists() and not is_our_picture(out, SOFTWARE):
        raise CenterPictureError(f"{out} exists and was not written by `xrdct center`: choose another --out")
    ctx = context_from_store(wf, path)
    sinos: list = []
    geo = slice_geometry(ctx, z, record=False, sinogram_out=sinos)
    omega = store.open_array(path, "omega", "r")[:]
    axes = candidate_axes(float(geo["center"]), step_px, count)
    images = [fbp(np.asarray(sinos[0], np.float32), omega, wf.recon.filter, center=float(c)) for c in axes]
    used = float(store.open_array(path, f"{store.TASKS}/center", "r")[z])
    _draw(out, images, axes, float(geo["center"]), used, z, path, geo)
    return out, geo


def _draw(out: Path, images: list, axes: np.ndarray, found: float, used: float, z: int, path: Path, geo: dict) -> None:
    # lazy: matplotlib takes a second to import; only drawing needs it
    from matplotlib.figure import Figure

    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows + 0.6))
    lo, hi = np.percentile(np.concatenate([im.ravel() for im in images]), [1, 99.5])
    for k, (im, c) in enumerate(zip(images, axes)):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi)
        mark = " (found)" if abs(c - found) < 1e-9 else ""
        ax.set_title(f"axis {c:.2f} px{mark}", fontsize=9, color="tab:red" if mark else "black")
        ax.set_xticks([])
        ax.set_yticks([])
    axis = geo.get("axis") or {}
    conf = f", confidence {axis['confidence']:.2f}" if "confidence" in axis else ""
    run = f"; the run used {used:.2f} px" if np.isfinite(used) else ""
    fig.suptitle(f"{path.name} slice {z}: axis found {found:.2f} px{conf}{run}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90, metadata={"Software": SOFTWARE})
