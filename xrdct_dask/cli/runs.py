"""The commands that run a workflow (``xrdct run``, ``watch``, ``reprocess``), plan one
(``plan``) or write one to edit (``init``)."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Annotated

import typer

from xrdct_dask.cli.clusters import _cluster_options
from xrdct_dask.cli.group import _fail, _logging, _until_ctrl_c
from xrdct_dask.config import load_changes, load_workflow, parse_overrides
from xrdct_dask.resources import write_workflow_template

ALLOW_MISSING_HELP = ("run although whole slices of the workflow's grid have no frame (flagged missing): else "
                      "refused before the run, or exit 1 after it (scan.allow_missing)")


def run(
    workflow: Annotated[Path, typer.Argument(help="workflow YAML")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override a key: --set integrate.npt_rad=2000")] = None,
    scheduler_address: Annotated[str | None, typer.Option(
        help="attach to a running dask scheduler (tcp://...)")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", help="batch-system profile: a name from `xrdct cluster list` (slurm-cpu, slurm-gpu, pbs) "
                          "or a path")] = None,
    jobs: Annotated[int | None, typer.Option(help="batch jobs to start with --cluster (adaptive: the maximum)")] = None,
    adaptive: Annotated[bool | None, typer.Option(
        "--adaptive/--no-adaptive", help="with --cluster: scale between 0 and --jobs jobs with the load")] = None,
    cluster_set: Annotated[list[str] | None, typer.Option(
        "--cluster-set",
        help="override a profile key: --cluster-set queue=gpu --cluster-set walltime=08:00:00")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help=ALLOW_MISSING_HELP)] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a workflow: decode + integrate -> sinograms -> reconstruction -> G(r), into one zarr store."""
    with _until_ctrl_c():
        # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
        from xrdct_dask.runs import execute as wfmod

        _logging(verbose)
        if cluster is not None and scheduler_address is not None:
            _fail("give --cluster (start batch jobs) or --scheduler-address (use a running scheduler), not both")
        wf = load_workflow(workflow, _with_allow_missing(parse_overrides(set_), allow_missing))
        path = wfmod.run(wf, scheduler_address=scheduler_address, cluster=cluster, jobs=jobs, adaptive=adaptive,
                         cluster_options=_cluster_options(cluster_set))
    typer.echo(f"store: {path}")
    _refuse_missing_slices(path, wf)


def _with_allow_missing(overrides: dict, allow: bool) -> dict:
    return {**overrides, "scan.allow_missing": True} if allow else overrides


def _refuse_missing_slices(path: Path, wf) -> None:
    """Exit 1 with one line when a whole slice of the finished run has no frame (the scan is smaller
    than the workflow says), unless missing slices are allowed."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
    from xrdct_dask import store
    from xrdct_dask.runs.report import missing_slices_message

    msg = missing_slices_message(store.read_attrs(path).get("run_summary") or {}, wf.scan.nz)
    if msg and not wf.scan.allow_missing:
        typer.secho(f"error: {msg}; the store keeps what was integrated: fix scan.nz, or pass --allow-missing "
                    f"to accept the missing slices", fg="red", err=True)
        raise typer.Exit(1)


def watch(
    workflow: Annotated[Path, typer.Argument(help="workflow YAML of the acquisition being written")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set store.omega_chunk=2")] = None,
    idle_timeout: Annotated[float, typer.Option(
        help="seconds without a new frame after which the frames still missing are flagged and the watch "
             "ends")] = 600.0,
    scheduler_address: Annotated[str | None, typer.Option(
        help="attach to a running dask scheduler (tcp://...)")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", help="batch-system profile: a name from `xrdct cluster list` or a path")] = None,
    jobs: Annotated[int | None, typer.Option(help="batch jobs to start with --cluster")] = None,
    cluster_set: Annotated[list[str] | None, typer.Option(
        "--cluster-set", help="override a profile key: --cluster-set queue=gpu")] = None,
    png_every: Annotated[float, typer.Option(help="seconds between redraws of RUN-live.png (0: none)")] = 2.0,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help=ALLOW_MISSING_HELP)] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Follow an acquisition: integrate frames as the detector writes them, reconstruct each slice
    once its sinogram is complete, into the same store as `xrdct run` (RUN-live.png shows it)."""
    with _until_ctrl_c():
        # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
        from xrdct_dask.runs import live
        from xrdct_dask.view.live import live_paths

        _logging(verbose)
        if cluster is not None and scheduler_address is not None:
            _fail("give --cluster (start batch jobs) or --scheduler-address (use a running scheduler), not both")
        if not idle_timeout > 0:
            _fail(f"--idle-timeout must be > 0 s (got {idle_timeout})")
        live.wait_for_workflow(workflow, idle_timeout)  # an acquisition may write it after the watch starts
        wf = load_workflow(workflow, _with_allow_missing(parse_overrides(set_), allow_missing))
        res = live.watch(wf, idle_timeout_s=idle_timeout, scheduler_address=scheduler_address, cluster=cluster,
                         jobs=jobs, cluster_options=_cluster_options(cluster_set), png_every_s=png_every)
    if res.timed_out:
        typer.echo(f"idle timeout: {res.missing} frames never came (flagged missing; a rerun reads them if they come)")
    typer.echo(f"store: {res.store}\nlive picture: {live_paths(res.store)[1]}")


