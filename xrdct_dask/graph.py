"""The run as one dask graph, slice by slice, from the stage table (:data:`xrdct_dask.stages.STAGES`).

    integrate (z, omega block) --> center (z) --> recon (z, q block) --> pdf-scale (z, voxel rows) --> pdf (z, voxel rows)

or, with ``pdf.order: pdf-then-recon``, a branch of the same graph:

    integrate --> pdf-frames (z, omega block) --> pdf-aux (z) --> pdf (z, r block)
    center (z) --> pdf-aux (z), pdf (z, r block)     (the G(r) sinograms use the slice's rotation axis)

Each arrow is a dependency inside the same graph: reconstruction of a slice starts as soon as its
frames are integrated, while other slices are still being integrated.  Task keys are
``(stage, z, start)``; tasks whose done-marker is set are left out, so a resumed run builds only
what is missing.  :func:`slice_tasks` is the one description of a slice's tasks: the graph is
built from it and the pending counts (waves, progress bars) are counted from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import stages, store
from .stages import RunContext


@dataclass(frozen=True)
class Ref:
    """An argument that is the result of another task of the same slice (by its key)."""

    key: tuple


@dataclass(frozen=True)
class Task:
    stage: str
    key: tuple  # (stage, z, start)
    fn: object
    args: tuple


def _pending(marks: np.ndarray | None, n: int) -> list[int]:
    return list(range(n)) if marks is None else [i for i in range(n) if not marks[i]]


def slice_tasks(ctx: RunContext, z: int, done: store.TaskState | None = None) -> list[Task]:
    """The tasks of slice ``z`` not yet done (all with ``done=None``), in dependency order."""
    wf = ctx.workflow
    s, lay = wf.scan, ctx.layout
    nq = ctx.extra.get("nq") or int(store.open_array(ctx.store_path, "q", "r").shape[0])
    out: list[Task] = []

    def add(stage: str, start: int, fn, *args) -> Ref:
        key = (stage, z, start)
        out.append(Task(stage, key, fn, args))
        return Ref(key)

    wc = lay.omega_chunk
    n_omega = -(-s.nomega // wc)
    integ = [add("integrate", i * wc, stages.integrate_block,
                 store.FrameBlock(z, i * wc, min((i + 1) * wc, s.nomega)), ctx)
             for i in _pending(None if done is None else done.integrate[z], n_omega)]
    # a resumed slice reuses the geometry its centre task recorded (centre, air columns, stripes,
    # shifts); a store without that record reuses its centre unless the slice also needs jitter
    # shifts or stripe columns
    reuse = not (wf.sinogram.jitter or wf.sinogram.stripes)
    stored = None
    if done is not None and not integ and np.isfinite(done.center[z]):
        from .centering import stored_geometry

        stored = stored_geometry(ctx.store_path, z)
    if stored is not None:
        center = stored
    elif done is not None and not integ and reuse and np.isfinite(done.center[z]):
        center = float(done.center[z])
    else:
        center = add("center", 0, stages.find_center, z, ctx, *integ)
    qc = lay.q_chunk
    recon = [add("recon", i * qc, stages.reconstruct_block, z, slice(i * qc, min((i + 1) * qc, nq)), center, ctx)
             for i in _pending(None if done is None else done.recon[z], -(-nq // qc))]
    if not wf.pdf.enabled:
        return out
    pdf_done = None if done is None or done.pdf is None else done.pdf[z]
    if wf.pdf.order == "recon-then-pdf":
        yc = lay.y_chunk
        rows = _pending(pdf_done, -(-s.nx // yc))
        if rows:  # the scale shares of every row block first (side by side), then the pending G blocks
            ys = [slice(a, min(a + yc, s.nx)) for a in range(0, s.nx, yc)]
            shares = [add("pdf-scale", y.start, stages.pdf_scale, z, y, ctx, *recon) for y in ys]
            for i in rows:
                add("pdf", i * yc, stages.pdf_rows, z, ys[i], ctx, *shares)
        return out
    # pdf-then-recon: transform every frame, reconstruct N + quality figures, then the G blocks;
    # the edge background needs the slice's first/last x steps of every angle (after the centre)
    nr = ctx.extra.get("nr") or stages.pdf_operator(ctx).r_A.size
    rc = lay.r_chunk
    blocks = _pending(pdf_done, -(-nr // rc))
    if not blocks:
        return out
    after = [center] if (wf.pdf.background == "edge" or not integ) else integ
    frames = [add("pdf-frames", i * wc, stages.pdf_frames_block,
                  store.FrameBlock(z, i * wc, min((i + 1) * wc, s.nomega)), ctx, *after) for i in range(n_omega)]
    aux = add("pdf-aux", 0, stages.reconstruct_pdf_aux, z, center, ctx, *frames)
    for i in blocks:
        add("pdf", i * rc, stages.reconstruct_pdf_block, z, slice(i * rc, min((i + 1) * rc, nr)), center, ctx, aux)
    return out


def timed(fn):
    """``fn`` whose result (a dict) also says when and where it ran: ``started``/``finished``
    (epoch seconds) and ``worker`` (the run report's stage spans and engine lines)."""
    def task(*args):
        started = time.time()
        out = fn(*args)
        return {"started": started, "finished": time.time(), "worker": stages.worker_address()} | out

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
    rerun) never share a key on a scheduler.  ``resources`` (:func:`xrdct_dask.cluster.stage_resources`)
    annotates each stage's tasks (``{"resources": {"GPU": 0.5}}``): the graph of a wave then goes to
    the scheduler in one submission, each task carrying its own restrictions."""
    import contextlib

    import dask

    sfx = f"-{token}" if token else ""
    out: dict[str, list] = {name: [] for name in stages.stage_names(ctx.workflow)}
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
