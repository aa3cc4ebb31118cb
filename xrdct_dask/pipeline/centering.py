"""The centre stage's work on a slice of a store, and the axis over z after a run.

:func:`slice_geometry` (the ``center`` task of slice z) prepares the slice's q-summed sinogram as
the q blocks will be (bad frames, zingers, measured background, air, stripes, jitter), finds the
air columns (``sinogram.background: auto``, :mod:`xrdct_dask.sinogram.air`) and the rotation axis by
mirror matching (:mod:`xrdct_dask.sinogram.axis`) twice: on the q sum, and on the most structured q bins
of the slice's most structured q block (its air removed per q); the estimate with the higher
confidence is the slice's own.  Everything it found is written to ``recon/slice_info`` (a JSON per
slice: its own chunk, so slices never share a write) and returned to the recon tasks.

:func:`xrdct_dask.runs.refit.refit_axis` runs after a run's slices: a robust line through the slices' own estimates
over z (a tilted axis moves linearly; :func:`xrdct_dask.sinogram.axis.fit_axis_over_z`), recorded in the
``recon`` group's attrs (``axis_fit``).  A slice the fit rejects (an outlier, or a confidence too
low to weigh) and whose centre is off the line by more than ``REFIT_TOLERANCE_PX`` is reopened:
its centre task, run again, takes the fitted value (recorded as its ``center_source``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import zarr

from xrdct_dask import store
from xrdct_dask.sinogram import prep_options, prepare_sinogram
from xrdct_dask.sinogram.air import AirColumns, subtract_air, subtract_measured
from xrdct_dask.sinogram.axis import find_axis, structured_bins, weighted_sum

log = logging.getLogger(__name__)

REFIT_TOLERANCE_PX = 0.1  # a rejected slice off the fitted axis by more than this is redone with the fit
SELECTED_BINS = 16  # q bins summed (weighted by 1 / noise) into the axis sinogram of the structured q


def _host_read(ctx, name: str, index):
    return store.open_array(ctx.store_path, name, "r")[index]


def _pattern_read(ctx, name: str, z: int, omegas: slice, qs: slice = slice(None)) -> np.ndarray:
    """``reduced/intensity`` (or ``sigma``) of slice ``z``, angles ``omegas``, q bins ``qs``:
    ``(nomega, nx, nq)``; with azimuthal sectors their mean over chi (sigma: of the mean), so that
    the axis is found on the whole ring as without sectors."""
    arr = store.open_array(ctx.store_path, name, "r")
    if arr.ndim == 4:
        return store.read_chunked(ctx.store_path, name, (z, omegas, slice(None), qs), 0)
    block = store.read_chunked(ctx.store_path, name, (z, omegas, slice(None), slice(None), qs), 0)
    with np.errstate(all="ignore"):
        if name.endswith("sigma"):
            return (np.sqrt(np.nansum(block ** 2, axis=2)) / np.isfinite(block).sum(axis=2)).astype(np.float32)
        return np.nanmean(block, axis=2).astype(np.float32)


def stored_geometry(path, z: int) -> dict | None:
    """The geometry a slice's centre task recorded (``recon/slice_info``), None where there is none
    (not yet run, or a store made before it was recorded)."""
    try:
        text = store.open_array(path, f"{store.RECON}/slice_info", "r")[z]
    except (KeyError, FileNotFoundError, ValueError):
        return None
    text = str(text)
    return json.loads(text) if text else None


def recorded_fit(path) -> dict | None:
    """The ``axis_fit`` of a store's ``recon`` attrs (:func:`xrdct_dask.runs.refit.refit_axis`), None before any."""

    try:
        return dict(zarr.open_group(str(Path(path) / store.RECON), mode="r").attrs).get("axis_fit")
    except (KeyError, FileNotFoundError, ValueError):
        return None


def _choose_q_block(ctx, z: int, air, measured) -> slice:
    """The q block of slice z (``layout.q_sub`` bins: what a recon task prepares at once) with the
    most structure above its noise, judged on the first omega chunk only (all q of a few
    projections: cheap to read): per q bin, the spread of the air-corrected values over the
    sample's columns over the median ``sigma`` there; a block scores the sum of its best
    ``SELECTED_BINS`` bins."""

    wc, qc = ctx.layout.omega_chunk, ctx.layout.q_sub
    rows = _pattern_read(ctx, f"{store.REDUCED}/intensity", z, slice(0, wc))  # (wc, nx, nq)
    sig = _pattern_read(ctx, f"{store.REDUCED}/sigma", z, slice(0, wc))
    rows = np.where(np.isfinite(rows), rows, 0.0).astype(np.float32)
    if measured is not None:  # the background's rows of these projections (a line: its one row)
        nb = store.background_rows_of(ctx.store_path)
        rows = subtract_measured(rows, _host_read(ctx, f"{store.REDUCED}/background",
                                                  (slice(0, 1 if nb == 1 else rows.shape[0]),)))
    if air is not None and air.found:
        rows, _ = subtract_air(rows, air)
    support = ~air.mask if air is not None and air.found else np.ones(rows.shape[1], bool)
    spread = rows[:, support].std(axis=(0, 1))
    with np.errstate(all="ignore"):
        noise = np.nanmedian(np.where(np.isfinite(sig[:, support]), sig[:, support], np.nan), axis=(0, 1))
        if not np.isfinite(noise).any():  # no error model (integrate.error_model: none): the spread along omega
            d2 = np.diff(rows[:, support], n=2, axis=0).reshape(-1, rows.shape[-1])
            noise = 1.4826 * np.median(np.abs(d2), axis=0) / np.sqrt(6) if len(d2) else np.ones(rows.shape[-1])
        snr = np.nan_to_num(spread / noise, nan=0.0, posinf=0.0)
    nq = snr.size
    scores = [np.sort(snr[a:a + qc])[-SELECTED_BINS:].sum() for a in range(0, nq, qc)]
    a = int(np.argmax(scores)) * qc
    return slice(a, min(a + qc, nq))


