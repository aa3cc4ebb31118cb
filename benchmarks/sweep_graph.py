"""The decode-integrate stage's rate through the dask graph on one GPU, for several worker layouts
(development tool behind the layout defaults; bench_gpu.py is the benchmark of record).

    python benchmarks/sweep_graph.py 4:16:2:8 3:8:2:8 ... [--workdir DIR] [--out DIR]

Each layout is WORKERS_PER_GPU:OMEGA_CHUNK:REPEATS:READ_THREADS; prints the rate of the first scan
after the cluster started (cold) and the median of the later scans on the same cluster (warm), for
a 20,000-frame scan of hard links to 64 simulated Pilatus 2M frames (2000 q bins).  ``--out``:
a JSON of the results and dask's profile of each layout's first scan.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

if __name__ == "__main__":
    from _graph import graph_rate, link_frames

    from xrdct_dask.simulate import simulate_scan

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("layouts", nargs="+")
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sweep_graph"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    scan = simulate_scan(args.workdir / "scan", nz=1, nomega=4, nx=16, detector="pilatus2m", npt_rad=2000)
    paths = [scan.frame_path(i) for i in range(64)]
    sizes = sorted(p.stat().st_size for p in paths)
    print(f"frame sizes MB: min {sizes[0] / 1e6:.2f} median {sizes[32] / 1e6:.2f} max {sizes[-1] / 1e6:.2f}; "
          f"frame 0 {paths[0].stat().st_size / 1e6:.2f}")
    link_frames(paths, args.workdir / "frames", args.frames)
    results = []
    for layout in args.layouts:
        wpg, oc, rep, rt = map(int, layout.split(":"))
        t = time.perf_counter()
        prof = args.out / f"profile_{wpg}_{oc}_{rt}.json" if args.out else None
        g = graph_rate(scan, args.workdir / "frames", args.frames, 2000, args.workdir / "run.zarr",
                       workers_per_gpu=wpg, omega_chunk=oc, read_threads=rt, repeats=rep, profile=prof)
        print(f"workers/gpu {wpg} omega_chunk {oc} read threads {rt}: cold {g['frames_per_s']:,.0f} frames/s, "
              f"warm {g.get('warm_frames_per_s', float('nan')):,.0f} ({time.perf_counter() - t:.0f} s with start-up)",
              flush=True)
        results.append({"layout": layout} | {k: v for k, v in g.items() if k != "epoch"})
    if args.out:
        (args.out / "sweep_graph.json").write_text(json.dumps(results, indent=2))
