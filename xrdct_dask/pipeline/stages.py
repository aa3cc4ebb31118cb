"""The stage table: every stage of a run defined once, and everything about stages derived from it.

A :class:`Stage` holds what one needs to know of a stage: how its tasks of a slice are laid out
(``add_tasks``, next to its task function in ``tasks_*.py``), what it waits for, what one task
covers, its done-marker, the store arrays it writes, the workflow keys whose change reruns it
(reprocess), and the memory a task holds and the bytes the stage reads (plan, budget).  The graph
(:mod:`xrdct_dask.pipeline.graph`), the task state and the store's markers
(:func:`marker_specs`), the plan (:mod:`xrdct_dask.runs.plan`), reprocess
(:mod:`xrdct_dask.runs.reprocess`), the frames read again on resume
(:func:`xrdct_dask.runs.open.reopen_retried`), the report and the cluster's resources all read
this table.  Adding a stage is one entry here plus its task function and ``add_tasks``.

Each stage's name is its task-key prefix (what the dashboard groups by), its progress bar, its
done-marker array ``tasks/<name>`` (where it has one) and its key in the run report.  Two entries
may share a name when their ``when`` never hold together (``pdf`` is voxel rows of G(r) after
the reconstruction, or r blocks of reconstructed G(r) sinograms before it).

    integrate (z, omega block) --> center (z) --> recon (z, q block)
        --> pdf-scale (z, voxel rows) --> pdf (z, voxel rows)
    integrate --> pdf-frames (z, omega block) --> pdf-aux (z) --> pdf (z, r block)   (pdf.order: pdf-then-recon)
    ... recon (z, sector x q block) --> texture (z, voxel rows)                       (integrate.npt_azim > 1)

With azimuthal sectors a recon task is one q block of one sector (its unit, "q block", counts
``npt_azim`` blocks per q block): a task holds what a 1D task holds, so the budget and the q
chunks stay those of 1D.  A q block covering every sector would instead shrink the q chunk by
``npt_azim`` to stay in the budget, and with it every chunk of ``reduced/`` (36 sectors: 36x the
chunk files, ~0.9e9 at 1000^3); one sector per task keeps ``reduced/`` at 36x the 1D files'
count (its chunks are those of 1D) and lets a slice's sectors reconstruct side by side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xrdct_dask import store
from xrdct_dask.config import Workflow
from xrdct_dask.pipeline import tasks_integrate, tasks_pdf, tasks_recon, tasks_texture, tasks_view
from xrdct_dask.pipeline.task import SliceTasks
from xrdct_dask.store import budget
from xrdct_dask.store.budget import Layout
from xrdct_dask.store.specs import MarkerSpec
from xrdct_dask.store.viewcopy import VIEW_ARRAYS, ViewLayout, has_view_copy, view_bytes, view_layout_for, view_parts


@dataclass(frozen=True)
class Sizes:
    """What a run's tasks are sized by: the scan, the radial and r bins, the store's blocks, the
    bytes of one frame as read and the channels of ``pdf/aux_sinogram`` (pdf-then-recon), the
    azimuthal sectors, whether the integrator's sums are kept and the texture reflections."""

    nz: int
    nomega: int
    nx: int
    nq: int
    nr: int
    layout: Layout
    frame_bytes: int = 0
    aux_channels: int = 0
    view: ViewLayout | None = None  # the view copy's sizes (view.write_copy)
    center_auto: bool = True  # the axis is found (sinogram.center: auto), not given
    nchi: int = 1
    sums: bool = False
    peaks: int = 0

    @property
    def frames(self) -> int:
        return self.nz * self.nomega * self.nx

    @property
    def bins(self) -> int:
        """Bins of one frame's pattern: sectors x q."""
        return self.nchi * self.nq

    @classmethod
    def of(cls, wf: Workflow, *, nq: int, nr: int, layout: Layout, frame_bytes: int = 0,
           aux_channels: int = 0) -> Sizes:
        s, i = wf.scan, wf.integrate
        return cls(s.nz, s.nomega, s.nx, nq, nr, layout, frame_bytes, aux_channels, view_layout_of(wf, layout, nq, nr),
                   wf.sinogram.center == "auto", nchi=i.npt_azim, sums=i.sums_kept, peaks=len(wf.texture.peaks))


