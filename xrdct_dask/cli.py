"""``xrdct``: a thin command line over the library (parse, call, print)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from xrdct_dask.config import load_changes, load_workflow, parse_overrides, parse_value
from xrdct_dask.errors import ExportExistsError, XrdctError
from xrdct_dask.view.console import show_messages

# what a command may raise that is the user's to fix: one red line and exit status 2 (-v adds the
# traceback).  Everything else is a bug and keeps its traceback.
USER_ERRORS = (XrdctError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError)


def one_line(err: BaseException) -> str:
    """The message a user reads for ``err``, in the command line's spelling of options."""
    if isinstance(err, ExportExistsError):
        return err.hint("--overwrite")
    return str(err)


class _Commands(TyperGroup):
    """The command group: maps the errors of every command to one line (:data:`USER_ERRORS`), in
    this one place, instead of a ``try``/``except`` of its own in each command."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            if logging.getLogger().isEnabledFor(logging.INFO):  # -v: where it came from too
                logging.getLogger(__name__).info("traceback", exc_info=err)
            _fail(one_line(err))


app = typer.Typer(add_completion=False, no_args_is_help=True, cls=_Commands,
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
    rate: Annotated[float | None, typer.Option(
        help="write the frames at this many per second, as an acquisition (each under a temporary name, then "
             "renamed); follow it with `xrdct watch OUT_DIR/workflow.yaml`")] = None,
    in_place: Annotated[bool, typer.Option(
        "--in-place", help="with --rate: write each frame under its final name, in parts over its 1/rate "
                           "(a reader sees partial files)")] = False,
    frames: Annotated[str | None, typer.Option(
        help="frames template relative to OUT_DIR, a beamline's layout: slice_{z:04d}/line_{line:05d}/"
             "frame_{index:06d}.cbf (.cbf.gz, .cbf.bz2; .tif, .edf, .edf.gz: TIFF / EDF files), or with --format h5 a file per slice or line: "
             "slice_{z:04d}.h5::/entry/data/data")] = None,
    mu_per_px: Annotated[str | None, typer.Option(
        help="a dense sample: attenuation per pixel of each phase (Ni,Fe,NaCl,aSi), e.g. 0.02,0.018,0.01,0.006; "
             "the beam is attenuated in to and out of every voxel and transmission.txt is recorded")] = None,
    texture: Annotated[list[str] | None, typer.Option(
        help="a textured, strained phase: PHASE:AMPLITUDE:ORIENTATION_DEG[:STRAIN:STRAIN_AXIS_DEG], intensity "
             "1 + AMPLITUDE cos 2(chi - ORIENTATION), d = d0 (1 + STRAIN cos 2(chi - AXIS)); repeat per phase, "
             "e.g. --texture Ni:0.6:90 --texture Fe:0.3:0:0.003:90")] = None,
    distance_m: Annotated[float, typer.Option(help="sample-detector distance (m): larger, more pixels per azimuthal "
                                                   "sector and a smaller q range")] = 0.2,
    axis_offset: Annotated[float, typer.Option(help="rotation axis this many pixels right of the detector's "
                                                    "centre (nx // 2)")] = 0.0,
    tube: Annotated[float, typer.Option(help="outer radius (pixels) of a glass tube around the sample "
                                            "(0: none)")] = 0.0,
    tube_wall: Annotated[float, typer.Option(help="the tube's wall thickness, pixels")] = 2.0,
    air: Annotated[float, typer.Option(help="air scattering at the first x, in voxels of the sample's matrix "
                                            "(0: none)")] = 0.0,
    air_ratio: Annotated[float, typer.Option(help="air at the last x over air at the first (linear in x)")] = 1.0,
    background_scan: Annotated[str | None, typer.Option(
        help="also record an empty-tube / air scan: line (one line of x at omega 0) or slice (every angle), "
             "named in workflow.yaml's inputs.background_scan")] = None,
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
    env = None
    if axis_offset or tube or air or background_scan:
        from xrdct_dask.simulate.environment import SampleEnvironment

        try:
            env = SampleEnvironment(tube_outer_px=tube or None, tube_wall_px=tube_wall, axis_offset_px=axis_offset,
                                    air_level=air, air_ratio=air_ratio, background_scan=background_scan)
        except ValueError as err:
            _fail(str(err))
    staging = None
    if rate is not None:  # simulated aside; out_dir gets the workflow only when the acquisition starts
        import uuid

        from xrdct_dask.simulate import check_simulation_folder

        try:
            check_simulation_folder(out_dir)
        except ValueError as err:
            _fail(str(err))
        staging = out_dir / f".xrdct-acquisition-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        with Progress() as bar:
            task = bar.add_task("simulating frames", total=nz * nomega * nx)
            try:
                scan = simulate_scan(staging or out_dir, nz, nomega, nx, detector=detector, order=order,
                                     fast_axis=fast_axis, omega_range_deg=omega_range, npt_rad=npt_rad, seed=seed,
                                     fmt=format_, frames_per_file=frames_per_file, frames=frames, mu_per_px=mu,
                                     environment=env, texture=textures, distance_m=distance_m,
                                     progress=lambda k, n: bar.update(task, completed=k))
            except ValueError as err:
                _fail(str(err))
        typer.echo(f"{nz * nomega * nx} frames in {time.perf_counter() - t0:.1f} s -> {out_dir}")
        if staging is None:
            typer.echo(f"run it: xrdct run {scan.workflow}")
            return
        _acquire(scan, out_dir, rate, in_place)
    finally:
        if staging is not None:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)  # this command's own folder


def _acquire(scan, out_dir: Path, rate: float, in_place: bool) -> None:
    """Publish a scan simulated aside (``scan.root``, inside ``out_dir``) as an acquisition: its
    PONI, mask, monitor, scan file and truth, an empty frames/ and then, last, its workflow (a
    `watch` that sees the workflow finds every file it names, and no frame it should not read);
    then write the frames into frames/ at ``rate`` per second."""
    from xrdct_dask.simulate import SIMULATION_MARKER, stream_frames

    (out_dir / SIMULATION_MARKER).write_text((scan.root / SIMULATION_MARKER).read_text())
    for f in sorted(scan.root.iterdir()):
        if f.is_file() and f.name not in ("workflow.yaml", SIMULATION_MARKER):
            f.replace(out_dir / f.name)
    (out_dir / "frames").mkdir(exist_ok=True)
    (scan.root / "workflow.yaml").replace(out_dir / "workflow.yaml")
    n = scan.nz * scan.nomega * scan.nx
    names = [scan.frame_path(i).name for i in range(n)]
    typer.echo(f"acquiring {n} frames at {rate:g} Hz ({n / rate:.1f} s){' in place' if in_place else ''}: "
               f"follow it with `xrdct watch {out_dir / 'workflow.yaml'}`")
    try:
        whole = stream_frames([scan.root / "frames" / f for f in names], [out_dir / "frames" / f for f in names],
                              rate, in_place=in_place)
    except KeyboardInterrupt:
        typer.secho("acquisition stopped", fg="yellow", err=True)
        raise typer.Exit(130)
    typer.echo(f"{n} frames written in {whole[-1] - whole[0]:.1f} s")


ALLOW_MISSING_HELP = ("run although whole slices of the workflow's grid have no frame (flagged missing): else "
                      "refused before the run, or exit 1 after it (scan.allow_missing)")


@app.command()
def run(
    workflow: Annotated[Path, typer.Argument(help="workflow YAML")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set integrate.npt_rad=2000")] = None,
    scheduler_address: Annotated[str | None, typer.Option(help="attach to a running dask scheduler (tcp://...)")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", help="batch-system profile: a name from `xrdct cluster list` (slurm-cpu, slurm-gpu, pbs) or a path")] = None,
    jobs: Annotated[int | None, typer.Option(help="batch jobs to start with --cluster (adaptive: the maximum)")] = None,
    adaptive: Annotated[bool | None, typer.Option(
        "--adaptive/--no-adaptive", help="with --cluster: scale between 0 and --jobs jobs with the load")] = None,
    cluster_set: Annotated[list[str] | None, typer.Option(
        "--cluster-set", help="override a profile key: --cluster-set queue=gpu --cluster-set walltime=08:00:00")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help=ALLOW_MISSING_HELP)] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a workflow: decode + integrate -> sinograms -> reconstruction -> G(r), into one zarr store."""
    with _until_ctrl_c():
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
    from xrdct_dask import store
    from xrdct_dask.runs.report import missing_slices_message

    msg = missing_slices_message(store.read_attrs(path).get("run_summary") or {}, wf.scan.nz)
    if msg and not wf.scan.allow_missing:
        typer.secho(f"error: {msg}; the store keeps what was integrated: fix scan.nz, or pass --allow-missing "
                    f"to accept the missing slices", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def watch(
    workflow: Annotated[Path, typer.Argument(help="workflow YAML of the acquisition being written")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set store.omega_chunk=2")] = None,
    idle_timeout: Annotated[float, typer.Option(
        help="seconds without a new frame after which the frames still missing are flagged and the watch ends")] = 600.0,
    scheduler_address: Annotated[str | None, typer.Option(help="attach to a running dask scheduler (tcp://...)")] = None,
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


@app.command()
def serve(
    jobs_dir: Annotated[Path, typer.Option(help="where every job's input, validated workflow, record and log are kept")] = Path(
        "xrdct-jobs"),
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
    import getpass

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


def _interrupted() -> None:
    typer.secho("interrupted: what is marked done is kept; run the same command to resume", fg="yellow", err=True)
    raise typer.Exit(130)


@contextlib.contextmanager
def _until_ctrl_c():
    """The body of a command that runs work: a Ctrl-C at any moment of it (its imports, the start of
    the workers, the stages) stops it with the one line saying how to resume, exit status 130."""
    try:
        yield
    except KeyboardInterrupt:
        _interrupted()


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
    set_: Annotated[list[str] | None, typer.Option("--set", help="change a key: --set integrate.npt_rad=3000")] = None,
    changes: Annotated[Path | None, typer.Option(
        "--changes", help="a YAML file of changes in the workflow's sections (workflows/reprocess.yaml); --set wins")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="rerun from this stage at least: integrate | recon | pdf")] = None,
    out: Annotated[Path | None, typer.Option(help="the new store (one run only); default RUN-<digest>.zarr beside it")] = None,
    scheduler_address: Annotated[str | None, typer.Option(help="attach to a running dask scheduler (tcp://...)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Rerun old runs from their stored workflow with changes, recomputing only the stages downstream of them."""
    with _until_ctrl_c():
        from xrdct_dask.runs import reprocess as rp

        _logging(verbose)
        overrides = {**(load_changes(changes) if changes is not None else {}), **parse_overrides(set_)}
        paths = rp.reprocess(_expand_runs(runs), overrides, from_, out, scheduler_address=scheduler_address)
    for p in paths:
        typer.echo(f"store: {p}")


@app.command()
def plan(
    workflow: Annotated[Path, typer.Argument(help="workflow YAML")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set scan.nz=1000")] = None,
    gpu_frames_per_s: Annotated[float | None, typer.Option(help="decode + integrate frames/s of one GPU")] = None,
    cpu_frames_per_s_per_core: Annotated[float | None, typer.Option(help="frames/s of one CPU core")] = None,
    frame_bytes: Annotated[int | None, typer.Option(help="bytes per frame file (default: the first frame's size)")] = None,
    results: Annotated[Path | None, typer.Option(
        help="read throughputs from this RESULTS.md (default: the benchmarks/RESULTS.md figures shipped with the package)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures as JSON")] = None,
    graph: Annotated[bool, typer.Option("--graph", help="also build every wave's graph (nothing computed): "
                                                        "tasks, seconds and the client's peak memory")] = False,
    gpus: Annotated[int | None, typer.Option(
        min=1, help="GPUs the run integrates on (default: those of the cluster profile, else of this machine)")] = None,
    fs_gbps: Annotated[float | None, typer.Option(
        "--fs-gbps", min=0.001, help="GB/s the file system reads the frames at: bounds the run's frames/s and hours")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", help="plan for this batch-system profile's jobs (default: compute.cluster, else this machine)")] = None,
    jobs: Annotated[int | None, typer.Option(min=1, help="with a cluster profile: its jobs (default compute.jobs)")] = None,
) -> None:
    """Print what a run will do (frames, tasks, waves, bytes, files, hours) without building its graph."""
    import json

    from xrdct_dask.runs.plan import build_waves, format_plan, plan_workflow

    wf = load_workflow(workflow, parse_overrides(set_))
    p = plan_workflow(wf, frame_bytes=frame_bytes, gpu_frames_per_s=gpu_frames_per_s,
                      cpu_frames_per_s_per_core=cpu_frames_per_s_per_core, results=results, gpus=gpus,
                      fs_gbps=fs_gbps, cluster=cluster, jobs=jobs)
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
def info(
    run_store: Annotated[Path, typer.Argument(metavar="RUN.zarr", help="the run store to describe")],
    as_json: Annotated[bool, typer.Option("--json", help="print it as JSON")] = False,
    workflow: Annotated[bool, typer.Option("--workflow", help="print the whole stored workflow (YAML) instead")] = False,
) -> None:
    """What a run store holds: workflow, inputs and their digests, frames flagged, stages done,
    timings and versions (nothing is written)."""
    from xrdct_dask.runs.info import format_info, info_json, store_info

    try:
        found = store_info(run_store)
    except ValueError as err:
        _fail(str(err))
    if workflow:
        import yaml

        typer.echo(yaml.safe_dump(found["workflow"], sort_keys=False).rstrip())
    else:
        typer.echo(info_json(found) if as_json else format_info(found))


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="file to write (a folder: PATH/workflow.yaml); never overwritten")] = Path(
        "workflow.yaml"),
) -> None:
    """Write the documented workflow (every key, its default and unit) to edit for your scan."""
    from xrdct_dask.resources import write_workflow_template

    out = write_workflow_template(path)
    typer.echo(f"wrote {out}: set inputs, scan and store, then `xrdct plan {out}` and `xrdct run {out}`")


@app.command()
def export(
    run_store: Annotated[Path, typer.Argument(metavar="RUN.zarr", help="the run store to export")],
    out: Annotated[Path | None, typer.Argument(metavar="[OUT.h5]", help="NeXus / HDF5 file to write")] = None,
    group: Annotated[list[str] | None, typer.Option(
        "--group", help="store group to export (repeat: --group recon --group pdf); default: reduced, recon, pdf")] = None,
    compression: Annotated[str, typer.Option(help="gzip (every reader) | lz4 (hdf5plugin) | none")] = "gzip",
    overwrite: Annotated[bool, typer.Option(help="replace OUT.h5 if it is an earlier export of this program")] = False,
    pdf_files: Annotated[Path | None, typer.Option(
        "--pdf-files", help="folder for PDFgetX3-layout .iq .sq .fq .gr files (PDFgui, diffpy.srfit)")] = None,
    voxels: Annotated[str | None, typer.Option(help="--pdf-files of voxels z,y,x;z,y,x... (one file set each)")] = None,
    mask: Annotated[Path | None, typer.Option(help="--pdf-files of a .npy bool (z,y,x) or (y,x) mask's mean")] = None,
    region: Annotated[str | None, typer.Option(help="--pdf-files of a box z0:z1,y0:y1,x0:x1's mean")] = None,
    scheduler_address: Annotated[str | None, typer.Option(
        help="read and compress the NeXus chunks on the workers of a running dask scheduler (tcp://...); "
             "default: here")] = None,
    single_file: Annotated[bool, typer.Option(
        "--single-file", help="with --scheduler-address: one HDF5 file written here (today's layout) instead "
                              "of part files written by the workers (OUT.h5.parts/) tied by OUT.h5")] = False,
) -> None:
    """Export a run: OUT.h5 as NeXus (NXentry / NXdata with axes and units, for silx, PyMca, DAWN,
    h5py), and/or --pdf-files OUTDIR in PDFgetX3's layout for voxels, a mask's or a region's mean."""
    from xrdct_dask.export import (
        DEFAULT_GROUPS,
        export_nexus,
        export_pdf_files,
        parse_region,
        parse_voxels,
    )

    if out is None and pdf_files is None:
        _fail("nothing to do: give OUT.h5 (NeXus) and/or --pdf-files OUTDIR (with --voxels, --mask or --region)")
    if out is not None:
        client = None
        if scheduler_address is not None:
            from distributed import Client

            client = Client(scheduler_address)
        try:
            nexus = export_nexus(run_store, out, tuple(group) if group else DEFAULT_GROUPS,
                                 compression=compression, overwrite=overwrite, client=client,
                                 single_file=True if single_file else None)
        finally:
            if client is not None:
                client.close()
        typer.echo(f"nexus: {nexus}")
    if pdf_files is not None:
        for p in export_pdf_files(run_store, pdf_files, voxels=parse_voxels(voxels) if voxels else None,
                                  mask=mask, region=parse_region(region) if region else None):
            typer.echo(str(p))


def _phases(pairs: list[str] | None) -> dict | None:
    """``["Ni=2.034,1.762"]`` -> ``{"Ni": [2.034, 1.762]}`` (None: none given)."""
    if not pairs:
        return None
    out = {}
    for p in pairs:
        name, _, ds = p.partition("=")
        try:
            out[name.strip()] = [float(d) for d in ds.split(",")]
            if not name.strip() or not all(d > 0 for d in out[name.strip()]):
                raise ValueError
        except ValueError:
            _fail(f"--phase {p!r}: expected NAME=d1,d2,... with d-spacings in angstrom, e.g. Ni=2.034,1.762")
    return out


@app.command()
def view(
    run_store: Annotated[Path, typer.Argument(metavar="RUN.zarr",
                                              help="the run store to look at (finished or being written)")],
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1 (0: any free one)")] = 5006,
    map_: Annotated[str | None, typer.Option(
        "--map", help="the map shown first: recon (at a q), pdf/G, or a per-voxel array such as pdf/scale")] = None,
    poll: Annotated[float, typer.Option(help="seconds between looks at the store for new blocks and slices")] = 2.0,
    phase: Annotated[list[str] | None, typer.Option(
        help="d-spacings (angstrom) to mark on voxel patterns: --phase Ni=2.034,1.762,1.246 (repeat for more; "
             "default: the workflow's view.phases)")] = None,
) -> None:
    """Look inside a run in the browser: maps at q or r, voxel patterns and G(r), sinograms, live
    while `xrdct watch` fills the store (127.0.0.1 only, with an access token in the URL)."""
    from xrdct_dask.view import INSTALL
    from xrdct_dask.view.server import start_server

    try:
        server, url = start_server(run_store, port, map_name=map_, poll_s=poll, phases=_phases(phase))
    except ImportError as err:  # bokeh (or tornado) missing
        _fail(f"xrdct view needs bokeh ({err}): {INSTALL}")
    typer.echo(f"xrdct view of {run_store}: {url}\n(from another machine: ssh -L {server.port}:127.0.0.1:"
               f"{server.port} THIS_HOST, then open the same URL; Ctrl-C stops)")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.stop()


@app.command()
def center(
    run_store: Annotated[Path, typer.Argument(metavar="RUN.zarr", help="the run store (only read)")],
    z: Annotated[int | None, typer.Option("--z", help="slice (default: the middle one)")] = None,
    out: Annotated[Path | None, typer.Option(help="PNG to write (default RUN-center-zK.png beside the store; "
                                                     "never a file this program did not write)")] = None,
    step: Annotated[float, typer.Option(help="pixels between candidate axes")] = 0.5,
    count: Annotated[int, typer.Option(help="candidate axes (the found one in the middle)")] = 9,
) -> None:
    """Picture of a slice reconstructed at candidate rotation axes around the one found, to check it."""
    from xrdct_dask.view.center import write_center_picture

    _logging(False)
    png, geo = write_center_picture(run_store, z, out, step_px=step, count=count)
    axis = geo.get("axis") or {}
    conf = f" (confidence {axis['confidence']:.2f}, {geo['center_source']})" if axis else f" ({geo['center_source']})"
    typer.echo(f"axis {geo['center']:.3f} px{conf}: {png}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option(help="where to put the simulated scan and the run")] = Path("demo"),
    nz: Annotated[int, typer.Option()] = 3,
    nomega: Annotated[int, typer.Option()] = 48,
    nx: Annotated[int, typer.Option()] = 32,
) -> None:
    """Simulate a small scan and run the whole workflow on it (a few minutes on a laptop)."""
    from xrdct_dask.runs import execute as wfmod
    from xrdct_dask.simulate import simulate_scan, simulated_workflow
    from xrdct_dask.view.summary import summary_path

    _logging(False)
    t0 = time.perf_counter()
    workflow = simulated_workflow(out_dir, nz, nomega, nx)
    if workflow is not None:  # an earlier demo's scan: its store records it, so it is not simulated over
        typer.echo(f"using the {nz} x {nomega} x {nx} scan simulated earlier in {out_dir}; running {workflow}")
    else:
        typer.echo(f"simulating {nz} x {nomega} x {nx} = {nz * nomega * nx} frames into {out_dir} ...")
        try:
            workflow = simulate_scan(out_dir, nz, nomega, nx).workflow
        except ValueError as err:
            _fail(str(err))
        typer.echo(f"  done in {time.perf_counter() - t0:.0f} s; running {workflow}")
    path = wfmod.run(load_workflow(workflow, {"store.overwrite": True}))
    typer.echo(f"\nstore:   {path}\npicture: {summary_path(path)}\n"
               f"open it: python -c \"import xarray as xr; print(xr.open_zarr('{path}', group='recon'))\"\n"
               f"total {time.perf_counter() - t0:.0f} s")


cluster_app = typer.Typer(no_args_is_help=True, cls=_Commands, help="Batch-system profiles (dask-jobqueue keys) for --cluster.")
app.add_typer(cluster_app, name="cluster")


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
    from xrdct_dask.cluster.profiles import job_script

    typer.echo(job_script(profile, **_cluster_options(cluster_set)).rstrip())


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
