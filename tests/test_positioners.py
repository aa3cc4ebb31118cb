"""Scan metadata from the scan: omega, x, z, monitor per frame from BLISS / NeXus HDF5 and the scan
CSV (units converted), and frames placed on the (z, omega, x) grid by their measured positions.

Oracles: the simulator's own scan (the positions it wrote and the grid indices it used) and
hand-made BLISS-like files whose values are known exactly; positions compare to 1e-12 relative
(a units factor), grid indices exactly.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from xrdct_dask.io.positioners import grid_from_positions, place_on_grid, read_csv_positions, read_hdf5_positions
from xrdct_dask.io.scan import acquisition_order, read_scan_file, read_scan_table


@pytest.fixture(scope="module")
def h5_scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("h5"), nz=2, nomega=4, nx=5, seed=4, threads=2, fmt="h5",
                         frames_per_file=16)


def test_simulated_hdf5_scan_positions_match_its_scan_table(h5_scan):
    """The master holds what the CSV holds: same omega/x/z/monitor per frame."""
    master = h5_scan.root / "frames" / "scan_master.h5"
    pos = read_hdf5_positions(master, monitor="monitor")
    csv = read_csv_positions(h5_scan.scan_file)
    assert pos.nframes == csv.nframes == 40
    for k in ("omega_deg", "x_mm", "z_mm"):
        np.testing.assert_allclose(getattr(pos, k), getattr(csv, k), rtol=0, atol=5e-5)  # CSV: 4-6 decimals
    np.testing.assert_allclose(pos.monitor, csv.monitor, rtol=1e-6)
    assert pos.source["omega_deg"] == f"{master}::/entry/measurement/omega"
    order = acquisition_order(2, 4, 5)
    truth = h5_scan.load_truth()
    np.testing.assert_array_equal(pos.omega_deg, truth["omega_deg"][order[:, 1]])


def bliss_file(path, n=12):
    """A BLISS-like scan: entry 1.1, rotation in rad as a counter, translation in um, a motor
    that did not move (scalar), a monitor counter."""
    rng = np.random.default_rng(3)
    omega_deg = np.repeat(np.arange(3) * 60.0, 4) + rng.normal(0, 0.01, n)
    x_um = np.tile(np.arange(4) * 250.0, 3) + rng.normal(0, 1.0, n)
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "1.1"
        e = f.create_group("1.1")
        e.attrs["NX_class"] = "NXentry"
        m = e.create_group("measurement")
        m.create_dataset("rot", data=np.deg2rad(omega_deg)).attrs["units"] = "rad"
        m.create_dataset("mon", data=np.full(n, 1e5))
        p = e.create_group("instrument/positioners")
        p.create_dataset("samx", data=x_um).attrs["units"] = "um"
        p.create_dataset("samz", data=2.5).attrs["units"] = "mm"
        nxp = e.create_group("instrument/samy")
        nxp.create_dataset("value", data=np.arange(n) * 1e-3).attrs["units"] = "m"
        f.create_group("2.1/measurement").create_dataset("rot", data=np.zeros(3))
    return omega_deg, x_um


def test_bliss_positioners_counters_and_units(tmp_path):
    omega_deg, x_um = bliss_file(tmp_path / "scan.h5")
    pos = read_hdf5_positions(tmp_path / "scan.h5", omega="rot", x="samx", z="samz", monitor="mon", nframes=12)
    np.testing.assert_allclose(pos.omega_deg, omega_deg, rtol=1e-12)
    np.testing.assert_allclose(pos.x_mm, x_um / 1000, rtol=1e-12)
    np.testing.assert_array_equal(pos.z_mm, np.full(12, 2.5))  # scalar motor repeated
    np.testing.assert_array_equal(pos.monitor, np.full(12, 1e5))
    y = read_hdf5_positions(tmp_path / "scan.h5", omega=None, x="samy", z=None)  # NXpositioner value, m -> mm
    np.testing.assert_allclose(y.x_mm, np.arange(12) * 1.0)
    other = read_hdf5_positions(f"{tmp_path / 'scan.h5'}::/2.1", omega="rot", x=None, z=None)
    assert other.omega_deg.size == 3
    with pytest.raises(ValueError, match="no positioner or counter 'nope'"):
        read_hdf5_positions(tmp_path / "scan.h5", omega="nope")
    with pytest.raises(ValueError, match="samz is a single value"):
        read_hdf5_positions(tmp_path / "scan.h5", omega="rot", x="samx", z="samz")
    with pytest.raises(ValueError, match="12 values for a scan of 20 frames"):
        read_hdf5_positions(tmp_path / "scan.h5", omega="rot", x=None, z=None, nframes=20)
    with h5py.File(tmp_path / "scan.h5", "a") as f:
        f["1.1/measurement/rot"].attrs["units"] = "furlong"
    with pytest.raises(ValueError, match="units 'furlong' are not an angle"):
        read_hdf5_positions(tmp_path / "scan.h5", omega="rot", x=None, z=None)


def test_frames_placed_by_measured_positions(tmp_path):
    """Jittered readings land on their grid points; a reading between points, one past the range
    and a repeated point are flagged; 359.99 deg is the grid's 0 deg."""
    omega_deg, x_um = bliss_file(tmp_path / "scan.h5")
    pos = read_hdf5_positions(tmp_path / "scan.h5", omega="rot", x="samx", z="samz", nframes=12)
    omega = pos.omega_deg.copy()
    omega[0] = 359.99       # wraps to 0
    omega[5] = 30.0         # halfway between 0 and 60: fits no angle
    x = pos.x_mm.copy()
    x[7] = 5.0              # far past the last step (0.75 mm)
    x[11] = x[10]           # frame 11 measured at frame 10's point: a duplicate
    omega[11] = omega[10]
    p = place_on_grid(omega, x, pos.z_mm, omega_grid_deg=[0, 60, 120], x_grid_mm=[0, 0.25, 0.5, 0.75],
                      z_grid_mm=[2.5])
    want_w, want_x = np.repeat(np.arange(3), 4), np.tile(np.arange(4), 3)
    assert p.off_grid.tolist() == [k in (5, 7) for k in range(12)]
    ok = ~p.off_grid
    np.testing.assert_array_equal(p.iomega[ok & (np.arange(12) != 11)], want_w[ok & (np.arange(12) != 11)])
    np.testing.assert_array_equal(p.ix[ok & (np.arange(12) != 11)], want_x[ok & (np.arange(12) != 11)])
    assert (p.iz[ok] == 0).all() and (p.iomega[~ok] == -1).all()
    assert p.grid[0, 2, 2] == 11 and p.duplicate[0, 2, 2] and p.duplicate.sum() == 1
    assert p.grid[0, 2, 3] == -1  # frame 11 did not measure its own point
    assert p.grid[0, 1, 1] == -1 and p.grid[0, 1, 3] == -1  # frames 5 and 7 placed nowhere
    assert abs(p.residual_omega_deg[0] + 0.01) < 1e-9 + 0.05  # 359.99 -> -0.01 (+ jitter)
    assert np.abs(p.residual_x_mm[ok]).max() < 0.01
    strict = place_on_grid(omega, x, pos.z_mm, [0, 60, 120], [0, 0.25, 0.5, 0.75], [2.5], x_tol_mm=1e-4)
    assert strict.off_grid.sum() > 6  # micrometre jitter exceeds a 0.1 um tolerance
    no_wrap = place_on_grid(omega, x, pos.z_mm, [0, 60, 120], [0, 0.25, 0.5, 0.75], [2.5], omega_period_deg=None)
    assert no_wrap.off_grid[0]


