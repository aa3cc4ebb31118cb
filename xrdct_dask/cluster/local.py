"""A cluster for a run: on this machine (GPU workers per GPU, CPU workers beside them), from a
profile, or a running scheduler; what each stage asks of the workers."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from multiprocessing import resource_tracker
from pathlib import Path

from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

from xrdct_dask.backend import cp, gpu_available
from xrdct_dask.cluster.gpulayout import (
    GPU_WORKER_THREADS,
    GpuLayout,
    card_bytes_of,
    describe_layout,
    layout_of,
)
from xrdct_dask.cluster.profiles import declared_resources, describe, make_cluster
from xrdct_dask.config import Workflow, WorkflowError
from xrdct_dask.limits import check_local_workers
from xrdct_dask.pipeline.stages import STAGES

log = logging.getLogger(__name__)


def gpu_count() -> int:
    """CUDA devices visible here (0 without cupy or a driver)."""

    return int(cp.cuda.runtime.getDeviceCount()) if gpu_available() else 0


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Worker processes started inside never see a Ctrl-C, and the client never loses one.

    A Ctrl-C in the terminal goes to the whole foreground process group; it must reach the client
    alone, which stops the run and closes the workers in order, instead of every worker printing
    its own KeyboardInterrupt traceback.  SIGINT is *blocked* (not ignored) in this thread while
    the workers start: the threads started meanwhile (the cluster's event loop, the ones that spawn
    the worker processes) inherit the mask, and so do the processes (a signal mask survives fork
    and exec), which thus never receive it.  An ignored SIGINT would be lost for the client too (a
    Ctrl-C ~3 s after start was: the run went on and exited 0).  Here a Ctrl-C during the start is
    kept: delivered to another thread, the handler notes it; pending here, it is delivered when the
    mask is lifted.  Either way KeyboardInterrupt is raised once the cluster is up.

    multiprocessing's resource tracker is started first: starting it unblocks SIGINT in the thread
    that starts it (bpo-33613), which would otherwise be the loop thread spawning the workers."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # (ignored already, e.g. a background job of a shell: the workers inherit that)
        return

    resource_tracker.ensure_running()
    came: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C pending here is handled now (noted)
        signal.signal(signal.SIGINT, previous)
    if came:
        raise KeyboardInterrupt


def _start_workers(make):
    """``make()`` (a local cluster) with its workers started under :func:`_workers_ignore_sigint`;
    a Ctrl-C that came meanwhile closes the new cluster and raises KeyboardInterrupt."""
    cluster = None
    try:
        with _workers_ignore_sigint():
            cluster = make()
    except KeyboardInterrupt:
        if cluster is not None:
            cluster.close()
        raise
    return cluster


def local_cluster(wf: Workflow, gpus: list[int] | None = None):
    """A cluster on this machine for one run.

    Without GPUs (or with ``integrate.engine: numpy``): a LocalCluster of single-threaded workers.
    With GPUs: GPU workers and CPU workers sized to the card together
    (:func:`~xrdct_dask.cluster.gpulayout.gpu_layout`, :func:`gpu_worker_specs`).
    ``gpus``: the device numbers to use (default: all)."""

    c = wf.compute
    ncores = os.cpu_count() or 1
    if gpus is None:
        gpus = list(range(gpu_count())) if wf.integrate.engine in ("auto", "cupy") else []
    if not gpus:
        nworkers = c.n_workers or max(1, ncores // c.threads_per_worker)
        return _start_workers(lambda: LocalCluster(
            n_workers=nworkers, threads_per_worker=c.threads_per_worker, memory_limit=c.memory_limit,
            dashboard_address=c.dashboard_address, host="127.0.0.1"))
    workers = gpu_worker_specs(wf, gpus, local_gpu_layout(wf, gpus, ncores))
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": c.dashboard_address, "host": "127.0.0.1"}}
    return _start_workers(lambda: SpecCluster(workers=workers, scheduler=scheduler, name="xrdct-local-gpu"))


def local_gpu_layout(wf: Workflow, gpus: list[int], cores: int) -> GpuLayout:
    """The :class:`~xrdct_dask.cluster.gpulayout.GpuLayout` of a local run on ``gpus`` (sized to the
    first one's memory, or ``compute.gpu_memory``) and ``cores`` cores; a one-line
    :class:`~xrdct_dask.errors.WorkflowError` where it cannot fit, before any worker starts."""
    card = card_bytes_of(wf, gpus[0])
    if card is None:
        raise WorkflowError(f"compute.gpu_memory: auto, but no GPU is visible here to size the workers of GPUs "
                            f"{gpus} to: give its size (e.g. 80GB)")
    lay = layout_of(wf, len(gpus), cores, card)
    log.info("GPU layout: %s", "; ".join(s.strip() for s in describe_layout(lay.to_dict())))
    return lay


def gpu_worker_specs(wf: Workflow, gpus: list[int], lay: GpuLayout) -> dict[str, dict]:
    """The SpecCluster workers of a local GPU run laid out as ``lay`` says.

    ``lay.workers_per_gpu`` worker processes per GPU (``CUDA_VISIBLE_DEVICES`` = its GPU, resource
    ``GPU=1``, two threads so that one task reads and writes while another holds the GPU pipeline;
    several processes because reading and parsing frames is Python work under one GIL per
    process) plus ``lay.cpu_workers`` workers (resource ``CPU=1``) for the centre,
    reconstruction and PDF.  Those see a GPU too (round robin) unless both ``recon.engine`` and
    ``pdf.engine`` are ``numpy``: FBP and the PDF's GEMM then run on the GPU, while the reading
    and integration keep their own processes.  Each process finds its share of its GPU in its
    environment (:class:`~xrdct_dask.gpushare.GpuShare`): the GPU workers their batches, the others
    their tasks' device bytes."""
    c = wf.compute
    # GPU workers hold several GB of page-locked buffers, fixed at start-up (not growing with the
    # scan): the "auto" share of RAM would pause them for it, so they get no limit unless one is set
    gpu_limit = 0 if c.memory_limit == "auto" else c.memory_limit
    share, aux_share = lay.worker_share().env(), lay.aux_share().env()
    workers = {f"gpu-{i}-{k}": {"cls": Nanny, "options": {
        "nthreads": GPU_WORKER_THREADS, "resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": str(i), **share},
        "host": "127.0.0.1", "memory_limit": gpu_limit}} for i in gpus for k in range(lay.workers_per_gpu)}

    def aux_env(k: int) -> dict:  # recon and pdf on the GPU: round robin; else none seen
        return {"CUDA_VISIBLE_DEVICES": str(gpus[k % len(gpus)]), **aux_share} if lay.aux_per_gpu else \
            {"CUDA_VISIBLE_DEVICES": ""}

    workers |= {f"cpu-{k}": {"cls": Nanny, "options": {
        "nthreads": c.threads_per_worker, "resources": {"CPU": 1}, "env": aux_env(k),
        "host": "127.0.0.1", "memory_limit": c.memory_limit}} for k in range(lay.cpu_workers)}
    return workers


