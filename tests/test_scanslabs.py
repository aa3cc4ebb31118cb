"""A scan table and monitor converted on the workers (xrdct_dask.runs.scanslabs, io.tableslabs):
cut by byte offset into slabs of whole lines, parsed slab by slab, the medians merged from
per-slab histograms.

Oracle: the serial streamed reader of the same files (xrdct_dask.io.scantable, read from the top,
no client), itself checked against the whole table read at once (tests/test_scantable.py).  Every
result must be equal bit for bit: the placement, the duplicates, the axes (medians), the monitor
by acquisition index and the monitor reference.  Slabs of a few hundred bytes make tens of slabs
out of tables of a few hundred rows, so that every cross-slab case occurs (a point recorded in
two slabs, a monitor index read in two slabs).
"""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask.config import load_workflow
from xrdct_dask.io import scantable, tableslabs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("tiny"), nz=1, nomega=4, nx=5, seed=1, threads=2, npt_rad=100)


def test_line_slabs_cover_every_line_once(tmp_path):
    """Slabs of 1 to 500 bytes of a CSV with comments and a last line without newline start at
    line starts, end after line ends, cover every byte after the header once, and parse to the
    rows scan_table_blocks reads from the top (exactly: same parse of the same text)."""
    from xrdct_dask.simulate import write_scan_table

    write_scan_table(tmp_path / "s.csv", 2, 7, 5, seed=3)
    text = (tmp_path / "s.csv").read_bytes()
    lines = text.splitlines(keepends=True)
    text = b"".join(lines[:9] + [b"# a comment line\n"] + lines[9:]).rstrip(b"\n")  # no newline at the end
    (tmp_path / "s.csv").write_bytes(text)
    whole = {k: np.concatenate([b[k] for b in scantable.scan_table_blocks(tmp_path / "s.csv")])
             for k in ("index", "iz", "iomega", "ix", "omega_deg", "x_mm", "z_mm")}
    for size in (1, 17, 64, 500, 1 << 20):
        ranges = tableslabs.line_slabs(tmp_path / "s.csv", size, header=True)
        assert ranges[0][0] == len(lines[0]) and ranges[-1][1] == len(text)
        assert all(b == a2 for (_, b), (a2, _) in zip(ranges[:-1], ranges[1:]))
        assert all(text[a - 1:a] == b"\n" for a, _ in ranges)
        parts = [tableslabs.read_table_slab(tmp_path / "s.csv", a, b) for a, b in ranges]
        for k, v in whole.items():
            got = np.concatenate([p[k] for p in parts if k in p])
            assert got.dtype == v.dtype
            np.testing.assert_array_equal(got, v, err_msg=f"{k}, slabs of {size} bytes")


def test_slab_errors_are_the_streamed_readers(tmp_path):
    """A word in a slab in the middle of a file is the streamed reader's one-line error, its line
    number counted from the top of the file."""
    (tmp_path / "s.csv").write_text("index,iz,iomega,ix,omega_deg\n" + "".join(f"{i},0,0,{i},1.5\n" for i in range(50))
                                    + "50,0,0,50,abc\n")
    ranges = tableslabs.line_slabs(tmp_path / "s.csv", 64, header=True)
    with pytest.raises(ValueError, match="column 'omega_deg' holds values that are not numbers"):
        for a, b in ranges:
            tableslabs.read_table_slab(tmp_path / "s.csv", a, b)
    (tmp_path / "m.txt").write_text("# I0\n" + "1.0\n" * 300 + "oops\n" + "2.0\n" * 10)
    with pytest.raises(ValueError, match="line 302: 'oops' is not a number"):
        for a, b in tableslabs.line_slabs(tmp_path / "m.txt", 100):
            tableslabs.read_monitor_slab(tmp_path / "m.txt", a, b)


