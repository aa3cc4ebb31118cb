"""Live mode and reruns against the files around them (issue 25, items 15, 16, 20): the watcher's
status files never replace what the user put there, and polling a big file that is not a CBF frame
reads only its head and tail (frames once flagged "not a file" read again when real files replace
them: tests/test_open.py)."""

from __future__ import annotations

import json
import logging
import os

from xrdct_dask.io.cbf import frame_complete


def test_frame_complete_reads_only_the_head_and_the_tail(tmp_path, monkeypatch):
    """A 4 MB file with no CBF binary marker in its first 16 kB (a file of something else, or a
    header still being written) is not whole, and deciding so reads at most the head (16 kB) and
    the tail (16 kB): before, it read the whole file on every poll (0.71 s and 210 MB for 200 MB)."""
    p = tmp_path / "frame_000000.cbf"
    p.write_bytes(b"###CBF: VERSION 1.5\r\n" + b"x" * (4 << 20))
    read = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: read.append(n) or real(fd, n, off))
    assert not frame_complete(p)
    assert sum(read) <= 2 * 16384, read


def test_watch_never_replaces_a_users_live_json_or_part_file(tmp_path, caplog):
    """The live status ``RUN-live.json`` is written (and rewritten) only where it is absent or the
    watcher's own (its ``written_by`` key); a user's file of that name is left as it is, said once
    in the log; and a user's ``.RUN-live.json.part`` beside it is neither replaced nor removed
    (the watcher writes under a temporary name of its own, created exclusively)."""
    from xrdct_dask.view.live import _Status, live_paths

    path = tmp_path / "run.zarr"
    json_path, _ = live_paths(path)
    part = json_path.with_name(f".{json_path.name}.part")
    part.write_text("my notes")
    status = _Status(path, total=10, nz=1)
    snap = status.write()
    assert json.loads(json_path.read_text())["frames_total"] == 10 == snap["frames_total"]
    status.frames_done = 4
    status.write()  # its own file: replaced
    assert json.loads(json_path.read_text())["frames_integrated"] == 4
    assert part.read_text() == "my notes"
    json_path.write_text('{"frames_total": "mine"}')  # the user's now
    with caplog.at_level(logging.WARNING, logger="xrdct_dask.view.live"):
        status.write()
        status.write()
    assert json_path.read_text() == '{"frames_total": "mine"}' and part.read_text() == "my notes"
    assert sum("not written by xrdct-dask" in r.message for r in caplog.records) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([json_path.name, part.name])  # no temporary left
