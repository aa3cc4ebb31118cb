"""Shared by the GPU benchmarks: a scan of hard-linked frames and the decode-integrate stage's rate
through the dask graph into zarr on a local GPU cluster."""

from __future__ import annotations

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


def graph_rate(scan, frames_dir: Path, nframes: int, npt: int, store_path: Path, *, gpus: list[int] | None = None,
               workers_per_gpu: int | None = None, nx: int = 100, omega_chunk: int = 16) -> dict:
    """Frames/s of the decode-integrate stage (cupy engine) for a 1 x nframes/nx x nx scan of the
    frames in ``frames_dir``, on :func:`xrdct_dask.workflow.local_cluster` with ``gpus``."""
    from distributed import Client

    from xrdct_dask import workflow as wfm
    from xrdct_dask.config import load_workflow

    wf = load_workflow(scan.workflow, {
        "inputs.frames": str(frames_dir / "frame_{index:06d}.cbf"), "inputs.monitor": None,
        "inputs.scan_file": None, "scan.nz": 1, "scan.nomega": nframes // nx, "scan.nx": nx,
        "store.path": str(store_path), "store.overwrite": True, "store.omega_chunk": omega_chunk,
        "integrate.npt_rad": npt, "integrate.engine": "cupy", "pdf.enabled": False,
        **({"compute.workers_per_gpu": workers_per_gpu} if workers_per_gpu else {})})
    ai, _ = wfm.check_inputs(wf)
    graph = wfm.build_graph(wfm.prepare_store(wf, ai, overwrite=True))
    cluster = wfm.local_cluster(wf, gpus=gpus)
    try:
        with Client(cluster) as client:
            client.register_plugin(wfm.IntegratorPlugin(wf, gpu_only=True))
            t = time.perf_counter()
            t_epoch = time.time()
            res = wfm.compute_with_progress(client, {"decode-integrate": graph["decode-integrate"]}, progress=False)
            dt = time.perf_counter() - t
    finally:
        cluster.close()
    tasks = res["decode-integrate"]
    frames = sum(r["frames"] for r in tasks)
    timeline = sorted((r.get("worker"), round(r["started"] - t_epoch, 3), round(r["finished"] - t_epoch, 3),
                       r["frames"], round(r["seconds_setup"], 3), round(r["seconds_engine"], 3),
                       round(r["seconds_write"], 3)) for r in tasks)
    return {"frames": frames, "seconds": dt, "timeline": timeline, "frames_per_s": frames / dt, "tasks": len(tasks),
            "engines": sorted({r["engine"] for r in tasks}), "workers_used": len({r.get("worker") for r in tasks}),
            "task_seconds": {k: round(sum(r[k] for r in tasks), 3)
                             for k in ("seconds", "seconds_setup", "seconds_engine", "seconds_write")}}
