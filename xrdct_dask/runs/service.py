"""A job service for the beamline control system (``xrdct serve``): submit a workflow, get its
status and output store back over HTTP + JSON (the standard library's ``ThreadingHTTPServer``).

    POST   /jobs        {"workflow": "/path/workflow.yaml"}   or   {"workflow_yaml": "<the YAML text>",
                        "base_dir": "/where/relative/paths/start"};  optional "set": {"store.path": ...},
                        "mode": "run" (default: the frames are written) | "watch" (follow the acquisition),
                        "idle_timeout": seconds (watch)
                        -> 201 {"id", "status": "queued", "store", "input", ...}; 400 {"error": one line}
    GET    /  or /jobs  -> {"jobs": [job, ...]}
    GET    /jobs/<id>   -> job: id, status (queued | running | cancelling | done | failed | cancelled |
                           interrupted), mode, store, submitted / started / finished (ISO times), error,
                           folder, log, summary (the run's summary, as the store's ``run_summary``)
    DELETE /jobs/<id>   cancel: a queued job never starts; a running one is stopped as Ctrl-C stops
                        ``xrdct run`` (what is marked done is kept: the same job submitted again resumes)
    GET    /health      -> {"ok": true, "jobs": n}

Every request carries the service's token, as Jupyter's server asks: the header
``Authorization: token <token>`` (or ``Bearer <token>``), or ``?token=<token>`` in the URL.  It is
generated at start and printed once, or read from ``--token-file`` (a service started by a
system unit), and compared in constant time (:func:`hmac.compare_digest`).  A request without it
is refused (403) before anything else is looked at.

What a job may touch: the workflow it names (and the ``base_dir`` of a workflow given as text)
and every path its workflow names (frames, PONI, mask, ..., the store) must lie, symlinks
resolved, under the folders the service was started with (``roots``, ``--root``; default the
current folder): a job cannot make the service read ``/etc/shadow`` or write beside it.  An error
never quotes a file that is not a workflow (:func:`xrdct_dask.config.load.workflow_from_dict`).  A job
may set ``store.overwrite`` only on a store an earlier job of this service created, and may open a
dashboard only on this machine's loopback address.

Jobs run one after another, in the order submitted, each as its own ``xrdct run`` / ``xrdct watch``
process on the service's scheduler (``--scheduler-address``: one warm cluster for the whole
experiment) or on a cluster of its own; that process's output (progress, warnings, dask's logs)
goes to ``JOBS/<id>/log.txt``, not the service's console.  Every job keeps its input for replay,
as dahu does: ``JOBS/<id>/input.yaml`` (what was submitted), ``JOBS/<id>/workflow.yaml``
(validated, paths absolute: ``xrdct run`` it to replay), ``JOBS/<id>/job.json`` (the record); and
the store's root attrs get ``job`` (id and input text).  Queued jobs stay queued across a restart
of the service; a job running when it stopped is marked interrupted (its store resumes).
The server binds to 127.0.0.1 unless told otherwise: it runs what it is sent, so it must not face
an open network.

This module is the HTTP side (the token, the requests, the server); the job queue, what a job may
touch and how its process is run and stopped are :mod:`xrdct_dask.runs.jobs`
(:class:`~xrdct_dask.runs.jobs.JobService`).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from xrdct_dask.config import MAX_CONFIG_BYTES, MAX_NESTING, WorkflowError, read_config_text
from xrdct_dask.runs.jobs import FINAL, JobService, interruptible, is_loopback, workflow_paths

__all__ = ["FINAL", "MAX_BODY", "MIN_TOKEN_CHARS", "JobService", "interruptible", "is_loopback", "make_server",
           "new_token", "read_token_file", "workflow_paths"]

log = logging.getLogger(__name__)

MAX_BODY = MAX_CONFIG_BYTES + (64 << 10)  # bytes of a submission: a workflow's text at most, and the fields
MIN_TOKEN_CHARS = 16


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe), as Jupyter generates one at start."""

    return secrets.token_urlsafe(32)


def read_token_file(path: str | Path) -> str:
    """The token kept in ``path`` (its first line; a service started by a system unit): a one-line
    WorkflowError when the file is missing, too large or holds fewer than 16 characters."""
    text = read_config_text(Path(path), f"--token-file {path}")
    token = (text.splitlines() or [""])[0].strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise WorkflowError(f"--token-file {path}: its first line must hold a token of at least {MIN_TOKEN_CHARS} "
                            "characters")
    return token