def view_layout_of(wf: Workflow, layout: Layout, nq: int, nr: int) -> ViewLayout | None:
    """The :class:`~xrdct_dask.store.viewcopy.ViewLayout` of a new store of ``wf`` (None: ``view.write_copy`` off)."""
    return view_layout_for(wf, layout, nq, nr)


def _never(s: Sizes) -> int:
    return 0


def _always(wf: Workflow) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One stage of the graph (see the module docstring).

    ``unit``: what one task covers (``omega block``, ``slice``, ``q block``, ``voxel rows``,
    ``r block``); ``after``: the stages of the same slice whose tasks it waits for;
    ``marker``: ``"task"`` (``tasks/<name>`` has one element per task, named by ``marker_dim``),
    ``"value"`` (one number per slice, NaN until set) or None (no marker); ``writes``: the store
    arrays its tasks fill; ``reprocess``: the reprocess step it belongs to, rerun when a workflow
    key under ``keys`` changes; ``held``: bytes one task holds; ``read``: bytes the stage reads in
    a whole run; ``gpu``: it runs on the integration GPUs; ``when``: the workflows that have it;
    ``display``: it only writes a copy for looking at (the slice's results are final without it:
    live mode shows a slice once only such stages are left of it)."""

    name: str
    unit: str
    add_tasks: Callable[[SliceTasks, Stage], None]
    after: tuple[str, ...] = ()
    marker: str | None = None
    marker_dim: str = ""
    writes: tuple[str, ...] = ()
    reprocess: str = ""
    keys: tuple[str, ...] = ()
    held: Callable[[Sizes], int] = _never
    read: Callable[[Sizes], int] = _never
    gpu: bool = False
    when: Callable[[Workflow], bool] = _always
    marker_doc: tuple[str, str] = ("1", "")  # units and long name of its marker array
    display: bool = False

    def count(self, s: Sizes) -> int:
        """Tasks of this stage per slice."""
        lay = s.layout
        return {"omega block": math.ceil(s.nomega / lay.omega_chunk), "slice": 1,
                "q block": s.nchi * math.ceil(s.nq / lay.q_chunk), "voxel rows": math.ceil(s.nx / lay.y_chunk),
                "r block": math.ceil(max(s.nr, 1) / lay.r_chunk),
                "view part": len(view_parts(s.view)) if s.view else 1}[self.unit]


def _axis_read(s: Sizes) -> int:
    """What the centre reads to find the axis besides the q sum: the first omega chunk of every q
    bin (intensity, sigma) and the most structured q block of every projection (read as the whole q
    chunk holding it)."""
    wc, qc = s.layout.omega_chunk, s.layout.q_chunk
    return s.nz * (8 * min(wc, s.nomega) * s.nx * s.nq + 4 * s.nomega * s.nx * min(qc, s.nq))


_view = has_view_copy


def _texture(wf: Workflow) -> bool:
    """integrate.npt_azim > 1 with texture.peaks"""
    return wf.integrate.npt_azim > 1 and bool(wf.texture.peaks)


def _recon_then_pdf(wf: Workflow) -> bool:
    return wf.pdf.enabled and wf.pdf.order == "recon-then-pdf"


def _pdf_then_recon(wf: Workflow) -> bool:
    return wf.pdf.enabled and wf.pdf.order == "pdf-then-recon"


# the stage that reads the frames: a resumed run reads its blocks again where frames came late
FRAMES_STAGE = "integrate"
R, P = store.RECON, store.PDF
REDUCED_ARRAYS = tuple(f"{store.REDUCED}/{n}" for n in ("intensity", "sigma", "monitor", "total", "frame_ok",
                                                         "frame_status", *store.SUM_ARRAYS))
TEXTURE_ARRAYS = tuple(f"{store.TEXTURE}/{n}" for n in (*store.TEXTURE_VOXEL, *store.TEXTURE_SECTOR))
PDF_FIGURES = tuple(f"{P}/{n}" for n in (*store.PDF_VOXEL_FIGURES, "ok"))

# The table, in dependency order.  Keys are dotted workflow prefixes, checked in table order.
STAGES: list[Stage] = [
    Stage(FRAMES_STAGE, "omega block", tasks_integrate.add_tasks, marker="task", marker_dim="omega_block",
          writes=REDUCED_ARRAYS, reprocess="integrate", gpu=True,
          marker_doc=("1", "1 = this block of reduced/ is completely written"),
          keys=("store.omega_chunk", "store.q_chunk", "inputs", "scan", "geometry", "integrate"),
          held=lambda s: budget.integrate_bytes(s.layout.omega_chunk * s.nx, s.bins, s.frame_bytes, sums=s.sums),
          read=lambda s: s.frames * s.frame_bytes),
    Stage("center", "slice", tasks_recon.add_center_tasks, after=("integrate",), marker="value",
          writes=(f"{R}/slice_info", f"{R}/mu"), reprocess="recon", keys=("sinogram",),
          marker_doc=("pixel", "rotation axis of the slice (NaN: not yet found)"),
          held=lambda s: budget.center_bytes(s.nomega, s.nx, *((s.layout.q_sub, s.layout.omega_chunk, s.nq)
                                                                if s.center_auto else ())),
          read=lambda s: s.frames * 5 + (_axis_read(s) if s.center_auto else 0)),  # total f32 + frame_ok
    Stage("recon", "q block", tasks_recon.add_recon_tasks, after=("center",), marker="task", marker_dim="q_block",
          writes=(f"{R}/intensity", f"{R}/air_model"), reprocess="recon", keys=("recon",),
          marker_doc=("1", "1 = this q block of recon/ is completely written"),
          held=lambda s: budget.recon_bytes(s.nomega, s.nx, s.layout.q_chunk, s.layout.q_sub),
          read=lambda s: s.frames * (4 * s.bins + 1)),
    # sectors: each reflection's intensity, position, d and strain per voxel and sector (its q window)
    Stage("texture", "voxel rows", tasks_texture.add_tasks, after=("recon",), marker="task", marker_dim="texture_block",
          writes=TEXTURE_ARRAYS, reprocess="texture", keys=("texture",), when=_texture,
          marker_doc=("1", "1 = this block of voxel rows of texture/ is completely written"),
          held=lambda s: budget.texture_bytes(s.layout.y_chunk, s.nx, s.nchi, s.peaks),
          read=lambda s: s.nz * s.nx * s.nx * s.nchi * s.peaks * budget.TEXTURE_WINDOW_BINS * 4),
    # recon-then-pdf: each row block's share of the edge background and the largest scale, then G(r)
    Stage("pdf-scale", "voxel rows", tasks_pdf.add_scale_tasks, after=("recon",), reprocess="pdf", keys=("pdf",),
          when=_recon_then_pdf, held=lambda s: budget.pdf_scale_bytes(s.layout.y_chunk, s.nx, s.nq),
          read=lambda s: s.nz * s.nx * s.nx * s.nq * 4),
    Stage("pdf", "voxel rows", tasks_pdf.add_rows_tasks, after=("pdf-scale",), marker="task", marker_dim="pdf_block",
          writes=(f"{P}/G", *PDF_FIGURES), reprocess="pdf", keys=("pdf",), when=_recon_then_pdf,
          marker_doc=("1", "1 = this block of voxel rows of pdf/ is completely written"),
          held=lambda s: budget.pdf_bytes(s.layout.y_chunk, s.nx, s.nq, s.nr),
          read=lambda s: s.nz * s.nx * s.nx * s.nq * 4),
    # pdf-then-recon: G(r) of every frame, N and the figures reconstructed, then the G(r) blocks
    Stage("pdf-frames", "omega block", tasks_pdf.add_frames_tasks, after=("integrate", "center"),
          writes=(f"{P}/G_sinogram", f"{P}/aux_sinogram"), reprocess="pdf", keys=("pdf",), when=_pdf_then_recon,
          held=lambda s: budget.pdf_frames_bytes(s.layout.omega_chunk * s.nx, s.nq, s.nr),
          read=lambda s: s.frames * s.nq * 4),
    Stage("pdf-aux", "slice", tasks_pdf.add_aux_tasks, after=("pdf-frames", "center"), writes=PDF_FIGURES,
          reprocess="pdf", keys=("pdf",), when=_pdf_then_recon,
          held=lambda s: budget.recon_bytes(s.nomega, s.nx, s.aux_channels, s.layout.q_sub),
          read=lambda s: s.frames * s.aux_channels * 4),
    Stage("pdf", "r block", tasks_pdf.add_blocks_tasks, after=("pdf-aux", "center"), marker="task",
          marker_dim="pdf_block", writes=(f"{P}/G",), reprocess="pdf", keys=("pdf",), when=_pdf_then_recon,
          marker_doc=("1", "1 = this r block of pdf/G is completely written"),
          # the reconstruction of an r block, and its rescaled copy
          held=lambda s: budget.recon_bytes(s.nomega, s.nx, s.layout.r_chunk, s.layout.q_sub)
          + 4 * s.nx * s.nx * s.layout.r_chunk,
          read=lambda s: s.frames * s.nr * 4),
    # the view copy of the slice, after its reconstruction and G(r) (rebuilt by a reprocess, never shared)
    Stage("view", "view part", tasks_view.add_tasks, after=("recon", "pdf"), marker="task", marker_dim="view_part",
          writes=VIEW_ARRAYS, reprocess="pdf", keys=("view",), when=_view, display=True,
          marker_doc=("1", "1 = this part of the slice's view copy (a shard of view/recon or view/g, or the "
                                "sinogram) is completely written"),
          held=lambda s: view_bytes(s.view, s.layout.y_chunk, s.layout.omega_chunk) if s.view else 0,
          read=lambda s: s.nz * s.nx * s.nx * (s.nq + s.nr) * 4 + s.frames * s.nq * 4),  # recon/, pdf/G, reduced/
]


def stages_of(wf: Workflow) -> list[Stage]:
    """The stages of a workflow's graph, in dependency order."""
    return [st for st in STAGES if st.when(wf)]


