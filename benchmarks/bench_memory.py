"""Peak memory per worker does not grow with the scan: two scans 4x apart, same peak within 20 %.

Each task streams one block of frames (store.omega_chunk rows x nx, in batches of 32 frames) and
writes its own chunks; each recon task holds one slice's sinograms for one q block; nothing
gathers a stage on the client.  So growing the scan along z (more slices, same slice size) must
leave the peak resident memory of every worker unchanged.  (Growing nomega or nx grows what one
recon or pdf task holds -- one slice -- which `xrdct plan` prints as "held/task".)

For each size a fresh process simulates the scan, starts a LocalCluster (2 workers x 1 thread)
and runs the whole workflow; the workers' peak RSS (getrusage ru_maxrss, since the worker
started) and the rise above their RSS once the integrator is built are read back, with the
client's own peak RSS.  With a GPU (``--engine cupy`` or ``auto`` where cupy sees one) the
workers' cupy memory-pool size after the run is reported too.

    python benchmarks/bench_memory.py                       # nz 1 vs 4, 24 x 32 x 32 frames per slice
    python benchmarks/bench_memory.py --nomega 64 --nx 48 --json mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker_rss() -> dict:
    import resource

    import psutil

    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "rss_bytes": psutil.Process().memory_info().rss}
    try:
        from xrdct_dask.backend import gpu_available

        if gpu_available():
            import cupy as cp

            out["gpu_pool_bytes"] = int(cp.get_default_memory_pool().total_bytes())
    except Exception:  # no GPU here: CPU figures only
        pass
    return out


def one_size(nz: int, nomega: int, nx: int, npt_rad: int, omega_chunk: int, engine: str, detector: str) -> dict:
    """Simulate, run, and measure one scan size (call in a fresh process)."""
    import logging
    import resource

    logging.disable(logging.WARNING)
    from distributed import Client, LocalCluster

    from xrdct_dask.config import load_workflow
    from xrdct_dask.pipeline.integrator import IntegratorPlugin
    from xrdct_dask.runs.execute import run
    from xrdct_dask.simulate import simulate_scan

    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    t0 = time.perf_counter()
    scan = simulate_scan(tmp / "scan", nz=nz, nomega=nomega, nx=nx, npt_rad=npt_rad, detector=detector, seed=2)
    t_sim = time.perf_counter() - t0
    wf = load_workflow(scan.workflow, {"store.path": str(tmp / "run.zarr"), "store.omega_chunk": omega_chunk,
                                       "integrate.engine": engine})
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1",
                      memory_limit=None) as lc, Client(lc) as client:
        client.register_plugin(IntegratorPlugin(wf))  # integrator built: the baseline below includes it
        base = client.run(_worker_rss)
        t0 = time.perf_counter()
        run(wf, cluster=lc, progress=False, summary=False)
        t_run = time.perf_counter() - t0
        after = client.run(_worker_rss)
    workers = []
    for addr in sorted(after):
        w = {"peak_rss_bytes": after[addr]["peak_rss_bytes"],
             "rise_bytes": after[addr]["peak_rss_bytes"] - base[addr]["rss_bytes"]}
        if "gpu_pool_bytes" in after[addr]:
            w["gpu_pool_bytes"] = after[addr]["gpu_pool_bytes"]
        workers.append(w)
    return {"scan": [nz, nomega, nx], "frames": nz * nomega * nx, "npt_rad": npt_rad, "omega_chunk": omega_chunk,
            "engine": engine, "detector": detector, "simulate_s": t_sim, "run_s": t_run, "workers": workers,
            "client_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nz", type=int, default=1, help="slices of the small scan (the large one has 4x)")
    ap.add_argument("--nomega", type=int, default=32)
    ap.add_argument("--nx", type=int, default=32)
    ap.add_argument("--npt-rad", type=int, default=1000)
    ap.add_argument("--omega-chunk", type=int, default=4)
    ap.add_argument("--engine", default="auto", choices=["auto", "numpy", "cupy"])
    ap.add_argument("--detector", default="small", choices=["small", "pilatus2m"])
    ap.add_argument("--tolerance", type=float, default=0.20)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(one_size(a.child, a.nomega, a.nx, a.npt_rad, a.omega_chunk, a.engine, a.detector)))
        return
    sizes = [a.nz, 4 * a.nz]
    results = []
    for nz in sizes:
        cmd = [sys.executable, __file__, "--child", str(nz), "--nomega", str(a.nomega), "--nx", str(a.nx),
               "--npt-rad", str(a.npt_rad), "--omega-chunk", str(a.omega_chunk), "--engine", a.engine,
               "--detector", a.detector]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"size nz={nz} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    mb = 1e6
    print(f"{'scan (z x omega x x)':>22} {'frames':>7} {'run s':>6} {'worker peak RSS MB':>19} {'rise MB':>8} "
          f"{'client peak MB':>15}")
    for r in results:
        peak = max(w["peak_rss_bytes"] for w in r["workers"])
        rise = max(w["rise_bytes"] for w in r["workers"])
        gpu = [w["gpu_pool_bytes"] for w in r["workers"] if "gpu_pool_bytes" in w]
        print(f"{' x '.join(map(str, r['scan'])):>22} {r['frames']:>7} {r['run_s']:>6.1f} {peak / mb:>19.1f} "
              f"{rise / mb:>8.1f} {r['client_peak_rss_bytes'] / mb:>15.1f}"
              + (f"  GPU pool {max(gpu) / mb:.1f} MB" if gpu else ""))
    small, large = (max(w["peak_rss_bytes"] for w in r["workers"]) for r in results)
    ratio = large / small
    ok = abs(ratio - 1) <= a.tolerance
    print(f"peak worker RSS ratio (4x frames / 1x): {ratio:.3f} -> {'PASS' if ok else 'FAIL'} "
          f"(within {a.tolerance:.0%})")
    if a.json:
        a.json.write_text(json.dumps({"benchmark": "bench_memory", "results": results, "ratio": ratio,
                                      "tolerance": a.tolerance, "pass": ok, "date": time.strftime("%Y-%m-%d")},
                                     indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
