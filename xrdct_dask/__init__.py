"""xrdct_dask: XRD-CT and PDF-CT reduction as one dask graph.

    frames (CBF) -> decode -> integrate (pyFAI geometry) -> reduced/ (zarr)
                 -> sinograms -> reconstruction per q -> recon/ -> G(r) per voxel -> pdf/

Entry points: :func:`run` (a workflow YAML or :class:`~xrdct_dask.config.workflow.Workflow`),
:func:`xrdct_dask.runs.live.watch` (follow an acquisition as it is written; :func:`~xrdct_dask.view.live.live_status`
and :func:`~xrdct_dask.view.live.live_figure` from a notebook), :class:`~xrdct_dask.runs.jobs.JobService` (the
``xrdct serve`` job interface), :class:`~xrdct_dask.integrate.Integrator`,
:func:`~xrdct_dask.io.read_frame`, ``xrdct_dask.view(store)`` (the viewer in a notebook), the ``xrdct`` CLI.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xrdct-dask")  # one source: pyproject.toml's [project] version
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

from xrdct_dask.config import Workflow, WorkflowError, load_workflow


def run(workflow, **kwargs):
    """Run a workflow and return the store path (see :func:`xrdct_dask.runs.execute.run`)."""
    # lazy: `import xrdct_dask` (and so --help) stays light: runs pulls in dask and zarr
    from xrdct_dask.runs.execute import run as _run

    return _run(workflow, **kwargs)


def __getattr__(name: str):
    # ``xrdct_dask.view(store)``: the viewer package (callable), imported when first asked for
    if name == "view":
        return importlib.import_module(".view", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Workflow", "WorkflowError", "load_workflow", "run", "view", "__version__"]
