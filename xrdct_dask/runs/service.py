"""A job service for the beamline control system (``xrdct serve``): submit a workflow, get its
status and output store back over HTTP + JSON (the standard library's ``ThreadingHTTPServer``).

    POST /jobs          {"workflow": "/path/workflow.yaml"}   or   {"workflow_yaml": "<the YAML text>",
                        "base_dir": "/where/relative/paths/start"};  optional "set": {"store.path": ...},
                        "mode": "run" (default: the frames are written) | "watch" (follow the acquisition),
                        "idle_timeout": seconds (watch)
                        -> 201 {"id", "status": "queued", "store", "input", ...}; 400 {"error": one line}
    GET  /jobs          -> {"jobs": [job, ...]}
    GET  /jobs/<id>     -> job: id, status (queued | running | done | failed | interrupted), mode, store,
                           submitted / started / finished (ISO times), error, folder, summary
    GET  /health        -> {"ok": true, "jobs": n}

Jobs run one after another, in the order submitted, on the service's scheduler
(``--scheduler-address``: one warm cluster for the whole experiment) or each on a cluster of its
own.  Every job keeps its input for replay, as dahu does: ``JOBS/<id>/input.yaml`` (what was
submitted), ``JOBS/<id>/workflow.yaml`` (validated, paths absolute: ``xrdct run`` it to replay),
``JOBS/<id>/job.json`` (the record); and the store's root attrs get ``job`` (id and input text).
The server binds to 127.0.0.1 unless told otherwise: it runs what it is sent, so it must not face
an open network.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
import zarr

from xrdct_dask import store
from xrdct_dask.config import WorkflowError, load_workflow, workflow_from_dict
from xrdct_dask.runs.execute import run
from xrdct_dask.runs.live import watch

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes of a submission (a workflow is a few kB)
FINAL = ("done", "failed", "interrupted")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class JobService:
    """The jobs of one service: validated on submission, run one at a time in a thread, each
    recorded in ``jobs_dir/<id>/`` (see the module's docstring).  ``runner(job, wf)`` runs one
    job and returns its summary dict (default: :func:`xrdct_dask.runs.execute.run` or
    :func:`xrdct_dask.runs.live.watch` on ``scheduler_address``)."""

    def __init__(self, jobs_dir, scheduler_address: str | None = None, base_dir=None):
        self.jobs_dir = Path(jobs_dir).resolve()
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler_address = scheduler_address
        self.base_dir = Path(base_dir or Path.cwd()).resolve()
        self.jobs: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        for rec in sorted(self.jobs_dir.glob("*/job.json")):  # jobs of an earlier service: kept, listed
            try:
                job = json.loads(rec.read_text())
            except (OSError, ValueError):
                continue
            if job.get("status") not in FINAL:
                job.update(status="interrupted", error="the service stopped before the job finished: resubmit it")
                self._save(job)
            self.jobs[job["id"]] = job
        self._thread = threading.Thread(target=self._loop, daemon=True, name="xrdct-jobs")
        self._thread.start()

    # -- submission ----------------------------------------------------------------------------
    def submit(self, body: dict) -> dict:
        """Validate a submission and queue it; WorkflowError (one line) for a bad one."""
        if not isinstance(body, dict):
            raise WorkflowError("a job is a JSON object with 'workflow' (a path) or 'workflow_yaml' (the text)")
        unknown = set(body) - {"workflow", "workflow_yaml", "base_dir", "set", "mode", "idle_timeout"}
        if unknown:
            raise WorkflowError(f"unknown field(s) {', '.join(sorted(unknown))}: expected workflow or workflow_yaml, "
                                "base_dir, set, mode, idle_timeout")
        mode = body.get("mode", "run")
        if mode not in ("run", "watch"):
            raise WorkflowError(f"mode must be run or watch (got {mode!r})")
        overrides = body.get("set") or {}
        if not isinstance(overrides, dict):
            raise WorkflowError("set must be an object of workflow keys: {\"store.path\": \"/data/run.zarr\"}")
        idle = body.get("idle_timeout", 600)
        if not isinstance(idle, (int, float)) or not idle > 0:
            raise WorkflowError(f"idle_timeout must be a number of seconds > 0 (got {idle!r})")
        if ("workflow" in body) == ("workflow_yaml" in body):
            raise WorkflowError("give either 'workflow' (the path of a workflow YAML) or 'workflow_yaml' (its text)")
        if "workflow" in body:
            path = Path(str(body["workflow"]))
            path = path if path.is_absolute() else self.base_dir / path
            wf = load_workflow(path, overrides)
            text = path.read_text()
        else:
            text = body["workflow_yaml"]
            if not isinstance(text, str):
                raise WorkflowError("workflow_yaml must be the YAML text of a workflow")
            try:
                raw = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise WorkflowError(f"workflow_yaml: not valid YAML ({str(err).splitlines()[0]})") from None
            base = Path(str(body.get("base_dir") or self.base_dir))
            wf = workflow_from_dict(raw, base_dir=base.resolve(), overrides=overrides, source="workflow_yaml")
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.jobs_dir / job_id
        folder.mkdir()
        (folder / "input.yaml").write_text(text)
        (folder / "workflow.yaml").write_text(wf.to_yaml())
        job = {"id": job_id, "status": "queued", "mode": mode, "store": str(Path(wf.store.path).resolve()),
               "input": str(folder / "input.yaml"), "workflow": str(folder / "workflow.yaml"), "folder": str(folder),
               "set": overrides, "idle_timeout": idle, "submitted": _now(), "started": None, "finished": None,
               "error": None, "summary": None}
        with self._lock:
            self.jobs[job_id] = job
            self._save(job)
        self._queue.put(job_id)
        log.info("job %s queued: %s -> %s", job_id, mode, job["store"])
        return dict(job)

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            job = self.jobs.get(job_id)
            return dict(job) if job else None

    def list(self) -> list[dict]:
        with self._lock:
            return [dict(j) for j in sorted(self.jobs.values(), key=lambda j: j["id"])]

    # -- running -------------------------------------------------------------------------------
    def _save(self, job: dict) -> None:
        folder = Path(job["folder"])
        tmp = folder / ".job.json.part"
        tmp.write_text(json.dumps(job, indent=1))
        tmp.replace(folder / "job.json")

    def _update(self, job_id: str, **kw) -> None:
        with self._lock:
            self.jobs[job_id].update(kw)
            self._save(self.jobs[job_id])

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            self._update(job_id, status="running", started=_now())
            try:
                summary = self.run_job(self.get(job_id))
                self._update(job_id, status="done", finished=_now(), summary=summary)
            except Exception as err:  # every failure is the job's, never the service's
                log.warning("job %s failed: %s", job_id, err)
                self._update(job_id, status="failed", finished=_now(), error=str(err).splitlines()[0] if str(err)
                             else type(err).__name__)

    def run_job(self, job: dict) -> dict:
        """Run one job from its stored workflow; record the job in the store's attrs; its summary."""

        wf = load_workflow(job["workflow"])
        if job["mode"] == "watch":

            res = watch(wf, idle_timeout_s=job["idle_timeout"], scheduler_address=self.scheduler_address,
                        progress=False)
            path, summary = res.store, {"timed_out": res.timed_out, "missing": res.missing,
                                        "frames": res.summary.get("frames")}
        else:
            path = run(wf, scheduler_address=self.scheduler_address, progress=False)
            summary = {"frames": store.read_attrs(path).get("run_summary", {}).get("frames")}

        zarr.open_group(str(path), mode="r+").attrs["job"] = {"id": job["id"], "input_yaml": Path(
            job["input"]).read_text(), "submitted": job["submitted"], "mode": job["mode"]}
        store.consolidate(path)
        return summary

    def wait(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.2) -> dict:
        """Block until job ``job_id`` is done, failed or interrupted (TimeoutError after ``timeout_s``)."""
        t0 = time.time()
        while (job := self.get(job_id)) is not None and job["status"] not in FINAL:
            if time.time() - t0 > timeout_s:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:g} s")
            time.sleep(poll_s)
        return job

    def close(self) -> None:
        """Stop taking jobs after the one running (it finishes)."""
        self._queue.put(None)


