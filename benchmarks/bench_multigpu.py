"""Multi-GPU scaling of the decode-integrate stage (issue 8): the simulated workflow on 1 GPU and
on all GPUs of the machine, in one run, through the dask graph into zarr.

    python benchmarks/bench_multigpu.py [--frames-per-gpu 200000] [--json out.json]

Full-size simulated Pilatus 2M frames (64 distinct, hard-linked so that the page cache holds
them), 2000 q bins, full splitting; one local GPU cluster per GPU count (``compute.workers_per_gpu``
workers per GPU, ``CUDA_VISIBLE_DEVICES`` restricted to the first k GPUs).  Prints frames/s per
configuration and the scaling efficiency ``rate(k) / (k * rate(1))`` (goal: >= 90 %).  Size the
scan so that each GPU has at least 60 s of work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames-per-gpu", type=int, default=200_000, help="frames per GPU (>= 60 s of work each)")
    ap.add_argument("--npt", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import cupy as cp
    from _graph import graph_rate, link_frames

    from xrdct_dask.simulate import simulate_scan

    ngpu = cp.cuda.runtime.getDeviceCount()
    names = {cp.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(ngpu)}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_multigpu_"))
    scan = simulate_scan(work / "scan", nz=1, nomega=4, nx=16, detector="pilatus2m", npt_rad=args.npt,
                         threads=os.cpu_count() or 4)
    distinct = sorted((scan.root / "frames").iterdir())
    results = []
    for k in sorted({1, ngpu}):
        n = args.frames_per_gpu * k // 100 * 100
        frames_dir = link_frames(distinct, work / f"frames-{n}", n)
        results.append({"gpus": k, **graph_rate(scan, frames_dir, n, args.npt, work / f"run-{k}gpu.zarr",
                                                gpus=list(range(k)))})
        print(f"{k} GPU(s): {results[-1]['frames']} frames in {results[-1]['seconds']:.1f} s = "
              f"{results[-1]['frames_per_s']:,.0f} frames/s")
    one = results[0]["frames_per_s"]
    for r in results:
        r["scaling_efficiency"] = r["frames_per_s"] / (r["gpus"] * one)
    out = {"devices": sorted(names), "gpus": ngpu, "date": time.strftime("%Y-%m-%d"), "results": results}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
