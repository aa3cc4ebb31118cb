"""Memory per task: the budget, what each task holds, and the chunk layout that keeps tasks inside it.

No task holds a whole slice of a big array.  The budget of one task (``compute.task_memory``, or
half of what one worker thread may use: ``compute.memory_limit / threads_per_worker``, or half of
this machine's memory per core) sets the layout of the store when it is created, and the task
functions read their block sizes back from the store:

    recon task      one q block (``q_chunk`` bins) of a slice's sinogram and of its volume; the
                    sinogram preparation and FBP work on sub-blocks of ``q_sub`` bins
    pdf task        ``y_chunk`` rows of voxels (every q), their G(r) and figures, in GEMM batches
    pdf-scale task  the same rows (its share of the slice's edge background and largest scale)

Chunks follow the tasks: ``recon/intensity`` (1, y_chunk, nx, q_chunk), ``pdf/G`` (1, y_chunk, nx,
r_chunk), so that a pdf task reads and writes whole chunks, and no chunk passes
:data:`CHUNK_BYTES_MAX` (Blosc refuses buffers over 2 GiB).

What a task holds (bytes, float32 = 4, float64 = 8; ``nw`` omega steps, ``nx`` steps across, ``nq``
q bins, ``nr`` r points, ``B`` voxels per GEMM batch; the copy factors are constants below) is
written once here, used both to choose the layout and by ``xrdct plan``, and checked against
tracemalloc's peak of the real task functions (tests/test_budget.py):

    integrate   wc nx (8 nb + 21) + 2 min(128, wc nx) frame_bytes      (its output block + reads ahead)
                + 20 wc nx nb (kept sums) + 48 * 32 nb (the CPU engine's accumulators of a batch)
                                                                   (nb = npt_azim * nq bins per frame)
    texture     y nx nchi (peaks WINDOW + 8 peaks) 4               (the rows' q windows, their figures)
    recon       READ nw nx qc 4 (sinogram block) + nx^2 qc 4 (volume) + PREP nw nx q_sub 4
                + FBP nw nfft min(32, q_sub) 4                             (nfft ~ 2 nx)
    pdf         y nx nq 4 (rows) + y nx (nr + 5) 4 (G, figures) + GEMM B (nq + nr + 81) 8
    pdf-scale   SCALE y nx nq 4
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import psutil
from dask.utils import parse_bytes as _parse

from xrdct_dask.recon.fbp import GPU_Q_CHUNK, detector_window

CHUNK_BYTES_MAX = 256 * 2**20  # far under Blosc's 2 GiB, and a task's read granularity
BUDGET_FRACTION = 0.5  # of a worker thread's memory: the rest is dask's, zarr's and the interpreter's
MIN_TASK_MEMORY = 64 * 2**20
Q_CHUNK_MAX = 256
PDF_BATCH = {"numpy": 4096, "cupy": 65536}  # voxels per GEMM
# working sets, in copies of the blocks they hold (fitted to tracemalloc's peak of the real tasks
# on nine shapes each, within 10-20 %; tests/test_budget.py holds them to 25 %):
READ_COPIES = 1.1  # the block as read (a chunk at a time: store.read_chunked)
PREP_COPIES = 8  # the sinogram preparation (fill, zinger neighbourhoods) per q sub-block
FBP_COPIES = 0.5  # FBP's padded filtering, beyond its input
GEMM_COPIES = 2.5  # one GEMM batch: its float64 input, the linear output, G and the figures
SCALE_COPIES = 4  # the pdf-scale pass: a block of rows, its NaN-free float64 copy
SCORE_COPIES = 6  # the centre's choice of q block: a chunk of projections (intensity, sigma) and their copies
ROW_TASKS_MIN = 8  # voxel-row blocks per slice at least (the pdf tasks of a slice run side by side)...
ROWS_MIN = 32  # ... of this many rows at least, unless the budget asks for fewer
PDF_EXTRA_COLUMNS = 81  # the transform's quality columns (xrdct_dask.pdf: at most 81)
PDF_FIGURES = 5


def parse_bytes(text) -> int:

    return int(_parse(str(text).replace(" ", "")))


def machine_memory() -> int:
    try:

        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def task_memory(compute) -> int:
    """Bytes one task may hold, from a workflow's ``compute`` section: ``task_memory`` if given,
    else :data:`BUDGET_FRACTION` of ``memory_limit / threads_per_worker`` (this machine's memory
    per core where the limit is ``auto``)."""
    if compute.task_memory not in (None, "auto"):
        return parse_bytes(compute.task_memory)
    if compute.memory_limit not in (None, "auto", "0", 0):
        per_thread = parse_bytes(compute.memory_limit) / compute.threads_per_worker
    else:
        per_thread = machine_memory() / (os.cpu_count() or 1)
    return max(MIN_TASK_MEMORY, int(per_thread * BUDGET_FRACTION))


# ------------------------------------------------------------------------------------------
# what one task holds
# ------------------------------------------------------------------------------------------
def fft_length(nx: int) -> int:
    """The padded detector length FBP filters over (xrdct_dask.recon.fbp.detector_window, centred axis)."""

    return detector_window(nx, nx // 2, nx)[2]


def integrate_bytes(frames: int, nbins: int, frame_bytes: int, batch: int = 128, *, sums: bool = False) -> int:
    """A decode-integrate task of ``frames`` frames of ``nbins`` bins each (sectors x q): its output
    block (intensity, sigma, status, monitor; the five float32 sums where kept), two batches of
    files read ahead, and the CPU engine's double accumulators of one batch (signal, variance and
    four for pixels bad in a frame: 48 bytes per bin and frame of 32)."""
    return frames * (8 * nbins + 21 + (20 * nbins if sums else 0)) + 2 * min(batch, frames) * frame_bytes \
        + 48 * 32 * nbins


TEXTURE_WINDOW_BINS = 24  # q bins a reflection's window holds, about (what a texture task reads per voxel and sector)


def texture_bytes(rows: int, nx: int, nchi: int, peaks: int, window: int = TEXTURE_WINDOW_BINS) -> int:
    """A texture task of ``rows`` rows of voxels: each reflection's q window in every sector (as
    read, and in float64 for the fit) and its seven figures per sector."""
    vox = rows * nx * nchi
    return int(vox * peaks * (4 * READ_COPIES * window + 8 * window + 4 * 7))


def recon_bytes(nomega: int, nx: int, q_chunk: int, q_sub: int, q_fbp: int = 32) -> int:
    """A recon task: the sinogram block (as read) and the volume block of ``q_chunk`` bins, the
    preparation of ``q_sub`` bins at a time and FBP's filtering of ``q_fbp`` bins at a time."""
    return int(READ_COPIES * 4 * nomega * nx * q_chunk + 4 * nx * nx * q_chunk + PREP_COPIES * 4 * nomega * nx * q_sub
               + FBP_COPIES * 4 * nomega * fft_length(nx) * min(q_fbp, q_sub))


