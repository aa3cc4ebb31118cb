"""A run on paper: frames, tasks, waves, bytes, memory per task, chunks, files and hours, without
building a graph.

Everything here is arithmetic on the workflow (plus one ``stat`` of the first frame, or the PONI's
detector shape, for the bytes per frame; an HDF5 source opened for its files; the q bins of a
cached integration plan for the pdf-then-recon aux channels), so a 1000 x 1571 x 1000 scan plans
in a second.  tests/test_plan.py holds every count to what ``build_graph`` and the store make.
Nothing is a second copy of the run's rules: the tasks per slice come from the stage table
(:func:`xrdct_dask.pipeline.stages.tasks_per_slice`), the blocks from the layout a new store would get
(:func:`xrdct_dask.runs.open.layout_for`), the chunks from the store's own array table
(:func:`xrdct_dask.store.layout.array_specs`) and the memory per task from :mod:`xrdct_dask.store.budget`
(the formulas the layout is chosen by, checked against traced tasks in tests/test_budget.py).
Bytes read and written are uncompressed upper bounds:

    integrate  read F frame_bytes                                 (F = nz nomega nx frames)
    center     read nz nomega nx 5 (+ the first omega chunk of every q, and one q block, with center: auto)
    recon      read nz nomega nx (4 nq + 1)
    pdf-scale  read nz nx^2 nq 4                                         (its shares, block by block)
    pdf        read nz nx^2 nq 4                                         (recon-then-pdf)
    pdf-frames read F nq 4; pdf-aux / pdf read what it wrote back        (pdf-then-recon)
    view       read nz nx^2 (nq + nr) 4 + F nq 4                         (recon/, pdf/G and reduced/ once)
    written    the bytes of the store's arrays each stage writes (ArraySpec.writers), done-markers included
    waves      slices go in waves of S = max(1, floor(max_tasks / 2 / T)) slices (T tasks per slice),
               ceil(nz / S) waves, at most two in flight: <= max_tasks tasks held
    hours      GPU-hours F / (frames/s per GPU) / 3600; CPU core-hours likewise
    hardware   the run's: ``--gpus N`` GPUs where given, else the named cluster profile's jobs (its
               GPUs, else its cores, x jobs), else this machine (its GPUs where the engine may use
               them, else the cores its local cluster uses); its rate R is N G frames/s on N GPUs
               (G per GPU), else C c on C cores (c per core).  Where a profile is named, this
               machine's rate is given too
    file system  F frame_bytes read from the input files (one per frame for CBF; an HDF5 source's
               files scaled to the scan); at the run's rate R it reads R frame_bytes per second;
               with --fs-gbps B the file system delivers at most B 1e9 / frame_bytes frames/s, and
               the run goes at the smaller of the two

Throughputs come from options, else from a results file (``xrdct plan --results RESULTS.md``),
else from the figures shipped with the package (``xrdct_dask/data/throughputs.json``, a copy of
those of ``benchmarks/RESULTS.md``).  A results file carries them in lines such as
``gpu_frames_per_s = 9700`` (decode + integrate through the graph, per GPU),
``whole_workflow_frames_per_s = 5000`` (the whole workflow, per GPU: preferred for the GPU-hours
when present) and ``cpu_frames_per_s_per_core = 45``; the last line of each key counts.  The table ``xrdct plan``
prints is :func:`xrdct_dask.runs.plantable.format_plan`.
"""

from __future__ import annotations

