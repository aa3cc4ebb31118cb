"""The NeXus export against full disks, concurrent exports and users' files (issue 25, item 17):
a disk too full is one line and leaves nothing, two exports of one file never destroy each other's
work (the second is refused), and no file the program did not create is written over."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.export import ExportError, export_nexus
from xrdct_dask.store.budget import Layout

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run_store(tmp_path):
    """A store of 2 x 12 x 10 points and 40 q bins (1 MB of patterns, random: incompressible)."""
    rng = np.random.default_rng(1)
    path = tmp_path / "run.zarr"
    layout = Layout(omega_chunk=4, q_chunk=16, q_sub=16, y_chunk=10, r_chunk=30, budget=2**30)
    store.create_store(path, nz=2, nomega=12, nx=10, radial=np.linspace(1, 40, 40), radial_unit="q_nm^-1",
                       omega_deg=np.arange(12) * 15.0, x_mm=np.arange(10) * 0.5, z_mm=np.arange(2) * 1.0,
                       r_A=None, layout=layout, attrs={"workflow": {"scan": {"nz": 2}}, "engine": "numpy"})
    root = zarr.open_group(str(path), mode="r+")
    root["reduced/intensity"][...] = rng.random((2, 12, 10, 40), dtype=np.float32)
    root["reduced/sigma"][...] = rng.random((2, 12, 10, 40), dtype=np.float32)
    return path


def one_line(msg: str) -> str:
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_a_disk_too_full_stops_the_export_in_one_line_leaving_nothing(run_store, tmp_path, monkeypatch):
    """With less free space than the next piece (the disk reporting 100 kB free), the export stops
    before HDF5 writes it: one line saying so, and nothing left in the folder (no partial file, no
    lock).  Before, HDF5 hit ENOSPC: hundreds of lines of errors, then a segfault."""
    import xrdct_dask.export.nexus as nexus

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real = nexus.shutil.disk_usage
    monkeypatch.setattr(nexus.shutil, "disk_usage", lambda p: real(p)._replace(free=100_000))
    with pytest.raises(ExportError) as err:
        export_nexus(run_store, out_dir / "run.h5", groups=["reduced"], compression="none")
    assert "no space left" in one_line(str(err.value))
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
@pytest.mark.timeout(120)
def test_a_full_tmpfs_gives_one_line_and_leaves_nothing(run_store, tmp_path):
    """The same on a real 600 kB tmpfs (root only: skipped where mounting is not permitted):
    ``xrdct export`` exits 2 with one line on stderr, no traceback, no segfault, an empty folder;
    with room, the same command writes the file."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CI without it runs the test above)")
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        res = subprocess.run([sys.executable, "-m", "xrdct_dask.cli", "export", str(run_store), str(mnt / "run.h5"),
                              "--group", "reduced", "--compression", "none"], capture_output=True, text=True,
                             env=env, timeout=100)
        assert res.returncode == 2, res.stderr[-3000:]
        assert len(res.stderr.strip().splitlines()) == 1 and "no space left" in res.stderr, res.stderr[-3000:]
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_two_exports_of_one_file_the_second_is_refused_and_the_first_completes(run_store, tmp_path, monkeypatch):
    """While an export writes OUT.h5 (held here until the second is answered), a second export of the
    same file is refused in one line and removes nothing; the first completes and its file reads
    back.  Before, both failed with tracebacks and the loser deleted the winner's partial file."""
    import h5py

    import xrdct_dask.export.nexus as nexus

    out = tmp_path / "run.h5"
    real = nexus._copy_array
    started, proceed = threading.Event(), threading.Event()

    def slow(*a, **k):
        if not started.is_set():  # the first array waits until the second export has been answered
            started.set()
            proceed.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(nexus, "_copy_array", slow)
    first: dict = {}
    t = threading.Thread(target=lambda: first.update(path=export_nexus(run_store, out, groups=["reduced"])))
    t.start()
    assert started.wait(30)
    partials = sorted(tmp_path.glob(".run.h5.*.partial"))
    assert len(partials) == 1
    try:
        with pytest.raises(ExportError) as err:
            export_nexus(run_store, out, groups=["reduced"])
    finally:
        proceed.set()
    assert "another export is writing it" in one_line(str(err.value))
    assert sorted(tmp_path.glob(".run.h5.*.partial")) == partials  # the first's work untouched
    t.join(60)
    assert first["path"] == out
    with h5py.File(out, "r") as f:
        assert f["reduced/intensity/intensity"].shape == (2, 12, 10, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5", "run.zarr"]


def test_a_users_partial_file_is_never_written_over_and_stale_ones_of_killed_exports_go(run_store, tmp_path):
    """A user's ``.OUT.h5.partial`` (and any other file beside) keeps its bytes; a partial file a
    killed export left (its own name pattern, an HDF5 file) is removed by the next export."""
    out = tmp_path / "run.h5"
    mine = tmp_path / ".run.h5.partial"
    mine.write_text("my notes")
    lock_like = tmp_path / ".run.h5.0123456789ab.partial"
    lock_like.write_text("not an HDF5 file: not ours")
    stale = tmp_path / ".run.h5.deadbeef0000.partial"
    stale.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    export_nexus(run_store, out, groups=["reduced"])
    assert mine.read_text() == "my notes" and lock_like.read_text() == "not an HDF5 file: not ours"
    assert not stale.exists() and out.is_file()


KILLED_PARTS_EXPORT = """
import sys, time
from pathlib import Path
import h5py
import xrdct_dask.export.parts as parts
from xrdct_dask.export import export_nexus

def stuck(piece):  # writes the start of its part, says so, and hangs: killed there
    with h5py.File(piece[1], "x") as f:
        f.create_dataset("half", data=[1, 2, 3])
    Path(sys.argv[3]).write_text("writing")
    time.sleep(600)

parts._write_part = stuck
parts.PART_MIN_BYTES = 0  # every array of 2+ dims in parts: this store is small
export_nexus(sys.argv[1], sys.argv[2], single_file=False)
"""


def test_the_parts_folder_of_a_killed_export_goes_with_one_line_and_nothing_else(run_store, tmp_path, monkeypatch):
    """An export in parts SIGKILLed while its part file is being written leaves
    ``.run.h5.parts.<hex>.partial`` (its mark, a half part file): the next export of run.h5
    removes it, saying so in one console line, and completes.  Folders of the same name pattern
    that are not certainly an interrupted export's keep every byte: one without the mark, one
    whose mark is another file's export, one holding a file this program does not write."""
    import logging
    import signal

    import xrdct_dask.export.parts as parts
    from xrdct_dask.export.parts import PART_MARK
    from xrdct_dask.testing.waits import wait_until
    from xrdct_dask.view.console import console

    monkeypatch.setattr(parts, "PART_MIN_BYTES", 0)

    out, ready = tmp_path / "run.h5", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PARTS_EXPORT, str(run_store), str(out), str(ready)],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: ready.exists() or proc.poll() is not None, 120, "the export writing its part")
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".run.h5.parts.") and p.name.endswith(".partial")]
    assert len(stale) == 1 and sorted(q.name for q in stale[0].iterdir()) == ["part-00000.h5", PART_MARK]
    keep = {}
    for hexname, files in (("0123456789ab", {"notes.txt": "no mark: not certainly ours"}),
                           ("0123456789ac", {PART_MARK: '{"creator": "xrdct_dask export", '
                                                        '"partial_export_of": "other.h5"}'}),
                           ("0123456789ad", {PART_MARK: stale[0].joinpath(PART_MARK).read_text(),
                                             "part-00000.h5": "", "mine.txt": "a user's file put there"})):
        folder = tmp_path / f".run.h5.parts.{hexname}.partial"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        keep[folder] = files
    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append
    level = console.level
    console.addHandler(handler)
    console.setLevel(logging.INFO)
    try:
        export_nexus(run_store, out, single_file=False)
    finally:
        console.removeHandler(handler)
        console.setLevel(level)
    assert not stale[0].exists() and not stale[0].with_name(stale[0].name + ".removing").exists()
    said = [r.getMessage() for r in lines if stale[0].name in r.getMessage()]
    assert len(said) == 1 and "interrupted export" in said[0] and f"pid {proc.pid}" in said[0], said
    for folder, files in keep.items():
        assert {p.name: p.read_text() for p in folder.iterdir()} == files, folder
    from xrdct_dask.export import check_parts

    check_parts(out)
    assert (tmp_path / "run.h5.parts").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.h5.") and p.name.endswith(".partial")
                and p not in keep]  # the killed export's master partial went too (remove_stale_partials)
