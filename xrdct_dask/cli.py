"""``xrdct``: a thin command line over the library (parse, call, print)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from xrdct_dask.config import WorkflowError, load_workflow, parse_overrides, parse_value
from xrdct_dask.view.console import show_messages

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="XRD-CT / PDF-CT reduction: simulate a scan, run a workflow, look at the result.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("xrdct-dask")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        typer.echo(f"xrdct-dask {v} ({Path(__file__).resolve().parent})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the installed version and where it is, then exit")] = False,
) -> None:
    pass


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    show_messages()  # the run's own messages (dashboard, tasks kept, summary) on stdout
    for noisy in ("distributed", "silx", "pyFAI"):  # keep their INFO chatter off the terminal
        logging.getLogger(noisy).setLevel(logging.INFO if verbose and noisy == "distributed" else logging.ERROR)


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Argument(help="folder to create (frames, PONI, mask, monitor, truth, workflow.yaml)")],
    nz: Annotated[int, typer.Option(help="slices")] = 2,
    nomega: Annotated[int, typer.Option(help="rotation steps")] = 32,
    nx: Annotated[int, typer.Option(help="translation steps (voxels across)")] = 24,
    detector: Annotated[str, typer.Option(help="pilatus2m (1679x1475) or small (8x8 binned)")] = "small",
    order: Annotated[str, typer.Option(help="raster | snake")] = "snake",
    fast_axis: Annotated[str, typer.Option(help="x | omega")] = "x",
    omega_range: Annotated[int, typer.Option(help="180 | 360 degrees")] = 180,
    npt_rad: Annotated[int, typer.Option(help="radial bins in the written workflow")] = 1000,
    seed: Annotated[int, typer.Option()] = 0,
    format_: Annotated[str, typer.Option("--format", help="cbf (one file per frame) | h5 (Eiger-like master + "
                                                          "bitshuffle-LZ4 data files)")] = "cbf",
    frames_per_file: Annotated[int, typer.Option(help="--format h5: frames per data file")] = 100,
    rate: Annotated[Optional[float], typer.Option(
        help="write the frames at this many per second, as an acquisition (each under a temporary name, then "
             "renamed); follow it with `xrdct watch OUT_DIR/workflow.yaml`")] = None,
    in_place: Annotated[bool, typer.Option(
        "--in-place", help="with --rate: write each frame under its final name, in parts over its 1/rate "
                           "(a reader sees partial files)")] = False,
    frames: Annotated[Optional[str], typer.Option(
        help="frames template relative to OUT_DIR, a beamline's layout: slice_{z:04d}/line_{line:05d}/"
             "frame_{index:06d}.cbf (.cbf.gz, .cbf.bz2), or with --format h5 a file per slice or line: "
             "slice_{z:04d}.h5::/entry/data/data")] = None,
    mu_per_px: Annotated[Optional[str], typer.Option(
        help="a dense sample: attenuation per pixel of each phase (Ni,Fe,NaCl,aSi), e.g. 0.02,0.018,0.01,0.006; "
             "the beam is attenuated in to and out of every voxel and transmission.txt is recorded")] = None,
    texture: Annotated[Optional[list[str]], typer.Option(
        help="a textured, strained phase: PHASE:AMPLITUDE:ORIENTATION_DEG[:STRAIN:STRAIN_AXIS_DEG], intensity "
             "1 + AMPLITUDE cos 2(chi - ORIENTATION), d = d0 (1 + STRAIN cos 2(chi - AXIS)); repeat per phase, "
             "e.g. --texture Ni:0.6:90 --texture Fe:0.3:0:0.003:90")] = None,
    distance_m: Annotated[float, typer.Option(help="sample-detector distance (m): larger, more pixels per azimuthal "
                                                   "sector and a smaller q range")] = 0.2,
) -> None:
    """Simulate an XRD-CT scan with ground truth, ready for `xrdct run OUT_DIR/workflow.yaml`."""
    from rich.progress import Progress

    from xrdct_dask.simulate import simulate_scan

    if omega_range not in (180, 360):
        _fail(f"--omega-range must be 180 or 360 (got {omega_range})")
    if format_ not in ("cbf", "h5"):
        _fail(f"--format must be cbf or h5 (got {format_})")
    if rate is not None and not rate > 0:
        _fail(f"--rate must be > 0 frames/s (got {rate})")
    if rate is not None and format_ != "cbf":
        _fail("--rate writes CBF files (one per frame): use --format cbf")
    if in_place and rate is None:
        _fail("--in-place goes with --rate")
    if rate is not None and frames is not None:
        _fail("--rate writes the frames into one folder, frames/: leave --frames out")
    if rate is not None and (out_dir / "frames").exists() and any((out_dir / "frames").iterdir()):
        _fail(f"{out_dir / 'frames'} is not empty: --rate writes a new acquisition there")
    mu = None
    if mu_per_px is not None:
        try:
            mu = [float(v) for v in mu_per_px.split(",")]
        except ValueError:
            _fail(f"--mu-per-px must be numbers separated by commas (got {mu_per_px!r})")
    textures = None
    if texture:
        from xrdct_dask.simulate import parse_texture

        try:
            textures = dict(parse_texture(t) for t in texture)
        except ValueError as err:
            _fail(str(err))
    if not distance_m > 0:
        _fail(f"--distance-m must be > 0 (got {distance_m})")
    t0 = time.perf_counter()
    with Progress() as bar:
        task = bar.add_task("simulating frames", total=nz * nomega * nx)
        try:
            scan = simulate_scan(out_dir, nz, nomega, nx, detector=detector, order=order, fast_axis=fast_axis,
                                 omega_range_deg=omega_range, npt_rad=npt_rad, seed=seed, fmt=format_,
                                 frames_per_file=frames_per_file, frames=frames, mu_per_px=mu, texture=textures,
                                 distance_m=distance_m, progress=lambda k, n: bar.update(task, completed=k))
        except ValueError as err:
            _fail(str(err))
    typer.echo(f"{nz * nomega * nx} frames in {time.perf_counter() - t0:.1f} s -> {scan.root}")
    if rate is None:
        typer.echo(f"run it: xrdct run {scan.workflow}")
        return
    _acquire(scan, rate, in_place)


def _acquire(scan, rate: float, in_place: bool) -> None:
    """Move the simulated frames aside and write them back into frames/ at ``rate`` per second."""
    import os
    import shutil
    import uuid

    from xrdct_dask.simulate import stream_frames

    frames = scan.frame_path(0).parent
    staged = frames.parent / f".frames-staged-{uuid.uuid4().hex[:8]}"
    os.rename(frames, staged)
    frames.mkdir()
    n = scan.nz * scan.nomega * scan.nx
    typer.echo(f"acquiring {n} frames at {rate:g} Hz ({n / rate:.1f} s){' in place' if in_place else ''}: "
               f"follow it with `xrdct watch {scan.workflow}`")
    try:
        whole = stream_frames([staged / scan.frame_path(i).name for i in range(n)],
                              [scan.frame_path(i) for i in range(n)], rate, in_place=in_place)
    except KeyboardInterrupt:
        typer.secho("acquisition stopped", fg="yellow", err=True)
        raise typer.Exit(130)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # this command's own copy
    typer.echo(f"{n} frames written in {whole[-1] - whole[0]:.1f} s")


@app.command()
def run(
    workflow: Annotated[Path, typer.Argument(help="workflow YAML")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key: --set integrate.npt_rad=2000")] = None,
    scheduler_address: Annotated[Optional[str], typer.Option(help="attach to a running dask scheduler (tcp://...)")] = None,
    cluster: Annotated[Optional[str], typer.Option(
        "--cluster", help="batch-system profile: a name from `xrdct cluster list` (slurm-cpu, slurm-gpu, pbs) or a path")] = None,
    jobs: Annotated[Optional[int], typer.Option(help="batch jobs to start with --cluster (adaptive: the maximum)")] = None,
    adaptive: Annotated[Optional[bool], typer.Option(
        "--adaptive/--no-adaptive", help="with --cluster: scale between 0 and --jobs jobs with the load")] = None,
    cluster_set: Annotated[Optional[list[str]], typer.Option(
        "--cluster-set", help="override a profile key: --cluster-set queue=gpu --cluster-set walltime=08:00:00")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a workflow: decode + integrate -> sinograms -> reconstruction -> G(r), into one zarr store."""
    from xrdct_dask.cluster.profiles import ProfileError
    from xrdct_dask.runs.execute import RunStopped, run

    _logging(verbose)
    if cluster is not None and scheduler_address is not None:
        _fail("give --cluster (start batch jobs) or --scheduler-address (use a running scheduler), not both")
    try:
        wf = load_workflow(workflow, parse_overrides(set_))
        path = run(wf, scheduler_address=scheduler_address, cluster=cluster, jobs=jobs, adaptive=adaptive,
                         cluster_options=_cluster_options(cluster_set))
    except (WorkflowError, FileExistsError, ProfileError, RunStopped) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted()
    typer.echo(f"store: {path}")


