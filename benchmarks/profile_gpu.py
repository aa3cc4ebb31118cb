"""Development profile of the GPU kernels (not a benchmark of record): decode time per chunk size,
transpose and integration kernel times, on full-size simulated Pilatus 2M frames.  Run under
``ncu -k regex:"bo_|csr_|transpose"`` for hardware counters.

    python benchmarks/profile_gpu.py [--frames 128] [--once]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--once", action="store_true", help="one call of each kernel (for ncu)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "profile_gpu")
    args = ap.parse_args()
    import cupy as cp
    import fabio

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.io import read_cbf_payload
    from xrdct_dask.io.gpu_decode import GpuDecoder, aligned_layout, chunk_layout, pack_aligned, pinned_empty
    from xrdct_dask.simulate import simulate_scan

    scan_dir = args.workdir / "scan"
    if not (scan_dir / "workflow.yaml").exists():
        simulate_scan(scan_dir, nz=1, nomega=4, nx=16, detector="pilatus2m", npt_rad=2000, threads=os.cpu_count())
    paths = sorted((scan_dir / "frames").iterdir())
    datas = [bytes(read_cbf_payload(p).data) for p in paths]
    n = args.frames
    batch = [datas[k % len(datas)] for k in range(n)]
    npix = 1679 * 1475
    esc = np.mean([np.count_nonzero(np.frombuffer(d, np.uint8) == 0x80) / len(d) for d in datas])
    print(f"{len(datas)} distinct frames, mean {np.mean([len(d) for d in datas]) / 1e6:.2f} MB, 0x80 density {esc:.3%}")

    def timed(fn, reps):
        fn()
        cp.cuda.Device().synchronize()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            cp.cuda.Device().synchronize()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    reps = 1 if args.once else 7
    d_out = cp.empty(n * npix, dtype=cp.int32)
    d_off = cp.asarray(np.arange(n + 1, dtype=np.int64) * npix)
    for chunk in ((256,) if args.once else (64, 128, 256, 512, 1024)):
        begin, end, total = aligned_layout([len(d) for d in batch])
        host = pinned_empty(total)
        pack_aligned(batch, host, begin)
        first = chunk_layout(begin, end, chunk)
        d_in, d_b, d_e, d_f = cp.asarray(host), cp.asarray(begin), cp.asarray(end), cp.asarray(first)
        dec = GpuDecoder(chunk)
        t = timed(partial(dec.decode, d_in, d_b, d_e, d_f, int(first[-1]), d_off, d_out, n), reps)
        print(f"decode chunk {chunk:5d}: {t * 1e3:7.2f} ms per {n} frames = {n / t:9,.0f} frames/s")
    mask = fabio.open(str(scan_dir / "mask.edf")).data != 0
    integ = Integrator(scan_dir / "geometry.poni", (1679, 1475), 2000, mask=mask, polarization_factor=0.99,
                       engine="cupy")
    eng = integ.impl
    frames = d_out.reshape(n, npix)
    stream = cp.cuda.get_current_stream()
    from xrdct_dask.integrate import _cupy

    t_tr = timed(lambda: eng._pixel_major(frames, stream), reps)
    t_copy = timed(lambda: frames.copy(), reps)
    gb = 2 * frames.nbytes / 1e9
    print(f"cupy copy of the batch (for scale): {t_copy * 1e3:.2f} ms = {gb / t_copy / 1e3:.2f} TB/s")
    if not args.once:
        _c = _cupy
        stride = (npix + 31) // 32 * 32
        padded = cp.zeros((n, stride), dtype=cp.int32)
        padded[:, :npix] = frames
        ref_t = eng._pixel_major(frames, stream).copy()
        tw0 = _c.TILE_WIDTH
        for tw in (1, 2, 4):
            _c.TILE_WIDTH = tw
            eng._k[f"transpose32x{tw}"] = _c._module().get_function(f"transpose32x{tw}")
            for name, src, kw in (("rows of npix", frames, {}), ("rows padded to 32", padded, {"npix": npix})):
                t = timed(partial(eng._pixel_major, src, stream, **kw), reps)
                ok = bool(cp.array_equal(eng._pixel_major(src, stream, **kw), ref_t))
                print(f"transpose tile 32x{32 * tw:3d}, {name:17s}: {t * 1e3:.2f} ms = {gb / t / 1e3:.2f} TB/s, "
                      f"{'equal' if ok else 'DIFFERENT'}")
        _c.TILE_WIDTH = tw0
        del padded, ref_t
    ref = [x.get() for x in eng._sums_device(frames, np.ones(n))[:2]]

    length = np.diff(eng.plan.csr_indptr)
    print(f"{eng.plan.nnz / 1e6:.2f} M nnz in {length.size} rows: mean {length.mean():.0f}, "
          f"max {length.max()} entries; transpose {t_tr * 1e3:.2f} ms per {n} frames")
    variants = [(_cupy.FPT, _cupy.CHUNK_ENTRIES, ())] if args.once else [
        (fpt, ch, d) for fpt in (2, 4) for ch in (256, 512, 1024) for d in ((), ("F64SUMS",))]
    fpt0, ch0 = _cupy.FPT, _cupy.CHUNK_ENTRIES
    for fpt, ch, defines in variants:
        _cupy.FPT, _cupy.CHUNK_ENTRIES = fpt, ch
        e2 = _cupy.CupyEngine(eng.plan, integ)
        if defines:
            m = _cupy._compiled(fpt, *defines)
            e2._k = {k: m.get_function(k) for k in e2._k}
        got = e2._sums_device(frames, np.ones(n))
        err = max(float(np.max(np.abs(g.get() - r) / np.maximum(np.abs(r), 1e-30))) for g, r in zip(got[:2], ref))
        t_all = timed(lambda e2=e2: e2._sums_device(frames, np.ones(n)), reps)
        print(f"FPT {fpt} chunk {min(ch, 99999):5d} {'+'.join(defines) or 'f32+f64':8s}: {e2.nchunks:6d} chunks; "
              f"transpose+integrate {t_all * 1e3:.2f} ms per {n} frames = {n / t_all:,.0f} frames/s "
              f"(kernels {(t_all - t_tr) * 1e3:.2f} ms); max rel diff vs default {err:.1e}")
    _cupy.FPT, _cupy.CHUNK_ENTRIES = fpt0, ch0


if __name__ == "__main__":
    main()