def _expand_runs(runs: list[str]) -> list[Path]:
    """Run stores named on the command line; quoted globs (``'scans/*/run.zarr'``) are expanded here."""
    out: list[Path] = []
    for r in runs:
        hits = sorted(glob.glob(r)) if any(c in r for c in "*?[") else [r]
        if not hits:
            _fail(f"{r}: no run store matches")
        out += [Path(h) for h in hits]
    return out


def reprocess(
    runs: Annotated[list[str], typer.Argument(help="run stores (RUN.zarr), or quoted globs; several run as one graph")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="change a key: --set integrate.npt_rad=3000")] = None,
    changes: Annotated[Path | None, typer.Option(
        "--changes", help="a YAML file of changes in the workflow's sections (workflows/reprocess.yaml); "
                          "--set wins")] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", help="rerun from this stage at least: integrate | recon | pdf")] = None,
    out: Annotated[Path | None, typer.Option(
        help="the new store (one run only); default RUN-<digest>.zarr beside it")] = None,
    scheduler_address: Annotated[str | None, typer.Option(
        help="attach to a running dask scheduler (tcp://...)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Rerun old runs from their stored workflow with changes, recomputing only the stages downstream of them."""
    with _until_ctrl_c():
        # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
        from xrdct_dask.runs import reprocess as rp

        _logging(verbose)
        overrides = {**(load_changes(changes) if changes is not None else {}), **parse_overrides(set_)}
        paths = rp.reprocess(_expand_runs(runs), overrides, from_, out, scheduler_address=scheduler_address)
    for p in paths:
        typer.echo(f"store: {p}")


def plan(
    workflow: Annotated[Path, typer.Argument(help="workflow YAML")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set scan.nz=1000")] = None,
    gpu_frames_per_s: Annotated[float | None, typer.Option(help="decode + integrate frames/s of one GPU")] = None,
    cpu_frames_per_s_per_core: Annotated[float | None, typer.Option(help="frames/s of one CPU core")] = None,
    frame_bytes: Annotated[int | None, typer.Option(
        help="bytes per frame file (default: the first frame's size)")] = None,
    results: Annotated[Path | None, typer.Option(
        help="read throughputs from this RESULTS.md (default: the benchmarks/RESULTS.md figures shipped with "
             "the package)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures as JSON")] = None,
    graph: Annotated[bool, typer.Option("--graph", help="also build every wave's graph (nothing computed): "
                                                        "tasks, seconds and the client's peak memory")] = False,
    gpus: Annotated[int | None, typer.Option(
        min=1, help="GPUs the run integrates on (default: those of the cluster profile, else of this machine)")] = None,
    fs_gbps: Annotated[float | None, typer.Option(
        "--fs-gbps", min=0.001,
        help="GB/s the file system reads the frames at: bounds the run's frames/s and hours")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster",
        help="plan for this batch-system profile's jobs (default: compute.cluster, else this machine)")] = None,
    jobs: Annotated[int | None, typer.Option(
        min=1, help="with a cluster profile: its jobs (default compute.jobs)")] = None,
) -> None:
    """Print what a run will do (frames, tasks, waves, bytes, files, hours) without building its graph."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
    from xrdct_dask.runs.plan import build_waves, format_plan, plan_workflow

    wf = load_workflow(workflow, parse_overrides(set_))
    p = plan_workflow(wf, frame_bytes=frame_bytes, gpu_frames_per_s=gpu_frames_per_s,
                      cpu_frames_per_s_per_core=cpu_frames_per_s_per_core, results=results, gpus=gpus,
                      fs_gbps=fs_gbps, cluster=cluster, jobs=jobs)
    typer.echo(format_plan(p))
    out = p.to_dict()
    if graph:
        g = build_waves(wf)
        typer.echo(f"graph: {g['waves']} waves built, {g['tasks']:,} tasks (at most {g['max_wave_tasks']:,} in a "
                   f"wave), "
                   f"{g['seconds']:.1f} s ({1e3 * g['seconds'] / max(g['tasks'], 1):.2f} ms a task); client peak "
                   f"memory {g['peak_rss_bytes'] / 1e9:.2f} GB")
        out["graph"] = g
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=1))


def init(
    path: Annotated[Path, typer.Argument(
        help="file to write (a folder: PATH/workflow.yaml); never overwritten")] = Path("workflow.yaml"),
) -> None:
    """Write the documented workflow (every key, its default and unit) to edit for your scan."""
    out = write_workflow_template(path)
    typer.echo(f"wrote {out}: set inputs, scan and store, then `xrdct plan {out}` and `xrdct run {out}`")