def stage_names(wf: Workflow) -> list[str]:
    return [st.name for st in stages_of(wf)]


def stage_of(wf: Workflow, name: str) -> Stage:
    """The stage ``name`` of ``wf``'s graph."""
    for st in stages_of(wf):
        if st.name == name:
            return st
    raise KeyError(f"{name}: not a stage of this workflow ({', '.join(stage_names(wf))})")


def tasks_per_slice(wf: Workflow, sizes: Sizes) -> dict[str, int]:
    """``{stage: tasks}`` of one slice with nothing done (what :func:`xrdct_dask.pipeline.graph.build_graph` builds)."""
    return {st.name: st.count(sizes) for st in stages_of(wf)}


def marker_specs(wf: Workflow, sizes: Sizes) -> list[MarkerSpec]:
    """The done-markers of ``wf``'s stages, as a new store gets them (:func:`xrdct_dask.store.layout.create_store`)."""
    return [MarkerSpec(st.name, st.count(sizes), st.marker_dim, st.marker == "value", *st.marker_doc)
            for st in stages_of(wf) if st.marker]


def downstream(wf: Workflow, name: str) -> list[Stage]:
    """The stages of ``wf`` that wait, directly or through others, for stage ``name``."""
    found = {name}
    out = []
    for st in stages_of(wf):
        if found & set(st.after):
            found.add(st.name)
            out.append(st)
    return out


