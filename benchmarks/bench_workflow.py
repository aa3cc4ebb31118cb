"""The whole workflow at the seed's size, from CBF files on disk to reduced, recon and G(r) (issue 14).

    python benchmarks/bench_workflow.py [--slices 3 --nomega 628 --nx 400 --npt 2000 --rmax 20]
                                        [--distinct 64] [--workdir DIR] [--json out.json]

A scan of ``slices x nomega x nx`` full-size Pilatus 2M frames (hard links cycling over
``--distinct`` simulated frames: the page cache holds only those bytes, as a beamline's file
system holds the newest frames) runs through ``xrdct_dask.runs.execute.run`` on the default local
cluster of this machine (GPU workers for integration, the other workers reconstruct and compute
G(r), on the GPU where one is visible).  Printed and written to ``--json``:

* start-up: from nothing to the first integration task (workers, plan, warm-up), cold (the
  integration plan built) and again with the plan cached (a fresh cluster, a small scan of the
  same geometry);
* per stage: tasks, task-seconds, first start and last finish, engines;
* ``whole_workflow_frames_per_s``: frames / (last task's finish - first integration task's start):
  the steady state of the whole chain, start-up excluded, the tail of the last slice included;
* peak memory of every worker process (RSS, sampled every 0.5 s) against its limit, and the
  GPU's peak memory in use (nvidia-smi).

The anchor measured in the same run is the integration stage alone (``integrate`` tasks'
frames over their own span): the whole chain as a fraction of it shows what recon and PDF cost.
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

sys.path.insert(0, str(Path(__file__).parent))


def simulate_distinct(work: Path, distinct: int, npt: int, detector: str):
    from xrdct_dask.simulate import simulate_scan

    nx = 8
    root = work / f"sim-{detector}-{distinct}"
    if (root / "workflow.yaml").exists():
        from xrdct_dask.config import load_workflow

        return root, load_workflow(root / "workflow.yaml")
    shutil.rmtree(root, ignore_errors=True)
    scan = simulate_scan(root, nz=1, nomega=max(1, distinct // nx), nx=nx, detector=detector, npt_rad=npt,
                         threads=os.cpu_count() or 4)
    from xrdct_dask.config import load_workflow

    return scan.root, load_workflow(scan.workflow)


class Sampler:
    """Peak RSS per worker (``client.run``) and GPU memory in use (nvidia-smi), every ``period`` s."""

    def __init__(self, client, period: float = 0.5):
        self.client, self.period = client, period
        self.rss: dict[str, int] = {}
        self.gpu_mib = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        import psutil  # noqa: F401  (on the workers)

        def rss():

            return psutil.Process().memory_info().rss

        while not self._stop.is_set():
            try:
                for w, v in self.client.run(rss).items():
                    self.rss[w] = max(self.rss.get(w, 0), int(v))
            except Exception:  # a worker restarting
                pass
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                self.gpu_mib = max([self.gpu_mib, *(int(x) for x in out if x.strip().isdigit())])
            except (OSError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.period)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def one_run(wf, label: str, sample: bool = True) -> dict:
    """Start a local cluster, run ``wf`` on it, return timings and memory (the cluster is closed)."""
    from distributed import Client

    from xrdct_dask import store
    from xrdct_dask.cluster.local import local_cluster
    from xrdct_dask.runs.execute import run

    t0 = time.time()
    lc = local_cluster(wf)
    client = Client(lc)
    try:
        info = client.scheduler_info(n_workers=-1)["workers"]
        limits = {a: w.get("memory_limit", 0) for a, w in info.items()}
        names = {a: w.get("name") for a, w in info.items()}
        with Sampler(client) if sample else _Null() as smp:
            path = run(wf, cluster=lc, progress=True, summary=False)
        t_end = time.time()
    finally:
        client.close()
        lc.close()
    rs = store.read_attrs(path)["run_summary"]
    spans = rs["stage_spans"]
    first = spans["integrate"]["first_start"]
    last = max(s["last_finish"] for s in spans.values())
    frames = rs["frames_this_run"]
    out = {"label": label, "frames": frames, "startup_s": first - t0, "wall_s": t_end - t0,
           "steady_s": last - first, "whole_workflow_frames_per_s": frames / (last - first),
           "integrate_frames_per_s": frames / (spans["integrate"]["last_finish"] - first),
           "stages": spans, "task_seconds": rs["task_seconds"], "engines": rs.get("stage_engines", {}),
           "layout": store.read_attrs(path)["layout"]}
    if sample:
        out["worker_peak_rss_GB"] = {str(names.get(a, a)): round(v / 1e9, 2) for a, v in smp.rss.items()}
        out["worker_limit_GB"] = {str(names.get(a, a)): round(v / 1e9, 2) for a, v in limits.items()}
        out["workers_within_limit"] = all(not limits.get(a) or v <= limits[a] for a, v in smp.rss.items())
        out["gpu_peak_GiB"] = round(smp.gpu_mib / 1024, 1)
    return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--nomega", type=int, default=628)
    ap.add_argument("--nx", type=int, default=400)
    ap.add_argument("--npt", type=int, default=2000)
    ap.add_argument("--rmax", type=float, default=20.0)
    ap.add_argument("--distinct", type=int, default=64)
    ap.add_argument("--detector", default="pilatus2m", help="pilatus2m | small (a quick check on a laptop)")
    ap.add_argument("--set", action="append", default=[], help="a workflow key, e.g. compute.workers_per_gpu=4")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from _graph import link_frames

    from xrdct_dask.config import parse_overrides, workflow_from_dict

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # the workers' shutdown chatter: not the result
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_workflow_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "plan-cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first run builds the integration plan
    os.environ["XRDCT_CACHE_DIR"] = str(cache)
    t = time.perf_counter()
    root, sim = simulate_distinct(work, args.distinct, args.npt, args.detector)
    distinct = sorted((root / "frames").iterdir())
    print(f"{len(distinct)} distinct {args.detector} frames ({time.perf_counter() - t:.0f} s)")
    n = args.slices * args.nomega * args.nx
    t = time.perf_counter()
    frames_dir = link_frames(distinct, work / "frames", n)
    print(f"{n:,} frame files (hard links) in {time.perf_counter() - t:.0f} s")
    base = json.loads(sim.model_dump_json())
    base["inputs"] |= {"frames": str(frames_dir / "frame_{index:06d}.cbf"), "monitor": None, "scan_file": None}
    base["scan"] |= {"nz": args.slices, "nomega": args.nomega, "nx": args.nx}
    base["integrate"] |= {"npt_rad": args.npt}
    base["pdf"] |= {"enabled": True, "rmax": args.rmax}
    base["store"] = {"path": str(work / "run.zarr"), "overwrite": True}
    wf = workflow_from_dict(base, overrides=parse_overrides(args.set))

    result = {"date": time.strftime("%Y-%m-%d"), "scan": [args.slices, args.nomega, args.nx], "npt_rad": args.npt,
              "rmax": args.rmax, "detector": args.detector, "device": _device()}
    result["run"] = one_run(wf, "cold: integration plan built on the client")
    # start-up again: a fresh cluster, the plan now cached, a small scan of the same geometry
    small = workflow_from_dict(base | {"scan": base["scan"] | {"nz": 1, "nomega": 2}},
                               overrides={"store.path": str(work / "again.zarr"), "pdf.enabled": False})
    result["again"] = one_run(small, "warm: the plan cached", sample=False)
    r = result["run"]
    print(f"\nwhole workflow: {r['frames']:,} frames, {args.slices} slices of {args.nomega} x {args.nx}, "
          f"{args.npt} q, G(r) to {args.rmax} A on {result['device']}")
    print(f"  start-up {r['startup_s']:.1f} s (plan built); "
          f"again with the plan cached {result['again']['startup_s']:.1f} s")
    for name, s in r["stages"].items():
        print(f"  {name:>10}: {s['tasks']:4d} tasks, {r['task_seconds'].get(name, 0):8.1f} task-s, "
              f"{s['first_start'] - r['stages']['integrate']['first_start']:7.1f} .. "
              f"{s['last_finish'] - r['stages']['integrate']['first_start']:7.1f} s, "
              f"engine {','.join(r['engines'].get(name, [])) or '-'}")
    print(f"  integration alone {r['integrate_frames_per_s']:,.0f} frames/s (the anchor); whole chain "
          f"{r['whole_workflow_frames_per_s']:,.0f} frames/s = "
          f"{r['whole_workflow_frames_per_s'] / r['integrate_frames_per_s']:.0%} of it")
    if "worker_peak_rss_GB" in r:
        print(f"  peak RSS per worker (GB): {r['worker_peak_rss_GB']}; limits {r['worker_limit_GB']}; "
              f"within limits: {r['workers_within_limit']}; GPU peak {r['gpu_peak_GiB']} GiB")
    print(f"whole_workflow_frames_per_s = {r['whole_workflow_frames_per_s']:.0f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def _device() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip().splitlines()
        return out[0] if out else "CPU only"
    except (OSError, subprocess.SubprocessError):
        return "CPU only"


if __name__ == "__main__":
    sys.exit(main())
