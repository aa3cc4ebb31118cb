"""The stages of the graph, in one table, and their tasks: plain functions on one block.

Each stage's name is its task-key prefix (what the dashboard groups by), its progress bar, its
done-marker array ``tasks/<name>`` (where it has one) and its key in the run report; the table
says what one task covers, so that the graph (:mod:`xrdct_dask.pipeline.graph`), the plan
(:mod:`xrdct_dask.run.plan`), the task state (:mod:`xrdct_dask.store`), the report and reprocess count
the same tasks.  The tasks only wire the library (io, integrate, sinogram, recon, pdf) to the
store: every task takes a :class:`RunContext` (small, picklable), reads and writes its own
chunk-aligned regions, sets its done-marker last and returns a small dict for the run report.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from xrdct_dask import store
from xrdct_dask.config import Workflow
from xrdct_dask.store.budget import Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage of the graph.

    ``unit``: what one task covers (``omega block``, ``slice``, ``q block``, ``voxel rows``,
    ``r block``); ``marker``: whether ``tasks/<name>`` records its tasks (one element each);
    ``writes``: the store group it fills; ``reprocess``: the reprocess stage it belongs to (a
    change of a key of that stage reruns it); ``gpu``: it runs on the integration GPUs."""

    name: str
    unit: str
    marker: bool
    writes: str | None
    reprocess: str
    gpu: bool = False


STAGES = {s.name: s for s in (
    Stage("integrate", "omega block", True, store.REDUCED, "integrate", gpu=True),
    Stage("center", "slice", True, None, "recon"),
    Stage("recon", "q block", True, store.RECON, "recon"),
    Stage("pdf-scale", "voxel rows", False, None, "pdf"),   # recon-then-pdf: shares of the background and scale
    Stage("pdf-frames", "omega block", False, store.PDF, "pdf"),  # pdf-then-recon: G(r) of every frame
    Stage("pdf-aux", "slice", False, store.PDF, "pdf"),     # pdf-then-recon: N and figures reconstructed
    Stage("pdf", "voxel rows", True, store.PDF, "pdf"),     # recon-then-pdf; pdf-then-recon: "r block"
)}


REPROCESS_STAGES = ("integrate", "recon", "pdf")


def stage_names(wf: Workflow) -> list[str]:
    """The stages of a workflow's graph, in dependency order."""
    names = ["integrate", "center", "recon"]
    if wf.pdf.enabled:
        names += ["pdf-scale", "pdf"] if wf.pdf.order == "recon-then-pdf" else ["pdf-frames", "pdf-aux", "pdf"]
    return names


def unit_count(unit: str, *, nomega: int, nx: int, nq: int, nr: int, layout: Layout) -> int:
    """Tasks per slice of a stage covering ``unit``."""
    return {"omega block": math.ceil(nomega / layout.omega_chunk), "slice": 1,
            "q block": math.ceil(nq / layout.q_chunk), "voxel rows": math.ceil(nx / layout.y_chunk),
            "r block": math.ceil(max(nr, 1) / layout.r_chunk)}[unit]


def pdf_unit(wf: Workflow) -> str:
    return "voxel rows" if wf.pdf.order == "recon-then-pdf" else "r block"


def tasks_per_slice(wf: Workflow, *, nq: int, nr: int, layout: Layout) -> dict[str, int]:
    """``{stage: tasks}`` of one slice with nothing done (what :func:`xrdct_dask.pipeline.graph.build_graph` builds)."""
    s = wf.scan
    out = {}
    for name in stage_names(wf):
        unit = pdf_unit(wf) if name == "pdf" else STAGES[name].unit
        out[name] = unit_count(unit, nomega=s.nomega, nx=s.nx, nq=nq, nr=nr, layout=layout)
    return out
