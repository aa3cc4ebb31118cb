"""GPU memory sized to the card: one rule for every process a local run puts on a GPU.

A local GPU run puts two kinds of worker process on each card (:func:`xrdct_dask.cluster.local.local_cluster`):

    GPU workers     ``workers_per_gpu`` of them, each an integration engine running two tasks at
                    once (:func:`~xrdct_dask.integrate._cupy.engine_gpu_bytes` of its batches)
    recon/pdf       the CPU-marked workers, which run the reconstruction and G(r) on the card
                    too unless ``recon.engine`` and ``pdf.engine`` are both ``numpy``; each runs
                    ``threads_per_worker`` tasks, each holding ``task_bytes`` on the device

and every process holds a CUDA context (:data:`CONTEXT_BYTES`).  :func:`gpu_layout` sizes them all
together so that their sum stays within :data:`GPU_MEMORY_FRACTION` of the card's memory::

    workers_per_gpu (CONTEXT + SLACK engine(batch)) + aux (CONTEXT + threads task_bytes) <= 0.70 card

Choices, in this order: as many GPU workers as the card allows (one per 20 GB of it, at most
six: several processes read frames side by side), each with the largest batch of
:data:`BATCHES` that fits next to at least one recon/pdf process whose tasks get their least
(a recon task of :data:`~xrdct_dask.store.budget.GPU_RECON_BINS_LEAST` bins, a GEMM of
:data:`~xrdct_dask.store.budget.GPU_PDF_BATCH_LEAST` voxels, a pdf-scale block as the layout
gives it); then as many recon/pdf processes as the cores give and the rest of the card holds (the
CPU workers are that many); then their tasks' bytes, the rest shared among them (at most what the
store's blocks ask).  One GPU worker on batches of :data:`LEAST_BATCH` frames is the last resort;
where even that cannot fit, :class:`~xrdct_dask.errors.WorkflowError` names the key.

Each process gets its share (:class:`~xrdct_dask.gpushare.GpuShare`) in its environment; its
memory pool is fenced at its share of the whole card (planned bytes / 0.70), so that the planned
70 % is what the run is sized for and a process that outgrows its plan fails its own task, not
another process's.  ``compute.gpu_memory`` (bytes) replaces the card's size: a smaller card
simulated on a larger one, or ``xrdct plan`` of a GPU not on this machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import asdict, dataclass

from xrdct_dask.backend import cp, gpu_available
from xrdct_dask.config import Workflow, WorkflowError
from xrdct_dask.gpushare import GpuShare
from xrdct_dask.integrate._cupy import engine_gpu_bytes
from xrdct_dask.integrate.csr import load_poni
from xrdct_dask.pdf.transform import r_grid
from xrdct_dask.pipeline.frames import frame_source
from xrdct_dask.store import budget

GPU_MEMORY_FRACTION = 0.70  # of the card's memory, for every process on it together
CONTEXT_BYTES = 640 * 2**20  # a process's CUDA context, cuBLAS / cuFFT handles and cupy's modules (estimate)
POOL_SLACK = 1.10  # cupy's pool rounds sizes up and keeps freed blocks of other sizes
GPU_BYTES_PER_WORKER = 20 * 10**9  # at most one GPU worker per 20 GB of the card ...
MAX_WORKERS_PER_GPU = 6  # ... and six (the H200 integrated 10.1k frames/s with six, 9.4k with four)
GPU_WORKER_THREADS = 2  # tasks a GPU worker runs at once, each on its own pipeline of streams
BATCHES = (128, 64)  # frames per engine batch, tried largest first for each number of GPU workers
LEAST_BATCH = 32  # the last resort, with one GPU worker
NNZ_PER_PIXEL = {"no": 1, "bbox": 4, "full": 4}  # the integration matrix's entries per pixel, at most
PILATUS2M_PIXELS = 1679 * 1475  # where neither the PONI nor a frame says the detector's size
CBF_HEADER_BYTES = 8192


@dataclass(frozen=True)
class GpuDemand:
    """What the processes on a card hold for a workflow.

    ``npix`` pixels a frame, ``nbins`` bins a pattern (sectors x q), ``frame_bytes`` a frame as
    read (compressed), ``nnz`` entries of the integration matrix; ``task_least`` device bytes of a
    recon or pdf task at its smallest blocks (0: they run on the CPU), ``task_want`` at the
    blocks the store's layout gives them."""

    npix: int
    nbins: int
    frame_bytes: int
    nnz: int
    keep_sums: bool = False
    hdf5: bool = False
    task_least: int = 0
    task_want: int = 0

    def worker_bytes(self, batch_frames: int) -> int:
        """One GPU worker process on batches of ``batch_frames``: its context and its engine."""
        return CONTEXT_BYTES + int(POOL_SLACK * engine_gpu_bytes(
            batch_frames, self.npix, self.nbins, self.frame_bytes, self.nnz, pipelines=GPU_WORKER_THREADS,
            keep_sums=self.keep_sums, hdf5=self.hdf5))


