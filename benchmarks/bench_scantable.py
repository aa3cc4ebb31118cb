"""Scan-table conversion on the workers (issue 30 item 1): rows/s for 1, 2, 4, ... worker processes.

Writes a scan table (``index,iz,iomega,ix,omega_deg,x_mm,z_mm``) and a monitor file of
``--rows`` rows with the project's simulator into ``--folder`` (default /tmp; ~52 bytes + 14
bytes a row: 6.6 GB at 1e8; removed after unless ``--keep``), then times ``scan_layout`` (parse
every slab, place the frames per slice, the axes' medians, the monitor) and the monitor reference
on a LocalCluster of N single-threaded worker processes for each N of ``--workers``, and the
client's peak resident memory (VmHWM of this process: the workers are other processes).

    python benchmarks/bench_scantable.py --rows 100000000 --workers 1 2 4 8 16

Prints one JSON line per N: rows, seconds, rows/s, rows/s per worker, the workers' CPU seconds
(rows per worker CPU second: the per-core rate on a shared machine), the client's CPU seconds and
peak MB.  Also the file's sequential read rate (the disk's ceiling for any number of workers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status(key: str) -> int:
    return next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith(key))


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process: on a shared machine, the per-core rate is rows
    per CPU second (the wall clock counts the other jobs' turns too)."""
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=1e7)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--folder", default="/tmp")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--nx", type=int, default=1000)
    ap.add_argument("--nomega", type=int, default=1000)
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    from xrdct_dask.config import load_workflow
    from xrdct_dask.runs.scanlayout import scan_layout
    from xrdct_dask.simulate import simulate_scan, write_scan_table

    nx, nw = args.nx, args.nomega
    nz = max(1, int(round(args.rows / (nx * nw))))
    work = Path(tempfile.mkdtemp(prefix="bench-scantable-", dir=args.folder))
    try:
        need = nz * nw * nx * 70
        free = shutil.disk_usage(work).free
        if free < 1.5 * need:
            sys.exit(f"{work}: {free / 1e9:.1f} GB free, the table needs ~{need / 1e9:.1f} GB")
        tiny = simulate_scan(work / "tiny", nz=1, nomega=4, nx=5, seed=1, threads=1, npt_rad=100)
        t = time.perf_counter()
        rows = write_scan_table(work / "scan.csv", nz, nw, nx, monitor_path=work / "monitor.txt", seed=0)
        print(json.dumps({"written_rows": rows, "write_s": round(time.perf_counter() - t, 1),
                          "csv_GB": round((work / "scan.csv").stat().st_size / 1e9, 2)}), flush=True)
        # the sequential read rate of the table (page cache dropped where allowed: root only)
        subprocess.run(["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"], capture_output=True)
        t = time.perf_counter()
        with open(work / "scan.csv", "rb") as f:
            while f.read(1 << 24):
                pass
        print(json.dumps({"read_GB_per_s": round((work / "scan.csv").stat().st_size / 1e9 / (time.perf_counter() - t),
                                                 2)}), flush=True)
        wf = load_workflow(tiny.workflow, {"scan.nz": nz, "scan.nomega": nw, "scan.nx": nx,
                                           "inputs.scan_file": str(work / "scan.csv"),
                                           "inputs.monitor": str(work / "monitor.txt"),
                                           "store.path": str(work / "run.zarr")})
        base = _status("VmRSS")
        for n in args.workers:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                              host="127.0.0.1") as cluster, Client(cluster) as client:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                rss0 = _status("VmRSS")
                cpu = lambda: sum(client.run(_cpu_s).values())  # noqa: E731  (the workers' CPU seconds)
                w0, c0 = cpu(), _cpu_s()
                t = time.perf_counter()
                lay = scan_layout(wf, client)
                t_layout = time.perf_counter() - t
                ref = lay.monitor_reference(wf, client)
                dt = time.perf_counter() - t
                peak = _status("VmHWM")
                w_cpu, c_cpu = cpu() - w0, _cpu_s() - c0
                lay.close()
            print(json.dumps({"workers": n, "rows": rows, "layout_s": round(t_layout, 1), "total_s": round(dt, 1),
                              "rows_per_s": round(rows / dt), "rows_per_s_per_worker": round(rows / dt / n),
                              "worker_cpu_s": round(w_cpu, 1), "rows_per_worker_cpu_s": round(rows / w_cpu),
                              "client_cpu_s": round(c_cpu, 1),
                              "client_peak_above_start_MB": round((peak - rss0) / 1e6, 1),
                              "client_rss_before_MB": round(base / 1e6, 1), "monitor_reference": ref,
                              "load_avg": os.getloadavg()[0]}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
