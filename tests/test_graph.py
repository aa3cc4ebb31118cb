"""The run's graph (:mod:`xrdct_dask.pipeline.graph`) and the stage table it is built from
(:mod:`xrdct_dask.pipeline.stages`): task keys name their stages, in the table's order.

The stage table drives everything: a stage added as one table entry plus its task function is
built into the graph, counted by the plan, given done-markers in a new store, skipped when done on
resume, rerun when its marker is cleared, and rerun by a reprocess from an earlier step.

The toy stage waits for the reconstruction of its slice and writes nothing but its marker; the
run uses an in-process cluster (threads), so the test's own table is the one the tasks see.
"""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask import store
from xrdct_dask.config import load_workflow
from xrdct_dask.pipeline import stages
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.graph import build_graph
from xrdct_dask.pipeline.stages import STAGES, Stage
from xrdct_dask.runs.open import layout_for
from xrdct_dask.runs.plan import plan_workflow


def toy_task(z: int, ctx, *deps) -> dict:
    store.mark_done(ctx.store_path, "toy", (z, 0))
    return {"stage": "toy", "z": z}


def add_toy_tasks(b, st) -> None:
    for _ in b.pending(st.name, 1):
        b.add(st.name, 0, toy_task, b.z, b.ctx, *b.deps(st))


TOY = Stage("toy", "slice", add_toy_tasks, after=("recon",), marker="task", marker_dim="toy_block",
            reprocess="recon", held=lambda s: 1000, read=lambda s: 0)


@pytest.fixture()
def with_toy(monkeypatch):
    monkeypatch.setattr(stages, "STAGES", [*STAGES, TOY])


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("toy"), nz=2, nomega=12, nx=10, seed=5)


def workflow(scan, path):
    return load_workflow(scan.workflow, {"store.path": str(path), "pdf.enabled": False, "view.write_copy": False})


def test_a_stage_added_to_the_table_is_in_the_graph_and_the_plan(with_toy, scan, tmp_path):
    wf = workflow(scan, tmp_path / "run.zarr")
    nq = wf.integrate.npt_rad
    ctx = RunContext(workflow=wf, store_path=tmp_path / "none.zarr", monitor_reference=1.0, wavelength_A=1.0,
                     layout=layout_for(wf, nq, 0), extra={"nq": nq})
    graph = build_graph(ctx)
    assert list(graph) == ["integrate", "center", "recon", "toy"]
    assert len(graph["toy"]) == wf.scan.nz
    p = plan_workflow(wf, frame_bytes=10_000)
    assert p.stages["toy"].tasks == wf.scan.nz and p.stages["toy"].bytes_per_task == 1000
    assert "toy" in {s.name for s in stages.downstream(wf, "integrate")}


@pytest.mark.slow
def test_a_stage_added_to_the_table_runs_resumes_and_reprocesses(with_toy, scan, tmp_path):
    from distributed import LocalCluster

    from xrdct_dask import run
    from xrdct_dask.runs.reprocess import reprocess

    path = tmp_path / "run.zarr"
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster:
        run(workflow(scan, path), cluster=cluster, progress=False, summary=False)
        state = store.task_state(path)
        assert state.stages == ["integrate", "center", "recon", "toy"]  # the table's order, recorded
        assert state["toy"].shape == (2, 1) and state["toy"].all()
        tasks = store.read_attrs(path)["run_summary"]["tasks"]
        assert tasks["toy"] == {"executed": 2, "skipped": 0}

        run(workflow(scan, path), cluster=cluster, progress=False, summary=False)  # resumed: nothing to do
        assert store.read_attrs(path)["run_summary"]["tasks"]["toy"] == {"executed": 0, "skipped": 2}

        store.mark_done(path, "toy", (1, 0), 0)  # one marker cleared: only that task runs again
        run(workflow(scan, path), cluster=cluster, progress=False, summary=False)
        assert store.read_attrs(path)["run_summary"]["tasks"]["toy"] == {"executed": 1, "skipped": 1}
        assert store.read_attrs(path)["run_summary"]["tasks"]["recon"]["executed"] == 0

        # a reprocess from recon (a step the toy stage belongs to) reruns it; integrate is shared
        (child,) = reprocess([path], {"recon.filter": "hann"}, scheduler_address=cluster.scheduler_address,
                             progress=False, summary=False)
        tasks = store.read_attrs(child)["run_summary"]["tasks"]
        assert tasks["toy"]["executed"] == 2 and tasks["integrate"]["executed"] == 0
        assert np.isfinite(store.task_state(child).value("center")).all()


def test_task_keys_name_the_stages(one_slice_scan, tmp_path):
    from xrdct_dask.runs.inputs import check_inputs
    from xrdct_dask.runs.open import prepare_store

    wf = load_workflow(one_slice_scan.workflow, {"store.path": str(tmp_path / "r.zarr")})
    ai, _ = check_inputs(wf)
    graph = build_graph(prepare_store(wf, ai))
    assert list(graph) == ["integrate", "center", "recon", "pdf-scale", "pdf", "view"]
    for stage, ds in graph.items():
        assert ds and all(d.key[0] == stage for d in ds), stage
