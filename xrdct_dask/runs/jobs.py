"""The job queue of the job service (:mod:`xrdct_dask.runs.service`): each job validated on
submission, confined to the service's folders, run one at a time as its own ``xrdct run`` /
``xrdct watch`` process, cancelled with that process's Ctrl-C, and recorded in ``JOBS/<id>/``
(input, validated workflow, ``job.json``, log); queued jobs survive a restart of the service."""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import zarr

from xrdct_dask import store
from xrdct_dask.config import (
    MAX_NESTING,
    Workflow,
    WorkflowError,
    load_workflow,
    nesting_depth,
    read_config_text,
    workflow_from_text,
)
from xrdct_dask.io.spec import split_spec
from xrdct_dask.ownfiles import exclusive_tmp

log = logging.getLogger(__name__)


def interruptible() -> None:
    """In a job's process before it starts: Ctrl-C (SIGINT) back to its default.  A service started
    in the background of a shell (``xrdct serve &``, nohup) ignores SIGINT, and an ignored signal
    stays ignored across exec: a cancel (SIGINT first, so the run keeps what is done) would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


FINAL = ("done", "failed", "cancelled", "interrupted")
FIELDS = ("workflow", "workflow_yaml", "base_dir", "set", "mode", "idle_timeout")
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
STOP_GRACE_S = 30.0  # a cancelled job's process has this long after its Ctrl-C, then SIGTERM, then SIGKILL


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def is_loopback(host: str) -> bool:
    return host.strip() in LOOPBACK


def _dashboard_host(address: str) -> str:
    """The host part of a dask ``dashboard_address`` (``127.0.0.1:0``, ``[::1]:8787``, ``:8787`` =
    every interface)."""
    a = str(address).strip()
    if a.startswith("["):
        return a[: a.index("]") + 1] if "]" in a else a
    return a.rpartition(":")[0] if ":" in a else a


def workflow_paths(wf: Workflow) -> dict[str, Path]:
    """``{workflow key: path}`` of every file or folder a workflow reads or writes: its inputs (the
    frames by the fixed folder their template starts in), the PDF's files and the store."""

    i = wf.inputs
    frames = split_spec(i.frames)[0]
    fixed = frames.split("{", 1)[0]  # the part no template field can change
    out = {"inputs.frames": Path(fixed if "{" not in frames else (fixed.rsplit("/", 1)[0] or "/"))}
    for key in ("poni", "mask", "dark", "flat", "monitor", "scan_file"):
        if getattr(i, key) is not None:
            out[f"inputs.{key}"] = Path(getattr(i, key))
    for key in ("background_file", "config"):
        if getattr(wf.pdf, key) is not None:
            out[f"pdf.{key}"] = Path(getattr(wf.pdf, key))
    out["store.path"] = Path(wf.store.path)
    return out


