"""The frame sources of inputs.frames, through the whole workflow (issue 16).

The same simulated scan written as CBF files, as gzip-compressed CBF files and as an Eiger-like
HDF5 scan (master + data files, bitshuffle-LZ4 chunks of one frame) gives the same store, bit for
bit: the source changes how frames are read, never what they integrate to.  An HDF5 data file
that is missing flags its frames MISSING, and they are read once the file is there.
"""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.config import load_workflow
from xrdct_dask.io.status import FrameStatus
from xrdct_dask.runs.execute import run

ARRAYS = ("reduced/intensity", "reduced/sigma", "reduced/frame_status", "recon/intensity", "pdf/G")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    root = tmp_path_factory.mktemp("sources")
    cbf = simulate_scan(root / "cbf", nz=1, nomega=8, nx=8, seed=7)
    h5 = simulate_scan(root / "h5", nz=1, nomega=8, nx=8, seed=7, fmt="h5", frames_per_file=20)
    gz = root / "gz"
    shutil.copytree(cbf.root, gz, ignore=shutil.ignore_patterns("*.zarr", "*.png"))
    for f in sorted((gz / "frames").glob("*.cbf")):
        f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    return cbf, h5, gz


def same_arrays(a, b):
    for name in ARRAYS:
        x = zarr.open_array(str(a / name), mode="r")[...]
        y = zarr.open_array(str(b / name), mode="r")[...]
        assert np.array_equal(x, y, equal_nan=True), name


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_cbf_gzip_and_hdf5_scans_give_the_same_store(scans, cluster, tmp_path):
    cbf, h5, gz = scans
    assert str(load_workflow(h5.workflow).inputs.frames).endswith("scan_master.h5::/entry/data/data")
    a = run(load_workflow(cbf.workflow, {"store.path": str(tmp_path / "cbf.zarr")}), cluster=cluster,
            progress=False, summary=False)
    b = run(load_workflow(h5.workflow, {"store.path": str(tmp_path / "h5.zarr")}), cluster=cluster,
            progress=False, summary=False)
    c = run(load_workflow(gz / "workflow.yaml", {"store.path": str(tmp_path / "gz.zarr"),
                                                 "inputs.frames": "frames/frame_{index:06d}.cbf.gz"}),
            cluster=cluster, progress=False, summary=False)
    assert (zarr.open_array(str(a / "reduced/frame_status"), mode="r")[...] == FrameStatus.OK).all()
    same_arrays(b, a)
    same_arrays(c, a)


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_a_missing_hdf5_data_file_is_flagged_then_read_when_it_arrives(scans, cluster, tmp_path):
    _, h5, _ = scans
    work = tmp_path / "scan"
    shutil.copytree(h5.root, work, ignore=shutil.ignore_patterns("*.zarr", "*.png"))
    data = sorted((work / "frames").glob("scan_data_*.h5"))
    away = data[1].rename(tmp_path / data[1].name)  # frames 20..39 of the scan
    wf = load_workflow(work / "workflow.yaml", {"store.path": str(tmp_path / "run.zarr")})
    path = run(wf, cluster=cluster, progress=False, summary=False)
    index = zarr.open_array(str(path / "reduced/frame_index"), mode="r")[...]
    status = zarr.open_array(str(path / "reduced/frame_status"), mode="r")[...]
    gone = (index >= 20) & (index < 40)
    assert (status[gone] == FrameStatus.MISSING).all() and (status[~gone] == FrameStatus.OK).all()
    away.rename(data[1])
    path = run(wf, cluster=cluster, progress=False, summary=False)
    assert (zarr.open_array(str(path / "reduced/frame_status"), mode="r")[...] == FrameStatus.OK).all()
    assert store.task_state(path).complete


def test_an_hdf5_source_that_cannot_be_opened_is_one_line(scans, tmp_path):
    from xrdct_dask.config import WorkflowError
    from xrdct_dask.runs.open import open_run

    _, h5, _ = scans
    with pytest.raises(WorkflowError) as err:
        open_run(load_workflow(h5.workflow, {"store.path": str(tmp_path / "x.zarr"),
                                             "inputs.frames": str(tmp_path / "none.h5")}))
    assert str(err.value).startswith("inputs.frames:") and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------
