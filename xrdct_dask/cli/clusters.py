"""``xrdct cluster``: the batch-system profiles (``script``, ``list``), and ``--cluster-set``'s
parsing for the commands that start a cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from xrdct_dask.cli.group import _Commands, _fail
from xrdct_dask.config import parse_value

cluster_app = typer.Typer(no_args_is_help=True, cls=_Commands,
                          help="Batch-system profiles (dask-jobqueue keys) for --cluster.")


def _cluster_options(pairs: list[str] | None) -> dict:
    """``["queue=gpu", "cores=4"]`` -> ``{"queue": "gpu", "cores": 4}`` (values parsed as YAML)."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            _fail(f"--cluster-set {p!r}: expected key=value, e.g. queue=gpu")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = parse_value(v, f"--cluster-set {p}")
    return out


@cluster_app.command("script")
def cluster_script(
    profile: Annotated[str, typer.Option("--profile", "-p", help="profile name (xrdct cluster list) or path")],
    cluster_set: Annotated[list[str] | None, typer.Option("--cluster-set", help="override a key: queue=gpu")] = None,
) -> None:
    """Print the job script a worker job is submitted with (dask-jobqueue's dry run; starts nothing)."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
    from xrdct_dask.cluster.profiles import job_script

    typer.echo(job_script(profile, **_cluster_options(cluster_set)).rstrip())


@cluster_app.command("list")
def cluster_list() -> None:
    """The profiles found (./cluster, $XRDCT_CLUSTER_PROFILES, those shipped with the package; first wins)."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
    from xrdct_dask.cluster.profiles import ProfileError, list_profiles, load_profile

    for name, path in list_profiles().items():
        try:
            p = load_profile(path)
            typer.echo(f"{name:12s} {p.kind:6s} {p.description}  ({path})")
        except ProfileError as err:
            typer.echo(f"{name:12s} invalid: {err}")
