"""The job service (``xrdct serve``; issue 25, items 10, 11 and 19): a token on every request,
jobs confined to the folders it serves, errors that never echo a file, cancellation, the run's
summary, logs in the job's folder, bounded and validated bodies, queued jobs kept across a restart.

Most tests run jobs as a stand-in process (``command``): a Python script that waits for a
``release`` file in its job folder and stops on Ctrl-C as ``xrdct run`` does; the slow test at
the end cancels and resumes a real run."""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from xrdct_dask import store
from xrdct_dask.config import load_workflow
from xrdct_dask.runs.service import JobService, make_server
from xrdct_dask.testing.stores import assert_same_stores
from xrdct_dask.testing.waits import wait_until

from .conftest import LIVE_OVERRIDES as OVERRIDES

TOKEN = "a-test-token-of-32-characters-xx"
STAND_IN = r"""
import json, pathlib, signal, sys, time
def stop(*a):
    print("stand-in: interrupted", flush=True)
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
print("stand-in: running", flush=True)
print("stand-in: a dask log line", file=sys.stderr, flush=True)
job = json.loads(pathlib.Path("job.json").read_text())
for _ in range(1200):
    if pathlib.Path("release").exists():
        store = pathlib.Path(job["store"])
        store.mkdir(parents=True, exist_ok=True)
        attrs = {"format": "xrdct-dask/1", "run_summary": {"frames": 48, "frame_status": {"OK": 46, "MISSING": 2},
                                                           "wall_seconds": 1.5}}
        (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}))
        sys.exit(0)
    time.sleep(0.02)
sys.exit(3)
"""


def stand_in(job: dict) -> list[str]:
    return [sys.executable, "-c", STAND_IN]


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("svc") / "beamline" / "scan", nz=1, nomega=8, nx=6, seed=4)


