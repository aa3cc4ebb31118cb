"""Scan layouts (xrdct_dask.io.scan): raster, snake and interlaced acquisitions, along x or omega,
map one to one onto the (z, omega, x) grid."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("order,fast_axis", [("raster", "x"), ("snake", "x"), ("raster", "omega"),
                                              ("snake", "omega"), ("interlaced", "x")])
@pytest.mark.parametrize("passes", [2, 3])
def test_scan_layout_is_a_bijection(order, fast_axis, passes):
    """Every grid point (iz, iomega, ix) is acquired exactly once and grid_index inverts the order."""
    from xrdct_dask.io.scan import acquisition_order, grid_index

    grid = acquisition_order(2, 7, 5, fast_axis, order, passes)
    assert len({tuple(g) for g in grid}) == 2 * 7 * 5
    np.testing.assert_array_equal(grid_index(*grid.T, 7, 5, fast_axis, order, passes), np.arange(len(grid)))


def test_interlaced_order_visits_omega_in_interleaved_passes():
    """Pass p of an interlaced scan takes iomega = p, p + passes, ...; x snakes line by line."""
    from xrdct_dask.io.scan import acquisition_order

    grid = acquisition_order(1, 6, 3, "x", "interlaced", passes=3)
    np.testing.assert_array_equal(grid[::3, 1], [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(grid[:6, 2], [0, 1, 2, 2, 1, 0])
