"""Crashes, bad data, resume, reprocess and planning.

The invariant behind every test here: the done-markers in ``tasks/`` are set only after a task's
chunks are whole, so a run stopped at any instant (client SIGKILLed, worker SIGKILLed, disk full)
and started again computes exactly the missing tasks and ends byte for byte equal to a run that
was never interrupted.  Bad frames never stop a run: each gets its status code and later stages
treat it as missing, so no NaN reaches recon/ or pdf/.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xrdct_dask import store
from xrdct_dask.config import WorkflowError, load_workflow
from xrdct_dask.io import CorruptFrameError, SizeMismatchError, TruncatedFrameError, decode_batch, pack_payloads
from xrdct_dask.io.cbf import parse_cbf
from xrdct_dask.io.status import FrameStatus, usable
from xrdct_dask.runs.execute import RunStopped, run
from xrdct_dask.store.viewcopy import layout_of, view_parts
from xrdct_dask.testing import corrupt
from xrdct_dask.testing.waits import wait_until

REPO = Path(__file__).resolve().parents[1]
OMEGA_CHUNK = 1  # one task per projection row: many small tasks, so a kill lands mid-run


# ------------------------------------------------------------------------------------------
# fixtures: one tiny scan, one cluster, one uninterrupted reference run
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("tiny"), nz=2, nomega=12, nx=10, seed=3)


def workflow_for(scan, path, **overrides):
    return load_workflow(scan.workflow, {"store.path": str(path), "store.omega_chunk": OMEGA_CHUNK, **overrides})


@pytest.fixture(scope="module")
def reference(tiny_scan, cluster, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "run.zarr"
    return run(workflow_for(tiny_scan, path), cluster=cluster, progress=False, summary=False)


def all_arrays(path) -> dict[str, zarr.Array]:
    out = {}

    def walk(group, prefix):
        for name, arr in group.arrays():
            out[prefix + name] = arr
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(path), mode="r"), "")
    return out


def assert_same_arrays(got, want, names=None):
    """Every array of ``want`` (or those named) exists in ``got`` with the same dtype, shape and bytes."""
    a, b = all_arrays(got), all_arrays(want)
    names = sorted(b) if names is None else names
    assert set(names) <= set(a), f"missing arrays: {sorted(set(names) - set(a))}"
    for n in names:
        x, y = a[n][...], b[n][...]
        assert (x.dtype, x.shape) == (y.dtype, y.shape), n
        if x.dtype.kind in "OT":  # strings (recon/slice_info): their bytes are pointers, compare the values
            assert x.tolist() == y.tolist(), n
            continue
        assert x.tobytes() == y.tobytes(), f"{n} differs in {np.count_nonzero(x != y)} elements"


def tasks_per_slice(path) -> int:
    """The tasks of one slice of the (complete) run at ``path``, every stage, from its done-markers."""
    state = store.task_state(path)
    nz = state["integrate"].shape[0]
    return sum(total for _, total in state.counts().values()) // nz


def executed(path) -> dict[str, dict]:
    return store.read_attrs(path)["run_summary"]["tasks"]


@pytest.mark.slow  # the reference run (module fixture, ~15 s) and runs of its own
def test_reference_run_is_complete_and_marked(reference):
    state = store.task_state(reference)
    assert state.complete
    views = 2 * len(view_parts(layout_of(reference)))  # the view copy: a task per shard and the sinogram
    assert state.counts() == {"integrate": (24, 24), "center": (2, 2), "recon": (8, 8), "pdf": (2, 2),
                              "view": (views, views)}
    assert store.read_attrs(reference)["stage_status"] == {"reduced": "done", "recon": "done", "pdf": "done",
                                                           "view": "done"}


# ------------------------------------------------------------------------------------------
# kill tests
# ------------------------------------------------------------------------------------------
def _done_files(path: Path, stage: str) -> int:
    top = path / store.TASKS / stage / "c"
    return sum(1 for _, _, files in os.walk(top) for f in files if not f.endswith(".partial")) if top.exists() else 0


@pytest.mark.slow  # the reference run (module fixture, ~15 s) and runs of its own
def test_client_sigkill_then_resume_is_byte_identical_and_runs_only_missing_tasks(tiny_scan, cluster, reference,
                                                                                tmp_path):
    """SIGKILL the CLI process once two integrate blocks are marked done; the workers it started
    die with it; a rerun skips exactly the marked tasks and ends byte-identical to the reference."""
    import psutil

    out = tmp_path / "killed.zarr"
    log = (tmp_path / "cli.log").open("w")
    cmd = [sys.executable, "-m", "xrdct_dask.cli", "run", str(tiny_scan.workflow), "--set", f"store.path={out}",
           "--set", f"store.omega_chunk={OMEGA_CHUNK}", "--set", "compute.n_workers=1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while _done_files(out, "integrate") < 2:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "no block was marked done within 120 s"
        time.sleep(0.005)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, "worker processes outlived their killed client"
    before = store.task_state(out).counts()
    assert 2 <= before["integrate"][0] < 24, before  # killed part-way, some work kept
    assert before["pdf"][0] < 2

    path = run(workflow_for(tiny_scan, out), cluster=cluster, progress=False, summary=False)
    ran = executed(path)
    for stage, (done, total) in before.items():
        assert ran[stage] == {"executed": total - done, "skipped": done}, stage
    assert_same_arrays(path, reference)
    assert set(all_arrays(path)) == set(all_arrays(reference))


@pytest.mark.slow  # the reference run (module fixture, ~15 s) and runs of its own
def test_worker_sigkilled_mid_run_in_waves_gives_identical_store(tiny_scan, cluster, reference, tmp_path):
    """A worker process SIGKILLed after writing a block but before reporting it: the nanny starts a
    new one, the scheduler reruns the lost task (rewriting identical chunks).  The run goes in
    waves of one slice (compute.max_tasks: twice a slice's tasks, and 2 more): the scheduler never
    holds more than that and the wave just finished, until its release reaches it."""
    flag = tmp_path / "killed.txt"
    held = []
    stop = threading.Event()
    bound = 2 * tasks_per_slice(reference) + 2

    def sample():
        while not stop.is_set():
            held.append(len(cluster.scheduler.tasks))
            time.sleep(0.01)

    with cluster.get_client() as client:
        client.register_plugin(corrupt.KillWorkerOnce(flag, after=2))
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            path = run(workflow_for(tiny_scan, tmp_path / "run.zarr", **{"compute.max_tasks": bound}), cluster=cluster,
                       progress=False, summary=False)
        finally:
            stop.set()
            t.join()
            client.unregister_worker_plugin(corrupt.KillWorkerOnce.name)
        client.wait_for_workers(2, timeout=60)
    assert flag.exists(), "no worker was killed"
    assert "integrate" in flag.read_text()
    assert_same_arrays(path, reference)
    assert 0 < max(held) <= bound + tasks_per_slice(reference), (max(held), bound)


@pytest.mark.slow  # the reference run (module fixture, ~15 s) and runs of its own
def test_full_disk_stops_with_a_clear_message_and_only_whole_blocks_marked(tiny_scan, reference, tmp_path,
                                                                          monkeypatch):
    """After 40 chunk writes (about three blocks) the disk is 'full' (every write: ENOSPC): the run stops with a
    RunStopped naming the cause; every block marked done is byte-equal to the reference, the one
    being written is not marked; with space back, a rerun completes the identical store."""
    import zarr.storage._local as local
    from distributed import LocalCluster

    real_put = local._put
    calls = {"n": 0}

    def full_disk_put(path, value, exclusive=False):
        if "reduced" in str(path) and "/c/" in str(path):
            calls["n"] += 1
        if calls["n"] > 40:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_put(path, value, exclusive)

    out = tmp_path / "full.zarr"
    wf = workflow_for(tiny_scan, out)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc:
        from xrdct_dask.runs.open import open_run

        open_run(wf)  # the template fits; the disk fills during compute
        monkeypatch.setattr(local, "_put", full_disk_put)
        with pytest.raises(RunStopped) as err:
            run(wf, cluster=lc, progress=False, summary=False)
        # tasks already running when the run stopped go on (and fail: the disk is still full)
        wait_until(lambda: not any(w.state.executing_count for w in lc.workers.values()), 60,
                   "the tasks running when the run stopped")
        monkeypatch.setattr(local, "_put", real_put)
        msg = str(err.value)
        assert "No space left on device" in msg and "rerun the same command to resume" in msg and "\n" not in msg
        state = store.task_state(out)
        assert 0 < state["integrate"].sum() < state["integrate"].size
        ref_i = zarr.open_array(str(reference / "reduced" / "intensity"), mode="r")
        got_i = zarr.open_array(str(out / "reduced" / "intensity"), mode="r")
        for z, b in zip(*np.nonzero(state["integrate"])):
            np.testing.assert_array_equal(got_i[z, b], ref_i[z, b])
        path = run(wf, cluster=lc, progress=False, summary=False)
    assert_same_arrays(path, reference)
    assert executed(path)["integrate"]["executed"] == 24 - int(state["integrate"].sum())


def test_unwritable_store_location_is_one_line_error_before_compute(tiny_scan, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkflowError) as err:
        run(workflow_for(tiny_scan, blocker / "run.zarr"), progress=False)
    assert "store.path: cannot create" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow  # the reference run (module fixture, ~15 s) and runs of its own
def test_existing_store_of_other_work_is_refused_naming_the_change(tiny_scan, reference):
    from xrdct_dask.runs.open import open_run

    with pytest.raises(FileExistsError, match=r"changed: integrate.npt_rad\)"):
        open_run(workflow_for(tiny_scan, reference, **{"integrate.npt_rad": 500}))
    # other workers or another path are not other work: a rerun of a finished store builds nothing
    ctx = open_run(workflow_for(tiny_scan, reference, **{"compute.n_workers": 7}))
    from xrdct_dask.pipeline.graph import build_graph

    assert all(not v for v in build_graph(ctx, done=store.task_state(reference)).values())


def test_store_left_while_preparing_is_recreated_not_resumed(tiny_scan, tmp_path):
    """A run killed while writing the template (no template_complete mark) starts afresh."""
    from xrdct_dask.runs.open import open_run

    wf = workflow_for(tiny_scan, tmp_path / "run.zarr")
    open_run(wf)
    stray = tmp_path / "run.zarr" / "tasks" / "integrate" / "c" / "0" / "0"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left by a killed run")
    root = zarr.open_group(str(tmp_path / "run.zarr"), mode="r+")
    del root.attrs["template_complete"]
    open_run(wf)
    assert not stray.exists() and store.task_state(tmp_path / "run.zarr").counts()["integrate"] == (0, 24)


def test_cli_expands_quoted_globs_of_runs(tmp_path):
    from xrdct_dask.cli import _expand_runs

    for name in ("a", "b"):
        (tmp_path / name / "run.zarr").mkdir(parents=True)
    assert _expand_runs([f"{tmp_path}/*/run.zarr", "x.zarr"]) == [tmp_path / "a" / "run.zarr",
                                                                  tmp_path / "b" / "run.zarr", Path("x.zarr")]


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corrupted(tiny_scan, cluster, tmp_path_factory):
    scan = corrupt.copy_scan(tiny_scan, tmp_path_factory.mktemp("bad") / "scan")
    c = corrupt.corrupt_scan(scan, seed=11)
    path = run(workflow_for(scan, scan.root / "run.zarr", **c.overrides), cluster=cluster, progress=False,
               summary=False)
    return scan, c, path


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_every_corruption_gets_its_status_and_the_run_finishes(corrupted):
    scan, c, path = corrupted
    assert set(c.counts()) == {FRAME_KIND.name for FRAME_KIND in
                               list(corrupt.FRAME_KINDS.values()) + list(corrupt.SCAN_KINDS.values())}
    status = zarr.open_array(str(path / "reduced" / "frame_status"), mode="r")[...]
    ok = zarr.open_array(str(path / "reduced" / "frame_ok"), mode="r")[...]
    want = np.zeros_like(status)
    for p, s in c.expected.items():
        want[p] = s
    np.testing.assert_array_equal(status, want)
    np.testing.assert_array_equal(ok, usable(want))
    intensity = zarr.open_array(str(path / "reduced" / "intensity"), mode="r")[...]
    assert np.isnan(intensity[~ok]).all() and np.isfinite(intensity[ok]).all()
    summary = store.read_attrs(path)["run_summary"]["frame_status"]
    assert summary == {"OK": int((want == 0).sum()), **c.counts()}
    assert store.task_state(path).complete


def test_no_nan_reaches_recon_or_pdf(corrupted):
    _, _, path = corrupted
    for name in ("recon/intensity", "pdf/G"):
        assert np.isfinite(zarr.open_array(str(path / name), mode="r")[...]).all(), name


def test_duplicate_and_out_of_order_frames_land_where_the_scan_file_says(corrupted):
    """The pattern at each re-placed point is its frame's, integrated with that frame's monitor."""
    from xrdct_dask.io import read_cbf_payload
    from xrdct_dask.pipeline.integrator import integrator_for

    scan, c, path = corrupted
    wf = load_workflow(scan.workflow, {"store.path": str(path), **c.overrides})
    integ = integrator_for(wf)
    ref_monitor = store.read_attrs(path)["monitor_reference"]
    monitor = np.loadtxt(scan.monitor)
    index = zarr.open_array(str(path / "reduced" / "frame_index"), mode="r")
    intensity = zarr.open_array(str(path / "reduced" / "intensity"), mode="r")
    for p, s in c.expected.items():
        if s not in (FrameStatus.DUPLICATE, FrameStatus.OUT_OF_ORDER):
            continue
        i = int(index[p])
        assert i in c.indices["duplicate" if s == FrameStatus.DUPLICATE else "out_of_order"]
        res, st_ = integ.integrate_payloads([read_cbf_payload(scan.frame_path(i))], monitor=[monitor[i] / ref_monitor])
        assert st_.tolist() == [0]
        # the same frame and monitor; batches of 1 vs 32 frames round float32 sums differently
        np.testing.assert_allclose(intensity[p], res.intensity[0], rtol=1e-6)
        other = [j for j in c.indices["out_of_order"] if j != i] if s == FrameStatus.OUT_OF_ORDER else []
        for j in other:  # the frame the scan arithmetic would have put here is another pattern
            wrong, _ = integ.integrate_payloads([read_cbf_payload(scan.frame_path(j))], monitor=[1.0])
            assert np.abs(wrong.intensity[0] - intensity[p]).max() > 1e-2 * intensity[p].max()


def test_nan_and_inf_in_dark_and_flat_mask_those_pixels(tiny_scan, tmp_path):
    """Non-finite dark/flat pixels (and a zero flat) are masked: the result equals masking them."""
    import fabio

    from xrdct_dask.integrate import Integrator
    from xrdct_dask.io import read_frame

    scan = corrupt.copy_scan(tiny_scan, tmp_path / "scan")
    c = corrupt.Corruption()
    ov = corrupt._broken_dark_flat(scan, np.random.default_rng(5), c)
    dark = fabio.open(ov["inputs.dark"]).data.astype(np.float64)
    flat = fabio.open(ov["inputs.flat"]).data.astype(np.float64)
    mask = fabio.open(str(scan.mask)).data != 0
    frames = np.stack([read_frame(scan.frame_path(i)) for i in (0, 5, 77)])
    broken = Integrator(scan.poni, frames.shape[1:], 300, mask=mask, dark=dark, flat=flat, polarization_factor=0.99)
    bad = c.nonfinite_pixels
    clean = Integrator(scan.poni, frames.shape[1:], 300, mask=mask | bad, dark=np.where(bad, 0, dark),
                       flat=np.where(bad, 1, flat), polarization_factor=0.99)
    got, want = broken.integrate(frames), clean.integrate(frames)
    assert np.isfinite(got.intensity).all() and np.isfinite(got.sigma).all()
    np.testing.assert_allclose(got.intensity, want.intensity, rtol=1e-6)
    np.testing.assert_allclose(got.sigma, want.sigma, rtol=1e-6)


@pytest.mark.parametrize("content", [b"hello world\nthis is not a calibration\n", bytes(range(256)) * 3, b"",
                                     b"poni_version: 2.1\nDetector: Detector\n"])
def test_unreadable_poni_is_one_line_error_before_compute(tiny_scan, tmp_path, content):
    poni = tmp_path / "bad.poni"
    poni.write_bytes(content)
    with pytest.raises(WorkflowError) as err:
        run(workflow_for(tiny_scan, tmp_path / "never.zarr", **{"inputs.poni": str(poni)}), progress=False)
    assert str(err.value).startswith("inputs.poni:") and "\n" not in str(err.value)
    assert not (tmp_path / "never.zarr").exists()


def test_parse_cbf_names_each_corruption(tiny_scan, tmp_path):
    scan = corrupt.copy_scan(tiny_scan, tmp_path / "scan")
    cases = {TruncatedFrameError: corrupt.truncate, SizeMismatchError: corrupt.set_binary_size,
             CorruptFrameError: lambda p: corrupt.garbage_header(p, np.random.default_rng(0))}
    for i, (exc, fn) in enumerate(cases.items(), start=1):
        p = scan.frame_path(i)
        fn(p)
        with pytest.raises(exc, match=p.name):
            parse_cbf(p.read_bytes(), p.name)
    # X-Binary-Size too small on a whole file: bytes of payload left before the closing boundary
    p = scan.frame_path(9)
    corrupt.set_binary_size(p, -50)
    with pytest.raises(SizeMismatchError):
        parse_cbf(p.read_bytes(), p.name)
    p = scan.frame_path(10)
    corrupt.break_md5(p)
    assert not parse_cbf(p.read_bytes()).check_md5()
    assert parse_cbf(scan.frame_path(11).read_bytes()).check_md5()


def _mutations():
    op = st.one_of(
        st.tuples(st.just("cut"), st.floats(0, 1)),
        st.tuples(st.just("set"), st.floats(0, 1), st.integers(0, 255)),
        st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 64)),
        st.tuples(st.just("header"), st.sampled_from([b"X-Binary-Size", b"X-Binary-Size-Fastest-Dimension",
                                                       b"X-Binary-Size-Second-Dimension",
                                                       b"X-Binary-Number-of-Elements", b"conversions"]),
                  st.sampled_from([b"0", b"-1", b"1", b"99999999999999999999", b"abc", b"", b"1e3", b"40000"])),
        st.tuples(st.just("header_region"), st.floats(0, 1), st.integers(0, 255)),
    )
    return st.lists(op, min_size=1, max_size=4)


def _mutate(raw: bytes, ops) -> bytes:
    import re

    b = bytearray(raw)
    head = raw.find(b"\x0c\x1a\x04\xd5") + 4
    for o in ops:
        k = int(o[1] * len(b)) if isinstance(o[1], float) else 0
        if o[0] == "cut":
            del b[k:]
        elif o[0] == "set" and b:
            b[min(k, len(b) - 1)] = o[2]
        elif o[0] == "insert":
            b[k:k] = o[2]
        elif o[0] == "delete":
            del b[k:k + o[2]]
        elif o[0] == "header":
            b = bytearray(re.sub(re.escape(o[1]) + rb":[^\r\n]*", o[1] + b": " + o[2], bytes(b), count=1))
        elif o[0] == "header_region" and head > 4 and len(b) >= head:
            b[int(o[1] * (head - 1))] = o[2]
    return bytes(b)


def _read_path(raw: bytes, shape: tuple[int, int]):
    """What a decode-integrate task does with a file's bytes: parse, check the shape, decode."""
    try:
        p = parse_cbf(raw, "fuzz.cbf")
    except CorruptFrameError:
        return "corrupt", None
    if p.shape != shape:
        return "shape", None
    buf, offsets = pack_payloads([p.data])
    out, _, status = decode_batch(buf, offsets, [p.size])
    assert out.shape == (p.size,)
    return int(status[0]), (np.frombuffer(bytes(p.data), np.uint8), p.size)


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_mutations())
def test_fuzz_read_path_of_mutated_cbf_never_crashes_or_reads_out_of_bounds(tiny_scan, ops):
    """Mutated bytes of a real simulated frame (cut, overwritten, inserted, deleted, header fields
    replaced) end as a CorruptFrameError, a wrong shape, or decoder status 0/1; never another
    exception.  The decoder's pure-Python twin (numpy bounds checks on every index) agrees."""
    from xrdct_dask.io.decode import decode_stream

    raw = tiny_scan.frame_path(7).read_bytes()
    kind, payload = _read_path(_mutate(raw, ops), (209, 184))
    assert kind in ("corrupt", "shape", 0, 1)
    if payload is not None:
        buf, n = payload
        out = np.empty(n, np.int32)
        assert decode_stream.py_func(buf, 0, buf.size, 0, out, 0, 1, n)[2] == kind  # IndexError on any stray read


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_mutations())
def test_fuzz_read_path_of_mutated_real_pilatus_frame(real_cbf, ops):
    kind, _ = _read_path(_mutate(real_cbf.read_bytes(), ops), (1679, 1475))
    assert kind in ("corrupt", "shape", 0, 1)


