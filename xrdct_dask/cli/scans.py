"""``xrdct simulate`` (a scan with ground truth, or an acquisition at a frame rate) and ``xrdct
demo`` (simulate a small scan and run it)."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from xrdct_dask.cli.group import _fail, _logging
from xrdct_dask.config import load_workflow


def simulate(
    out_dir: Annotated[Path, typer.Argument(
        help="folder to create (frames, PONI, mask, monitor, truth, workflow.yaml)")],
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
             "frame_{index:06d}.cbf (.cbf.gz, .cbf.bz2; .tif, .edf, .edf.gz: TIFF / EDF files), or with --format h5 "
             "a file per slice or line: "
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
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
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
        # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
        from xrdct_dask.simulate import parse_texture

        try:
            textures = dict(parse_texture(t) for t in texture)
        except ValueError as err:
            _fail(str(err))
    if not distance_m > 0:
        _fail(f"--distance-m must be > 0 (got {distance_m})")
    env = None
    if axis_offset or tube or air or background_scan:
        # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
        from xrdct_dask.simulate.environment import SampleEnvironment

        try:
            env = SampleEnvironment(tube_outer_px=tube or None, tube_wall_px=tube_wall, axis_offset_px=axis_offset,
                                    air_level=air, air_ratio=air_ratio, background_scan=background_scan)
        except ValueError as err:
            _fail(str(err))
    staging = None
    if rate is not None:  # simulated aside; out_dir gets the workflow only when the acquisition starts
        # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
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
            shutil.rmtree(staging, ignore_errors=True)  # this command's own folder


def _acquire(scan, out_dir: Path, rate: float, in_place: bool) -> None:
    """Publish a scan simulated aside (``scan.root``, inside ``out_dir``) as an acquisition: its
    PONI, mask, monitor, scan file and truth, an empty frames/ and then, last, its workflow (a
    `watch` that sees the workflow finds every file it names, and no frame it should not read);
    then write the frames into frames/ at ``rate`` per second."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
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
        raise typer.Exit(130) from None
    typer.echo(f"{n} frames written in {whole[-1] - whole[0]:.1f} s")


def demo(
    out_dir: Annotated[Path, typer.Option(help="where to put the simulated scan and the run")] = Path("demo"),
    nz: Annotated[int, typer.Option()] = 3,
    nomega: Annotated[int, typer.Option()] = 48,
    nx: Annotated[int, typer.Option()] = 32,
) -> None:
    """Simulate a small scan and run the whole workflow on it (a few minutes on a laptop)."""
    # lazy: --help stays fast (no dask, zarr or pyFAI at start-up)
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