def reprocess_steps() -> list[str]:
    """The reprocess steps in run order (the stages' ``reprocess``, each once)."""
    return list(dict.fromkeys(st.reprocess for st in STAGES))


def step_of_key(key: str) -> str | None:
    """The first reprocess step whose output a change of the dotted workflow ``key`` changes (None: none)."""
    for st in STAGES:
        for prefix in st.keys:
            if key == prefix or key.startswith(prefix + "."):
                return st.reprocess
    return None


def writer_of(array: str) -> str:
    """The stage whose tasks write store array ``array`` (``"recon/intensity"``)."""
    return next(st.name for st in STAGES if array in st.writes)


def before_step(wf: Workflow, step: str) -> list[Stage]:
    """The stages of ``wf`` that run before reprocess step ``step`` (their output is kept)."""
    steps = reprocess_steps()
    return [st for st in stages_of(wf) if steps.index(st.reprocess) < steps.index(step)]


def reopen_slice(path, wf: Workflow, z: int, name: str) -> None:
    """Clear the done-markers of slice ``z`` of stage ``name`` and of every stage made from it (a
    value marker back to NaN): a resumed run redoes them."""
    for st in [stage_of(wf, name), *downstream(wf, name)]:
        if st.marker:
            store.mark_done(path, st.name, (int(z),), np.nan if st.marker == "value" else 0)
