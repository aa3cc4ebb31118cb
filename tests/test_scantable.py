"""A scan's table and monitor read in bounded memory (xrdct_dask.io.scantable): streamed in
blocks, kept per slice, global statistics exact.

Oracles: numpy on the whole arrays (np.median, the whole-table readers read_scan_file /
grid_from_positions / place_on_grid) on scans small enough to hold, read here in blocks of a few
dozen rows and narrowed in many passes, so that every streamed path is taken; and, for the
memory, the client's peak RSS while ``open_run`` prepares a store from a scan table and monitor
of 1e6 and 1e7 rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from xrdct_dask.config import load_workflow
from xrdct_dask.io import scantable


def test_grouped_median_is_numpys_median(rng):
    """Exact (bit for bit) for normal readings, many ties, two far clusters, NaN and empty groups,
    with 4 bins and 2 values gathered (many narrowing passes) and with the defaults."""
    for trial in range(24):
        ngroups, n = int(rng.integers(1, 12)), int(rng.integers(0, 3000))
        g = rng.integers(0, ngroups, n)
        v = [rng.normal(size=n), rng.integers(0, 4, n).astype(float),
             np.where(rng.random(n) < 0.5, -1e6, 1e6) + rng.normal(size=n)][trial % 3]
        v[rng.random(n) < 0.05] = np.nan

        def stream(g=g, v=v, n=n):  # this trial's readings (bound now: the loop rebinds them)
            for a in range(0, n, 101):
                yield g[a:a + 101], v[a:a + 101]

        want = [np.median(v[(g == k) & np.isfinite(v)]) if ((g == k) & np.isfinite(v)).any() else np.nan
                for k in range(ngroups)]
        for kw in ({"bins": 4, "collect": 2}, {}):
            np.testing.assert_array_equal(scantable.grouped_median(stream, ngroups, **kw), want)


def test_sample_is_random_bounded_whole_when_small_and_the_same_however_cut():
    """At most its size; every reading kept while they fit; a fair sample of a periodic stream
    (a strided one of period 8 out of 16 values would see only two); the same readings whatever
    the parts the table is cut into and their order (the keys of the acquisition indices decide)."""
    index = np.arange(10_000)
    values = {"v": (index % 16).astype(float)}
    keys = scantable.sample_keys(index)

    def sample(cuts, order=1):
        s = scantable.IndexSample(scantable.sample_level(10_000, 100), 100)
        parts = list(zip(cuts[:-1], cuts[1:]))[::order]
        for a, b in parts:
            s.add(keys[a:b], {"v": values["v"][a:b]})
        return s

    s = sample([0, 10_000])
    assert 25 < s.count <= 100 and s.count == s.column("v").size and s.level >= 7
    assert set(s.column("v")) == set(range(16))
    for cuts, order in (([0, 37, 5000, 9999, 10_000], 1), (list(range(0, 10_001, 1000)), -1)):
        other = sample(cuts, order)
        assert other.level == s.level and sorted(other.column("v")) == sorted(s.column("v"))
    whole = scantable.IndexSample(scantable.sample_level(100, 100), 100)
    whole.add(keys[:60], {"v": np.arange(60.0)})
    whole.add(keys[60:100], {"v": np.arange(40.0)})
    np.testing.assert_array_equal(whole.column("v"), np.r_[np.arange(60.0), np.arange(40.0)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A simulated scan's PONI, mask and first frames: the workflow the big tables are read with."""
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("tiny"), nz=1, nomega=4, nx=5, seed=1, threads=2, npt_rad=100)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 37 rows, 64 histogram cells, 2 values gathered: every streamed path is taken."""
    monkeypatch.setattr(scantable, "BLOCK_ROWS", 37)
    monkeypatch.setattr(scantable, "MEDIAN_CELLS", 64)
    monkeypatch.setattr(scantable, "MEDIAN_COLLECT", 2)


def _table(tmp_path, nz, nw, nx, **kw):
    from xrdct_dask.io.scan import read_scan_table
    from xrdct_dask.simulate import write_scan_table

    write_scan_table(tmp_path / "scan.csv", nz, nw, nx, monitor_path=tmp_path / "monitor.txt", seed=2, **kw)
    return read_scan_table(tmp_path / "scan.csv")


def test_streamed_layout_equals_the_whole_table(tiny, tmp_path, small_blocks):
    """Grid columns with a point recorded twice and two frames out of order: the frames' places,
    the points recorded twice, the axes (median reading of each grid line) and the monitor
    reference equal those of the whole table read at once."""
    from xrdct_dask.io.scan import read_scan_file
    from xrdct_dask.runs.scanlayout import scan_layout

    nz, nw, nx = 3, 10, 7
    t = _table(tmp_path, nz, nw, nx)
    t["iomega"][[4, 30]] = t["iomega"][[30, 4]]  # out of order: two frames swapped
    t["ix"][[4, 30]] = t["ix"][[30, 4]]
    for k in ("iz", "iomega", "ix", "omega_deg", "x_mm", "z_mm"):
        t[k][100] = t[k][50]  # frame 100 measured at frame 50's point: a duplicate, the last wins
    cols = ["index", "iz", "iomega", "ix", "omega_deg", "x_mm", "z_mm"]
    np.savetxt(tmp_path / "scan.csv", np.column_stack([t[c] for c in cols]), delimiter=",", header=",".join(cols),
               comments="", fmt=["%d"] * 4 + ["%.6f"] * 3)
    wf = load_workflow(tiny.workflow, {"scan.nz": nz, "scan.nomega": nw, "scan.nx": nx,
                                       "inputs.scan_file": str(tmp_path / "scan.csv"),
                                       "inputs.monitor": str(tmp_path / "monitor.txt"),
                                       "store.path": str(tmp_path / "run.zarr")})
    lay = scan_layout(wf)
    try:
        grid, dup = read_scan_file(tmp_path / "scan.csv", nz, nw, nx)
        np.testing.assert_array_equal(np.stack([lay.index(wf, z) for z in range(nz)]), grid)
        np.testing.assert_array_equal(np.stack([lay.grid.duplicate(z) for z in range(nz)]), dup)
        assert dup.sum() == 1 and grid[t["iz"][50], t["iomega"][50], t["ix"][50]] == 100  # the last record
        values = {k: t[k][np.argsort(t["index"], kind="stable")] for k in ("omega_deg", "x_mm", "z_mm")}
        for k, axis in (("z_mm", 0), ("omega_deg", 1), ("x_mm", 2)):
            want = [np.median(values[k][np.take(grid, i, axis=axis)[np.take(grid, i, axis=axis) >= 0]])
                    for i in range(grid.shape[axis])]
            np.testing.assert_array_equal(getattr(lay, k), want, err_msg=k)
        mon = np.loadtxt(tmp_path / "monitor.txt")
        used = mon[grid[grid >= 0]]
        assert lay.monitor_reference(wf) == np.median(used[used > 0])
        np.testing.assert_array_equal(lay.monitor_of(grid[1]), np.where(grid[1] >= 0, mon[grid[1]], np.nan))
        assert lay.positions["frames placed by"] == "scan file columns iz, iomega, ix"
    finally:
        lay.close()
    assert not any(p.name.startswith(".run.zarr.xrdct-scan-") for p in tmp_path.iterdir())  # scratch removed


def test_streamed_placement_by_positions_equals_the_whole_table(tiny, tmp_path, small_blocks, monkeypatch):
    """No grid columns: the axes found from a random sample of 100 of the 144 readings, the frames placed by
    their readings, and the frames off grid equal grid_from_positions and place_on_grid on the
    whole table."""
    from xrdct_dask.io.positioners import grid_from_positions, place_on_grid
    from xrdct_dask.runs.scanlayout import scan_layout

    monkeypatch.setattr(scantable, "SAMPLE_MAX", 100)
    nz, nw, nx = 2, 12, 6
    t = _table(tmp_path, nz, nw, nx, order="interlaced")
    cols = ["index", "omega_deg", "x_mm", "z_mm"]
    np.savetxt(tmp_path / "pos.csv", np.column_stack([t[c] for c in cols]), delimiter=",", header=",".join(cols),
               comments="", fmt=["%d"] + ["%.6f"] * 3)
    wf = load_workflow(tiny.workflow, {"scan.nz": nz, "scan.nomega": nw, "scan.nx": nx,
                                       "inputs.scan_file": str(tmp_path / "pos.csv"), "inputs.monitor": None,
                                       "store.path": str(tmp_path / "run.zarr")})
    lay = scan_layout(wf)
    try:
        axes = {k: grid_from_positions(t[k], n) for k, n in (("omega_deg", nw), ("x_mm", nx), ("z_mm", nz))}
        for k in axes:
            np.testing.assert_array_equal(getattr(lay, k), axes[k], err_msg=k)
        p = place_on_grid(t["omega_deg"], t["x_mm"], t["z_mm"], axes["omega_deg"], axes["x_mm"], axes["z_mm"])
        np.testing.assert_array_equal(np.stack([lay.index(wf, z) for z in range(nz)]), p.grid)
        assert lay.positions["frames placed by"].startswith(
            f"measured positions ({int(p.off_grid.sum())} frames")
        assert lay.monitor is None and lay.monitor_reference(wf) == 1.0
    finally:
        lay.close()


def test_a_word_in_the_scan_table_or_monitor_is_one_line(tmp_path):
    (tmp_path / "s.csv").write_text("index,iz,iomega,ix,omega_deg\n0,0,0,0,1.5\n1,0,0,1,abc\n")
    with pytest.raises(ValueError, match="column 'omega_deg' holds values that are not numbers"):
        list(scantable.scan_table_blocks(tmp_path / "s.csv"))
    (tmp_path / "m.txt").write_text("# I0\n1.0\n2.0\noops\n")
    with pytest.raises(ValueError, match="line 4: 'oops' is not a number"):
        list(scantable.monitor_blocks(tmp_path / "m.txt"))


MEASURE = textwrap.dedent("""
    import json, sys
    from xrdct_dask.config import load_workflow
    from xrdct_dask.pipeline.integrator import plan_for
    from xrdct_dask.runs.inputs import check_inputs
    from xrdct_dask.runs.open import open_run

    wf = load_workflow(sys.argv[1], json.loads(sys.argv[2]))
    check_inputs(wf); plan_for(wf)  # imports and the integration plan: the same at any scan size

    def status(key):
        return next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith(key))

    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) from here on: building the plan peaked before
        f.write("5")
    ctx = open_run(wf)
    print(json.dumps({"before": before, "peak": status("VmHWM")}))
