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
from xrdct_dask.cluster.profiles import declared_resources, describe, make_cluster
from xrdct_dask.config import Workflow
from xrdct_dask.limits import check_local_workers
from xrdct_dask.pipeline.stages import STAGES

log = logging.getLogger(__name__)


def gpu_count() -> int:
    """CUDA devices visible here (0 without cupy or a driver)."""

    return int(cp.cuda.runtime.getDeviceCount()) if gpu_available() else 0


GPU_GB_PER_WORKER = 20  # a GPU worker's engine holds ~13 GB: two pipelines of 128-frame batches


def workers_per_gpu_for(device: int) -> int:
    """Default GPU worker processes for a device: one per ``GPU_GB_PER_WORKER`` GB of its memory,
    1 to 6 (four on an H100, six on an H200).  Several processes read frames side by side (one GIL
    each): on the H200 the whole workflow integrated 10.1k frames/s with six, 9.4k with four
    (benchmarks/RESULTS.md, bench_workflow.py)."""

    total = cp.cuda.runtime.getDeviceProperties(device)["totalGlobalMem"]
    return int(min(6, max(1, total // (GPU_GB_PER_WORKER * 10**9))))


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
    With GPUs: ``compute.workers_per_gpu`` (default :func:`workers_per_gpu_for`) worker processes
    per GPU (``CUDA_VISIBLE_DEVICES`` = its GPU, resource ``GPU=1``, two threads so that one task
    reads and writes while another holds the GPU pipeline; several processes because reading and
    parsing frames is Python work under one GIL per process) plus workers (resource ``CPU=1``) on
    the remaining cores for the centre, reconstruction and PDF.  Those see a GPU too (round robin)
    unless both ``recon.engine`` and ``pdf.engine`` are ``numpy``: FBP and the PDF's GEMM then run
    on the GPU, while the reading and integration keep their own processes.  ``gpus``: the device
    numbers to use (default: all).
    """

    c = wf.compute
    ncores = os.cpu_count() or 1
    if gpus is None:
        gpus = list(range(gpu_count())) if wf.integrate.engine in ("auto", "cupy") else []
    ngpu = len(gpus)
    if ngpu == 0:
        nworkers = c.n_workers or max(1, ncores // c.threads_per_worker)
        return _start_workers(lambda: LocalCluster(
            n_workers=nworkers, threads_per_worker=c.threads_per_worker, memory_limit=c.memory_limit,
            dashboard_address=c.dashboard_address, host="127.0.0.1"))
    # GPU workers hold several GB of page-locked buffers, fixed at start-up (not growing with the
    # scan): the "auto" share of RAM would pause them for it, so they get no limit unless one is set
    gpu_limit = 0 if c.memory_limit == "auto" else c.memory_limit
    per_gpu = c.workers_per_gpu or workers_per_gpu_for(gpus[0])
    workers = {f"gpu-{i}-{k}": {"cls": Nanny, "options": {
        "nthreads": 2, "resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": str(i)}, "host": "127.0.0.1",
        "memory_limit": gpu_limit}} for i in gpus for k in range(per_gpu)}
    ncpu = c.n_workers or max(1, (ncores - 2 * ngpu * per_gpu) // c.threads_per_worker)
    aux_gpu = wf.recon.engine != "numpy" or wf.pdf.engine != "numpy"
    workers |= {f"cpu-{k}": {"cls": Nanny, "options": {
        "nthreads": c.threads_per_worker, "resources": {"CPU": 1},
        "env": {"CUDA_VISIBLE_DEVICES": str(gpus[k % ngpu]) if aux_gpu else ""},
        "host": "127.0.0.1", "memory_limit": c.memory_limit}} for k in range(ncpu)}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": c.dashboard_address, "host": "127.0.0.1"}}
    return _start_workers(lambda: SpecCluster(workers=workers, scheduler=scheduler, name="xrdct-local-gpu"))


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