def _layout(wf, client=None):
    from xrdct_dask.runs.scanlayout import scan_layout

    lay = scan_layout(wf, client)
    nz = wf.scan.nz
    out = {"index": np.stack([lay.index(wf, z) for z in range(nz)]),
           "dup": np.stack([lay.grid.duplicate(z) for z in range(nz)]),
           "omega_deg": lay.omega_deg, "x_mm": lay.x_mm, "z_mm": lay.z_mm,
           "monitor": lay.monitor.take(np.arange(lay.monitor.size)),
           "reference": lay.monitor_reference(wf, client), "max_index": lay.grid.max_index}
    lay.close()
    return out


@pytest.mark.parametrize("monitor_file", [True, False], ids=["monitor-file", "monitor-column"])
def test_layout_on_the_workers_equals_the_serial_one(tiny, tmp_path, monkeypatch, monitor_file):
    """A 3 x 10 x 7 scan file with two frames swapped, a point recorded twice far apart (other
    slabs), and (monitor column) one acquisition index read twice in two slabs: converted in
    slabs of 300 bytes on two workers, medians over 3 parts narrowed in many passes, the layout
    equals the serial one read from the top, bit for bit; the slabs ran as worker tasks."""
    from distributed import Client, LocalCluster, get_task_stream

    from xrdct_dask.simulate import write_scan_table

    nz, nw, nx = 3, 10, 7
    write_scan_table(tmp_path / "scan.csv", nz, nw, nx, monitor_path=tmp_path / "monitor.txt", seed=2)
    rows = np.loadtxt(tmp_path / "scan.csv", delimiter=",", skiprows=1)
    rows[[4, 30]] = rows[[30, 4]]
    rows[4, 0], rows[30, 0] = 4, 30  # acquisition order kept, grid places swapped
    rows[150, 1:] = rows[5, 1:]  # frame 150 measured at frame 5's point: the last record wins
    cols = ["index", "iz", "iomega", "ix", "omega_deg", "x_mm", "z_mm"]
    fmt = ["%d"] * 4 + ["%.6f"] * 3
    if not monitor_file:
        mon = np.loadtxt(tmp_path / "monitor.txt")
        rows = np.column_stack([rows, mon])
        rows = np.vstack([rows, rows[20]])  # index 20 again at the end: its last reading wins
        rows[-1, -1] = 1.5e5
        cols, fmt = cols + ["monitor"], fmt + ["%.3f"]
    np.savetxt(tmp_path / "scan.csv", rows, delimiter=",", header=",".join(cols), comments="", fmt=fmt)
    sets = {"scan.nz": nz, "scan.nomega": nw, "scan.nx": nx, "inputs.scan_file": str(tmp_path / "scan.csv"),
            "inputs.monitor": str(tmp_path / "monitor.txt") if monitor_file else None,
            "store.path": str(tmp_path / "run.zarr")}
    wf = load_workflow(tiny.workflow, sets)
    serial = _layout(wf)
    monkeypatch.setattr(tableslabs, "SLAB_BYTES", 300)
    monkeypatch.setattr(scantable, "MEDIAN_CELLS", 64)
    monkeypatch.setattr(scantable, "MEDIAN_COLLECT", 2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client, get_task_stream(client) as ts:
        parallel = _layout(wf, client)
    names = {t["key"].split("-")[1] + "-" + t["key"].split("-")[2] for t in ts.data}
    assert {"scan-table", "scan-slices"} <= names and ("monitor-file" in names) == monitor_file, names
    assert len(tableslabs.line_slabs(tmp_path / "scan.csv", 300, header=True)) > 20
    assert serial["dup"].sum() == (1 if monitor_file else 2)  # the repeated row of index 20 is a point twice too
    if not monitor_file:
        assert serial["monitor"][20] == 1.5e5
    for k, v in serial.items():
        np.testing.assert_array_equal(parallel[k], v, err_msg=k)
    assert not any(p.name.startswith(".run.zarr.xrdct-scan-") for p in tmp_path.iterdir())  # scratch removed

