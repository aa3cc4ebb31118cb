"""Whole-store comparisons for tests: two runs of the same work must give the same arrays.

A run on LocalCluster and one through SLURM jobs, a live watch and a batch run, a scan written as
CBF and as HDF5: same code, same inputs, single-threaded workers, so every array must be equal
exactly (NaN where NaN), not merely close.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from xrdct_dask import store
from xrdct_dask.config import workflow_from_dict
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.stages import Sizes, marker_specs
from xrdct_dask.store.budget import Layout


def store_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of the zarr store at ``path``, read whole, by its path in the store
    (``"reduced/intensity"``, ``"recon/intensity"``, ``"pdf/G"``, ...).  For small test stores."""

    out: dict[str, np.ndarray] = {}

    def walk(group, prefix=""):
        for name, arr in group.arrays():
            out[prefix + name] = arr[...]
        for name, sub in group.groups():
            walk(sub, prefix + name + "/")

    walk(zarr.open_group(str(path), mode="r"))
    return out


def assert_same_stores(a: str | Path, b: str | Path, required=("reduced/intensity", "recon/intensity", "pdf/G")):
    """The stores at ``a`` and ``b`` hold the same arrays (names, dtypes, shapes, values exactly,
    NaN where NaN), among them ``required``; returns ``a``'s arrays."""
    x, y = store_arrays(a), store_arrays(b)
    assert set(x) == set(y), sorted(set(x) ^ set(y))
    assert set(required) <= set(x), sorted(set(required) - set(x))
    for name in sorted(x):
        assert x[name].dtype == y[name].dtype and x[name].shape == y[name].shape, name
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    return x


def run_markers(nz: int, nomega: int, nx: int, nq: int, nr: int, layout, pdf_order: str = "recon-then-pdf",
                view=None):
    """The done-markers a run of this size and layout gets (the stage table's,
    :func:`xrdct_dask.pipeline.stages.marker_specs`), for tests that create a store by hand with
    :func:`xrdct_dask.store.layout.create_store`; ``nr = 0``: no PDF; ``view``: the view copy's
    :class:`~xrdct_dask.store.viewcopy.ViewLayout` (None: no copy)."""
    wf = workflow_from_dict({"inputs": {"frames": "frame_{index}.cbf", "poni": "g.poni"},
                             "scan": {"nz": nz, "nomega": nomega, "nx": nx}, "store": "run.zarr",
                             "pdf": {"enabled": nr > 0, "order": pdf_order}, "view": {"write_copy": view is not None}},
                            base_dir=Path("."))
    return marker_specs(wf, Sizes(nz, nomega, nx, nq, nr, layout, view=view))


def block_store(folder, sinograms: np.ndarray, omega_deg, *, sinogram: dict | None = None, nq_chunk: int | None = None,
                sigma_counts: float | None = None):
    """A run store holding given sinograms as its integrated data, every integrate task done: the
    slice stages (centre, recon) run on it as on a real run's, without frames.

    ``sinograms`` ``(nz, nomega, nx, nq)`` (e.g. :func:`environment_block` per slice), written to
    ``reduced/intensity`` and ``total``; ``sigma`` is the Poisson error of ``sigma_counts`` counts at
    the brightest value (default: 1 % of each value).  ``sinogram`` sets the workflow's
    ``sinogram`` section.  Returns the :class:`~xrdct_dask.pipeline.context.RunContext` (no PDF)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = np.asarray(sinograms, np.float32)
    nz, nomega, nx, nq = s.shape
    path = folder / "run.zarr"
    wf = workflow_from_dict({"inputs": {"frames": str(folder / "frames" / "f_{index:06d}.cbf"),
                                        "poni": str(folder / "geometry.poni")},
                             "scan": {"nz": nz, "nomega": nomega, "nx": nx},
                             "integrate": {"npt_rad": nq, "unit": "q_A^-1"}, "pdf": {"enabled": False},
                             "sinogram": sinogram or {}, "store": {"path": str(path), "omega_chunk": min(16, nomega)},
                             "view": {"write_copy": False}})
    qc = nq_chunk or nq
    lay = Layout(omega_chunk=min(16, nomega), q_chunk=qc, q_sub=qc, y_chunk=nx, r_chunk=1, budget=1 << 30)
    q = np.linspace(1.0, 20.0, nq)
    store.create_store(path, nz=nz, nomega=nomega, nx=nx, radial=q, radial_unit="q_A^-1",
                       omega_deg=np.asarray(omega_deg, float), x_mm=np.arange(nx, dtype=float),
                       z_mm=np.arange(nz, dtype=float), r_A=None, layout=lay,
                       attrs={"workflow": wf.model_dump(mode="json"), "work_digest": wf.work_digest(),
                              "monitor_reference": 1.0, "wavelength_angstrom": 0.1378},
                       markers=marker_specs(wf, Sizes.of(wf, nq=nq, nr=0, layout=lay)))
    scale = 1.0 if sigma_counts is None else float(s.max()) / sigma_counts
    sigma = 0.01 * np.abs(s) if sigma_counts is None else np.sqrt(np.clip(s, 0, None) * scale)
    for z in range(nz):
        store.open_array(path, f"{store.REDUCED}/intensity")[z] = s[z]
        store.open_array(path, f"{store.REDUCED}/sigma")[z] = sigma[z].astype(np.float32)
        store.open_array(path, f"{store.REDUCED}/total")[z] = s[z].sum(axis=-1)
        store.open_array(path, f"{store.REDUCED}/frame_ok")[z] = True
        store.open_array(path, f"{store.REDUCED}/frame_status")[z] = 0
        for b in range(-(-nomega // lay.omega_chunk)):
            store.mark_done(path, "integrate", (z, b))
    store.mark_template_complete(path)
    return RunContext(workflow=wf, store_path=path, monitor_reference=1.0, wavelength_A=0.1378, layout=lay)