def _selected_axis(ctx, z: int, ok, omega, geo: dict, measured, air):
    """The axis found on the most structured q bins of the slice's most structured q block, prepared
    with the slice's geometry (air, stripes, shifts); ``(estimate, q block, bins)``."""

    qs = _choose_q_block(ctx, z, air, measured)
    block = _pattern_read(ctx, f"{store.REDUCED}/intensity", z, slice(None), qs)
    opts = prep_options(ctx.workflow.sinogram) | {"center": 0.0, "known_stripes": geo["stripe_segments"],
                                                  "air_columns": air,
                                                  "measured_background": None if measured is None else
                                                  measured_q(ctx, qs)}
    if geo.get("shifts_px") is not None:
        opts["jitter"] = np.asarray(geo["shifts_px"])
    prepared, _ = prepare_sinogram(block, ok, omega, **opts)
    support = ~air.mask if air is not None and air.found else None
    bins, weights = structured_bins(prepared, support, SELECTED_BINS)
    guess = (air.left + air.right - 1) / 2 if air is not None and air.found else None
    est = find_axis(weighted_sum(prepared, bins, weights), omega, guess_px=guess)
    return est, qs, (bins + qs.start).tolist()


def measured_q(ctx, qs: slice):
    """The measured background's q bins ``qs`` ``(rows, nx, n)``, None without one."""
    if not store.background_rows_of(ctx.store_path):
        return None
    return _host_read(ctx, f"{store.REDUCED}/background", (slice(None), slice(None), qs))


def slice_geometry(ctx, z: int, record: bool = True, sinogram_out: list | None = None) -> dict:
    """The centre task of slice ``z`` (see the module docstring): returns the geometry every q
    block of the slice is prepared with (``center``, ``air``, ``stripe_columns``, ``shifts_px``)
    and what was found, and (``record``) writes it to ``recon/slice_info``.  ``sinogram_out`` (a
    list) receives the prepared q-summed sinogram ``(nomega, nx)`` the axis was found on."""

    wf = ctx.workflow
    sec = wf.sinogram
    total = _host_read(ctx, f"{store.REDUCED}/total", z)
    ok = _host_read(ctx, f"{store.REDUCED}/frame_ok", z)
    omega = _host_read(ctx, "omega", slice(None))
    measured = None
    if store.background_rows_of(ctx.store_path):
        measured = _host_read(ctx, f"{store.REDUCED}/background_total", slice(None))[..., None]
    opts = prep_options(sec) | {"center": 0.0, "measured_background": measured}
    prepared, info = prepare_sinogram(total[..., None], ok, omega, **opts)
    air = AirColumns.from_dict(info["air"]) if info["air"] else None
    geo = {"center": None, "stripe_columns": info["stripe_columns"], "stripe_segments": info["stripe_segments"],
           "shifts_px": info["shifts_px"],
           "filled": info["filled"], "air": info["air"], "background": sec.background,
           "background_scan": measured is not None}
    if air is not None and not air.found:
        log.warning("slice %d: sinogram.background auto: nothing subtracted: %s", z, air.reason)
    estimates = {}
    if sec.center == "auto":
        guess = (air.left + air.right - 1) / 2 if air is not None and air.found else None
        estimates["total"] = find_axis(prepared[..., 0], omega, guess_px=guess).to_dict()
        try:
            est, qs, bins = _selected_axis(ctx, z, ok, omega, geo, measured, air)
            estimates["selected"] = est.to_dict() | {"q_block": [qs.start, qs.stop], "bins": bins}
        except (ValueError, np.linalg.LinAlgError) as err:  # too few bins or angles: the total alone
            log.info("slice %d: no axis from the structured q bins (%s)", z, err)
        best = max(estimates, key=lambda k: estimates[k]["confidence"])
        own = estimates[best]
        geo["axis"] = {"center_px": own["center_px"], "confidence": own["confidence"], "from": best,
                       "estimates": estimates}
        geo["center"], geo["center_source"] = own["center_px"], f"mirror matching ({best} q)"
        fit = recorded_fit(ctx.store_path)
        if fit and z in fit.get("replaced", []):
            geo["center"], geo["center_source"] = float(fit["fitted_px"][z]), "axis fitted over z"
    else:
        geo["center"], geo["center_source"] = float(sec.center), "sinogram.center"
    if sinogram_out is not None:
        sinogram_out.append(prepared[..., 0])
    if record:
        store.write_region(ctx.store_path, f"{store.RECON}/slice_info", (z,), json.dumps(geo))
    return geo
