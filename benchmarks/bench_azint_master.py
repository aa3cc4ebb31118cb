"""What the client writes into a parts export's master at 1000^3, and what of it is the NXazint entry.

A parts export (``xrdct export --parts``, issue 30) has the workers write every large array into
part files; the client writes the master: the NeXus tree, each large array a virtual dataset of
its parts, the small arrays (coordinates, per-slice strings) and the ``azint`` entry
(:func:`xrdct_dask.export.azint.write_azint`: NXazint1d with the integrator's five accumulators,
the NXprocess).  This script builds the store template of a ``--nz x --nomega x --nx`` run with
``--nq`` bins and the accumulators kept (zarr metadata only: no chunk is written), writes the
master of its parts export for ``--parts`` part files (the parts themselves are not written:
12.6 TB each accumulator at 1000^3), once with the azint entry and once without, and prints the
bytes of each and where the accumulators' data are (virtual: in the parts, written by the workers).

    python benchmarks/bench_azint_master.py                   # 1000 x 1571 x 1000, nq 2000, 32 parts
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nz", type=int, default=1000)
    ap.add_argument("--nomega", type=int, default=1571)
    ap.add_argument("--nx", type=int, default=1000)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--nr", type=int, default=2000)
    ap.add_argument("--parts", type=int, default=32)
    args = ap.parse_args()

    import h5py
    import numpy as np
    import zarr

    import xrdct_dask.export.nexus as nexus
    from xrdct_dask import __version__, store
    from xrdct_dask.export.parts import PartsPlan
    from xrdct_dask.store.budget import Layout
    from xrdct_dask.testing.stores import run_markers

    work = Path(tempfile.mkdtemp(prefix="bench-azint-"))
    nz, nw, nx, nq, nr = args.nz, args.nomega, args.nx, args.nq, args.nr
    layout = Layout(omega_chunk=16, q_chunk=256, q_sub=256, y_chunk=64, r_chunk=256, budget=2 ** 30)
    attrs = {"workflow": {"scan": {"nz": nz, "nomega": nw, "nx": nx}}, "workflow_yaml": "scan:\n  nz: 1000\n" * 40,
             "engine": "cupy", "wavelength_angstrom": 0.1378, "created": "2026-12-07T00:00:00",
             "input_contents": {k: {"path": f"/data/{k}", "sha256": "ab" * 32}
                                for k in ("inputs.poni", "inputs.mask", "inputs.dark", "inputs.flat",
                                          "inputs.monitor", "inputs.scan_file")},
             "versions": {"pyFAI": "2026.9.0", "numpy": "2.4.6", "dask": "2026.8.0"}, "poni": {"dist": 0.2}}
    t = time.perf_counter()
    path = work / "run.zarr"
    store.create_store(path, nz=nz, nomega=nw, nx=nx, radial=np.linspace(1, 40, nq), radial_unit="q_nm^-1",
                       omega_deg=np.arange(nw) * 180 / nw, x_mm=np.arange(nx) * 0.01, z_mm=np.arange(nz) * 0.01,
                       r_A=np.linspace(0.5, 20, nr), layout=layout, attrs=attrs,
                       markers=run_markers(nz, nw, nx, nq, nr, layout), sums=True)
    root = zarr.open_group(str(path), mode="r")
    template_s = time.perf_counter() - t
    sizes = {}
    for with_azint in (True, False):
        out = work / ("with.h5" if with_azint else "without.h5")
        plan = PartsPlan(path, out, work / f"parts-{with_azint}", args.parts, "gzip")
        real = nexus.write_azint
        if not with_azint:
            nexus.write_azint = lambda *a, **k: None
        try:
            t = time.perf_counter()
            nexus._write(out, root, path, out, ("reduced", "recon", "pdf"), nexus._compression("gzip"), __version__,
                         None, "gzip", None, plan)
            sizes[with_azint] = (os.path.getsize(out), time.perf_counter() - t)
        finally:
            nexus.write_azint = real
    with h5py.File(work / "with.h5", "r") as f:
        data = f["azint/data"]
        acc = {n: {"virtual": data[n].is_virtual, "shape": list(data[n].shape),
                   "TB_in_parts": round(int(np.prod(data[n].shape)) * data[n].dtype.itemsize / 1e12, 2)}
               for n in store.SUM_ARRAYS}
        acc_data_bytes_in_master = sum(data[n].id.get_storage_size() for n in store.SUM_ARRAYS)
        linked = all(data[n].id == f[f"reduced/{n}/{n}"].id for n in store.SUM_ARRAYS)
    print(json.dumps({"plan": f"{nz} x {nw} x {nx}, nq {nq}, nr {nr}, {args.parts} parts",
                      "template_s": round(template_s, 1),
                      "master_bytes": sizes[True][0], "master_without_azint_bytes": sizes[False][0],
                      "azint_entry_bytes": sizes[True][0] - sizes[False][0],
                      "master_write_s": round(sizes[True][1], 2),
                      "accumulator_bytes_stored_in_master": int(acc_data_bytes_in_master),
                      "accumulators_are_links_to_reduced": linked, "accumulators": acc}), flush=True)
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