class Served:
    """A service on 127.0.0.1 (a free port) serving ``root``, with ``http(method, path, body, token)``."""

    def __init__(self, jobs_dir: Path, root: Path, command=stand_in, **kw):
        self.service = JobService(jobs_dir, roots=[root], command=command, **kw)
        self.server = make_server(self.service, "127.0.0.1", 0, token=TOKEN)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def http(self, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None,
             headers: dict | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            h["Authorization"] = f"token {token}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_status(self, job_id: str, statuses, timeout_s: float = 30.0) -> dict:
        t0 = time.time()
        while (job := self.service.get(job_id))["status"] not in statuses:
            assert time.time() - t0 < timeout_s, job
            time.sleep(0.05)
        return job

    def close(self) -> None:
        for job in self.service.list():  # release the stand-ins still waiting
            Path(job["folder"], "release").touch()
        self.server.shutdown()
        self.server.server_close()
        self.service.close()


@pytest.fixture
def served(scan, tmp_path):
    s = Served(tmp_path / "jobs", scan.root.parent)
    yield s
    s.close()


def submit(served, scan, tmp_path, name="a", **extra) -> dict:
    code, job = served.http("POST", "/jobs", {"workflow": str(scan.workflow),
                                              "set": {"store.path": str(scan.root / f"{name}.zarr")}, **extra})
    assert code == 201, job
    return job


def one_line(msg: str) -> str:
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------
# 10. authentication, listing, cancelling, summary, logs, bodies, binding
# ------------------------------------------------------------------------------------------
def test_every_request_needs_the_token_compared_in_constant_time(served, monkeypatch):
    """No token, a wrong one, or one of another scheme is refused (403) on every endpoint and
    method before anything is done; the right one is taken from the header (``token`` or
    ``Bearer``) or the query, and every comparison goes through hmac.compare_digest."""
    import hmac

    import xrdct_dask.runs.service as svc

    calls, real = [], hmac.compare_digest
    monkeypatch.setattr(svc.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for method, path in (("GET", "/health"), ("GET", "/"), ("GET", "/jobs"), ("GET", "/jobs/x"),
                         ("POST", "/jobs"), ("DELETE", "/jobs/x")):
        body = {"workflow": "w.yaml"} if method == "POST" else None
        for token in (None, "wrong-token-wrong-token-wrong-tok", TOKEN[:-1]):
            code, err = served.http(method, path, body, token=token)
            assert code == 403 and "token" in one_line(err["error"]), (method, path, token)
        code, _ = served.http(method, path, body, token=None, headers={"Authorization": f"Basic {TOKEN}"})
        assert code == 403
    assert not served.service.jobs
    assert served.http("GET", "/health") == (200, {"ok": True, "jobs": 0})
    assert served.http("GET", "/health", token=None, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert served.http("GET", f"/health?token={TOKEN}", token=None)[0] == 200
    assert len(calls) >= 20


def test_jobs_are_listed_cancelled_and_report_the_run_summary(served, scan, tmp_path, capfd):
    """``GET /`` lists the jobs.  ``DELETE`` of a queued job: it is cancelled and never starts
    (no process, no log).  ``DELETE`` of a running one: its process gets Ctrl-C (SIGINT), and the
    job ends cancelled, saying its store resumes.  A job that finishes reports its store's run
    summary (frames, their statuses, wall time), not only a count.  What the job's process writes
    (its progress, dask's logs) is in the job's ``log.txt``, not on the service's console."""
    first = submit(served, scan, tmp_path, "first")
    second = submit(served, scan, tmp_path, "second")
    third = submit(served, scan, tmp_path, "third")
    served.wait_status(first["id"], ("running",))
    code, listed = served.http("GET", "/")
    assert code == 200 and [j["id"] for j in listed["jobs"]] == [first["id"], second["id"], third["id"]]
    code, job = served.http("DELETE", f"/jobs/{second['id']}")
    assert code == 202 and job["status"] == "cancelled"
    log = Path(first["log"])
    t0 = time.time()
    while "stand-in: running" not in (log.read_text() if log.exists() else ""):
        assert time.time() - t0 < 30
        time.sleep(0.05)
    code, job = served.http("DELETE", f"/jobs/{first['id']}")
    assert code == 202 and job["status"] in ("cancelling", "cancelled")
    job = served.wait_status(first["id"], ("cancelled",))
    assert "resume" in job["error"] and "stand-in: interrupted" in log.read_text()
    assert "stand-in: a dask log line" in log.read_text()
    Path(third["folder"], "release").touch()
    job = served.wait_status(third["id"], ("done", "failed"))
    assert job["status"] == "done", job
    assert job["summary"] == {"frames": 48, "frame_status": {"OK": 46, "MISSING": 2}, "wall_seconds": 1.5}
    second = served.service.get(second["id"])
    assert second["status"] == "cancelled" and second["started"] is None and not Path(second["log"]).exists()
    assert served.http("DELETE", f"/jobs/{third['id']}")[0] == 409  # finished: nothing to cancel
    assert served.http("DELETE", "/jobs/nope")[0] == 404
    out = capfd.readouterr()
    assert "stand-in" not in out.out + out.err


def test_bodies_are_bounded_and_what_does_not_validate_is_refused_in_one_line(served, scan):
    """A Content-Length over the bound is refused without reading the body; a missing one, a body
    that is not JSON (quoted nowhere), JSON's NaN / Infinity, unknown fields, wrong types: each one
    line, 400, and nothing queued."""
    from xrdct_dask.runs.service import MAX_BODY

    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.putrequest("POST", "/jobs")
    conn.putheader("Authorization", f"token {TOKEN}")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()  # and no body at all: answered at once, not waited for
    r = conn.getresponse()
    assert r.status == 400 and "bytes" in json.loads(r.read())["error"]
    conn.close()
    bad = [b"", b"{not json: secret-text}", b'{"workflow": "w.yaml", "idle_timeout": NaN}',
           b'{"workflow": "w.yaml", "idle_timeout": Infinity}', b'{"workflow": 3}', b'{"wrkflow": "w.yaml"}',
           b'["workflow"]', b'{"workflow": "w.yaml", "mode": "delete"}', b'{"workflow": "w.yaml", "set": [1]}']
    for raw in bad:
        code, err = served.http("POST", "/jobs", raw=raw)
        assert code == 400 and "secret-text" not in one_line(err["error"]), (raw, err)
    assert not served.service.jobs


def test_the_service_binds_to_loopback_unless_told_and_then_says_so_loudly(tmp_path, monkeypatch):
    """``xrdct serve`` listens on 127.0.0.1 by default and prints the token once; with ``--host``
    it warns on stderr in three lines that anyone reaching the address can run workflows.
    ``--token-file`` takes the token from a file (not printed); a short one is refused."""
    from typer.testing import CliRunner

    from xrdct_dask import cli

    seen = {}

    class FakeServer:
        def __init__(self, host, port):
            seen["host"] = host
            self.server_address = (host, 12345)

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    monkeypatch.setattr("xrdct_dask.runs.service.make_server", lambda service, host, port, token: (
        seen.update(token=token), FakeServer(host, port))[1])
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli.app, ["serve", "--port", "0"])
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.1" and "WARNING" not in res.output
    assert res.output.count(seen["token"]) == 2 and len(seen["token"]) >= 32  # the token line and the URL
    (tmp_path / "token").write_text("k" * 40 + "\n")
    res = CliRunner().invoke(cli.app, ["serve", "--host", "0.0.0.0", "--token-file", str(tmp_path / "token")])
    assert res.exit_code == 0 and seen["host"] == "0.0.0.0" and seen["token"] == "k" * 40
    assert res.output.count("WARNING") == 3 and "k" * 40 not in res.output
    (tmp_path / "token").write_text("short\n")
    res = CliRunner().invoke(cli.app, ["serve", "--token-file", str(tmp_path / "token")])
    assert res.exit_code == 2 and "at least 16 characters" in res.output


# ------------------------------------------------------------------------------------------
# 11. what a job may read and write
# ------------------------------------------------------------------------------------------
def test_a_job_never_reads_files_outside_its_roots_and_errors_never_echo_a_file(served, scan, tmp_path):
    """``{"workflow": "/etc/passwd"}`` (or a link to it under the root) is refused as outside the
    served folders before it is read; a file under the root that is not a workflow is refused
    without quoting a line of it; a base_dir, frames, PONI or store outside the root too."""
    secret = tmp_path / "outside" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root: $6$hash-of-root\nalice: $6$hash-of-alice\n")
    inside = scan.root / "looks-like.yaml"
    inside.write_text(secret.read_text())
    link = scan.root / "link.yaml"
    link.symlink_to(secret)
    for path in (secret, link, "/etc/passwd"):
        code, err = served.http("POST", "/jobs", {"workflow": str(path)})
        assert code == 400 and "outside the folders" in one_line(err["error"]), err
    code, err = served.http("POST", "/jobs", {"workflow": str(inside)})
    assert code == 400 and "not a workflow" in err["error"]
    assert "hash" not in err["error"] and "alice" not in err["error"] and "root:" not in err["error"]
    text = scan.workflow.read_text()
    for body in ({"workflow_yaml": text, "base_dir": str(tmp_path / "outside")},
                 {"workflow": str(scan.workflow), "set": {"store.path": str(tmp_path / "outside" / "run.zarr")}},
                 {"workflow": str(scan.workflow), "set": {"inputs.poni": str(secret)}},
                 {"workflow": str(scan.workflow), "set": {"inputs.frames": str(tmp_path / "f_{index:06d}.cbf")}}):
        code, err = served.http("POST", "/jobs", body)
        assert code == 400 and "outside the folders" in one_line(err["error"]), (body, err)
    assert not served.service.jobs


def test_a_job_may_not_overwrite_a_store_it_did_not_create_nor_open_a_public_dashboard(served, scan, tmp_path):
    """``store.overwrite`` on a store made outside the service is refused; on one an earlier job
    of this service created it is accepted.  A dashboard on 0.0.0.0 or on every interface
    (``:8787``) is refused; 127.0.0.1 is fine."""
    from xrdct_dask import store

    theirs = scan.root / "theirs.zarr"
    theirs.mkdir()
    (theirs / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                  "attributes": {"format": store.FORMAT}}))
    code, err = served.http("POST", "/jobs", {"workflow": str(scan.workflow),
                                              "set": {"store.path": str(theirs), "store.overwrite": True}})
    assert code == 400 and one_line(err["error"]).startswith("store.overwrite:")
    for addr in ("0.0.0.0:8787", ":8787", "192.168.1.5:0"):
        code, err = served.http("POST", "/jobs", {"workflow": str(scan.workflow),
                                                  "set": {"compute.dashboard_address": addr}})
        assert code == 400 and one_line(err["error"]).startswith("compute.dashboard_address"), addr
    job = submit(served, scan, tmp_path, "ours", **{})
    Path(job["folder"], "release").touch()
    assert served.wait_status(job["id"], ("done", "failed"))["status"] == "done"
    code, job = served.http("POST", "/jobs", {"workflow": str(scan.workflow), "set": {
        "store.path": job["store"], "store.overwrite": True, "compute.dashboard_address": "127.0.0.1:0"}})
    assert code == 201, job


