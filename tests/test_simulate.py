"""The simulator's ground truth is self-consistent: order bookkeeping, phantom, Bragg positions."""

import numpy as np
import pytest
from scipy.signal import find_peaks

from xrdct_dask.io.scan import acquisition_order, grid_index, read_scan_file
from xrdct_dask.simulate import make_phantom, phase_library


@pytest.mark.parametrize("fast_axis", ["x", "omega"])
@pytest.mark.parametrize("order", ["raster", "snake"])
def test_grid_index_inverts_acquisition_order(fast_axis, order):
    nz, nw, nx = 3, 5, 4
    acq = acquisition_order(nz, nw, nx, fast_axis, order)
    assert len({tuple(r) for r in acq}) == nz * nw * nx  # every grid point exactly once
    idx = grid_index(acq[:, 0], acq[:, 1], acq[:, 2], nw, nx, fast_axis, order)
    np.testing.assert_array_equal(idx, np.arange(len(acq)))
    if order == "snake":  # the fast axis reverses on odd lines
        first_line, second_line = acq[:nx if fast_axis == "x" else nw], acq[nx if fast_axis == "x" else nw:][:2]
        k = 2 if fast_axis == "x" else 1
        assert first_line[0, k] == 0 and second_line[0, k] == (nx if fast_axis == "x" else nw) - 1


def test_phantom_fractions():
    maps = make_phantom(3, 32)
    total = maps.sum(axis=0)
    assert set(np.unique(total)) <= {0.0, 1.0}  # fractions sum to 1 inside the sample, 0 outside
    assert all(maps[k].sum() > 20 for k in range(4))  # every phase is present in every slice set


def test_crystalline_patterns_have_bragg_peaks_where_the_lattice_puts_them():
    """fcc Ni a = 3.524 A: (111) at 2 pi sqrt(3)/a = 3.088 1/A, (200) at 3.566 1/A."""
    ni = phase_library()[0]
    q, i = ni.q_A, ni.intensity
    sel = (q > 2.5) & (q < 4.0)
    idx, _ = find_peaks(i[sel], prominence=0.05 * i[sel].max())
    peaks = q[sel][idx]
    for hkl in ((1, 1, 1), (2, 0, 0)):
        expected = 2 * np.pi * np.sqrt(sum(h * h for h in hkl)) / 3.524
        assert np.min(np.abs(peaks - expected)) < 0.03


def test_simulated_scan_files(sim_scan):
    truth = sim_scan.load_truth()
    assert truth["phase_maps"].shape == (4, 2, 24, 24)
    grid, dup = read_scan_file(sim_scan.scan_file, 2, 32, 24)
    assert not dup.any() and (grid >= 0).all()
    np.testing.assert_array_equal(grid[0, 1, ::-1], np.arange(24, 48))  # snake: line 1 runs backwards
    from xrdct_dask.io import read_header

    hdr = read_header(sim_scan.frame_path(24))
    assert "Flux" in hdr and "Start_angle" in hdr