def _has(module: str, name: str | None = None) -> bool:
    import importlib
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return False
        return name is None or hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


@pytest.mark.skipif(not _has("xrdct_dask.io.cbf", "locate_payload"), reason="no in-place payload locator here")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_mutations())
def test_fuzz_in_place_locator_agrees_with_parse_cbf(tiny_scan, ops):
    """The GPU path locates payloads inside file images in pinned memory: on any mutated file it
    must reach the verdict parse_cbf reaches (same error class, or the same payload bytes)."""
    from xrdct_dask.io.cbf import locate_payload

    raw = _mutate(tiny_scan.frame_path(7).read_bytes(), ops)
    try:
        p = parse_cbf(raw, "f")
        want = (bytes(p.data), p.shape)
    except CorruptFrameError as err:
        want = type(err)
    try:
        off, nbytes, shape, _ = locate_payload(memoryview(bytearray(raw)), "f")
        got = (raw[off:off + nbytes], tuple(shape))
    except CorruptFrameError as err:
        got = type(err)
    assert got == want


@pytest.mark.gpu
@pytest.mark.timeout(600)
@pytest.mark.skipif(not _has("xrdct_dask.io.gpu_decode"), reason="no GPU decoder here")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_mutations())
def test_fuzz_gpu_decoder_on_mutated_cbf_agrees_with_cpu(tiny_scan, ops):
    """Whatever parse_cbf lets through (mutated payload bytes included), the GPU decoder returns
    the CPU decoder's status and, for status 0, its pixels; it never hangs (timeout) or faults."""
    from xrdct_dask.backend import gpu_available

    if not gpu_available():
        pytest.skip("needs cupy and a CUDA GPU")
    from xrdct_dask.io.gpu_decode import decode_payloads_gpu

    kind, payload = _read_path(_mutate(tiny_scan.frame_path(7).read_bytes(), ops), (209, 184))
    if payload is None:
        return  # rejected before any decoder runs, on both paths
    buf, n = payload
    d_out, off, status = decode_payloads_gpu([buf.tobytes()], [n])
    assert int(status[0]) == kind
    if kind == 0:
        cpu, _, _ = decode_batch(*pack_payloads([buf.tobytes()]), [n])
        np.testing.assert_array_equal(d_out.get()[off[0]:off[1]], cpu)


