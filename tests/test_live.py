"""Live mode (issue 17): `xrdct watch` follows frames while they are written, `xrdct simulate
--rate`, and batch reruns of a scan run during its acquisition (the job service's run and watch
jobs: tests/test_service.py).

The acquisition is the project's simulated scan (2 slices x 8 angles x 10 steps, the 8x8-binned
Pilatus) written again, frame by frame, at a steady rate by a thread
(:func:`~xrdct_dask.simulate.stream_frames`): renamed into place, or written in place
slowly so that the watcher sees partial files.  The reference is a batch `xrdct run` of the same
frames once written: same code, same inputs, single-threaded workers, so every array of the
live store must equal the batch store's exactly (NaN where NaN).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xrdct_dask import store
from xrdct_dask.config import load_workflow
from xrdct_dask.io.cbf import frame_complete
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.testing.stores import assert_same_stores

from .conftest import LIVE_OVERRIDES as OVERRIDES

RATE_HZ = 25.0  # frames/s: ~6 s for the 160 frames; a 2-core CI machine integrates several times that
def empty_copy(scan, folder: Path) -> Path:
    """The scan's folder (PONI, mask, monitor, scan file, workflow) without its frames: where an
    acquisition is written again."""
    shutil.copytree(scan.root, folder, ignore=shutil.ignore_patterns("frames", "*.zarr", "*.png", "*.json"))
    (folder / "frames").mkdir()
    return folder


def frames_of(scan) -> list[Path]:
    return [scan.frame_path(i) for i in range(scan.nz * scan.nomega * scan.nx)]


def stream(scan, folder: Path, rate_hz: float = RATE_HZ, in_place: bool = False, start: int = 0,
           stop: int | None = None):
    """Start a thread writing frames ``start:stop`` of ``scan`` into ``folder/frames`` at ``rate_hz``;
    returns ``(thread, out)`` with ``out["whole"]``: when each frame was whole under its name."""
    from xrdct_dask.simulate import stream_frames

    src = frames_of(scan)[start:stop]
    dst = [folder / "frames" / p.name for p in src]
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("whole", stream_frames(src, dst, rate_hz, in_place=in_place)),
                         daemon=True)
    t.start()
    return t, out


# ------------------------------------------------------------------------------------------
# what "whole" means for a CBF file being written
# ------------------------------------------------------------------------------------------
def test_a_cbf_file_is_whole_only_once_its_payload_and_trailer_are_written(acq, tmp_path):
    """Every cut of a frame file short of its end (an empty file, half a header, a payload short
    of X-Binary-Size, the payload without the closing boundary) is not whole; the file is; so is
    its gzip copy, but not a gzip stream cut short."""
    import gzip

    data = acq.frame_path(0).read_bytes()
    p = tmp_path / "frame.cbf"
    end = data.rfind(b"--CIF-BINARY-FORMAT-SECTION----")
    for cut in (0, 100, data.find(b"\x0c\x1a\x04\xd5") + 4, len(data) // 2, end - 1, end + 10):
        p.write_bytes(data[:cut])
        assert not frame_complete(p), cut
    p.write_bytes(data)
    assert frame_complete(p)
    assert not frame_complete(tmp_path / "absent.cbf") and not frame_complete(tmp_path)
    z = gzip.compress(data)
    (tmp_path / "f.cbf.gz").write_bytes(z)
    assert frame_complete(tmp_path / "f.cbf.gz")
    (tmp_path / "f.cbf.gz").write_bytes(z[: len(z) // 2])
    assert not frame_complete(tmp_path / "f.cbf.gz")


# ------------------------------------------------------------------------------------------
# xrdct watch while the frames are written
# ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_watch_during_the_acquisition_equals_the_batch_run_and_reconstructs_slice_0_before_the_scan_ends(
        acq, batch, cluster, tmp_path):
    """Frames renamed into place at 25 Hz; `watch` on a scheduler that stays up (the module's
    cluster): the store equals the batch run's array for array, slice 0 is reconstructed (and its
    G(r) computed) before the last frame of slice 1 is written, no frame is flagged, and the live
    status (on the scheduler and beside the store) and picture are there."""
    from distributed import Client

    from xrdct_dask.runs.live import watch
    from xrdct_dask.view.live import live_paths, live_status

    folder = empty_copy(acq, tmp_path / "live")
    t, out = stream(acq, folder)
    res = watch(load_workflow(folder / "workflow.yaml", OVERRIDES), scheduler_address=cluster.scheduler_address,
                idle_timeout_s=30, png_every_s=1.0, progress=False, summary=False)
    t.join()
    whole = out["whole"]
    assert not res.timed_out and res.missing == 0
    assert sorted(res.slices) == [0, 1]
    assert res.slices[0] < whole[-1], f"slice 0 done {res.slices[0] - whole[-1]:+.2f} s after the last frame"
    assert_same_stores(batch, res.store)
    st = store.open_array(res.store, "reduced/frame_status", "r")[...]
    assert (st == FrameStatus.OK).all()
    # each block went to the cluster only after its last frame was whole, and was written after
    assert len(res.blocks) == 4 and all(b["ready"] <= b["submitted"] <= b["finished"] for b in res.blocks)
    with Client(cluster.scheduler_address) as client:
        snap = live_status(client)
        assert live_status(client, store_path=res.store) == snap  # this watch's own, and the latest
    assert snap["store"] == str(res.store) and snap["finished"] and snap["frames_integrated"] == 160
    assert live_status(store_path=res.store)["slices_done"] == [0, 1]
    png = live_paths(res.store)[1]
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # an HDF5 simulation and an acquisition (~20 s)
@pytest.mark.parametrize("master", ["virtual dataset", "links only"])
def test_watch_follows_an_eiger_scan_whose_data_files_appear_one_by_one(acq, batch, cluster, tmp_path, master):
    """The same scan written as an Eiger master (there from the start, as the detector writes it)
    whose four data files of 40 frames appear one after the other, each renamed into place when
    whole (as DECTRIS' file writer does): `watch` integrates each file's blocks once it is there,
    nothing is read early or flagged, and the store equals the CBF batch run's (the sources give
    the same frames).  The master maps its data files by a virtual dataset (as BLISS writes), or
    only by its ``data_NNNNNN`` links (as a DECTRIS detector writes: nothing can be read from it
    before the first data file, and the workers are readied without it)."""
    import h5py

    from xrdct_dask.runs.live import watch
    from xrdct_dask.simulate import simulate_scan

    h5 = simulate_scan(tmp_path / "h5scan", nz=2, nomega=8, nx=10, seed=5, fmt="h5", frames_per_file=40)
    sets = OVERRIDES | {"store.path": str(tmp_path / "live.zarr")}
    if master == "links only":
        file = h5.frames.split("::")[0]
        with h5py.File(file, "r+") as m:
            del m["entry/data/data"]
        sets["inputs.frames"] = f"{file}::/entry/data"
    data = sorted((h5.root / "frames").glob("*_data_*.h5"))
    assert len(data) == 4
    aside = tmp_path / "filewriter"
    aside.mkdir()
    for p in data:
        p.rename(aside / p.name)
    appeared: list[float] = []

    def filewriter():
        for p in data:
            time.sleep(1.2)
            appeared.append(time.time())  # before the rename: nothing can see the file earlier
            (aside / p.name).rename(p)

    t = threading.Thread(target=filewriter, daemon=True)
    t.start()
    res = watch(load_workflow(h5.workflow, sets), cluster=cluster, idle_timeout_s=30, png_every_s=0, progress=False,
                summary=False)
    t.join()
    st = store.open_array(res.store, "reduced/frame_status", "r")[...]
    assert (st == FrameStatus.OK).all(), {FrameStatus(c).name: int((st == c).sum()) for c in np.unique(st)}
    assert not res.timed_out and res.missing == 0 and len(res.blocks) == 4
    # a block of 40 frames is one data file: it went to the cluster after that file appeared
    for b, when in zip(sorted(res.blocks, key=lambda b: (b["z"], b["omega_start"])), appeared):
        assert when <= b["ready"] <= b["submitted"], (b, when)
    assert_same_stores(batch, res.store)


@pytest.mark.slow  # ~10 s: a second acquisition, slower per frame
def test_partial_files_are_never_read_as_complete(acq, batch, cluster, tmp_path):
    """Frames written in place in four parts over each frame's 1/25 s (the watcher sees files
    with half a header, half a payload, no trailer): none is read before it is whole, so no
    frame ends flagged truncated or corrupt, and the store equals the batch run's."""
    from xrdct_dask.runs.live import watch

    folder = empty_copy(acq, tmp_path / "slow")
    t, out = stream(acq, folder, in_place=True)
    res = watch(load_workflow(folder / "workflow.yaml", OVERRIDES), cluster=cluster, idle_timeout_s=30,
                png_every_s=0, progress=False, summary=False)
    t.join()
    st = store.open_array(res.store, "reduced/frame_status", "r")[...]
    assert (st == FrameStatus.OK).all(), {FrameStatus(c).name: int((st == c).sum()) for c in np.unique(st)}
    assert_same_stores(batch, res.store)


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_idle_timeout_flags_frames_that_never_came_and_a_restart_reads_them(acq, batch, cluster, tmp_path):
    """The detector stops after 100 of 160 frames: `watch` waits 1.5 s without a new frame, then
    integrates what is there (the 60 frames that never came flagged MISSING) and returns.  The
    frames come later; a second `watch` resumes the same store: it redoes only the blocks that
    lacked frames (slice 1's two blocks, frames 100-159 in snake order from index 80), and the
    store then equals the batch run's."""
    from xrdct_dask.runs.live import watch
    from xrdct_dask.view.live import live_status

    folder = empty_copy(acq, tmp_path / "stopped")
    for p in frames_of(acq)[:100]:
        shutil.copy(p, folder / "frames" / p.name)
    wf = load_workflow(folder / "workflow.yaml", OVERRIDES)
    res = watch(wf, cluster=cluster, idle_timeout_s=1.5, png_every_s=0, progress=False, summary=False)
    assert res.timed_out and res.missing == 60
    # the frames that never came are flagged, never counted integrated (issue 25), live or in the summary
    assert live_status(store_path=res.store)["frames_integrated"] == res.summary["frames_this_run"] == 100
    st = store.open_array(res.store, "reduced/frame_status", "r")[...]
    assert (st == FrameStatus.MISSING).sum() == 60 and (st[0] == FrameStatus.OK).all()
    assert store.task_state(res.store).complete  # slices reconstructed from what came (missing frames filled)
    for p in frames_of(acq)[100:]:
        shutil.copy(p, folder / "frames" / p.name)
    again = watch(wf, cluster=cluster, idle_timeout_s=5, png_every_s=0, progress=False, summary=False)
    assert not again.timed_out
    assert sorted((b["z"], b["omega_start"]) for b in again.blocks) == [(1, 0), (1, 4)]
    assert sorted(again.slices) == [1]
    assert_same_stores(batch, again.store)


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_a_frame_the_detector_skipped_does_not_hold_its_slice_to_the_idle_timeout(acq, cluster, tmp_path):
    """Every frame but 5 and 158 is there: once frames far beyond one (or the scan's last frame)
    are whole and it is still absent after ``settle_s``, its block goes without it (flagged
    MISSING), long before the idle timeout; every other frame is read."""
    from xrdct_dask.runs.live import watch

    folder = empty_copy(acq, tmp_path / "skipped")
    for p in frames_of(acq):
        if p.name not in (acq.frame_path(5).name, acq.frame_path(158).name):
            shutil.copy(p, folder / "frames" / p.name)
    t0 = time.time()
    res = watch(load_workflow(folder / "workflow.yaml", OVERRIDES), cluster=cluster, idle_timeout_s=120,
                settle_s=0.5, png_every_s=0, progress=False, summary=False)
    assert time.time() - t0 < 60 and not res.timed_out and res.missing == 2
    st = store.open_array(res.store, "reduced/frame_status", "r")[...]
    skipped = np.isin(store.open_array(res.store, "reduced/frame_index", "r")[...], [5, 158])
    assert skipped.sum() == 2 and (st[skipped] == FrameStatus.MISSING).all() and (st[~skipped] == FrameStatus.OK).all()