# ------------------------------------------------------------------------------------------
# 19. odds
# ------------------------------------------------------------------------------------------
def test_deep_json_bad_dotted_keys_and_odd_idle_timeouts_are_one_line(served, scan):
    """JSON nested 5,000 deep, ``set: {"scan.nz.x": 1}``, ``idle_timeout`` 1e999 (infinite: not
    JSON) or ``true`` (not a number of seconds) each get a one-line 400, and the service goes on
    answering; every job record on disk is strict JSON."""
    deep = b'{"workflow": "w.yaml", "set": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"
    code, err = served.http("POST", "/jobs", raw=deep)
    assert code == 400 and "deep" in one_line(err["error"])
    code, err = served.http("POST", "/jobs", raw=b"[" * 5000 + b"]" * 5000)
    assert code == 400 and "deep" in one_line(err["error"])
    code, err = served.http("POST", "/jobs", {"workflow": str(scan.workflow), "set": {"scan.nz.x": 1}})
    assert code == 400 and "scan.nz is a value, not a section" in one_line(err["error"])
    for idle in ("1e999", "true", "-1", "0"):
        raw = b'{"workflow": "%s", "mode": "watch", "idle_timeout": %s}' % (str(scan.workflow).encode(), idle.encode())
        code, err = served.http("POST", "/jobs", raw=raw)
        assert code == 400 and "idle_timeout" in one_line(err["error"]), idle
    assert served.http("GET", "/health") == (200, {"ok": True, "jobs": 0})


