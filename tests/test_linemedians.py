"""Exact medians of grid lines from values written once per part (xrdct_dask.io.linemedians) and
the scan-table conversion that uses them (xrdct_dask.runs.scanslabs.finish_grid).

Oracle: numpy.median of each line's finite values (tolerance: none, bit for bit).  The speed
contract is checked by counting, not timing: after the slices are finished, no median pass reads
their winning rows back (the old histogram narrowing read every slice 3-5 times per axis).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from xrdct_dask.config import load_workflow
from xrdct_dask.io import linemedians, scantable


def test_medians_of_lines_written_in_parts_are_numpys(tmp_path, rng):
    """5 parts of 1-4 slices each, 13 lines, values with ties, NaN and lines empty in some slices or
    everywhere: merged over ranges of 1 to all lines, each line's median is np.median of its finite
    values; a line without one is NaN; the counts are the finite values per line."""
    nlines = 13
    lines_all, values_all, stems = [], [], []
    for p in range(5):
        w = linemedians.LineValues(tmp_path / f"part{p}", nlines)
        for _ in range(int(rng.integers(1, 5))):
            n = int(rng.integers(0, 400))
            g = rng.integers(0, nlines - 1, n)  # the last line never has a value
            v = np.round(rng.normal(size=n), 1)  # ties
            v[rng.random(n) < 0.1] = np.nan
            w.add(g, v)
            lines_all.append(g)
            values_all.append(v)
        counts = w.close()
        stems.append(w.stem)
        g, v = np.concatenate(lines_all[-len(w.rows):]), np.concatenate(values_all[-len(w.rows):])
        np.testing.assert_array_equal(counts, np.bincount(g[np.isfinite(v)], minlength=nlines))
    g, v = np.concatenate(lines_all), np.concatenate(values_all)
    want = [np.median(v[(g == k) & np.isfinite(v)]) if ((g == k) & np.isfinite(v)).any() else np.nan
            for k in range(nlines)]
    for most in (1, 300, 10 ** 9):
        counts = np.bincount(g[np.isfinite(v)], minlength=nlines)
        ranges = linemedians.line_ranges(counts, most)
        assert ranges[0][0] == 0 and ranges[-1][1] == nlines and len(ranges) == (nlines if most == 1 else len(ranges))
        got = np.concatenate([linemedians.medians_of_lines(stems, a, b) for a, b in ranges])
        np.testing.assert_array_equal(got, want)


def test_exact_median():
    assert linemedians.exact_median(np.array([3.0, np.nan, 1.0, 2.0, 10.0])) == 2.5
    assert linemedians.exact_median(np.array([3.0, 1.0, np.inf, 2.0])) == 2.0
    assert np.isnan(linemedians.exact_median(np.array([np.nan])))


def test_a_grid_sent_to_a_worker_reads_numpys_own_dtypes(tmp_path):
    """A SlabFrames pickled (a task's argument on a worker) reads its rows with numpy's own float64
    and int64: with a dtype rebuilt by pickle, np.minimum.at took its buffered loop, ~20x slower
    (the median passes on the workers ran 3x the CPU time of the same passes in one process)."""
    grid = scantable.SlabFrames(tmp_path / "g", 1, 2, 3, ["x_mm"])
    grid.add(np.zeros(3, np.int64), np.array([0, 1, 1]), np.array([0, 2, 1]), np.arange(3), {"x_mm": np.ones(3)})
    grid.finish()
    there = pickle.loads(pickle.dumps(grid))
    w = there.winners(0)
    assert w["x_mm"].dtype is np.dtype(np.float64) and w["index"].dtype is np.dtype(np.int64)
    np.testing.assert_array_equal(w, grid.winners(0))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("tiny"), nz=1, nomega=4, nx=5, seed=1, threads=2, npt_rad=100)


@pytest.mark.parametrize("line_max", [None, 5], ids=["one-pass", "long-lines-narrowed"])
def test_the_axes_medians_read_no_slice_back(tiny, tmp_path, monkeypatch, line_max):
    """A 4 x 9 x 6 scan file with NaN readings and a monitor: the axes (median reading of each grid
    line) and the monitor reference equal numpy's on the whole table, and once the slices are
    finished no median pass reads a slice's winning rows again (the readings were taken while they
    were in memory).  With lines longer than LINE_VALUES_MAX (5 here) the omega and x lines fall
    back to histogram narrowing over the slices: the same values."""
    from xrdct_dask.io.scan import read_scan_file
    from xrdct_dask.runs.scanlayout import scan_layout
    from xrdct_dask.simulate import write_scan_table

    nz, nw, nx = 4, 9, 6
    write_scan_table(tmp_path / "scan.csv", nz, nw, nx, monitor_path=tmp_path / "monitor.txt", seed=4)
    rows = np.loadtxt(tmp_path / "scan.csv", delimiter=",", skiprows=1)
    rows[[3, 40, 77], 5] = np.nan  # x readings lost
    rows[12, 4] = np.nan
    np.savetxt(tmp_path / "scan.csv", rows, delimiter=",", header="index,iz,iomega,ix,omega_deg,x_mm,z_mm",
               comments="", fmt=["%d"] * 4 + ["%.6f"] * 3)
    wf = load_workflow(tiny.workflow, {"scan.nz": nz, "scan.nomega": nw, "scan.nx": nx,
                                       "inputs.scan_file": str(tmp_path / "scan.csv"),
                                       "inputs.monitor": str(tmp_path / "monitor.txt"),
                                       "store.path": str(tmp_path / "run.zarr")})
    if line_max:
        monkeypatch.setattr(linemedians, "LINE_VALUES_MAX", line_max)
    reads = []
    real_winners = scantable.SlabFrames.winners
    monkeypatch.setattr(scantable.SlabFrames, "winners", lambda self, z: reads.append(z) or real_winners(self, z))
    lay = scan_layout(wf)
    try:
        ref = lay.monitor_reference(wf)
        grid, _ = read_scan_file(tmp_path / "scan.csv", nz, nw, nx)
        by_index = rows[np.argsort(rows[:, 0], kind="stable")]
        for k, axis, col in (("z_mm", 0, 6), ("omega_deg", 1, 4), ("x_mm", 2, 5)):
            want = []
            for i in range(grid.shape[axis]):
                v = by_index[np.take(grid, i, axis=axis).ravel(), col]
                want.append(np.median(v[np.isfinite(v)]))
            np.testing.assert_array_equal(getattr(lay, k), want, err_msg=k)
        mon = np.loadtxt(tmp_path / "monitor.txt")
        used = mon[grid[grid >= 0]]
        assert ref == np.median(used[used > 0])
        if line_max is None:
            assert reads == []  # no slice read back: not for the axes, not for the monitor reference
        else:
            assert len(reads) >= 2 * nz  # omega and x narrowed over the slices
    finally:
        lay.close()
