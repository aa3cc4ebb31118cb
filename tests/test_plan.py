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

import numpy as np
import pytest
import zarr

from xrdct_dask import store
from xrdct_dask.config import load_workflow
from xrdct_dask.pipeline.frames import frame_source


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory):
    from xrdct_dask.simulate import simulate_scan

    return simulate_scan(tmp_path_factory.mktemp("plan") / "scan", nz=2, nomega=12, nx=10, seed=3)


def chunk_files(path: Path) -> dict[str, int]:
    """Chunk files on disk per array (``group/name``), the run's truth."""
    out = {}
    for group in (store.REDUCED, store.RECON, store.PDF, store.TASKS, store.VIEW):
        for arr in sorted((path / group).iterdir()) if (path / group).is_dir() else []:
            if (arr / "zarr.json").is_file() and arr.name not in store.COORDS:
                out[f"{group}/{arr.name}"] = sum(len(f) for _, _, f in os.walk(arr / "c"))
    return out


@pytest.mark.slow  # two real runs: ~15 s
@pytest.mark.parametrize("order", ["recon-then-pdf", "pdf-then-recon"])
def test_plan_counts_equal_the_graph_and_the_store(tiny_scan, cluster, tmp_path, order):
    """A small budget (so several q blocks, voxel-row blocks and r blocks per slice), a scan file:
    the plan's tasks per stage are the graph's, and its chunk files are the store's, file for file."""
    from xrdct_dask.pipeline.graph import build_graph
    from xrdct_dask.runs.execute import run
    from xrdct_dask.runs.open import open_run
    from xrdct_dask.runs.plan import plan_workflow

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
    assert all(on_disk[k] <= n for k, n in p.chunk_files.items()) and on_disk["reduced/intensity"] == grid[
        "reduced/intensity"] and on_disk[f"{store.TASKS}/integrate"] == grid[f"{store.TASKS}/integrate"]
    files = sum(len(f) for _, _, f in os.walk(path))
    # the rest: metadata and coordinates (a sharded array's chunks are files of its shards)
    assert p.files - (sum(p.chunk_files.values()) - sum(on_disk.values())) == files
    assert store.read_attrs(path)["layout"] == lay  # the store took the plan's layout


def store_arrays(path: Path) -> dict:
    """Every data array and done-marker of a store, found by walking its groups: ``{group/name: zarr.Array}``."""
    out = {}
    for group in (store.REDUCED, store.RECON, store.PDF, store.TASKS, store.VIEW):
        if (path / group).is_dir():
            g = zarr.open_group(str(path / group), mode="r")
            out.update({f"{group}/{n}": a for n, a in g.arrays() if n not in store.COORDS})
    return out


# what each stage writes, as the stages' code does it (integrate_block -> store.write_reduced, ...)
WRITES = {"integrate": ["reduced/intensity", "reduced/sigma", "reduced/monitor", "reduced/total", "reduced/frame_ok",
                        "reduced/frame_status", "tasks/integrate"],
          "center": ["tasks/center", "recon/slice_info"],
          "recon": ["recon/intensity", "recon/air_model", "tasks/recon"],
          "recon-then-pdf": {"pdf-scale": [], "pdf": ["pdf/G", "pdf/scale", "pdf/fq_highq_rms", "pdf/lowr_slope",
                                                      "pdf/lowr_residual", "pdf/ok", "tasks/pdf"]},
          "pdf-then-recon": {"pdf-frames": ["pdf/G_sinogram", "pdf/aux_sinogram"],
                             "pdf-aux": ["pdf/scale", "pdf/fq_highq_rms", "pdf/lowr_slope", "pdf/lowr_residual",
                                         "pdf/ok"], "pdf": ["pdf/G", "tasks/pdf"]},
          "prepare": ["reduced/monitor", "reduced/frame_index", "reduced/scan_flag"],
          "view": ["view/recon", "view/recon_scale", "view/recon_coarse", "view/recon_mean", "view/sino",
                   "view/sino_scale", "view/g", "view/g_scale", "view/g_mean", "tasks/view"]}


