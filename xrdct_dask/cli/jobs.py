"""``xrdct serve``: the job service for the beamline control system (:mod:`xrdct_dask.runs.service`)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer

from xrdct_dask.cli.group import _fail, _logging


def serve(
    jobs_dir: Annotated[Path, typer.Option(
        help="where every job's input, validated workflow, record and log are kept")] = Path("xrdct-jobs"),
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one)")] = 8765,
    scheduler_address: Annotated[str | None, typer.Option(
        help="run every job on this running dask scheduler (one warm cluster for the experiment)")] = None,
    base_dir: Annotated[Path | None, typer.Option(
        help="where relative paths of a submitted workflow start (default: the first --root)")] = None,
    root: Annotated[list[Path] | None, typer.Option(
        "--root", help="a folder jobs may read and write in (repeat for several); every path a job names must "
                       "lie under one, symlinks resolved (default: --base-dir, else this folder)")] = None,
    token_file: Annotated[Path | None, typer.Option(
        help="read the token from this file (a service started by a system unit) instead of generating one")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """A job service for the beamline control system: POST /jobs a workflow (path or YAML), GET
    /jobs/<id> its status and summary, DELETE /jobs/<id> to cancel; every request carries the
    token printed at start (header 'Authorization: token T' or ?token=T); jobs run one at a time,
    each input kept for replay, each log in its folder."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
    from xrdct_dask.runs.service import JobService, is_loopback, make_server, new_token, read_token_file

    _logging(verbose)
    token = read_token_file(token_file) if token_file is not None else new_token()
    service = JobService(jobs_dir, scheduler_address=scheduler_address, base_dir=base_dir, roots=root)
    try:
        server = make_server(service, host, port, token=token)
    except OSError as err:
        _fail(f"cannot listen on {host}:{port}: {err.strerror or err}")
    if not is_loopback(host):
        for line in (f"WARNING: xrdct serve listens on {host}, not only on this machine (127.0.0.1).",
                     f"WARNING: whoever reaches {host}:{server.server_address[1]} with the token runs workflows as "
                     f"{getpass.getuser()}, reading and writing under {', '.join(map(str, service.roots))}.",
                     "WARNING: keep the token secret; prefer 127.0.0.1 and an SSH tunnel."):
            typer.secho(line, fg="red", bold=True, err=True)
    url = f"http://{host}:{server.server_address[1]}/"
    typer.echo(f"xrdct job service on {url}jobs (jobs in {service.jobs_dir}; paths under "
               f"{', '.join(map(str, service.roots))})")
    if token_file is None:  # printed once, as Jupyter does
        typer.echo(f"token (send it as the header 'Authorization: token <token>' or ?token=<token>): {token}\n"
                   f"  {url}jobs?token={token}")
    else:
        typer.echo(f"token: the one in {token_file}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()
        service.close()
