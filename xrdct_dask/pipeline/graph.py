"""The run as one dask graph, slice by slice, from the stage table (:data:`xrdct_dask.pipeline.stages.STAGES`).

Each dependency is a dependency inside the same graph: reconstruction of a slice starts as soon as its
frames are integrated, while other slices are still being integrated.  Task keys are
``(stage, z, start)``; tasks whose done-marker is set are left out, so a resumed run builds only
what is missing.  :func:`slice_tasks` is the one description of a slice's tasks: the graph is
built from it and the pending counts (waves, progress bars) are counted from it.
"""

from __future__ import annotations

import contextlib
import time

import dask

from xrdct_dask import store
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.stages import stage_names, stages_of
from xrdct_dask.pipeline.task import Ref, SliceTasks, Task
from xrdct_dask.pipeline.tasks_integrate import worker_address


def slice_tasks(ctx: RunContext, z: int, done: store.TaskState | None = None) -> list[Task]:
    """The tasks of slice ``z`` not yet done (all with ``done=None``), in dependency order: each
    stage of the table lays out its own (:attr:`~xrdct_dask.pipeline.stages.Stage.add_tasks`)."""
    b = SliceTasks(ctx, z, done)
    for st in stages_of(ctx.workflow):
        if st.marker and done is not None and st.name not in done:
            continue  # a store made before this stage existed (or without it): it has no output for it
        st.add_tasks(b, st)
    return b.tasks


def timed(fn):
    """``fn`` whose result (a dict) also says when and where it ran: ``started``/``finished``
    (epoch seconds), ``worker`` (the run report's stage spans and engine lines) and, where the
    task does not say, ``seconds``."""
    def task(*args):
        started = time.time()
        out = fn(*args)
        finished = time.time()
        timing = {"started": started, "finished": finished, "worker": worker_address(), "seconds": finished - started}
        return timing | out

    task.__name__ = task.__qualname__ = getattr(fn, "__name__", "task")
    return task


def pending_by_stage(ctx: RunContext, done: store.TaskState | None) -> list[dict[str, int]]:
    """Per slice, ``{stage: tasks}`` that :func:`build_graph` builds from these markers."""
    counts = []
    for z in range(ctx.workflow.scan.nz):
        d: dict[str, int] = {}
        for t in slice_tasks(ctx, z, done):
            d[t.stage] = d.get(t.stage, 0) + 1
        counts.append(d)
    return counts


def build_graph(ctx: RunContext, zs=None, done: store.TaskState | None = None, token: str = "",
                resources: dict[str, dict] | None = None) -> dict:
    """The run (or slices ``zs`` of it) as dask delayed objects, keyed by stage: ``{stage: [delayed, ...]}``
    in dependency order.  ``token`` suffixes the stage names of the keys so that several runs (or a
    rerun) never share a key on a scheduler.  ``resources`` (:func:`xrdct_dask.cluster.local.stage_resources`)
    annotates each stage's tasks (``{"resources": {"GPU": 0.5}}``): the graph of a wave then goes to
    the scheduler in one submission, each task carrying its own restrictions."""


    sfx = f"-{token}" if token else ""
    out: dict[str, list] = {name: [] for name in stage_names(ctx.workflow)}
    for z in range(ctx.workflow.scan.nz) if zs is None else zs:
        made: dict[tuple, object] = {}
        for t in slice_tasks(ctx, z, done):
            args = tuple(made[a.key] if isinstance(a, Ref) else a for a in t.args)
            ann = (resources or {}).get(t.stage) or {}
            with dask.annotate(**ann) if ann else contextlib.nullcontext():
                d = dask.delayed(timed(t.fn), pure=False)(*args, dask_key_name=(t.key[0] + sfx,) + t.key[1:])
            made[t.key] = d
            out[t.stage].append(d)
    return out