def _client(target) -> Client:
    """A client of the run's own, not the process's default: the run computes through it
    explicitly, so the caller's dask configuration (``scheduler``) is never changed, even when
    clients are closed in another order than they were opened."""
    return Client(target, set_as_default=False)


def client_for(wf: Workflow, scheduler_address: str | None, cluster=None, jobs: int | None = None,
            adaptive: bool | None = None, cluster_options: dict | None = None):
    """``(client, cluster started here or None)``: a given cluster object, a running scheduler, a
    cluster profile (``cluster`` as a name/path, or ``compute.cluster``), or a cluster on this
    machine (:func:`local_cluster`)."""

    if cluster is not None and not isinstance(cluster, (str, Path)):
        return _client(cluster), None
    if scheduler_address:
        return _client(scheduler_address), None
    c = wf.compute
    profile = cluster if cluster is not None else c.cluster
    if profile is not None:
        jc = make_cluster(profile, **(cluster_options or {}))
        n = jobs or c.jobs
        if c.adaptive if adaptive is None else adaptive:
            jc.adapt(minimum_jobs=0, maximum_jobs=n)
            log.info("cluster %s: adaptive, 0..%d jobs of %s", profile, n, describe(jc))
        else:
            jc.scale(jobs=n)
            log.info("cluster %s: %d jobs of %s", profile, n, describe(jc))
        return _client(jc), jc

    check_local_workers(wf)  # before any worker starts
    lc = local_cluster(wf)
    return _client(lc), lc


def stage_resources(client, wf: Workflow | None = None, cluster=None) -> dict[str, dict]:
    """``client.compute`` arguments of each stage: integration asks for ``GPU`` when the workers
    offer it (and the workflow does not pin the numpy engine), the other stages for ``CPU`` when
    the workers are marked so.  A dask-jobqueue cluster says what its (maybe not yet started)
    workers will advertise; otherwise the workers connected now are asked.  A CPU-only cluster
    gets no annotations at all: the same graph runs as on a laptop."""
    declared = declared_resources(cluster) if cluster is not None and not isinstance(cluster, (str, Path)) else None
    offered: set = set()
    if declared is not None:
        offered = {k for k, v in declared.items() if v}
    else:
        for w in client.scheduler_info(n_workers=-1)["workers"].values():
            offered |= {k for k, v in (w.get("resources") or {}).items() if v}
    # half a GPU per task: two tasks share a GPU worker, each on its own pipeline of streams, so
    # one reads or writes while the other computes
    use_gpu = "GPU" in offered and (wf is None or wf.integrate.engine != "numpy")
    gpu = {"resources": {"GPU": 0.5}} if use_gpu else {}
    cpu = {"resources": {"CPU": 1}} if "CPU" in offered else {}
    return {st.name: gpu if st.gpu else cpu for st in STAGES}
