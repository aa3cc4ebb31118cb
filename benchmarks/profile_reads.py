"""Development profile: how fast can one process read CBF files into a pinned arena (threads),
with and without locating the payloads?  Usage: python benchmarks/profile_reads.py FRAME_DIR"""

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def main():
    from xrdct_dask.io.gpu_decode import read_into_pinned

    files = sorted(Path(sys.argv[1]).glob("*.cbf"))[:2048]
    arena = np.empty(len(files[:128]) * 2_800_000, np.uint8)
    for nt in (8, 16, 32):
        pool = ThreadPoolExecutor(nt)
        t = time.perf_counter()
        for a in range(0, len(files), 128):
            read_into_pinned(files[a:a + 128], lambda n: arena, pool)
        dt = time.perf_counter() - t
        mv = memoryview(arena)

        def rd(k):
            with open(files[k], "rb", buffering=0) as fh:
                fh.readinto(mv[(k % 128) * 2_800_000:(k % 128 + 1) * 2_800_000])

        t = time.perf_counter()
        list(pool.map(rd, range(len(files))))
        dt2 = time.perf_counter() - t
        print(f"{nt} threads: read_into_pinned {len(files) / dt:,.0f} files/s; bare readinto {len(files) / dt2:,.0f} files/s")


if __name__ == "__main__":
    main()
