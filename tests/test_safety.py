"""Never destroy or silently keep wrong data (issue 15).

What each test holds the program to:

* ``store.overwrite`` replaces only a store this program made (its format marker), holding
  nothing else, never a folder that holds (or lies above) the run's inputs, and builds the new
  store beside the old one before swapping them;
* a run's identity includes the contents of its input files: a PONI edited in place is refused
  on resume, and ``reprocess`` reruns what depends on it;
* a store whose creation failed (full disk) leaves nothing that blocks the next run;
* nothing can hang a run: special files in place of frames, absurd frame templates;
* a monitor far from the scan's median flags its frame instead of scaling it to infinity;
* bad input is a one-line error (and Ctrl-C one line);
* a rerun reports the whole run, and reads again the frames that were missing or unreadable.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.config import WorkflowError, load_workflow, parse_overrides
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.runs.execute import run
from xrdct_dask.runs.open import open_run
from xrdct_dask.runs.service import interruptible  # SIGINT default in the child, as in a terminal
from xrdct_dask.testing.waits import wait_until

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("safety") / "scan", nz=1, nomega=8, nx=8, seed=5)


def wf_for(scan, path, **overrides):
    return load_workflow(scan.workflow, {"store.path": str(path), "store.omega_chunk": 4, **overrides})


def go(scan, path, cluster, **overrides):
    return run(wf_for(scan, path, **overrides), cluster=cluster, progress=False, summary=False)


def one_line(err) -> str:
    msg = str(err.value if hasattr(err, "value") else err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------
# 1. overwrite replaces only a store of this program
# ------------------------------------------------------------------------------------------
def test_overwrite_never_empties_a_folder_of_user_files(scan, tmp_path):
    home = tmp_path / "home"
    for name, text in {".ssh/id_rsa": "KEY", "Documents/thesis.tex": "\\chapter{}", ".bashrc": "PS1=$"}.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(text)
    before = tree(home)
    with pytest.raises(WorkflowError) as err:
        open_run(wf_for(scan, home, **{"store.overwrite": True}))
    assert "is not a store of xrdct-dask" in one_line(err)
    assert tree(home) == before


def test_overwrite_never_touches_the_scan_folder_or_a_folder_above_the_inputs(scan):
    before = tree(scan.root)
    for target in (scan.root, scan.root.parent, scan.root / "frames"):
        with pytest.raises(WorkflowError) as err:
            open_run(wf_for(scan, target, **{"store.overwrite": True}))
        assert "holds the run's input" in one_line(err)
    assert tree(scan.root) == before


def test_simulate_never_writes_over_a_folder_of_user_files(tmp_path):
    """`xrdct simulate OUT` writes frames, geometry.poni, mask, monitor and workflow.yaml: into a
    folder holding a user's files it refuses in one line and leaves them as they were; a folder it
    simulated into before is written again (the demo re-runs), and so is an empty one."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    user = tmp_path / "beamtime"
    user.mkdir()
    (user / "geometry.poni").write_text("Detector: Pilatus2M\nDistance: 0.25\n")
    (user / "notes.txt").write_text("sample 3, do not lose")
    r = CliRunner().invoke(app, ["simulate", str(user), "--nz", "1", "--nomega", "4", "--nx", "4"])
    assert r.exit_code == 2 and "not a simulated scan" in r.output and r.output.count("\n") <= 2, r.output
    assert (user / "geometry.poni").read_text() == "Detector: Pilatus2M\nDistance: 0.25\n"
    assert sorted(p.name for p in user.iterdir()) == ["geometry.poni", "notes.txt"]
    (tmp_path / "empty").mkdir()
    for _ in range(2):  # an empty folder, then the same folder again
        r = CliRunner().invoke(app, ["simulate", str(tmp_path / "empty"), "--nz", "1", "--nomega", "4", "--nx", "4"])
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["simulate", str(tmp_path / "x"), "--rate", "10", "--frames",
                                 "slice_{z:04d}/frame_{index:06d}.cbf"])
    assert r.exit_code == 2 and "leave --frames out" in r.output


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_overwrite_refuses_a_store_holding_foreign_files(scan, cluster, tmp_path):
    path = go(scan, tmp_path / "run.zarr", cluster)
    (path / "my_notes.txt").write_text("do not delete")
    (path / "reduced" / "fit.npy").write_bytes(b"results")
    with pytest.raises(WorkflowError) as err:
        open_run(wf_for(scan, path, **{"store.overwrite": True, "integrate.npt_rad": 500}))
    assert "also holds 2 other entries" in one_line(err)
    assert (path / "my_notes.txt").read_text() == "do not delete" and (path / "reduced" / "fit.npy").exists()


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_overwrite_replaces_a_store_of_this_program_whole(scan, cluster, tmp_path):
    path = go(scan, tmp_path / "run.zarr", cluster)
    old_chunk = path / "reduced" / "intensity" / "c" / "0" / "0" / "0" / "0"
    assert old_chunk.exists()
    ctx = open_run(wf_for(scan, path, **{"store.overwrite": True, "integrate.npt_rad": 500}))
    assert ctx.store_path == path and store.read_attrs(path)["workflow"]["integrate"]["npt_rad"] == 500
    assert not old_chunk.exists()  # a new, empty template: nothing of the old run kept
    assert store.leftovers(path) == []  # built beside it and renamed: no aside folder stays
    empty = tmp_path / "empty"
    empty.mkdir()
    assert open_run(wf_for(scan, empty)).store_path == empty  # an empty folder loses nothing


