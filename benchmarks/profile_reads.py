"""Development profile: how many CBF files per second can P processes x T reader threads read
into memory from the page cache, with the payloads located (``read_into_pinned``) and bare
(``open`` + ``readv`` + ``close`` only)?  Each process reads its own share of the files in
batches of 128 into a reused arena.  Given an HDF5 source instead of a folder, the same for its
frames' raw chunks (``read_raw_chunks``: located by h5py, ``pread`` on the threads).

    python benchmarks/profile_reads.py FRAME_DIR [--files 4096] [--procs 1 2 4] [--threads 4 8]
    python benchmarks/profile_reads.py 'scan_master.h5::/entry/data' [--files 4096] ...
"""

import argparse
import multiprocessing as mp
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _worker(files, threads, method, barrier, out, memory):
    from xrdct_dask.io.gpu_decode import pinned_empty, read_into_pinned

    arena = np.zeros(128 * 4 * 2**20, np.uint8) if memory == "pageable" else pinned_empty(128 * 4 * 2**20)
    mv = memoryview(arena)
    pool = ThreadPoolExecutor(threads)
    slot = 4 * 2**20

    def bare(k):
        fd = os.open(files[k], os.O_RDONLY)
        try:
            os.readv(fd, [mv[(k % 128) * slot:(k % 128 + 1) * slot]])
        finally:
            os.close(fd)

    if method == "h5":  # files: (HDF5 source, its frame indices)
        from xrdct_dask.io.source import open_source

        src, idx = open_source(files[0]), files[1]
        src.read_raw_chunks(idx[:128], out=arena, pool=pool)  # warm: files opened, page cache
        barrier.wait()
        t = time.perf_counter()
        for a in range(0, len(idx), 128):
            src.read_raw_chunks(idx[a:a + 128], out=arena, pool=pool)
        out.put(time.perf_counter() - t)
        return
    read_into_pinned(files[:128], lambda n: arena, pool)  # warm: numba, page cache
    barrier.wait()
    t = time.perf_counter()
    for a in range(0, len(files), 128):
        if method == "located":
            read_into_pinned(files[a:a + 128], lambda n: arena, pool)
        else:
            list(pool.map(bare, range(a, min(a + 128, len(files)))))
    out.put(time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("frames", help="a folder of CBF files, or an HDF5 source (FILE.h5[::/dataset])")
    ap.add_argument("--files", type=int, default=4096)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--memory", nargs="+", default=["pageable"], choices=["pageable", "pinned"],
                    help="arena: numpy memory, or page-locked memory from cudaHostAlloc")
    ap.add_argument("--methods", nargs="+", default=["located", "bare"])
    args = ap.parse_args()
    h5 = ".h5" in args.frames or ".nxs" in args.frames
    if h5:
        from xrdct_dask.io.source import open_source

        files = np.arange(min(open_source(args.frames).nframes, args.files))
        args.methods = ["h5"]
    else:
        files = [str(p) for p in sorted(Path(args.frames).glob("*.cbf"))[:args.files]]
    ctx = mp.get_context("spawn")  # CUDA (pinned arenas) does not survive fork
    for method, memory in ((m, k) for m in args.methods for k in args.memory):
        for procs in args.procs:
            for threads in args.threads:
                barrier, out = ctx.Barrier(procs), ctx.Queue()
                share = [(args.frames, files[i::procs]) if h5 else files[i::procs] for i in range(procs)]
                ps = [ctx.Process(target=_worker, args=(share[i], threads, method, barrier, out, memory))
                      for i in range(procs)]
                for p in ps:
                    p.start()
                dt = max(out.get() for _ in ps)
                for p in ps:
                    p.join()
                unit = "frames" if h5 else "files"
                print(f"{method:8s} {memory:8s} {procs} procs x {threads} threads: {len(files) / dt:8,.0f} {unit}/s "
                      f"({len(files) / dt / procs:,.0f} per process)", flush=True)


if __name__ == "__main__":
    main()