def test_queued_jobs_stay_queued_across_a_restart(scan, tmp_path):
    """A service stopped with one job running and two queued: started again on the same folder,
    the running one is marked interrupted (its store resumes) and the queued ones run, in the
    order they were submitted."""
    first = Served(tmp_path / "jobs", scan.root.parent)
    try:
        jobs = [submit(first, scan, tmp_path, f"r{k}") for k in range(3)]
        first.wait_status(jobs[0]["id"], ("running",))
        record = Path(jobs[0]["folder"]) / "job.json"  # saved just after the status changes in memory
        wait_until(lambda: json.loads(record.read_text())["status"] == "running", 30, "the running job's record")
        shutil.copytree(tmp_path / "jobs", tmp_path / "kept")  # the records as the stopped service left them
    finally:
        first.close()
    for job in jobs[1:]:  # ready to finish at once when they run
        Path(str(job["folder"]).replace(str(tmp_path / "jobs"), str(tmp_path / "kept")), "release").touch()
    order = []
    again = Served(tmp_path / "kept", scan.root.parent, command=lambda job: order.append(job["id"]) or stand_in(job))
    try:
        assert again.service.get(jobs[0]["id"])["status"] == "interrupted"
        for job in jobs[1:]:
            assert again.wait_status(job["id"], ("done", "failed"))["status"] == "done"
        assert order == [j["id"] for j in jobs[1:]]
    finally:
        again.close()


class SlowIntegrate:
    """A worker plugin holding each finished integration task 1.5 s (its chunk and done-marker
    written), so that a run of a few blocks lasts long enough to be cancelled in the middle."""

    name = "xrdct-test-slow-integrate"

    def transition(self, key, start, finish, **kwargs):
        name = key[0] if isinstance(key, tuple) else str(key)
        if start == "executing" and finish == "memory" and str(name).startswith("integrate"):
            time.sleep(1.5)


@pytest.mark.slow  # two `xrdct run` processes on the module's cluster (~40 s on 2 idle cores)
def test_a_cancelled_run_keeps_its_done_tasks_and_resumes_when_submitted_again(scan, cluster, tmp_path):
    """A real run job on a scheduler, cancelled once some of its integration blocks are marked
    done: the job ends cancelled, its log says it was interrupted, the store keeps those blocks
    (and nothing half-written is marked); the same job submitted again resumes it to the end and
    reports the run's summary."""
    from distributed import Client
    from distributed.diagnostics.plugin import WorkerPlugin

    from xrdct_dask import store

    class Plugin(SlowIntegrate, WorkerPlugin):
        pass

    with Client(cluster) as client:
        client.register_plugin(Plugin())
        served = Served(tmp_path / "jobs", scan.root.parent, command=None, scheduler_address=cluster.scheduler_address)
        try:
            body = {"workflow": str(scan.workflow), "set": {"store.path": str(scan.root / f"{tmp_path.name}.zarr"),
                                                            "store.omega_chunk": 2, "pdf.enabled": False}}
            code, job = served.http("POST", "/jobs", body)
            assert code == 201, job
            path = Path(job["store"])
            wait_until(lambda: (store.is_store(path) and (store.root_attrs(path) or {}).get("template_complete")
                                and store.task_state(path)["integrate"].any())
                       or served.service.get(job["id"])["status"] not in ("queued", "running"),
                       120, "the job's first integrated block")
            assert served.service.get(job["id"])["status"] in ("queued", "running")
            assert served.http("DELETE", f"/jobs/{job['id']}")[0] == 202
            job = served.wait_status(job["id"], ("cancelled", "done", "failed"), timeout_s=120)
            assert job["status"] == "cancelled", job
            assert "interrupted" in Path(job["log"]).read_text()
            state = store.task_state(path)
            assert state["integrate"].any() and not state.complete
            code, again = served.http("POST", "/jobs", body)
            assert code == 201, again
            again = served.wait_status(again["id"], ("done", "failed", "cancelled"), timeout_s=180)
            assert again["status"] == "done", (again, Path(again["log"]).read_text()[-2000:])
            assert store.task_state(path).complete
            assert again["summary"]["frames"] == 8 * 6 and again["summary"]["frame_status"]["OK"] == 48
        finally:
            served.close()
            client.unregister_worker_plugin(Plugin.name)