import os
import re
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xrdct_dask import store
from xrdct_dask.cluster.gpulayout import plan_layout
from xrdct_dask.cluster.local import gpu_count
from xrdct_dask.cluster.profiles import job_resources, load_profile
from xrdct_dask.config import Workflow
from xrdct_dask.integrate.cache import cached_radial
from xrdct_dask.integrate.csr import load_poni
from xrdct_dask.io.cbf import CorruptFrameError
from xrdct_dask.io.fabio_frames import frame_file_shape
from xrdct_dask.pdf import operator_for, radial_to_q_A
from xrdct_dask.pdf.transform import r_grid
from xrdct_dask.pipeline.context import RunContext
from xrdct_dask.pipeline.frames import frame_path, frame_source
from xrdct_dask.pipeline.graph import build_graph
from xrdct_dask.pipeline.integrator import _plan_inputs
from xrdct_dask.pipeline.stages import Sizes, marker_specs, stages_of, tasks_per_slice
from xrdct_dask.pipeline.tasks_pdf import pdf_aux_channels
from xrdct_dask.resources import shipped_throughputs
from xrdct_dask.runs.background import background_rows
from xrdct_dask.runs.open import absorption_store_args, layout_for
from xrdct_dask.runs.plantable import _b, format_plan
from xrdct_dask.runs.scanlayout import frames_placed_by_scan
from xrdct_dask.runs.sectors import sector_spec_args
from xrdct_dask.store import budget
from xrdct_dask.store.viewcopy import view_specs

PILATUS2M_SHAPE = (1679, 1475)
CBF_OVERHEAD_BYTES = 8192  # imgCIF header + binary-section header + padding of a Pilatus CBF
BYTES_PER_PIXEL_ESTIMATE = 1.0  # byte-offset at diffraction count rates: nearly all deltas fit one byte
RESULTS_KEYS = ("gpu_frames_per_s", "whole_workflow_frames_per_s", "cpu_frames_per_s_per_core",
                # the serial-free steps around the compute (issue 30; benchmarks/bench_scantable.py,
                # bench_export_parts.py, bench_scheduler.py): scan-table rows/s per core, export MB/s
                # per worker, scheduler CPU ms per task
                "scan_table_rows_per_s_per_core", "export_mb_per_s_per_worker", "scheduler_ms_per_task")
#: the figure of a results file the GPU-hours use, first found
GPU_FIGURES = ("whole_workflow_frames_per_s", "gpu_frames_per_s")

__all__ = ["GPU_FIGURES", "RESULTS_KEYS", "RunPlan", "StagePlan", "build_waves", "count_waves", "format_plan",
           "plan_workflow", "read_throughputs", "run_hardware", "waves"]


