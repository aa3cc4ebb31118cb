"""Air / container background and rotation axis on simulated sinograms of a sample in a glass tube
(:mod:`xrdct_dask.testing.environment`): the engine conformance (``BackgroundTests``), the axis
against algotom's ``find_center_vo`` on the same inputs, the axis fitted over z, and the
centre stage of a store (its record, its log, the fit applied to an outlier slice)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from xrdct_dask.pipeline.tasks_recon import find_center, reconstruct_block
from xrdct_dask.simulate.environment import SampleEnvironment, environment_block, poisson
from xrdct_dask.testing.conformance.background import COUNTS, ISSUE, BackgroundTests
from xrdct_dask.testing.stores import block_store


class TestNumpyBackground(BackgroundTests):
    engine = "numpy"


@pytest.mark.gpu
class TestCupyBackground(BackgroundTests):
    engine = "cupy"


def _axis_inputs(env, nomega, omega_range, rng, stripes=(), nx=40):
    from xrdct_dask.sinogram.air import find_air_columns, subtract_air

    s, truth = environment_block(env, nx, nomega, omega_range)
    noisy = poisson(s, COUNTS, rng)
    for x, gain in stripes:  # a detector bin off by a gain at every angle and q
        noisy[:, x] *= gain
    air = find_air_columns(noisy.sum(axis=-1))
    corrected, _ = subtract_air(noisy, air)
    return corrected.sum(axis=-1).astype(np.float64), truth, air


VARIANTS = {  # the project's own variants, axes off by fractions of a pixel (never on a search grid)
    "tube-0.35": (SampleEnvironment(axis_offset_px=0.35, **ISSUE), 64, 180, ()),
    "tube-2.6": (SampleEnvironment(axis_offset_px=2.6, **ISSUE), 64, 180, ()),
    "tube-off-axis": (SampleEnvironment(axis_offset_px=-4.15, tube_shift_px=(1.3, -0.8), tube_outer_px=11.5,
                                        air_level=2.0, air_ratio=0.5), 64, 180, ()),
    "ramp-x4": (SampleEnvironment(axis_offset_px=3.7, tube_outer_px=11.5, air_level=3.0, air_ratio=4.0), 64, 180, ()),
    "stripes": (SampleEnvironment(axis_offset_px=4.4, **ISSUE), 64, 180, ((20, 1.1), (21, 1.1), (30, 0.92))),
    "9.85px": (SampleEnvironment(axis_offset_px=9.85, tube_outer_px=9.5, air_level=2.0, air_ratio=2.0), 64, 180, (),
               48),  # 48 steps: the tube inside the field of view with the axis 9.85 px off
    "bare": (SampleEnvironment(axis_offset_px=-6.3, sample_radius_px=11.0, air_level=1.0, air_ratio=2.0), 64, 180, ()),
    "360-3.4": (SampleEnvironment(axis_offset_px=3.4, **ISSUE), 128, 360, ()),
    "360-7.3": (SampleEnvironment(axis_offset_px=-7.3, tube_outer_px=10.0, air_level=2.0, air_ratio=3.0), 128, 360, ()),
}


def test_axis_within_a_tenth_of_a_pixel_and_no_worse_than_algotom(rng):
    """On every variant (tube wall, tube off the axis, ramps both ways, stripes, axes 0.35 to 9.85 px off,
    half and full turns) the axis is within 0.1 px of the truth, and no further from it than
    algotom 1.7's ``find_center_vo`` on the same background-corrected sinogram over the same search
    range (a full turn: its first half, as algotom takes a half turn), variant by variant (a 0.01 px
    margin: algotom's 0.25 px grid may fall on the truth) and on average."""
    from algotom.prep.calculation import find_center_vo

    from xrdct_dask.sinogram.axis import find_axis

    ours, theirs = {}, {}
    for name, (env, nomega, omega_range, stripes, *nx) in VARIANTS.items():
        sino, truth, air = _axis_inputs(env, nomega, omega_range, rng, stripes, *nx)
        est = find_axis(sino, truth["omega_deg"], guess_px=(air.left + air.right - 1) / 2)
        lo, hi = est.search_px
        half = sino[:nomega // 2] if omega_range == 360 else sino
        ours[name] = abs(est.center_px - truth["axis_px"])
        theirs[name] = abs(float(find_center_vo(half, start=lo, stop=hi, ncore=1)) - truth["axis_px"])
    report = {k: (round(ours[k], 3), round(theirs[k], 3)) for k in ours}
    assert max(ours.values()) <= 0.1, report
    assert all(ours[k] <= theirs[k] + 0.01 for k in ours), report
    assert np.mean(list(ours.values())) < np.mean(list(theirs.values())), report


def test_confidence_tells_a_sample_from_noise(rng):
    """The metric's contrast: above 0.8 on the sample, below 0.3 on noise alone (an empty slice)."""
    from xrdct_dask.sinogram.axis import find_axis

    sino, truth, _ = _axis_inputs(SampleEnvironment(axis_offset_px=2.0, **ISSUE), 64, 180, rng)
    assert find_axis(sino, truth["omega_deg"]).confidence > 0.8
    assert find_axis(rng.normal(0, 1, sino.shape), truth["omega_deg"]).confidence < 0.3


def test_axis_fit_over_z_follows_a_tilt_and_rejects_outliers(rng):
    """A tilted axis (0.05 px per slice) estimated to 0.03 px in 20 slices, two of them way off and one
    of no confidence: the line is recovered within 0.04 px at every slice (17 points of 0.03 px
    noise fix its ends to ~0.015 px: 2.5 sigma) and its slope within 0.004 px per slice (3 sigma),
    those three are not inliers, and the others all are."""
    from xrdct_dask.sinogram.axis import fit_axis_over_z

    z = np.arange(20)
    true = 23.4 + 0.05 * z
    est = true + rng.normal(0, 0.03, z.size)
    conf = np.full(z.size, 0.95)
    est[[4, 13]] += [1.5, -0.9]
    conf[17], est[17] = 0.01, 40.0
    fit = fit_axis_over_z(est, conf)
    assert np.abs(fit.fitted - true).max() < 0.04 and abs(fit.slope_px - 0.05) < 0.004
    assert set(np.flatnonzero(~fit.inlier)) == {4, 13, 17} and fit.used == 17
    assert fit_axis_over_z([np.nan, 3.0], [0.9, 0.0]) is None


def tilted_slices(rng, scrambled: int = 3):
    """Five slices of the issue's scan whose axis tilts by 0.4 px per slice (2 to 3.6 px off), slice
    ``scrambled`` with its angles and columns shuffled (no axis to find): ``(sinograms (5, nomega,
    nx, nq), true axes, omega_deg)``."""
    blocks, axes = [], []
    for k in range(5):
        s, truth = environment_block(SampleEnvironment(axis_offset_px=2.0 + 0.4 * k, **ISSUE), 40, 64)
        s = poisson(s, COUNTS, rng)
        if k == scrambled:
            s = s[rng.permutation(s.shape[0])][:, rng.permutation(s.shape[1])]
        blocks.append(s)
        axes.append(truth["axis_px"])
    return np.stack(blocks), axes, truth["omega_deg"]


def test_center_stage_records_the_air_and_the_axis_and_applies_the_fit(tmp_path, rng, caplog):
    """The centre task of a store's slice: its geometry (air columns, both estimates, the centre used)
    is recorded in recon/slice_info; the recon tasks subtract the air per q and record its model.
    Five slices of an axis tilted by 0.4 px per slice, one of them with its sinogram scrambled (the
    sample's rows shuffled in omega: no axis to find): after the fit over z that slice is reopened
    and its centre task takes the fitted axis (within 0.1 px of the truth)."""
    from xrdct_dask import store
    from xrdct_dask.pipeline.centering import recorded_fit, stored_geometry
    from xrdct_dask.runs.refit import refit_axis

    blocks, axes, omega = tilted_slices(rng)
    ctx = block_store(tmp_path, blocks, omega, nq_chunk=8)
    for z in range(len(axes)):
        geo = find_center(z, ctx)
        reconstruct_block(z, slice(0, 8), geo, ctx)
    rec = stored_geometry(ctx.store_path, 0)
    assert rec["air"]["found"] and set(rec["axis"]["estimates"]) == {"total", "selected"}
    assert abs(rec["center"] - axes[0]) < 0.1 and rec["center_source"].startswith("mirror matching")
    model = store.open_array(ctx.store_path, "recon/air_model", "r")[0]
    assert np.isfinite(model[:, :8]).all() and (model[0, :8] > 0).all()  # the air's level per q, first block
    redo = refit_axis(ctx)
    assert redo == [3]
    fit = recorded_fit(ctx.store_path)
    assert fit["replaced"] == [3] and abs(fit["slope_px_per_slice"] - 0.4) < 0.03 and not fit["inlier"][3]
    assert np.isnan(store.task_state(ctx.store_path).value("center")[3])
    with caplog.at_level(logging.INFO):
        geo = find_center(3, ctx)
    assert geo["center_source"] == "axis fitted over z" and abs(geo["center"] - axes[3]) < 0.1
    assert refit_axis(ctx) == []  # done: the slice now sits on the line


def test_center_stage_says_why_when_no_column_is_air(tmp_path, rng, caplog):
    """A sample filling the field of view: the centre task logs why nothing is subtracted and records
    the reason; the recon task subtracts nothing (its reconstruction equals the one with
    sinogram.background false) and records no air model (NaN); a run's summary names the slice."""
    import zarr

    from xrdct_dask import store
    from xrdct_dask.pipeline.centering import stored_geometry

    s, truth = environment_block(SampleEnvironment(sample_radius_px=30, air_level=1.0, air_ratio=2.0), 40, 64)
    s = poisson(s, COUNTS, rng)
    ctx = block_store(tmp_path / "auto", s[None], truth["omega_deg"])
    off = block_store(tmp_path / "off", s[None], truth["omega_deg"], sinogram={"background": False})
    with caplog.at_level(logging.WARNING, logger="xrdct_dask"):
        geo = find_center(0, ctx)
    assert "no edge column is air in every projection" in caplog.text and "nothing subtracted" in caplog.text
    assert stored_geometry(ctx.store_path, 0)["air"]["reason"].startswith("no edge column is air")
    geo_off = find_center(0, off)
    assert geo["center"] == geo_off["center"]
    nq = s.shape[-1]
    reconstruct_block(0, slice(0, nq), geo, ctx)
    reconstruct_block(0, slice(0, nq), geo_off, off)
    a = zarr.open_array(str(ctx.store_path / "recon" / "intensity"), mode="r")[0]
    b = zarr.open_array(str(off.store_path / "recon" / "intensity"), mode="r")[0]
    np.testing.assert_array_equal(a, b)
    assert np.isnan(store.open_array(ctx.store_path, "recon/air_model", "r")[0]).all()
    # a run says it in its summary too
    from distributed import LocalCluster

    from xrdct_dask.runs.execute import execute
    from xrdct_dask.runs.report import format_summary

    run = block_store(tmp_path / "run", s[None], truth["omega_deg"])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        summary = execute([run], cluster=cluster, progress=False, summary=False)[0]
    assert summary["no_air_slices"] == [0]
    assert "no column is air in every projection of slices 0: nothing subtracted there" in format_summary(summary)


@pytest.mark.slow
def test_run_redoes_an_outlier_slice_with_the_axis_fitted_over_z(tmp_path, rng):
    """A whole run (the graph on a cluster) of five slices whose axis tilts by 0.4 px per slice, one
    slice's sinogram scrambled: after the slices the axis is fitted over z and that slice is
    reconstructed again, in the same run, with the fitted axis (within 0.1 px of the truth); the
    other slices keep their own estimates (within 0.1 px); every task is done."""
    from distributed import LocalCluster

    from xrdct_dask import store
    from xrdct_dask.pipeline.centering import recorded_fit, stored_geometry
    from xrdct_dask.runs.execute import execute

    blocks, axes, omega = tilted_slices(rng)
    ctx = block_store(tmp_path, blocks, omega, nq_chunk=12)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        summary = execute([ctx], cluster=cluster, progress=False, summary=False)[0]
    state = store.task_state(ctx.store_path)
    assert state.complete and recorded_fit(ctx.store_path)["replaced"] == [3]
    assert abs(state.value("center")[3] - axes[3]) < 0.1 and stored_geometry(ctx.store_path, 3)["center_source"] == \
        "axis fitted over z"
    assert all(abs(state.value("center")[z] - axes[z]) < 0.1 for z in (0, 1, 2, 4))
    assert summary["tasks"]["center"]["executed"] == 6 and summary["tasks"]["recon"]["executed"] == 12


def test_a_resumed_slice_reuses_its_recorded_geometry(tmp_path, rng):
    """A slice whose centre task ran (and whose recon did not) resumes with the geometry the task
    recorded, air columns included, not just its centre: the recon tasks of the resumed graph get
    that record, and no centre task is built."""
    from xrdct_dask import store
    from xrdct_dask.pipeline.centering import stored_geometry
    from xrdct_dask.pipeline.graph import slice_tasks
    from xrdct_dask.pipeline.task import Ref

    s, truth = environment_block(SampleEnvironment(axis_offset_px=3.0, **ISSUE), 40, 64)
    ctx = block_store(tmp_path, poisson(s, COUNTS, rng)[None], truth["omega_deg"], nq_chunk=8)
    geo = find_center(0, ctx)
    tasks = slice_tasks(ctx, 0, store.task_state(ctx.store_path))
    assert [t.stage for t in tasks] == ["recon"] * 3
    given = tasks[0].args[2]
    assert not isinstance(given, Ref) and given == stored_geometry(ctx.store_path, 0)
    assert given["air"]["columns"] == geo["air"]["columns"] and given["center"] == geo["center"]
