"""Reconstruction speed: FBP batched over q against skimage's iradon, on the CPU and the GPU.

The target slice is 400 x 400 voxels, 600 angles, 2000 q bins.  Speed is counted in giga-updates
per second, GUPS = ny * nx * nangles * nq / seconds (one update = one voxel receiving one
projection's interpolated value, for one q bin), for the whole FBP (filtering + back-projection)
and for the back-projection alone.

* CPU: xrdct_dask's numba FBP on ``--nq`` q bins (default 64; the per-bin cost does not depend on
  nq beyond the 64-bin chunks) with ``--threads`` threads, against skimage ``iradon`` (single
  threaded) on one q bin, both measured in this run: the ratio is per core.
* GPU (when cupy sees a device): the RawKernel FBP on the full ``--gpu-nq`` bins (default 2000),
  timed with CUDA events after a warm-up; it also reports the memory traffic this speed implies
  against the device's peak bandwidth (from its attributes) and against a device-to-device copy
  measured in the same run, and checks GPU = CPU on a small block.

Usage::

    python benchmarks/bench_recon.py                     # CPU (and GPU if present), medians of 3
    python benchmarks/bench_recon.py --nq 128 --threads 2 --json results.json
    python benchmarks/bench_recon.py --no-cpu --gpu-nq 2000 --json gpu.json   # GPU only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xrdct_dask.backend import cp, gpu_available  # noqa: E402
from xrdct_dask.recon import backproject, fbp  # noqa: E402
from xrdct_dask.recon.fbp import filter_block  # noqa: E402
from xrdct_dask.recon.projector import default_threads  # noqa: E402


def median_time(fn, repeats: int, best: dict | None = None, key: str = "") -> float:
    """Median wall time of ``repeats`` calls (the best one goes into ``best[key]``: on a shared
    machine it is the least disturbed)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if best is not None:
        best[key] = min(times)
    return statistics.median(times)


def make_sinogram(n: int, nangles: int, nq: int, seed: int = 0) -> np.ndarray:
    """A sinogram block (nangles, n, nq) float32: random, positive, zero beyond the circle's shadow
    (the work does not depend on the values)."""
    rng = np.random.default_rng(seed)
    s = rng.random((nangles, n, nq), dtype=np.float32)
    x = np.arange(n) - n // 2
    s[:, np.abs(x) > 0.45 * n] = 0
    return s


def gups(n: int, nangles: int, nq: int, seconds: float) -> float:
    return n * n * nangles * nq / seconds / 1e9