@app.command()
def watch(
    workflow: Annotated[Path, typer.Argument(help="workflow YAML of the acquisition being written")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key: --set store.omega_chunk=2")] = None,
    idle_timeout: Annotated[float, typer.Option(
        help="seconds without a new frame after which the frames still missing are flagged and the watch ends")] = 600.0,
    scheduler_address: Annotated[Optional[str], typer.Option(help="attach to a running dask scheduler (tcp://...)")] = None,
    cluster: Annotated[Optional[str], typer.Option(
        "--cluster", help="batch-system profile: a name from `xrdct cluster list` or a path")] = None,
    jobs: Annotated[Optional[int], typer.Option(help="batch jobs to start with --cluster")] = None,
    cluster_set: Annotated[Optional[list[str]], typer.Option(
        "--cluster-set", help="override a profile key: --cluster-set queue=gpu")] = None,
    png_every: Annotated[float, typer.Option(help="seconds between redraws of RUN-live.png (0: none)")] = 2.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Follow an acquisition: integrate frames as the detector writes them, reconstruct each slice
    once its sinogram is complete, into the same store as `xrdct run` (RUN-live.png shows it)."""
    from xrdct_dask.cluster.profiles import ProfileError
    from xrdct_dask.runs import live
    from xrdct_dask.runs.execute import RunStopped
    from xrdct_dask.view.live import live_paths

    _logging(verbose)
    if cluster is not None and scheduler_address is not None:
        _fail("give --cluster (start batch jobs) or --scheduler-address (use a running scheduler), not both")
    if not idle_timeout > 0:
        _fail(f"--idle-timeout must be > 0 s (got {idle_timeout})")
    try:
        wf = load_workflow(workflow, parse_overrides(set_))
        res = live.watch(wf, idle_timeout_s=idle_timeout, scheduler_address=scheduler_address, cluster=cluster,
                         jobs=jobs, cluster_options=_cluster_options(cluster_set), png_every_s=png_every)
    except (WorkflowError, FileExistsError, ProfileError, RunStopped) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted()
    if res.timed_out:
        typer.echo(f"idle timeout: {res.missing} frames never came (flagged missing; a rerun reads them if they come)")
    typer.echo(f"store: {res.store}\nlive picture: {live_paths(res.store)[1]}")


@app.command()
def serve(
    jobs_dir: Annotated[Path, typer.Option(help="where every job's input, validated workflow and record are kept")] = Path(
        "xrdct-jobs"),
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one)")] = 8765,
    scheduler_address: Annotated[Optional[str], typer.Option(
        help="run every job on this running dask scheduler (one warm cluster for the experiment)")] = None,
    base_dir: Annotated[Optional[Path], typer.Option(
        help="where relative paths of a submitted workflow start (default: this folder)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """A job service for the beamline control system: POST /jobs a workflow (path or YAML), GET
    /jobs/<id> its status and output store; jobs run one at a time, each input kept for replay."""
    from xrdct_dask.runs.service import JobService, make_server

    _logging(verbose)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: listening on {host}: anyone who reaches it can run workflows here", fg="yellow", err=True)
    service = JobService(jobs_dir, scheduler_address=scheduler_address, base_dir=base_dir)
    try:
        server = make_server(service, host, port)
    except OSError as err:
        _fail(f"cannot listen on {host}:{port}: {err.strerror or err}")
    typer.echo(f"xrdct job service on http://{host}:{server.server_address[1]}/jobs (jobs in {service.jobs_dir})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()
        service.close()


def _interrupted() -> None:
    typer.secho("interrupted: what is marked done is kept; run the same command to resume", fg="yellow", err=True)
    raise typer.Exit(130)


def _expand_runs(runs: list[str]) -> list[Path]:
    """Run stores named on the command line; quoted globs (``'scans/*/run.zarr'``) are expanded here."""
    import glob

    out: list[Path] = []
    for r in runs:
        hits = sorted(glob.glob(r)) if any(c in r for c in "*?[") else [r]
        if not hits:
            _fail(f"{r}: no run store matches")
        out += [Path(h) for h in hits]
    return out


@app.command()
def reprocess(
    runs: Annotated[list[str], typer.Argument(help="run stores (RUN.zarr), or quoted globs; several run as one graph")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="change a key: --set integrate.npt_rad=3000")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="rerun from this stage at least: integrate | recon | pdf")] = None,
    out: Annotated[Optional[Path], typer.Option(help="the new store (one run only); default RUN-<digest>.zarr beside it")] = None,
    scheduler_address: Annotated[Optional[str], typer.Option(help="attach to a running dask scheduler (tcp://...)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Rerun old runs from their stored workflow with changes, recomputing only the stages downstream of them."""
    from xrdct_dask.runs import reprocess as rp
    from xrdct_dask.runs.execute import RunStopped

    _logging(verbose)
    try:
        paths = rp.reprocess(_expand_runs(runs), parse_overrides(set_), from_, out,
                             scheduler_address=scheduler_address)
    except (WorkflowError, FileExistsError, RunStopped) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        _interrupted()
    for p in paths:
        typer.echo(f"store: {p}")


@app.command()
def plan(
    workflow: Annotated[Path, typer.Argument(help="workflow YAML")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key: --set scan.nz=1000")] = None,
    gpu_frames_per_s: Annotated[Optional[float], typer.Option(help="decode + integrate frames/s of one GPU")] = None,
    cpu_frames_per_s_per_core: Annotated[Optional[float], typer.Option(help="frames/s of one CPU core")] = None,
    frame_bytes: Annotated[Optional[int], typer.Option(help="bytes per frame file (default: the first frame's size)")] = None,
    results: Annotated[Optional[Path], typer.Option(
        help="read throughputs from this RESULTS.md (default: the benchmarks/RESULTS.md figures shipped with the package)")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the figures as JSON")] = None,
    graph: Annotated[bool, typer.Option("--graph", help="also build every wave's graph (nothing computed): "
                                                        "tasks, seconds and the client's peak memory")] = False,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs the run integrates on (the read bandwidth they need)")] = 1,
    fs_gbps: Annotated[Optional[float], typer.Option(
        "--fs-gbps", min=0.001, help="GB/s the file system reads the frames at: bounds the run's frames/s and hours")] = None,
) -> None:
    """Print what a run will do (frames, tasks, waves, bytes, files, hours) without building its graph."""
    import json

    from xrdct_dask.runs.plan import build_waves, format_plan, plan_workflow

    try:
        wf = load_workflow(workflow, parse_overrides(set_))
        p = plan_workflow(wf, frame_bytes=frame_bytes, gpu_frames_per_s=gpu_frames_per_s,
                          cpu_frames_per_s_per_core=cpu_frames_per_s_per_core, results=results, gpus=gpus,
                          fs_gbps=fs_gbps)
    except (WorkflowError, FileNotFoundError) as err:
        _fail(str(err))
    typer.echo(format_plan(p))
    out = p.to_dict()
    if graph:
        g = build_waves(wf)
        typer.echo(f"graph: {g['waves']} waves built, {g['tasks']:,} tasks (at most {g['max_wave_tasks']:,} in a wave), "
                   f"{g['seconds']:.1f} s ({1e3 * g['seconds'] / max(g['tasks'], 1):.2f} ms a task); client peak "
                   f"memory {g['peak_rss_bytes'] / 1e9:.2f} GB")
        out["graph"] = g
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=1))


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="file to write (a folder: PATH/workflow.yaml); never overwritten")] = Path(
        "workflow.yaml"),
) -> None:
    """Write the documented workflow (every key, its default and unit) to edit for your scan."""
    from xrdct_dask.resources import write_workflow_template

    try:
        out = write_workflow_template(path)
    except (FileExistsError, NotADirectoryError, PermissionError) as err:
        _fail(str(err))
    typer.echo(f"wrote {out}: set inputs, scan and store, then `xrdct plan {out}` and `xrdct run {out}`")