def pdf_bytes(rows: int, nx: int, nq: int, nr: int, batch: int = PDF_BATCH["numpy"]) -> int:
    """A recon-then-pdf task of ``rows`` rows of voxels: the rows (every q), G and the figures, and
    one GEMM batch (its float64 input, the linear output and G)."""
    vox = rows * nx
    b = min(batch, vox)
    return int(4 * vox * nq + 4 * vox * (nr + PDF_FIGURES) + GEMM_COPIES * 8 * b * (nq + nr + PDF_EXTRA_COLUMNS))


def center_bytes(nomega: int, nx: int, q_sub: int = 0, omega_chunk: int = 0, nq: int = 0) -> int:
    """The centre of a slice: its q-summed sinogram, frame_ok, and the preparation's temporaries;
    with ``q_sub`` the axis on the structured q bins too (:mod:`xrdct_dask.pipeline.centering`): the first
    ``omega_chunk`` projections of every q (intensity, sigma and their corrected copies) to choose
    a block of ``q_sub`` bins, then, those freed, that block of every projection read and prepared."""
    return int(4 * nomega * nx * (PREP_COPIES + 2) + max(SCORE_COPIES * 4 * omega_chunk * nx * nq,
                                                         (READ_COPIES + PREP_COPIES) * 4 * nomega * nx * q_sub))


def pdf_frames_bytes(frames: int, nq: int, nr: int, batch: int = PDF_BATCH["numpy"]) -> int:
    """A pdf-then-recon frames task: its block of patterns, their linear transform (float32) with
    G and the aux channels split out, and one GEMM batch."""
    cols = nr + PDF_EXTRA_COLUMNS + 1
    b = min(batch, frames)
    return int(READ_COPIES * 4 * frames * nq + 4 * frames * cols * 2 + GEMM_COPIES * 8 * b * (nq + cols))


def pdf_scale_bytes(rows: int, nx: int, nq: int) -> int:
    """A pdf-scale task: its block of rows, NaN-free and in float64."""
    return SCALE_COPIES * 4 * rows * nx * nq


# ------------------------------------------------------------------------------------------
# what one task holds on a GPU (its worker's share: xrdct_dask.gpushare, sized by
# xrdct_dask.cluster.gpulayout); the host's blocks stay as the layout says, the device takes them
# in pieces that fit
# ------------------------------------------------------------------------------------------
GPU_FBP_COPIES = 5  # one FBP pass on the GPU: the padded rows, their spectrum, cuFFT's work area, the
#                     filtered rows and their window, per q bin of the pass
GPU_ITER_COPIES = 4  # SIRT / CGLS: residual, projections, update and image copies, per sinogram + image
GPU_RECON_BINS_LEAST = 32  # q bins a recon task takes at once on the GPU at least (a warp's lanes)
GPU_PDF_BATCH_LEAST = PDF_BATCH["numpy"]  # voxels per GEMM on the GPU at least