@pytest.mark.slow  # two batch runs (~11 s)
def test_batch_rerun_reads_frames_that_were_partial_or_missing_when_first_run(acq, batch, cluster, tmp_path):
    """A batch `run` during the acquisition: frame 120 half written, frame 121 an empty file just
    created, frames 122- not there (all in slice 1, angles 4-7: one block).  They are flagged
    (truncated, corrupt header, missing); once the acquisition is whole a rerun of the same command
    reads them again (not "all tasks already done") and the store equals the batch run's."""
    from xrdct_dask import run

    folder = empty_copy(acq, tmp_path / "during")
    frames = frames_of(acq)
    for p in frames[:120]:
        shutil.copy(p, folder / "frames" / p.name)
    data = frames[120].read_bytes()
    (folder / "frames" / frames[120].name).write_bytes(data[: len(data) // 2])
    (folder / "frames" / frames[121].name).write_bytes(b"")
    wf = load_workflow(folder / "workflow.yaml", OVERRIDES)
    path = run(wf, cluster=cluster, progress=False, summary=False)
    st = store.open_array(path, "reduced/frame_status", "r")[...]
    counts = {FrameStatus(c).name: int((st == c).sum()) for c in np.unique(st)}
    assert counts == {"OK": 120, "TRUNCATED": 1, "CORRUPT_HEADER": 1, "MISSING": 38}
    for p in frames[120:]:
        shutil.copy(p, folder / "frames" / p.name)
    path = run(wf, cluster=cluster, progress=False, summary=False)
    assert store.read_attrs(path)["run_summary"]["tasks"]["integrate"]["executed"] == 1  # slice 1, angles 4-7
    assert_same_stores(batch, path)


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a simulation and a watch through the CLI (~15 s)
def test_simulate_rate_then_watch_from_the_command_line(cluster, tmp_path):
    """`xrdct simulate --rate 40` writes its 8 frames at 40 Hz (>= 7/40 s from first to last),
    every one whole under its final name and no temporary left; `xrdct watch --scheduler-address`
    on them exits 0 and names its store and live picture."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["simulate", str(tmp_path / "s"), "--nz", "1", "--nomega", "2", "--nx", "4", "--rate", "40"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "s").rglob("*") if "frame" in p.name)
    assert names == sorted(["frames"] + [f"frame_{i:06d}.cbf" for i in range(8)])
    assert all(frame_complete(tmp_path / "s" / "frames" / f"frame_{i:06d}.cbf") for i in range(8))
    took = float(r.output.split("8 frames written in ")[1].split(" s")[0])
    assert took >= 7 / 40 - 0.01
    r = runner.invoke(app, ["watch", str(tmp_path / "s" / "workflow.yaml"), "--idle-timeout", "5",
                            "--scheduler-address", cluster.scheduler_address, "--png-every", "0"])
    assert r.exit_code == 0, r.output
    assert f"store: {tmp_path / 's' / 'run.zarr'}" in r.output
    assert store.task_state(tmp_path / "s" / "run.zarr").complete
    bad = runner.invoke(app, ["simulate", str(tmp_path / "t"), "--rate", "0"])
    assert bad.exit_code == 2 and "--rate must be > 0" in bad.output


def _swmr_writer(frames_npy: str, path: str, rate_hz: float, started, resume=None, pause_after: int = 0) -> None:
    """A detector's SWMR file writer (another process, as HDF5 wants): the frames appended one by
    one at ``rate_hz`` to ``path::/entry/data/data`` (one frame per chunk, no filter), each flushed;
    after ``pause_after`` frames it waits for ``resume`` (at most 120 s); the time of its last
    frame goes to ``path + ".last"``."""
    import h5py

    frames = np.load(frames_npy)
    with h5py.File(path + ".part", "w", libver="latest") as f:
        d = f.create_dataset("entry/data/data", shape=(0, *frames.shape[1:]), maxshape=(None, *frames.shape[1:]),
                             chunks=(1, *frames.shape[1:]), dtype=frames.dtype)
        import os

        os.rename(path + ".part", path)  # the file appears with its dataset, still empty
        f.swmr_mode = True
        started.set()
        t0 = time.perf_counter()
        for k, frame in enumerate(frames):
            if resume is not None and k == pause_after:
                resume.wait(120)
                t0 = time.perf_counter() - k / rate_hz
            time.sleep(max(0.0, t0 + k / rate_hz - time.perf_counter()))
            d.resize(k + 1, axis=0)
            d[k] = frame
            d.flush()
    with open(path + ".last", "w") as f:
        f.write(repr(time.time()))


@pytest.mark.slow  # an acquisition of 160 frames at 20 Hz (~15 s)
def test_watch_follows_a_file_an_swmr_writer_grows(acq, batch, cluster, tmp_path):
    """One HDF5 file that the detector's writer holds open in SWMR mode and appends to at 20 Hz
    (a plain reader may not even open it): `watch` reads it as an SWMR reader, sees its length
    grow, integrates each block once its frames are flushed, and the store equals the batch run's.
    The writer holds after the first block's 40 frames until that block is integrated (its
    done-marker in the store): so the first block is read while the file is still written, however
    slowly the watch starts on a loaded machine."""
    import multiprocessing

    from xrdct_dask.io.source import open_source, read_frames
    from xrdct_dask.runs.live import watch

    raw = read_frames(open_source(acq.frame_path(0).parent / "frame_{index:06d}.cbf"), range(160))
    np.save(tmp_path / "frames.npy", raw)
    target = tmp_path / "scan.h5"
    ctx = multiprocessing.get_context("spawn")
    started, resume = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_swmr_writer, args=(str(tmp_path / "frames.npy"), str(target), 20.0, started, resume,
                                                    40))
    writer.start()
    marks = tmp_path / "live.zarr" / store.TASKS / "integrate" / "c"
    stop = threading.Event()

    def resume_after_the_first_block():
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline:
            if marks.is_dir() and any(f for _, _, fs in os.walk(marks) for f in fs if not f.endswith(".partial")):
                break
            stop.wait(0.05)
        resume.set()

    t = threading.Thread(target=resume_after_the_first_block, daemon=True)
    t.start()
    try:
        assert started.wait(60)
        wf = load_workflow(acq.workflow, OVERRIDES | {"store.path": str(tmp_path / "live.zarr"),
                                                      "inputs.frames": f"{target}::/entry/data/data"})
        # (the idle timeout is a bound, never reached: the writer's pause ends with the first block)
        res = watch(wf, cluster=cluster, idle_timeout_s=120, png_every_s=0, progress=False, summary=False)
    finally:
        stop.set()
        t.join(10)
        writer.join(150)
    assert writer.exitcode == 0
    st = store.open_array(res.store, "reduced/frame_status", "r")[...]
    assert (st == FrameStatus.OK).all(), {FrameStatus(c).name: int((st == c).sum()) for c in np.unique(st)}
    assert not res.timed_out and len(res.blocks) == 4
    first = min(b["submitted"] for b in res.blocks)
    last_frame = float(Path(str(target) + ".last").read_text())
    assert first < last_frame, "the first block was not read while the file was written"
    assert_same_stores(batch, res.store)


# ------------------------------------------------------------------------------------------
# the slice stages warmed up before the acquisition
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets", [
    {},
    {"sinogram.jitter": True, "sinogram.stripes": True, "sinogram.background": True},
    {"recon.algorithm": "sirt", "recon.iterations": 5},
])
def test_slice_stages_warm_up_runs_the_workflows_corrections_and_reconstruction(acq, sets):
    """The warm-up prepares a synthetic slice of the scan's shape with the workflow's corrections
    and reconstructs it with its algorithm, on this process's engine, without error."""
    from xrdct_dask.pipeline.tasks_recon import warm_slice_stages

    res = warm_slice_stages(load_workflow(acq.workflow, sets))
    assert "error" not in res, res
    assert res["engine"] == "numpy" and res["seconds"] > 0


def test_a_failing_slice_warm_up_is_said_and_never_raises(acq, monkeypatch):
    from xrdct_dask.pipeline import tasks_recon
    from xrdct_dask.pipeline.tasks_recon import warm_slice_stages

    def broken(*a, **k):
        raise MemoryError("out of GPU memory")

    monkeypatch.setattr(tasks_recon, "reconstruct", broken)
    assert warm_slice_stages(load_workflow(acq.workflow)) == {"error": "MemoryError: out of GPU memory"}


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_watch_warms_the_slice_stages_on_every_worker_before_the_first_frame(acq):
    """Before the first frame comes, every worker has run the reconstruction's kernels (numba's
    back-projector is compiled or loaded in the worker's process), so the first slice is
    reconstructed when it is complete, not after its kernels compile (~10 s on a fresh GPU machine,
    benchmarks/RESULTS.md).  Fresh worker processes: nothing loaded before."""
    from distributed import Client, LocalCluster

    from xrdct_dask.runs.live import _warm_slice_stages

    def loaded():
        from xrdct_dask.recon import _numba

        return len(_numba.backproject_tiles.signatures)

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as lc, \
            Client(lc) as client:
        assert set(client.run(loaded).values()) == {0}
        _warm_slice_stages(client, load_workflow(acq.workflow))
        assert all(n > 0 for n in client.run(loaded).values())


def test_two_watches_on_one_scheduler_keep_their_live_status_apart(cluster, tmp_path):
    """A beamline may follow two acquisitions on one scheduler: each watch publishes its status
    under its store's name as well as the latest one's, so a notebook asking for a store gets that
    store's status, and asking for none gets the watch that published last."""
    from distributed import Client

    from xrdct_dask.view.live import _variables, live_status

    with Client(cluster.scheduler_address) as client:
        assert live_status(client, store_path=tmp_path / "nothing.zarr", timeout_s=0.2) is None
        for name in ("a", "b"):
            for v in _variables(client, tmp_path / f"{name}.zarr"):
                v.set({"store": name})
        assert live_status(client, store_path=tmp_path / "a.zarr")["store"] == "a"
        assert live_status(client, store_path=tmp_path / "b.zarr")["store"] == "b"
        assert live_status(client)["store"] == "b"
