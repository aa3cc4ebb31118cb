"""Frames a writer appends to an HDF5 file in SWMR mode: a frame inside the length a reader sees
is readable (issue 29, item 5: `test_live.py::test_watch_follows_a_file_an_swmr_writer_grows`
failed under load, "15 frames seen whole could not be read").

The cause, found with HDF5 itself: a dataset's cached handle refreshed (H5Drefresh) while a
second handle of the same dataset is open in the process keeps its old chunk index with the new
length, so frames inside that length read as "chunk not written".  Opening a frame source made
such a handle (the resolution of its path), and a source is opened again whenever a task's
frames lie past the length it saw: in a growing file, all the time, beside the threads reading.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import numpy as np


def _writer(path: str, rate_hz: float, started, stop) -> None:
    """An SWMR writer (its own process, as HDF5 wants): 64 x 64 frames, one per chunk, appended at
    ``rate_hz`` and flushed each, until ``stop`` or 4000 frames."""
    import h5py

    with h5py.File(path + ".part", "w", libver="latest") as f:
        d = f.create_dataset("entry/data/data", shape=(0, 64, 64), maxshape=(None, 64, 64), chunks=(1, 64, 64),
                             dtype=np.int32)
        os.rename(path + ".part", path)
        f.swmr_mode = True
        frame = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
        t0 = time.perf_counter()
        for k in range(4000):
            if stop.is_set():
                break
            time.sleep(max(0.0, t0 + k / rate_hz - time.perf_counter()))
            d.resize(k + 1, axis=0)
            d[k] = frame + k
            d.flush()
            if k == 4:
                started.set()


def test_frames_inside_the_seen_length_are_readable_while_sources_are_opened_beside(tmp_path):
    """One thread reads the newest frames the (refreshed) dataset holds, raw, as a task does (its
    source opened again where they lie past the length it saw), while another opens the source
    again and again, as each task does in a growing file: every frame inside the length seen has
    its chunk and its values (frame k = base + k), over at least 300 reads and 50 opens (a 30 s
    deadline)."""
    from xrdct_dask.io.hdf5 import FILES, decode_chunks
    from xrdct_dask.io.source import Hdf5Frames, open_source, refreshed

    path = str(tmp_path / "grows.h5")
    ctx = multiprocessing.get_context("spawn")
    started, stop = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_writer, args=(path, 200.0, started, stop))
    writer.start()
    opened, done = [0], threading.Event()

    def opener():
        while not done.is_set():
            Hdf5Frames(path, "/entry/data/data")
            opened[0] += 1

    try:
        assert started.wait(60), "the writer did not start"
        src = open_source(f"{path}::/entry/data/data")
        t = threading.Thread(target=opener, daemon=True)
        t.start()
        reads, bad, deadline = 0, [], time.monotonic() + 30
        base = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
        while reads < 300 or opened[0] < 50:
            assert time.monotonic() < deadline, (reads, opened[0])
            with FILES.using(src.file, "/entry/data/data") as d:
                n = d.shape[0]
            idx = np.arange(max(0, n - 4), n)
            src = refreshed(src, idx)  # opened again where the frames lie past its length, as a task does
            chunks = src.read_raw_chunks(idx)
            frames, status = decode_chunks(chunks)
            reads += 1
            if status.any() or not all((frames[j] == base + i).all() for j, i in enumerate(idx)):
                bad.append((n, status.tolist(), chunks.reasons))
        done.set()
        t.join(30)
    finally:
        done.set()
        stop.set()
        writer.join(30)
    assert not bad, f"{len(bad)} of {reads} reads found frames inside the length unreadable, e.g. {bad[:3]}"
