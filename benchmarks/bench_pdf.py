#!/usr/bin/env python
"""G(r) of one tomographic slice: 400 x 400 voxels, 2000 Q points -> 3000 r points.

The transform (xrdct_dask.pdf) is one GEMM per batch of voxels, ``(nvox, nq) @ (nq, nr + extras)``
(extras: 16 low-r points, up to 64 high-Q F(Q) points and the scale N for the quality figures),
followed by a per-voxel division and the figures.  Measured here:

* CPU (numpy/OpenBLAS, ``--cpu-threads`` BLAS threads, 1 = "per core"): the anchor is the bare
  GEMM on the same batches; the full transform (``linear_transform`` + ``finish``, batches of 4096
  voxels as in ``stages.pdf_slice``) is reported as a ratio to it.  With ``--cpu-voxels`` below
  the slice size the per-slice time is extrapolated linearly in the number of voxels (the GEMM is
  linear in its rows) and says so.
* GPU (cupy/cuBLAS, when a CUDA device is usable): the whole slice resident on the device; the
  bare GEMM (anchor), the full transform, and the full transform with the host->device copy of
  I(Q) and the device->host copy of G(r).  FLOP rate and its fraction of the assumed peak.

Prints medians and ratios; ``--json PATH`` writes them.  Example:

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_pdf.py --cpu-threads 1 --json pdf.json
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nx", type=int, default=400, help="slice is nx x nx voxels")
    ap.add_argument("--nq", type=int, default=2000, help="Q points used by the transform")
    ap.add_argument("--nr", type=int, default=3000, help="r points (rstep 0.01 A)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-threads", type=int, default=1, help="BLAS threads for the CPU part (0: leave as is)")
    ap.add_argument("--cpu-voxels", type=int, default=32768, help="voxels timed on the CPU (0: the whole slice)")
    ap.add_argument("--cpu-dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--gpu-dtypes", default="float32,float64")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--skip-gpu", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here")
    return ap.parse_args(argv)


ARGS = parse_args()
if ARGS.cpu_threads > 0:  # before numpy loads its BLAS
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.cpu_threads)

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xrdct_dask.pdf import build_operator, compute_pdf, finish, linear_transform  # noqa: E402
from xrdct_dask.simulate import phase_library  # noqa: E402

BATCH = 4096  # voxels per GEMM on the CPU, as stages.PDF_BATCH_VOXELS["numpy"]

# NVIDIA data-sheet peaks, TFLOP/s: (FP32 non-tensor, FP64 non-tensor, FP64 tensor core)
GPU_PEAKS = {
    "H100 SXM": (66.9, 33.5, 66.9),
    "H100 PCIe": (51.2, 25.6, 51.2),
    "H100 NVL": (60.0, 30.0, 60.0),  # also H200 NVL
    "H200": (66.9, 33.5, 66.9),
}


def make_slice(nvox: int, q_A: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(nvox, nq)`` float32 voxel patterns: random mixtures of the simulator's four phases."""
    pats = np.stack([np.interp(q_A, p.q_A, p.intensity) for p in phase_library()])
    frac = np.random.default_rng(seed).uniform(0, 40, (nvox, len(pats)))
    return (frac @ pats).astype(np.float32)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (BLAS threads, caches, device matrix)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def build(nq: int, nr: int):
    q = np.linspace(0.8, 25.5, nq)
    op = build_operator(q, "Ni", qmin=float(q[0]), qmax=24.0, rpoly=0.9, rmin=0.01, rmax=0.01 * nr, rstep=0.01,
                        qmaxinst=float(q[-1]), lorch=True)
    assert op.q_A.size == nq and op.r_A.size == nr, (op.q_A.size, op.r_A.size)
    return q, op