@dataclass(frozen=True)
class GpuLayout:
    """The processes of a local run on each of ``gpus`` cards of ``card_bytes`` (bytes).

    ``workers_per_gpu`` GPU workers of ``worker_bytes`` each, on batches of ``batch_frames``;
    ``cpu_workers`` CPU-marked workers in all, ``aux_per_gpu`` of them on each card (0: the recon
    and pdf engines are numpy), each running ``aux_threads`` tasks of ``task_bytes`` and holding
    ``aux_bytes``."""

    card_bytes: int
    gpus: int
    workers_per_gpu: int
    batch_frames: int
    worker_bytes: int
    cpu_workers: int
    aux_per_gpu: int
    aux_threads: int
    task_bytes: int
    aux_bytes: int

    @property
    def budget_bytes(self) -> int:
        return int(GPU_MEMORY_FRACTION * self.card_bytes)

    @property
    def total_bytes(self) -> int:
        """What every process on one card holds together, as planned."""
        return self.workers_per_gpu * self.worker_bytes + self.aux_per_gpu * self.aux_bytes

    def worker_share(self) -> GpuShare:
        return GpuShare(pool_bytes=_pool(self.worker_bytes), batch_frames=self.batch_frames)

    def aux_share(self) -> GpuShare:
        return GpuShare(pool_bytes=_pool(self.aux_bytes), task_bytes=self.task_bytes)

    def to_dict(self) -> dict:
        return asdict(self) | {"budget_bytes": self.budget_bytes, "total_bytes": self.total_bytes}


def _pool(process_bytes: int) -> int:
    """The fence of a process's memory pool: its planned bytes (its context aside) over
    :data:`GPU_MEMORY_FRACTION`, so that every fence together stays within the card."""
    return int((process_bytes - CONTEXT_BYTES) / GPU_MEMORY_FRACTION)