def make_server(service: JobService, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """The HTTP server of ``service`` (not started: ``serve_forever()``; port 0 picks a free one)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "xrdct-serve"

        def log_message(self, fmt, *args):  # to logging, not stderr
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body, indent=1).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if parts == ["health"]:
                return self._send(HTTPStatus.OK, {"ok": True, "jobs": len(service.jobs)})
            if parts == ["jobs"]:
                return self._send(HTTPStatus.OK, {"jobs": service.list()})
            if len(parts) == 2 and parts[0] == "jobs":
                job = service.get(parts[1])
                if job is None:
                    return self._send(HTTPStatus.NOT_FOUND, {"error": f"no job {parts[1]}"})
                return self._send(HTTPStatus.OK, job)
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no such resource {self.path}: GET /jobs, /jobs/<id>"})

        def do_POST(self):
            if [p for p in self.path.split("?")[0].split("/") if p] != ["jobs"]:
                return self._send(HTTPStatus.NOT_FOUND, {"error": f"POST to /jobs, not {self.path}"})
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if not 0 < n <= MAX_BODY:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": f"a job is a JSON body of 1 to {MAX_BODY} bytes"})
            try:
                body = json.loads(self.rfile.read(n))
            except ValueError as err:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON ({err})"})
            try:
                job = service.submit(body)
            except (WorkflowError, OSError) as err:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return self._send(HTTPStatus.CREATED, job)

    return ThreadingHTTPServer((host, port), Handler)
