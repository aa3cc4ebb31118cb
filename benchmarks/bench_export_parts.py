"""NeXus export throughput: one file written here vs part files written by 1, 2, 4 workers (issue 30 item 2).

A store of the run's layout (``store.create_store``: reduced, recon, pdf and the markers) filled
with noise-like values (Poisson counts: what gzip meets in real data, not zeros), exported with
``export_nexus`` (a) as one file by this process (``single_file=True``, no client: today's layout
without workers) and (b) in parts by a LocalCluster of N single-threaded worker processes for
each N of ``--workers``.  MB/s = the store arrays' uncompressed bytes / wall seconds; per worker,
and the worker CPU seconds (on a shared machine: MB per worker CPU second is the per-core rate).

    python benchmarks/bench_export_parts.py --nz 8 --nomega 180 --nx 160 --nq 500 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nz", type=int, default=8)
    ap.add_argument("--nomega", type=int, default=180)
    ap.add_argument("--nx", type=int, default=160)
    ap.add_argument("--nq", type=int, default=500)
    ap.add_argument("--nr", type=int, default=300)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--compression", default="gzip")
    ap.add_argument("--folder", default="/tmp")
    args = ap.parse_args()

    import zarr
    from distributed import Client, LocalCluster

    from xrdct_dask import store
    from xrdct_dask.export import export_nexus
    from xrdct_dask.store.budget import Layout
    from xrdct_dask.testing.stores import run_markers

    nz, nw, nx, nq, nr = args.nz, args.nomega, args.nx, args.nq, args.nr
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.folder))
    try:
        path = work / "run.zarr"
        lay = Layout(omega_chunk=20, q_chunk=100, q_sub=100, y_chunk=nx, r_chunk=nr, budget=2**30)
        store.create_store(path, nz=nz, nomega=nw, nx=nx, radial=np.linspace(1, 40, nq), radial_unit="q_nm^-1",
                           omega_deg=np.arange(nw) * (180 / nw), x_mm=np.arange(nx) * 0.01, z_mm=np.arange(nz) * 0.01,
                           r_A=np.linspace(0.5, 30, nr), layout=lay, attrs={"workflow": {}, "engine": "numpy"},
                           markers=run_markers(nz, nw, nx, nq, nr, lay), pdf_attrs={"qmax": 20.0})
        root = zarr.open_group(str(path), mode="r+")
        rng = np.random.default_rng(0)
        for z in range(nz):
            root["reduced/intensity"][z] = rng.poisson(200, (nw, nx, nq)).astype(np.float32)
            root["reduced/sigma"][z] = np.sqrt(root["reduced/intensity"][z])
            root["recon/intensity"][z] = rng.normal(1, 0.1, (nx, nx, nq)).astype(np.float32)
            root["pdf/G"][z] = rng.normal(0, 1, (nx, nx, nr)).astype(np.float32)
        nbytes = sum(a.nbytes for name in ("reduced", "recon", "pdf") for _, a in root[name].arrays())
        print(json.dumps({"store_MB": round(nbytes / 1e6, 1), "compression": args.compression}), flush=True)

        t, c = time.perf_counter(), _cpu_s()
        export_nexus(path, work / "one.h5", compression=args.compression, single_file=True)
        dt = time.perf_counter() - t
        print(json.dumps({"layout": "single file, here", "s": round(dt, 1), "MB_per_s": round(nbytes / 1e6 / dt, 1),
                          "cpu_s": round(_cpu_s() - c, 1), "load_avg": os.getloadavg()[0]}), flush=True)
        for n in args.workers:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                              host="127.0.0.1") as cluster, Client(cluster) as client:
                client.run(lambda: __import__("xrdct_dask.export") and None)
                cpu = lambda: sum(client.run(_cpu_s).values())  # noqa: E731
                w0 = cpu()
                t = time.perf_counter()
                out = export_nexus(path, work / f"parts{n}.h5", compression=args.compression, client=client)
                dt = time.perf_counter() - t
                w = cpu() - w0
            parts = sorted((work / f"parts{n}.h5.parts").glob("part-*.h5"))
            print(json.dumps({"layout": "parts", "workers": n, "parts": len(parts), "s": round(dt, 1),
                              "MB_per_s": round(nbytes / 1e6 / dt, 1),
                              "MB_per_s_per_worker": round(nbytes / 1e6 / dt / n, 1),
                              "worker_cpu_s": round(w, 1), "MB_per_worker_cpu_s": round(nbytes / 1e6 / w, 1),
                              "master_kB": round(out.stat().st_size / 1e3, 1), "load_avg": os.getloadavg()[0]}),
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
