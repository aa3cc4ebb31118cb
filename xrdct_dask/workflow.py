"""Run a workflow: check inputs, create the store, build ONE dask graph, compute it with progress.

    decode-integrate (z, omega block) --> sinogram (z) --> recon (z, q block) --> pdf (z)

Each arrow is a dependency inside the same graph: reconstruction of a slice starts as soon as
its frames are integrated, while other slices are still being integrated.  Task keys start with
the stage name (``("recon", z, q0)``), which is what the dask dashboard groups and colours by.
Where workers advertise a ``GPU`` resource (GPU profiles in ``cluster/``), the GPU stages
(:data:`GPU_STAGES`) ask for one, so a GPU runs one such task at a time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import stages, store
from .config import Workflow, WorkflowError, load_workflow
from .io.cbf import CorruptFrameError, read_cbf_payload

log = logging.getLogger(__name__)

#: stages whose engine may run on a GPU; a stage asks for the worker resource GPU=1 only when the
#: cluster offers it (see gpu_resources), so CPU-only clusters run the same graph unannotated
GPU_STAGES = ("decode-integrate",)


def check_inputs(wf: Workflow):
    """Fail fast, before any compute, with one line naming the problem.

    Returns ``(ai, frame_shape)``.
    """
    from .integrate.csr import load_image, load_poni

    first = wf.frame_path(0)
    if not first.parent.is_dir():
        raise WorkflowError(f"inputs.frames: folder {first.parent} does not exist")
    if not first.is_file():
        raise WorkflowError(f"inputs.frames: first frame {first} not found")
    try:
        shape = read_cbf_payload(first).shape
    except CorruptFrameError as err:
        raise WorkflowError(f"inputs.frames: {err}") from None
    try:
        ai = load_poni(wf.inputs.poni)
    except (FileNotFoundError, ValueError) as err:
        raise WorkflowError(f"inputs.poni: {err}") from None
    det_shape = ai.detector.max_shape
    if det_shape is not None and tuple(det_shape) != tuple(shape):
        raise WorkflowError(f"inputs.poni: the PONI's detector is {det_shape[0]} x {det_shape[1]} pixels but the "
                            f"frames are {shape[0]} x {shape[1]}")
    if ai.wavelength is None and wf.integrate.unit != "2th_deg":
        raise WorkflowError("inputs.poni: no wavelength in the PONI, needed for q units")
    for key in ("mask", "dark", "flat"):
        p = getattr(wf.inputs, key)
        if p is None:
            continue
        if not Path(p).is_file():
            raise WorkflowError(f"inputs.{key}: {p} not found")
        try:
            img = load_image(p)
        except Exception as err:
            raise WorkflowError(f"inputs.{key}: {p} is not a readable image ({err})") from None
        if img.shape != tuple(shape):
            raise WorkflowError(f"inputs.{key}: {p} is {img.shape[0]} x {img.shape[1]} but the frames are "
                                f"{shape[0]} x {shape[1]}")
    for key in ("monitor", "scan_file"):
        p = getattr(wf.inputs, key)
        if p is not None and not Path(p).is_file():
            raise WorkflowError(f"inputs.{key}: {p} not found")
    return ai, shape


def prepare_store(wf: Workflow, ai, overwrite: bool | None = None):
    """Create the store template, fill the monitor, and return the :class:`stages.RunContext`."""
    from .io.scan import grid_index, read_monitor, read_scan_file
    from .pdf import PDFParameterError, operator_for

    s = wf.scan
    integ = stages.integrator_for(wf)
    radial = integ.radial
    wavelength_A = (ai.wavelength or 0) * 1e10
    r_A = None
    if wf.pdf.enabled:
        try:
            op = operator_for(stages.radial_to_q_A(radial, wf.integrate.unit, wavelength_A), wf.pdf)
        except PDFParameterError as err:
            raise WorkflowError(str(err)) from None
        r_A = op.r_A
    omega = np.arange(s.nomega) * (s.omega_range_deg / s.nomega)
    path = Path(wf.store.path)
    if wf.inputs.scan_file is not None:
        grid, dup = read_scan_file(wf.inputs.scan_file, s.nz, s.nomega, s.nx)
        if dup.any():
            log.warning("%s: %d scan points recorded twice; the last record is used", wf.inputs.scan_file, dup.sum())
    else:
        iz, iw, ix = np.meshgrid(np.arange(s.nz), np.arange(s.nomega), np.arange(s.nx), indexing="ij")
        grid = grid_index(iz, iw, ix, s.nomega, s.nx, s.fast_axis, s.order)
    if wf.inputs.monitor is not None:
        mon = read_monitor(wf.inputs.monitor, s.nframes if wf.inputs.scan_file is None else int(grid.max()) + 1)
        monitor = np.where(grid >= 0, mon[np.clip(grid, 0, None)], np.nan)
    else:
        monitor = np.ones(grid.shape)
    good = np.isfinite(monitor) & (monitor > 0)
    reference = float(np.median(monitor[good])) if good.any() else 1.0
    attrs = {
        "workflow": wf.model_dump(mode="json"),
        "workflow_yaml": wf.to_yaml(),
        "workflow_digest": wf.digest(),
        "versions": store.versions(),
        "input_digest": store.input_digest([wf.frame_path(i) for i in range(min(s.nframes, 100_000))]),
        "engine": integ.engine,
        "monitor_reference": reference,
        "wavelength_angstrom": wavelength_A,
        "poni": {k: v for k, v in ai.get_config().items() if k != "detector_config"} | {"detector": ai.detector.name},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    store.create_store(path, nz=s.nz, nomega=s.nomega, nx=s.nx, radial=radial, radial_unit=wf.integrate.unit,
                       omega_deg=omega, x_mm=np.arange(s.nx) * s.x_step_mm, z_mm=np.arange(s.nz) * s.z_step_mm,
                       r_A=r_A, omega_chunk=wf.store.omega_chunk, q_chunk=wf.store.q_chunk, attrs=attrs,
                       overwrite=wf.store.overwrite if overwrite is None else overwrite)
    store.open_array(path, f"{store.REDUCED}/monitor")[...] = monitor.astype(np.float32)
    store.open_array(path, f"{store.REDUCED}/frame_index")[...] = grid
    return stages.RunContext(workflow=wf, store_path=path, monitor_reference=reference, wavelength_A=wavelength_A)


def build_graph(ctx: stages.RunContext, resources: dict | None = None) -> dict:
    """The whole run as dask delayed objects, keyed by stage: ``{stage: [delayed, ...]}``.

    ``resources``: ``{stage: {"GPU": 1}}``, worker resources a stage's tasks ask for.
    """
    import contextlib

    import dask

    def needs(stage):
        r = (resources or {}).get(stage)
        return dask.annotate(resources=r) if r else contextlib.nullcontext()

    wf = ctx.workflow
    s = wf.scan
    nq = stages.integrator_for(wf).plan.nbins
    blocks = store.frame_blocks(s.nz, s.nomega, wf.store.omega_chunk)
    with needs("decode-integrate"):
        integ = {b: dask.delayed(stages.integrate_block, pure=False)(b, ctx, dask_key_name=b.key) for b in blocks}
    centers, recons, pdfs = {}, [], []
    for z in range(s.nz):
        deps = [d for b, d in integ.items() if b.z == z]
        centers[z] = dask.delayed(stages.find_center, pure=False)(z, ctx, *deps, dask_key_name=("sinogram", z))
        with needs("recon"):
            rz = [dask.delayed(stages.reconstruct_block, pure=False)(z, qs, centers[z], ctx,
                                                                      dask_key_name=("recon", z, qs.start))
                  for qs in store.q_blocks(nq, wf.store.q_chunk)]
        recons += rz
        if wf.pdf.enabled:
            with needs("pdf"):
                pdfs.append(dask.delayed(stages.pdf_slice, pure=False)(z, ctx, *rz, dask_key_name=("pdf", z)))
    return {"decode-integrate": list(integ.values()), "sinogram": list(centers.values()), "recon": recons,
            "pdf": pdfs}


def _worker_plugin_base():
    from distributed.diagnostics.plugin import WorkerPlugin

    return WorkerPlugin


class IntegratorPlugin(_worker_plugin_base()):
    """Distributed worker plugin: builds the workflow's integrator once per worker at start-up
    (pyFAI's sparse matrix, corrections, engine buffers), frees it at teardown."""

    name = "xrdct-integrator"

    idempotent = False

    def __init__(self, workflow: Workflow):
        self.workflow = workflow

    def setup(self, worker):
        integ = stages.integrator_for(self.workflow)
        # distributed's worker logger: this line lands in the worker's own log (a batch job's .err file)
        logging.getLogger("distributed.worker").info(
            "xrdct: decode-integrate engine %s (resources %s)", integ.engine,
            dict(getattr(worker.state, "total_resources", {}) or {}))

    def teardown(self, worker):
        stages.clear_integrators()


def _client(wf: Workflow, scheduler_address: str | None, cluster=None, jobs: int | None = None,
            adaptive: bool | None = None, cluster_options: dict | None = None):
    """``(client, cluster started here or None)``: a given cluster object, a running scheduler, a
    cluster profile (``cluster`` as a name/path, or ``compute.cluster``), or a LocalCluster."""
    from distributed import Client, LocalCluster

    if cluster is not None and not isinstance(cluster, (str, Path)):
        return Client(cluster), None
    if scheduler_address:
        return Client(scheduler_address), None
    c = wf.compute
    profile = cluster if cluster is not None else c.cluster
    if profile is not None:
        from .cluster import describe, make_cluster

        jc = make_cluster(profile, **(cluster_options or {}))
        n = jobs or c.jobs
        if c.adaptive if adaptive is None else adaptive:
            jc.adapt(minimum_jobs=0, maximum_jobs=n)
            log.info("cluster %s: adaptive, 0..%d jobs of %s", profile, n, describe(jc))
        else:
            jc.scale(jobs=n)
            log.info("cluster %s: %d jobs of %s", profile, n, describe(jc))
        return Client(jc), jc
    import os

    ncores = os.cpu_count() or 1
    nworkers = c.n_workers or max(1, ncores // c.threads_per_worker)
    lc = LocalCluster(n_workers=nworkers, threads_per_worker=c.threads_per_worker, memory_limit=c.memory_limit,
                      dashboard_address=c.dashboard_address, host="127.0.0.1")
    return Client(lc), lc


def gpu_resources(client, wf: Workflow, cluster=None) -> dict:
    """``{stage: {"GPU": 1}}`` for the :data:`GPU_STAGES` when the cluster offers a GPU resource.

    A dask-jobqueue cluster says what its (maybe not yet started) workers will advertise; any
    other cluster or scheduler is asked about the workers connected now.  No GPU anywhere: ``{}``,
    and the graph runs unannotated, as on a laptop.
    """
    from .cluster import declared_resources

    declared = declared_resources(cluster) if cluster is not None else None
    if declared is None:
        workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
        offered = any((w.get("resources") or {}).get("GPU", 0) > 0 for w in workers)
    else:
        offered = declared.get("GPU", 0) > 0
    if not offered:
        return {}
    wanted = [st for st in GPU_STAGES if not (st == "decode-integrate" and wf.integrate.engine == "numpy")]
    return {st: {"GPU": 1} for st in wanted}


def engine_report(placement: dict, engine_of: dict) -> list[str]:
    """Which engine ran where, one line per engine.

    ``placement``: ``{key: [worker address, ...]}`` (``Client.who_has``); ``engine_of``:
    ``{key: engine}``.  Returns e.g. ``["engine numpy: 12 tasks on 2 workers (host-a x2)"]``.
    """
    from collections import Counter, defaultdict

    from distributed.comm.addressing import get_address_host

    tasks: Counter = Counter()
    workers: dict[str, set] = defaultdict(set)
    for key, engine in engine_of.items():
        tasks[engine] += 1
        for addr in placement.get(key, ())[:1]:
            workers[engine].add(addr)
    lines = []
    for engine in sorted(tasks):
        hosts = Counter(get_address_host(a) for a in workers[engine])
        where = ", ".join(f"{h} x{n}" if n > 1 else h for h, n in sorted(hosts.items())) or "unknown workers"
        lines.append(f"engine {engine}: {tasks[engine]} decode-integrate tasks on {len(workers[engine])} "
                     f"worker(s) ({where})")
    return lines


def compute_with_progress(client, graph: dict, progress: bool = True) -> dict:
    """Submit every stage's tasks and wait, showing one progress bar per stage.

    Returns ``{stage: [result, ...]}``; a failing task raises here with its key in the message.
    """
    from distributed import as_completed

    order = [k for k in graph if graph[k]]
    flat = [d for k in order for d in graph[k]]
    futures = client.compute(flat)
    stage_of = {}
    i = 0
    for k in order:
        for f in futures[i:i + len(graph[k])]:
            stage_of[f.key] = k
        i += len(graph[k])
    results: dict[str, list] = {k: [] for k in order}
    engine_of = {}
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        tasks = {k: bar.add_task(k, total=len(graph[k])) for k in order}
        bar.start()
    try:
        for fut in as_completed(futures):
            k = stage_of[fut.key]
            if fut.status == "error":
                exc = fut.exception()
                raise RuntimeError(f"task {fut.key} failed: {exc}") from exc
            res = fut.result()
            results[k].append(res)
            if isinstance(res, dict) and "engine" in res:
                engine_of[fut.key] = res["engine"]
            if bar is not None:
                bar.advance(tasks[k])
    finally:
        if bar is not None:
            bar.stop()
    if engine_of:
        for line in engine_report(client.who_has([f for f in futures if f.key in engine_of]), engine_of):
            log.info("%s", line)
            if progress:
                print(line)
    return results


def run(workflow: Workflow | str | Path, *, overrides: dict | None = None, scheduler_address: str | None = None,
        cluster=None, jobs: int | None = None, adaptive: bool | None = None, cluster_options: dict | None = None,
        progress: bool = True, summary: bool = True) -> Path:
    """Run a whole workflow (integrate -> reconstruct -> PDF) and return the store path.

    ``workflow`` is a :class:`Workflow` or the path of its YAML file.  Where it runs:
    ``cluster`` a dask cluster object (used as is), or a cluster profile name/path
    (``cluster/slurm-gpu.yaml``: started with ``jobs`` jobs, or adaptively up to ``jobs``, with
    ``cluster_options`` overriding the profile's keys, and closed after); else
    ``scheduler_address`` (a running scheduler); else ``compute.cluster`` of the workflow; else a
    LocalCluster started for the run and closed after.
    """
    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow, overrides)
    if overrides and isinstance(workflow, Workflow):
        from .config import workflow_from_dict

        wf = workflow_from_dict(wf.model_dump(mode="json"), overrides=overrides)
    ai, _ = check_inputs(wf)
    profile = cluster if isinstance(cluster, (str, Path)) else (
        wf.compute.cluster if cluster is None and not scheduler_address else None)
    if profile is not None:  # a broken cluster profile fails here, before the store is created
        from .cluster import load_profile

        load_profile(profile, **(cluster_options or {}))
    t0 = time.perf_counter()
    ctx = prepare_store(wf, ai)
    client, local = _client(wf, scheduler_address, cluster, jobs=jobs, adaptive=adaptive,
                            cluster_options=cluster_options)
    try:
        log.info("dashboard: %s", client.dashboard_link)
        if progress:
            print(f"dask dashboard: {client.dashboard_link}")
        client.register_plugin(IntegratorPlugin(wf))
        given = cluster if cluster is not None and not isinstance(cluster, (str, Path)) else None
        resources = gpu_resources(client, wf, local if local is not None else given)
        log.info("stages asking for a GPU: %s", ", ".join(resources) if resources else
                 "none (no worker offers a GPU resource)")
        graph = build_graph(ctx, resources)
        results = compute_with_progress(client, graph, progress)
    finally:
        client.close()
        if local is not None:
            local.close()
    wall = time.perf_counter() - t0
    for stage in (store.REDUCED, store.RECON) + ((store.PDF,) if wf.pdf.enabled else ()):
        store.set_stage_status(ctx.store_path, stage, "done")
    info = run_summary(results, wall)
    import zarr

    zarr.open_group(str(ctx.store_path), mode="r+").attrs["run_summary"] = info
    store.consolidate(ctx.store_path)
    if progress:
        print(format_summary(info))
    if summary:
        from .summary import write_summary

        png = write_summary(ctx.store_path)
        if progress:
            print(f"summary picture: {png}")
    return ctx.store_path


def run_summary(results: dict, wall_s: float) -> dict:
    integ = results.get("decode-integrate", [])
    frames = sum(r["frames"] for r in integ)
    status: dict[str, int] = {}
    for r in integ:
        for k, v in r["status"].items():
            status[k] = status.get(k, 0) + v
    return {"frames": frames, "frame_status": status, "wall_seconds": wall_s,
            "frames_per_second": frames / wall_s if wall_s else 0.0,
            "engines": sorted({r["engine"] for r in integ}),
            "task_seconds": {k: float(sum(r["seconds"] for r in v if isinstance(r, dict))) for k, v in results.items()}}


def format_summary(info: dict) -> str:
    bad = {k: v for k, v in info["frame_status"].items() if k != "OK"}
    lines = [f"{info['frames']} frames in {info['wall_seconds']:.1f} s ({info['frames_per_second']:.0f} frames/s "
             f"end to end, engine {', '.join(info['engines'])})"]
    lines.append("frames flagged: " + (", ".join(f"{k.lower()} {v}" for k, v in sorted(bad.items())) if bad else "none"))
    return "\n".join(lines)
