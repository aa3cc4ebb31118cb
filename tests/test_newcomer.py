"""What a newcomer's first week finds (issue 25, items 1-9): set-up that asks before touching the
system, Ctrl-C at any moment, honest messages on rerun and on a scan of the wrong size, the live
example without a race, a plan quoting this machine's rate, notebooks with their outputs, the
small ones, and ready workflows.

Each test states the behaviour it holds and fails on the code before the fix.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xrdct_dask import store
from xrdct_dask.config import WorkflowError, load_workflow
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.runs.open import open_run
from xrdct_dask.runs.service import interruptible  # SIGINT default in the child, as in a terminal
from xrdct_dask.view.console import console

from .test_safety import wf_for  # the scan's workflow with its store elsewhere, blocks of 4 angles

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 2-slice scan of 2 x 8 x 8 frames of the small detector (CBF, scan file)."""
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("newcomer") / "scan", nz=2, nomega=8, nx=8, seed=4)


class Said(logging.Handler):
    """The messages a logger gave, whatever else handles them (the console logger stops
    propagating once the command line has shown its messages in this process)."""

    def __init__(self, logger: logging.Logger):
        super().__init__(logging.DEBUG)
        self.logger, self.records = logger, []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


# ------------------------------------------------------------------------------------------
# 1. make test touches nothing outside the checkout; SLURM only when asked
# ------------------------------------------------------------------------------------------
def _make(*args, env=None) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    stamp = Path(sys.prefix) / ".installed"  # the venv running these tests stands for .venv
    return subprocess.run(["make", "--no-print-directory", f"VENV={sys.prefix}", "-o", str(stamp), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_make_test_starts_slurm_only_when_asked():
    """``make test`` (dry run) starts no SLURM and installs nothing unless CI is set; with CI set,
    or ``make test-slurm``, it runs cluster/local-slurm/start.sh first."""
    plain = {k: v for k, v in os.environ.items() if k != "CI"}
    dry = _make("-n", "test", env=plain)
    assert dry.returncode == 0, dry.stderr
    assert "local-slurm/start.sh" not in dry.stdout and "apt-get" not in dry.stdout and "pytest" in dry.stdout
    for args, env in ((["-n", "test"], {**plain, "CI": "1"}), (["-n", "test-slurm"], plain)):
        dry = _make(*args, env=env)
        assert dry.returncode == 0 and "local-slurm/start.sh" in dry.stdout, (args, dry.stdout, dry.stderr)


def test_ci_runs_make_test_with_ci_set(tmp_path):
    """.ci/run runs the README's ``make test`` with CI set, so CI keeps running the SLURM tests,
    then the slow end-to-end tests (``make test-slow``), so CI runs every test."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "make").write_text(f'#!/bin/sh\necho "CI=$CI $*" >> {tmp_path / "called"}\n')
    (fake / "make").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env, check=True, timeout=60)
    called = (tmp_path / "called").read_text().splitlines()
    assert [c for c in called if "test" in c] == ["CI=1 test", "CI=1 test-slow"], called


@pytest.mark.slow  # a whole (tiny) demo through make: ~20-40 s
def test_make_demo_writes_nothing_outside_the_checkout(tmp_path):
    """``make demo`` with an empty HOME leaves HOME empty: the plan cache, matplotlib's font cache
    and every temporary file go under build/ of the checkout; the run ends with a clear last line."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "XRDCT_", "MPL", "TMPDIR", "IPYTHON"))}
    env |= {"HOME": str(home), "PYTHONPATH": str(REPO)}
    r = _make("demo", f"DEMO_DIR={tmp_path / 'demo'}", "DEMO_ARGS=--nz 1 --nomega 6 --nx 6", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
    assert r.stdout.strip().splitlines()[-1].startswith("make demo: done")
    assert any((REPO / "build" / "home" / "cache" / "xrdct-dask").iterdir())  # the plan, kept in the checkout


# ------------------------------------------------------------------------------------------
# 2. Ctrl-C at any moment
# ------------------------------------------------------------------------------------------
INTERRUPTED = "interrupted: what is marked done is kept; run the same command to resume"


def _a_worker_spawned(p) -> bool:
    """A worker process (a multiprocessing child) of the client ``p`` exists: its workers are starting."""
    import psutil

    try:
        return any("--multiprocessing-fork" in c.cmdline() for c in psutil.Process(p.pid).children())
    except psutil.Error:  # a child gone while looked at
        return False


def test_no_import_takes_ctrl_c_away():
    """Every module of the package imported, Ctrl-C is still Python's KeyboardInterrupt.
    dask_jobqueue's runner module sets SIGINT to ``sys.exit()`` when imported: a Ctrl-C during the
    stages then ended ``xrdct run`` with exit status 0 and no message, as if it had finished."""
    code = textwrap.dedent("""
        import importlib, pkgutil, signal, xrdct_dask
        for m in pkgutil.walk_packages(xrdct_dask.__path__, "xrdct_dask."):
            if "cupy" not in m.name and "astra" not in m.name:
                importlib.import_module(m.name)
        import dask_jobqueue.runner
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.getsignal(signal.SIGINT)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=interruptible)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow  # a real `xrdct run` started and interrupted: ~10-20 s each
@pytest.mark.timeout(300)
@pytest.mark.parametrize("moment", ["workers-starting", "stages-running"])
def test_ctrl_c_at_any_moment_stops_the_run_with_one_line(scan, tmp_path, moment):
    """A terminal's Ctrl-C (SIGINT to the whole process group) while the local workers are being
    started (the first worker process exists), or once the stages run (the dashboard line), stops
    ``xrdct run`` with the "interrupted ... resume" line and exit 130, and no process prints a
    traceback.  Before the fix SIGINT was ignored by the client while its workers started: such a
    Ctrl-C was lost, and the run went on to exit 0."""
    cmd = [sys.executable, "-m", "xrdct_dask.cli", "run", str(scan.workflow), "--set",
           f"store.path={tmp_path / 'run.zarr'}", "--set", "store.omega_chunk=1", "--set", "compute.n_workers=2"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                         preexec_fn=interruptible)
    seen = []
    try:
        if moment == "workers-starting":
            while not _a_worker_spawned(p):  # polled while waiting on the process itself
                try:
                    p.wait(timeout=0.02)
                    pytest.fail(f"the run ended (exit {p.returncode}) before a worker started: {p.stdout.read()}")
                except subprocess.TimeoutExpired:
                    pass
        else:
            for out in p.stdout:  # wait on the line itself
                seen.append(out)
                if out.startswith("dask dashboard:"):
                    break
            else:
                pytest.fail(f"the run ended before its dashboard line:\n{''.join(seen)[-3000:]}")
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        rest, _ = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    text = "".join(seen) + rest
    lines = [t for t in text.splitlines() if t.strip()]
    assert p.returncode == 130, text[-3000:]
    assert lines[-1] == INTERRUPTED and "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]


# ------------------------------------------------------------------------------------------
# 3. a rerun warns only when something is redone, as a console message
# ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_rerun_says_nothing_when_no_frame_is_read_again_and_one_line_when_some_are(scan, tmp_path):
    """Resuming a store where nothing was missing: no "0 frames ... read again" warning (the old
    code tested the tuple ``(0, 0)`` for truth).  Where a frame flagged missing is there now, one
    console line says how many frames and blocks are redone, and no raw ``WARNING module:`` log."""
    wf = wf_for(scan, tmp_path / "run.zarr")
    open_run(wf)  # the template, no task done
    prepare_log = logging.getLogger("xrdct_dask.runs")  # open, inputs, scanlayout
    with Said(console) as said, Said(prepare_log) as raw:
        open_run(wf)
    assert "read again" not in said.text + raw.text
    # block 0 of slice 1 done, with one of its frames flagged missing while its file is there now
    status = store.open_array(tmp_path / "run.zarr", f"{store.REDUCED}/frame_status")
    status[1, 2, 3] = FrameStatus.MISSING
    store.mark_done(tmp_path / "run.zarr", "integrate", (1, 0))
    with Said(console) as said, Said(prepare_log) as raw:
        open_run(wf)
    assert "read again" not in raw.text
    lines = [r for r in said.records if "read again" in r.getMessage()]
    assert len(lines) == 1 and "1 frames" in lines[0].getMessage() and "1 blocks" in lines[0].getMessage()
    assert store.task_state(tmp_path / "run.zarr")["integrate"][1, 0] == 0  # reopened


# ------------------------------------------------------------------------------------------
# 4. a scan of the wrong size is told rightly
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["auto", "nominal"])
def test_a_workflow_larger_than_the_scan_file_is_refused_saying_so(scan, tmp_path, positions):
    """``scan.nz=3`` on a 2-slice scan whose scan file places the frames: refused before anything
    is computed, with what is wrong ("the scan file has 2 slices, the workflow 3") and the fix,
    whether the positions are measured or nominal (before: "no frame measured at 1 grid lines",
    or, nominal, a run that counted the missing slice as integrated)."""
    wf = wf_for(scan, tmp_path / "run.zarr", **{"scan.nz": 3, "scan.positions": positions})
    with pytest.raises(WorkflowError) as err:
        open_run(wf)
    msg = str(err.value)
    assert msg.startswith("scan.nz: the scan file has 2 slices, the workflow 3: set scan.nz=2") and "\n" not in msg
    assert "--allow-missing" in msg and not (tmp_path / "run.zarr").exists()


def test_missing_slices_allowed_take_the_measured_grids_place(scan, tmp_path):
    """Allowed (``scan.allow_missing``), the missing slice is created with no frame placed in it and
    its z where the measured slices' step puts it (z_mm 0, 1 measured -> 2); one console line says so."""
    wf = wf_for(scan, tmp_path / "run.zarr", **{"scan.nz": 3, "scan.allow_missing": True})
    with Said(console) as said:
        ctx = open_run(wf)
    assert "the scan file has 2 slices, the workflow 3: their frames are flagged missing" in said.text
    np.testing.assert_allclose(store.open_array(ctx.store_path, "z", "r")[:], [0.0, 1.0, 2.0])
    index = store.open_array(ctx.store_path, f"{store.REDUCED}/frame_index", "r")
    assert (index[2] == -1).all() and (index[:2] >= 0).all()


@pytest.mark.slow  # two small runs on the module's cluster: ~15-30 s
def test_a_whole_slice_missing_is_never_counted_integrated_and_exits_nonzero(scan, cluster, tmp_path):
    """Frames named by a template only (no scan file), ``scan.nz=3`` on 2 slices of files: the
    run integrates the 128 frames there are and says so (not 192), flags the 64 others missing,
    names the empty slice, and ``xrdct run`` exits 1 with what is wrong ("the frames make 2 slices,
    the workflow 3") unless ``--allow-missing``."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    args = ["run", str(scan.workflow), "--scheduler-address", cluster.scheduler_address,
            "--set", f"store.path={tmp_path / 'run.zarr'}", "--set", "scan.nz=3", "--set", "inputs.scan_file=null",
            "--set", "inputs.monitor=null", "--set", "store.omega_chunk=8"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "128 frames integrated in" in r.output and "192 frames integrated" not in r.output
    assert "frames flagged: missing 64" in r.output
    assert "error: the frames make 2 slices, the workflow 3 (scan.nz): every frame of slice 2 is missing" in r.output
    info = store.read_attrs(tmp_path / "run.zarr")["run_summary"]
    assert (info["frames_this_run"], info["frames"], info["missing_slices"]) == (128, 128, [2])
    assert info["frame_status"] == {"OK": 128, "MISSING": 64}
    again = CliRunner().invoke(app, args + ["--allow-missing"])  # resumes the same store: nothing to do
    assert again.exit_code == 0 and "slices with no frame (every frame missing): 2" in again.output, again.output
    shown = CliRunner().invoke(app, ["info", str(tmp_path / "run.zarr")])  # item 8: the store at a glance
    assert shown.exit_code == 0 and "frames: 128 integrated, flagged: missing 64" in shown.output
    assert "stages: integrate 3/3, center 3/3, recon" in shown.output and "(complete)" in shown.output
    assert shown.output.count("run finished") == 2


# ------------------------------------------------------------------------------------------
# 5. the README's live example: watch started before the acquisition writes its workflow
# ------------------------------------------------------------------------------------------
def test_watch_waits_for_its_workflow_within_the_idle_timeout(tmp_path):
    """No workflow file within ``--idle-timeout``: one line naming it and the time waited, exit 2
    (before: "workflow file not found" at once, whatever the timeout)."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    r = CliRunner().invoke(app, ["watch", str(tmp_path / "acq" / "workflow.yaml"), "--idle-timeout", "0.3"])
    assert r.exit_code == 2
    assert f"error: {tmp_path / 'acq' / 'workflow.yaml'}: no workflow file came in 0.3 s" in r.output


@pytest.mark.slow  # a watch subprocess following a simulated acquisition: ~20-40 s
@pytest.mark.timeout(300)
def test_watch_started_before_simulate_rate_follows_it(cluster, tmp_path):
    """The README's example in its racy order: ``xrdct watch acq/workflow.yaml`` is already
    waiting (its "waiting for" line) when ``xrdct simulate acq --rate 50`` starts; the simulator
    publishes the workflow (after its PONI, mask, scan file and an empty frames/) only when the
    acquisition starts, the watch follows it to the end (exit 0, every task done) and the
    simulator leaves no staging folder."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    acq = tmp_path / "acq"
    p = subprocess.Popen([sys.executable, "-m", "xrdct_dask.cli", "watch", str(acq / "workflow.yaml"),
                          "--idle-timeout", "60", "--scheduler-address", cluster.scheduler_address, "--png-every", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for out in p.stdout:  # the watch is up and waiting for the workflow
            seen.append(out)
            if out.startswith("waiting for"):
                break
        else:
            pytest.fail(f"the watch did not wait for its workflow:\n{''.join(seen)}")
        r = CliRunner().invoke(app, ["simulate", str(acq), "--nz", "1", "--nomega", "4", "--nx", "4", "--rate", "50"])
        assert r.exit_code == 0, r.output
        rest, _ = p.communicate(timeout=200)
    finally:
        if p.poll() is None:
            p.kill()
    text = "".join(seen) + rest
    assert p.returncode == 0, text
    assert f"store: {acq / 'run.zarr'}" in text and store.task_state(acq / "run.zarr").complete
    assert sorted(e.name for e in acq.iterdir() if e.name.startswith(".xrdct-acquisition")) == []


# ------------------------------------------------------------------------------------------
# 6. the plan quotes the rate of the hardware the run will have
# ------------------------------------------------------------------------------------------
def test_plan_quotes_the_rate_of_the_hardware_the_run_will_have(scan, monkeypatch):
    """On a machine without a GPU the run integrates on its cores: the plan's rate is cores x the
    per-core figure (2 x 50 = 100 frames/s), bound by the CPU cores, while the GPU figure is still
    quoted as a GPU's (before: "10,000 frames/s (bound by the GPUs)" here).  With 2 GPUs: 2 x
    10,000.  For a named cluster profile (slurm-gpu, 4 jobs of 1 GPU): 40,000 frames/s, with this
    machine's 100 beside it, since they differ.  Exact arithmetic."""
    from typer.testing import CliRunner

    import xrdct_dask.runs.plan as cluster_mod  # where the plan looks up this machine's GPUs
    from xrdct_dask.cli import app
    from xrdct_dask.runs.plan import format_plan, plan_workflow

    wf = load_workflow(scan.workflow, {"compute.n_workers": 2})
    rates = {"gpu_frames_per_s": 10_000.0, "cpu_frames_per_s_per_core": 50.0}
    monkeypatch.setattr(cluster_mod, "gpu_count", lambda: 0)
    p = plan_workflow(wf, **rates)
    assert (p.frames_per_s, p.bound_by, p.gpus) == (100.0, "CPU cores", 0)
    assert p.wall_hours == pytest.approx(p.frames / 100.0 / 3600, rel=1e-12)
    text = format_plan(p)
    assert "the run integrates on this machine (no GPU, 2 CPU cores): 100 frames/s" in text
    assert "bound by the CPU cores" in text and "bound by the GPUs" not in text
    assert "at 10,000 frames/s per GPU" in text
    monkeypatch.setattr(cluster_mod, "gpu_count", lambda: 2)
    p = plan_workflow(wf, **rates)
    assert (p.frames_per_s, p.bound_by, p.gpus) == (20_000.0, "GPUs", 2)
    monkeypatch.setattr(cluster_mod, "gpu_count", lambda: 0)
    p = plan_workflow(wf, **rates, cluster="slurm-gpu", jobs=4)
    assert (p.frames_per_s, p.bound_by, p.gpus) == (40_000.0, "GPUs", 4)
    assert [(h["where"], h["frames_per_s"]) for h in p.hardware][1] == ("this machine", 100.0)
    r = CliRunner().invoke(app, ["plan", str(scan.workflow), "--set", "compute.n_workers=2", "--cluster",
                                 "slurm-gpu", "--jobs", "4", "--gpu-frames-per-s", "10000",
                                 "--cpu-frames-per-s-per-core", "50"])
    assert r.exit_code == 0, r.output
    assert "the run integrates on cluster profile slurm-gpu, 4 jobs of 8 cores and 1 GPU (4 GPUs, 32 CPU cores): " \
           "40,000 frames/s" in r.output and "and this machine (no GPU, 2 CPU cores): 100 frames/s" in r.output
    bad = CliRunner().invoke(app, ["plan", str(scan.workflow), "--cluster", "nope"])
    assert bad.exit_code == 2 and "cluster profile 'nope' not found" in bad.output


# ------------------------------------------------------------------------------------------
# 8. small ones
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, meant", [({"integrate": {"npt_radd": 100}}, "integrate.npt_rad"),
                                          ({"integrate": {"nz": 3}}, "scan.nz"),
                                          ({"intgrate": {"npt_rad": 100}}, "integrate"),
                                          ({"inputs": {"positioners": {"omgea": "rot"}}}, "inputs.positioners.omega")])
def test_a_mistyped_key_gets_a_did_you_mean(scan, tmp_path, given, meant):
    """A key one typo away from a known one (difflib, same section), or a key of another section,
    is named in the one-line error: ``did you mean integrate.npt_rad?``."""
    import yaml

    raw = yaml.safe_load(scan.workflow.read_text())
    for section, keys in given.items():
        raw[section] = {**raw.get(section, {}), **keys}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(WorkflowError) as err:
        load_workflow(path)
    assert f"unknown key (did you mean {meant}?)" in str(err.value) and "\n" not in str(err.value)


def test_a_mistyped_set_key_gets_a_did_you_mean(scan):
    with pytest.raises(WorkflowError, match=r"--set integrate\.nptrad=5: .*did you mean integrate\.npt_rad\?"):
        load_workflow(scan.workflow, {"integrate.nptrad": 5})
    with pytest.raises(WorkflowError) as err:  # nothing close: no guess
        load_workflow(scan.workflow, {"integrate.zzzz": 5})
    assert "did you mean" not in str(err.value)


def test_export_refusal_speaks_the_callers_spelling(scan, tmp_path):
    """An existing OUT.h5 is refused in one spelling: ``overwrite=True`` from Python, ``--overwrite``
    on the command line, never both in one message."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app
    from xrdct_dask.export import ExportError, export_nexus

    path = open_run(wf_for(scan, tmp_path / "run.zarr")).store_path
    out = tmp_path / "out.h5"
    out.write_bytes(b"an earlier file")
    with pytest.raises(ExportError) as err:
        export_nexus(path, out)
    assert "overwrite=True" in str(err.value) and "--overwrite" not in str(err.value)
    r = CliRunner().invoke(app, ["export", str(path), str(out)])
    assert r.exit_code == 2 and "pass --overwrite" in r.output and "overwrite=True" not in r.output
    assert out.read_bytes() == b"an earlier file"


def test_xrdct_info_summarises_a_store(scan, tmp_path):
    """``xrdct info RUN.zarr``: the workflow (scan shape, digests), every input with its sha256 (as
    hashlib computes it), the frames integrated and flagged, the stages done from the done-markers,
    and the versions; ``--json`` the same as data, ``--workflow`` the stored workflow; a folder
    that is not a store is one line, exit 2.  Nothing is written."""
    import hashlib
    import json

    import zarr
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    path = open_run(wf_for(scan, tmp_path / "run.zarr")).store_path
    status = store.open_array(path, f"{store.REDUCED}/frame_status")
    status[0, :4] = FrameStatus.OK  # block (0, 0) done: 30 frames OK, 2 flagged
    status[0, 1, 2], status[0, 3, 5] = FrameStatus.MISSING, FrameStatus.TRUNCATED
    store.mark_done(path, "integrate", (0, 0))
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    r = CliRunner().invoke(app, ["info", str(path)])
    assert r.exit_code == 0, r.output
    poni_sha = hashlib.sha256(scan.poni.read_bytes()).hexdigest()
    assert f"inputs.poni: {scan.poni} (sha256 {poni_sha[:16]})" in r.output
    assert "workflow: scan 2 x 8 x 8 (z x omega x x), 1000 bins in q_nm^-1" in r.output
    assert "frames: 30 integrated, flagged: missing 1, truncated 1, 96 not integrated yet" in r.output
    assert "stages: integrate 1/4, center 0/2" in r.output and "the same `xrdct run` resumes it" in r.output
    assert f"zarr {zarr.__version__}" in r.output
    data = json.loads(CliRunner().invoke(app, ["info", str(path), "--json"]).output)
    assert data["stages"]["integrate"] == {"done": 1, "total": 4} and (
        data["inputs"]["inputs.poni"]["sha256"] == poni_sha)
    assert data["frames_flagged"] == {"MISSING": 1, "TRUNCATED": 1} and data["frames_integrated"] == 30
    wf = CliRunner().invoke(app, ["info", str(path), "--workflow"]).output
    assert "npt_rad: 1000" in wf and "nomega: 8" in wf
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()} == before
    bad = CliRunner().invoke(app, ["info", str(scan.root)])
    assert bad.exit_code == 2 and bad.output.strip() == f"error: {scan.root}: not a zarr store"


def test_a_built_wheel_is_ignored_by_git():
    """``pip wheel --no-deps .`` writes ``xrdct_dask-<version>-py3-none-any.whl`` in the checkout."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for name in ("xrdct_dask-0.1.0-py3-none-any.whl", "dist/xrdct_dask-0.1.0-py3-none-any.whl"):
        r = subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO)
        assert r.returncode == 0, f"{name} is not ignored by .gitignore"


def test_readme_explains_the_real_data_tests():
    """Every test module that reads the real detector files (``shared_data_dir``, ``real_cbf``,
    ``SHARED_DATA``) is named in the README, with the variable that says where the files are."""
    import re

    users = sorted(p.name for p in (REPO / "tests").glob("test_*.py") if p.name != Path(__file__).name and
                   re.search(r"\b(shared_data_dir|real_cbf|SHARED_DATA)\b", p.read_text()))
    readme = (REPO / "README.md").read_text()
    assert users and "XRDCT_SHARED_DATA" in readme
    assert [u for u in users if f"tests/{u}" not in readme] == []


def test_simulating_again_over_a_scan_a_store_was_made_from_is_refused(tmp_path):
    """A simulated folder can be simulated again (its own files replaced) until a store records
    files of it as inputs: then the simulator refuses in one line naming the store (the store's
    recorded inputs would change under it), and ``xrdct simulate`` exits 2 having written nothing."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app
    from xrdct_dask.simulate import simulate_scan

    sc = simulate_scan(tmp_path / "sim", nz=1, nomega=4, nx=4, seed=1)
    sc = simulate_scan(tmp_path / "sim", nz=1, nomega=4, nx=4, seed=2)  # no store yet: allowed
    open_run(load_workflow(sc.workflow))
    before = {p: p.stat().st_mtime_ns for p in sc.root.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"holds run\.zarr, a store made from this simulated scan"):
        simulate_scan(tmp_path / "sim", nz=1, nomega=4, nx=4, seed=3)
    r = CliRunner().invoke(app, ["simulate", str(tmp_path / "sim"), "--nz", "1", "--nomega", "4", "--nx", "4"])
    assert r.exit_code == 2 and "run.zarr, a store made from this simulated scan" in r.output
    assert {p: p.stat().st_mtime_ns for p in sc.root.rglob("*") if p.is_file()} == before
