"""`xrdct plan`: a run on paper that is the truth.

The plan derives its counts from the same tables the run uses (stage table, layout, array
specs), so these tests compare it with what a real run builds and writes, never with a copy of
its formulas: the tasks of every stage with the graph that ran, the chunk files of every array
with the files on disk, for both PDF orders.  A 1000 x 1571 x 1000 scan plans in seconds, with
every chunk under the codec's limit and every task inside its memory budget.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.config import load_workflow


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory):
    from xrdct_dask.testing.synthetic import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("plan") / "scan", nz=2, nomega=12, nx=10, seed=3)


def chunk_files(path: Path) -> dict[str, int]:
    """Chunk files on disk per array (``group/name``), the run's truth."""
    out = {}
    for group in (store.REDUCED, store.RECON, store.PDF, store.TASKS):
        for arr in sorted((path / group).iterdir()) if (path / group).is_dir() else []:
            if (arr / "zarr.json").is_file() and arr.name not in store.COORDS:
                out[f"{group}/{arr.name}"] = sum(len(f) for _, _, f in os.walk(arr / "c"))
    return out


@pytest.mark.slow  # two real runs: ~15 s
@pytest.mark.parametrize("order", ["recon-then-pdf", "pdf-then-recon"])
def test_plan_counts_equal_the_graph_and_the_store(tiny_scan, cluster, tmp_path, order):
    """A small budget (so several q blocks, voxel-row blocks and r blocks per slice), a scan file:
    the plan's tasks per stage are the graph's, and its chunk files are the store's, file for file."""
    from xrdct_dask.graph import build_graph
    from xrdct_dask.plan import plan_workflow
    from xrdct_dask.prepare import open_run
    from xrdct_dask.workflow import run

    wf = load_workflow(tiny_scan.workflow, {
        "store.path": str(tmp_path / "run.zarr"), "store.omega_chunk": 5, "pdf.order": order,
        "pdf.r_chunk": 600, "integrate.npt_rad": 300, "compute.task_memory": "1MB", "inputs.scan_file": "scan.csv"})
    p = plan_workflow(wf)
    graph = build_graph(open_run(wf))
    assert {k: v.tasks for k, v in p.stages.items() if k != "prepare"} == {k: len(v) for k, v in graph.items()}
    lay = p.layout
    assert lay["q_chunk"] < 300 and p.nr > lay["r_chunk"] and (order == "pdf-then-recon" or lay["y_chunk"] < 10)
    path = run(wf, cluster=cluster, progress=False, summary=False)
    assert store.task_state(path).complete
    ran = store.read_attrs(path)["run_summary"]["task_seconds"]
    assert set(ran) == set(graph)
    grid = {k: zarr.open_array(str(path / k), mode="r").nchunks for k in chunk_files(path)}
    assert p.chunks == grid  # every array of the store, chunk for chunk
    # on disk: at most that (zarr writes no chunk that is all fill value, e.g. figures of empty voxels)
    on_disk = chunk_files(path)
    assert all(on_disk[k] <= n for k, n in p.chunks.items()) and on_disk["reduced/intensity"] == grid[
        "reduced/intensity"] and on_disk[f"{store.TASKS}/integrate"] == grid[f"{store.TASKS}/integrate"]
    files = sum(len(f) for _, _, f in os.walk(path))
    assert p.files - (sum(p.chunks.values()) - sum(on_disk.values())) == files  # the rest: metadata and coordinates
    assert store.read_attrs(path)["layout"] == lay  # the store took the plan's layout


