"""The air background, the axis and the container on whole runs of simulated scans of a sample in a
glass tube (:class:`~xrdct_dask.testing.environment.SampleEnvironment`, written as CBF frames by the
simulator): the default workflow against the ground truth, a measured empty-tube scan removing
the tube, bad background-scan inputs refused before anything is written, and ``xrdct center``.

The runs take 30-90 s each (simulating the frames is most of it): ``slow``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from xrdct_dask import run
from xrdct_dask.config import WorkflowError, load_workflow
from xrdct_dask.simulate.environment import SampleEnvironment, environment_block, poisson
from xrdct_dask.testing.stores import block_store


def unmix(recon: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Least squares of every voxel's pattern ``(ny, nx, nq)`` onto phase patterns ``(nphase, nq)``."""
    flat = recon.reshape(-1, recon.shape[-1])
    sel = np.all(np.isfinite(flat), axis=0) & np.all(basis > 0, axis=0)
    coef, *_ = np.linalg.lstsq(basis[:, sel].T, flat[:, sel].T, rcond=None)
    return coef.reshape(len(basis), *recon.shape[:2])


def run_and_unmix(scan, tmp_path, env: SampleEnvironment, overrides: dict | None = None):
    """Run the scan's own workflow (only the store's path set, and ``overrides``) on a local
    cluster; returns ``(store, centre found, maps unmixed onto the phases, truth maps)``."""
    from distributed import LocalCluster

    from xrdct_dask.pipeline.integrator import integrator_for
    from xrdct_dask.simulate import phase_patterns_as_measured

    wf = load_workflow(scan.workflow, {"store.path": str(tmp_path / "run.zarr"), **(overrides or {})})
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as cluster:
        path = run(wf, cluster=cluster, progress=False, summary=False)
    recon = zarr.open_array(str(path / "recon" / "intensity"), mode="r")[0]
    center = float(zarr.open_array(str(path / "tasks" / "center"), mode="r")[0])
    basis = phase_patterns_as_measured(integrator_for(wf), phases=env.phases())
    return path, center, unmix(recon, basis), scan.load_truth()["phase_maps"][:, 0]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_workflow_on_a_held_out_tube_scan(tmp_path):
    """The issue's scan, held out (a seed no tuning used): a sample in a glass tube, the axis 5 px off
    centre, air doubling from one end of x to the other, 64 angles x 40 steps.  The workflow as
    written, no key set: the axis within 0.2 px of the truth, and every phase map (the tube wall
    too) correlates with the truth at Pearson r >= 0.92 inside the sample."""
    from xrdct_dask.simulate import simulate_scan

    env = SampleEnvironment(tube_outer_px=11.5, tube_wall_px=2.0, axis_offset_px=5.0, air_level=2.0, air_ratio=2.0)
    scan = simulate_scan(tmp_path / "scan", nz=1, nomega=64, nx=40, seed=24, environment=env)
    path, center, maps, truth = run_and_unmix(scan, tmp_path, env)
    axis = json.loads((scan.root / "truth.json").read_text())["environment"]["axis_px"]
    assert abs(center - axis) <= 0.2, (center, axis)
    inside = truth.sum(axis=0) > 0
    r = {p.name: float(np.corrcoef(maps[k][inside], truth[k][inside])[0, 1]) for k, p in enumerate(env.phases())}
    assert min(r.values()) >= 0.92, r
    info = json.loads(str(zarr.open_array(str(path / "recon" / "slice_info"), mode="r")[0]))
    assert info["air"]["found"] and info["background"] == "auto"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_measured_empty_tube_removes_the_tube(tmp_path):
    """A tube removed as a phase: with the empty-tube scan the beamline recorded (one line of x, the
    tube centred on the axis; its own monitor) the workflow subtracts the tube and the air per q.
    The glass left in the wall's voxels is under 10 % of the wall (without the scan it is all
    there: the acceptance run above reconstructs it at r >= 0.92), and the sample's phases still
    correlate with the truth at r >= 0.92."""
    from xrdct_dask.simulate import simulate_scan

    env = SampleEnvironment(tube_outer_px=10.5, tube_wall_px=2.0, axis_offset_px=3.0, air_level=2.0, air_ratio=2.0,
                            background_scan="line")
    scan = simulate_scan(tmp_path / "scan", nz=1, nomega=48, nx=32, seed=31, environment=env)
    assert load_workflow(scan.workflow).inputs.background_scan.extent == "line"
    path, _, maps, truth = run_and_unmix(scan, tmp_path, env)
    wall = truth[-1] > 0.99
    inside = truth[:-1].sum(axis=0) > 0.99
    assert abs(maps[-1][wall].mean()) < 0.1, maps[-1][wall].mean()
    for k, p in enumerate(env.phases()[:-1]):
        r = np.corrcoef(maps[k][inside], truth[k][inside])[0, 1]
        assert r >= 0.92, (p.name, r)
    assert zarr.open_array(str(path / "reduced" / "background"), mode="r").shape == (1, 32, 1000)


