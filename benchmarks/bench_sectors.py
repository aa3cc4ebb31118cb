"""Azimuthal sectors (issue 27): 36 sectors x 2000 q bins from compressed CBF bytes, against 1D.

Full-size simulated Pilatus 2M frames (1679 x 1475), full pixel splitting, Poisson variance, solid
angle, polarization, mask; the sectors split -180..180 deg of chi (pyFAI's 2D matrix, 36 x 10 deg).

    python benchmarks/bench_sectors.py --part cpu [--frames 32] [--json out.json]
    python benchmarks/bench_sectors.py --part gpu [--frames 4096] [--slices 2] [--json out.json]

Parts (medians over --repeats):
  cpu  per core (one numba thread): read CBF bytes + fused decode/integrate, 2D (sectors, the sums
       kept as a sector run keeps them) and 1D of the same frames; the ratio 2D / 1D (goal: 2D
       within 2x of 1D, i.e. ratio >= 0.5)
  gpu  one GPU: CBF bytes already in pinned RAM -> I, sigma and the kept sums in host RAM, 2D and 1D
       in the same run (goal: >= 8,000 frames/s in 2D); the bytes a frame's reduced patterns take
       (I, sigma, sums: float32) and then, through the dask graph into zarr, --slices slices of
       the frames hard-linked (goal: >= 70 % of the engine's rate), with the bytes stored per
       frame on disk (Blosc LZ4 + shuffle) as measured on the store
The GPU part needs only cupy, numpy, numba, h5py, scikit-image and the project's dependencies
(no pyFAI OpenCL, no silx): `pip install . cupy-cuda12x` (or the wheels of both) and run it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# per core: numba and BLAS keep to one thread (set before numpy / numba are imported)
if "--part" in sys.argv and sys.argv[sys.argv.index("--part") + 1:][:1] == ["cpu"]:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

SHAPE = (1679, 1475)
FULL_CIRCLE = (-180.0, 180.0)


def med(xs) -> float:
    return float(statistics.median(xs))


def rate(fn, nframes: int, repeats: int, sync=None) -> float:
    """Median frames/s of ``fn()`` over ``repeats`` (one untimed call first: buffers, kernels)."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return nframes / med(times)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def simulated(work: Path, distinct: int, npt: int):
    """``distinct`` simulated Pilatus 2M frames (a 1 x distinct/16 x 16 scan), reused from ``work``."""
    from xrdct_dask.simulate import SimulatedScan, simulate_scan

    nx = 16
    sim = dict(nz=1, nomega=max(1, distinct // nx), nx=nx, detector="pilatus2m", npt_rad=npt)
    r = work / "scan"
    done = r / "simulated.json"
    if done.exists() and json.loads(done.read_text()) == sim:
        return SimulatedScan(root=r, workflow=r / "workflow.yaml", frames_template="frames/frame_{index:06d}.cbf",
                             poni=r / "geometry.poni", mask=r / "mask.edf", monitor=r / "monitor.txt",
                             scan_file=r / "scan.csv", truth=r / "truth.npz", nz=1, nomega=sim["nomega"], nx=nx,
                             detector="pilatus2m", phases=())
    scan = simulate_scan(r, **sim, threads=os.cpu_count() or 4)
    done.write_text(json.dumps(sim))
    return scan


def integrators(scan, npt: int, sectors: int, engine: str):
    """The 2D (``sectors`` x ``npt``, the sums kept) and 1D integrators of the scan's geometry."""
    import fabio

    from xrdct_dask.integrate import Integrator

    mask = fabio.open(str(scan.mask)).data != 0
    kw = dict(mask=mask, polarization_factor=0.99, engine=engine)
    t = time.perf_counter()
    two = Integrator(scan.poni, SHAPE, npt, npt_azim=sectors, azimuth_range=FULL_CIRCLE, **kw)
    t2 = time.perf_counter() - t
    one = Integrator(scan.poni, SHAPE, npt, **kw)
    print(f"plans: 2D {sectors} x {npt} ({two.plan.nnz / 1e6:.2f} M nnz, built in {t2:.0f} s), "
          f"1D {npt} ({one.plan.nnz / 1e6:.2f} M nnz); sums kept: 2D {two.keep_sums}, 1D {one.keep_sums}")
    return two, one


def pattern_bytes(integ) -> int:
    """Bytes of one frame's reduced arrays as stored before compression: I and sigma, and the five
    kept sums where kept, float32 each."""
    return 4 * integ.plan.nbins * (2 + (5 if integ.keep_sums else 0))


# ------------------------------------------------------------------------------------------
# CPU: per core, 2D against 1D
# ------------------------------------------------------------------------------------------
def cpu_part(args, out: dict) -> None:
    from xrdct_dask.io import read_cbf_payload

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_sectors_"))
    scan = simulated(work, max(args.frames, 16), args.npt)
    paths = [scan.frame_path(i) for i in range(args.frames)]
    two, one = integrators(scan, args.npt, args.sectors, "numpy")

    def run(integ):
        def go():
            for a in range(0, len(paths), 32):  # as a task does: compressed bytes read, decoded inside the integration
                integ.integrate_payloads([read_cbf_payload(p) for p in paths[a:a + 32]])
        return go

    r2 = rate(run(two), len(paths), args.repeats)
    r1 = rate(run(one), len(paths), args.repeats)
    out["cpu"] = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                  "frames": len(paths), "npt_rad": args.npt, "sectors": args.sectors,
                  "nnz_2d": int(two.plan.nnz), "nnz_1d": int(one.plan.nnz),
                  "fps_per_core_2d": r2, "fps_per_core_1d": r1, "ratio_2d_to_1d": r2 / r1,
                  "goal_met_within_2x": bool(r2 / r1 >= 0.5)}
    print(f"\nper core ({args.frames} frames, read + fused decode/integrate, Poisson errors):")
    print(f"  2D {args.sectors} x {args.npt}, sums kept : {r2:7.2f} frames/s")
    print(f"  1D {args.npt}                   : {r1:7.2f} frames/s")
    print(f"  ratio 2D / 1D              : {r2 / r1:.2f} (goal >= 0.5: within 2x)")


# ------------------------------------------------------------------------------------------
# GPU: from pinned RAM, and through the graph into zarr
# ------------------------------------------------------------------------------------------
def gpu_part(args, out: dict) -> None:
    import cupy as cp

    from xrdct_dask.io import read_cbf_payload
    from xrdct_dask.io.gpu_decode import aligned_layout, pack_aligned, pinned_empty

    dev = cp.cuda.runtime.getDeviceProperties(0)
    res = {"device": dev["name"].decode(), "npt_rad": args.npt, "sectors": args.sectors, "batch": args.batch}
    print(f"device: {res['device']}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_sectors_"))
    scan = simulated(work, args.distinct, args.npt)
    nd = (args.distinct // 16) * 16
    paths = [scan.frame_path(i) for i in range(nd)]
    datas = [bytes(read_cbf_payload(p).data) for p in paths]
    res["compressed_MB_per_frame"] = float(np.mean([len(d) for d in datas])) / 1e6
    two, one = integrators(scan, args.npt, args.sectors, "cupy")
    res["nnz_2d"], res["nnz_1d"] = int(two.plan.nnz), int(one.plan.nnz)

    # compressed bytes in page-locked memory at aligned offsets (what the reader's arenas hold)
    arenas = []
    for a in range(3):
        b = [datas[(a * args.batch + k) % nd] for k in range(args.batch)]
        begin, end, total = aligned_layout([len(d) for d in b])
        arena = pinned_empty(total)
        pack_aligned(b, arena, begin)
        arenas.append((arena, begin, end))
    nbatch = max(2, args.frames // args.batch)
    batches = [(arenas[k % len(arenas)], np.ones(args.batch)) for k in range(nbatch)]

    def e2e(integ):
        def go():
            for _ in integ.impl.integrate_batches(batches, packed=True):
                pass
        return go

    sync = cp.cuda.Device().synchronize
    r2 = rate(e2e(two), nbatch * args.batch, args.repeats, sync)
    r1 = rate(e2e(one), nbatch * args.batch, args.repeats, sync)
    res |= {"end2end_fps_2d": r2, "end2end_fps_1d": r1, "ratio_2d_to_1d": r2 / r1,
            "reduced_bytes_per_frame_2d": pattern_bytes(two), "reduced_bytes_per_frame_1d": pattern_bytes(one),
            "goal_8000_fps_met": bool(r2 >= 8000)}
    print(f"end to end, CBF bytes in pinned RAM -> patterns in host RAM ({nbatch * args.batch} frames): "
          f"2D {r2:,.0f} frames/s (I, sigma, sums: {pattern_bytes(two) / 1e6:.2f} MB a frame before compression), "
          f"1D {r1:,.0f} frames/s -> 2D / 1D {r2 / r1:.2f} (goal: 2D >= 8,000)")
    del two, one
    cp.get_default_memory_pool().free_all_blocks()

    if args.graph_frames:
        sys.path.insert(0, str(Path(__file__).parent))
        from _graph import graph_rate, link_frames

        per_slice = max(100, args.graph_frames // args.slices // 100 * 100)
        gdir = work / "graph"
        link_frames(paths, gdir / "frames", per_slice * args.slices)
        store = gdir / "run.zarr"
        g = graph_rate(scan, gdir / "frames", per_slice, args.npt, store, nz=args.slices,
                       omega_chunk=args.omega_chunk, repeats=args.graph_repeats,
                       overrides={"integrate.npt_azim": args.sectors, "integrate.azimuth_range": list(FULL_CIRCLE)})
        stored = sum(f.stat().st_size for f in (store / "reduced").rglob("*") if f.is_file())
        res |= {"graph_frames": g["frames"], "graph_fps": g["frames_per_s"], "graph_tasks": g["tasks"],
                "graph_fraction_of_engine": g["frames_per_s"] / r2, "graph_timeline": g["timeline"],
                "stored_bytes_per_frame": stored / g["frames"],
                "goal_70_percent_met": bool(g["frames_per_s"] >= 0.7 * r2)}
        if "warm_frames_per_s" in g:
            res["graph_warm_fps"] = g["warm_frames_per_s"]
        print(f"dask graph into zarr ({g['frames']} frames, {args.slices} slices, 1 GPU, 2D): "
              f"{g['frames_per_s']:,.0f} frames/s = {res['graph_fraction_of_engine']:.0%} of the engine's 2D rate "
              f"(goal >= 70 %); warm cluster {res.get('graph_warm_fps', float('nan')):,.0f}; stored on disk "
              f"{res['stored_bytes_per_frame'] / 1e6:.2f} MB a frame (reduced/, compressed)")
    out["gpu"] = res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("cpu", "gpu"), required=True)
    ap.add_argument("--frames", type=int, default=None, help="frames per timed repeat (cpu: 32, gpu: 4096)")
    ap.add_argument("--slices", type=int, default=2, help="gpu: slices of the graph scan")
    ap.add_argument("--graph-frames", type=int, default=20000, help="gpu: frames of the graph scan (0: no graph)")
    ap.add_argument("--graph-repeats", type=int, default=2)
    ap.add_argument("--omega-chunk", type=int, default=16, help="gpu graph: omega rows per task (x 100 frames)")
    ap.add_argument("--distinct", type=int, default=64, help="gpu: distinct simulated frames (cycled)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--npt", type=int, default=2000)
    ap.add_argument("--sectors", type=int, default=36)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.frames = args.frames or (32 if args.part == "cpu" else 4096)
    out = {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "command": " ".join(sys.argv)}
    (cpu_part if args.part == "cpu" else gpu_part)(args, out)
    print(json.dumps(out, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":  # the GPU part's graph starts a LocalCluster: spawned workers import this file
    sys.exit(main())
