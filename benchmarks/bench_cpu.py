"""CPU benchmark: read + decode + integrate per core, against fabio.open + pyFAI integrate1d_ng.

Full-size Pilatus 2M frames (1679 x 1475) made by the simulator, 2000 q bins, full pixel
splitting, Poisson errors, solid angle + polarization + mask + monitor.  Prints medians over
repeats and the ratio to the anchor measured in the same run, then the decode-integrate stage's
rate through the dask graph on a LocalCluster against the engine's rate x workers.

    python benchmarks/bench_cpu.py [--frames 200] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# one core per measurement: pyFAI's OpenMP and numpy's BLAS must not borrow the other core
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def median_rate(fn, nframes: int, repeats: int) -> tuple[float, list[float]]:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        rates.append(nframes / (time.perf_counter() - t))
    return statistics.median(rates), rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200, help="frames in the simulated scan (nomega x nx)")
    ap.add_argument("--engine-frames", type=int, default=64, help="frames per timed engine repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--npt", type=int, default=2000)
    ap.add_argument("--omega-chunk", type=int, default=4, help="omega rows per task (x 25 frames)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import fabio
    import pyFAI

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.io import read_cbf_payload
    from xrdct_dask.simulate import simulate_scan

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_cpu_"))
    nx = 25
    nomega = max(1, args.frames // nx)
    t0 = time.perf_counter()
    scan = simulate_scan(work / "scan", nz=1, nomega=nomega, nx=nx, detector="pilatus2m", npt_rad=args.npt,
                         threads=os.cpu_count() or 1)
    nframes = nomega * nx
    print(f"simulated {nframes} Pilatus 2M frames in {time.perf_counter() - t0:.0f} s "
          f"({sum(p.stat().st_size for p in (scan.root / 'frames').iterdir()) / nframes / 1e6:.2f} MB/frame)")
    paths = [scan.frame_path(i) for i in range(nframes)]
    mask = fabio.open(str(scan.mask)).data != 0
    k = min(args.engine_frames, nframes)
    sub = paths[:k]

    # ---- anchor: fabio.open + pyFAI integrate1d_ng (CSR, full splitting, Cython), one frame per call
    ai = pyFAI.load(str(scan.poni))
    kw = dict(unit="q_nm^-1", method=("full", "csr", "cython"), error_model="poisson", polarization_factor=0.99,
              mask=mask)
    ai.integrate1d_ng(fabio.open(str(sub[0])).data, args.npt, **kw)  # builds the CSR matrix (not timed)

    def anchor():
        for p in sub:
            ai.integrate1d_ng(fabio.open(str(p)).data, args.npt, **kw)

    anchor_rate, _ = median_rate(anchor, k, args.repeats)

    # ---- ours: read compressed bytes + fused decode/integrate, batches of 32
    integ = Integrator(scan.poni, (1679, 1475), args.npt, mask=mask, polarization_factor=0.99, engine="numpy")
    integ.integrate_payloads([read_cbf_payload(sub[0])])  # numba compile + warm caches (not timed)

    def ours():
        for a in range(0, k, 32):
            integ.integrate_payloads([read_cbf_payload(p) for p in sub[a:a + 32]])

    ours_rate, _ = median_rate(ours, k, args.repeats)

    # ---- decode only and integrate only (decoded frames in memory), for the breakdown
    from xrdct_dask.io import decode_payload

    payloads = [read_cbf_payload(p) for p in sub[:32]]
    frames = np.stack([decode_payload(p) for p in payloads])
    decode_rate, _ = median_rate(lambda: [decode_payload(p) for p in payloads], len(payloads), args.repeats)
    integ_rate, _ = median_rate(lambda: integ.integrate(frames), len(frames), args.repeats)

    # ---- through the dask graph: the decode-integrate stage on a LocalCluster
    from distributed import Client, LocalCluster

    from xrdct_dask.config import load_workflow
    from xrdct_dask.pipeline.graph import build_graph
    from xrdct_dask.pipeline.integrator import IntegratorPlugin
    from xrdct_dask.runs.execute import compute_with_progress
    from xrdct_dask.runs.open import open_run

    wf = load_workflow(scan.workflow, {"store.path": str(work / "run.zarr"), "store.overwrite": True,
                                        "integrate.npt_rad": args.npt, "pdf.enabled": False,
                                        "store.omega_chunk": args.omega_chunk})
    graph = build_graph(open_run(wf))
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0",
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        client.register_plugin(IntegratorPlugin(wf))
        client.run(lambda: None)
        t = time.perf_counter()
        compute_with_progress(client, {"integrate": graph["integrate"]}, progress=False)
        graph_rate = nframes / (time.perf_counter() - t)

    res = {
        "device": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": sys.version.split()[0],
        "frames": nframes, "npt_rad": args.npt, "nnz": int(integ.plan.nnz),
        "anchor_fabio_pyfai_fps_per_core": anchor_rate,
        "ours_read_decode_integrate_fps_per_core": ours_rate,
        "ratio_vs_anchor": ours_rate / anchor_rate,
        "decode_only_fps_per_core": decode_rate,
        "integrate_only_fps_per_core": integ_rate,
        "graph_workers": args.workers,
        "graph_decode_integrate_fps": graph_rate,
        "graph_fraction_of_engine": graph_rate / (ours_rate * args.workers),
    }
    print(f"\nper core, {args.npt} bins, full splitting, Poisson errors ({integ.plan.nnz / 1e6:.1f} M nnz):")
    print(f"  anchor fabio.open + pyFAI integrate1d_ng : {anchor_rate:7.1f} frames/s")
    print(f"  ours read + fused decode/integrate       : {ours_rate:7.1f} frames/s  ({ours_rate / anchor_rate:.2f}x)")
    print(f"    decode only                             : {decode_rate:7.1f} frames/s")
    print(f"    integrate only (decoded frames)         : {integ_rate:7.1f} frames/s")
    print(f"dask graph, {args.workers} workers x 1 thread   : {graph_rate:7.1f} frames/s "
          f"= {res['graph_fraction_of_engine']:.0%} of the engine rate x workers")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