def bench_cpu(args) -> dict:
    from skimage.transform import iradon

    n, na, nq, threads = args.n, args.nangles, args.nq, args.threads
    theta = np.arange(na) * 180.0 / na
    s = make_sinogram(n, na, nq)
    fbp(s[:, :, :2], theta, threads=threads)  # numba compile / cache load
    best = {}
    t_fbp = median_time(lambda: fbp(s, theta, threads=threads), args.repeats, best, "fbp")
    filtered, axis = filter_block(s[:, :, :64], threads=threads)
    t_rad = np.deg2rad(theta)
    out = np.zeros((n, n, filtered.shape[2]), np.float32)
    t_bp = median_time(lambda: backproject(filtered, np.cos(t_rad), np.sin(t_rad), axis, n, out=out,
                                           threads=threads), args.repeats, best, "bp")
    one = s[:, :, 0].T.astype(np.float64)
    t_sk = median_time(lambda: iradon(one, theta, filter_name="ramp", circle=True), args.repeats, best, "iradon")
    ref = iradon(one, theta, filter_name="ramp", circle=True)
    err = float(np.abs(fbp(s[:, :, :1], theta)[..., 0] - ref).max() / np.abs(ref).max())
    res = {
        "n": n, "nangles": na, "nq": nq, "threads": threads, "cpu_count": os.cpu_count(),
        "fbp_seconds": t_fbp, "fbp_gups": gups(n, na, nq, t_fbp), "fbp_gups_per_core": gups(n, na, nq, t_fbp) / threads,
        "backproject_gups_per_core": gups(n, na, filtered.shape[2], t_bp) / threads,
        "iradon_seconds_per_q": t_sk, "iradon_gups": gups(n, na, 1, t_sk),
        "seconds_per_slice_2000q": t_fbp / nq * 2000,
        "max_rel_diff_vs_iradon": err,
        "best_of_repeats": {"fbp_gups_per_core": gups(n, na, nq, best["fbp"]) / threads,
                            "backproject_gups_per_core": gups(n, na, filtered.shape[2], best["bp"]) / threads,
                            "iradon_gups": gups(n, na, 1, best["iradon"])},
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    res["speedup_per_core_vs_iradon"] = res["fbp_gups_per_core"] / res["iradon_gups"]
    b = res["best_of_repeats"]
    b["speedup_per_core_vs_iradon"] = b["fbp_gups_per_core"] / b["iradon_gups"]
    cpu = platform.processor() or platform.machine()
    print(f"CPU  {n}x{n} voxels, {na} angles, {nq} q bins, {threads} thread(s) [{cpu}]")
    print(f"  xrdct FBP (filter + back-projection): median {t_fbp:.3f} s = {res['fbp_gups']:.2f} GUPS "
          f"= {res['fbp_gups_per_core']:.2f} GUPS/core ({res['seconds_per_slice_2000q']:.0f} s per 2000-q slice)")
    print(f"  xrdct back-projection alone:          {res['backproject_gups_per_core']:.2f} GUPS/core")
    print(f"  skimage iradon, one q bin:            median {t_sk:.3f} s = {res['iradon_gups']:.3f} GUPS (1 core)")
    print(f"  ratio per core: {res['speedup_per_core_vs_iradon']:.1f}x iradon (goal >= 5x); "
          f"max |FBP - iradon| / max = {err:.1e}")
    print(f"  best of {args.repeats}: FBP {b['fbp_gups_per_core']:.2f} GUPS/core, back-projection "
          f"{b['backproject_gups_per_core']:.2f} GUPS/core, iradon {b['iradon_gups']:.3f} GUPS, ratio "
          f"{b['speedup_per_core_vs_iradon']:.1f}x (load average {res['load_average']})")
    return res


def _device_peak_bandwidth_gbs() -> float | None:
    """Peak DRAM bandwidth from the device attributes: 2 (DDR) x memory clock x bus width."""
    rt = cp.cuda.runtime
    try:
        dev = cp.cuda.Device().id
        clock_khz = rt.deviceGetAttribute(getattr(rt, "cudaDevAttrMemoryClockRate", 36), dev)
        bus_bits = rt.deviceGetAttribute(getattr(rt, "cudaDevAttrGlobalMemoryBusWidth", 37), dev)
    except Exception:  # attribute not exposed by this CUDA/cupy version
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz > 0 and bus_bits > 0 else None


def _gpu_time(fn, repeats: int) -> float:
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def bench_gpu(args) -> dict:
    n, na, nq = args.n, args.nangles, args.gpu_nq
    theta = np.arange(na) * 180.0 / na
    t_rad = np.deg2rad(theta)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    # GPU = CPU on a small block first (1e-4 of the maximum)
    small, small_theta = make_sinogram(128, 90, 64, seed=1), np.arange(90) * 2.0
    ref = fbp(small, small_theta)
    diff = float(np.abs(cp.asnumpy(fbp(cp.asarray(small), small_theta)) - ref).max() / np.abs(ref).max())
    s = cp.asarray(make_sinogram(n, na, nq))
    fbp(s[:, :, :64], theta)  # compile the kernels, plan the FFTs
    t_fbp = _gpu_time(lambda: fbp(s, theta), args.repeats)
    chunk = 256
    filtered, axis = filter_block(s[:, :, :chunk])
    out = cp.zeros((n, n, chunk), cp.float32)
    t_bp = _gpu_time(lambda: backproject(filtered, np.cos(t_rad), np.sin(t_rad), axis, n, out=out),
                     args.repeats)
    bp_gups = gups(n, na, chunk, t_bp)
    # memory: a device-to-device copy as the achievable-bandwidth anchor (read + write)
    buf = cp.empty(256 * 2**20, cp.float32)
    dst = cp.empty_like(buf)
    t_copy = _gpu_time(lambda: cp.copyto(dst, buf), 5)
    copy_gbs = 2 * buf.nbytes / t_copy / 1e9
    peak_gbs = _device_peak_bandwidth_gbs()
    nd = filtered.shape[1]
    # compulsory DRAM traffic of the back-projection: read the filtered chunk once, write the image once
    compulsory_gbs = (na * nd * chunk + n * n * chunk) * 4 / t_bp / 1e9
    # if every update fetched its two float32 samples from DRAM (no cache reuse)
    update_gbs = bp_gups * 8
    res = {
        "device": name, "n": n, "nangles": na, "nq": nq, "q_chunk": chunk,
        "fbp_seconds": t_fbp, "fbp_gups": gups(n, na, nq, t_fbp), "backproject_gups": bp_gups,
        "copy_bandwidth_gbs": copy_gbs, "peak_bandwidth_gbs": peak_gbs,
        "compulsory_traffic_gbs": compulsory_gbs, "update_equivalent_traffic_gbs": update_gbs,
        "max_rel_diff_vs_cpu": diff,
    }
    ref_bw = peak_gbs or copy_gbs
    res["compulsory_fraction_of_peak"] = compulsory_gbs / ref_bw
    res["update_equivalent_fraction_of_peak"] = update_gbs / ref_bw
    print(f"GPU  {name}: {n}x{n} voxels, {na} angles, {nq} q bins")
    print(f"  FBP (filter + back-projection): median {t_fbp:.3f} s = {res['fbp_gups']:.1f} GUPS (goal >= 200)")
    print(f"  back-projection alone ({chunk}-q chunk): {bp_gups:.1f} GUPS")
    print(f"  bandwidth: peak {peak_gbs or float('nan'):.0f} GB/s (device attributes), copy {copy_gbs:.0f} GB/s "
          f"(measured); back-projection compulsory traffic {compulsory_gbs:.0f} GB/s "
          f"= {res['compulsory_fraction_of_peak']:.1%} of {'peak' if peak_gbs else 'copy'}; "
          f"update-equivalent (8 B/update, no reuse) {update_gbs:.0f} GB/s "
          f"= {res['update_equivalent_fraction_of_peak']:.1f}x")
    print(f"  max |GPU - CPU| / max = {diff:.1e} (must be <= 1e-4)")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400, help="voxels across (= translation steps)")
    p.add_argument("--nangles", type=int, default=600)
    p.add_argument("--nq", type=int, default=64, help="q bins on the CPU")
    p.add_argument("--gpu-nq", type=int, default=2000, help="q bins on the GPU")
    p.add_argument("--threads", type=int, default=default_threads(), help="CPU threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-cpu", action="store_true")
    p.add_argument("--no-gpu", action="store_true")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
               "host": platform.node(), "python": platform.python_version()}
    if not args.no_cpu:
        results["cpu"] = bench_cpu(args)
    if not args.no_gpu:
        if gpu_available():
            results["gpu"] = bench_gpu(args)
            if "cpu" in results:
                ratio = results["gpu"]["fbp_gups"] / results["cpu"]["fbp_gups"]
                print(f"GPU / CPU ({results['cpu']['threads']} threads): {ratio:.0f}x")
        else:
            print("GPU: no cupy / CUDA device here, skipped")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