@pytest.fixture()
def background_case(sim_scan, tmp_path):
    """The session's simulated scan with an empty-scan line beside it: 24 of its frames as the
    background's (right shape and count) and a monitor of 24 values."""
    folder = tmp_path / "empty"
    folder.mkdir()
    for i in range(24):
        shutil.copy(sim_scan.frame_path(i), folder / f"bg_{i:04d}.cbf")
    (folder / "monitor.txt").write_text("\n".join(["1.0e5"] * 24) + "\n")
    return sim_scan, folder


@pytest.mark.parametrize("change, message", [
    ("missing", r"inputs\.background_scan\.frames: 1 of 24 background frames missing, the first .*bg_0007\.cbf"),
    ("short-monitor", r"inputs\.background_scan\.monitor: .*monitor\.txt has 23 values for 24 background frames"),
    ("zero-monitor", r"inputs\.background_scan\.monitor: .*frame 5 has monitor 0 \(1 not > 0\)"),
    ("negative-monitor", r"inputs\.background_scan\.monitor: .*frame 2 has monitor -3 \(1 not > 0\)"),
    ("no-monitor-file", r"inputs\.background_scan\.monitor: .*nothing\.txt not found"),
    ("slice-extent", r"inputs\.background_scan\.frames: 744 of 768 background frames missing"),
])
def test_bad_background_scan_is_one_line_before_anything_is_written(background_case, tmp_path, change, message):
    """A missing frame, a monitor of the wrong length, a zero or negative monitor value, a missing
    monitor file, frames too few for the extent: one line naming the key, and no store."""
    from xrdct_dask.runs.open import open_run

    scan, folder = background_case
    bg = {"frames": str(folder / "bg_{index:04d}.cbf"), "monitor": str(folder / "monitor.txt")}
    values = ["1.0e5"] * 24
    if change == "missing":
        (folder / "bg_0007.cbf").unlink()
    elif change == "short-monitor":
        values = values[:23]
    elif change == "zero-monitor":
        values[5] = "0"
    elif change == "negative-monitor":
        values[2] = "-3"
    elif change == "no-monitor-file":
        bg["monitor"] = str(folder / "nothing.txt")
    elif change == "slice-extent":
        bg["extent"] = "slice"
    (folder / "monitor.txt").write_text("\n".join(values) + "\n")
    out = tmp_path / "run.zarr"
    wf = load_workflow(scan.workflow, {"store.path": str(out), "inputs.background_scan": bg})
    with pytest.raises(WorkflowError, match=message) as err:
        open_run(wf)
    assert "\n" not in str(err.value) and not out.exists()


def test_background_scan_of_the_wrong_shape_is_refused(background_case, tmp_path):
    """Background frames of another detector shape: one line, no store."""
    import fabio

    from xrdct_dask.runs.open import open_run

    scan, folder = background_case
    for i in range(24):
        fabio.cbfimage.CbfImage(data=np.zeros((10, 12), np.int32)).write(str(folder / f"bg_{i:04d}.cbf"))
    out = tmp_path / "run.zarr"
    wf = load_workflow(scan.workflow, {"store.path": str(out), "inputs.background_scan": {
        "frames": str(folder / "bg_{index:04d}.cbf")}})
    with pytest.raises(WorkflowError, match=r"inputs\.background_scan\.frames: the background frames are 10 x 12 "
                                            r"but the scan's 209 x 184"):
        open_run(wf)
    assert not out.exists()


