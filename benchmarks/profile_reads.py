"""Development profile: how many CBF files per second can P processes x T reader threads read
into memory from the page cache, with the payloads located (``read_into_pinned``) and bare
(``open`` + ``readv`` + ``close`` only)?  Each process reads its own share of the files in
batches of 128 into a reused arena.

    python benchmarks/profile_reads.py FRAME_DIR [--files 4096] [--procs 1 2 4] [--threads 4 8]
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
    ap.add_argument("frames", type=Path)
    ap.add_argument("--files", type=int, default=4096)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--memory", nargs="+", default=["pageable"], choices=["pageable", "pinned"],
                    help="arena: numpy memory, or page-locked memory from cudaHostAlloc")
    ap.add_argument("--methods", nargs="+", default=["located", "bare"])
    args = ap.parse_args()
    files = [str(p) for p in sorted(args.frames.glob("*.cbf"))[:args.files]]
    ctx = mp.get_context("spawn")  # CUDA (pinned arenas) does not survive fork
    for method, memory in ((m, k) for m in args.methods for k in args.memory):
        for procs in args.procs:
            for threads in args.threads:
                barrier, out = ctx.Barrier(procs), ctx.Queue()
                share = [files[i::procs] for i in range(procs)]
                ps = [ctx.Process(target=_worker, args=(share[i], threads, method, barrier, out, memory)) for i in range(procs)]
                for p in ps:
                    p.start()
                dt = max(out.get() for _ in ps)
                for p in ps:
                    p.join()
                print(f"{method:8s} {memory:8s} {procs} procs x {threads} threads: {len(files) / dt:8,.0f} files/s "
                      f"({len(files) / dt / procs:,.0f} per process)", flush=True)


if __name__ == "__main__":
    main()
