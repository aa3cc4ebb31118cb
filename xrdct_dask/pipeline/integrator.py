"""The integrator of a workflow: pyFAI's sparse matrix and corrections (from the plan cache) and the
engine that applies them, built once per process; on a dask worker it is owned by the
:class:`IntegratorPlugin`, which builds and warms it at the worker's start."""

from __future__ import annotations

import logging
import threading

from distributed import WorkerPlugin, get_worker

from xrdct_dask.config import Workflow
from xrdct_dask.errors import WorkflowError
from xrdct_dask.integrate import Integrator
from xrdct_dask.integrate.cache import cached_plan
from xrdct_dask.integrate.csr import load_image, load_poni
from xrdct_dask.io.images import combined_image
from xrdct_dask.pipeline.frames import frame_source

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# per-process state: integrators are expensive to build (pyFAI's CSR), cheap to reuse
# ------------------------------------------------------------------------------------------
_LOCK = threading.Lock()


# integrators of this process outside a dask worker (a worker's belong to its IntegratorPlugin)
_INTEGRATORS: dict[str, object] = {}


def _plan_inputs(wf: Workflow) -> tuple:

    i, g, p = wf.inputs, wf.geometry, wf.integrate
    ai = load_poni(i.poni)
    mask = load_image(i.mask) if i.mask else None
    if ai.detector.max_shape is not None:
        shape = tuple(ai.detector.max_shape)
    elif mask is not None:
        shape = mask.shape
    else:  # the frame shape is then known from neither (it was an AttributeError traceback)
        raise WorkflowError(f"inputs.poni: the detector of {i.poni} has no shape (max_shape) and there is no "
                            "inputs.mask: give either, to say the frames' size")
    options = {"mask": mask, "dark": combined_image(i.dark, "median") if i.dark else None,
               "flat": combined_image(i.flat, "mean") if i.flat else None, "polarization_factor": g.polarization_factor,
               "solid_angle": g.solid_angle, "split": p.split, "radial_range": p.radial_range,
               **({"npt_azim": p.npt_azim, "azimuth_range": p.chi_range} if p.npt_azim > 1 or p.azimuth_range else {})}
    return ai, shape, options


def plan_for(wf: Workflow, inputs: tuple | None = None):
    """The workflow's :class:`~xrdct_dask.integrate.IntegrationPlan` (pyFAI's sparse matrix and the
    corrections), from the plan cache (``compute.cache_dir``) when one of the same geometry, mask,
    dark, flat and bins was built before, else built and kept there: the client builds it once
    while preparing the store, and every worker of the run loads it."""

    ai, shape, options = inputs or _plan_inputs(wf)
    return cached_plan(ai, shape, wf.integrate.npt_rad, wf.integrate.unit, directory=wf.compute.cache_dir, **options)


def integrator_key(wf: Workflow) -> str:
    """What makes an integrator: the geometry files, the geometry and the integrate section."""
    return wf.model_dump_json(include={"inputs": {"poni", "mask", "dark", "flat"}, "geometry": True,
                                       "integrate": True})


def build_integrator(wf: Workflow):
    """A new :class:`~xrdct_dask.integrate.Integrator` of a workflow (its plan from :func:`plan_for`)."""

    p = wf.integrate
    inputs = _plan_inputs(wf)
    ai, shape, options = inputs
    integ = Integrator(ai, shape, p.npt_rad, p.unit, **options, error_model=p.error_model, outlier=p.outlier,
                       clip_threshold=p.clip_threshold, max_iter=p.max_iter, percentile=p.percentile,
                       engine=p.engine, plan=plan_for(wf, inputs), keep_sums=p.sums_kept)
    log.info("integrator ready: %d bins, %d nnz, engine %s", integ.plan.nbins, integ.plan.nnz, integ.engine)
    return integ


def integrator_for(wf: Workflow):
    """The :class:`~xrdct_dask.integrate.Integrator` of a workflow: on a dask worker the one its
    :class:`~xrdct_dask.pipeline.integrator.IntegratorPlugin` built at start-up (per-worker state lives in the
    plugin, freed at its teardown); elsewhere (a task run in this process) one built once per process."""
    key = integrator_key(wf)
    try:

        for plugin in get_worker().plugins.values():
            integ = getattr(plugin, "integrators", {}).get(key)
            if integ is not None:
                return integ
    except (ImportError, ValueError):  # not in a worker
        pass
    with _LOCK:
        integ = _INTEGRATORS.get(key)
        if integ is None:
            integ = _INTEGRATORS[key] = build_integrator(wf)
        return integ


def clear_integrators() -> None:
    with _LOCK:
        _INTEGRATORS.clear()


class IntegratorPlugin(WorkerPlugin):
    """Distributed worker plugin: builds the workflow's integrator once per worker at start-up
    (pyFAI's sparse matrix, corrections, engine buffers), frees it at teardown."""

    name = "xrdct-integrator"

    idempotent = False

    def __init__(self, workflow: Workflow, unique: bool = False, gpu_only: bool = False):
        self.workflow = workflow
        self.gpu_only = gpu_only  # integrate tasks need a GPU worker: the others need no integrator
        self.integrators: dict = {}  # this worker's, by integrator_key (engines, pinned buffers)
        if unique:  # several workflows in one graph: one plugin each
            self.name = f"xrdct-integrator-{workflow.digest()[:12]}"

    def setup(self, worker):
        if self.gpu_only and not dict(getattr(worker.state, "total_resources", {}) or {}).get("GPU"):
            return  # a CPU worker beside GPU workers: it runs no decode-integrate task
        integ = build_integrator(self.workflow)
        try:
            source = frame_source(self.workflow)
        except (OSError, ValueError) as err:  # not there yet: an Eiger master before its first data file (live mode)
            logging.getLogger("distributed.worker").info("xrdct: frames not readable yet (%s); warmed up without them",
                                                         err)
            source = None
        # kernels compiled, and on a GPU the buffers of every task thread allocated and used once
        integ.warm(source, int(getattr(worker.state, "nthreads", 2)), self.workflow.scan.nframes,
                   hdf5=self.workflow.frames_hdf5)
        self.integrators[integrator_key(self.workflow)] = integ
        # distributed's worker logger: this line lands in the worker's own log (a batch job's .err file)
        logging.getLogger("distributed.worker").info(
            "xrdct: integrate engine %s (resources %s)", integ.engine,
            dict(getattr(worker.state, "total_resources", {}) or {}))

    def teardown(self, worker):
        self.integrators.clear()
