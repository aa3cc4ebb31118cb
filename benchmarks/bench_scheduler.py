"""The real graph at full size with null work (issue 30 item 3): what the scheduler and the client
spend per task of a 1000 x 1571 x 1000 run.

Every wave of the run is built as ``xrdct run`` builds it (the stage table's tasks of each slice,
:func:`xrdct_dask.pipeline.graph.slice_tasks`, slices grouped by :func:`xrdct_dask.runs.plan.waves`
from ``compute.max_tasks``; dependencies, keys and annotations as the run's) and driven by the
run's own loop (:func:`xrdct_dask.runs.execute.compute_waves`: two waves in flight), but each task
function is replaced by one that sleeps ``--sleep-ms`` and writes its done-marker
(:func:`xrdct_dask.store.mark_done`) into a scratch store made only of the run's markers (one
element, one chunk per task, as a run store has them).

The scheduler is its own process (``dask scheduler``), so that its memory (RSS, sampled every
0.2 s) and CPU time are its own; the workers are ``--procs`` processes of ``--threads`` threads
(16-64 task slots on a machine with few cores: the tasks sleep).  ``--waves`` runs the first N
waves (each the size a full run's are); the figures per task are extrapolated to every wave of
the full plan.

    python benchmarks/bench_scheduler.py --procs 4 --threads 4 --waves 3 --sleep-ms 5

Prints one JSON line per wave and a summary: tasks, wall s, tasks/s, scheduler CPU ms per task,
scheduler peak RSS, client CPU ms per task, client peak RSS, marker writes/s, and the full run's
scheduler-hours next to its compute hours (tasks x the measured task times of RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _null(stage: str, path: str, index: tuple, sleep_s: float, *deps):
    """A task of the run with its work taken out: a short sleep, then its done-marker."""
    from xrdct_dask.store import mark_done

    time.sleep(sleep_s)
    mark_done(path, stage, index)
    return {"stage": stage}


def null_wave(ctx, zs, marker_store: str, sleep_s: float, token: str, marker_stages: dict) -> list:
    """The tasks of slices ``zs`` as ``(0, stage, delayed)`` items (the run's keys and dependencies)
    with :func:`_null` as every task's function."""
    import dask

    from xrdct_dask.pipeline.graph import slice_tasks
    from xrdct_dask.pipeline.task import Ref

    items = []
    for z in zs:
        made: dict = {}
        count: dict = {}
        for t in slice_tasks(ctx, z, None):
            i = count.get(t.stage, 0)
            count[t.stage] = i + 1
            deps = [made[a.key] for a in t.args if isinstance(a, Ref)]
            index = (z, i) if t.stage in marker_stages.get("task", ()) else (z,)
            stage_or_none = t.stage if t.stage in marker_stages["any"] else None
            d = dask.delayed(_null if stage_or_none else _sleep, pure=False)(
                *(((t.stage, marker_store, index) if stage_or_none else (t.stage,)) + (sleep_s, *deps)),
                dask_key_name=(f"{t.key[0]}-{token}",) + t.key[1:])
            made[t.key] = d
            items.append((0, t.stage, d))
    return items


def _sleep(stage: str, sleep_s: float, *deps):
    time.sleep(sleep_s)
    return {"stage": stage}


class Sampler(threading.Thread):
    """Peak RSS of a process, sampled every 0.2 s."""

    def __init__(self, pid: int):
        import psutil

        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:
                return
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nz", type=int, default=1000)
    ap.add_argument("--nomega", type=int, default=1571)
    ap.add_argument("--nx", type=int, default=1000)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--waves", type=int, default=2, help="waves run (of the full plan's); 0: all")
    ap.add_argument("--sleep-ms", type=float, default=5.0)
    ap.add_argument("--max-tasks", type=int, default=None, help="compute.max_tasks (default: the workflow's)")
    ap.add_argument("--omega-chunk", type=int, default=16, help="store.omega_chunk (the default workflow's: 16)")
    ap.add_argument("--folder", default="/tmp")
    args = ap.parse_args()

    import psutil
    from distributed import Client

    from xrdct_dask.config import load_workflow
    from xrdct_dask.pipeline.context import RunContext
    from xrdct_dask.pipeline.stages import Sizes, marker_specs, tasks_per_slice
    from xrdct_dask.runs.execute import compute_waves
    from xrdct_dask.runs.open import layout_for
    from xrdct_dask.runs.plan import _nr, waves
    from xrdct_dask.simulate import simulate_scan

    work = Path(tempfile.mkdtemp(prefix="bench-scheduler-", dir=args.folder))
    procs = []
    try:
        tiny = simulate_scan(work / "tiny", nz=1, nomega=4, nx=5, seed=1, threads=1, npt_rad=100)
        sets = {"scan.nz": args.nz, "scan.nomega": args.nomega, "scan.nx": args.nx, "integrate.npt_rad": args.nq,
                "store.omega_chunk": args.omega_chunk,
                "store.path": str(work / "run.zarr")}
        if args.max_tasks:
            sets["compute.max_tasks"] = args.max_tasks
        wf = load_workflow(tiny.workflow, sets)
        nq, nr = wf.integrate.npt_rad, _nr(wf)
        lay = layout_for(wf, nq, nr)
        sizes = Sizes.of(wf, nq=nq, nr=nr, layout=lay)
        ctx = RunContext(workflow=wf, store_path=Path(wf.store.path), monitor_reference=1.0, wavelength_A=1.0,
                         layout=lay, extra={"nq": nq, "nr": nr})
        per_stage = tasks_per_slice(wf, sizes)
        per_slice = sum(per_stage.values())
        groups = waves([per_slice] * args.nz, wf.compute.max_tasks)
        run_groups = groups if args.waves == 0 else groups[:args.waves]

        # the scratch store: only the run's markers (one uint8/float64 element and chunk per task)
        import zarr

        markers = marker_specs(wf, sizes)
        ms = str(work / "markers.zarr")
        root = zarr.open_group(ms, mode="w")
        tasks = root.create_group("tasks")
        for m in markers:
            shape = (args.nz,) if m.value else (args.nz, m.per_slice)
            tasks.create_array(m.name, shape=shape, chunks=(1,) * len(shape), dtype="float64" if m.value else "uint8",
                               fill_value=np.nan if m.value else 0, compressors=None,
                               dimension_names=("z",) if m.value else ("z", m.dim))
        kinds = {"task": {m.name for m in markers if not m.value}, "any": {m.name for m in markers}}

        bin_dir = Path(sys.executable).parent
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        sched_file = work / "scheduler.json"
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                       "--dashboard-address", ":0", "--scheduler-file", str(sched_file)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while not sched_file.exists():
            time.sleep(0.2)
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", "--scheduler-file", str(sched_file),
                                       "--nworkers", str(args.procs), "--nthreads", str(args.threads),
                                       "--memory-limit", "0", "--no-dashboard"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = Client(scheduler_file=str(sched_file))
        client.wait_for_workers(args.procs)
        # warm: every worker process has imported the store layer and opened the marker store once
        client.run(lambda: __import__("xrdct_dask.store") and zarr.open_group(ms, mode="r") and None)
        t = time.perf_counter()
        for _ in range(50):
            _null(markers[0].name, ms, (0, 0) if not markers[0].value else (0,), 0.0)
        mark_s = (time.perf_counter() - t) / 50
        sched = psutil.Process(procs[0].pid)
        me = psutil.Process()
        sampler = Sampler(procs[0].pid)
        sampler.start()
        totals = {}
        for zs in run_groups:
            for stg, n in per_stage.items():
                totals[stg] = totals.get(stg, 0) + n * len(zs)
        # the run's loop: two waves in flight, a wave built when the one before it is submitted
        stamps: list[dict] = []

        def builder(k, zs):
            def build():
                t = time.perf_counter()
                items = null_wave(ctx, zs, ms, args.sleep_ms / 1e3, f"w{k}", kinds)
                stamps.append({"wave": k, "slices": len(zs), "tasks": len(items),
                               "build_s": round(time.perf_counter() - t, 2), "submitted": time.perf_counter()})
                return items
            return build

        s_cpu0, c_cpu0 = sum(sched.cpu_times()[:2]), sum(me.cpu_times()[:2])
        t0 = time.perf_counter()
        done = 0
        for _ in compute_waves(client, [builder(k, zs) for k, zs in enumerate(run_groups)], totals, progress=False):
            done += 1
        wall = time.perf_counter() - t0
        s_cpu, c_cpu = sum(sched.cpu_times()[:2]) - s_cpu0, sum(me.cpu_times()[:2]) - c_cpu0
        sampler.stop.set()
        st = zarr.open_group(ms, mode="r")["tasks"]
        marked = sum(int(np.count_nonzero(np.nan_to_num(st[m.name][...]))) for m in markers)
        summary = {
            "plan": f"{args.nz} x {args.nomega} x {args.nx}, nq {nq}", "tasks_per_slice": per_stage,
            "max_tasks": wf.compute.max_tasks, "waves_in_plan": len(groups), "waves_run": len(run_groups),
            "task_slots": args.procs * args.threads, "sleep_ms": args.sleep_ms, "tasks": done,
            "markers_written": marked, "wall_s": round(wall, 1), "tasks_per_s": round(done / wall, 1),
            "scheduler_cpu_ms_per_task": round(1e3 * s_cpu / done, 3),
            "scheduler_peak_rss_MB": round(sampler.peak / 1e6, 1),
            "client_cpu_ms_per_task": round(1e3 * c_cpu / done, 3),
            "client_peak_rss_MB": round(me.memory_info().rss / 1e6, 1),
            "wave_build_s": [s["build_s"] for s in stamps], "wave_tasks": [s["tasks"] for s in stamps],
            "marker_write_ms_here": round(1e3 * mark_s, 2),
            "ideal_tasks_per_s": round(args.procs * args.threads / (args.sleep_ms / 1e3), 1),
            "load_avg": os.getloadavg()[0], "cores": os.cpu_count(),
        }
        full_tasks = per_slice * args.nz
        summary["full_run_tasks"] = full_tasks
        summary["full_run_scheduler_cpu_h"] = round(full_tasks * s_cpu / done / 3600, 3)
        summary["full_run_wall_h_at_this_rate"] = round(full_tasks / (done / wall) / 3600, 3)
        summary["full_run_client_cpu_h"] = round(full_tasks * c_cpu / done / 3600, 3)
        print(json.dumps(summary), flush=True)
        client.close()
    finally:
        for p in procs[::-1]:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
