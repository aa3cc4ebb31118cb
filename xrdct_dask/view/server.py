"""``xrdct view``: the viewer's Bokeh server on 127.0.0.1, behind a token as Jupyter's is.

The URL printed carries a random token (``?token=...``); a request with it gets a cookie for
this port (HttpOnly, SameSite=Strict), so the page's websocket and later loads need not repeat
it.  A request without a valid token or cookie is refused (403, one line).  Tokens and cookies
are compared in constant time (:func:`hmac.compare_digest`).  The server listens on 127.0.0.1
only: reach it from another machine through an SSH tunnel (``ssh -L PORT:127.0.0.1:PORT host``).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import secrets
import socket
import threading
from functools import partial

from xrdct_dask.view.app import make_document
from xrdct_dask.view.data import RunData, ViewError

REFUSED = "refused: open the page with the URL `xrdct view` printed (it carries the access token)"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` can be listened on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def next_free_port(port: int, host: str = "127.0.0.1", tries: int = 100) -> int | None:
    """The first port after ``port`` that is free (None among the next ``tries``)."""
    return next((p for p in range(port + 1, min(port + 1 + tries, 65536)) if port_free(p, host)), None)


def make_auth(token: str, port: int):
    """A Bokeh ``AuthProvider``: the user is known when the request carries ``token`` (query
    argument) or the cookie it set; else the request goes to a page that answers 403."""
    # lazy: bokeh is optional (the view extra)
    from bokeh.server.auth_provider import AuthProvider
    from tornado.web import RequestHandler

    cookie = f"xrdct-view-{port}"
    secret = token.encode()

    def same(value) -> bool:
        return value is not None and hmac.compare_digest(str(value).encode(), secret)

    def get_user(handler):
        if same(handler.get_argument("token", None)):
            try:  # an HTTP page: remember it; a websocket's handshake cannot set cookies
                handler.set_cookie(cookie, token, httponly=True, samesite="Strict")
            except Exception:  # noqa: BLE001
                pass
            return "viewer"
        return "viewer" if same(handler.get_cookie(cookie)) else None

    class Refused(RequestHandler):
        def get(self):
            self.set_status(403)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(REFUSED + "\n")

    class TokenAuth(AuthProvider):
        @property
        def get_user(self):
            return get_user

        @property
        def login_url(self):
            return "/refused"

        @property
        def login_handler(self):
            return Refused

    return TokenAuth()


def start_server(path, port: int = 5006, *, token: str | None = None, map_name: str | None = None,
                 poll_s: float = 2.0, phases: dict | None = None):
    """Start the viewer of store ``path`` on 127.0.0.1:``port`` (0: any free port) in this
    thread's IO loop (not yet running); returns ``(server, url)``.

    Raises :class:`ViewError` (one line) for a store that is not a run of this program, an
    unknown map, or a port in use (naming the next free one).  ``phases``: d-spacings to mark
    (``{name: [d, ...]}``, angstrom; default: the workflow's ``view.phases``)."""
    # lazy: bokeh is optional (the view extra)
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server

    data = RunData(path)  # refuses what is not a run, before anything listens
    if map_name is not None:
        kinds = {"recon", "pdf/G"} | set(data.voxel_maps())
        if map_name not in kinds or (map_name == "pdf/G" and not data.has_pdf):
            raise ViewError(f"{path}: no map {map_name!r} (there are: "
                            f"{', '.join(sorted(k for k in kinds if k != 'pdf/G' or data.has_pdf))})")
    if port and not port_free(port):
        nxt = next_free_port(port)
        raise ViewError(f"port {port} is in use" + (f": try --port {nxt}" if nxt else ""))
    token = token or secrets.token_urlsafe(24)
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    app = Application(FunctionHandler(partial(make_document, path=path, map_name=map_name, poll_s=poll_s,
                                              phases=phases)))
    server = Server({"/": app}, port=port, address="127.0.0.1", num_procs=1,
                    allow_websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"],
                    auth_provider=make_auth(token, port))
    _only_needed_bundles(server)
    server.start()
    return server, f"http://127.0.0.1:{port}/?token={token}"


def _only_needed_bundles(server) -> None:
    """Serve the page with BokehJS's core and widget bundles only.  A Bokeh server page loads
    every bundle (it cannot know the document's models in advance): the MathJax, tables and
    WebGL ones are 2.3 MB of the 3.9 MB a first load parses, and this page uses none of them."""
    app = getattr(server, "_tornado", None)
    if app is None:  # another Bokeh: every bundle, as Bokeh does
        return
    full = app.resources

    def resources(absolute_url=None):
        res = full(absolute_url)
        return res.clone(components=[c for c in res.components if c in ("bokeh", "bokeh-widgets")])

    app.resources = resources


def serve_in_thread(path, timeout_s: float = 120.0, **kwargs):
    """:func:`start_server` (port 0 unless given) in a daemon thread of its own IO loop, for
    tests, benchmarks and notebooks that keep their main thread: ``(server, url)``; stop it with
    ``server.io_loop.add_callback(server.io_loop.stop)``.  Its errors are raised here."""
    box: dict = {}
    ready = threading.Event()

    def run():
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            box["server"], box["url"] = start_server(path, kwargs.pop("port", 0), **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["error"] = err
            return
        finally:
            ready.set()
        box["server"].io_loop.start()

    threading.Thread(target=run, daemon=True, name="xrdct-view").start()
    if not ready.wait(timeout_s):
        raise TimeoutError(f"the viewer of {path} did not start in {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["server"], box["url"]
