"""The axis over z after a run's slices: a robust line through the slices' own estimates, recorded
in the ``recon`` group's attrs (``axis_fit``); a slice the fit rejects and whose centre is off the
line by more than ``REFIT_TOLERANCE_PX`` is reopened, and its centre task, run again, takes the
fitted value (:mod:`xrdct_dask.pipeline.centering`)."""

from __future__ import annotations

import logging

import numpy as np
import zarr

from xrdct_dask import store
from xrdct_dask.pipeline.centering import REFIT_TOLERANCE_PX, _host_read, recorded_fit, stored_geometry
from xrdct_dask.pipeline.stages import reopen_slice
from xrdct_dask.sinogram.axis import fit_axis_over_z

log = logging.getLogger(__name__)


def refit_axis(ctx) -> list[int]:
    """After a run: fit the slices' axes over z, record the fit, reopen the slices to redo.

    Returns the slices whose markers were reset (centre, recon, pdf): rejected by the fit and off
    it by more than ``REFIT_TOLERANCE_PX``.  Nothing with a manual centre, fewer than 3 slices, or
    slices whose centre task has not run."""


    wf = ctx.workflow
    nz = wf.scan.nz
    if wf.sinogram.center != "auto" or nz < 3:
        return []
    stored = [stored_geometry(ctx.store_path, z) for z in range(nz)]
    geos = [g for g in stored if g is not None and "axis" in g]
    if len(geos) < nz:  # a slice whose centre task has not run
        return []
    own = np.array([g["axis"]["center_px"] for g in geos])
    conf = np.array([g["axis"]["confidence"] for g in geos])
    used = np.array([g["center"] for g in geos])
    z_mm = _host_read(ctx, "z", slice(None))
    fit = fit_axis_over_z(own, conf, z_mm if np.ptp(z_mm) > 0 else None)
    if fit is None or fit.used < 3:
        return []
    previous = recorded_fit(ctx.store_path) or {}
    redo = [z for z in range(nz) if not fit.inlier[z] and abs(used[z] - fit.fitted[z]) > REFIT_TOLERANCE_PX]
    replaced = sorted(set(previous.get("replaced", [])) | set(redo))
    record = fit.to_dict() | {"tolerance_px": REFIT_TOLERANCE_PX, "replaced": replaced,
                              "own_px": own.tolist(), "confidence": conf.tolist()}
    zarr.open_group(str(ctx.store_path / store.RECON), mode="r+").attrs["axis_fit"] = record
    if redo:
        log.warning("axis fitted over z (%.3f px + %.4f px per mm): slices %s are off it and are redone with it",
                    fit.intercept_px, fit.slope_px, redo)
    for z in redo:
        reopen_slice(ctx.store_path, wf, z, "center")
    return redo
