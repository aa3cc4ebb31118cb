"""The run's zarr store (:mod:`xrdct_dask.store`): arrays opened once per process, the done-markers
read from their file names, and the view copy (:mod:`xrdct_dask.store.viewcopy`).

The view copy holds float16 block means: it must equal the block means of the exact arrays to
float16's precision (3 significant digits: rtol 2e-3 of the slice's largest magnitude).  Its store
is conftest's ``phantom``, written straight in the run's layout from the simulator's ground truth
(:mod:`xrdct_dask.testing.viewstores`); the copy a real run writes is checked in
tests/test_view_browser.py.

The store's guards against destroying data (overwrite, stores built aside, leftovers of killed
runs) are the safety suite's (tests/test_safety.py, tests/test_reprocess.py); a store's template as
a run creates it is compared with the plan's in tests/test_plan.py.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.store import viewcopy
from xrdct_dask.testing.stores import run_markers
from xrdct_dask.view.data import RunData


# ------------------------------------------------------------------------------------------
# arrays and done-markers
# ------------------------------------------------------------------------------------------
def test_open_array_is_reused_until_the_array_is_recreated(tmp_path):
    """Tasks open the same arrays again and again: one open per process while the array's
    metadata file is unchanged, a fresh open when the store is recreated in its place."""
    zarr.create_array(str(tmp_path / "a"), shape=(4,), dtype="f4", fill_value=0)
    first = store.open_array(tmp_path, "a")
    assert store.open_array(tmp_path, "a") is first
    assert store.open_array(tmp_path, "a", "r") is not first  # read-only is its own entry
    first[:] = 1
    shutil.rmtree(tmp_path / "a")
    zarr.create_array(str(tmp_path / "a"), shape=(6,), dtype="f4", fill_value=2)
    again = store.open_array(tmp_path, "a")
    assert again is not first and again.shape == (6,) and again[:].tolist() == [2.0] * 6


@pytest.mark.slow
def test_task_state_of_a_hundred_thousand_markers_is_read_in_under_a_second(tmp_path):
    """1000 slices x 100 blocks of done-markers (a 1000^3 run has ~1e5 tasks): the state comes from
    the markers' file names in one listing, in under a second, equal to zarr's own reading."""
    from xrdct_dask.store.budget import Layout

    lay = Layout(omega_chunk=16, q_chunk=20, q_sub=20, y_chunk=10, r_chunk=10, budget=2**30)
    path = tmp_path / "big.zarr"
    store.create_store(path, nz=1000, nomega=1600, nx=10, radial=np.linspace(1, 2, 40), radial_unit="q_nm^-1",
                       omega_deg=np.arange(1600) * 0.1, x_mm=np.arange(10.0), z_mm=np.arange(1000.0), r_A=None,
                       layout=lay, attrs={}, markers=run_markers(1000, 1600, 10, 40, 0, lay))
    marks = zarr.open_array(str(path / "tasks" / "integrate"), mode="r+")
    assert marks.shape == (1000, 100)
    marks[0, 0] = 1  # one marker written by zarr; the others are that chunk file's bytes
    first = path / "tasks" / "integrate" / "c" / "0" / "0"
    chunk = first.read_bytes()
    rng = np.random.default_rng(0)
    done = rng.random((1000, 100)) < 0.9
    done[0, 0] = True
    for z, b in zip(*np.nonzero(done)):
        f = path / "tasks" / "integrate" / "c" / str(z) / str(b)
        if f != first:
            f.parent.mkdir(exist_ok=True)
            f.write_bytes(chunk)
    t0 = time.perf_counter()
    state = store.task_state(path)
    seconds = time.perf_counter() - t0
    np.testing.assert_array_equal(state["integrate"], done)
    np.testing.assert_array_equal(marks[:50].astype(bool), done[:50])  # zarr reads the same markers
    assert seconds < 1.0, seconds


# ------------------------------------------------------------------------------------------
# the view copy
# ------------------------------------------------------------------------------------------
def test_view_copy_equals_block_means_of_the_run(phantom):
    """Every part of the copy is the s x s block mean of the exact arrays (float16: rtol 2e-3 of
    the slice's largest value), the q-range sum from tiles + coarse sums equals the exact sum,
    the means are the slice's, and the copy is what RunData reads once tasks/view is set."""
    d = RunData(phantom)
    vl = d.view
    assert (vl.s, vl.ny, vl.r_bin) == (3, 14, 1) and d.copy_done(0) and d.copy_done(1)
    for z in (0, 1):
        exact = store.open_array(phantom, "recon/intensity", "r")[z]
        top = np.nanmax(np.abs(exact))
        for qi in (0, 100, 299):
            np.testing.assert_allclose(d.q_map(z, qi), viewcopy.block_mean(exact[..., qi], (3, 3)), atol=2e-3 * top)
        want = viewcopy.block_mean(exact[..., 10:250].sum(axis=-1), (3, 3))
        np.testing.assert_allclose(d.q_range_map(z, 10, 250), want, atol=2e-3 * top * 240 / 10)
        np.testing.assert_allclose(d.q_range_map(z, 70, 120), viewcopy.block_mean(exact[..., 70:120].sum(-1), (3, 3)),
                                   atol=2e-3 * top * 5)
        np.testing.assert_allclose(d.voxel_pattern(z, 20, 20), viewcopy.block_mean(exact[18:21, 18:21], (3, 3))[0, 0],
                                   atol=2e-3 * top)
        np.testing.assert_allclose(d.mean_pattern(z), np.nanmean(exact, axis=(0, 1)), rtol=1e-5)
        g = store.open_array(phantom, "pdf/G", "r")[z]
        gtop = np.nanmax(np.abs(g))
        np.testing.assert_allclose(d.g_map(z, 50), viewcopy.block_mean(g[..., 50], (3, 3)), atol=2e-3 * gtop)
        np.testing.assert_allclose(d.mean_g(z), g.mean(axis=(0, 1)), rtol=1e-4, atol=1e-6 * gtop)  # float32 sums
        red = store.open_array(phantom, "reduced/intensity", "r")[z]
        assert d.sinogram(z, 101)[1] == "q bin 101"  # a small slice: the exact sinogram, from reduced/
        sino, what = d.sinogram(z, 101, copy=True)
        assert what == "q bins 100-101 averaged"
        np.testing.assert_allclose(sino, viewcopy.block_mean(red[..., 100:102], (2, 3, 2))[..., 0],
                                   atol=2e-3 * np.nanmax(np.abs(red)))
    # read without the copy: the exact chunks
    np.testing.assert_array_equal(d.q_map(0, 7, copy=False),
                                  store.open_array(phantom, "recon/intensity", "r")[0, :, :, 7])


def test_view_copy_scale_keeps_float16_in_range(tmp_path):
    """Intensities far beyond float16's 65504 are scaled by a power of 2 per q block: no inf."""
    vals = np.array([3.0e9, -1.0e7, np.nan, 1.0])
    s = viewcopy.f16_scale(vals)
    assert np.log2(s) == np.round(np.log2(s)) and np.isfinite((vals * s).astype(np.float16)[[0, 1, 3]]).all()
    assert abs(vals[0] * s) <= viewcopy.F16_TOP and abs(vals[0] * s) > viewcopy.F16_TOP / 2
