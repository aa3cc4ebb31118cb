"""The stages' task functions (``pipeline/tasks_*.py``) and the worker's integrator
(:mod:`xrdct_dask.pipeline.integrator`); the stage table and the graph are ``tests/test_graph.py``'s.

The workflow's stages run in this process (no cluster) on simulated scans: frames land on the
(omega, x) grid whatever the acquisition order, and every switched-on sinogram correction is
applied with the slice's own centre, shifts and stripe columns; on a GPU worker the warm-up readies
the engine without changing a result."""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask.backend import gpu_available
from xrdct_dask.pipeline.frames import frame_source
from xrdct_dask.pipeline.integrator import clear_integrators, integrator_for


def _reduce_and_reconstruct(scan, tmp_path, overrides: dict):
    """The workflow's stages in this process (no cluster): store, integrate, centre, reconstruct."""
    from xrdct_dask import store
    from xrdct_dask.config import load_workflow
    from xrdct_dask.pipeline.tasks_integrate import integrate_block
    from xrdct_dask.pipeline.tasks_recon import find_center, reconstruct_block
    from xrdct_dask.runs.open import open_run

    wf = load_workflow(scan.workflow, {"store.path": str(tmp_path / "run.zarr"), "pdf.enabled": False} | overrides)
    ctx = open_run(wf)
    for block in store.frame_blocks(wf.scan.nz, wf.scan.nomega, ctx.layout.omega_chunk):
        integrate_block(block, ctx)
    geo = find_center(0, ctx)
    nq = store.open_array(ctx.store_path, "q", "r").shape[0]
    results = [reconstruct_block(0, qs, geo, ctx) for qs in store.q_blocks(nq, ctx.layout.q_chunk)]
    return store.open_array(ctx.store_path, "recon/intensity", "r")[0], geo, results


@pytest.fixture(scope="module")
def order_scans(tmp_path_factory):
    """The same phantom acquired in raster, snake and interlaced order (1 slice, 24 angles x 16 steps,
    no zingers or spots, 1e6 counts at the brightest pixel, a fresh Poisson draw per frame)."""
    from xrdct_dask.simulate import simulate_scan

    return {order: simulate_scan(tmp_path_factory.mktemp(order), nz=1, nomega=24, nx=16, order=order, seed=3,
                                 zinger_rate=0.0, spot_rate=0.0, peak_counts=1e6, npt_rad=200)
            for order in ("raster", "snake", "interlaced")}


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
def test_raster_snake_and_interlaced_scans_reconstruct_to_the_same_volume(order_scans, tmp_path):
    """Frames land on the (omega, x) grid whatever the acquisition order (from the scan file, or
    from the scan section's arithmetic when there is none): the three volumes agree to 0.5% RMS
    (Poisson noise at >= 1e4 counts per q bin and frame; monitor drift differs per order and is
    normalised) and their axes to 0.05 px."""
    vols, centres = {}, {}
    for order, scan in order_scans.items():
        arithmetic = {"inputs.scan_file": None} if order != "snake" else {}
        vols[order], geo, results = _reduce_and_reconstruct(scan, tmp_path / order, arithmetic)
        centres[order] = geo["center"]
        assert all(r["steps"][:2] == ["fill_bad", "zingers"] for r in results)
    ref = vols["raster"]
    for order in ("snake", "interlaced"):
        diff = np.sqrt(np.mean((vols[order] - ref) ** 2)) / np.sqrt(np.mean(ref**2))
        assert diff < 5e-3, (order, diff)
        assert abs(centres[order] - centres["raster"]) < 0.05
    # and a scrambled grid would not pass: the test can fail
    assert np.sqrt(np.mean((vols["raster"][::-1] - ref) ** 2)) / np.sqrt(np.mean(ref**2)) > 0.1


