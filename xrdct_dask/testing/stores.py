"""Whole-store comparisons for tests: two runs of the same work must give the same arrays.

A run on LocalCluster and one through SLURM jobs, a live watch and a batch run, a scan written as
CBF and as HDF5: same code, same inputs, single-threaded workers, so every array must be equal
exactly (NaN where NaN), not merely close.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


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
                view: bool = False):
    """The done-markers a run of this size and layout gets (the stage table's,
    :func:`xrdct_dask.pipeline.stages.marker_specs`), for tests that create a store by hand with
    :func:`xrdct_dask.store.create_store`; ``nr = 0``: no PDF; ``view``: with the view copy's."""
    from xrdct_dask.config import workflow_from_dict
    from xrdct_dask.pipeline.stages import Sizes, marker_specs

    wf = workflow_from_dict({"inputs": {"frames": "frame_{index}.cbf", "poni": "g.poni"},
                             "scan": {"nz": nz, "nomega": nomega, "nx": nx}, "store": "run.zarr",
                             "pdf": {"enabled": nr > 0, "order": pdf_order}, "view": {"write_copy": view}},
                            base_dir=Path("."))
    return marker_specs(wf, Sizes(nz, nomega, nx, nq, nr, layout))