def bench_cpu(op, q, nvox_slice: int, args) -> dict:
    dtype = np.dtype(args.cpu_dtype).type
    nvox = nvox_slice if args.cpu_voxels <= 0 else min(args.cpu_voxels, nvox_slice)
    x = make_slice(nvox, q).astype(dtype)
    m = op.matrix.astype(dtype)
    out = np.empty((nvox, op.nr), np.float32)

    buf = np.empty((BATCH, m.shape[1]), dtype)

    def gemm():  # the bare product into a reused buffer: what BLAS alone costs
        for a in range(0, nvox, BATCH):
            xb = x[a:a + BATCH]
            np.matmul(xb, m, out=buf[:xb.shape[0]])

    def full():
        lin = None
        for a in range(0, nvox, BATCH):
            lin = linear_transform(x[a:a + BATCH], op, dtype=dtype)
            out[a:a + BATCH] = finish(lin, op, min_scale=1.0).G
        return lin

    t_gemm = median_time(gemm, args.repeats)
    t_full = median_time(full, args.repeats)
    flops = 2.0 * nvox * op.matrix.shape[0] * op.matrix.shape[1]
    scale = nvox_slice / nvox
    return {"dtype": args.cpu_dtype, "threads": args.cpu_threads or "default", "voxels_timed": nvox,
            "extrapolated": nvox != nvox_slice, "gemm_s_per_slice": t_gemm * scale,
            "full_s_per_slice": t_full * scale, "full_over_gemm": t_full / t_gemm,
            "gemm_gflops": flops / t_gemm / 1e9, "voxels_per_s": nvox / t_full}


def gpu_peak(cp) -> tuple[str, tuple[float, float, float] | None, str]:
    """(device name, assumed (FP32, FP64, FP64 tensor) peaks in TFLOP/s or None, where they come from)."""
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    key = None
    if "H100" in name or "H200" in name:
        key = ("H100 NVL" if "NVL" in name else "H100 PCIe" if "PCIe" in name else
               "H200" if "H200" in name else "H100 SXM")
    if key is not None:
        return name, GPU_PEAKS[key], f"{key} data sheet"
    try:  # unknown device: FP32 = SMs x 128 lanes x 2 (FMA) x clock (the Hopper/Ada/GA10x layout)
        clock_khz = props.get("clockRate") or cp.cuda.Device(0).attributes["ClockRate"]
        fp32 = props["multiProcessorCount"] * 128 * 2 * clock_khz * 1e3 / 1e12
        return name, (fp32, fp32 / 2, fp32 / 2), "SMs x 128 x 2 x clock (assumed layout)"
    except Exception:
        return name, None, "unknown"


def bench_gpu(op, q, nvox: int, args) -> dict | None:
    try:
        import cupy as cp
    except Exception as err:  # ImportError or a CUDA runtime that fails to load
        print(f"GPU: skipped (cupy: {err})")
        return None
    from xrdct_dask.backend import gpu_available

    if not gpu_available():
        print("GPU: skipped (no CUDA device)")
        return None
    name, peaks, basis = gpu_peak(cp)
    host = make_slice(nvox, q)
    peaks = peaks or (float("nan"),) * 3
    out = {"device": name, "peak_basis": basis, "peak_tflops": dict(zip(("fp32", "fp64", "fp64_tensor"), peaks)),
           "results": {}}

    def one_dtype(dt: str) -> dict:
        dtype = np.dtype(dt).type
        x = cp.asarray(host.astype(dtype))
        m = op.matrix_for(cp, dtype)

        def timed(fn):
            fn()
            cp.cuda.Device().synchronize()
            ts = []
            for _ in range(args.repeats):
                start, stop = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                fn()
                stop.record()
                stop.synchronize()
                ts.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
            return float(np.median(ts))

        t_gemm = timed(lambda: x @ m)
        t_full = timed(lambda: compute_pdf(x, op, min_scale=1.0, dtype=dtype))

        def end_to_end():
            res = compute_pdf(cp.asarray(host.astype(dtype, copy=False)), op, min_scale=1.0, dtype=dtype)
            return cp.asnumpy(res.G)

        t_e2e = median_time(end_to_end, args.repeats)
        # the same with page-locked host buffers (what a worker with reused pinned buffers gets)
        import cupyx

        pin_in = cupyx.empty_pinned(host.shape, dtype)
        pin_in[...] = host
        pin_out = cupyx.empty_pinned((nvox, op.nr), np.float32)

        def end_to_end_pinned():
            x.set(pin_in)
            compute_pdf(x, op, min_scale=1.0, dtype=dtype).G.get(out=pin_out)

        t_e2e_pinned = median_time(end_to_end_pinned, args.repeats)
        flops = 2.0 * nvox * m.shape[0] * m.shape[1]
        rate = flops / t_gemm / 1e12
        peak = peaks[0] if dt == "float32" else peaks[1]
        res = {"gemm_s": t_gemm, "full_s": t_full, "full_with_transfers_s": t_e2e,
               "full_with_pinned_transfers_s": t_e2e_pinned, "gemm_tflops": rate,
               "gemm_fraction_of_peak": rate / peak, "full_over_gemm": t_full / t_gemm}
        if dt == "float64":
            res["gemm_fraction_of_fp64_tensor_peak"] = rate / peaks[2]
        return res

    for dt in args.gpu_dtypes.split(","):
        out["results"][dt] = one_dtype(dt)
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()
    return out


