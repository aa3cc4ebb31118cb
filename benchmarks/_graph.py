"""Shared by the GPU benchmarks: a scan of hard-linked frames and the decode-integrate stage's rate
through the dask graph into zarr on a local GPU cluster."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def link_frames(distinct: list[Path], frames_dir: Path, n: int) -> Path:
    """``frames_dir/frame_{i:06d}.cbf`` for i < n, hard links cycling over ``distinct``: the scan
    is as long as asked while the page cache holds only the distinct frames' bytes."""
    frames_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dst = frames_dir / f"frame_{i:06d}.cbf"
        if not dst.exists():
            os.link(distinct[i % len(distinct)], dst)
    return frames_dir


def _one_run(client, wf, token: str) -> dict:
    from xrdct_dask.cluster.local import stage_resources
    from xrdct_dask.pipeline.graph import build_graph
    from xrdct_dask.runs.execute import compute_with_progress
    from xrdct_dask.runs.open import open_run

    graph = build_graph(open_run(wf), token=token, resources=stage_resources(client, wf))
    t = time.perf_counter()
    t_epoch = time.time()
    res = compute_with_progress(client, {"integrate": graph["integrate"]}, progress=False)
    dt = time.perf_counter() - t
    tasks = res["integrate"]
    frames = sum(r["frames"] for r in tasks)
    timeline = sorted((r.get("worker"), round(r["started"] - t_epoch, 3), round(r["finished"] - t_epoch, 3),
                       r["frames"], round(r["seconds_setup"], 3), round(r["seconds_engine"], 3),
                       round(r["seconds_write"], 3)) for r in tasks)
    return {"frames": frames, "seconds": dt, "timeline": timeline, "frames_per_s": frames / dt, "tasks": len(tasks),
            "engines": sorted({r["engine"] for r in tasks}), "workers_used": len({r.get("worker") for r in tasks}),
            "task_seconds": {k: round(sum(r[k] for r in tasks), 3)
                             for k in ("seconds", "seconds_setup", "seconds_engine", "seconds_write")},
            "epoch": t_epoch}


def graph_rate(scan, frames_dir: Path | str, nframes: int, npt: int, store_path: Path, *,
               gpus: list[int] | None = None, workers_per_gpu: int | None = None, read_threads: int | None = None,
               nx: int = 100, omega_chunk: int = 16, repeats: int = 1, profile: Path | None = None,
               nz: int = 1, overrides: dict | None = None) -> dict:
    """Frames/s of the decode-integrate stage (cupy engine) for a nz x nframes/nx x nx scan of the
    frames in ``frames_dir`` (a folder of CBF files, :func:`link_frames`; or a string: an HDF5
    source as ``inputs.frames`` takes it), on :func:`xrdct_dask.cluster.local.local_cluster` with ``gpus``, timed from
    submission (the workers are up and their integrator plugin set up) to the last result.

    ``repeats`` > 1 runs the same scan again on the same cluster (a beamline's cluster that stays up
    between scans): ``warm_frames_per_s`` is the median of those later runs.  ``profile``: write
    dask's statistical profile of the task threads during the first run there (JSON).  ``nz``: slices
    of ``nframes`` each (the folder holds ``nz * nframes`` frames); ``overrides``: more workflow keys
    (``integrate.npt_azim``, ...)."""
    import statistics

    from distributed import Client

    from xrdct_dask.cluster.local import local_cluster
    from xrdct_dask.config import load_workflow
    from xrdct_dask.pipeline.integrator import IntegratorPlugin

    wf = load_workflow(scan.workflow, {
        "inputs.frames": frames_dir if isinstance(frames_dir, str) else str(frames_dir / "frame_{index:06d}.cbf"),
        "inputs.monitor": None,
        "inputs.scan_file": None, "scan.nz": nz, "scan.nomega": nframes // nx, "scan.nx": nx,
        "store.path": str(store_path), "store.overwrite": True, "store.omega_chunk": omega_chunk,
        "integrate.npt_rad": npt, "integrate.engine": "cupy", "pdf.enabled": False,
        **({"compute.workers_per_gpu": workers_per_gpu} if workers_per_gpu else {}),
        **({"compute.read_threads": read_threads} if read_threads else {}), **(overrides or {})})
    cluster = local_cluster(wf, gpus=gpus)
    try:
        with Client(cluster) as client:
            client.register_plugin(IntegratorPlugin(wf, gpu_only=True))
            runs = [_one_run(client, wf, f"r{k}") for k in range(max(1, repeats))]
            if profile is not None:
                time.sleep(1.5)  # the workers' profile history closes its current cycle each second
                first = runs[0]
                prof = client.profile(start=first["epoch"], stop=first["epoch"] + first["seconds"])
                Path(profile).write_text(json.dumps(prof))
    finally:
        cluster.close()
    out = runs[0]
    if len(runs) > 1:
        out["warm_frames_per_s"] = statistics.median(r["frames_per_s"] for r in runs[1:])
        out["warm_timeline"] = runs[-1]["timeline"]
    return out
