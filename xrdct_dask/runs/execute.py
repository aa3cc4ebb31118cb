"""Run a workflow: open its store, build its graph, compute it in waves with progress, report.

Where workers advertise a ``GPU`` resource (GPU profiles, :func:`xrdct_dask.cluster.local.local_cluster`),
the integration tasks ask for half a GPU (two per worker: one reads and writes while the other
holds the GPU pipeline) and the other stages for ``CPU`` where workers are marked so
(:func:`xrdct_dask.cluster.local.stage_resources`); on a plain cluster the same graph runs unannotated.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from pathlib import Path

from distributed import LocalCluster, as_completed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from xrdct_dask import store
from xrdct_dask.cluster.local import stage_resources
from xrdct_dask.cluster.logs import RunLogPlugin, worker_log_level
from xrdct_dask.cluster.lostwork import lost_work, scheduler_time
from xrdct_dask.cluster.profiles import load_profile
from xrdct_dask.config import Workflow, load_workflow, workflow_from_dict
from xrdct_dask.errors import RunStopped, TaskFailed
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.graph import build_graph, pending_by_stage
from xrdct_dask.pipeline.integrator import IntegratorPlugin
from xrdct_dask.pipeline.stages import FRAMES_STAGE
from xrdct_dask.runs.connect import Connection
from xrdct_dask.runs.open import open_run
from xrdct_dask.runs.plan import waves
from xrdct_dask.runs.report import finish_run
from xrdct_dask.view.console import console

log = logging.getLogger(__name__)




def compute_with_progress(client, graph: dict, progress: bool = True) -> dict:
    """Submit every stage's tasks of one graph and wait, showing one progress bar per stage.

    Stages go where the graph's annotations say (``build_graph(..., resources=...)``).  Returns
    ``{stage: [result, ...]}``; a failing task raises here with its key in the message.
    """
    items = [(0, k, d) for k, ds in graph.items() for d in ds]
    results: dict[str, list] = {k: [] for k in graph if graph[k]}
    for _, stage, res in compute_waves(client, [lambda: items], {k: len(v) for k, v in graph.items()}, progress):
        results[stage].append(res)
    return results


def run(workflow: Workflow | str | Path, *, overrides: dict | None = None, scheduler_address: str | None = None,
        cluster=None, jobs: int | None = None, adaptive: bool | None = None, cluster_options: dict | None = None,
        progress: bool = True, summary: bool = True) -> Path:
    """Run a whole workflow (integrate -> reconstruct -> PDF) and return the store path.

    ``workflow`` is a :class:`Workflow` or the path of its YAML file.  Without a
    ``scheduler_address`` (or ``cluster``), a LocalCluster is started for the run and closed after.
    A store left by an interrupted run of the same work is resumed: only the tasks whose
    done-marker is missing run (see :func:`open_run`).
    """
    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow, overrides)
    if overrides and isinstance(workflow, Workflow):
        wf = workflow_from_dict(wf.model_dump(mode="json"), overrides=overrides)
    t0 = time.perf_counter()
    profile = cluster if isinstance(cluster, (str, Path)) else (
        wf.compute.cluster if cluster is None and not scheduler_address else None)
    if profile is not None:  # a broken cluster profile fails here, before the store is created

        load_profile(profile, **(cluster_options or {}))
    conn = Connection(wf, scheduler_address, cluster, jobs, adaptive, cluster_options)
    try:
        ctx = open_run(wf, client=conn.get)  # a new store's template is written on the workers
        execute([ctx], connection=conn, progress=progress, summary=summary, t0=t0)
    finally:
        conn.close()
    return ctx.store_path


def execute(ctxs: list[RunContext], *, scheduler_address: str | None = None, cluster=None,
            jobs: int | None = None, adaptive: bool | None = None, cluster_options: dict | None = None,
            progress: bool = True, summary: bool = True, t0: float | None = None,
            connection: Connection | None = None) -> list[dict]:
    """Compute what is not yet done in one or more prepared stores, as one graph, and finish them.

    Slices with pending tasks (of every store together) are grouped into waves of at most
    ``compute.max_tasks / 2`` tasks (:func:`xrdct_dask.runs.plan.waves`); two waves are in flight at a
    time.  Returns each store's run summary.  ``connection`` (:class:`Connection`): a client the
    caller made (and closes); else one is made from the other arguments and closed here.  A task that cannot write the store stops the run
    with :class:`RunStopped`; every other task failure raises RuntimeError naming the task.
    """


    t0 = time.perf_counter() if t0 is None else t0
    states = [store.task_state(c.store_path) for c in ctxs]
    units = [(i, z, d) for i, (c, st) in enumerate(zip(ctxs, states))
             for z, d in enumerate(pending_by_stage(c, st)) if sum(d.values())]
    groups = waves([sum(d.values()) for *_, d in units], min(c.workflow.compute.max_tasks for c in ctxs))
    totals: dict[str, int] = {}
    for *_, d in units:
        for k, v in d.items():
            totals[k] = totals.get(k, 0) + v
    token = uuid.uuid4().hex[:8]
    if progress:
        for c, st in zip(ctxs, states):
            done, total = (sum(x) for x in zip(*st.counts().values()))
            if done:
                console.info("%s: %d of %d tasks already done (their chunks are kept)", c.store_path, done, total)

    def wave(k: int) -> list:
        by_ctx: dict[int, list[int]] = {}
        for u in groups[k]:
            i, z, _ = units[u]
            by_ctx.setdefault(i, []).append(z)
        items = []
        for i, zs in by_ctx.items():
            g = build_graph(ctxs[i], zs=zs, done=states[i], token=f"{token}{i}", resources=resources)
            items += [(i, stage, d) for stage, ds in g.items() for d in ds]
        return items

    results: list[dict[str, list]] = [{} for _ in ctxs]
    resources: dict = {}
    own = connection is None
    conn = Connection(ctxs[0].workflow, scheduler_address, cluster, jobs, adaptive, cluster_options) if own \
        else connection
    if units:
        client = conn.get()
        local = conn.local
        try:
            since = conn.since if conn.since is not None else scheduler_time(client)  # store preparation included
            log.info("dashboard: %s", client.dashboard_link)
            if progress:
                console.info("dask dashboard: %s", client.dashboard_link)
            # a local cluster's workers follow the quiet client; a batch job's log file keeps its own level
            client.register_plugin(RunLogPlugin(worker_log_level() if isinstance(local, LocalCluster) else None))
            need = {c.workflow.digest(): c.workflow for c, st in zip(ctxs, states) if not st[FRAMES_STAGE].all()}
            resources = stage_resources(client, ctxs[0].workflow, local)
            for wf in need.values():
                client.register_plugin(IntegratorPlugin(wf, unique=len(need) > 1,
                                                        gpu_only=bool(resources[FRAMES_STAGE])))
            for i, stage, res in compute_waves(client, [lambda k=k: wave(k) for k in range(len(groups))], totals,
                                               progress, stores=[c.store_path for c in ctxs]):
                results[i].setdefault(stage, []).append(res)
            for i, stage, res in _refit_axes(client, ctxs, token, resources, progress):
                results[i].setdefault(stage, []).append(res)
            lost = lost_work(client, since)
            if lost.workers:  # the run completed: the run's log says what it survived
                console.warning("%s", lost)
        finally:
            if own:
                conn.close()
    wall = time.perf_counter() - t0
    return [finish_run(c, results[i], states[i], wall, progress=progress, summary=summary)
            for i, c in enumerate(ctxs)]


def _refit_axes(client, ctxs: list[RunContext], token: str, resources: dict, progress: bool):
    """The axis fitted over z of every store (:func:`xrdct_dask.runs.refit.refit_axis`), and the
    slices it reopens computed again, as one graph: yields ``(tag, stage, result)``."""
    from xrdct_dask.runs.refit import refit_axis

    redo = {i: zs for i, c in enumerate(ctxs) if (zs := refit_axis(c))}
    if not redo:
        return
    items = []
    for i, zs in redo.items():
        st = store.task_state(ctxs[i].store_path)
        g = build_graph(ctxs[i], zs=zs, done=st, token=f"{token}{i}-axis", resources=resources)
        items += [(i, stage, d) for stage, ds in g.items() for d in ds]
    counts: dict[str, int] = {}
    for _, stage, _ in items:
        counts[stage] = counts.get(stage, 0) + 1
    if progress:
        console.info("axis fitted over z: %d slices redone with it", sum(len(v) for v in redo.values()))
    yield from compute_waves(client, [lambda: items], counts, progress, stores=[c.store_path for c in ctxs])


def compute_waves(client, wave_builders: list, totals: dict[str, int], progress: bool = True, stores=()):
    """Submit waves of ``(tag, stage, delayed)`` items, two in flight, and yield ``(tag, stage,
    result)`` as tasks finish, with one progress bar per stage (``totals``: tasks per stage).

    Each wave goes to the scheduler in one ``client.compute`` (no task's graph sent twice); its
    tasks carry their resource restrictions as annotations (:func:`xrdct_dask.pipeline.graph.build_graph`)."""


    queue = deque(wave_builders)
    meta: dict = {}
    inflight: list[set] = []
    ac = as_completed(loop=client.loop)  # the run's client is not the default one

    def submit():
        items = queue.popleft()()
        futures = client.compute([d for *_, d in items], optimize_graph=False) if items else []
        keys = set()
        for (tag, stage, _), f in zip(items, futures):
            meta[f.key] = (tag, stage, f)
            keys.add(f.key)
        ac.update(futures)
        inflight.append(keys)

    bar = None
    if progress:

        bar = Progress(TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        bars = {k: bar.add_task(k, total=v) for k, v in totals.items() if v}
        bar.start()
    try:
        while queue and len(inflight) < 2:
            submit()
        for fut in ac:
            tag, stage, _ = meta.pop(fut.key)
            if fut.status == "error":
                exc = fut.exception()
                if isinstance(exc, OSError):
                    raise RunStopped(stop_message(exc, fut.key, stores[tag] if stores else None)) from exc
                raise TaskFailed(f"task {fut.key} failed: {exc}") from exc
            yield tag, stage, fut.result()
            if bar is not None:
                bar.advance(bars[stage])
            for keys in inflight:
                keys.discard(fut.key)
            inflight[:] = [k for k in inflight if k]
            while queue and len(inflight) < 2:
                submit()
    except BaseException:
        client.cancel([f for *_, f in meta.values()])
        raise
    finally:
        if bar is not None:
            bar.stop()


def stop_message(exc: OSError, key, path) -> str:
    """The one line a run (batch or live) stops with when task ``key`` cannot write the store at
    ``path``: the cause, what is whole, and how to resume."""
    done = ""
    if path is not None:
        try:
            counts = store.task_state(path).counts()
            done = (f"; {sum(d for d, _ in counts.values())} of {sum(t for _, t in counts.values())} tasks are "
                    f"whole and marked done, nothing else is")
        except Exception:  # the store may be unreadable too
            pass
    return (f"the store cannot be written: {exc.strerror or exc} (task {key}){done}. Free space or fix the "
            f"store's permissions, then rerun the same command to resume")