def test_center_command_draws_candidate_axes_beside_the_store(tmp_path, rng):
    """``xrdct center RUN.zarr --z 0``: a PNG of the slice at 9 axes around the one found, labelled,
    beside the store (its own Software text, so a second call may replace it); the store is only
    read (no file in it changes); a file it did not write, or a path inside the store, is refused."""
    from PIL import Image

    from xrdct_dask.cli import app

    s, truth = environment_block(SampleEnvironment(axis_offset_px=4.0, tube_outer_px=11.5, air_level=2.0,
                                                   air_ratio=2.0), 40, 64)
    ctx = block_store(tmp_path, poisson(s, 2000, rng)[None], truth["omega_deg"], nq_chunk=8)
    before = {p: p.stat().st_mtime_ns for p in ctx.store_path.rglob("*")}
    runner = CliRunner()
    res = runner.invoke(app, ["center", str(ctx.store_path), "--z", "0"])
    assert res.exit_code == 0, res.output
    png = tmp_path / "run-center-z0000.png"
    assert f"{png}" in res.output and "axis 24.0" in res.output  # the truth: nx // 2 + 4
    with Image.open(png) as im:
        assert im.text["Software"] == "xrdct-dask center" and im.size[0] > 400
    assert {p: p.stat().st_mtime_ns for p in ctx.store_path.rglob("*")} == before
    assert runner.invoke(app, ["center", str(ctx.store_path), "--z", "0"]).exit_code == 0  # its own picture
    foreign = tmp_path / "mine.png"
    foreign.write_bytes(b"not written by xrdct")
    res = runner.invoke(app, ["center", str(ctx.store_path), "--out", str(foreign)])
    assert res.exit_code == 2 and "was not written by `xrdct center`" in res.output
    assert foreign.read_bytes() == b"not written by xrdct"
    res = runner.invoke(app, ["center", str(ctx.store_path), "--out", str(ctx.store_path / "c.png")])
    assert res.exit_code == 2 and "inside the run store" in res.output
    res = runner.invoke(app, ["center", str(ctx.store_path), "--z", "3"])
    assert res.exit_code == 2 and "slices 0 to 0" in res.output


def test_simulated_environment_has_its_axis_and_air_where_it_says(tmp_path):
    """The simulator's ground truth: the empty tube's sinogram is mirror-symmetric about the stated
    axis (nx // 2 + offset) at every angle, and the air doubles from the first x to the last."""
    env = SampleEnvironment(tube_outer_px=11.5, axis_offset_px=5.0, air_level=2.0, air_ratio=2.0)
    tube = env.empty_sinograms(1, 40, np.arange(16) * 180 / 16)[0, 0]
    axis = int(env.axis_px(40))
    d = np.arange(1, 14)
    np.testing.assert_allclose(tube[:, axis + d], tube[:, axis - d], atol=1e-6 * tube.max())
    assert tube[:, axis - 11].min() > 1.0 and np.abs(tube[:, axis + 13]).max() < 1e-6
    air = env.air_levels(40)
    assert air[0] == pytest.approx(2.0) and air[-1] == pytest.approx(4.0)


def test_simulate_command_writes_the_environment_and_its_empty_scan(tmp_path):
    """``xrdct simulate --tube --axis-offset --air --air-ratio --background-scan line``: the truth
    states the axis (nx // 2 + offset) and the air along x, the empty-tube frames (one per x step)
    and their monitor are written, and the workflow names them; a bad option is one line."""
    from xrdct_dask.cli import app

    out = tmp_path / "scan"
    res = CliRunner().invoke(app, ["simulate", str(out), "--nz", "1", "--nomega", "4", "--nx", "12", "--tube", "4",
                                   "--axis-offset", "1", "--air", "1", "--air-ratio", "2", "--background-scan", "line"])
    assert res.exit_code == 0, res.output
    env = json.loads((out / "truth.json").read_text())["environment"]
    assert env["axis_px"] == 7.0 and env["air_levels"][0] == 1.0 and env["air_levels"][-1] == 2.0
    assert sorted(p.name for p in (out / "background").glob("*.cbf")) == [f"frame_{i:06d}.cbf" for i in range(12)]
    bg = load_workflow(out / "workflow.yaml").inputs.background_scan
    assert bg.extent == "line" and bg.monitor == out / "background" / "monitor.txt"
    assert "glass" in list(np.load(out / "truth.npz")["phase_names"])
    res = CliRunner().invoke(app, ["simulate", str(tmp_path / "bad"), "--background-scan", "cube"])
    assert res.exit_code == 2 and "background_scan must be None, line or slice" in res.output
