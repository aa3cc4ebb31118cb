"""Positioner tables converted on the workers (xrdct_dask.runs.positionslabs): an HDF5 scan's
motors and counter (BLISS ``measurement/``) and a scan CSV without grid columns, read slab by slab
by worker tasks while the client reads only the datasets' extents.

Oracles: the same conversion with no client (every slab read here, one after the other) and
the whole table at once (io.positioners.grid_from_positions + place_on_grid, numpy.median of
the monitor): bit for bit equal (tolerance: none).  Slabs of 7 frames make 6 slabs of a 40-frame
scan, so that every cross-slab case occurs (a grid line's readings in several slabs, the monitor
of a slab placed by another task).
"""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

from xrdct_dask.cluster.sidework import slabs
from xrdct_dask.config import load_workflow
from xrdct_dask.io import linemedians, positioners
from xrdct_dask.runs import positionslabs


@pytest.fixture(scope="module")
def h5_scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("h5"), nz=2, nomega=4, nx=5, seed=4, threads=2, fmt="h5",
                         frames_per_file=16)


def _layout(wf, client=None):
    from xrdct_dask.runs.scanlayout import scan_layout

    lay = scan_layout(wf, client)
    try:
        nz = wf.scan.nz
        return {"index": np.stack([lay.index(wf, z) for z in range(nz)]),
                "dup": np.stack([lay.grid.duplicate(z) for z in range(nz)]),
                "omega_deg": lay.omega_deg, "x_mm": lay.x_mm, "z_mm": lay.z_mm,
                "monitor": lay.monitor.take(np.arange(lay.monitor.size)),
                "reference": lay.monitor_reference(wf, client), "positions": lay.positions}
    finally:
        lay.close()


def test_an_hdf5_scans_positioners_are_read_by_the_workers_only(h5_scan, tmp_path, monkeypatch):
    """The simulated HDF5 scan (no scan file: its measurement/omega, x, z and monitor place the
    frames), one jittered reading moved onto another frame's point (a point measured twice, in
    another slab): converted on two workers in slabs of 7 frames, the layout (frames' places,
    points measured twice, axes, monitor by frame, monitor reference) equals the one converted
    here and the whole table's; every positioner value was read by a worker task (the client
    read the datasets' shapes and units only); the slabs ran as tasks of each pass."""
    from distributed import Client, LocalCluster, get_task_stream

    master = h5_scan.root / "frames" / "scan_master.h5"
    with h5py.File(master, "r+") as f:  # frame 33 measured at frame 3's point: the last reading wins
        for name in ("omega", "x", "z"):
            d = f[f"entry/measurement/{name}"]
            d[33] = d[3]
    wf = load_workflow(h5_scan.workflow, {"store.path": str(tmp_path / "run.zarr"), "inputs.scan_file": None,
                                          "inputs.monitor": None, "inputs.positioners.monitor": "monitor",
                                          "scan.positions": "measured"})
    monkeypatch.setattr(positionslabs, "SLAB_FRAMES", 7)
    monkeypatch.setattr(linemedians, "MERGE_VALUES", 9)  # several merge tasks per axis
    reads = []
    real = positioners.read_hdf5_slab

    def read(columns, start, stop):
        reads.append((threading.current_thread().name, start, stop))
        return real(columns, start, stop)

    monkeypatch.setattr(positioners, "read_hdf5_slab", read)
    serial = _layout(wf)
    assert sorted({(a, b) for _, a, b in reads}) == slabs(40, 6)  # 6 slabs of at most 7 frames, each read alone
    reads.clear()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client, get_task_stream(client) as ts:
        parallel = _layout(wf, client)
    assert reads and all(t.startswith("Dask-") or "Dask" in t for t, _, _ in reads), {t for t, _, _ in reads}
    names = {t["key"].split("-", 1)[1].rsplit("-", 2)[0] for t in ts.data}
    assert {"scan-positions-sample", "scan-positions-groups", "scan-positions-place", "scan-slices",
            "scan-monitor"} <= names, names
    for k, v in serial.items():
        if k == "positions":
            assert parallel[k] == v
        else:
            np.testing.assert_array_equal(parallel[k], v, err_msg=k)
    pos = positioners.read_hdf5_positions(master, monitor="monitor", nframes=40)
    axes = {k: positioners.grid_from_positions(getattr(pos, k), n) for k, n in
            (("omega_deg", 4), ("x_mm", 5), ("z_mm", 2))}
    for k in axes:
        np.testing.assert_array_equal(serial[k], axes[k], err_msg=k)
    p = positioners.place_on_grid(pos.omega_deg, pos.x_mm, pos.z_mm, axes["omega_deg"], axes["x_mm"], axes["z_mm"])
    np.testing.assert_array_equal(serial["index"], p.grid)
    np.testing.assert_array_equal(serial["dup"], p.duplicate)
    assert p.duplicate.sum() == 1
    np.testing.assert_array_equal(serial["monitor"], pos.monitor)
    used = pos.monitor[p.grid[p.grid >= 0]]
    assert serial["reference"] == np.median(used[used > 0])
    assert "/entry/measurement/omega" in serial["positions"]["omega_deg"]