# ------------------------------------------------------------------------------------------
# reprocess
# ------------------------------------------------------------------------------------------
@pytest.mark.slow  # the reference run (module fixture, ~15 s) and runs of its own
def test_reprocess_from_recon_equals_a_fresh_run_and_shares_reduced(tiny_scan, cluster, reference, tmp_path):
    """`xrdct reprocess RUN --set recon.filter=hann`: integrates nothing, hard-links reduced/ from
    the parent, records the parent and the change, and equals a fresh run with that filter."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app

    out = tmp_path / "hann.zarr"
    res = CliRunner().invoke(app, ["reprocess", str(reference), "--set", "recon.filter=hann", "--out", str(out),
                                   "--scheduler-address", cluster.scheduler_address])
    assert res.exit_code == 0, res.output
    attrs = store.read_attrs(out)
    parent = store.read_attrs(reference)
    assert attrs["parent"] == {"path": str(reference.resolve()), "workflow_digest": parent["workflow_digest"],
                               "work_digest": parent["work_digest"]}
    assert attrs["reprocess"]["changed"] == {"recon.filter": ["ramp", "hann"]}
    assert attrs["reprocess"]["from"] == "recon" and attrs["reprocess"]["reused"] == ["reduced"]
    ran = attrs["run_summary"]["tasks"]
    assert ran["integrate"] == {"executed": 0, "skipped": 24}
    assert ran["recon"]["executed"] == 8 and ran["pdf"]["executed"] == 2
    chunk = next((reference / "reduced" / "intensity" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    twin = out / chunk.relative_to(reference)
    assert os.stat(twin).st_ino == os.stat(chunk).st_ino  # shared, not copied

    fresh = run(workflow_for(tiny_scan, tmp_path / "fresh.zarr", **{"recon.filter": "hann"}), cluster=cluster,
                progress=False, summary=False)
    assert_same_arrays(out, fresh)
    assert not np.array_equal(zarr.open_array(str(out / "recon" / "intensity"))[...],
                              zarr.open_array(str(reference / "recon" / "intensity"))[...])


@pytest.mark.slow  # the reference run (module fixture, ~15 s) and runs of its own
def test_reprocess_many_runs_as_one_graph_from_pdf(reference, corrupted, cluster, tmp_path, monkeypatch):
    """Two runs, one `execute` (one graph): only their pdf tasks run, recon/ is shared."""
    from xrdct_dask.runs import reprocess as rp
    from xrdct_dask.runs.reprocess import reprocess

    calls = []
    real = rp.execute
    monkeypatch.setattr(rp, "execute", lambda ctxs, **kw: calls.append(len(ctxs)) or real(ctxs, **kw))
    parents = [reference, corrupted[2]]
    outs = reprocess(parents, {"pdf.rmax": 12.0}, cluster=cluster, progress=False, summary=False)
    assert calls == [2]
    for parent, out in zip(parents, outs):
        assert out.parent == parent.parent and out.name.startswith("run-")
        ran = store.read_attrs(out)["run_summary"]["tasks"]
        views = 2 * len(view_parts(layout_of(out)))  # the view copy of the new G, every part
        assert {k: v["executed"] for k, v in ran.items()} == {"integrate": 0, "center": 0, "recon": 0, "pdf": 2,
                                                              "view": views}
        assert_same_arrays(out, parent, ["recon/intensity", "reduced/intensity", "tasks/center"])
        r = zarr.open_array(str(out / "r"), mode="r")[...]
        assert r[-1] == pytest.approx(12.0) and zarr.open_array(str(out / "pdf" / "G")).shape[-1] == r.size
        assert np.isfinite(zarr.open_array(str(out / "pdf" / "G"))[...]).all()


@pytest.mark.slow  # the reference run (module fixture, ~15 s) and runs of its own
def test_reprocess_refuses_a_change_of_nothing(reference):
    from xrdct_dask.runs.reprocess import plan_reprocess

    with pytest.raises(WorkflowError, match="nothing to reprocess"):
        plan_reprocess(reference, {"compute.n_workers": 3})
    assert plan_reprocess(reference, {"integrate.npt_rad": 500}).start == "integrate"
    assert plan_reprocess(reference, {"sinogram.center": 4.5, "pdf.rmax": 10.0}).start == "recon"
    assert plan_reprocess(reference, {"pdf.lorch": False}, from_stage="recon").start == "recon"


# ------------------------------------------------------------------------------------------
# safe by default
# ------------------------------------------------------------------------------------------
def test_local_cluster_and_dashboard_bind_to_localhost(tiny_scan, tmp_path):
    from xrdct_dask.cluster.local import client_for

    wf = workflow_for(tiny_scan, tmp_path / "x.zarr", **{"compute.n_workers": 1})
    client, lc = client_for(wf, None)
    try:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        for w in lc.scheduler_info["workers"]:
            assert w.startswith("tcp://127.0.0.1:")
    finally:
        client.close()
        lc.close()


def test_workflow_yaml_builds_no_python_objects(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("inputs: !!python/object/apply:os.system ['echo pwned > %s']\n" % (tmp_path / "pwned"))
    with pytest.raises(WorkflowError, match="not valid YAML"):
        load_workflow(p)
    assert not (tmp_path / "pwned").exists()


def test_library_never_unpickles_or_evaluates_user_files():
    """Static check of the package source: no pickle/marshal loads, eval/exec, unsafe YAML, or
    numpy loads with allow_pickle=True (user files are data, never code)."""
    import re

    bad = re.compile(r"pickle\.loads?\(|marshal\.loads?\(|\beval\(|\bexec\(|yaml\.load\(|yaml\.unsafe_load|"
                     r"allow_pickle\s*=\s*True|yaml\.Loader\b|UnsafeLoader")
    hits = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "xrdct_dask").rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not hits, hits


# ------------------------------------------------------------------------------------------
# many waves, a scheduler that stays small, a task state read from file names
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_many_waves_hold_at_most_the_bound_and_equal_one_wave(cluster, tmp_path):
    """2,304 frames in 6 slices, compute.max_tasks twice a slice's tasks and 2 more: waves of one
    slice, each one submission, at most two in flight.  The scheduler never holds more than that
    and the wave that just finished (its keys are forgotten once the client's release reaches the
    scheduler, a few ms after the next wave is submitted: sampled every 5 ms, that shows), and
    the store is byte for byte the store of a run in one wave."""
    from xrdct_dask.simulate import simulate_scan

    scan = simulate_scan(tmp_path / "scan", nz=6, nomega=16, nx=24, seed=8)
    base = {"store.omega_chunk": 4, "integrate.npt_rad": 400}
    one = run(load_workflow(scan.workflow, {"store.path": str(tmp_path / "one.zarr"), **base}), cluster=cluster,
              progress=False, summary=False)
    held, stop = [], threading.Event()
    per_slice = tasks_per_slice(one)
    bound = 2 * per_slice + 2

    def sample():
        while not stop.is_set():
            held.append(len(cluster.scheduler.tasks))
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        many = run(load_workflow(scan.workflow, {"store.path": str(tmp_path / "many.zarr"), "compute.max_tasks": bound,
                                                 **base}), cluster=cluster, progress=False, summary=False)
    finally:
        stop.set()
        t.join()
    assert per_slice <= max(held) <= bound + per_slice, (max(held), per_slice, bound)
    assert_same_arrays(many, one)
    t0 = time.perf_counter()
    assert store.task_state(many).complete
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.slow  # a run of its own on 4 worker processes, 3 of them SIGKILLed along the way (~30 s)
@pytest.mark.timeout(600)
def test_workers_sigkilled_every_few_seconds_the_run_completes_identical(tiny_scan, reference, tmp_path):
    """On a local cluster of 4 worker processes, a worker process is SIGKILLed every 2 s while tasks
    run (3 kills at most, the first while the store is prepared on the workers (the scan table's
    medians) or the stages run; the nannies start new ones): the run completes, its store is byte for
    byte the undisturbed reference run's (so every marked task has its chunks, and retried tasks
    rewrote the same bytes), and the run's log says how many workers were lost and tasks retried."""
    import logging
    import random

    from distributed import LocalCluster

    kills = []
    stop = threading.Event()
    with LocalCluster(n_workers=4, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as cluster:
        def killer():
            rng = random.Random(7)
            with cluster.get_client() as client:
                while not stop.is_set() and len(kills) < 3:
                    busy = [t for t in list(cluster.scheduler.tasks.values()) if t.state == "processing"]
                    if not busy:
                        time.sleep(0.05)
                        continue
                    try:
                        pids = client.run(os.getpid, on_error="ignore")
                    except Exception:
                        continue
                    pid = pids[rng.choice(sorted(pids))]
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                    stop.wait(2.0)

        t = threading.Thread(target=killer, daemon=True)
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = records.append
        console = logging.getLogger("xrdct_dask.view.console")  # the run's messages to its user
        console.addHandler(handler)
        t.start()
        try:
            path = run(workflow_for(tiny_scan, tmp_path / "run.zarr"), cluster=cluster, progress=False, summary=False)
        finally:
            stop.set()
            t.join()
            console.removeHandler(handler)
    assert len(kills) >= 2, kills
    assert_same_arrays(path, reference)
    said = [r.getMessage() for r in records if "lost;" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{len(kills)} workers lost; "), said
    assert int(said[0].split("; ")[1].split()[0]) >= 1, said  # at least the task each kill interrupted