def _authorized(handler: BaseHTTPRequestHandler, token: str) -> bool:
    """The request carries ``token``: ``Authorization: token T`` / ``Bearer T``, or ``?token=T``;
    compared in constant time."""
    given = ""
    auth = handler.headers.get("Authorization") or ""
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() in ("token", "bearer"):
        given = value.strip()
    else:
        q = parse_qs(urlsplit(handler.path).query).get("token")
        given = q[0] if q else ""
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


def make_server(service: JobService, host: str = "127.0.0.1", port: int = 8765, *,
                token: str) -> ThreadingHTTPServer:
    """The HTTP server of ``service`` (not started: ``serve_forever()``; port 0 picks a free one);
    every request must carry ``token`` (see the module's docstring)."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the service's token must be a string of at least {MIN_TOKEN_CHARS} characters")

    class Handler(BaseHTTPRequestHandler):
        server_version = "xrdct-serve"
        timeout = 30  # a connection that sends nothing for this long is closed: stalled clients hold no thread

        def log_message(self, fmt, *args):  # to logging, not stderr; never the query (it may hold the token)
            log.info("%s %s %s", self.address_string(), self.command, urlsplit(self.path).path)

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body, indent=1, allow_nan=False, default=str).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _parts(self) -> list[str] | None:
            if not _authorized(self, token):
                self._send(HTTPStatus.FORBIDDEN, {"error": "a token is required: the header 'Authorization: token "
                                                           "<token>' or ?token=<token> (printed when the service "
                                                           "started)"})
                return None
            return [p for p in urlsplit(self.path).path.split("/") if p]

        def do_GET(self):
            parts = self._parts()
            if parts is None:
                return
            if parts == ["health"]:
                return self._send(HTTPStatus.OK, {"ok": True, "jobs": len(service.jobs)})
            if parts in ([], ["jobs"]):
                return self._send(HTTPStatus.OK, {"jobs": service.list()})
            if len(parts) == 2 and parts[0] == "jobs":
                job = service.get(parts[1])
                if job is None:
                    return self._send(HTTPStatus.NOT_FOUND, {"error": f"no job {parts[1][:64]}"})
                return self._send(HTTPStatus.OK, job)
            return self._send(HTTPStatus.NOT_FOUND, {"error": "no such resource: GET /jobs, /jobs/<id>, /health"})

        def do_DELETE(self):
            parts = self._parts()
            if parts is None:
                return
            if len(parts) != 2 or parts[0] != "jobs":
                return self._send(HTTPStatus.NOT_FOUND, {"error": "DELETE /jobs/<id> cancels a job"})
            before = service.get(parts[1])
            if before is None:
                return self._send(HTTPStatus.NOT_FOUND, {"error": f"no job {parts[1][:64]}"})
            if before["status"] in FINAL:
                return self._send(HTTPStatus.CONFLICT, {"error": f"job {before['id']} is {before['status']}: nothing "
                                                                 "to cancel"})
            return self._send(HTTPStatus.ACCEPTED, service.cancel(parts[1]))

        def do_POST(self):
            parts = self._parts()
            if parts is None:
                return
            if parts != ["jobs"]:
                return self._send(HTTPStatus.NOT_FOUND, {"error": "POST to /jobs"})
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if not 0 < n <= MAX_BODY:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": f"a job is a JSON body of 1 to {MAX_BODY:,} bytes "
                                                                    "(with its Content-Length)"})
            try:
                body = json.loads(self.rfile.read(n), parse_constant=_no_constant)
            except RecursionError:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": f"the body is nested too deeply (at most "
                                                                    f"{MAX_NESTING} levels)"})
            except ValueError as err:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON ({_json_problem(err)})"})
            try:
                job = service.submit(body)
            except (WorkflowError, OSError) as err:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": (str(err).splitlines() or ["refused"])[0]})
            return self._send(HTTPStatus.CREATED, job)

    return ThreadingHTTPServer((host, port), Handler)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _json_problem(err: ValueError) -> str:
    """What is wrong with a body that is not JSON, without quoting it."""
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno}, column {err.colno}"
    return str(err).splitlines()[0][:100]