# scan metadata from the scan: frames placed by their measured positions
# ------------------------------------------------------------------------------------------
@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_frames_placed_by_measured_positions_equal_the_grid_columns(scans, cluster, tmp_path):
    """The scan file gives each frame's measured omega, x and z (readings jittered by a motor's
    noise, no grid columns): every frame lands where the grid columns put it, the store's axes are
    the median readings, and the store says the positions were measured."""
    import csv

    cbf, _, _ = scans
    rows = list(csv.DictReader(open(cbf.scan_file)))
    rng = np.random.default_rng(1)
    measured = tmp_path / "measured.csv"
    with open(measured, "w") as fh:
        fh.write("index,omega_deg,x_mm,z_mm,monitor\n")
        for r in rows:
            fh.write(f"{r['index']},{float(r['omega_deg']) + rng.normal(0, 0.2):.5f},"
                     f"{float(r['x_mm']) + rng.normal(0, 0.05):.5f},{r['z_mm']},{r['monitor']}\n")
    ref = run(load_workflow(cbf.workflow, {"store.path": str(tmp_path / "grid.zarr")}), cluster=cluster,
              progress=False, summary=False)
    got = run(load_workflow(cbf.workflow, {"store.path": str(tmp_path / "measured.zarr"),
                                           "inputs.scan_file": str(measured)}), cluster=cluster, progress=False,
              summary=False)
    for name in ("reduced/frame_index", "reduced/intensity", "reduced/monitor"):
        np.testing.assert_array_equal(zarr.open_array(str(got / name), mode="r")[...],
                                      zarr.open_array(str(ref / name), mode="r")[...], err_msg=name)
    omega = zarr.open_array(str(got / "omega"), mode="r")[...]
    nominal = np.arange(8) * 180 / 8
    assert np.abs(omega - nominal).max() < 0.5 and not np.array_equal(omega, nominal)
    pos = store.read_attrs(got)["positions"]
    assert pos["omega_deg"].endswith("measured.csv:omega_deg") and pos["frames placed by"].startswith("measured")


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_an_hdf5_scan_places_its_frames_by_its_positioners(scans, cluster, tmp_path):
    """No scan file: the HDF5 scan's own motors (measurement/omega, x, z) and counter place the
    frames and give the axes; the store equals the CBF run placed by grid columns."""
    cbf, h5, _ = scans
    ref = run(load_workflow(cbf.workflow, {"store.path": str(tmp_path / "cbf.zarr")}), cluster=cluster,
              progress=False, summary=False)
    got = run(load_workflow(h5.workflow, {"store.path": str(tmp_path / "h5.zarr"), "inputs.scan_file": None,
                                          "inputs.monitor": None, "inputs.positioners.monitor": "monitor"}),
              cluster=cluster, progress=False, summary=False)
    np.testing.assert_array_equal(zarr.open_array(str(got / "reduced/frame_index"), mode="r")[...],
                                  zarr.open_array(str(ref / "reduced/frame_index"), mode="r")[...])
    # the HDF5 counter holds the monitor exactly, monitor.txt to 7 digits: the same to that precision
    for name in ("reduced/monitor", "reduced/intensity", "recon/intensity"):
        a, b = (zarr.open_array(str(p / name), mode="r")[...] for p in (got, ref))
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6 * np.nanmax(np.abs(b)), err_msg=name)
    pos = store.read_attrs(got)["positions"]
    assert "/entry/measurement/omega" in pos["omega_deg"] and pos["frames placed by"].startswith("measured")


def test_nominal_grid_only_when_nothing_is_measured_and_the_store_says_so(scans, tmp_path):
    from xrdct_dask.runs.scanlayout import scan_layout

    cbf, _, _ = scans
    lay = scan_layout(load_workflow(cbf.workflow, {"inputs.scan_file": None}))
    assert lay.grid is None and lay.positions == {"frames placed by": "scan arithmetic (scan.order, scan.fast_axis)",
                                                  "omega_deg": "nominal", "x_mm": "nominal", "z_mm": "nominal"}
    np.testing.assert_array_equal(lay.omega_deg, np.arange(8) * 22.5)
    forced = scan_layout(load_workflow(cbf.workflow, {"scan.positions": "nominal"}))
    assert forced.positions["omega_deg"] == "nominal" and forced.grid is not None  # grid columns still place


def test_plan_counts_scan_flag_exactly_where_the_scan_places_the_frames(scans, tmp_path):
    """``reduced/scan_flag`` is written where the scan itself places the frames (a scan file's grid
    columns, or measured omega and x: here the HDF5 scan's motors), not where the scan arithmetic
    does: the plan's bytes written at preparation include it exactly where the run's layout has a
    grid (:func:`~xrdct_dask.runs.scanlayout.scan_layout`, whose grid is what writes the flags)."""
    from xrdct_dask.runs.plan import plan_workflow
    from xrdct_dask.runs.scanlayout import scan_layout

    cbf, h5, _ = scans
    cases = {"scan file columns": (cbf, {}),
             "no scan file": (cbf, {"inputs.scan_file": None}),
             "HDF5 motors": (h5, {"inputs.scan_file": None, "inputs.monitor": None}),
             "HDF5 motors, positions nominal": (h5, {"inputs.scan_file": None, "inputs.monitor": None,
                                                    "scan.positions": "nominal"})}
    placed, written = {}, {}
    for name, (scan, sets) in cases.items():
        wf = load_workflow(scan.workflow, {"store.path": str(tmp_path / "run.zarr"), **sets})
        lay = scan_layout(wf)
        try:
            placed[name] = lay.grid is not None
        finally:
            lay.close()
        written[name] = plan_workflow(wf).stages["prepare"].bytes_written
    assert placed == {"scan file columns": True, "no scan file": False, "HDF5 motors": True,
                      "HDF5 motors, positions nominal": False}
    flags = 1 * 8 * 8  # scan_flag: int8 (z, omega, x) of the 1 x 8 x 8 scan
    for name in cases:
        assert written[name] == written["no scan file"] + (flags if placed[name] else 0), name