@pytest.mark.parametrize("order", ["recon-then-pdf", "pdf-then-recon"])
def test_plan_counts_equal_the_graph_built_and_the_store_created(tiny_scan, tmp_path, order):
    """Several q, voxel-row and r blocks per slice: the plan's tasks per stage are the keys of the
    graph ``build_graph`` makes for the store ``open_run`` created; its arrays are the store's
    arrays (none left out), each with the store's number of chunks and chunk bytes; its bytes
    written per stage are the bytes of the arrays that stage writes."""
    from xrdct_dask.pipeline.graph import build_graph
    from xrdct_dask.runs.open import open_run
    from xrdct_dask.runs.plan import plan_workflow

    wf = load_workflow(tiny_scan.workflow, {
        "store.path": str(tmp_path / "run.zarr"), "store.omega_chunk": 5, "pdf.order": order,
        "pdf.r_chunk": 600, "integrate.npt_rad": 300, "compute.task_memory": "1MB", "inputs.scan_file": "scan.csv"})
    bound = plan_workflow(wf)
    ctx = open_run(wf)  # the integration plan is cached now: the plan reads its q bins (pdf-then-recon's channels)
    p = plan_workflow(wf)
    graph = build_graph(ctx)
    keys = {}
    for stage, ds in graph.items():
        for d in ds:
            assert d.key[0] == stage and d.key[1] in range(wf.scan.nz)
        keys[stage] = len({d.key for d in ds})
    assert {k: v.tasks for k, v in p.stages.items() if k != "prepare"} == keys
    lay = p.layout
    assert lay["q_chunk"] < 300 and p.nr > lay["r_chunk"] and (order == "pdf-then-recon" or lay["y_chunk"] < 10)
    arrays = store_arrays(ctx.store_path)
    assert set(p.chunks) == set(arrays)
    assert p.chunks == {k: a.nchunks for k, a in arrays.items()}
    assert p.chunk_bytes == {k: int(np.prod(a.chunks)) * a.dtype.itemsize for k, a in arrays.items()}
    assert bound.chunk_bytes.get("pdf/aux_sinogram", 0) >= p.chunk_bytes.get("pdf/aux_sinogram", 0)
    assert p.chunks["pdf/G"] == wf.scan.nz * -(-wf.scan.nx // lay["y_chunk"]) * -(-p.nr // lay["r_chunk"]) > wf.scan.nz
    writes = {**{k: v for k, v in WRITES.items() if k in p.stages}, **WRITES[order]}
    for stage, names in writes.items():
        assert p.stages[stage].bytes_written == sum(arrays[n].nbytes for n in names), stage


def test_plan_of_a_1000_cubed_scan_in_seconds_within_budget_and_codec_limits(tmp_path):
    """1000 x 1571 x 1000, 2000 q bins, G to 20 A, 4 GB per task, at 5000 frames/s per GPU:
    1.571e9 frames, 87.3 GPU-hours, no chunk above 256 MB (Blosc refuses 2 GiB), no task above
    its budget, and the scheduler never holds more than compute.max_tasks."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app
    from xrdct_dask.simulate import make_integrator

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
        assert p["frame_bytes_source"] == "estimated from PONI detector"
        assert round(p["gpu_hours"], 1) == 87.3 and "87.3 GPU-hours" in res.output
        assert max(p["chunk_bytes"].values()) <= 256 * 2**20
        assert p["layout"]["budget"] == 4 * 10**9
        assert all(s["bytes_per_task"] <= 4 * 10**9 for s in p["stages"].values()), p["stages"]
        assert p["max_tasks_held"] <= 20_000
        assert p["stages"]["integrate"]["bytes_read"] == p["read_bytes"] == p["frames"] * p["frame_bytes"]
        assert p["input_files"] == p["frames"]  # one CBF file per frame
        # the view copy (xrdct view's maps and patterns): under 5 % of the bytes the run writes
        view = p["stages"]["view"]["bytes_written"] / sum(s["bytes_written"] for s in p["stages"].values())
        assert 0.01 < view < 0.05 and f"view copy: {100 * view:.1f} % of the bytes written" in res.output
        truth_at_scale(tmp_path / "big.yaml", order, p)


def truth_at_scale(workflow: Path, order: str, p: dict) -> None:
    """The 1000^3 plan against what the run would make: the graph of one slice (every slice has
    the same tasks) and the store's template (metadata only, created by create_store)."""
    from xrdct_dask.pdf import operator_for
    from xrdct_dask.pipeline.context import RunContext
    from xrdct_dask.pipeline.graph import build_graph
    from xrdct_dask.pipeline.tasks_pdf import pdf_aux_channels
    from xrdct_dask.runs.open import layout_for, store_markers, view_store_args
    from xrdct_dask.runs.plan import _nr

    wf = load_workflow(workflow, {"pdf.order": order})
    nq, nr = wf.integrate.npt_rad, _nr(wf)
    lay = layout_for(wf, nq, nr)
    ctx = RunContext(workflow=wf, store_path=workflow.parent / "none.zarr", monitor_reference=1.0,
                            wavelength_A=1.0, layout=lay, extra={"nq": nq, "nr": nr})
    one = build_graph(ctx, zs=[0])
    assert {k: v["tasks"] for k, v in p["stages"].items() if k != "prepare"} == {
        k: len(v) * wf.scan.nz for k, v in one.items()}
    s = wf.scan
    path = workflow.parent / f"template-{order}.zarr"
    q_nm = np.linspace(1.0, 250.0, nq)
    op = operator_for(q_nm / 10, wf.pdf)  # the PDF operator a run of these q bins builds (its r grid, aux channels)
    store.create_store(path, nz=s.nz, nomega=s.nomega, nx=s.nx, radial=q_nm, radial_unit="q_nm^-1",
                       omega_deg=np.arange(s.nomega) * 0.1, x_mm=np.arange(s.nx) * 1.0, z_mm=np.arange(s.nz) * 1.0,
                       r_A=op.r_A, layout=lay, attrs={}, markers=store_markers(wf, lay, q_nm, op.r_A),
                       aux_channels=pdf_aux_channels(op) if order == "pdf-then-recon" else None,
                       **view_store_args(wf, lay, q_nm, op.r_A))
    arrays = store_arrays(path)
    assert p["chunks"] == {k: 0 if k == "reduced/scan_flag" else a.nchunks for k, a in arrays.items()}  # no scan file
    chunk_bytes = {k: int(np.prod(a.chunks)) * a.dtype.itemsize for k, a in arrays.items()}
    if "pdf/aux_sinogram" in chunk_bytes:  # Pilatus plan not cached: its channels counted at their most
        assert p["chunk_bytes"].pop("pdf/aux_sinogram") >= chunk_bytes.pop("pdf/aux_sinogram")
    assert p["chunk_bytes"] == chunk_bytes
    assert p["chunks"]["pdf/G"] == s.nz * -(-s.nx // lay.y_chunk) * -(-nr // lay.r_chunk)


def test_plan_reads_throughputs_from_results_file(tmp_path, tiny_scan):
    from xrdct_dask.runs.plan import plan_workflow

    results = tmp_path / "RESULTS.md"
    results.write_text("old: gpu_frames_per_s = 900\n| x | y |\nplan figures: gpu_frames_per_s = 12,500, "
                       "cpu_frames_per_s_per_core: 45.5\n")
    p = plan_workflow(load_workflow(tiny_scan.workflow), results=results)
    assert (p.gpu_frames_per_s, p.cpu_frames_per_s_per_core) == (12500.0, 45.5)
    assert p.frame_bytes == tiny_scan.frame_path(0).stat().st_size


def test_waves_keep_slices_whole_and_under_half_the_budget():
    from xrdct_dask.runs.plan import waves

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

    from xrdct_dask.simulate import make_integrator

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


def test_file_system_bandwidth_bounds_the_run(tmp_path):
    """1000^3 CBF frames of 2.5 MB: 4 GPUs at 9,700 frames/s read 97 GB/s; a 50 GB/s file system
    delivers 50e9 / frame_bytes frames/s and bounds the run (the hours are the frames at that
    rate); at 1,000 GB/s the GPUs bound it.  Without --fs-gbps the plan says to give it."""
    from typer.testing import CliRunner

    from xrdct_dask.cli import app
    from xrdct_dask.simulate import make_integrator

    make_integrator("pilatus2m").write(str(tmp_path / "p2m.poni"))
    (tmp_path / "big.yaml").write_text(
        "inputs: {frames: 'frames/f_{index:010d}.cbf', poni: p2m.poni}\n"
        "scan: {nz: 1000, nomega: 1571, nx: 1000}\nintegrate: {npt_rad: 2000}\nstore: big.zarr\n")
    base = ["plan", str(tmp_path / "big.yaml"), "--gpu-frames-per-s", "9700", "--gpus", "4",
            "--json", str(tmp_path / "plan.json")]
    got = {}
    for fs in ("50", "1000", None):
        res = CliRunner().invoke(app, base + (["--fs-gbps", fs] if fs else []))
        assert res.exit_code == 0, res.output
        got[fs] = (json.loads((tmp_path / "plan.json").read_text()), res.output)
    p, out = got["50"]
    assert p["read_bytes"] == p["frames"] * p["frame_bytes"] and p["input_files"] == p["frames"]
    assert p["read_gbps_needed"] == pytest.approx(4 * 9700 * p["frame_bytes"] / 1e9)
    assert p["bound_by"] == "file system" and p["frames_per_s"] * p["frame_bytes"] == pytest.approx(50e9)
    assert p["wall_hours"] * 3600 * p["frames_per_s"] == pytest.approx(p["frames"])
    assert f"{p['read_gbps_needed']:,.1f} GB/s" in out and "bound by the file system" in out
    p, out = got["1000"]
    assert p["bound_by"] == "GPUs" and p["frames_per_s"] == 4 * 9700 and "bound by the GPUs" in out
    p, out = got[None]
    assert p["fs_gbps"] is None and "give --fs-gbps" in out and p["bound_by"] == "GPUs"


def test_input_files_of_an_hdf5_source_are_its_files(tmp_path):
    """An HDF5 scan of 40 frames in data files of 16: the plan counts the master and 3 data files,
    the files the source opens; 80 frames in files of 16 are 5 data files."""
    from xrdct_dask.runs.plan import plan_workflow
    from xrdct_dask.simulate import simulate_scan

    h5 = simulate_scan(tmp_path / "h5", nz=2, nomega=4, nx=5, seed=4, threads=2, fmt="h5", frames_per_file=16)
    wf = load_workflow(h5.workflow)
    assert plan_workflow(wf).input_files == len(frame_source(wf).files()) == 4
    assert plan_workflow(load_workflow(h5.workflow, {"scan.nz": 4})).input_files == 1 + 5


def test_plan_states_scan_table_export_and_scheduler_hours(tmp_path):
    """At 1000 x 1571 x 1000, from a results file's measured figures (scan-table rows/s per core,
    export MB/s per worker, scheduler CPU ms per task) and a 16-core machine: the scan table is
    1.571e9 rows / (rate x 16 cores), the export the store's bytes / (rate x 16 workers), the
    scheduler the plan's tasks x ms per task on one core; each stated in hours next to the
    compute hours (exact arithmetic: rel 1e-9)."""
    from xrdct_dask.cli import app  # noqa: F401  (the command exists)
    from xrdct_dask.runs.plan import format_plan
    from xrdct_dask.simulate import make_integrator

    make_integrator("pilatus2m").write(str(tmp_path / "p2m.poni"))
    (tmp_path / "big.yaml").write_text(
        "inputs: {frames: 'frames/f_{index:010d}.cbf', poni: p2m.poni}\n"
        "scan: {nz: 1000, nomega: 1571, nx: 1000}\nintegrate: {npt_rad: 2000}\nstore: big.zarr\n")
    (tmp_path / "results.md").write_text("gpu_frames_per_s = 9700\nscan_table_rows_per_s_per_core = 400000\n"
                                         "export_mb_per_s_per_worker = 120\nscheduler_ms_per_task = 0.8\n")
    wf = load_workflow(tmp_path / "big.yaml")
    import xrdct_dask.runs.plan as plan

    real = plan.run_hardware
    plan.run_hardware = lambda *a, **k: [{"where": "a node", "gpus": 4, "cores": 16}]
    try:
        p = plan.plan_workflow(wf, results=tmp_path / "results.md")
    finally:
        plan.run_hardware = real
    o = p.overhead
    assert o["scan table"]["hours"] == pytest.approx(1_571_000_000 / (400_000 * 16) / 3600, rel=1e-9)
    written = sum(s.bytes_written for s in p.stages.values())
    assert o["NeXus export"]["hours"] == pytest.approx(written / (120e6 * 16) / 3600, rel=1e-9)
    assert o["scheduler"]["hours"] == pytest.approx(p.tasks * 0.8e-3 / 3600, rel=1e-9)
    text = format_plan(p)
    assert "scan table: 0.068 hours on 16 cores at 400,000 rows/s per core" in text, text
    assert "scheduler: " in text and "0.8 ms CPU per task" in text and "NeXus export: " in text