def test_a_positions_csv_and_an_hdf5_monitor_alone_convert_on_the_workers(h5_scan, tmp_path, monkeypatch):
    """A scan CSV of measured positions (no grid columns) is placed by worker tasks like an HDF5
    scan, equal to the serial conversion; an HDF5 scan that gives only its monitor (no omega or x
    motor of the names given: the scan arithmetic places the frames) has it read by worker tasks,
    equal to the counter's values."""
    from distributed import Client, LocalCluster, get_task_stream

    from xrdct_dask.io.scan import read_scan_table

    t = read_scan_table(h5_scan.scan_file)
    cols = ["index", "omega_deg", "x_mm", "z_mm", "monitor"]
    np.savetxt(tmp_path / "pos.csv", np.column_stack([t[c] for c in cols]), delimiter=",", header=",".join(cols),
               comments="", fmt=["%d"] + ["%.6f"] * 3 + ["%.1f"])
    from xrdct_dask.io import tableslabs

    monkeypatch.setattr(tableslabs, "SLAB_BYTES", 200)
    monkeypatch.setattr(positionslabs, "SLAB_FRAMES", 7)
    csv = load_workflow(h5_scan.workflow, {"store.path": str(tmp_path / "a.zarr"), "inputs.frames":
                                           str(h5_scan.root / "frames" / "scan_master.h5"),
                                           "inputs.scan_file": str(tmp_path / "pos.csv"), "inputs.monitor": None})
    mon_only = load_workflow(h5_scan.workflow, {"store.path": str(tmp_path / "b.zarr"), "inputs.scan_file": None,
                                                "inputs.monitor": None, "inputs.positioners.monitor": "monitor",
                                                "inputs.positioners.omega": "no_such_motor",
                                                "inputs.positioners.x": "no_such_motor", "inputs.positioners.z": None})
    serial = _layout(csv)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client, get_task_stream(client) as ts:
        parallel = _layout(csv, client)
        from xrdct_dask.runs.scanlayout import scan_layout

        lay = scan_layout(mon_only, client)
        try:
            mon = lay.monitor.take(np.arange(40))
        finally:
            lay.close()
    names = {t["key"].split("-", 1)[1].rsplit("-", 2)[0] for t in ts.data}
    assert {"scan-positions-sample", "scan-positions-place", "scan-monitor-slab"} <= names, names
    for k, v in serial.items():
        if k != "positions":
            np.testing.assert_array_equal(parallel[k], v, err_msg=k)
    assert serial["positions"]["frames placed by"].startswith("measured positions")
    with h5py.File(h5_scan.root / "frames" / "scan_master.h5", "r") as f:
        np.testing.assert_array_equal(mon, f["entry/measurement/monitor"][:40])
