"""Memory per task: bounded by a budget, and predicted by the plan.

A task holds one block, never a whole slice: recon a q block (prepared and reconstructed in
sub-blocks), pdf a few rows of voxels, pdf-scale one block of rows at a time.  What ``xrdct plan``
says a task holds is held to tracemalloc's peak of the real task function (numpy engines, the
arrays of a real store) within 25 %, at two sizes; and a slice too big for one worker's memory
still runs through the whole workflow with every task done and no NaN.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.config import load_workflow, workflow_from_dict
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.tasks_pdf import pdf_rows, pdf_scale
from xrdct_dask.pipeline.tasks_recon import find_center, reconstruct_block
from xrdct_dask.store import budget
from xrdct_dask.testing.stores import run_markers


def traced_peak(fn, *args) -> int:
    """Peak bytes allocated while ``fn(*args)`` runs (after a first call: compiled kernels, FFT plans
    and the PDF operator's matrices are per-process, paid once, not per task)."""
    fn(*args)
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def store_for(tmp_path: Path, nomega: int, nx: int, nq: int, task_memory: str):
    """A one-slice store of random patterns and volume at the layout the plan gives this workflow."""
    from xrdct_dask.pdf import operator_for
    from xrdct_dask.runs.open import store_markers
    from xrdct_dask.runs.plan import plan_workflow

    wf = workflow_from_dict({"inputs": {"frames": str(tmp_path / "f_{index}.cbf"), "poni": str(tmp_path / "g.poni")},
                             "scan": {"nz": 1, "nomega": nomega, "nx": nx},
                             "integrate": {"npt_rad": nq, "unit": "q_A^-1"}, "sinogram": {"zingers": True},
                             "pdf": {"qmin": 1.0, "qmax": 20.0, "rmax": 20.0},
                             "store": str(tmp_path / "run.zarr"), "compute": {"task_memory": task_memory}})
    plan = plan_workflow(wf, frame_bytes=10_000)
    lay = budget.Layout.from_dict(plan.layout)
    q = np.linspace(0.5, 25, nq)
    op = operator_for(q, wf.pdf)
    store.create_store(wf.store.path, nz=1, nomega=nomega, nx=nx, radial=q, radial_unit="q_A^-1",
                       omega_deg=np.arange(nomega) * 180 / nomega, x_mm=np.arange(nx), z_mm=np.zeros(1), r_A=op.r_A,
                       layout=lay, attrs={}, markers=store_markers(wf, lay, q, op.r_A))
    rng = np.random.default_rng(0)
    root = zarr.open_group(str(wf.store.path), mode="r+")
    root["reduced/intensity"][0] = rng.random((nomega, nx, nq), dtype=np.float32) * 100
    root["reduced/frame_ok"][0] = True
    root["recon/intensity"][0] = rng.random((nx, nx, nq), dtype=np.float32) * 100 + 10
    ctx = RunContext(workflow=wf, store_path=Path(wf.store.path), monitor_reference=1.0, wavelength_A=0.2,
                            layout=lay)
    return ctx, plan


@pytest.mark.slow  # a whole run or a subprocess: >= 15 s (setup + call) on a loaded 2-core machine
@pytest.mark.parametrize("nomega, nx, nq, task_memory", [(128, 96, 512, "40MB"), (256, 128, 1024, "200MB")])
def test_plan_predicts_each_tasks_memory_within_25_percent(tmp_path, nomega, nx, nq, task_memory):
    ctx, plan = store_for(tmp_path, nomega, nx, nq, task_memory)
    lay = ctx.layout
    assert lay.q_sub < lay.q_chunk and lay.y_chunk < nx  # the budget really splits the blocks
    geo = {"center": nx / 2}
    ys = slice(0, lay.y_chunk)
    shares = [pdf_scale(0, slice(a, a + lay.y_chunk), ctx) for a in range(0, nx, lay.y_chunk)]
    measured = {"center": traced_peak(find_center, 0, ctx),
                "recon": traced_peak(reconstruct_block, 0, slice(0, lay.q_chunk), geo, ctx),
                "pdf-scale": traced_peak(pdf_scale, 0, ys, ctx),
                "pdf": traced_peak(pdf_rows, 0, ys, ctx, *shares)}
    for name, peak in measured.items():
        predicted = plan.stages[name].bytes_per_task
        assert abs(predicted - peak) <= 0.25 * peak, (
            f"{name}: plan {predicted / 1e6:.1f} MB, traced {peak / 1e6:.1f} MB")
        assert peak <= 1.1 * lay.budget, f"{name} holds {peak / 1e6:.1f} MB, over its budget {lay.budget / 1e6:.1f} MB"


def test_layout_keeps_tasks_in_budget_and_chunks_under_the_codec_limit():
    """At 1000 x 1571 x 1000 with 2000 q bins, 1951 r points and 4 GB per task, every task fits and
    no chunk reaches Blosc's 2 GiB (the whole-slice G chunk of nx >= 1024 did)."""
    lay = budget.choose_layout(nomega=1571, nx=1000, nq=2000, nr=1951, omega_chunk=16, q_chunk="auto", r_chunk=512,
                               budget=4 * 10**9)
    assert budget.recon_bytes(1571, 1000, lay.q_chunk, lay.q_sub) <= 4e9
    assert budget.pdf_bytes(lay.y_chunk, 1000, 2000, 1951) <= 4e9
    assert budget.pdf_scale_bytes(lay.y_chunk, 1000, 2000) <= 4e9
    specs = store.array_specs(nz=1000, nomega=1571, nx=1000, nq=2000, nr=1951, layout=lay,
                              markers=run_markers(1000, 1571, 1000, 2000, 1951, lay))
    assert max(s.chunk_bytes for s in specs) <= budget.CHUNK_BYTES_MAX < 2**31
    big = budget.choose_layout(nomega=1571, nx=2048, nq=4000, nr=3000, omega_chunk=16, q_chunk=256, r_chunk=512,
                               budget=64 * 10**9)
    specs = store.array_specs(nz=1, nomega=1571, nx=2048, nq=4000, nr=3000, layout=big,
                              markers=run_markers(1, 1571, 2048, 4000, 3000, big))
    assert max(s.chunk_bytes for s in specs) <= budget.CHUNK_BYTES_MAX


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_slice_larger_than_a_worker_runs_in_bounded_tasks(tmp_path):
    """1 x 16 x 400, 2000 q bins, G(r) to 20 A, 2 workers of 1.5 GB: the slice's volume alone
    (400 x 400 x 2000 float32 = 1.28 GB) would not fit one task; every task finishes, nothing is
    NaN in recon/ or pdf/."""
    from distributed import LocalCluster

    from xrdct_dask.runs.execute import run
    from xrdct_dask.simulate import simulate_scan

    scan = simulate_scan(tmp_path / "scan", nz=1, nomega=16, nx=400, npt_rad=2000, seed=4)
    wf = load_workflow(scan.workflow, {"store.path": str(tmp_path / "run.zarr"), "compute.memory_limit": "1.5GB",
                                       "pdf.rmax": 20.0})
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1.5GB", dashboard_address=":0",
                      host="127.0.0.1") as lc:
        path = run(wf, cluster=lc, progress=False, summary=False)
    assert store.task_state(path).complete
    attrs = store.read_attrs(path)
    assert attrs["layout"]["budget"] <= 0.75e9 and attrs["layout"]["y_chunk"] < 400
    for name in ("recon/intensity", "pdf/G"):
        arr = zarr.open_array(str(path / name), mode="r")
        for a in range(0, 400, 50):  # slab by slab: the test holds no whole volume either
            assert np.isfinite(arr[0, a:a + 50]).all(), name