def waves(unit_tasks: list[int], max_tasks: int) -> list[list[int]]:
    """Group consecutive units (z slices) into waves of at most ``max_tasks // 2`` tasks.

    Returns lists of unit positions.  A unit larger than half the budget is a wave by itself.  The
    runner keeps two waves in flight, so the scheduler computes at most ``max_tasks`` tasks while the
    next wave is already queued when the last tasks of the previous one finish (it also holds the
    keys of the wave just finished for the few ms until the client's release of them reaches it).
    """
    budget = max(1, max_tasks // 2)
    out: list[list[int]] = []
    cur: list[int] = []
    n = 0
    for i, t in enumerate(unit_tasks):
        if cur and n + t > budget:
            out.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += t
    if cur:
        out.append(cur)
    return out


def count_waves(units: int, unit_tasks: int, max_tasks: int) -> int:
    """``len(waves([unit_tasks] * units, max_tasks))`` without the list (a plan of 1e9 slices on paper)."""
    per_wave = max(1, max(1, max_tasks // 2) // max(1, unit_tasks))
    return -(-units // per_wave)


@dataclass
class StagePlan:
    tasks: int
    bytes_read: int
    bytes_written: int
    bytes_per_task: int  # the arrays one task holds at once (a worker needs at least this per thread)


@dataclass
class RunPlan:
    """The figures :func:`plan_workflow` derives; ``to_dict`` gives them JSON-ready."""

    scan: tuple[int, int, int]
    frames: int
    frame_bytes: int
    frame_bytes_source: str
    detector_shape: tuple[int, int]
    nq: int
    nr: int
    stages: dict[str, StagePlan]
    tasks: int
    tasks_per_slice: int
    slices_per_wave: int
    waves: int
    max_tasks_held: int
    chunks: dict[str, int]
    files: int
    layout: dict
    chunk_bytes: dict[str, int]
    gpu_frames_per_s: float | None = None
    cpu_frames_per_s_per_core: float | None = None
    throughput_source: str = ""
    gpu_figure: str = ""  # what gpu_frames_per_s is: "given", "whole_workflow_frames_per_s" or "gpu_frames_per_s"
    gpu_hours: float | None = None
    cpu_core_hours: float | None = None
    input_files: int = 0  # files the frames are read from
    input_files_source: str = ""
    read_bytes: int = 0  # bytes of frames read from the file system
    gpus: int = 1  # GPUs of the run's hardware
    # [{"where", "gpus", "cores", "frames_per_s", "rate_of"}], the run's first
    hardware: list = field(default_factory=list)
    read_gbps_needed: float | None = None  # GB/s the run's hardware reads at its rate
    fs_gbps: float | None = None  # GB/s the file system reads (given)
    fs_frames_per_s: float | None = None  # frames/s the file system delivers
    frames_per_s: float | None = None  # the run's rate: the GPUs' or the file system's, the smaller
    bound_by: str = ""  # "GPUs", "CPU cores" or "file system"
    wall_hours: float | None = None
    notes: list[str] = field(default_factory=list)
    chunk_files: dict[str, int] = field(default_factory=dict)  # files per array: its shards, else its chunks
    overhead: dict = field(default_factory=dict)  # the steps around the compute: {step: {"hours", "rate", "on"}}
    gpu_layout: dict = field(default_factory=dict)  # the processes on each GPU of a local run (cluster.gpulayout)

    def to_dict(self) -> dict:
        return asdict(self)


def read_throughputs(path: str | Path) -> dict[str, float]:
    """The figures (:data:`RESULTS_KEYS`, frames/s) in a results file, the last line of each key.

    Raises :class:`FileNotFoundError` naming the file when it does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: results file not found (throughputs are read from lines 'gpu_frames_per_s = N')")
    out = {}
    for key in RESULTS_KEYS:
        hits = re.findall(rf"\b{key}\s*[=:]\s*\**\s*([0-9][0-9_,]*\.?[0-9]*(?:[eE][+-]?[0-9]+)?)", p.read_text())
        if hits:
            out[key] = float(hits[-1].replace(",", "").replace("_", ""))
    return out


def _frame_bytes(wf: Workflow, detector_shape) -> tuple[int, str, tuple[int, int]]:
    if wf.frames_hdf5 and not wf.frames_templated:  # the source's bytes over its frames, where it can be opened
        try:
            src = frame_source(wf)
            nbytes = sum(f.stat().st_size for f in src.files())
            ny, nx = src.frame_shape
            return max(1, nbytes // max(1, src.nframes)), f"{src.spec}: bytes per frame", (ny, nx)
        except (OSError, ValueError, KeyError):
            pass
    first = None if wf.frames_hdf5 else frame_path(wf, 0)
    if first is not None and first.is_file():

        try:
            shape = frame_file_shape(first)
        except (CorruptFrameError, OSError):
            shape = detector_shape
        return first.stat().st_size, f"size of {first.name}", (shape[0], shape[1]) if shape else PILATUS2M_SHAPE
    shape, source = detector_shape, "given detector shape"
    if shape is None:
        try:

            shape = tuple(load_poni(wf.inputs.poni).detector.max_shape)
            source = "PONI detector"
        except Exception:
            shape, source = PILATUS2M_SHAPE, "Pilatus 2M assumed (no frame, no readable PONI)"
    npix = shape[0] * shape[1]
    return int(npix * BYTES_PER_PIXEL_ESTIMATE + CBF_OVERHEAD_BYTES), f"estimated from {source}", tuple(shape)


def _input_files(wf: Workflow, frames: int) -> tuple[int, str]:
    """Files the frames of ``frames`` are read from, and how that was counted."""
    if not wf.frames_hdf5:
        return frames, "one CBF file per frame"
    try:
        src = frame_source(wf)

        seg = src.map.segment[src.map.segment >= 0]
        per_file = int(np.bincount(seg).max()) if seg.size else max(1, src.nframes)  # the fullest data file
        master = 1 if len(src.files()) > len(set(src.map.segments)) or src.file not in {
            x.file for x in src.map.segments} else 0
        return master + -(-frames // per_file), (f"HDF5: {per_file:,} frames per data file as in {src.spec}"
                                                 + (", + the master" if master else ""))
    except (OSError, ValueError, KeyError):
        return 1, "one HDF5 file (the source cannot be opened to count its data files)"


def _frames_placed(wf: Workflow) -> bool:
    """Whether the scan places the frames (``reduced/scan_flag`` written), as the run will decide
    (:func:`~xrdct_dask.runs.scanlayout.frames_placed_by_scan`); a scan not readable yet (planned before
    its files exist): placed where a scan file is named."""

    try:
        return frames_placed_by_scan(wf)
    except (OSError, ValueError, KeyError):  # WorkflowError is a ValueError
        return wf.inputs.scan_file is not None


def _aux_channels(wf: Workflow) -> tuple[int, bool]:
    """Channels of ``pdf/aux_sinogram`` (pdf-then-recon) and whether that is exact: the PDF
    operator's (N, G at the low-r points, F at the top-Q points) on the radial axis of the
    integration plan when the plan cache holds it (as after any run or ``xrdct run`` of the same
    geometry), else the most the transform makes (``1 + budget.PDF_EXTRA_COLUMNS``)."""

    try:

        ai, shape, options = _plan_inputs(wf)
        radial = cached_radial(ai, shape, wf.integrate.npt_rad, wf.integrate.unit, directory=wf.compute.cache_dir,
                               **options)
        if radial is not None:
            op = operator_for(radial_to_q_A(radial, wf.integrate.unit, (ai.wavelength or 0) * 1e10), wf.pdf)
            return len(pdf_aux_channels(op)), True
    except Exception:  # noqa: BLE001 - no readable PONI, images or PDF parameters: the bound
        pass
    return 1 + budget.PDF_EXTRA_COLUMNS, False


def _nr(wf: Workflow) -> int:
    if not wf.pdf.enabled:
        return 0

    return int(r_grid(wf.pdf.rmin, wf.pdf.rmax, wf.pdf.rstep).size)


def run_hardware(wf: Workflow, *, cluster: str | Path | None = None, jobs: int | None = None,
                 gpus: int | None = None) -> list[dict]:
    """What a run of ``wf`` will integrate on, first the run's own (see the module docstring):
    ``[{"where", "gpus", "cores"}]``; this machine follows a named cluster profile where it differs."""
    c = wf.compute
    here = {"where": "this machine", "gpus": gpu_count() if wf.integrate.engine in ("auto", "cupy") else 0,
            "cores": (c.n_workers * c.threads_per_worker) if c.n_workers else (os.cpu_count() or 1)}
    if gpus is not None:
        return [{"where": f"{gpus} GPU{'s' if gpus > 1 else ''} (--gpus)", "gpus": gpus, "cores": 0}]
    profile = cluster if cluster is not None else c.cluster
    if profile is None:
        return [here]
    p = load_profile(profile)
    cores, per_job = job_resources(p)
    n = jobs or c.jobs
    run = {"where": f"cluster profile {p.name}, {n} job{'s' if n > 1 else ''} of {cores} cores"
                    + (f" and {per_job} GPU{'s' if per_job > 1 else ''}" if per_job else ""),
           "gpus": n * per_job if wf.integrate.engine != "numpy" else 0, "cores": n * cores}
    return [run] + ([here] if (here["gpus"], here["cores"]) != (run["gpus"], run["cores"]) else [])


def _rate(hw: dict, gpu: float | None, cpu: float | None) -> dict:
    """``hw`` with its integration rate: its GPUs' at ``gpu`` frames/s each, else its cores' at ``cpu``."""
    if hw["gpus"] and gpu:
        return {**hw, "frames_per_s": hw["gpus"] * gpu, "rate_of": "GPUs"}
    if hw["cores"] and cpu:
        return {**hw, "frames_per_s": hw["cores"] * cpu, "rate_of": "CPU cores"}
    return {**hw, "frames_per_s": None, "rate_of": ""}


def plan_workflow(wf: Workflow, *, frame_bytes: int | None = None, detector_shape: tuple[int, int] | None = None,
                  gpu_frames_per_s: float | None = None, cpu_frames_per_s_per_core: float | None = None,
                  results: str | Path | None = None, gpus: int | None = None, fs_gbps: float | None = None,
                  cluster: str | Path | None = None, jobs: int | None = None) -> RunPlan:
    """The figures of a run of ``wf`` (see the module docstring) on the hardware it will have
    (:func:`run_hardware`: ``gpus`` GPUs where given, else the cluster profile ``cluster`` or
    ``compute.cluster`` with ``jobs`` jobs, else this machine) reading from a file system of
    ``fs_gbps`` GB/s (None: not known)."""

    s = wf.scan
    nz, nw, nx = s.nz, s.nomega, s.nx
    nq, nr = wf.integrate.npt_rad, _nr(wf)
    F = nz * nw * nx
    fb, fb_source, shape = _frame_bytes(wf, detector_shape)
    if frame_bytes is not None:
        fb, fb_source = int(frame_bytes), "given"
    lay = layout_for(wf, nq, nr)
    aux, aux_exact = _aux_channels(wf) if nr and wf.pdf.order == "pdf-then-recon" else (1 + budget.PDF_EXTRA_COLUMNS,
                                                                                       True)
    sizes = Sizes.of(wf, nq=nq, nr=nr, layout=lay, frame_bytes=fb, aux_channels=aux)
    table = stages_of(wf)
    per_slice = tasks_per_slice(wf, sizes)
    t_slice = sum(per_slice.values())
    held = {st.name: st.held(sizes) for st in table}
    specs = store.array_specs(nz=nz, nomega=nw, nx=nx, nq=nq, nr=nr, layout=lay, markers=marker_specs(wf, sizes),
                              pdf_sinograms=wf.pdf.order == "pdf-then-recon", aux_channels=aux,
                              **absorption_store_args(wf), **sector_spec_args(wf),
                              background_rows=background_rows(wf))
    specs += view_specs(nz, sizes.view) if sizes.view else []
    # scan_flag is written only where the scan places the frames (its file's grid columns or its measured positions)
    placed = _frames_placed(wf)
    written_specs = [sp for sp in specs if not (sp.path.endswith("scan_flag") and not placed)]
    writers = {"prepare": store.TEMPLATE_WRITES, **{st.name: (*st.writes, f"{store.TASKS}/{st.name}") for st in table}}

    def written(stage: str) -> int:
        return sum(sp.nbytes for sp in written_specs if sp.path in writers[stage])

    plans = {"prepare": StagePlan(0, 0, written("prepare"), 0)}
    for st in table:
        plans[st.name] = StagePlan(nz * per_slice[st.name], st.read(sizes), written(st.name), held[st.name])
    tasks = sum(p.tasks for p in plans.values())
    spw = max(1, (wf.compute.max_tasks // 2) // t_slice)
    nwaves = count_waves(nz, t_slice, wf.compute.max_tasks)
    # chunk files a finished run holds
    chunks = {sp.path: sp.nchunks if sp in written_specs else 0 for sp in specs}
    # metadata: a zarr.json for the root, each group, each array, and each coordinate (+ its one chunk)
    groups = {sp.path.split("/")[0] for sp in specs}
    coords = {(sp.path.split("/")[0], d) for sp in specs for d in sp.dims if d in store.COORDS}
    ncoords_root = len({d for _, d in coords} - {"channel"})
    nmeta = 1 + len(groups) + len(specs) + 2 * (len(coords) + ncoords_root)
    if results is not None:
        figures, figures_source = read_throughputs(results), f"{results}"
    else:
        figures, figures_source = shipped_throughputs(), "the figures shipped with xrdct_dask (benchmarks/RESULTS.md)"
    gpu, gpu_figure = gpu_frames_per_s, "given"
    if gpu is None:
        gpu_figure = next((k for k in GPU_FIGURES if k in figures), "")
        gpu = figures.get(gpu_figure)
    cpu = cpu_frames_per_s_per_core if cpu_frames_per_s_per_core is not None else \
        figures.get("cpu_frames_per_s_per_core")
    sources = ["options"] if gpu_frames_per_s is not None or cpu_frames_per_s_per_core is not None else []
    if (gpu_frames_per_s is None and gpu is not None) or (cpu_frames_per_s_per_core is None and cpu is not None):
        sources.append(figures_source)
    source = " and ".join(sources)
    notes = []
    if fb_source.startswith("estimated"):
        notes.append(f"frame bytes {fb_source}: {BYTES_PER_PIXEL_ESTIMATE:g} byte/pixel"
                     f" + {CBF_OVERHEAD_BYTES} B header")
    if not aux_exact:
        notes.append(f"pdf/aux_sinogram counted with its most channels ({aux}): the integration plan is not "
                     f"cached yet (its q bins give the exact number)")
    if t_slice > wf.compute.max_tasks // 2:
        notes.append(f"one slice has {t_slice} tasks, more than compute.max_tasks/2: raise store.omega_chunk")
    over = [k for k, v in held.items() if k in per_slice and v > lay.budget]
    if over:
        notes.append(f"{', '.join(over)} tasks hold more than compute.task_memory ({_b(lay.budget)}): give the "
                     f"workers more memory or set compute.task_memory")
    nfiles, files_source = _input_files(wf, F)
    hardware = [_rate(h, gpu, cpu) for h in run_hardware(wf, cluster=cluster, jobs=jobs, gpus=gpus)]
    fs = _file_system(F, fb, hardware[0]["frames_per_s"], hardware[0]["rate_of"], fs_gbps)
    if fs.get("bound_by") == "file system" and hardware[0]["rate_of"] == "GPUs":
        notes.append(f"the file system ({fs_gbps:g} GB/s) feeds {fs['fs_frames_per_s'] / gpu:.2g} GPUs at "
                     f"{gpu:,.0f} frames/s: more GPUs wait on reads")
    overhead = _overhead(F, tasks, sum(written(k) for k in plans), hardware[0], figures)
    local = cluster is None and wf.compute.cluster is None
    gpu_layout, note = plan_layout(wf, hardware[0]["gpus"], os.cpu_count() or 1, (shape[0] * shape[1], fb)) \
        if local else ({}, None)
    notes += [note] if note else []
    return RunPlan(
        gpu_layout=gpu_layout, overhead=overhead, input_files=nfiles, input_files_source=files_source,
        read_bytes=F * fb, gpus=hardware[0]["gpus"],
        hardware=hardware, fs_gbps=fs_gbps, **fs,
        scan=(nz, nw, nx), frames=F, frame_bytes=fb, frame_bytes_source=fb_source, detector_shape=shape, nq=nq,
        nr=nr, stages=plans, tasks=tasks, tasks_per_slice=t_slice, slices_per_wave=spw, waves=nwaves,
        max_tasks_held=min(tasks, 2 * spw * t_slice) if nwaves > 1 else tasks, chunks=chunks,
        files=sum(sp.nfiles for sp in written_specs) + nmeta,
        chunk_files={sp.path: sp.nfiles if sp in written_specs else 0 for sp in specs}, layout=lay.to_dict(),
        chunk_bytes={sp.path: sp.chunk_bytes for sp in specs},
        gpu_frames_per_s=gpu,
        cpu_frames_per_s_per_core=cpu, throughput_source=source, gpu_figure=gpu_figure if gpu else "",
        gpu_hours=F / gpu / 3600 if gpu else None, cpu_core_hours=F / cpu / 3600 if cpu else None, notes=notes)


def _overhead(frames: int, tasks: int, written: int, hw: dict, figures: dict) -> dict:
    """Hours of the steps around the compute, from the measured figures (:data:`RESULTS_KEYS`):
    the scan table converted on the run's cores (one row per frame), the export written by as
    many workers (the store's bytes), and the scheduler's CPU time for every task (one core: the
    scheduler is one process)."""
    cores = max(1, int(hw.get("cores") or 1))
    unknown = " (the run's cores unknown: divide by them)" if not hw.get("cores") else ""
    out = {}
    if figures.get("scan_table_rows_per_s_per_core"):
        r = figures["scan_table_rows_per_s_per_core"]
        out["scan table"] = {"hours": frames / (r * cores) / 3600, "rate": f"{r:,.0f} rows/s per core",
                             "on": f"{cores} core{'s' if cores > 1 else ''}{unknown}"}
    if figures.get("export_mb_per_s_per_worker"):
        r = figures["export_mb_per_s_per_worker"]
        out["NeXus export"] = {"hours": written / (r * 1e6 * cores) / 3600, "rate": f"{r:,.0f} MB/s per worker",
                               "on": f"{cores} worker{'s' if cores > 1 else ''}{unknown}"}
    if figures.get("scheduler_ms_per_task"):
        r = figures["scheduler_ms_per_task"]
        out["scheduler"] = {"hours": tasks * r / 1e3 / 3600, "rate": f"{r:g} ms CPU per task", "on": "one core"}
    return out


def _file_system(frames: int, frame_bytes: int, rate: float | None, rate_of: str, fs_gbps: float | None) -> dict:
    """The read bandwidth the run's hardware needs at its ``rate`` (frames/s of its ``rate_of``:
    GPUs or CPU cores) and the rate the file system allows (see the module doc)."""
    out: dict = {}
    if rate:
        out["read_gbps_needed"] = rate * frame_bytes / 1e9
    if fs_gbps:
        out["fs_frames_per_s"] = fs_gbps * 1e9 / frame_bytes
    rates = {k: v for k, v in ((rate_of, rate), ("file system", out.get("fs_frames_per_s"))) if v}
    if rates:
        out["bound_by"] = min(rates, key=lambda k: rates[k])
        out["frames_per_s"] = rates[out["bound_by"]]
        out["wall_hours"] = frames / out["frames_per_s"] / 3600
    return out


def build_waves(wf: Workflow) -> dict:
    """Build the graph of every wave of a run of ``wf`` as the run would (:func:`xrdct_dask.pipeline.graph.build_graph`,
    slices grouped by :func:`waves`), without a store and without computing anything, one wave at a
    time (each dropped before the next): ``{"waves", "tasks", "max_wave_tasks", "seconds",
    "peak_rss_bytes"}`` -- what the client spends and holds to drive the run."""


    s = wf.scan
    nq, nr = wf.integrate.npt_rad, _nr(wf)
    lay = layout_for(wf, nq, nr)
    ctx = RunContext(workflow=wf, store_path=Path(wf.store.path), monitor_reference=1.0, wavelength_A=1.0,
                            layout=lay, extra={"nq": nq, "nr": nr})
    per_slice = sum(tasks_per_slice(wf, Sizes.of(wf, nq=nq, nr=nr, layout=lay)).values())
    groups = waves([per_slice] * s.nz, wf.compute.max_tasks)
    t0 = time.perf_counter()
    total = largest = 0
    for zs in groups:
        graph = build_graph(ctx, zs=zs, token="plan")
        n = sum(len(v) for v in graph.values())
        total, largest = total + n, max(largest, n)
        del graph
    return {"waves": len(groups), "tasks": total, "max_wave_tasks": largest, "seconds": time.perf_counter() - t0,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