@app.command()
def export(
    run_store: Annotated[Path, typer.Argument(metavar="RUN.zarr", help="the run store to export")],
    out: Annotated[Optional[Path], typer.Argument(metavar="[OUT.h5]", help="NeXus / HDF5 file to write")] = None,
    group: Annotated[Optional[list[str]], typer.Option(
        "--group", help="store group to export (repeat: --group recon --group pdf); default: reduced, recon, pdf")] = None,
    compression: Annotated[str, typer.Option(help="gzip (every reader) | lz4 (hdf5plugin) | none")] = "gzip",
    overwrite: Annotated[bool, typer.Option(help="replace OUT.h5 if it is an earlier export of this program")] = False,
    pdf_files: Annotated[Optional[Path], typer.Option(
        "--pdf-files", help="folder for PDFgetX3-layout .iq .sq .fq .gr files (PDFgui, diffpy.srfit)")] = None,
    voxels: Annotated[Optional[str], typer.Option(help="--pdf-files of voxels z,y,x;z,y,x... (one file set each)")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="--pdf-files of a .npy bool (z,y,x) or (y,x) mask's mean")] = None,
    region: Annotated[Optional[str], typer.Option(help="--pdf-files of a box z0:z1,y0:y1,x0:x1's mean")] = None,
    scheduler_address: Annotated[Optional[str], typer.Option(
        help="read and compress the NeXus chunks on the workers of a running dask scheduler (tcp://...); "
             "default: here")] = None,
) -> None:
    """Export a run: OUT.h5 as NeXus (NXentry / NXdata with axes and units, for silx, PyMca, DAWN,
    h5py), and/or --pdf-files OUTDIR in PDFgetX3's layout for voxels, a mask's or a region's mean."""
    from xrdct_dask.export import (
        DEFAULT_GROUPS,
        ExportError,
        export_nexus,
        export_pdf_files,
        parse_region,
        parse_voxels,
    )
    from xrdct_dask.pdf import PDFParameterError

    if out is None and pdf_files is None:
        _fail("nothing to do: give OUT.h5 (NeXus) and/or --pdf-files OUTDIR (with --voxels, --mask or --region)")
    try:
        if out is not None:
            client = None
            if scheduler_address is not None:
                from distributed import Client

                client = Client(scheduler_address)
            try:
                nexus = export_nexus(run_store, out, tuple(group) if group else DEFAULT_GROUPS,
                                     compression=compression, overwrite=overwrite, client=client)
            finally:
                if client is not None:
                    client.close()
            typer.echo(f"nexus: {nexus}")
        if pdf_files is not None:
            for p in export_pdf_files(run_store, pdf_files, voxels=parse_voxels(voxels) if voxels else None,
                                      mask=mask, region=parse_region(region) if region else None):
                typer.echo(str(p))
    except (ExportError, PDFParameterError, FileExistsError) as err:
        _fail(str(err))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option(help="where to put the simulated scan and the run")] = Path("demo"),
    nz: Annotated[int, typer.Option()] = 3,
    nomega: Annotated[int, typer.Option()] = 48,
    nx: Annotated[int, typer.Option()] = 32,
) -> None:
    """Simulate a small scan and run the whole workflow on it (a few minutes on a laptop)."""
    from xrdct_dask.simulate import simulate_scan
    from xrdct_dask.view.summary import summary_path

    _logging(False)
    t0 = time.perf_counter()
    typer.echo(f"simulating {nz} x {nomega} x {nx} = {nz * nomega * nx} frames into {out_dir} ...")
    scan = simulate_scan(out_dir, nz, nomega, nx)
    typer.echo(f"  done in {time.perf_counter() - t0:.0f} s; running {scan.workflow}")
    path = run(load_workflow(scan.workflow, {"store.overwrite": True}))
    typer.echo(f"\nstore:   {path}\npicture: {summary_path(path)}\n"
               f"open it: python -c \"import xarray as xr; print(xr.open_zarr('{path}', group='recon'))\"\n"
               f"total {time.perf_counter() - t0:.0f} s")