class JobService:
    """The jobs of one service: validated on submission, run one at a time by a thread, each as a
    process of its own, each recorded in ``jobs_dir/<id>/`` (see the module's docstring).

    Parameters
    ----------
    jobs_dir : folder of the job records
    scheduler_address : the dask scheduler every job runs on (None: each starts a LocalCluster)
    base_dir : where relative paths of a submitted workflow start (default: the first root)
    roots : folders every path a job names must lie in, symlinks resolved (default: the current folder)
    command : ``command(job) -> argv`` of a job's process (default :meth:`xrdct_command`:
        ``python -m xrdct_dask.cli run|watch JOBS/<id>/workflow.yaml ...``)
    """

    def __init__(self, jobs_dir, scheduler_address: str | None = None, base_dir=None, roots=None, command=None):
        self.jobs_dir = Path(jobs_dir).resolve()
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler_address = scheduler_address
        self.roots = [Path(r).resolve() for r in (roots or [base_dir or Path.cwd()])]
        for r in self.roots:
            if not r.is_dir():
                raise WorkflowError(f"--root {r}: not a folder")
        self.base_dir = Path(base_dir).resolve() if base_dir else self.roots[0]
        self.command = command or self.xrdct_command
        self.jobs: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._procs: dict[str, subprocess.Popen] = {}
        requeue = []
        for rec in sorted(self.jobs_dir.glob("*/job.json")):  # jobs of an earlier service: kept, listed
            try:
                job = json.loads(rec.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(job, dict) or "id" not in job:
                continue
            if job.get("status") == "queued":
                requeue.append(job["id"])  # still to run, in the order submitted
            elif job.get("status") not in FINAL:
                job.update(status="interrupted", finished=_now(), error="the service stopped while the job ran: "
                           "submit it again to resume its store")
                self._save(job)
            self.jobs[job["id"]] = job
        for job_id in sorted(requeue, key=lambda j: (self.jobs[j].get("submitted") or "", j)):
            self._queue.put(job_id)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="xrdct-jobs")
        self._thread.start()

    # -- what a job may touch ------------------------------------------------------------------
    def _inside(self, path: Path) -> bool:
        p = Path(path).resolve()
        return any(p == r or r in p.parents for r in self.roots)

    def _confine(self, key: str, path: Path) -> None:
        if not self._inside(path):
            raise WorkflowError(f"{key}: {path} is outside the folders this service serves "
                                f"({', '.join(map(str, self.roots))}; --root)")

    def _created_by_a_job(self, path: Path) -> bool:
        """Whether the store at ``path`` was created by a job of this service (it did not exist when
        that job started)."""

        key = str(Path(path).resolve())
        return store.is_store(path) and any(j.get("store") == key and j.get("store_existed") is False
                                            for j in self.jobs.values())

    def check_store(self, wf: Workflow) -> None:
        """A job may replace (``store.overwrite``) only a store an earlier job of this service made."""
        path = Path(wf.store.path)
        if wf.store.overwrite and path.exists() and (not path.is_dir() or any(path.iterdir())) \
                and not self._created_by_a_job(path):
            raise WorkflowError(f"store.overwrite: {path} was not created by a job of this service: a job may not "
                                "replace it (choose another store.path)")

    def check_workflow(self, wf: Workflow) -> None:
        """Every path under the roots, the store not someone else's, the dashboard on this machine."""
        for key, p in workflow_paths(wf).items():
            self._confine(key, p)
        self.check_store(wf)
        host = _dashboard_host(wf.compute.dashboard_address)
        if not is_loopback(host):
            raise WorkflowError(f"compute.dashboard_address: a job's dashboard stays on this machine "
                                f"(127.0.0.1:PORT), not {wf.compute.dashboard_address!r}")

    # -- submission ----------------------------------------------------------------------------
    def submit(self, body: dict) -> dict:
        """Validate a submission and queue it; WorkflowError (one line) for a bad one."""
        if not isinstance(body, dict):
            raise WorkflowError("a job is a JSON object with 'workflow' (a path) or 'workflow_yaml' (the text)")
        unknown = set(body) - set(FIELDS)
        if unknown:
            shown = sorted(k if len(k) <= 32 and k.isidentifier() else "(a field that is not a name)" for k in unknown)
            raise WorkflowError(f"unknown field(s) {', '.join(shown)}: expected workflow or workflow_yaml, "
                                "base_dir, set, mode, idle_timeout")
        if nesting_depth(body) > MAX_NESTING:
            raise WorkflowError(f"the job is nested too deeply (at most {MAX_NESTING} levels)")
        mode = body.get("mode", "run")
        if mode not in ("run", "watch"):
            raise WorkflowError("mode must be run or watch")
        overrides = body.get("set") or {}
        if not isinstance(overrides, dict):
            raise WorkflowError("set must be an object of workflow keys: {\"store.path\": \"/data/run.zarr\"}")
        idle = body.get("idle_timeout", 600)
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not math.isfinite(idle) or not idle > 0:
            raise WorkflowError("idle_timeout must be a finite number of seconds > 0")
        if ("workflow" in body) == ("workflow_yaml" in body):
            raise WorkflowError("give either 'workflow' (the path of a workflow YAML) or 'workflow_yaml' (its text)")
        if "workflow" in body:
            if not isinstance(body["workflow"], str):
                raise WorkflowError("workflow must be the path of a workflow YAML file")
            path = Path(body["workflow"])
            path = path if path.is_absolute() else self.base_dir / path
            self._confine("workflow", path)  # before the file is even looked at
            if not path.is_file():
                raise WorkflowError(f"{path}: workflow file not found")
            text = read_config_text(path)
            wf = workflow_from_text(text, path.parent.resolve(), overrides, str(path))
        else:
            text = body["workflow_yaml"]
            if not isinstance(text, str):
                raise WorkflowError("workflow_yaml must be the YAML text of a workflow")
            if not isinstance(body.get("base_dir", ""), str):
                raise WorkflowError("base_dir must be the path of a folder")
            base = Path(body.get("base_dir") or self.base_dir)
            base = base if base.is_absolute() else self.base_dir / base
            self._confine("base_dir", base)
            wf = workflow_from_text(text, base.resolve(), overrides, "workflow_yaml")
        self.check_workflow(wf)
        now = time.time()  # ids sort in the order submitted: the time to the microsecond, then a random tag
        job_id = time.strftime("%Y%m%d-%H%M%S-", time.localtime(now)) + f"{int(now * 1e6) % 1_000_000:06d}-" + \
            uuid.uuid4().hex[:4]
        folder = self.jobs_dir / job_id
        folder.mkdir()
        (folder / "input.yaml").write_text(text)
        (folder / "workflow.yaml").write_text(wf.to_yaml())
        job = {"id": job_id, "status": "queued", "mode": mode, "store": str(Path(wf.store.path).resolve()),
               "input": str(folder / "input.yaml"), "workflow": str(folder / "workflow.yaml"), "folder": str(folder),
               "log": str(folder / "log.txt"), "set": overrides, "idle_timeout": idle, "submitted": _now(),
               "started": None, "finished": None, "error": None, "summary": None}
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

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a job: a queued one is marked cancelled and never starts; a running one gets the
        Ctrl-C of ``xrdct run`` (SIGINT: its store keeps what is marked done), then SIGTERM and
        SIGKILL to its process group if it is still there :data:`STOP_GRACE_S` later.  Returns the
        job (None: no such job); a finished job is returned as it is."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job["status"] == "queued":
                job.update(status="cancelled", finished=_now(), error="cancelled before it started")
                self._save(job)
            elif job["status"] == "running":
                job.update(status="cancelling")
                self._save(job)
                proc = self._procs.get(job_id)
                if proc is not None:
                    threading.Thread(target=self._stop, args=(proc,), daemon=True,
                                     name=f"xrdct-stop-{job_id}").start()
            return dict(job)

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
            try:
                if sig == signal.SIGINT:
                    proc.send_signal(sig)  # the job's own Ctrl-C: it closes its cluster
                else:
                    os.killpg(proc.pid, sig)  # what it left running too (its own session)
            except (ProcessLookupError, PermissionError):
                return
            if wait_s is None:
                return
            try:
                proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- running -------------------------------------------------------------------------------
    def _save(self, job: dict) -> None:

        folder = Path(job["folder"])
        data = json.dumps(job, indent=1, allow_nan=False).encode()  # strict JSON: no Infinity, no NaN
        with exclusive_tmp(folder / "job.json") as (fd, tmp):
            os.write(fd, data)
            os.replace(tmp, folder / "job.json")

    def _update(self, job_id: str, **kw) -> None:
        with self._lock:
            self.jobs[job_id].update(kw)
            self._save(self.jobs[job_id])

    def xrdct_command(self, job: dict) -> builtins.list[str]:
        """``python -m xrdct_dask.cli run|watch JOBS/<id>/workflow.yaml [--scheduler-address A]
        [--idle-timeout S]``: the job as the command line runs it (its Ctrl-C keeps the store resumable)."""
        argv = [sys.executable, "-m", "xrdct_dask.cli", job["mode"], job["workflow"]]
        if self.scheduler_address:
            argv += ["--scheduler-address", self.scheduler_address]
        if job["mode"] == "watch":
            argv += ["--idle-timeout", repr(float(job["idle_timeout"]))]
        return argv

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                job = self.jobs.get(job_id)
                if job is None or job["status"] != "queued":  # cancelled while it waited
                    continue
                job.update(status="running", started=_now(), store_existed=Path(job["store"]).exists())
                self._save(job)
            try:
                self.run_job(dict(job))
            except Exception as err:  # every failure is the job's, never the service's
                log.warning("job %s failed: %s", job_id, err)
                self._update(job_id, status="failed", finished=_now(), error=(str(err).splitlines() or [""])[0]
                             or type(err).__name__)

    def run_job(self, job: dict) -> None:
        """Run one job as its own process (output to its ``log.txt``); record how it ended."""
        job_id = job["id"]
        wf = load_workflow(job["workflow"])
        self.check_store(wf)  # a store may have appeared at its path since the job was submitted
        logfile = Path(job["log"])
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(self.command(job), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=job["folder"], start_new_session=True, preexec_fn=interruptible)
            with self._lock:
                self._procs[job_id] = proc
                cancelling = self.jobs[job_id]["status"] == "cancelling"
            if cancelling:  # cancelled between the start and here
                threading.Thread(target=self._stop, args=(proc,), daemon=True).start()
            code = proc.wait()
        with self._lock:
            self._procs.pop(job_id, None)
            cancelled = self.jobs[job_id]["status"] == "cancelling"
        if cancelled:
            self._update(job_id, status="cancelled", finished=_now(), error="cancelled while it ran: what was marked "
                         "done is kept in its store; submit it again to resume", summary=self._summary(job))
            return
        if code != 0:
            self._update(job_id, status="failed", finished=_now(), error=_last_error(logfile, code),
                         summary=self._summary(job))
            return
        self._record_job(job)
        self._update(job_id, status="done", finished=_now(), summary=self._summary(job))

    @staticmethod
    def _summary(job: dict) -> dict | None:
        """The run's summary as its store records it (``run_summary``: frames, their status, tasks,
        wall time, what this run added; ``missing`` frames for a watch), None without a store."""

        attrs = store.root_attrs(job["store"]) if store.is_store(job["store"]) else None
        summary = (attrs or {}).get("run_summary")
        if not isinstance(summary, dict):
            return None
        if job["mode"] == "watch":
            summary = {**summary, "missing": int((summary.get("frame_status") or {}).get("MISSING", 0))}
        return json.loads(json.dumps(summary, default=str))

    @staticmethod
    def _record_job(job: dict) -> None:
        """The job's id and input in the store's root attrs (what replays it)."""


        zarr.open_group(job["store"], mode="r+").attrs["job"] = {
            "id": job["id"], "input_yaml": Path(job["input"]).read_text(), "submitted": job["submitted"],
            "mode": job["mode"]}
        store.consolidate(job["store"])

    def wait(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.2) -> dict:
        """Block until job ``job_id`` is done, failed, cancelled or interrupted (TimeoutError after ``timeout_s``)."""
        t0 = time.time()
        while (job := self.get(job_id)) is not None and job["status"] not in FINAL:
            if time.time() - t0 > timeout_s:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:g} s")
            time.sleep(poll_s)
        if job is None:
            raise KeyError(f"no job {job_id}")
        return job

    def close(self) -> None:
        """Stop taking jobs after the one running (it finishes)."""
        self._queue.put(None)


def _last_error(logfile: Path, code: int) -> str:
    """The command line's one-line ``error: ...`` from the end of a job's log, else its exit status."""
    try:
        with open(logfile, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [ln.strip()[len("error: "):] for ln in lines if ln.strip().startswith("error: ")]
    if errors:
        return errors[-1][:500]
    what = "interrupted" if code in (130, -signal.SIGINT) else f"exit status {code}"
    return f"the job's process ended: {what} (see {logfile.name})"
