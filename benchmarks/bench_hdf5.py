"""CPU benchmark of the HDF5 frame source: read + decode bitshuffle-LZ4 frames per core, against
h5py + hdf5plugin (``dataset[i]``, HDF5's filter pipeline) in the same run.

Frames: the real Eiger frames of ../shared/data (1065 x 1030 uint32, bitshuffle-LZ4, chunk = one
frame), their stored chunks copied ``--frames`` times into data files of ``--per-file`` frames
(``write_direct_chunk``: the bytes the detector wrote), behind an Eiger master with external
links.  Without the real files, simulated Pilatus 2M frames (1679 x 1475 int32) are compressed
by hdf5plugin instead.  One thread (``--threads`` for decode_chunks' pool); the files sit in
the page cache for both readers, and both write into one reused frame buffer.

    python benchmarks/bench_hdf5.py [--frames 256] [--batch 64] [--repeats 5] [--threads 1] [--json out.json]
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

os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py  # noqa: E402
import hdf5plugin  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("XRDCT_SHARED_DATA", REPO.parent / "shared" / "data"))


def real_chunks() -> tuple[list[bytes], tuple[int, int], np.dtype] | None:
    paths = [SHARED / n for n in ("eiger-6472_data_000001.h5", "eiger-6587_data_000001.h5")]
    if not all(p.is_file() for p in paths):
        return None
    chunks = []
    for p in paths:
        with h5py.File(p) as f:
            d = f["entry/data/data"]
            chunks += [d.id.read_direct_chunk((i, 0, 0))[1] for i in range(d.shape[0])]
            shape, dtype = d.shape[1:], d.dtype
    return chunks, shape, dtype


def simulated_chunks(n: int = 4):
    rng = np.random.default_rng(0)
    shape = (1679, 1475)
    frames = rng.poisson(2.0, (n, *shape)).astype(np.int32)
    with h5py.File("tmp.h5", "w", driver="core", backing_store=False) as f:
        d = f.create_dataset("d", data=frames, chunks=(1, *shape), **hdf5plugin.Bitshuffle(cname="lz4"))
        return [d.id.read_direct_chunk((i, 0, 0))[1] for i in range(n)], shape, np.dtype(np.int32)


def write_scan(folder: Path, chunks, shape, dtype, nframes: int, per_file: int) -> Path:
    master = folder / "bench_master.h5"
    with h5py.File(master, "w") as m:
        g = m.create_group("entry/data")
        for k, first in enumerate(range(0, nframes, per_file)):
            n = min(per_file, nframes - first)
            name = f"bench_data_{k + 1:06d}.h5"
            with h5py.File(folder / name, "w") as f:
                d = f.create_dataset("entry/data/data", shape=(n, *shape), dtype=dtype, chunks=(1, *shape),
                                     **hdf5plugin.Bitshuffle(cname="lz4"))
                for j in range(n):
                    d.id.write_direct_chunk((j, 0, 0), chunks[(first + j) % len(chunks)])
            g[f"data_{k + 1:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    return master


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--per-file", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64, help="frames per read_raw_chunks + decode_chunks call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="decode_chunks threads (1: the per-core figure)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from xrdct_dask.io import hdf5
    from xrdct_dask.io.source import open_source

    got = real_chunks()
    kind = "real Eiger 1065x1030 uint32" if got else "simulated Pilatus 2M 1679x1475 int32"
    chunks, shape, dtype = got or simulated_chunks()
    with tempfile.TemporaryDirectory() as tmp:
        master = write_scan(Path(tmp), chunks, shape, dtype, args.frames, args.per_file)
        n = args.frames
        src = open_source(f"{master}::/entry/data")
        batches = [np.arange(a, min(a + args.batch, n)) for a in range(0, n, args.batch)]

        frames = np.empty((args.batch, *shape), dtype)  # an engine's reused frame buffer

        def ours():
            for b in batches:
                c = src.read_raw_chunks(b)
                _, status = hdf5.decode_chunks(c, frames[:b.size], threads=args.threads)
                assert not status.any()

        def read_only():
            for b in batches:
                src.read_raw_chunks(b)

        raw = [src.read_raw_chunks(b) for b in batches]

        def decode_only():
            for c in raw:
                hdf5.decode_chunks(c, frames[:len(c)], threads=args.threads)

        def h5py_hdf5plugin():  # HDF5's filter pipeline into the same reused buffer
            with h5py.File(master) as f:
                for k in range(len(range(0, n, args.per_file))):
                    d = f[f"entry/data/data_{k + 1:06d}"]
                    for j in range(d.shape[0]):
                        d.read_direct(frames, np.s_[j], np.s_[0])

        # the same frames from both readers
        with h5py.File(master) as f:
            ref = f["entry/data/data_000001"][: min(n, args.per_file)]
        np.testing.assert_array_equal(src.read_frames(np.arange(ref.shape[0])), ref)

        res = {}
        for name, fn in (("h5py + hdf5plugin", h5py_hdf5plugin), ("read_raw_chunks + decode_chunks", ours),
                         ("read_raw_chunks only", read_only), ("decode_chunks only (bytes in RAM)", decode_only)):
            fn()  # warm: page cache, numba compile
            rates = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn()
                rates.append(n / (time.perf_counter() - t))
            res[name] = statistics.median(rates)
        mb = sum(int(c.offsets[-1]) for c in raw) / n / 1e6
    print(f"# {kind}, {n} frames ({mb:.2f} MB compressed each), batch {args.batch}, {args.threads} decode thread(s), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    anchor = res["h5py + hdf5plugin"]
    for name, r in res.items():
        print(f"{name:36s} {r:8.0f} frames/s  {r / anchor:5.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"kind": kind, "frames": n, "mb_per_frame": mb, "frames_per_s": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
