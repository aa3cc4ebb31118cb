"""Sinogram preparation: pure functions on ``(omega, x, q)`` blocks, numpy or cupy (the science
layer: arrays in, arrays out, no dask)."""

from __future__ import annotations

from xrdct_dask.sinogram.corrections import (
    PREP_STEPS,
    centers_of_mass,
    edge_background,
    estimate_center,
    estimate_jitter,
    fill_bad_frames,
    fit_sinusoid,
    normalize_monitor,
    prep_options,
    prepare_sinogram,
    remove_stripes,
    shift_projections,
    stripe_columns,
    subtract_background,
    suppress_zingers,
)

__all__ = [
    "PREP_STEPS", "normalize_monitor", "fill_bad_frames", "suppress_zingers", "edge_background", "subtract_background",
    "stripe_columns", "remove_stripes", "centers_of_mass", "fit_sinusoid", "estimate_center", "estimate_jitter",
    "shift_projections", "prepare_sinogram", "prep_options",
]
