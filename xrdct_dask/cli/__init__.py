"""``xrdct``: a thin command line over the library (parse, call, print).

    group.py     the command group: the errors of every command mapped to one line in one place
                 (``_Commands``, ``USER_ERRORS``), --version, logging, Ctrl-C
    scans.py     simulate, demo
    runs.py      run, watch, reprocess, plan, init
    jobs.py      serve (the job service)
    stores.py    info, export, view, center (a run's store, read)
    clusters.py  cluster script, cluster list (batch-system profiles); --cluster-set

The commands are registered here, in the order ``xrdct --help`` lists them.  Every module imports
the library inside the commands, so that ``xrdct --help`` starts without dask or zarr.
"""

from __future__ import annotations

import sys

from xrdct_dask.cli import jobs, runs, scans, stores
from xrdct_dask.cli.clusters import cluster_app
from xrdct_dask.cli.group import USER_ERRORS, _Commands, app, one_line
from xrdct_dask.cli.runs import _expand_runs

for _command in (scans.simulate, runs.run, runs.watch, jobs.serve, runs.reprocess, runs.plan, stores.info, runs.init,
                 stores.export, stores.view, stores.center, scans.demo):
    app.command()(_command)
app.add_typer(cluster_app, name="cluster")

__all__ = ["USER_ERRORS", "_Commands", "_expand_runs", "app", "main", "one_line"]


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
