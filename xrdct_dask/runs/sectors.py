"""What azimuthal sectors, the kept sums and the texture reflections add to a run's store: the
arguments of :func:`xrdct_dask.store.create_store` and :func:`xrdct_dask.store.array_specs`, and
the check (before anything is written) that every reflection lies in the integrated range."""

from __future__ import annotations

import numpy as np

from xrdct_dask.config import Workflow, WorkflowError
from xrdct_dask.texture import peak_range, peak_window


def texture_peaks(wf: Workflow, radial: np.ndarray, wavelength_A: float) -> list[dict]:
    """Each of ``texture.peaks`` as the store records it (the ``peak`` coordinate's attrs): label,
    d-spacing, its radial window in ``integrate.unit`` and d0.  A reflection outside the
    integrated range (or too narrow for a fit) is a one-line :class:`WorkflowError` naming it."""
    out = []
    unit = wf.integrate.unit
    for k, p in enumerate(wf.texture.peaks):
        # the schema: exactly one of d_angstrom and q_range
        what = f"q_range {list(p.q_range)}" if p.q_range is not None else f"d = {p.d_angstrom:g} A"
        try:
            if p.d_angstrom is not None and unit == "2th_deg" and not wavelength_A > 0:
                raise ValueError("no wavelength in the PONI to place a d-spacing in 2th_deg")
            lo, hi = peak_range(p.d_angstrom, p.d_window, p.q_range, unit, wavelength_A)
            win = peak_window(radial, lo, hi)
        except ValueError as err:
            raise WorkflowError(f"texture.peaks[{k}] ({what}, {unit}): {err}") from None
        out.append({"label": p.label, "d_angstrom": p.d_angstrom, "d0_angstrom": p.d0_angstrom,
                    "radial_range": [lo, hi], "bins": [win.start, win.stop], "unit": unit})
    return out


def sector_store_args(wf: Workflow, chi_deg, radial: np.ndarray, wavelength_A: float) -> dict:
    """:func:`~xrdct_dask.store.create_store` arguments of the sectors (``chi_deg``: the plan's sector
    centres, None without), the kept sums and the texture reflections (checked: :func:`texture_peaks`)."""
    peaks = texture_peaks(wf, radial, wavelength_A) if wf.integrate.npt_azim > 1 else []
    return {"chi_deg": None if wf.integrate.npt_azim == 1 else chi_deg, "sums": wf.integrate.sums_kept,
            "peaks": peaks or None}


def sector_spec_args(wf: Workflow) -> dict:
    """:func:`~xrdct_dask.store.array_specs` arguments of the same (``xrdct plan``, without a plan)."""
    return {"nchi": wf.integrate.npt_azim, "sums": wf.integrate.sums_kept,
            "peaks": len(wf.texture.peaks) if wf.integrate.npt_azim > 1 else 0}