def test_plan_of_a_1000_cubed_scan_in_seconds_within_budget_and_codec_limits(tmp_path):
    """1000 x 1571 x 1000, 2000 q bins, G to 20 A, 4 GB per task, at 5000 frames/s per GPU:
    1.571e9 frames, 87.3 GPU-hours, no chunk above 256 MB (Blosc refuses 2 GiB), no task above
    its budget, and the scheduler never holds more than compute.max_tasks."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app
    from xrdct_dask.testing.synthetic import make_integrator

    make_integrator("pilatus2m").write(str(tmp_path / "p2m.poni"))
    (tmp_path / "big.yaml").write_text(
        "inputs: {frames: 'frames/f_{index:010d}.cbf', poni: p2m.poni}\n"
        "scan: {nz: 1000, nomega: 1571, nx: 1000}\nintegrate: {npt_rad: 2000}\n"
        "pdf: {rmin: 0.5, rmax: 20.0, rstep: 0.01}\ncompute: {task_memory: 4GB}\nstore: big.zarr\n")
    for order in ("recon-then-pdf", "pdf-then-recon"):
        t0 = time.perf_counter()
        res = CliRunner().invoke(app, ["plan", str(tmp_path / "big.yaml"), "--gpu-frames-per-s", "5000",
                                       "--set", f"pdf.order={order}", "--json", str(tmp_path / "plan.json")])
        assert res.exit_code == 0, res.output
        assert time.perf_counter() - t0 < 20
        p = json.loads((tmp_path / "plan.json").read_text())
        assert p["frames"] == 1_571_000_000 and p["detector_shape"] == [1679, 1475] and p["nr"] == 1951
        assert p["frame_bytes"] == 1679 * 1475 + 8192
        assert round(p["gpu_hours"], 1) == 87.3 and "87.3 GPU-hours" in res.output
        assert max(p["chunk_bytes"].values()) <= 256 * 2**20
        assert p["layout"]["budget"] == 4 * 10**9
        assert all(s["bytes_per_task"] <= 4 * 10**9 for s in p["stages"].values()), p["stages"]
        assert p["max_tasks_held"] <= 20_000
        assert p["stages"]["integrate"]["bytes_read"] == p["frames"] * p["frame_bytes"]


def test_plan_reads_throughputs_from_results_file(tmp_path, tiny_scan):
    from xrdct_dask.plan import plan_workflow

    results = tmp_path / "RESULTS.md"
    results.write_text("old: gpu_frames_per_s = 900\n| x | y |\nplan figures: gpu_frames_per_s = 12,500, "
                       "cpu_frames_per_s_per_core: 45.5\n")
    p = plan_workflow(load_workflow(tiny_scan.workflow), results=results)
    assert (p.gpu_frames_per_s, p.cpu_frames_per_s_per_core) == (12500.0, 45.5)
    assert p.frame_bytes == tiny_scan.frame_path(0).stat().st_size


def test_waves_keep_slices_whole_and_under_half_the_budget():
    from xrdct_dask.plan import waves

    assert waves([5, 5, 5, 5, 5], 20) == [[0, 1], [2, 3], [4]]
    assert waves([30, 1, 1], 20) == [[0], [1, 2]]  # a slice over budget is a wave of its own
    assert sum(len(w) for w in waves([7] * 1000, 200)) == 1000


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_every_wave_of_a_1000_cubed_run_builds_in_minutes_in_little_memory(tmp_path):
    """`xrdct plan --graph` builds the graph of every wave of a 1000 x 1571 x 1000 run as the run
    would, one wave at a time: under 5 minutes and under 4 GB on the client (its own process), and
    no wave larger than compute.max_tasks / 2."""
    import subprocess
    import sys

    from xrdct_dask.testing.synthetic import make_integrator

    make_integrator("pilatus2m").write(str(tmp_path / "p2m.poni"))
    (tmp_path / "big.yaml").write_text(
        "inputs: {frames: 'frames/f_{index:010d}.cbf', poni: p2m.poni}\n"
        "scan: {nz: 4, nomega: 64, nx: 48}\nintegrate: {npt_rad: 2000}\nstore: big.zarr\n")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "xrdct_dask.cli", "plan", str(tmp_path / "big.yaml"), "--graph",
                          "--set", "scan.nz=1000", "--set", "scan.nomega=1571", "--set", "scan.nx=1000",
                          "--json", str(tmp_path / "plan.json")], capture_output=True, text=True, timeout=380)
    assert res.returncode == 0, res.stderr
    assert time.perf_counter() - t0 < 300
    g = json.loads((tmp_path / "plan.json").read_text())["graph"]
    p = json.loads((tmp_path / "plan.json").read_text())
    assert g["tasks"] == p["tasks"] and g["waves"] == p["waves"] > 1
    assert g["max_wave_tasks"] <= 20_000 // 2 and g["peak_rss_bytes"] < 4e9