""")


MEASURE_ON_WORKERS = textwrap.dedent("""
    import json, sys
    from distributed import Client, LocalCluster
    from xrdct_dask.config import load_workflow
    from xrdct_dask.io import tableslabs
    from xrdct_dask.pipeline.integrator import plan_for
    from xrdct_dask.runs.open import check_inputs, open_run

    tableslabs.SLAB_BYTES = 8 << 20  # tens of slabs at 1e7 rows: the client's share per slab shows
    wf = load_workflow(sys.argv[1], json.loads(sys.argv[2]))
    check_inputs(wf); plan_for(wf)

    def status(key):
        return next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith(key))

    if __name__ == "__main__":
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as cluster, \\
                Client(cluster) as client:
            client.run(lambda: setattr(tableslabs, "SLAB_BYTES", 8 << 20))
            before = status("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            ctx = open_run(wf, client=client)
            print(json.dumps({"before": before, "peak": status("VmHWM")}))
""")


@pytest.mark.slow  # writes and reads a 1e7-row scan table and monitor: ~80 s each
@pytest.mark.timeout(900)
@pytest.mark.parametrize("where", ["client", "workers"])
def test_client_memory_does_not_grow_with_the_scan_table_and_monitor(tiny, tmp_path, where):
    """open_run of a scan of 1e6 and of 1e7 frames (100,000 per slice), each with a scan table
    (grid columns and jittered omega/x/z readings) and a monitor file of as many rows, read here
    (no cluster) or converted by two worker processes (xrdct_dask.runs.scanslabs; the client
    process also holds the local scheduler): the client's peak resident memory while preparing
    the store (VmHWM, reset after the imports and the integration plan, which are the same at any
    scan size), above what it held before, stays under 200 MB and does not grow with the rows
    (1.5x at most); the store holds every frame where the table put it."""
    from xrdct_dask.io.scan import grid_index
    from xrdct_dask.simulate import write_scan_table

    grown, procs = {}, {}
    for nz in (10, 100):  # each measured in its own process (its own peak), the two side by side
        folder = tmp_path / f"nz{nz}"
        folder.mkdir()
        write_scan_table(folder / "scan.csv", nz, 1000, 100, monitor_path=folder / "monitor.txt", seed=nz)
        sets = {"scan.nz": nz, "scan.nomega": 1000, "scan.nx": 100, "store.omega_chunk": 100, "pdf.enabled": False,
                "inputs.scan_file": str(folder / "scan.csv"), "inputs.monitor": str(folder / "monitor.txt"),
                "store.path": str(folder / "run.zarr")}
        script = folder / "measure.py"  # a file: the workers' processes import their parent's main module
        script.write_text(MEASURE if where == "client" else MEASURE_ON_WORKERS)
        procs[nz] = subprocess.Popen([sys.executable, str(script), str(tiny.workflow), json.dumps(sets)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for nz, proc in procs.items():
        out, err = proc.communicate(timeout=500)
        assert proc.returncode == 0, err[-3000:]
        m = json.loads(out.strip().splitlines()[-1])
        grown[nz] = m["peak"] - m["before"]
    for nz in (10, 100):
        folder = tmp_path / f"nz{nz}"
        idx = zarr.open_array(str(folder / "run.zarr" / "reduced/frame_index"), mode="r")
        z = nz - 1
        np.testing.assert_array_equal(idx[z], grid_index(z, *np.indices((1000, 100)), 1000, 100))
        mon = zarr.open_array(str(folder / "run.zarr" / "reduced/monitor"), mode="r")[z]
        assert np.isfinite(mon).all() and 0.95e5 <= mon.min() and mon.max() < 1.06e5  # the writer's monitor
        (folder / "scan.csv").unlink()
    assert grown[100] < 200e6 and grown[100] < 1.5 * max(grown[10], 50e6), grown  # 50 MB: below it, noise