def cpu_worker_count(cores: int, gpus: int, workers_per_gpu: int, threads_per_worker: int,
                     n_workers: int | None = None) -> int:
    """CPU-marked workers beside ``workers_per_gpu`` GPU workers per GPU (two cores each):
    ``compute.n_workers``, else the remaining cores' worth, at least one."""
    return n_workers or max(1, (cores - GPU_WORKER_THREADS * gpus * workers_per_gpu) // threads_per_worker)


def gpu_layout(card_bytes: int, demand: GpuDemand, *, gpus: int = 1, cores: int = 1, threads_per_worker: int = 1,
               n_workers: int | None = None, workers_per_gpu: int | None = None,
               card_key: str = "compute.gpu_memory") -> GpuLayout:
    """The processes a local run puts on each of ``gpus`` cards of ``card_bytes`` (see the module
    docstring), ``cores`` cores beside them; ``n_workers``, ``workers_per_gpu``: the workflow's
    ``compute`` keys where set.  Raises :class:`WorkflowError` (one line naming the key) where
    even one GPU worker on :data:`LEAST_BATCH`-frame batches (and one recon/pdf process) cannot fit
    in :data:`GPU_MEMORY_FRACTION` of the card."""
    budget_bytes = int(GPU_MEMORY_FRACTION * card_bytes)
    on_gpu = demand.task_least > 0
    per_task = max(demand.task_least, 1)
    if workers_per_gpu:
        tries = [(workers_per_gpu, b) for b in (*BATCHES, LEAST_BATCH)]
    else:
        cap = int(min(MAX_WORKERS_PER_GPU, max(1, card_bytes // GPU_BYTES_PER_WORKER)))
        tries = [(w, b) for w in range(cap, 0, -1) for b in BATCHES] + [(1, LEAST_BATCH)]
    for w, b in tries:
        engines = w * demand.worker_bytes(b)
        ncpu = cpu_worker_count(cores, gpus, w, threads_per_worker, n_workers)
        if not on_gpu:
            if engines <= budget_bytes:
                return GpuLayout(card_bytes, gpus, w, b, demand.worker_bytes(b), ncpu, 0, threads_per_worker, 0, 0)
            continue
        want = -(-ncpu // gpus)  # round robin over the cards
        fit = max(0, budget_bytes - engines) // (CONTEXT_BYTES + threads_per_worker * per_task)
        aux = int(min(want, fit))
        if aux < 1 or (n_workers and aux < want):
            continue
        left = budget_bytes - engines - aux * CONTEXT_BYTES
        task = int(min(max(demand.task_want, per_task), left // (aux * threads_per_worker)))
        return GpuLayout(card_bytes, gpus, w, b, demand.worker_bytes(b), ncpu if aux == want else aux * gpus, aux,
                         threads_per_worker, task, CONTEXT_BYTES + threads_per_worker * task)
    raise WorkflowError(_no_fit(card_bytes, demand, gpus, cores, threads_per_worker, n_workers, workers_per_gpu,
                                card_key))


def _no_fit(card_bytes, demand, gpus, cores, threads_per_worker, n_workers, workers_per_gpu, card_key) -> str:
    """The one line :func:`gpu_layout` refuses with: the least it needed, and the key to change."""
    w = workers_per_gpu or 1
    need = w * demand.worker_bytes(LEAST_BATCH)
    what = f"{w} GPU worker process{'es' if w > 1 else ''} (batches of {LEAST_BATCH} frames of {demand.npix:,} pixels)"
    key, advice = card_key, "a GPU with more memory, or integrate.engine: numpy"
    if workers_per_gpu:
        key, advice = "compute.workers_per_gpu", "fewer GPU workers"
    if demand.task_least:
        aux = -(-cpu_worker_count(cores, gpus, w, threads_per_worker, n_workers) // gpus) if n_workers else 1
        need += aux * (CONTEXT_BYTES + threads_per_worker * demand.task_least)
        what += (f" and {aux} recon/pdf process{'es' if aux > 1 else ''} ({demand.task_least / 1e9:.2f} GB a task "
                 "at least)")
        if n_workers and w * demand.worker_bytes(LEAST_BATCH) + CONTEXT_BYTES + threads_per_worker * \
                demand.task_least <= GPU_MEMORY_FRACTION * card_bytes:
            key, advice = "compute.n_workers", "fewer CPU workers, or recon.engine and pdf.engine: numpy"
        elif not workers_per_gpu:
            advice = "a GPU with more memory, or recon.engine and pdf.engine: numpy"
    return (f"{key}: {what} need {need / 1e9:.1f} GB of the GPU, more than {GPU_MEMORY_FRACTION:.0%} of its "
            f"{card_bytes / 1e9:.1f} GB ({GPU_MEMORY_FRACTION * card_bytes / 1e9:.1f} GB): {advice}")


# ------------------------------------------------------------------------------------------
# from a workflow
# ------------------------------------------------------------------------------------------
def frame_facts(wf: Workflow) -> tuple[int, int]:
    """``(pixels, bytes)`` of one frame as the engines read it: the PONI detector's pixels (else the
    source's frame shape) and the first frame file's size (CBF), else about a byte a pixel and a
    header (byte-offset at diffraction count rates; HDF5 chunks are smaller)."""

    shape = src = None
    with contextlib.suppress(Exception):  # no readable PONI: the frames say
        shape = load_poni(wf.inputs.poni).detector.max_shape
    with contextlib.suppress(OSError, ValueError, KeyError):  # not there yet (before the acquisition)
        src = frame_source(wf)
        shape = shape or src.frame_shape
    npix = int(math.prod(shape)) if shape else PILATUS2M_PIXELS
    nbytes = npix + CBF_HEADER_BYTES
    if src is not None and not wf.frames_hdf5:
        with contextlib.suppress(OSError, ValueError):
            nbytes = max(nbytes, src.path(0).stat().st_size)
    return npix, nbytes


def gpu_demand(wf: Workflow, npix: int, frame_bytes: int) -> GpuDemand:
    """The :class:`GpuDemand` of ``wf`` for frames of ``npix`` pixels and ``frame_bytes`` bytes: the
    integration's bins and matrix (:data:`NNZ_PER_PIXEL`, twice with sectors), and where the recon
    or pdf engine is not numpy, their tasks' device bytes at the least and at the store layout's
    blocks (:func:`~xrdct_dask.store.budget.choose_layout` within ``compute.task_memory``)."""

    p, s, r, f = wf.integrate, wf.scan, wf.recon, wf.pdf
    nnz = NNZ_PER_PIXEL[p.split] * npix * (2 if p.npt_azim > 1 else 1)
    base = GpuDemand(npix=int(npix), nbins=p.npt_rad * p.npt_azim, frame_bytes=int(frame_bytes), nnz=int(nnz),
                     keep_sums=p.sums_kept, hdf5=wf.frames_hdf5)
    recon, pdf = r.engine != "numpy", f.enabled and f.engine != "numpy"
    if not (recon or pdf):
        return base
    nq, nr = p.npt_rad, int(r_grid(f.rmin, f.rmax, f.rstep).size) if f.enabled else 0
    lay = budget.choose_layout(nomega=s.nomega, nx=s.nx, nq=nq, nr=nr, omega_chunk=wf.store.omega_chunk,
                               q_chunk=wf.store.q_chunk, r_chunk=f.r_chunk, budget=budget.task_memory(wf.compute),
                               pdf_order=f.order)
    iterative = r.algorithm != "fbp"

    def recon_bytes(q: int) -> int:
        return budget.recon_gpu_bytes(s.nomega, s.nx, q, iterative=iterative) if recon else 0

    # a pdf task's voxels (recon-then-pdf: its rows) or frames (pdf-then-recon: its block)
    voxels = lay.y_chunk * s.nx if f.order == "recon-then-pdf" else lay.omega_chunk * s.nx

    def pdf_bytes(batch: int) -> int:
        if not pdf:
            return 0
        scale = budget.pdf_scale_bytes(lay.y_chunk, s.nx, nq) if f.order == "recon-then-pdf" else 0
        return max(budget.pdf_gpu_bytes(min(batch, voxels), nq, nr), scale)  # a pdf-scale block goes up whole

    least = max(recon_bytes(min(budget.GPU_RECON_BINS_LEAST, lay.q_sub)), pdf_bytes(budget.GPU_PDF_BATCH_LEAST))
    want = max(recon_bytes(lay.q_sub), pdf_bytes(budget.PDF_BATCH["cupy"]))
    return dataclasses.replace(base, task_least=least, task_want=max(want, least))


def card_bytes_of(wf: Workflow, device: int = 0) -> int | None:
    """The card's memory the layout is sized to: ``compute.gpu_memory`` where it is a size, else
    device ``device``'s (None: ``auto`` with no GPU here)."""
    if wf.compute.gpu_memory not in (None, "auto"):
        return budget.parse_bytes(wf.compute.gpu_memory)
    if not gpu_available():
        return None
    return int(cp.cuda.runtime.getDeviceProperties(device)["totalGlobalMem"])


def layout_of(wf: Workflow, gpus: int, cores: int, card_bytes: int, frame: tuple[int, int] | None = None) -> GpuLayout:
    """:func:`gpu_layout` of a workflow on ``gpus`` cards of ``card_bytes`` and ``cores`` cores
    (``frame``: its ``(pixels, bytes)``, default :func:`frame_facts`)."""
    c = wf.compute
    npix, nbytes = frame or frame_facts(wf)
    return gpu_layout(card_bytes, gpu_demand(wf, npix, nbytes), gpus=gpus, cores=cores,
                      threads_per_worker=c.threads_per_worker, n_workers=c.n_workers, workers_per_gpu=c.workers_per_gpu)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def describe_layout(lay: dict) -> list[str]:
    """``xrdct plan``'s lines of a layout (:meth:`GpuLayout.to_dict`)."""

    def n(k: int, what: str) -> str:
        return f"{k} {what}{'s' if k != 1 else ''}"

    out = [f"GPU layout: a card of {_gb(lay['card_bytes'])}, {_gb(lay['total_bytes'])} planned of the "
           f"{_gb(lay['budget_bytes'])} allowed ({GPU_MEMORY_FRACTION:.0%}; compute.gpu_memory)",
           f"  {n(lay['workers_per_gpu'], 'GPU worker')} per GPU: batches of {lay['batch_frames']} frames, "
           f"{GPU_WORKER_THREADS} tasks each, {_gb(lay['worker_bytes'])} each"]
    if lay["aux_per_gpu"]:
        out.append(f"  {n(lay['aux_per_gpu'], 'recon/pdf worker')} per GPU ({n(lay['cpu_workers'], 'CPU worker')} in "
                   f"all): {n(lay['aux_threads'], 'task')} of {_gb(lay['task_bytes'])} each, "
                   f"{_gb(lay['aux_bytes'])} each")
    else:
        out.append(f"  {n(lay['cpu_workers'], 'CPU worker')} beside them (recon and pdf on the CPU)")
    return out


def plan_layout(wf: Workflow, gpus: int, cores: int, frame: tuple[int, int]) -> tuple[dict, str | None]:
    """``xrdct plan``'s GPU layout of a local run integrating on ``gpus`` GPUs (0: none here) with
    ``cores`` cores and frames of ``frame`` = ``(pixels, bytes)``: ``(GpuLayout.to_dict(), None)``,
    or ``({}, a note)`` where no card's size is known or it cannot fit; ``({}, None)`` where the
    run integrates on no GPU."""
    if wf.integrate.engine == "numpy" or not (gpus or wf.compute.gpu_memory != "auto"):
        return {}, None
    card = card_bytes_of(wf)
    if card is None:
        return {}, "GPU layout: compute.gpu_memory is auto and no GPU is here: give a card's size (e.g. 80GB) to see it"
    try:
        return layout_of(wf, max(1, gpus), cores, card, frame).to_dict(), None
    except WorkflowError as err:
        return {}, f"GPU layout: {err}"