# ------------------------------------------------------------------------------------------
# 2. input contents are part of the run's identity
# ------------------------------------------------------------------------------------------
def test_poni_edited_in_place_is_refused_and_reprocess_reintegrates(scan, cluster, tmp_path_factory):
    from xrdct_dask.runs.reprocess import plan_reprocess
    from xrdct_dask.testing import corrupt

    copy = corrupt.copy_scan(scan, tmp_path_factory.mktemp("poni") / "scan")
    path = go(copy, copy.root / "run.zarr", cluster)
    poni = copy.root / "geometry.poni"
    text = poni.read_text()
    line = next(ln for ln in text.splitlines() if ln.lower().startswith("distance:"))
    poni.write_text(text.replace(line, f"Distance: {float(line.split(':')[1]) * 1.01}"))
    with pytest.raises(WorkflowError) as err:
        open_run(wf_for(copy, path))
    assert one_line(err).startswith(f"inputs.poni: {poni} changed since")
    rp = plan_reprocess(path)  # no key changed, but the PONI did: integrate again
    assert rp.start == "integrate" and list(rp.changed) == ["inputs.poni (contents)"]


def test_a_frame_rewritten_with_other_contents_is_refused_on_resume(scan, cluster, tmp_path_factory):
    from xrdct_dask.testing import corrupt

    copy = corrupt.copy_scan(scan, tmp_path_factory.mktemp("frames") / "scan")
    path = go(copy, copy.root / "run.zarr", cluster)
    sample = store.read_attrs(path)["frame_sample"]
    f = Path(sample["files"][3])
    f.write_bytes(f.read_bytes() + b"\0" * 100)
    with pytest.raises(WorkflowError) as err:
        open_run(wf_for(copy, path))
    assert one_line(err).startswith(f"inputs.frames: {f} is ")


# ------------------------------------------------------------------------------------------
# 3. a disk that fills while the store is created
# ------------------------------------------------------------------------------------------
def test_disk_full_while_creating_leaves_nothing_that_blocks_the_next_run(scan, tmp_path, monkeypatch):
    import zarr.storage._local as local

    real_put = local._put
    calls = {"n": 0}

    def full_after_some(path, value, exclusive=False):
        calls["n"] += 1
        if calls["n"] > 25:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_put(path, value, exclusive)

    wf = wf_for(scan, tmp_path / "run.zarr")
    monkeypatch.setattr(local, "_put", full_after_some)
    with pytest.raises(WorkflowError) as err:
        open_run(wf)
    assert "No space left on device" in one_line(err)
    monkeypatch.setattr(local, "_put", real_put)
    assert not (tmp_path / "run.zarr").exists() and store.leftovers(tmp_path / "run.zarr") == []
    ctx = open_run(wf)  # space is back: created, not refused
    assert store.read_attrs(ctx.store_path)["template_complete"] is True