def recon_gpu_bytes(nomega: int, nx: int, q: int, *, iterative: bool = False) -> int:
    """Device bytes of a recon task that prepares and reconstructs ``q`` bins at once on the GPU:
    the sub-block uploaded and the preparation's copies of it, the volume of those bins, and one
    FBP pass of ``min(q, GPU_Q_CHUNK)`` bins (iterative: the projections and images it updates)."""
    sino, vol = 4 * nomega * nx * q, 4 * nx * nx * q
    fbp = GPU_FBP_COPIES * 4 * nomega * fft_length(nx) * min(q, GPU_Q_CHUNK)
    return int((PREP_COPIES + 1) * sino + vol + fbp + (GPU_ITER_COPIES * (sino + vol) if iterative else 0))


def pdf_gpu_bytes(voxels: int, nq: int, nr: int) -> int:
    """Device bytes of one GEMM batch of ``voxels`` patterns on the GPU (float32): the patterns as
    uploaded and made NaN-free, and the transform's output, G and the figures."""
    return int(voxels * (8 * nq + GEMM_COPIES * 4 * (nq + nr + PDF_EXTRA_COLUMNS + 1)))


def gpu_q_sub(task_bytes: int, nomega: int, nx: int, q_sub: int, *, iterative: bool = False) -> int:
    """Bins a recon task prepares and reconstructs at once on the GPU: the layout's ``q_sub``, fewer
    where they would pass ``task_bytes`` (0: no bound), never under one bin."""
    q = max(1, int(q_sub))
    if task_bytes:
        while q > 1 and recon_gpu_bytes(nomega, nx, q, iterative=iterative) > task_bytes:
            q = (q + 1) // 2
    return q


def gpu_pdf_batch(task_bytes: int, nq: int, nr: int, batch: int = PDF_BATCH["cupy"]) -> int:
    """Voxels per GEMM batch on the GPU: ``batch``, fewer where it would pass ``task_bytes`` (0: no
    bound), never under one voxel."""
    if not task_bytes:
        return batch
    return int(max(1, min(batch, task_bytes // max(1, pdf_gpu_bytes(1, nq, nr)))))


# ------------------------------------------------------------------------------------------
# the layout a budget allows
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Block sizes of a store (recorded in its attrs as ``layout``; tasks read them from there).

    ``q_chunk`` q bins per recon task and per chunk of reduced/ and recon/; ``q_sub`` q bins the
    recon task prepares and reconstructs at once; ``y_chunk`` voxel rows per chunk of recon/ and
    pdf/ and per pdf task; ``r_chunk`` r points per chunk of pdf/G; ``budget`` bytes per task."""

    omega_chunk: int
    q_chunk: int
    q_sub: int
    y_chunk: int
    r_chunk: int
    budget: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})


def _pow2_at_most(n: int) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1, n)))))


def choose_layout(*, nomega: int, nx: int, nq: int, nr: int, omega_chunk: int, q_chunk: int | str,
                  r_chunk: int, budget: int, pdf_order: str = "recon-then-pdf") -> Layout:
    """The largest blocks that keep every task within ``budget`` bytes and every chunk under
    :data:`CHUNK_BYTES_MAX` (a given ``q_chunk`` is kept; ``"auto"`` is chosen here).  With
    ``pdf_order="pdf-then-recon"`` the G(r) sinograms are reconstructed ``r_chunk`` points per task,
    so ``r_chunk`` is held to what a recon task of that many bins may hold."""
    wc = min(omega_chunk, nomega)
    if q_chunk == "auto":
        qc = min(Q_CHUNK_MAX, _pow2_at_most(nq))
        while qc > 1 and recon_bytes(nomega, nx, qc, 1) > budget:
            qc //= 2
    else:
        qc = min(int(q_chunk), nq)
    while qc > 1 and 4 * wc * nx * qc > CHUNK_BYTES_MAX:  # a chunk of reduced/
        qc //= 2
    rc = max(1, min(r_chunk, nr or 1))
    if pdf_order == "pdf-then-recon":  # G(r) sinogram blocks are reconstructed like q blocks
        while rc > 1 and recon_bytes(nomega, nx, rc, 1) + 4 * nx * nx * rc > budget:
            rc = (rc + 1) // 2
    qs = max(qc, rc if pdf_order == "pdf-then-recon" else 1)
    while qs > 1 and max(recon_bytes(nomega, nx, qc, qs),
                         recon_bytes(nomega, nx, rc, qs) + 4 * nx * nx * rc if pdf_order == "pdf-then-recon" else 0,
                         recon_bytes(nomega, nx, 1 + PDF_EXTRA_COLUMNS, qs)) > budget:
        qs //= 2
    # a slice's G(r) spread over several tasks, not one or two big ones (but blocks of a few rows only
    # where the budget says so)
    yc = max(-(-nx // ROW_TASKS_MIN), min(nx, ROWS_MIN))
    while yc > 1 and (pdf_bytes(yc, nx, nq, nr) > budget or pdf_scale_bytes(yc, nx, nq) > budget
                      or 4 * yc * nx * max(qc, rc) > CHUNK_BYTES_MAX):
        yc = (yc + 1) // 2
    return Layout(omega_chunk=wc, q_chunk=qc, q_sub=qs, y_chunk=yc, r_chunk=rc, budget=int(budget))