def main() -> int:
    args = ARGS
    nvox = args.nx * args.nx
    t0 = time.perf_counter()
    q, op = build(args.nq, args.nr)
    t_build = time.perf_counter() - t0
    flops = 2.0 * nvox * op.matrix.shape[0] * op.matrix.shape[1]
    print(f"slice {args.nx} x {args.nx} = {nvox} voxels, {op.q_A.size} Q -> {op.nr} r "
          f"(GEMM ({nvox}, {op.matrix.shape[0]}) @ ({op.matrix.shape[0]}, {op.matrix.shape[1]}) = "
          f"{flops / 1e12:.2f} TFLOP); operator built in {t_build:.2f} s (once per run)")
    result = {"nx": args.nx, "nq": op.q_A.size, "nr": op.nr, "matrix_columns": op.matrix.shape[1],
              "gemm_tflop_per_slice": flops / 1e12, "operator_build_s": t_build, "host": platform.node(),
              "cpu_model": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    cpu = None
    if not args.skip_cpu:
        cpu = bench_cpu(op, q, nvox, args)
        result["cpu"] = cpu
        ext = f" (extrapolated from {cpu['voxels_timed']} voxels)" if cpu["extrapolated"] else ""
        print(f"CPU numpy {cpu['dtype']}, {cpu['threads']} BLAS thread(s){ext}:")
        print(f"  bare GEMM (anchor)   {cpu['gemm_s_per_slice']:9.2f} s/slice  {cpu['gemm_gflops']:8.1f} GFLOP/s")
        print(f"  full transform       {cpu['full_s_per_slice']:9.2f} s/slice  "
              f"ratio to GEMM {cpu['full_over_gemm']:.2f}  ({cpu['voxels_per_s']:.0f} voxels/s)")
    if not args.skip_gpu:
        gpu = bench_gpu(op, q, nvox, args)
        if gpu is not None:
            result["gpu"] = gpu
            pk = gpu["peak_tflops"]
            print(f"GPU {gpu['device']}: assumed peaks ({gpu['peak_basis']}) FP32 {pk['fp32']:.1f}, FP64 "
                  f"{pk['fp64']:.1f}, FP64 tensor {pk['fp64_tensor']:.1f} TFLOP/s")
            for dt, r in gpu["results"].items():
                kind = "FP32" if dt == "float32" else "FP64"
                line = (f"  {dt}: bare GEMM (anchor) {r['gemm_s'] * 1e3:8.1f} ms  {r['gemm_tflops']:6.1f} TFLOP/s = "
                        f"{100 * r['gemm_fraction_of_peak']:.0f} % of {kind} peak")
                if "gemm_fraction_of_fp64_tensor_peak" in r:
                    line += f" ({100 * r['gemm_fraction_of_fp64_tensor_peak']:.0f} % of FP64 tensor peak)"
                print(line)
                print(f"  {dt}: full transform   {r['full_s'] * 1e3:8.1f} ms  ratio to GEMM {r['full_over_gemm']:.2f}; "
                      f"with host<->device copies {r['full_with_transfers_s'] * 1e3:.1f} ms "
                      f"(pinned buffers {r['full_with_pinned_transfers_s'] * 1e3:.1f} ms)")
                if cpu is not None:
                    print(f"  {dt}: speed-up of the full transform over the CPU run above: "
                          f"{cpu['full_s_per_slice'] / r['full_s']:.0f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