def test_a_half_created_store_of_this_program_is_recreated(scan, tmp_path):
    """A store left with its format marker but no complete template (a run killed while the
    template was written in place, as older versions did) is recognised and made again."""
    path = tmp_path / "run.zarr"
    zarr.open_group(str(path), mode="w-", zarr_format=3, attributes={"format": store.FORMAT})
    (path / "reduced").mkdir()
    ctx = open_run(wf_for(scan, path))
    assert store.read_attrs(ctx.store_path)["template_complete"] is True


# ------------------------------------------------------------------------------------------
# 4, 5. nothing hangs
# ------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_named_pipe_in_place_of_a_frame_is_flagged_not_read(scan, cluster, tmp_path_factory):
    from xrdct_dask.testing import corrupt

    copy = corrupt.copy_scan(scan, tmp_path_factory.mktemp("fifo") / "scan")
    victim = copy.frame_path(5)
    victim.unlink()
    os.mkfifo(victim)
    path = go(copy, copy.root / "run.zarr", cluster)
    status = zarr.open_array(str(path / "reduced" / "frame_status"), mode="r")[...]
    index = zarr.open_array(str(path / "reduced" / "frame_index"), mode="r")[...]
    assert status[index == 5].tolist() == [FrameStatus.NOT_A_FILE]
    assert (status[index != 5] == FrameStatus.OK).all()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("template", ["frames/frame_{index:>999999999}.cbf", "frames/frame_{index:.0s}.cbf",
                                      "frames/frame_{index:c}.cbf", "frames/frame_{index!r}.cbf",
                                      "frames/frame_{index:{w}}.cbf", "frames/frame_{index"])
def test_frame_templates_that_would_hang_or_crash_are_refused_in_one_line(scan, template):
    with pytest.raises(WorkflowError) as err:
        load_workflow(scan.workflow, {"inputs.frames": template})
    assert one_line(err).startswith("--set inputs.frames=")


# ------------------------------------------------------------------------------------------
# 6. a monitor far from the scan's median
# ------------------------------------------------------------------------------------------
def test_tiny_positive_monitor_flags_the_frame_instead_of_infinite_counts(scan, cluster, tmp_path_factory):
    from xrdct_dask.testing import corrupt

    copy = corrupt.copy_scan(scan, tmp_path_factory.mktemp("mon") / "scan")
    mon = np.loadtxt(copy.monitor)
    mon[9], mon[10] = 1e-30, mon[10] * 50  # a glitch, and a strong but believable reading
    np.savetxt(copy.monitor, mon)
    path = go(copy, copy.root / "run.zarr", cluster)
    red = zarr.open_group(str(path / "reduced"), mode="r")
    index, status = red["frame_index"][...], red["frame_status"][...]
    assert status[index == 9].tolist() == [FrameStatus.BAD_MONITOR]
    assert status[index == 10].tolist() == [FrameStatus.OK]  # within the default factor of 100
    ok = red["frame_ok"][...]
    assert np.isfinite(red["intensity"][...][ok]).all() and np.isfinite(red["total"][...][ok]).all()
    assert not np.isinf(red["intensity"][...]).any()


