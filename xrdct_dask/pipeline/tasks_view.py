"""The view stage's task: the view copy of a slice (:mod:`xrdct_dask.store.viewcopy`), written after
its reconstruction and G(r), for ``xrdct view``."""

from __future__ import annotations

from xrdct_dask import store
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.task import SliceTasks
from xrdct_dask.store.viewcopy import write_view_copy


def write_view(z: int, ctx: RunContext, *deps) -> dict:
    """The view copy of slice ``z`` from its recon/ and pdf/ (``deps``: the slice's tasks writing
    them), then its done-marker."""
    out = write_view_copy(ctx.store_path, z)
    store.mark_done(ctx.store_path, "view", (z, 0))
    return out


def add_tasks(b: SliceTasks, st) -> None:
    """The view task of slice ``b.z`` while its copy is to write, after the slice's recon and G(r)
    tasks still to do."""
    for i in b.pending(st.name, 1):
        b.add(st.name, i, write_view, b.z, b.ctx, *b.deps(st))