def test_grid_from_positions():
    rng = np.random.default_rng(1)
    truth = np.array([-1.0, 0.5, 2.0, 3.5])
    readings = np.repeat(truth, 25) + rng.normal(0, 0.02, 100)
    np.testing.assert_allclose(grid_from_positions(readings, 4), truth, atol=0.02)
    with pytest.raises(ValueError, match="cannot make a grid of 5"):
        grid_from_positions([1.0, 1.0, 2.0, 3.0], 5)


def test_scan_csv_optional_columns(tmp_path, h5_scan):
    t = read_scan_table(h5_scan.scan_file)
    assert {"omega_deg", "x_mm", "z_mm", "monitor"} <= set(t) and t["iz"].dtype == np.int64
    np.testing.assert_allclose(t["monitor"], np.loadtxt(h5_scan.monitor), rtol=1e-6)
    (tmp_path / "pos.csv").write_text("index,omega_deg,x_mm\n1,90.0,0.5\n0,0.0,0.0\n")
    only = read_csv_positions(tmp_path / "pos.csv")  # no grid columns: placed by positions later
    np.testing.assert_array_equal(only.omega_deg, [0.0, 90.0])
    assert only.z_mm is None and only.monitor is None
    with pytest.raises(ValueError, match="lacks the column 'iz'"):
        read_scan_file(tmp_path / "pos.csv", 1, 2, 2)
    (tmp_path / "half.csv").write_text("index,iz,ix\n0,0,0\n")
    with pytest.raises(ValueError, match="has iz, ix but lacks iomega"):
        read_scan_table(tmp_path / "half.csv")
    (tmp_path / "bad.csv").write_text("index,omega_deg\n0,abc\n")
    with pytest.raises(ValueError, match="'omega_deg' holds values that are not numbers"):
        read_scan_table(tmp_path / "bad.csv")