# ------------------------------------------------------------------------------------------
# a run job and a watch job on a scheduler, against the batch run
# ------------------------------------------------------------------------------------------
def _http(url: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"token {TOKEN}"},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow  # a run and a watch through the service (~15 s)
def test_job_service_runs_a_submitted_workflow_and_keeps_its_input(acq, batch, cluster, tmp_path):
    """`xrdct serve`'s server on 127.0.0.1 (a free port), jobs on the module's scheduler: a
    workflow submitted as YAML text is validated, queued, run; polling its job gives the status
    and the output store, which equals the batch run's; the input is kept beside the job
    record and in the store's attrs for replay; a watch job does the same.  A bad submission is
    refused in one line."""
    service = JobService(tmp_path / "jobs", scheduler_address=cluster.scheduler_address, roots=[tmp_path, acq.root])
    server = make_server(service, "127.0.0.1", 0, token=TOKEN)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _http(f"{url}/health") == (200, {"ok": True, "jobs": 0})
        code, err = _http(f"{url}/jobs", {"workflow": str(tmp_path / "nowhere.yaml")})
        assert code == 400 and "workflow file not found" in err["error"] and "\n" not in err["error"]
        code, err = _http(f"{url}/jobs", {"workflow": str(acq.workflow), "set": {"integrate.npt_rad": -3}})
        assert code == 400 and "integrate.npt_rad" in err["error"]
        text = acq.workflow.read_text()
        out = tmp_path / "job.zarr"
        code, job = _http(f"{url}/jobs", {"workflow_yaml": text, "base_dir": str(acq.root),
                                          "set": OVERRIDES | {"store.path": str(out)}})
        assert code == 201 and job["status"] in ("queued", "running") and job["store"] == str(out)
        t0 = time.time()
        while job["status"] not in ("done", "failed"):
            assert time.time() - t0 < 120, job
            time.sleep(0.3)
            code, job = _http(f"{url}/jobs/{job['id']}")
        assert job["status"] == "done", job["error"]
        assert _http(f"{url}/jobs/nope")[0] == 404
        assert [j["id"] for j in _http(f"{url}/jobs")[1]["jobs"]] == [job["id"]]  # the refused ones are not jobs
        assert_same_stores(batch, out)
        folder = Path(job["folder"])
        assert (folder / "input.yaml").read_text() == text
        assert json.loads((folder / "job.json").read_text())["status"] == "done"
        replay = load_workflow(folder / "workflow.yaml")  # the validated workflow: what `xrdct run` replays
        assert replay.work_digest() == load_workflow(acq.workflow, OVERRIDES).work_digest()
        assert store.read_attrs(out)["job"]["input_yaml"] == text
        # a watch job (the acquisition already whole here): same store contents again
        out2 = tmp_path / "watched.zarr"
        code, job = _http(f"{url}/jobs", {"workflow": str(acq.workflow), "mode": "watch", "idle_timeout": 30,
                                          "set": OVERRIDES | {"store.path": str(out2)}})
        assert code == 201
        assert service.wait(job["id"], timeout_s=120)["status"] == "done"
        assert _http(f"{url}/jobs/{job['id']}")[1]["summary"]["missing"] == 0
        assert_same_stores(batch, out2)
    finally:
        server.shutdown()
        server.server_close()
        service.close()
