"""Scan-table conversion on the workers (issue 30 item 1): rows/s for 1, 2, 4, ... worker processes.

Writes a scan table (``index,iz,iomega,ix,omega_deg,x_mm,z_mm``) and a monitor file of
``--rows`` rows with the project's simulator into ``--folder`` (default /tmp; ~52 bytes + 14
bytes a row: 6.6 GB at 1e8; removed after unless ``--keep``), then times ``scan_layout`` (parse
every slab, place the frames per slice, the axes' medians, the monitor) and the monitor reference
on N single-threaded worker processes for each N of ``--workers`` (``dask worker``, the scheduler
a ``dask scheduler`` process of its own), and the client's peak resident memory (VmHWM of this
process: the scheduler and the workers are other processes).

    python benchmarks/bench_scantable.py --rows 100000000 --workers 1 2 4 8 16
    python benchmarks/bench_scantable.py --rows 1e7 --table /tmp/t1e7 --workers 1 2   # write once, keep, reuse

Prints one JSON line per N: rows, seconds, rows/s, rows/s per worker, the workers' CPU seconds
(rows per worker CPU second: the per-core rate on a shared machine), the client's CPU seconds and
peak MB, and the workers' compute seconds per stage (dask's task stream: the task names' stage
part, e.g. ``scan-table`` parsing and placing the slabs).  Also the file's sequential read rate
(the disk's ceiling for any number of workers).  ``--table DIR``: the table and monitor are
written there once and kept (the next run with the same ``--rows`` reuses them).
"""

from __future__ import annotations

import argparse
import contextlib
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


@contextlib.contextmanager
def _cluster(n: int, work: Path, here: bool):
    """A client of ``n`` single-threaded worker processes: with the scheduler in this process
    (``here``: a LocalCluster) or in a process of its own (``dask scheduler`` + ``dask worker``)."""
    from distributed import Client, LocalCluster

    if here:
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                          host="127.0.0.1") as cluster, Client(cluster) as client:
            yield client
        return
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or str(Path(__file__).resolve().parents[1]))
    sched_file = work / f"scheduler-{os.getpid()}-{n}.json"
    sched_file.unlink(missing_ok=True)
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", str(sched_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        while not sched_file.exists():
            time.sleep(0.2)
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", "--scheduler-file", str(sched_file),
                                       "--nworkers", str(n), "--nthreads", "1", "--no-dashboard"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(scheduler_file=str(sched_file)) as client:
            client.wait_for_workers(n)
            yield client
    finally:
        for p in procs[::-1]:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        sched_file.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=1e7)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--folder", default="/tmp")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--table", default=None, help="folder to write the table into once and reuse (kept)")
    ap.add_argument("--scheduler-here", action="store_true",
                    help="a LocalCluster whose scheduler is this process (default: `dask scheduler` and `dask worker` "
                         "processes, so that the client's peak memory is the client's alone)")
    ap.add_argument("--nx", type=int, default=1000)
    ap.add_argument("--nomega", type=int, default=1000)
    args = ap.parse_args()

    from distributed import get_task_stream

    from xrdct_dask.config import load_workflow
    from xrdct_dask.runs.scanlayout import scan_layout
    from xrdct_dask.simulate import simulate_scan, write_scan_table

    nx, nw = args.nx, args.nomega
    nz = max(1, int(round(args.rows / (nx * nw))))
    if args.table:
        work = Path(args.table)
        work.mkdir(parents=True, exist_ok=True)
        args.keep = True
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-scantable-", dir=args.folder))
    try:
        # table + monitor (~66 B a row) and the conversion's scratch (~170 B a row at most: rows per
        # slice, winners, line readings, the monitor by index)
        need = nz * nw * nx * 240
        free = shutil.disk_usage(work).free
        done = work / f"written-{nz}x{nw}x{nx}"
        if free < 1.2 * need - (need * 66 / 240 if done.exists() else 0):
            sys.exit(f"{work}: {free / 1e9:.1f} GB free, the table and its conversion need ~{need / 1e9:.1f} GB")
        if not (work / "tiny" / "workflow.yaml").exists():  # the PONI, mask and frames the workflow names
            simulate_scan(work / "tiny", nz=1, nomega=4, nx=5, seed=1, threads=1, npt_rad=100)
        t = time.perf_counter()
        if not done.exists():
            rows = write_scan_table(work / "scan.csv", nz, nw, nx, monitor_path=work / "monitor.txt", seed=0)
            done.write_text(str(rows))
        rows = int(done.read_text())
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
        wf = load_workflow(work / "tiny" / "workflow.yaml", {"scan.nz": nz, "scan.nomega": nw, "scan.nx": nx,
                                           "inputs.scan_file": str(work / "scan.csv"),
                                           "inputs.monitor": str(work / "monitor.txt"),
                                           "store.path": str(work / "run.zarr")})
        base = _status("VmRSS")
        for n in args.workers:
            with _cluster(n, work, args.scheduler_here) as client:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                rss0 = _status("VmRSS")
                cpu = lambda: sum(client.run(_cpu_s).values())  # noqa: E731  (the workers' CPU seconds)
                w0, c0 = cpu(), _cpu_s()
                t = time.perf_counter()
                with get_task_stream(client) as ts:
                    lay = scan_layout(wf, client)
                    t_layout = time.perf_counter() - t
                    ref = lay.monitor_reference(wf, client)
                dt = time.perf_counter() - t
                peak = _status("VmHWM")
                w_cpu, c_cpu = cpu() - w0, _cpu_s() - c0
                lay.close()
                stages: dict[str, float] = {}
                for task in ts.data:  # keys xrdct-<stage>-<k>-<token>: the stage's compute seconds
                    stage = task["key"].split("-", 1)[1].rsplit("-", 2)[0]
                    stages[stage] = stages.get(stage, 0.0) + sum(
                        p["stop"] - p["start"] for p in task["startstops"] if p["action"] == "compute")
            print(json.dumps({"workers": n, "rows": rows, "layout_s": round(t_layout, 1), "total_s": round(dt, 1),
                              "rows_per_s": round(rows / dt), "rows_per_s_per_worker": round(rows / dt / n),
                              "worker_cpu_s": round(w_cpu, 1), "rows_per_worker_cpu_s": round(rows / w_cpu),
                              "client_cpu_s": round(c_cpu, 1),
                              "client_peak_above_start_MB": round((peak - rss0) / 1e6, 1),
                              "client_rss_before_MB": round(base / 1e6, 1), "monitor_reference": ref,
                              "compute_s_by_stage": {k: round(v, 2) for k, v in sorted(stages.items())},
                              "load_avg": os.getloadavg()[0]}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
