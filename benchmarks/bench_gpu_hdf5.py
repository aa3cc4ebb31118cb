"""GPU end to end from HDF5 files (issue 16): Eiger-like bitshuffle-LZ4 chunks read raw
(``read_direct_chunk``) into pinned arenas, one upload per batch, decoded on the GPU
(io/kernels/h5_decode.cu) and integrated there, against the path it replaces -- chunks decoded on
the host (bitshuffle's codec, threads) and the counts integrated on the GPU -- in the same run.

Data: ``--distinct`` full-size frames simulated by the project (Pilatus 2M, 1679 x 1475, rings of
the phantom's phases, Poisson counts, gaps) stored as uint32 (gaps 2^32 - 1, as an Eiger writes)
in bitshuffle-LZ4 chunks of one frame (8 KB blocks), cycled into ``--frames`` frames in
``--files`` data files behind an Eiger master (external links).  The chunks are made without
hdf5plugin (:mod:`xrdct_dask.testing.h5chunks`: numpy bit-shuffle + LZ4 blocks from ``lz4``, or
``pyarrow`` where lz4 is absent); every decoded frame is checked bit-exact against the simulated one.  The files
are written once to ``--workdir`` (default /tmp/xrdct_bench_gpu_h5) and reused.

Figures (medians over ``--repeats``): pinned H2D GB/s; raw chunk reading alone (the host's
ceiling); GPU decode alone (batch already on the device): frames/s and GB/s of decoded pixels;
GPU end to end from pinned RAM (compressed chunks already in page-locked host memory -> patterns
+ sigma in host memory, ``--e2e-frames``: what bench_gpu.py's "end to end" measures for CBF);
GPU end to end from files (``Integrator.integrate_source``: files in page cache -> patterns in
host memory, one process); the anchor: the host-decode path (needs the ``bitshuffle`` package;
skipped, and said so, without it); and the dask graph into zarr on the default local GPU
cluster (``--graph-frames`` > 0: a virtual dataset cycling over the data files, as a BLISS scan
file maps its detector's files, so the page cache holds only ``--frames`` frames; the first
scan and the same scan again on the warm cluster, as bench_gpu.py's graph figure for CBF).

    python benchmarks/bench_gpu_hdf5.py [--frames 384] [--files 3] [--distinct 8] [--repeats 5]
                                        [--read-threads 8] [--e2e-frames 4096] [--graph-frames 0]
                                        [--omega-chunk 16] [--json out.json]
    python benchmarks/bench_gpu_hdf5.py --cpu-only --detector small   # no GPU: data, kernels' C++ build, host path
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def med(xs):
    return float(statistics.median(xs))


def write_eiger_scan(folder: Path, chunks: list[bytes], shape, dtype, nframes: int, files: int) -> Path:
    """``files`` data files (chunks cycled, filter 32008 declared) behind an Eiger master."""
    import h5py

    from xrdct_dask.testing.h5chunks import FILTER_BSLZ4, create_chunked

    per = -(-nframes // files)
    master = folder / "bench_master.h5"
    with h5py.File(master, "w") as m:
        g = m.create_group("entry/data")
        for k, first in enumerate(range(0, nframes, per)):
            n = min(per, nframes - first)
            name = f"bench_data_{k + 1:06d}.h5"
            with h5py.File(folder / name, "w") as f:
                d = create_chunked(f, "entry/data/data", (n, *shape), dtype, FILTER_BSLZ4)
                for j in range(n):
                    d.id.write_direct_chunk((j, 0, 0), chunks[(first + j) % len(chunks)])
            g[f"data_{k + 1:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    return master


def write_cycling_vds(path: Path, master: Path, nframes: int) -> Path:
    """``path``: /entry/data/data, a virtual dataset of ``nframes`` frames cycling over the data
    files behind Eiger master ``master`` (each file mapped again and again, in order)."""
    import h5py

    with h5py.File(master, "r") as m:
        links = [(link.filename, link.path, m[f"entry/data/{k}"].shape)
                 for k in sorted(m["entry/data"]) for link in [m["entry/data"].get(k, getlink=True)]]
    dtype = np.uint32
    layout = h5py.VirtualLayout(shape=(nframes, *links[0][2][1:]), dtype=dtype)
    at = 0
    while at < nframes:
        for file, name, shape in links:
            n = min(shape[0], nframes - at)
            if n <= 0:
                break
            layout[at:at + n] = h5py.VirtualSource(file, name, shape=shape)[:n]
            at += n
    with h5py.File(path, "w") as f:
        f.create_group("entry/data").create_virtual_dataset("data", layout, fillvalue=0)
    return path


def make_data(args, work: Path):
    """Simulated frames (uint32) and the Eiger-like scan of their chunks, made once per parameters."""
    from xrdct_dask.io.source import open_source
    from xrdct_dask.simulate import simulate_scan

    params = {"detector": args.detector, "distinct": args.distinct, "frames": args.frames, "files": args.files,
              "npt": args.npt, "version": 3}
    marker = work / "bench.json"
    scan_dir = work / "scan"
    if not (marker.exists() and json.loads(marker.read_text()) == params):
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        simulate_scan(scan_dir, nz=1, nomega=1, nx=args.distinct, detector=args.detector, npt_rad=args.npt,
                      threads=os.cpu_count() or 4)
        frames = open_source(str(scan_dir / "frames" / "frame_{index:06d}.cbf")).read_frames(
            np.arange(args.distinct)).view(np.uint32)  # -1 gaps -> 2^32 - 1, as an Eiger stores them
        from xrdct_dask.testing import h5chunks
        from xrdct_dask.testing.h5chunks import bslz4_chunk

        try:
            import lz4.block  # noqa: F401
        except ImportError:  # a GPU node without lz4: pyarrow's raw LZ4 codec
            import pyarrow as pa

            h5chunks.lz4_block_compressor = lambda: (lambda b: pa.compress(b, codec="lz4_raw", asbytes=True))

        t1 = time.perf_counter()
        chunks = [bslz4_chunk(f) for f in frames]
        t2 = time.perf_counter()
        for old in work.glob("bench_*.h5"):
            old.unlink()
        write_eiger_scan(work, chunks, frames.shape[1:], np.uint32, args.frames, args.files)
        np.save(work / "frames.npy", frames)
        marker.write_text(json.dumps(params))
        print(f"data: {args.distinct} frames simulated in {t1 - t0:.1f} s, compressed in {t2 - t1:.1f} s, "
              f"{args.frames} frames in {args.files} files in {time.perf_counter() - t2:.1f} s")
    frames = np.load(work / "frames.npy")
    return frames, work / "bench_master.h5", scan_dir


def check_exact(chunks, frames, device: str) -> None:
    from xrdct_dask.io.gpu_hdf5 import decode_chunks_gpu

    got, status = decode_chunks_gpu(chunks, device=device)
    assert not status.any(), status
    for k in range(len(chunks)):
        np.testing.assert_array_equal(got[k], frames[k % len(frames)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=384)
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--distinct", type=int, default=8)
    ap.add_argument("--detector", default="pilatus2m", choices=("pilatus2m", "small"))
    ap.add_argument("--npt", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=128, help="frames per decode-only launch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--read-threads", type=int, default=8)
    ap.add_argument("--e2e-frames", type=int, default=4096, help="frames of the end-to-end run from pinned RAM")
    ap.add_argument("--graph-frames", type=int, default=0, help="frames of the dask graph run (0: none)")
    ap.add_argument("--omega-chunk", type=int, default=16, help="graph: omega rows (of 100 frames) per task")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/xrdct_bench_gpu_h5"))
    ap.add_argument("--cpu-only", action="store_true", help="no GPU: data, the kernels' C++ build, the host path")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import fabio

    from xrdct_dask.io import hdf5
    from xrdct_dask.io.source import open_source

    t_start = time.perf_counter()
    frames, master, scan_dir = make_data(args, args.workdir)
    src = open_source(f"{master}::/entry/data")
    n = src.nframes
    shape = src.frame_shape
    idx = np.arange(n)
    mean_mb = np.mean([src.read_raw_chunks([k]).offsets[-1] for k in range(len(frames))]) / 1e6
    out = {"frames": n, "shape": list(shape), "dtype": "uint32", "compressed_MB_per_frame": float(mean_mb),
           "decoded_MB_per_frame": frames[0].nbytes / 1e6, "npt_rad": args.npt, "date": time.strftime("%Y-%m-%d")}
    print(f"# {n} frames {shape[0]}x{shape[1]} uint32, {mean_mb:.2f} MB compressed each "
          f"(ratio {frames[0].nbytes / 1e6 / mean_mb:.1f}), {args.files} files, npt {args.npt}")

    def rate(fn, frames_per_call, repeats=args.repeats, sync=None):
        fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            ts.append(time.perf_counter() - t)
        return frames_per_call / med(ts)

    # raw reading alone: the host's ceiling for any decoder
    arena = np.empty(int(mean_mb * 1e6 * 1.3 * 64) + (1 << 20), np.uint8)
    batches = [idx[a:a + 64] for a in range(0, n, 64)]

    def read_only():
        for b in batches:
            src.read_raw_chunks(b, out=arena)

    out["read_raw_fps"] = rate(read_only, n)
    print(f"read_raw_chunks only (1 thread)           {out['read_raw_fps']:9.0f} frames/s")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.read_threads) as pool:  # the engine's reader threads (pread, no HDF5 lock)
        def read_threaded():
            for b in batches:
                src.read_raw_chunks(b, out=arena, pool=pool)

        out["read_raw_threads_fps"] = rate(read_threaded, n)
    print(f"read_raw_chunks ({args.read_threads} threads)             {out['read_raw_threads_fps']:9.0f} frames/s")
    try:
        import bitshuffle  # noqa: F401

        have_bshuf = True
    except ImportError:
        have_bshuf = False
        print("host decode anchor: skipped (the bitshuffle package is not installed here)")
    threads = min(16, os.cpu_count() or 1)
    if have_bshuf:
        raw = [src.read_raw_chunks(b) for b in batches]
        buf = np.empty((64, *shape), np.uint32)

        def host_decode():
            for c in raw:
                hdf5.decode_chunks(c, buf[:len(c)], threads=threads)

        out["host_decode_fps"] = rate(host_decode, n)
        print(f"host decode only ({threads} threads)            {out['host_decode_fps']:9.0f} frames/s")

    if args.cpu_only:
        check_exact(src.read_raw_chunks(np.arange(min(n, 2 * len(frames)))), frames, "host")
        print("kernels' C++ build: bit-exact on the simulated frames")
        print(f"total {time.perf_counter() - t_start:.0f} s")
        return 0

    import cupy as cp

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.integrate.files import host_hdf5_batches
    from xrdct_dask.io.gpu_decode import pinned_empty
    from xrdct_dask.io.gpu_hdf5 import ChunkDecoder, plan_chunks

    out["device"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"device: {out['device']}")
    check_exact(src.read_raw_chunks(np.arange(min(n, 2 * len(frames)))), frames, "cuda")
    print("GPU decode: bit-exact on the simulated frames")

    # pinned H2D
    host = pinned_empty(256 << 20)
    dev = cp.empty(256 << 20, cp.uint8)
    out["h2d_GBps"] = rate(lambda: dev.set(host), 256 << 20, sync=cp.cuda.Device().synchronize) / 1e9
    print(f"pinned H2D                                {out['h2d_GBps']:9.1f} GB/s "
          f"= {out['h2d_GBps'] * 1e3 / mean_mb:.0f} compressed frames/s")

    # GPU decode alone: a batch of chunks already on the device
    nb = min(args.batch, n)
    chunks = src.read_raw_chunks(idx[:nb])
    beg, end = chunks.offsets[:-1], chunks.offsets[1:]
    fb = shape[0] * shape[1] * 4
    plan = plan_chunks(chunks.buffer, beg, end, chunks.filter_id, fb, 4)
    assert plan.gpu.all()
    dec = ChunkDecoder("cuda")
    d_buf = cp.asarray(chunks.buffer)
    d_out = cp.empty(nb * fb, cp.uint8)
    sync = cp.cuda.get_current_stream().synchronize
    fps = rate(lambda: dec.decode(d_buf, beg, end, chunks.filter_id, plan, fb, 4, d_out), nb, sync=sync)
    out["gpu_decode_fps"] = fps
    out["gpu_decode_GBps"] = fps * fb / 1e9
    print(f"GPU decode only (batch {nb} on the device)   {fps:9.0f} frames/s = {fps * fb / 1e9:.0f} GB/s decoded, "
          f"{fps * mean_mb / 1e3:.1f} GB/s compressed")

    # end to end, GPU decode vs host decode, same integrator
    mask = fabio.open(str(scan_dir / "mask.edf")).data != 0
    t0 = time.perf_counter()
    integ = Integrator(scan_dir / "geometry.poni", shape, args.npt, mask=mask, polarization_factor=0.99,
                       engine="cupy")
    integ.warm(src, 1, n)
    print(f"integrator ready in {time.perf_counter() - t0:.1f} s")
    monitor = np.ones(n)

    def gpu_e2e():
        res = integ.integrate_source(src, idx, monitor, read_threads=args.read_threads)
        assert (res[2] == 0).all()

    def host_e2e():  # the path before: chunks decoded on the host, counts integrated on the GPU
        for b in host_hdf5_batches(integ.impl, src, idx, monitor, read_threads=args.read_threads):
            assert not b.status.any()

    # from pinned RAM: the chunks of 3 batches read once into page-locked arenas, cycled (as
    # bench_gpu.py's CBF "end to end": upload, decode and integration pipelined, no file reads)
    from xrdct_dask.integrate._cupy_sources import H5Batch

    B = integ.batch_frames
    arenas = []
    for a in range(3):
        c = src.read_raw_chunks(idx[(a * B + np.arange(B)) % n],
                                out=pinned_empty(int(mean_mb * 1e6 * 1.3 * B) + (1 << 20)))
        beg, end, filt = c.offsets[:-1], c.offsets[1:], c.filter_id.astype(np.int64)
        arenas.append((c.buffer, beg, end, filt, plan_chunks(c.buffer, beg, end, filt, fb, 4)))
    nbatch = max(args.e2e_frames // B, 2)

    def pinned_e2e():
        batches = ((H5Batch(*arenas[k % 3], np.dtype(np.uint32)), np.ones(B)) for k in range(nbatch))
        for _res in integ.impl.integrate_batches(batches):
            pass

    out["gpu_e2e_pinned_fps"] = rate(pinned_e2e, nbatch * B)
    out["gpu_e2e_pinned_fraction_of_h2d"] = out["gpu_e2e_pinned_fps"] * mean_mb / 1e3 / out["h2d_GBps"]
    print(f"GPU end to end from pinned RAM ({nbatch * B} frames)   {out['gpu_e2e_pinned_fps']:9.0f} frames/s "
          f"= {out['gpu_e2e_pinned_fraction_of_h2d']:.0%} of pinned H2D")
    out["gpu_e2e_fps"] = rate(gpu_e2e, n)
    print(f"GPU end to end from files ({args.read_threads} read threads)   {out['gpu_e2e_fps']:9.0f} frames/s")
    if have_bshuf:
        out["anchor_host_decode_e2e_fps"] = rate(host_e2e, n)
        print(f"anchor: host decode + GPU integrate            {out['anchor_host_decode_e2e_fps']:9.0f} frames/s "
              f"-> {out['gpu_e2e_fps'] / out['anchor_host_decode_e2e_fps']:.2f}x")
    if args.graph_frames > 0:  # the dask graph into zarr, on the default local GPU cluster
        from types import SimpleNamespace

        from _graph import graph_rate

        vds = write_cycling_vds(args.workdir / "bench_vds.h5", master, args.graph_frames)
        g = graph_rate(SimpleNamespace(workflow=scan_dir / "workflow.yaml"), f"{vds}::/entry/data/data",
                       args.graph_frames, args.npt, args.workdir / "run.zarr", read_threads=args.read_threads,
                       omega_chunk=args.omega_chunk, repeats=2)
        out["graph"] = {k: g[k] for k in ("frames", "seconds", "frames_per_s", "warm_frames_per_s", "tasks",
                                          "workers_used", "engines", "task_seconds") if k in g}
        print(f"dask graph into zarr ({g['frames']} frames, {g['tasks']} tasks, {g['workers_used']} workers): "
              f"{g['frames_per_s']:.0f} frames/s, the same scan again {g.get('warm_frames_per_s', float('nan')):.0f}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