# ------------------------------------------------------------------------------------------
# 7. one-line errors
# ------------------------------------------------------------------------------------------
def _cli(*args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "xrdct_dask.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, **kw)


@pytest.mark.parametrize("args", [["--set", "a=[unclosed"], ["--set", "integrate.npt_rad=!!python/object:os.system"],
                                  ["--set", "integrate.npt_rad=!!binary aGVsbG8="],
                                  ["--cluster", "slurm-cpu", "--cluster-set", "cores=!!set {a}"],
                                  ["--set", "integrate.npt_rad=-3"]])
@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_bad_command_line_values_are_one_line(scan, args):
    res = _cli("run", str(scan.workflow), *args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --"), res.stderr


def test_a_set_error_is_blamed_on_the_set_not_the_file(scan):
    with pytest.raises(WorkflowError) as err:
        load_workflow(scan.workflow, parse_overrides(["integrate.npt_rad=-3"]))
    assert one_line(err).startswith("--set integrate.npt_rad=-3: integrate.npt_rad:")
    assert str(scan.workflow) not in str(err.value)


def test_monitor_with_a_word_and_poni_with_nan_are_one_line(scan, tmp_path_factory):
    from xrdct_dask.testing import corrupt

    copy = corrupt.copy_scan(scan, tmp_path_factory.mktemp("inputs") / "scan")
    lines = copy.monitor.read_text().splitlines()
    lines[3] = "oops"
    copy.monitor.write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkflowError) as err:
        open_run(wf_for(copy, copy.root / "run.zarr"))
    assert one_line(err).startswith("inputs.monitor:")
    poni = copy.root / "geometry.poni"
    text = poni.read_text()
    line = next(ln for ln in text.splitlines() if ln.lower().startswith("distance:"))
    poni.write_text(text.replace(line, "Distance: nan"))
    with pytest.raises(WorkflowError) as err:
        open_run(wf_for(copy, copy.root / "run2.zarr"))
    assert one_line(err) == f"inputs.poni: {poni} has Distance = nan: not a usable geometry"


def test_store_in_missing_folders_is_created_and_an_uncreatable_one_named(scan, tmp_path, monkeypatch):
    ctx = open_run(wf_for(scan, tmp_path / "a" / "b" / "run.zarr"))
    assert store.read_attrs(ctx.store_path)["template_complete"]

    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(WorkflowError) as err:
        open_run(wf_for(scan, tmp_path / "ro" / "sub" / "run.zarr"))
    assert one_line(err) == f"store.path: cannot create {tmp_path / 'ro' / 'sub' / 'run.zarr'}: Permission denied"


def test_a_bad_frame_is_named_once_in_the_log(scan, tmp_path, caplog):
    from xrdct_dask.integrate.files import read_payload
    from xrdct_dask.io.source import CbfTemplate

    bad = tmp_path / "frame0.cbf"
    bad.write_bytes(scan.frame_path(0).read_bytes()[:3000])
    with caplog.at_level(logging.WARNING, logger="xrdct_dask"):
        status = read_payload(CbfTemplate(str(tmp_path / "frame{index}.cbf")), 0, (1, 1))[1]
        assert status in (FrameStatus.TRUNCATED, FrameStatus.CORRUPT_HEADER)
    assert caplog.records and all(r.getMessage().count(str(bad)) == 1 for r in caplog.records)


def test_store_write_failure_gives_no_worker_traceback(scan, tmp_path, monkeypatch, caplog):
    """The one-line RunStopped comes alone: the worker's "Compute Failed" block is left out for it."""
    import zarr.storage._local as local
    from distributed import LocalCluster

    from xrdct_dask.runs.execute import RunStopped

    real_put = local._put

    def full_disk(path, value, exclusive=False):
        if "reduced" in str(path) and "/c/" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_put(path, value, exclusive)

    wf = wf_for(scan, tmp_path / "run.zarr")
    open_run(wf)
    monkeypatch.setattr(local, "_put", full_disk)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc:
        with caplog.at_level(logging.WARNING), pytest.raises(RunStopped) as err:
            run(wf, cluster=lc, progress=False, summary=False)
        wait_until(lambda: not any(w.state.executing_count for w in lc.workers.values()), 60,
                   "the tasks running when the run stopped")
    assert "No space left on device" in one_line(err)
    assert "Compute Failed" not in caplog.text


@pytest.mark.slow  # a whole run or two: 13-22 s
@pytest.mark.timeout(180)
def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path):
    from xrdct_dask.simulate import simulate_scan

    sc = simulate_scan(tmp_path / "scan", nz=2, nomega=32, nx=16, seed=2)
    p = subprocess.Popen([sys.executable, "-m", "xrdct_dask.cli", "run", str(sc.workflow), "--set",
                          "store.omega_chunk=1", "--set", "compute.n_workers=2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=interruptible)
    wait_until(lambda: (sc.root / "run.zarr" / "tasks" / "integrate" / "c").exists(), 120, "a block marked done",
               poll_s=0.1)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted: what is marked done is kept; run the same command to resume"]


# ------------------------------------------------------------------------------------------
# 8. a rerun reports the whole run; pictures named after their stores
# ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a whole run or two: 13-22 s
def test_rerun_of_a_complete_store_reports_the_whole_run(scan, cluster, tmp_path):
    from PIL import Image

    first = run(wf_for(scan, tmp_path / "a.zarr"), cluster=cluster, progress=False)
    again = run(wf_for(scan, tmp_path / "a.zarr"), cluster=cluster, progress=False)
    info = store.read_attrs(again)["run_summary"]
    assert info["frames"] == 64 and info["frames_this_run"] == 0 and len(info["runs"]) == 2
    assert info["frame_status"] == {"OK": 64}
    other = run(wf_for(scan, tmp_path / "b.zarr"), cluster=cluster, progress=False)
    pictures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pictures == ["a-summary.png", "b-summary.png"] and first == again != other
    with Image.open(tmp_path / "a-summary.png") as im:
        assert im.text["Software"] == "xrdct-dask summary"
    (tmp_path / "c-summary.png").write_bytes(b"a user's own file")
    run(wf_for(scan, tmp_path / "c.zarr"), cluster=cluster, progress=False)
    assert (tmp_path / "c-summary.png").read_bytes() == b"a user's own file"


# ------------------------------------------------------------------------------------------
# 9. missing or unreadable frames are read again by a rerun
# ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_frames_missing_at_first_are_read_when_they_arrive(scan, cluster, tmp_path_factory):
    from xrdct_dask.testing import corrupt

    copy = corrupt.copy_scan(scan, tmp_path_factory.mktemp("late") / "scan")
    away = copy.root / "away"
    away.mkdir()
    late = [3, 40, 41]
    for i in late:
        copy.frame_path(i).rename(away / copy.frame_path(i).name)
    path = go(copy, copy.root / "run.zarr", cluster)
    red = zarr.open_group(str(path / "reduced"), mode="r")
    assert (red["frame_status"][...] == FrameStatus.MISSING).sum() == 3
    recon_before = zarr.open_array(str(path / "recon" / "intensity"), mode="r")[...]
    for i in late:
        (away / copy.frame_path(i).name).rename(copy.frame_path(i))
    path = go(copy, path, cluster)
    assert (red["frame_status"][...] == FrameStatus.OK).all()
    assert store.task_state(path).complete
    ran = store.read_attrs(path)["run_summary"]["tasks"]
    assert ran["integrate"]["executed"] == 2  # the two blocks holding frames 3 and 40, 41
    assert ran["recon"]["executed"] > 0
    assert not np.array_equal(zarr.open_array(str(path / "recon" / "intensity"), mode="r")[...], recon_before)
    again = go(copy, path, cluster)  # nothing missing any more: nothing redone
    assert store.read_attrs(again)["run_summary"]["tasks"]["integrate"]["executed"] == 0


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_io_errors_are_retried_and_truly_missing_frames_are_not(scan, cluster, tmp_path):
    from xrdct_dask.io.status import status_of as _status_of
    from xrdct_dask.runs.open import reopen_retried

    assert _status_of(OSError(errno.EIO, "Input/output error")) == FrameStatus.IO_ERROR
    path = go(scan, tmp_path / "run.zarr", cluster)
    ctx = open_run(wf_for(scan, path))
    assert reopen_retried(ctx, store.task_state(path)) == (0, 0)
    status = store.open_array(path, "reduced/frame_status")
    st = status[0]
    st[6, 2] = FrameStatus.IO_ERROR  # omega row 6: the second block of 4 rows
    st[1, 1] = FrameStatus.MISSING  # its file exists: retried too
    status[0] = st
    assert reopen_retried(ctx, store.task_state(path)) == (2, 2)
    state = store.task_state(path)
    assert (state["integrate"].tolist() == [[False, False]] and np.isnan(state.value("center")[0])
            and not state["recon"].any())
    go(scan, path, cluster)
    assert (store.open_array(path, "reduced/frame_status", "r")[...] == FrameStatus.OK).all()