def test_workflow_applies_every_switched_on_correction(order_scans, tmp_path):
    """With background, stripes and jitter switched on, the slice's centre, shifts and stripe columns
    come from find_center and every q block applies them.  The scan is clean, so stripes and
    jitter must leave it alone: the volume stays within 1% RMS of the background-only one (no
    stripe found, shifts < 0.1 px)."""
    scan = order_scans["snake"]
    bg = {"sinogram.background": True, "sinogram.background_columns": 1}
    ref, _, _ = _reduce_and_reconstruct(scan, tmp_path / "background", bg)
    vol, geo, results = _reduce_and_reconstruct(scan, tmp_path / "all", bg | {"sinogram.stripes": True,
                                                                               "sinogram.jitter": True})
    assert len(geo["shifts_px"]) == 24 and np.abs(geo["shifts_px"]).max() < 0.1 and geo["stripe_columns"] == []
    assert all(r["steps"] == ["fill_bad", "zingers", "background", "stripes", "jitter"] for r in results)
    assert np.sqrt(np.mean((vol - ref) ** 2)) < 0.01 * np.sqrt(np.mean(ref**2))
    manual, geo, results = _reduce_and_reconstruct(scan, tmp_path / "manual", {"sinogram.center": 7.5})
    assert geo["center"] == 7.5 and results[0]["center"] == 7.5


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs cupy and a CUDA GPU")
def test_worker_warm_up_readies_every_pipeline_and_changes_no_result(sim_scan):
    """The worker plugin's warm-up reads the first frame into every pinned arena of ``tasks``
    rings and integrates it through as many pipelines; the patterns a task computes afterwards are
    those a cold engine computes, bit for bit."""
    from xrdct_dask.config import load_workflow
    from xrdct_dask.io import read_cbf_payload

    wf = load_workflow(sim_scan.workflow, {"integrate.engine": "cupy"})
    clear_integrators()
    integ = integrator_for(wf)
    payloads = [read_cbf_payload(sim_scan.frame_path(i)) for i in range(40)]
    batches = [(payloads[a:a + 16], np.linspace(0.9, 1.1, len(payloads[a:a + 16]))) for a in range(0, 40, 16)]
    cold = np.concatenate([r[0] for r in integ.integrate_batches(batches)])
    integ.warm(frame_source(wf), 3, wf.scan.nframes)
    eng = integ.impl
    assert len(eng._pipelines) == 3 and len(eng._free_rings) == 3
    largest = max(sim_scan.frame_path(i).stat().st_size for i in range(wf.scan.nframes))
    assert eng.slot_bytes >= largest  # sized from the scan's files, not from frame 0 alone
    assert all(a is not None and a.size >= integ.batch_frames * eng.slot_bytes
               for ring in eng._free_rings for a in ring)
    warm = np.concatenate([r[0] for r in integ.integrate_batches(batches)])
    np.testing.assert_array_equal(warm, cold)
    clear_integrators()


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs cupy and a CUDA GPU")
def test_warm_up_before_the_acquisition_runs_a_blank_frame_through_every_arena(sim_scan, tmp_path, monkeypatch):
    """Live mode arms the workers before the detector writes its first file: the warm-up then
    reads a blank frame of the detector (written by fabio to a temporary folder, removed after)
    into every arena of every ring and integrates it, so the acquisition's first block compiles
    and allocates nothing; the patterns computed afterwards are unchanged."""
    import tempfile
    from pathlib import Path

    from xrdct_dask.config import load_workflow
    from xrdct_dask.integrate import _cupy_sources
    from xrdct_dask.io import read_cbf_payload

    wf = load_workflow(sim_scan.workflow, {"integrate.engine": "cupy"})
    live = load_workflow(sim_scan.workflow, {"integrate.engine": "cupy",
                                             "inputs.frames": str(tmp_path / "none" / "frame_{index:06d}.cbf")})
    clear_integrators()
    integ = integrator_for(wf)
    payloads = [read_cbf_payload(sim_scan.frame_path(i)) for i in range(20)]
    cold = np.concatenate([r[0] for r in integ.integrate_batches([(payloads, None)])])
    reads = []
    real = _cupy_sources.read_into_pinned  # the cupy engine's file reads (its sources mixin)
    monkeypatch.setattr(_cupy_sources, "read_into_pinned",
                        lambda paths, *a, **k: reads.append(paths) or real(paths, *a, **k))
    before = set(Path(tempfile.gettempdir()).glob("xrdct-warm-*"))
    integ.warm(frame_source(live), 2, live.scan.nframes)
    eng = integ.impl
    assert len(eng._pipelines) == 2 and len(eng._free_rings) == 2
    assert len(reads) == 2 * eng.RING and all(Path(p).name == "blank.cbf" for r in reads for p in r)
    assert set(Path(tempfile.gettempdir()).glob("xrdct-warm-*")) == before  # the blank frame's folder is gone
    reads.clear()
    integ.warm(None, 1, live.scan.nframes)  # a source that cannot be opened yet: the same blank frame
    assert len(reads) == eng.RING and all(Path(p).name == "blank.cbf" for r in reads for p in r)
    warm = np.concatenate([r[0] for r in integ.integrate_batches([(payloads, None)])])
    np.testing.assert_array_equal(warm, cold)
    clear_integrators()


def test_astra_engine_fills_the_same_store(order_scans, tmp_path):
    """recon.engine: astra reconstructs every q block with ASTRA (its CPU FBP here) with the slice's
    centre found by the pipeline, into the same store array: a volume within 2 % RMS of the numpy
    engine's (16 px slices: ASTRA's strip kernel and the project's linear interpolation differ
    at the sharp phase edges), and each task reports the engine."""
    from xrdct_dask import store
    from xrdct_dask.config import workflow_from_dict
    from xrdct_dask.pipeline.tasks_recon import reconstruct_block
    from xrdct_dask.runs.open import context_from_store

    pytest.importorskip("astra")
    ref, geo, _ = _reduce_and_reconstruct(order_scans["snake"], tmp_path, {"recon.engine": "numpy"})
    path = tmp_path / "run.zarr"  # the same reduced data, reconstructed again by the astra engine
    ctx = context_from_store(workflow_from_dict(store.read_attrs(path)["workflow"],
                                                overrides={"recon.engine": "astra"}), path)
    nq = store.open_array(path, "q", "r").shape[0]
    results = [reconstruct_block(0, qs, geo, ctx) for qs in store.q_blocks(nq, ctx.layout.q_chunk)]
    vol = store.open_array(path, "recon/intensity", "r")[0]
    assert vol.shape == ref.shape and np.isfinite(vol).all() and all(r["engine"] == "astra" for r in results)
    diff = np.sqrt(np.mean((vol - ref) ** 2)) / np.sqrt(np.mean(ref**2))
    assert 0 < diff < 0.02, diff