cluster_app = typer.Typer(no_args_is_help=True, help="Batch-system profiles (dask-jobqueue keys) for --cluster.")
app.add_typer(cluster_app, name="cluster")


def _cluster_options(pairs: list[str] | None) -> dict:
    """``["queue=gpu", "cores=4"]`` -> ``{"queue": "gpu", "cores": 4}`` (values parsed as YAML)."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            _fail(f"--cluster-set {p!r}: expected key=value, e.g. queue=gpu")
        k, v = p.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = parse_value(v, f"--cluster-set {p}")
        except WorkflowError as err:
            _fail(str(err))
    return out


@cluster_app.command("script")
def cluster_script(
    profile: Annotated[str, typer.Option("--profile", "-p", help="profile name (xrdct cluster list) or path")],
    cluster_set: Annotated[Optional[list[str]], typer.Option("--cluster-set", help="override a key: queue=gpu")] = None,
) -> None:
    """Print the job script a worker job is submitted with (dask-jobqueue's dry run; starts nothing)."""
    from xrdct_dask.cluster.profiles import ProfileError, job_script

    try:
        typer.echo(job_script(profile, **_cluster_options(cluster_set)).rstrip())
    except ProfileError as err:
        _fail(str(err))


@cluster_app.command("list")
def cluster_list() -> None:
    """The profiles found (./cluster, $XRDCT_CLUSTER_PROFILES, those shipped with the package; first wins)."""
    from xrdct_dask.cluster.profiles import ProfileError, list_profiles, load_profile

    for name, path in list_profiles().items():
        try:
            p = load_profile(path)
            typer.echo(f"{name:12s} {p.kind:6s} {p.description}  ({path})")
        except ProfileError as err:
            typer.echo(f"{name:12s} invalid: {err}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
