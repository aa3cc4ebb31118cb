"""The view stage's tasks: the view copy of a slice (:mod:`xrdct_dask.store.viewcopy`), written
after its reconstruction and G(r), for ``xrdct view``: a task per shard of ``view/recon`` and
``view/g`` and one for the sinogram (:func:`~xrdct_dask.store.viewcopy.view_parts`), so that a
slice's copy is written by as many workers as there are shards, off the run's critical path."""

from __future__ import annotations

from xrdct_dask import store
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.task import SliceTasks
from xrdct_dask.pipeline.tasks_pdf import pdf_points
from xrdct_dask.store.viewcopy import has_copy, layout_of, view_layout_for, view_parts, write_view_part


def write_view(z: int, part: int, ctx: RunContext, *deps) -> dict:
    """Part ``part`` of the view copy of slice ``z`` from its recon/ and pdf/ (``deps``: the
    slice's tasks writing them), then its done-marker."""
    out = write_view_part(ctx.store_path, z, part)
    store.mark_done(ctx.store_path, "view", (z, part))
    return out


def parts(b: SliceTasks) -> int:
    """The view tasks of a slice: from the store's own copy layout (a resumed run keeps the
    layout its store was made with), else (``xrdct plan --graph``, no store) from the workflow.
    Looked up once per run (kept in ``ctx.extra``)."""
    n = b.ctx.extra.get("view_parts")
    if n is None:
        wf = b.ctx.workflow
        vl = (layout_of(b.ctx.store_path) if has_copy(b.ctx.store_path)
              else view_layout_for(wf, b.ctx.layout, b.nq, pdf_points(b) if wf.pdf.enabled else 0))
        # the stage table adds view tasks only when has_view_copy(wf), where the layout is never None
        assert vl is not None, "view tasks of a workflow that writes no view copy"
        n = b.ctx.extra["view_parts"] = len(view_parts(vl))
    return n


def add_tasks(b: SliceTasks, st) -> None:
    """The view tasks of slice ``b.z`` whose part is still to write, after the slice's recon and
    G(r) tasks still to do."""
    for i in b.pending(st.name, parts(b)):
        b.add(st.name, i, write_view, b.z, i, b.ctx, *b.deps(st))
